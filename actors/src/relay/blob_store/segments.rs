//! The relay's durable item store: an append-only log of segment files and an on-disk index
//! of it ([`index`]: fjall, beside the segments).
//!
//! A group commit encodes its items as records (format in [`super::core`]), appends them to
//! the active segment with one `write` and makes them durable with one `fdatasync`; only then
//! does the index learn them (one atomic index batch, not synced), so every read and every
//! duplicate answer sees durable items only. Reads take the index lock just long enough to
//! find where their records lie and then read the files without it; commits hold the writer
//! lock through their `fdatasync`.
//!
//! Space comes back by segments: a segment whose items have all expired (or been copied
//! forward by compaction) is deleted, after a `mark` record carries forward the newest
//! cursor of every mailbox whose newest item it held, so cursors never go back. A mostly-dead
//! segment is compacted: its records are walked, those the index still places there are
//! copied to the active segment, and it is deleted once none is left.
//!
//! Budgets ([`StoreBudget`]): a commit refuses (`StorageFull`, with a retry hint) what would
//! take the store past its charged-byte or index-entry budget or its filesystem below the
//! free-space floor (checked with `statvfs` at most once per [`DISK_CHECK_INTERVAL_MS`],
//! less what was written since). A full disk frees itself: a sweep first deletes dead
//! segments that need no mark (no write at all), then writes the marks of the others (if
//! the disk refuses even those, it deletes the [`RESERVE_FILE`] ballast first), and compacts
//! only while the disk is above its floor. OS errors go to the log; a client only ever sees
//! `StorageFull` or a generic `Unavailable`.
//!
//! Opening reads the index and replays only the log after the index's checkpoint (nothing
//! after a clean close; about one segment at most after a power cut); a missing or
//! inconsistent index is rebuilt from every segment. The log is read by `segments/scan.rs`:
//! every write is one batch, durable before the next, so only an incomplete last batch of the
//! newest segment is a write that was never acknowledged, and it is cut off, unless the store
//! was closed cleanly (a clean close writes an empty "closed" batch; opening for writes
//! removes it again). Any other bad record or batch header is damage: the valid records
//! around it are kept and served, the damaged range is logged (file and byte offset) and
//! counted ([`StoreStats`]'s `damaged_records`), and writes go on in a new segment. Reads
//! check each item's CRC and that its blob id is `BLAKE3` of its ciphertext, so damage in a
//! segment the open did not read is found when the item is read: it is never served, logged,
//! counted and dropped from the index. [`check_store`] scans every segment offline
//! (`zerok-relay check`). Segments of format 3 (no batches) are read as that format always
//! was; their directory is upgraded to format 4 in place.

use super::core::{
    self, BATCH_FIXED, CommitPlan, FORMAT_VERSION, FORMAT_VERSION_3, FRAME_HEADER,
    ITEM_CHARGE_BYTES, ITEM_HEADER, ItemRecord, MAILBOX_INDEX_ENTRIES, MailboxMeta, MailboxState,
    Record, Room, SEGMENT_HEADER, SEGMENT_MAGIC_3, SYNC_BYTES, StoreBudget, StoreLimits,
};
use super::fs::{self, OpenMode, SeqReader, StoreFile, StoreFs};
use crate::fault::{FaultPlan, FaultPoint};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tracing::{error, info, warn};
use zerok_messages::relay::{AppendRequest, Page, StoreError, StoreStats, SweepReport};
use zerok_messages::sync::{lock, read, write};
use zerok_messages::{BlobId, Cursor, Item, MailboxId};

/// Name of the file holding the store's format.
pub const FORMAT_FILE: &str = "FORMAT";
/// Name of the lock file (held while a relay has the store open).
pub const LOCK_FILE: &str = "LOCK";
/// Suffix of segment files (`<20-digit id>.seg`).
pub const SEGMENT_SUFFIX: &str = ".seg";
/// Default size at which the active segment is closed and a new one started.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Name of the reserve file: [`RESERVE_BYTES`] of written zeros (real blocks, not a sparse
/// file) that a sweep deletes when the disk is too full to take the marks that let it delete
/// dead segments, and writes again once the disk is above its floor. Kept only when the
/// store has a free-disk floor.
pub const RESERVE_FILE: &str = "RESERVE";
/// Size of the reserve: the marks (49 B each) of ~85,000 mailboxes, more mailboxes than the
/// default index budget holds with items, so one sweep can always release.
pub const RESERVE_BYTES: u64 = 4 * 1024 * 1024;
/// Longest time between two `statvfs` checks of the free disk space on the commit path: a
/// check is a syscall of a few microseconds, a commit's `fdatasync` hundreds, so once a
/// second costs nothing; between checks the bytes written are subtracted from the estimate,
/// and every sweep checks again.
pub const DISK_CHECK_INTERVAL_MS: u64 = 1_000;
/// Free disk space below which a sweep deletes the reserve before it writes to the index (an
/// eviction slice writes a few hundred bytes per item to the index's journal).
const INDEX_HEADROOM_BYTES: u64 = RESERVE_BYTES / 2;
/// A closed segment whose live bytes fall below this fraction of its size is compacted.
const COMPACT_LIVE_FRACTION: u64 = 4;
/// One sweep copies at most `segment_bytes / COMPACT_SLICE_FRACTION` of live items forward
/// (at least one item), so a sweep, which commits wait behind, stays short: compacting a whole
/// 64 MiB segment with 13 MiB live in one sweep measured 120–127 ms.
const COMPACT_SLICE_FRACTION: u64 = 16;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory or a file in it cannot be read or written.
    #[error("cannot open the store at {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Another process holds the store.
    #[error("the store at {path} is in use by another process")]
    Locked {
        /// The directory.
        path: String,
    },
    /// The directory holds a store of another format.
    #[error("the store at {path} has format {found:?}, this relay reads {FORMAT_VERSION:?}")]
    Format {
        /// The directory.
        path: String,
        /// The format found.
        found: String,
    },
    /// The directory holds no store (no format file).
    #[error("no store at {path}")]
    NotAStore {
        /// The directory.
        path: String,
    },
    /// A record in the middle of a segment of format 3 (which cannot re-synchronise) is
    /// damaged.
    #[error(
        "the store file {path} is damaged at byte {offset}; move the file away to start without the items after that point"
    )]
    Corrupt {
        /// The segment file.
        path: String,
        /// Where the damaged record starts.
        offset: u64,
    },
    /// The index cannot be opened or written, even after rebuilding it.
    #[error("cannot open the store index at {path}: {message}")]
    Index {
        /// The index directory.
        path: String,
        /// The cause.
        message: String,
    },
}

/// Whether the batch the checkpoint ends with is on disk whole (a commit indexes its batch
/// while the disk syncs it, so after a crash the index may name a batch the disk never got).
fn last_batch_is_whole(
    checkpoint: (u32, u64, u64),
    sync: &[u8; SYNC_BYTES],
    fs: &dyn StoreFs,
    dir: &Path,
) -> bool {
    let (segment, start, end) = checkpoint;
    if start >= end {
        return true;
    }
    let Ok(file) = fs.open(&segment_path(dir, segment), OpenMode::Read) else {
        return false;
    };
    let mut data = vec![0u8; (end - start) as usize];
    if file.read_exact_at(&mut data, start).is_err() {
        return false;
    }
    let Some((count, total)) = core::parse_batch_fixed(&data, sync) else {
        return false;
    };
    let header_len = core::batch_header_len(count);
    if header_len as u64 + total != end - start {
        return false;
    }
    let Some(lens) = core::parse_batch_header(&data[..header_len], sync) else {
        return false;
    };
    let mut at = header_len;
    lens.iter().all(|len| {
        let frame = &data[at..at + *len as usize];
        at += *len as usize;
        core::decode_frame(frame).is_some()
    })
}

