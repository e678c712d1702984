//! The store's index, on disk: where each item's record lies (by mailbox and cursor), its blob
//! id (idempotency) and its expiry, in a fjall database (`index/` beside the segments). Only
//! what grows with mailboxes and segments, not with items, is also kept in memory: mailbox
//! metas and per-segment counts. So memory does not grow with the data, and opening reads the
//! index, not the data (docs/DECISIONS.md, "an on-disk index").
//!
//! The log stays the truth; the index is a cache of it that never runs ahead of it. Every
//! change goes into one fjall write batch, applied atomically, together with the
//! **checkpoint**: the end of the log (segment, offset) the index covers, which only ever
//! names records already `fdatasync`'d. fjall recovers a consistent prefix of its batches, so
//! after any crash the index is the log up to its checkpoint, and opening replays the log from
//! there. The index is made durable (fjall `SyncAll`) at every segment roll (so a power loss
//! replays at most about one segment) and before a segment file is deleted (so no item can
//! point into a deleted segment after a crash). An index that is missing, unreadable or
//! inconsistent with the segments on disk is cleared and rebuilt by reading every segment.
//!
//! Layout (numbers big-endian in keys, little-endian in values; a mailbox is named by its
//! slot, a number given in order of first use and kept in its meta):
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `items` | slot ‖ cursor | segment ‖ offset ‖ frame len ‖ stored_at_ms ‖ expires_at_ms ‖ blob id |
//! | `blobs` | slot ‖ blob id | cursor |
//! | `expiry` | expires_at_ms ‖ group number | (slot ‖ cursor) of each item of one apply with that expiry |
//! | `meta` | `v` | index format |
//! | `meta` | `c` | checkpoint: segment ‖ end ‖ start of the last batch |
//! | `meta` | `q` | the next expiry group number |
//! | `meta` | `m` ‖ mailbox id | slot ‖ count ‖ bytes ‖ latest ‖ latest segment |
//! | `meta` | `s` ‖ segment | live items ‖ live frame bytes ‖ item records written |
//! | `meta` | `x` ‖ segment ‖ offset | (empty): damage found there |

use super::*;
use fjall::{
    Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch as WriteBatch, PersistMode,
};
use std::collections::BTreeSet;

/// The index's directory inside the store's directory.
pub const INDEX_DIR: &str = "index";
/// The index's format, kept under `v`: another value means "rebuild".
const INDEX_VERSION: &[u8] = b"zerok-index-3";
/// Each keyspace's write buffer (memtable): bounds the index's memory beside the block cache.
const MEMTABLE_BYTES: u64 = 8 * 1024 * 1024;
/// fjall's block cache: what the index keeps of its files in memory.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// fjall's journal is rotated (its memtables flushed) past this, fjall's smallest: bounds what
/// fjall replays at open.
const JOURNAL_BYTES: u64 = 64 * 1024 * 1024;
/// Background threads of the index (flushes and compactions): one, so the relay's two cores
/// are not both taken by index maintenance.
const WORKER_THREADS: usize = 1;

const ITEM_VALUE: usize = 4 + 4 + 4 + 8 + 8 + 32;
const META_VALUE: usize = 4 + 8 + 8 + 8 + 4;
const SEGMENT_VALUE: usize = 8 + 8 + 8;

/// A failure of the index (fjall's error, as text for the log).
#[derive(Debug, thiserror::Error)]
#[error("store index: {message}")]
pub struct IndexError {
    message: String,
    /// The index is held by another open of it (a previous one of this process still
    /// shutting down its background threads): try again, never rebuild.
    pub(super) is_locked: bool,
}

impl From<fjall::Error> for IndexError {
    fn from(err: fjall::Error) -> Self {
        IndexError {
            is_locked: matches!(err, fjall::Error::Locked),
            message: err.to_string(),
        }
    }
}

