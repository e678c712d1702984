//! A file as a put sends it (DESIGN.md §4 "Large content"): its key, the BLAKE3 tree of its
//! ciphertext (a bao outboard, iroh-blobs' 16 KiB chunk groups) and the tag of every sealed
//! chunk, in two small files of the home's `content/`; and the iroh-blobs push of any range
//! of the ciphertext, encoded from the source file by sealing its chunks again as they go.
//!
//! The ciphertext itself is never stored. Sealing is deterministic (a chunk's nonce comes
//! from its index), and sealing a chunk again costs less than writing it out and reading it
//! back, besides sparing the disk a copy of the file. A chunk leaves only if it seals to the
//! tag recorded when the tree was built, so a source changed since then fails the push with
//! a clear error instead of sending bytes that do not match the hash.
//!
//! Both passes read batches of chunks and seal them on every core; building the tree runs
//! on a thread of its own beside them. The two files go when the source is dropped (and at
//! start, if a put was killed: [`SealedSource::remove_stale`]).

use crate::crypto::content::{
    CHUNK_BYTES, ContentError, FileKey, SEALED_CHUNK_BYTES, TAG_BYTES, chunk_count, sealed_len,
};
use bao_tree::io::outboard::PreOrderOutboard;
use bao_tree::io::sync::{ReadAt, Size, encode_ranges, outboard};
use bao_tree::{BaoTree, ChunkRanges};
use bytes::{Buf, Bytes};
use iroh_blobs::store::IROH_BLOCK_SIZE;
use rayon::prelude::*;
use std::cell::RefCell;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};

/// Chunks read and sealed at once (on every core).
const BATCH_CHUNKS: usize = 8;
/// Sealed chunks queued between the sealing and the tree or the encoding.
const QUEUE_CHUNKS: usize = 8;
/// Bytes of the outboard read at once while encoding (the encoding reads it front to back).
const OUTBOARD_WINDOW: usize = 256 * 1024;
/// Prefix of the files of a put in `content/`.
const PREFIX: &str = "put-";

/// What a source that changed since its tree was built fails with.
fn changed() -> std::io::Error {
    std::io::Error::other("the file changed while it was being put")
}

/// A file ready to be pushed. Its files in `content/` go when it is dropped.
pub struct SealedSource {
    key: FileKey,
    source: PathBuf,
    size: u64,
    outboard: PathBuf,
    tags: PathBuf,
    hash: [u8; 32],
    sealed_size: u64,
}

impl Drop for SealedSource {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.outboard);
        let _ = std::fs::remove_file(&self.tags);
    }
}

/// Bytes of plaintext chunk `index` of a file of `size` bytes in `chunks` chunks.
fn plaintext_chunk_len(size: u64, chunks: u64, index: u64) -> usize {
    if index + 1 == chunks {
        (size - index * CHUNK_BYTES as u64) as usize
    } else {
        CHUNK_BYTES
    }
}

