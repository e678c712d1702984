//! The restart policy every supervisor of both trees shares (DESIGN.md §2): one-for-one,
//! capped exponential backoff with seeded jitter, and a restart intensity that escalates.
//!
//! A supervisor keeps one [`RestartTracker`] per child, built from the child's
//! [`RestartPolicy`] (configured where the child is spawned). On each end of the child it asks
//! [`RestartTracker::on_crash`], which answers either [`Restart::After`] a delay (the `n`-th
//! crash in a row waits `first · 2^(n-1)`, capped at `max`, shortened by up to `jitter` of
//! itself, drawn from the supervisor's [`Rng`]) or [`Restart::Escalate`]: more than
//! `intensity` crashes happened within `period`, so restarting is not repairing anything and
//! the supervisor must stop itself and let its own supervisor decide (Erlang's restart
//! intensity). A child that ran `period` without crashing starts again from `first`.
//!
//! A pure core: no actor code; the caller passes the time (`tokio::time::Instant`, virtual
//! under paused tests and simulation) and the generator. The tracker holds at most
//! `intensity + 1` crash times.

use crate::rng::Rng;
use ractor::{ActorId, SupervisionEvent};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

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

/// How one child is restarted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartPolicy {
    /// Delay before the restart after the first crash of a streak.
    pub first: Duration,
    /// Longest delay: the doubling stops here.
    pub max: Duration,
    /// Fraction (0..=1) of each delay that is random: the delay is drawn uniformly from
    /// `[base · (1 - jitter), base]`, so supervisors whose children crashed together (many
    /// routers when the store restarts, many clients when a relay restarts) do not restart
    /// them in lockstep, and no delay ever exceeds `max`.
    pub jitter: f64,
    /// Crashes within `period` that are still restarted; one more escalates.
    pub intensity: u32,
    /// The intensity window, and the crash-free running time after which the backoff starts
    /// again from `first`.
    pub period: Duration,
}

impl RestartPolicy {
    /// The default for every supervised child: 1 s doubling to 30 s, a quarter of each delay
    /// jittered; 5 restarts within 60 s are repaired, a 6th crash escalates. A child that fails
    /// at once on every start escalates after about 1+2+4+8+16 = 31 s (at least 23 s with
    /// jitter): long enough to ride out a transient (a full disk being cleaned, a peer
    /// restarting), short enough that a child broken for good reaches a supervisor that can do
    /// more (for the relay, the service manager restarting the process) within a minute. A
    /// rare crash is repaired within a second, and one that recurs less than once a minute is
    /// never escalated.
    pub const STANDARD: RestartPolicy = RestartPolicy {
        first: Duration::from_secs(1),
        max: Duration::from_secs(30),
        jitter: 0.25,
        intensity: 5,
        period: Duration::from_secs(60),
    };

    /// The delay before the restart after the `streak`-th crash in a row (1-based), without
    /// jitter: `first · 2^(streak-1)`, capped at `max`.
    pub fn base_delay(&self, streak: u32) -> Duration {
        let doublings = streak.saturating_sub(1).min(31);
        self.first
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The jitter fraction, clamped to 0..=1 (a policy built with a value outside is read as
    /// the nearest bound rather than producing negative or doubled delays).
    fn jitter_fraction(&self) -> f64 {
        if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        }
    }
}

/// What a supervisor does after a child's crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Restart {
    /// Restart the child after this delay.
    After(Duration),
    /// More than `intensity` crashes within `period`: do not restart; the supervisor stops
    /// itself (or, where its module doc says so, stops serving what the child served).
    Escalate,
}

/// Crash history of one child under its policy.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    /// Crashes in a row, each less than `period` after the previous one.
    streak: u32,
    /// Times of the crashes within the last `period`, oldest first; at most `intensity + 1`.
    recent: VecDeque<Instant>,
}

