//! SeenIds: the blob ids this client recently pushed or took from a relay, so a second
//! copy (the same record from another relay, or this device's own record served back by its
//! subscription) is dropped before it is opened: opening costs a signature check (~45 µs).
//!
//! Owned by the SyncCoordinator, in memory only and bounded ([`SEEN_IDS_MAX`], oldest out
//! first). It is a cache, not the judge: a duplicate it no longer holds is opened and then
//! dropped by the group's persisted seq tracker (or, for own records, by their sender), so
//! forgetting an id costs work, never a duplicate for the app.

use std::collections::{HashSet, VecDeque};
use zerok_messages::BlobId;

/// Ids remembered. Relays of a group stream the same records at about the same pace, so
/// a second copy arrives within a few pages (1,000 items each) of the first; 16,384 ids cover
/// that many times over at ~1 MiB.
pub const SEEN_IDS_MAX: usize = 16_384;

/// A bounded set of recent blob ids, evicting the oldest.
#[derive(Debug)]
pub struct SeenIds {
    ids: HashSet<BlobId>,
    order: VecDeque<BlobId>,
    max: usize,
}

impl Default for SeenIds {
    fn default() -> Self {
        Self::with_max(SEEN_IDS_MAX)
    }
}

impl SeenIds {
    /// An empty set holding at most `max` ids.
    pub fn with_max(max: usize) -> Self {
        Self {
            ids: HashSet::new(),
            order: VecDeque::new(),
            max: max.max(1),
        }
    }

    /// Whether `id` is remembered.
    pub fn contains(&self, id: &BlobId) -> bool {
        self.ids.contains(id)
    }

    /// Remember `id`, forgetting the oldest past the bound.
    pub fn insert(&mut self, id: BlobId) {
        if !self.ids.insert(id) {
            return;
        }
        self.order.push_back(id);
        while self.order.len() > self.max {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        debug_assert_eq!(self.ids.len(), self.order.len());
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> BlobId {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&n.to_be_bytes());
        BlobId(bytes)
    }

    #[test]
    fn stays_bounded_and_forgets_the_oldest_first() {
        let mut seen = SeenIds::with_max(100);
        for n in 0..1000 {
            seen.insert(id(n));
            seen.insert(id(n)); // a second copy changes nothing
            assert!(seen.len() <= 100);
        }
        assert_eq!(seen.len(), 100);
        assert!(!seen.contains(&id(899)));
        assert!(seen.contains(&id(900)));
        assert!(seen.contains(&id(999)));
    }

    #[test]
    fn the_default_bound_holds() {
        let mut seen = SeenIds::default();
        for n in 0..(SEEN_IDS_MAX as u64 + 10) {
            seen.insert(id(n));
        }
        assert_eq!(seen.len(), SEEN_IDS_MAX);
        assert!(!seen.contains(&id(9)));
        assert!(seen.contains(&id(10)));
    }
}
