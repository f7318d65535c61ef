//! A member of the training group: one actor of an actor group (`ActorGroup`) per
//! (data-parallel replica, tensor-parallel rank), member `dp_rank * tp + tp_rank` in its
//! bundle of the run's placement group. Its constructor joins the group's communicator
//! (`Communicator::join_group`: the name comes from the group, the rank and size from the
//! member) and splits it into its replica's tensor-parallel group and its shard's
//! data-parallel group. A training step is one direct method call on every member
//! (`group.call(|m| m.step(s))`), which computes and blocks in its collectives until its peers
//! reach them; the runtime adds a slot when actor calls wait like this while others queue
//! (ARCHITECTURE.md, "Actors and the monitor"), so the members need no threads of their own.

use manta::collective::{Communicator, ReduceOp};

use crate::model::Reduce;
use crate::train::{Plan, StepStats, Trainer};

impl Reduce for Communicator {
    fn sum(&self, data: &mut [f32]) -> Result<(), manta::Error> {
        self.allreduce(data, ReduceOp::Sum)
    }
    fn mean(&self, data: &mut [f32]) -> Result<(), manta::Error> {
        self.allreduce(data, ReduceOp::Avg)
    }
}

/// A member's trainer and communicators, once joined.
struct Joined {
    trainer: Trainer,
    tp: Communicator,
    dp: Communicator,
    /// The whole group's communicator (the other two are split from it).
    _group: Communicator,
}

/// A member's (tensor-parallel, data-parallel) ranks for its group rank.
pub(crate) fn ranks(plan: &Plan, rank: usize) -> (usize, usize) {
    (rank % plan.tp, rank / plan.tp)
}

/// Joins the group's communicator and splits it; builds the trainer.
fn join(plan: Plan, group: &str) -> Result<Joined, String> {
    let rank = manta::group_rank().ok_or("not an actor group's member")?;
    let (tp_rank, dp_rank) = ranks(&plan, rank);
    let trainer = Trainer::new(plan, tp_rank, dp_rank).map_err(|e| e.to_string())?;
    let whole = Communicator::join_group(group).map_err(|e| format!("joining {group}: {e}"))?;
    // This replica's ranks (consecutive), then this shard's (every tp-th).
    let replica: Vec<usize> = (0..plan.tp).map(|t| dp_rank * plan.tp + t).collect();
    let shard: Vec<usize> = (0..plan.dp).map(|d| d * plan.tp + tp_rank).collect();
    let tp = whole
        .split(&replica)
        .map_err(|e| format!("the tensor-parallel group: {e}"))?;
    let dp = whole
        .split(&shard)
        .map_err(|e| format!("the data-parallel group: {e}"))?;
    Ok(Joined {
        trainer,
        tp,
        dp,
        _group: whole,
    })
}

/// One rank of the sharded model.
#[manta::actor]
pub(crate) struct Member {
    joined: Result<Joined, String>,
}

#[manta::actor]
impl Member {
    /// The member of its group rank: builds its shard of the initial weights and joins the
    /// communicator of actor group `group` (its `collective_name`), which returns once every
    /// member joined (bounded by the collective timeout). A failure is kept and reported by
    /// every call.
    pub(crate) fn new(plan: Plan, group: String) -> Self {
        Member {
            joined: join(plan, &group),
        }
    }

    /// Where the member runs and which backends its groups use.
    pub(crate) fn place(&self) -> Result<String, String> {
        let j = self.joined.as_ref().map_err(Clone::clone)?;
        Ok(format!(
            "process {}, tp over {}, dp over {}",
            std::process::id(),
            j.tp.backend(),
            j.dp.backend()
        ))
    }

    /// Runs training step `step`: its loss and timings.
    pub(crate) fn step(&mut self, step: u64) -> Result<StepStats, String> {
        let j = self.joined.as_mut().map_err(|e| e.clone())?;
        j.trainer
            .step(step, &j.tp, &j.dp)
            .map_err(|e| format!("step {step}: {e}"))
    }
}
