//! Per-sender sequence tracking and the hybrid logical clock.
//!
//! Every record carries its sender's `seq` (1, 2, 3, ... per sender and group). A receiver
//! feeds each opened record to a [`SeqTracker`]: a `(sender, seq)` seen before is a replay
//! (a relay re-serving an old record under a new envelope, or a buggy sender) and must not
//! reach the app twice; a jump forward reveals records a relay withheld or lost (a gap),
//! reported once. Records arriving out of order fill gaps without being reported as replays.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use zerok_messages::DeviceId;

/// Out-of-order sequence numbers remembered per sender above the contiguous prefix. Past
/// this the oldest gap is given up (its records are treated as lost): it bounds a hostile
/// sender's or relay's memory cost to 4,096 × 8 bytes per sender.
pub const SEEN_ABOVE_MAX: usize = 4096;

/// What a sequence number means for the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    /// New, and nothing is missing before it (or it filled a gap).
    New,
    /// New, and the sequence numbers `from..to` (exclusive) have not been seen: a gap.
    Gap {
        /// First missing seq.
        from: u64,
        /// One past the last missing seq.
        to: u64,
    },
    /// Already seen (or `0`, which no sender uses): drop it.
    Replay,
}

impl SeqVerdict {
    /// Whether the record should be handed to the app.
    pub fn is_new(&self) -> bool {
        !matches!(self, SeqVerdict::Replay)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SenderSeqs {
    /// Every seq below this has been seen (or given up).
    next_expected: u64,
    /// Seen seqs above `next_expected`.
    seen_above: BTreeSet<u64>,
    /// The latest timestamp (unix ms) of a record seen from this sender (0: none noted;
    /// trackers kept before it existed read as 0).
    #[serde(default)]
    last_seen_ms: u64,
}

/// Sequence state of every sender of one group. Serializable so a client can persist it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqTracker {
    senders: BTreeMap<DeviceId, SenderSeqs>,
}

impl SeqTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    fn sender(&mut self, sender: DeviceId) -> &mut SenderSeqs {
        self.senders.entry(sender).or_insert_with(|| SenderSeqs {
            next_expected: 1,
            seen_above: BTreeSet::new(),
            last_seen_ms: 0,
        })
    }

    /// Note a record of `sender` stamped `at_ms` (unix ms), received at `now_ms`: the
    /// latest one is kept, and goes to disk with the tracker. A stamp ahead of `now_ms` (the
    /// sender's clock ran fast) counts as `now_ms`, so it cannot pin the time in the future.
    pub fn note_seen(&mut self, sender: DeviceId, at_ms: u64, now_ms: u64) {
        let state = self.sender(sender);
        state.last_seen_ms = state.last_seen_ms.max(at_ms.min(now_ms));
    }

    /// The latest timestamp noted for `sender` (unix ms), if any.
    pub fn last_seen_ms(&self, sender: &DeviceId) -> Option<u64> {
        self.senders
            .get(sender)
            .map(|s| s.last_seen_ms)
            .filter(|ms| *ms > 0)
    }

    /// Classify `seq` from `sender` and remember it if new.
    pub fn observe(&mut self, sender: DeviceId, seq: u64) -> SeqVerdict {
        if seq == 0 {
            return SeqVerdict::Replay;
        }
        let state = self.sender(sender);
        if seq < state.next_expected || state.seen_above.contains(&seq) {
            return SeqVerdict::Replay;
        }
        if seq == state.next_expected {
            state.next_expected += 1;
            while state.seen_above.remove(&state.next_expected) {
                state.next_expected += 1;
            }
            return SeqVerdict::New;
        }
        let highest_seen = state
            .seen_above
            .last()
            .copied()
            .unwrap_or(state.next_expected - 1);
        state.seen_above.insert(seq);
        if state.seen_above.len() > SEEN_ABOVE_MAX {
            // Give up on the oldest gap: jump the prefix to the lowest remembered seq.
            if let Some(lowest) = state.seen_above.pop_first() {
                state.next_expected = lowest + 1;
                while state.seen_above.remove(&state.next_expected) {
                    state.next_expected += 1;
                }
            }
        }
        if seq > highest_seen + 1 {
            SeqVerdict::Gap {
                from: highest_seen + 1,
                to: seq,
            }
        } else {
            // Fills part of an already reported gap, or extends the top by one.
            SeqVerdict::New
        }
    }

