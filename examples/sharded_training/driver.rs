//! The driver: parses the flags, creates the `tp × dp` members (an actor group in a placement
//! group), runs the steps (one `group.call` each) with a progress bar, measures the share of
//! step time spent in collectives, and replays the run unsharded in this process to check the
//! loss curve.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use manta::{ActorGroup, Bundle, PlacementStrategy};

use crate::member::{Member, ranks as member_ranks};
use crate::model::{Alone, ModelSize};
use crate::train::{Plan, StepStats, Trainer};

/// Trains a character-level language model sharded `--tp` ways (Megatron-style tensor
/// parallelism) on each of `--dp` data-parallel replicas, then checks its loss curve against
/// the same run unsharded.
#[derive(Clone, Debug, Parser)]
#[command(name = "sharded_training")]
pub(crate) struct Options {
    /// Tensor-parallel ranks: shards of each block's weights.
    #[arg(long, default_value_t = 2)]
    pub(crate) tp: usize,
    /// Data-parallel replicas: each takes an equal share of every batch.
    #[arg(long, default_value_t = 1)]
    pub(crate) dp: usize,
    /// Training steps.
    #[arg(long, default_value_t = 100)]
    pub(crate) steps: u64,
    /// Characters predicted per step, over all replicas (the global batch).
    #[arg(long, default_value_t = 1024)]
    pub(crate) batch: usize,
    /// Characters of context per prediction.
    #[arg(long, default_value_t = 16)]
    pub(crate) ctx: usize,
    /// Width of a character's embedding.
    #[arg(long, default_value_t = 32)]
    pub(crate) embed: usize,
    /// Width of the residual stream.
    #[arg(long, default_value_t = 256)]
    pub(crate) hidden: usize,
    /// Width of each block's inner layer (a multiple of --tp).
    #[arg(long, default_value_t = 1024)]
    pub(crate) ffn: usize,
    /// Residual MLP blocks.
    #[arg(long, default_value_t = 4)]
    pub(crate) blocks: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub(crate) lr: f32,
    /// Seed of the weights and batches.
    #[arg(long, default_value_t = 15)]
    pub(crate) seed: u64,
    /// Largest relative difference allowed between a step's loss and the unsharded run's over
    /// the first `--strict-steps` steps.
    #[arg(long, default_value_t = 1e-4)]
    pub(crate) tolerance: f64,
    /// Steps held to `--tolerance`.
    #[arg(long, default_value_t = 10)]
    pub(crate) strict_steps: u64,
    /// Largest relative difference allowed at any step: rounding differs between the sharded
    /// and the unsharded sums, and training amplifies it step after step.
    #[arg(long, default_value_t = 5e-2)]
    pub(crate) drift_tolerance: f64,
    /// Skip the unsharded replay and its check.
    #[arg(long)]
    pub(crate) no_check: bool,
    /// CPUs each member's bundle holds (it computes on one thread); 0 packs members anywhere.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) member_cpus: f64,
    /// Longest wait for any member's step, in seconds.
    #[arg(long, default_value_t = 300)]
    pub(crate) timeout_s: u64,
}

impl Options {
    /// The run these flags describe.
    pub(crate) fn plan(&self) -> Plan {
        Plan {
            size: ModelSize {
                ctx: self.ctx,
                embed: self.embed,
                hidden: self.hidden,
                ffn: self.ffn,
                blocks: self.blocks,
            },
            batch: self.batch,
            lr: self.lr,
            seed: self.seed,
            tp: self.tp,
            dp: self.dp,
        }
    }
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub(crate) struct Report {
    /// The sharded run's loss at each step (mean over the replicas).
    pub(crate) losses: Vec<f32>,
    /// The unsharded run's, when checked.
    pub(crate) reference: Option<Vec<f32>>,
    /// Largest relative difference between the two curves over the first steps.
    pub(crate) strict_diff: f64,
    /// Largest relative difference between the two curves over the whole run.
    pub(crate) drift_diff: f64,
    /// Share of the members' step time spent in collectives (steps after the first).
    pub(crate) comm_share: f64,
    /// The part of `comm_share` that is the collectives' own cost: each call's fastest
    /// member's time in it (the rest of `comm_share` is members waiting for a later one).
    pub(crate) own_share: f64,
    /// Share of the driver's wall time outside the members' steps (calls, results, the
    /// driver's own work).
    pub(crate) outside_share: f64,
    /// Predicted characters per second over the run (steps after the first).
    pub(crate) tokens_per_s: f64,
}

impl Report {
    /// Whether the check ran and the curves agree within `opts`' tolerances.
    pub(crate) fn matches(&self, opts: &Options) -> bool {
        self.reference.is_some()
            && self.strict_diff <= opts.tolerance
            && self.drift_diff <= opts.drift_tolerance
    }

