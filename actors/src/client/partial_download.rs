//! A download being opened as it arrives (DESIGN.md §4 "Large content"): the verified
//! sealed bytes of a file, in order, are cut into chunks, each chunk opened and its
//! plaintext appended to `dest.partial`; the chunk's AEAD tag goes to a small file of tags
//! in the home. Nothing but opened plaintext ever reaches `dest.partial`, and it becomes
//! `dest` (synced, then renamed) only once the last chunk opened.
//!
//! **Resuming.** An interrupted download keeps `dest.partial` and its tags. The next one
//! keeps a chunk only if its plaintext seals to the tag the relay served for it (served
//! under the file's BLAKE3 hash, so verified), and cuts both files after the first that
//! does not: a crash that tore or lost writes, or any other damage, costs a re-fetch of the
//! chunks from there on, never a wrong byte. It then asks relays for the sealed bytes from
//! the first chunk it lacks.
//!
//! **Syncing.** A thread syncs `dest.partial` every [`SYNC_EVERY_BYTES`] written while the
//! download goes on, so the sync before the rename has little left to write, and hands the
//! synced pages back ([`crate::page_cache`]).

use crate::crypto::content::{
    CHUNK_BYTES, ContentError, FileKey, SEALED_CHUNK_BYTES, TAG_BYTES, chunk_count,
    sealed_chunk_len, sealed_len,
};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use zeroize::Zeroizing;

/// Plaintext written between two background syncs.
pub const SYNC_EVERY_BYTES: u64 = 64 << 20;

/// A download into `dest.partial`.
pub struct PartialDownload {
    key: FileKey,
    /// Plaintext bytes of the file.
    size: u64,
    /// Its chunks.
    chunks: u64,
    partial: PathBuf,
    out: File,
    tags_path: PathBuf,
    tags: File,
    /// Chunks opened and written.
    opened: u64,
    /// Sealed bytes of chunk `opened` received so far.
    pending: Zeroizing<Vec<u8>>,
    /// Sealed bytes kept from an interrupted download.
    kept: u64,
    /// Plaintext written since the last sync was asked for.
    unsynced: u64,
    /// Asks the syncing thread for a sync (it ends when this is dropped).
    syncer: Option<(SyncSender<()>, std::thread::JoinHandle<()>)>,
}

fn other(message: &str) -> ContentError {
    ContentError::Io(std::io::Error::other(message.to_owned()))
}

