//! Epoch secrets wrapped to one device (issue 14; docs/DESIGN.md §4 "Membership").
//!
//! A rekey gives every remaining member the new epoch's secret, and an admission gives a new
//! device the current one, each wrapped to the device's **wrap key**: HPKE (RFC 9180, the
//! `hpke` crate) in base mode with DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and
//! ChaCha20-Poly1305. Not a construction of ours: a standard one, from a maintained crate.
//!
//! - A device's wrap key is an X25519 key pair derived from its device secret (BLAKE3
//!   `derive_key`, then HPKE's own `DeriveKeyPair`): nothing new to store or back up, and
//!   a different key from the Ed25519 one that signs (no key used for two algorithms). Its
//!   public half is in the device's roster entry.
//! - What a wrap is for is bound into HPKE's `info` ([`WrapContext`]): the purpose, the
//!   group, the epoch the wrap is written in, the epoch it opens, its author and its
//!   recipient. A wrap moved to another group, epoch, author or device does not open.
//! - A wrap is `enc(32) ‖ ciphertext(32) ‖ tag(16)`: [`WRAPPED_BYTES`].
//!
//! The unwrapped secret is handed out in a [`Zeroizing`] buffer.

use super::roster::EpochId;
use crate::rng::Rng;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use std::convert::Infallible;
use zeroize::Zeroizing;
use zerok_messages::{DeviceId, Epoch, MailboxId};

/// Bytes of one wrapped secret: the encapsulated key, the sealed secret and its tag.
pub const WRAPPED_BYTES: usize = 32 + 32 + 16;
/// BLAKE3 key-derivation context of a device's wrap key (from its device secret).
const WRAP_KEY_CONTEXT: &str = "zerok device wrap key v1";
/// Leads every wrap's HPKE `info`.
const INFO_DOMAIN: &[u8] = b"zerok wrap v1";

/// Why a wrap was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WrapError {
    /// The recipient's public key is not an X25519 key.
    #[error("not a wrap key")]
    BadKey,
    /// Not [`WRAPPED_BYTES`] long.
    #[error("a wrapped secret is {WRAPPED_BYTES} bytes")]
    Malformed,
    /// It does not open with this key in this context (another recipient, group, epoch or
    /// author, or tampered).
    #[error("the wrapped secret does not open here")]
    Open,
}

/// A device's wrap key pair.
pub struct WrapKey {
    private: <X25519HkdfSha256 as Kem>::PrivateKey,
    public: [u8; 32],
}

impl std::fmt::Debug for WrapKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrapKey")
            .field("public", &hex_short(&self.public))
            .finish_non_exhaustive()
    }
}

fn hex_short(bytes: &[u8; 32]) -> String {
    bytes[..4].iter().map(|b| format!("{b:02x}")).collect()
}

impl WrapKey {
    /// The wrap key of the device whose secret (`device.key`) is `device_secret`.
    pub fn from_device_secret(device_secret: &[u8; 32]) -> WrapKey {
        let ikm = Zeroizing::new(blake3::derive_key(WRAP_KEY_CONTEXT, device_secret));
        let (private, public) = X25519HkdfSha256::derive_keypair(ikm.as_slice());
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&public.to_bytes());
        WrapKey {
            private,
            public: bytes,
        }
    }

    /// Its public half (in the device's roster entry).
    pub fn public(&self) -> [u8; 32] {
        self.public
    }
}

/// What a wrapped secret is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A rekey's new epoch secret, to a remaining member.
    Rekey,
    /// The current epoch secret, to a device being admitted.
    Admission,
    /// An epoch secret a member lacked (added while a rekey it did not see was made).
    Share,
}

/// Everything a wrap is bound to (HPKE's `info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrapContext {
    /// What it is for.
    pub purpose: Purpose,
    /// The group (its id).
    pub group: MailboxId,
    /// The epoch the wrap is written in (a rekey's parent).
    pub written_in: EpochId,
    /// The number of the epoch whose secret it carries.
    pub opens: Epoch,
    /// The device that wrapped it.
    pub author: DeviceId,
    /// The device it is for.
    pub recipient: DeviceId,
}

impl WrapContext {
    fn info(&self) -> Vec<u8> {
        let purpose: &[u8] = match self.purpose {
            Purpose::Rekey => b"rekey",
            Purpose::Admission => b"admission",
            Purpose::Share => b"share",
        };
        let mut info = Vec::with_capacity(INFO_DOMAIN.len() + 16 + 4 * 32 + 8);
        info.extend_from_slice(INFO_DOMAIN);
        info.push(purpose.len() as u8);
        info.extend_from_slice(purpose);
        info.extend_from_slice(self.group.as_bytes());
        info.extend_from_slice(&self.written_in.number.0.to_be_bytes());
        info.extend_from_slice(&self.written_in.origin);
        info.extend_from_slice(&self.opens.0.to_be_bytes());
        info.extend_from_slice(self.author.as_bytes());
        info.extend_from_slice(self.recipient.as_bytes());
        info
    }
}

/// Our [`Rng`] as the `rand_core` generator HPKE draws its ephemeral key from.
struct HpkeRng<'a>(&'a mut Rng);

