//! [`SimFs`]: an in-memory file system that can lose power, for tests and deterministic
//! simulation of the store.
//!
//! Every file has its durable bytes and its current bytes: writes and `set_len` change the
//! current bytes; `sync_data`/`sync_all` make them durable. Every directory has its durable
//! entries and the entry operations since (create, remove, rename); `sync_dir` makes them
//! durable. A [`SimFs::power_cut`] then keeps only what was durable
//! ([`PowerCut::DropUnsynced`]) or, like a real disk that wrote some pages and not others, a
//! random page-granular part of what was written since the last sync and a random prefix of
//! each directory's unsynced entry operations ([`PowerCut::Torn`]).
//!
//! [`SimFs::fail_at_sync`] loses power at a chosen sync call: that call and every operation
//! after it fail (as on a machine that is gone) until the power cut is applied, so a test can
//! cut power at every sync point of a run. A [`SimFlaw`] makes one kind of sync do nothing,
//! to show that a checker notices a store that forgot a sync.
//!
//! Paths must be absolute; `/` exists from the start (durable). Renames stay within one
//! directory (all the store does). Bounds: everything is in memory; sync copies the file.

use super::{OpenMode, StoreFile, StoreFs};
use crate::rng::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::io::{self, ErrorKind};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use zerok_messages::sync::lock;

/// Granularity of a torn write: the page size of the page cache, the unit a disk writes back.
const PAGE_BYTES: usize = 4096;

/// What a power cut keeps of what was not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerCut {
    /// Nothing: every file back to its durable bytes, every directory to its durable entries.
    DropUnsynced,
    /// A random part, drawn from `seed`: per file its durable or its current length, and its
    /// unsynced pages either as a random subset or as a random prefix (in file order); per
    /// directory a random prefix of its unsynced entry operations.
    Torn {
        /// Seed of the draw.
        seed: u64,
    },
}

/// A deliberately broken [`SimFs`]: one kind of sync answers `Ok` and makes nothing durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SimFlaw {
    /// `sync_data` does nothing (as if the store's `fdatasync` were deleted).
    SyncDataKeepsNothing,
    /// `sync_dir` does nothing (as if the store's directory syncs were deleted).
    SyncDirKeepsNothing,
}

/// An in-memory file system that can lose power. Clones share the same files.
#[derive(Clone)]
pub struct SimFs {
    world: Arc<Mutex<World>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    File(u64),
    Dir,
}

#[derive(Debug, Clone)]
enum DirOp {
    Insert(OsString, Entry),
    Remove(OsString),
    Rename(OsString, OsString),
}

