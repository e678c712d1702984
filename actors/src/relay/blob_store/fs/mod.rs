//! The store's file-system seam: every file operation of the segment log
//! ([`super::segments`]) goes through a [`StoreFs`] and the [`StoreFile`] handles it opens.
//!
//! Production uses [`OsFs`] (the real files, private to the relay's user: files 0600, the
//! store directory 0700). Tests and simulation use [`SimFs`]: in-memory files that keep what
//! was written apart from what was made durable, so a simulated power cut can drop (or tear)
//! everything that was not synced, which killing a process never shows (the page cache
//! survives it).
//!
//! The seam holds no policy: which call is made when, and what is synced, stays in the store.

mod os;
mod sim;

pub use os::OsFs;
pub use sim::{PowerCut, SimFlaw, SimFs};

use std::ffi::OsString;
use std::fmt;
use std::io::{self, ErrorKind, Read};
use std::path::Path;
use std::sync::Arc;

/// How [`StoreFs::open`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// An existing file, for reading.
    Read,
    /// An existing file, for reading and writing.
    ReadWrite,
    /// A new file (the call fails if it exists), for reading and writing.
    CreateNew,
    /// A file created if missing and cut to nothing if not, for writing.
    CreateOrTruncate,
    /// A file created if missing and kept as it is if not, for writing.
    CreateOrOpen,
}

/// An open file of the store. Positioned reads and writes only, so handles can be shared
/// between threads (`&self` everywhere).
pub trait StoreFile: Send + Sync + fmt::Debug {
    /// Read into `buf` from `offset`; answers the bytes read (0 at the end of the file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Write `buf` at `offset`; answers the bytes written.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize>;
    /// The file's length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Cut or extend (with zeros) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Make the file's data (and the length needed to read it) durable: `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// Make the file's data and all its metadata durable: `fsync`.
    fn sync_all(&self) -> io::Result<()>;
    /// Take the file's exclusive advisory lock (`flock`) without waiting; held until the
    /// handle is dropped.
    fn try_lock(&self) -> Result<(), std::fs::TryLockError>;

    /// Whether the file holds no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Fill `buf` from `offset`; an error if the file ends first.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "failed to fill whole buffer",
                    ));
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Write all of `buf` at `offset`.
    fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write_at(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        ErrorKind::WriteZero,
                        "failed to write whole buffer",
                    ));
                }
                Ok(n) => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

/// The file system the store lives on. Paths are those the store builds from its directory.
pub trait StoreFs: Send + Sync + fmt::Debug {
    /// Create `dir` and its missing parents, private to the relay's user (0700); an existing
    /// `dir` is made private too.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Open `path` as `mode` says; a file it creates is private to the relay's user (0600).
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StoreFile>>;
    /// The names of the entries of `dir`, in no particular order.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>>;
    /// Remove the file at `path` (durable only after [`StoreFs::sync_dir`] of its directory).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Rename `from` to `to`, replacing `to` (durable only after [`StoreFs::sync_dir`]).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Make the entries of `dir` (files created, removed, renamed in it) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// The length of the file at `path`.
    fn file_len(&self, path: &Path) -> io::Result<u64>;
    /// Whether anything (file or directory) is at `path`.
    fn exists(&self, path: &Path) -> bool;
    /// Free bytes for unprivileged writers on the file system holding `dir` (`statvfs`).
    fn free_bytes(&self, dir: &Path) -> io::Result<u64>;
}

/// The real file system, shared: what [`super::StoreOptions`] uses unless told otherwise.
pub fn os_fs() -> Arc<dyn StoreFs> {
    Arc::new(OsFs)
}

/// Reads a [`StoreFile`] from its start, in order, for a `BufReader` (the scan at open).
pub(crate) struct SeqReader<'a> {
    file: &'a dyn StoreFile,
    offset: u64,
}

impl<'a> SeqReader<'a> {
    pub(crate) fn new(file: &'a dyn StoreFile) -> Self {
        Self::at(file, 0)
    }

    /// A reader of `file` from `offset` on.
    pub(crate) fn at(file: &'a dyn StoreFile, offset: u64) -> Self {
        Self { file, offset }
    }
}