/// Batches from this size on are synced on a second thread while the first indexes them
/// (about 32 items of 1 KiB: below it, the index work costs less than starting a thread).
const OVERLAP_MIN_BYTES: usize = 32 * 1024;

/// Tries to take a lock (the store's, or its index's) still held by an earlier open of this
/// process, and the wait between them: 50 × 20 ms, a second to let go. The index's
/// background threads let go a moment after it closed; and a child process forked by any
/// thread of this process holds a copy of the store's lock descriptor until it execs, so a
/// store closed and opened again at that moment finds its own lock taken.
const LOCK_RETRIES: usize = 50;
const LOCK_RETRY_MS: u64 = 20;

/// Open the index in `dir` (made private: 0700, as the store's own files are); one that
/// cannot be opened (damaged) is removed and rebuilt.
fn open_index(dir: &Path) -> Result<(Index, Saved), OpenError> {
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(io_err(dir))?;
    }
    // The store's own lock keeps other processes out, so a locked index is an earlier open
    // in this process whose background threads are still letting go of it.
    let mut opened = Index::open(dir);
    for _ in 0..LOCK_RETRIES {
        match &opened {
            Err(err) if err.is_locked => {
                // Opening is blocking work (the relay runs it on the blocking pool): a short
                // thread sleep is the wait that fits.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(std::time::Duration::from_millis(LOCK_RETRY_MS));
                opened = Index::open(dir);
            }
            _ => break,
        }
    }
    match opened {
        Ok(opened) => Ok(opened),
        Err(err) if err.is_locked => Err(OpenError::Index {
            path: dir.display().to_string(),
            message: err.to_string(),
        }),
        Err(err) => {
            warn!(error = %err, "the store index cannot be opened; rebuilding it from the segments");
            std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
            Index::open(dir).map_err(|err| OpenError::Index {
                path: dir.display().to_string(),
                message: err.to_string(),
            })
        }
    }
}

/// Whether an index with `saved` counts and `checkpoint` describes the segments `ids` of
/// `dir`: the checkpoint's segment is there and at least as long as the checkpoint, every
/// segment before it is known to the index, and every segment the index has live items in is
/// there.
fn index_agrees(
    saved: &Saved,
    ids: &[u32],
    checkpoint: (u32, u64, u64),
    sync: &[u8; SYNC_BYTES],
    fs: &dyn StoreFs,
    dir: &Path,
) -> bool {
    let (segment, _, end) = checkpoint;
    let has_checkpoint_segment = ids.contains(&segment)
        && fs
            .file_len(&segment_path(dir, segment))
            .is_ok_and(|len| len >= end);
    has_checkpoint_segment
        && last_batch_is_whole(checkpoint, sync, fs, dir)
        && ids
            .iter()
            .filter(|id| **id < segment)
            .all(|id| saved.segments.contains_key(id))
        && saved
            .segments
            .iter()
            .all(|(id, counts)| counts.live == 0 || ids.contains(id))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The client-facing error of a failed file operation: `StorageFull` when the disk (or the
/// user's disk quota) is full, else a generic `Unavailable`. The OS error is logged here and
/// never sent to a client.
fn io_failure(what: &'static str, err: &std::io::Error, retry_after_ms: u64) -> StoreError {
    if is_disk_full(err) {
        warn!(error = %err, what, "store disk full");
        StoreError::StorageFull { retry_after_ms }
    } else {
        error!(error = %err, what, "store i/o failed");
        StoreError::Unavailable(format!("{what} failed"))
    }
}

/// Whether `err` says the disk or the user's disk quota is full (`ENOSPC`, `EDQUOT`).
pub fn is_disk_full(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded
    )
}

/// The error an injected [`FaultPoint::StoreDiskFull`] writes fail with.
fn injected_disk_full(faults: &FaultPlan) -> std::io::Result<()> {
    if faults.should_fail(FaultPoint::StoreDiskFull) {
        return Err(std::io::Error::new(
            ErrorKind::StorageFull,
            "no space left on device (injected)",
        ));
    }
    Ok(())
}

/// What the store knows of its filesystem's free space.
#[derive(Debug, Clone, Copy)]
struct DiskSpace {
    /// Free bytes at the last check (`u64::MAX` without a floor).
    free_bytes: u64,
    /// When the last check ran (`None`: never).
    checked_at_ms: Option<u64>,
    /// Bytes written since the last check.
    written_since: u64,
    /// A write failed for lack of space since the last sweep: refuse pushes until a sweep.
    is_full_latched: bool,
}

impl DiskSpace {
    fn estimate(&self) -> u64 {
        self.free_bytes.saturating_sub(self.written_since)
    }
}

/// The active segment, appended to under the writer lock.
struct Writer {
    file: Box<dyn StoreFile>,
    id: u32,
    len: u64,
    /// Set when a failed write could not be cut back off: no more writes until a restart.
    poisoned: Option<String>,
    /// Free space of the disk, as far as the store knows.
    disk: DiskSpace,
    /// Whether the last batch written is the "closed" marker (nothing written since).
    is_closed: bool,
}

/// The store: segment files plus the index. Shared (`Arc`) by the Infra supervisor and every
/// BlobStore actor it starts, so a restarted actor finds everything durable where it was.
pub struct Store {
    dir: PathBuf,
    /// Every file operation goes through it.
    fs: Arc<dyn StoreFs>,
    segment_bytes: u64,
    budget: StoreBudget,
    /// Fault injection for the writes sweeps do (commits get the caller's plan).
    faults: FaultPlan,
    writer: Mutex<Writer>,
    index: RwLock<Index>,
    /// Whether pushes are being refused for lack of space (read by `stats` without locks).
    is_full: AtomicBool,
    /// The free-disk estimate as of the last commit or sweep, for `stats`.
    free_disk_bytes: AtomicU64,
    /// What opening found.
    opened: OpenReport,
    /// The store's sync marker, which starts every batch header.
    sync: [u8; SYNC_BYTES],
    /// Held (flock) while the store is open.
    _lock: Box<dyn StoreFile>,
}

/// What opening the store found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenReport {
    /// Whether the index was rebuilt from every segment (new, missing, damaged or
    /// inconsistent index); otherwise only the log after its checkpoint was read.
    pub is_rebuilt: bool,
    /// Bytes of records read from the segments to bring the index up to date.
    pub replayed_bytes: u64,
}

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Size at which the active segment is closed (at least 4 KiB).
    pub segment_bytes: u64,
    /// The relay-wide budget.
    pub budget: StoreBudget,
    /// Fault injection for the store's own writes (sweeps, the reserve).
    pub faults: FaultPlan,
    /// The file system the store lives on: the real one ([`fs::OsFs`]) unless a test or
    /// simulation gives a [`fs::SimFs`].
    pub fs: Arc<dyn StoreFs>,
    /// Where the index lives (`index/` in the store's directory unless given). The index is a
    /// fjall database on the real file system, whatever `fs` is: a store on a simulated file
    /// system gives it a real directory here.
    pub index_dir: Option<PathBuf>,
    /// Item changes the index holds in memory before it writes them on its own (it also
    /// writes at every segment roll, before a segment is deleted and at close): bounds its
    /// memory and what a restart replays. Tests make it small to move the checkpoint often.
    pub index_flush_items: usize,
}

impl StoreOptions {
    /// Segments of `segment_bytes`, no budget, no faults.
    pub fn new(segment_bytes: u64) -> Self {
        Self {
            segment_bytes,
            budget: StoreBudget::unlimited(),
            faults: FaultPlan::none(),
            fs: fs::os_fs(),
            index_dir: None,
            index_flush_items: index::FLUSH_ITEMS,
        }
    }
}

mod check;
mod files;
mod index;
mod scan;
pub use check::{CheckReport, check_store};
use files::*;
use index::*;
pub use scan::Damage;
use scan::*;

