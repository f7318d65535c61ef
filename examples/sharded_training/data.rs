//! The training text and the batches drawn from it.
//!
//! The text is the opening of William Shakespeare's *Coriolanus* (c. 1608, public domain), as it
//! appears at the start of the "tiny Shakespeare" corpus. Characters are the tokens; a batch is
//! `rows` windows at positions drawn from the run's seed and the step number alone, so every
//! member of a run, and the unsharded reference, sees the same global batch at each step.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::Batch;

/// The shipped training text.
pub(crate) const TEXT: &str = include_str!("coriolanus.txt");

/// A text as character ids over its own sorted alphabet.
#[derive(Clone, Debug)]
pub(crate) struct Corpus {
    tokens: Vec<u32>,
    alphabet: Vec<char>,
}

impl Corpus {
    /// The corpus of `text`.
    pub(crate) fn new(text: &str) -> Corpus {
        let mut alphabet: Vec<char> = text.chars().collect();
        alphabet.sort_unstable();
        alphabet.dedup();
        let tokens = text
            .chars()
            .map(|c| alphabet.binary_search(&c).unwrap_or(0) as u32)
            .collect();
        Corpus { tokens, alphabet }
    }

    /// The shipped text's corpus.
    pub(crate) fn shipped() -> Corpus {
        Corpus::new(TEXT)
    }

    /// Number of distinct characters.
    pub(crate) fn vocab(&self) -> usize {
        self.alphabet.len()
    }

    /// Number of characters.
    pub(crate) fn len(&self) -> usize {
        self.tokens.len()
    }

    /// The global batch of step `step`: `rows` windows of `ctx` characters and the character
    /// after each, at positions drawn from `seed` and `step` (needs `len() > ctx`).
    pub(crate) fn batch(&self, seed: u64, step: u64, rows: usize, ctx: usize) -> Batch {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Stream 0 draws the initial weights; step `s` draws its batch from stream `s + 1`.
        rng.set_stream(step + 1);
        let mut inputs = Vec::with_capacity(rows * ctx);
        let mut targets = Vec::with_capacity(rows);
        for _ in 0..rows {
            let at = rng.random_range(0..self.tokens.len() - ctx);
            inputs.extend_from_slice(&self.tokens[at..at + ctx]);
            targets.push(self.tokens[at + ctx]);
        }
        Batch { inputs, targets }
    }
}
