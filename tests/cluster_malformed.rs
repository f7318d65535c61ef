//! Hostile input against a running cluster (a head and one more node, as processes): raw
//! bytes and well-formed transport frames carrying malformed cluster messages, sent straight
//! to the GCS port and to a raylet port, each on its own connection. Every bad message must
//! close that connection (never a panic or a hang), the nodes must stay ALIVE, and a driver
//! must still join and run a task afterwards. Well-formed borrower messages naming objects a
//! worker does not own are answered (all missing) or ignored, with the connection kept.

mod common;

#[path = "../core/src/cluster/wire/cluster_generated.rs"]
#[allow(dead_code, unused_imports, clippy::all, missing_docs, unsafe_op_in_unsafe_fn)]
#[allow(unreachable_pub, missing_debug_implementations, clippy::undocumented_unsafe_blocks)]
#[allow(deprecated)]
#[rustfmt::skip]
mod cluster_generated;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use cluster_generated::manta::cluster::wire as fb;
use common::cluster::{LocalCluster, NodeSpec, serve_if_worker};
use manta_transport::{
    Address, Connection, Incoming, RefusalReason, Tag, TransferId, TransportConfig, TransportError,
};

// Wire numbers of core/src/cluster/proto/mod.rs (stable, never renumbered).
const TAG_REGISTER_NODE: u64 = 1;
const TAG_GET_NODES: u64 = 5;
const TAG_NODES: u64 = 6;
const TAG_GET_WORKER: u64 = 7;
const TAG_WORKER_INFO: u64 = 8;
const TAG_PUSH_TASK: u64 = 24;
const TAG_ADD_BORROWERS: u64 = 34;
const TAG_BORROWERS_ADDED: u64 = 35;
const TAG_REMOVE_BORROWER: u64 = 36;

/// How long a server may take to close a connection after a bad message.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

