//! The restart policy every supervisor here shares: one-for-one, capped exponential backoff.
//!
//! A crashed child is respawned after [`BACKOFF_FIRST`], doubling per crash up to
//! [`BACKOFF_MAX`]; a child that ran [`RESTART_WINDOW`] without crashing starts again from
//! the first delay. So a child that keeps crashing costs at most one restart per
//! [`BACKOFF_MAX`], and a rare crash is repaired within a second.

use ractor::{ActorId, SupervisionEvent};
use std::time::Duration;

/// The child an event says has ended (failed or stopped), with why; `None` for other events.
pub fn ended(event: &SupervisionEvent) -> Option<(ActorId, String)> {
    match event {
        SupervisionEvent::ActorFailed(cell, err) => Some((cell.get_id(), err.to_string())),
        SupervisionEvent::ActorTerminated(cell, _, reason) => {
            Some((cell.get_id(), reason.clone().unwrap_or_default()))
        }
        _ => None,
    }
}

/// First restart delay.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// Longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Crash-free running time after which the backoff resets.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Delay before the restart that follows the `crashes`-th crash in a row.
pub fn backoff(crashes: u32) -> Duration {
    let factor = 1u32 << crashes.saturating_sub(1).min(5);
    (BACKOFF_FIRST * factor).min(BACKOFF_MAX)
}

/// Crash history of one child.
#[derive(Debug, Clone, Default)]
pub struct RestartTracker {
    crashes: u32,
    last_crash: Option<tokio::time::Instant>,
}

impl RestartTracker {
    /// Record a crash now; returns the delay before the restart.
    pub fn on_crash(&mut self) -> Duration {
        let now = tokio::time::Instant::now();
        if self
            .last_crash
            .is_some_and(|at| now.duration_since(at) > RESTART_WINDOW)
        {
            self.crashes = 0;
        }
        self.crashes += 1;
        self.last_crash = Some(now);
        backoff(self.crashes)
    }

    /// Crashes in the current streak.
    pub fn crashes(&self) -> u32 {
        self.crashes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(6), Duration::from_secs(30));
        assert_eq!(backoff(60), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn streak_resets_after_a_quiet_window() {
        let mut tracker = RestartTracker::default();
        assert_eq!(tracker.on_crash(), Duration::from_secs(1));
        assert_eq!(tracker.on_crash(), Duration::from_secs(2));
        tokio::time::advance(RESTART_WINDOW + Duration::from_secs(1)).await;
        assert_eq!(tracker.on_crash(), Duration::from_secs(1));
        assert_eq!(tracker.crashes(), 1);
    }
}