impl DirOp {
    fn apply(&self, entries: &mut BTreeMap<OsString, Entry>) {
        match self {
            DirOp::Insert(name, entry) => {
                entries.insert(name.clone(), *entry);
            }
            DirOp::Remove(name) => {
                entries.remove(name);
            }
            DirOp::Rename(from, to) => {
                if let Some(entry) = entries.remove(from) {
                    entries.insert(to.clone(), entry);
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct SimDir {
    durable: BTreeMap<OsString, Entry>,
    current: BTreeMap<OsString, Entry>,
    /// Operations on `durable` since the last sync, in order (`current` has them applied).
    pending: Vec<DirOp>,
}

impl SimDir {
    fn apply(&mut self, op: DirOp) {
        op.apply(&mut self.current);
        self.pending.push(op);
    }
}

#[derive(Debug, Default)]
struct SimInode {
    durable: Vec<u8>,
    current: Vec<u8>,
    /// The byte range written or resized since the last sync (one range covering every
    /// change): a sync copies only it, so syncing a large preallocated segment after an
    /// append costs the append, not the segment.
    dirty: Option<(usize, usize)>,
    /// The handle holding the file's lock.
    locked_by: Option<u64>,
}

impl SimInode {
    /// Note that bytes `from..to` changed.
    fn touch(&mut self, from: usize, to: usize) {
        if from < to {
            self.dirty = Some(match self.dirty {
                Some((lo, hi)) => (lo.min(from), hi.max(to)),
                None => (from, to),
            });
        }
    }

    /// Make the current bytes durable, copying what changed since the last sync.
    fn make_durable(&mut self) {
        let len = self.current.len();
        self.durable.resize(len, 0);
        if let Some((lo, hi)) = self.dirty.take() {
            let hi = hi.min(len);
            if lo < hi {
                self.durable[lo..hi].copy_from_slice(&self.current[lo..hi]);
            }
        }
    }
}

#[derive(Debug)]
struct World {
    files: BTreeMap<u64, SimInode>,
    dirs: BTreeMap<PathBuf, SimDir>,
    next_ino: u64,
    next_handle: u64,
    /// Bumped by every power cut: handles of an older epoch fail.
    epoch: u64,
    sync_calls: u64,
    /// The sync call (by number) at which power is lost.
    fail_at_sync: Option<u64>,
    is_powered_off: bool,
    flaw: Option<SimFlaw>,
    free_bytes: u64,
}

fn powered_off() -> io::Error {
    io::Error::other("simulated power loss: the device is gone")
}

impl World {
    fn check(&self, epoch: u64) -> io::Result<()> {
        if self.is_powered_off {
            return Err(powered_off());
        }
        if epoch != self.epoch {
            return Err(io::Error::other("a file handle from before a power cut"));
        }
        Ok(())
    }

    fn check_alive(&self) -> io::Result<()> {
        self.check(self.epoch)
    }

    /// Count a sync call; power is lost at the chosen one.
    fn count_sync(&mut self) -> io::Result<()> {
        self.check_alive()?;
        self.sync_calls += 1;
        if self.fail_at_sync.is_some_and(|at| self.sync_calls >= at) {
            self.is_powered_off = true;
            return Err(powered_off());
        }
        Ok(())
    }

    fn file(&mut self, ino: u64) -> io::Result<&mut SimInode> {
        self.files
            .get_mut(&ino)
            .ok_or_else(|| io::Error::other("file vanished"))
    }

    fn lookup(&self, path: &Path) -> io::Result<Option<Entry>> {
        let (parent, name) = split(path)?;
        if parent.as_os_str().is_empty() {
            return Ok(Some(Entry::Dir));
        }
        let dir = self.dirs.get(&parent).ok_or_else(not_found)?;
        Ok(dir.current.get(&name).copied())
    }

    fn parent_mut(&mut self, path: &Path) -> io::Result<(&mut SimDir, OsString)> {
        let (parent, name) = split(path)?;
        let dir = self.dirs.get_mut(&parent).ok_or_else(not_found)?;
        Ok((dir, name))
    }
}

fn not_found() -> io::Error {
    io::Error::from(ErrorKind::NotFound)
}

/// `path` normalised, as (parent, name); the root is (``, ``).
fn split(path: &Path) -> io::Result<(PathBuf, OsString)> {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir => clean.push("/"),
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::new(
                    ErrorKind::InvalidInput,
                    "simulated paths are absolute and plain",
                ));
            }
        }
    }
    if !clean.has_root() {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "simulated paths are absolute",
        ));
    }
    match (clean.parent(), clean.file_name()) {
        (Some(parent), Some(name)) => Ok((parent.to_path_buf(), name.to_os_string())),
        _ => Ok((PathBuf::new(), OsString::new())),
    }
}

impl Default for SimFs {
    fn default() -> Self {
        Self::new()
    }
}

impl SimFs {
    /// An empty file system: only `/`.
    pub fn new() -> Self {
        let mut dirs = BTreeMap::new();
        dirs.insert(PathBuf::from("/"), SimDir::default());
        Self {
            world: Arc::new(Mutex::new(World {
                files: BTreeMap::new(),
                dirs,
                next_ino: 1,
                next_handle: 1,
                epoch: 0,
                sync_calls: 0,
                fail_at_sync: None,
                is_powered_off: false,
                flaw: None,
                free_bytes: u64::MAX,
            })),
        }
    }

