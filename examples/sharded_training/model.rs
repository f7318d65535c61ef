//! The model: a character-level language model whose MLP blocks are split Megatron-style
//! across a tensor-parallel group, with its hand-written backward pass over `ndarray` ops.
//!
//! The network reads the `ctx` characters before a position and predicts the next one:
//!
//! 1. `x = concat(emb[c₁], …, emb[c_ctx])`, then `h = x·W_in + b_in` (replicated on every rank);
//! 2. `blocks` residual MLP blocks `h ← h + relu(h·W₁ + b₁)·W₂ + b₂`, where `W₁` is split by
//!    columns (column-parallel: rank `r` of `T` holds columns `r·F/T .. (r+1)·F/T` and `b₁`'s
//!    slice) and `W₂` by rows (row-parallel, the same slice). Each rank computes a partial
//!    `relu(h·W₁ᵣ + b₁ᵣ)·W₂ᵣ`; **an allreduce (sum) in forward** makes the block's output whole,
//!    and `b₂` is added once after it. In backward the gradient of `h` through the block is a
//!    sum of the ranks' partials: **an allreduce (sum) in backward** for the column-parallel
//!    layer's input gradient (Megatron's `g` and `f` operators);
//! 3. `logits = h·W_out + b_out` and the softmax cross-entropy, averaged over the batch.
//!
//! With one tensor-parallel rank the same code is the unsharded model: each shard is the whole
//! matrix and the allreduces are the identity. Every parameter is drawn from one seeded stream in
//! a fixed order as the whole tensor, and each rank keeps its slice, so a sharded model starts
//! from exactly the unsharded model's weights.

use ndarray::{Array1, Array2, Axis, s};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The model's shape.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ModelSize {
    /// Characters of context read to predict the next one.
    pub(crate) ctx: usize,
    /// Width of a character's embedding.
    pub(crate) embed: usize,
    /// Width of the residual stream.
    pub(crate) hidden: usize,
    /// Width of each block's inner layer (split across the tensor-parallel group).
    pub(crate) ffn: usize,
    /// Number of residual MLP blocks.
    pub(crate) blocks: usize,
}

impl ModelSize {
    /// Number of parameters of the whole (unsharded) model for a vocabulary of `vocab`.
    pub(crate) fn parameters(&self, vocab: usize) -> usize {
        let block = 2 * self.hidden * self.ffn + self.ffn + self.hidden;
        vocab * self.embed
            + self.ctx * self.embed * self.hidden
            + self.hidden
            + self.blocks * block
            + self.hidden * vocab
            + vocab
    }
}

/// Which slice of the blocks' inner layer a tensor-parallel rank holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Shard {
    /// This rank in its tensor-parallel group.
    pub(crate) rank: usize,
    /// The group's size.
    pub(crate) size: usize,
}

impl Shard {
    /// The columns `lo..hi` of the inner layer this rank holds, for an inner width `ffn`.
    pub(crate) fn range(&self, ffn: usize) -> (usize, usize) {
        let per = ffn / self.size;
        (self.rank * per, (self.rank + 1) * per)
    }
}

/// A sum across a group of ranks, in place; the model calls it where Megatron's layers
/// communicate. The training members implement it with a communicator.
pub(crate) trait Reduce {
    /// Replaces `data` on every rank with the element-wise sum of every rank's `data`.
    fn sum(&self, data: &mut [f32]) -> Result<(), manta::Error>;
    /// Replaces `data` on every rank with the element-wise mean of every rank's `data`.
    fn mean(&self, data: &mut [f32]) -> Result<(), manta::Error>;
}

/// A group of one: the unsharded model's reduction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Alone;

impl Reduce for Alone {
    fn sum(&self, _data: &mut [f32]) -> Result<(), manta::Error> {
        Ok(())
    }
    fn mean(&self, _data: &mut [f32]) -> Result<(), manta::Error> {
        Ok(())
    }
}

