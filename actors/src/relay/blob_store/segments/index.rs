//! The store's index, on disk: where each item's record lies (by mailbox and cursor), its blob
//! id (idempotency) and its expiry, in a fjall database (`index/` beside the segments). Only
//! what grows with mailboxes and segments, not with items, is also kept in memory: mailbox
//! metas and per-segment counts. So memory does not grow with the data, and opening reads the
//! index, not the data (docs/DECISIONS.md, "an on-disk index").
//!
//! The log stays the truth; the index is a cache of it that never runs ahead of it. Changes
//! are first held in memory (the *overlay*, which reads consult before fjall), and the log is
//! their write-ahead log: a commit costs in-memory inserts, not fjall's journal and memtables.
//! They are **flushed** to fjall as one ingestion of sorted keys (new tables, made durable
//! before fjall registers them, atomically) together with the **checkpoint**: the end of the
//! log (segment, offset) they cover, which only ever names records already `fdatasync`'d. A
//! flush runs when the overlay holds [`FLUSH_ITEMS`] changes, at every segment roll, before a
//! segment file is deleted (so no item can point into a deleted segment after a crash) and at
//! close. After any crash the index is the log up to its checkpoint,
//! and opening replays the log from there (at most about one segment). An index that is
//! missing, unreadable or inconsistent with the segments on disk is cleared and rebuilt by
//! reading every segment.
//!
//! Layout: one fjall keyspace, the first byte of a key says what it is (numbers big-endian in
//! keys, little-endian in values; a mailbox is named by its slot, a number given in order of
//! first use and kept in its meta):
//!
//! | key | value |
//! |---|---|
//! | `i` ‖ slot ‖ cursor | segment ‖ offset ‖ frame len ‖ stored_at_ms ‖ expires_at_ms ‖ blob id |
//! | `b` ‖ slot ‖ blob id | cursor |
//! | `e` ‖ expires_at_ms ‖ group number | (slot ‖ cursor) of each item of one apply with that expiry |
//! | `v` | index format |
//! | `c` | checkpoint: segment ‖ end ‖ start of the last batch |
//! | `q` | the next expiry group number |
//! | `m` ‖ mailbox id | slot ‖ count ‖ bytes ‖ latest ‖ latest segment |
//! | `s` ‖ segment | live items ‖ live frame bytes ‖ item records written |
//! | `x` ‖ segment ‖ offset | (empty): damage found there |

use super::*;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::collections::BTreeSet;

/// The index's directory inside the store's directory.
pub const INDEX_DIR: &str = "index";
/// The index's format, kept under `v`: another value means "rebuild".
const INDEX_VERSION: &[u8] = b"zerok-index-4";
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

fn item_key(slot: u32, cursor: u64) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[0] = b'i';
    key[1..5].copy_from_slice(&slot.to_be_bytes());
    key[5..].copy_from_slice(&cursor.to_be_bytes());
    key
}

fn blob_key(slot: u32, blob_id: &BlobId) -> [u8; 37] {
    let mut key = [0u8; 37];
    key[0] = b'b';
    key[1..5].copy_from_slice(&slot.to_be_bytes());
    key[5..].copy_from_slice(&blob_id.0);
    key
}

fn expiry_key(expires_at_ms: u64, group: u64) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = b'e';
    key[1..9].copy_from_slice(&expires_at_ms.to_be_bytes());
    key[9..].copy_from_slice(&group.to_be_bytes());
    key
}

/// (slot, cursor) of each member of an expiry group.
type Members = Vec<(u32, u64)>;

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
    ks: Keyspace,
    /// What changed since the last flush began; reads look here first.
    overlay: Overlay,
    /// A flush being written by a background thread: its changes are read (after the
    /// overlay's, before fjall's) until it is done.
    flushing: Option<Flushing>,
    /// Items indexed since the last apply, by expiry: one expiry entry per expiry time per
    /// apply (a commit's items mostly share one), not one per item.
    pending_expiry: BTreeMap<u64, Vec<(u32, u64)>>,
    next_group: u64,
    dirty_mailboxes: BTreeSet<u32>,
    dirty_segments: BTreeSet<u32>,
    /// The end of the log the applied changes cover, written with the next flush.
    checkpoint: Option<(u32, u64, u64)>,
    /// Overlay entries that make a flush due ([`FLUSH_ITEMS`] unless a test says otherwise).
    pub(super) flush_items: usize,
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

