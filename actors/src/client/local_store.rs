//! LocalStore: the client's durable state on fjall, in the home dir (DESIGN.md §6).
//!
//! One keyspace, key prefixes (one atomic batch per step, one journal sync where durability
//! matters):
//!
//! | key | value |
//! |---|---|
//! | `g` ‖ group | [`GroupRecord`] (CBOR; holds the group secret) |
//! | `o` ‖ group ‖ seq_be | [`OutboxEntry`] (pushes not yet acked by every relay, push order) |
//! | `c` ‖ group ‖ relay | cursor_be: items of the group received from that relay |
//! | `q` ‖ group | the group's [`SeqTracker`] (CBOR) |
//! | `n` ‖ group | next own seq ‖ last hlc |
//! | `b` ‖ group | seq_base_be: own pushes numbered above it are sealed with seq − base |
//! | `r` ‖ group | reserved_be: own seqs up to it may be in use before their record is durable |
//! | `k` | [`KeyFileIdentity`] of `device.key` (CBOR): tells a copied home dir |
//! | `f` ‖ group | the group's founder, a roster [`Member`] (CBOR): groups with a roster |
//! | `m` ‖ group ‖ op_id | a roster [`RosterOp`] (CBOR), every one seen |
//! | `e` ‖ group | where the roster starts for a device admitted after a rekey: the epoch and its members (CBOR) |
//!
//! Own pushes are numbered 1, 2, 3, ... per group in the outbox; the record inside carries
//! that number minus the group's seq base, which is 0 until the device takes a new key (a
//! copied or restored home dir, see [`LocalStore::new_device_key`]), when the new key's records
//! start again at seq 1 while the outbox numbering, and what the old key still has queued,
//! goes on.
//!
//! A push may be sent to relays while its own write is still being synced here, so its seq
//! must never be handed to another record after a crash: the coordinator keeps a durable
//! **seq reservation** ahead of the seqs it sends early ([`LocalStore::reserve_seqs`]), and
//! [`LocalStore::open`] moves the next own seq past any reservation (a store that stopped
//! cleanly released it, so only a crash leaves a gap in the device's seqs, reported to the
//! other devices as `GapDetected`).
//!
//! It belongs to the SyncCoordinator, its only user: every write happens in the coordinator's
//! order. Durability is a **group commit**: a write is applied (to fjall's journal and
//! memtable, atomically), then [`LocalStore::request_flush`] gives it a ticket; one flusher
//! task persists the journal (`fdatasync`) for every write applied before that persist
//! started, and [`LocalStore::watch_durable`] announces the tickets it made durable. So 64
//! concurrent enqueues cost one sync, not 64, and nothing is answered before it is on disk.
//! What nothing waits for (received cursors and trackers, acks) is synced by the next group
//! commit or at most [`BACKGROUND_FLUSH`] after it was written.
//!
//! Why fjall and not sled (which this store used before, DECISIONS.md): a one-record commit
//! cost sled ~200 µs of CPU (its flush rewrites pages, and still needed our own `fdatasync`:
//! sled 0.34 stops at `sync_file_range`), fjall ~33 µs (a journal append and its sync). A
//! store sled wrote is imported at open ([`LocalStore::open`]) and its files removed.
//!
//! No per-record state is kept beyond the outbox: replays are judged by each group's
//! [`SeqTracker`] (bounded per sender), duplicates are skipped before opening by the
//! coordinator's in-memory [`crate::client::seen::SeenIds`]. Stores written before held every seen
//! blob id under `s` ‖ group ‖ blob_id, never pruned; they are removed at open.

use crate::crypto::roster::{EpochId, Member, Op as RosterOp, Roster};
use crate::crypto::seq::SeqTracker;
use crate::fault::{FaultPlan, FaultPoint};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;
use zerok_messages::client::{ClientError, Durable, GroupId, GroupRecord, StoreError};
use zerok_messages::sync::lock;
use zerok_messages::{BlobId, DeviceId, MailboxId};

/// What nothing waits for (received cursors and seq trackers, acks) is on disk at most this
/// long after it was applied: it bounds what a crash hands to the app a second time to about
/// half a second of records (as sled's default background flush did).
pub const BACKGROUND_FLUSH: Duration = Duration::from_millis(500);

/// The fjall database's directory inside the store's.
const KV_DIR: &str = "kv";
/// The keyspace holding everything.
const KEYSPACE: &str = "state";
/// fjall's block cache: the store's working set is the outbox and a few keys per group.
const CACHE_BYTES: u64 = 8 << 20;
/// Memtable bytes before fjall writes a table (fjall's default is 64 MiB): bounds the
/// store's memory.
const MEMTABLE_BYTES: u64 = 16 << 20;
/// A store written by sled (before fjall) has this data file in the store's directory.
const SLED_DATA_FILE: &str = "db";
/// Written last by an import from sled: the import is complete.
const IMPORTED_KEY: &[u8] = b"imported-from-sled";
/// Keys per batch when importing a sled store.
const IMPORT_BATCH_KEYS: usize = 1024;

const FORMAT_KEY: &[u8] = b"v";
const FORMAT: &[u8] = b"zerok-client-1";

/// Called right after every journal sync of the store that succeeded, before anyone is told
/// what it made durable (the chaos harness keeps, with it, an image of what a power cut
/// would leave of the device's disk: fjall has no file-system seam).
#[derive(Clone)]
pub struct SyncHook(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for SyncHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncHook(..)")
    }
}

/// A push waiting for relay acks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// The record's blob id.
    pub blob_id: BlobId,
    /// The sealed envelope.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
    /// Relays that acked it as durable.
    pub acked_by: Vec<DeviceId>,
    /// The mailbox it goes to when that is not the group's current one: a roster operation
    /// sealed in an epoch this device has since left (set when it moved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<zerok_messages::MailboxId>,
}