/// Where an item's record lies, and what the index needs of it without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    fn encode(&self) -> [u8; ITEM_VALUE] {
        let mut out = [0u8; ITEM_VALUE];
        out[0..4].copy_from_slice(&self.segment.to_le_bytes());
        out[4..8].copy_from_slice(&self.offset.to_le_bytes());
        out[8..12].copy_from_slice(&self.len.to_le_bytes());
        out[12..20].copy_from_slice(&self.stored_at_ms.to_le_bytes());
        out[20..28].copy_from_slice(&self.expires_at_ms.to_le_bytes());
        out[28..60].copy_from_slice(&self.blob_id.0);
        out
    }

    fn decode(value: &[u8]) -> Option<Loc> {
        if value.len() != ITEM_VALUE {
            return None;
        }
        Some(Loc {
            segment: le_u32(&value[0..4]),
            offset: le_u32(&value[4..8]),
            len: le_u32(&value[8..12]),
            stored_at_ms: le_u64(&value[12..20]),
            expires_at_ms: le_u64(&value[20..28]),
            blob_id: BlobId(value[28..60].try_into().ok()?),
        })
    }
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut out = [0u8; 4];
    out.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(out)
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut out = [0u8; 8];
    out.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(out)
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut out = [0u8; 8];
    out.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(out)
}

fn be_u32(bytes: &[u8]) -> u32 {
    let mut out = [0u8; 4];
    out.copy_from_slice(&bytes[..4]);
    u32::from_be_bytes(out)
}

fn item_key(slot: u32, cursor: u64) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&slot.to_be_bytes());
    key[4..].copy_from_slice(&cursor.to_be_bytes());
    key
}

fn blob_key(slot: u32, blob_id: &BlobId) -> [u8; 36] {
    let mut key = [0u8; 36];
    key[..4].copy_from_slice(&slot.to_be_bytes());
    key[4..].copy_from_slice(&blob_id.0);
    key
}

fn expiry_key(expires_at_ms: u64, group: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&expires_at_ms.to_be_bytes());
    key[8..].copy_from_slice(&group.to_be_bytes());
    key
}

/// An expiry group's members: (slot, cursor) each.
fn encode_members(members: &[(u32, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(members.len() * 12);
    for (slot, cursor) in members {
        out.extend_from_slice(&slot.to_le_bytes());
        out.extend_from_slice(&cursor.to_le_bytes());
    }
    out
}

fn decode_members(value: &[u8]) -> Vec<(u32, u64)> {
    value
        .chunks_exact(12)
        .map(|c| (le_u32(&c[0..4]), le_u64(&c[4..12])))
        .collect()
}

fn meta_key(id: &MailboxId) -> [u8; 33] {
    let mut key = [0u8; 33];
    key[0] = b'm';
    key[1..].copy_from_slice(&id.0);
    key
}

fn damage_key(segment: u32, offset: u64) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[0] = b'x';
    key[1..5].copy_from_slice(&segment.to_be_bytes());
    key[5..].copy_from_slice(&offset.to_be_bytes());
    key
}

fn segment_key(id: u32) -> [u8; 5] {
    let mut key = [0u8; 5];
    key[0] = b's';
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

/// A mailbox the index knows: its meta, kept in memory.
pub(super) struct Mailbox {
    pub(super) id: MailboxId,
    pub(super) meta: MailboxMeta,
    /// The segment holding the record that set `meta.latest`.
    pub(super) latest_segment: u32,
}

/// What the index keeps of a segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct SegmentCounts {
    /// Items indexed in it, and their frame bytes.
    pub(super) live: u64,
    pub(super) live_bytes: u64,
    /// Item records ever written to it.
    pub(super) item_records: u64,
}

pub(super) struct Segment {
    /// Read handle (reads run without the writer lock).
    pub(super) file: Arc<dyn StoreFile>,
    pub(super) size: u64,
    pub(super) counts: SegmentCounts,
    /// Compaction has looked at the records before this offset.
    pub(super) compacted_upto: u64,
}

impl Segment {
    /// A segment of `size` bytes read through `reader`, with `counts`.
    pub(super) fn new(reader: Box<dyn StoreFile>, size: u64, counts: SegmentCounts) -> Self {
        Self {
            file: Arc::from(reader),
            size,
            counts,
            compacted_upto: 0,
        }
    }
}

/// What the index held when it was opened.
pub(super) struct Saved {
    /// The end of the log it covers (segment, start of its last batch, end); `None`: a new
    /// or cleared index.
    pub(super) checkpoint: Option<(u32, u64, u64)>,
    /// The counts of every segment it knows.
    pub(super) segments: BTreeMap<u32, SegmentCounts>,
}

pub(super) struct Index {
    db: Database,
    items_ks: Keyspace,
    blobs_ks: Keyspace,
    expiry_ks: Keyspace,
    meta_ks: Keyspace,
    /// Changes not yet applied to fjall; `pending` shows what they did to items (`None`: removed).
    batch: WriteBatch,
    pending: HashMap<(u32, u64), Option<Loc>>,
    /// Items indexed since the last apply, by expiry: one expiry entry per expiry time per
    /// apply (a commit's items mostly share one), not one per item.
    pending_expiry: BTreeMap<u64, Vec<(u32, u64)>>,
    next_group: u64,
    dirty_mailboxes: BTreeSet<u32>,
    dirty_segments: BTreeSet<u32>,
    pub(super) slots: HashMap<MailboxId, u32>,
    pub(super) mailboxes: Vec<Mailbox>,
    /// Damaged records and ranges found so far, by (segment, offset): kept (also after their
    /// segment is deleted), so a restart still reports them.
    pub(super) damage: BTreeSet<(u32, u64)>,
    pub(super) segments: BTreeMap<u32, Segment>,
    /// Non-empty mailboxes, items and ciphertext bytes.
    pub(super) mailboxes_used: u64,
    pub(super) items: u64,
    pub(super) bytes: u64,
}

fn keyspace_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
}