/// Read chunks `from..` of `file` (`size` bytes of plaintext) a batch at a time, seal each
/// batch on every core, and hand the sealed chunks to `each` in order while it answers true.
fn seal_batches(
    key: &FileKey,
    file: &mut File,
    size: u64,
    from: u64,
    mut each: impl FnMut(u64, Vec<u8>) -> std::io::Result<bool>,
) -> std::io::Result<()> {
    let chunks = chunk_count(size);
    file.seek(SeekFrom::Start(from * CHUNK_BYTES as u64))?;
    let mut next = from;
    while next < chunks {
        let mut batch = Vec::with_capacity(BATCH_CHUNKS);
        for index in next..(next + BATCH_CHUNKS as u64).min(chunks) {
            let want = plaintext_chunk_len(size, chunks, index);
            let mut buf = Vec::with_capacity(want + TAG_BYTES);
            // Read into the spare capacity: no zeroing of bytes about to be read.
            (&mut *file).take(want as u64).read_to_end(&mut buf)?;
            if buf.len() < want {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            batch.push((index, buf));
        }
        next += batch.len() as u64;
        batch.par_iter_mut().for_each(|(index, buf)| {
            key.seal_chunk_in_place(*index, *index + 1 == chunks, buf);
        });
        for (index, chunk) in batch {
            if !each(index, chunk)? {
                return Ok(());
            }
        }
    }
    Ok(())
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

impl SealedSource {
    /// Seal the `size` bytes of `source` under `key` once, keeping the tree of the
    /// ciphertext and the chunks' tags in new files in `dir`. `sealed(done)` is told the
    /// plaintext bytes sealed so far.
    pub fn seal(
        key: &FileKey,
        source: &Path,
        size: u64,
        dir: &Path,
        mut sealed: impl FnMut(u64),
    ) -> Result<SealedSource, ContentError> {
        std::fs::create_dir_all(dir)?;
        let stem = format!("{PREFIX}{:016x}", rand::random::<u64>());
        let mut prepared = SealedSource {
            key: key.clone(),
            source: source.to_path_buf(),
            size,
            outboard: dir.join(format!("{stem}.obao")),
            tags: dir.join(format!("{stem}.tags")),
            hash: [0; 32],
            sealed_size: sealed_len(size),
        };
        let mut tags = BufWriter::new(File::create(&prepared.tags)?);
        let tree = BaoTree::new(prepared.sealed_size, IROH_BLOCK_SIZE);
        let outboard_file = File::create(&prepared.outboard)?;
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
        let mut done = 0u64;
        let passed = seal_batches(key, &mut file, size, 0, |_, chunk| {
            tags.write_all(&chunk[chunk.len() - TAG_BYTES..])?;
            done += (chunk.len() - TAG_BYTES) as u64;
            sealed(done);
            // A closed queue: the tree failed, which its thread answers below.
            Ok(queue.send(Bytes::from(chunk)).is_ok())
        });
        drop(queue);
        let root = hasher
            .join()
            .map_err(|_| std::io::Error::other("the outboard thread panicked"))?;
        passed?;
        tags.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        prepared.hash = *root?.as_bytes();
        Ok(prepared)
    }

    /// The BLAKE3 hash of the sealed bytes (the content's iroh-blobs hash).
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// Bytes of the sealed file.
    pub fn sealed_size(&self) -> u64 {
        self.sealed_size
    }

    /// The file being put.
    pub fn path(&self) -> &Path {
        &self.source
    }

    /// Write what an iroh-blobs push of `ranges` sends after its request to `sink`: the
    /// size, then the parents and chunk groups of `ranges` in pre-order. The chunks are
    /// sealed again on a thread of their own, each checked against its recorded tag.
    pub fn encode(&self, ranges: &ChunkRanges, mut sink: impl Write) -> std::io::Result<()> {
        let tree = BaoTree::new(self.sealed_size, IROH_BLOCK_SIZE);
        let outboard = PreOrderOutboard {
            root: bao_tree::blake3::Hash::from_bytes(self.hash),
            tree,
            data: ReadAhead::new(File::open(&self.outboard)?),
        };
        let first = ranges
            .boundaries()
            .first()
            .map_or(0, |start| start.to_bytes() / SEALED_CHUNK_BYTES as u64);
        let chunks = chunk_count(self.size);
        let mut tags = File::open(&self.tags)?;
        tags.seek(SeekFrom::Start(first * TAG_BYTES as u64))?;
        let mut tags = std::io::BufReader::new(tags);
        let mut file = File::open(&self.source)?;
        std::thread::scope(|scope| {
            let (queue, queued) = sync_channel(QUEUE_CHUNKS);
            let sealer = std::thread::Builder::new()
                .name("content-seal".into())
                .spawn_scoped(scope, move || {
                    let mut tag = [0u8; TAG_BYTES];
                    let passed = seal_batches(&self.key, &mut file, self.size, first, |i, c| {
                        tags.read_exact(&mut tag).map_err(|_| changed())?;
                        if c[c.len() - TAG_BYTES..] != tag {
                            return Err(changed());
                        }
                        Ok(queue.send(Ok((i, c))).is_ok())
                    });
                    if let Err(err) = passed {
                        let err = match err.kind() {
                            std::io::ErrorKind::UnexpectedEof => changed(),
                            _ => err,
                        };
                        let _ = queue.send(Err(err));
                    }
                })?;
            let data = SealedView {
                source: self,
                chunks,
                state: RefCell::new(ViewState {
                    queued: Some(queued),
                    current: None,
                }),
            };
            sink.write_all(&self.sealed_size.to_le_bytes())?;
            let encoded = encode_ranges(&data, outboard, ranges, &mut sink)
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|()| sink.flush());
            // Ends the sealing thread if the encoding stopped early.
            drop(data);
            let _ = sealer.join();
            encoded
        })
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

/// Sealed chunks in order (with their index) from the sealing thread, or why it stopped.
type SealedChunks = Receiver<std::io::Result<(u64, Vec<u8>)>>;

/// The ciphertext of a [`SealedSource`] for positioned reads, from the chunks its sealing
/// thread sends in order. A read before the chunk at hand (not what an encoding does)
/// seals that chunk again on the spot.
struct SealedView<'a> {
    source: &'a SealedSource,
    chunks: u64,
    state: RefCell<ViewState>,
}

struct ViewState {
    queued: Option<SealedChunks>,
    current: Option<(u64, Vec<u8>)>,
}

impl SealedView<'_> {
    /// Make chunk `index` the current one.
    fn load(&self, state: &mut ViewState, index: u64) -> std::io::Result<()> {
        if state.current.as_ref().is_some_and(|(at, _)| *at == index) {
            return Ok(());
        }
        while let Some(queued) = &state.queued {
            match queued.recv() {
                Ok(Ok((at, chunk))) if at == index => {
                    state.current = Some((at, chunk));
                    return Ok(());
                }
                Ok(Ok((at, _))) if at < index => continue,
                Ok(Ok(_)) | Err(_) => state.queued = None,
                Ok(Err(err)) => return Err(err),
            }
        }
        let source = self.source;
        let want = plaintext_chunk_len(source.size, self.chunks, index);
        let mut buf = Vec::with_capacity(want + TAG_BYTES);
        buf.resize(want, 0);
        let mut file = File::open(&source.source)?;
        file.seek(SeekFrom::Start(index * CHUNK_BYTES as u64))?;
        file.read_exact(&mut buf).map_err(|_| changed())?;
        source
            .key
            .seal_chunk_in_place(index, index + 1 == self.chunks, &mut buf);
        let mut tag = [0u8; TAG_BYTES];
        File::open(&source.tags)?
            .read_exact_at(index * TAG_BYTES as u64, &mut tag)
            .map_err(|_| changed())?;
        if buf[buf.len() - TAG_BYTES..] != tag {
            return Err(changed());
        }
        state.current = Some((index, buf));
        Ok(())
    }
}

impl ReadAt for SealedView<'_> {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        if pos >= self.source.sealed_size || buf.is_empty() {
            return Ok(0);
        }
        let index = pos / SEALED_CHUNK_BYTES as u64;
        let mut state = self.state.borrow_mut();
        self.load(&mut state, index)?;
        let Some((_, chunk)) = &state.current else {
            unreachable!("load sets the current chunk");
        };
        let offset = (pos - index * SEALED_CHUNK_BYTES as u64) as usize;
        let n = buf.len().min(chunk.len() - offset);
        buf[..n].copy_from_slice(&chunk[offset..offset + n]);
        Ok(n)
    }
}

