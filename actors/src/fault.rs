//! Fault injection: a [`FaultPlan`] handle that actors consult at named [`FaultPoint`]s.
//!
//! In production the plan is [`FaultPlan::none`]: consulting it is one branch on an `Option`.
//! The chaos harness builds an active plan with a seeded generator and per-point
//! probabilities; an actor that hits a point asks `plan.should_fail(point)` and, when told to,
//! behaves as if that operation failed (store write error, flush error, dropped frame, ...).
//! Every hit is counted so a scenario can assert its faults really fired.

use crate::rng::Rng;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use zerok_messages::sync::lock;

/// Named places where actors consult the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum FaultPoint {
    /// Before a store applies a write batch.
    BeforeStoreWrite,
    /// Before a store flushes to disk.
    BeforeFlush,
    /// Before a frame is sent on a link.
    FrameSend,
    /// After a frame was received from a link, before it is handled.
    FrameReceive,
    /// Before a sweep evicts expired items.
    Sweep,
    /// Before every write of the store to its files (records, marks, a new segment, the
    /// reserve): the write fails as on a full disk (`ENOSPC`).
    StoreDiskFull,
    /// When the client's Encryptor takes a batch to seal or open: the actor fails (as a bug
    /// would), so its supervisor restarts it.
    EncryptorBatch,
    /// When the client's coordinator hands a received record to the app: it drops it and
    /// goes on as if handed over (a broken client that skips a cursor; the chaos harness
    /// shows its invariants catch it).
    SkipReceived,
    /// When a relay's GroupRouter takes a push: it drops it and answers it as stored (a
    /// broken router that loses one message on its way to the store; the chaos harness
    /// shows its invariants catch it).
    RouterDropsPush,
}

#[derive(Debug)]
struct Active {
    rng: Rng,
    probabilities: BTreeMap<FaultPoint, f64>,
    fired: BTreeMap<FaultPoint, u64>,
}

/// A shared, cheap-to-clone fault plan. `FaultPlan::default()` injects nothing.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    active: Option<Arc<Mutex<Active>>>,
}

impl FaultPlan {
    /// The production plan: never injects a fault.
    pub fn none() -> Self {
        Self::default()
    }

    /// An active plan drawing from a seeded generator; no point enabled yet.
    pub fn seeded(seed: u64) -> Self {
        Self {
            active: Some(Arc::new(Mutex::new(Active {
                rng: Rng::seeded(seed),
                probabilities: BTreeMap::new(),
                fired: BTreeMap::new(),
            }))),
        }
    }

    /// Make `point` fail with probability `p` (0 disables it). No effect on `none()`.
    pub fn set(&self, point: FaultPoint, p: f64) {
        if let Some(active) = &self.active {
            let mut active = lock(active);
            if p > 0.0 {
                active.probabilities.insert(point, p.min(1.0));
            } else {
                active.probabilities.remove(&point);
            }
        }
    }

    /// Whether the operation at `point` should fail now.
    pub fn should_fail(&self, point: FaultPoint) -> bool {
        let Some(active) = &self.active else {
            return false;
        };
        let mut active = lock(active);
        let Some(p) = active.probabilities.get(&point).copied() else {
            return false;
        };
        let fail = active.rng.chance(p);
        if fail {
            *active.fired.entry(point).or_default() += 1;
        }
        fail
    }

    /// How many faults fired at `point`.
    pub fn fired(&self, point: FaultPoint) -> u64 {
        self.active
            .as_ref()
            .and_then(|active| lock(active).fired.get(&point).copied())
            .unwrap_or(0)
    }

    /// Whether this plan can ever inject a fault.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_never_fails() {
        let plan = FaultPlan::none();
        plan.set(FaultPoint::BeforeFlush, 1.0);
        assert!(!plan.should_fail(FaultPoint::BeforeFlush));
        assert!(!plan.is_active());
        assert_eq!(plan.fired(FaultPoint::BeforeFlush), 0);
    }

    #[test]
    fn seeded_plan_is_deterministic_and_counts() {
        let run = |seed| {
            let plan = FaultPlan::seeded(seed);
            plan.set(FaultPoint::FrameSend, 0.3);
            let pattern: Vec<bool> = (0..100)
                .map(|_| plan.should_fail(FaultPoint::FrameSend))
                .collect();
            (pattern, plan.fired(FaultPoint::FrameSend))
        };
        let (a, fired) = run(9);
        let (b, _) = run(9);
        assert_eq!(a, b);
        assert_eq!(fired, a.iter().filter(|f| **f).count() as u64);
        assert!(fired > 10 && fired < 60);
        let plan = FaultPlan::seeded(1);
        plan.set(FaultPoint::Sweep, 1.0);
        assert!(plan.should_fail(FaultPoint::Sweep));
        assert!(!plan.should_fail(FaultPoint::BeforeStoreWrite));
        plan.set(FaultPoint::Sweep, 0.0);
        assert!(!plan.should_fail(FaultPoint::Sweep));
    }
}
