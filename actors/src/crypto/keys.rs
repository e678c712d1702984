//! Group secrets and the keys derived from them per epoch.
//!
//! A group secret is 32 random bytes, or Argon2id of a passphrase with FIXED parameters
//! ([`KdfParams::V1`]: m = 64 MiB, t = 3, p = 4) and a 16-byte salt carried in the invite,
//! so every device derives the same secret whatever its memory. From the secret, each epoch's
//! keys come from BLAKE3 `derive_key` with distinct context strings: the relay only ever
//! learns the mailbox *public* key and the mailbox id.

use super::super::rng::Rng;
use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};
use zerok_messages::client::{EpochSecret, MailboxSeed};
pub use zerok_messages::errors::{PASSPHRASE_CHARS_MIN, PassphraseError};
use zerok_messages::{Epoch, MailboxId, MailboxKey, Signature64};

/// Context string of the content key (XChaCha20-Poly1305) of an epoch.
const CONTEXT_CONTENT_KEY: &str = "zerok 2026-11 v1 content key";
/// Context string of the mailbox signing key seed (Ed25519) of an epoch.
const CONTEXT_MAILBOX_SIGNING: &str = "zerok 2026-11 v1 mailbox signing key";

/// Length of a passphrase salt.
pub const SALT_BYTES: usize = 16;

/// A group's root secret. Zeroized on drop; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct GroupSecret([u8; 32]);

impl std::fmt::Debug for GroupSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupSecret([redacted])")
    }
}

/// Argon2id parameters. Carried in invites so a joiner derives with the creator's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// The one parameter set of version 1: 64 MiB, 3 passes, 4 lanes (DESIGN.md §4).
    pub const V1: KdfParams = KdfParams {
        m_kib: 64 * 1024,
        t: 3,
        p: 4,
    };
}

impl GroupSecret {
    /// A fresh random secret.
    pub fn random(rng: &mut Rng) -> Self {
        GroupSecret(rng.bytes())
    }

    /// Wrap raw secret bytes (from an invite or the local store).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        GroupSecret(bytes)
    }

    /// The raw bytes, for storing in the device's own store or an invite. Handle with care.
    pub fn expose_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Argon2id of a passphrase. Slow by design (hundreds of milliseconds, 64 MiB): call it
    /// from `spawn_blocking`. Leading and trailing whitespace is ignored so a pasted
    /// passphrase derives the same key.
    pub fn from_passphrase(
        passphrase: &str,
        salt: &[u8; SALT_BYTES],
        params: KdfParams,
    ) -> Result<Self, PassphraseError> {
        let passphrase = passphrase.trim();
        if passphrase.chars().count() < PASSPHRASE_CHARS_MIN {
            return Err(PassphraseError::TooShort);
        }
        if params != KdfParams::V1 {
            return Err(PassphraseError::UnsupportedParams);
        }
        let argon_params = argon2::Params::new(params.m_kib, params.t, params.p, Some(32))
            .map_err(|err| PassphraseError::Kdf(err.to_string()))?;
        let argon = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon_params,
        );
        let mut out = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase.as_bytes(), salt, out.as_mut())
            .map_err(|err| PassphraseError::Kdf(err.to_string()))?;
        Ok(GroupSecret(*out))
    }

    /// The keys of `epoch`. For epoch 0 the epoch secret is the group secret; later epochs
    /// get their own secrets (wrapped to each remaining device) and call this on them.
    pub fn epoch_keys(&self, epoch: Epoch) -> EpochKeys {
        EpochKeys::derive(&self.0, epoch)
    }
}

/// Keys of one epoch of a group. Zeroized on drop.
pub struct EpochKeys {
    epoch: Epoch,
    content_key: Zeroizing<[u8; 32]>,
    mailbox: MailboxSigner,
}

/// An epoch's mailbox signing key alone: proves membership to relays (`Join`) and opens
/// nothing. What a RelayConnection holds, made from the [`MailboxSeed`] it is handed.
pub struct MailboxSigner {
    signing: SigningKey,
    mailbox_key: MailboxKey,
    mailbox_id: MailboxId,
}

