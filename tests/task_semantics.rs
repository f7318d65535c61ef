//! Task semantics that need a runtime of their own (embedded: one CPU, custom resources, more
//! slots than CPUs, init and shutdown). The rest runs in every mode in the semantics matrix
//! (`tests/semantics/tasks.rs`).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use manta::Error;

const LONG: Duration = Duration::from_secs(30);

#[manta::remote]
fn add(a: i64, b: i64) -> i64 {
    a + b
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

#[test]
fn nested_tasks_do_not_deadlock_even_on_one_cpu() {
    let _rt = common::start(manta::Config::default().num_cpus(1.0));
    assert_eq!(fib::remote(15).get_timeout(LONG).unwrap(), 610);
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
