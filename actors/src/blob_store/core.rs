//! The BlobStore's pure core: the on-disk key layout and the group-commit plan.
//!
//! One sled tree holds four key spaces, so one push is one atomic `apply_batch` (DESIGN.md §5
//! names four trees; one tree with prefixes gives the same atomicity without a cross-tree
//! transaction — see docs/DECISIONS.md):
//!
//! | key | value |
//! |---|---|
//! | `i` ‖ mailbox ‖ cursor_be | stored_at_ms ‖ expires_at_ms ‖ blob_id ‖ ciphertext |
//! | `b` ‖ mailbox ‖ blob_id | cursor_be ‖ stored_at_ms (idempotency) |
//! | `m` ‖ mailbox | latest_cursor ‖ bytes ‖ count |
//! | `e` ‖ expires_at_ms_be ‖ mailbox ‖ first_cursor_be | cursors_be… (the expiry index) |
//! | `v` | format version |
//!
//! Big-endian numbers make sled's byte order the cursor (and expiry) order. A mailbox's meta
//! is never deleted, so its cursors keep increasing even after every item expired.
//!
//! The expiry index has one entry per mailbox and expiry time per group commit, listing the
//! cursors that expire then: items of one commit share `stored_at`, so items with the same
//! TTL share their expiry and one index write covers them all (a profile showed sled's
//! per-insert cost dominating the commit; this saves one insert per item).

use std::collections::HashMap;
use zerok_messages::relay::{AppendRequest, StoreError, StoreOutcome};
use zerok_messages::{BlobId, Cursor, MailboxId};

/// Value of the format-version key.
pub const FORMAT_VERSION: &[u8] = b"zerok-store-2";
/// Key of the format version.
pub const VERSION_KEY: &[u8] = b"v";
/// Prefix of item keys.
pub const ITEM_PREFIX: u8 = b'i';
/// Prefix of idempotency keys.
pub const BLOB_PREFIX: u8 = b'b';
/// Prefix of mailbox meta keys.
pub const META_PREFIX: u8 = b'm';
/// Prefix of expiry-index keys.
pub const EXPIRY_PREFIX: u8 = b'e';

const ITEM_HEADER: usize = 8 + 8 + 32;

/// Limits the store enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Largest ciphertext of one item.
    pub blob_bytes_max: usize,
    /// Ciphertext bytes one mailbox may hold.
    pub mailbox_quota_bytes: u64,
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
            ttl_default_secs: 7 * 24 * 3600,
            ttl_max_secs: 30 * 24 * 3600,
            commit_max_items: 4096,
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

/// Per-mailbox totals, stored under `m` ‖ mailbox.
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
    /// Encoded value.
    pub fn encode(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(&self.latest.to_be_bytes());
        out[8..16].copy_from_slice(&self.bytes.to_be_bytes());
        out[16..].copy_from_slice(&self.count.to_be_bytes());
        out
    }

    /// Decode a stored value; `None` when corrupt.
    pub fn decode(value: &[u8]) -> Option<Self> {
        let value: &[u8; 24] = value.try_into().ok()?;
        Some(Self {
            latest: be_u64(&value[..8])?,
            bytes: be_u64(&value[8..16])?,
            count: be_u64(&value[16..])?,
        })
    }
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// `i` ‖ mailbox ‖ cursor.
pub fn item_key(mailbox: &MailboxId, cursor: u64) -> [u8; 41] {
    let mut key = [0u8; 41];
    key[0] = ITEM_PREFIX;
    key[1..33].copy_from_slice(mailbox.as_bytes());
    key[33..].copy_from_slice(&cursor.to_be_bytes());
    key
}

/// The cursor of an item key.
pub fn item_key_cursor(key: &[u8]) -> Option<u64> {
    if key.len() != 41 || key[0] != ITEM_PREFIX {
        return None;
    }
    be_u64(&key[33..])
}