impl std::fmt::Debug for MailboxSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxSigner")
            .field("mailbox_id", &self.mailbox_id)
            .finish_non_exhaustive()
    }
}

impl MailboxSigner {
    /// The signer of a seed.
    pub fn from_seed(seed: &MailboxSeed) -> Self {
        let signing = SigningKey::from_bytes(&seed.0);
        let mailbox_key = MailboxKey(signing.verifying_key().to_bytes());
        MailboxSigner {
            signing,
            mailbox_key,
            mailbox_id: mailbox_key.mailbox_id(),
        }
    }

    /// The seed, to hand to a RelayConnection.
    pub fn seed(&self) -> MailboxSeed {
        MailboxSeed(Zeroizing::new(self.signing.to_bytes()))
    }

    /// The mailbox public key (shown to relays in `Join`).
    pub fn mailbox_key(&self) -> MailboxKey {
        self.mailbox_key
    }

    /// The mailbox id (`BLAKE3(mailbox_key)`).
    pub fn mailbox_id(&self) -> MailboxId {
        self.mailbox_id
    }

    /// Sign with the mailbox signing key. Crate-internal: only join proofs use it.
    pub(crate) fn sign(&self, message: &[u8]) -> Signature64 {
        Signature64(self.signing.sign(message).to_bytes())
    }
}

impl AsRef<MailboxSigner> for MailboxSigner {
    fn as_ref(&self) -> &MailboxSigner {
        self
    }
}

impl AsRef<MailboxSigner> for EpochKeys {
    fn as_ref(&self) -> &MailboxSigner {
        &self.mailbox
    }
}

impl std::fmt::Debug for EpochKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochKeys")
            .field("epoch", &self.epoch)
            .field("mailbox_id", &self.mailbox.mailbox_id)
            .finish_non_exhaustive()
    }
}

impl EpochKeys {
    /// The keys of an epoch secret handed over as plain bytes.
    pub fn from_secret(secret: &EpochSecret) -> Self {
        Self::derive(&secret.secret, secret.epoch)
    }

    fn derive(epoch_secret: &[u8; 32], epoch: Epoch) -> Self {
        let mut material = Zeroizing::new([0u8; 36]);
        material[..32].copy_from_slice(epoch_secret);
        material[32..].copy_from_slice(&epoch.0.to_be_bytes());
        let content_key = Zeroizing::new(blake3::derive_key(CONTEXT_CONTENT_KEY, &material[..]));
        let seed = Zeroizing::new(blake3::derive_key(CONTEXT_MAILBOX_SIGNING, &material[..]));
        EpochKeys {
            epoch,
            content_key,
            mailbox: MailboxSigner::from_seed(&MailboxSeed(seed)),
        }
    }

    /// The epoch these keys belong to.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The mailbox public key (shown to relays in `Join`).
    pub fn mailbox_key(&self) -> MailboxKey {
        self.mailbox.mailbox_key
    }

    /// The mailbox id (`BLAKE3(mailbox_key)`).
    pub fn mailbox_id(&self) -> MailboxId {
        self.mailbox.mailbox_id
    }

    /// The epoch's mailbox signer (join proofs), without the content key.
    pub fn mailbox_signer(&self) -> &MailboxSigner {
        &self.mailbox
    }

    /// The content key. Crate-internal: only the envelope code touches it.
    pub(crate) fn content_key(&self) -> &[u8; 32] {
        &self.content_key
    }

