//! [`OsFs`]: the store's seam on the real file system. Files the store creates are 0600 and
//! its directory 0700: they hold other people's ciphertext and metadata (who talks in which
//! mailbox, when), which no other local user may read.

use super::{OpenMode, StoreFile, StoreFs};
use std::ffi::OsString;
use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every file the store creates: the relay's user only.
pub const FILE_MODE: u32 = 0o600;
/// Mode of the store's directory: the relay's user only.
pub const DIR_MODE: u32 = 0o700;

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsFs;

/// A real open file.
#[derive(Debug)]
struct OsFile(File);

impl StoreFile for OsFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.0.write_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }
    fn try_lock(&self) -> Result<(), std::fs::TryLockError> {
        self.0.try_lock()
    }
    // The positioned loops of std (one call per chunk, `Interrupted` retried).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
}

impl StoreFs for OsFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)?;
        // A directory that was already there (or made under a loose umask) is tightened.
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode != DIR_MODE {
            std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))?;
        }
        Ok(())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StoreFile>> {
        let mut options = OpenOptions::new();
        match mode {
            OpenMode::Read => options.read(true),
            OpenMode::ReadWrite => options.read(true).write(true),
            OpenMode::CreateNew => options.read(true).write(true).create_new(true),
            OpenMode::CreateOrTruncate => options.write(true).create(true).truncate(true),
            OpenMode::CreateOrOpen => options.write(true).create(true).truncate(false),
        };
        options.mode(FILE_MODE);
        Ok(Box::new(OsFile(options.open(path)?)))
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect()
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn free_bytes(&self, dir: &Path) -> io::Result<u64> {
        let stat = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::FaultPlan;
    use crate::relay::blob_store::core::{StoreLimits, charged_bytes};
    use crate::relay::blob_store::segments::Store;
    use bytes::Bytes;
    use zerok_messages::relay::AppendRequest;
    use zerok_messages::{BlobId, MailboxId};

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Every file and directory under `dir`, `dir` included.
    fn tree(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = vec![dir.to_path_buf()];
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(tree(&path));
            } else {
                out.push(path);
            }
        }
        out
    }

    /// The store holds other people's ciphertext and who-talks-when metadata: no other local
    /// user may read it, whatever the umask, and a store directory made loose is tightened.
    #[test]
    fn the_stores_files_are_not_world_readable() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data").join("store");
        let loose = root.path().join("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, Permissions::from_mode(0o755)).unwrap();
        for dir in [&dir, &loose] {
            let store = Store::open(dir, 4096).unwrap();
            // Enough items to roll a few segments.
            for n in 0..20u32 {
                let ciphertext = Bytes::from(vec![n as u8; 600]);
                let request = AppendRequest {
                    token: 0,
                    mailbox: MailboxId([7; 32]),
                    blob_id: BlobId::of_ciphertext(&ciphertext),
                    ciphertext,
                    ttl_secs: Some(60),
                };
                store
                    .commit(
                        &[request],
                        1_000,
                        &StoreLimits::default(),
                        &FaultPlan::none(),
                    )
                    .unwrap();
            }
            assert!(store.stats().charged_bytes >= 20 * charged_bytes(600));
            assert!(store.stats().segments >= 3, "{:?}", store.stats());
            let paths = tree(dir);
            assert!(paths.len() >= 6, "{paths:?}");
            let index = dir.join("index");
            assert_eq!(mode(&index), DIR_MODE, "the index's directory is private");
            for path in paths {
                // The index is a fjall database: fjall makes its files with the process's
                // umask, and its private directory keeps them from other users.
                if path.starts_with(&index) && path != index {
                    continue;
                }
                let expected = if path.is_dir() { DIR_MODE } else { FILE_MODE };
                assert_eq!(mode(&path), expected, "{}", path.display());
            }
        }
        assert_eq!(mode(&root.path().join("data")), DIR_MODE);
    }
}
