//! Round trips of every message, and the decoder's handling of bad payloads.

use super::*;
use flatbuffers::FlatBufferBuilder;
use std::collections::HashSet;

fn resources() -> Vec<Resource> {
    vec![
        Resource {
            name: "CPU".into(),
            total: 64.0,
            available: 12.5,
        },
        Resource {
            name: "GPU".into(),
            total: 4.0,
            available: 0.0,
        },
    ]
}

fn node(node_id: u64, alive: bool) -> Node {
    Node {
        node_id,
        address: "10.0.0.7:6380".into(),
        hostname: "compute-7".into(),
        alive,
        resources: resources(),
        store_capacity: 1 << 34,
        store_used: 12345,
        store_pages: "2 MiB huge pages".into(),
        age_s: 3.25,
        death: if alive {
            String::new()
        } else {
            "heartbeats stopped".into()
        },
        topology: "2 cpus [0-1] 1 numa [numa0:2] 0 gpus [] nics [eth0] (hwloc)".into(),
        host_id: "boot/net:[4026531840]".into(),
        workers: 3,
        arena_socket: "@manta-node-7.arena".into(),
    }
}

fn actor(actor_id: u64, alive: bool) -> ActorInfo {
    ActorInfo {
        actor_id,
        name: "counter".into(),
        class_name: "Counter".into(),
        worker: 3,
        node_id: 2,
        alive,
        death: if alive {
            String::new()
        } else {
            "killed".into()
        },
        restarting: alive && actor_id.is_multiple_of(2),
        num_restarts: 2,
    }
}

fn args() -> Vec<Arg> {
    vec![
        Arg::Inline(vec![1, 2, 3, 4, 5]),
        Arg::Ref {
            object_id: 0xdead_beef,
            holder: 9,
            len: 1 << 20,
        },
        Arg::Inline(Vec::new()),
    ]
}

