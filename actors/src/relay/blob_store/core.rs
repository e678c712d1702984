//! The BlobStore's pure core: limits, the group-commit plan, and the record format of the
//! segment log.
//!
//! The store is an append-only log of segment files (see [`super::segments`]). A segment of
//! format 4 starts with a header (magic ‖ the store's sync marker ‖ CRC-32 of both) and then
//! holds **batches**: every write the store makes (a group commit, the marks of a release, a
//! compaction copy, the "closed" marker of a clean stop) is one batch, made durable with one
//! `fdatasync` before the next is written, so only the last batch of the newest segment can
//! ever be torn by a crash. A batch is a header and then its records:
//!
//! | batch header field | bytes |
//! |---|---|
//! | sync marker (random per store, [`SYNC_BYTES`]) | 8 |
//! | record count (LE) | 4 |
//! | bytes of its records (LE) | 4 |
//! | each record's frame length (LE) | 4 × count |
//! | CRC-32 of the fields above (LE) | 4 |
//!
//! An empty batch (no records) is the "closed" marker a clean stop writes. The lengths in the
//! header mean a damaged length field inside a record never loses the records after it; the
//! sync marker lets a reader find the next batch after a damaged header. It is random per
//! store and never sent anywhere, so a member cannot plant a batch header inside its
//! ciphertext for a re-synchronising reader to take.
//!
//! Each record is framed as
//!
//! | field | bytes |
//! |---|---|
//! | body length (LE) | 4 |
//! | CRC-32 of the body (LE) | 4 |
//! | body | length |
//!
//! and each body is one of
//!
//! | kind | body |
//! |---|---|
//! | `1` item | mailbox ‖ cursor ‖ blob_id ‖ stored_at_ms ‖ expires_at_ms ‖ ciphertext |
//! | `2` mark | mailbox ‖ latest cursor (keeps a mailbox's cursor when the segment that held its newest item is deleted) |
//!
//! Numbers are little-endian. Segments of format 3 (`zkseg03`) hold records without batches
//! and are still read.

use std::collections::HashMap;
use zerok_messages::relay::{AppendRequest, StoreError, StoreOutcome};
use zerok_messages::{BlobId, Cursor, MailboxId};

/// The store's format, written to the `FORMAT` file of its directory.
pub const FORMAT_VERSION: &str = "zerok-store-4";
/// The previous format (records without batches); a directory of it is upgraded in place:
/// its segments are read as they are and new writes go to segments of the current format.
pub const FORMAT_VERSION_3: &str = "zerok-store-3";
/// First bytes of every segment file of the current format.
pub const SEGMENT_MAGIC: &[u8; 8] = b"zkseg04\n";
/// First bytes of a segment file of format 3.
pub const SEGMENT_MAGIC_3: &[u8; 8] = b"zkseg03\n";
/// Bytes of the store's sync marker, which starts every batch header: 64 random bits, so
/// random ciphertext holds it by chance about once in 2^64 positions.
pub const SYNC_BYTES: usize = 8;
/// Bytes of a segment header: magic, sync marker, CRC-32 of both.
pub const SEGMENT_HEADER: usize = 8 + SYNC_BYTES + 4;
/// Bytes of a batch header before its length table: sync marker, count, bytes.
pub const BATCH_FIXED: usize = SYNC_BYTES + 4 + 4;
/// Bytes of the "closed" marker a clean stop writes (an empty batch).
pub const CLOSED_BATCH_BYTES: usize = BATCH_FIXED + 4;
/// Bytes of a record's frame before its body.
pub const FRAME_HEADER: usize = 8;
/// Body kind of an item.
pub const KIND_ITEM: u8 = 1;
/// Body kind of a mark.
pub const KIND_MARK: u8 = 2;
/// Bytes of an item body before its ciphertext.
pub const ITEM_HEADER: usize = 1 + 32 + 8 + 32 + 8 + 8;
/// Bytes of a mark body.
pub const MARK_BODY: usize = 1 + 32 + 8;
/// Largest body a record may declare (anything larger is corruption).
pub const BODY_MAX: usize = ITEM_HEADER + 16 * 1024 * 1024;

/// What the index costs per stored item beside its ciphertext, rounded up: its three
/// entries in the on-disk index (location 72 B, idempotency 44 B, expiry 20 B, before the LSM
/// tree's own overhead and space amplification). It was the in-memory index's cost (measured
/// ~185 B per item) until the index moved to disk; the charge stays, so quotas and budgets
/// mean what they meant (docs/DECISIONS.md).
pub const INDEX_BYTES_PER_ITEM: u64 = 192;
/// Disk bytes of an item's record beside its ciphertext: frame header and item header.
pub const RECORD_OVERHEAD_BYTES: u64 = (FRAME_HEADER + ITEM_HEADER) as u64;
/// What one item costs beside its ciphertext, charged to its mailbox's quota and to the
/// relay's byte budget: its record header on disk plus its index memory (97 + 192 = 289 B).
/// Without it an 8-byte item was charged 8 B but cost ~280 B, so a quota bounded nothing
/// for tiny items.
pub const ITEM_CHARGE_BYTES: u64 = RECORD_OVERHEAD_BYTES + INDEX_BYTES_PER_ITEM;
/// Index entries a mailbox the index knows is charged to the relay's item budget, beside
/// one per item. Items are indexed on disk; a mailbox's meta (id, counts, newest cursor,
/// its slot in the id map: ~150 B) stays in memory for as long as the relay runs, so the
/// budget bounds mailboxes tightly: at the default 20,000,000 entries, at most 312,500
/// mailboxes, ~50 MiB of memory.
pub const MAILBOX_INDEX_ENTRIES: u64 = 64;