/// The index's changes since the last flush, by key (`None`: removed). Its size is bounded by
/// [`FLUSH_ITEMS`] (and by one segment's records at open).
#[derive(Default)]
struct Overlay {
    items: BTreeMap<[u8; 13], Option<Loc>>,
    blobs: HashMap<[u8; 37], Option<u64>>,
    expiry: BTreeMap<[u8; 17], Option<Vec<u8>>>,
    /// Damage found since the last flush.
    damage: BTreeSet<(u32, u64)>,
}

impl Overlay {
    fn is_empty(&self) -> bool {
        self.items.is_empty()
            && self.blobs.is_empty()
            && self.expiry.is_empty()
            && self.damage.is_empty()
    }
}

/// Item changes held in memory before the index is flushed to disk on its own (it is also
/// flushed at every segment roll, before a segment is deleted and at close): bounds the
/// overlay's memory (~200 bytes per entry) and what a restart replays from the log.
pub(super) const FLUSH_ITEMS: usize = 65_536;

/// The index's one keyspace.
const KEYSPACE: &str = "index";

/// The old layout's keyspaces (one per kind of entry), deleted when found.
const OLD_KEYSPACES: [&str; 4] = ["items", "blobs", "expiry", "meta"];

fn keyspace_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
}

/// A key's entry in one layer of the index: its value, or `None` where a layer above fjall
/// removed it.
type Entry<const N: usize, V> = Result<([u8; N], Option<V>), IndexError>;

/// Two layers of entries in key order, merged: where both have a key, `above`'s entry wins.
struct Layered<const N: usize, V, B: Iterator<Item = Entry<N, V>>, A: Iterator<Item = Entry<N, V>>>
{
    below: std::iter::Peekable<B>,
    above: std::iter::Peekable<A>,
}

impl<const N: usize, V, B, A> Iterator for Layered<N, V, B, A>
where
    B: Iterator<Item = Entry<N, V>>,
    A: Iterator<Item = Entry<N, V>>,
{
    type Item = Entry<N, V>;

    fn next(&mut self) -> Option<Entry<N, V>> {
        let order = match (self.below.peek(), self.above.peek()) {
            (None, None) => return None,
            (Some(Err(_)), _) | (Some(_), None) => std::cmp::Ordering::Less,
            (_, Some(Err(_))) | (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(Ok((below, _))), Some(Ok((above, _)))) => below.cmp(above),
        };
        match order {
            std::cmp::Ordering::Less => self.below.next(),
            std::cmp::Ordering::Equal => {
                self.below.next();
                self.above.next()
            }
            std::cmp::Ordering::Greater => self.above.next(),
        }
    }
}

/// The entries of a fjall range under those of two in-memory layers over the same keys (a
/// background flush's, then the overlay's), merged in key order: the highest layer's entry for
/// a key wins, and `None` there hides it. Each is handed to `take` until it answers false.
fn merged<'a, const N: usize, V: Clone + 'a>(
    disk: fjall::Iter,
    flushing: impl Iterator<Item = (&'a [u8; N], &'a Option<V>)>,
    overlay: impl Iterator<Item = (&'a [u8; N], &'a Option<V>)>,
    decode: impl Fn(&[u8]) -> Option<V>,
    mut take: impl FnMut(&[u8], V) -> Result<bool, IndexError>,
) -> Result<(), IndexError> {
    let disk = disk.filter_map(|guard| match guard.into_inner() {
        Err(err) => Some(Err(IndexError::from(err))),
        Ok((key, value)) => {
            let key = <[u8; N]>::try_from(key.as_ref()).ok()?;
            Some(Ok((key, Some(decode(&value)?))))
        }
    });
    let below = Layered {
        below: disk.peekable(),
        above: flushing
            .map(|(key, value)| Ok((*key, value.clone())))
            .peekable(),
    };
    let all = Layered {
        below: below.peekable(),
        above: overlay
            .map(|(key, value)| Ok((*key, value.clone())))
            .peekable(),
    };
    for entry in all {
        let (key, value) = entry?;
        if let Some(value) = value
            && !take(&key, value)?
        {
            break;
        }
    }
    Ok(())
}

