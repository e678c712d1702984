//! [`FjallStore`]: the BlobStore's [`ItemStore`] on fjall 3 (an LSM tree), for
//! `zerok-bench store` only. Each commit is one write batch across four keyspaces
//! (layout in [`super`]), persisted with `PersistMode::SyncData` (one `fdatasync` of the
//! journal) before `commit` returns; the items keyspace separates values (stored_at,
//! expires_at, blob id, ciphertext: ≥ [`KV_SEPARATION_BYTES`]) into blob files, so the
//! LSM tree holds keys and pointers and compaction never rewrites ciphertext.
//!
//! Commits and sweeps run one at a time (`writer`); reads see only committed batches, and a
//! batch is inserted into the memtables only after its journal write was synced, so reads see
//! durable items only.

use super::{
    Due, ENGINE_CACHE_BYTES, IdEntry, Op, TOTALS_KEY, Table, Totals, Undecodable, decode_due,
    decode_id, decode_item, decode_meta, decode_totals, expiry_end, id_key, item_key,
    item_key_cursor, plan_ops, sweep_ops,
};
use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use tracing::warn;
use zerok_actors::fault::{FaultPlan, FaultPoint};
use zerok_actors::relay::blob_store::ItemStore;
use zerok_actors::relay::blob_store::core::{CommitPlan, MailboxMeta, StoreBudget, StoreLimits};
use zerok_messages::relay::{AppendRequest, Page, StoreError, StoreStats, SweepReport};
use zerok_messages::sync::{lock, read, write};
use zerok_messages::{BlobId, Cursor, Item, MailboxId};

/// Values of at least this many bytes go to blob files: every item value (48 B of header
/// plus its ciphertext) of a 1 KiB record, and any ciphertext from 464 B up.
pub const KV_SEPARATION_BYTES: u32 = 512;

/// The BlobStore's items in a fjall database.
pub struct FjallStore {
    dir: PathBuf,
    db: Database,
    items: Keyspace,
    ids: Keyspace,
    expiry: Keyspace,
    metas: Keyspace,
    /// Held by a commit or sweep from its reads through its durable write.
    writer: Mutex<()>,
    totals: RwLock<Totals>,
}

fn failed(what: &'static str) -> impl FnOnce(fjall::Error) -> StoreError {
    move |err| {
        warn!(error = %err, what, "fjall failed");
        StoreError::Unavailable(format!("{what} failed"))
    }
}

fn undecodable(what: &'static str) -> StoreError {
    warn!(what, "fjall returned a value that does not decode");
    StoreError::Unavailable(Undecodable(what).to_string())
}

impl FjallStore {
    /// Open (or create) the store in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let db = Database::builder(dir)
            .manual_journal_persist(true)
            .cache_size(ENGINE_CACHE_BYTES)
            .open()?;
        let items = db.keyspace("items", || {
            KeyspaceCreateOptions::default().with_kv_separation(Some(
                KvSeparationOptions::default().separation_threshold(KV_SEPARATION_BYTES),
            ))
        })?;
        let ids = db.keyspace("ids", KeyspaceCreateOptions::default)?;
        let expiry = db.keyspace("expiry", KeyspaceCreateOptions::default)?;
        let metas = db.keyspace("metas", KeyspaceCreateOptions::default)?;
        let totals = match metas.get(TOTALS_KEY)? {
            Some(value) => decode_totals(&value).ok_or(Undecodable("totals"))?,
            None => Totals::default(),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            db,
            items,
            ids,
            expiry,
            metas,
            writer: Mutex::new(()),
            totals: RwLock::new(totals),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn keyspace(&self, table: Table) -> &Keyspace {
        match table {
            Table::Items => &self.items,
            Table::Ids => &self.ids,
            Table::Expiry => &self.expiry,
            Table::Metas => &self.metas,
        }
    }

    fn get_meta(&self, mailbox: &MailboxId) -> Result<Option<MailboxMeta>, StoreError> {
        match self
            .metas
            .get(mailbox.as_bytes())
            .map_err(failed("meta read"))?
        {
            Some(value) => Ok(Some(
                decode_meta(&value).ok_or_else(|| undecodable("meta"))?,
            )),
            None => Ok(None),
        }
    }

    fn get_id(&self, mailbox: &MailboxId, blob_id: &BlobId) -> Result<Option<IdEntry>, StoreError> {
        match self
            .ids
            .get(id_key(mailbox, blob_id))
            .map_err(failed("id read"))?
        {
            Some(value) => Ok(Some(decode_id(&value).ok_or_else(|| undecodable("id"))?)),
            None => Ok(None),
        }
    }

    /// Apply `ops` in one batch, durable (`fdatasync` of the journal) before it returns.
    fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        for op in ops {
            match op {
                Op::Put(table, key, value) => batch.insert(self.keyspace(table), key, value),
                Op::Delete(table, key) => batch.remove(self.keyspace(table), key),
            }
        }
        batch.commit().map_err(failed("commit"))
    }
}