/// The limits of one page of a read: at most `max_items` items (at least one), and no more
/// than `max_bytes` of ciphertext unless a single item is larger (a page always holds one).
#[derive(Debug, Clone, Copy)]
pub struct PageFill {
    max_items: usize,
    max_bytes: u64,
    items: usize,
    bytes: u64,
}

impl PageFill {
    /// An empty page with these limits.
    pub fn new(max_items: u32, max_bytes: u32) -> Self {
        Self {
            max_items: max_items.max(1) as usize,
            max_bytes: u64::from(max_bytes),
            items: 0,
            bytes: 0,
        }
    }

    /// Whether an item of `ciphertext_bytes` no longer fits.
    pub fn is_full(&self, ciphertext_bytes: u64) -> bool {
        self.items >= self.max_items
            || (self.items > 0 && self.bytes + ciphertext_bytes > self.max_bytes)
    }

    /// Count an item of `ciphertext_bytes` into the page.
    pub fn add(&mut self, ciphertext_bytes: u64) {
        self.items += 1;
        self.bytes += ciphertext_bytes;
    }
}

/// What one item is charged: its ciphertext plus [`ITEM_CHARGE_BYTES`].
pub fn charged_bytes(ciphertext_bytes: u64) -> u64 {
    ciphertext_bytes.saturating_add(ITEM_CHARGE_BYTES)
}

/// Limits the store enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Largest ciphertext of one item.
    pub blob_bytes_max: usize,
    /// Bytes one mailbox may be charged: ciphertext plus [`ITEM_CHARGE_BYTES`] per item.
    pub mailbox_quota_bytes: u64,
    /// Items one mailbox may hold.
    pub mailbox_items_max: u64,
    /// TTL of a push that names none.
    pub ttl_default_secs: u32,
    /// Largest TTL; larger requests are capped to it.
    pub ttl_max_secs: u32,
    /// Most pushes in one group commit.
    pub commit_max_items: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            blob_bytes_max: zerok_messages::wire::BLOB_BYTES_MAX,
            mailbox_quota_bytes: 100 * 1024 * 1024,
            mailbox_items_max: MAILBOX_ITEMS_MAX_DEFAULT,
            ttl_default_secs: 7 * 24 * 3600,
            ttl_max_secs: 30 * 24 * 3600,
            commit_max_items: 4096,
        }
    }
}

/// Default of [`StoreLimits::mailbox_items_max`]: 100,000 items is a busy group's week
/// (DESIGN.md §8 sizes a group at thousands of records a day) and keeps one mailbox's index
/// near 20 MiB, a fifth of the relay's default item budget.
pub const MAILBOX_ITEMS_MAX_DEFAULT: u64 = 100_000;

/// The relay-wide budget of the store, fixed when it opens: what all mailboxes together may
/// hold, and how much of its filesystem the store leaves free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreBudget {
    /// Charged bytes (ciphertext plus [`ITEM_CHARGE_BYTES`] per item) of all mailboxes.
    pub bytes_max: u64,
    /// Index entries (one per item plus [`MAILBOX_INDEX_ENTRIES`] per mailbox the index
    /// knows) of all mailboxes; bounds the index's memory.
    pub index_entries_max: u64,
    /// Pushes are refused while the store's filesystem has less free space than this.
    pub min_free_disk_bytes: u64,
    /// The retry hint of a refusal for lack of space: the sweep interval, since space only
    /// comes back when the sweeper evicts.
    pub full_retry_after_ms: u64,
}

impl StoreBudget {
    /// No relay-wide budget and no disk floor (tools and tests of other things).
    pub fn unlimited() -> Self {
        Self {
            bytes_max: u64::MAX,
            index_entries_max: u64::MAX,
            min_free_disk_bytes: 0,
            full_retry_after_ms: 1_000,
        }
    }
}

/// Room the relay-wide budget leaves for one commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Charged bytes that may still be stored.
    pub bytes: u64,
    /// Index entries that may still be added.
    pub index_entries: u64,
    /// Bytes that may still be written before the disk reaches its free-space floor.
    pub disk_bytes: u64,
    /// The retry hint of a refusal for lack of room.
    pub retry_after_ms: u64,
}