/// One residual block's parameters (this rank's shard of `w1`, `b1`, `w2`; all of `b2`).
#[derive(Clone, Debug)]
pub(crate) struct Block {
    /// `[hidden, ffn/T]`: column-parallel.
    pub(crate) w1: Array2<f32>,
    /// `[ffn/T]`.
    pub(crate) b1: Array1<f32>,
    /// `[ffn/T, hidden]`: row-parallel.
    pub(crate) w2: Array2<f32>,
    /// `[hidden]`: replicated, added once after the allreduce.
    pub(crate) b2: Array1<f32>,
}

/// The parameters one rank holds (or their gradients, or an optimizer's moments: same shapes).
#[derive(Clone, Debug)]
pub(crate) struct Params {
    /// `[vocab, embed]`.
    pub(crate) emb: Array2<f32>,
    /// `[ctx·embed, hidden]`.
    pub(crate) w_in: Array2<f32>,
    /// `[hidden]`.
    pub(crate) b_in: Array1<f32>,
    /// The residual blocks.
    pub(crate) blocks: Vec<Block>,
    /// `[hidden, vocab]`.
    pub(crate) w_out: Array2<f32>,
    /// `[vocab]`.
    pub(crate) b_out: Array1<f32>,
}

/// A tensor of `shape` drawn uniformly with standard deviation `std`.
fn uniform(rng: &mut ChaCha8Rng, shape: (usize, usize), std: f32) -> Array2<f32> {
    let a = std * 3f32.sqrt();
    Array2::from_shape_simple_fn(shape, || rng.random_range(-a..a))
}

impl Params {
    /// The initial parameters for `shard` of the model `size` over `vocab` characters: the
    /// whole model is drawn from `seed`, and this rank keeps its slice.
    pub(crate) fn init(size: &ModelSize, vocab: usize, seed: u64, shard: Shard) -> Params {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (h, f) = (size.hidden, size.ffn);
        let (lo, hi) = shard.range(f);
        let emb = uniform(&mut rng, (vocab, size.embed), 1.0);
        let w_in = uniform(
            &mut rng,
            (size.ctx * size.embed, h),
            1.0 / ((size.ctx * size.embed) as f32).sqrt(),
        );
        let residual = 1.0 / ((f * size.blocks.max(1)) as f32).sqrt();
        let blocks = (0..size.blocks)
            .map(|_| {
                let w1 = uniform(&mut rng, (h, f), (2.0 / h as f32).sqrt());
                let w2 = uniform(&mut rng, (f, h), residual);
                Block {
                    w1: w1.slice(s![.., lo..hi]).to_owned(),
                    b1: Array1::zeros(hi - lo),
                    w2: w2.slice(s![lo..hi, ..]).to_owned(),
                    b2: Array1::zeros(h),
                }
            })
            .collect();
        // Small output weights: the first predictions are near uniform.
        let w_out = uniform(&mut rng, (h, vocab), 0.1 / (h as f32).sqrt());
        Params {
            emb,
            w_in,
            b_in: Array1::zeros(h),
            blocks,
            w_out,
            b_out: Array1::zeros(vocab),
        }
    }

    /// Zeros of the same shapes.
    pub(crate) fn zeros_like(&self) -> Params {
        let z2 = |a: &Array2<f32>| Array2::zeros(a.raw_dim());
        let z1 = |a: &Array1<f32>| Array1::zeros(a.raw_dim());
        Params {
            emb: z2(&self.emb),
            w_in: z2(&self.w_in),
            b_in: z1(&self.b_in),
            blocks: self
                .blocks
                .iter()
                .map(|b| Block {
                    w1: z2(&b.w1),
                    b1: z1(&b.b1),
                    w2: z2(&b.w2),
                    b2: z1(&b.b2),
                })
                .collect(),
            w_out: z2(&self.w_out),
            b_out: z1(&self.b_out),
        }
    }