impl Store {
    /// Open (or create) the store in `dir`, rebuilding the index from its segments. Closes
    /// the active segment at `segment_bytes` (at least 4 KiB). No relay-wide budget.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<Store, OpenError> {
        Self::open_with(dir, StoreOptions::new(segment_bytes))
    }

    /// [`Store::open`] with a budget and fault injection.
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Store, OpenError> {
        let StoreOptions {
            segment_bytes,
            budget,
            faults,
            fs,
            index_dir,
            index_flush_items,
        } = options;
        let segment_bytes = segment_bytes.max(4096);
        // Directories about to be made, outermost last.
        let new_dirs: Vec<&Path> = dir
            .ancestors()
            .take_while(|d| !d.as_os_str().is_empty() && !fs.exists(d))
            .collect();
        fs.create_dir_all(dir).map_err(io_err(dir))?;
        // Each new directory's entry in its parent: without these syncs a power cut can take
        // the whole store, acknowledged items and all, with it.
        for new_dir in new_dirs.iter().rev() {
            let parent = match new_dir.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            fs.sync_dir(parent).map_err(io_err(parent))?;
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = fs
            .open(&lock_path, OpenMode::CreateOrOpen)
            .map_err(io_err(&lock_path))?;
        let mut tries = 0;
        loop {
            match lock_file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if tries < LOCK_RETRIES => {
                    tries += 1;
                    // Blocking work, as above.
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(std::time::Duration::from_millis(LOCK_RETRY_MS));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(OpenError::Locked {
                        path: dir.display().to_string(),
                    });
                }
                Err(std::fs::TryLockError::Error(err)) => return Err(io_err(&lock_path)(err)),
            }
        }
        let found_format = check_format(&*fs, dir)?;
        let ids = segment_ids(&*fs, dir)?;
        let sync = store_sync(&*fs, dir, &ids)?;
        let index_dir = index_dir.unwrap_or_else(|| dir.join(INDEX_DIR));
        let (mut index, saved) = open_index(&index_dir)?;
        index.flush_items = index_flush_items.max(1);
        let index_failed = |err: IndexError| OpenError::Index {
            path: index_dir.display().to_string(),
            message: err.to_string(),
        };
        // Replay the log after the index's checkpoint when the index agrees with the segments
        // on disk; otherwise rebuild it from every segment.
        let replay_from = saved
            .checkpoint
            .filter(|checkpoint| index_agrees(&saved, &ids, *checkpoint, &sync, &*fs, dir));
        if replay_from.is_none() {
            if saved.checkpoint.is_some() {
                warn!("the store index does not match the segments; rebuilding it");
            }
            index.clear().map_err(index_failed)?;
        }
        for id in saved.segments.keys() {
            if replay_from.is_some() && !ids.contains(id) {
                // Deleted after the index was made durable: forget its counts.
                index.remove_segment(*id);
            }
        }
        let (start_segment, _, start_offset) = replay_from.unwrap_or((0, 0, 0));
        let mut active = None;
        let mut replayed_bytes = 0u64;
        let mut damaged_records = 0u64;
        // Records that may be lost to damage, and what the damaged ones seem to say.
        let mut lost_records_max = 0u64;
        let mut cursor_hints = Vec::new();
        let mut last_damaged_segment = None;
        let mut needs_new_segment = ids.is_empty();
        for (n, id) in ids.iter().enumerate() {
            let path = segment_path(dir, *id);
            let file = fs.open(&path, OpenMode::ReadWrite).map_err(io_err(&path))?;
            let reader = fs.open(&path, OpenMode::Read).map_err(io_err(&path))?;
            let size_on_disk = file.len().map_err(io_err(&path))?;
            let counts = match replay_from {
                Some(_) => saved.segments.get(id).copied().unwrap_or_default(),
                None => SegmentCounts::default(),
            };
            index.add_segment(*id, Segment::new(reader, size_on_disk, counts));
            let is_last = n + 1 == ids.len();
            if *id < start_segment {
                // Closed, cut to its records at its roll, and covered by the index.
                continue;
            }
            let from = if *id == start_segment {
                start_offset
            } else {
                0
            };
            let ctx = ScanContext {
                sync,
                is_newest: is_last,
                verify_blob_ids: false,
            };
            let tail = scan_segment(&mut index, *id, &*file, from, &ctx).map_err(io_err(&path))?;
            replayed_bytes += tail.good_len.saturating_sub(from);
            // The newest segment (at most one segment's bytes) is verified whole at every
            // open, so damage in it is found even where the index already covers it.
            let scanned = if is_last && from > 0 {
                scan_segment(&mut NullSink, *id, &*file, 0, &ctx).map_err(io_err(&path))?
            } else {
                tail.clone()
            };
            if scanned.format == 3 && !scanned.damage.is_empty() {
                // Format 3 cannot re-synchronise: refused, as it always was.
                return Err(OpenError::Corrupt {
                    path: path.display().to_string(),
                    offset: scanned.good_len,
                });
            }
            for damage in &scanned.damage {
                error!(
                    file = %path.display(),
                    offset = damage.offset,
                    bytes = damage.bytes,
                    what = damage.what,
                    "store damage: skipped a damaged range, kept everything around it"
                );
                if index.note_damage(*id, damage.offset) {
                    damaged_records += 1;
                }
            }
            // Damage the index did not cover yet may have held acked records whose cursors
            // it never learned: keep every cursor ahead of them.
            lost_records_max += tail.damage.iter().map(records_in).sum::<u64>();
            cursor_hints.extend(tail.cursor_hints.iter().copied());
            if !tail.damage.is_empty() {
                last_damaged_segment = Some(*id);
            }
            let mut len = scanned.good_len;
            if let Some(torn_at) = scanned.torn_at {
                let size = file.len().map_err(io_err(&path))?;
                warn!(
                    file = %path.display(),
                    offset = torn_at,
                    cut_bytes = size.saturating_sub(torn_at),
                    "cutting off an unacknowledged torn write at the end of the log"
                );
                len = torn_at;
                if scanned.format == 3 && torn_at < SEGMENT_MAGIC_3.len() as u64 {
                    file.set_len(0).map_err(io_err(&path))?;
                    file.write_all_at(SEGMENT_MAGIC_3, 0)
                        .map_err(io_err(&path))?;
                    len = SEGMENT_MAGIC_3.len() as u64;
                } else if scanned.format == 4 && torn_at < SEGMENT_HEADER as u64 {
                    file.set_len(0).map_err(io_err(&path))?;
                    file.write_all_at(&core::encode_segment_header(&sync), 0)
                        .map_err(io_err(&path))?;
                    len = SEGMENT_HEADER as u64;
                } else {
                    file.set_len(len).map_err(io_err(&path))?;
                }
                file.sync_all().map_err(io_err(&path))?;
            }
            if is_last {
                if scanned.format == 3 || !scanned.damage.is_empty() {
                    // Never append to a damaged segment, nor batches to one of format 3.
                    needs_new_segment = true;
                } else {
                    if let Some(closed_at) = scanned.closed_at {
                        // Open for writes: the log is no longer closed cleanly, so a crash
                        // from now on leaves a torn tail that is cut, as it should be.
                        file.write_all_at(&[0u8; core::CLOSED_BATCH_BYTES], closed_at)
                            .and_then(|()| file.sync_data())
                            .map_err(io_err(&path))?;
                        len = closed_at;
                    }
                    // The active segment is written in place: presize it again.
                    let size = file.len().map_err(io_err(&path))?;
                    if size < segment_bytes {
                        file.set_len(segment_bytes).map_err(io_err(&path))?;
                        file.sync_all().map_err(io_err(&path))?;
                    }
                    active = Some((file, *id, len));
                }
            }
            if let Some(seg) = index.segments.get_mut(id) {
                seg.size = len;
            }
            // Flushed per segment: what a replay or rebuild holds in memory is one segment's.
            index
                .apply(Some((*id, len, len)))
                .and_then(|()| index.flush())
                .map_err(index_failed)?;
        }
        let (file, id, len) = match active {
            Some(active) if !needs_new_segment => active,
            _ => {
                let id = ids.last().map_or(1, |last| last + 1);
                let (file, reader) =
                    create_segment(&*fs, dir, id, segment_bytes, &sync, &FaultPlan::none())
                        .map_err(io_err(dir))?;
                let header = SEGMENT_HEADER as u64;
                index.add_segment(id, Segment::new(reader, header, SegmentCounts::default()));
                index
                    .apply(Some((id, header, header)))
                    .map_err(index_failed)?;
                (file, id, header)
            }
        };
        if found_format != FORMAT_VERSION {
            write_format(&*fs, dir)?;
            info!(from = %found_format, to = FORMAT_VERSION, "store format upgraded");
        }
        if let Some(segment) = last_damaged_segment {
            keep_cursors_ahead_of_damage(&mut index, segment, lost_records_max, &cursor_hints);
            index.apply(None).map_err(index_failed)?;
        }
        if !index.damage.is_empty() {
            error!(
                damaged_records = index.damage.len(),
                newly_found = damaged_records,
                "the store holds damaged records; they are not served (zerok-relay check lists them)"
            );
        }
        index.persist().map_err(index_failed)?;
        info!(
            segments = index.segments.len(),
            replayed_bytes,
            is_rebuilt = replay_from.is_none(),
            items = index.items,
            mailboxes = index.mailboxes.len(),
            "store opened"
        );
        let store = Store {
            dir: dir.to_path_buf(),
            fs,
            segment_bytes,
            budget,
            faults,
            writer: Mutex::new(Writer {
                file,
                id,
                len,
                poisoned: None,
                disk: DiskSpace {
                    free_bytes: u64::MAX,
                    checked_at_ms: None,
                    written_since: 0,
                    is_full_latched: false,
                },
                is_closed: false,
            }),
            index: RwLock::new(index),
            is_full: AtomicBool::new(false),
            free_disk_bytes: AtomicU64::new(u64::MAX),
            opened: OpenReport {
                is_rebuilt: replay_from.is_none(),
                replayed_bytes,
            },
            sync,
            _lock: lock_file,
        };
        if store.has_floor() {
            ensure_reserve(&*store.fs, dir, &store.faults);
        }
        {
            let mut writer = lock(&store.writer);
            store.check_disk(&mut writer, 0, true);
            let room = store.room(&writer);
            store
                .is_full
                .store(is_out_of_room(&room), Ordering::Relaxed);
        }
        Ok(store)
    }

    /// What opening found.
    pub fn open_report(&self) -> OpenReport {
        self.opened
    }

    /// The relay-wide budget the store was opened with.
    pub fn budget(&self) -> StoreBudget {
        self.budget
    }

    fn has_floor(&self) -> bool {
        self.budget.min_free_disk_bytes > 0
    }

    /// Refresh the free-space estimate with `statvfs` when it is older than
    /// [`DISK_CHECK_INTERVAL_MS`] (or `force`). Without a floor there is nothing to check.
    fn check_disk(&self, writer: &mut Writer, now_ms: u64, force: bool) {
        if !self.has_floor() {
            return;
        }
        let is_due = match writer.disk.checked_at_ms {
            None => true,
            Some(at) => force || now_ms < at || now_ms - at >= DISK_CHECK_INTERVAL_MS,
        };
        if !is_due {
            return;
        }
        match self.fs.free_bytes(&self.dir) {
            Ok(free) => {
                writer.disk.free_bytes = free;
                writer.disk.written_since = 0;
                writer.disk.checked_at_ms = Some(now_ms);
            }
            Err(err) => {
                // Keep the old estimate (less what was written since); try again next time.
                warn!(error = %err, "cannot read the store's free disk space");
                writer.disk.checked_at_ms = Some(now_ms);
            }
        }
    }

    /// Room the budget and the disk leave now.
    fn room(&self, writer: &Writer) -> Room {
        if self.has_floor() {
            self.free_disk_bytes
                .store(writer.disk.estimate(), Ordering::Relaxed);
        }
        let index = read(&self.index);
        let disk_bytes = if writer.disk.is_full_latched {
            0
        } else if self.has_floor() {
            writer
                .disk
                .estimate()
                .saturating_sub(self.budget.min_free_disk_bytes)
        } else {
            u64::MAX
        };
        Room {
            bytes: self.budget.bytes_max.saturating_sub(index.charged_bytes()),
            index_entries: self
                .budget
                .index_entries_max
                .saturating_sub(index.index_entries()),
            disk_bytes,
            retry_after_ms: self.budget.full_retry_after_ms,
        }
    }

    /// Whether pushes are refused for lack of space: the last commit refused one, or the
    /// budget or disk has no room for the smallest item (cleared when space comes back).
    pub fn is_full(&self) -> bool {
        self.is_full.load(Ordering::Relaxed)
    }

    /// A mailbox's meta as of the last durable commit.
    pub fn meta(&self, mailbox: &MailboxId) -> MailboxMeta {
        read(&self.index).meta(mailbox)
    }

    /// Totals (without `commits`, which the actor counts).
    pub fn stats(&self) -> StoreStats {
        let free_disk_bytes = self.free_disk_bytes.load(Ordering::Relaxed);
        let index = read(&self.index);
        StoreStats {
            mailboxes: index.mailboxes_used,
            items: index.items,
            bytes: index.bytes,
            commits: 0,
            cached_metas: index.mailboxes.len() as u64,
            segments: index.segments.len() as u64,
            disk_bytes: index.disk_bytes(),
            charged_bytes: index.charged_bytes(),
            index_entries: index.index_entries(),
            free_disk_bytes,
            is_full: self.is_full(),
            damaged_records: index.damage.len() as u64,
        }
    }

    /// One group commit: plan, append, `fdatasync`, then index. An error means nothing of the
    /// batch is stored (a failed write is cut back off).
    pub fn commit(
        &self,
        requests: &[AppendRequest],
        now_ms: u64,
        limits: &StoreLimits,
        faults: &FaultPlan,
    ) -> Result<CommitPlan, StoreError> {
        let mut writer = lock(&self.writer);
        if let Some(why) = &writer.poisoned {
            return Err(StoreError::Unavailable(why.clone()));
        }
        self.check_disk(&mut writer, now_ms, false);
        let room = self.room(&writer);
        let mut lookup_failed = None;
        let plan = {
            let index = read(&self.index);
            core::plan_commit(
                requests,
                now_ms,
                limits,
                room,
                |m| match index.mailbox(m) {
                    Some(found) => MailboxState {
                        meta: found.meta,
                        is_known: true,
                    },
                    None => MailboxState::default(),
                },
                |m, b| {
                    index.existing(m, b, now_ms).unwrap_or_else(|err| {
                        lookup_failed = Some(err);
                        None
                    })
                },
            )
        };
        if let Some(err) = lookup_failed {
            error!(error = %err, "store index lookup failed");
            return Err(StoreError::Unavailable("index lookup failed".into()));
        }
        if plan.is_refused_full {
            if !self.is_full.swap(true, Ordering::Relaxed) {
                warn!(
                    room_bytes = room.bytes,
                    room_index_entries = room.index_entries,
                    room_disk_bytes = room.disk_bytes,
                    "store full: refusing pushes until expired items are swept"
                );
            }
        } else if !plan.new.is_empty() {
            self.is_full.store(false, Ordering::Relaxed);
        }
        if plan.new.is_empty() {
            return Ok(plan);
        }
        if faults.should_fail(FaultPoint::BeforeStoreWrite) {
            return Err(StoreError::Unavailable("write failed (injected)".into()));
        }
        let header_len = core::batch_header_len(plan.new.len());
        let batch_bytes: u64 = header_len as u64
            + plan
                .new
                .iter()
                .map(|n| (FRAME_HEADER + ITEM_HEADER + requests[n.request].ciphertext.len()) as u64)
                .sum::<u64>();
        self.roll_if_full(&mut writer, batch_bytes, faults)
            .inspect_err(|err| self.note_failure(&mut writer, err))?;
        let mut buf = Vec::with_capacity(batch_bytes as usize);
        buf.resize(header_len, 0);
        let mut frame_lens = Vec::with_capacity(plan.new.len());
        let mut placed = Vec::with_capacity(plan.new.len());
        for new in &plan.new {
            let request = &requests[new.request];
            let offset = writer.len + buf.len() as u64;
            let item = ItemRecord {
                mailbox: request.mailbox,
                cursor: new.cursor,
                blob_id: request.blob_id,
                stored_at_ms: now_ms,
                expires_at_ms: new.expires_at_ms,
                ciphertext: &request.ciphertext,
            };
            let len = core::encode_item(&mut buf, &item);
            frame_lens.push(len as u32);
            placed.push((offset, len, item));
        }
        core::seal_batch_header(&mut buf, &self.sync, &frame_lens);
        // The index takes the batch while the disk syncs it, so a commit costs the longer of
        // the two, not their sum. Readers are held out by the index lock until both are done,
        // so nobody sees an item before it is durable; a failed sync takes the items out of
        // the index again. (After a crash in between, the index may name a batch that never
        // reached the disk: opening checks the checkpoint's batch and rebuilds if so.)
        let (id, start) = (writer.id, writer.len);
        let end = start + buf.len() as u64;
        let mut index = write(&self.index);
        // What the mailboxes were, to put back if the sync fails (a batch cut back off the
        // log leaves its cursors free again, as if it had never been written).
        let mut before: Vec<(MailboxId, MailboxMeta, u32)> = Vec::new();
        for (_, _, item) in &placed {
            if !before.iter().any(|(m, _, _)| *m == item.mailbox) {
                let (meta, latest_segment) = index
                    .mailbox(&item.mailbox)
                    .map_or((MailboxMeta::default(), id), |m| (m.meta, m.latest_segment));
                before.push((item.mailbox, meta, latest_segment));
            }
        }
        let (appended, indexed) = self.append_while(&mut writer, &buf, faults, || {
            placed
                .iter()
                .try_for_each(|(offset, len, item)| {
                    index.insert_item(id, *offset, *len, item, false)
                })
                .and_then(|()| {
                    index.count_records(id, placed.len() as u64);
                    if let Some(seg) = index.segments.get_mut(&id) {
                        seg.size = end;
                    }
                    index.apply(Some((id, start, end)))
                })
        });
        if let Err(err) = appended {
            let undone = placed
                .iter()
                .try_for_each(
                    |(_, _, item)| match index.slots.get(&item.mailbox).copied() {
                        Some(slot) => index.remove_item(slot, item.cursor).map(|_| ()),
                        None => Ok(()),
                    },
                )
                .and_then(|()| {
                    for (mailbox, meta, latest_segment) in &before {
                        index.restore_mailbox(mailbox, *meta, *latest_segment);
                    }
                    if let Some(seg) = index.segments.get_mut(&id) {
                        seg.size = start;
                    }
                    index.apply(Some((id, start, start)))
                });
            drop(index);
            if let Err(undo) = undone {
                self.index_failed(&mut writer, &undo);
            }
            self.note_failure(&mut writer, &err);
            return Err(err);
        }
        // The batch is durable: the index may now write what it holds, when that is enough.
        let indexed = indexed.and_then(|()| index.flush_if_due());
        if let Err(err) = indexed {
            drop(index);
            return Err(self.index_failed(&mut writer, &err));
        }
        Ok(plan)
    }

    /// After the index failed to take what the log holds durably: no more writes until a
    /// restart, which replays the log into the index.
    fn index_failed(&self, writer: &mut Writer, err: &IndexError) -> StoreError {
        error!(error = %err, "store index write failed; refusing writes until restart");
        let why = "the store index failed; restart the relay".to_string();
        writer.poisoned = Some(why.clone());
        StoreError::Unavailable(why)
    }

    /// After a failed write: a full disk refuses pushes until the next sweep.
    fn note_failure(&self, writer: &mut Writer, err: &StoreError) {
        if matches!(err, StoreError::StorageFull { .. }) {
            writer.disk.is_full_latched = true;
            self.is_full.store(true, Ordering::Relaxed);
        }
    }

    /// Close the active segment when it is full (or the batch would overflow its offsets).
    fn roll_if_full(
        &self,
        writer: &mut Writer,
        adding: u64,
        faults: &FaultPlan,
    ) -> Result<(), StoreError> {
        let has_records = writer.len > SEGMENT_HEADER as u64;
        let is_full = writer.len >= self.segment_bytes
            || writer.len.saturating_add(adding) > u64::from(u32::MAX);
        if has_records && is_full {
            self.roll(writer, faults)?;
        }
        Ok(())
    }

    /// Close the active segment (cut to its records, durable) and start a new one.
    fn roll(&self, writer: &mut Writer, faults: &FaultPlan) -> Result<(), StoreError> {
        let retry = self.budget.full_retry_after_ms;
        writer
            .file
            .set_len(writer.len)
            .and_then(|()| writer.file.sync_all())
            .map_err(|err| io_failure("closing a segment", &err, retry))?;
        let id = writer.id + 1;
        let (file, reader) = create_segment(
            &*self.fs,
            &self.dir,
            id,
            self.segment_bytes,
            &self.sync,
            faults,
        )
        .map_err(|err| io_failure("creating a segment", &err, retry))?;
        let header = SEGMENT_HEADER as u64;
        writer.file = file;
        writer.id = id;
        writer.len = header;
        writer.disk.written_since = writer.disk.written_since.saturating_add(header);
        // The index is written at every roll (in the background: commits go on meanwhile), so
        // a power loss replays at most about one segment at the next open.
        let mut index = write(&self.index);
        index.add_segment(id, Segment::new(reader, header, SegmentCounts::default()));
        if let Err(err) = index
            .apply(Some((id, header, header)))
            .and_then(|()| index.flush_in_background())
        {
            return Err(self.index_failed(writer, &err));
        }
        Ok(())
    }

    /// Evict up to `max_items` items due at `now_ms`, then give back the space of segments
    /// left without live items (first those that need no write to go), and, only while the
    /// disk is above its floor, compact one mostly-dead segment. A failure to release or
    /// compact is logged and retried by the next sweep; the evictions stand.
    pub fn sweep(&self, now_ms: u64, max_items: u32) -> Result<SweepReport, StoreError> {
        let mut writer = lock(&self.writer);
        if self.has_floor() {
            // The index writes before anything is freed: on a disk filled by something else,
            // give it the reserve's room first (fjall refuses all writes after a failed one).
            self.check_disk(&mut writer, now_ms, true);
            if writer.disk.estimate() < INDEX_HEADROOM_BYTES
                && release_reserve(&*self.fs, &self.dir)
            {
                self.check_disk(&mut writer, now_ms, true);
            }
        }
        let (evicted, more) = if writer.poisoned.is_some() {
            (0, false)
        } else {
            let mut index = write(&self.index);
            let evicted = index
                .evict_expired(now_ms, u64::from(max_items.max(1)))
                .and_then(|report| index.flush_if_due().map(|()| report));
            drop(index);
            evicted.map_err(|err| self.index_failed(&mut writer, &err))?
        };
        // A write refused for space is tried again once per sweep.
        let was_latched = std::mem::replace(&mut writer.disk.is_full_latched, false);
        let mut released = 0;
        if writer.poisoned.is_none() {
            released += self.release_segments(&mut writer);
            self.check_disk(&mut writer, now_ms, true);
            let slice = self.segment_bytes / COMPACT_SLICE_FRACTION;
            // Compaction writes before it frees: only with room to spare above the floor.
            if self.room(&writer).disk_bytes >= slice.saturating_mul(2) {
                match self.compact_one(&mut writer) {
                    Ok(()) => released += self.release_segments(&mut writer),
                    Err(err) => {
                        self.note_failure(&mut writer, &err);
                        warn!(error = %err, "compaction failed");
                    }
                }
            }
            if self.has_floor() && self.room(&writer).disk_bytes >= RESERVE_BYTES.saturating_mul(2)
            {
                ensure_reserve(&*self.fs, &self.dir, &self.faults);
            }
        }
        let room = self.room(&writer);
        let was_full = self.is_full();
        // Full for a refused write: the fresh disk check above decides. Full for the budget:
        // without anything freed it stays full (a large push may have been refused with room
        // left for small ones); a commit that stores clears it.
        let is_full = writer.disk.is_full_latched
            || is_out_of_room(&room)
            || (was_full && !was_latched && evicted == 0 && released == 0);
        self.is_full.store(is_full, Ordering::Relaxed);
        if was_full && !is_full {
            info!(evicted, released, "store has room again");
        }
        Ok(SweepReport { evicted, more })
    }

    /// Delete segments without live items (the active one is first closed when it is such):
    /// first those no mailbox's newest cursor lives in, which needs no write at all, then the
    /// others after their marks are written (deleting the reserve when even that finds the
    /// disk full). Answers how many were deleted; failures are logged.
    fn release_segments(&self, writer: &mut Writer) -> usize {
        let mut released = self.release_dead(writer, false);
        let active_is_dead = read(&self.index)
            .segments
            .get(&writer.id)
            .is_some_and(|s| s.counts.live == 0 && s.counts.item_records > 0);
        if active_is_dead {
            match self.roll(writer, &self.faults) {
                Ok(()) => released += self.release_dead(writer, false),
                Err(err) => {
                    self.note_failure(writer, &err);
                    warn!(error = %err, "cannot close the dead active segment");
                }
            }
        }
        released + self.release_dead(writer, true)
    }

    /// Delete dead closed segments; with `with_marks`, also those that need marks written
    /// first. Answers how many were deleted.
    fn release_dead(&self, writer: &mut Writer, with_marks: bool) -> usize {
        let (dead, marks) = {
            let index = read(&self.index);
            let mut dead: BTreeMap<u32, Vec<(MailboxId, u64)>> = index
                .segments
                .iter()
                .filter(|(id, s)| **id != writer.id && s.counts.live == 0)
                .map(|(id, _)| (*id, Vec::new()))
                .collect();
            if dead.is_empty() {
                return 0;
            }
            for mailbox in &index.mailboxes {
                if let Some(marks) = dead.get_mut(&mailbox.latest_segment) {
                    marks.push((mailbox.id, mailbox.meta.latest));
                }
            }
            if !with_marks {
                dead.retain(|_, marks| marks.is_empty());
            }
            let marks: Vec<(MailboxId, u64)> = dead.values().flatten().copied().collect();
            (dead.into_keys().collect::<Vec<u32>>(), marks)
        };
        if dead.is_empty() {
            return 0;
        }
        if !marks.is_empty() {
            let mut frames = Vec::with_capacity(marks.len() * (FRAME_HEADER + core::MARK_BODY));
            let mut frame_lens = Vec::with_capacity(marks.len());
            for (mailbox, latest) in &marks {
                frame_lens.push(core::encode_mark(&mut frames, mailbox, *latest) as u32);
            }
            let mut buf = Vec::with_capacity(core::batch_header_len(marks.len()) + frames.len());
            core::encode_batch(&mut buf, &self.sync, &frames, &frame_lens);
            let mut written = self.append(writer, &buf, &self.faults);
            if matches!(written, Err(StoreError::StorageFull { .. }))
                && release_reserve(&*self.fs, &self.dir)
            {
                written = self.append(writer, &buf, &self.faults);
            }
            if let Err(err) = written {
                self.note_failure(writer, &err);
                warn!(error = %err, segments = dead.len(), "cannot write marks; dead segments stay until the next sweep");
                return 0;
            }
            let mut index = write(&self.index);
            for (mailbox, latest) in &marks {
                index.mark(writer.id, mailbox, *latest);
            }
            if let Some(seg) = index.segments.get_mut(&writer.id) {
                seg.size = writer.len;
            }
        }
        // The index is durable before any segment goes: after a crash no item it knows can
        // point into a deleted segment.
        {
            let mut index = write(&self.index);
            let applied = index
                .apply(Some((writer.id, writer.len, writer.len)))
                .and_then(|()| index.persist());
            drop(index);
            if let Err(err) = applied {
                self.index_failed(writer, &err);
                return 0;
            }
        }
        let mut released = 0;
        for id in &dead {
            let path = segment_path(&self.dir, *id);
            match self.fs.remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == ErrorKind::NotFound => {}
                Err(err) => {
                    error!(error = %err, segment = id, "cannot delete a dead segment");
                    continue;
                }
            }
            write(&self.index).remove_segment(*id);
            released += 1;
        }
        if let Err(err) = self.fs.sync_dir(&self.dir) {
            error!(error = %err, "cannot sync the store directory");
        }
        if let Err(err) = write(&self.index).apply(None) {
            self.index_failed(writer, &err);
        }
        info!(
            segments = released,
            marks = marks.len(),
            "released segments"
        );
        released
    }

    /// Copy live items of the emptiest closed segment whose live bytes are under a quarter of
    /// its size to the active segment, a bounded slice per call; once none are left in it, it
    /// is dead and released right after. The segment's batches are walked in file order from
    /// where the last slice stopped; the records the index still places there are the live
    /// ones. A damaged item is dropped (and counted), never copied under a fresh CRC; a
    /// damaged batch header ends the walk of that segment (what lies after it stays where it
    /// is, served and counted live).
    fn compact_one(&self, writer: &mut Writer) -> Result<(), StoreError> {
        let retry = self.budget.full_retry_after_ms;
        let first = SEGMENT_HEADER as u64;
        let candidate = {
            let index = read(&self.index);
            index
                .segments
                .iter()
                .filter(|(id, s)| {
                    **id != writer.id
                        && s.counts.live > 0
                        && s.size >= self.segment_bytes / 2
                        && s.counts.live_bytes * COMPACT_LIVE_FRACTION < s.size
                        && s.compacted_upto < s.size
                })
                .min_by_key(|(_, s)| s.counts.live_bytes)
                .map(|(id, s)| (*id, s.file.clone(), s.size, s.compacted_upto.max(first)))
        };
        let Some((id, file, size, from)) = candidate else {
            return Ok(());
        };
        let read_at = |len: usize, at: u64| -> Result<Vec<u8>, StoreError> {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, at)
                .map_err(|err| io_failure("compaction read", &err, retry))?;
            Ok(buf)
        };
        let mut magic = [0u8; 8];
        file.read_exact_at(&mut magic, 0)
            .map_err(|err| io_failure("compaction read", &err, retry))?;
        if &magic == SEGMENT_MAGIC_3 {
            // Format 3 has no batches to walk: it goes when its items expire.
            if let Some(seg) = write(&self.index).segments.get_mut(&id) {
                seg.compacted_upto = size;
            }
            return Ok(());
        }
        let budget = self.segment_bytes / COMPACT_SLICE_FRACTION;
        let mut frames = Vec::new();
        let mut frame_lens: Vec<u32> = Vec::new();
        let mut damaged = Vec::new();
        let mut at = from;
        let mut is_damaged = false;
        {
            let index = read(&self.index);
            while (frames.len() as u64) < budget && at + core::BATCH_FIXED as u64 <= size {
                let fixed = read_at(core::BATCH_FIXED, at)?;
                let Some((count, total)) = core::parse_batch_fixed(&fixed, &self.sync) else {
                    is_damaged = true;
                    break;
                };
                let header_len = core::batch_header_len(count);
                let end = at + header_len as u64 + total;
                if end > size {
                    is_damaged = true;
                    break;
                }
                let header = read_at(header_len, at)?;
                let Some(lens) = core::parse_batch_header(&header, &self.sync) else {
                    is_damaged = true;
                    break;
                };
                let body = read_at(total as usize, at + header_len as u64)?;
                let mut p = 0usize;
                for len in lens {
                    let frame = &body[p..p + len as usize];
                    let offset = at + (header_len + p) as u64;
                    p += len as usize;
                    let placed_here = |mailbox: &MailboxId, cursor: u64| {
                        let Some(slot) = index.slots.get(mailbox) else {
                            return Ok(None);
                        };
                        index.loc(*slot, cursor).map(|loc| {
                            loc.filter(|l| l.segment == id && u64::from(l.offset) == offset)
                        })
                    };
                    let index_failed = |err: IndexError| {
                        error!(error = %err, "store index lookup failed");
                        StoreError::Unavailable("index lookup failed".into())
                    };
                    match core::decode_frame(frame) {
                        Some(Record::Item(item)) => {
                            let Some(loc) =
                                placed_here(&item.mailbox, item.cursor).map_err(index_failed)?
                            else {
                                continue;
                            };
                            if core::verify_item_frame(frame).is_some() {
                                frames.extend_from_slice(frame);
                                frame_lens.push(len);
                            } else {
                                damaged.push((item.mailbox, item.cursor, loc));
                            }
                        }
                        Some(Record::Mark { .. }) => {}
                        None => {
                            // What it seems to be: dropped only if the index places that
                            // very item here.
                            if let Some((mailbox, cursor)) = scan::cursor_hint(frame)
                                && let Some(loc) =
                                    placed_here(&mailbox, cursor).map_err(index_failed)?
                            {
                                damaged.push((mailbox, cursor, loc));
                            }
                        }
                    }
                }
                at = end;
            }
        }
        if !damaged.is_empty() {
            self.drop_damaged(damaged);
        }
        let upto = if is_damaged {
            warn!(
                segment = id,
                offset = at,
                "compaction stopped at a damaged batch header"
            );
            size
        } else if at + core::BATCH_FIXED as u64 > size {
            // Walked to the end: start over if anything is left (nothing should be).
            first
        } else {
            at
        };
        let copied = frame_lens.len();
        if copied > 0 {
            let mut buf = Vec::with_capacity(core::batch_header_len(copied) + frames.len());
            core::encode_batch(&mut buf, &self.sync, &frames, &frame_lens);
            self.roll_if_full(writer, buf.len() as u64, &self.faults)?;
            let base = writer.len + core::batch_header_len(copied) as u64;
            self.append(writer, &buf, &self.faults)?;
            let mut index = write(&self.index);
            let mut p = 0usize;
            let mut indexed = Ok(());
            for len in &frame_lens {
                let frame = &frames[p..p + *len as usize];
                if let Some(Record::Item(item)) = core::decode_frame(frame)
                    && indexed.is_ok()
                {
                    indexed =
                        index.insert_item(writer.id, base + p as u64, frame.len(), &item, true);
                }
                p += *len as usize;
            }
            index.count_records(writer.id, copied as u64);
            if let Some(seg) = index.segments.get_mut(&writer.id) {
                seg.size = writer.len;
            }
            let applied = indexed
                .and_then(|()| index.apply(Some((writer.id, writer.len, writer.len))))
                .and_then(|()| index.flush_if_due());
            drop(index);
            if let Err(err) = applied {
                return Err(self.index_failed(writer, &err));
            }
            info!(segment = id, items = copied, "copied live items forward");
        }
        if let Some(seg) = write(&self.index).segments.get_mut(&id) {
            seg.compacted_upto = upto;
        }
        Ok(())
    }

    /// A page of durable, unexpired items of `mailbox` after `after`.
    pub fn read_page(
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
        // Where the records lie, found under the index lock; read without it.
        let mut wanted: Vec<(u64, Loc, Arc<dyn StoreFile>)> = Vec::new();
        {
            let index = read(&self.index);
            let mut fill = core::PageFill::new(max_items, max_bytes);
            index
                .items_after(mailbox, after, |cursor, loc| {
                    if loc.expires_at_ms <= now_ms {
                        page.next = Cursor(cursor);
                        return true;
                    }
                    if fill.is_full(loc.ciphertext_len()) {
                        page.has_more = true;
                        return false;
                    }
                    if let Some(segment) = index.segments.get(&loc.segment) {
                        fill.add(loc.ciphertext_len());
                        page.next = Cursor(cursor);
                        wanted.push((cursor, loc, segment.file.clone()));
                    }
                    true
                })
                .map_err(|err| {
                    error!(error = %err, "store index read failed");
                    StoreError::Unavailable("index read failed".into())
                })?;
        }
        // Records next to each other in one segment are read with one call.
        let mut frames: Vec<(u64, Loc, Bytes)> = Vec::with_capacity(wanted.len());
        let mut start = 0;
        while start < wanted.len() {
            let mut end = start + 1;
            while end < wanted.len()
                && wanted[end].1.segment == wanted[end - 1].1.segment
                && u64::from(wanted[end].1.offset)
                    == u64::from(wanted[end - 1].1.offset) + u64::from(wanted[end - 1].1.len)
            {
                end += 1;
            }
            let run = &wanted[start..end];
            let first = run[0].1;
            let total: usize = run.iter().map(|(_, loc, _)| loc.len as usize).sum();
            let mut buf = vec![0u8; total];
            run[0]
                .2
                .read_exact_at(&mut buf, u64::from(first.offset))
                .map_err(|err| io_failure("reading the store", &err, 1_000))?;
            let buf = Bytes::from(buf);
            let mut at = 0usize;
            for (cursor, loc, _) in run {
                frames.push((*cursor, *loc, buf.slice(at..at + loc.len as usize)));
                at += loc.len as usize;
            }
            start = end;
        }
        let mut damaged = Vec::new();
        for ((cursor, loc, _), item) in frames.iter().zip(verify_frames(mailbox, &frames)) {
            match item {
                Some(item) => page.items.push(item),
                None => damaged.push((*mailbox, *cursor, *loc)),
            }
        }
        if !damaged.is_empty() {
            self.drop_damaged(damaged);
        }
        Ok(page)
    }

    /// Items found damaged on a read or a compaction (their CRC fails, or their blob id is not
    /// `BLAKE3` of their ciphertext): logged with file and offset, counted once each, and
    /// dropped from the index so they are never served. `mailbox` is the item's, when known.
    fn drop_damaged(&self, damaged: Vec<(MailboxId, u64, Loc)>) {
        let mut index = write(&self.index);
        let mut dropped = false;
        for (mailbox, cursor, loc) in damaged {
            let path = segment_path(&self.dir, loc.segment);
            let Some(slot) = index.slots.get(&mailbox).copied() else {
                continue;
            };
            // Still the damaged copy (another reader may have dropped it first).
            let is_that_copy = index.loc(slot, cursor).is_ok_and(|found| {
                found.is_some_and(|l| l.segment == loc.segment && l.offset == loc.offset)
            });
            if is_that_copy && index.remove_item(slot, cursor).unwrap_or(false) {
                dropped = true;
                index.note_damage(loc.segment, u64::from(loc.offset));
                error!(
                    file = %path.display(),
                    offset = loc.offset,
                    bytes = loc.len,
                    what = "item",
                    "store damage: an item failed its check on read; it is not served"
                );
            }
        }
        if dropped && let Err(err) = index.apply(None) {
            error!(error = %err, "cannot drop damaged items from the store index");
        }
    }

    /// Damaged records found since the store opened (at open and on reads).
    pub fn damaged_records(&self) -> u64 {
        read(&self.index).damage.len() as u64
    }

    /// Write the "closed" marker (an empty batch) and make it durable, so the next open
    /// knows the log ends where it should: a bad last batch is then damage, not a torn write.
    /// Idempotent; a write after it makes the log open again. Also run by `Drop`.
    pub fn close(&self) -> Result<(), StoreError> {
        let mut writer = lock(&self.writer);
        if writer.poisoned.is_some() || writer.is_closed {
            return Ok(());
        }
        let mut buf = vec![0u8; core::CLOSED_BATCH_BYTES];
        core::seal_batch_header(&mut buf, &self.sync, &[]);
        self.append(&mut writer, &buf, &FaultPlan::none())?;
        writer.is_closed = true;
        // The index, so the next open replays nothing but the marker (a store that cannot
        // write its marker cannot be trusted to write its index either: it is left as a crash
        // would leave it, and the next open replays the log after its checkpoint).
        if let Err(err) = write(&self.index).persist() {
            warn!(error = %err, "cannot write the store index at close; the next open replays the log");
        }
        if let Some(seg) = write(&self.index).segments.get_mut(&writer.id) {
            seg.size = writer.len;
        }
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(err) = self.close() {
            warn!(error = %err, "cannot mark the store closed; the next open treats its last write as possibly torn");
        }
    }
}