impl Room {
    /// Room without bounds.
    pub fn unlimited() -> Self {
        Self {
            bytes: u64::MAX,
            index_entries: u64::MAX,
            disk_bytes: u64::MAX,
            retry_after_ms: 1_000,
        }
    }
}

impl StoreLimits {
    /// The TTL a push gets: its own, or the default, capped to the maximum.
    pub fn ttl_secs(&self, requested: Option<u32>) -> u32 {
        requested
            .unwrap_or(self.ttl_default_secs)
            .min(self.ttl_max_secs)
    }
}

/// Per-mailbox totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailboxMeta {
    /// Newest cursor ever assigned (0 = none).
    pub latest: u64,
    /// Ciphertext bytes stored now.
    pub bytes: u64,
    /// Items stored now.
    pub count: u64,
}

impl MailboxMeta {
    /// What the mailbox is charged against its quota: ciphertext plus the per-item charge.
    pub fn charged_bytes(&self) -> u64 {
        self.bytes
            .saturating_add(self.count.saturating_mul(ITEM_CHARGE_BYTES))
    }
}

/// One item a commit adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewItem {
    /// Index of its request in the batch.
    pub request: usize,
    /// Its cursor.
    pub cursor: u64,
    /// When it expires.
    pub expires_at_ms: u64,
}

/// What one group commit writes and answers.
#[derive(Debug, Default)]
pub struct CommitPlan {
    /// One outcome per request, in request order (valid once the batch is durable).
    pub outcomes: Vec<StoreOutcome>,
    /// Items to write, in request order.
    pub new: Vec<NewItem>,
    /// Mailbox metas after the batch.
    pub metas: HashMap<MailboxId, MailboxMeta>,
    /// New ciphertext bytes written.
    pub new_bytes: u64,
    /// Mailboxes that held nothing before and hold items after.
    pub new_mailboxes: u64,
    /// Whether a request was refused for lack of relay-wide room (the store is full).
    pub is_refused_full: bool,
    /// When the batch is stored.
    pub now_ms: u64,
}

/// What a mailbox looks like to a commit: its meta, and whether the index knows it at all
/// (a mailbox it does not know costs index entries of its own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailboxState {
    /// Its meta.
    pub meta: MailboxMeta,
    /// Whether the index holds an entry for it (even with no items).
    pub is_known: bool,
}

/// Plan a group commit: assign cursors, answer duplicates with their original cursor (also
/// within the batch), and refuse what is too large, over its mailbox's quota or item cap, or
/// beyond the relay-wide `room`. `mailbox` reads a mailbox's current state; `existing` looks
/// a blob up in the idempotency index and answers its cursor and `stored_at_ms`.
/// Duplicates are answered even when the store is full: they write nothing.
pub fn plan_commit(
    requests: &[AppendRequest],
    now_ms: u64,
    limits: &StoreLimits,
    mut room: Room,
    mut mailbox: impl FnMut(&MailboxId) -> MailboxState,
    mut existing: impl FnMut(&MailboxId, &BlobId) -> Option<(u64, u64)>,
) -> CommitPlan {
    let mut plan = CommitPlan {
        now_ms,
        ..CommitPlan::default()
    };
    let mut in_batch: HashMap<(MailboxId, BlobId), u64> = HashMap::new();
    for (index, request) in requests.iter().enumerate() {
        let outcome = plan_one(
            index,
            request,
            limits,
            &mut room,
            &mut plan,
            &mut in_batch,
            &mut mailbox,
            &mut existing,
        );
        plan.outcomes.push(outcome);
    }
    plan
}

