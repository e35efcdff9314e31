//! Seeded random numbers for the trainer's splits, shuffles and augmentation and for the
//! bootstrap CI (natively and in wasm): ChaCha8 from
//! `rand_chacha`, whose output is value-stable across platforms and releases, so a run repeats
//! with the same seed. [`Rng::fork`] gives an independent ChaCha stream of the same seed.

use rand::seq::SliceRandom;
use rand::{Rng as _, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A seeded generator with the few draws the trainer and the bootstrap use.
#[derive(Debug, Clone)]
pub struct Rng(ChaCha8Rng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }

    /// A generator for a sub-task, independent of this one's draws: the same seed, another
    /// ChaCha stream.
    pub fn fork(&self, stream: u64) -> Self {
        let mut r = self.0.clone();
        r.set_stream(stream.wrapping_add(1));
        r.set_word_pos(0);
        Self(r)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f32 {
        self.0.random::<f32>()
    }

    /// Uniform in `[lo, hi)` (`lo` itself when the range is empty).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform index in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n)
    }

    /// Standard normal. Box-Muller by hand: one line, where `rand_distr` would be another crate
    /// (its release for rand 0.9 is not in the tree).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-7);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }

    pub fn chance(&mut self, p: f32) -> bool {
        self.uniform() < p
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        items.shuffle(&mut self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_and_in_range() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..100 {
            let x = a.uniform();
            assert_eq!(x, b.uniform());
            assert!((0.0..1.0).contains(&x));
        }
        let mean: f32 = (0..20_000).map(|_| a.normal()).sum::<f32>() / 20_000.0;
        assert!(mean.abs() < 0.05);
        let mut v: Vec<usize> = (0..50).collect();
        a.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }
}
