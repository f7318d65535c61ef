//! The sharded training example (`examples/sharded_training/`): its tensor-parallel layers
//! against the unsharded model, its backward pass against finite differences, and short
//! training runs through the runtime (embedded and as the driver of a one-node cluster) whose
//! loss must fall and match the unsharded run.
//!
//! The math tests stand a plain in-memory sum among threads in for the communicator; the
//! training runs use Manta's collectives between actors.

#[path = "../examples/sharded_training/data.rs"]
#[allow(dead_code)]
mod data;
#[path = "../examples/sharded_training/model.rs"]
#[allow(dead_code)]
mod model;
#[path = "../examples/sharded_training/train.rs"]
#[allow(dead_code)]
mod train;

use std::sync::{Arc, Barrier, Mutex};

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
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
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
                    let shard = Shard { rank: group.rank, size: tp };
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
        assert!((loss - loss_whole).abs() <= 1e-5 * loss_whole, "rank {rank}: {loss} vs {loss_whole}");
        let tol = 1e-5;
        assert!(max_abs_diff(g.emb.as_slice().unwrap(), g_whole.emb.as_slice().unwrap()) < tol);
        assert!(max_abs_diff(g.w_in.as_slice().unwrap(), g_whole.w_in.as_slice().unwrap()) < tol);
        assert!(max_abs_diff(g.w_out.as_slice().unwrap(), g_whole.w_out.as_slice().unwrap()) < tol);
        for (b, (gb, wb)) in g.blocks.iter().zip(&g_whole.blocks).enumerate() {
            let cols = wb.w1.slice(ndarray::s![.., rank * per..(rank + 1) * per]).to_owned();
            let rows = wb.w2.slice(ndarray::s![rank * per..(rank + 1) * per, ..]).to_owned();
            let b1 = wb.b1.slice(ndarray::s![rank * per..(rank + 1) * per]).to_owned();
            assert!(max_abs_diff(gb.w1.as_slice().unwrap(), cols.as_slice().unwrap()) < tol, "block {b} w1");
            assert!(max_abs_diff(gb.w2.as_slice().unwrap(), rows.as_slice().unwrap()) < tol, "block {b} w2");
            assert!(max_abs_diff(gb.b1.as_slice().unwrap(), b1.as_slice().unwrap()) < tol, "block {b} b1");
            assert!(max_abs_diff(gb.b2.as_slice().unwrap(), wb.b2.as_slice().unwrap()) < tol, "block {b} b2");
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
