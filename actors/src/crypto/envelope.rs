//! Record envelopes: what a relay stores and can never read.
//!
//! ```text
//! envelope   = format(1) ‖ epoch_be(4) ‖ nonce(24) ‖ XChaCha20-Poly1305(content key, padded, aad)
//! aad        = "zerok/1" ‖ format ‖ mailbox(32) ‖ epoch_be(4)
//! padded     = record_len_be(4) ‖ CBOR(record) ‖ zeros, to a power of two ≥ 256 bytes
//! record     = {sender, seq, hlc, kind, payload, signature}
//! signature  = Ed25519 by the sender's device key over
//!              "zerok record v1" ‖ mailbox ‖ epoch_be ‖ sender ‖ seq_be ‖ hlc_be ‖ kind_be ‖
//!              payload_len_be(8) ‖ payload
//! blob_id    = BLAKE3(envelope)
//! ```
//!
//! The epoch travels in clear so a receiver picks the right key; the AEAD binds it and the
//! mailbox, so an envelope moved to another mailbox or relabelled with another epoch fails to
//! open. `blob_id` cannot sit inside the AAD (it is the hash of the result), so [`open`]
//! recomputes it and refuses a mismatch: a relay cannot serve one envelope under another id.
//! The signature proves which device wrote the record, even to other group members. Padding
//! means a relay learns only the size bucket of a record.

use super::keys::EpochKeys;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;
pub use zerok_messages::client::{OpenError, OpenedRecord, RecordKind, Sealed};
use zerok_messages::wire::BLOB_BYTES_MAX;
use zerok_messages::{BlobId, DeviceId, Epoch, MailboxId, Signature64};

/// Envelope format byte of version 1.
const FORMAT_V1: u8 = 1;
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
/// Record bytes that are not payload: CBOR field names, ids, signature, length prefix. A
/// generous bound used to tell callers how large a payload may be.
const RECORD_OVERHEAD_BYTES: usize = 256;
/// Largest payload a record can carry.
pub const PAYLOAD_BYTES_MAX: usize = PADDED_BYTES_MAX - RECORD_OVERHEAD_BYTES;

const AAD_DOMAIN: &[u8] = b"zerok/1";
const SIGNATURE_DOMAIN: &[u8] = b"zerok record v1";

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
}

/// The record as it sits inside the AEAD.
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

/// Why a record could not be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The payload does not fit one record.
    #[error("payload of {bytes} bytes exceeds the record limit of {limit}")]
    TooLarge {
        /// Payload size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
}

fn signed_bytes(
    mailbox: &MailboxId,
    epoch: Epoch,
    sender: &DeviceId,
    seq: u64,
    hlc: u64,
    kind: RecordKind,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIGNATURE_DOMAIN.len() + 100 + payload.len());
    out.extend_from_slice(SIGNATURE_DOMAIN);
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

fn aad(mailbox: &MailboxId, epoch: Epoch) -> [u8; 7 + 1 + 32 + 4] {
    let mut aad = [0u8; 7 + 1 + 32 + 4];
    aad[..7].copy_from_slice(AAD_DOMAIN);
    aad[7] = FORMAT_V1;
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
    if envelope.len() < HEADER_BYTES + TAG_BYTES || envelope[0] != FORMAT_V1 {
        return None;
    }
    let epoch: [u8; 4] = envelope[1..5].try_into().ok()?;
    Some(Epoch(u32::from_be_bytes(epoch)))
}

