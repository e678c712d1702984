//! Randomness for actors: the only place that reaches the operating system's generator.
//!
//! Production uses [`Rng::system`] (getrandom: nonces, secrets, keys must be unpredictable).
//! Tests and simulation use [`Rng::seeded`]: the same seed gives the same run. Each actor gets
//! its own generator via [`Rng::fork`], so the order in which actors draw does not change
//! another actor's numbers.

use rand::rngs::{StdRng, SysRng};
use rand::{Rng as _, SeedableRng, TryRng};

/// A random number generator value owned by one actor.
#[derive(Debug)]
pub struct Rng {
    kind: RngKind,
}

#[derive(Debug)]
enum RngKind {
    System,
    Seeded(Box<StdRng>),
}

impl Rng {
    /// The operating system's cryptographic generator.
    pub fn system() -> Self {
        Self {
            kind: RngKind::System,
        }
    }

    /// A deterministic generator (ChaCha12) from a seed.
    pub fn seeded(seed: u64) -> Self {
        Self {
            kind: RngKind::Seeded(Box::new(StdRng::seed_from_u64(seed))),
        }
    }

    /// Whether this generator is deterministic.
    pub fn is_seeded(&self) -> bool {
        matches!(self.kind, RngKind::Seeded(_))
    }

    /// An independent generator for a child: system stays system, seeded derives a new seed.
    pub fn fork(&mut self) -> Rng {
        match &mut self.kind {
            RngKind::System => Rng::system(),
            RngKind::Seeded(rng) => Rng::seeded(rng.next_u64()),
        }
    }

    /// Fill `dest` with random bytes.
    pub fn fill(&mut self, dest: &mut [u8]) {
        match &mut self.kind {
            RngKind::System => {
                if let Err(err) = SysRng.try_fill_bytes(dest) {
                    // Without an entropy source no secret can be made safely; continuing
                    // would reuse nonces. This is the one unrecoverable condition here.
                    panic!("operating system random generator failed: {err}");
                }
            }
            RngKind::Seeded(rng) => rng.fill_bytes(dest),
        }
    }

    /// `N` random bytes.
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        self.fill(&mut out);
        out
    }

    /// A random `u64`.
    pub fn next_u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }

    /// A uniformly random value in `0..bound` (`bound > 0`), without modulo bias.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "below(0) has no values");
        let zone = u64::MAX - (u64::MAX % bound);
        loop {
            let value = self.next_u64();
            if value < zone {
                return value % bound;
            }
        }
    }

    /// True with probability `p` (clamped to 0..=1).
    pub fn chance(&mut self, p: f64) -> bool {
        let p = p.clamp(0.0, 1.0);
        // 53 random bits give a uniform f64 in [0, 1).
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_is_deterministic_and_forks_diverge() {
        let mut a = Rng::seeded(7);
        let mut b = Rng::seeded(7);
        assert_eq!(a.bytes::<32>(), b.bytes::<32>());
        let mut child = a.fork();
        assert_ne!(child.bytes::<32>(), a.bytes::<32>());
        assert!(Rng::seeded(7).is_seeded());
        assert!(!Rng::system().is_seeded());
    }

    #[test]
    fn system_rng_gives_distinct_values() {
        let mut rng = Rng::system();
        assert_ne!(rng.bytes::<32>(), rng.bytes::<32>());
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = Rng::seeded(1);
        let mut seen = [false; 5];
        for _ in 0..200 {
            let v = rng.below(5);
            assert!(v < 5);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        let heads = (0..1000).filter(|_| rng.chance(0.5)).count();
        assert!((350..650).contains(&heads));
        assert!(!(0..100).any(|_| rng.chance(0.0)));
    }
}
