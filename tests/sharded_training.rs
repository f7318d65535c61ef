//! The sharded training example (`examples/sharded_training/`): its tensor-parallel layers
//! against the unsharded model, its backward pass against finite differences, and short
//! training runs through the runtime (embedded and as the driver of a one-node cluster) whose
//! loss must fall and match the unsharded run.
//!
//! The math tests stand a plain in-memory sum among threads in for the communicator; the
//! training runs use Manta's collectives between actors.

mod common;

#[path = "../examples/sharded_training/data.rs"]
#[allow(dead_code)]
mod data;
#[path = "../examples/sharded_training/driver.rs"]
#[allow(dead_code)]
mod driver;
#[path = "../examples/sharded_training/member.rs"]
#[allow(dead_code)]
mod member;
#[path = "../examples/sharded_training/model.rs"]
#[allow(dead_code)]
mod model;
#[path = "../examples/sharded_training/train.rs"]
#[allow(dead_code)]
mod train;

use std::sync::{Arc, Barrier, Mutex};

use clap::Parser;
use common::cluster::{LocalCluster, NodeSpec, serve_if_worker};
use model::{Alone, Batch, ModelSize, Params, Reduce, Shard};
use train::{Plan, Trainer};

/// An in-memory sum among the threads of a group (math tests only): each rank posts its
/// vector, then each adds all of them in rank order, so every rank gets the same bits.
struct LocalGroup {
    rank: usize,
    shared: Arc<(Barrier, Mutex<Vec<Vec<f32>>>)>,
}