    /// A deliberately broken file system (see [`SimFlaw`]).
    pub fn with_flaw(flaw: SimFlaw) -> Self {
        let fs = Self::new();
        lock(&fs.world).flaw = Some(flaw);
        fs
    }

    /// Break (or mend, with `None`) one kind of sync from now on, e.g. after a store was
    /// opened on a healthy file system, so only what it does next lacks the sync.
    pub fn set_flaw(&self, flaw: Option<SimFlaw>) {
        lock(&self.world).flaw = flaw;
    }

    /// This file system as the store's seam (sharing the files).
    pub fn shared(&self) -> Arc<dyn StoreFs> {
        Arc::new(self.clone())
    }

    /// Sync calls (`sync_data`, `sync_all`, `sync_dir`) so far, the failed one included.
    pub fn sync_calls(&self) -> u64 {
        lock(&self.world).sync_calls
    }

    /// Lose power at the `n`-th sync call from now (`n ≥ 1`): the calls before it complete,
    /// it and every later operation fail until [`SimFs::power_cut`].
    pub fn fail_at_sync(&self, n: u64) {
        let mut world = lock(&self.world);
        world.fail_at_sync = Some(world.sync_calls + n.max(1));
    }

    /// Whether power was lost (at the sync chosen by [`SimFs::fail_at_sync`]).
    pub fn is_powered_off(&self) -> bool {
        lock(&self.world).is_powered_off
    }

    /// What [`StoreFs::free_bytes`] answers (unlimited unless set).
    pub fn set_free_bytes(&self, bytes: u64) {
        lock(&self.world).free_bytes = bytes;
    }

    /// Cut the power: keep what `cut` says of what was not synced, and come back up. Every
    /// handle opened before fails from now on; locks are gone.
    pub fn power_cut(&self, cut: PowerCut) {
        let mut world = lock(&self.world);
        let mut rng = match cut {
            PowerCut::DropUnsynced => None,
            PowerCut::Torn { seed } => Some(Rng::seeded(seed)),
        };
        for dir in world.dirs.values_mut() {
            let kept = match &mut rng {
                None => 0,
                Some(rng) => rng.below(dir.pending.len() as u64 + 1) as usize,
            };
            for op in &dir.pending[..kept] {
                op.apply(&mut dir.durable);
            }
            dir.pending.clear();
            dir.current = dir.durable.clone();
        }
        // Directories whose entry did not survive go, with what is in them.
        let mut reachable = BTreeSet::new();
        let mut inodes = BTreeSet::new();
        let mut todo = vec![PathBuf::from("/")];
        while let Some(path) = todo.pop() {
            let Some(dir) = world.dirs.get(&path) else {
                continue;
            };
            for (name, entry) in &dir.current {
                match entry {
                    Entry::Dir => todo.push(path.join(name)),
                    Entry::File(ino) => {
                        inodes.insert(*ino);
                    }
                }
            }
            reachable.insert(path);
        }
        world.dirs.retain(|path, _| reachable.contains(path));
        world.files.retain(|ino, _| inodes.contains(ino));
        for file in world.files.values_mut() {
            if let Some(rng) = &mut rng {
                file.durable = tear(&file.durable, &file.current, rng);
            }
            file.current = file.durable.clone();
            file.dirty = None;
            file.locked_by = None;
        }
        world.epoch += 1;
        world.is_powered_off = false;
        world.fail_at_sync = None;
    }

    /// Lose everything: the disk is replaced by an empty one (only `/`), as when a relay's
    /// disk dies and it starts again on a new one. Every handle opened before fails.
    pub fn wipe(&self) {
        let mut world = lock(&self.world);
        world.files.clear();
        world.dirs.clear();
        world.dirs.insert(PathBuf::from("/"), SimDir::default());
        world.epoch += 1;
        world.is_powered_off = false;
        world.fail_at_sync = None;
    }

