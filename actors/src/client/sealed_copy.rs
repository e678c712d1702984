//! A file sealed for a put (DESIGN.md §4 "Large content"): its ciphertext and the BLAKE3
//! tree of it (a bao outboard, iroh-blobs' 16 KiB chunk groups) in two files of the home's
//! `content/`, written in one pass, and the iroh-blobs push of any range of it encoded
//! from them.
//!
//! One pass: batches of chunks are read and sealed on every core, written in order to the
//! sealed file, and handed to a second thread that builds the outboard from the same bytes,
//! so the hash is known when the last chunk is written. The files are removed when the
//! copy is dropped (and at start, if a put was killed: [`SealedCopy::remove_stale`]).

use crate::crypto::content::{
    CHUNK_BYTES, ContentError, FileKey, SEALED_CHUNK_BYTES, TAG_BYTES, chunk_count, sealed_len,
};
use bao_tree::io::outboard::PreOrderOutboard;
use bao_tree::io::sync::{encode_ranges, outboard};
use bao_tree::{BaoTree, ChunkRanges};
use bytes::{Buf, Bytes};
use iroh_blobs::store::IROH_BLOCK_SIZE;
use rayon::prelude::*;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};

/// Chunks read and sealed at once (on every core).
const BATCH_CHUNKS: usize = 8;
/// Sealed chunks queued for the outboard thread.
const QUEUE_CHUNKS: usize = 8;
/// Prefix of the files of a sealed copy in `content/`.
const PREFIX: &str = "put-";

/// A sealed copy of a file. Its files go when it is dropped.
pub struct SealedCopy {
    data: PathBuf,
    outboard: PathBuf,
    hash: [u8; 32],
    sealed_size: u64,
}

impl Drop for SealedCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.data);
        let _ = std::fs::remove_file(&self.outboard);
    }
}

/// The sealed bytes as a reader, from the sealing thread.
struct Queued {
    rx: Receiver<Bytes>,
    current: Bytes,
}

impl Read for Queued {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(next) => self.current = next,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

impl SealedCopy {
    /// Seal the `size` bytes of `source` under `key` into a new copy in `dir`.
    /// `sealed(done)` is told the plaintext bytes sealed so far.
    pub fn seal(
        key: &FileKey,
        source: &Path,
        size: u64,
        dir: &Path,
        mut sealed: impl FnMut(u64),
    ) -> Result<SealedCopy, ContentError> {
        std::fs::create_dir_all(dir)?;
        let stem = format!("{PREFIX}{:016x}", rand::random::<u64>());
        let mut copy = SealedCopy {
            data: dir.join(format!("{stem}.sealed")),
            outboard: dir.join(format!("{stem}.obao")),
            hash: [0; 32],
            sealed_size: sealed_len(size),
        };
        let mut out = File::create(&copy.data)?;
        let tree = BaoTree::new(copy.sealed_size, IROH_BLOCK_SIZE);
        let outboard_file = File::create(&copy.outboard)?;
        let (queue, queued) = sync_channel::<Bytes>(QUEUE_CHUNKS);
        let hasher = std::thread::Builder::new()
            .name("content-outboard".into())
            .spawn(move || {
                let mut tree_file = PreOrderOutboard {
                    root: bao_tree::blake3::hash(&[]),
                    tree,
                    data: outboard_file,
                };
                let reader = Queued {
                    rx: queued,
                    current: Bytes::new(),
                };
                outboard(reader, tree, &mut tree_file)
            })?;
        let mut file = File::open(source)?;
        let chunks = chunk_count(size);
        let mut done = 0u64;
        let mut next = 0u64;
        let mut written = Ok(());
        while next < chunks && written.is_ok() {
            let mut batch = Vec::with_capacity(BATCH_CHUNKS);
            for index in next..(next + BATCH_CHUNKS as u64).min(chunks) {
                let want = if index + 1 == chunks {
                    (size - index * CHUNK_BYTES as u64) as usize
                } else {
                    CHUNK_BYTES
                };
                let mut buf = Vec::with_capacity(SEALED_CHUNK_BYTES);
                buf.resize(want, 0);
                file.read_exact(&mut buf)?;
                batch.push((index, buf));
            }
            next += batch.len() as u64;
            batch.par_iter_mut().for_each(|(index, buf)| {
                key.seal_chunk_in_place(*index, *index + 1 == chunks, buf);
            });
            for (_, chunk) in batch {
                if let Err(err) = out.write_all(&chunk) {
                    written = Err(err);
                    break;
                }
                done += (chunk.len() - TAG_BYTES) as u64;
                sealed(done);
                if queue.send(Bytes::from(chunk)).is_err() {
                    break;
                }
            }
        }
        drop(queue);
        let root = hasher
            .join()
            .map_err(|_| std::io::Error::other("the outboard thread panicked"))?;
        written?;
        copy.hash = *root?.as_bytes();
        Ok(copy)
    }

