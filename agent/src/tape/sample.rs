//! Seeded sampling for [`super::VerifyLevel::Sample`]: the same seed picks the same files,
//! so a recorded seed lets anyone repeat a verification.

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::VerifyLevel;

/// Indices of `n` items to check: `ceil(fraction × n)`, at least 1 (when `n > 0`), at most
/// `n`, chosen by `seed`, in ascending order.
pub fn sample_indices(n: usize, fraction: f64, seed: u64) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let fraction = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        1.0
    };
    let want = ((n as f64) * fraction).ceil() as usize;
    let want = want.clamp(1, n);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut picked = rand::seq::index::sample(&mut rng, n, want).into_vec();
    picked.sort_unstable();
    picked
}

/// Which of `n` files a read-back verification at `level` reads, and the level as it is
/// reported (a sample's seed filled in); `None` for [`VerifyLevel::Metadata`], which reads none.
pub(crate) fn plan(level: VerifyLevel, n: usize) -> Option<(Vec<usize>, VerifyLevel)> {
    match level {
        VerifyLevel::Metadata => None,
        VerifyLevel::Sample { fraction, seed } => {
            let seed = seed_or_random(seed);
            Some((
                sample_indices(n, fraction, seed),
                VerifyLevel::Sample {
                    fraction,
                    seed: Some(seed),
                },
            ))
        }
        VerifyLevel::Full => Some(((0..n).collect(), VerifyLevel::Full)),
    }
}

/// The seed to use: the caller's, or a fresh random one (recorded in the report).
pub(crate) fn seed_or_random(seed: Option<u64>) -> u64 {
    seed.unwrap_or_else(rand::random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sample_at_least_one() {
        assert_eq!(sample_indices(100, 0.1, 7), sample_indices(100, 0.1, 7));
        assert_eq!(sample_indices(100, 0.1, 7).len(), 10);
        assert_eq!(sample_indices(5, 0.0001, 1).len(), 1);
        assert_eq!(sample_indices(5, 1.0, 1), vec![0, 1, 2, 3, 4]);
        assert!(sample_indices(0, 0.5, 1).is_empty());
        assert_ne!(sample_indices(1000, 0.01, 1), sample_indices(1000, 0.01, 2));
    }
}