/// Pages of at least this many items are checked on more than one thread.
const VERIFY_PARALLEL_MIN: usize = 128;

/// Check each frame read for a page (CRC, `BLAKE3(ciphertext) == blob id`, and that it is the
/// item of `mailbox` the index names); `None` for a damaged one. Hashing is most of a read's
/// cost, so a large page is checked on up to as many threads as there are cores.
fn verify_frames(mailbox: &MailboxId, frames: &[(u64, Loc, Bytes)]) -> Vec<Option<Item>> {
    let one = |(cursor, loc, frame): &(u64, Loc, Bytes)| -> Option<Item> {
        let item = core::verify_item_frame(frame)?;
        let is_named =
            item.cursor == *cursor && item.mailbox == *mailbox && item.blob_id == loc.blob_id;
        is_named.then(|| Item {
            cursor: Cursor(*cursor),
            blob_id: item.blob_id,
            ciphertext: frame.slice(FRAME_HEADER + ITEM_HEADER..),
            stored_at_ms: item.stored_at_ms,
        })
    };
    let threads = match frames.len() >= VERIFY_PARALLEL_MIN {
        true => std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        false => 1,
    };
    if threads <= 1 {
        return frames.iter().map(one).collect();
    }
    let chunk = frames.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let others: Vec<_> = frames
            .chunks(chunk)
            .skip(1)
            .map(|part| {
                (
                    part,
                    scope.spawn(move || part.iter().map(one).collect::<Vec<_>>()),
                )
            })
            .collect();
        let mut checked: Vec<Option<Item>> = frames[..chunk].iter().map(one).collect();
        for (part, thread) in others {
            // A thread that cannot be joined: its part is checked here instead.
            checked.extend(
                thread
                    .join()
                    .unwrap_or_else(|_| part.iter().map(one).collect()),
            );
        }
        checked
    })
}

