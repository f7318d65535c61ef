//! A member of the training group: one actor per (data-parallel replica, tensor-parallel rank),
//! given its ranks in its constructor. It joins two communicators by name — its replica's
//! tensor-parallel group and its shard's data-parallel group — and then runs the steps the
//! driver asks for, every member the same step at the same time.
//!
//! A member computes on a thread of its own, and its actor methods come in pairs: `start_*`
//! hands the thread a command and returns at once, `finish_*` waits (bounded) for the outcome.
//! A collective blocks until every peer has reached it, so a method that ran one would hold a
//! runtime slot while waiting for peers whose own calls may still be queued behind it (with
//! more members than slots, for certain); here a slot only ever waits for its own member's
//! thread, which needs no slot to make progress.

use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use manta::collective::{Communicator, ReduceOp};
use serde::{Deserialize, Serialize};

use crate::model::Reduce;
use crate::train::{Plan, StepStats, Trainer};

/// What a member needs to know: the run and its place in it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct MemberSpec {
    /// The run's shape.
    pub(crate) plan: Plan,
    /// Rank in the tensor-parallel group (which shard of each block).
    pub(crate) tp_rank: usize,
    /// Rank in the data-parallel group (which rows of each batch).
    pub(crate) dp_rank: usize,
    /// A name unique to the run; the communicators' names start with it.
    pub(crate) run: String,
}

impl MemberSpec {
    /// The name of this member's tensor-parallel communicator (one per replica).
    pub(crate) fn tp_group(&self) -> String {
        format!("{}/tp/{}", self.run, self.dp_rank)
    }

    /// The name of this member's data-parallel communicator (one per shard).
    pub(crate) fn dp_group(&self) -> String {
        format!("{}/dp/{}", self.run, self.tp_rank)
    }
}

impl Reduce for Communicator {
    fn sum(&self, data: &mut [f32]) -> Result<(), manta::Error> {
        self.allreduce(data, ReduceOp::Sum)
    }
    fn mean(&self, data: &mut [f32]) -> Result<(), manta::Error> {
        self.allreduce(data, ReduceOp::Avg)
    }
}

/// A command for a member's thread.
enum Command {
    Join,
    Step(u64),
}

/// What the thread did with a command.
enum Outcome {
    /// Joined, over these backends (tensor-parallel, data-parallel).
    Joined(&'static str, &'static str),
    Stepped(StepStats),
}

/// The member's thread: builds the trainer, then runs commands until the actor goes.
fn serve(spec: MemberSpec, commands: Receiver<Command>, outcomes: Sender<Result<Outcome, String>>) {
    let mut trainer =
        Trainer::new(spec.plan, spec.tp_rank, spec.dp_rank).map_err(|e| e.to_string());
    let mut groups: Option<(Communicator, Communicator)> = None;
    for command in commands {
        let outcome = match command {
            Command::Join => join(&spec).map(|(tp, dp)| {
                let joined = Outcome::Joined(tp.backend(), dp.backend());
                groups = Some((tp, dp));
                joined
            }),
            Command::Step(step) => match (&mut trainer, &groups) {
                (Err(e), _) => Err(e.clone()),
                (_, None) => Err("step before join".to_owned()),
                (Ok(t), Some((tp, dp))) => t
                    .step(step, tp, dp)
                    .map(Outcome::Stepped)
                    .map_err(|e| format!("step {step}: {e}")),
            },
        };
        if outcomes.send(outcome).is_err() {
            return;
        }
    }
}

/// Joins the member's tensor- and data-parallel communicators.
fn join(spec: &MemberSpec) -> Result<(Communicator, Communicator), String> {
    let (tp_name, dp_name) = (spec.tp_group(), spec.dp_group());
    let tp = Communicator::join(&tp_name, spec.tp_rank, spec.plan.tp)
        .map_err(|e| format!("joining {tp_name}: {e}"))?;
    let dp = Communicator::join(&dp_name, spec.dp_rank, spec.plan.dp)
        .map_err(|e| format!("joining {dp_name}: {e}"))?;
    Ok((tp, dp))
}

/// One rank of the sharded model.
#[manta::actor]
pub(crate) struct Member {
    commands: Sender<Command>,
    outcomes: Mutex<Receiver<Result<Outcome, String>>>,
}

#[manta::actor]
impl Member {
    /// The member at `spec`'s ranks: starts its thread, which builds its shard of the initial
    /// weights. The thread ends when the actor goes (after the command it is running).
    pub(crate) fn new(spec: MemberSpec) -> Self {
        let (commands, inbox) = mpsc::channel();
        let (outbox, outcomes) = mpsc::channel();
        let name = format!("member-tp{}-dp{}", spec.tp_rank, spec.dp_rank);
        if let Err(e) = std::thread::Builder::new()
            .name(name)
            .spawn(move || serve(spec, inbox, outbox))
        {
            // The channels' other ends are gone with the closure: every call says so.
            eprintln!("sharded_training: could not start a member thread: {e}");
        }
        Member {
            commands,
            outcomes: Mutex::new(outcomes),
        }
    }

    /// Starts joining both communicators (returns at once).
    pub(crate) fn start_join(&mut self) -> Result<(), String> {
        self.send(Command::Join)
    }

    /// Waits up to `timeout_s` for the join to complete (every member of both groups joined);
    /// says where the member runs and which backends its groups use.
    pub(crate) fn finish_join(&mut self, timeout_s: u64) -> Result<String, String> {
        match self.receive(timeout_s)? {
            Outcome::Joined(tp, dp) => Ok(format!(
                "process {}, tp over {tp}, dp over {dp}",
                std::process::id()
            )),
            Outcome::Stepped(_) => Err("expected a join, got a step".into()),
        }
    }

    /// Starts training step `step` (returns at once).
    pub(crate) fn start_step(&mut self, step: u64) -> Result<(), String> {
        self.send(Command::Step(step))
    }

    /// Waits up to `timeout_s` for the step started last, and reports its loss and timings.
    pub(crate) fn finish_step(&mut self, timeout_s: u64) -> Result<StepStats, String> {
        match self.receive(timeout_s)? {
            Outcome::Stepped(stats) => Ok(stats),
            Outcome::Joined(..) => Err("expected a step, got a join".into()),
        }
    }
}

impl Member {
    fn send(&self, command: Command) -> Result<(), String> {
        self.commands
            .send(command)
            .map_err(|_| "the member's thread has ended".to_owned())
    }

    fn receive(&self, timeout_s: u64) -> Result<Outcome, String> {
        let outcomes = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        match outcomes.recv_timeout(Duration::from_secs(timeout_s)) {
            Ok(outcome) => outcome,
            Err(RecvTimeoutError::Timeout) => Err(format!("no outcome within {timeout_s} s")),
            Err(RecvTimeoutError::Disconnected) => Err("the member's thread has ended".into()),
        }
    }
}