#[manta::remote]
fn triple(x: u64) -> u64 {
    3 * x
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn socket(address: &str) -> SocketAddr {
    address.parse().expect("a node address is ip:port")
}

/// Sends `bytes` on a raw TCP socket (then shuts its write side if asked) and asserts that the
/// server closes the connection within [`CLOSE_WITHIN`].
fn raw_is_closed(address: &str, bytes: &[u8], close_write: bool, what: &str) {
    let mut s = TcpStream::connect(socket(address)).unwrap();
    s.set_read_timeout(Some(CLOSE_WITHIN)).unwrap();
    s.write_all(bytes).unwrap();
    if close_write {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let start = Instant::now();
    let mut sink = Vec::new();
    match s.read_to_end(&mut sink) {
        Ok(_) => {}
        // A reset is a close too.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "{what} at {address}: the server did not close the connection within {CLOSE_WITHIN:?} \
             ({e}, after {:?})",
            start.elapsed()
        ),
    }
}

async fn connect(address: &str, token: &str, name: &str) -> Result<Connection, TransportError> {
    Connection::connect(
        &Address::Tcp(socket(address)),
        &TransportConfig::new(token.as_bytes().to_vec(), name),
    )
    .await
}

/// Asserts that the server closes `conn` (recv fails) within [`CLOSE_WITHIN`].
async fn assert_closed(conn: &mut Connection, what: &str) {
    match tokio::time::timeout(CLOSE_WITHIN, conn.recv()).await {
        Err(_) => panic!("{what}: the server did not close the connection within {CLOSE_WITHIN:?}"),
        Ok(Ok(Incoming::Message(m))) => panic!("{what}: expected a close, got message {:?}", m.tag),
        Ok(Ok(_)) => panic!("{what}: expected a close, got a bulk transfer"),
        Ok(Err(_)) => {}
    }
}

/// Connects with the right token, sends one message, and asserts that the server closes.
fn message_is_closed(address: &str, token: &str, tag: u64, payload: &[u8], what: &str) {
    rt().block_on(async {
        let mut conn = connect(address, token, "attacker").await.unwrap();
        conn.send(Tag(tag), payload).await.unwrap();
        assert_closed(&mut conn, what).await;
    });
}

/// Waits for the next message on `conn` (at most [`CLOSE_WITHIN`]).
async fn next_message(conn: &mut Connection, what: &str) -> manta_transport::Message {
    match tokio::time::timeout(CLOSE_WITHIN, conn.recv()).await {
        Ok(Ok(Incoming::Message(m))) => m,
        Ok(Ok(_)) => panic!("{what}: got a bulk transfer"),
        Ok(Err(e)) => panic!("{what}: the connection failed: {e}"),
        Err(_) => panic!("{what}: no reply within {CLOSE_WITHIN:?}"),
    }
}

fn get_nodes(request_id: u64) -> Vec<u8> {
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let t = fb::GetNodes::create(&mut fbb, &fb::GetNodesArgs { request_id });
    fbb.finish_minimal(t);
    fbb.finished_data().to_vec()
}

fn get_worker(request_id: u64, index: u64) -> Vec<u8> {
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let t = fb::GetWorker::create(&mut fbb, &fb::GetWorkerArgs { request_id, index });
    fbb.finish_minimal(t);
    fbb.finished_data().to_vec()
}

fn add_borrowers(request_id: u64, objects: &[u64]) -> Vec<u8> {
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let objects = Some(fbb.create_vector(objects));
    let t = fb::AddBorrowers::create(
        &mut fbb,
        &fb::AddBorrowersArgs {
            request_id,
            objects,
        },
    );
    fbb.finish_minimal(t);
    fbb.finished_data().to_vec()
}

fn remove_borrower(object_id: u64) -> Vec<u8> {
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let t = fb::RemoveBorrower::create(&mut fbb, &fb::RemoveBorrowerArgs { object_id });
    fbb.finish_minimal(t);
    fbb.finished_data().to_vec()
}

/// The listening addresses of the live workers with indices 1..=8 (from the GCS).
fn worker_addresses(cluster: &LocalCluster) -> Vec<(u64, String)> {
    rt().block_on(async {
        let mut conn = connect(&cluster.address, &cluster.token, "probe")
            .await
            .unwrap();
        let mut found = Vec::new();
        for index in 1..=8 {
            conn.send(Tag(TAG_GET_WORKER), &get_worker(index, index))
                .await
                .unwrap();
            let m = next_message(&mut conn, "GetWorker").await;
            assert_eq!(m.tag.0, TAG_WORKER_INFO);
            let info = flatbuffers::root::<fb::WorkerInfo>(&m.payload).unwrap();
            if info.alive()
                && let Some(a) = info.address()
            {
                found.push((index, a.to_owned()));
            }
        }
        found
    })
}

/// Borrower messages a worker must answer or ignore, never act on: AddBorrowers for ids it
/// does not own (or from a connection that is no worker) is answered "all missing",
/// RemoveBorrower from a non-borrower is ignored, and the connection stays open.
fn unknown_borrows_are_ignored(address: &str, token: &str, index: u64) {
    rt().block_on(async {
        for name in ["w4242", "attacker"] {
            let mut conn = connect(address, token, name).await.unwrap();
            let ids = [
                u64::MAX,
                1,
                (index << 48) | 0xabcdef,
                ((index + 1) << 48) | 1,
            ];
            conn.send(Tag(TAG_REMOVE_BORROWER), &remove_borrower(ids[2]))
                .await
                .unwrap();
            conn.send(Tag(TAG_ADD_BORROWERS), &add_borrowers(7, &ids))
                .await
                .unwrap();
            let m = next_message(&mut conn, "AddBorrowers").await;
            assert_eq!(m.tag.0, TAG_BORROWERS_ADDED, "{name}");
            let reply = flatbuffers::root::<fb::BorrowersAdded>(&m.payload).unwrap();
            assert_eq!(reply.request_id(), 7);
            let missing: Vec<u64> = reply
                .missing()
                .map(|v| v.iter().collect())
                .unwrap_or_default();
            assert_eq!(missing, ids, "{name}: every unknown id is missing");
            conn.send(Tag(TAG_REMOVE_BORROWER), &remove_borrower(ids[0]))
                .await
                .unwrap();
            conn.send(Tag(TAG_ADD_BORROWERS), &add_borrowers(8, &[]))
                .await
                .unwrap();
            let m = next_message(&mut conn, "an empty AddBorrowers").await;
            assert_eq!(m.tag.0, TAG_BORROWERS_ADDED, "{name}: still open");
        }
    });
}

/// A valid RegisterNode table, cut to half its length.
fn truncated_register_node() -> Vec<u8> {
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let address = fbb.create_string("10.9.8.7:6543");
    let hostname = fbb.create_string("attacker-host-with-a-long-name");
    let node = fb::Node::create(
        &mut fbb,
        &fb::NodeArgs {
            address: Some(address),
            hostname: Some(hostname),
            store_capacity: 1 << 30,
            ..Default::default()
        },
    );
    let t = fb::RegisterNode::create(
        &mut fbb,
        &fb::RegisterNodeArgs {
            request_id: 77,
            node: Some(node),
        },
    );
    fbb.finish_minimal(t);
    let whole = fbb.finished_data().to_vec();
    assert!(flatbuffers::root::<fb::RegisterNode>(&whole).is_ok());
    let cut = whole[..whole.len() / 2].to_vec();
    assert!(
        flatbuffers::root::<fb::RegisterNode>(&cut).is_err(),
        "the cut table must fail verification"
    );
    cut
}

/// The cluster still answers queries and lists exactly `n` nodes, all ALIVE.
fn assert_healthy(cluster: &LocalCluster, n: usize, after: &str) {
    let state = manta::cluster::query(&cluster.address, &cluster.token)
        .unwrap_or_else(|e| panic!("after {after}: the GCS no longer answers: {e}"));
    assert_eq!(state.nodes.len(), n, "after {after}: {:?}", state.nodes);
    assert!(
        state.nodes.iter().all(|x| x.alive),
        "after {after}: a node is dead: {:?}",
        state.nodes
    );
}

/// Every case against one listening port (`role` is "GCS" or "raylet").
fn attack(cluster: &LocalCluster, address: &str, role: &str, known_tag: u64) {
    let token = cluster.token.as_str();
    let healthy = |what: &str| assert_healthy(cluster, 2, &format!("{what} to the {role}"));

    // 1. Garbage before any handshake.
    raw_is_closed(
        address,
        b"GET / HTTP/1.1\r\nHost: manta\r\n\r\n",
        false,
        "garbage bytes",
    );
    healthy("garbage bytes");

    // 2. A truncated frame header (6 of 16 bytes, then EOF).
    raw_is_closed(address, b"MNTA\x01\x00", true, "a truncated frame header");
    healthy("a truncated frame header");

    // 3. A good handshake with the wrong token: refused.
    rt().block_on(async {
        let e = connect(address, "not-the-token", "attacker")
            .await
            .expect_err("a wrong token must be refused");
        assert!(
            matches!(
                e,
                TransportError::Refused {
                    reason: RefusalReason::WrongToken,
                    ..
                }
            ),
            "{role}: wrong token gave {e}"
        );
    });
    healthy("a wrong token");

    // 4. An unknown tag.
    message_is_closed(address, token, 999, &get_nodes(1), "an unknown tag");
    healthy("an unknown tag");

    // 5. A known tag over bytes that are no flatbuffer.
    for tag in [TAG_GET_NODES, known_tag] {
        message_is_closed(
            address,
            token,
            tag,
            &[0xff; 64],
            "a payload that is no flatbuffer",
        );
        message_is_closed(address, token, tag, &[], "an empty payload");
    }
    healthy("payloads that are no flatbuffer");

    // 6. RegisterNode over a truncated valid table.
    message_is_closed(
        address,
        token,
        TAG_REGISTER_NODE,
        &truncated_register_node(),
        "a truncated RegisterNode",
    );
    healthy("a truncated RegisterNode");

    // 7. A bulk transfer nobody asked for: discarded, and the connection stays in step (the
    //    GCS answers the next request; an unknown tag after it still closes the connection).
    rt().block_on(async {
        let mut conn = connect(address, token, "attacker").await.unwrap();
        conn.send_bulk(TransferId(0xdead_beef), &vec![7u8; 1 << 20])
            .await
            .unwrap();
        if role == "GCS" {
            conn.send(Tag(TAG_GET_NODES), &get_nodes(42)).await.unwrap();
            let m = next_message(&mut conn, "GetNodes after an unexpected transfer").await;
            assert_eq!(m.tag, Tag(TAG_NODES));
            let nodes = flatbuffers::root::<fb::Nodes>(&m.payload).unwrap();
            assert_eq!(nodes.request_id(), 42);
            assert_eq!(nodes.nodes().map(|v| v.len()), Some(2));
        }
        conn.send(Tag(999), &[]).await.unwrap();
        assert_closed(&mut conn, "an unknown tag after an unexpected transfer").await;
    });
    healthy("an unexpected bulk transfer");

    // 8. GetWorker for a worker that never existed: the GCS answers "not alive" (a raylet
    //    keeps no worker table: it ignores the request and keeps the connection).
    rt().block_on(async {
        let mut conn = connect(address, token, "attacker").await.unwrap();
        conn.send(Tag(TAG_GET_WORKER), &get_worker(9, 987_654))
            .await
            .unwrap();
        if role == "GCS" {
            let m = next_message(&mut conn, "GetWorker of an unknown index").await;
            assert_eq!(m.tag, Tag(TAG_WORKER_INFO));
            let info = flatbuffers::root::<fb::WorkerInfo>(&m.payload).unwrap();
            assert_eq!(info.request_id(), 9);
            assert_eq!(info.index(), 987_654);
            assert!(!info.alive());
        } else {
            let r = tokio::time::timeout(Duration::from_millis(500), conn.recv()).await;
            assert!(
                r.is_err(),
                "the raylet answers or closes a GetWorker: {r:?}"
            );
        }
    });
    healthy("a GetWorker of an unknown index");

    // 9. A peer that calls itself "gcs" (or a raylet) and then misbehaves: its close must not
    //    pass for the loss of the real GCS.
    for name in ["gcs", "raylet", "raylet:1", "w1"] {
        rt().block_on(async {
            let mut conn = connect(address, token, name).await.unwrap();
            conn.send(Tag(999), &[]).await.unwrap();
            assert_closed(&mut conn, "an unknown tag from a peer named like a member").await;
        });
    }
    // Give a node that would (wrongly) stop time to do so.
    std::thread::sleep(Duration::from_millis(500));
    healthy("a misbehaving peer named like a member");
}

fn node_logs(cluster: &LocalCluster) -> String {
    let mut text = String::new();
    for i in 0..2 {
        let p = cluster.root.join(format!("node-{i}")).join("node.log");
        text.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
    }
    text
}

#[test]
fn malformed_input_closes_the_connection_and_the_cluster_keeps_working() {
    serve_if_worker();
    let started = Instant::now();
    let spec = NodeSpec {
        num_cpus: 2.0,
        ..NodeSpec::default()
    };
    let cluster = LocalCluster::start(spec.clone(), &[spec]);
    let state = manta::cluster::query(&cluster.address, &cluster.token).unwrap();
    assert_eq!(state.nodes.len(), 2);
    // The raylet of the second node (the head's raylet sits beside the GCS).
    let raylet = state
        .nodes
        .iter()
        .find(|n| n.node_id != 1)
        .or(state.nodes.last())
        .unwrap()
        .address
        .clone();

    attack(&cluster, &cluster.address.clone(), "GCS", TAG_PUSH_TASK);
    attack(&cluster, &raylet, "raylet", TAG_PUSH_TASK);

    // The warnings about the malformed messages are in the node logs.
    let logs = node_logs(&cluster);
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("malformed cluster message"))
        .collect();
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("invalid GetNodes message")),
        "no warning about a payload that is no flatbuffer in the node logs:\n{logs}"
    );
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("unknown cluster message tag 999")),
        "no warning about the unknown tag in the node logs:\n{logs}"
    );

    // A driver still joins and runs a task.
    manta::init_with(cluster.config()).expect("a driver joins after the attack");
    assert_eq!(triple::remote(14).get().unwrap(), 42);

    // Borrower messages naming objects a worker does not own are answered or ignored.
    let workers = worker_addresses(&cluster);
    assert!(workers.len() >= 2, "the driver and a worker: {workers:?}");
    for (index, address) in &workers {
        unknown_borrows_are_ignored(address, &cluster.token, *index);
    }
    assert_eq!(triple::remote(15).get().unwrap(), 45);
    manta::shutdown();
    assert_healthy(&cluster, 2, "the driver's task");
    eprintln!("cluster_malformed took {:?}", started.elapsed());
}
