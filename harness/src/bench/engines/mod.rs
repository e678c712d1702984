//! Storage engines measured against the relay's segment log by `zerok-bench store` (issue 11,
//! docs/DECISIONS.md): [`FjallStore`] (an LSM tree, key-value separated) and [`RedbStore`] (a
//! copy-on-write B-tree), each behind the BlobStore's [`ItemStore`] interface with the log's
//! semantics, so the bench drives them through the real `BlobStoreActor`.
//!
//! Both keep the same four tables, written in one atomic, durable batch per commit:
//!
//! | table | key | value |
//! |---|---|---|
//! | items | mailbox ‖ cursor (BE) | stored_at ‖ expires_at ‖ blob_id ‖ ciphertext |
//! | ids | mailbox ‖ blob_id | cursor ‖ stored_at ‖ expires_at |
//! | expiry | expires_at (BE) ‖ mailbox ‖ cursor (BE) | blob_id ‖ ciphertext length |
//! | metas | mailbox, or [`TOTALS_KEY`] | count ‖ bytes ‖ latest (or the relay's totals) |
//!
//! The plan of a commit (quotas, idempotency by blob id, cursors, TTL) is the log's own pure
//! [`plan_commit`]; this module turns a plan or a sweep into [`Op`]s that each engine applies
//! in its own batch. The ids entry carries the item's times, so a duplicate is answered with
//! one point read; the expiry entry carries what a sweep needs to delete the item's other
//! entries without reading its ciphertext. Memory is only the engines' own caches
//! ([`ENGINE_CACHE_BYTES`]), not a per-item index.
//!
//! [`ItemStore`]: zerok_actors::relay::blob_store::ItemStore

pub mod bench;
pub mod fjall_store;
pub mod redb_store;

pub use fjall_store::FjallStore;
pub use redb_store::RedbStore;

use std::collections::HashMap;
use zerok_actors::relay::blob_store::core::{
    CommitPlan, MailboxMeta, MailboxState, Room, StoreLimits, plan_commit,
};
use zerok_messages::relay::{AppendRequest, StoreStats};
use zerok_messages::{BlobId, MailboxId};

/// Block or page cache each engine may use: the same for both, so RSS compares index
/// structures, not cache settings. 64 MiB is a quarter of the relay's 256 MiB RSS target
/// (issue 11) and far below redb's 1 GiB default.
pub const ENGINE_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Key of the relay-wide totals in the metas table (32-byte keys are mailboxes).
pub const TOTALS_KEY: &[u8] = b"totals";

/// Bytes of an item value before its ciphertext.
pub const ITEM_VALUE_HEADER: usize = 8 + 8 + 32;

/// The tables of an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Items by mailbox and cursor.
    Items,
    /// Idempotency: cursors by mailbox and blob id.
    Ids,
    /// Items by expiry.
    Expiry,
    /// Mailbox metas and the totals.
    Metas,
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace.
    Put(Table, Vec<u8>, Vec<u8>),
    /// Delete.
    Delete(Table, Vec<u8>),
}

/// Relay-wide totals, kept in the metas table and in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Items stored.
    pub items: u64,
    /// Ciphertext bytes stored.
    pub bytes: u64,
    /// Mailboxes holding at least one item.
    pub mailboxes: u64,
}

impl Totals {
    /// The stats an engine reports (no segments, no cached metas, no budget).
    pub fn stats(&self, disk_bytes: u64) -> StoreStats {
        StoreStats {
            mailboxes: self.mailboxes,
            items: self.items,
            bytes: self.bytes,
            disk_bytes,
            charged_bytes: self.bytes.saturating_add(
                self.items
                    .saturating_mul(zerok_actors::relay::blob_store::core::ITEM_CHARGE_BYTES),
            ),
            index_entries: self.items,
            free_disk_bytes: u64::MAX,
            ..StoreStats::default()
        }
    }
}