impl Index {
    /// Open (or create) the index in `dir`: the mailbox metas are loaded, the segment counts
    /// and the checkpoint answered. An index of another format is cleared.
    pub(super) fn open(dir: &Path) -> Result<(Index, Saved), IndexError> {
        let db = Database::builder(dir)
            .cache_size(CACHE_BYTES)
            .max_journaling_size(JOURNAL_BYTES)
            .worker_threads(WORKER_THREADS)
            .manual_journal_persist(true)
            .open()?;
        let items_ks = db.keyspace("items", keyspace_options)?;
        let blobs_ks = db.keyspace("blobs", keyspace_options)?;
        let expiry_ks = db.keyspace("expiry", keyspace_options)?;
        let meta_ks = db.keyspace("meta", keyspace_options)?;
        let batch = db.batch();
        let mut index = Index {
            db,
            items_ks,
            blobs_ks,
            expiry_ks,
            meta_ks,
            batch,
            pending: HashMap::new(),
            pending_expiry: BTreeMap::new(),
            next_group: 0,
            dirty_mailboxes: BTreeSet::new(),
            dirty_segments: BTreeSet::new(),
            slots: HashMap::new(),
            mailboxes: Vec::new(),
            damage: BTreeSet::new(),
            segments: BTreeMap::new(),
            mailboxes_used: 0,
            items: 0,
            bytes: 0,
        };
        let version = index.meta_ks.get(b"v")?;
        if version.as_deref() != Some(INDEX_VERSION) {
            if version.is_some() {
                warn!("the store index has another format; rebuilding it from the segments");
            }
            index.clear()?;
            return Ok((
                index,
                Saved {
                    checkpoint: None,
                    segments: BTreeMap::new(),
                },
            ));
        }
        index.next_group = index
            .meta_ks
            .get(b"q")?
            .filter(|v| v.len() == 8)
            .map_or(0, |v| le_u64(&v));
        let checkpoint = index
            .meta_ks
            .get(b"c")?
            .filter(|v| v.len() == 20)
            .map(|v| (le_u32(&v[0..4]), le_u64(&v[12..20]), le_u64(&v[4..12])));
        let mut segments = BTreeMap::new();
        let mut metas: Vec<(u32, Mailbox)> = Vec::new();
        for guard in index.meta_ks.iter() {
            let (key, value) = guard.into_inner()?;
            match key.first() {
                Some(b'm') if key.len() == 33 && value.len() == META_VALUE => {
                    let mut id = [0u8; 32];
                    id.copy_from_slice(&key[1..]);
                    metas.push((
                        le_u32(&value[0..4]),
                        Mailbox {
                            id: MailboxId(id),
                            meta: MailboxMeta {
                                count: le_u64(&value[4..12]),
                                bytes: le_u64(&value[12..20]),
                                latest: le_u64(&value[20..28]),
                            },
                            latest_segment: le_u32(&value[28..32]),
                        },
                    ));
                }
                Some(b'x') if key.len() == 13 => {
                    index
                        .damage
                        .insert((be_u32(&key[1..5]), be_u64(&key[5..13])));
                }
                Some(b's') if key.len() == 5 && value.len() == SEGMENT_VALUE => {
                    segments.insert(
                        be_u32(&key[1..5]),
                        SegmentCounts {
                            live: le_u64(&value[0..8]),
                            live_bytes: le_u64(&value[8..16]),
                            item_records: le_u64(&value[16..24]),
                        },
                    );
                }
                _ => {}
            }
        }
        metas.sort_unstable_by_key(|(slot, _)| *slot);
        let is_dense = metas
            .iter()
            .enumerate()
            .all(|(n, (slot, _))| *slot as usize == n);
        if !is_dense {
            warn!("the store index's mailbox slots are inconsistent; rebuilding it");
            index.clear()?;
            return Ok((
                index,
                Saved {
                    checkpoint: None,
                    segments: BTreeMap::new(),
                },
            ));
        }
        for (slot, mailbox) in metas {
            index.slots.insert(mailbox.id, slot);
            if mailbox.meta.count > 0 {
                index.mailboxes_used += 1;
            }
            index.items += mailbox.meta.count;
            index.bytes += mailbox.meta.bytes;
            index.mailboxes.push(mailbox);
        }
        Ok((
            index,
            Saved {
                checkpoint,
                segments,
            },
        ))
    }

