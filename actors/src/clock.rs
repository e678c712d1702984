//! Wall-clock time for actors: the only place that reads the system clock.
//!
//! Actors measure durations with `tokio::time` (virtual under paused tests and turmoil) and
//! read wall time (stored-at stamps, TTL expiry, invite expiry, HLC) from a [`Clock`]. In
//! tests the clock is [`Clock::virtual_at`]: a fixed start plus elapsed `tokio::time`, so
//! advancing paused tokio time moves wall time too.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

/// A source of wall time in unix milliseconds. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Clock {
    kind: ClockKind,
}

#[derive(Debug, Clone)]
enum ClockKind {
    System,
    Virtual {
        start_unix_ms: u64,
        start: tokio::time::Instant,
        /// Milliseconds added to (or, negative, taken from) the time: a skewed clock, or
        /// one that jumps (set from outside, e.g. by the chaos harness).
        shift: Arc<AtomicI64>,
    },
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The operating system's clock.
    pub fn system() -> Self {
        Self {
            kind: ClockKind::System,
        }
    }

    /// `start_unix_ms` plus the `tokio::time` elapsed since this call. Must be created
    /// inside a tokio runtime.
    pub fn virtual_at(start_unix_ms: u64) -> Self {
        Self::virtual_shifted(start_unix_ms, Arc::new(AtomicI64::new(0)))
    }

    /// [`Clock::virtual_at`] plus `shift` milliseconds, read at every call: whoever holds
    /// `shift` skews the clock or makes it jump, back as well as forward. Must be created
    /// inside a tokio runtime.
    pub fn virtual_shifted(start_unix_ms: u64, shift: Arc<AtomicI64>) -> Self {
        Self {
            kind: ClockKind::Virtual {
                start_unix_ms,
                start: tokio::time::Instant::now(),
                shift,
            },
        }
    }

    /// A clock that only moves when [`Clock::set_unix_ms`] or [`Clock::advance`] says so.
    pub fn manual(unix_ms: u64) -> Self {
        Self {
            kind: ClockKind::Manual(Arc::new(AtomicU64::new(unix_ms))),
        }
    }

    /// Wall time now, unix milliseconds.
    pub fn now_unix_ms(&self) -> u64 {
        match &self.kind {
            // The one sanctioned read of the system clock (clippy.toml bans it elsewhere).
            #[allow(clippy::disallowed_methods)]
            ClockKind::System => std::time::SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
            ClockKind::Virtual {
                start_unix_ms,
                start,
                shift,
            } => {
                let elapsed = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
                start_unix_ms
                    .saturating_add(elapsed)
                    .saturating_add_signed(shift.load(Ordering::SeqCst))
            }
            ClockKind::Manual(now) => now.load(Ordering::SeqCst),
        }
    }

    /// Wall time now, unix seconds.
    pub fn now_unix_secs(&self) -> u64 {
        self.now_unix_ms() / 1000
    }

    /// Set a manual clock. No effect on other kinds.
    pub fn set_unix_ms(&self, unix_ms: u64) {
        if let ClockKind::Manual(now) = &self.kind {
            now.store(unix_ms, Ordering::SeqCst);
        }
    }

    /// Move a manual clock forward. No effect on other kinds.
    pub fn advance(&self, by: Duration) {
        if let ClockKind::Manual(now) = &self.kind {
            let by_ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
            now.fetch_add(by_ms, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_after_2024() {
        assert!(Clock::system().now_unix_ms() > 1_704_067_200_000);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = Clock::manual(1_000);
        let shared = clock.clone();
        assert_eq!(clock.now_unix_ms(), 1_000);
        shared.advance(Duration::from_secs(2));
        assert_eq!(clock.now_unix_ms(), 3_000);
        clock.set_unix_ms(10);
        assert_eq!(shared.now_unix_secs(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn virtual_clock_follows_paused_tokio_time() {
        let clock = Clock::virtual_at(5_000);
        assert_eq!(clock.now_unix_ms(), 5_000);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(clock.now_unix_ms(), 5_000 + 3_600_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shifted_clock_jumps_back_and_forward_when_its_shift_is_set() {
        let shift = Arc::new(AtomicI64::new(-1_000));
        let clock = Clock::virtual_shifted(5_000, Arc::clone(&shift));
        assert_eq!(clock.now_unix_ms(), 4_000);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(clock.now_unix_ms(), 5_000);
        shift.store(-10_000, Ordering::SeqCst);
        assert_eq!(clock.now_unix_ms(), 0, "saturates at the epoch");
        shift.store(60_000, Ordering::SeqCst);
        assert_eq!(clock.now_unix_ms(), 66_000);
    }
}
