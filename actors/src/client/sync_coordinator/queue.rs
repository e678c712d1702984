//! One group's outbox as the coordinator tracks it, a pure core: which own pushes are queued
//! (their envelopes stay in the local store), which may go to relays, which relay acked
//! which, and what each relay's connection was handed. The coordinator ([`super::outbox`])
//! reads the envelopes and casts them; this decides which.
//!
//! A push may go to relays once it is durable here, or before, when its seq is covered by a
//! durable seq reservation (a crash can then never hand that seq to another record: DESIGN.md
//! §6). Each relay gets a window: at most [`PUSHES_HANDED_MAX`] pushes handed and not acked,
//! in push order. A `Joined` rewinds the relay's window to its first unacked push; acks slide
//! it.

use std::collections::{BTreeMap, HashMap};
use zerok_messages::{BlobId, DeviceId};

/// Pushes of a group handed to one RelayConnection and not yet acked by it. The rest wait
/// in the outbox and are handed over as acks come back, so an app that enqueues faster
/// than a relay stores (or while it is away) does not also queue a copy of every record in
/// the connection. 1,024 × 1 KiB records is 2 MiB, eight times the connection's own window
/// of frames in flight, so it never runs dry while the relay keeps up.
pub const PUSHES_HANDED_MAX: usize = 1024;

/// A queued push.
#[derive(Debug, Clone)]
struct Queued {
    blob_id: BlobId,
    acked_by: Vec<DeviceId>,
}

/// What one relay's connection was handed.
#[derive(Debug, Default, Clone, Copy)]
struct SendWindow {
    /// Every push up to here was handed (or acked by this relay before).
    sent_upto: u64,
    /// Handed and not acked yet.
    unacked: usize,
}

/// One group's outbox (without envelopes).
#[derive(Debug, Default)]
pub struct Outbox {
    entries: BTreeMap<u64, Queued>,
    by_blob: HashMap<BlobId, u64>,
    /// Pushes up to this seq may go to relays (durable, or under a durable reservation).
    sendable_seq: u64,
    /// The highest seq ever queued.
    queued_upto: u64,
    windows: BTreeMap<DeviceId, SendWindow>,
}

impl Outbox {
    /// The outbox as the store holds it: `(seq, blob id, relays that acked)`, every seq up to
    /// `last_seq` used and sendable.
    pub fn new(
        entries: impl IntoIterator<Item = (u64, BlobId, Vec<DeviceId>)>,
        last_seq: u64,
    ) -> Self {
        let mut outbox = Self {
            sendable_seq: last_seq,
            queued_upto: last_seq,
            ..Self::default()
        };
        for (seq, blob_id, acked_by) in entries {
            outbox.by_blob.insert(blob_id, seq);
            outbox.entries.insert(seq, Queued { blob_id, acked_by });
        }
        outbox
    }

    /// Pushes queued.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Pushes acked by fewer than `quorum` relays.
    pub fn short_of(&self, quorum: usize) -> usize {
        self.entries
            .values()
            .filter(|e| e.acked_by.len() < quorum)
            .count()
    }

    /// Whether push `seq` is still queued.
    pub fn contains(&self, seq: u64) -> bool {
        self.entries.contains_key(&seq)
    }

    /// A push written to the store (durable once its flush completes); seqs only grow.
    pub fn insert(&mut self, seq: u64, blob_id: BlobId) {
        self.queued_upto = self.queued_upto.max(seq);
        self.by_blob.insert(blob_id, seq);
        self.entries.insert(
            seq,
            Queued {
                blob_id,
                acked_by: Vec::new(),
            },
        );
    }

    /// Pushes up to `seq` may go to relays: they are durable, or `seq` is the end of a
    /// durable seq reservation (pushes queued later up to it are sendable at once).
    pub fn made_sendable(&mut self, seq: u64) {
        self.sendable_seq = self.sendable_seq.max(seq);
    }

    /// The last push that may go to relays now.
    fn sendable_end(&self) -> u64 {
        self.sendable_seq.min(self.queued_upto)
    }

    /// A (new) link to `relay` joined the group: its window starts again at the first
    /// sendable push it has not acked. The pushes to send, in order.
    pub fn rewind(&mut self, relay: DeviceId) -> Vec<u64> {
        let end = self.sendable_end();
        let seqs: Vec<u64> = self
            .entries
            .range(..=end)
            .filter(|(_, e)| !e.acked_by.contains(&relay))
            .take(PUSHES_HANDED_MAX)
            .map(|(seq, _)| *seq)
            .collect();
        let sent_upto = match seqs.last() {
            Some(last) if seqs.len() == PUSHES_HANDED_MAX => *last,
            _ => end,
        };
        self.windows.insert(
            relay,
            SendWindow {
                sent_upto,
                unacked: seqs.len(),
            },
        );
        seqs
    }

