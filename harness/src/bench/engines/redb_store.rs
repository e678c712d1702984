//! [`RedbStore`]: the BlobStore's [`ItemStore`] on redb 4 (a copy-on-write B-tree in one
//! file), for `zerok-bench store` only. Each commit is one write transaction over four tables
//! (layout in [`super`]) with `Durability::Immediate`, durable before `commit` returns.
//!
//! redb runs one write transaction at a time, and a commit's lookups happen inside its own
//! transaction, so commits and sweeps need no lock of ours; reads run in read transactions
//! and see committed, that is durable, state only.

use super::{
    Due, ENGINE_CACHE_BYTES, IdEntry, Op, TOTALS_KEY, Table, Totals, Undecodable, decode_due,
    decode_id, decode_item, decode_meta, decode_totals, expiry_end, id_key, item_key,
    item_key_cursor, plan_ops, sweep_ops,
};
use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use tracing::warn;
use zerok_actors::fault::{FaultPlan, FaultPoint};
use zerok_actors::relay::blob_store::ItemStore;
use zerok_actors::relay::blob_store::core::{CommitPlan, MailboxMeta, StoreBudget, StoreLimits};
use zerok_messages::relay::{AppendRequest, Page, StoreError, StoreStats, SweepReport};
use zerok_messages::sync::{read, write};
use zerok_messages::{BlobId, Cursor, Item, MailboxId};

type Bin = TableDefinition<'static, &'static [u8], &'static [u8]>;
const ITEMS: Bin = TableDefinition::new("items");
const IDS: Bin = TableDefinition::new("ids");
const EXPIRY: Bin = TableDefinition::new("expiry");
const METAS: Bin = TableDefinition::new("metas");

/// Name of the database file in the store's directory.
pub const FILE: &str = "store.redb";

/// The BlobStore's items in a redb database.
pub struct RedbStore {
    path: PathBuf,
    db: Database,
    totals: RwLock<Totals>,
}

fn failed<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> StoreError {
    move |err| {
        warn!(error = %err, what, "redb failed");
        StoreError::Unavailable(format!("{what} failed"))
    }
}

fn undecodable(what: &'static str) -> StoreError {
    warn!(what, "redb returned a value that does not decode");
    StoreError::Unavailable(Undecodable(what).to_string())
}

fn get_meta(
    metas: &impl ReadableTable<&'static [u8], &'static [u8]>,
    mailbox: &MailboxId,
) -> Result<Option<MailboxMeta>, StoreError> {
    match metas
        .get(mailbox.as_bytes().as_slice())
        .map_err(failed("meta read"))?
    {
        Some(value) => Ok(Some(
            decode_meta(value.value()).ok_or_else(|| undecodable("meta"))?,
        )),
        None => Ok(None),
    }
}

fn get_id(
    ids: &impl ReadableTable<&'static [u8], &'static [u8]>,
    mailbox: &MailboxId,
    blob_id: &BlobId,
) -> Result<Option<IdEntry>, StoreError> {
    match ids
        .get(id_key(mailbox, blob_id).as_slice())
        .map_err(failed("id read"))?
    {
        Some(value) => Ok(Some(
            decode_id(value.value()).ok_or_else(|| undecodable("id"))?,
        )),
        None => Ok(None),
    }
}