    /// The current bytes of every file (for checks of what a disk holds, e.g. that no
    /// plaintext reached it).
    pub fn file_contents(&self) -> Vec<Vec<u8>> {
        let world = lock(&self.world);
        world.files.values().map(|f| f.current.clone()).collect()
    }

    /// The current bytes of the file at `path` (for tests that damage or inspect files).
    pub fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let world = lock(&self.world);
        match world.lookup(path)? {
            Some(Entry::File(ino)) => Ok(world
                .files
                .get(&ino)
                .map(|f| f.current.clone())
                .unwrap_or_default()),
            _ => Err(not_found()),
        }
    }
}

/// What a torn write-back leaves of a file: its durable bytes with a random part of the
/// pages that differ in its current bytes, at its durable or its current length.
fn tear(durable: &[u8], current: &[u8], rng: &mut Rng) -> Vec<u8> {
    let len = if durable.len() == current.len() || rng.below(2) == 0 {
        durable.len()
    } else {
        current.len()
    };
    let mut out = durable.to_vec();
    out.resize(len, 0);
    let page_of = |bytes: &[u8], page: usize| -> Vec<u8> {
        let start = (page * PAGE_BYTES).min(bytes.len());
        let end = ((page + 1) * PAGE_BYTES).min(bytes.len());
        let mut chunk = bytes[start..end].to_vec();
        chunk.resize(PAGE_BYTES, 0);
        chunk
    };
    let dirty: Vec<usize> = (0..len.div_ceil(PAGE_BYTES))
        .filter(|page| page_of(durable, *page) != page_of(current, *page))
        .collect();
    let is_prefix = rng.below(2) == 0;
    let prefix = rng.below(dirty.len() as u64 + 1) as usize;
    for (n, page) in dirty.iter().enumerate() {
        let is_kept = if is_prefix {
            n < prefix
        } else {
            rng.below(2) == 1
        };
        if is_kept {
            let start = page * PAGE_BYTES;
            let end = ((page + 1) * PAGE_BYTES).min(len);
            out[start..end].copy_from_slice(&page_of(current, *page)[..end - start]);
        }
    }
    out
}

impl fmt::Debug for SimFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let world = lock(&self.world);
        f.debug_struct("SimFs")
            .field("files", &world.files.len())
            .field("dirs", &world.dirs.len())
            .field("sync_calls", &world.sync_calls)
            .field("is_powered_off", &world.is_powered_off)
            .field("flaw", &world.flaw)
            .finish()
    }
}

/// An open simulated file.
struct SimFile {
    world: Arc<Mutex<World>>,
    ino: u64,
    epoch: u64,
    handle: u64,
    is_readable: bool,
    is_writable: bool,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile")
            .field("ino", &self.ino)
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        let mut world = lock(&self.world);
        if world.epoch == self.epoch
            && let Some(file) = world.files.get_mut(&self.ino)
            && file.locked_by == Some(self.handle)
        {
            file.locked_by = None;
        }
    }
}

fn bad_mode(what: &str) -> io::Error {
    io::Error::other(format!("file not opened for {what}"))
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut World, u64) -> io::Result<T>) -> io::Result<T> {
        let mut world = lock(&self.world);
        world.check(self.epoch)?;
        f(&mut world, self.ino)
    }
}