    /// Forget everything (to rebuild from the segments).
    pub(super) fn clear(&mut self) -> Result<(), IndexError> {
        self.batch = self.db.batch();
        self.pending.clear();
        self.pending_expiry.clear();
        self.next_group = 0;
        self.dirty_mailboxes.clear();
        self.dirty_segments.clear();
        for keyspace in [
            &self.items_ks,
            &self.blobs_ks,
            &self.expiry_ks,
            &self.meta_ks,
        ] {
            keyspace.clear()?;
        }
        self.meta_ks.insert(b"v", INDEX_VERSION)?;
        self.slots.clear();
        self.mailboxes.clear();
        self.damage.clear();
        for segment in self.segments.values_mut() {
            segment.counts = SegmentCounts::default();
        }
        self.mailboxes_used = 0;
        self.items = 0;
        self.bytes = 0;
        Ok(())
    }

    pub(super) fn mailbox(&self, id: &MailboxId) -> Option<&Mailbox> {
        self.slots
            .get(id)
            .map(|slot| &self.mailboxes[*slot as usize])
    }

    pub(super) fn meta(&self, id: &MailboxId) -> MailboxMeta {
        self.mailbox(id).map(|m| m.meta).unwrap_or_default()
    }

    /// Where item `cursor` of mailbox `slot` lies, as of the changes made so far.
    pub(super) fn loc(&self, slot: u32, cursor: u64) -> Result<Option<Loc>, IndexError> {
        if let Some(pending) = self.pending.get(&(slot, cursor)) {
            return Ok(*pending);
        }
        Ok(self
            .items_ks
            .get(item_key(slot, cursor))?
            .and_then(|v| Loc::decode(&v)))
    }

    /// The cursor and `stored_at_ms` of `blob_id` in mailbox `id`, unless it has expired at
    /// `now_ms` (an expired item not yet swept is never served, so a push of the same
    /// ciphertext must be stored again, not answered with the expired cursor).
    pub(super) fn existing(
        &self,
        id: &MailboxId,
        blob_id: &BlobId,
        now_ms: u64,
    ) -> Result<Option<(u64, u64)>, IndexError> {
        let Some(slot) = self.slots.get(id) else {
            return Ok(None);
        };
        let Some(value) = self.blobs_ks.get(blob_key(*slot, blob_id))? else {
            return Ok(None);
        };
        if value.len() != 8 {
            return Ok(None);
        }
        let cursor = le_u64(&value);
        Ok(self
            .loc(*slot, cursor)?
            .filter(|loc| loc.blob_id == *blob_id && loc.expires_at_ms > now_ms)
            .map(|loc| (cursor, loc.stored_at_ms)))
    }