impl RestartTracker {
    /// A tracker for a child that has not crashed.
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            streak: 0,
            recent: VecDeque::new(),
        }
    }

    /// The child crashed at `now`: restart it after a delay, or escalate.
    pub fn on_crash(&mut self, now: Instant, rng: &mut Rng) -> Restart {
        let period = self.policy.period;
        let is_quiet_since_last = self
            .recent
            .back()
            .is_none_or(|last| now.saturating_duration_since(*last) >= period);
        if is_quiet_since_last {
            self.streak = 0;
        }
        while self
            .recent
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= period)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        let bound = usize::try_from(self.policy.intensity)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        while self.recent.len() > bound {
            self.recent.pop_front();
        }
        self.streak = self.streak.saturating_add(1);
        if self.recent.len() > usize::try_from(self.policy.intensity).unwrap_or(usize::MAX) {
            return Restart::Escalate;
        }
        Restart::After(self.jittered(self.policy.base_delay(self.streak), rng))
    }

    /// Crashes in the current streak (0 for a child that never crashed).
    pub fn streak(&self) -> u32 {
        self.streak
    }

    /// The policy this tracker applies.
    pub fn policy(&self) -> &RestartPolicy {
        &self.policy
    }

    fn jittered(&self, base: Duration, rng: &mut Rng) -> Duration {
        let jitter = self.policy.jitter_fraction();
        if jitter == 0.0 {
            return base;
        }
        // 53 random bits give a uniform f64 in [0, 1).
        let unit = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        base.saturating_sub(base.mul_f64(jitter * unit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use proptest::prelude::*;

    const NO_JITTER: RestartPolicy = RestartPolicy {
        jitter: 0.0,
        ..RestartPolicy::STANDARD
    };

    fn after(restart: Restart) -> Duration {
        match restart {
            Restart::After(delay) => delay,
            Restart::Escalate => panic!("escalated where a restart was expected"),
        }
    }

    #[test]
    fn delays_double_and_cap() {
        let policy = RestartPolicy {
            intensity: u32::MAX,
            ..NO_JITTER
        };
        let mut tracker = RestartTracker::new(policy);
        let mut rng = Rng::seeded(1);
        let now = Instant::now();
        let delays: Vec<u64> = (0..8)
            .map(|_| after(tracker.on_crash(now, &mut rng)).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(policy.base_delay(1_000), Duration::from_secs(30));
        assert_eq!(tracker.streak(), 8);
    }

    #[test]
    fn jitter_stays_within_bounds_and_is_deterministic_for_a_seed() {
        let policy = RestartPolicy {
            jitter: 0.5,
            intensity: u32::MAX,
            ..RestartPolicy::STANDARD
        };
        let run = |seed| {
            let mut tracker = RestartTracker::new(policy);
            let mut rng = Rng::seeded(seed);
            let now = Instant::now();
            (0..10)
                .map(|_| after(tracker.on_crash(now, &mut rng)))
                .collect::<Vec<_>>()
        };
        let delays = run(7);
        assert_eq!(delays, run(7));
        assert_ne!(delays, run(8));
        for (n, delay) in delays.iter().enumerate() {
            let base = policy.base_delay(n as u32 + 1);
            assert!(
                *delay <= base && *delay >= base / 2,
                "{delay:?} vs {base:?}"
            );
        }
        // Jitter really draws: not every delay is its base.
        assert!(
            delays
                .iter()
                .enumerate()
                .any(|(n, d)| *d != policy.base_delay(n as u32 + 1))
        );
    }

    #[test]
    fn the_streak_resets_after_a_quiet_period() {
        let mut tracker = RestartTracker::new(NO_JITTER);
        let mut rng = Rng::seeded(1);
        let start = Instant::now();
        assert_eq!(
            after(tracker.on_crash(start, &mut rng)),
            Duration::from_secs(1)
        );
        let second = start + Duration::from_secs(1);
        assert_eq!(
            after(tracker.on_crash(second, &mut rng)),
            Duration::from_secs(2)
        );
        // Just short of a quiet period: the streak goes on.
        let third = second + NO_JITTER.period - Duration::from_millis(1);
        assert_eq!(
            after(tracker.on_crash(third, &mut rng)),
            Duration::from_secs(4)
        );
        let fourth = third + NO_JITTER.period;
        assert_eq!(
            after(tracker.on_crash(fourth, &mut rng)),
            Duration::from_secs(1)
        );
        assert_eq!(tracker.streak(), 1);
    }

    #[test]
    fn more_than_intensity_crashes_within_the_period_escalate() {
        let policy = RestartPolicy {
            intensity: 3,
            ..NO_JITTER
        };
        let mut tracker = RestartTracker::new(policy);
        let mut rng = Rng::seeded(1);
        let start = Instant::now();
        for n in 0..3 {
            let at = start + Duration::from_secs(10 * n);
            assert!(matches!(tracker.on_crash(at, &mut rng), Restart::After(_)));
        }
        // The 4th within 60 s of the 1st.
        let fourth = start + Duration::from_secs(59);
        assert_eq!(tracker.on_crash(fourth, &mut rng), Restart::Escalate);
    }

    #[test]
    fn the_same_crashes_spread_over_more_than_the_period_do_not_escalate() {
        let policy = RestartPolicy {
            intensity: 3,
            ..NO_JITTER
        };
        let mut tracker = RestartTracker::new(policy);
        let mut rng = Rng::seeded(1);
        let start = Instant::now();
        // Four crashes 20 s apart: any 60 s window holds at most three. Forty of them.
        for n in 0..40 {
            let at = start + Duration::from_secs(20 * n);
            assert!(
                matches!(tracker.on_crash(at, &mut rng), Restart::After(_)),
                "crash {n} escalated"
            );
        }
        assert!(tracker.recent.len() <= 4);
    }

    #[test]
    fn zero_intensity_escalates_the_first_crash() {
        let policy = RestartPolicy {
            intensity: 0,
            ..NO_JITTER
        };
        let mut tracker = RestartTracker::new(policy);
        assert_eq!(
            tracker.on_crash(Instant::now(), &mut Rng::seeded(1)),
            Restart::Escalate
        );
    }

    proptest! {
        /// Against a model: a crash escalates exactly when more than `intensity` crashes
        /// (itself included) fall within the `period` before it, and otherwise waits between
        /// `(1 - jitter)` and all of the base delay of its streak, never more than `max`.
        #[test]
        fn on_crash_matches_a_model(
            gaps_ms in proptest::collection::vec(0u64..90_000, 1..40),
            intensity in 0u32..8,
            jitter in 0.0f64..=1.0,
            seed in any::<u64>(),
        ) {
            let policy = RestartPolicy { jitter, intensity, ..RestartPolicy::STANDARD };
            let mut tracker = RestartTracker::new(policy);
            let mut rng = Rng::seeded(seed);
            let start = Instant::now();
            let mut at = start;
            let mut crashes: Vec<Instant> = Vec::new();
            let mut streak = 0u32;
            for gap in gaps_ms {
                at += Duration::from_millis(gap);
                if crashes.last().is_none_or(|last| at - *last >= policy.period) {
                    streak = 0;
                }
                streak += 1;
                crashes.push(at);
                let in_window = crashes.iter().filter(|c| at - **c < policy.period).count();
                match tracker.on_crash(at, &mut rng) {
                    Restart::Escalate => prop_assert!(in_window > intensity as usize),
                    Restart::After(delay) => {
                        prop_assert!(in_window <= intensity as usize);
                        let base = policy.base_delay(streak);
                        prop_assert!(delay <= base && delay <= policy.max);
                        prop_assert!(delay >= base.mul_f64(1.0 - jitter).saturating_sub(Duration::from_nanos(1)));
                    }
                }
                prop_assert_eq!(tracker.streak(), streak);
            }
        }
    }
}
