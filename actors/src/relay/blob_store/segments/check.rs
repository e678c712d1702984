//! `zerok-relay check`: verify a stopped store offline. Takes the store's lock (so a running
//! relay is refused, not raced), reads every segment with the same scan as an open, plus a
//! `BLAKE3` check of every item's blob id, and changes nothing on disk.

use super::*;

/// What [`check_store`] found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// The store's format.
    pub format: String,
    /// Segment files.
    pub segments: u64,
    /// Batches read whole (format 4).
    pub batches: u64,
    /// Item records and mark records that verify.
    pub items: u64,
    /// Mark records that verify.
    pub marks: u64,
    /// Items the index would serve (the newest copy of each, unexpired or not).
    pub indexed_items: u64,
    /// Damaged ranges: segment file and what was found there.
    pub damage: Vec<(PathBuf, Damage)>,
    /// An unacknowledged torn write at the end of the newest segment (the next open cuts it).
    pub torn_tail: Option<(PathBuf, u64)>,
    /// Whether the last write was the "closed" marker of a clean stop.
    pub is_closed_cleanly: bool,
}

impl CheckReport {
    /// Whether anything is damaged (a torn tail is not damage: it was never acknowledged).
    pub fn is_damaged(&self) -> bool {
        !self.damage.is_empty()
    }
}

/// Verify the store in `dir` without changing it. Refused (`Locked`) while a relay has it
/// open.
pub fn check_store(dir: &Path) -> Result<CheckReport, OpenError> {
    let format_path = dir.join(FORMAT_FILE);
    let format = match std::fs::read_to_string(&format_path) {
        Ok(found) => found.trim().to_string(),
        Err(err) if err.kind() == ErrorKind::NotFound => {
            return Err(OpenError::NotAStore {
                path: dir.display().to_string(),
            });
        }
        Err(err) => return Err(io_err(&format_path)(err)),
    };
    if format != FORMAT_VERSION && format != FORMAT_VERSION_3 {
        return Err(OpenError::Format {
            path: dir.display().to_string(),
            found: format,
        });
    }
    let lock_path = dir.join(LOCK_FILE);
    // Held until the check ends; a store that never ran has no lock file.
    let _lock = match std::fs::File::open(&lock_path) {
        Ok(file) => {
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(OpenError::Locked {
                        path: dir.display().to_string(),
                    });
                }
                Err(std::fs::TryLockError::Error(err)) => return Err(io_err(&lock_path)(err)),
            }
            Some(file)
        }
        Err(err) if err.kind() == ErrorKind::NotFound => None,
        Err(err) => return Err(io_err(&lock_path)(err)),
    };
    let fs = fs::os_fs();
    let ids = segment_ids(&*fs, dir)?;
    let sync = store_sync(&*fs, dir, &ids)?;
    let mut index = Tally::default();
    let mut report = CheckReport {
        format,
        segments: ids.len() as u64,
        ..CheckReport::default()
    };
    for (n, id) in ids.iter().enumerate() {
        let path = segment_path(dir, *id);
        let file = fs.open(&path, OpenMode::Read).map_err(io_err(&path))?;
        let is_last = n + 1 == ids.len();
        let ctx = ScanContext {
            sync,
            is_newest: is_last,
            verify_blob_ids: true,
        };
        let scanned = scan_segment(&mut index, *id, &*file, 0, &ctx).map_err(io_err(&path))?;
        report.batches += scanned.batches;
        report.items += scanned.items;
        report.marks += scanned.marks;
        report
            .damage
            .extend(scanned.damage.into_iter().map(|d| (path.clone(), d)));
        if let Some(at) = scanned.torn_at {
            report.torn_tail = Some((path.clone(), at));
        }
        if is_last {
            report.is_closed_cleanly = scanned.closed_at.is_some() && scanned.torn_at.is_none();
        }
    }
    report.indexed_items = index.items.len() as u64;
    Ok(report)
}

/// The items a scan found, each once however many copies (compaction) the log holds: a
/// 16-byte digest of (mailbox, cursor) each, so a check of 10 million items needs ~300 MiB.
#[derive(Default)]
struct Tally {
    items: std::collections::HashSet<[u8; 16]>,
}

impl ScanSink for Tally {
    fn item(
        &mut self,
        _segment: u32,
        _offset: u64,
        _len: usize,
        item: &ItemRecord<'_>,
    ) -> Result<(), IndexError> {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&item.mailbox.0);
        hasher.update(&item.cursor.to_le_bytes());
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        self.items.insert(digest);
        Ok(())
    }

    fn mark(&mut self, _segment: u32, _mailbox: &MailboxId, _latest: u64) {}
}
