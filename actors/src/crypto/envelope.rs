//! Record envelopes: what a relay stores and can never read.
//!
//! ```text
//! envelope   = format(2) ‖ epoch_be(4) ‖ nonce(24) ‖ XChaCha20-Poly1305(content key, padded, aad)
//! aad        = "zerok/1" ‖ format ‖ mailbox(32) ‖ epoch_be(4)
//! padded     = record_len_be(4) ‖ CBOR(record) ‖ zeros, to a power of two ≥ 256 bytes
//! record     = {sender, seq, hlc, kind, payload, batch: {count, index, path, signature}}
//! leaf       = BLAKE3(0x00 ‖ "zerok record leaf v2" ‖ mailbox ‖ epoch_be ‖ sender ‖ seq_be ‖
//!                     hlc_be ‖ kind_be ‖ payload_len_be(8) ‖ payload)
//! node       = BLAKE3(0x01 ‖ left ‖ right)          (a last odd node is carried up as is)
//! root       = the Merkle root over the leaves of the records sealed together, in order
//! signature  = Ed25519 by the sender's device key over
//!              "zerok batch v2" ‖ mailbox ‖ epoch_be ‖ sender ‖ count_be ‖ root
//! blob_id    = BLAKE3(envelope)
//! ```
//!
//! The epoch travels in clear so a receiver picks the right key; the AEAD binds it and the
//! mailbox, so an envelope moved to another mailbox or relabelled with another epoch fails to
//! open. `blob_id` cannot sit inside the AAD (it is the hash of the result), so [`open`]
//! recomputes it and refuses a mismatch: a relay cannot serve one envelope under another id.
//! Padding means a relay learns only the size bucket of a record.
//!
//! **One signature per batch** (DESIGN.md §4). The records a device seals together (up to
//! [`BATCH_RECORDS_MAX`]) share one Ed25519 signature over the Merkle root of their leaves;
//! each record carries its index and the sibling hashes up to the root, so it is checked on
//! its own, in any order, in any page, without the others. A reader verifies a root's
//! signature once ([`OpenCache`] remembers it) and every other record of the batch costs a
//! few BLAKE3 hashes. The signature still proves which device wrote each record, even to
//! other group members: a leaf binds sender, seq, hlc, kind and payload, and a leaf is in a
//! signed root only if the sender put it there (BLAKE3 collision resistance; leaves and nodes
//! are hashed under different prefixes, so no node passes for a leaf). Per-sender order and
//! replay detection are unchanged: they work on the signed `seq`.
//!
//! Format 1 (one signature per record, `"zerok record v1" ‖ …`) is still opened: relays
//! keep records written before format 2 for their retention time.

use super::keys::EpochKeys;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError, RwLock};
use zeroize::Zeroizing;
pub use zerok_messages::client::{OpenError, OpenedRecord, RecordKind, SealError, Sealed};
use zerok_messages::wire::BLOB_BYTES_MAX;
use zerok_messages::{BlobId, DeviceId, Epoch, MailboxId, Signature64};

/// Envelope format byte of version 1: one signature per record (opened, no longer sealed).
const FORMAT_V1: u8 = 1;
/// Envelope format byte of version 2: one signature per batch, a Merkle proof per record.
const FORMAT_V2: u8 = 2;
/// Bytes before the AEAD output: format, epoch, nonce.
pub const HEADER_BYTES: usize = 1 + 4 + NONCE_BYTES;
/// XChaCha20 nonce length.
pub const NONCE_BYTES: usize = 24;
/// Poly1305 tag length.
pub const TAG_BYTES: usize = 16;
/// Smallest padded plaintext: small records all look alike.
pub const PAD_BUCKET_MIN: usize = 256;
/// Largest padded plaintext: the envelope must fit a relay blob.
pub const PADDED_BYTES_MAX: usize = BLOB_BYTES_MAX - HEADER_BYTES - TAG_BYTES;
/// Records one batch signature covers at most: a record's proof then holds at most
/// log2(256) = 8 hashes (256 bytes), which a 1 KiB record's padding bucket already has room
/// for; past ~100 records a batch's signature is under 1 % of its cost anyway.
pub const BATCH_RECORDS_MAX: usize = 256;
/// Hashes in the longest proof (a batch of [`BATCH_RECORDS_MAX`]).
const PROOF_HASHES_MAX: usize = BATCH_RECORDS_MAX.ilog2() as usize;
/// Record bytes that are not payload: CBOR field names, ids, counts, the proof, the
/// signature, the length prefix. A generous bound used to tell callers how large a payload
/// may be.
const RECORD_OVERHEAD_BYTES: usize = 256 + 32 * PROOF_HASHES_MAX;
/// Largest payload a record can carry.
pub const PAYLOAD_BYTES_MAX: usize = PADDED_BYTES_MAX - RECORD_OVERHEAD_BYTES;

const AAD_DOMAIN: &[u8] = b"zerok/1";
const SIGNATURE_DOMAIN_V1: &[u8] = b"zerok record v1";
const LEAF_DOMAIN: &[u8] = b"zerok record leaf v2";
const BATCH_DOMAIN: &[u8] = b"zerok batch v2";
const LEAF_PREFIX: u8 = 0;
const NODE_PREFIX: u8 = 1;

/// A device's signing identity: the Ed25519 key of its iroh endpoint. Zeroized on drop.
pub struct DeviceKey {
    signing: SigningKey,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceKey({:?})", self.device_id())
    }
}

impl DeviceKey {
    /// From the 32 secret bytes (the same bytes as the device's iroh secret key).
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        DeviceKey {
            signing: SigningKey::from_bytes(secret),
        }
    }

    /// The public identity.
    pub fn device_id(&self) -> DeviceId {
        DeviceId(self.signing.verifying_key().to_bytes())
    }

    /// Sign `message` (callers put a domain string first).
    pub fn sign(&self, message: &[u8]) -> Signature64 {
        Signature64(self.signing.sign(message).to_bytes())
    }
}

