//! The in-memory index: where each item's record lies, per mailbox, by cursor and blob id,
//! and when it expires.

use super::*;
/// Where an item's record lies, and what the index needs of it without reading it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Loc {
    pub(super) segment: u32,
    pub(super) offset: u32,
    /// Frame length (header, item header, ciphertext).
    pub(super) len: u32,
    pub(super) stored_at_ms: u64,
    pub(super) expires_at_ms: u64,
    pub(super) blob_id: BlobId,
}

impl Loc {
    pub(super) fn ciphertext_len(&self) -> u64 {
        u64::from(self.len).saturating_sub((FRAME_HEADER + ITEM_HEADER) as u64)
    }
}

pub(super) struct Mailbox {
    pub(super) id: MailboxId,
    pub(super) meta: MailboxMeta,
    /// The segment holding the record that set `meta.latest`.
    pub(super) latest_segment: u32,
    pub(super) items: BTreeMap<u64, Loc>,
    /// Idempotency: the cursors of `items`, found by blob id. The table holds cursors only and
    /// hashes each by its item's blob id (in `items`), so the 32-byte id is kept once per
    /// item, not twice.
    pub(super) blobs: HashTable<u64>,
}

pub(super) struct Segment {
    /// Read handle (reads run without the writer lock).
    pub(super) file: Arc<dyn StoreFile>,
    pub(super) size: u64,
    /// Items indexed in it, and their frame bytes.
    pub(super) live: u64,
    pub(super) live_bytes: u64,
    /// Item records ever written to it.
    pub(super) item_records: u64,
}

impl Segment {
    /// A segment of `size` bytes read through `reader`, nothing indexed in it yet.
    pub(super) fn new(reader: Box<dyn StoreFile>, size: u64) -> Self {
        Self {
            file: Arc::from(reader),
            size,
            live: 0,
            live_bytes: 0,
            item_records: 0,
        }
    }
}

#[derive(Default)]
pub(super) struct Index {
    /// Keyed hashing of blob ids for the idempotency tables (random per process: a member
    /// cannot craft ids that collide in it).
    pub(super) hasher: RandomState,
    pub(super) slots: HashMap<MailboxId, u32>,
    pub(super) mailboxes: Vec<Mailbox>,
    /// expires_at_ms → (mailbox slot, cursor): one list per expiry, filled in commit order.
    pub(super) expiry: BTreeMap<u64, Vec<(u32, u64)>>,
    pub(super) segments: BTreeMap<u32, Segment>,
    /// Non-empty mailboxes, items and ciphertext bytes.
    pub(super) mailboxes_used: u64,
    pub(super) items: u64,
    pub(super) bytes: u64,
}

impl Index {
    pub(super) fn mailbox(&self, id: &MailboxId) -> Option<&Mailbox> {
        self.slots
            .get(id)
            .map(|slot| &self.mailboxes[*slot as usize])
    }

    pub(super) fn meta(&self, id: &MailboxId) -> MailboxMeta {
        self.mailbox(id).map(|m| m.meta).unwrap_or_default()
    }

    /// The cursor and `stored_at_ms` of `blob_id` in mailbox `id`, unless it has expired at
    /// `now_ms` (an expired item not yet swept is never served, so a push of the same
    /// ciphertext must be stored again, not answered with the expired cursor).
    pub(super) fn existing(
        &self,
        id: &MailboxId,
        blob_id: &BlobId,
        now_ms: u64,
    ) -> Option<(u64, u64)> {
        let mailbox = self.mailbox(id)?;
        let items = &mailbox.items;
        let cursor = *mailbox.blobs.find(self.hasher.hash_one(blob_id), |c| {
            items.get(c).is_some_and(|loc| loc.blob_id == *blob_id)
        })?;
        let loc = items.get(&cursor)?;
        (loc.expires_at_ms > now_ms).then_some((cursor, loc.stored_at_ms))
    }

    pub(super) fn slot(&mut self, id: &MailboxId, segment: u32) -> u32 {
        if let Some(slot) = self.slots.get(id) {
            return *slot;
        }
        let slot = self.mailboxes.len() as u32;
        self.mailboxes.push(Mailbox {
            id: *id,
            meta: MailboxMeta::default(),
            latest_segment: segment,
            items: BTreeMap::new(),
            blobs: HashTable::new(),
        });
        self.slots.insert(*id, slot);
        slot
    }

