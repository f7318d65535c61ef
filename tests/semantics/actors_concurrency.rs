//! Threaded actors (`max_concurrency > 1`): up to `max_concurrency` calls run at once, however
//! many CPUs the node has, as in Ray (issue 11, item 4).

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::harness::{Case, Ctx};

pub(crate) const CASES: &[Case] = &[Case::new(
    "actors_concurrency::max_concurrency_is_not_capped_by_cpus",
    max_concurrency_beyond_cpus,
)];

/// How long a call waits at the latch before it gives up (a failing run ends, not hangs).
const MEET_TIMEOUT: Duration = Duration::from_secs(5);

#[manta::actor]
pub(crate) struct Meeting {
    arrived: Mutex<usize>,
    all_here: Condvar,
    expected: usize,
}

#[manta::actor]
impl Meeting {
    pub(crate) fn new(expected: usize) -> Self {
        Meeting {
            arrived: Mutex::new(0),
            all_here: Condvar::new(),
            expected,
        }
    }

    /// Arrives at the latch and waits there for the others: whether all arrived in time.
    pub(crate) fn meet(&self) -> bool {
        let mut arrived = self.arrived.lock().unwrap();
        *arrived += 1;
        self.all_here.notify_all();
        let (arrived, timeout) = self
            .all_here
            .wait_timeout_while(arrived, MEET_TIMEOUT, |n| *n < self.expected)
            .unwrap();
        !timeout.timed_out() || *arrived >= self.expected
    }
}

/// `max_concurrency(n)` calls that wait for each other all run, with n above the node's CPUs
/// (4 on 2 CPUs; 3 on the 1-CPU ranks of srun). They deadlocked when each running call took a
/// CPU slot.
fn max_concurrency_beyond_cpus(ctx: &Ctx) {
    // Two more than the CPUs: a waiting caller that drains the actor itself is one more
    // thread, and the bound must hold without it.
    let n = ctx.cpus as usize + 2;
    let a = Meeting::options().max_concurrency(n).remote(n);
    let calls: Vec<_> = (0..n).map(|_| a.meet()).collect();
    let met: Vec<bool> = calls
        .iter()
        .map(|c| c.get_timeout(MEET_TIMEOUT * 3).expect("the call ran"))
        .collect();
    assert!(
        met.iter().all(|m| *m),
        "only {} of {n} calls ran at once on {} CPUs (max_concurrency {n}): {met:?}",
        met.iter().filter(|m| **m).count(),
        ctx.cpus
    );
}