/// A record of format 1 as it sits inside the AEAD.
#[derive(Serialize, Deserialize)]
struct RecordWire {
    sender: DeviceId,
    seq: u64,
    hlc: u64,
    kind: RecordKind,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
    signature: Signature64,
}

/// A record of format 2 as it sits inside the AEAD. One-letter field names keep a record
/// of up to ~100 payload bytes (in a batch of one) in the smallest padding bucket.
#[derive(Serialize, Deserialize)]
struct RecordWireV2 {
    #[serde(rename = "s")]
    sender: DeviceId,
    #[serde(rename = "q")]
    seq: u64,
    #[serde(rename = "h")]
    hlc: u64,
    #[serde(rename = "k")]
    kind: RecordKind,
    #[serde(rename = "p", with = "serde_bytes")]
    payload: Vec<u8>,
    #[serde(rename = "b")]
    batch: BatchProof,
}

/// Where a record sits in its signed batch.
#[derive(Serialize, Deserialize)]
struct BatchProof {
    /// Records in the batch.
    #[serde(rename = "n")]
    count: u32,
    /// This record's place among them.
    #[serde(rename = "i")]
    index: u32,
    /// The sibling hashes from the leaf up, 32 bytes each.
    #[serde(rename = "a", with = "serde_bytes")]
    path: Vec<u8>,
    /// The sender's signature over the batch's root.
    #[serde(rename = "g")]
    signature: Signature64,
}

/// One record to seal: this device's `seq` and `hlc` in the mailbox, its kind and payload.
#[derive(Debug, Clone, Copy)]
pub struct RecordIn<'a> {
    /// This device's seq in the mailbox.
    pub seq: u64,
    /// HLC timestamp.
    pub hlc: u64,
    /// The record kind.
    pub kind: RecordKind,
    /// The app's bytes.
    pub payload: &'a [u8],
}

fn signed_bytes_v1(
    mailbox: &MailboxId,
    epoch: Epoch,
    sender: &DeviceId,
    seq: u64,
    hlc: u64,
    kind: RecordKind,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIGNATURE_DOMAIN_V1.len() + 100 + payload.len());
    out.extend_from_slice(SIGNATURE_DOMAIN_V1);
    out.extend_from_slice(mailbox.as_bytes());
    out.extend_from_slice(&epoch.0.to_be_bytes());
    out.extend_from_slice(sender.as_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&hlc.to_be_bytes());
    out.extend_from_slice(&kind.0.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A record's leaf hash: everything the sender vouches for.
fn leaf(mailbox: &MailboxId, epoch: Epoch, sender: &DeviceId, record: &RecordIn<'_>) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&[LEAF_PREFIX]);
    h.update(LEAF_DOMAIN);
    h.update(mailbox.as_bytes());
    h.update(&epoch.0.to_be_bytes());
    h.update(sender.as_bytes());
    h.update(&record.seq.to_be_bytes());
    h.update(&record.hlc.to_be_bytes());
    h.update(&record.kind.0.to_be_bytes());
    h.update(&(record.payload.len() as u64).to_be_bytes());
    h.update(record.payload);
    *h.finalize().as_bytes()
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&[NODE_PREFIX]);
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// The Merkle root over `leaves` and each leaf's path of sibling hashes (concatenated).
fn merkle(leaves: &[[u8; 32]]) -> ([u8; 32], Vec<Vec<u8>>) {
    let mut paths = vec![Vec::new(); leaves.len()];
    // Which of the current level's nodes each leaf is under.
    let mut place: Vec<usize> = (0..leaves.len()).collect();
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        for (path, at) in paths.iter_mut().zip(place.iter_mut()) {
            let sibling = *at ^ 1;
            if sibling < level.len() {
                path.extend_from_slice(&level[sibling]);
            }
            *at /= 2;
        }
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [left, right] => node(left, right),
                [odd] => *odd,
                _ => unreachable!("chunks(2) yields one or two"),
            })
            .collect();
    }
    (level.first().copied().unwrap_or([0; 32]), paths)
}

/// The root a leaf's proof leads to, or `None` if the proof does not fit `count` and `index`.
fn root_of(leaf: [u8; 32], proof: &BatchProof) -> Option<[u8; 32]> {
    let (count, mut at) = (proof.count as usize, proof.index as usize);
    if count == 0
        || count > BATCH_RECORDS_MAX
        || at >= count
        || !proof.path.len().is_multiple_of(32)
    {
        return None;
    }
    let mut siblings = proof.path.chunks_exact(32);
    let (mut current, mut width) = (leaf, count);
    while width > 1 {
        if at ^ 1 < width {
            let sibling: &[u8; 32] = siblings.next()?.try_into().ok()?;
            current = if at.is_multiple_of(2) {
                node(&current, sibling)
            } else {
                node(sibling, &current)
            };
        }
        at /= 2;
        width = width.div_ceil(2);
    }
    siblings.next().is_none().then_some(current)
}