    /// Count every seq of `sender` up to `seq` as seen (a device that takes a new key marks
    /// what its old key wrote, so the old key's later records, now another device's, arrive
    /// without a false gap).
    pub fn mark_seen_through(&mut self, sender: DeviceId, seq: u64) {
        let state = self.sender(sender);
        if seq < state.next_expected {
            return;
        }
        state.next_expected = seq.saturating_add(1);
        state.seen_above = state.seen_above.split_off(&state.next_expected);
        while state.seen_above.remove(&state.next_expected) {
            state.next_expected += 1;
        }
    }

    /// The highest seq seen from `sender` with nothing missing below it.
    pub fn contiguous(&self, sender: &DeviceId) -> u64 {
        self.senders
            .get(sender)
            .map(|state| state.next_expected - 1)
            .unwrap_or(0)
    }
}

/// How far ahead of local wall time a remote timestamp may pull this device's clock: 5
/// minutes. Larger than the skew of any clock that is synchronised at all (NTP keeps devices
/// within a second; an unsynchronised quartz clock drifts ~2 minutes a month), so honest
/// devices keep following each other exactly; small enough that a broken clock or a hostile
/// group member writing `hlc = u64::MAX` moves every receiver's clock at most 5 minutes
/// ahead, instead of pinning it at the maximum forever (every later local timestamp would
/// then be `u64::MAX`). A record from further ahead is still delivered with its own
/// timestamp; only this device's clock does not follow it past the bound.
pub const HLC_DRIFT_MAX_MS: u64 = 5 * 60 * 1000;

/// A hybrid logical clock: `unix_ms << 16 | counter`. Strictly increasing per device and
/// never behind any timestamp it has observed up to [`HLC_DRIFT_MAX_MS`] ahead of its own
/// wall time, so records order sensibly across devices even with skewed wall clocks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hlc {
    last: u64,
}

impl Hlc {
    /// Bits of the logical counter below the milliseconds.
    const COUNTER_BITS: u32 = 16;

    /// A clock that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// A timestamp for a local event at wall time `now_unix_ms`.
    pub fn tick(&mut self, now_unix_ms: u64) -> u64 {
        let physical = now_unix_ms << Self::COUNTER_BITS;
        self.last = physical.max(self.last.saturating_add(1));
        self.last
    }

    /// Take a remote timestamp into account, at local wall time `now_unix_ms`: the clock
    /// follows it up to [`HLC_DRIFT_MAX_MS`] ahead of `now_unix_ms`, no further.
    pub fn observe(&mut self, remote: u64, now_unix_ms: u64) {
        self.last = self.last.max(remote.min(Self::ceiling(now_unix_ms)));
    }

    /// The highest timestamp the clock may adopt at wall time `now_unix_ms`.
    pub fn ceiling(now_unix_ms: u64) -> u64 {
        let limit_ms = now_unix_ms.saturating_add(HLC_DRIFT_MAX_MS);
        if limit_ms >= 1 << (u64::BITS - Self::COUNTER_BITS) {
            return u64::MAX;
        }
        (limit_ms << Self::COUNTER_BITS) | ((1 << Self::COUNTER_BITS) - 1)
    }

