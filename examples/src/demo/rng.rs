//! A tiny deterministic pseudo-random generator (xorshift64*), shared by the
//! concurrent calls of one replica.

use std::sync::atomic::{AtomicU64, Ordering};

/// Xorshift64* over an atomic state: each draw advances the state once.
#[derive(Debug)]
pub(crate) struct Rng {
    state: AtomicU64,
}

impl Rng {
    /// A generator seeded from `seed` (FNV-1a), never with the all-zero state.
    pub(crate) fn from_seed(seed: &str) -> Self {
        let hash = seed.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        Self {
            state: AtomicU64::new(hash | 1),
        }
    }

    /// The next 64 pseudo-random bits.
    pub(crate) fn next_u64(&self) -> u64 {
        let step = |mut x: u64| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x
        };
        let previous = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| Some(step(x)))
            .unwrap_or_else(|x| x);
        step(previous).wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True with probability `p` (clamped to `0.0..=1.0`).
    pub(crate) fn chance(&self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        // The top 53 bits make a uniform float in [0, 1).
        let unit = (self.next_u64() >> 11) as f64 / (1_u64 << 53) as f64;
        unit < p
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn deterministic_per_seed() {
        let (a, b, c) = (
            Rng::from_seed("x"),
            Rng::from_seed("x"),
            Rng::from_seed("y"),
        );
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], c.next_u64());
    }

    #[test]
    fn chance_is_close_to_p() {
        let rng = Rng::from_seed("greeter-1");
        let hits = (0..100_000).filter(|_| rng.chance(0.03)).count();
        assert!((2_500..3_500).contains(&hits), "{hits}");
        assert!(!(0..1000).any(|_| rng.chance(0.0)));
        assert!((0..1000).all(|_| rng.chance(1.0)));
    }
}