    pub(super) fn insert_item(
        &mut self,
        segment: u32,
        offset: u64,
        len: usize,
        item: &ItemRecord<'_>,
    ) {
        let slot = self.slot(&item.mailbox, segment);
        // A record written again (compaction) replaces the older copy.
        self.remove_item(slot, item.cursor);
        let loc = Loc {
            segment,
            offset: offset as u32,
            len: len as u32,
            stored_at_ms: item.stored_at_ms,
            expires_at_ms: item.expires_at_ms,
            blob_id: item.blob_id,
        };
        let mailbox = &mut self.mailboxes[slot as usize];
        mailbox.items.insert(item.cursor, loc);
        let hasher = &self.hasher;
        let items = &mailbox.items;
        let blob_id = item.blob_id;
        match mailbox.blobs.entry(
            hasher.hash_one(blob_id),
            |c| items.get(c).is_some_and(|loc| loc.blob_id == blob_id),
            |c| items.get(c).map_or(0, |loc| hasher.hash_one(loc.blob_id)),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut entry) => *entry.get_mut() = item.cursor,
            hashbrown::hash_table::Entry::Vacant(entry) => {
                entry.insert(item.cursor);
            }
        }
        if mailbox.meta.count == 0 {
            self.mailboxes_used += 1;
        }
        mailbox.meta.count += 1;
        mailbox.meta.bytes += loc.ciphertext_len();
        if item.cursor >= mailbox.meta.latest {
            mailbox.meta.latest = item.cursor;
            mailbox.latest_segment = segment;
        }
        self.items += 1;
        self.bytes += loc.ciphertext_len();
        self.expiry
            .entry(item.expires_at_ms)
            .or_default()
            .push((slot, item.cursor));
        if let Some(seg) = self.segments.get_mut(&segment) {
            seg.live += 1;
            seg.live_bytes += len as u64;
        }
    }

    pub(super) fn mark(&mut self, segment: u32, id: &MailboxId, latest: u64) {
        let slot = self.slot(id, segment);
        let mailbox = &mut self.mailboxes[slot as usize];
        if latest >= mailbox.meta.latest {
            mailbox.meta.latest = latest;
            mailbox.latest_segment = segment;
        }
    }

    /// Drop an item from the index; false when it was not there.
    pub(super) fn remove_item(&mut self, slot: u32, cursor: u64) -> bool {
        let Some(mailbox) = self.mailboxes.get_mut(slot as usize) else {
            return false;
        };
        let Some(loc) = mailbox.items.remove(&cursor) else {
            return false;
        };
        if let Ok(entry) = mailbox
            .blobs
            .find_entry(self.hasher.hash_one(loc.blob_id), |c| *c == cursor)
        {
            entry.remove();
        }
        let size = loc.ciphertext_len();
        mailbox.meta.count = mailbox.meta.count.saturating_sub(1);
        mailbox.meta.bytes = mailbox.meta.bytes.saturating_sub(size);
        if mailbox.meta.count == 0 {
            self.mailboxes_used = self.mailboxes_used.saturating_sub(1);
        }
        self.items = self.items.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(size);
        if let Some(seg) = self.segments.get_mut(&loc.segment) {
            seg.live = seg.live.saturating_sub(1);
            seg.live_bytes = seg.live_bytes.saturating_sub(u64::from(loc.len));
        }
        true
    }

    /// Evict up to `budget` items due at `now_ms`; answers (evicted, more due).
    pub(super) fn evict_expired(&mut self, now_ms: u64, budget: u64) -> (u64, bool) {
        let mut evicted = 0;
        while evicted < budget {
            let Some((at, mut due)) = self.expiry.pop_first() else {
                break;
            };
            if at > now_ms {
                self.expiry.insert(at, due);
                break;
            }
            while evicted < budget
                && let Some((slot, cursor)) = due.pop()
            {
                if self.remove_item(slot, cursor) {
                    evicted += 1;
                }
            }
            if !due.is_empty() {
                self.expiry.insert(at, due);
            }
        }
        let more = self
            .expiry
            .first_key_value()
            .is_some_and(|(at, _)| *at <= now_ms);
        (evicted, more)
    }

    pub(super) fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }

    /// Bytes charged against the relay's byte budget.
    pub(super) fn charged_bytes(&self) -> u64 {
        self.bytes
            .saturating_add(self.items.saturating_mul(ITEM_CHARGE_BYTES))
    }

    /// Entries charged against the relay's index budget.
    pub(super) fn index_entries(&self) -> u64 {
        self.items
            .saturating_add((self.mailboxes.len() as u64).saturating_mul(MAILBOX_INDEX_ENTRIES))
    }
}
