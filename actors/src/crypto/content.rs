//! Large content (issue 15): a file as a sequence of fixed-size chunks, each sealed with
//! XChaCha20-Poly1305 under a per-file key (docs/DESIGN.md §4 "Large content").
//!
//! - **Per-file key**: BLAKE3 `derive_key` of the epoch's content key and the file's
//!   plaintext hash ([`FileKey::derive`]). The same file put twice in one group (one epoch)
//!   gets the same key, so the same ciphertext, which the content store keeps once; in
//!   another group (or epoch) it is unrelated. A relay never learns the plaintext hash.
//! - **Chunks**: [`CHUNK_BYTES`] of plaintext each (the last one shorter, an empty file one
//!   empty chunk), sealed to [`SEALED_CHUNK_BYTES`]. The nonce is derived from the key and
//!   the chunk's index (a key seals exactly one file, so a (key, nonce) pair seals one
//!   plaintext), so a chunk carries no nonce and chunk `i` starts at `i *
//!   SEALED_CHUNK_BYTES` of the ciphertext: range requests map to chunks without an index.
//! - **Order and completeness**: the chunk's index and a final-chunk flag are the AEAD's
//!   associated data, so chunks cannot be reordered, dropped or the file cut short (the last
//!   chunk present would not open as the last).
//!
//! - **The AEAD** is XChaCha20-Poly1305 as draft-irtf-cfrg-xchacha defines it: HChaCha20 of
//!   the key and the nonce's first 16 bytes is the subkey, under which ring's IETF
//!   ChaCha20-Poly1305 seals with the nonce's last 8 bytes. The bytes are those of the
//!   `chacha20poly1305` crate's `XChaCha20Poly1305` (a test checks it); ring's assembly is
//!   about twice as fast on a file's worth of chunks (docs/DECISIONS.md "Content AEAD").
//!
//! Streaming: [`seal_stream`] and [`open_stream`] define the sealed format one chunk at a
//! time (with [`plaintext_hash`], they are the sequential reference the client's parallel
//! passes are tested against: `client::sealed_source` seals, `client::partial_download`
//! opens).

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};
use std::io::{Read, Write};
use zeroize::Zeroizing;

/// Plaintext bytes of a chunk (the last may be shorter).
pub const CHUNK_BYTES: usize = 256 * 1024;
/// The AEAD tag each chunk adds.
pub const TAG_BYTES: usize = 16;
/// Bytes of a sealed full chunk.
pub const SEALED_CHUNK_BYTES: usize = CHUNK_BYTES + TAG_BYTES;
/// BLAKE3 context of a file's key.
const CONTEXT_FILE_KEY: &str = "zerok content file key v1";
/// Domain of the associated data of a chunk.
const AAD_DOMAIN: &[u8] = b"zerok content v1";

/// Why content does not open (or could not be read or written).
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// A chunk does not open at its place: damaged, reordered, from another file, or the
    /// content was cut short.
    #[error("content chunk {0} does not open: it was damaged, reordered or cut short")]
    Integrity(u64),
    /// The ciphertext's length is not one a sealed file has.
    #[error("sealed content of {0} bytes is not a whole number of chunks")]
    Length(u64),
    /// Reading the source or writing the destination failed.
    #[error("content i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// The key of one file. Zeroized on drop, redacted in `Debug`.
#[derive(Clone)]
pub struct FileKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey([redacted])")
    }
}

impl FileKey {
    /// The key of the file whose plaintext hashes (BLAKE3) to `plaintext_hash`, in the group
    /// epoch of `content_key`.
    pub fn derive(content_key: &[u8; 32], plaintext_hash: &[u8; 32]) -> FileKey {
        let mut material = Zeroizing::new([0u8; 64]);
        material[..32].copy_from_slice(content_key);
        material[32..].copy_from_slice(plaintext_hash);
        FileKey(Zeroizing::new(blake3::derive_key(
            CONTEXT_FILE_KEY,
            &material[..],
        )))
    }

    /// The key as bytes (for the record that announces the file, itself sealed).
    pub fn from_bytes(bytes: [u8; 32]) -> FileKey {
        FileKey(Zeroizing::new(bytes))
    }