    fn slot(&mut self, id: &MailboxId, segment: u32) -> u32 {
        if let Some(slot) = self.slots.get(id) {
            return *slot;
        }
        let slot = self.mailboxes.len() as u32;
        self.mailboxes.push(Mailbox {
            id: *id,
            meta: MailboxMeta::default(),
            latest_segment: segment,
        });
        self.slots.insert(*id, slot);
        self.dirty_mailboxes.insert(slot);
        slot
    }

    /// Index an item record at `offset` of `segment`. With `may_exist`, a record of the same
    /// item written earlier (compaction copies an item forward; a replay meets items twice)
    /// is replaced; without, the caller knows the cursor is new.
    pub(super) fn insert_item(
        &mut self,
        segment: u32,
        offset: u64,
        len: usize,
        item: &ItemRecord<'_>,
        may_exist: bool,
    ) -> Result<(), IndexError> {
        let slot = self.slot(&item.mailbox, segment);
        if may_exist {
            self.remove_item(slot, item.cursor)?;
        }
        let loc = Loc {
            segment,
            offset: offset as u32,
            len: len as u32,
            stored_at_ms: item.stored_at_ms,
            expires_at_ms: item.expires_at_ms,
            blob_id: item.blob_id,
        };
        self.batch
            .insert(&self.items_ks, item_key(slot, item.cursor), loc.encode());
        self.batch.insert(
            &self.blobs_ks,
            blob_key(slot, &item.blob_id),
            item.cursor.to_le_bytes(),
        );
        self.pending_expiry
            .entry(item.expires_at_ms)
            .or_default()
            .push((slot, item.cursor));
        if may_exist {
            // Only an item that may exist is looked up before the next apply.
            self.pending.insert((slot, item.cursor), Some(loc));
        }
        let mailbox = &mut self.mailboxes[slot as usize];
        if mailbox.meta.count == 0 {
            self.mailboxes_used += 1;
        }
        mailbox.meta.count += 1;
        mailbox.meta.bytes += loc.ciphertext_len();
        if item.cursor >= mailbox.meta.latest {
            mailbox.meta.latest = item.cursor;
            mailbox.latest_segment = segment;
        }
        self.dirty_mailboxes.insert(slot);
        self.items += 1;
        self.bytes += loc.ciphertext_len();
        if let Some(seg) = self.segments.get_mut(&segment) {
            seg.counts.live += 1;
            seg.counts.live_bytes += len as u64;
            self.dirty_segments.insert(segment);
        }
        Ok(())
    }

    /// Count an item record written to `segment` (whether or not it stays indexed).
    pub(super) fn count_records(&mut self, segment: u32, records: u64) {
        if let Some(seg) = self.segments.get_mut(&segment) {
            seg.counts.item_records += records;
            self.dirty_segments.insert(segment);
        }
    }

    /// Put a mailbox's meta back as it was before a batch that never became durable.
    pub(super) fn restore_mailbox(
        &mut self,
        id: &MailboxId,
        meta: MailboxMeta,
        latest_segment: u32,
    ) {
        let Some(slot) = self.slots.get(id).copied() else {
            return;
        };
        let mailbox = &mut self.mailboxes[slot as usize];
        let was_used = mailbox.meta.count > 0;
        mailbox.meta = meta;
        mailbox.latest_segment = latest_segment;
        match (was_used, meta.count > 0) {
            (true, false) => self.mailboxes_used = self.mailboxes_used.saturating_sub(1),
            (false, true) => self.mailboxes_used += 1,
            _ => {}
        }
        self.dirty_mailboxes.insert(slot);
    }

