//! A head and three raylets as separate processes on this machine; a driver (this test) joins
//! them and runs tasks, actors and object transfers across the worker processes the raylets
//! start from this very binary.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::cluster::{LocalCluster, NodeSpec, serve_if_worker};

/// The node this code runs on (raylets give their workers MANTA_NODE_ID).
fn node_id() -> u64 {
    std::env::var("MANTA_NODE_ID")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[manta::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[manta::remote]
fn where_am_i(pause_ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(pause_ms));
    node_id()
}

#[manta::remote]
fn sum_f32(v: Vec<f32>) -> f64 {
    v.iter().map(|x| *x as f64).sum()
}

#[manta::remote]
fn make_vec(n: usize, value: f32) -> Vec<f32> {
    vec![value; n]
}

#[manta::remote]
fn node_of_arg(v: Vec<f32>) -> u64 {
    assert!(!v.is_empty());
    node_id()
}

#[manta::remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[manta::remote]
fn sum_refs(refs: Vec<manta::ObjectRef<u64>>) -> u64 {
    refs.iter().map(|r| r.get().expect("nested ref")).sum()
}

#[manta::remote]
fn env_of(name: String) -> Option<String> {
    std::env::var(name).ok()
}

#[manta::remote]
fn read_kv(key: String) -> Option<Vec<u8>> {
    manta::cluster::kv_get(&key).expect("kv from a worker")
}

#[manta::remote]
fn boom(msg: String) -> u64 {
    panic!("{msg}")
}

#[manta::remote]
fn ask_counter(name: String) -> u64 {
    let c = manta::get_actor::<Counter>(&name).expect("named actor from a worker");
    c.incr(100).get().expect("call from a worker")
}

#[manta::remote]
fn nested_tasks(n: u64) -> u64 {
    let refs: Vec<_> = (0..n).map(square::remote).collect();
    manta::get_all(&refs).expect("nested").iter().sum()
}

#[manta::actor]
struct Counter {
    total: u64,
    log: Vec<u64>,
}

#[manta::actor]
impl Counter {
    fn new(start: u64) -> Self {
        Counter {
            total: start,
            log: Vec::new(),
        }
    }
    fn incr(&mut self, by: u64) -> u64 {
        self.total += by;
        self.log.push(by);
        self.total
    }
    fn log(&self) -> Vec<u64> {
        self.log.clone()
    }
    fn node(&self) -> u64 {
        node_id()
    }
}

#[test]
fn head_and_three_raylets_run_tasks_actors_and_objects() {
    serve_if_worker();
    let node = |cpus: f64, resources: &str| NodeSpec {
        num_cpus: cpus,
        resources: resources.into(),
        ..NodeSpec::default()
    };
    let cluster = LocalCluster::start(
        node(2.0, ""),
        &[node(2.0, ""), node(2.0, "special=1"), node(2.0, "")],
    );
    // A job entry set on the driver's builder reaches its workers; a node entry does not.
    let config = cluster
        .config()
        .call_timeout(Duration::from_secs(29))
        .num_cpus(7.0);
    manta::init_with(config).expect("the driver joins");
    let env = |name: &str| env_of::remote(name.to_owned()).get().unwrap();
    assert_eq!(env("MANTA_CALL_TIMEOUT_US").as_deref(), Some("29000000"));
    assert_eq!(env("MANTA_NUM_CPUS").as_deref(), Some("2"));

    // Tasks, inline values.
    let refs: Vec<_> = (0..200u64).map(square::remote).collect();
    let total: u64 = manta::get_all(&refs).unwrap().iter().sum();
    assert_eq!(total, (0..200u64).map(|x| x * x).sum());

    // Spread: a burst of slow tasks lands on more than one node (hybrid: pack to 50%, spread).
    let refs: Vec<_> = (0..16).map(|_| where_am_i::remote(100u64)).collect();
    let nodes: BTreeSet<u64> = manta::get_all(&refs).unwrap().into_iter().collect();
    assert!(
        nodes.len() >= 3,
        "16 tasks of 100 ms should spread over nodes, ran on {nodes:?}"
    );
    assert!(!nodes.contains(&0), "the driver runs no tasks: {nodes:?}");

    // A custom resource only one node has.
    let r = where_am_i::options().resource("special", 1.0).remote(0u64);
    let special = r.get().unwrap();
    let state = manta::cluster::query(&cluster.address, &cluster.token).unwrap();
    let holder = state
        .nodes
        .iter()
        .find(|n| n.resources.iter().any(|(k, _, _)| k == "special"))
        .unwrap();
    assert_eq!(special, holder.node_id);

    // `manta status` sees resources in use: two long tasks fill the special node's 2 CPUs.
    let long: Vec<_> = (0..2)
        .map(|_| {
            where_am_i::options()
                .resource("special", 0.5)
                .remote(3000u64)
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state = manta::cluster::query(&cluster.address, &cluster.token).unwrap();
        let node = state.nodes.iter().find(|n| n.node_id == special).unwrap();
        let cpu = node.resources.iter().find(|(k, _, _)| k == "CPU").unwrap();
        let store = node
            .resources
            .iter()
            .find(|(k, _, _)| k == "object_store_memory");
        // ... and which pages back the node's store (the arena its worker reported).
        let pages_known = [
            "1 GiB huge pages",
            "2 MiB huge pages",
            "4 KiB pages (THP advised)",
        ]
        .contains(&node.store_pages.as_str());
        if cpu.1 == 0.0 && store.is_some_and(|s| s.2 > 0.0) && pages_known {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node's CPUs, store or store pages never showed: {:?} {:?}",
            node.resources,
            node.store_pages
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // `manta list tasks` sees them: submitted by the driver, running on the special node.
    let work = manta::cluster::list_work(&cluster.address, &cluster.token).unwrap();
    let running: Vec<_> = work
        .tasks
        .iter()
        .filter(|t| t.state == "RUNNING" && t.name.ends_with("where_am_i"))
        .collect();
    assert_eq!(running.len(), 2, "{:?}", work.tasks);
    assert!(running.iter().all(|t| t.node_id == special));
    assert!(work.tasks.iter().filter(|t| t.state == "SUBMITTED").count() >= 2);
    assert!(!work.partial);
    assert!(manta::get_all(&long).unwrap().iter().all(|n| *n == special));

    // Infeasible everywhere: a clear error, fast.
    let e = where_am_i::options()
        .num_gpus(1.0)
        .remote(0u64)
        .get()
        .unwrap_err();
    assert!(matches!(e, manta::Error::Infeasible { .. }), "{e}");

    // Large objects both ways: a 32 MiB put read by a task, a 16 MiB result read by the driver.
    let big = manta::put(vec![0.5f32; 8 << 20]).unwrap();
    let sums: Vec<_> = (0..4).map(|_| sum_f32::remote(&big)).collect();
    for s in manta::get_all(&sums).unwrap() {
        assert_eq!(s, 0.5 * (8 << 20) as f64);
    }
    let made = make_vec::remote(4usize << 20, 2.0f32);
    let view = made.get_view().unwrap();
    assert_eq!(view.len(), 4 << 20);
    assert!(view.iter().all(|x| *x == 2.0));
    // `manta list objects`: the 16 MiB result is held by its worker for the driver.
    let work = manta::cluster::list_work(&cluster.address, &cluster.token).unwrap();
    assert!(
        work.objects
            .iter()
            .any(|o| o.object_id == made.id().as_u64() && o.role == "held" && o.size > 16 << 20),
        "{:?}",
        work.objects
    );
    // A result held by one worker passed to another task (pulled worker to worker).
    let again = sum_f32::remote(&made).get().unwrap();
    assert_eq!(again, 2.0 * (4 << 20) as f64);

    // Locality: a task whose big argument one worker holds runs on that worker's node.
    let on_special = make_vec::options()
        .resource("special", 1.0)
        .remote(1usize << 20, 1.0f32);
    manta::wait(vec![on_special.clone()], 1, None).unwrap();
    assert_eq!(node_of_arg::remote(&on_special).get().unwrap(), special);

    // Chains of refs and refs nested in values.
    let a = square::remote(3u64);
    let b = add::remote(&a, square::remote(4u64));
    assert_eq!(b.get().unwrap(), 25);
    let parts: Vec<_> = (1..=10u64).map(square::remote).collect();
    assert_eq!(sum_refs::remote(parts).get().unwrap(), 385);
    let puts: Vec<_> = (1..=5u64).map(|x| manta::put(x).unwrap()).collect();
    assert_eq!(sum_refs::remote(puts).get().unwrap(), 15);

    // Nested tasks inside a worker.
    assert_eq!(
        nested_tasks::remote(20u64).get().unwrap(),
        (0..20u64).map(|x| x * x).sum()
    );

    // A panic comes back as a TaskError with its message.
    match boom::remote("remote boom".to_string()).get() {
        Err(manta::Error::Task(e)) => {
            assert!(e.is_panic());
            assert!(e.message().contains("remote boom"), "{e}");
        }
        other => panic!("expected a task error, got {other:?}"),
    }

    // Actors in worker processes: ordered calls, named lookup from the driver and a worker.
    let counter = Counter::options()
        .name("counter")
        .num_cpus(1.0)
        .remote(10u64);
    let calls: Vec<_> = (1..=50u64).map(|i| counter.incr(i)).collect();
    let last = calls.last().unwrap().get().unwrap();
    assert_eq!(last, 10 + (1..=50u64).sum::<u64>());
    assert_eq!(
        counter.log().get().unwrap(),
        (1..=50u64).collect::<Vec<_>>()
    );
    assert_ne!(counter.node().get().unwrap(), 0);
    let found = manta::get_actor::<Counter>("counter").unwrap();
    assert_eq!(found.incr(0).get().unwrap(), last);
    assert_eq!(
        ask_counter::remote("counter".to_string()).get().unwrap(),
        last + 100
    );
    let dup = Counter::options().name("counter").remote(0u64);
    assert!(dup.ready().get().is_err(), "a taken name is refused");
    let state = manta::cluster::query(&cluster.address, &cluster.token).unwrap();
    assert!(state.actors.iter().any(|a| a.name == "counter" && a.alive));

    // The GCS's key-value store, from the driver and from a worker.
    assert!(!manta::cluster::kv_put("config/lr", b"0.001").unwrap());
    assert!(manta::cluster::kv_put("config/lr", b"0.002").unwrap());
    assert_eq!(
        read_kv::remote("config/lr".to_string()).get().unwrap(),
        Some(b"0.002".to_vec())
    );
    assert_eq!(manta::cluster::kv_get("missing").unwrap(), None);

    // Kill: later calls fail with ActorDied, and the directory lists the actor dead.
    assert!(manta::kill(&counter).unwrap());
    assert!(matches!(
        counter.incr(1).get(),
        Err(manta::Error::ActorDied { .. })
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while manta::cluster::query(&cluster.address, &cluster.token)
        .unwrap()
        .actors
        .iter()
        .any(|a| a.name == "counter" && a.alive)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the killed actor is still listed alive"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    manta::shutdown();
}

/// Tasks of this worker process arrived at the rendezvous of [`gpus_and_visible`].
static ARRIVED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The GPUs the task holds and the devices its process sees, once `together` tasks of this
/// process hold theirs at once (bounded: 30 s).
#[manta::remote]
fn gpus_and_visible(together: usize) -> (Vec<usize>, Option<String>) {
    use std::sync::atomic::Ordering::SeqCst;
    let ids = manta::gpu_ids();
    let base = ARRIVED.fetch_add(1, SeqCst) / together * together;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ARRIVED.load(SeqCst) < base + together {
        assert!(
            std::time::Instant::now() < deadline,
            "no task ran beside this one"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    (ids, std::env::var("CUDA_VISIBLE_DEVICES").ok())
}

/// A raylet whose launcher made GPUs 5, 7 and 9 visible, told to offer 2, starts its workers
/// seeing exactly the first two; two 1-GPU tasks at once hold one device each, as ordinals of
/// the worker (0 and 1: CUDA's numbering after `CUDA_VISIBLE_DEVICES`).
#[test]
fn workers_see_their_nodes_gpus_and_tasks_are_told_which_they_hold() {
    serve_if_worker();
    let cluster = LocalCluster::start(
        NodeSpec {
            num_cpus: 4.0,
            num_gpus: Some(2.0),
            env: vec![("CUDA_VISIBLE_DEVICES".into(), "5,7,9".into())],
            ..NodeSpec::default()
        },
        &[],
    );
    manta::init_with(cluster.config()).expect("the driver joins");
    let refs: Vec<_> = (0..2)
        .map(|_| gpus_and_visible::options().num_gpus(1.0).remote(2))
        .collect();
    let mut got = manta::get_all(&refs).unwrap();
    got.sort();
    let visible = Some("5,7".to_string());
    assert_eq!(
        got,
        vec![(vec![0], visible.clone()), (vec![1], visible.clone())]
    );
    let (cpu_only, seen) = gpus_and_visible::remote(1).get().unwrap();
    assert!(cpu_only.is_empty());
    assert_eq!(seen, visible);
    manta::shutdown();
}