/// What one flush writes: the overlay's changes and the values of what was dirty, as they were
/// when it was taken.
struct FlushJob {
    overlay: Overlay,
    metas: Vec<([u8; 33], [u8; META_VALUE])>,
    segments: Vec<([u8; 5], Option<[u8; SEGMENT_VALUE]>)>,
    checkpoint: Option<[u8; 20]>,
    next_group: u64,
}

/// A flush a background thread is writing.
struct Flushing {
    job: Arc<FlushJob>,
    handle: std::thread::JoinHandle<Result<(), IndexError>>,
}

impl FlushJob {
    /// Write it to `ks` as one ingestion of sorted keys: new tables, made durable before fjall
    /// registers them, atomically; far cheaper per entry than fjall's journal and memtables.
    fn write(&self, ks: &Keyspace) -> Result<(), IndexError> {
        let mut ingestion = ks.start_ingestion()?;
        // Keys must come in strictly ascending order (fjall panics otherwise): checked here,
        // so a mistake is an error.
        let mut last: Vec<u8> = Vec::new();
        let mut put = |key: &[u8], value: Option<&[u8]>| -> Result<(), IndexError> {
            if !last.is_empty() && key <= last.as_slice() {
                return Err(IndexError {
                    message: "index flush out of key order".into(),
                    is_locked: false,
                });
            }
            last.clear();
            last.extend_from_slice(key);
            match value {
                Some(value) => ingestion.write(key, value)?,
                None => ingestion.write_tombstone(key)?,
            }
            Ok(())
        };
        // In key order: b, c, e, i, m, q, s, x.
        let mut blobs: Vec<(&[u8; 37], &Option<u64>)> = self.overlay.blobs.iter().collect();
        blobs.sort_unstable_by_key(|(key, _)| **key);
        for (key, cursor) in blobs {
            put(key, cursor.map(u64::to_le_bytes).as_ref().map(|v| &v[..]))?;
        }
        if let Some(checkpoint) = &self.checkpoint {
            put(b"c", Some(checkpoint))?;
        }
        for (key, members) in &self.overlay.expiry {
            put(key, members.as_deref())?;
        }
        for (key, loc) in &self.overlay.items {
            put(key, loc.map(|loc| loc.encode()).as_ref().map(|v| &v[..]))?;
        }
        let mut metas: Vec<&([u8; 33], [u8; META_VALUE])> = self.metas.iter().collect();
        metas.sort_unstable_by_key(|(key, _)| *key);
        for (key, value) in metas {
            put(key, Some(value))?;
        }
        put(b"q", Some(&self.next_group.to_le_bytes()))?;
        for (key, value) in &self.segments {
            put(key, value.as_ref().map(|v| &v[..]))?;
        }
        for (segment, offset) in &self.overlay.damage {
            put(&damage_key(*segment, *offset), Some(&[]))?;
        }
        ingestion.finish()?;
        Ok(())
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        if let Err(err) = self.finish_flushing() {
            warn!(error = %err, "the store index's last flush failed; the next open replays the log");
        }
    }
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
        for name in OLD_KEYSPACES {
            if db.keyspace_exists(name) {
                let old = db.keyspace(name, KeyspaceCreateOptions::default)?;
                db.delete_keyspace(old)?;
            }
        }
        let ks = db.keyspace(KEYSPACE, keyspace_options)?;
        let mut index = Index {
            db,
            ks,
            overlay: Overlay::default(),
            flushing: None,
            pending_expiry: BTreeMap::new(),
            next_group: 0,
            dirty_mailboxes: BTreeSet::new(),
            dirty_segments: BTreeSet::new(),
            checkpoint: None,
            flush_items: FLUSH_ITEMS,
            slots: HashMap::new(),
            mailboxes: Vec::new(),
            damage: BTreeSet::new(),
            segments: BTreeMap::new(),
            mailboxes_used: 0,
            items: 0,
            bytes: 0,
        };
        let version = index.ks.get(b"v")?;
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
            .ks
            .get(b"q")?
            .filter(|v| v.len() == 8)
            .map_or(0, |v| le_u64(&v));
        let checkpoint = index
            .ks
            .get(b"c")?
            .filter(|v| v.len() == 20)
            .map(|v| (le_u32(&v[0..4]), le_u64(&v[12..20]), le_u64(&v[4..12])));
        index.checkpoint = checkpoint;
        let mut segments = BTreeMap::new();
        let mut metas: Vec<(u32, Mailbox)> = Vec::new();
        for prefix in [b'm', b's', b'x'] {
            for guard in index.ks.prefix([prefix]) {
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
        self.finish_flushing()?;
        self.overlay = Overlay::default();
        self.pending_expiry.clear();
        self.next_group = 0;
        self.checkpoint = None;
        self.dirty_mailboxes.clear();
        self.dirty_segments.clear();
        // A new keyspace, not `Keyspace::clear`: fjall 3.1 replays a clear found in its journal
        // at every open, after the tables ingested since, which would empty the index again.
        self.db.delete_keyspace(self.ks.clone())?;
        self.ks = self.db.keyspace(KEYSPACE, keyspace_options)?;
        self.ks.insert(b"v", INDEX_VERSION)?;
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

    /// The changes a background flush is writing.
    fn flushing_overlay(&self) -> Option<&Overlay> {
        self.flushing.as_ref().map(|f| &f.job.overlay)
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
        let key = item_key(slot, cursor);
        if let Some(changed) = self.overlay.items.get(&key) {
            return Ok(*changed);
        }
        if let Some(changed) = self.flushing_overlay().and_then(|o| o.items.get(&key)) {
            return Ok(*changed);
        }
        Ok(self.ks.get(key)?.and_then(|v| Loc::decode(&v)))
    }

    /// The cursor the blob entry `key` names, as of the changes made so far.
    fn blob_cursor(&self, key: &[u8; 37]) -> Result<Option<u64>, IndexError> {
        if let Some(changed) = self.overlay.blobs.get(key) {
            return Ok(*changed);
        }
        if let Some(changed) = self.flushing_overlay().and_then(|o| o.blobs.get(key)) {
            return Ok(*changed);
        }
        Ok(self
            .ks
            .get(key)?
            .filter(|v| v.len() == 8)
            .map(|v| le_u64(&v)))
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
        let Some(cursor) = self.blob_cursor(&blob_key(*slot, blob_id))? else {
            return Ok(None);
        };
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
        self.overlay
            .items
            .insert(item_key(slot, item.cursor), Some(loc));
        self.overlay
            .blobs
            .insert(blob_key(slot, &item.blob_id), Some(item.cursor));
        self.pending_expiry
            .entry(item.expires_at_ms)
            .or_default()
            .push((slot, item.cursor));
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
        if self.mailboxes.get(slot as usize).is_none() {
            return Ok(false);
        }
        // Its expiry group keeps naming it; eviction passes names that are gone.
        self.overlay.items.insert(item_key(slot, cursor), None);
        // The blob entry names this cursor unless a later push of the same ciphertext (after
        // this one expired) took it over.
        let blob = blob_key(slot, &loc.blob_id);
        if self.blob_cursor(&blob)? == Some(cursor) {
            self.overlay.blobs.insert(blob, None);
        }
        let size = loc.ciphertext_len();
        let mailbox = &mut self.mailboxes[slot as usize];
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
    /// the expiry groups); answers (evicted, more due).
    pub(super) fn evict_expired(
        &mut self,
        now_ms: u64,
        budget: u64,
    ) -> Result<(u64, bool), IndexError> {
        self.apply(None)?;
        let from = expiry_key(0, 0);
        let upto = expiry_key(now_ms, u64::MAX);
        // (key, expires_at_ms, members) of each group looked at.
        let mut groups: Vec<([u8; 17], u64, Members)> = Vec::new();
        let mut names = 0u64;
        let mut more = false;
        let empty = BTreeMap::new();
        let flushing = self.flushing_overlay().map_or(&empty, |o| &o.expiry);
        merged(
            self.ks.range(from..=upto),
            flushing.range(from..=upto),
            self.overlay.expiry.range(from..=upto),
            |value| Some(value.to_vec()),
            |key, value| {
                if names >= budget {
                    more = true;
                    return Ok(false);
                }
                let Ok(key) = <[u8; 17]>::try_from(key) else {
                    return Ok(true);
                };
                let members = decode_members(&value);
                names += members.len() as u64;
                groups.push((key, be_u64(&key[1..9]), members));
                Ok(true)
            },
        )?;
        let mut evicted = 0;
        let mut looked = 0u64;
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
                self.overlay.expiry.insert(key, None);
            } else {
                self.overlay.expiry.insert(key, Some(encode_members(left)));
                more = true;
                break;
            }
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
        let (from, upto) = (item_key(*slot, from), item_key(*slot, u64::MAX));
        let empty = BTreeMap::new();
        let flushing = self.flushing_overlay().map_or(&empty, |o| &o.items);
        merged(
            self.ks.range(from..=upto),
            flushing.range(from..=upto),
            self.overlay.items.range(from..=upto),
            Loc::decode,
            |key, loc| Ok(key.len() != 13 || take(be_u64(&key[5..13]), loc)),
        )
    }

    /// Take in the changes made since the last call (in memory), with the checkpoint `upto`:
    /// (segment, start of the last batch they cover, end of it). They reach the disk with the
    /// next [`Index::flush`], which only runs where everything applied is durable in the log.
    pub(super) fn apply(&mut self, upto: Option<(u32, u64, u64)>) -> Result<(), IndexError> {
        self.reap()?;
        for (expires_at_ms, members) in std::mem::take(&mut self.pending_expiry) {
            self.overlay.expiry.insert(
                expiry_key(expires_at_ms, self.next_group),
                Some(encode_members(&members)),
            );
            self.next_group += 1;
        }
        if upto.is_some() {
            self.checkpoint = upto;
        }
        Ok(())
    }

    /// [`Index::flush_in_background`] when the changes held in memory are enough to go on
    /// their own.
    pub(super) fn flush_if_due(&mut self) -> Result<(), IndexError> {
        let is_due = self.overlay.items.len() >= self.flush_items
            || self.overlay.blobs.len() >= self.flush_items
            || self.overlay.expiry.len() >= self.flush_items;
        if is_due {
            self.flush_in_background()
        } else {
            Ok(())
        }
    }

    /// Take what was applied for a flush: the overlay and the values of everything dirty.
    fn freeze(&mut self) -> FlushJob {
        let mut metas: Vec<([u8; 33], [u8; META_VALUE])> = Vec::new();
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
            metas.push((meta_key(&mailbox.id), value));
        }
        let segments = std::mem::take(&mut self.dirty_segments)
            .into_iter()
            .map(|id| {
                let value = self.segments.get(&id).map(|seg| {
                    let mut value = [0u8; SEGMENT_VALUE];
                    value[0..8].copy_from_slice(&seg.counts.live.to_le_bytes());
                    value[8..16].copy_from_slice(&seg.counts.live_bytes.to_le_bytes());
                    value[16..24].copy_from_slice(&seg.counts.item_records.to_le_bytes());
                    value
                });
                (segment_key(id), value)
            })
            .collect();
        let checkpoint = self.checkpoint.map(|(segment, start, end)| {
            let mut value = [0u8; 20];
            value[0..4].copy_from_slice(&segment.to_le_bytes());
            value[4..12].copy_from_slice(&end.to_le_bytes());
            value[12..20].copy_from_slice(&start.to_le_bytes());
            value
        });
        FlushJob {
            overlay: std::mem::take(&mut self.overlay),
            metas,
            segments,
            checkpoint,
            next_group: self.next_group,
        }
    }

    fn has_changes(&self) -> bool {
        !(self.overlay.is_empty()
            && self.dirty_mailboxes.is_empty()
            && self.dirty_segments.is_empty())
    }

    /// Wait for a background flush to be done; its error, if it failed.
    fn finish_flushing(&mut self) -> Result<(), IndexError> {
        let Some(flushing) = self.flushing.take() else {
            return Ok(());
        };
        flushing.handle.join().unwrap_or_else(|_| {
            Err(IndexError {
                message: "the index flush thread panicked".into(),
                is_locked: false,
            })
        })
    }

    /// Take a finished background flush's result, without waiting.
    fn reap(&mut self) -> Result<(), IndexError> {
        match &self.flushing {
            Some(flushing) if flushing.handle.is_finished() => self.finish_flushing(),
            _ => Ok(()),
        }
    }

    /// Write everything applied to fjall with the checkpoint, atomically, and wait for it. Only
    /// called where every batch applied is durable in the log, so the index never runs ahead
    /// of it; after a crash, opening replays the log from the checkpoint.
    pub(super) fn flush(&mut self) -> Result<(), IndexError> {
        self.apply(None)?;
        self.finish_flushing()?;
        if !self.has_changes() {
            return Ok(());
        }
        let job = self.freeze();
        job.write(&self.ks)
    }

    /// [`Index::flush`] on a background thread: commits go on (into a fresh overlay) while it
    /// writes; reads see its changes until it is done. Waits for an earlier one first.
    pub(super) fn flush_in_background(&mut self) -> Result<(), IndexError> {
        self.apply(None)?;
        self.finish_flushing()?;
        if !self.has_changes() {
            return Ok(());
        }
        let job = Arc::new(self.freeze());
        let (ks, writing) = (self.ks.clone(), job.clone());
        let handle = std::thread::Builder::new()
            .name("store-index-flush".into())
            .spawn(move || writing.write(&ks))
            .map_err(|err| IndexError {
                message: format!("cannot start the index flush thread: {err}"),
                is_locked: false,
            })?;
        self.flushing = Some(Flushing { job, handle });
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
            self.overlay.damage.insert((segment, offset));
        }
        is_new
    }

