//! A device's disk under power loss.
//!
//! The client's LocalStore is fjall on the real file system, and fjall has no file-system
//! seam (the relay's store segments run on the simulated [`SimFs`] instead). So the disk keeps
//! an **image** of the store's directory as of its last journal sync: the store's
//! [`SyncHook`] takes it right after each sync that succeeded, before anyone is told what the
//! sync made durable. A power cut puts the image back:
//!
//! - [`PowerCut::DropUnsynced`]: the store's files are exactly the image; everything written
//!   after the last sync is gone;
//! - [`PowerCut::Torn`]: the image, plus a random page-granular part of what was appended to
//!   its files since (a journal's torn tail). Files created, removed or rewritten since the
//!   last sync are as in the image: fjall writes those with their own syncs and renames,
//!   which a real disk does not tear.
//!
//! The image is exact for what the store syncs. It can be older than a real disk's state for
//! what fjall syncs on its own between two store syncs (a journal rotation, a table flush),
//! which only makes a cut harsher, never kinder: everything the store announced durable is
//! in the image.
//!
//! Files are read up to their first hole (`SEEK_HOLE`): fjall preallocates 64 MiB journals,
//! and an image holds only their written part.
//!
//! [`SimFs`]: zerok_actors::relay::blob_store::fs::SimFs

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use zerok_actors::client::local_store::SyncHook;
use zerok_actors::relay::blob_store::fs::PowerCut;
use zerok_actors::rng::Rng;
use zerok_messages::sync::lock;

/// Granularity of a torn write (a page of the page cache).
const PAGE_BYTES: usize = 4096;

/// One file of an image: `data` from offset 0, zeros after it up to `len`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileImage {
    len: u64,
    data: Vec<u8>,
}

/// Every file under a directory, by path relative to it.
type Image = BTreeMap<PathBuf, FileImage>;

/// A device's store directory with its durable image (cheap to clone: shared).
#[derive(Clone, Debug)]
pub struct DeviceDisk {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The store's directory (`home/store`).
    dir: PathBuf,
    /// What a power cut leaves: the files as of the last sync.
    image: Mutex<Image>,
    /// Syncs imaged so far.
    syncs: AtomicU64,
    /// A broken disk (the checker's own test): syncs keep nothing from now on.
    syncs_keep_nothing: AtomicBool,
}

impl DeviceDisk {
    /// The disk holding the store in `dir` (empty until the store's first sync).
    pub fn new(dir: PathBuf) -> DeviceDisk {
        DeviceDisk {
            inner: Arc::new(Inner {
                dir,
                image: Mutex::new(Image::new()),
                syncs: AtomicU64::new(0),
                syncs_keep_nothing: AtomicBool::new(false),
            }),
        }
    }

    /// The hook a client's store calls after each sync (set in its `ClientConfig`).
    pub fn hook(&self) -> SyncHook {
        let inner = Arc::clone(&self.inner);
        SyncHook(Arc::new(move || inner.synced()))
    }

    /// Syncs of the store imaged so far (across its restarts).
    pub fn syncs(&self) -> u64 {
        self.inner.syncs.load(Ordering::Relaxed)
    }

    /// Break the disk: from now on a sync keeps nothing (a power cut goes back to the
    /// image of the last sync before this call). For the checker's own test.
    pub fn break_syncs(&self) {
        self.inner.syncs_keep_nothing.store(true, Ordering::Relaxed);
    }

    /// Cut the power (the store must be closed: its host crashed). The store's directory
    /// is replaced by what `cut` keeps; answers how many written bytes that lost.
    pub fn power_cut(&self, cut: PowerCut) -> std::io::Result<u64> {
        let dir = &self.inner.dir;
        let image = lock(&self.inner.image).clone();
        let now = read_image(dir)?;
        let mut torn = match cut {
            PowerCut::DropUnsynced => None,
            PowerCut::Torn { seed } => Some(Rng::seeded(seed)),
        };
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let written = |image: &Image| image.values().map(|f| f.data.len() as u64).sum::<u64>();
        let mut kept_bytes = 0;
        for (path, file) in image {
            let mut kept = file.clone();
            if let (Some(rng), Some(later)) = (torn.as_mut(), now.get(&path)) {
                tear(&mut kept, later, rng);
            }
            kept_bytes += kept.data.len() as u64;
            write_file(&dir.join(&path), &kept)?;
        }
        Ok(written(&now).saturating_sub(kept_bytes))
    }
}

impl Inner {
    /// The store synced: image its directory (a read that fails leaves the last image, and
    /// the cut goes back further than the disk would: never kinder).
    fn synced(&self) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        if self.syncs_keep_nothing.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(image) = read_image(&self.dir) {
            *lock(&self.image) = image;
        }
    }
}

/// Keep, of `later`'s pages past `kept`'s data, a random part (each page or not; then the
/// file ends at its last kept byte), when `later` only appended to `kept`.
fn tear(kept: &mut FileImage, later: &FileImage, rng: &mut Rng) {
    let synced = kept.data.len();
    let appended = later.data.len() > synced && later.data[..synced] == kept.data[..];
    if !appended {
        return;
    }
    let mut data = kept.data.clone();
    let mut start = synced;
    while start < later.data.len() {
        let end = ((start / PAGE_BYTES + 1) * PAGE_BYTES).min(later.data.len());
        if rng.chance(0.5) {
            data.resize(end, 0);
            data[start..end].copy_from_slice(&later.data[start..end]);
        }
        start = end;
    }
    while data.last() == Some(&0) {
        data.pop();
    }
    kept.len = kept.len.max(data.len() as u64);
    kept.data = data;
}