/// `b` ‖ mailbox ‖ blob_id.
pub fn blob_key(mailbox: &MailboxId, blob_id: &BlobId) -> [u8; 65] {
    let mut key = [0u8; 65];
    key[0] = BLOB_PREFIX;
    key[1..33].copy_from_slice(mailbox.as_bytes());
    key[33..].copy_from_slice(blob_id.as_bytes());
    key
}

/// `m` ‖ mailbox.
pub fn meta_key(mailbox: &MailboxId) -> [u8; 33] {
    let mut key = [0u8; 33];
    key[0] = META_PREFIX;
    key[1..].copy_from_slice(mailbox.as_bytes());
    key
}

/// `e` ‖ expires_at_ms ‖ mailbox ‖ cursor.
pub fn expiry_key(expires_at_ms: u64, mailbox: &MailboxId, cursor: u64) -> [u8; 49] {
    let mut key = [0u8; 49];
    key[0] = EXPIRY_PREFIX;
    key[1..9].copy_from_slice(&expires_at_ms.to_be_bytes());
    key[9..41].copy_from_slice(mailbox.as_bytes());
    key[41..].copy_from_slice(&cursor.to_be_bytes());
    key
}

/// The cursors listed in an expiry entry's value.
pub fn parse_expiry_cursors(value: &[u8]) -> Vec<u64> {
    value
        .chunks_exact(8)
        .filter_map(|c| c.try_into().ok().map(u64::from_be_bytes))
        .collect()
}

/// An expiry entry's value for `cursors`.
pub fn expiry_value(cursors: &[u64]) -> Vec<u8> {
    cursors.iter().flat_map(|c| c.to_be_bytes()).collect()
}

/// Parts of an expiry key: (expires_at_ms, mailbox, first cursor).
pub fn parse_expiry_key(key: &[u8]) -> Option<(u64, MailboxId, u64)> {
    if key.len() != 49 || key[0] != EXPIRY_PREFIX {
        return None;
    }
    let mailbox: [u8; 32] = key[9..41].try_into().ok()?;
    Some((be_u64(&key[1..9])?, MailboxId(mailbox), be_u64(&key[41..])?))
}

/// The idempotency value: cursor ‖ stored_at_ms.
pub fn blob_value(cursor: u64, stored_at_ms: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&cursor.to_be_bytes());
    out[8..].copy_from_slice(&stored_at_ms.to_be_bytes());
    out
}

/// Decode an idempotency value.
pub fn parse_blob_value(value: &[u8]) -> Option<(u64, u64)> {
    if value.len() != 16 {
        return None;
    }
    Some((be_u64(&value[..8])?, be_u64(&value[8..])?))
}

/// A stored item's header and ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemValue<'a> {
    /// When it became durable.
    pub stored_at_ms: u64,
    /// When it expires.
    pub expires_at_ms: u64,
    /// `BLAKE3(ciphertext)`.
    pub blob_id: BlobId,
    /// The sealed record.
    pub ciphertext: &'a [u8],
}

impl ItemValue<'_> {
    /// Encoded value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ITEM_HEADER + self.ciphertext.len());
        out.extend_from_slice(&self.stored_at_ms.to_be_bytes());
        out.extend_from_slice(&self.expires_at_ms.to_be_bytes());
        out.extend_from_slice(self.blob_id.as_bytes());
        out.extend_from_slice(self.ciphertext);
        out
    }
}

/// Decode a stored item value; `None` when corrupt.
pub fn parse_item_value(value: &[u8]) -> Option<ItemValue<'_>> {
    if value.len() < ITEM_HEADER {
        return None;
    }
    let blob_id: [u8; 32] = value[16..48].try_into().ok()?;
    Some(ItemValue {
        stored_at_ms: be_u64(&value[..8])?,
        expires_at_ms: be_u64(&value[8..16])?,
        blob_id: BlobId(blob_id),
        ciphertext: &value[ITEM_HEADER..],
    })
}

/// One key write of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Insert or replace.
    Put(Vec<u8>, Vec<u8>),
    /// Delete.
    Remove(Vec<u8>),
}