/// Which file `device.key` is on disk. A copy of a home dir, or a restore from a backup,
/// holds the same key bytes in a new file: a new inode and a new birth time (neither can be
/// set by a copying tool). Comparing them at start tells that this home dir is not the one
/// whose sequence numbers the store remembers, so it must not reuse them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFileIdentity {
    /// Inode number (unix).
    pub inode: Option<u64>,
    /// Birth time, unix nanoseconds, where the filesystem keeps one.
    pub created_unix_ns: Option<u64>,
}

impl KeyFileIdentity {
    /// Read it from the file at `path`.
    pub fn of(path: &Path) -> std::io::Result<KeyFileIdentity> {
        let meta = std::fs::metadata(path)?;
        #[cfg(unix)]
        let inode = Some(std::os::unix::fs::MetadataExt::ino(&meta));
        #[cfg(not(unix))]
        let inode = None;
        let created_unix_ns = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| u64::try_from(d.as_nanos()).ok());
        Ok(KeyFileIdentity {
            inode,
            created_unix_ns,
        })
    }

    /// Whether `other` is this same file (as far as both tell; nothing known = the same).
    pub fn is_same_file(&self, other: &KeyFileIdentity) -> bool {
        let same = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        same(self.inode, other.inode) && same(self.created_unix_ns, other.created_unix_ns)
    }
}

/// A database error as the app is told it.
fn err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Store(StoreError::Db(e.to_string()))
}

fn key(prefix: u8, group: &GroupId, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(33 + rest.len());
    key.push(prefix);
    key.extend_from_slice(group.0.as_bytes());
    key.extend_from_slice(rest);
    key
}

fn cbor<T: Serialize>(value: &T) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(err)?;
    Ok(out)
}

fn uncbor<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ClientError> {
    ciborium::from_reader(bytes).map_err(|_| StoreError::Decode(std::any::type_name::<T>()).into())
}