    /// The key's bytes.
    pub fn expose_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 24-byte XChaCha20 nonce of chunk `index`.
    fn nonce(&self, index: u64) -> [u8; 24] {
        let hash = blake3::keyed_hash(&self.0, &index.to_be_bytes());
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&hash.as_bytes()[..24]);
        nonce
    }

    /// XChaCha20-Poly1305 of chunk `index` as ring's ChaCha20-Poly1305: the HChaCha20
    /// subkey and the IETF nonce.
    fn chunk_cipher(&self, index: u64) -> (LessSafeKey, Nonce) {
        let xnonce = self.nonce(index);
        let mut head = [0u8; 16];
        head.copy_from_slice(&xnonce[..16]);
        let key = chacha20::Key::from(*self.0);
        let mut subkey = Zeroizing::new([0u8; 32]);
        subkey.copy_from_slice(&chacha20::hchacha::<chacha20::R20>(&key, &head.into()));
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&xnonce[16..]);
        // A 32-byte key is always one ChaCha20-Poly1305 takes.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &subkey[..])
            .unwrap_or_else(|_| unreachable!("ChaCha20-Poly1305 takes 32-byte keys"));
        (
            LessSafeKey::new(unbound),
            Nonce::assume_unique_for_key(nonce),
        )
    }

    /// Seal chunk `index` (`last`: the file's final chunk) in place: `buf` holds the
    /// plaintext and ends holding the sealed chunk (the tag appended).
    pub fn seal_chunk_in_place(&self, index: u64, last: bool, buf: &mut Vec<u8>) {
        let tag = self.chunk_tag(index, last, buf);
        buf.extend_from_slice(tag.as_ref());
    }

    /// Encrypt `buf` in place as chunk `index` and answer its tag.
    fn chunk_tag(&self, index: u64, last: bool, buf: &mut [u8]) -> Tag {
        let (cipher, nonce) = self.chunk_cipher(index);
        // ring refuses only inputs longer than ChaCha20's 256 GiB counter space.
        cipher
            .seal_in_place_separate_tag(nonce, Aad::from(aad(index, last)), buf)
            .unwrap_or_else(|_| unreachable!("a chunk is far below ChaCha20's limit"))
    }

    /// Whether `plaintext` seals as chunk `index` to `tag` (a resumed download checks the
    /// chunks it kept this way). `plaintext` is overwritten.
    pub fn seals_to(&self, index: u64, last: bool, plaintext: &mut [u8], tag: &[u8]) -> bool {
        self.chunk_tag(index, last, plaintext).as_ref() == tag
    }

    /// Seal chunk `index` (`last`: the file's final chunk).
    pub fn seal_chunk(&self, index: u64, last: bool, plaintext: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(plaintext.len() + TAG_BYTES);
        buf.extend_from_slice(plaintext);
        self.seal_chunk_in_place(index, last, &mut buf);
        buf
    }

    /// Open chunk `index` (`last`: it must be the file's final chunk) in place: `buf` holds
    /// the sealed chunk and ends holding its plaintext.
    pub fn open_chunk_in_place(
        &self,
        index: u64,
        last: bool,
        buf: &mut Vec<u8>,
    ) -> Result<(), ContentError> {
        let (cipher, nonce) = self.chunk_cipher(index);
        let plain = cipher
            .open_in_place(nonce, Aad::from(aad(index, last)), buf)
            .map_err(|_| ContentError::Integrity(index))?
            .len();
        buf.truncate(plain);
        Ok(())
    }

    /// Open chunk `index` (`last`: it must be the file's final chunk).
    pub fn open_chunk(
        &self,
        index: u64,
        last: bool,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ContentError> {
        let mut buf = Zeroizing::new(sealed.to_vec());
        self.open_chunk_in_place(index, last, &mut buf)?;
        Ok(buf)
    }
}

fn aad(index: u64, last: bool) -> [u8; AAD_DOMAIN.len() + 9] {
    let mut aad = [0u8; AAD_DOMAIN.len() + 9];
    aad[..AAD_DOMAIN.len()].copy_from_slice(AAD_DOMAIN);
    aad[AAD_DOMAIN.len()..AAD_DOMAIN.len() + 8].copy_from_slice(&index.to_be_bytes());
    aad[AAD_DOMAIN.len() + 8] = u8::from(last);
    aad
}

/// Bytes of the sealed form of a file of `plaintext_len` bytes.
pub fn sealed_len(plaintext_len: u64) -> u64 {
    let chunks = chunk_count(plaintext_len);
    plaintext_len + chunks * TAG_BYTES as u64
}

/// Chunks of a file of `plaintext_len` bytes (an empty file has one, empty).
pub fn chunk_count(plaintext_len: u64) -> u64 {
    plaintext_len.div_ceil(CHUNK_BYTES as u64).max(1)
}