    /// The BLAKE3 hash of the sealed bytes (the content's iroh-blobs hash).
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// Bytes of the sealed file.
    pub fn sealed_size(&self) -> u64 {
        self.sealed_size
    }

    /// Write what an iroh-blobs push of `ranges` sends after its request to `sink`: the
    /// size, then the parents and chunk groups of `ranges` in pre-order.
    pub fn encode(&self, ranges: &ChunkRanges, mut sink: impl Write) -> std::io::Result<()> {
        let tree = BaoTree::new(self.sealed_size, IROH_BLOCK_SIZE);
        let outboard = PreOrderOutboard {
            root: bao_tree::blake3::Hash::from_bytes(self.hash),
            tree,
            data: File::open(&self.outboard)?,
        };
        sink.write_all(&self.sealed_size.to_le_bytes())?;
        encode_ranges(File::open(&self.data)?, outboard, ranges, &mut sink)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        sink.flush()
    }

    /// Remove what puts that did not end (a killed process) left in `dir`.
    pub fn remove_stale(dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            if entry.file_name().to_string_lossy().starts_with(PREFIX) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::content::seal_stream;
    use bao_tree::io::outboard::PreOrderMemOutboard;

    #[test]
    fn a_sealed_copy_is_the_sealed_stream_with_its_blake3_tree_and_encodes_any_range() {
        let dir = tempfile::tempdir().unwrap();
        let key = FileKey::from_bytes([3; 32]);
        for len in [0usize, 1, CHUNK_BYTES, 9 * CHUNK_BYTES + 1234] {
            let plaintext: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let source = dir.path().join("source");
            std::fs::write(&source, &plaintext).unwrap();
            let mut expected = Vec::new();
            seal_stream(&key, &mut &plaintext[..], &mut expected).unwrap();
            let mut told = 0;
            let copy = SealedCopy::seal(&key, &source, len as u64, dir.path(), |done| told = done)
                .unwrap();
            assert_eq!(told, len as u64);
            assert_eq!(std::fs::read(&copy.data).unwrap(), expected);
            assert_eq!(copy.hash(), *blake3::hash(&expected).as_bytes());
            assert_eq!(copy.sealed_size(), expected.len() as u64);

            // The push of a range from the middle decodes, verified, to those bytes.
            let mem = PreOrderMemOutboard::create(&expected, IROH_BLOCK_SIZE);
            for ranges in [
                ChunkRanges::all(),
                ChunkRanges::from(bao_tree::ChunkNum(100)..),
            ] {
                let mut encoded = Vec::new();
                copy.encode(&ranges, &mut encoded).unwrap();
                assert_eq!(encoded[..8], (expected.len() as u64).to_le_bytes());
                let mut reference = Vec::new();
                bao_tree::io::sync::encode_ranges_validated(
                    &expected[..],
                    &mem,
                    &ranges,
                    &mut reference,
                )
                .unwrap();
                assert_eq!(encoded[8..], reference[..], "len {len}");
            }
            let (data, outboard) = (copy.data.clone(), copy.outboard.clone());
            drop(copy);
            assert!(!data.exists() && !outboard.exists());
        }
        // Leftovers of a killed put go at start.
        std::fs::write(dir.path().join("put-0000.sealed"), b"x").unwrap();
        SealedCopy::remove_stale(dir.path());
        assert!(!dir.path().join("put-0000.sealed").exists());
        assert!(dir.path().join("source").exists());
    }
}