fn be_u64(bytes: &[u8]) -> u64 {
    bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// What one received batch changes.
#[derive(Debug, Default)]
pub struct ReceivedBatch {
    /// Records that went through the seq tracker (handed to the app or dropped as replays).
    pub observed: usize,
    /// New cursors of relays for the group (a later one of the same relay wins).
    pub cursors: Vec<(DeviceId, u64)>,
    /// The group's tracker after the batch.
    pub tracker: Option<SeqTracker>,
}

/// The group commit's bookkeeping.
#[derive(Debug, Default)]
struct CommitState {
    /// Last ticket handed out.
    requested: u64,
    /// Whether the flusher task runs.
    is_flushing: bool,
}

/// The store: the database, its keyspace and the group commit (see the module doc).
struct Inner {
    db: Database,
    kv: Keyspace,
    state: Mutex<CommitState>,
    durable: watch::Sender<Durable>,
    /// Written since the last persist started (the background flush looks at it).
    dirty: AtomicBool,
    /// Persists run so far.
    flushes: AtomicU64,
    /// Journal `fdatasync`s that succeeded.
    data_syncs: AtomicU64,
    /// Injected faults (tests, the chaos harness): [`FaultPoint::BeforeFlush`] fails a group
    /// commit.
    faults: Mutex<FaultPlan>,
    /// Told of every journal sync that succeeded ([`LocalStore::set_sync_hook`]).
    sync_hook: Mutex<Option<SyncHook>>,
}

impl Inner {
    /// A journal sync succeeded: count it and tell the hook.
    fn synced(&self) {
        self.data_syncs.fetch_add(1, Ordering::Relaxed);
        let hook = lock(&self.sync_hook).clone();
        if let Some(hook) = hook {
            (hook.0)();
        }
    }
}

/// The client's store.
#[derive(Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

impl LocalStore {
    /// Open (or create) the store in `dir`. A store sled wrote there is imported first.
    pub fn open(dir: &Path) -> Result<LocalStore, ClientError> {
        let home = |message: String| ClientError::Home {
            path: dir.display().to_string(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| home(format!("cannot create it: {e}")))?;
        let db = Database::builder(dir.join(KV_DIR))
            .manual_journal_persist(true)
            .cache_size(CACHE_BYTES)
            .worker_threads(1)
            .open()
            .map_err(|e| home(format!("cannot open the local store: {e}")))?;
        let kv = db
            .keyspace(KEYSPACE, || {
                KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
            })
            .map_err(|e| home(format!("cannot open the local store: {e}")))?;
        let store = LocalStore {
            inner: Arc::new(Inner {
                db,
                kv,
                state: Mutex::new(CommitState::default()),
                durable: watch::Sender::new(Durable::default()),
                dirty: AtomicBool::new(false),
                flushes: AtomicU64::new(0),
                data_syncs: AtomicU64::new(0),
                faults: Mutex::new(FaultPlan::none()),
                sync_hook: Mutex::new(None),
            }),
        };
        if dir.join(SLED_DATA_FILE).exists() {
            store
                .import_sled(dir)
                .map_err(|e| home(format!("importing the sled store: {e}")))?;
        }
        match store.get(FORMAT_KEY)? {
            Some(found) if found.as_ref() != FORMAT => {
                return Err(home(format!(
                    "local store format {:?} is not {:?}",
                    String::from_utf8_lossy(&found),
                    String::from_utf8_lossy(FORMAT)
                )));
            }
            Some(_) => {}
            None => {
                store.apply(vec![Op::Put(FORMAT_KEY.to_vec(), FORMAT.to_vec())])?;
                store.persist_now()?;
            }
        }
        store.skip_reserved_seqs()?;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(background_flush(Arc::downgrade(&store.inner)));
        }
        Ok(store)
    }

    /// Import what sled wrote in `dir` (everything but the seen ids older versions kept, see
    /// the module doc), durably, then remove sled's files. A crash midway imports again: the
    /// marker that says it is complete is written last, in the last batch.
    fn import_sled(&self, dir: &Path) -> Result<(), ClientError> {
        if self.get(IMPORTED_KEY)?.is_none() {
            let sled = sled::Config::new().path(dir).open().map_err(err)?;
            let mut ops = Vec::new();
            for entry in sled.iter() {
                let (k, v) = entry.map_err(err)?;
                if k.first() == Some(&b's') {
                    continue;
                }
                ops.push(Op::Put(k.to_vec(), v.to_vec()));
                if ops.len() == IMPORT_BATCH_KEYS {
                    self.apply(std::mem::take(&mut ops))?;
                }
            }
            ops.push(Op::Put(IMPORTED_KEY.to_vec(), Vec::new()));
            self.apply(ops)?;
            self.persist_now()?;
        }
        for entry in std::fs::read_dir(dir).map_err(err)? {
            let entry = entry.map_err(err)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let is_sled = name == SLED_DATA_FILE
                || name == "conf"
                || name == "blobs"
                || name.starts_with("snap.");
            if !is_sled {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).map_err(err)?;
            } else {
                std::fs::remove_file(&path).map_err(err)?;
            }
        }
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<fjall::UserValue>, ClientError> {
        self.inner.kv.get(key).map_err(err)
    }

    /// Every `(key, value)` under `prefix`, in key order.
    fn scan(&self, prefix: &[u8]) -> Result<Vec<(fjall::UserKey, fjall::UserValue)>, ClientError> {
        self.inner
            .kv
            .prefix(prefix)
            .map(|guard| guard.into_inner().map_err(err))
            .collect()
    }

    /// Apply `ops` atomically (not yet durable: see [`LocalStore::request_flush`]).
    fn apply(&self, ops: Vec<Op>) -> Result<(), ClientError> {
        let mut batch = self.inner.db.batch();
        for op in ops {
            match op {
                Op::Put(k, v) => batch.insert(&self.inner.kv, k, v),
                Op::Delete(k) => batch.remove(&self.inner.kv, k),
            }
        }
        batch.commit().map_err(err)?;
        self.inner.dirty.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Sync the journal here (at open, before anything else runs).
    fn persist_now(&self) -> Result<(), ClientError> {
        self.inner.db.persist(PersistMode::SyncData).map_err(err)?;
        self.inner.synced();
        Ok(())
    }

    /// Inject `faults` into this store's group commits (tests and the chaos harness).
    pub fn set_faults(&self, faults: FaultPlan) {
        *lock(&self.inner.faults) = faults;
    }

    /// Tell `hook` of every journal sync from now on; it is called once right away (what the
    /// store holds after its open is on disk: the open synced what it wrote).
    pub fn set_sync_hook(&self, hook: Option<SyncHook>) {
        *lock(&self.inner.sync_hook) = hook.clone();
        if let Some(hook) = hook {
            (hook.0)();
        }
    }

    /// Ask for everything applied so far to become durable; answers its ticket, announced by
    /// [`LocalStore::watch_durable`] once a flush that started after this call completed.
    pub fn request_flush(&self) -> u64 {
        let (ticket, start) = {
            let mut state = lock(&self.inner.state);
            state.requested += 1;
            let start = !state.is_flushing;
            state.is_flushing = true;
            (state.requested, start)
        };
        if start {
            tokio::spawn(flush_loop(Arc::clone(&self.inner)));
        }
        ticket
    }

    /// Flushes the group commit ran since the store was opened.
    pub fn flush_count(&self) -> u64 {
        self.inner.flushes.load(Ordering::Relaxed)
    }

    /// Journal `fdatasync`s so far (one per group-commit flush, and at open).
    pub fn data_syncs(&self) -> u64 {
        self.inner.data_syncs.load(Ordering::Relaxed)
    }

    /// What is durable so far, announced after every flush.
    pub fn watch_durable(&self) -> watch::Receiver<Durable> {
        self.inner.durable.subscribe()
    }

    /// Wait until `ticket` is durable.
    pub async fn wait_durable(&self, ticket: u64) -> Result<(), ClientError> {
        let mut durable = self.watch_durable();
        let reached = durable
            .wait_for(|d| d.through >= ticket || d.error.is_some())
            .await
            .map_err(|_| StoreError::FlusherStopped)?;
        if reached.through >= ticket {
            return Ok(());
        }
        Err(StoreError::Flush(reached.error.clone().unwrap_or_default()).into())
    }

    /// Make everything written so far durable (sharing a flush with concurrent writers).
    pub async fn flush(&self) -> Result<(), ClientError> {
        self.wait_durable(self.request_flush()).await
    }

    /// Every group.
    pub fn groups(&self) -> Result<Vec<(GroupId, GroupRecord)>, ClientError> {
        let mut out = Vec::new();
        for (k, v) in self.scan(b"g")? {
            let id: [u8; 32] = k
                .get(1..33)
                .and_then(|b| b.try_into().ok())
                .ok_or(StoreError::Decode("group key"))?;
            out.push((GroupId(MailboxId(id)), uncbor(&v)?));
        }
        Ok(out)
    }

    /// Insert or replace a group (durable on return).
    pub async fn put_group(&self, id: &GroupId, record: &GroupRecord) -> Result<(), ClientError> {
        self.apply(vec![Op::Put(key(b'g', id, &[]), cbor(record)?)])?;
        self.flush().await
    }

    /// The next own seq and hlc state of a group: `(next_seq, last_hlc)`.
    pub fn own_seq(&self, group: &GroupId) -> Result<(u64, u64), ClientError> {
        Ok(match self.get(&key(b'n', group, &[]))? {
            Some(v) if v.len() == 16 => (be_u64(&v[..8]), be_u64(&v[8..])),
            _ => (1, 0),
        })
    }

    /// The end of the group's seq reservation (0: none).
    pub fn reserved_seqs(&self, group: &GroupId) -> Result<u64, ClientError> {
        Ok(self.get(&key(b'r', group, &[]))?.map_or(0, |v| be_u64(&v)))
    }

    /// Reserve own seqs up to `through`: once the answered flush ticket is durable, records
    /// with those seqs may be sent before their own writes are.
    pub fn reserve_seqs(&self, group: &GroupId, through: u64) -> Result<u64, ClientError> {
        self.apply(vec![Op::Put(
            key(b'r', group, &[]),
            through.to_be_bytes().to_vec(),
        )])?;
        Ok(self.request_flush())
    }

    /// Release every group's reservation beyond the seqs used (a clean stop: everything
    /// sealed is written, nothing is in use that the store does not hold). Durable after the
    /// next flush.
    pub fn release_seqs(&self) -> Result<(), ClientError> {
        let mut batch = Vec::new();
        for (group, _) in self.groups()? {
            let (next_seq, _) = self.own_seq(&group)?;
            if self.reserved_seqs(&group)? >= next_seq {
                batch.push(Op::Put(
                    key(b'r', &group, &[]),
                    (next_seq - 1).to_be_bytes().to_vec(),
                ));
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.apply(batch)
    }

    /// At open: every group's next own seq moves past its reservation (a crash may have left
    /// reserved seqs in use by records sent and never written here).
    fn skip_reserved_seqs(&self) -> Result<(), ClientError> {
        let mut batch = Vec::new();
        for (group, _) in self.groups()? {
            let (next_seq, last_hlc) = self.own_seq(&group)?;
            let reserved = self.reserved_seqs(&group)?;
            if reserved >= next_seq {
                let mut next = [0u8; 16];
                next[..8].copy_from_slice(&(reserved + 1).to_be_bytes());
                next[8..].copy_from_slice(&last_hlc.to_be_bytes());
                batch.push(Op::Put(key(b'n', &group, &[]), next.to_vec()));
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.apply(batch)?;
        self.persist_now()
    }

    /// The group's seq base: own pushes are sealed with their outbox number minus this.
    pub fn seq_base(&self, group: &GroupId) -> Result<u64, ClientError> {
        Ok(self.get(&key(b'b', group, &[]))?.map_or(0, |v| be_u64(&v)))
    }

    /// Record `founder` as the founder of `group`: the group has a roster from now on
    /// (durable with the next group commit; [`LocalStore::flush`] to wait for it).
    pub fn put_founder(&self, group: &GroupId, founder: &Member) -> Result<(), ClientError> {
        self.apply(vec![Op::Put(key(b'f', group, &[]), cbor(founder)?)])
    }

    /// Record where `group`'s roster starts for this device: the epoch it was admitted in
    /// (after a rekey) and that epoch's members as its admission listed them.
    pub fn put_roster_base(
        &self,
        group: &GroupId,
        base: &EpochId,
        members: &[Member],
    ) -> Result<(), ClientError> {
        self.apply(vec![Op::Put(
            key(b'e', group, &[]),
            cbor(&(base, members))?,
        )])
    }

    /// Keep roster operations of `group` (each under its id: one seen twice is kept once).
    pub fn put_roster_ops(&self, group: &GroupId, ops: &[RosterOp]) -> Result<(), ClientError> {
        let mut write = Vec::with_capacity(ops.len());
        for op in ops {
            write.push(Op::Put(key(b'm', group, &op.id()), cbor(op)?));
        }
        self.apply(write)
    }

    /// The roster of `group`: its founder and every operation kept (`None`: a group without
    /// a roster, made before rosters existed).
    pub fn roster(&self, group: &GroupId) -> Result<Option<Roster>, ClientError> {
        let Some(founder) = self.get(&key(b'f', group, &[]))? else {
            return Ok(None);
        };
        let founder: Member = uncbor(&founder)?;
        let mut roster = match self.get(&key(b'e', group, &[]))? {
            Some(base) => {
                let (base, members): (EpochId, Vec<Member>) = uncbor(&base)?;
                Roster::starting_at(founder, base, members)
            }
            None => Roster::new(founder),
        };
        let mut ops = Vec::new();
        for (_, v) in self.scan(&key(b'm', group, &[]))? {
            ops.push(uncbor::<RosterOp>(&v)?);
        }
        roster
            .apply_many(ops)
            .map_err(|e| ClientError::Store(StoreError::Db(e.to_string())))?;
        Ok(Some(roster))
    }

    /// The identity of `device.key` this store was last used with (`None` before the first
    /// start that recorded it).
    pub fn key_file(&self) -> Result<Option<KeyFileIdentity>, ClientError> {
        match self.get(b"k")? {
            Some(v) => Ok(Some(uncbor(&v)?)),
            None => Ok(None),
        }
    }

    /// Record the identity of `device.key` (durable on return).
    pub async fn set_key_file(&self, identity: &KeyFileIdentity) -> Result<(), ClientError> {
        self.apply(vec![Op::Put(b"k".to_vec(), cbor(identity)?)])?;
        self.flush().await
    }

    /// The device took a new key (`identity` is its file) instead of `old` (atomic, durable):
    /// every group's own records start again at seq 1 (the seq base moves to the last own
    /// push; the outbox numbering goes on, so what `old` still has queued keeps its place),
    /// and `old`'s seqs so far count as seen, so its later records (another copy's now) are
    /// received without a false gap.
    pub async fn new_device_key(
        &self,
        old: DeviceId,
        identity: &KeyFileIdentity,
    ) -> Result<(), ClientError> {
        let mut batch = Vec::new();
        for (group, _) in self.groups()? {
            let (next_seq, _) = self.own_seq(&group)?;
            let last_own = next_seq.saturating_sub(1);
            let old_base = self.seq_base(&group)?;
            batch.push(Op::Put(
                key(b'b', &group, &[]),
                last_own.to_be_bytes().to_vec(),
            ));
            let mut tracker = self.tracker(&group)?;
            tracker.mark_seen_through(old, last_own.saturating_sub(old_base));
            batch.push(Op::Put(key(b'q', &group, &[]), cbor(&tracker)?));
        }
        batch.push(Op::Put(b"k".to_vec(), cbor(identity)?));
        self.apply(batch)?;
        self.flush().await
    }

    /// Queue a sealed push and advance the own seq, atomically and durably.
    pub async fn enqueue(
        &self,
        group: &GroupId,
        seq: u64,
        hlc: u64,
        entry: &OutboxEntry,
    ) -> Result<(), ClientError> {
        let ticket = self.enqueue_many(group, &[(seq, hlc, entry.clone())])?;
        self.wait_durable(ticket).await
    }

    /// Queue sealed pushes `(seq, hlc, entry)`, in seq order, and advance the own seq to after
    /// the last, atomically; answers the flush ticket that makes them durable (nothing may be
    /// sent or acknowledged before it is).
    pub fn enqueue_many(
        &self,
        group: &GroupId,
        entries: &[(u64, u64, OutboxEntry)],
    ) -> Result<u64, ClientError> {
        let Some((last_seq, last_hlc, _)) = entries.last() else {
            return Ok(self.request_flush());
        };
        let mut batch = Vec::with_capacity(entries.len() + 1);
        for (seq, _, entry) in entries {
            batch.push(Op::Put(key(b'o', group, &seq.to_be_bytes()), cbor(entry)?));
        }
        let mut next = [0u8; 16];
        next[..8].copy_from_slice(&(last_seq + 1).to_be_bytes());
        next[8..].copy_from_slice(&last_hlc.to_be_bytes());
        batch.push(Op::Put(key(b'n', group, &[]), next.to_vec()));
        self.apply(batch)?;
        Ok(self.request_flush())
    }

    /// The outbox of a group in push order: `(seq, entry)`.
    pub fn outbox(&self, group: &GroupId) -> Result<Vec<(u64, OutboxEntry)>, ClientError> {
        let mut out = Vec::new();
        for (k, v) in self.scan(&key(b'o', group, &[]))? {
            out.push((be_u64(&k[33..]), uncbor(&v)?));
        }
        Ok(out)
    }

    /// One queued push.
    pub fn outbox_entry(
        &self,
        group: &GroupId,
        seq: u64,
    ) -> Result<Option<OutboxEntry>, ClientError> {
        match self.get(&key(b'o', group, &seq.to_be_bytes()))? {
            Some(v) => Ok(Some(uncbor(&v)?)),
            None => Ok(None),
        }
    }

    /// Record that the push `seq` is acked by `acked_by`; drop it when every relay in `all`
    /// acked.
    pub fn ack(
        &self,
        group: &GroupId,
        seq: u64,
        acked_by: &[DeviceId],
        all: &[DeviceId],
    ) -> Result<bool, ClientError> {
        let k = key(b'o', group, &seq.to_be_bytes());
        let done = all.iter().all(|relay| acked_by.contains(relay));
        if done {
            self.apply(vec![Op::Delete(k)])?;
        } else if let Some(mut entry) = self.outbox_entry(group, seq)? {
            entry.acked_by = acked_by.to_vec();
            self.apply(vec![Op::Put(k, cbor(&entry)?)])?;
        }
        Ok(done)
    }

    /// The cursor of `relay` for `group` (0 when never synced).
    pub fn cursor(&self, group: &GroupId, relay: &DeviceId) -> Result<u64, ClientError> {
        Ok(self
            .get(&key(b'c', group, relay.as_bytes()))?
            .map_or(0, |v| be_u64(&v)))
    }

    /// Forget a relay's cursor (after the relay was removed or lost its data).
    pub fn reset_cursor(&self, group: &GroupId, relay: &DeviceId) -> Result<(), ClientError> {
        self.apply(vec![Op::Delete(key(b'c', group, relay.as_bytes()))])
    }

    /// Move `group` to a new epoch, atomically: its `record` (the new epoch's secret, the
    /// left one among its past), its queued pushes sealed again under the new epoch
    /// (`resealed`, their acks forgotten) and its relays' cursors, which now belong to the
    /// left epoch's mailbox `left` (the new mailbox is read from its start). Durable once
    /// the answered ticket is.
    pub fn switch_epoch(
        &self,
        group: &GroupId,
        record: &GroupRecord,
        resealed: &[(u64, OutboxEntry)],
        left: &GroupId,
        relays: &[DeviceId],
    ) -> Result<u64, ClientError> {
        let mut write = vec![Op::Put(key(b'g', group, &[]), cbor(record)?)];
        for (seq, entry) in resealed {
            write.push(Op::Put(key(b'o', group, &seq.to_be_bytes()), cbor(entry)?));
        }
        for relay in relays {
            let cursor = self.cursor(group, relay)?;
            if cursor > 0 {
                write.push(Op::Put(
                    key(b'c', left, relay.as_bytes()),
                    cursor.to_be_bytes().to_vec(),
                ));
            }
            write.push(Op::Delete(key(b'c', group, relay.as_bytes())));
        }
        self.apply(write)?;
        Ok(self.request_flush())
    }

    /// The group's sequence tracker.
    pub fn tracker(&self, group: &GroupId) -> Result<SeqTracker, ClientError> {
        match self.get(&key(b'q', group, &[]))? {
            Some(v) => uncbor(&v),
            None => Ok(SeqTracker::new()),
        }
    }

    /// Persist what a received batch changed, atomically, then flush.
    pub async fn received(
        &self,
        group: &GroupId,
        batch: &ReceivedBatch,
    ) -> Result<(), ClientError> {
        self.apply_received(group, batch)?;
        self.flush().await
    }

    /// Apply what a received batch changed, atomically, without asking for a flush: the
    /// background flush (within [`BACKGROUND_FLUSH`]), the next group commit or an explicit
    /// [`LocalStore::flush`] makes it durable.
    pub fn apply_received(
        &self,
        group: &GroupId,
        batch: &ReceivedBatch,
    ) -> Result<(), ClientError> {
        self.apply_received_from(group, group, batch)
    }

    /// [`LocalStore::apply_received`] for a batch read from `stream` (the mailbox of one of
    /// the group's past epochs, keyed by its id; the group itself for the current one): the
    /// cursors are the stream's, the tracker the group's.
    pub fn apply_received_from(
        &self,
        group: &GroupId,
        stream: &GroupId,
        batch: &ReceivedBatch,
    ) -> Result<(), ClientError> {
        let mut write = Vec::with_capacity(batch.cursors.len() + 1);
        for (relay, cursor) in &batch.cursors {
            write.push(Op::Put(
                key(b'c', stream, relay.as_bytes()),
                cursor.to_be_bytes().to_vec(),
            ));
        }
        if let Some(tracker) = &batch.tracker {
            write.push(Op::Put(key(b'q', group, &[]), cbor(tracker)?));
        }
        self.apply(write)
    }
}

/// One write of a batch.
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// The flusher: one journal sync after another while tickets wait; each covers every write
/// applied before it started.
async fn flush_loop(inner: Arc<Inner>) {
    loop {
        let target = lock(&inner.state).requested;
        inner.dirty.store(false, Ordering::Relaxed);
        let db = inner.db.clone();
        let synced = if lock(&inner.faults).should_fail(FaultPoint::BeforeFlush) {
            Err("fault injected: the journal sync fails".to_owned())
        } else {
            match crate::exec::blocking(move || db.persist(PersistMode::SyncData)).await {
                Ok(Ok(())) => {
                    inner.synced();
                    Ok(())
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        inner.flushes.fetch_add(1, Ordering::Relaxed);
        inner.durable.send_modify(|durable| match synced {
            Ok(()) if durable.error.is_none() => durable.through = target,
            Ok(()) => {}
            Err(ref error) => durable.error = Some(error.clone()),
        });
        let mut state = lock(&inner.state);
        if state.requested == target {
            state.is_flushing = false;
            return;
        }
    }
}

/// Every [`BACKGROUND_FLUSH`], a group commit if anything was written since the last one;
/// ends with the store.
async fn background_flush(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(BACKGROUND_FLUSH).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.dirty.load(Ordering::Relaxed) {
            LocalStore { inner }.request_flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_group_commit_ends_in_an_fdatasync_of_the_data_file() {
        let dir = tempfile::tempdir().expect("dir");
        let store = LocalStore::open(dir.path()).expect("open");
        let before = store.data_syncs();
        store
            .put_group(
                &group(),
                &GroupRecord {
                    name: "g".into(),
                    secret: [1; 32],
                    epoch: 0,
                    relays: Vec::new(),
                    passphrase_salt: None,
                    admissions: Default::default(),
                    origin: Vec::new(),
                    past: Vec::new(),
                    removed: false,
                },
            )
            .await
            .expect("put");
        store.flush().await.expect("flush");
        // Durable means the journal was synced.
        assert!(store.data_syncs() > before);
        assert!(dir.path().join(KV_DIR).is_dir());
    }

    fn group() -> GroupId {
        GroupId(MailboxId([3; 32]))
    }

    #[tokio::test]
    async fn outbox_keeps_push_order_and_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let store = LocalStore::open(dir.path()).expect("open");
            for seq in [1u64, 2, 300] {
                let entry = OutboxEntry {
                    blob_id: BlobId([seq as u8; 32]),
                    ciphertext: vec![seq as u8; 4],
                    acked_by: vec![],
                    mailbox: None,
                };
                store
                    .enqueue(&group(), seq, seq * 10, &entry)
                    .await
                    .expect("enqueue");
            }
            assert_eq!(store.own_seq(&group()).expect("seq"), (301, 3000));
        }
        let store = LocalStore::open(dir.path()).expect("reopen");
        let outbox = store.outbox(&group()).expect("outbox");
        let seqs: Vec<u64> = outbox.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![1, 2, 300]);
        let (seq, mut entry) = outbox[0].clone();
        let relays = [DeviceId([1; 32]), DeviceId([2; 32])];
        entry.acked_by.push(relays[0]);
        assert!(
            !store
                .ack(&group(), seq, &entry.acked_by, &relays)
                .expect("ack")
        );
        assert_eq!(
            store.outbox_entry(&group(), seq).expect("entry"),
            Some(entry.clone()),
            "the ack is kept with the entry"
        );
        entry.acked_by.push(relays[1]);
        assert!(
            store
                .ack(&group(), seq, &entry.acked_by, &relays)
                .expect("ack")
        );
        assert_eq!(store.outbox(&group()).expect("outbox").len(), 2);
    }

    fn entry(n: u64) -> OutboxEntry {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&n.to_be_bytes());
        OutboxEntry {
            blob_id: BlobId(id),
            ciphertext: vec![1; 16],
            acked_by: vec![],
            mailbox: None,
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_enqueues_share_one_flush_and_each_is_durable_on_return() {
        let dir = tempfile::tempdir().expect("dir");
        let store = LocalStore::open(dir.path()).expect("open");
        let before = store.flush_count();
        let tasks: Vec<_> = (1..=64u64)
            .map(|seq| {
                let store = store.clone();
                tokio::spawn(async move { store.enqueue(&group(), seq, seq, &entry(seq)).await })
            })
            .collect();
        for task in tasks {
            task.await.expect("task").expect("enqueue");
        }
        let flushes = store.flush_count() - before;
        assert!(
            (1..=4).contains(&flushes),
            "64 concurrent enqueues took {flushes} flushes"
        );
        // Durable on return means the flusher finished a flush for each of them.
        let durable = store.watch_durable().borrow().clone();
        assert!(
            durable.through >= 64 && durable.error.is_none(),
            "{durable:?}"
        );
        drop(store);
        let store = LocalStore::open(dir.path()).expect("reopen");
        assert_eq!(store.outbox(&group()).expect("outbox").len(), 64);
    }

    #[tokio::test]
    async fn enqueue_many_writes_in_order_and_advances_the_own_seq_past_the_last() {
        let dir = tempfile::tempdir().expect("dir");
        let store = LocalStore::open(dir.path()).expect("open");
        let entries: Vec<_> = (5..15u64).map(|seq| (seq, seq * 100, entry(seq))).collect();
        let ticket = store.enqueue_many(&group(), &entries).expect("enqueue");
        store.wait_durable(ticket).await.expect("durable");
        assert_eq!(store.own_seq(&group()).expect("seq"), (15, 1400));
        let seqs: Vec<u64> = store
            .outbox(&group())
            .expect("outbox")
            .into_iter()
            .map(|(seq, _)| seq)
            .collect();
        assert_eq!(seqs, (5..15).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn a_store_sled_wrote_is_imported_without_its_seen_ids_and_its_files_removed() {
        let dir = tempfile::tempdir().expect("dir");
        let record = GroupRecord {
            name: "old".into(),
            secret: [5; 32],
            epoch: 0,
            relays: vec!["r".into()],
            passphrase_salt: None,
            admissions: Default::default(),
            origin: Vec::new(),
            past: Vec::new(),
            removed: false,
        };
        {
            // As the store wrote it with sled: format, a group, its own seq, two queued
            // pushes, and one key per blob id ever seen (never pruned).
            let sled = sled::Config::new().path(dir.path()).open().expect("sled");
            sled.insert(FORMAT_KEY, FORMAT).expect("insert");
            sled.insert(key(b'g', &group(), &[]), cbor(&record).expect("cbor"))
                .expect("insert");
            let mut next = [0u8; 16];
            next[..8].copy_from_slice(&3u64.to_be_bytes());
            next[8..].copy_from_slice(&20u64.to_be_bytes());
            sled.insert(key(b'n', &group(), &[]), next.to_vec())
                .expect("insert");
            for seq in 1..=2u64 {
                sled.insert(
                    key(b'o', &group(), &seq.to_be_bytes()),
                    cbor(&entry(seq)).expect("cbor"),
                )
                .expect("insert");
            }
            for n in 0..10u64 {
                sled.insert(key(b's', &group(), entry(n).blob_id.as_bytes()), Vec::new())
                    .expect("insert");
            }
            sled.flush().expect("flush");
        }
        assert!(dir.path().join(SLED_DATA_FILE).exists());
        for reopen in 0..2 {
            let store = LocalStore::open(dir.path()).expect("open");
            assert_eq!(
                store.groups().expect("groups"),
                vec![(group(), record.clone())]
            );
            assert_eq!(
                store.own_seq(&group()).expect("seq"),
                (3, 20),
                "open {reopen}"
            );
            let outbox = store.outbox(&group()).expect("outbox");
            assert_eq!(outbox, vec![(1, entry(1)), (2, entry(2))]);
            assert!(
                store.scan(b"s").expect("scan").is_empty(),
                "seen ids dropped"
            );
            assert!(
                !dir.path().join(SLED_DATA_FILE).exists(),
                "sled's files removed"
            );
            assert!(!dir.path().join("conf").exists());
        }
    }

    #[tokio::test]
    async fn received_batches_write_no_per_record_keys() {
        let dir = tempfile::tempdir().expect("dir");
        let store = LocalStore::open(dir.path()).expect("open");
        let keys_before = store.scan(b"").expect("scan").len();
        let relay = DeviceId([9; 32]);
        let mut tracker = SeqTracker::new();
        for page in 0..10u64 {
            for seq in 1..=1000 {
                tracker.observe(DeviceId([1; 32]), page * 1000 + seq);
            }
            store
                .apply_received(
                    &group(),
                    &ReceivedBatch {
                        observed: 1000,
                        cursors: vec![(relay, (page + 1) * 1000)],
                        tracker: Some(tracker.clone()),
                    },
                )
                .expect("apply");
            store.flush().await.expect("durable");
        }
        // 10,000 records received: a cursor and a tracker, nothing per record.
        assert_eq!(store.scan(b"").expect("scan").len(), keys_before + 2);
        assert_eq!(store.cursor(&group(), &relay).expect("cursor"), 10_000);
    }

    #[tokio::test]
    async fn received_batches_persist_cursor_and_tracker_together() {
        let dir = tempfile::tempdir().expect("dir");
        let store = LocalStore::open(dir.path()).expect("open");
        let relay = DeviceId([9; 32]);
        let mut tracker = SeqTracker::new();
        tracker.observe(DeviceId([1; 32]), 1);
        store
            .received(
                &group(),
                &ReceivedBatch {
                    observed: 1,
                    cursors: vec![(relay, 42)],
                    tracker: Some(tracker.clone()),
                },
            )
            .await
            .expect("received");
        assert_eq!(store.cursor(&group(), &relay).expect("cursor"), 42);
        assert_eq!(store.tracker(&group()).expect("tracker"), tracker);
        let record = group_record();
        store.put_group(&group(), &record).await.expect("put");
        let groups = store.groups().expect("groups");
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].1, record);
        assert!(
            !format!("{record:?}").contains("7, 7"),
            "secret not in Debug"
        );
    }

    fn group_record() -> GroupRecord {
        GroupRecord {
            name: "g".into(),
            secret: [7; 32],
            epoch: 0,
            relays: vec!["x".into()],
            passphrase_salt: None,
            admissions: Default::default(),
            origin: Vec::new(),
            past: Vec::new(),
            removed: false,
        }
    }

    #[tokio::test]
    async fn a_store_reopened_after_a_crash_never_hands_out_a_reserved_seq_again() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let store = LocalStore::open(dir.path()).expect("open");
            store
                .put_group(&group(), &group_record())
                .await
                .expect("put");
            let ticket = store.reserve_seqs(&group(), 100).expect("reserve");
            store.wait_durable(ticket).await.expect("durable");
            assert_eq!(store.reserved_seqs(&group()).expect("reserved"), 100);
            // Seqs 1..=3 written (they may have been sent before this write is durable);
            // then a crash: no release.
            let entries: Vec<_> = (1..=3u64).map(|seq| (seq, seq, entry(seq))).collect();
            let ticket = store.enqueue_many(&group(), &entries).expect("enqueue");
            store.wait_durable(ticket).await.expect("durable");
        }
        {
            let store = LocalStore::open(dir.path()).expect("reopen");
            // Past every reserved seq, whichever of them reached a relay; the hlc is kept.
            assert_eq!(store.own_seq(&group()).expect("seq"), (101, 3));
            // A clean stop releases what was not used: the next start goes on at the next seq.
            let entries: Vec<_> = (101..=102u64).map(|seq| (seq, seq, entry(seq))).collect();
            store.enqueue_many(&group(), &entries).expect("enqueue");
            let ticket = store.reserve_seqs(&group(), 500).expect("reserve");
            store.wait_durable(ticket).await.expect("durable");
            store.release_seqs().expect("release");
            store.flush().await.expect("flush");
            assert_eq!(store.reserved_seqs(&group()).expect("reserved"), 102);
        }
        let store = LocalStore::open(dir.path()).expect("reopen");
        assert_eq!(store.own_seq(&group()).expect("seq"), (103, 102));
    }

    #[tokio::test]
    async fn an_injected_flush_fault_fails_the_commit_and_every_later_one() {
        let dir = tempfile::tempdir().expect("dir");
        let store = LocalStore::open(dir.path()).expect("open");
        let faults = FaultPlan::seeded(1);
        faults.set(FaultPoint::BeforeFlush, 1.0);
        store.set_faults(faults.clone());
        let ticket = store
            .enqueue_many(&group(), &[(1, 1, entry(1))])
            .expect("enqueue");
        assert!(store.wait_durable(ticket).await.is_err());
        assert_eq!(faults.fired(FaultPoint::BeforeFlush), 1);
        // A journal that failed a sync is not trusted again (its pages may be lost).
        store.set_faults(FaultPlan::none());
        assert!(store.flush().await.is_err());
    }

    #[tokio::test]
    async fn the_sync_hook_hears_every_sync_before_its_waiters_and_no_failed_one() {
        let dir = tempfile::tempdir().expect("dir");
        let store = LocalStore::open(dir.path()).expect("open");
        let calls = Arc::new(AtomicU64::new(0));
        // What the hook saw announced as durable when it ran: never the ticket it covers.
        let durable_at_call = Arc::new(Mutex::new(Vec::new()));
        let watch = store.watch_durable();
        let hook = {
            let (calls, seen) = (Arc::clone(&calls), Arc::clone(&durable_at_call));
            SyncHook(Arc::new(move || {
                calls.fetch_add(1, Ordering::Relaxed);
                lock(&seen).push(watch.borrow().through);
            }))
        };
        store.set_sync_hook(Some(hook));
        assert_eq!(calls.load(Ordering::Relaxed), 1, "called once when set");
        for seq in 1..=3u64 {
            let before = lock(&durable_at_call).len();
            let ticket = store
                .enqueue_many(&group(), &[(seq, seq, entry(seq))])
                .expect("enqueue");
            store.wait_durable(ticket).await.expect("durable");
            // The first sync after the write (the ticket's own, or a background flush's)
            // told the hook before it announced the write durable.
            let seen = lock(&durable_at_call).clone();
            assert!(seen.len() > before, "the sync was told");
            assert!(seen[before] < ticket, "told before its waiters: {seen:?}");
        }
        let faults = FaultPlan::seeded(1);
        faults.set(FaultPoint::BeforeFlush, 1.0);
        store.set_faults(faults);
        let told = calls.load(Ordering::Relaxed);
        assert!(store.flush().await.is_err());
        assert_eq!(
            calls.load(Ordering::Relaxed),
            told,
            "a failed sync is not told"
        );
    }

    #[tokio::test]
    async fn a_roster_survives_a_restart_and_a_group_without_a_founder_has_none() {
        use crate::crypto::roster::{Change, EpochId};
        let dir = tempfile::tempdir().expect("dir");
        let member = |n: u8| Member {
            device: DeviceId([n; 32]),
            wrap_key: [n; 32],
            name: format!("d{n}"),
            added_by: DeviceId([1; 32]),
            added_at_ms: 0,
            via: None,
            recovery: None,
        };
        let add = |device: u8| RosterOp {
            author: DeviceId([1; 32]),
            epoch: EpochId::GENESIS,
            at_ms: 7,
            change: Change::Add {
                device: DeviceId([device; 32]),
                wrap_key: [device; 32],
                name: format!("d{device}"),
                via: None,
                recovery: None,
                endorsed: None,
            },
        };
        {
            let store = LocalStore::open(dir.path()).expect("open");
            assert!(store.roster(&group()).expect("read").is_none());
            store.put_founder(&group(), &member(1)).expect("founder");
            store
                .put_roster_ops(&group(), &[add(2), add(3)])
                .expect("ops");
            store.put_roster_ops(&group(), &[add(2)]).expect("again");
            store.flush().await.expect("durable");
        }
        let store = LocalStore::open(dir.path()).expect("reopen");
        let roster = store.roster(&group()).expect("read").expect("a roster");
        assert_eq!(roster.founder(), &member(1));
        assert_eq!(roster.ops().count(), 2);
        let members: Vec<u8> = roster.members().map(|m| m.device.0[0]).collect();
        assert_eq!(members, vec![1, 2, 3]);
    }
}