    /// The next sendable pushes `relay` was not handed yet, while its window has room.
    pub fn top_up(&mut self, relay: DeviceId) -> Vec<u64> {
        let end = self.sendable_end();
        let window = self.windows.entry(relay).or_default();
        if window.sent_upto >= end || window.unacked >= PUSHES_HANDED_MAX {
            return Vec::new();
        }
        let mut handed = Vec::new();
        for (seq, queued) in self.entries.range(window.sent_upto + 1..=end) {
            if window.unacked >= PUSHES_HANDED_MAX {
                break;
            }
            window.sent_upto = *seq;
            if queued.acked_by.contains(&relay) {
                continue;
            }
            window.unacked += 1;
            handed.push(*seq);
        }
        if window.unacked < PUSHES_HANDED_MAX {
            // Everything up to the sendable end was looked at.
            window.sent_upto = end;
        }
        handed
    }

    /// `relay` acked push `seq`: its blob id and every relay that acked it so far, if queued.
    pub fn acked(&mut self, relay: DeviceId, seq: u64) -> Option<(BlobId, Vec<DeviceId>)> {
        let entry = self.entries.get_mut(&seq)?;
        if !entry.acked_by.contains(&relay) {
            entry.acked_by.push(relay);
        }
        if let Some(window) = self.windows.get_mut(&relay)
            && seq <= window.sent_upto
        {
            window.unacked = window.unacked.saturating_sub(1);
        }
        Some((entry.blob_id, entry.acked_by.clone()))
    }

    /// Push `seq` left the outbox (every relay acked it).
    pub fn remove(&mut self, seq: u64) {
        if let Some(entry) = self.entries.remove(&seq) {
            self.by_blob.remove(&entry.blob_id);
        }
    }

    /// Relays that acked the queued push `blob_id`.
    pub fn acked_by(&self, blob_id: &BlobId) -> Option<Vec<DeviceId>> {
        let seq = self.by_blob.get(blob_id)?;
        self.entries.get(seq).map(|e| e.acked_by.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: DeviceId = DeviceId([1; 32]);
    const B: DeviceId = DeviceId([2; 32]);

    fn id(seq: u64) -> BlobId {
        BlobId::of_ciphertext(&seq.to_be_bytes())
    }

    fn filled(n: u64, durable: u64) -> Outbox {
        let mut outbox = Outbox::default();
        for seq in 1..=n {
            outbox.insert(seq, id(seq));
        }
        outbox.made_sendable(durable);
        outbox
    }

    #[test]
    fn only_sendable_pushes_are_handed_and_a_window_at_a_time() {
        let n = PUSHES_HANDED_MAX as u64 * 2;
        let mut outbox = filled(n, 10);
        assert_eq!(outbox.rewind(A), (1..=10).collect::<Vec<_>>());
        assert!(outbox.top_up(A).is_empty(), "nothing more is sendable");
        outbox.made_sendable(n);
        let handed = outbox.top_up(A);
        assert_eq!(handed.len(), PUSHES_HANDED_MAX - 10);
        assert_eq!(handed.first(), Some(&11));
        assert!(outbox.top_up(A).is_empty(), "the window is full");
        // Each ack makes room for one more, in order.
        outbox.acked(A, 1);
        assert_eq!(outbox.top_up(A), [PUSHES_HANDED_MAX as u64 + 1]);
        // Another relay's window is its own.
        assert_eq!(outbox.rewind(B).len(), PUSHES_HANDED_MAX);
    }

    #[test]
    fn a_rewind_skips_what_the_relay_acked_and_acks_make_receipts() {
        let mut outbox = filled(5, 5);
        outbox.rewind(A);
        outbox.acked(A, 2);
        let (blob_id, acked_by) = outbox.acked(B, 2).expect("queued");
        assert_eq!((blob_id, acked_by.clone()), (id(2), vec![A, B]));
        assert_eq!(outbox.acked_by(&id(2)), Some(acked_by));
        assert_eq!(outbox.short_of(2), 4);
        // A new link to A: everything but what A acked.
        assert_eq!(outbox.rewind(A), [1, 3, 4, 5]);
        outbox.remove(2);
        assert!(!outbox.contains(2));
        assert_eq!(outbox.acked_by(&id(2)), None);
        assert_eq!(outbox.acked(A, 2), None);
        assert_eq!(outbox.len(), 4);
    }

    #[test]
    fn a_reservation_makes_pushes_queued_later_sendable_at_once_and_none_is_skipped() {
        let mut outbox = filled(3, 3);
        assert_eq!(outbox.rewind(A), [1, 2, 3]);
        // A durable reservation through 10, seen before pushes 4.. are queued.
        outbox.made_sendable(10);
        assert!(outbox.top_up(A).is_empty(), "nothing queued past 3 yet");
        outbox.insert(4, id(4));
        assert_eq!(outbox.top_up(A), [4]);
        for seq in 5..=12 {
            outbox.insert(seq, id(seq));
        }
        // 5..=10 go at once; 11 and 12 wait for their own flush (or the next reservation).
        assert_eq!(outbox.top_up(A), (5..=10).collect::<Vec<_>>());
        assert_eq!(outbox.rewind(B), (1..=10).collect::<Vec<_>>());
        outbox.made_sendable(12);
        assert_eq!(outbox.top_up(A), [11, 12]);
        assert_eq!(outbox.top_up(B), [11, 12]);
    }
}
