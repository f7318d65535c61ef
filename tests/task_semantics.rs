//! Ray's task semantics, ported: dependency resolution, nested tasks, errors as values,
//! infeasible requests, cancel, retries, `wait`, timeouts and resource accounting.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use manta::{Error, ObjectRef};

const LONG: Duration = Duration::from_secs(30);

#[manta::remote]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[manta::remote]
fn concat(parts: Vec<String>, sep: String) -> String {
    parts.join(&sep)
}

#[manta::remote]
fn boom(msg: String) -> i64 {
    panic!("{msg}")
}

#[manta::remote]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[manta::remote]
fn fib(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let a = fib::remote(n - 1);
    let b = fib::remote(n - 2);
    a.get().expect("fib(n-1)") + b.get().expect("fib(n-2)")
}

#[manta::remote]
async fn async_double(x: i64) -> i64 {
    x * 2
}

#[manta::remote]
fn sum_refs(refs: Vec<ObjectRef<i64>>) -> i64 {
    refs.iter().map(|r| r.get().expect("nested ref")).sum()
}

#[test]
fn refs_as_arguments_are_resolved_before_the_task_runs() {
    let _rt = common::start_default();
    let slow = sleep_ms::remote(50);
    let a = add::remote(1, 2);
    let b = add::remote(&a, 10);
    let c = add::remote(b, a.clone());
    assert_eq!(c.get_timeout(LONG).unwrap(), 16);
    // A ref to a slow task as argument: the dependent waits for it.
    let d = add::remote(ObjectRef::clone(&a), 0);
    let s = concat::remote(vec!["x".to_string(), "y".to_string()], "-".to_string());
    assert_eq!(s.get().unwrap(), "x-y");
    assert_eq!(d.get().unwrap(), 3);
    assert_eq!(slow.get().unwrap(), 50);
    // Values from put work the same way.
    let p = manta::put(100i64).unwrap();
    assert_eq!(add::remote(&p, &p).get().unwrap(), 200);
}

#[test]
fn nested_tasks_do_not_deadlock_even_on_one_cpu() {
    let _rt = common::start(manta::Config::default().num_cpus(1.0));
    assert_eq!(fib::remote(15).get_timeout(LONG).unwrap(), 610);
}

#[test]
fn refs_nested_inside_objects_stay_alive_with_their_container() {
    let _rt = common::start_default();
    let inner: Vec<_> = (0..100).map(|i| manta::put(i as i64).unwrap()).collect();
    let outer = manta::put(inner).unwrap(); // `inner` moved in: only `outer` holds them now
    assert_eq!(sum_refs::remote(&outer).get().unwrap(), 4950);
    let back = outer.get().unwrap();
    assert_eq!(back[99].get().unwrap(), 99);
}

#[test]
fn a_panicking_task_is_an_error_value_with_name_and_message() {
    let _rt = common::start_default();
    let r = boom::remote("it broke".to_string());
    match r.get() {
        Err(Error::Task(e)) => {
            assert!(e.is_panic());
            assert!(e.task_name().ends_with("boom"), "{}", e.task_name());
            assert_eq!(e.message(), "it broke");
        }
        other => panic!("expected a task error, got {other:?}"),
    }
    // The failure propagates to dependents, and the runtime keeps working.
    assert!(matches!(add::remote(&r, 1).get(), Err(Error::Task(_))));
    assert_eq!(add::remote(1, 1).get().unwrap(), 2);
}

static FLAKY_RUNS: AtomicUsize = AtomicUsize::new(0);

#[manta::remote]
fn flaky() -> usize {
    let n = FLAKY_RUNS.fetch_add(1, Ordering::SeqCst);
    assert!(n >= 2, "fails the first two runs");
    n
}

#[test]
fn max_retries_reruns_a_panicking_task() {
    let _rt = common::start_default();
    FLAKY_RUNS.store(0, Ordering::SeqCst);
    assert!(flaky::options().max_retries(1).remote().get().is_err());
    FLAKY_RUNS.store(0, Ordering::SeqCst);
    assert_eq!(flaky::options().max_retries(2).remote().get().unwrap(), 2);
}

#[test]
fn infeasible_requests_fail_fast() {
    let _rt = common::start(
        manta::Config::default()
            .num_cpus(2.0)
            .resource("custom", 1.0),
    );
    let t = Instant::now();
    for r in [
        add::options().num_cpus(3.0).remote(1, 1),
        add::options().num_gpus(1.0).remote(1, 1),
        add::options().resource("custom", 2.0).remote(1, 1),
        add::options().resource("missing", 1.0).remote(1, 1),
    ] {
        match r.get() {
            Err(Error::Infeasible { request, total, .. }) => {
                assert!(!request.is_empty() && total.contains("CPU"));
            }
            other => panic!("expected Infeasible, got {other:?}"),
        }
    }
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(
        add::options()
            .resource("custom", 1.0)
            .remote(2, 2)
            .get()
            .unwrap(),
        4
    );
}