    pub(super) fn mark(&mut self, segment: u32, id: &MailboxId, latest: u64) {
        let slot = self.slot(id, segment);
        let mailbox = &mut self.mailboxes[slot as usize];
        if latest >= mailbox.meta.latest {
            mailbox.meta.latest = latest;
            mailbox.latest_segment = segment;
            self.dirty_mailboxes.insert(slot);
        }
    }

    /// Drop an item from the index; false when it was not there.
    pub(super) fn remove_item(&mut self, slot: u32, cursor: u64) -> Result<bool, IndexError> {
        let Some(loc) = self.loc(slot, cursor)? else {
            return Ok(false);
        };
        let Some(mailbox) = self.mailboxes.get_mut(slot as usize) else {
            return Ok(false);
        };
        // Its expiry group keeps naming it; eviction passes names that are gone.
        self.batch.remove(&self.items_ks, item_key(slot, cursor));
        // The blob entry names this cursor unless a later push of the same ciphertext (after
        // this one expired) took it over.
        let blob = blob_key(slot, &loc.blob_id);
        let names_this = self
            .blobs_ks
            .get(blob)?
            .is_some_and(|v| v.len() == 8 && le_u64(&v) == cursor);
        if names_this {
            self.batch.remove(&self.blobs_ks, blob);
        }
        self.pending.insert((slot, cursor), None);
        let size = loc.ciphertext_len();
        mailbox.meta.count = mailbox.meta.count.saturating_sub(1);
        mailbox.meta.bytes = mailbox.meta.bytes.saturating_sub(size);
        if mailbox.meta.count == 0 {
            self.mailboxes_used = self.mailboxes_used.saturating_sub(1);
        }
        self.dirty_mailboxes.insert(slot);
        self.items = self.items.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(size);
        if let Some(seg) = self.segments.get_mut(&loc.segment) {
            seg.counts.live = seg.counts.live.saturating_sub(1);
            seg.counts.live_bytes = seg.counts.live_bytes.saturating_sub(u64::from(loc.len));
            self.dirty_segments.insert(loc.segment);
        }
        Ok(true)
    }

    /// Evict up to `budget` items due at `now_ms` (looking at no more than `budget` names of
    /// the expiry groups); answers (evicted, more due). The changes are applied by the next
    /// [`Index::apply`].
    pub(super) fn evict_expired(
        &mut self,
        now_ms: u64,
        budget: u64,
    ) -> Result<(u64, bool), IndexError> {
        let upto = expiry_key(now_ms, u64::MAX);
        let mut groups = Vec::new();
        let mut names = 0u64;
        for guard in self.expiry_ks.range(..=upto) {
            let (key, value) = guard.into_inner()?;
            if names >= budget {
                break;
            }
            let members = decode_members(&value);
            names += members.len() as u64;
            let expires_at_ms = be_u64(&key[..8]);
            groups.push((key, expires_at_ms, members));
        }
        let mut evicted = 0;
        let mut looked = 0u64;
        let mut more = false;
        for (key, expires_at_ms, members) in groups {
            let mut left = members.as_slice();
            while let Some(((slot, cursor), rest)) = left.split_first() {
                if looked >= budget {
                    break;
                }
                looked += 1;
                left = rest;
                let is_this = self
                    .loc(*slot, *cursor)?
                    .is_some_and(|loc| loc.expires_at_ms == expires_at_ms);
                if is_this && self.remove_item(*slot, *cursor)? {
                    evicted += 1;
                }
            }
            if left.is_empty() {
                self.batch.remove(&self.expiry_ks, key);
            } else {
                self.batch
                    .insert(&self.expiry_ks, key, encode_members(left));
                more = true;
                break;
            }
        }
        if !more {
            more = self
                .expiry_ks
                .range(..=upto)
                .next()
                .is_some_and(|_| looked >= budget);
        }
        Ok((evicted, more))
    }