    /// Every tensor as a flat slice, in a fixed order (all are in standard layout: each was
    /// made whole by `to_owned`, `zeros` or an ndarray operation).
    pub(crate) fn tensors(&self) -> Vec<&[f32]> {
        let mut v: Vec<&[f32]> = vec![flat(&self.emb), flat(&self.w_in), flat1(&self.b_in)];
        for b in &self.blocks {
            v.extend([flat(&b.w1), flat1(&b.b1), flat(&b.w2), flat1(&b.b2)]);
        }
        v.extend([flat(&self.w_out), flat1(&self.b_out)]);
        v
    }

    /// Every tensor as a flat mutable slice, in the order of [`Params::tensors`].
    pub(crate) fn tensors_mut(&mut self) -> Vec<&mut [f32]> {
        let mut v: Vec<&mut [f32]> = vec![
            flat_mut(&mut self.emb),
            flat_mut(&mut self.w_in),
            flat1_mut(&mut self.b_in),
        ];
        for b in &mut self.blocks {
            v.extend([
                flat_mut(&mut b.w1),
                flat1_mut(&mut b.b1),
                flat_mut(&mut b.w2),
                flat1_mut(&mut b.b2),
            ]);
        }
        v.extend([flat_mut(&mut self.w_out), flat1_mut(&mut self.b_out)]);
        v
    }

    /// Number of values this rank holds.
    pub(crate) fn len(&self) -> usize {
        self.tensors().iter().map(|t| t.len()).sum()
    }
}

fn flat(a: &Array2<f32>) -> &[f32] {
    a.as_slice()
        .expect("parameters are kept in standard layout")
}
fn flat1(a: &Array1<f32>) -> &[f32] {
    a.as_slice()
        .expect("parameters are kept in standard layout")
}
fn flat_mut(a: &mut Array2<f32>) -> &mut [f32] {
    a.as_slice_mut()
        .expect("parameters are kept in standard layout")
}
fn flat1_mut(a: &mut Array1<f32>) -> &mut [f32] {
    a.as_slice_mut()
        .expect("parameters are kept in standard layout")
}

/// A batch of examples: `ctx` characters of context and the character that follows, per row.
#[derive(Clone, Debug)]
pub(crate) struct Batch {
    /// `rows × ctx` character ids, row-major.
    pub(crate) inputs: Vec<u32>,
    /// `rows` target ids.
    pub(crate) targets: Vec<u32>,
}

impl Batch {
    /// Rows `lo..hi` of this batch.
    pub(crate) fn rows(&self, ctx: usize, lo: usize, hi: usize) -> Batch {
        Batch {
            inputs: self.inputs[lo * ctx..hi * ctx].to_vec(),
            targets: self.targets[lo..hi].to_vec(),
        }
    }
}

/// Sums the matrix `a` across `group`, in place (it is in standard layout: a fresh product).
fn reduce_sum(group: &impl Reduce, a: &mut Array2<f32>) -> Result<(), manta::Error> {
    group.sum(flat_mut(a))
}