#[test]
fn api_before_init_and_after_shutdown_is_a_clear_error() {
    let rt = common::start_default();
    drop(rt); // shut down
    let _turn = common::start_default();
    manta::shutdown();
    assert!(matches!(add::remote(1, 2).get(), Err(Error::ShutDown)));
    let err = manta::put(5u8).unwrap_err();
    assert_eq!(err.value, 5, "a failed put hands the value back");
    assert!(matches!(err.error, Error::ShutDown));
    assert!(matches!(manta::status(), Err(Error::ShutDown)));
}

#[test]
fn wait_returns_ready_refs_in_order_and_honours_timeouts() {
    let _rt = common::start_default();
    let fast = sleep_ms::remote(0);
    fast.get().unwrap();
    let slow = sleep_ms::remote(400);
    let refs = vec![slow.clone(), fast.clone()];
    // num_returns = 1: the fast one is ready at once.
    let (ready, not_ready) = manta::wait(refs.clone(), 1, None).unwrap();
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].id(), fast.id());
    assert_eq!(not_ready[0].id(), slow.id());
    // num_returns = 2 with a short timeout: returns what is ready when time runs out.
    let t = Instant::now();
    let (ready, not_ready) = manta::wait(refs.clone(), 2, Some(Duration::from_millis(50))).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(50));
    assert_eq!((ready.len(), not_ready.len()), (1, 1));
    // Without a timeout it waits for both, and keeps input order.
    let (ready, _) = manta::wait(refs, 2, None).unwrap();
    assert_eq!(
        ready.iter().map(|r| r.id()).collect::<Vec<_>>(),
        vec![slow.id(), fast.id()]
    );
}

#[test]
fn get_timeout_times_out_and_the_object_still_arrives() {
    let _rt = common::start_default();
    let slow = sleep_ms::remote(300);
    match slow.get_timeout(Duration::from_millis(20)) {
        Err(Error::Timeout { object, waited }) => {
            assert_eq!(object, slow.id());
            assert_eq!(waited, Duration::from_millis(20));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(slow.get().unwrap(), 300);
}

#[test]
fn cancel_a_queued_task() {
    let _rt = common::start(manta::Config::default().num_cpus(1.0));
    let blocker = sleep_ms::remote(300);
    let queued = sleep_ms::remote(&blocker); // waits for its argument
    assert!(manta::cancel(&queued));
    assert!(matches!(queued.get(), Err(Error::Cancelled { .. })));
    assert!(!manta::cancel(&queued), "cancelling twice does nothing");
    assert_eq!(blocker.get().unwrap(), 300);
    assert!(
        !manta::cancel(&blocker),
        "a finished task cannot be cancelled"
    );
}

static RUNNING: AtomicUsize = AtomicUsize::new(0);
static OVERLAP_WITH_BIG: AtomicUsize = AtomicUsize::new(0);

#[manta::remote]
fn big_task() {
    if RUNNING.fetch_add(100, Ordering::SeqCst) != 0 {
        OVERLAP_WITH_BIG.fetch_add(1, Ordering::SeqCst);
    }
    std::thread::sleep(Duration::from_millis(20));
    RUNNING.fetch_sub(100, Ordering::SeqCst);
}

#[manta::remote]
fn small_task() {
    if RUNNING.fetch_add(1, Ordering::SeqCst) >= 100 {
        OVERLAP_WITH_BIG.fetch_add(1, Ordering::SeqCst);
    }
    std::thread::sleep(Duration::from_millis(5));
    RUNNING.fetch_sub(1, Ordering::SeqCst);
}

#[test]
fn a_two_cpu_task_never_shares_a_two_cpu_node() {
    let _rt = common::start(manta::Config::default().num_cpus(2.0).num_slots(4));
    let mut refs = Vec::new();
    for i in 0..40 {
        refs.push(if i % 4 == 0 {
            big_task::options().num_cpus(2.0).remote()
        } else {
            small_task::remote()
        });
    }
    manta::get_all(&refs).unwrap();
    assert_eq!(
        OVERLAP_WITH_BIG.load(Ordering::SeqCst),
        0,
        "a 2-CPU task shared the node"
    );
    let status = manta::status().unwrap();
    let cpu = status.resources.iter().find(|r| r.0 == "CPU").unwrap();
    assert_eq!((cpu.1, cpu.2), (2.0, 2.0), "every CPU was given back");
}

#[test]
fn object_refs_are_futures() {
    let _rt = common::start_default();
    let x = async_double::remote(21);
    let y = add::remote(&x, 0);
    let sum = manta::block_on(async { x.await.unwrap() + y.await.unwrap() });
    assert_eq!(sum, 84);
}

#[test]
fn many_tasks_and_a_reduction_tree() {
    let _rt = common::start_default();
    let mut level: Vec<ObjectRef<i64>> = (0..2000).map(|_| add::remote(0, 1)).collect();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|p| {
                if p.len() == 2 {
                    add::remote(&p[0], &p[1])
                } else {
                    p[0].clone()
                }
            })
            .collect();
    }
    assert_eq!(level[0].get_timeout(LONG).unwrap(), 2000);
}