/// Every regular file under `dir`.
fn read_image(dir: &Path) -> std::io::Result<Image> {
    let mut image = Image::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(at) = todo.pop() {
        for entry in std::fs::read_dir(&at)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                todo.push(path);
            } else if kind.is_file() {
                let rel = path.strip_prefix(dir).unwrap_or(&path).to_path_buf();
                image.insert(rel, read_file(&path)?);
            }
        }
    }
    Ok(image)
}

/// A file's written part: up to its first hole (all of it when the file system has none, or
/// when data follows the hole), without trailing zeros.
fn read_file(path: &Path) -> std::io::Result<FileImage> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let end = written_end(&file, len);
    let mut data = Vec::with_capacity(usize::try_from(end).unwrap_or(0));
    file.seek(SeekFrom::Start(0))?;
    (&mut file).take(end).read_to_end(&mut data)?;
    while data.last() == Some(&0) {
        data.pop();
    }
    Ok(FileImage { len, data })
}

/// Where `file`'s data ends: its first hole, if no data follows it; else its length.
#[cfg(target_os = "linux")]
fn written_end(file: &std::fs::File, len: u64) -> u64 {
    use rustix::fs::{SeekFrom, seek};
    match seek(file, SeekFrom::Hole(0)) {
        Ok(hole) if hole < len => match seek(file, SeekFrom::Data(hole)) {
            Ok(_) => len,
            Err(_) => hole,
        },
        _ => len,
    }
}

#[cfg(not(target_os = "linux"))]
fn written_end(_file: &std::fs::File, len: u64) -> u64 {
    len
}

fn write_file(path: &Path, file: &FileImage) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut out = std::fs::File::create(path)?;
    out.write_all(&file.data)?;
    out.set_len(file.len.max(file.data.len() as u64))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, bytes: &[u8], len: u64) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .expect("open");
        f.write_all(bytes).expect("write");
        f.set_len(len).expect("len");
    }

    #[test]
    fn a_cut_keeps_the_synced_image_and_tears_only_the_appended_tail() {
        let dir = tempfile::tempdir().expect("dir");
        let store = dir.path().join("store");
        std::fs::create_dir_all(store.join("kv")).expect("mkdir");
        let journal = store.join("kv/0.jnl");
        let synced = vec![7u8; 5000];
        write(&journal, &synced, 1 << 20);
        write(&store.join("kv/version"), b"one", 3);
        let disk = DeviceDisk::new(store.clone());
        disk.hook().0();
        assert_eq!(disk.syncs(), 1);
        // After the sync: 5 pages appended to the journal, a file rewritten, one created.
        let appended: Vec<u8> = (0..5 * PAGE_BYTES).map(|i| (i % 251 + 1) as u8).collect();
        let append = || {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&journal)
                .expect("open");
            f.seek(SeekFrom::Start(5000)).expect("seek");
            f.write_all(&appended).expect("append");
        };
        append();
        write(&store.join("kv/version"), b"two", 3);
        write(&store.join("kv/new"), b"new", 3);

        disk.power_cut(PowerCut::DropUnsynced).expect("cut");
        let now = read_image(&store).expect("read");
        assert_eq!(now.len(), 2, "the new file is gone");
        assert_eq!(now[Path::new("kv/0.jnl")].data, synced);
        assert_eq!(now[Path::new("kv/0.jnl")].len, 1 << 20);
        assert_eq!(now[Path::new("kv/version")].data, b"one");

        // Torn: over seeds, each appended page is sometimes kept, sometimes not, and what is
        // kept is the appended bytes at their offsets.
        let mut kept_pages = std::collections::BTreeSet::new();
        let mut whole_tails = 0;
        for seed in 0..16 {
            append();
            disk.power_cut(PowerCut::Torn { seed }).expect("cut");
            let file = &read_image(&store).expect("read")[Path::new("kv/0.jnl")];
            assert_eq!(file.data[..5000], synced[..]);
            for (k, chunk) in file.data[5000..].chunks(1).enumerate() {
                let want = appended[k];
                assert!(
                    chunk[0] == want || chunk[0] == 0,
                    "byte {k} is torn garbage"
                );
                if chunk[0] == want {
                    kept_pages.insert((5000 + k) / PAGE_BYTES);
                }
            }
            if file.data.len() == 5000 + appended.len() && !file.data.contains(&0) {
                whole_tails += 1;
            }
        }
        assert!(
            kept_pages.len() >= 4,
            "pages kept over 16 seeds: {kept_pages:?}"
        );
        assert!(whole_tails < 16, "a torn cut sometimes loses a page");
    }

    #[test]
    fn a_broken_disk_keeps_nothing_past_its_break() {
        let dir = tempfile::tempdir().expect("dir");
        let store = dir.path().to_path_buf();
        write(&store.join("a"), b"first", 5);
        let disk = DeviceDisk::new(store.clone());
        disk.hook().0();
        disk.break_syncs();
        write(&store.join("a"), b"later", 5);
        disk.hook().0();
        disk.power_cut(PowerCut::DropUnsynced).expect("cut");
        assert_eq!(std::fs::read(store.join("a")).expect("read"), b"first");
    }
}
