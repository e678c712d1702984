//! ContentService: sealed files over iroh-blobs, under RelayRoot (DESIGN.md §4 "Large
//! content").
//!
//! Clients seal a file in chunks ([`crate::crypto::content`]); the ciphertext is what
//! iroh-blobs hashes, stores and streams, so the relay verifies every byte against BLAKE3
//! and never sees plaintext or the plaintext's hash. The files live in an iroh-blobs
//! `FsStore` in `content/` of the data dir, served under iroh-blobs' own ALPN on the
//! relay's endpoint: the accept loop hands those connections here
//! ([`crate::link::iroh::BlobsConnection`]).
//!
//! Who may do what is decided on the zerok connection, where the device proved the
//! mailbox's Join: `ContentOffer` records `(mailbox, hash)` with its size and expiry in the
//! index (`content-index/`, fjall) and grants that device a push of the bytes the mailbox
//! is missing; `ContentOpen` grants it a fetch of content held complete for that mailbox.
//! A grant is for one device, one hash, one direction, and lasts [`GRANT_TTL`]. The
//! provider's events are intercepted: a connection of a device with no grant is refused,
//! a get or push needs its grant, a push must cover exactly the granted range (from the
//! mailbox's verified prefix to the offered size, so a device cannot write more than it
//! offered, nor claim content another mailbox uploaded without sending all of it).
//!
//! Bounds: every file counts against its mailbox's content quota (each mailbox pays for
//! what it offered) and, once, against the relay's content budget; a file's size is capped;
//! a mailbox holds at most [`ENTRIES_PER_MAILBOX_MAX`] files; the provider serves at most
//! `connections_max` connections at once (each also holds its per-source slot), one request
//! at a time each (the endpoint's one-stream QUIC limit). Observe and get-many requests are
//! disabled. Entries expire with their TTL unless offered again; the sweep forgets them and
//! the store's GC then deletes the bytes no entry protects.

use crate::clock::Clock;
use crate::link::iroh::BlobsConnection;
use crate::relay::metrics::RelayMetrics;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use iroh_blobs::Hash;
use iroh_blobs::api::Store;
use iroh_blobs::api::blobs::BlobStatus;
use iroh_blobs::protocol::{ChunkRanges, ChunkRangesExt, ChunkRangesSeq};
use iroh_blobs::provider::events::{
    AbortReason, ConnectMode, EventMask, EventSender, ObserveMode, ProviderMessage, RequestMode,
    RequestUpdate, ThrottleMode, TransferAborted, TransferCompleted,
};
use iroh_blobs::store::fs::FsStore;
use iroh_blobs::store::fs::options::{Options, PathOptions};
use iroh_blobs::store::{GcConfig, ProtectOutcome};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};
use zerok_messages::relay::{ContentGrant, ContentMsg, ContentRefusal, ContentStats};
use zerok_messages::sync::lock;
use zerok_messages::{BlobId, DeviceId, MailboxId};

/// How long a grant lets its device start the transfer.
pub const GRANT_TTL: Duration = Duration::from_secs(600);
/// Files one mailbox may hold on a relay.
pub const ENTRIES_PER_MAILBOX_MAX: usize = 65_536;
/// While a push runs, what it wrote is synced this often.
const PUSH_SYNC_EVERY: Duration = Duration::from_millis(250);
/// Longest the store keeps a write transaction open (iroh-blobs' default is 500 ms): a
/// push's partial entry is committed, so found again after a crash, this soon after its
/// first bytes.
const PARTIAL_COMMIT_WITHIN: Duration = Duration::from_millis(100);
/// How often a running push checks whether its partial entry was committed yet.
const PARTIAL_CHECK_EVERY: Duration = Duration::from_millis(50);
/// Grants held at once (a device cannot make the relay remember unbounded grants).
pub const GRANTS_MAX: usize = 65_536;
/// BLAKE3 chunk of iroh-blobs' ranges.
const BLAKE3_CHUNK: u64 = 1024;
/// The index's keyspace.
const KEYSPACE: &str = "content";
/// The store's directory in the data dir.
pub const CONTENT_DIR: &str = "content";
/// The index's directory in the data dir.
pub const CONTENT_INDEX_DIR: &str = "content-index";