impl ItemStore for FjallStore {
    fn budget(&self) -> StoreBudget {
        StoreBudget::unlimited()
    }

    fn meta(&self, mailbox: &MailboxId) -> MailboxMeta {
        self.get_meta(mailbox).ok().flatten().unwrap_or_default()
    }

    fn stats(&self) -> StoreStats {
        // No disk bytes: fjall sums them over every file, and the actor asks after each
        // commit; the bench measures the directory itself.
        read(&self.totals).stats(0)
    }

    fn commit(
        &self,
        requests: &[AppendRequest],
        now_ms: u64,
        limits: &StoreLimits,
        faults: &FaultPlan,
    ) -> Result<CommitPlan, StoreError> {
        let _writer = lock(&self.writer);
        let totals = *read(&self.totals);
        let (plan, ops, after) = plan_ops(
            requests,
            now_ms,
            limits,
            totals,
            |m| self.get_meta(m),
            |m, b| self.get_id(m, b),
        )?;
        if ops.is_empty() {
            return Ok(plan);
        }
        if faults.should_fail(FaultPoint::BeforeStoreWrite) {
            return Err(StoreError::Unavailable("write failed (injected)".into()));
        }
        self.apply(ops)?;
        *write(&self.totals) = after;
        Ok(plan)
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
        let from = item_key(mailbox, after + 1);
        let to = item_key(mailbox, u64::MAX);
        let mut fill = zerok_actors::relay::blob_store::core::PageFill::new(max_items, max_bytes);
        for guard in self.items.range(from..=to) {
            let (key, value) = guard.into_inner().map_err(failed("read"))?;
            let cursor = item_key_cursor(&key).ok_or_else(|| undecodable("item key"))?;
            let item = decode_item(&value).ok_or_else(|| undecodable("item"))?;
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
        let _writer = lock(&self.writer);
        let budget = max_items.max(1) as usize;
        let mut due: Vec<Due> = Vec::new();
        let mut more = false;
        for guard in self.expiry.range(..expiry_end(now_ms)) {
            let (key, value) = guard.into_inner().map_err(failed("expiry read"))?;
            if due.len() == budget {
                more = true;
                break;
            }
            due.push(decode_due(&key, &value).ok_or_else(|| undecodable("expiry"))?);
        }
        if due.is_empty() {
            return Ok(SweepReport::default());
        }
        let totals = *read(&self.totals);
        let (ops, after) = sweep_ops(&due, totals, |m| self.get_meta(m), |m, b| self.get_id(m, b))?;
        self.apply(ops)?;
        *write(&self.totals) = after;
        Ok(SweepReport {
            evicted: due.len() as u64,
            more,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fjall_store_commits_reads_dedups_sweeps_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        super::super::tests::commit_read_duplicate_sweep_reopen(|| {
            FjallStore::open(dir.path()).unwrap()
        });
    }
}