impl Read for SeqReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// Write `bytes` to `path` so that after a crash or power cut `path` holds either its old
/// content or all of the new: into `<path>.tmp` (made anew, so it is 0600 even if a stale one
/// was looser), synced, renamed over `path`, and the directory synced so the rename itself is
/// durable. Used for the node key and the address file.
pub fn write_file_durably(fs: &dyn StoreFs, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = path.with_extension("tmp");
    match fs.remove_file(&temp) {
        Ok(()) => {}
        Err(err) if err.kind() == ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let file = fs.open(&temp, OpenMode::CreateNew)?;
    file.write_all_at(bytes, 0)?;
    file.sync_all()?;
    drop(file);
    fs.rename(&temp, path)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs.sync_dir(dir)
}

/// The whole content of the file at `path`.
pub(crate) fn read_whole(fs: &dyn StoreFs, path: &Path) -> io::Result<Vec<u8>> {
    let file = fs.open(path, OpenMode::Read)?;
    let len = usize::try_from(file.len()?)
        .map_err(|_| io::Error::new(ErrorKind::InvalidData, "file too large to read"))?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, 0)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_durably_written_file_survives_a_power_cut_whole() {
        let fs = SimFs::new();
        let path = Path::new("/node.key");
        write_file_durably(&fs, path, b"old key").unwrap();
        fs.power_cut(PowerCut::DropUnsynced);
        assert_eq!(fs.read_file(path).unwrap(), b"old key");
        // Power lost at every sync of an overwrite: old or new, never half, never missing.
        for cut_at in 1..=3 {
            let fs = SimFs::new();
            write_file_durably(&fs, path, b"old key").unwrap();
            fs.fail_at_sync(cut_at);
            let written = write_file_durably(&fs, path, b"new key!");
            fs.power_cut(PowerCut::Torn { seed: cut_at });
            let found = fs.read_file(path).unwrap();
            assert!(found == b"old key" || found == b"new key!", "{found:?}");
            if written.is_ok() {
                assert_eq!(found, b"new key!");
            }
            assert!(!fs.exists(Path::new("/node.tmp")) || written.is_err());
        }
    }

    #[test]
    fn without_the_directory_sync_a_new_file_is_lost() {
        // What the directory sync in `write_file_durably` is for, shown by taking it away.
        let fs = SimFs::with_flaw(SimFlaw::SyncDirKeepsNothing);
        write_file_durably(&fs, Path::new("/relay.addr"), b"addr").unwrap();
        fs.power_cut(PowerCut::DropUnsynced);
        assert!(!fs.exists(Path::new("/relay.addr")));
    }

    #[test]
    fn a_sync_keeps_every_change_since_the_last_one_and_only_those() {
        // Writes, a shrink and a regrow between syncs (a sync copies only what changed).
        let fs = SimFs::new();
        let path = Path::new("/seg");
        let file = fs.open(path, OpenMode::CreateNew).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        file.set_len(8192).unwrap();
        file.write_all_at(b"head", 0).unwrap();
        file.sync_data().unwrap();
        file.write_all_at(b"tail", 8000).unwrap();
        file.set_len(100).unwrap();
        file.set_len(9000).unwrap();
        file.write_all_at(b"mid", 50).unwrap();
        file.sync_data().unwrap();
        let synced = fs.read_file(path).unwrap();
        file.write_all_at(b"lost", 10).unwrap();
        fs.power_cut(PowerCut::DropUnsynced);
        let kept = fs.read_file(path).unwrap();
        assert_eq!(kept, synced);
        assert_eq!(kept.len(), 9000);
        assert_eq!(&kept[..4], b"head");
        assert_eq!(&kept[50..53], b"mid");
        assert!(
            kept[8000..8004].iter().all(|b| *b == 0),
            "cut off, then regrown as zeros"
        );
    }

    #[test]
    fn a_wiped_disk_is_empty_and_old_handles_fail() {
        let fs = SimFs::new();
        write_file_durably(&fs, Path::new("/a"), b"bytes").unwrap();
        let handle = fs.open(Path::new("/a"), OpenMode::Read).unwrap();
        assert_eq!(fs.file_contents(), vec![b"bytes".to_vec()]);
        fs.wipe();
        assert!(!fs.exists(Path::new("/a")));
        assert!(fs.file_contents().is_empty());
        assert!(handle.len().is_err());
        write_file_durably(&fs, Path::new("/b"), b"new").unwrap();
        assert_eq!(fs.read_file(Path::new("/b")).unwrap(), b"new");
    }
}
