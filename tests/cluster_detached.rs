//! Detached named actors across jobs (Ray's `lifetime="detached"`): a first driver process
//! creates one and exits; a second driver — another job, this test process — finds it by
//! name in the job namespace they share, calls it with its state intact, and kills it, after
//! which the worker process kept for it exits. A named actor of the first job that is not
//! detached dies with that job, though its worker process is kept.
//!
//! The test binary re-executes itself as the first driver ([`ROLE`] set).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::cluster::{LocalCluster, NodeSpec, Tally, eventually, serve_if_worker};

/// Set in the first driver's environment (not `MANTA_*`: drivers forward those to workers).
const ROLE: &str = "DETACHED_TEST_FIRST_DRIVER";
const NAMESPACE: &str = "detached-test";
/// How long a death or an exit may take to reach the GCS.
const SETTLE: Duration = Duration::from_secs(15);

/// The first job: a detached actor and a plain named one, both called, then exit.
fn first_driver() -> ! {
    let config = manta::Config::default().namespace(NAMESPACE.into());
    manta::init_with(config).expect("the first driver joins");
    let keeper = Tally::options().name("keeper").lifetime_detached().remote();
    assert_eq!(keeper.add(3).get().unwrap(), 3);
    let plain = Tally::options().name("plain").remote();
    assert_eq!(plain.add(1).get().unwrap(), 1);
    drop(keeper);
    assert_eq!(
        manta::get_actor::<Tally>("keeper")
            .unwrap()
            .add(4)
            .get()
            .unwrap(),
        7
    );
    manta::shutdown();
    std::process::exit(0);
}

fn live_workers(cluster: &LocalCluster) -> usize {
    let state = manta::cluster::query(&cluster.address, &cluster.token).unwrap();
    state.nodes.iter().map(|n| n.workers as usize).sum()
}

#[test]
fn a_detached_actor_outlives_its_driver_for_another_job() {
    serve_if_worker();
    if std::env::var_os(ROLE).is_some() {
        first_driver();
    }
    let cluster = LocalCluster::start(
        NodeSpec {
            num_cpus: 2.0,
            ..NodeSpec::default()
        },
        &[],
    );
    let exe = std::env::current_exe().unwrap();
    let status = Command::new(exe)
        .args(std::env::args().skip(1))
        .env(ROLE, "1")
        .env("MANTA_ADDRESS", &cluster.address)
        .env("MANTA_TOKEN", &cluster.token)
        .stdin(Stdio::null())
        .status()
        .expect("starting the first driver");
    assert!(status.success(), "the first driver failed: {status}");

    let _rt = common::start(cluster.config().namespace(NAMESPACE.into()));
    // The plain named actor died with its job; the detached one lives on, state and all.
    eventually("the first job's plain named actor", 1, SETTLE, || {
        usize::from(matches!(
            manta::get_actor::<Tally>("plain"),
            Err(manta::Error::ActorNotFound { .. })
        ))
    });
    let keeper = manta::get_actor::<Tally>("keeper").expect("the detached actor lives");
    assert_eq!(keeper.add(10).get().unwrap(), 17);
    assert!(
        matches!(
            manta::get_actor_in::<Tally>("keeper", ""),
            Err(manta::Error::ActorNotFound { .. })
        ),
        "found outside its namespace"
    );
    assert_eq!(live_workers(&cluster), 1, "the worker kept for the actor");
    // Until killed.
    assert!(manta::kill(&keeper).unwrap());
    eventually("the detached actor after its kill", 1, SETTLE, || {
        usize::from(matches!(
            manta::get_actor::<Tally>("keeper"),
            Err(manta::Error::ActorNotFound { .. })
        ))
    });
    eventually(
        "worker processes once nothing is detached",
        0,
        SETTLE,
        || live_workers(&cluster),
    );
}