/// What one group commit writes and answers.
#[derive(Debug, Default)]
pub struct CommitPlan {
    /// Writes for one atomic batch.
    pub writes: Vec<Write>,
    /// One outcome per request, in request order (valid once the batch is durable).
    pub outcomes: Vec<StoreOutcome>,
    /// Mailbox metas after the batch.
    pub metas: HashMap<MailboxId, MailboxMeta>,
    /// New items written.
    pub new_items: u64,
    /// New ciphertext bytes written.
    pub new_bytes: u64,
    /// Mailboxes that held nothing before and hold items after.
    pub new_mailboxes: u64,
    /// New cursors by (expiry, mailbox), written as one expiry entry each.
    pub expiring: HashMap<(u64, MailboxId), Vec<u64>>,
}

/// Plan a group commit: assign cursors, answer duplicates with their original cursor (also
/// within the batch), and refuse what is too large or over quota. `meta` reads a mailbox's
/// current meta; `existing` looks a blob up in the idempotency index.
pub fn plan_commit(
    requests: &[AppendRequest],
    now_ms: u64,
    limits: &StoreLimits,
    mut meta: impl FnMut(&MailboxId) -> Result<MailboxMeta, StoreError>,
    mut existing: impl FnMut(&MailboxId, &BlobId) -> Result<Option<(u64, u64)>, StoreError>,
) -> Result<CommitPlan, StoreError> {
    let mut plan = CommitPlan::default();
    let mut in_batch: HashMap<(MailboxId, BlobId), (u64, u64)> = HashMap::new();
    for request in requests {
        let outcome = plan_one(
            request,
            now_ms,
            limits,
            &mut plan,
            &mut in_batch,
            &mut meta,
            &mut existing,
        )?;
        plan.outcomes.push(outcome);
    }
    for ((expires_at_ms, mailbox), cursors) in &plan.expiring {
        if let Some(first) = cursors.first() {
            plan.writes.push(Write::Put(
                expiry_key(*expires_at_ms, mailbox, *first).to_vec(),
                expiry_value(cursors),
            ));
        }
    }
    for (mailbox, after) in &plan.metas {
        plan.writes.push(Write::Put(
            meta_key(mailbox).to_vec(),
            after.encode().to_vec(),
        ));
    }
    Ok(plan)
}