/// Bytes of sealed chunk `index` of a sealed file of `sealed_len` bytes in `chunks` chunks
/// (the last one may be shorter).
pub fn sealed_chunk_len(sealed_len: u64, chunks: u64, index: u64) -> usize {
    if index + 1 == chunks {
        (sealed_len - index * SEALED_CHUNK_BYTES as u64) as usize
    } else {
        SEALED_CHUNK_BYTES
    }
}

/// Chunks of a sealed file of `sealed_len` bytes, or why that is no sealed length.
pub fn sealed_chunk_count(sealed_len: u64) -> Result<u64, ContentError> {
    let full = sealed_len / SEALED_CHUNK_BYTES as u64;
    let rest = sealed_len % SEALED_CHUNK_BYTES as u64;
    match rest {
        0 if full > 0 => Ok(full),
        r if r >= TAG_BYTES as u64 => Ok(full + 1),
        _ => Err(ContentError::Length(sealed_len)),
    }
}

/// Read up to a chunk from `source` (fewer bytes only at its end).
fn read_chunk(source: &mut impl Read, buf: &mut Vec<u8>, size: usize) -> std::io::Result<()> {
    buf.clear();
    source.take(size as u64).read_to_end(buf)?;
    Ok(())
}

/// The BLAKE3 hash and length of everything `source` holds, reading a chunk at a time (the
/// sequential reference of [`plaintext_hash_file`]).
pub fn plaintext_hash(source: &mut impl Read) -> std::io::Result<([u8; 32], u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut len = 0u64;
    loop {
        let n = source.read(&mut buf)?;
        if n == 0 {
            return Ok((*hasher.finalize().as_bytes(), len));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

/// Bytes of the file [`plaintext_hash_file`] hashes at once, on every core.
const HASH_BLOCK_BYTES: usize = 4 << 20;

/// Fill `block` from `file`; answers the bytes read (fewer only at the end).
fn fill(file: &mut std::fs::File, block: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < block.len() {
        match file.read(&mut block[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// The BLAKE3 hash and length of the file at `path`, hashed on every core (the first of a
/// put's two passes): the same hash as [`plaintext_hash`]. A thread reads the next block
/// while the last one is hashed (a memory map would count the whole file in the process's
/// resident memory).
pub fn plaintext_hash_file(path: &std::path::Path) -> std::io::Result<([u8; 32], u64)> {
    use std::sync::mpsc::sync_channel;
    let mut file = std::fs::File::open(path)?;
    let (full, filled) = sync_channel::<std::io::Result<Vec<u8>>>(1);
    let (empty, emptied) = sync_channel::<Vec<u8>>(2);
    for _ in 0..2 {
        let _ = empty.send(vec![0u8; HASH_BLOCK_BYTES]);
    }
    std::thread::scope(move |scope| {
        scope.spawn(move || {
            while let Ok(mut block) = emptied.recv() {
                block.resize(HASH_BLOCK_BYTES, 0);
                let read = fill(&mut file, &mut block).map(|n| {
                    block.truncate(n);
                    block
                });
                let end = matches!(&read, Ok(block) if block.is_empty()) || read.is_err();
                if full.send(read).is_err() || end {
                    return;
                }
            }
        });
        let mut hasher = blake3::Hasher::new();
        while let Ok(block) = filled.recv() {
            let block = block?;
            if block.is_empty() {
                break;
            }
            hasher.update_rayon(&block);
            let _ = empty.send(block);
        }
        Ok((*hasher.finalize().as_bytes(), hasher.count()))
    })
}

/// Seal everything `source` holds to `sink`, chunk by chunk; answers the sealed length.
pub fn seal_stream(
    key: &FileKey,
    source: &mut impl Read,
    sink: &mut impl Write,
) -> Result<u64, ContentError> {
    let mut current = Zeroizing::new(Vec::with_capacity(CHUNK_BYTES));
    let mut next = Zeroizing::new(Vec::with_capacity(CHUNK_BYTES));
    read_chunk(source, &mut current, CHUNK_BYTES)?;
    let mut index = 0u64;
    let mut written = 0u64;
    loop {
        // A full chunk is the last only if nothing follows it.
        let last = if current.len() < CHUNK_BYTES {
            true
        } else {
            read_chunk(source, &mut next, CHUNK_BYTES)?;
            next.is_empty()
        };
        let sealed = key.seal_chunk(index, last, &current);
        sink.write_all(&sealed)?;
        written += sealed.len() as u64;
        if last {
            return Ok(written);
        }
        std::mem::swap(&mut current, &mut next);
        index += 1;
    }
}

/// Open a sealed file of `sealed_len` bytes read from `source` into `sink`, chunk by chunk;
/// answers the plaintext length. A chunk that does not open stops it with
/// [`ContentError::Integrity`]: what was written before is the verified prefix, never the
/// whole file.
pub fn open_stream(
    key: &FileKey,
    sealed_len: u64,
    source: &mut impl Read,
    sink: &mut impl Write,
) -> Result<u64, ContentError> {
    let chunks = sealed_chunk_count(sealed_len)?;
    let mut buf = Vec::with_capacity(SEALED_CHUNK_BYTES);
    let mut written = 0u64;
    for index in 0..chunks {
        read_chunk(source, &mut buf, SEALED_CHUNK_BYTES)?;
        let last = index + 1 == chunks;
        if buf.len() != sealed_chunk_len(sealed_len, chunks, index) {
            return Err(ContentError::Integrity(index));
        }
        let plaintext = key.open_chunk(index, last, &buf)?;
        sink.write_all(&plaintext)?;
        written += plaintext.len() as u64;
    }
    Ok(written)
}

/// The payload of a `CONTENT_REF` record: what a member needs to fetch and open a file
/// (the record is sealed, so only the group reads it). CBOR.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileAnnounce {
    /// The mailbox the file was offered to.
    pub mailbox: zerok_messages::MailboxId,
    /// BLAKE3 of the sealed file.
    pub hash: zerok_messages::BlobId,
    /// Bytes of the sealed file.
    pub sealed_size: u64,
    /// Bytes of the file.
    pub size: u64,
    /// The file's name.
    pub name: String,
    /// The file's key.
    #[serde(with = "serde_bytes")]
    pub key: [u8; 32],
}

impl Drop for FileAnnounce {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl FileAnnounce {
    /// Longest name kept (longer ones are cut at a char boundary).
    pub const NAME_BYTES_MAX: usize = 255;

    /// The announcement of `file`.
    pub fn of(file: &zerok_messages::client::FileRef) -> FileAnnounce {
        FileAnnounce {
            mailbox: file.mailbox,
            hash: file.hash,
            sealed_size: file.sealed_size,
            size: file.size,
            name: file.name.clone(),
            key: *file.key,
        }
    }

    /// CBOR.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing to a Vec fails only on a serializer bug.
        if let Err(err) = ciborium::into_writer(self, &mut out) {
            tracing::error!(error = %err, "file announcement not encodable");
        }
        out
    }

    /// Decode and check that the sizes agree.
    pub fn decode(bytes: &[u8]) -> Result<FileAnnounce, String> {
        let announce: FileAnnounce = ciborium::from_reader(bytes).map_err(|e| e.to_string())?;
        if sealed_len(announce.size) != announce.sealed_size
            || announce.name.len() > Self::NAME_BYTES_MAX
        {
            return Err("sizes or name do not agree".into());
        }
        Ok(announce)
    }

    /// The file reference of a group's announcement.
    pub fn into_file_ref(
        self,
        group: zerok_messages::client::GroupId,
    ) -> zerok_messages::client::FileRef {
        zerok_messages::client::FileRef {
            group,
            mailbox: self.mailbox,
            hash: self.hash,
            sealed_size: self.sealed_size,
            size: self.size,
            name: self.name.clone(),
            key: Zeroizing::new(self.key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn seal(content_key: &[u8; 32], plaintext: &[u8]) -> (FileKey, Vec<u8>) {
        let (hash, len) = plaintext_hash(&mut &plaintext[..]).unwrap();
        assert_eq!(len, plaintext.len() as u64);
        let key = FileKey::derive(content_key, &hash);
        let mut sealed = Vec::new();
        let n = seal_stream(&key, &mut &plaintext[..], &mut sealed).unwrap();
        assert_eq!(n, sealed.len() as u64);
        assert_eq!(n, sealed_len(len));
        (key, sealed)
    }

    fn open(key: &FileKey, sealed: &[u8]) -> Result<Vec<u8>, ContentError> {
        let mut out = Vec::new();
        open_stream(key, sealed.len() as u64, &mut &sealed[..], &mut out)?;
        Ok(out)
    }

    /// The chunk AEAD is XChaCha20-Poly1305: byte for byte what the `chacha20poly1305`
    /// crate seals, and it opens what that crate sealed.
    #[test]
    fn chunks_are_xchacha20_poly1305_byte_for_byte() {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        use chacha20poly1305::{XChaCha20Poly1305, XNonce};
        use proptest::prelude::*;
        let check = |key: [u8; 32], index: u64, last: bool, plaintext: &[u8]| {
            let ours = FileKey::from_bytes(key);
            let reference = XChaCha20Poly1305::new(&key.into())
                .encrypt(
                    &XNonce::from(ours.nonce(index)),
                    Payload {
                        msg: plaintext,
                        aad: &aad(index, last),
                    },
                )
                .unwrap();
            assert_eq!(ours.seal_chunk(index, last, plaintext), reference);
            assert_eq!(
                &ours.open_chunk(index, last, &reference).unwrap()[..],
                plaintext
            );
            let mut scratch = plaintext.to_vec();
            assert!(ours.seals_to(index, last, &mut scratch, &reference[plaintext.len()..]));
        };
        check([9; 32], 0, true, &file(CHUNK_BYTES, 1));
        check([3; 32], u64::MAX, false, &[]);
        proptest!(|(key in any::<[u8; 32]>(), index in any::<u64>(), last in any::<bool>(),
                    plaintext in proptest::collection::vec(any::<u8>(), 0..3000))| {
            check(key, index, last, &plaintext);
        });
    }

    #[test]
    fn a_file_hashed_on_every_core_hashes_as_read_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        for len in [
            0,
            1,
            3 * CHUNK_BYTES + 5,
            HASH_BLOCK_BYTES,
            40 * CHUNK_BYTES + 9,
        ] {
            let plaintext = file(len, 8);
            let path = dir.path().join(format!("f{len}"));
            std::fs::write(&path, &plaintext).unwrap();
            assert_eq!(
                plaintext_hash_file(&path).unwrap(),
                plaintext_hash(&mut &plaintext[..]).unwrap()
            );
        }
    }

    #[test]
    fn files_of_every_boundary_size_seal_and_open_back() {
        for len in [
            0,
            1,
            CHUNK_BYTES - 1,
            CHUNK_BYTES,
            CHUNK_BYTES + 1,
            3 * CHUNK_BYTES,
            3 * CHUNK_BYTES + 17,
        ] {
            let plaintext = file(len, 3);
            let (key, sealed) = seal(&[7; 32], &plaintext);
            assert_eq!(
                sealed_chunk_count(sealed.len() as u64).unwrap(),
                chunk_count(len as u64)
            );
            assert_eq!(open(&key, &sealed).unwrap(), plaintext, "len {len}");
        }
    }

    #[test]
    fn the_same_file_seals_alike_in_one_group_and_unrelated_in_another() {
        let plaintext = file(2 * CHUNK_BYTES + 5, 9);
        let (_, once) = seal(&[1; 32], &plaintext);
        let (_, twice) = seal(&[1; 32], &plaintext);
        assert_eq!(once, twice, "convergent inside a group: stored once");
        let (_, other) = seal(&[2; 32], &plaintext);
        assert_eq!(other.len(), once.len());
        let same = once.iter().zip(&other).filter(|(a, b)| a == b).count();
        assert!(same < once.len() / 100, "{same} equal bytes across groups");
        // Another file in the same group: another key.
        let (_, changed) = seal(&[1; 32], &file(2 * CHUNK_BYTES + 5, 10));
        assert_ne!(changed[..64], once[..64]);
    }

    #[test]
    fn a_flipped_byte_a_reorder_or_a_cut_is_an_integrity_error() {
        let plaintext = file(3 * CHUNK_BYTES + 100, 5);
        let (key, sealed) = seal(&[4; 32], &plaintext);
        let mut flipped = sealed.clone();
        flipped[SEALED_CHUNK_BYTES + 10] ^= 1;
        assert!(matches!(
            open(&key, &flipped),
            Err(ContentError::Integrity(1))
        ));
        // Chunks 0 and 1 swapped.
        let mut swapped = sealed.clone();
        let (a, b) = swapped.split_at_mut(SEALED_CHUNK_BYTES);
        a.swap_with_slice(&mut b[..SEALED_CHUNK_BYTES]);
        assert!(matches!(
            open(&key, &swapped),
            Err(ContentError::Integrity(0))
        ));
        // The last chunk dropped: chunk 2 does not open as the last.
        let cut = &sealed[..3 * SEALED_CHUNK_BYTES];
        assert!(matches!(open(&key, cut), Err(ContentError::Integrity(2))));
        // Cut inside a chunk, or to nothing.
        assert!(open(&key, &sealed[..sealed.len() - 1]).is_err());
        assert!(matches!(open(&key, &[]), Err(ContentError::Length(0))));
        // Another file's key.
        let wrong = FileKey::derive(&[4; 32], &[0; 32]);
        assert!(matches!(
            open(&wrong, &sealed),
            Err(ContentError::Integrity(0))
        ));
        assert_eq!(format!("{key:?}"), "FileKey([redacted])");
    }
}