/// Most records a damaged range may have held: one for a record the batch header bounds,
/// else one per smallest possible item record.
fn records_in(damage: &Damage) -> u64 {
    if damage.what == "record" {
        return 1;
    }
    damage.bytes / (FRAME_HEADER + ITEM_HEADER + 1) as u64 + 1
}

/// Largest cursor a damaged record's unverified hint may set: far above any real cursor (a
/// mailbox holds at most a few million items over its life), far below overflow.
const CURSOR_HINT_MAX: u64 = 1 << 48;

/// Cursors never go back, even when the record that set a mailbox's newest cursor is lost to
/// damage: every mailbox's newest cursor moves ahead by the most records the damage may
/// have held (a gap, which readers pass like an expired item), and a mailbox a damaged
/// record seems to name gets a mark past that record's cursor. The marks live in the damaged
/// segment, so releasing it writes them forward.
fn keep_cursors_ahead_of_damage(
    index: &mut Index,
    segment: u32,
    lost_records_max: u64,
    hints: &[(MailboxId, u64)],
) {
    let ahead: Vec<(MailboxId, u64)> = index
        .mailboxes
        .iter()
        .map(|m| (m.id, m.meta.latest.saturating_add(lost_records_max)))
        .collect();
    for (mailbox, latest) in ahead {
        index.mark(segment, &mailbox, latest);
    }
    for (mailbox, cursor) in hints {
        let latest = (*cursor)
            .min(CURSOR_HINT_MAX)
            .saturating_add(lost_records_max);
        index.mark(segment, mailbox, latest);
    }
}