fn plan_one(
    request: &AppendRequest,
    now_ms: u64,
    limits: &StoreLimits,
    plan: &mut CommitPlan,
    in_batch: &mut HashMap<(MailboxId, BlobId), (u64, u64)>,
    meta: &mut impl FnMut(&MailboxId) -> Result<MailboxMeta, StoreError>,
    existing: &mut impl FnMut(&MailboxId, &BlobId) -> Result<Option<(u64, u64)>, StoreError>,
) -> Result<StoreOutcome, StoreError> {
    let mailbox = request.mailbox;
    let size = request.ciphertext.len();
    if size > limits.blob_bytes_max {
        return Ok(StoreOutcome::Rejected(StoreError::TooLarge {
            bytes: size,
            limit: limits.blob_bytes_max,
        }));
    }
    let seen = match in_batch.get(&(mailbox, request.blob_id)) {
        Some(seen) => Some(*seen),
        None => existing(&mailbox, &request.blob_id)?,
    };
    if let Some((cursor, stored_at_ms)) = seen {
        return Ok(StoreOutcome::Stored {
            cursor: Cursor(cursor),
            duplicate: true,
            stored_at_ms,
        });
    }
    let current = match plan.metas.get(&mailbox) {
        Some(current) => *current,
        None => meta(&mailbox)?,
    };
    if current.bytes.saturating_add(size as u64) > limits.mailbox_quota_bytes {
        return Ok(StoreOutcome::Rejected(StoreError::QuotaExceeded {
            quota_bytes: limits.mailbox_quota_bytes,
        }));
    }
    let cursor = current.latest + 1;
    let ttl_ms = u64::from(limits.ttl_secs(request.ttl_secs)) * 1000;
    let expires_at_ms = now_ms.saturating_add(ttl_ms);
    let value = ItemValue {
        stored_at_ms: now_ms,
        expires_at_ms,
        blob_id: request.blob_id,
        ciphertext: &request.ciphertext,
    };
    plan.writes.push(Write::Put(
        item_key(&mailbox, cursor).to_vec(),
        value.encode(),
    ));
    plan.writes.push(Write::Put(
        blob_key(&mailbox, &request.blob_id).to_vec(),
        blob_value(cursor, now_ms).to_vec(),
    ));
    plan.expiring
        .entry((expires_at_ms, mailbox))
        .or_default()
        .push(cursor);
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
    in_batch.insert((mailbox, request.blob_id), (cursor, now_ms));
    plan.new_items += 1;
    plan.new_bytes += size as u64;
    Ok(StoreOutcome::Stored {
        cursor: Cursor(cursor),
        duplicate: false,
        stored_at_ms: now_ms,
    })
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
            |_| Ok(MailboxMeta::default()),
            |_, _| Ok(None),
        )
        .expect("plan")
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
        assert_eq!(plan.new_items, 3);
        assert_eq!(plan.new_mailboxes, 2);
        assert_eq!(plan.metas[&MailboxId([1; 32])].latest, 2);
    }

    #[test]
    fn quota_and_size_are_enforced_within_a_batch() {
        let limits = StoreLimits {
            blob_bytes_max: 4,
            mailbox_quota_bytes: 6,
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
            StoreOutcome::Rejected(StoreError::QuotaExceeded { quota_bytes: 6 })
        ));
        assert_eq!(cursor(&plan.outcomes[3]), (2, false));
    }

    #[test]
    fn one_expiry_entry_per_mailbox_and_ttl_in_a_commit() {
        let mut requests: Vec<AppendRequest> =
            (0..5u64).map(|n| request(n, 1, &n.to_be_bytes())).collect();
        requests[2].ttl_secs = Some(60);
        requests.push(request(9, 2, b"other mailbox"));
        let plan = plan(&requests, &StoreLimits::default());
        let expiry: Vec<(Vec<u8>, Vec<u8>)> = plan
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::Put(k, v) if k[0] == EXPIRY_PREFIX => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(expiry.len(), 3, "default TTL, 60 s TTL, other mailbox");
        let mut lists: Vec<Vec<u64>> = expiry
            .iter()
            .map(|(_, v)| parse_expiry_cursors(v))
            .collect();
        lists.sort();
        assert_eq!(lists, vec![vec![1], vec![1, 2, 4, 5], vec![3]]);
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
    }

    #[test]
    fn keys_round_trip_and_sort_by_number() {
        let mailbox = MailboxId([7; 32]);
        assert!(item_key(&mailbox, 255) < item_key(&mailbox, 256));
        assert_eq!(item_key_cursor(&item_key(&mailbox, 9)), Some(9));
        assert!(expiry_key(255, &mailbox, 1) < expiry_key(256, &MailboxId([0; 32]), 0));
        assert_eq!(
            parse_expiry_key(&expiry_key(5, &mailbox, 6)),
            Some((5, mailbox, 6))
        );
        let meta = MailboxMeta {
            latest: 1,
            bytes: 2,
            count: 3,
        };
        assert_eq!(MailboxMeta::decode(&meta.encode()), Some(meta));
        assert_eq!(MailboxMeta::decode(&[0; 23]), None);
        let value = ItemValue {
            stored_at_ms: 1,
            expires_at_ms: 2,
            blob_id: BlobId([3; 32]),
            ciphertext: b"xyz",
        };
        assert_eq!(parse_item_value(&value.encode()), Some(value));
        assert_eq!(parse_item_value(&[0; 47]), None);
        assert_eq!(parse_blob_value(&blob_value(4, 5)), Some((4, 5)));
    }
}