#[test]
fn a_type_mismatch_on_get_is_a_decode_error() {
    let _rt = common::start_default();
    let s = manta::put("text".to_string()).unwrap();
    // Re-type the reference through serde: ObjectRef<String> read as ObjectRef<u64>.
    let bytes = serde_json::to_vec(&s).unwrap();
    let wrong: ObjectRef<Vec<u64>> = serde_json::from_slice(&bytes).unwrap();
    assert!(matches!(wrong.get(), Err(Error::Decode { .. })));
}

#[test]
fn bad_configuration_is_refused_at_init() {
    let _turn = common::turn();
    for config in [
        manta::Config::default().num_cpus(-1.0),
        manta::Config::default().num_gpus(f64::NAN),
        manta::Config::default()
            .resource("x", 1.0)
            .resource("x", 2.0),
    ] {
        match manta::init_with(config) {
            Err(Error::Config { key, message }) => assert!(!key.is_empty() && !message.is_empty()),
            other => panic!("expected a configuration error, got {other:?}"),
        }
        assert!(!manta::is_initialized());
    }
}

#[manta::remote]
fn nest_h(x: u64) -> u64 {
    x + 1
}

#[manta::remote]
fn nest_g(x: u64) -> u64 {
    nest_h::remote(x).get().expect("h") + 1
}

#[manta::remote]
fn nest_f(x: u64) -> u64 {
    nest_g::remote(x).get().expect("g") + 1
}

/// Runs `tasks` chains `f → g → h` (each blocking in `get` on the next) from a thread of its
/// own; `Err` with how many were done if they are not all done within `bound`.
fn nested_gets(tasks: u64, bound: Duration) -> Result<(), usize> {
    let (tx, rx) = std::sync::mpsc::channel();
    let done = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = done.clone();
    std::thread::spawn(move || {
        let refs: Vec<_> = (0..tasks).map(nest_f::remote).collect();
        let mut sum = 0;
        for r in &refs {
            sum += r.get().expect("f");
            seen.fetch_add(1, Ordering::SeqCst);
        }
        let _ = tx.send(sum);
    });
    match rx.recv_timeout(bound) {
        Ok(sum) => {
            assert_eq!(sum, (0..tasks).map(|x| x + 3).sum::<u64>());
            Ok(())
        }
        Err(_) => Err(done.load(Ordering::SeqCst)),
    }
}

/// Issue 11, item 2: 1,000 tasks `f`, each blocking in `get` on a `g` that blocks on an `h`,
/// on one CPU. It deadlocked with a few hundred done, and `shutdown` then hung too.
#[test]
fn nested_blocking_gets_on_one_cpu_finish() {
    let rt = common::start(manta::Config::default().num_cpus(1.0));
    if let Err(done) = nested_gets(1000, Duration::from_secs(60)) {
        let status = manta::status();
        let t = Instant::now();
        drop(rt);
        panic!(
            "deadlock: {done} of 1000 nested tasks done after 60 s ({status:?}); \
             shutdown then took {:?}",
            t.elapsed()
        );
    }
    // Shutdown is bounded even right after nested work.
    let t = Instant::now();
    drop(rt);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        t.elapsed()
    );
}

/// The stress loop `scripts/stress-nested-get` runs (not in CI): the scenario above,
/// `MANTA_STRESS_ITERATIONS` times (200) on `MANTA_STRESS_CPUS` CPUs (1), each iteration on a
/// fresh runtime and bounded by `MANTA_STRESS_TIMEOUT_S` (30); prints the count of hangs and
/// fails on any.
#[test]
#[ignore = "a stress loop: run by scripts/stress-nested-get"]
fn stress_nested_get() {
    let var = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let cpus = var("MANTA_STRESS_CPUS", 1);
    let iterations = var("MANTA_STRESS_ITERATIONS", 200);
    let bound = Duration::from_secs(var("MANTA_STRESS_TIMEOUT_S", 30));
    let mut hangs = 0;
    let mut slowest = Duration::ZERO;
    let mut slowest_shutdown = Duration::ZERO;
    let started = Instant::now();
    for i in 0..iterations {
        let rt = common::start(manta::Config::default().num_cpus(cpus as f64));
        let t = Instant::now();
        if let Err(done) = nested_gets(1000, bound) {
            hangs += 1;
            eprintln!("iteration {i}: HANG, {done} of 1000 done after {bound:?}");
        }
        slowest = slowest.max(t.elapsed());
        let t = Instant::now();
        drop(rt);
        slowest_shutdown = slowest_shutdown.max(t.elapsed());
    }
    println!(
        "stress-nested-get: cpus={cpus} iterations={iterations} hangs={hangs} \
         slowest={slowest:?} slowest_shutdown={slowest_shutdown:?} total={:?}",
        started.elapsed()
    );
    assert_eq!(hangs, 0, "{hangs} of {iterations} iterations hung");
}