/// Whether `room` cannot take even the smallest item of a mailbox the index knows.
fn is_out_of_room(room: &Room) -> bool {
    room.bytes < ITEM_CHARGE_BYTES
        || room.index_entries == 0
        || room.disk_bytes < core::RECORD_OVERHEAD_BYTES
}

impl Store {
    /// Append `buf` to the active segment and make it durable; on failure cut it back off
    /// (or, when even that fails, refuse further writes).
    fn append(
        &self,
        writer: &mut Writer,
        buf: &[u8],
        faults: &FaultPlan,
    ) -> Result<(), StoreError> {
        self.append_while(writer, buf, faults, || ()).0
    }

    /// [`Store::append`], running `during` on this thread while another one waits for the
    /// `fdatasync` (`during` runs whether or not the write succeeded; it answers its own
    /// result beside the append's).
    fn append_while<R>(
        &self,
        writer: &mut Writer,
        buf: &[u8],
        faults: &FaultPlan,
        during: impl FnOnce() -> R,
    ) -> (Result<(), StoreError>, R) {
        let retry = self.budget.full_retry_after_ms;
        let written = injected_disk_full(faults)
            .and_then(|()| writer.file.write_all_at(buf, writer.len))
            .map_err(|err| io_failure("write", &err, retry));
        if buf.len() < OVERLAP_MIN_BYTES {
            // A small batch: its index work is shorter than starting a thread.
            let result = written.and_then(|()| {
                if faults.should_fail(FaultPoint::BeforeFlush) {
                    return Err(StoreError::Unavailable("flush failed (injected)".into()));
                }
                writer
                    .file
                    .sync_data()
                    .map_err(|err| io_failure("fdatasync", &err, retry))
            });
            let during = during();
            return (self.finish_append(writer, buf, result), during);
        }
        let file = &writer.file;
        let (result, during) = std::thread::scope(|scope| {
            let synced = written.and_then(|()| {
                if faults.should_fail(FaultPoint::BeforeFlush) {
                    return Err(StoreError::Unavailable("flush failed (injected)".into()));
                }
                Ok(scope.spawn(move || file.sync_data()))
            });
            let during = during();
            let result = synced.and_then(|sync| {
                sync.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("fdatasync thread panicked")))
                    .map_err(|err| io_failure("fdatasync", &err, retry))
            });
            (result, during)
        });
        (self.finish_append(writer, buf, result), during)
    }

    /// Account a successful append, or cut a failed one back off.
    fn finish_append(
        &self,
        writer: &mut Writer,
        buf: &[u8],
        result: Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        match result {
            Ok(()) => {
                writer.is_closed = false;
                writer.len += buf.len() as u64;
                writer.disk.written_since =
                    writer.disk.written_since.saturating_add(buf.len() as u64);
                Ok(())
            }
            Err(err) => {
                // Cut what may have been written (a presized segment then grows on its own).
                let cut = writer
                    .file
                    .set_len(writer.len)
                    .and_then(|()| writer.file.sync_all());
                if let Err(cut) = cut {
                    error!(error = %cut, "cannot cut a failed write off the log; refusing writes until restart");
                    writer.poisoned =
                        Some("the store could not undo a failed write; restart the relay".into());
                }
                Err(err)
            }
        }
    }
}