/// Seal one record. `nonce` must never repeat under one content key: draw it from the
/// system generator (24 random bytes make a collision negligible).
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
    if payload.len() > PAYLOAD_BYTES_MAX {
        return Err(SealError::TooLarge {
            bytes: payload.len(),
            limit: PAYLOAD_BYTES_MAX,
        });
    }
    let mailbox = keys.mailbox_id();
    let epoch = keys.epoch();
    let sender = device.device_id();
    let signature: Signature = device.signing.sign(&signed_bytes(
        &mailbox, epoch, &sender, seq, hlc, kind, payload,
    ));
    let record = RecordWire {
        sender,
        seq,
        hlc,
        kind,
        payload: payload.to_vec(),
        signature: Signature64(signature.to_bytes()),
    };
    let mut padded = Zeroizing::new(vec![0u8; 4]);
    ciborium::into_writer(&record, &mut *padded).expect("writing CBOR to a Vec cannot fail");
    let record_len = padded.len() - 4;
    let bucket = pad_bucket(padded.len());
    if padded.len() > bucket {
        return Err(SealError::TooLarge {
            bytes: payload.len(),
            limit: PAYLOAD_BYTES_MAX,
        });
    }
    padded[..4].copy_from_slice(&(record_len as u32).to_be_bytes());
    padded.resize(bucket, 0);
    let envelope = seal_raw(keys.content_key(), &mailbox, epoch, &padded, nonce);
    Ok(Sealed {
        blob_id: BlobId::of_ciphertext(&envelope),
        envelope,
    })
}

fn seal_raw(
    content_key: &[u8; 32],
    mailbox: &MailboxId,
    epoch: Epoch,
    padded: &[u8],
    nonce: [u8; NONCE_BYTES],
) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(&(*content_key).into());
    let aad = aad(mailbox, epoch);
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
    envelope.push(FORMAT_V1);
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
    open_checked(keys, blob_id, envelope, None, None)
}

/// [`open`] for the device `own`: a record whose sender is `own` is [`OpenError::Own`],
/// without checking its signature (the reader drops its own records either way). Senders'
/// public keys are taken from (and kept in) `senders`.
pub fn open_unless_own(
    keys: &EpochKeys,
    blob_id: &BlobId,
    envelope: &[u8],
    own: &DeviceId,
    senders: &SenderKeys,
) -> Result<OpenedRecord, OpenError> {
    open_checked(keys, blob_id, envelope, Some(own), Some(senders))
}

/// Senders' public keys, decompressed once and shared by the threads that open records: a
/// group has few writers, and decompressing a key costs about a third of a `verify_strict`.
/// Bounded: past [`SENDER_KEYS_MAX`] keys the cache starts over.
#[derive(Debug, Default)]
pub struct SenderKeys {
    keys: std::sync::RwLock<std::collections::HashMap<DeviceId, VerifyingKey>>,
}

/// Sender keys one [`SenderKeys`] holds at most (~100 KiB).
pub const SENDER_KEYS_MAX: usize = 1024;

impl SenderKeys {
    /// The key of `sender`, or why it is not one.
    fn get(&self, sender: &DeviceId) -> Result<VerifyingKey, OpenError> {
        let cached = match self.keys.read() {
            Ok(keys) => keys.get(sender).copied(),
            Err(poisoned) => poisoned.into_inner().get(sender).copied(),
        };
        if let Some(key) = cached {
            return Ok(key);
        }
        let key =
            VerifyingKey::from_bytes(sender.as_bytes()).map_err(|_| OpenError::BadSignature)?;
        let mut keys = match self.keys.write() {
            Ok(keys) => keys,
            Err(poisoned) => poisoned.into_inner(),
        };
        if keys.len() >= SENDER_KEYS_MAX {
            keys.clear();
        }
        keys.insert(*sender, key);
        Ok(key)
    }
}