impl PartialDownload {
    /// Start the download of a file of `size` plaintext bytes sealed under `key` into
    /// `partial`, its tags in `tags_path`, keeping what an interrupted one left that checks
    /// out. `checked(done, total)` is told how far the check is (plaintext bytes).
    pub fn resume(
        key: FileKey,
        size: u64,
        partial: &Path,
        tags_path: &Path,
        mut checked: impl FnMut(u64, u64),
    ) -> Result<PartialDownload, ContentError> {
        if let Some(dir) = tags_path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let open = |path: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
        };
        let mut out = open(partial)?;
        let mut tags = open(tags_path)?;
        let chunks = chunk_count(size);
        // Only whole chunks before the last are kept: the last one is fetched again.
        let candidates = (out.metadata()?.len() / CHUNK_BYTES as u64)
            .min(tags.metadata()?.len() / TAG_BYTES as u64)
            .min(chunks - 1);
        let mut buf = Zeroizing::new(vec![0u8; CHUNK_BYTES]);
        let mut tag = [0u8; TAG_BYTES];
        let mut opened = 0;
        while opened < candidates {
            out.read_exact(&mut buf)?;
            tags.read_exact(&mut tag)?;
            if !key.seals_to(opened, false, &mut buf, &tag) {
                break;
            }
            opened += 1;
            checked(opened * CHUNK_BYTES as u64, candidates * CHUNK_BYTES as u64);
        }
        out.set_len(opened * CHUNK_BYTES as u64)?;
        tags.set_len(opened * TAG_BYTES as u64)?;
        out.seek(SeekFrom::End(0))?;
        tags.seek(SeekFrom::End(0))?;
        let syncing = out.try_clone()?;
        let (sync, asked) = sync_channel::<()>(1);
        let syncer = std::thread::Builder::new()
            .name("content-sync".into())
            .spawn(move || {
                while asked.recv().is_ok() {
                    // A failed sync shows in the final one, which fails the download.
                    if syncing.sync_data().is_ok() {
                        crate::page_cache::drop_synced_pages(&syncing);
                    }
                }
            })?;
        Ok(PartialDownload {
            key,
            size,
            chunks,
            partial: partial.to_path_buf(),
            out,
            tags_path: tags_path.to_path_buf(),
            tags,
            opened,
            pending: Zeroizing::new(Vec::with_capacity(SEALED_CHUNK_BYTES)),
            kept: opened * SEALED_CHUNK_BYTES as u64,
            unsynced: 0,
            syncer: Some((sync, syncer)),
        })
    }

    /// Sealed bytes kept from an interrupted download.
    pub fn kept(&self) -> u64 {
        self.kept
    }

    /// The offset in the sealed file of the next byte needed.
    pub fn next_offset(&self) -> u64 {
        self.opened * SEALED_CHUNK_BYTES as u64 + self.pending.len() as u64
    }

    /// Whether every chunk opened.
    pub fn is_complete(&self) -> bool {
        self.opened == self.chunks
    }

    /// Sealed bytes of chunk `index`.
    fn sealed_chunk_len(&self, index: u64) -> usize {
        sealed_chunk_len(sealed_len(self.size), self.chunks, index)
    }

    /// Take verified sealed bytes at `offset` (a relay's stream may start a little before
    /// [`next_offset`](Self::next_offset): what was had already is skipped). A chunk that
    /// does not open is [`ContentError::Integrity`].
    pub fn feed(&mut self, offset: u64, data: &[u8]) -> Result<(), ContentError> {
        let next = self.next_offset();
        if offset > next {
            return Err(other("the sealed bytes skip past what was received"));
        }
        let skip = (next - offset).min(data.len() as u64) as usize;
        let mut data = &data[skip..];
        while !data.is_empty() {
            if self.is_complete() {
                return Err(other("more sealed bytes than the file has"));
            }
            let want = self.sealed_chunk_len(self.opened) - self.pending.len();
            let take = want.min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if take == want {
                self.open_pending()?;
            }
        }
        Ok(())
    }

    /// Open the chunk `pending` holds whole, append it and its tag.
    fn open_pending(&mut self) -> Result<(), ContentError> {
        let index = self.opened;
        let last = index + 1 == self.chunks;
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&self.pending[self.pending.len() - TAG_BYTES..]);
        self.key
            .open_chunk_in_place(index, last, &mut self.pending)?;
        self.out.write_all(&self.pending)?;
        self.tags.write_all(&tag)?;
        self.unsynced += self.pending.len() as u64;
        if self.unsynced >= SYNC_EVERY_BYTES
            && let Some((sync, _)) = &self.syncer
        {
            // A sync still running takes this one's bytes too.
            if !matches!(sync.try_send(()), Err(TrySendError::Disconnected(_))) {
                self.unsynced = 0;
            }
        }
        self.pending.clear();
        self.opened += 1;
        Ok(())
    }

    /// Sync `dest.partial`, rename it to `dest`, drop the tags. Only a complete download.
    pub fn finish(mut self, dest: &Path) -> Result<(), ContentError> {
        if !self.is_complete() {
            return Err(ContentError::Integrity(self.opened));
        }
        if let Some((sync, syncer)) = self.syncer.take() {
            drop(sync);
            let _ = syncer.join();
        }
        self.out.sync_all()?;
        std::fs::rename(&self.partial, dest)?;
        let _ = std::fs::remove_file(&self.tags_path);
        Ok(())
    }

    /// Remove `dest.partial` and the tags (the content does not verify: nothing to keep).
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.partial);
        let _ = std::fs::remove_file(&self.tags_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::content::seal_stream;

    fn file(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(13) ^ 0x5a)
            .collect()
    }

    struct Case {
        _dir: tempfile::TempDir,
        key: FileKey,
        plaintext: Vec<u8>,
        sealed: Vec<u8>,
        partial: PathBuf,
        tags: PathBuf,
        dest: PathBuf,
    }

    impl Case {
        fn new(len: usize) -> Case {
            let dir = tempfile::tempdir().unwrap();
            let key = FileKey::from_bytes([5; 32]);
            let plaintext = file(len);
            let mut sealed = Vec::new();
            seal_stream(&key, &mut &plaintext[..], &mut sealed).unwrap();
            Case {
                partial: dir.path().join("out.bin.partial"),
                tags: dir.path().join("partial").join("x.tags"),
                dest: dir.path().join("out.bin"),
                _dir: dir,
                key,
                plaintext,
                sealed,
            }
        }

        fn start(&self) -> PartialDownload {
            PartialDownload::resume(
                self.key.clone(),
                self.plaintext.len() as u64,
                &self.partial,
                &self.tags,
                |_, _| {},
            )
            .unwrap()
        }

        /// Feed the sealed bytes from `from` in pieces of `piece`, starting a little early.
        fn feed_from(&self, download: &mut PartialDownload, from: u64, to: u64, piece: usize) {
            let start = from.saturating_sub(700);
            let bytes = &self.sealed[start as usize..to as usize];
            for (i, part) in bytes.chunks(piece).enumerate() {
                download
                    .feed(start + (i * piece) as u64, part)
                    .expect("verified bytes open");
            }
        }
    }

    #[test]
    fn a_download_fed_in_any_pieces_opens_into_the_destination() {
        for len in [0, 1, CHUNK_BYTES, 3 * CHUNK_BYTES + 77] {
            let case = Case::new(len);
            let mut download = case.start();
            assert_eq!(download.next_offset(), 0);
            case.feed_from(&mut download, 0, case.sealed.len() as u64, 16 * 1024 + 3);
            assert!(download.is_complete());
            download.finish(&case.dest).unwrap();
            assert_eq!(std::fs::read(&case.dest).unwrap(), case.plaintext);
            assert!(!case.partial.exists() && !case.tags.exists());
        }
    }

    #[test]
    fn a_resumed_download_keeps_what_checks_out_and_refetches_from_the_first_bad_chunk() {
        let case = Case::new(6 * CHUNK_BYTES + 10);
        let mut download = case.start();
        // Interrupted inside chunk 4.
        case.feed_from(
            &mut download,
            0,
            4 * SEALED_CHUNK_BYTES as u64 + 999,
            16 * 1024,
        );
        drop(download);

        let download = case.start();
        assert_eq!(
            download.kept(),
            4 * SEALED_CHUNK_BYTES as u64,
            "4 whole chunks"
        );
        assert_eq!(download.next_offset(), download.kept());
        drop(download);

        // A byte of chunk 2's plaintext on disk flipped: chunks 2 and later are fetched again.
        let mut bytes = std::fs::read(&case.partial).unwrap();
        bytes[2 * CHUNK_BYTES + 5] ^= 1;
        std::fs::write(&case.partial, &bytes).unwrap();
        let mut download = case.start();
        assert_eq!(download.kept(), 2 * SEALED_CHUNK_BYTES as u64);
        assert_eq!(
            std::fs::metadata(&case.partial).unwrap().len(),
            2 * CHUNK_BYTES as u64
        );
        let from = download.next_offset();
        case.feed_from(&mut download, from, case.sealed.len() as u64, 50_000);
        download.finish(&case.dest).unwrap();
        assert_eq!(std::fs::read(&case.dest).unwrap(), case.plaintext);

        // Tags lost: nothing is kept.
        let mut download = case.start();
        case.feed_from(&mut download, 0, 3 * SEALED_CHUNK_BYTES as u64, 16 * 1024);
        drop(download);
        std::fs::remove_file(&case.tags).unwrap();
        assert_eq!(case.start().kept(), 0);
    }

    #[test]
    fn damaged_sealed_bytes_are_an_integrity_error_and_nothing_is_handed_over() {
        let case = Case::new(2 * CHUNK_BYTES + 1);
        let mut damaged = case.sealed.clone();
        damaged[SEALED_CHUNK_BYTES + 100] ^= 1;
        let mut download = case.start();
        download.feed(0, &damaged[..SEALED_CHUNK_BYTES]).unwrap();
        let failed = download.feed(SEALED_CHUNK_BYTES as u64, &damaged[SEALED_CHUNK_BYTES..]);
        assert!(
            matches!(failed, Err(ContentError::Integrity(1))),
            "{failed:?}"
        );
        assert!(!download.is_complete());
        assert!(download.finish(&case.dest).is_err());
        assert!(!case.dest.exists());

        // What opened before the damage is kept for a resumed download.
        let download = case.start();
        assert_eq!(download.kept(), SEALED_CHUNK_BYTES as u64);
        download.discard();
        assert!(!case.partial.exists() && !case.tags.exists());

        // A gap, or bytes past the end, are refused.
        let mut download = case.start();
        assert_eq!(download.kept(), 0);
        assert!(download.feed(5, &case.sealed[5..10]).is_err());
        let mut longer = case.sealed.clone();
        longer.push(0);
        assert!(download.feed(0, &longer).is_err());
    }
}