    /// Items of mailbox `id` after `after`, in cursor order, as long as `take` says so.
    pub(super) fn items_after(
        &self,
        id: &MailboxId,
        after: u64,
        mut take: impl FnMut(u64, Loc) -> bool,
    ) -> Result<(), IndexError> {
        let Some(slot) = self.slots.get(id) else {
            return Ok(());
        };
        let Some(from) = after.checked_add(1) else {
            return Ok(());
        };
        let range = item_key(*slot, from)..=item_key(*slot, u64::MAX);
        for guard in self.items_ks.range(range) {
            let (key, value) = guard.into_inner()?;
            let Some(loc) = Loc::decode(&value) else {
                continue;
            };
            if key.len() != 12 || !take(be_u64(&key[4..12]), loc) {
                break;
            }
        }
        Ok(())
    }

    /// Apply the changes made since the last call atomically, with the checkpoint `upto`:
    /// (segment, start of the last batch they cover, end of it). Everything before that batch
    /// is durable; the batch itself may still be syncing (a commit indexes while it syncs),
    /// which is why opening checks it.
    pub(super) fn apply(&mut self, upto: Option<(u32, u64, u64)>) -> Result<(), IndexError> {
        let mut batch = std::mem::replace(&mut self.batch, self.db.batch());
        for slot in std::mem::take(&mut self.dirty_mailboxes) {
            let Some(mailbox) = self.mailboxes.get(slot as usize) else {
                continue;
            };
            let mut value = [0u8; META_VALUE];
            value[0..4].copy_from_slice(&slot.to_le_bytes());
            value[4..12].copy_from_slice(&mailbox.meta.count.to_le_bytes());
            value[12..20].copy_from_slice(&mailbox.meta.bytes.to_le_bytes());
            value[20..28].copy_from_slice(&mailbox.meta.latest.to_le_bytes());
            value[28..32].copy_from_slice(&mailbox.latest_segment.to_le_bytes());
            batch.insert(&self.meta_ks, meta_key(&mailbox.id), value);
        }
        for id in std::mem::take(&mut self.dirty_segments) {
            let key = segment_key(id);
            match self.segments.get(&id) {
                Some(seg) => {
                    let mut value = [0u8; SEGMENT_VALUE];
                    value[0..8].copy_from_slice(&seg.counts.live.to_le_bytes());
                    value[8..16].copy_from_slice(&seg.counts.live_bytes.to_le_bytes());
                    value[16..24].copy_from_slice(&seg.counts.item_records.to_le_bytes());
                    batch.insert(&self.meta_ks, key, value);
                }
                None => batch.remove(&self.meta_ks, key),
            }
        }
        if !self.pending_expiry.is_empty() {
            for (expires_at_ms, members) in std::mem::take(&mut self.pending_expiry) {
                batch.insert(
                    &self.expiry_ks,
                    expiry_key(expires_at_ms, self.next_group),
                    encode_members(&members),
                );
                self.next_group += 1;
            }
            batch.insert(&self.meta_ks, b"q", self.next_group.to_le_bytes());
        }
        if let Some((segment, start, end)) = upto {
            let mut value = [0u8; 20];
            value[0..4].copy_from_slice(&segment.to_le_bytes());
            value[4..12].copy_from_slice(&end.to_le_bytes());
            value[12..20].copy_from_slice(&start.to_le_bytes());
            batch.insert(&self.meta_ks, b"c", value);
        }
        self.pending.clear();
        batch.commit()?;
        Ok(())
    }

    /// Know segment `id` (its counts are written with the next [`Index::apply`]).
    pub(super) fn add_segment(&mut self, id: u32, segment: Segment) {
        self.segments.insert(id, segment);
        self.dirty_segments.insert(id);
    }

    /// Forget segment `id` (deleted): its counts go with the next [`Index::apply`]. Damage
    /// found in it stays on record (segment ids are never reused).
    pub(super) fn remove_segment(&mut self, id: u32) {
        self.segments.remove(&id);
        self.dirty_segments.insert(id);
    }

    /// Remember damage at `offset` of `segment` (with the next [`Index::apply`]); answers
    /// whether it is new.
    pub(super) fn note_damage(&mut self, segment: u32, offset: u64) -> bool {
        let is_new = self.damage.insert((segment, offset));
        if is_new {
            self.batch
                .insert(&self.meta_ks, damage_key(segment, offset), []);
        }
        is_new
    }

    /// Make everything applied durable.
    pub(super) fn persist(&self) -> Result<(), IndexError> {
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
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