#[allow(clippy::too_many_arguments)]
fn plan_one(
    index: usize,
    request: &AppendRequest,
    limits: &StoreLimits,
    room: &mut Room,
    plan: &mut CommitPlan,
    in_batch: &mut HashMap<(MailboxId, BlobId), u64>,
    mailbox_state: &mut impl FnMut(&MailboxId) -> MailboxState,
    existing: &mut impl FnMut(&MailboxId, &BlobId) -> Option<(u64, u64)>,
) -> StoreOutcome {
    let mailbox = request.mailbox;
    let size = request.ciphertext.len();
    if size > limits.blob_bytes_max {
        return StoreOutcome::Rejected(StoreError::TooLarge {
            bytes: size,
            limit: limits.blob_bytes_max,
        });
    }
    let seen = match in_batch.get(&(mailbox, request.blob_id)) {
        Some(cursor) => Some((*cursor, plan.now_ms)),
        None => existing(&mailbox, &request.blob_id),
    };
    if let Some((cursor, stored_at_ms)) = seen {
        return StoreOutcome::Stored {
            cursor: Cursor(cursor),
            duplicate: true,
            stored_at_ms,
        };
    }
    let (current, is_known) = match plan.metas.get(&mailbox) {
        Some(current) => (*current, true),
        None => {
            let state = mailbox_state(&mailbox);
            (state.meta, state.is_known)
        }
    };
    let charge = charged_bytes(size as u64);
    if current.charged_bytes().saturating_add(charge) > limits.mailbox_quota_bytes {
        return StoreOutcome::Rejected(StoreError::QuotaExceeded {
            quota_bytes: limits.mailbox_quota_bytes,
        });
    }
    if current.count >= limits.mailbox_items_max {
        return StoreOutcome::Rejected(StoreError::MailboxItemsExceeded {
            items_max: limits.mailbox_items_max,
        });
    }
    let entries = 1 + if is_known { 0 } else { MAILBOX_INDEX_ENTRIES };
    let disk = RECORD_OVERHEAD_BYTES + size as u64;
    if charge > room.bytes || entries > room.index_entries || disk > room.disk_bytes {
        plan.is_refused_full = true;
        return StoreOutcome::Rejected(StoreError::StorageFull {
            retry_after_ms: room.retry_after_ms,
        });
    }
    room.bytes -= charge;
    room.index_entries -= entries;
    room.disk_bytes -= disk;
    let cursor = current.latest + 1;
    let ttl_ms = u64::from(limits.ttl_secs(request.ttl_secs)) * 1000;
    plan.new.push(NewItem {
        request: index,
        cursor,
        expires_at_ms: plan.now_ms.saturating_add(ttl_ms),
    });
    if current.count == 0 {
        plan.new_mailboxes += 1;
    }
    plan.metas.insert(
        mailbox,
        MailboxMeta {
            latest: cursor,
            bytes: current.bytes + size as u64,
            count: current.count + 1,
        },
    );
    in_batch.insert((mailbox, request.blob_id), cursor);
    plan.new_bytes += size as u64;
    StoreOutcome::Stored {
        cursor: Cursor(cursor),
        duplicate: false,
        stored_at_ms: plan.now_ms,
    }
}

/// A stored item as its record holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRecord<'a> {
    /// Its mailbox.
    pub mailbox: MailboxId,
    /// Its cursor.
    pub cursor: u64,
    /// `BLAKE3(ciphertext)`.
    pub blob_id: BlobId,
    /// When it became durable.
    pub stored_at_ms: u64,
    /// When it expires.
    pub expires_at_ms: u64,
    /// The sealed record.
    pub ciphertext: &'a [u8],
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// An item.
    Item(ItemRecord<'a>),
    /// A mailbox's latest cursor.
    Mark {
        /// The mailbox.
        mailbox: MailboxId,
        /// Its newest cursor ever assigned.
        latest: u64,
    },
}

/// Append the framed record of `item` to `out`; returns the frame's length.
pub fn encode_item(out: &mut Vec<u8>, item: &ItemRecord<'_>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    out.push(KIND_ITEM);
    out.extend_from_slice(item.mailbox.as_bytes());
    out.extend_from_slice(&item.cursor.to_le_bytes());
    out.extend_from_slice(item.blob_id.as_bytes());
    out.extend_from_slice(&item.stored_at_ms.to_le_bytes());
    out.extend_from_slice(&item.expires_at_ms.to_le_bytes());
    out.extend_from_slice(item.ciphertext);
    seal_frame(out, start)
}

/// Append the framed mark record of `mailbox` to `out`; returns the frame's length.
pub fn encode_mark(out: &mut Vec<u8>, mailbox: &MailboxId, latest: u64) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    out.push(KIND_MARK);
    out.extend_from_slice(mailbox.as_bytes());
    out.extend_from_slice(&latest.to_le_bytes());
    seal_frame(out, start)
}

/// Fill in the length and CRC of the frame starting at `start`.
fn seal_frame(out: &mut [u8], start: usize) -> usize {
    let body_len = out.len() - start - FRAME_HEADER;
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    body_len + FRAME_HEADER
}

/// What a frame header declares: the body length and CRC; `None` when the length is
/// impossible.
pub fn parse_frame_header(header: &[u8; FRAME_HEADER]) -> Option<(usize, u32)> {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    (1..=BODY_MAX).contains(&len).then_some((len, crc))
}

/// Decode a whole frame (header and body); `None` when it is short, fails its CRC or is not a
/// known record.
pub fn decode_frame(frame: &[u8]) -> Option<Record<'_>> {
    let header: &[u8; FRAME_HEADER] = frame.get(..FRAME_HEADER)?.try_into().ok()?;
    let (len, crc) = parse_frame_header(header)?;
    let body = frame.get(FRAME_HEADER..FRAME_HEADER + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    decode_body(body)
}

/// Bytes of the header of a batch of `records` records.
pub fn batch_header_len(records: usize) -> usize {
    BATCH_FIXED + 4 * records + 4
}