/// What a batch signature signs.
fn batch_message(
    mailbox: &MailboxId,
    epoch: Epoch,
    sender: &DeviceId,
    count: u32,
    root: &[u8; 32],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(BATCH_DOMAIN.len() + 32 + 4 + 32 + 4 + 32);
    out.extend_from_slice(BATCH_DOMAIN);
    out.extend_from_slice(mailbox.as_bytes());
    out.extend_from_slice(&epoch.0.to_be_bytes());
    out.extend_from_slice(sender.as_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(root);
    out
}

fn aad(format: u8, mailbox: &MailboxId, epoch: Epoch) -> [u8; 7 + 1 + 32 + 4] {
    let mut aad = [0u8; 7 + 1 + 32 + 4];
    aad[..7].copy_from_slice(AAD_DOMAIN);
    aad[7] = format;
    aad[8..40].copy_from_slice(mailbox.as_bytes());
    aad[40..].copy_from_slice(&epoch.0.to_be_bytes());
    aad
}

/// The padded size for `needed` bytes: the next power of two, at least [`PAD_BUCKET_MIN`],
/// at most [`PADDED_BYTES_MAX`].
pub fn pad_bucket(needed: usize) -> usize {
    needed
        .max(PAD_BUCKET_MIN)
        .checked_next_power_of_two()
        .unwrap_or(PADDED_BYTES_MAX)
        .min(PADDED_BYTES_MAX)
}

/// The epoch an envelope claims, to pick keys before [`open`]. `None` if it is no envelope.
pub fn envelope_epoch(envelope: &[u8]) -> Option<Epoch> {
    if envelope.len() < HEADER_BYTES + TAG_BYTES || !matches!(envelope[0], FORMAT_V1 | FORMAT_V2) {
        return None;
    }
    let epoch: [u8; 4] = envelope[1..5].try_into().ok()?;
    Some(Epoch(u32::from_be_bytes(epoch)))
}

/// Seal one record (a batch of one). `nonce` must never repeat under one content key: draw
/// it from the system generator (24 random bytes make a collision negligible).
#[allow(clippy::too_many_arguments)]
pub fn seal(
    keys: &EpochKeys,
    device: &DeviceKey,
    seq: u64,
    hlc: u64,
    kind: RecordKind,
    payload: &[u8],
    nonce: [u8; NONCE_BYTES],
) -> Result<Sealed, SealError> {
    let record = RecordIn {
        seq,
        hlc,
        kind,
        payload,
    };
    seal_batch(keys, device, &[record], &mut || nonce)
        .pop()
        .expect("one result per record")
}

/// Seal records as one signed batch (or several, past [`BATCH_RECORDS_MAX`]): one Ed25519
/// signature per batch, one result per record in order. A record too large for an envelope
/// is refused alone; the others are sealed. `nonce` is called once per record.
pub fn seal_batch(
    keys: &EpochKeys,
    device: &DeviceKey,
    records: &[RecordIn<'_>],
    nonce: &mut dyn FnMut() -> [u8; NONCE_BYTES],
) -> Vec<Result<Sealed, SealError>> {
    let mailbox = keys.mailbox_id();
    let epoch = keys.epoch();
    let sender = device.device_id();
    let too_large = |record: &RecordIn<'_>| SealError::TooLarge {
        bytes: record.payload.len(),
        limit: PAYLOAD_BYTES_MAX,
    };
    let mut results: Vec<Option<Result<Sealed, SealError>>> = records
        .iter()
        .map(|r| (r.payload.len() > PAYLOAD_BYTES_MAX).then(|| Err(too_large(r))))
        .collect();
    let fits: Vec<usize> = (0..records.len())
        .filter(|i| results[*i].is_none())
        .collect();
    for batch in fits.chunks(BATCH_RECORDS_MAX) {
        let leaves: Vec<[u8; 32]> = batch
            .iter()
            .map(|i| leaf(&mailbox, epoch, &sender, &records[*i]))
            .collect();
        let (root, paths) = merkle(&leaves);
        let count = batch.len() as u32;
        let signature = Signature64(
            device
                .signing
                .sign(&batch_message(&mailbox, epoch, &sender, count, &root))
                .to_bytes(),
        );
        for ((index, i), path) in batch.iter().enumerate().zip(paths) {
            let r = &records[*i];
            let wire = RecordWireV2 {
                sender,
                seq: r.seq,
                hlc: r.hlc,
                kind: r.kind,
                payload: r.payload.to_vec(),
                batch: BatchProof {
                    count,
                    index: index as u32,
                    path,
                    signature,
                },
            };
            results[*i] = Some(
                pad(&wire)
                    .map(|padded| {
                        let envelope = seal_raw(
                            FORMAT_V2,
                            keys.content_key(),
                            &mailbox,
                            epoch,
                            &padded,
                            nonce(),
                        );
                        Sealed {
                            blob_id: BlobId::of_ciphertext(&envelope),
                            envelope,
                        }
                    })
                    .ok_or_else(|| too_large(r)),
            );
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every record is sealed or refused"))
        .collect()
}

/// `record_len_be(4) ‖ CBOR(record) ‖ zeros` to its bucket; `None` if it does not fit one.
fn pad<T: Serialize>(record: &T) -> Option<Zeroizing<Vec<u8>>> {
    let mut padded = Zeroizing::new(vec![0u8; 4]);
    ciborium::into_writer(record, &mut *padded).expect("writing CBOR to a Vec cannot fail");
    let record_len = padded.len() - 4;
    let bucket = pad_bucket(padded.len());
    if padded.len() > bucket {
        return None;
    }
    padded[..4].copy_from_slice(&(record_len as u32).to_be_bytes());
    padded.resize(bucket, 0);
    Some(padded)
}

fn seal_raw(
    format: u8,
    content_key: &[u8; 32],
    mailbox: &MailboxId,
    epoch: Epoch,
    padded: &[u8],
    nonce: [u8; NONCE_BYTES],
) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(&(*content_key).into());
    let aad = aad(format, mailbox, epoch);
    let sealed = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: padded,
                aad: &aad,
            },
        )
        .expect("XChaCha20-Poly1305 encrypts any length below 256 GiB");
    let mut envelope = Vec::with_capacity(HEADER_BYTES + sealed.len());
    envelope.push(format);
    envelope.extend_from_slice(&epoch.0.to_be_bytes());
    envelope.extend_from_slice(&nonce);
    envelope.extend_from_slice(&sealed);
    envelope
}