/// What an ids entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdEntry {
    /// The item's cursor.
    pub cursor: u64,
    /// When it was stored.
    pub stored_at_ms: u64,
    /// When it expires.
    pub expires_at_ms: u64,
}

/// What an expiry entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The item's mailbox.
    pub mailbox: MailboxId,
    /// Its cursor.
    pub cursor: u64,
    /// Its blob id.
    pub blob_id: BlobId,
    /// Its ciphertext length.
    pub bytes: u64,
    /// The entry's own key.
    pub key: Vec<u8>,
}

/// An item as the items table holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemValue<'a> {
    /// When it was stored.
    pub stored_at_ms: u64,
    /// When it expires.
    pub expires_at_ms: u64,
    /// `BLAKE3(ciphertext)`.
    pub blob_id: BlobId,
    /// The sealed record.
    pub ciphertext: &'a [u8],
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// Key of an item: mailbox ‖ cursor (BE), so a mailbox's items lie in cursor order.
pub fn item_key(mailbox: &MailboxId, cursor: u64) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..32].copy_from_slice(mailbox.as_bytes());
    key[32..].copy_from_slice(&cursor.to_be_bytes());
    key
}

/// The cursor of an item key.
pub fn item_key_cursor(key: &[u8]) -> Option<u64> {
    be_u64(key.get(32..40)?)
}

/// Value of an item.
pub fn item_value(
    stored_at_ms: u64,
    expires_at_ms: u64,
    blob_id: &BlobId,
    ciphertext: &[u8],
) -> Vec<u8> {
    let mut value = Vec::with_capacity(ITEM_VALUE_HEADER + ciphertext.len());
    value.extend_from_slice(&stored_at_ms.to_be_bytes());
    value.extend_from_slice(&expires_at_ms.to_be_bytes());
    value.extend_from_slice(blob_id.as_bytes());
    value.extend_from_slice(ciphertext);
    value
}

/// Decode an item value; `None` when it is too short.
pub fn decode_item(value: &[u8]) -> Option<ItemValue<'_>> {
    Some(ItemValue {
        stored_at_ms: be_u64(value.get(0..8)?)?,
        expires_at_ms: be_u64(value.get(8..16)?)?,
        blob_id: BlobId(value.get(16..48)?.try_into().ok()?),
        ciphertext: value.get(ITEM_VALUE_HEADER..)?,
    })
}

/// Key of an ids entry: mailbox ‖ blob id.
pub fn id_key(mailbox: &MailboxId, blob_id: &BlobId) -> [u8; 64] {
    let mut key = [0u8; 64];
    key[..32].copy_from_slice(mailbox.as_bytes());
    key[32..].copy_from_slice(blob_id.as_bytes());
    key
}

fn id_value(entry: &IdEntry) -> Vec<u8> {
    [entry.cursor, entry.stored_at_ms, entry.expires_at_ms]
        .iter()
        .flat_map(|n| n.to_be_bytes())
        .collect()
}

/// Decode an ids value.
pub fn decode_id(value: &[u8]) -> Option<IdEntry> {
    Some(IdEntry {
        cursor: be_u64(value.get(0..8)?)?,
        stored_at_ms: be_u64(value.get(8..16)?)?,
        expires_at_ms: be_u64(value.get(16..24)?)?,
    })
}

/// Key of an expiry entry: expires_at (BE) ‖ mailbox ‖ cursor (BE), so due items come first.
pub fn expiry_key(expires_at_ms: u64, mailbox: &MailboxId, cursor: u64) -> [u8; 48] {
    let mut key = [0u8; 48];
    key[..8].copy_from_slice(&expires_at_ms.to_be_bytes());
    key[8..40].copy_from_slice(mailbox.as_bytes());
    key[40..].copy_from_slice(&cursor.to_be_bytes());
    key
}

/// The smallest expiry key of items due after `now_ms` (the end of a sweep's range).
pub fn expiry_end(now_ms: u64) -> [u8; 8] {
    now_ms.saturating_add(1).to_be_bytes()
}