fn open_checked(
    keys: &EpochKeys,
    blob_id: &BlobId,
    envelope: &[u8],
    own: Option<&DeviceId>,
    senders: Option<&SenderKeys>,
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
    let record: RecordWire =
        ciborium::from_reader(record_bytes).map_err(|_| OpenError::BadRecord)?;
    if own == Some(&record.sender) {
        return Err(OpenError::Own);
    }
    let signed = signed_bytes(
        &mailbox,
        epoch,
        &record.sender,
        record.seq,
        record.hlc,
        record.kind,
        &record.payload,
    );
    let sender_key = match senders {
        Some(senders) => senders.get(&record.sender)?,
        None => VerifyingKey::from_bytes(record.sender.as_bytes())
            .map_err(|_| OpenError::BadSignature)?,
    };
    sender_key
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
    if envelope.len() < HEADER_BYTES + TAG_BYTES + 4 || envelope[0] != FORMAT_V1 {
        return Err(OpenError::Malformed);
    }
    let nonce: [u8; NONCE_BYTES] = envelope[5..HEADER_BYTES]
        .try_into()
        .map_err(|_| OpenError::Malformed)?;
    let cipher = XChaCha20Poly1305::new(&(*content_key).into());
    let aad = aad(mailbox, epoch);
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
                &SenderKeys::default()
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
            &SenderKeys::default(),
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
                &SenderKeys::default()
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
                &SenderKeys::default()
            ),
            Err(OpenError::Own)
        );
    }

    #[test]
    fn sender_keys_are_kept_and_bounded() {
        let senders = SenderKeys::default();
        for n in 0..=SENDER_KEYS_MAX as u32 {
            let mut secret = [0u8; 32];
            secret[..4].copy_from_slice(&n.to_be_bytes());
            let id = DeviceKey::from_secret_bytes(&secret).device_id();
            assert_eq!(senders.get(&id).map(|k| k.to_bytes()), Ok(*id.as_bytes()));
        }
        let held = senders.keys.read().map(|k| k.len()).unwrap_or(0);
        assert!((1..=SENDER_KEYS_MAX).contains(&held), "{held}");
    }

    /// A record sealed and signed by `signer` that names `sender` as its writer.
    fn forge_sender(keys: &EpochKeys, signer: &DeviceKey, sender: DeviceId) -> Sealed {
        let signed = signed_bytes(
            &keys.mailbox_id(),
            keys.epoch(),
            &sender,
            1,
            99,
            RecordKind::APP,
            b"forged",
        );
        let record = RecordWire {
            sender,
            seq: 1,
            hlc: 99,
            kind: RecordKind::APP,
            payload: b"forged".to_vec(),
            signature: Signature64(signer.signing.sign(&signed).to_bytes()),
        };
        let mut padded = vec![0u8; 4];
        ciborium::into_writer(&record, &mut padded).unwrap();
        let len = (padded.len() - 4) as u32;
        padded[..4].copy_from_slice(&len.to_be_bytes());
        padded.resize(pad_bucket(padded.len()), 0);
        let envelope = seal_raw(
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
        // encrypt, but it cannot sign as that device.
        let (keys, honest) = fixture();
        let impostor = DeviceKey::from_secret_bytes(&[0x33; 32]);
        let record = RecordWire {
            sender: honest.device_id(),
            seq: 1,
            hlc: 1,
            kind: RecordKind::APP,
            payload: b"forged".to_vec(),
            signature: Signature64(
                impostor
                    .signing
                    .sign(&signed_bytes(
                        &keys.mailbox_id(),
                        keys.epoch(),
                        &honest.device_id(),
                        1,
                        1,
                        RecordKind::APP,
                        b"forged",
                    ))
                    .to_bytes(),
            ),
        };
        let mut padded = vec![0u8; 4];
        ciborium::into_writer(&record, &mut padded).unwrap();
        let len = (padded.len() - 4) as u32;
        padded[..4].copy_from_slice(&len.to_be_bytes());
        padded.resize(pad_bucket(padded.len()), 0);
        let envelope = seal_raw(
            keys.content_key(),
            &keys.mailbox_id(),
            keys.epoch(),
            &padded,
            [7; 24],
        );
        assert_eq!(
            open(&keys, &BlobId::of_ciphertext(&envelope), &envelope),
            Err(OpenError::BadSignature)
        );
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