impl rand::TryRng for HpkeRng<'_> {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut bytes = [0u8; 4];
        self.0.fill(&mut bytes);
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.0.next_u64())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.fill(dst);
        Ok(())
    }
}

/// `Rng` is the system's generator in production (a seeded one only in tests and simulation).
impl rand::TryCryptoRng for HpkeRng<'_> {}

/// Wrap `secret` to the device whose wrap key's public half is `to`, for `context`.
pub fn wrap(
    to: &[u8; 32],
    context: &WrapContext,
    secret: &[u8; 32],
    rng: &mut Rng,
) -> Result<Vec<u8>, WrapError> {
    let recipient =
        <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(to).map_err(|_| WrapError::BadKey)?;
    let (enc, sealed) =
        hpke::single_shot_seal_with_rng::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &OpModeS::Base,
            &recipient,
            &context.info(),
            secret,
            &[],
            &mut HpkeRng(rng),
        )
        .map_err(|_| WrapError::BadKey)?;
    let mut out = Vec::with_capacity(WRAPPED_BYTES);
    out.extend_from_slice(&enc.to_bytes());
    out.extend_from_slice(&sealed);
    debug_assert_eq!(out.len(), WRAPPED_BYTES);
    Ok(out)
}

/// Open a secret wrapped to `key` for `context`.
pub fn unwrap(
    key: &WrapKey,
    context: &WrapContext,
    wrapped: &[u8],
) -> Result<Zeroizing<[u8; 32]>, WrapError> {
    if wrapped.len() != WRAPPED_BYTES {
        return Err(WrapError::Malformed);
    }
    let (enc, sealed) = wrapped.split_at(32);
    let enc = <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(enc)
        .map_err(|_| WrapError::Malformed)?;
    let opened = Zeroizing::new(
        hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &key.private,
            &enc,
            &context.info(),
            sealed,
            &[],
        )
        .map_err(|_| WrapError::Open)?,
    );
    let mut secret = Zeroizing::new([0u8; 32]);
    if opened.len() != 32 {
        return Err(WrapError::Open);
    }
    secret.copy_from_slice(&opened);
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> WrapContext {
        WrapContext {
            purpose: Purpose::Rekey,
            group: MailboxId([7; 32]),
            written_in: EpochId::GENESIS,
            opens: Epoch(1),
            author: DeviceId([1; 32]),
            recipient: DeviceId([2; 32]),
        }
    }

    #[test]
    fn a_wrapped_secret_opens_for_its_recipient_in_its_context_only() {
        let mut rng = Rng::seeded(1);
        let recipient = WrapKey::from_device_secret(&[2; 32]);
        let other = WrapKey::from_device_secret(&[3; 32]);
        let secret = [0x5E; 32];
        let wrapped = wrap(&recipient.public(), &context(), &secret, &mut rng).expect("wrap");
        assert_eq!(wrapped.len(), WRAPPED_BYTES);
        assert!(
            !wrapped.windows(32).any(|w| w == secret),
            "the secret is not in the wrap"
        );
        assert_eq!(
            *unwrap(&recipient, &context(), &wrapped).expect("opens"),
            secret
        );
        // Another device's key does not open it.
        assert_eq!(unwrap(&other, &context(), &wrapped), Err(WrapError::Open));
        // Nor does any other context.
        let changes: [fn(&mut WrapContext); 6] = [
            |c| c.purpose = Purpose::Admission,
            |c| c.group = MailboxId([8; 32]),
            |c| c.written_in.origin = [1; 32],
            |c| c.opens = Epoch(2),
            |c| c.author = DeviceId([9; 32]),
            |c| c.recipient = DeviceId([3; 32]),
        ];
        for change in changes {
            let mut moved = context();
            change(&mut moved);
            assert_eq!(unwrap(&recipient, &moved, &wrapped), Err(WrapError::Open));
        }
        // A flipped bit anywhere, or a wrong length, is refused.
        for i in 0..wrapped.len() {
            let mut bad = wrapped.clone();
            bad[i] ^= 1;
            assert!(unwrap(&recipient, &context(), &bad).is_err(), "byte {i}");
        }
        assert_eq!(
            unwrap(&recipient, &context(), &wrapped[1..]),
            Err(WrapError::Malformed)
        );
    }

    #[test]
    fn a_wrap_key_is_a_function_of_the_device_secret_and_each_wrap_is_fresh() {
        let a = WrapKey::from_device_secret(&[2; 32]);
        let again = WrapKey::from_device_secret(&[2; 32]);
        let b = WrapKey::from_device_secret(&[3; 32]);
        assert_eq!(a.public(), again.public());
        assert_ne!(a.public(), b.public());
        let mut rng = Rng::seeded(2);
        let one = wrap(&a.public(), &context(), &[1; 32], &mut rng).expect("wrap");
        let two = wrap(&a.public(), &context(), &[1; 32], &mut rng).expect("wrap");
        assert_ne!(one, two, "a fresh ephemeral key per wrap");
        // The public key is not the device's Ed25519 key.
        let device = crate::crypto::envelope::DeviceKey::from_secret_bytes(&[2; 32]);
        assert_ne!(a.public(), device.device_id().0);
        assert!(!format!("{a:?}").contains(&format!("{:?}", [2u8; 32])));
    }
}