/// One value of every variant, with non-empty strings and vectors.
fn samples() -> Vec<Msg> {
    let mut v = vec![
        Msg::RegisterNode {
            request_id: 1,
            node: node(7, true),
        },
        Msg::RegisterWorker {
            request_id: 2,
            node_id: 7,
            job_id: 3,
            address: "10.0.0.7:40001".into(),
            pid: 4242,
            executable: "/usr/bin/app".into(),
            args: vec!["--flag".into(), "value".into()],
            cwd: "/home/me".into(),
            shm_path: "/tmp/manta-w11.sock".into(),
            host_id: "boot/net:[1]".into(),
        },
        Msg::Registered {
            request_id: 3,
            id: 11,
            job_id: 3,
            error: "name taken".into(),
            saved: true,
        },
        Msg::Heartbeat {
            node_id: 7,
            resources: resources(),
            store_used: 999,
            store_pages: "1 GiB huge pages".into(),
        },
        Msg::GetNodes { request_id: 5 },
        Msg::Nodes {
            request_id: 6,
            nodes: vec![node(1, true), node(2, false)],
        },
        Msg::GetWorker {
            request_id: 7,
            index: 12,
        },
        Msg::WorkerInfo {
            request_id: 8,
            index: 12,
            node_id: 2,
            job_id: 3,
            address: "10.0.0.2:40000".into(),
            alive: true,
            shm_path: "/tmp/manta-w12.sock".into(),
            host_id: "boot/net:[1]".into(),
        },
        Msg::KvPut {
            request_id: 9,
            key: "fn/table".into(),
            value: vec![0, 255, 7],
        },
        Msg::KvGet {
            request_id: 10,
            key: "fn/table".into(),
        },
        Msg::KvValue {
            request_id: 11,
            found: true,
            value: vec![0, 255, 7],
        },
        Msg::RegisterActor {
            request_id: 12,
            actor: actor(5, true),
        },
        Msg::LookupActor {
            request_id: 13,
            name: "counter".into(),
            actor_id: 5,
        },
        Msg::ActorReply {
            request_id: 14,
            found: true,
            actor: actor(5, false),
            error: "dead".into(),
        },
        Msg::ListActors { request_id: 15 },
        Msg::Actors {
            request_id: 16,
            actors: vec![actor(5, true), actor(6, false)],
        },
        Msg::Subscribe { request_id: 17 },
        Msg::NodeEvent {
            node: node(3, false),
        },
        Msg::JobEvent {
            job_id: 3,
            finished: true,
        },
        Msg::Stop {
            reason: "manta stop".into(),
        },
        Msg::StartWorker {
            request_id: 21,
            job_id: 3,
            executable: "/usr/bin/app".into(),
            args: vec!["a".into(), "b c".into()],
            cwd: "/tmp".into(),
            env: vec![
                ("MANTA_WORKER".into(), "1".into()),
                ("RUST_LOG".into(), "info".into()),
            ],
        },
        Msg::WorkerStarted {
            request_id: 22,
            index: 4,
            address: "10.0.0.7:40004".into(),
            error: "exec failed".into(),
            workers: vec![
                JobWorker {
                    index: 4,
                    address: "10.0.0.7:40004".into(),
                    resources: resources(),
                },
                JobWorker {
                    index: 5,
                    address: "10.0.0.7:40005".into(),
                    resources: Vec::new(),
                },
            ],
        },
        Msg::WorkerReady {
            job_id: 3,
            index: 4,
            address: "10.0.0.7:40004".into(),
            pid: 777,
            resources: resources(),
        },
        Msg::PushTask {
            task_id: 24,
            function: "my_crate::add".into(),
            args: args(),
            resources: resources(),
            name: "add-1".into(),
            max_retries: 3,
            retry_on: vec!["app::Flaky".into()],
        },
        Msg::TaskDone {
            task_id: 25,
            outcome: Outcome::Inline(vec![42, 0, 1]),
        },
        Msg::TaskDone {
            task_id: 25,
            outcome: Outcome::Stored { len: 1 << 30 },
        },
        Msg::TaskDone {
            task_id: 25,
            outcome: Outcome::Failed {
                kind: ErrorKind::ActorDied,
                task: "my_crate::add".into(),
                message: "the actor's worker exited".into(),
                cause: Vec::new(),
            },
        },
        Msg::CreateActor {
            actor_id: 26,
            class_name: "Counter".into(),
            args: args(),
            resources: resources(),
            name: "counter".into(),
            max_concurrency: 8,
            max_restarts: 2,
            group: (3, 4),
            exception_retries: super::ActorRetries {
                max_task_retries: 2,
                retry_exceptions: true,
                retry_on: vec!["app::Flaky".into()],
            },
        },
        Msg::ActorCall {
            actor_id: 26,
            call_id: 27,
            method: "Counter::incr".into(),
            args: args(),
        },
        Msg::KillActor {
            actor_id: 26,
            restart: true,
        },
        Msg::GroupCall {
            caller: 3,
            method: "Counter::incr".into(),
            args: args(),
            targets: vec![
                GroupTarget {
                    actor_id: 26,
                    call_id: 40,
                    worker: 5,
                },
                GroupTarget {
                    actor_id: 27,
                    call_id: 41,
                    worker: 6,
                },
            ],
            fanout: 2,
        },
        Msg::CancelTask {
            request_id: 50,
            task_id: 0xfeed,
            force: true,
            recursive: false,
        },
        Msg::CancelReply {
            request_id: 51,
            cancelled: true,
            ending: true,
        },
        Msg::PullObject {
            request_id: 29,
            object_id: 0xdead_beef,
            priority: 2,
            pin: true,
        },
        Msg::ObjectData {
            request_id: 29,
            found: true,
            len: 3,
            inline: vec![9, 8, 7],
            error: "partial".into(),
            redirect: 7,
        },
        Msg::FreeObject {
            object_id: 0xdead_beef,
        },
        Msg::ObjectPinned {
            request_id: 29,
            pin_id: 3,
            offset: 4096,
            len: 1 << 20,
            arena: 7,
        },
        Msg::UnpinObject { pin_id: 3 },
        Msg::ReleaseActor { actor_id: 41 },
        Msg::ObjectFailed {
            request_id: 40,
            kind: ErrorKind::OwnerDied,
            task: "12345".into(),
            message: "worker process 3 died".into(),
            cause: vec![1, 2, 3],
        },
        Msg::DetachActor { actor_id: 60 },
        Msg::PgWatch {
            request_id: 120,
            pg_id: 7,
        },
    ];
    for op in PgOp::ALL {
        v.push(Msg::Pg {
            op,
            request_id: 70 + op as u64,
            group: PgRow {
                pg_id: 7,
                name: "pg".into(),
                strategy: 3,
                state: 1,
                detached: true,
                job_id: 2,
                bundles: vec![
                    PgBundle {
                        index: 1,
                        node_id: 4,
                        resources: resources(),
                        cpus: vec![2, 3],
                        cpu_note: String::new(),
                        gpus: vec![0, 1],
                    },
                    PgBundle {
                        index: 2,
                        cpu_note: "unpinned: 2 CPUs".into(),
                        ..PgBundle::default()
                    },
                ],
            },
            error: if op == PgOp::Prepared {
                "no room".into()
            } else {
                String::new()
            },
            groups: if op == PgOp::Groups {
                vec![
                    PgRow::default(),
                    PgRow {
                        pg_id: 9,
                        ..PgRow::default()
                    },
                ]
            } else {
                Vec::new()
            },
        });
    }
    v.extend([
        Msg::RejoinWorker {
            request_id: 90,
            index: 7,
            node_id: 2,
            job_id: 3,
            address: "10.0.0.1:4000".into(),
            shm_path: "@manta-w7".into(),
            host_id: "boot:ns".into(),
            driver: true,
        },
        Msg::GcsForget {
            kind: 3,
            id: 12,
            name: "key".into(),
        },
        Msg::GcsCounters {
            version: 1,
            next_node: 4,
            next_worker: 9,
            next_job: 2,
            address: "127.0.0.1:6379".into(),
        },
        Msg::WorkerDetached {
            index: 61,
            count: 2,
        },
        Msg::ListWork { request_id: 32 },
        Msg::Work {
            request_id: 33,
            tasks: vec![TaskRow {
                task_id: 5,
                name: "app::f".into(),
                state: "RUNNING".into(),
                owner: 1,
                worker: 2,
                node_id: 3,
            }],
            objects: vec![ObjectRow {
                object_id: 6,
                size: 1 << 20,
                kind: "store".into(),
                role: "held".into(),
                holder: 2,
                owner: 1,
            }],
            partial: true,
        },
        Msg::AddBorrowers {
            request_id: 34,
            objects: vec![1, 0xdead_beef, u64::MAX],
        },
        Msg::BorrowersAdded {
            request_id: 34,
            missing: vec![0xdead_beef],
        },
        Msg::RemoveBorrower {
            object_id: 0xdead_beef,
        },
    ]);
    v
}