/// Settings of the content service.
#[derive(Debug, Clone)]
pub struct ContentConfig {
    /// Bytes of files one mailbox may hold.
    pub mailbox_quota_bytes: u64,
    /// Bytes of distinct files the relay holds in total.
    pub budget_bytes: u64,
    /// Largest file.
    pub file_bytes_max: u64,
    /// TTL when an offer names none.
    pub ttl_default: Duration,
    /// Largest TTL.
    pub ttl_max: Duration,
    /// How often expired entries are forgotten.
    pub sweep_interval: Duration,
    /// How often the store deletes bytes no entry protects.
    pub gc_interval: Duration,
    /// iroh-blobs connections served at once.
    pub connections_max: usize,
    /// A new file is refused while the data dir's file system would keep less free space
    /// than this after it (the record store's floor: files never starve records of disk).
    pub min_free_disk_bytes: u64,
}

impl Default for ContentConfig {
    fn default() -> Self {
        Self {
            mailbox_quota_bytes: 10 * 1024 * 1024 * 1024,
            budget_bytes: 100 * 1024 * 1024 * 1024,
            file_bytes_max: 8 * 1024 * 1024 * 1024,
            ttl_default: Duration::from_secs(7 * 24 * 3600),
            ttl_max: Duration::from_secs(30 * 24 * 3600),
            sweep_interval: Duration::from_secs(60),
            gc_interval: Duration::from_secs(300),
            connections_max: 64,
            min_free_disk_bytes: 0,
        }
    }
}