impl Size for SealedView<'_> {
    fn size(&self) -> std::io::Result<Option<u64>> {
        Ok(Some(self.source.sealed_size))
    }
}

/// Positioned reads of a file read front to back, served from a window of
/// [`OUTBOARD_WINDOW`] bytes (the outboard's 64-byte hash pairs, one read per window).
struct ReadAhead {
    file: File,
    window: RefCell<(u64, Vec<u8>)>,
}

impl ReadAhead {
    fn new(file: File) -> Self {
        ReadAhead {
            file,
            window: RefCell::new((0, Vec::new())),
        }
    }
}

impl ReadAt for ReadAhead {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut window = self.window.borrow_mut();
        let (start, bytes) = &mut *window;
        let end = *start + bytes.len() as u64;
        if pos < *start || pos + buf.len() as u64 > end {
            bytes.resize(OUTBOARD_WINDOW.max(buf.len()), 0);
            let mut filled = 0;
            while filled < bytes.len() {
                match self
                    .file
                    .read_at(pos + filled as u64, &mut bytes[filled..])?
                {
                    0 => break,
                    n => filled += n,
                }
            }
            bytes.truncate(filled);
            *start = pos;
        }
        let offset = (pos - *start) as usize;
        let n = buf.len().min(bytes.len().saturating_sub(offset));
        buf[..n].copy_from_slice(&bytes[offset..offset + n]);
        Ok(n)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::content::seal_stream;
    use bao_tree::io::outboard::PreOrderMemOutboard;

    fn write_source(dir: &Path, len: usize) -> (PathBuf, Vec<u8>) {
        let plaintext: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let source = dir.join("source");
        std::fs::write(&source, &plaintext).unwrap();
        (source, plaintext)
    }

    /// The push of `ranges` from `prepared`, or why it failed.
    fn encoded(prepared: &SealedSource, ranges: &ChunkRanges) -> std::io::Result<Vec<u8>> {
        let mut encoded = Vec::new();
        prepared.encode(ranges, &mut encoded)?;
        Ok(encoded)
    }

