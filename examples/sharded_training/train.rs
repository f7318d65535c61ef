//! One rank's training loop body, the same for a member of a sharded run and for the
//! unsharded reference: draw this rank's rows of the step's global batch, compute the loss and
//! gradients (the tensor-parallel group reducing inside the blocks), average the gradients
//! across the data-parallel group in one flat buffer, and take an Adam step.
//!
//! Time spent inside reductions is counted apart from the rest, for the collective share.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::data::Corpus;
use crate::model::{self, Adam, ModelSize, Params, Reduce, Shard};

/// A run's shape: the model, the optimisation and the sharding.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Plan {
    /// The model's shape.
    pub(crate) size: ModelSize,
    /// Rows (predicted characters) per step, over all data-parallel replicas.
    pub(crate) batch: usize,
    /// Adam's learning rate.
    pub(crate) lr: f32,
    /// Seed of the weights and of every batch.
    pub(crate) seed: u64,
    /// Tensor-parallel ranks (shards of each block).
    pub(crate) tp: usize,
    /// Data-parallel replicas.
    pub(crate) dp: usize,
}

impl Plan {
    /// Checks the plan against `corpus`, naming the first flag that is wrong.
    pub(crate) fn validate(&self, corpus: &Corpus) -> Result<(), manta::Error> {
        let bad = |what: &str, message: String| {
            Err(manta::Error::InvalidArgument {
                what: format!("sharded_training: {what}"),
                message,
            })
        };
        let s = &self.size;
        if self.tp == 0 || self.dp == 0 {
            return bad("--tp/--dp", "both must be at least 1".into());
        }
        if s.ctx == 0 || s.embed == 0 || s.hidden == 0 || s.ffn == 0 {
            return bad(
                "model size",
                "--ctx, --embed, --hidden, --ffn must be > 0".into(),
            );
        }
        if !s.ffn.is_multiple_of(self.tp) {
            return bad(
                "--ffn",
                format!("{} is not a multiple of --tp {}", s.ffn, self.tp),
            );
        }
        if self.batch == 0 || !self.batch.is_multiple_of(self.dp) {
            return bad(
                "--batch",
                format!(
                    "{} is not a positive multiple of --dp {}",
                    self.batch, self.dp
                ),
            );
        }
        if s.ctx >= corpus.len() {
            return bad("--ctx", format!("{} is not shorter than the text", s.ctx));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("--lr", format!("{} is not a positive number", self.lr));
        }
        Ok(())
    }
}

/// What one rank measured in one step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct StepStats {
    /// Mean loss over this rank's rows, before the update.
    pub(crate) loss: f32,
    /// Seconds the whole step took on this rank.
    pub(crate) step_s: f64,
    /// Seconds of it spent inside collectives (tensor- and data-parallel).
    pub(crate) comm_s: f64,
    /// Seconds inside each collective call, in the order of the calls (every member makes
    /// the same calls in the same order): the driver takes each call's fastest member as
    /// the call's own cost, the rest as waiting for a later member.
    pub(crate) calls_s: Vec<f64>,
}

/// A group reduction that adds the time spent in it to a counter and a list.
struct Timed<'a, R> {
    group: &'a R,
    spent: &'a Cell<Duration>,
    calls: &'a RefCell<Vec<f64>>,
}

impl<R> Timed<'_, R> {
    fn timed(&self, f: impl FnOnce() -> Result<(), manta::Error>) -> Result<(), manta::Error> {
        let t = Instant::now();
        let r = f();
        let took = t.elapsed();
        self.spent.set(self.spent.get() + took);
        self.calls.borrow_mut().push(took.as_secs_f64());
        r
    }
}

impl<R: Reduce> Reduce for Timed<'_, R> {
    fn sum(&self, data: &mut [f32]) -> Result<(), manta::Error> {
        self.timed(|| self.group.sum(data))
    }
    fn mean(&self, data: &mut [f32]) -> Result<(), manta::Error> {
        self.timed(|| self.group.mean(data))
    }
}

/// One rank's model, optimizer and data.
#[derive(Debug)]
pub(crate) struct Trainer {
    plan: Plan,
    dp_rank: usize,
    corpus: Corpus,
    params: Params,
    grads: Params,
    adam: Adam,
    flat: Vec<f32>,
}

impl Trainer {
    /// The rank at `tp_rank` in its tensor-parallel group and `dp_rank` in its data-parallel
    /// group, at step 0.
    pub(crate) fn new(plan: Plan, tp_rank: usize, dp_rank: usize) -> Result<Trainer, manta::Error> {
        let corpus = Corpus::shipped();
        plan.validate(&corpus)?;
        if tp_rank >= plan.tp || dp_rank >= plan.dp {
            return Err(manta::Error::InvalidArgument {
                what: "sharded_training: rank".into(),
                message: format!(
                    "tp rank {tp_rank} of {} / dp rank {dp_rank} of {}",
                    plan.tp, plan.dp
                ),
            });
        }
        let shard = Shard {
            rank: tp_rank,
            size: plan.tp,
        };
        let params = Params::init(&plan.size, corpus.vocab(), plan.seed, shard);
        let grads = params.zeros_like();
        let adam = Adam::new(&params, plan.lr);
        let flat = Vec::with_capacity(params.len());
        Ok(Trainer {
            plan,
            dp_rank,
            corpus,
            params,
            grads,
            adam,
            flat,
        })
    }

    /// The unsharded reference of `plan` (one rank, the whole global batch).
    pub(crate) fn reference(plan: Plan) -> Result<Trainer, manta::Error> {
        Trainer::new(
            Plan {
                tp: 1,
                dp: 1,
                ..plan
            },
            0,
            0,
        )
    }

    /// Training step `step`: forward, backward, gradient average, update.
    pub(crate) fn step(
        &mut self,
        step: u64,
        tp: &impl Reduce,
        dp: &impl Reduce,
    ) -> Result<StepStats, manta::Error> {
        let start = Instant::now();
        let spent = Cell::new(Duration::ZERO);
        let calls = RefCell::new(Vec::new());
        let ctx = self.plan.size.ctx;
        let rows = self.plan.batch / self.plan.dp;
        let global = self
            .corpus
            .batch(self.plan.seed, step, self.plan.batch, ctx);
        let mine = global.rows(ctx, self.dp_rank * rows, (self.dp_rank + 1) * rows);
        let tp = Timed {
            group: tp,
            spent: &spent,
            calls: &calls,
        };
        let loss = model::loss_and_grads(&self.params, &mine, ctx, &tp, &mut self.grads)?;
        if self.plan.dp > 1 {
            // One flat buffer: one collective per step rather than one per tensor.
            self.flat.clear();
            for t in self.grads.tensors() {
                self.flat.extend_from_slice(t);
            }
            Timed {
                group: dp,
                spent: &spent,
                calls: &calls,
            }
            .mean(&mut self.flat)?;
            let mut at = 0;
            for t in self.grads.tensors_mut() {
                t.copy_from_slice(&self.flat[at..at + t.len()]);
                at += t.len();
            }
        }
        self.adam.update(&mut self.params, &self.grads);
        Ok(StepStats {
            loss,
            step_s: start.elapsed().as_secs_f64(),
            comm_s: spent.get().as_secs_f64(),
            calls_s: calls.into_inner(),
        })
    }
}