impl RedbStore {
    /// Open (or create) the store in `dir` (one file, [`FILE`]).
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE);
        let db = Database::builder()
            .set_cache_size(ENGINE_CACHE_BYTES as usize)
            .create(&path)?;
        let txn = db.begin_write()?;
        let totals = {
            for table in [ITEMS, IDS, EXPIRY] {
                txn.open_table(table)?;
            }
            let metas = txn.open_table(METAS)?;
            let value = metas.get(TOTALS_KEY)?;
            match value {
                Some(value) => decode_totals(value.value()).ok_or(Undecodable("totals"))?,
                None => Totals::default(),
            }
        };
        txn.commit()?;
        Ok(Self {
            path,
            db,
            totals: RwLock::new(totals),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Plan with lookups in a write transaction, apply `ops` in it and commit it durably.
    fn transact<T>(
        &self,
        plan: impl FnOnce(&redb::WriteTransaction) -> Result<Option<(T, Vec<Op>, Totals)>, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let mut txn = self.db.begin_write().map_err(failed("begin"))?;
        txn.set_durability(Durability::Immediate)
            .map_err(failed("durability"))?;
        let Some((answer, ops, after)) = plan(&txn)? else {
            return Ok(None);
        };
        {
            let open = |table| txn.open_table(table).map_err(failed("open table"));
            let (mut items, mut ids, mut expiry, mut metas) =
                (open(ITEMS)?, open(IDS)?, open(EXPIRY)?, open(METAS)?);
            for op in ops {
                let (table, key, value) = match op {
                    Op::Put(table, key, value) => (table, key, Some(value)),
                    Op::Delete(table, key) => (table, key, None),
                };
                let handle = match table {
                    Table::Items => &mut items,
                    Table::Ids => &mut ids,
                    Table::Expiry => &mut expiry,
                    Table::Metas => &mut metas,
                };
                match value {
                    Some(value) => {
                        handle
                            .insert(key.as_slice(), value.as_slice())
                            .map_err(failed("insert"))?;
                    }
                    None => {
                        handle.remove(key.as_slice()).map_err(failed("remove"))?;
                    }
                }
            }
        }
        txn.commit().map_err(failed("commit"))?;
        *write(&self.totals) = after;
        Ok(Some(answer))
    }
}

impl ItemStore for RedbStore {
    fn budget(&self) -> StoreBudget {
        StoreBudget::unlimited()
    }

    fn meta(&self, mailbox: &MailboxId) -> MailboxMeta {
        let found = self
            .db
            .begin_read()
            .map_err(failed("begin read"))
            .and_then(|txn| txn.open_table(METAS).map_err(failed("open table")))
            .and_then(|metas| get_meta(&metas, mailbox));
        found.ok().flatten().unwrap_or_default()
    }

    fn stats(&self) -> StoreStats {
        let disk_bytes = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        read(&self.totals).stats(disk_bytes)
    }

    fn commit(
        &self,
        requests: &[AppendRequest],
        now_ms: u64,
        limits: &StoreLimits,
        faults: &FaultPlan,
    ) -> Result<CommitPlan, StoreError> {
        let mut unwritten = None;
        let written = self.transact(|txn| {
            let metas = txn.open_table(METAS).map_err(failed("open table"))?;
            let ids = txn.open_table(IDS).map_err(failed("open table"))?;
            let totals = *read(&self.totals);
            let (plan, ops, after) = plan_ops(
                requests,
                now_ms,
                limits,
                totals,
                |m| get_meta(&metas, m),
                |m, b| get_id(&ids, m, b),
            )?;
            if ops.is_empty() {
                unwritten = Some(plan);
                return Ok(None);
            }
            if faults.should_fail(FaultPoint::BeforeStoreWrite) {
                return Err(StoreError::Unavailable("write failed (injected)".into()));
            }
            Ok(Some((plan, ops, after)))
        })?;
        written
            .or(unwritten)
            .ok_or_else(|| StoreError::Unavailable("commit planned nothing".into()))
    }

    fn read_page(
        &self,
        mailbox: &MailboxId,
        after: u64,
        max_items: u32,
        max_bytes: u32,
        now_ms: u64,
    ) -> Result<Page, StoreError> {
        let mut page = Page {
            items: Vec::new(),
            next: Cursor(after),
            has_more: false,
        };
        if after == u64::MAX {
            return Ok(page);
        }
        let txn = self.db.begin_read().map_err(failed("begin read"))?;
        let items = txn.open_table(ITEMS).map_err(failed("open table"))?;
        let from = item_key(mailbox, after + 1);
        let to = item_key(mailbox, u64::MAX);
        let mut fill = zerok_actors::relay::blob_store::core::PageFill::new(max_items, max_bytes);
        for entry in items
            .range(from.as_slice()..=to.as_slice())
            .map_err(failed("read"))?
        {
            let (key, value) = entry.map_err(failed("read"))?;
            let cursor = item_key_cursor(key.value()).ok_or_else(|| undecodable("item key"))?;
            let item = decode_item(value.value()).ok_or_else(|| undecodable("item"))?;
            if item.expires_at_ms <= now_ms {
                page.next = Cursor(cursor);
                continue;
            }
            let len = item.ciphertext.len() as u64;
            if fill.is_full(len) {
                page.has_more = true;
                break;
            }
            fill.add(len);
            page.next = Cursor(cursor);
            page.items.push(Item {
                cursor: Cursor(cursor),
                blob_id: item.blob_id,
                ciphertext: Bytes::copy_from_slice(item.ciphertext),
                stored_at_ms: item.stored_at_ms,
            });
        }
        Ok(page)
    }

    fn sweep(&self, now_ms: u64, max_items: u32) -> Result<SweepReport, StoreError> {
        let budget = max_items.max(1) as usize;
        let report = self.transact(|txn| {
            let expiry = txn.open_table(EXPIRY).map_err(failed("open table"))?;
            let mut due: Vec<Due> = Vec::new();
            let mut more = false;
            let end = expiry_end(now_ms);
            for entry in expiry
                .range(..end.as_slice())
                .map_err(failed("expiry read"))?
            {
                let (key, value) = entry.map_err(failed("expiry read"))?;
                if due.len() == budget {
                    more = true;
                    break;
                }
                due.push(
                    decode_due(key.value(), value.value()).ok_or_else(|| undecodable("expiry"))?,
                );
            }
            if due.is_empty() {
                return Ok(None);
            }
            let metas = txn.open_table(METAS).map_err(failed("open table"))?;
            let ids = txn.open_table(IDS).map_err(failed("open table"))?;
            let totals = *read(&self.totals);
            let (ops, after) = sweep_ops(
                &due,
                totals,
                |m| get_meta(&metas, m),
                |m, b| get_id(&ids, m, b),
            )?;
            let report = SweepReport {
                evicted: due.len() as u64,
                more,
            };
            Ok(Some((report, ops, after)))
        })?;
        Ok(report.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redb_store_commits_reads_dedups_sweeps_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        super::super::tests::commit_read_duplicate_sweep_reopen(|| {
            RedbStore::open(dir.path()).unwrap()
        });
    }
}