fn round_trip(fbb: &mut FlatBufferBuilder<'static>, msg: &Msg) {
    let bytes = encode(msg, fbb).to_vec();
    let back = decode(msg.tag().0, &bytes)
        .unwrap_or_else(|e| panic!("{} did not decode: {e}", msg.name()));
    assert_eq!(&back, msg, "{} did not round-trip", msg.name());
}

#[test]
fn every_variant_round_trips_through_one_reused_builder() {
    let samples = samples();
    let tags: HashSet<u64> = samples.iter().map(|m| m.tag().0).collect();
    let want: HashSet<u64> = (1..=38)
        .chain([
            TAG_CANCEL_TASK,
            TAG_CANCEL_REPLY,
            TAG_OBJECT_FAILED,
            TAG_RELEASE_ACTOR,
            TAG_GROUP_CALL,
            TAG_PG_WATCH,
        ])
        .chain(60..=61)
        .chain(70..=78)
        .chain(90..=92)
        .collect();
    assert_eq!(tags, want, "a sample of every variant");
    let mut fbb = FlatBufferBuilder::new();
    for msg in &samples {
        round_trip(&mut fbb, msg);
    }
    // Again, in reverse: the builder's reset leaves nothing of the previous message.
    for msg in samples.iter().rev() {
        round_trip(&mut fbb, msg);
    }
}