    /// The last timestamp issued or adopted.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The wall-clock milliseconds of a timestamp.
    pub fn unix_ms(timestamp: u64) -> u64 {
        timestamp >> Self::COUNTER_BITS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: DeviceId = DeviceId([1; 32]);
    const B: DeviceId = DeviceId([2; 32]);

    #[test]
    fn in_order_is_new_and_replays_are_reported() {
        let mut tracker = SeqTracker::new();
        assert_eq!(tracker.observe(A, 1), SeqVerdict::New);
        assert_eq!(tracker.observe(A, 2), SeqVerdict::New);
        assert_eq!(tracker.observe(A, 1), SeqVerdict::Replay);
        assert_eq!(tracker.observe(A, 2), SeqVerdict::Replay);
        assert_eq!(tracker.observe(A, 0), SeqVerdict::Replay);
        // Senders are independent.
        assert_eq!(tracker.observe(B, 1), SeqVerdict::New);
        assert_eq!(tracker.contiguous(&A), 2);
    }

    #[test]
    fn gaps_are_reported_once_and_filled_without_replay() {
        let mut tracker = SeqTracker::new();
        assert_eq!(tracker.observe(A, 1), SeqVerdict::New);
        assert_eq!(tracker.observe(A, 5), SeqVerdict::Gap { from: 2, to: 5 });
        assert_eq!(tracker.observe(A, 6), SeqVerdict::New);
        assert_eq!(tracker.observe(A, 5), SeqVerdict::Replay);
        assert_eq!(tracker.observe(A, 3), SeqVerdict::New);
        assert_eq!(tracker.observe(A, 2), SeqVerdict::New);
        assert_eq!(tracker.contiguous(&A), 3);
        assert_eq!(tracker.observe(A, 4), SeqVerdict::New);
        assert_eq!(tracker.contiguous(&A), 6);
        assert_eq!(tracker.observe(A, 4), SeqVerdict::Replay);
        assert_eq!(tracker.observe(A, 9), SeqVerdict::Gap { from: 7, to: 9 });
    }

    #[test]
    fn memory_is_bounded_by_giving_up_old_gaps() {
        let mut tracker = SeqTracker::new();
        for seq in (3..).step_by(2).take(SEEN_ABOVE_MAX + 10) {
            assert!(tracker.observe(A, seq).is_new());
        }
        assert!(tracker.senders[&A].seen_above.len() <= SEEN_ABOVE_MAX);
        assert!(tracker.contiguous(&A) > 1);
        // Given-up seqs count as seen: never delivered late as new after the jump.
        assert_eq!(tracker.observe(A, 1), SeqVerdict::Replay);
    }

    #[test]
    fn marking_a_prefix_seen_makes_it_replays_and_the_next_seq_new() {
        let mut tracker = SeqTracker::new();
        assert_eq!(tracker.observe(A, 5), SeqVerdict::Gap { from: 1, to: 5 });
        tracker.mark_seen_through(A, 3);
        assert_eq!(tracker.contiguous(&A), 3);
        assert_eq!(tracker.observe(A, 2), SeqVerdict::Replay);
        assert_eq!(tracker.observe(A, 4), SeqVerdict::New);
        assert_eq!(tracker.contiguous(&A), 5);
        // Marking less than is known changes nothing.
        tracker.mark_seen_through(A, 1);
        assert_eq!(tracker.contiguous(&A), 5);
        tracker.mark_seen_through(B, 3);
        assert_eq!(tracker.observe(B, 4), SeqVerdict::New);
    }

    #[test]
    fn the_latest_record_time_is_kept_and_read_from_trackers_kept_before_it() {
        let mut tracker = SeqTracker::new();
        assert_eq!(tracker.last_seen_ms(&A), None);
        tracker.observe(A, 1);
        assert_eq!(tracker.last_seen_ms(&A), None);
        tracker.note_seen(A, 2_000, 2_500);
        // A late record (a replay, or one a relay held back) does not move it back.
        tracker.note_seen(A, 1_000, 3_000);
        assert_eq!(tracker.last_seen_ms(&A), Some(2_000));
        // A stamp from a clock far ahead counts as when it was received.
        tracker.note_seen(B, u64::MAX / 2, 5_000);
        assert_eq!(tracker.last_seen_ms(&B), Some(5_000));
        let mut bytes = Vec::new();
        ciborium::into_writer(&tracker, &mut bytes).unwrap();
        let read: SeqTracker = ciborium::from_reader(bytes.as_slice()).unwrap();
        assert_eq!(read.last_seen_ms(&A), Some(2_000));
        // A tracker written before the field existed: its senders have no time.
        #[derive(Serialize)]
        struct Before {
            next_expected: u64,
            seen_above: BTreeSet<u64>,
        }
        #[derive(Serialize)]
        struct BeforeTracker {
            senders: BTreeMap<DeviceId, Before>,
        }
        let before = BeforeTracker {
            senders: [(
                A,
                Before {
                    next_expected: 4,
                    seen_above: BTreeSet::new(),
                },
            )]
            .into(),
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&before, &mut bytes).unwrap();
        let mut read: SeqTracker = ciborium::from_reader(bytes.as_slice()).unwrap();
        assert_eq!(read.last_seen_ms(&A), None);
        assert_eq!(read.observe(A, 3), SeqVerdict::Replay);
        assert_eq!(read.observe(A, 4), SeqVerdict::New);
    }

    #[test]
    fn hlc_is_monotonic_and_follows_remote() {
        let mut hlc = Hlc::new();
        let t1 = hlc.tick(1000);
        let t2 = hlc.tick(1000);
        let t3 = hlc.tick(999);
        assert!(t1 < t2 && t2 < t3);
        assert_eq!(Hlc::unix_ms(t1), 1000);
        hlc.observe(Hlc::new().tick(5000), 1000);
        assert!(hlc.tick(1001) > (5000 << 16));
    }

    #[test]
    fn a_remote_far_ahead_is_clamped_not_adopted() {
        let now = 1_700_000_000_000;
        let mut hlc = Hlc::new();
        hlc.observe(u64::MAX, now);
        let next = hlc.tick(now);
        assert!(next < u64::MAX);
        assert!(Hlc::unix_ms(next) <= now + HLC_DRIFT_MAX_MS + 1);
        // Once wall time passes the clamp, local time leads again.
        let later = now + HLC_DRIFT_MAX_MS + 60_000;
        assert_eq!(Hlc::unix_ms(hlc.tick(later)), later);
        // Within the bound a remote is followed exactly.
        let mut hlc = Hlc::new();
        let ahead = (now + 60_000) << 16;
        hlc.observe(ahead, now);
        assert_eq!(hlc.tick(now), ahead + 1);
    }

    proptest! {
        #[test]
        fn the_clock_never_runs_past_the_drift_bound(
            steps in prop::collection::vec((any::<bool>(), any::<u64>(), 0u64..1_000_000), 1..200),
        ) {
            // Wall time moves forward by up to a second a step; remotes are arbitrary.
            let mut now: u64 = 1_700_000_000_000;
            let mut hlc = Hlc::new();
            let mut previous_tick = 0;
            for (is_tick, remote, advance_ms) in steps {
                now += advance_ms / 1000;
                if is_tick {
                    let t = hlc.tick(now);
                    prop_assert!(t > previous_tick, "ticks strictly increase");
                    previous_tick = t;
                } else {
                    let before = hlc.last();
                    hlc.observe(remote, now);
                    prop_assert!(hlc.last() >= before, "observing never goes back");
                    prop_assert!(hlc.last() >= remote.min(Hlc::ceiling(now)), "follows within the bound");
                }
                // Never further ahead than the bound, plus one per local event.
                prop_assert!(Hlc::unix_ms(hlc.last()) <= now + HLC_DRIFT_MAX_MS + 1);
            }
        }

        #[test]
        fn any_delivery_order_gives_each_seq_once(mut order in Just((1u64..=200).collect::<Vec<_>>()).prop_shuffle(), dups in prop::collection::vec(1u64..=200, 0..50)) {
            let mut tracker = SeqTracker::new();
            let mut accepted = BTreeSet::new();
            order.extend(dups);
            for seq in order {
                if tracker.observe(A, seq).is_new() {
                    prop_assert!(accepted.insert(seq), "seq {} accepted twice", seq);
                }
            }
            prop_assert_eq!(accepted.len(), 200);
            prop_assert_eq!(tracker.contiguous(&A), 200);
        }
    }
}