/// Open an envelope that arrived as `blob_id`, with the keys of its epoch.
pub fn open(
    keys: &EpochKeys,
    blob_id: &BlobId,
    envelope: &[u8],
) -> Result<OpenedRecord, OpenError> {
    open_checked(keys, blob_id, envelope, None, &OpenCache::default())
}

/// [`open`] for the device `own`: a record whose sender is `own` is [`OpenError::Own`],
/// without checking its signature (the reader drops its own records either way). Senders'
/// public keys and the batch roots already verified are taken from (and kept in) `cache`.
pub fn open_unless_own(
    keys: &EpochKeys,
    blob_id: &BlobId,
    envelope: &[u8],
    own: &DeviceId,
    cache: &OpenCache,
) -> Result<OpenedRecord, OpenError> {
    open_checked(keys, blob_id, envelope, Some(own), cache)
}

/// What the threads that open records share: senders' public keys, decompressed once (a
/// group has few writers, and decompressing a key costs about a third of a `verify_strict`),
/// and the batch signatures already verified (the other records of a batch then cost a few
/// hashes). Bounded: past [`SENDER_KEYS_MAX`] keys or [`VERIFIED_BATCHES_MAX`] batches a
/// part starts over.
#[derive(Debug, Default)]
pub struct OpenCache {
    keys: RwLock<HashMap<DeviceId, VerifyingKey>>,
    /// BLAKE3 of each batch message whose signature verified.
    batches: Mutex<HashSet<[u8; 32]>>,
}

/// Sender keys one [`OpenCache`] holds at most (~100 KiB).
pub const SENDER_KEYS_MAX: usize = 1024;
/// Verified batches one [`OpenCache`] remembers at most (~300 KiB): a catch-up page spans a
/// few batches, so only recent ones matter.
pub const VERIFIED_BATCHES_MAX: usize = 4096;

impl OpenCache {
    /// The key of `sender`, or why it is not one.
    fn key(&self, sender: &DeviceId) -> Result<VerifyingKey, OpenError> {
        let cached = self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(sender)
            .copied();
        if let Some(key) = cached {
            return Ok(key);
        }
        let key =
            VerifyingKey::from_bytes(sender.as_bytes()).map_err(|_| OpenError::BadSignature)?;
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        if keys.len() >= SENDER_KEYS_MAX {
            keys.clear();
        }
        keys.insert(*sender, key);
        Ok(key)
    }

    /// Check that `sender` signed `message`, once per message.
    fn verify_batch(
        &self,
        sender: &DeviceId,
        message: &[u8],
        signature: &Signature64,
    ) -> Result<(), OpenError> {
        let digest = *blake3::hash(message).as_bytes();
        let batches = || self.batches.lock().unwrap_or_else(PoisonError::into_inner);
        if batches().contains(&digest) {
            return Ok(());
        }
        self.key(sender)?
            .verify_strict(message, &Signature::from_bytes(&signature.0))
            .map_err(|_| OpenError::BadSignature)?;
        let mut batches = batches();
        if batches.len() >= VERIFIED_BATCHES_MAX {
            batches.clear();
        }
        batches.insert(digest);
        Ok(())
    }
}

fn open_checked(
    keys: &EpochKeys,
    blob_id: &BlobId,
    envelope: &[u8],
    own: Option<&DeviceId>,
    cache: &OpenCache,
) -> Result<OpenedRecord, OpenError> {
    if BlobId::of_ciphertext(envelope) != *blob_id {
        return Err(OpenError::BlobIdMismatch);
    }
    let epoch = envelope_epoch(envelope).ok_or(OpenError::Malformed)?;
    if epoch != keys.epoch() {
        return Err(OpenError::WrongEpoch(epoch));
    }
    let mailbox = keys.mailbox_id();
    let padded = open_raw(keys.content_key(), &mailbox, epoch, envelope)?;
    let record_len =
        u32::from_be_bytes(padded[..4].try_into().map_err(|_| OpenError::BadRecord)?) as usize;
    let record_bytes = padded
        .get(4..4usize.saturating_add(record_len))
        .ok_or(OpenError::BadRecord)?;
    if envelope[0] == FORMAT_V1 {
        return open_v1(&mailbox, epoch, record_bytes, own, cache);
    }
    let record: RecordWireV2 =
        ciborium::from_reader(record_bytes).map_err(|_| OpenError::BadRecord)?;
    if own == Some(&record.sender) {
        return Err(OpenError::Own);
    }
    let leaf = leaf(
        &mailbox,
        epoch,
        &record.sender,
        &RecordIn {
            seq: record.seq,
            hlc: record.hlc,
            kind: record.kind,
            payload: &record.payload,
        },
    );
    let root = root_of(leaf, &record.batch).ok_or(OpenError::BadSignature)?;
    let message = batch_message(&mailbox, epoch, &record.sender, record.batch.count, &root);
    cache.verify_batch(&record.sender, &message, &record.batch.signature)?;
    Ok(OpenedRecord {
        sender: record.sender,
        seq: record.seq,
        hlc: record.hlc,
        kind: record.kind,
        payload: record.payload,
    })
}