/// Decode an expiry entry.
pub fn decode_due(key: &[u8], value: &[u8]) -> Option<Due> {
    Some(Due {
        mailbox: MailboxId(key.get(8..40)?.try_into().ok()?),
        cursor: be_u64(key.get(40..48)?)?,
        blob_id: BlobId(value.get(0..32)?.try_into().ok()?),
        bytes: be_u64(value.get(32..40)?)?,
        key: key.to_vec(),
    })
}

/// Value of a mailbox meta.
pub fn meta_value(meta: &MailboxMeta) -> Vec<u8> {
    [meta.count, meta.bytes, meta.latest]
        .iter()
        .flat_map(|n| n.to_be_bytes())
        .collect()
}

/// Decode a mailbox meta.
pub fn decode_meta(value: &[u8]) -> Option<MailboxMeta> {
    Some(MailboxMeta {
        count: be_u64(value.get(0..8)?)?,
        bytes: be_u64(value.get(8..16)?)?,
        latest: be_u64(value.get(16..24)?)?,
    })
}

/// Value of the totals.
pub fn totals_value(totals: &Totals) -> Vec<u8> {
    [totals.items, totals.bytes, totals.mailboxes]
        .iter()
        .flat_map(|n| n.to_be_bytes())
        .collect()
}

/// Decode the totals.
pub fn decode_totals(value: &[u8]) -> Option<Totals> {
    Some(Totals {
        items: be_u64(value.get(0..8)?)?,
        bytes: be_u64(value.get(8..16)?)?,
        mailboxes: be_u64(value.get(16..24)?)?,
    })
}