    /// A fingerprint of the content key for test vectors and cross-device checks: BLAKE3 of
    /// the key under its own context, so it reveals nothing about the key.
    pub fn content_key_fingerprint(&self) -> [u8; 32] {
        blake3::derive_key("zerok 2026-11 v1 key fingerprint", &self.content_key[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        data_encoding::HEXLOWER.encode(bytes)
    }

    #[test]
    fn derivation_test_vectors() {
        // Fixed inputs → fixed outputs on every run and platform. If these change, every
        // existing group loses access to its mailboxes: never update them casually.
        let secret = GroupSecret::from_bytes([0x42; 32]);
        let keys = secret.epoch_keys(Epoch(0));
        assert_eq!(hex(keys.mailbox_key().as_bytes()), VECTOR_MAILBOX_KEY_E0);
        assert_eq!(hex(keys.mailbox_id().as_bytes()), VECTOR_MAILBOX_ID_E0);
        assert_eq!(hex(keys.content_key()), VECTOR_CONTENT_KEY_E0);
        let keys1 = secret.epoch_keys(Epoch(1));
        assert_eq!(hex(keys1.content_key()), VECTOR_CONTENT_KEY_E1);
        assert_ne!(keys1.mailbox_id(), keys.mailbox_id());
    }

    // Computed independently of this code (Python: blake3 derive_key, PyNaCl Ed25519,
    // argon2-cffi Argon2id m=65536 t=3 p=4), so they check the construction, not just itself.
    const VECTOR_MAILBOX_KEY_E0: &str =
        "91046e588a270de621d1f1d2ccccf99716527c4e3111c2582ff1ab9949000593";
    const VECTOR_MAILBOX_ID_E0: &str =
        "660e97d98f50054f52f518064a4b715e479196747de6a93ea44154ad1271ddab";
    const VECTOR_CONTENT_KEY_E0: &str =
        "f4add6d1ba3088d14e55fdf23e20c812b066995d816edd82c85fd49e7db0a4f7";
    const VECTOR_CONTENT_KEY_E1: &str =
        "5dc17a8ee834ff6035cc5a9336132bbaa184a07ba0fd95f4acf088c9af6fbf3b";

    #[test]
    fn content_and_signing_keys_are_separated() {
        let keys = GroupSecret::from_bytes([1; 32]).epoch_keys(Epoch(0));
        assert_ne!(keys.content_key(), &*keys.mailbox.seed().0);
        assert_ne!(keys.content_key(), keys.mailbox_key().as_bytes());
    }

    #[test]
    fn passphrase_derivation_is_shared_by_devices_and_salted() {
        let salt = [7u8; SALT_BYTES];
        let a =
            GroupSecret::from_passphrase("correct horse battery", &salt, KdfParams::V1).unwrap();
        let b = GroupSecret::from_passphrase("  correct horse battery\n", &salt, KdfParams::V1)
            .unwrap();
        assert_eq!(a, b, "two devices with the same passphrase and salt agree");
        assert_eq!(
            a.epoch_keys(Epoch(0)).mailbox_id(),
            b.epoch_keys(Epoch(0)).mailbox_id()
        );
        assert_eq!(hex(a.expose_bytes()), VECTOR_PASSPHRASE_SECRET);
        let other_salt =
            GroupSecret::from_passphrase("correct horse battery", &[8; 16], KdfParams::V1).unwrap();
        assert_ne!(a, other_salt);
        let other_phrase =
            GroupSecret::from_passphrase("correct horse battery!", &salt, KdfParams::V1).unwrap();
        assert_ne!(a, other_phrase);
    }

    const VECTOR_PASSPHRASE_SECRET: &str =
        "59a2902397c914461c4790f9d1276c25c70a16a2800fce668f01fa592d4cb3ad";

    #[test]
    fn weak_passphrases_and_other_params_are_refused() {
        let salt = [0u8; SALT_BYTES];
        assert_eq!(
            GroupSecret::from_passphrase("  short  ", &salt, KdfParams::V1),
            Err(PassphraseError::TooShort)
        );
        let weak = KdfParams {
            m_kib: 19 * 1024,
            t: 2,
            p: 1,
        };
        assert_eq!(
            GroupSecret::from_passphrase("long enough phrase", &salt, weak),
            Err(PassphraseError::UnsupportedParams)
        );
    }

    #[test]
    fn debug_never_shows_secrets() {
        let secret = GroupSecret::from_bytes([0xAB; 32]);
        let keys = secret.epoch_keys(Epoch(0));
        let printed = format!("{secret:?} {keys:?}");
        assert!(!printed.contains("ab, ab") && !printed.contains("abab"));
        assert!(!printed.contains(&hex(keys.content_key())));
        assert!(printed.contains("redacted"));
    }
}