/// The inside of a format-1 envelope: one signature per record.
fn open_v1(
    mailbox: &MailboxId,
    epoch: Epoch,
    record_bytes: &[u8],
    own: Option<&DeviceId>,
    cache: &OpenCache,
) -> Result<OpenedRecord, OpenError> {
    let record: RecordWire =
        ciborium::from_reader(record_bytes).map_err(|_| OpenError::BadRecord)?;
    if own == Some(&record.sender) {
        return Err(OpenError::Own);
    }
    let signed = signed_bytes_v1(
        mailbox,
        epoch,
        &record.sender,
        record.seq,
        record.hlc,
        record.kind,
        &record.payload,
    );
    cache
        .key(&record.sender)?
        .verify_strict(&signed, &Signature::from_bytes(&record.signature.0))
        .map_err(|_| OpenError::BadSignature)?;
    Ok(OpenedRecord {
        sender: record.sender,
        seq: record.seq,
        hlc: record.hlc,
        kind: record.kind,
        payload: record.payload,
    })
}

fn open_raw(
    content_key: &[u8; 32],
    mailbox: &MailboxId,
    epoch: Epoch,
    envelope: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    if envelope.len() < HEADER_BYTES + TAG_BYTES + 4
        || !matches!(envelope[0], FORMAT_V1 | FORMAT_V2)
    {
        return Err(OpenError::Malformed);
    }
    let nonce: [u8; NONCE_BYTES] = envelope[5..HEADER_BYTES]
        .try_into()
        .map_err(|_| OpenError::Malformed)?;
    let cipher = XChaCha20Poly1305::new(&(*content_key).into());
    let aad = aad(envelope[0], mailbox, epoch);
    cipher
        .decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: &envelope[HEADER_BYTES..],
                aad: &aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| OpenError::Undecryptable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::GroupSecret;
    use proptest::prelude::*;

    fn fixture() -> (EpochKeys, DeviceKey) {
        (
            GroupSecret::from_bytes([0x11; 32]).epoch_keys(Epoch(0)),
            DeviceKey::from_secret_bytes(&[0x22; 32]),
        )
    }

    fn seal_app(keys: &EpochKeys, device: &DeviceKey, payload: &[u8]) -> Sealed {
        seal(keys, device, 1, 99, RecordKind::APP, payload, [5; 24]).unwrap()
    }

    #[test]
    fn seal_then_open_returns_the_record() {
        let (keys, device) = fixture();
        let sealed = seal(&keys, &device, 7, 1234, RecordKind::APP, b"hello", [1; 24]).unwrap();
        let opened = open(&keys, &sealed.blob_id, &sealed.envelope).unwrap();
        assert_eq!(opened.sender, device.device_id());
        assert_eq!(
            (opened.seq, opened.hlc, opened.kind),
            (7, 1234, RecordKind::APP)
        );
        assert_eq!(opened.payload, b"hello");
        assert_eq!(BlobId::of_ciphertext(&sealed.envelope), sealed.blob_id);
        assert_eq!(envelope_epoch(&sealed.envelope), Some(Epoch(0)));
    }

    #[test]
    fn own_records_are_recognised_before_their_signature_is_checked() {
        let (keys, device) = fixture();
        let sealed = seal_app(&keys, &device, b"mine");
        let own = device.device_id();
        assert_eq!(
            open_unless_own(
                &keys,
                &sealed.blob_id,
                &sealed.envelope,
                &own,
                &OpenCache::default()
            ),
            Err(OpenError::Own)
        );
        // Another reader opens and checks it as always.
        let other = DeviceId([9; 32]);
        let opened = open_unless_own(
            &keys,
            &sealed.blob_id,
            &sealed.envelope,
            &other,
            &OpenCache::default(),
        )
        .unwrap();
        assert_eq!(opened.payload, b"mine");
        // A record claiming a sender it was not signed by still fails for everyone else.
        let mallory = DeviceKey::from_secret_bytes(&[0x33; 32]);
        let mut forged = forge_sender(&keys, &mallory, device.device_id());
        assert_eq!(
            open_unless_own(
                &keys,
                &forged.blob_id,
                &forged.envelope,
                &other,
                &OpenCache::default()
            ),
            Err(OpenError::BadSignature)
        );
        // ... and is dropped unchecked by the device it names.
        forged.blob_id = BlobId::of_ciphertext(&forged.envelope);
        assert_eq!(
            open_unless_own(
                &keys,
                &forged.blob_id,
                &forged.envelope,
                &own,
                &OpenCache::default()
            ),
            Err(OpenError::Own)
        );
    }

    #[test]
    fn sender_keys_are_kept_and_bounded() {
        let senders = OpenCache::default();
        for n in 0..=SENDER_KEYS_MAX as u32 {
            let mut secret = [0u8; 32];
            secret[..4].copy_from_slice(&n.to_be_bytes());
            let id = DeviceKey::from_secret_bytes(&secret).device_id();
            assert_eq!(senders.key(&id).map(|k| k.to_bytes()), Ok(*id.as_bytes()));
        }
        let held = senders.keys.read().map(|k| k.len()).unwrap_or(0);
        assert!((1..=SENDER_KEYS_MAX).contains(&held), "{held}");
    }

    /// A record sealed and signed by `signer` that names `sender` as its writer.
    fn forge_sender(keys: &EpochKeys, signer: &DeviceKey, sender: DeviceId) -> Sealed {
        let record = RecordIn {
            seq: 1,
            hlc: 99,
            kind: RecordKind::APP,
            payload: b"forged",
        };
        let leaf = leaf(&keys.mailbox_id(), keys.epoch(), &sender, &record);
        let message = batch_message(&keys.mailbox_id(), keys.epoch(), &sender, 1, &leaf);
        let wire = RecordWireV2 {
            sender,
            seq: 1,
            hlc: 99,
            kind: RecordKind::APP,
            payload: b"forged".to_vec(),
            batch: BatchProof {
                count: 1,
                index: 0,
                path: Vec::new(),
                signature: Signature64(signer.signing.sign(&message).to_bytes()),
            },
        };
        seal_wire(keys, FORMAT_V2, &wire)
    }

    /// `wire` padded and sealed as an envelope of `format`, however it was made.
    fn seal_wire<T: Serialize>(keys: &EpochKeys, format: u8, wire: &T) -> Sealed {
        let padded = pad(wire).unwrap();
        let envelope = seal_raw(
            format,
            keys.content_key(),
            &keys.mailbox_id(),
            keys.epoch(),
            &padded,
            [6; 24],
        );
        Sealed {
            blob_id: BlobId::of_ciphertext(&envelope),
            envelope,
        }
    }

    /// A format-1 envelope, as devices sealed them before batches were signed.
    fn seal_v1(keys: &EpochKeys, signer: &DeviceKey, sender: DeviceId, payload: &[u8]) -> Sealed {
        let signed = signed_bytes_v1(
            &keys.mailbox_id(),
            keys.epoch(),
            &sender,
            1,
            1,
            RecordKind::APP,
            payload,
        );
        let wire = RecordWire {
            sender,
            seq: 1,
            hlc: 1,
            kind: RecordKind::APP,
            payload: payload.to_vec(),
            signature: Signature64(signer.signing.sign(&signed).to_bytes()),
        };
        seal_wire(keys, FORMAT_V1, &wire)
    }

    #[test]
    fn ciphertext_does_not_contain_the_plaintext() {
        let (keys, device) = fixture();
        let marker = b"PLAINTEXT-MARKER-0123456789";
        let sealed = seal_app(&keys, &device, marker);
        assert!(!sealed.envelope.windows(marker.len()).any(|w| w == marker));
    }

    #[test]
    fn every_flipped_byte_fails_to_open() {
        let (keys, device) = fixture();
        let sealed = seal_app(&keys, &device, b"payload");
        for at in 0..sealed.envelope.len() {
            let mut tampered = sealed.envelope.clone();
            tampered[at] ^= 0x01;
            // With the original id: the hash check catches it.
            assert_eq!(
                open(&keys, &sealed.blob_id, &tampered),
                Err(OpenError::BlobIdMismatch)
            );
            // With a recomputed id (a relay forging consistently): the AEAD catches it.
            let forged_id = BlobId::of_ciphertext(&tampered);
            assert!(
                open(&keys, &forged_id, &tampered).is_err(),
                "byte {at} accepted"
            );
        }
    }

    #[test]
    fn truncation_and_garbage_fail_cleanly() {
        let (keys, device) = fixture();
        let sealed = seal_app(&keys, &device, b"payload");
        for len in [
            0,
            1,
            5,
            HEADER_BYTES,
            HEADER_BYTES + TAG_BYTES,
            sealed.envelope.len() - 1,
        ] {
            let cut = &sealed.envelope[..len];
            assert!(open(&keys, &BlobId::of_ciphertext(cut), cut).is_err());
        }
    }

    #[test]
    fn wrong_blob_id_epoch_mailbox_or_key_fails() {
        let (keys, device) = fixture();
        let sealed = seal_app(&keys, &device, b"payload");
        assert_eq!(
            open(&keys, &BlobId([0; 32]), &sealed.envelope),
            Err(OpenError::BlobIdMismatch)
        );
        // Keys of another epoch of the same group.
        let epoch1 = GroupSecret::from_bytes([0x11; 32]).epoch_keys(Epoch(1));
        assert_eq!(
            open(&epoch1, &sealed.blob_id, &sealed.envelope),
            Err(OpenError::WrongEpoch(Epoch(0)))
        );
        // Relabel the epoch in the header (and fix the id): the AAD binding refuses it.
        let mut relabelled = sealed.envelope.clone();
        relabelled[1..5].copy_from_slice(&1u32.to_be_bytes());
        assert_eq!(
            open(&epoch1, &BlobId::of_ciphertext(&relabelled), &relabelled),
            Err(OpenError::Undecryptable)
        );
        // Same content key, another mailbox in the AAD: refused.
        assert_eq!(
            open_raw(
                keys.content_key(),
                &MailboxId([9; 32]),
                Epoch(0),
                &sealed.envelope
            )
            .map(|_| ()),
            Err(OpenError::Undecryptable)
        );
        // Same key, same mailbox, other epoch in the AAD: refused.
        assert_eq!(
            open_raw(
                keys.content_key(),
                &keys.mailbox_id(),
                Epoch(1),
                &sealed.envelope
            )
            .map(|_| ()),
            Err(OpenError::Undecryptable)
        );
        // Another group's keys.
        let other = GroupSecret::from_bytes([0x12; 32]).epoch_keys(Epoch(0));
        assert_eq!(
            open(&other, &sealed.blob_id, &sealed.envelope),
            Err(OpenError::Undecryptable)
        );
    }

    #[test]
    fn a_record_signed_by_another_device_fails() {
        // A group member (who knows the content key) claims to be another device: it can
        // encrypt, but it cannot sign as that device, in either format.
        let (keys, honest) = fixture();
        let impostor = DeviceKey::from_secret_bytes(&[0x33; 32]);
        for forged in [
            forge_sender(&keys, &impostor, honest.device_id()),
            seal_v1(&keys, &impostor, honest.device_id(), b"forged"),
        ] {
            assert_eq!(
                open(&keys, &forged.blob_id, &forged.envelope),
                Err(OpenError::BadSignature)
            );
        }
    }

    #[test]
    fn format_1_envelopes_still_open() {
        let (keys, device) = fixture();
        let sealed = seal_v1(&keys, &device, device.device_id(), b"old record");
        assert_eq!(sealed.envelope[0], FORMAT_V1);
        let opened = open(&keys, &sealed.blob_id, &sealed.envelope).unwrap();
        assert_eq!(opened.payload, b"old record");
        assert_eq!(opened.sender, device.device_id());
        // Its format byte is bound too: relabelled as format 2 it does not open.
        let mut relabelled = sealed.envelope.clone();
        relabelled[0] = FORMAT_V2;
        assert_eq!(
            open(&keys, &BlobId::of_ciphertext(&relabelled), &relabelled),
            Err(OpenError::Undecryptable)
        );
    }

    fn records(n: usize) -> Vec<(u64, Vec<u8>)> {
        (0..n as u64)
            .map(|i| (i + 1, format!("record {i}").into_bytes()))
            .collect()
    }

    fn seal_many(keys: &EpochKeys, device: &DeviceKey, records: &[(u64, Vec<u8>)]) -> Vec<Sealed> {
        let inputs: Vec<RecordIn<'_>> = records
            .iter()
            .map(|(seq, payload)| RecordIn {
                seq: *seq,
                hlc: *seq * 10,
                kind: RecordKind::APP,
                payload,
            })
            .collect();
        let mut n = 0u8;
        seal_batch(keys, device, &inputs, &mut || {
            n = n.wrapping_add(1);
            [n; 24]
        })
        .into_iter()
        .map(Result::unwrap)
        .collect()
    }

    /// The proof inside a sealed record (the test knows the content key).
    fn proof_of(keys: &EpochKeys, sealed: &Sealed) -> RecordWireV2 {
        let padded = open_raw(
            keys.content_key(),
            &keys.mailbox_id(),
            keys.epoch(),
            &sealed.envelope,
        )
        .unwrap();
        let len = u32::from_be_bytes(padded[..4].try_into().unwrap()) as usize;
        ciborium::from_reader(&padded[4..4 + len]).unwrap()
    }

    #[test]
    fn every_record_of_a_batch_opens_alone_and_a_batch_has_one_signature() {
        let (keys, device) = fixture();
        for n in [1, 2, 3, 5, 8, 33, BATCH_RECORDS_MAX, BATCH_RECORDS_MAX + 1] {
            let input = records(n);
            let sealed = seal_many(&keys, &device, &input);
            assert_eq!(sealed.len(), n);
            // Each opens with a fresh cache: nothing but its own bytes is needed.
            for (s, (seq, payload)) in sealed.iter().zip(&input) {
                let opened = open(&keys, &s.blob_id, &s.envelope).unwrap();
                assert_eq!((opened.seq, opened.hlc), (*seq, *seq * 10));
                assert_eq!(&opened.payload, payload);
            }
            let signatures: HashSet<[u8; 64]> = sealed
                .iter()
                .map(|s| proof_of(&keys, s).batch.signature.0)
                .collect();
            assert_eq!(signatures.len(), n.div_ceil(BATCH_RECORDS_MAX), "n = {n}");
            // Opened with one cache, a batch is verified once.
            let cache = OpenCache::default();
            for s in sealed.iter().rev() {
                open_unless_own(&keys, &s.blob_id, &s.envelope, &DeviceId([0; 32]), &cache)
                    .unwrap();
            }
            assert_eq!(cache.batches.lock().unwrap().len(), signatures.len());
        }
    }

    #[test]
    fn merkle_proofs_lead_to_the_root_and_nowhere_else() {
        for n in 1..=70usize {
            let leaves: Vec<[u8; 32]> = (0..n)
                .map(|i| *blake3::hash(&i.to_be_bytes()).as_bytes())
                .collect();
            let (root, paths) = merkle(&leaves);
            for (i, path) in paths.iter().enumerate() {
                let proof = |count: usize, index: usize, path: Vec<u8>| BatchProof {
                    count: count as u32,
                    index: index as u32,
                    path,
                    signature: Signature64([0; 64]),
                };
                assert_eq!(
                    root_of(leaves[i], &proof(n, i, path.clone())),
                    Some(root),
                    "n={n} i={i}"
                );
                // Another leaf, another place or a changed path: not the root. (Another count
                // may lead to the same root, a last odd node taken for a subtree: the count is
                // bound by the signed message, not by the root.)
                assert_ne!(
                    root_of(leaves[(i + 1) % n], &proof(n, i, path.clone())),
                    Some(root).filter(|_| n > 1)
                );
                if n > 1 {
                    assert_ne!(
                        root_of(leaves[i], &proof(n, (i + 1) % n, path.clone())),
                        Some(root)
                    );
                    let mut bent = path.clone();
                    bent[0] ^= 1;
                    assert_ne!(root_of(leaves[i], &proof(n, i, bent)), Some(root));
                }
                let mut longer = path.clone();
                longer.extend_from_slice(&[0; 32]);
                assert_eq!(root_of(leaves[i], &proof(n, i, longer)), None);
                assert_eq!(root_of(leaves[i], &proof(n, n, path.clone())), None);
                assert_eq!(root_of(leaves[i], &proof(0, 0, Vec::new())), None);
            }
        }
    }

    #[test]
    fn a_member_cannot_change_a_record_of_a_signed_batch() {
        // A group member re-encrypts a record of another device's batch, changed, with the
        // original proof and signature: refused, also once the batch is verified (cached).
        let (keys, device) = fixture();
        let sealed = seal_many(&keys, &device, &records(8));
        let cache = OpenCache::default();
        let reader = DeviceId([9; 32]);
        for s in &sealed {
            open_unless_own(&keys, &s.blob_id, &s.envelope, &reader, &cache).unwrap();
        }
        let original = proof_of(&keys, &sealed[3]);
        let tampered: [fn(&mut RecordWireV2); 6] = [
            |r| r.payload.push(b'!'),
            |r| r.seq += 1,
            |r| r.hlc += 1,
            |r| r.kind = RecordKind(9),
            |r| r.batch.index = 4,
            |r| r.sender = DeviceKey::from_secret_bytes(&[0x44; 32]).device_id(),
        ];
        for change in tampered {
            let mut wire = proof_of(&keys, &sealed[3]);
            change(&mut wire);
            let forged = seal_wire(&keys, FORMAT_V2, &wire);
            assert_eq!(
                open_unless_own(&keys, &forged.blob_id, &forged.envelope, &reader, &cache),
                Err(OpenError::BadSignature)
            );
        }
        // Unchanged but re-encrypted, it still opens (the same record, the same sender).
        let again = seal_wire(&keys, FORMAT_V2, &original);
        assert!(open_unless_own(&keys, &again.blob_id, &again.envelope, &reader, &cache).is_ok());
        // A made-up batch with a garbage signature is verified, not taken from the cache.
        let mut made_up = proof_of(&keys, &sealed[0]);
        made_up.batch = BatchProof {
            count: 1,
            index: 0,
            path: Vec::new(),
            signature: Signature64([7; 64]),
        };
        let made_up = seal_wire(&keys, FORMAT_V2, &made_up);
        assert_eq!(
            open_unless_own(&keys, &made_up.blob_id, &made_up.envelope, &reader, &cache),
            Err(OpenError::BadSignature)
        );
    }

    #[test]
    fn verified_batches_are_bounded() {
        let cache = OpenCache::default();
        let device = DeviceKey::from_secret_bytes(&[0x22; 32]);
        let sender = device.device_id();
        for n in 0..=VERIFIED_BATCHES_MAX as u32 {
            let message = n.to_be_bytes();
            let signature = Signature64(device.signing.sign(&message).to_bytes());
            cache.verify_batch(&sender, &message, &signature).unwrap();
        }
        let held = cache.batches.lock().unwrap().len();
        assert!((1..=VERIFIED_BATCHES_MAX).contains(&held), "{held}");
    }

    #[test]
    fn a_too_large_record_is_refused_alone() {
        let (keys, device) = fixture();
        let big = vec![0; PAYLOAD_BYTES_MAX + 1];
        let inputs = [
            RecordIn {
                seq: 1,
                hlc: 1,
                kind: RecordKind::APP,
                payload: b"a",
            },
            RecordIn {
                seq: 2,
                hlc: 2,
                kind: RecordKind::APP,
                payload: &big,
            },
            RecordIn {
                seq: 3,
                hlc: 3,
                kind: RecordKind::APP,
                payload: b"c",
            },
        ];
        let results = seal_batch(&keys, &device, &inputs, &mut || [1; 24]);
        assert!(matches!(results[1], Err(SealError::TooLarge { .. })));
        for (at, payload) in [(0, b"a"), (2, b"c")] {
            let sealed = results[at].as_ref().unwrap();
            assert_eq!(
                open(&keys, &sealed.blob_id, &sealed.envelope)
                    .unwrap()
                    .payload,
                payload
            );
        }
    }

    #[test]
    fn padding_hides_sizes_within_a_bucket() {
        let (keys, device) = fixture();
        let sizes: Vec<usize> = [0usize, 1, 10, 100]
            .iter()
            .map(|n| seal_app(&keys, &device, &vec![0xEE; *n]).envelope.len())
            .collect();
        assert!(sizes.iter().all(|s| *s == sizes[0]), "{sizes:?}");
        assert_eq!(sizes[0], HEADER_BYTES + PAD_BUCKET_MIN + TAG_BYTES);
        let a = seal_app(&keys, &device, &[1; 200]).envelope.len();
        let b = seal_app(&keys, &device, &[1; 300]).envelope.len();
        assert_eq!(a, b);
        assert_eq!(a, HEADER_BYTES + 512 + TAG_BYTES);
        let c = seal_app(&keys, &device, &[1; 600]).envelope.len();
        assert_eq!(c, HEADER_BYTES + 1024 + TAG_BYTES);
    }

    #[test]
    fn largest_payload_fits_a_blob_and_one_more_byte_is_refused() {
        let (keys, device) = fixture();
        let sealed = seal_app(&keys, &device, &vec![0; PAYLOAD_BYTES_MAX]);
        assert!(sealed.envelope.len() <= BLOB_BYTES_MAX);
        assert_eq!(
            open(&keys, &sealed.blob_id, &sealed.envelope)
                .unwrap()
                .payload
                .len(),
            PAYLOAD_BYTES_MAX
        );
        assert!(matches!(
            seal(
                &keys,
                &device,
                1,
                1,
                RecordKind::APP,
                &vec![0; PAYLOAD_BYTES_MAX + 1],
                [0; 24]
            ),
            Err(SealError::TooLarge { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn round_trip_any_payload(payload in prop::collection::vec(any::<u8>(), 0..5000), seq in any::<u64>(), hlc in any::<u64>(), kind in any::<u16>(), nonce in any::<[u8; 24]>()) {
            let (keys, device) = fixture();
            let sealed = seal(&keys, &device, seq, hlc, RecordKind(kind), &payload, nonce).unwrap();
            let opened = open(&keys, &sealed.blob_id, &sealed.envelope).unwrap();
            prop_assert_eq!(opened.payload, payload);
            prop_assert_eq!((opened.seq, opened.hlc, opened.kind), (seq, hlc, RecordKind(kind)));
            prop_assert!(sealed.envelope.len() - HEADER_BYTES - TAG_BYTES == pad_bucket(sealed.envelope.len() - HEADER_BYTES - TAG_BYTES));
        }

        #[test]
        fn random_envelopes_never_open_or_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
            let (keys, _) = fixture();
            prop_assert!(open(&keys, &BlobId::of_ciphertext(&bytes), &bytes).is_err());
        }
    }
}
