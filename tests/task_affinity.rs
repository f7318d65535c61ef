//! Slot threads pinned to CPUs (`cpu_affinity`, `MANTA_CPU_AFFINITY`): tasks read their own
//! thread's CPUs from the kernel and find the configured list.

mod common;

use common::thread_cpus;

#[manta::remote]
fn my_cpus() -> String {
    thread_cpus()
}

#[test]
fn slots_run_on_the_configured_cpus() {
    // The first CPU this process may use: the only one the slots get.
    let allowed: manta::CpuList = thread_cpus().parse().expect("the kernel's CPU list");
    let first = allowed.0[0];
    let _rt = common::start(
        manta::Config::default()
            .num_cpus(2.0)
            .cpu_affinity(manta::CpuList(vec![first]))
            // Tasks run on slots only (a waiting driver would otherwise run them itself).
            .inline_get(false),
    );
    let refs: Vec<_> = (0..8).map(|_| my_cpus::remote()).collect();
    for cpus in manta::get_all(&refs).unwrap() {
        assert_eq!(cpus, first.to_string());
    }
    assert_eq!(
        thread_cpus(),
        allowed.to_string(),
        "the driver's thread is not pinned"
    );
}

#[test]
fn without_a_list_nothing_is_pinned() {
    let allowed = thread_cpus();
    let _rt = common::start(manta::Config::default().num_cpus(2.0).inline_get(false));
    let refs: Vec<_> = (0..4).map(|_| my_cpus::remote()).collect();
    for cpus in manta::get_all(&refs).unwrap() {
        assert_eq!(cpus, allowed);
    }
}