/// Fill in the header of a batch whose frames follow it in `buf`: `buf` starts with
/// [`batch_header_len`]`(frame_lens.len())` bytes reserved for it.
pub fn seal_batch_header(buf: &mut [u8], sync: &[u8; SYNC_BYTES], frame_lens: &[u32]) {
    let header_len = batch_header_len(frame_lens.len());
    let total: u64 = frame_lens.iter().map(|l| u64::from(*l)).sum();
    let header = &mut buf[..header_len];
    header[..SYNC_BYTES].copy_from_slice(sync);
    header[SYNC_BYTES..SYNC_BYTES + 4].copy_from_slice(&(frame_lens.len() as u32).to_le_bytes());
    header[SYNC_BYTES + 4..BATCH_FIXED].copy_from_slice(&(total as u32).to_le_bytes());
    for (i, len) in frame_lens.iter().enumerate() {
        let at = BATCH_FIXED + 4 * i;
        header[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
    let crc = crc32fast::hash(&header[..header_len - 4]);
    header[header_len - 4..].copy_from_slice(&crc.to_le_bytes());
}

/// Encode a whole batch of already framed records (back to back in `frames`, lengths in
/// `frame_lens`) to `out`.
pub fn encode_batch(out: &mut Vec<u8>, sync: &[u8; SYNC_BYTES], frames: &[u8], frame_lens: &[u32]) {
    let start = out.len();
    out.resize(start + batch_header_len(frame_lens.len()), 0);
    seal_batch_header(&mut out[start..], sync, frame_lens);
    out.extend_from_slice(frames);
}

/// What the fixed part of a batch header declares: (record count, bytes of the records);
/// `None` when it does not start with `sync` or the sizes cannot be (each frame is at least
/// [`FRAME_HEADER`] + 1 bytes).
pub fn parse_batch_fixed(fixed: &[u8], sync: &[u8; SYNC_BYTES]) -> Option<(usize, u64)> {
    if fixed.get(..SYNC_BYTES)? != sync {
        return None;
    }
    let count = u64::from(u32::from_le_bytes(fixed.get(8..12)?.try_into().ok()?));
    let total = u64::from(u32::from_le_bytes(fixed.get(12..16)?.try_into().ok()?));
    (count * (FRAME_HEADER as u64 + 1) <= total).then_some((count as usize, total))
}

/// The frame lengths of a whole batch header (`header` is exactly its bytes), checked: its
/// CRC holds and the lengths add up to the declared total.
pub fn parse_batch_header(header: &[u8], sync: &[u8; SYNC_BYTES]) -> Option<Vec<u32>> {
    let (count, total) = parse_batch_fixed(header, sync)?;
    if header.len() != batch_header_len(count) {
        return None;
    }
    let (fields, crc) = header.split_at(header.len() - 4);
    if crc32fast::hash(fields) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let lens: Vec<u32> = fields[BATCH_FIXED..]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let sum: u64 = lens.iter().map(|l| u64::from(*l)).sum();
    let is_sane = sum == total && lens.iter().all(|l| *l as usize > FRAME_HEADER);
    is_sane.then_some(lens)
}

/// The header of a segment of the current format, carrying the store's sync marker.
pub fn encode_segment_header(sync: &[u8; SYNC_BYTES]) -> [u8; SEGMENT_HEADER] {
    let mut header = [0u8; SEGMENT_HEADER];
    header[..8].copy_from_slice(SEGMENT_MAGIC);
    header[8..8 + SYNC_BYTES].copy_from_slice(sync);
    let crc = crc32fast::hash(&header[..8 + SYNC_BYTES]);
    header[8 + SYNC_BYTES..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The sync marker of a segment header of the current format; `None` when the header is
/// damaged or of another format.
pub fn parse_segment_header(header: &[u8]) -> Option<[u8; SYNC_BYTES]> {
    let header: &[u8; SEGMENT_HEADER] = header.get(..SEGMENT_HEADER)?.try_into().ok()?;
    if &header[..8] != SEGMENT_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(header[8 + SYNC_BYTES..].try_into().ok()?);
    (crc32fast::hash(&header[..8 + SYNC_BYTES]) == crc)
        .then(|| header[8..8 + SYNC_BYTES].try_into().ok())
        .flatten()
}

/// Decode an item's frame and check it is what it claims: its CRC holds, and its blob id is
/// `BLAKE3` of its ciphertext. `None` is damage.
pub fn verify_item_frame(frame: &[u8]) -> Option<ItemRecord<'_>> {
    match decode_frame(frame)? {
        Record::Item(item) if BlobId::of_ciphertext(item.ciphertext) == item.blob_id => Some(item),
        _ => None,
    }
}

/// Decode a record body whose CRC was checked.
pub fn decode_body(body: &[u8]) -> Option<Record<'_>> {
    let mailbox = MailboxId(body.get(1..33)?.try_into().ok()?);
    match *body.first()? {
        KIND_ITEM if body.len() >= ITEM_HEADER => Some(Record::Item(ItemRecord {
            mailbox,
            cursor: le_u64(&body[33..41])?,
            blob_id: BlobId(body[41..73].try_into().ok()?),
            stored_at_ms: le_u64(&body[73..81])?,
            expires_at_ms: le_u64(&body[81..89])?,
            ciphertext: &body[ITEM_HEADER..],
        })),
        KIND_MARK if body.len() == MARK_BODY => Some(Record::Mark {
            mailbox,
            latest: le_u64(&body[33..41])?,
        }),
        _ => None,
    }
}

fn le_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn request(token: u64, mailbox: u8, payload: &[u8]) -> AppendRequest {
        AppendRequest {
            token,
            mailbox: MailboxId([mailbox; 32]),
            blob_id: BlobId::of_ciphertext(payload),
            ciphertext: Bytes::copy_from_slice(payload),
            ttl_secs: None,
        }
    }

    fn plan(requests: &[AppendRequest], limits: &StoreLimits) -> CommitPlan {
        plan_commit(
            requests,
            1_000,
            limits,
            Room::unlimited(),
            |_| MailboxState::default(),
            |_, _| None,
        )
    }

    fn cursor(outcome: &StoreOutcome) -> (u64, bool) {
        match outcome {
            StoreOutcome::Stored {
                cursor, duplicate, ..
            } => (cursor.0, *duplicate),
            StoreOutcome::Rejected(err) => panic!("rejected: {err}"),
        }
    }

    #[test]
    fn a_batch_header_round_trips_and_any_flipped_byte_breaks_it() {
        let sync = [7u8; SYNC_BYTES];
        let lens = [9u32, 120, 4000];
        let mut buf = vec![0u8; batch_header_len(lens.len())];
        seal_batch_header(&mut buf, &sync, &lens);
        assert_eq!(parse_batch_header(&buf, &sync), Some(lens.to_vec()));
        assert_eq!(parse_batch_fixed(&buf, &sync), Some((3, 4129)));
        assert_eq!(
            parse_batch_header(&buf, &[8u8; SYNC_BYTES]),
            None,
            "another store's"
        );
        for at in 0..buf.len() {
            let mut bad = buf.clone();
            bad[at] ^= 0x10;
            assert_eq!(parse_batch_header(&bad, &sync), None, "byte {at}");
        }
        let mut closed = vec![0u8; CLOSED_BATCH_BYTES];
        seal_batch_header(&mut closed, &sync, &[]);
        assert_eq!(parse_batch_header(&closed, &sync), Some(Vec::new()));
    }

    #[test]
    fn a_segment_header_carries_the_sync_marker() {
        let sync = *b"12345678";
        let header = encode_segment_header(&sync);
        assert_eq!(parse_segment_header(&header), Some(sync));
        let mut bad = header;
        bad[10] ^= 1;
        assert_eq!(parse_segment_header(&bad), None);
    }

    #[test]
    fn an_item_whose_blob_id_is_not_its_ciphertexts_fails_verification() {
        let item = ItemRecord {
            mailbox: MailboxId([1; 32]),
            cursor: 1,
            blob_id: BlobId::of_ciphertext(b"sealed"),
            stored_at_ms: 1,
            expires_at_ms: 2,
            ciphertext: b"sealed",
        };
        let mut frame = Vec::new();
        encode_item(&mut frame, &item);
        assert_eq!(verify_item_frame(&frame), Some(item.clone()));
        let mut wrong = Vec::new();
        encode_item(
            &mut wrong,
            &ItemRecord {
                ciphertext: b"other!",
                ..item
            },
        );
        assert!(decode_frame(&wrong).is_some(), "its CRC holds");
        assert_eq!(verify_item_frame(&wrong), None);
    }

    #[test]
    fn cursors_increase_per_mailbox_and_duplicates_reuse_them() {
        let requests = [
            request(0, 1, b"a"),
            request(1, 2, b"a"),
            request(2, 1, b"b"),
            request(3, 1, b"a"),
        ];
        let plan = plan(&requests, &StoreLimits::default());
        let got: Vec<_> = plan.outcomes.iter().map(cursor).collect();
        assert_eq!(got, vec![(1, false), (1, false), (2, false), (1, true)]);
        assert_eq!(plan.new.len(), 3);
        assert_eq!(plan.new_mailboxes, 2);
        assert_eq!(plan.metas[&MailboxId([1; 32])].latest, 2);
    }

    #[test]
    fn an_existing_blob_is_answered_with_its_cursor_and_time() {
        let requests = [request(0, 1, b"old"), request(1, 1, b"new")];
        let plan = plan_commit(
            &requests,
            5_000,
            &StoreLimits::default(),
            Room::unlimited(),
            |_| MailboxState {
                meta: MailboxMeta {
                    latest: 7,
                    bytes: 3,
                    count: 1,
                },
                is_known: true,
            },
            |_, blob| (*blob == BlobId::of_ciphertext(b"old")).then_some((7, 1_000)),
        );
        assert_eq!(
            plan.outcomes[0],
            StoreOutcome::Stored {
                cursor: Cursor(7),
                duplicate: true,
                stored_at_ms: 1_000
            }
        );
        assert_eq!(cursor(&plan.outcomes[1]), (8, false));
        assert_eq!(plan.new_mailboxes, 0);
    }

    #[test]
    fn quota_and_size_are_enforced_within_a_batch() {
        // Room for 6 bytes of ciphertext in two items.
        let limits = StoreLimits {
            blob_bytes_max: 4,
            mailbox_quota_bytes: 6 + 2 * ITEM_CHARGE_BYTES,
            ..StoreLimits::default()
        };
        let requests = [
            request(0, 1, b"1234"),
            request(1, 1, b"12345"),
            request(2, 1, b"abc"),
            request(3, 1, b"xy"),
        ];
        let plan = plan(&requests, &limits);
        assert!(matches!(plan.outcomes[0], StoreOutcome::Stored { .. }));
        assert!(matches!(
            plan.outcomes[1],
            StoreOutcome::Rejected(StoreError::TooLarge { bytes: 5, limit: 4 })
        ));
        assert!(matches!(
            plan.outcomes[2],
            StoreOutcome::Rejected(StoreError::QuotaExceeded { quota_bytes }) if quota_bytes == 6 + 2 * ITEM_CHARGE_BYTES
        ));
        assert_eq!(cursor(&plan.outcomes[3]), (2, false));
        let written: Vec<usize> = plan.new.iter().map(|n| n.request).collect();
        assert_eq!(written, vec![0, 3]);
    }

    fn stored(outcomes: &[StoreOutcome]) -> usize {
        outcomes
            .iter()
            .filter(|o| matches!(o, StoreOutcome::Stored { .. }))
            .count()
    }

    #[test]
    fn tiny_items_are_charged_what_they_cost() {
        // A quota of ten 8-byte items' real cost holds ten of them, not a quota / 8.
        let limits = StoreLimits {
            mailbox_quota_bytes: 10 * charged_bytes(8),
            ..StoreLimits::default()
        };
        let requests: Vec<AppendRequest> = (0..50u64)
            .map(|n| request(n, 1, &n.to_le_bytes()))
            .collect();
        let plan = plan(&requests, &limits);
        assert_eq!(stored(&plan.outcomes), 10);
        assert_eq!(
            plan.metas[&MailboxId([1; 32])].charged_bytes(),
            10 * (8 + ITEM_CHARGE_BYTES)
        );
        assert!(matches!(
            plan.outcomes[10],
            StoreOutcome::Rejected(StoreError::QuotaExceeded { .. })
        ));
        const { assert!(ITEM_CHARGE_BYTES >= RECORD_OVERHEAD_BYTES + 180) };
    }

    #[test]
    fn a_mailbox_holds_at_most_its_item_cap() {
        let limits = StoreLimits {
            mailbox_items_max: 3,
            ..StoreLimits::default()
        };
        let requests: Vec<AppendRequest> = (0..5u64)
            .map(|n| request(n, 1, &n.to_le_bytes()))
            .chain([request(9, 2, b"other mailbox")])
            .collect();
        let plan = plan(&requests, &limits);
        assert_eq!(stored(&plan.outcomes), 4);
        assert_eq!(
            plan.outcomes[3],
            StoreOutcome::Rejected(StoreError::MailboxItemsExceeded { items_max: 3 })
        );
        assert_eq!(plan.outcomes[3].clone(), plan.outcomes[4]);
        assert!(!plan.is_refused_full, "a mailbox cap is not a full relay");
        // A duplicate of a stored item is still answered at the cap.
        let again = plan_commit(
            &[request(0, 1, &0u64.to_le_bytes())],
            1_000,
            &limits,
            Room::unlimited(),
            |_| MailboxState {
                meta: MailboxMeta {
                    latest: 3,
                    bytes: 24,
                    count: 3,
                },
                is_known: true,
            },
            |_, _| Some((1, 500)),
        );
        assert_eq!(cursor(&again.outcomes[0]), (1, true));
    }

    #[test]
    fn the_relay_budget_bounds_bytes_entries_and_disk() {
        let full = |room: Room, known: bool| {
            let requests: Vec<AppendRequest> = (0..MAILBOX_INDEX_ENTRIES + 10)
                .map(|n| request(n, 1, &[n as u8; 100]))
                .collect();
            plan_commit(
                &requests,
                1_000,
                &StoreLimits::default(),
                room,
                |_| MailboxState {
                    is_known: known,
                    ..MailboxState::default()
                },
                |_, _| None,
            )
        };
        let retry_after_ms = 7_000;
        let bytes = full(
            Room {
                bytes: 3 * charged_bytes(100) + 5,
                retry_after_ms,
                ..Room::unlimited()
            },
            true,
        );
        assert_eq!(stored(&bytes.outcomes), 3);
        assert_eq!(
            bytes.outcomes[3],
            StoreOutcome::Rejected(StoreError::StorageFull { retry_after_ms })
        );
        assert!(bytes.is_refused_full);
        // A mailbox the index does not know costs its own entries first.
        let entries = full(
            Room {
                index_entries: MAILBOX_INDEX_ENTRIES + 2,
                ..Room::unlimited()
            },
            false,
        );
        assert_eq!(stored(&entries.outcomes), 2);
        let known = full(
            Room {
                index_entries: MAILBOX_INDEX_ENTRIES + 2,
                ..Room::unlimited()
            },
            true,
        );
        assert_eq!(stored(&known.outcomes), MAILBOX_INDEX_ENTRIES as usize + 2);
        // The disk floor counts record bytes as written.
        let disk = full(
            Room {
                disk_bytes: 5 * (RECORD_OVERHEAD_BYTES + 100),
                ..Room::unlimited()
            },
            true,
        );
        assert_eq!(stored(&disk.outcomes), 5);
        let none = full(
            Room {
                disk_bytes: 0,
                ..Room::unlimited()
            },
            true,
        );
        assert_eq!(stored(&none.outcomes), 0);
        assert!(none.new.is_empty());
        // A duplicate writes nothing, so it is answered even with no room at all.
        let dup = plan_commit(
            &[request(0, 1, b"old")],
            1_000,
            &StoreLimits::default(),
            Room {
                bytes: 0,
                index_entries: 0,
                disk_bytes: 0,
                retry_after_ms,
            },
            |_| MailboxState::default(),
            |_, _| Some((4, 10)),
        );
        assert_eq!(cursor(&dup.outcomes[0]), (4, true));
        assert!(!dup.is_refused_full);
    }

    #[test]
    fn every_refusal_but_too_large_has_a_retry_hint() {
        let hints = [
            StoreError::QuotaExceeded { quota_bytes: 1 },
            StoreError::MailboxItemsExceeded { items_max: 1 },
            StoreError::StorageFull { retry_after_ms: 5 },
            StoreError::Unavailable("x".into()),
        ];
        for err in &hints {
            assert!(err.retry_after_ms().is_some(), "{err:?}");
        }
        assert_eq!(
            StoreError::StorageFull { retry_after_ms: 5 }.retry_after_ms(),
            Some(5)
        );
        assert_eq!(
            StoreError::StorageFull { retry_after_ms: 5 }.code(),
            zerok_messages::ErrorCode::QuotaExceeded
        );
        assert_eq!(
            StoreError::TooLarge { bytes: 2, limit: 1 }.retry_after_ms(),
            None
        );
    }

    #[test]
    fn ttl_defaults_and_caps() {
        let limits = StoreLimits {
            ttl_default_secs: 10,
            ttl_max_secs: 100,
            ..StoreLimits::default()
        };
        assert_eq!(limits.ttl_secs(None), 10);
        assert_eq!(limits.ttl_secs(Some(50)), 50);
        assert_eq!(limits.ttl_secs(Some(5000)), 100);
        let mut short = request(0, 1, b"x");
        short.ttl_secs = Some(60);
        let plan = plan(&[short, request(1, 1, b"y")], &limits);
        let expiries: Vec<u64> = plan.new.iter().map(|n| n.expires_at_ms).collect();
        assert_eq!(expiries, vec![1_000 + 60_000, 1_000 + 10_000]);
    }

    fn item(ciphertext: &[u8]) -> ItemRecord<'_> {
        ItemRecord {
            mailbox: MailboxId([7; 32]),
            cursor: 9,
            blob_id: BlobId::of_ciphertext(ciphertext),
            stored_at_ms: 11,
            expires_at_ms: 12,
            ciphertext,
        }
    }

    #[test]
    fn records_round_trip() {
        let mut out = Vec::new();
        let first = encode_item(&mut out, &item(b"sealed bytes"));
        assert_eq!(first, FRAME_HEADER + ITEM_HEADER + 12);
        let second = encode_mark(&mut out, &MailboxId([3; 32]), 44);
        assert_eq!(second, FRAME_HEADER + MARK_BODY);
        assert_eq!(out.len(), first + second);
        assert_eq!(
            decode_frame(&out[..first]),
            Some(Record::Item(item(b"sealed bytes")))
        );
        assert_eq!(
            decode_frame(&out[first..]),
            Some(Record::Mark {
                mailbox: MailboxId([3; 32]),
                latest: 44
            })
        );
        let mut empty = Vec::new();
        let len = encode_item(&mut empty, &item(b""));
        assert_eq!(decode_frame(&empty[..len]), Some(Record::Item(item(b""))));
    }

    #[test]
    fn torn_or_flipped_records_do_not_decode() {
        let mut out = Vec::new();
        let len = encode_item(&mut out, &item(b"sealed bytes"));
        for cut in 0..len {
            assert_eq!(decode_frame(&out[..cut]), None, "cut at {cut}");
        }
        for at in 0..len {
            let mut flipped = out.clone();
            flipped[at] ^= 0x10;
            assert_eq!(decode_frame(&flipped), None, "flip at {at}");
        }
        assert_eq!(
            parse_frame_header(&[0; FRAME_HEADER]),
            None,
            "zeros end a log"
        );
        let mut mark = Vec::new();
        encode_mark(&mut mark, &MailboxId([1; 32]), 1);
        mark[FRAME_HEADER] = 9;
        let body = mark[FRAME_HEADER..].to_vec();
        assert_eq!(decode_body(&body), None, "unknown kind");
    }
}