/// A value the engine returned that does not decode: damage, reported as such.
#[derive(Debug, thiserror::Error)]
#[error("a stored {0} does not decode")]
pub struct Undecodable(pub &'static str);

/// Plan one group commit with [`plan_commit`] and the writes that store it. `get_meta` and
/// `get_id` read the engine's current state (they run before planning, once per distinct
/// mailbox and blob). Returns the plan, its writes and the totals after it.
pub fn plan_ops<E>(
    requests: &[AppendRequest],
    now_ms: u64,
    limits: &StoreLimits,
    totals: Totals,
    mut get_meta: impl FnMut(&MailboxId) -> Result<Option<MailboxMeta>, E>,
    mut get_id: impl FnMut(&MailboxId, &BlobId) -> Result<Option<IdEntry>, E>,
) -> Result<(CommitPlan, Vec<Op>, Totals), E> {
    let mut metas: HashMap<MailboxId, Option<MailboxMeta>> = HashMap::new();
    let mut ids: HashMap<(MailboxId, BlobId), Option<IdEntry>> = HashMap::new();
    for request in requests {
        if let std::collections::hash_map::Entry::Vacant(slot) = metas.entry(request.mailbox) {
            slot.insert(get_meta(&request.mailbox)?);
        }
        if let std::collections::hash_map::Entry::Vacant(slot) =
            ids.entry((request.mailbox, request.blob_id))
        {
            slot.insert(get_id(&request.mailbox, &request.blob_id)?);
        }
    }
    let plan = plan_commit(
        requests,
        now_ms,
        limits,
        Room::unlimited(),
        |mailbox| match metas.get(mailbox).copied().flatten() {
            Some(meta) => MailboxState {
                meta,
                is_known: true,
            },
            None => MailboxState::default(),
        },
        // An expired item not yet swept is never served, so its blob is stored again.
        |mailbox, blob_id| {
            ids.get(&(*mailbox, *blob_id))
                .copied()
                .flatten()
                .filter(|entry| entry.expires_at_ms > now_ms)
                .map(|entry| (entry.cursor, entry.stored_at_ms))
        },
    );
    let mut ops = Vec::with_capacity(plan.new.len() * 3 + plan.metas.len() + 1);
    for new in &plan.new {
        let request = &requests[new.request];
        let entry = IdEntry {
            cursor: new.cursor,
            stored_at_ms: now_ms,
            expires_at_ms: new.expires_at_ms,
        };
        ops.push(Op::Put(
            Table::Items,
            item_key(&request.mailbox, new.cursor).to_vec(),
            item_value(
                now_ms,
                new.expires_at_ms,
                &request.blob_id,
                &request.ciphertext,
            ),
        ));
        ops.push(Op::Put(
            Table::Ids,
            id_key(&request.mailbox, &request.blob_id).to_vec(),
            id_value(&entry),
        ));
        let mut due = Vec::with_capacity(40);
        due.extend_from_slice(request.blob_id.as_bytes());
        due.extend_from_slice(&(request.ciphertext.len() as u64).to_be_bytes());
        ops.push(Op::Put(
            Table::Expiry,
            expiry_key(new.expires_at_ms, &request.mailbox, new.cursor).to_vec(),
            due,
        ));
    }
    if plan.new.is_empty() {
        return Ok((plan, Vec::new(), totals));
    }
    for (mailbox, meta) in &plan.metas {
        ops.push(Op::Put(
            Table::Metas,
            mailbox.as_bytes().to_vec(),
            meta_value(meta),
        ));
    }
    let after = Totals {
        items: totals.items + plan.new.len() as u64,
        bytes: totals.bytes + plan.new_bytes,
        mailboxes: totals.mailboxes + plan.new_mailboxes,
    };
    ops.push(Op::Put(
        Table::Metas,
        TOTALS_KEY.to_vec(),
        totals_value(&after),
    ));
    Ok((plan, ops, after))
}

/// The writes that evict `due` items (found in the expiry table, oldest first): their item,
/// expiry and (when it still names them) ids entries, and the metas and totals after. A
/// mailbox's `latest` is kept, so its cursors never go back.
pub fn sweep_ops<E>(
    due: &[Due],
    totals: Totals,
    mut get_meta: impl FnMut(&MailboxId) -> Result<Option<MailboxMeta>, E>,
    mut get_id: impl FnMut(&MailboxId, &BlobId) -> Result<Option<IdEntry>, E>,
) -> Result<(Vec<Op>, Totals), E> {
    let mut metas: HashMap<MailboxId, MailboxMeta> = HashMap::new();
    let mut ops = Vec::with_capacity(due.len() * 3 + 1);
    let mut after = totals;
    for item in due {
        let meta = match metas.get(&item.mailbox) {
            Some(meta) => *meta,
            None => get_meta(&item.mailbox)?.unwrap_or_default(),
        };
        ops.push(Op::Delete(Table::Expiry, item.key.clone()));
        ops.push(Op::Delete(
            Table::Items,
            item_key(&item.mailbox, item.cursor).to_vec(),
        ));
        // A push of the same ciphertext after expiry stored it again under a new cursor: that
        // ids entry belongs to the new item.
        if get_id(&item.mailbox, &item.blob_id)?.is_some_and(|e| e.cursor == item.cursor) {
            ops.push(Op::Delete(
                Table::Ids,
                id_key(&item.mailbox, &item.blob_id).to_vec(),
            ));
        }
        let next = MailboxMeta {
            count: meta.count.saturating_sub(1),
            bytes: meta.bytes.saturating_sub(item.bytes),
            latest: meta.latest,
        };
        if meta.count == 1 {
            after.mailboxes = after.mailboxes.saturating_sub(1);
        }
        after.items = after.items.saturating_sub(1);
        after.bytes = after.bytes.saturating_sub(item.bytes);
        metas.insert(item.mailbox, next);
    }
    for (mailbox, meta) in &metas {
        ops.push(Op::Put(
            Table::Metas,
            mailbox.as_bytes().to_vec(),
            meta_value(meta),
        ));
    }
    ops.push(Op::Put(
        Table::Metas,
        TOTALS_KEY.to_vec(),
        totals_value(&after),
    ));
    Ok((ops, after))
}

#[cfg(test)]
pub(crate) mod tests {
    //! One behaviour test run against every engine.

    use super::*;
    use bytes::Bytes;
    use zerok_actors::fault::FaultPlan;
    use zerok_actors::relay::blob_store::ItemStore;
    use zerok_messages::relay::StoreOutcome;

    pub(crate) fn request(
        token: u64,
        mailbox: u8,
        payload: &[u8],
        ttl_secs: Option<u32>,
    ) -> AppendRequest {
        AppendRequest {
            token,
            mailbox: MailboxId([mailbox; 32]),
            blob_id: BlobId::of_ciphertext(payload),
            ciphertext: Bytes::copy_from_slice(payload),
            ttl_secs,
        }
    }

    fn cursor(outcome: &StoreOutcome) -> (u64, bool) {
        match outcome {
            StoreOutcome::Stored {
                cursor, duplicate, ..
            } => (cursor.0, *duplicate),
            StoreOutcome::Rejected(err) => panic!("rejected: {err}"),
        }
    }

    /// Commit, read back in pages, re-push idempotently, sweep what expired (cursors do not
    /// go back), then reopen and find the same state.
    pub(crate) fn commit_read_duplicate_sweep_reopen<S: ItemStore>(open: impl Fn() -> S) {
        let limits = StoreLimits::default();
        let none = FaultPlan::none();
        let store = open();
        let mailbox = MailboxId([1; 32]);
        let batch = [
            request(0, 1, b"first", Some(10)),
            request(1, 1, b"second", None),
            request(2, 2, b"other mailbox", None),
            request(3, 1, b"third", None),
        ];
        let plan = store.commit(&batch, 1_000, &limits, &none).unwrap();
        let got: Vec<_> = plan.outcomes.iter().map(cursor).collect();
        assert_eq!(got, vec![(1, false), (2, false), (1, false), (3, false)]);
        assert_eq!(store.meta(&mailbox).latest, 3);
        assert_eq!(store.meta(&mailbox).count, 3);
        assert_eq!(store.stats().items, 4);
        assert_eq!(store.stats().mailboxes, 2);

        // Pages honour the item and byte limits and say whether more follow.
        let page = store.read_page(&mailbox, 0, 2, 1 << 20, 1_000).unwrap();
        let cursors: Vec<u64> = page.items.iter().map(|i| i.cursor.0).collect();
        assert_eq!(cursors, vec![1, 2]);
        assert!(page.has_more);
        assert_eq!(&page.items[0].ciphertext[..], b"first");
        assert_eq!(page.items[0].blob_id, BlobId::of_ciphertext(b"first"));
        assert_eq!(page.items[0].stored_at_ms, 1_000);
        let page = store
            .read_page(&mailbox, page.next.0, 10, 1 << 20, 1_000)
            .unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(&page.items[0].ciphertext[..], b"third");
        assert!(!page.has_more);
        let one = store.read_page(&mailbox, 0, 10, 1, 1_000).unwrap();
        assert_eq!(
            one.items.len(),
            1,
            "at least one item even over the byte limit"
        );
        assert!(one.has_more);

        // A re-push is answered with the original cursor and time, and writes nothing.
        let again = store
            .commit(&[request(7, 1, b"second", None)], 2_000, &limits, &none)
            .unwrap();
        assert_eq!(
            again.outcomes[0],
            StoreOutcome::Stored {
                cursor: zerok_messages::Cursor(2),
                duplicate: true,
                stored_at_ms: 1_000
            }
        );
        assert_eq!(store.stats().items, 4);

        // At 11 s "first" has expired: not served, and not a duplicate (stored again under a
        // new cursor); the sweep evicts the old item but keeps the new one's ids entry.
        let page = store.read_page(&mailbox, 0, 10, 1 << 20, 11_000).unwrap();
        let cursors: Vec<u64> = page.items.iter().map(|i| i.cursor.0).collect();
        assert_eq!(cursors, vec![2, 3]);
        let repushed = store
            .commit(&[request(8, 1, b"first", None)], 11_000, &limits, &none)
            .unwrap();
        assert_eq!(cursor(&repushed.outcomes[0]), (4, false));
        let report = store.sweep(11_000, 10).unwrap();
        assert_eq!(report.evicted, 1);
        assert!(!report.more);
        assert_eq!(store.stats().items, 4);
        assert_eq!(store.meta(&mailbox).count, 3);
        assert_eq!(store.meta(&mailbox).latest, 4);
        assert_eq!(store.sweep(12_000, 10).unwrap().evicted, 0);
        let dup = store
            .commit(&[request(9, 1, b"first", None)], 12_000, &limits, &none)
            .unwrap();
        assert_eq!(
            cursor(&dup.outcomes[0]),
            (4, true),
            "the ids entry survived"
        );

        // Everything above was durable: a reopened store holds the same. (The log indexes its
        // records again at open, swept ones too, until the next sweep evicts them again.)
        drop(store);
        let store = open();
        store.sweep(12_000, 10).unwrap();
        assert_eq!(store.stats().items, 4);
        assert_eq!(store.meta(&mailbox).latest, 4);
        let page = store.read_page(&mailbox, 0, 10, 1 << 20, 12_000).unwrap();
        let cursors: Vec<u64> = page.items.iter().map(|i| i.cursor.0).collect();
        assert_eq!(cursors, vec![2, 3, 4]);
        let dup = store
            .commit(&[request(10, 1, b"first", None)], 13_000, &limits, &none)
            .unwrap();
        assert_eq!(cursor(&dup.outcomes[0]), (4, true));
        // A mailbox whose only item expired keeps its cursor.
        let short = store
            .commit(&[request(11, 3, b"brief", Some(1))], 13_000, &limits, &none)
            .unwrap();
        assert_eq!(cursor(&short.outcomes[0]), (1, false));
        assert_eq!(store.sweep(20_000, 10).unwrap().evicted, 1);
        assert_eq!(store.meta(&MailboxId([3; 32])).count, 0);
        let next = store
            .commit(&[request(12, 3, b"later", None)], 20_000, &limits, &none)
            .unwrap();
        assert_eq!(
            cursor(&next.outcomes[0]),
            (2, false),
            "cursors never go back"
        );
    }

    #[test]
    fn the_segment_log_passes_the_same_behaviour_test() {
        let dir = tempfile::tempdir().unwrap();
        commit_read_duplicate_sweep_reopen(|| {
            zerok_actors::relay::blob_store::Store::open(dir.path(), 4096).unwrap()
        });
    }

    #[test]
    fn keys_and_values_round_trip() {
        let mailbox = MailboxId([9; 32]);
        let blob = BlobId::of_ciphertext(b"x");
        let key = item_key(&mailbox, 258);
        assert_eq!(item_key_cursor(&key), Some(258));
        assert!(
            item_key(&mailbox, 1) < item_key(&mailbox, 256),
            "cursor order"
        );
        let value = item_value(1, 2, &blob, b"sealed");
        let item = decode_item(&value).unwrap();
        assert_eq!((item.stored_at_ms, item.expires_at_ms), (1, 2));
        assert_eq!(item.blob_id, blob);
        assert_eq!(item.ciphertext, b"sealed");
        assert!(decode_item(&value[..10]).is_none());
        let meta = MailboxMeta {
            latest: 3,
            bytes: 4,
            count: 5,
        };
        assert_eq!(decode_meta(&meta_value(&meta)), Some(meta));
        assert!(expiry_key(5, &mailbox, 1).as_slice() < expiry_end(5).as_slice());
        assert!(expiry_key(6, &mailbox, 1).as_slice() >= expiry_end(5).as_slice());
    }
}