/// The mean cross-entropy of `batch` under `p`, with its gradient written to `grads`; the
/// tensor-parallel group `tp` reduces each block's partial output (forward) and partial input
/// gradient (backward).
pub(crate) fn loss_and_grads(
    p: &Params,
    batch: &Batch,
    ctx: usize,
    tp: &impl Reduce,
    grads: &mut Params,
) -> Result<f32, manta::Error> {
    let n = batch.targets.len();
    let embed = p.emb.ncols();
    // Forward.
    let mut x = Array2::<f32>::zeros((n, ctx * embed));
    for i in 0..n {
        for j in 0..ctx {
            let c = batch.inputs[i * ctx + j] as usize;
            x.slice_mut(s![i, j * embed..(j + 1) * embed])
                .assign(&p.emb.row(c));
        }
    }
    let mut h = x.dot(&p.w_in) + &p.b_in;
    // Per block: its input, pre-activation and activation, for the backward pass.
    let mut saved = Vec::with_capacity(p.blocks.len());
    for b in &p.blocks {
        let z = h.dot(&b.w1) + &b.b1;
        let a = z.mapv(|v| v.max(0.0));
        let mut y = a.dot(&b.w2);
        reduce_sum(tp, &mut y)?; // row-parallel output: allreduce in forward
        y += &b.b2;
        let out = &h + &y;
        saved.push((h, z, a));
        h = out;
    }
    let mut logits = h.dot(&p.w_out) + &p.b_out;
    let mut loss = 0.0f64;
    for (i, mut row) in logits.axis_iter_mut(Axis(0)).enumerate() {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let total = row.sum();
        row /= total;
        let t = batch.targets[i] as usize;
        loss -= f64::from(row[t].max(f32::MIN_POSITIVE).ln());
        row[t] -= 1.0;
    }
    // `logits` now holds softmax − one-hot: the gradient of the summed loss.
    let mut dlogits = logits;
    dlogits /= n as f32;
    // Backward.
    grads.w_out.assign(&h.t().dot(&dlogits));
    grads.b_out.assign(&dlogits.sum_axis(Axis(0)));
    let mut dh = dlogits.dot(&p.w_out.t());
    for ((b, g), (h_in, z, a)) in p
        .blocks
        .iter()
        .zip(grads.blocks.iter_mut())
        .zip(saved)
        .rev()
    {
        g.b2.assign(&dh.sum_axis(Axis(0)));
        g.w2.assign(&a.t().dot(&dh));
        let mut dz = dh.dot(&b.w2.t());
        dz.zip_mut_with(&z, |d, &zv| {
            if zv <= 0.0 {
                *d = 0.0;
            }
        });
        g.b1.assign(&dz.sum_axis(Axis(0)));
        g.w1.assign(&h_in.t().dot(&dz));
        let mut dh_part = dz.dot(&b.w1.t());
        reduce_sum(tp, &mut dh_part)?; // column-parallel input gradient: allreduce in backward
        dh += &dh_part;
    }
    grads.w_in.assign(&x.t().dot(&dh));
    grads.b_in.assign(&dh.sum_axis(Axis(0)));
    let dx = dh.dot(&p.w_in.t());
    grads.emb.fill(0.0);
    for i in 0..n {
        for j in 0..ctx {
            let c = batch.inputs[i * ctx + j] as usize;
            let mut row = grads.emb.row_mut(c);
            row += &dx.slice(s![i, j * embed..(j + 1) * embed]);
        }
    }
    Ok((loss / n as f64) as f32)
}

/// Adam (Kingma & Ba), element-wise, so a shard's update is the whole update's slice.
#[derive(Clone, Debug)]
pub(crate) struct Adam {
    m: Params,
    v: Params,
    t: i32,
    lr: f32,
}

impl Adam {
    /// β₁ and β₂: the usual defaults.
    const B1: f32 = 0.9;
    const B2: f32 = 0.999;
    /// ε: 1e-6 rather than the usual 1e-8, which lets rounding noise in near-zero gradients
    /// take full-size steps: with 1e-8 the default run's sharded and unsharded losses first
    /// differed at step 3, with 1e-6 at step 12.
    const EPS: f32 = 1e-6;

    /// An optimizer for parameters shaped like `p`, with learning rate `lr`.
    pub(crate) fn new(p: &Params, lr: f32) -> Adam {
        Adam {
            m: p.zeros_like(),
            v: p.zeros_like(),
            t: 0,
            lr,
        }
    }

    /// One update of `p` along `g`.
    pub(crate) fn update(&mut self, p: &mut Params, g: &Params) {
        self.t += 1;
        let c1 = 1.0 - Self::B1.powi(self.t);
        let c2 = 1.0 - Self::B2.powi(self.t);
        let step = self.lr / c1;
        for (((p, g), m), v) in p
            .tensors_mut()
            .into_iter()
            .zip(g.tensors())
            .zip(self.m.tensors_mut())
            .zip(self.v.tensors_mut())
        {
            for i in 0..p.len() {
                m[i] = Self::B1 * m[i] + (1.0 - Self::B1) * g[i];
                v[i] = Self::B2 * v[i] + (1.0 - Self::B2) * g[i] * g[i];
                p[i] -= step * m[i] / ((v[i] / c2).sqrt() + Self::EPS);
            }
        }
    }
}
