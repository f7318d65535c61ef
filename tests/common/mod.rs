//! Shared test helpers: one runtime at a time per process.
//!
//! nextest runs each test in its own process; `cargo test` runs a file's tests as threads of
//! one process, where the runtime (one per process) must be taken in turn.

#[allow(dead_code)] // only the cluster tests use it
pub(crate) mod cluster;

use std::sync::{Mutex, MutexGuard};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A running runtime, shut down when dropped.
pub(crate) struct Runtime {
    _turn: MutexGuard<'static, ()>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        manta::shutdown();
    }
}

/// This test's turn at the process's one runtime, with none running.
pub(crate) fn turn() -> MutexGuard<'static, ()> {
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    manta::shutdown();
    turn
}

/// Starts a runtime with `config` (2 CPUs unless the test says otherwise).
pub(crate) fn start(config: manta::Config) -> Runtime {
    let turn = turn();
    manta::init_with(config).expect("init");
    Runtime { _turn: turn }
}

/// The default test cluster: 2 CPUs, whatever the host has.
#[allow(dead_code)] // not every test file uses it
pub(crate) fn start_default() -> Runtime {
    start(manta::Config::default().num_cpus(2.0))
}

/// The calling thread's allowed CPUs, as the kernel reports them (`0-3,8`).
#[allow(dead_code)] // the affinity tests' helper
pub(crate) fn thread_cpus() -> String {
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_default()
}

/// A small seeded generator (xorshift64), for tests that pick sizes, values or victims.
#[allow(dead_code)] // not every test file uses it
pub(crate) struct Rng(pub(crate) u64);

#[allow(dead_code)]
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value below `n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