/// Why the content store did not open.
#[derive(Debug, thiserror::Error)]
pub enum ContentOpenError {
    /// The index.
    #[error("content index {path}: {message}")]
    Index {
        /// Its directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The iroh-blobs store.
    #[error("content store {path}: {message}")]
    Store {
        /// Its directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// One file held for one mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    size: u64,
    expires_ms: u64,
    /// The mailbox's bytes are all here: a device of it pushed them, or no other mailbox
    /// holds the file (so every byte came from this one's pushes).
    uploaded: bool,
}

impl Entry {
    const ENCODED: usize = 17;

    fn encode(&self) -> [u8; Self::ENCODED] {
        let mut out = [0; Self::ENCODED];
        out[..8].copy_from_slice(&self.size.to_be_bytes());
        out[8..16].copy_from_slice(&self.expires_ms.to_be_bytes());
        out[16] = u8::from(self.uploaded);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Entry> {
        let bytes: &[u8; Self::ENCODED] = bytes.try_into().ok()?;
        Some(Entry {
            size: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            expires_ms: u64::from_be_bytes(bytes[8..16].try_into().ok()?),
            uploaded: bytes[16] == 1,
        })
    }
}

fn entry_key(mailbox: &MailboxId, hash: &BlobId) -> [u8; 64] {
    let mut key = [0; 64];
    key[..32].copy_from_slice(&mailbox.0);
    key[32..].copy_from_slice(&hash.0);
    key
}

/// What a grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Push the chunks `from_chunk..end_chunk`, which hold `bytes` of the file.
    Push {
        from_chunk: u64,
        end_chunk: u64,
        bytes: u64,
    },
    /// Fetch any range.
    Get,
}

#[derive(Debug, Clone, Copy)]
struct Grant {
    mailbox: MailboxId,
    direction: Direction,
    expires: tokio::time::Instant,
}

/// The entries, what they hold, and the live grants: shared by the actor, the provider's
/// event task and the store's GC.
#[derive(Default)]
struct Shared {
    entries: BTreeMap<(MailboxId, BlobId), Entry>,
    /// The entries by expiry: what expired is found without a scan of every entry (a
    /// relay at its budget sweeps before each new file it would refuse).
    by_expiry: BTreeSet<(u64, (MailboxId, BlobId))>,
    /// Per file: its size and how many mailboxes hold it.
    files: HashMap<BlobId, (u64, u32)>,
    bytes: u64,
    grants: HashMap<(DeviceId, BlobId), Grant>,
    /// iroh-blobs connection id → the device it is from.
    connections: HashMap<u64, DeviceId>,
}

impl Shared {
    /// Add an entry, or replace one (a new expiry, counted uploaded).
    fn insert(&mut self, key: (MailboxId, BlobId), entry: Entry) {
        match self.entries.insert(key, entry) {
            None => {
                let file = self.files.entry(key.1).or_insert((entry.size, 0));
                if file.1 == 0 {
                    self.bytes += entry.size;
                }
                file.1 += 1;
            }
            Some(old) => {
                self.by_expiry.remove(&(old.expires_ms, key));
            }
        }
        self.by_expiry.insert((entry.expires_ms, key));
    }

    fn remove(&mut self, key: &(MailboxId, BlobId)) {
        let Some(old) = self.entries.remove(key) else {
            return;
        };
        self.by_expiry.remove(&(old.expires_ms, *key));
        if let Some(file) = self.files.get_mut(&key.1) {
            file.1 -= 1;
            if file.1 == 0 {
                self.bytes -= file.0;
                self.files.remove(&key.1);
            }
        }
    }

    /// The entries expired at `now_ms`, from the expiry index.
    fn expired(&self, now_ms: u64) -> Vec<(MailboxId, BlobId)> {
        let first = (MailboxId([0; 32]), BlobId([0; 32]));
        self.by_expiry
            .range(..(now_ms.saturating_add(1), first))
            .map(|(_, key)| *key)
            .collect()
    }

    /// Bytes and files of a mailbox's live entries (an expired one no longer counts, swept
    /// or not).
    fn mailbox_usage(&self, mailbox: &MailboxId, now_ms: u64) -> (u64, usize) {
        self.entries
            .range((*mailbox, BlobId([0; 32]))..=(*mailbox, BlobId([0xff; 32])))
            .filter(|(_, e)| e.expires_ms > now_ms)
            .fold((0, 0), |(bytes, count), (_, e)| (bytes + e.size, count + 1))
    }

    fn grant(&mut self, device: DeviceId, hash: BlobId, grant: Grant) {
        if self.grants.len() >= GRANTS_MAX {
            let now = tokio::time::Instant::now();
            self.grants.retain(|_, g| g.expires > now);
        }
        if self.grants.len() < GRANTS_MAX || self.grants.contains_key(&(device, hash)) {
            self.grants.insert((device, hash), grant);
        }
    }

    fn live_grant(&self, device: &DeviceId, hash: &BlobId) -> Option<Grant> {
        let grant = self.grants.get(&(*device, *hash))?;
        (grant.expires > tokio::time::Instant::now()).then_some(*grant)
    }
}

/// The opened store and index, handed to the actor.
pub struct ContentService {
    dir: PathBuf,
    paths: PathOptions,
    store: FsStore,
    db: Database,
    ks: Keyspace,
    shared: Arc<Mutex<Shared>>,
}

impl ContentService {
    /// Open (or create) the store in `data_dir/content` and the index in
    /// `data_dir/content-index`.
    pub async fn open(data_dir: &Path, config: &ContentConfig) -> Result<Self, ContentOpenError> {
        let index_dir = data_dir.join(CONTENT_INDEX_DIR);
        let index_err = |e: fjall::Error| ContentOpenError::Index {
            path: index_dir.clone(),
            message: e.to_string(),
        };
        let db = Database::builder(&index_dir)
            .cache_size(8 * 1024 * 1024)
            .worker_threads(1)
            .open()
            .map_err(index_err)?;
        let ks = db
            .keyspace(KEYSPACE, KeyspaceCreateOptions::default)
            .map_err(index_err)?;
        let mut shared = Shared::default();
        for guard in ks.iter() {
            let (key, value) = guard.into_inner().map_err(index_err)?;
            let (Ok(mailbox), Ok(hash)) = (
                <[u8; 32]>::try_from(&key[..32.min(key.len())]),
                <[u8; 32]>::try_from(&key[32.min(key.len())..]),
            ) else {
                continue;
            };
            if let Some(entry) = Entry::decode(&value) {
                shared.insert((MailboxId(mailbox), BlobId(hash)), entry);
            }
        }
        let shared = Arc::new(Mutex::new(shared));
        let dir = data_dir.join(CONTENT_DIR);
        let mut options = Options::new(&dir);
        options.batch.max_write_duration = PARTIAL_COMMIT_WITHIN;
        let paths = options.path.clone();
        let protected = Arc::clone(&shared);
        options.gc = Some(GcConfig {
            interval: config.gc_interval,
            add_protected: Some(Arc::new(move |live: &mut HashSet<Hash>| {
                live.extend(lock(&protected).files.keys().map(|h| Hash::from_bytes(h.0)));
                Box::pin(async { ProtectOutcome::Continue })
            })),
        });
        let store = FsStore::load_with_opts(dir.join("blobs.db"), options)
            .await
            .map_err(|e| ContentOpenError::Store {
                path: dir.clone(),
                message: e.to_string(),
            })?;
        Ok(ContentService {
            dir,
            paths,
            store,
            db,
            ks,
            shared,
        })
    }
}

/// The service's actor type.
pub struct ContentActor;

/// What the actor needs.
pub struct ContentArgs {
    /// The opened store and index.
    pub service: ContentService,
    /// Settings.
    pub config: ContentConfig,
    /// iroh-blobs connections from the accept loop.
    pub connections: mpsc::Receiver<BlobsConnection>,
    /// Wall time (expiry).
    pub clock: Clock,
    /// Metrics.
    pub metrics: RelayMetrics,
}

/// Actor state.
pub struct ContentState {
    service: ContentService,
    config: ContentConfig,
    clock: Clock,
    metrics: RelayMetrics,
    tasks: Vec<JoinHandle<()>>,
}

fn events_mask() -> EventMask {
    EventMask {
        connected: ConnectMode::Intercept,
        get: RequestMode::InterceptLog,
        get_many: RequestMode::Disabled,
        push: RequestMode::InterceptLog,
        observe: ObserveMode::None,
        throttle: ThrottleMode::None,
    }
}

/// Decides the provider's events against the grants, and counts the bytes that completed
/// pushes brought and gets sent (`moved`, by direction).
async fn judge_events(
    mut events: mpsc::Receiver<ProviderMessage>,
    shared: Arc<Mutex<Shared>>,
    store: Store,
    paths: PathOptions,
    actor: ActorRef<ContentMsg>,
    moved: prometheus::IntCounterVec,
) {
    let refuse = Err(AbortReason::Permission);
    while let Some(event) = events.recv().await {
        match event {
            ProviderMessage::ClientConnected(msg) => {
                let device = msg.inner.endpoint_id.map(|id| DeviceId(*id.as_bytes()));
                let verdict = {
                    let mut shared = lock(&shared);
                    let now = tokio::time::Instant::now();
                    let allowed = device.filter(|device| {
                        shared
                            .grants
                            .iter()
                            .any(|((d, _), g)| d == device && g.expires > now)
                    });
                    match allowed {
                        Some(device) => {
                            shared.connections.insert(msg.inner.connection_id, device);
                            Ok(())
                        }
                        None => refuse,
                    }
                };
                msg.tx.send(verdict).await.ok();
            }
            ProviderMessage::ConnectionClosed(msg) => {
                lock(&shared).connections.remove(&msg.inner.connection_id);
            }
            ProviderMessage::GetRequestReceived(msg) => {
                let request = &msg.inner.request;
                let hash = BlobId(*request.hash.as_bytes());
                let verdict = {
                    let shared = lock(&shared);
                    let grant = shared
                        .connections
                        .get(&msg.inner.connection_id)
                        .and_then(|device| shared.live_grant(device, &hash));
                    match grant {
                        Some(g) if g.direction == Direction::Get && request.ranges.is_blob() => {
                            Ok(())
                        }
                        _ => refuse,
                    }
                };
                let served = verdict.is_ok();
                msg.tx.send(verdict).await.ok();
                if served {
                    let mut updates = msg.rx;
                    let moved = moved.clone();
                    tokio::spawn(async move {
                        // What was sent, whether the get completed or stopped part way.
                        while let Ok(Some(update)) = updates.recv().await {
                            if let RequestUpdate::Completed(TransferCompleted { stats })
                            | RequestUpdate::Aborted(TransferAborted { stats }) = update
                            {
                                moved
                                    .with_label_values(&["get"])
                                    .inc_by(stats.payload_bytes_sent);
                            }
                        }
                    });
                }
            }
            ProviderMessage::PushRequestReceived(msg) => {
                let request = &msg.inner.request;
                let hash = BlobId(*request.hash.as_bytes());
                let device = lock(&shared)
                    .connections
                    .get(&msg.inner.connection_id)
                    .copied();
                let grant = device.and_then(|d| lock(&shared).live_grant(&d, &hash));
                let verdict = match (device, grant) {
                    (
                        Some(device),
                        Some(Grant {
                            direction:
                                Direction::Push {
                                    from_chunk,
                                    end_chunk,
                                    bytes,
                                },
                            ..
                        }),
                    ) if request.ranges.is_blob()
                        && request.ranges.iter().next()
                            == Some(&ChunkRanges::chunks(from_chunk..end_chunk)) =>
                    {
                        let mut updates = msg.rx;
                        let actor = actor.clone();
                        let moved = moved.clone();
                        let data = paths.data_path(&request.hash);
                        let tree = paths.outboard_path(&request.hash);
                        let store = Store::clone(&store);
                        let blob = request.hash;
                        tokio::spawn(async move {
                            // What the push wrote (its data and its tree) goes to disk
                            // while it runs, so the sync that counts the file uploaded has
                            // little left to write.
                            let mut syncs = tokio::time::interval(PUSH_SYNC_EVERY);
                            syncs.set_missed_tick_behavior(MissedTickBehavior::Delay);
                            // The store commits the push's partial entry within
                            // `PARTIAL_COMMIT_WITHIN` of its first bytes. From then on a
                            // relay that crashes finds the verified prefix again (from the
                            // tree and the data) and the device resumes from it; before,
                            // the push starts over.
                            let mut checks = tokio::time::interval(PARTIAL_CHECK_EVERY);
                            let mut committed = false;
                            loop {
                                tokio::select! {
                                    update = updates.recv() => match update {
                                        Ok(Some(RequestUpdate::Completed(_))) => {
                                            moved.with_label_values(&["push"]).inc_by(bytes);
                                            let _ = actor.cast(ContentMsg::Pushed { device, hash });
                                        }
                                        Ok(Some(_)) => {}
                                        Ok(None) | Err(_) => break,
                                    },
                                    _ = syncs.tick() => {
                                        let (data, tree) = (data.clone(), tree.clone());
                                        // A failed sync shows in the one before the count.
                                        // The tree keeps its pages: the push goes on
                                        // writing between the hashes already there.
                                        let _ = crate::exec::blocking(move || {
                                            sync_files(&[data])?;
                                            match std::fs::File::open(tree) {
                                                Ok(tree) => tree.sync_data(),
                                                Err(_) => Ok(()),
                                            }
                                        })
                                        .await;
                                    }
                                    _ = checks.tick(), if !committed => {
                                        // The store answers a read inside an open write
                                        // transaction from what it holds uncommitted; a
                                        // read after `sync_db` (which waits for that
                                        // transaction's commit) sees what is committed.
                                        let synced = store.sync_db().await.is_ok();
                                        committed = synced && matches!(
                                            store.blobs().status(blob).await,
                                            Ok(BlobStatus::Partial { .. } | BlobStatus::Complete { .. })
                                        );
                                        if committed {
                                            debug!(hash = %hash.short(), "content push: partial entry committed");
                                        }
                                    }
                                }
                            }
                        });
                        Ok(())
                    }
                    _ => refuse,
                };
                msg.tx.send(verdict).await.ok();
            }
            ProviderMessage::GetManyRequestReceived(msg) => {
                msg.tx.send(refuse).await.ok();
            }
            ProviderMessage::ObserveRequestReceived(msg) => {
                msg.tx.send(refuse).await.ok();
            }
            ProviderMessage::Throttle(msg) => {
                msg.tx.send(Ok(())).await.ok();
            }
            ProviderMessage::ClientConnectedNotify(_)
            | ProviderMessage::GetRequestReceivedNotify(_)
            | ProviderMessage::GetManyRequestReceivedNotify(_)
            | ProviderMessage::PushRequestReceivedNotify(_)
            | ProviderMessage::ObserveRequestReceivedNotify(_) => {}
        }
    }
}

/// Serves the accept loop's iroh-blobs connections, at most `max` at once.
async fn serve(
    mut connections: mpsc::Receiver<BlobsConnection>,
    store: Store,
    events: EventSender,
    max: usize,
) {
    let slots = Arc::new(Semaphore::new(max));
    while let Some(accepted) = connections.recv().await {
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            debug!("content connections full, connection refused");
            accepted.refuse(b"busy");
            continue;
        };
        let (store, events) = (store.clone(), events.clone());
        tokio::spawn(async move {
            let BlobsConnection { connection, guards } = accepted;
            iroh_blobs::provider::handle_connection(connection, store, events).await;
            drop((slot, guards));
        });
    }
}

/// Sync each of `files` that exists (a small file lives inline in the store's database) and
/// hand its pages back ([`crate::page_cache`]): a stored file is served later, if at all.
fn sync_files(files: &[PathBuf]) -> std::io::Result<()> {
    for path in files {
        match std::fs::File::open(path) {
            Ok(file) => {
                file.sync_data()?;
                crate::page_cache::drop_synced_pages(&file);
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Make the complete file `hash` durable: the store's database (the entry's state, and a
/// small file's bytes), then its data and tree files and their directory. A file counts
/// uploaded only after.
async fn sync_file(service: &ContentService, hash: Hash) -> std::io::Result<()> {
    service
        .store
        .sync_db()
        .await
        .map_err(std::io::Error::other)?;
    let files = [
        service.paths.data_path(&hash),
        service.paths.outboard_path(&hash),
    ];
    let dir = service.paths.data_path.clone();
    crate::exec::blocking(move || {
        sync_files(&files)?;
        // The new files' names are in their directory: it is synced too (where a directory
        // can be opened as a file).
        match std::fs::File::open(&dir) {
            Ok(dir) => dir.sync_all(),
            Err(_) => Ok(()),
        }
    })
    .await?
}

/// The verified prefix of `hash` the store holds, in bytes (at most `size`).
async fn verified_prefix(store: &Store, hash: &BlobId, size: u64) -> u64 {
    let hash = Hash::from_bytes(hash.0);
    match store.blobs().status(hash).await {
        Ok(BlobStatus::Complete { .. }) => return size,
        Ok(BlobStatus::Partial { .. }) => {}
        Ok(BlobStatus::NotFound) | Err(_) => return 0,
    }
    let Ok(local) = store.remote().local(hash).await else {
        return 0;
    };
    // The bytes missing from the start on: everything before the first missing chunk is
    // the prefix.
    let missing = local.missing();
    match missing
        .ranges
        .iter()
        .next()
        .and_then(|r| r.boundaries().first())
    {
        Some(first_missing) => (first_missing.0 * BLAKE3_CHUNK).min(size),
        None => size,
    }
}

impl ContentState {
    /// Refresh the gauges; count a refusal.
    fn count(&self, outcome: &Result<ContentGrant, ContentRefusal>) {
        if let Err(refusal) = outcome {
            self.metrics
                .content_refused_total
                .with_label_values(&[refusal.reason()])
                .inc();
        }
        let shared = lock(&self.service.shared);
        self.metrics.content_files.set(shared.files.len() as i64);
        self.metrics
            .content_bytes
            .set(i64::try_from(shared.bytes).unwrap_or(i64::MAX));
    }

    fn persist(&self, key: &(MailboxId, BlobId), entry: Option<&Entry>) {
        let raw = entry_key(&key.0, &key.1);
        let written = match entry {
            Some(entry) => self.service.ks.insert(raw, entry.encode()),
            None => self.service.ks.remove(raw),
        };
        if let Err(err) = written.and_then(|()| self.service.db.persist(PersistMode::SyncAll)) {
            warn!(error = %err, "content index not written");
        }
    }

    fn ttl(&self, ttl_secs: Option<u32>) -> Duration {
        ttl_secs
            .map(|s| Duration::from_secs(u64::from(s)))
            .unwrap_or(self.config.ttl_default)
            .min(self.config.ttl_max)
    }

    /// The mailbox's entry, counted uploaded once the store has every byte of it and they
    /// are this mailbox's: a device of it just pushed them (`pushed`), or no other mailbox
    /// holds the file (so every byte came from this one's pushes).
    async fn settle_upload(&self, key: (MailboxId, BlobId), pushed: bool) -> Option<Entry> {
        let (mut entry, others) = {
            let shared = lock(&self.service.shared);
            let entry = *shared.entries.get(&key)?;
            let holders = shared.files.get(&key.1).map_or(0, |f| f.1);
            (entry, holders > 1)
        };
        if entry.uploaded || (others && !pushed) {
            return Some(entry);
        }
        let status = self
            .service
            .store
            .blobs()
            .status(Hash::from_bytes(key.1.0))
            .await;
        if matches!(status, Ok(BlobStatus::Complete { size }) if size == entry.size) {
            // An answer that the file is held is an ack: it must survive a power cut.
            if let Err(err) = sync_file(&self.service, Hash::from_bytes(key.1.0)).await {
                warn!(error = %err, "content not synced, not counted uploaded");
                return Some(entry);
            }
            entry.uploaded = true;
            lock(&self.service.shared).insert(key, entry);
            self.persist(&key, Some(&entry));
            debug!(mailbox = %key.0.short(), size = entry.size, "content uploaded");
        }
        Some(entry)
    }

    async fn offer(
        &mut self,
        device: DeviceId,
        mailbox: MailboxId,
        hash: BlobId,
        size: u64,
        ttl_secs: Option<u32>,
    ) -> Result<ContentGrant, ContentRefusal> {
        if size > self.config.file_bytes_max {
            return Err(ContentRefusal::TooLarge {
                size,
                max: self.config.file_bytes_max,
            });
        }
        if size == 0 {
            return Err(ContentRefusal::BadRequest("empty content".into()));
        }
        let key = (mailbox, hash);
        let now_ms = self.clock.now_unix_ms();
        let expires_ms = now_ms
            .saturating_add(u64::try_from(self.ttl(ttl_secs).as_millis()).unwrap_or(u64::MAX));
        // Expired files count against the budget until swept: sweep now rather than refuse
        // (only a relay at its budget pays for it).
        let over_budget = {
            let shared = lock(&self.service.shared);
            !shared.files.contains_key(&hash)
                && shared.bytes.saturating_add(size) > self.config.budget_bytes
        };
        if over_budget {
            self.forget_expired();
        }
        let is_new = !lock(&self.service.shared)
            .entries
            .contains_key(&(mailbox, hash));
        if is_new && self.config.min_free_disk_bytes > 0 {
            let free = crate::relay::blob_store::fs::os_fs()
                .free_bytes(&self.service.dir)
                .unwrap_or(0);
            if free < size.saturating_add(self.config.min_free_disk_bytes) {
                return Err(ContentRefusal::Quota(
                    "the relay's disk is too full for this file".into(),
                ));
            }
        }
        let entry = {
            let mut shared = lock(&self.service.shared);
            if let Some((held, _)) = shared.files.get(&hash)
                && *held != size
            {
                return Err(ContentRefusal::BadRequest(
                    "the relay holds this content with another size".into(),
                ));
            }
            match shared.entries.get(&key).copied() {
                // Offered again while it lives: its TTL restarts.
                Some(mut entry) if entry.expires_ms > now_ms => {
                    entry.expires_ms = entry.expires_ms.max(expires_ms);
                    shared.insert(key, entry);
                    entry
                }
                expired_or_none => {
                    if expired_or_none.is_some() {
                        shared.remove(&key);
                    }
                    let (used, count) = shared.mailbox_usage(&mailbox, now_ms);
                    if count >= ENTRIES_PER_MAILBOX_MAX
                        || used.saturating_add(size) > self.config.mailbox_quota_bytes
                    {
                        return Err(ContentRefusal::Quota(format!(
                            "mailbox content quota of {} bytes ({} files) reached",
                            self.config.mailbox_quota_bytes, ENTRIES_PER_MAILBOX_MAX
                        )));
                    }
                    if !shared.files.contains_key(&hash)
                        && shared.bytes.saturating_add(size) > self.config.budget_bytes
                    {
                        return Err(ContentRefusal::Quota(
                            "the relay's content budget is used up".into(),
                        ));
                    }
                    let entry = Entry {
                        size,
                        expires_ms,
                        uploaded: false,
                    };
                    shared.insert(key, entry);
                    entry
                }
            }
        };
        self.persist(&key, Some(&entry));
        let entry = self.settle_upload(key, false).await.unwrap_or(entry);
        let others = lock(&self.service.shared)
            .files
            .get(&hash)
            .is_some_and(|f| f.1 > 1);
        let have = if entry.uploaded {
            size
        } else if others {
            // Another mailbox's bytes are not this one's to claim: it sends all of them.
            0
        } else {
            match verified_prefix(&self.service.store, &hash, size).await {
                // Held whole yet not counted uploaded: its sync failed, so this is no ack.
                // The device pushes the last chunk again and the count is tried again.
                held if held == size => (size - 1) / BLAKE3_CHUNK * BLAKE3_CHUNK,
                held => held,
            }
        };
        if have < size {
            lock(&self.service.shared).grant(
                device,
                hash,
                Grant {
                    mailbox,
                    direction: Direction::Push {
                        from_chunk: have / BLAKE3_CHUNK,
                        end_chunk: size.div_ceil(BLAKE3_CHUNK),
                        bytes: size - have,
                    },
                    expires: tokio::time::Instant::now() + GRANT_TTL,
                },
            );
        }
        Ok(ContentGrant { size, have })
    }

    async fn open(
        &mut self,
        device: DeviceId,
        mailbox: MailboxId,
        hash: BlobId,
    ) -> Result<ContentGrant, ContentRefusal> {
        let key = (mailbox, hash);
        let entry = self
            .settle_upload(key, false)
            .await
            .ok_or(ContentRefusal::NotFound)?;
        if !entry.uploaded || entry.expires_ms <= self.clock.now_unix_ms() {
            return Err(ContentRefusal::NotFound);
        }
        lock(&self.service.shared).grant(
            device,
            hash,
            Grant {
                mailbox,
                direction: Direction::Get,
                expires: tokio::time::Instant::now() + GRANT_TTL,
            },
        );
        Ok(ContentGrant {
            size: entry.size,
            have: entry.size,
        })
    }

    async fn pushed(&mut self, device: DeviceId, hash: BlobId) {
        let Some(grant) = lock(&self.service.shared).live_grant(&device, &hash) else {
            return;
        };
        self.settle_upload((grant.mailbox, hash), true).await;
    }

    /// The periodic sweep: expired grants and entries.
    fn sweep(&mut self) {
        let now = tokio::time::Instant::now();
        lock(&self.service.shared)
            .grants
            .retain(|_, g| g.expires > now);
        self.forget_expired();
    }

    /// Forget the expired entries (their bytes go with the store's next GC). Costs what
    /// expired, not what is held.
    fn forget_expired(&mut self) {
        let now_ms = self.clock.now_unix_ms();
        let expired = {
            let mut shared = lock(&self.service.shared);
            let expired = shared.expired(now_ms);
            for key in &expired {
                shared.remove(key);
            }
            expired
        };
        for key in &expired {
            self.persist(key, None);
        }
        if !expired.is_empty() {
            info!(files = expired.len(), "expired content forgotten");
        }
    }
}

impl Actor for ContentActor {
    type Msg = ContentMsg;
    type State = ContentState;
    type Arguments = ContentArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ContentArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ContentArgs {
            service,
            config,
            connections,
            clock,
            metrics,
        } = args;
        let (events, event_rx) = EventSender::channel(64, events_mask());
        let judge = tokio::spawn(judge_events(
            event_rx,
            Arc::clone(&service.shared),
            Store::clone(&service.store),
            service.paths.clone(),
            myself.clone(),
            metrics.content_transfer_bytes_total.clone(),
        ));
        let server = tokio::spawn(serve(
            connections,
            Store::clone(&service.store),
            events,
            config.connections_max,
        ));
        myself.send_interval(config.sweep_interval, || ContentMsg::SweepDue);
        Ok(ContentState {
            service,
            config,
            clock,
            metrics,
            tasks: vec![judge, server],
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ContentMsg::Offer {
                device,
                mailbox,
                hash,
                size,
                ttl_secs,
                reply,
            } => {
                let granted = state.offer(device, mailbox, hash, size, ttl_secs).await;
                state.count(&granted);
                let _ = reply.send(granted);
            }
            ContentMsg::Open {
                device,
                mailbox,
                hash,
                reply,
            } => {
                let granted = state.open(device, mailbox, hash).await;
                state.count(&granted);
                let _ = reply.send(granted);
            }
            ContentMsg::Pushed { device, hash } => state.pushed(device, hash).await,
            ContentMsg::SweepDue => {
                state.sweep();
                state.count(&Ok(ContentGrant { size: 0, have: 0 }));
            }
            ContentMsg::GetStats { reply } => {
                let shared = lock(&state.service.shared);
                let _ = reply.send(ContentStats {
                    entries: shared.entries.len() as u64,
                    files: shared.files.len() as u64,
                    bytes: shared.bytes,
                });
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for task in &state.tasks {
            task.abort();
        }
        if let Err(err) = state.service.store.shutdown().await {
            warn!(error = %err, "content store did not shut down cleanly");
        }
        Ok(())
    }
}

/// The chunks `have..size` of a file (what a push grant allows).
pub fn push_chunks(have: u64, size: u64) -> ChunkRanges {
    ChunkRanges::chunks(have / BLAKE3_CHUNK..size.div_ceil(BLAKE3_CHUNK))
}

/// A request range that pushes the chunks `have..size` of a file.
pub fn push_ranges(have: u64, size: u64) -> ChunkRangesSeq {
    ChunkRangesSeq::from_ranges([push_chunks(have, size)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The expiry index answers what a scan of every entry answers, through adds,
        /// renewals (a later expiry, counted uploaded) and removals; the byte count follows
        /// the distinct files held.
        #[test]
        fn the_expiry_index_finds_what_a_scan_of_every_entry_finds(
            ops in proptest::collection::vec((0u8..6, 0u8..4, 0u64..50, any::<bool>()), 0..200),
            now_ms in 0u64..60,
        ) {
            let mut shared = Shared::default();
            for (mailbox, file, expires_ms, remove) in ops {
                let key = (MailboxId([mailbox; 32]), BlobId([file; 32]));
                if remove {
                    shared.remove(&key);
                } else {
                    let entry = Entry {
                        size: 10 + u64::from(file),
                        expires_ms,
                        uploaded: expires_ms % 2 == 0,
                    };
                    shared.insert(key, entry);
                }
            }
            let scanned: Vec<_> = shared
                .entries
                .iter()
                .filter(|(_, e)| e.expires_ms <= now_ms)
                .map(|(k, _)| *k)
                .collect();
            let mut indexed = shared.expired(now_ms);
            indexed.sort();
            prop_assert_eq!(indexed, scanned);
            prop_assert_eq!(shared.by_expiry.len(), shared.entries.len());
            let files: BTreeSet<_> = shared.entries.keys().map(|(_, f)| *f).collect();
            let bytes: u64 = files.iter().map(|f| 10 + u64::from(f.0[0])).sum();
            prop_assert_eq!(shared.bytes, bytes);
        }
    }
}