impl LocalGroup {
    fn new(size: usize) -> Vec<LocalGroup> {
        let shared = Arc::new((Barrier::new(size), Mutex::new(vec![Vec::new(); size])));
        (0..size)
            .map(|rank| LocalGroup {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }
}

impl Reduce for LocalGroup {
    fn sum(&self, data: &mut [f32]) -> Result<(), manta::Error> {
        let (barrier, slots) = &*self.shared;
        slots.lock().unwrap()[self.rank] = data.to_vec();
        barrier.wait();
        {
            let slots = slots.lock().unwrap();
            data.fill(0.0);
            for s in slots.iter() {
                data.iter_mut().zip(s).for_each(|(d, v)| *d += v);
            }
        }
        barrier.wait();
        Ok(())
    }
    fn mean(&self, data: &mut [f32]) -> Result<(), manta::Error> {
        self.sum(data)?;
        let n = self.shared.1.lock().unwrap().len() as f32;
        data.iter_mut().for_each(|d| *d /= n);
        Ok(())
    }
}

const TINY: ModelSize = ModelSize {
    ctx: 4,
    embed: 8,
    hidden: 16,
    ffn: 24,
    blocks: 2,
};

fn tiny_batch(rows: usize) -> Batch {
    data::Corpus::shipped().batch(3, 0, rows, TINY.ctx)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The loss and gradients of `tp` shards, computed in threads, against the whole model's:
/// the replicated tensors equal the whole gradients, the split ones their slices.
fn check_shards_against_whole(tp: usize) {
    let vocab = data::Corpus::shipped().vocab();
    let batch = tiny_batch(32);
    let whole = Params::init(&TINY, vocab, 11, Shard { rank: 0, size: 1 });
    let mut g_whole = whole.zeros_like();
    let loss_whole = model::loss_and_grads(&whole, &batch, TINY.ctx, &Alone, &mut g_whole).unwrap();
    let results: Vec<(f32, Params)> = std::thread::scope(|s| {
        let handles: Vec<_> = LocalGroup::new(tp)
            .into_iter()
            .map(|group| {
                let batch = batch.clone();
                s.spawn(move || {
                    let shard = Shard {
                        rank: group.rank,
                        size: tp,
                    };
                    let p = Params::init(&TINY, vocab, 11, shard);
                    let mut g = p.zeros_like();
                    let loss = model::loss_and_grads(&p, &batch, TINY.ctx, &group, &mut g).unwrap();
                    (loss, g)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let per = TINY.ffn / tp;
    for (rank, (loss, g)) in results.iter().enumerate() {
        assert!(
            (loss - loss_whole).abs() <= 1e-5 * loss_whole,
            "rank {rank}: {loss} vs {loss_whole}"
        );
        let tol = 1e-5;
        assert!(max_abs_diff(g.emb.as_slice().unwrap(), g_whole.emb.as_slice().unwrap()) < tol);
        assert!(max_abs_diff(g.w_in.as_slice().unwrap(), g_whole.w_in.as_slice().unwrap()) < tol);
        assert!(
            max_abs_diff(
                g.w_out.as_slice().unwrap(),
                g_whole.w_out.as_slice().unwrap()
            ) < tol
        );
        for (b, (gb, wb)) in g.blocks.iter().zip(&g_whole.blocks).enumerate() {
            let cols = wb
                .w1
                .slice(ndarray::s![.., rank * per..(rank + 1) * per])
                .to_owned();
            let rows = wb
                .w2
                .slice(ndarray::s![rank * per..(rank + 1) * per, ..])
                .to_owned();
            let b1 = wb
                .b1
                .slice(ndarray::s![rank * per..(rank + 1) * per])
                .to_owned();
            assert!(
                max_abs_diff(gb.w1.as_slice().unwrap(), cols.as_slice().unwrap()) < tol,
                "block {b} w1"
            );
            assert!(
                max_abs_diff(gb.w2.as_slice().unwrap(), rows.as_slice().unwrap()) < tol,
                "block {b} w2"
            );
            assert!(
                max_abs_diff(gb.b1.as_slice().unwrap(), b1.as_slice().unwrap()) < tol,
                "block {b} b1"
            );
            assert!(
                max_abs_diff(gb.b2.as_slice().unwrap(), wb.b2.as_slice().unwrap()) < tol,
                "block {b} b2"
            );
        }
    }
}

#[test]
fn two_shards_give_the_whole_models_loss_and_gradients() {
    check_shards_against_whole(2);
}

#[test]
fn three_shards_give_the_whole_models_loss_and_gradients() {
    check_shards_against_whole(3);
}

/// Central differences of the whole model's loss against its backward pass, for the largest
/// gradient entries of every tensor.
#[test]
fn backward_matches_finite_differences() {
    let vocab = data::Corpus::shipped().vocab();
    let batch = tiny_batch(16);
    let p = Params::init(&TINY, vocab, 5, Shard { rank: 0, size: 1 });
    let mut g = p.zeros_like();
    model::loss_and_grads(&p, &batch, TINY.ctx, &Alone, &mut g).unwrap();
    let mut scratch = p.zeros_like();
    let n_tensors = g.tensors().len();
    for t in 0..n_tensors {
        // The entry with the largest gradient: finite differences resolve it best in f32.
        let (i, &gi) = g.tensors()[t]
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        if gi.abs() < 1e-4 {
            continue; // b2 of a block whose ReLUs are all off for this batch, etc.
        }
        let eps = 1e-2f32;
        let mut loss_at = |delta: f32| {
            let mut q = p.clone();
            q.tensors_mut()[t][i] += delta;
            model::loss_and_grads(&q, &batch, TINY.ctx, &Alone, &mut scratch).unwrap()
        };
        let numeric = (loss_at(eps) - loss_at(-eps)) / (2.0 * eps);
        assert!(
            (numeric - gi).abs() <= 0.05 * gi.abs() + 1e-3,
            "tensor {t} entry {i}: backward {gi}, finite differences {numeric}"
        );
    }
}

/// `tp × dp` trainers in threads, their losses against the unsharded trainer's, step by step.
#[test]
fn sharded_trainers_follow_the_unsharded_run() {
    let plan = Plan {
        size: TINY,
        batch: 32,
        lr: 3e-3,
        seed: 9,
        tp: 2,
        dp: 2,
    };
    let steps = 8;
    let mut reference = Trainer::reference(plan).unwrap();
    let expected: Vec<f32> = (0..steps)
        .map(|s| reference.step(s, &Alone, &Alone).unwrap().loss)
        .collect();
    let mut tp_groups: Vec<Vec<Option<LocalGroup>>> = (0..plan.dp)
        .map(|_| LocalGroup::new(plan.tp).into_iter().map(Some).collect())
        .collect();
    let mut dp_groups: Vec<Vec<Option<LocalGroup>>> = (0..plan.tp)
        .map(|_| LocalGroup::new(plan.dp).into_iter().map(Some).collect())
        .collect();
    let curves: Vec<(usize, Vec<f32>)> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for dp_rank in 0..plan.dp {
            for tp_rank in 0..plan.tp {
                let tp = tp_groups[dp_rank][tp_rank].take().unwrap();
                let dp = dp_groups[tp_rank][dp_rank].take().unwrap();
                handles.push(s.spawn(move || {
                    let mut t = Trainer::new(plan, tp_rank, dp_rank).unwrap();
                    let curve = (0..steps)
                        .map(|s| t.step(s, &tp, &dp).unwrap().loss)
                        .collect();
                    (dp_rank, curve)
                }));
            }
        }
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for step in 0..steps as usize {
        // The global loss: the mean of the replicas' (each replica's ranks agree).
        let mean = curves.iter().map(|(_, c)| c[step]).sum::<f32>() / curves.len() as f32;
        let want = expected[step];
        assert!(
            (mean - want).abs() <= 1e-4 * want,
            "step {step}: sharded {mean}, unsharded {want}"
        );
    }
    assert!(
        expected[steps as usize - 1] < expected[0],
        "the loss fell: {expected:?}"
    );
}

/// Flags of a short run of a tiny model.
fn short_run(tp: usize, dp: usize) -> driver::Options {
    let (tp, dp) = (tp.to_string(), dp.to_string());
    driver::Options::parse_from([
        "sharded_training",
        "--tp",
        &tp,
        "--dp",
        &dp,
        "--steps",
        "30",
        "--ctx",
        "8",
        "--embed",
        "8",
        "--hidden",
        "32",
        "--ffn",
        "64",
        "--blocks",
        "2",
        "--batch",
        "64",
        "--lr",
        "3e-3",
        "--timeout-s",
        "60",
    ])
}

/// The run's loss fell and matched the unsharded replay.
fn assert_trained(opts: &driver::Options, report: &driver::Report) {
    let (first, last) = (report.losses[0], *report.losses.last().unwrap());
    assert_eq!(report.losses.len(), 30);
    assert!(
        last < 0.85 * first,
        "the loss did not fall: {first} -> {last}"
    );
    assert!(
        report.matches(opts),
        "the curves differ: {:.2e} over the first steps, {:.2e} over all",
        report.strict_diff,
        report.drift_diff
    );
    assert!(report.comm_share > 0.0 && report.comm_share < 1.0);
    // Each call's fastest member spends some time in it, and no more than the members'
    // mean; the driver's time outside the steps is a share of its wall time.
    assert!(
        report.own_share > 0.0 && report.own_share <= report.comm_share + 1e-9,
        "own share {} against the collective share {}",
        report.own_share,
        report.comm_share
    );
    assert!((0.0..1.0).contains(&report.outside_share));
}

#[test]
fn trains_on_the_embedded_runtime() {
    // Four members of one CPU each (logical CPUs: the host may have fewer).
    let _rt = common::start(manta::Config::default().num_cpus(4.0));
    let opts = short_run(2, 2);
    let report = driver::train(&opts).expect("training");
    assert_trained(&opts, &report);
}

#[test]
fn trains_as_the_driver_of_a_one_node_cluster() {
    serve_if_worker();
    let cluster = LocalCluster::start(
        NodeSpec {
            num_cpus: 4.0,
            ..NodeSpec::default()
        },
        &[],
    );
    let _rt = common::start(cluster.config());
    let opts = short_run(2, 2);
    let report = driver::train(&opts).expect("training");
    assert_trained(&opts, &report);
}

#[test]
fn a_bad_plan_is_refused_before_any_member_starts() {
    let _rt = common::start(manta::Config::default().num_cpus(2.0));
    let mut opts = short_run(3, 1); // --ffn 64 does not split 3 ways
    let err = driver::train(&opts).expect_err("ffn 64 over tp 3");
    assert!(err.to_string().contains("--ffn"), "{err}");
    opts.tp = 2;
    opts.batch = 63;
    opts.dp = 2;
    let err = driver::train(&opts).expect_err("batch 63 over dp 2");
    assert!(err.to_string().contains("--batch"), "{err}");
    opts.batch = 64;
    let err = driver::train(&opts).expect_err("4 members of 1 CPU on 2 CPUs");
    assert!(err.to_string().contains("--member-cpus"), "{err}");
}

/// The check fails where the curves part: early beyond `--tolerance`, anywhere beyond
/// `--drift-tolerance`, on a NaN, or on a curve cut short.
#[test]
fn the_loss_check_catches_a_curve_that_parts() {
    let opts = short_run(2, 1);
    let reference: Vec<f32> = (0..30).map(|s| 4.0 - 0.05 * s as f32).collect();
    let check = |losses: Vec<f32>| {
        let mut r = driver::Report {
            losses,
            ..driver::Report::default()
        };
        r.compare(reference.clone(), opts.strict_steps);
        r.matches(&opts)
    };
    assert!(check(reference.clone()));
    let mut early = reference.clone();
    early[1] *= 1.0 + 1e-3; // (dropping the backward allreduce parts them by 3e-2 in 10 steps)
    assert!(!check(early));
    let mut late = reference.clone();
    late[25] *= 1.0 + 1e-2; // within the drift tolerance after the strict window
    assert!(check(late.clone()));
    late[25] = reference[25] * 1.1;
    assert!(!check(late));
    let mut nan = reference.clone();
    nan[20] = f32::NAN;
    assert!(!check(nan));
    assert!(!check(reference[..29].to_vec()));
    let unchecked = driver::Report {
        losses: reference.clone(),
        ..driver::Report::default()
    };
    assert!(!unchecked.matches(&opts), "no check ran");
}

/// A member's process killed mid-run: the run ends with an error naming a member, within its
/// timeouts, rather than hanging.
#[test]
fn a_member_killed_mid_run_ends_the_run_with_an_error() {
    serve_if_worker();
    let cluster = LocalCluster::start(
        NodeSpec {
            num_cpus: 4.0,
            ..NodeSpec::default()
        },
        &[],
    );
    let _rt = common::start(cluster.config());
    let mut opts = short_run(2, 2);
    opts.steps = 1_000_000; // far more than the run lasts
    opts.timeout_s = 10;
    opts.no_check = true;
    let started = std::time::Instant::now();
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            // Let the members join and train a while, then kill their worker process.
            std::thread::sleep(std::time::Duration::from_secs(3));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while cluster.kill_worker(None).is_none() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no worker process to kill"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
        driver::train(&opts)
    });
    let err = result.expect_err("the run outlived its members");
    let waited = started.elapsed();
    eprintln!("the run ended {waited:?} after its start: {err}");
    assert!(err.to_string().contains("member tp "), "{err}");
    assert!(
        waited < std::time::Duration::from_secs(60),
        "the run took {waited:?} to fail"
    );
}
