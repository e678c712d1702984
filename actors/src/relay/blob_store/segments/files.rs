//! The store's files: segments, the reserve, the format file, the directory.

use super::*;
pub(super) fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:020}{SEGMENT_SUFFIX}"))
}

/// Create segment `id`: header (with the store's sync marker) written, file presized to
/// `presize` bytes (sparse; an `fdatasync` after a write that does not grow the file is about
/// half the cost of one after an append on ext4), all durable, directory entry durable.
/// Answers the write handle and a read handle.
pub(super) fn create_segment(
    fs: &dyn StoreFs,
    dir: &Path,
    id: u32,
    presize: u64,
    sync: &[u8; SYNC_BYTES],
    faults: &FaultPlan,
) -> std::io::Result<(Box<dyn StoreFile>, Box<dyn StoreFile>)> {
    injected_disk_full(faults)?;
    let path = segment_path(dir, id);
    let file = fs.open(&path, OpenMode::CreateNew)?;
    let prepared = file
        .write_all_at(&core::encode_segment_header(sync), 0)
        .and_then(|()| file.set_len(presize.max(SEGMENT_HEADER as u64)))
        .and_then(|()| file.sync_all())
        .and_then(|()| fs.sync_dir(dir))
        .and_then(|()| fs.open(&path, OpenMode::Read));
    match prepared {
        Ok(reader) => Ok((file, reader)),
        Err(err) => {
            // Leave no half-made segment behind: the next attempt creates the same id.
            drop(file);
            let _ = fs.remove_file(&path);
            Err(err)
        }
    }
}

/// Write the reserve file (`RESERVE_BYTES` of zeros, durable) unless it is already whole;
/// answers whether it is there. A failure leaves no partial reserve behind.
pub(super) fn ensure_reserve(fs: &dyn StoreFs, dir: &Path, faults: &FaultPlan) -> bool {
    let path = dir.join(RESERVE_FILE);
    if fs.file_len(&path).is_ok_and(|len| len == RESERVE_BYTES) {
        return true;
    }
    let written = injected_disk_full(faults).and_then(|()| {
        let file = fs.open(&path, OpenMode::CreateOrTruncate)?;
        let zeros = vec![0u8; 64 * 1024];
        let mut at = 0u64;
        while at < RESERVE_BYTES {
            let n = (RESERVE_BYTES - at).min(zeros.len() as u64);
            file.write_all_at(&zeros[..n as usize], at)?;
            at += n;
        }
        file.sync_all()?;
        fs.sync_dir(dir)
    });
    match written {
        Ok(()) => true,
        Err(err) => {
            warn!(error = %err, "cannot write the store's reserve file");
            let _ = fs.remove_file(&path);
            false
        }
    }
}

/// Delete the reserve file (durably); answers whether there was one.
pub(super) fn release_reserve(fs: &dyn StoreFs, dir: &Path) -> bool {
    let path = dir.join(RESERVE_FILE);
    match fs.remove_file(&path) {
        Ok(()) => {
            let _ = fs.sync_dir(dir);
            warn!("disk full: released the store's reserve to free space");
            true
        }
        Err(_) => false,
    }
}

/// The format check: answers the format of the directory's store (a new directory gets the
/// current one); a directory of another store is refused. Format 3 is answered as found; the
/// caller upgrades it once its segments are read.
pub(super) fn check_format(fs: &dyn StoreFs, dir: &Path) -> Result<String, OpenError> {
    let path = dir.join(FORMAT_FILE);
    match fs::read_whole(fs, &path) {
        Ok(found)
            if String::from_utf8_lossy(&found).trim() == FORMAT_VERSION
                || String::from_utf8_lossy(&found).trim() == FORMAT_VERSION_3 =>
        {
            Ok(String::from_utf8_lossy(&found).trim().to_string())
        }
        Ok(found) => Err(OpenError::Format {
            path: dir.display().to_string(),
            found: String::from_utf8_lossy(&found).trim().to_string(),
        }),
        Err(err) if err.kind() == ErrorKind::NotFound => {
            // A sled directory of an older relay (format 2) has `conf` and `db`.
            if fs.exists(&dir.join("conf")) || fs.exists(&dir.join("db")) {
                return Err(OpenError::Format {
                    path: dir.display().to_string(),
                    found: "zerok-store-2 (sled)".to_string(),
                });
            }
            write_format(fs, dir)?;
            Ok(FORMAT_VERSION.to_string())
        }
        Err(err) => Err(io_err(&path)(err)),
    }
}

/// Write the current format to the directory's format file, durably (temp file, rename,
/// directory sync).
pub(super) fn write_format(fs: &dyn StoreFs, dir: &Path) -> Result<(), OpenError> {
    let path = dir.join(FORMAT_FILE);
    let tmp = dir.join("FORMAT.tmp");
    fs.open(&tmp, OpenMode::CreateOrTruncate)
        .and_then(|f| {
            f.write_all_at(format!("{FORMAT_VERSION}\n").as_bytes(), 0)?;
            f.sync_all()
        })
        .map_err(io_err(&tmp))?;
    fs.rename(&tmp, &path).map_err(io_err(&path))?;
    fs.sync_dir(dir).map_err(io_err(dir))
}

/// The store's sync marker: the one its newest readable segment header holds; for a store
/// without segments of the current format, a new random one.
pub(super) fn store_sync(
    fs: &dyn StoreFs,
    dir: &Path,
    ids: &[u32],
) -> Result<[u8; SYNC_BYTES], OpenError> {
    let mut guess = None;
    for id in ids.iter().rev() {
        let path = segment_path(dir, *id);
        let file = fs.open(&path, OpenMode::Read).map_err(io_err(&path))?;
        match read_sync(&*file).map_err(io_err(&path))? {
            SyncFound::Verified(sync) => return Ok(sync),
            SyncFound::Guess(sync) => guess = guess.or(Some(sync)),
            SyncFound::None => {}
        }
    }
    Ok(guess.unwrap_or_else(|| crate::rng::Rng::system().bytes()))
}

/// Segment ids in `dir`, ascending.
pub(super) fn segment_ids(fs: &dyn StoreFs, dir: &Path) -> Result<Vec<u32>, OpenError> {
    let mut ids = Vec::new();
    for name in fs.list_dir(dir).map_err(io_err(dir))? {
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_SUFFIX)) else {
            continue;
        };
        if let Ok(id) = stem.parse::<u32>() {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}