    /// Compares the run's curve with the unsharded `curve`, the first `strict_steps` apart.
    pub(crate) fn compare(&mut self, curve: Vec<f32>, strict_steps: u64) {
        let diffs: Vec<f64> = self
            .losses
            .iter()
            .zip(&curve)
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs() / f64::from(b).abs().max(1e-6))
            .collect();
        let max = |d: &[f64]| d.iter().copied().fold(0.0, f64::max);
        let strict = diffs
            .len()
            .min(usize::try_from(strict_steps).unwrap_or(usize::MAX));
        self.strict_diff = max(&diffs[..strict]);
        self.drift_diff = max(&diffs);
        // A NaN anywhere is a mismatch, whatever the tolerance.
        if diffs.iter().any(|d| d.is_nan()) || self.losses.len() != curve.len() {
            self.strict_diff = f64::INFINITY;
            self.drift_diff = f64::INFINITY;
        }
        self.reference = Some(curve);
    }
}

type Failure = Box<dyn std::error::Error>;

/// Trains as `opts` says on the running runtime (embedded or a cluster's driver).
pub(crate) fn train(opts: &Options) -> Result<Report, Failure> {
    let plan = opts.plan();
    let corpus = crate::data::Corpus::shipped();
    plan.validate(&corpus)?;
    // The longest wait for a member's step (its collectives have their own bound).
    let timeout = Duration::from_secs(opts.timeout_s.max(1));
    println!(
        "model: ctx {} embed {} hidden {} ffn {} blocks {} ({} parameters, vocabulary {}); \
         batch {}, tp {} x dp {} = {} members",
        plan.size.ctx,
        plan.size.embed,
        plan.size.hidden,
        plan.size.ffn,
        plan.size.blocks,
        plan.size.parameters(corpus.vocab()),
        corpus.vocab(),
        plan.batch,
        plan.tp,
        plan.dp,
        plan.tp * plan.dp,
    );

    // Members that cannot all run at once would wait for each other until the timeout: on the
    // embedded runtime that is known now (a cluster's free CPUs are its nodes' business).
    let status = manta::status()?;
    let cpus = (status.resources.iter())
        .find(|(name, _, _)| name == "CPU")
        .map_or(0.0, |&(_, _, total)| total);
    let wanted = opts.member_cpus * (plan.tp * plan.dp) as f64;
    if status.cluster.is_none() && wanted > cpus {
        return Err(manta::Error::InvalidArgument {
            what: "sharded_training: --member-cpus".into(),
            message: format!(
                "{} members of {} CPU each need {wanted} CPUs; the runtime has {cpus}",
                plan.tp * plan.dp,
                opts.member_cpus
            ),
        }
        .into());
    }
    // One bundle a member, all or nothing; member `dp_rank * tp + tp_rank` in bundle of its rank.
    let n = plan.tp * plan.dp;
    let cpus = if opts.member_cpus > 0.0 {
        opts.member_cpus
    } else {
        0.001
    };
    let pg = manta::placement_group(
        (0..n).map(|_| Bundle::cpus(cpus)).collect(),
        PlacementStrategy::Pack,
    )?;
    pg.ready().get_timeout(timeout).map_err(|e| {
        format!(
            "placing {n} members of {cpus} CPU: {e} (a member holds --member-cpus {}: are \
             there enough free CPUs?)",
            opts.member_cpus
        )
    })?;
    let group = ActorGroup::spawn(&pg, |m| {
        let member = Member::options().group_member(&m);
        let member = if opts.member_cpus > 0.0 {
            member.num_cpus(opts.member_cpus)
        } else {
            member
        };
        member.remote(plan, m.collective_name())
    })?;
    let who = |rank: usize| {
        let (tp, dp) = member_ranks(&plan, rank);
        move |e| format!("member tp {tp} dp {dp}: {e}")
    };
    for (rank, place) in group.call(|m| m.place()).into_iter().enumerate() {
        let place = (place.get_timeout(timeout))
            .map_err(|e| who(rank)(e.to_string()))?
            .map_err(who(rank))?;
        let (tp, dp) = member_ranks(&plan, rank);
        println!("member tp {tp} dp {dp}: {place}");
    }

    let bar = ProgressBar::new(opts.steps);
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} step {pos}/{len} {msg} [{elapsed_precise}]",
    )?);
    let log_lines = !std::io::stderr().is_terminal();
    let every = (opts.steps / 10).max(1);
    let mut report = Report::default();
    let (mut step_s, mut comm_s, mut wall, mut tokens) = (0.0, 0.0, 0.0, 0.0);
    let (mut own_s, mut slowest_step_s) = (0.0, 0.0);
    for step in 0..opts.steps {
        let t = Instant::now();
        // One direct call of every member (a tree of workers in a cluster).
        let mut stats: Vec<StepStats> = Vec::with_capacity(n);
        for (rank, f) in group.call(|m| m.step(step)).into_iter().enumerate() {
            let f = f
                .get_timeout(timeout)
                .map_err(|e| who(rank)(e.to_string()))?;
            stats.push(f.map_err(who(rank))?);
        }
        let elapsed = t.elapsed().as_secs_f64();
        // The replicas' losses, from each replica's tensor-parallel rank 0.
        let loss = (0..n)
            .zip(&stats)
            .filter(|(rank, _)| member_ranks(&plan, *rank).0 == 0)
            .map(|(_, s)| f64::from(s.loss))
            .sum::<f64>()
            / plan.dp as f64;
        report.losses.push(loss as f32);
        if step > 0 {
            // The first step pays for warm-up (first touch of every buffer): left out.
            step_s += stats.iter().map(|s| s.step_s).sum::<f64>();
            comm_s += stats.iter().map(|s| s.comm_s).sum::<f64>();
            let calls = stats.iter().map(|s| s.calls_s.len()).min().unwrap_or(0);
            own_s += n as f64
                * (0..calls)
                    .map(|i| stats.iter().map(|s| s.calls_s[i]).fold(f64::MAX, f64::min))
                    .sum::<f64>();
            slowest_step_s += stats.iter().map(|s| s.step_s).fold(0.0, f64::max);
            wall += elapsed;
            tokens += plan.batch as f64;
        }
        let rate = plan.batch as f64 / elapsed;
        bar.set_message(format!("loss {loss:.4} {rate:.0} tokens/s"));
        bar.inc(1);
        if log_lines && (step % every == 0 || step + 1 == opts.steps) {
            println!("step {step:>5} loss {loss:.4} {rate:>8.0} tokens/s");
        }
    }
    bar.finish();
    manta::remove_placement_group(&pg)?;
    drop(group);
    report.comm_share = if step_s > 0.0 { comm_s / step_s } else { 0.0 };
    report.own_share = if step_s > 0.0 { own_s / step_s } else { 0.0 };
    report.outside_share = if wall > 0.0 {
        (wall - slowest_step_s).max(0.0) / wall
    } else {
        0.0
    };
    report.tokens_per_s = if wall > 0.0 { tokens / wall } else { 0.0 };
    let (first, last) = (
        report.losses.first().copied().unwrap_or(f32::NAN),
        report.losses.last().copied().unwrap_or(f32::NAN),
    );
    println!(
        "loss {first:.4} -> {last:.4} over {} steps; {:.0} tokens/s; collectives {:.1}% of step time",
        opts.steps,
        report.tokens_per_s,
        100.0 * report.comm_share
    );
    println!(
        "step time: compute {:.1}%, collectives {:.1}% ({:.1}% each call's fastest member, \
         {:.1}% waiting for a later member); outside the members' steps {:.1}% of wall time",
        100.0 * (1.0 - report.comm_share),
        100.0 * report.comm_share,
        100.0 * report.own_share,
        100.0 * (report.comm_share - report.own_share).max(0.0),
        100.0 * report.outside_share
    );

    if !opts.no_check {
        let mut reference = Trainer::reference(plan)?;
        let mut curve = Vec::with_capacity(report.losses.len());
        for step in 0..opts.steps {
            curve.push(reference.step(step, &Alone, &Alone)?.loss);
        }
        report.compare(curve, opts.strict_steps);
        println!(
            "check against the unsharded run: largest relative difference {:.1e} over the first \
             {} steps (tolerance {:.0e}), {:.1e} over all (drift tolerance {:.0e}): {}",
            report.strict_diff,
            opts.strict_steps.min(opts.steps),
            opts.tolerance,
            report.drift_diff,
            opts.drift_tolerance,
            if report.matches(opts) {
                "matches"
            } else {
                "DOES NOT MATCH"
            }
        );
    }
    Ok(report)
}