    /// Make everything applied durable (a flush; fjall's journal holds only what
    /// [`Index::clear`] wrote).
    pub(super) fn persist(&mut self) -> Result<(), IndexError> {
        self.flush()?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const A: MailboxId = MailboxId([7; 32]);

    fn blob(cursor: u64) -> BlobId {
        BlobId([cursor as u8; 32])
    }

    fn insert(index: &mut Index, cursor: u64, expires_at_ms: u64) {
        let item = ItemRecord {
            mailbox: A,
            cursor,
            blob_id: blob(cursor),
            stored_at_ms: 1,
            expires_at_ms,
            ciphertext: &[],
        };
        index
            .insert_item(1, cursor * 100, 200, &item, false)
            .unwrap();
    }

    fn cursors(index: &Index) -> Vec<u64> {
        let mut seen = Vec::new();
        index
            .items_after(&A, 0, |cursor, _| {
                seen.push(cursor);
                true
            })
            .unwrap();
        seen
    }

    /// Reads see three layers, the highest winning: the overlay, then a flush still being
    /// written by its thread, then fjall. Here the flush is held so its layer is the only place
    /// its changes are.
    #[test]
    fn reads_see_a_flush_in_progress_between_the_overlay_and_fjall() {
        let dir = tempfile::tempdir().unwrap();
        let (mut index, _) = Index::open(dir.path()).unwrap();
        // fjall: 1, 2, 3.
        for cursor in 1..=3 {
            insert(&mut index, cursor, 1_000);
        }
        index.flush().unwrap();
        // The held flush: 2 removed, 4 and 5 added.
        assert!(index.remove_item(0, 2).unwrap());
        insert(&mut index, 4, 1_000);
        insert(&mut index, 5, 2_000);
        index.apply(None).unwrap();
        let job = Arc::new(index.freeze());
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (ks, writing) = (index.ks.clone(), job.clone());
        index.flushing = Some(Flushing {
            job,
            handle: std::thread::spawn(move || {
                let _ = held.recv();
                writing.write(&ks)
            }),
        });
        // The overlay: 4 removed, 6 added.
        assert!(index.remove_item(0, 4).unwrap());
        insert(&mut index, 6, 1_000);

        assert_eq!(cursors(&index), vec![1, 3, 5, 6]);
        assert_eq!(index.loc(0, 2).unwrap(), None);
        assert_eq!(index.loc(0, 4).unwrap(), None);
        assert_eq!(index.loc(0, 5).unwrap().map(|l| l.offset), Some(500));
        assert_eq!(index.existing(&A, &blob(4), 0).unwrap(), None);
        assert_eq!(index.existing(&A, &blob(5), 0).unwrap(), Some((5, 1)));
        assert_eq!(index.existing(&A, &blob(1), 0).unwrap(), Some((1, 1)));
        assert_eq!(index.meta(&A).count, 4);
        // Expiry groups of all three layers: due at 1,000 are 1, 3 and 6 (5 lives longer).
        assert_eq!(index.evict_expired(1_000, 100).unwrap(), (3, false));
        assert_eq!(cursors(&index), vec![5]);
        release.send(()).unwrap();
        index.flush().unwrap();
        assert!(index.flushing.is_none());
        assert_eq!(cursors(&index), vec![5]);
        assert_eq!(index.existing(&A, &blob(5), 0).unwrap(), Some((5, 1)));
    }
}