#[test]
fn every_error_kind_round_trips() {
    let mut fbb = FlatBufferBuilder::new();
    for kind in [
        ErrorKind::Panic,
        ErrorKind::ActorDied,
        ErrorKind::Cancelled,
        ErrorKind::Infeasible,
        ErrorKind::Store,
        ErrorKind::Other,
        ErrorKind::WorkerCrashed,
        ErrorKind::ObjectLost,
        ErrorKind::OwnerDied,
        ErrorKind::ReconstructionMaxAttempts,
        ErrorKind::LineageEvicted,
    ] {
        let msg = Msg::TaskDone {
            task_id: 1,
            outcome: Outcome::Failed {
                kind,
                task: String::new(),
                message: "m".into(),
                cause: if kind == ErrorKind::Panic {
                    vec![1, 2, 3]
                } else {
                    Vec::new()
                },
            },
        };
        round_trip(&mut fbb, &msg);
    }
}

#[test]
fn empty_fields_are_left_out_and_read_back_as_empty() {
    let mut fbb = FlatBufferBuilder::new();
    let empties = [
        Msg::RegisterNode {
            request_id: 0,
            node: Node::default(),
        },
        Msg::Stop {
            reason: String::new(),
        },
        Msg::PushTask {
            task_id: 1,
            function: String::new(),
            args: Vec::new(),
            resources: Vec::new(),
            name: String::new(),
            max_retries: 0,
            retry_on: Vec::new(),
        },
        Msg::TaskDone {
            task_id: 1,
            outcome: Outcome::Inline(Vec::new()),
        },
        Msg::ActorReply {
            request_id: 0,
            found: false,
            actor: ActorInfo::default(),
            error: String::new(),
        },
    ];
    for msg in &empties {
        round_trip(&mut fbb, msg);
    }
    // An empty table under any tag decodes to the all-default message.
    let empty_table = encode(
        &Msg::Stop {
            reason: String::new(),
        },
        &mut fbb,
    )
    .to_vec();
    match decode(TAG_PUSH_TASK, &empty_table) {
        Ok(Msg::PushTask { function, args, .. }) => {
            assert!(function.is_empty() && args.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn many_args_take_the_heap_path() {
    let mut fbb = FlatBufferBuilder::new();
    let msg = Msg::ActorCall {
        actor_id: 1,
        call_id: 2,
        method: "m".into(),
        args: (0..100u64)
            .map(|i| {
                if i % 2 == 0 {
                    Arg::Inline(vec![i as u8; i as usize])
                } else {
                    Arg::Ref {
                        object_id: i,
                        holder: i + 1,
                        len: i + 2,
                    }
                }
            })
            .collect(),
    };
    round_trip(&mut fbb, &msg);
}

#[test]
fn tags_are_distinct_stable_and_named() {
    let samples = samples();
    let mut seen = HashSet::new();
    for msg in &samples {
        let tag = msg.tag().0;
        assert!(
            (1..=38).contains(&tag)
                || (50..=51).contains(&tag)
                || (60..=61).contains(&tag)
                || (70..=78).contains(&tag)
                || tag == TAG_PG_WATCH
                || (90..=92).contains(&tag)
                || tag == TAG_OBJECT_FAILED
                || tag == TAG_RELEASE_ACTOR
                || tag == TAG_GROUP_CALL,
            "tag {tag}"
        );
        assert_eq!(tag_name(tag), Some(msg.name()));
        // Distinct per variant (TaskDone has three samples, one tag).
        if !matches!(msg, Msg::TaskDone { .. }) {
            assert!(seen.insert(tag), "tag {tag} used twice");
        }
    }
    assert_eq!(NAMES.iter().collect::<HashSet<_>>().len(), NAMES.len());
    // The wire numbers never change.
    assert_eq!(TAG_REGISTER_NODE, 1);
    assert_eq!(TAG_PUSH_TASK, 24);
    assert_eq!(TAG_TASK_DONE, 25);
    assert_eq!(TAG_ACTOR_CALL, 27);
    assert_eq!(TAG_FREE_OBJECT, 31);
    assert_eq!(tag_name(0), None);
    assert_eq!(TAG_ADD_BORROWERS, 34);
    assert_eq!(TAG_REMOVE_BORROWER, 36);
    assert_eq!(TAG_UNPIN_OBJECT, 38);
    assert_eq!(tag_name(39), None);
    assert_eq!(tag_name(TAG_OBJECT_FAILED), Some("ObjectFailed"));
    assert_eq!(TAG_DETACH_ACTOR, 60);
    assert_eq!(TAG_WORKER_DETACHED, 61);
    assert_eq!(tag_name(59), None);
    assert_eq!(tag_name(62), None);
    assert_eq!(tag_name(70), Some("PgCreate"));
    assert_eq!(tag_name(78), Some("PgGroups"));
    assert_eq!(tag_name(79), None);
    assert_eq!(TAG_GROUP_CALL, 100);
    assert_eq!(tag_name(100), Some("GroupCall"));
    assert_eq!(tag_name(101), None);
    assert_eq!(TAG_PG_WATCH, 120);
    assert_eq!(tag_name(120), Some("PgWatch"));
    assert_eq!(tag_name(121), None);
    assert_eq!(tag_name(u64::MAX), None);
    assert_eq!(TAG_CANCEL_TASK, 50);
    assert_eq!(TAG_CANCEL_REPLY, 51);
    assert_eq!(TAG_REJOIN_WORKER, 90);
    assert_eq!(TAG_GCS_COUNTERS, 91);
    assert_eq!(TAG_GCS_FORGET, 92);
    assert_eq!(tag_name(93), None);
}

#[test]
fn unknown_tag_is_an_error() {
    for tag in [0, 39, 59, 62, 79, 101, 121, 1000, u64::MAX] {
        assert_eq!(decode(tag, &[]), Err(ProtoError::UnknownTag(tag)));
    }
    let e = decode(99, &[]).unwrap_err();
    assert_eq!(e.to_string(), "unknown cluster message tag 99");
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for tag in (1..=38)
        .chain([
            TAG_CANCEL_TASK,
            TAG_CANCEL_REPLY,
            TAG_OBJECT_FAILED,
            TAG_RELEASE_ACTOR,
            TAG_GROUP_CALL,
        ])
        .chain(60..=61)
        .chain(70..=78)
    {
        assert!(matches!(decode(tag, &[]), Err(ProtoError::Invalid { .. })));
        assert!(decode(tag, &[0xff; 3]).is_err());
        let e = decode(tag, &[0xff; 64]).unwrap_err();
        let ProtoError::Invalid { table, .. } = &e else {
            panic!("{e:?}");
        };
        assert_eq!(Some(*table), tag_name(tag));
        assert!(
            e.to_string()
                .starts_with(&format!("invalid {table} message: "))
        );
        // Random bytes: whatever the verifier says, no panic.
        for _ in 0..200 {
            let len = (next() % 200) as usize;
            let buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = decode(tag, &buf);
        }
    }
}

#[test]
fn every_prefix_of_a_push_task_is_an_error_short_of_trailing_padding() {
    let mut fbb = FlatBufferBuilder::new();
    let msg = &samples()[23];
    assert_eq!(msg.tag().0, TAG_PUSH_TASK);
    let bytes = encode(msg, &mut fbb).to_vec();
    for n in 0..bytes.len() {
        match decode(TAG_PUSH_TASK, &bytes[..n]) {
            Err(ProtoError::Invalid { table, .. }) => assert_eq!(table, "PushTask"),
            // The builder pads the first string it writes, which ends the buffer; cutting
            // off only that zero padding leaves the same, valid table. Anything else errs.
            Ok(back) if bytes[n..].iter().all(|&b| b == 0) && bytes.len() - n < 8 => {
                assert_eq!(&back, msg);
            }
            other => panic!("prefix of {n} of {} bytes: {other:?}", bytes.len()),
        }
    }
    // Single corrupted bytes: no panic either.
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0xa5;
        let _ = decode(TAG_PUSH_TASK, &bad);
    }
}

#[test]
fn a_valid_table_under_the_wrong_tag_does_not_panic() {
    let mut fbb = FlatBufferBuilder::new();
    for msg in samples() {
        let bytes = encode(&msg, &mut fbb).to_vec();
        for tag in (1..=38).chain(60..=61).chain(70..=78) {
            let _ = decode(tag, &bytes);
        }
    }
}