impl StoreFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if !self.is_readable {
            return Err(bad_mode("reading"));
        }
        self.with(|world, ino| {
            let bytes = &world.file(ino)?.current;
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let n = buf.len().min(bytes.len() - start);
            buf[..n].copy_from_slice(&bytes[start..start + n]);
            Ok(n)
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        if !self.is_writable {
            return Err(bad_mode("writing"));
        }
        self.with(|world, ino| {
            let file = world.file(ino)?;
            let start = usize::try_from(offset)
                .map_err(|_| io::Error::new(ErrorKind::InvalidInput, "offset too large"))?;
            if file.current.len() < start + buf.len() {
                file.current.resize(start + buf.len(), 0);
            }
            file.current[start..start + buf.len()].copy_from_slice(buf);
            file.touch(start, start + buf.len());
            Ok(buf.len())
        })
    }

    fn len(&self) -> io::Result<u64> {
        self.with(|world, ino| Ok(world.file(ino)?.current.len() as u64))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if !self.is_writable {
            return Err(bad_mode("writing"));
        }
        self.with(|world, ino| {
            let len = usize::try_from(len)
                .map_err(|_| io::Error::new(ErrorKind::InvalidInput, "length too large"))?;
            let file = world.file(ino)?;
            let old = file.current.len();
            file.current.resize(len, 0);
            file.touch(old.min(len), old.max(len));
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|world, ino| {
            world.count_sync()?;
            if world.flaw != Some(SimFlaw::SyncDataKeepsNothing) {
                world.file(ino)?.make_durable();
            }
            Ok(())
        })
    }

    fn sync_all(&self) -> io::Result<()> {
        self.with(|world, ino| {
            world.count_sync()?;
            world.file(ino)?.make_durable();
            Ok(())
        })
    }

    fn try_lock(&self) -> Result<(), std::fs::TryLockError> {
        let handle = self.handle;
        self.with(|world, ino| {
            let file = world.file(ino)?;
            match file.locked_by {
                Some(holder) if holder != handle => Ok(false),
                _ => {
                    file.locked_by = Some(handle);
                    Ok(true)
                }
            }
        })
        .map_err(std::fs::TryLockError::Error)
        .and_then(|is_locked| {
            if is_locked {
                Ok(())
            } else {
                Err(std::fs::TryLockError::WouldBlock)
            }
        })
    }
}

impl StoreFs for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut world = lock(&self.world);
        world.check_alive()?;
        let mut path = PathBuf::new();
        for component in dir.components() {
            if !matches!(component, Component::RootDir | Component::Normal(_)) {
                continue;
            }
            path.push(component);
            if world.dirs.contains_key(&path) {
                continue;
            }
            match world.lookup(&path)? {
                Some(Entry::Dir) => {}
                Some(Entry::File(_)) => return Err(io::Error::from(ErrorKind::NotADirectory)),
                None => {
                    let (parent, name) = world.parent_mut(&path)?;
                    parent.apply(DirOp::Insert(name, Entry::Dir));
                }
            }
            world.dirs.insert(path.clone(), SimDir::default());
        }
        Ok(())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StoreFile>> {
        let mut world = lock(&self.world);
        world.check_alive()?;
        let found = world.lookup(path)?;
        let ino = match (found, mode) {
            (Some(Entry::Dir), _) => return Err(io::Error::from(ErrorKind::IsADirectory)),
            (Some(Entry::File(_)), OpenMode::CreateNew) => {
                return Err(io::Error::from(ErrorKind::AlreadyExists));
            }
            (Some(Entry::File(ino)), OpenMode::CreateOrTruncate) => {
                world.file(ino)?.current.clear();
                ino
            }
            (Some(Entry::File(ino)), _) => ino,
            (None, OpenMode::Read | OpenMode::ReadWrite) => return Err(not_found()),
            (None, _) => {
                let ino = world.next_ino;
                let (parent, name) = world.parent_mut(path)?;
                parent.apply(DirOp::Insert(name, Entry::File(ino)));
                world.next_ino += 1;
                world.files.insert(ino, SimInode::default());
                ino
            }
        };
        let handle = world.next_handle;
        world.next_handle += 1;
        Ok(Box::new(SimFile {
            world: self.world.clone(),
            ino,
            epoch: world.epoch,
            handle,
            is_readable: matches!(
                mode,
                OpenMode::Read | OpenMode::ReadWrite | OpenMode::CreateNew
            ),
            is_writable: mode != OpenMode::Read,
        }))
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let world = lock(&self.world);
        world.check_alive()?;
        let (parent, name) = split(dir)?;
        let key = if parent.as_os_str().is_empty() {
            PathBuf::from("/")
        } else {
            parent.join(name)
        };
        let found = world.dirs.get(&key).ok_or_else(not_found)?;
        Ok(found.current.keys().cloned().collect())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut world = lock(&self.world);
        world.check_alive()?;
        match world.lookup(path)? {
            Some(Entry::File(_)) => {
                let (parent, name) = world.parent_mut(path)?;
                parent.apply(DirOp::Remove(name));
                Ok(())
            }
            Some(Entry::Dir) => Err(io::Error::from(ErrorKind::IsADirectory)),
            None => Err(not_found()),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut world = lock(&self.world);
        world.check_alive()?;
        let (from_parent, _) = split(from)?;
        let (to_parent, to_name) = split(to)?;
        if from_parent != to_parent {
            return Err(io::Error::new(
                ErrorKind::Unsupported,
                "simulated renames stay in one directory",
            ));
        }
        match world.lookup(from)? {
            Some(Entry::File(_)) => {}
            Some(Entry::Dir) => return Err(io::Error::from(ErrorKind::IsADirectory)),
            None => return Err(not_found()),
        }
        let (parent, from_name) = world.parent_mut(from)?;
        parent.apply(DirOp::Rename(from_name, to_name));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut world = lock(&self.world);
        world.count_sync()?;
        let (parent, name) = split(dir)?;
        let key = if parent.as_os_str().is_empty() {
            PathBuf::from("/")
        } else {
            parent.join(name)
        };
        let is_flawed = world.flaw == Some(SimFlaw::SyncDirKeepsNothing);
        let found = world.dirs.get_mut(&key).ok_or_else(not_found)?;
        if !is_flawed {
            found.durable = found.current.clone();
            found.pending.clear();
        }
        Ok(())
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        let mut world = lock(&self.world);
        world.check_alive()?;
        match world.lookup(path)? {
            Some(Entry::File(ino)) => Ok(world.file(ino)?.current.len() as u64),
            Some(Entry::Dir) => Err(io::Error::from(ErrorKind::IsADirectory)),
            None => Err(not_found()),
        }
    }

    fn exists(&self, path: &Path) -> bool {
        let world = lock(&self.world);
        matches!(world.lookup(path), Ok(Some(_)))
    }

    fn free_bytes(&self, _dir: &Path) -> io::Result<u64> {
        let world = lock(&self.world);
        world.check_alive()?;
        Ok(world.free_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(fs: &SimFs, path: &str, bytes: &[u8]) -> Box<dyn StoreFile> {
        let file = fs.open(Path::new(path), OpenMode::CreateOrOpen).unwrap();
        file.write_all_at(bytes, 0).unwrap();
        file
    }

    #[test]
    fn unsynced_data_and_entries_are_dropped_at_a_power_cut() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        let a = write(&fs, "/d/a", b"one");
        a.sync_data().unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        a.write_all_at(b"two", 0).unwrap();
        let b = write(&fs, "/d/b", b"bee");
        b.sync_all().unwrap();
        fs.power_cut(PowerCut::DropUnsynced);
        assert_eq!(fs.read_file(Path::new("/d/a")).unwrap(), b"one");
        assert!(!fs.exists(Path::new("/d/b")), "its entry was never synced");
        assert!(a.len().is_err(), "handles die with the power");
    }

    #[test]
    fn an_unsynced_directory_goes_with_its_files() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d/e")).unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        let f = write(&fs, "/d/e/f", b"x");
        f.sync_all().unwrap();
        fs.sync_dir(Path::new("/d/e")).unwrap();
        fs.power_cut(PowerCut::DropUnsynced);
        assert!(!fs.exists(Path::new("/d")));
        assert!(fs.list_dir(Path::new("/")).unwrap().is_empty());
    }

    #[test]
    fn removes_and_renames_are_durable_only_after_the_directory_sync() {
        let fs = SimFs::new();
        let a = write(&fs, "/a", b"a");
        a.sync_all().unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        fs.rename(Path::new("/a"), Path::new("/b")).unwrap();
        assert!(fs.exists(Path::new("/b")));
        fs.power_cut(PowerCut::DropUnsynced);
        assert!(fs.exists(Path::new("/a")) && !fs.exists(Path::new("/b")));
        fs.remove_file(Path::new("/a")).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        fs.power_cut(PowerCut::DropUnsynced);
        assert!(!fs.exists(Path::new("/a")));
    }

    #[test]
    fn power_is_lost_at_the_chosen_sync_and_everything_after_fails() {
        let fs = SimFs::new();
        let a = write(&fs, "/a", b"a");
        fs.fail_at_sync(2);
        a.sync_all().unwrap();
        a.write_all_at(b"b", 0).unwrap();
        assert!(a.sync_data().is_err());
        assert!(fs.is_powered_off());
        assert!(a.write_all_at(b"c", 0).is_err());
        assert!(fs.open(Path::new("/c"), OpenMode::CreateNew).is_err());
        assert_eq!(fs.sync_calls(), 2);
        fs.power_cut(PowerCut::DropUnsynced);
        assert!(!fs.is_powered_off());
        // The file's data was synced, its entry never.
        assert!(!fs.exists(Path::new("/a")));
    }

    #[test]
    fn torn_cuts_keep_pages_of_the_unsynced_writes_and_nothing_else() {
        let mut seen_kept = false;
        let mut seen_dropped = false;
        for seed in 0..64 {
            let fs = SimFs::new();
            let a = write(&fs, "/a", &vec![1u8; 3 * PAGE_BYTES]);
            a.sync_all().unwrap();
            fs.sync_dir(Path::new("/")).unwrap();
            a.write_all_at(&vec![2u8; 5 * PAGE_BYTES], 0).unwrap();
            fs.power_cut(PowerCut::Torn { seed });
            let after = fs.read_file(Path::new("/a")).unwrap();
            assert!(after.len() == 3 * PAGE_BYTES || after.len() == 5 * PAGE_BYTES);
            for (n, page) in after.chunks(PAGE_BYTES).enumerate() {
                let first = page[0];
                assert!(page.iter().all(|b| *b == first), "whole pages only");
                // Past the durable length a page not written back reads as zeros.
                let old = if n < 3 { 1 } else { 0 };
                assert!(first == old || first == 2, "page {n} holds {first}");
                seen_kept |= first == 2;
                seen_dropped |= first == old;
            }
        }
        assert!(seen_kept && seen_dropped);
    }

    #[test]
    fn the_flawed_variants_sync_nothing_of_their_kind() {
        let fs = SimFs::with_flaw(SimFlaw::SyncDataKeepsNothing);
        let a = write(&fs, "/a", b"a");
        fs.sync_dir(Path::new("/")).unwrap();
        a.sync_data().unwrap();
        fs.power_cut(PowerCut::DropUnsynced);
        assert_eq!(fs.read_file(Path::new("/a")).unwrap(), b"");
        let fs = SimFs::with_flaw(SimFlaw::SyncDirKeepsNothing);
        let a = write(&fs, "/a", b"a");
        a.sync_data().unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        fs.power_cut(PowerCut::DropUnsynced);
        assert!(!fs.exists(Path::new("/a")));
    }

    #[test]
    fn a_lock_is_held_until_its_handle_is_dropped() {
        let fs = SimFs::new();
        let first = fs.open(Path::new("/LOCK"), OpenMode::CreateOrOpen).unwrap();
        first.try_lock().unwrap();
        let second = fs.open(Path::new("/LOCK"), OpenMode::CreateOrOpen).unwrap();
        assert!(matches!(
            second.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        drop(first);
        second.try_lock().unwrap();
    }
}