    #[test]
    fn a_sealed_source_has_the_sealed_streams_blake3_tree_and_encodes_any_range_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let key = FileKey::from_bytes([3; 32]);
        for len in [
            0usize,
            1,
            CHUNK_BYTES,
            9 * CHUNK_BYTES + 1234,
            40 * CHUNK_BYTES,
        ] {
            let (source, plaintext) = write_source(dir.path(), len);
            let mut expected = Vec::new();
            seal_stream(&key, &mut &plaintext[..], &mut expected).unwrap();
            let mut told = 0;
            let prepared =
                SealedSource::seal(&key, &source, len as u64, dir.path(), |done| told = done)
                    .unwrap();
            assert_eq!(told, len as u64);
            assert_eq!(prepared.hash(), *blake3::hash(&expected).as_bytes());
            assert_eq!(prepared.sealed_size(), expected.len() as u64);

            // The whole push and the push of a range from the middle are byte for byte
            // bao-tree's validated encoding of the sealed stream.
            let mem = PreOrderMemOutboard::create(&expected, IROH_BLOCK_SIZE);
            for ranges in [
                ChunkRanges::all(),
                ChunkRanges::from(bao_tree::ChunkNum(100)..),
                ChunkRanges::from(bao_tree::ChunkNum(1500)..),
            ] {
                let encoded = encoded(&prepared, &ranges).unwrap();
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
            // Nothing but the tree and the tags was written, and they go on drop.
            let written = [prepared.outboard.clone(), prepared.tags.clone()];
            let files = std::fs::read_dir(dir.path()).unwrap().count();
            assert_eq!(files, 3, "the source, the tree and the tags");
            drop(prepared);
            assert!(written.iter().all(|f| !f.exists()));
        }
    }

    #[test]
    fn a_view_read_out_of_order_seals_the_chunk_again() {
        let dir = tempfile::tempdir().unwrap();
        let key = FileKey::from_bytes([4; 32]);
        let (source, plaintext) = write_source(dir.path(), 5 * CHUNK_BYTES + 7);
        let mut expected = Vec::new();
        seal_stream(&key, &mut &plaintext[..], &mut expected).unwrap();
        let prepared =
            SealedSource::seal(&key, &source, plaintext.len() as u64, dir.path(), |_| {}).unwrap();
        let view = SealedView {
            source: &prepared,
            chunks: chunk_count(plaintext.len() as u64),
            state: RefCell::new(ViewState {
                queued: None,
                current: None,
            }),
        };
        for at in [
            3 * SEALED_CHUNK_BYTES + 5,
            SEALED_CHUNK_BYTES - 3,
            expected.len() - 9,
        ] {
            let mut buf = vec![0u8; 20.min(expected.len() - at)];
            view.read_exact_at(at as u64, &mut buf).unwrap();
            assert_eq!(buf, expected[at..at + buf.len()], "at {at}");
        }
    }

    #[test]
    fn a_source_changed_after_sealing_fails_the_push_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let key = FileKey::from_bytes([5; 32]);
        let len = 20 * CHUNK_BYTES + 99;
        let (source, mut plaintext) = write_source(dir.path(), len);
        let prepared = SealedSource::seal(&key, &source, len as u64, dir.path(), |_| {}).unwrap();
        assert!(encoded(&prepared, &ChunkRanges::all()).is_ok());

        // One byte flipped in chunk 12.
        plaintext[12 * CHUNK_BYTES + 1] ^= 1;
        std::fs::write(&source, &plaintext).unwrap();
        let err = encoded(&prepared, &ChunkRanges::all()).unwrap_err();
        assert!(
            err.to_string().contains("changed while it was being put"),
            "{err}"
        );

        // Cut short.
        plaintext[12 * CHUNK_BYTES + 1] ^= 1;
        std::fs::write(&source, &plaintext[..len - 100]).unwrap();
        let err = encoded(&prepared, &ChunkRanges::all()).unwrap_err();
        assert!(
            err.to_string().contains("changed while it was being put"),
            "{err}"
        );

        // Put back, it encodes again.
        std::fs::write(&source, &plaintext).unwrap();
        assert!(encoded(&prepared, &ChunkRanges::all()).is_ok());
    }

    #[test]
    fn what_a_killed_put_left_goes_at_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("put-0000.obao"), b"x").unwrap();
        std::fs::write(dir.path().join("put-0000.sealed"), b"x").unwrap();
        std::fs::write(dir.path().join("source"), b"x").unwrap();
        SealedSource::remove_stale(dir.path());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["source"]);
    }
}
