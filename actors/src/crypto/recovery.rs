//! Recovery phrases (issue 14; docs/DESIGN.md §4 "Recovery").
//!
//! A phrase is 24 BIP39 words: a random 256-bit secret. It names an entry on the group's
//! roster that is not a device but is treated as one where it matters:
//!
//! - its Ed25519 key (derived from the secret) is the entry's id; it never writes records:
//!   it only **endorses** the self-add of a new device (`roster::Endorsement`), which is how
//!   `zerok init --recover` puts a new device, with its own new key and seqs, on the roster;
//! - its X25519 key is the entry's wrap key, so every rekey wraps the next epoch's secret to
//!   it like to any member, and removing the entry (`zerok devices remove`) revokes the
//!   phrase;
//! - a mailbox secret (derived from the secret, and carried in the entry so every member
//!   knows it) names a **snapshot mailbox** where members keep the group's current state
//!   for the phrase: an [`Admission`](super::admit::Admission) of the entry, its epoch secret
//!   wrapped to the entry's key. A new device with the phrase reads it there, with no other
//!   device online.

use super::admit::{
    AcceptError, Admission, AdmitError, Admitter, InviteKeys, Joined, Kind, accept, seal,
};
use super::envelope::DeviceKey;
use super::roster::{Endorsement, EpochId, Member, endorsement_message};
use super::wrap::{Purpose, WrapContext, WrapKey, wrap};
use crate::rng::Rng;
use zeroize::Zeroizing;
use zerok_messages::DeviceId;

/// Words of a phrase (256 bits of entropy and an 8-bit checksum).
pub const PHRASE_WORDS: usize = 24;
/// BLAKE3 context of the entry's Ed25519 (and X25519) key.
const CONTEXT_ENTRY: &str = "zerok recovery entry v1";
/// BLAKE3 context of the snapshot mailbox's secret.
const CONTEXT_MAILBOX: &str = "zerok recovery mailbox v1";
/// The display name of a phrase's roster entry.
pub const ENTRY_NAME: &str = "recovery phrase";

/// Why a phrase is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhraseError {
    /// Not 24 words.
    #[error("a recovery phrase has {PHRASE_WORDS} words; this has {0}")]
    WordCount(usize),
    /// A word not in the BIP39 English list, or a wrong checksum (a word mistyped).
    #[error("not a recovery phrase ({0}): check every word")]
    Invalid(String),
}

/// A recovery phrase's secret. Zeroized on drop, never printed by `Debug`.
pub struct RecoverySecret(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for RecoverySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoverySecret([redacted])")
    }
}

impl RecoverySecret {
    /// A fresh random secret.
    pub fn random(rng: &mut Rng) -> RecoverySecret {
        RecoverySecret(Zeroizing::new(rng.bytes()))
    }

    /// Read a phrase typed by a person: case and the spacing between words do not matter.
    pub fn parse(phrase: &str) -> Result<RecoverySecret, PhraseError> {
        let normal = Zeroizing::new(
            phrase
                .split_whitespace()
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
                .join(" "),
        );
        let words = normal.split(' ').filter(|w| !w.is_empty()).count();
        if words != PHRASE_WORDS {
            return Err(PhraseError::WordCount(words));
        }
        let mnemonic = bip39::Mnemonic::parse_normalized(&normal)
            .map_err(|e| PhraseError::Invalid(e.to_string()))?;
        let (entropy, len) = mnemonic.to_entropy_array();
        let entropy = Zeroizing::new(entropy);
        let bytes: [u8; 32] = entropy[..len]
            .try_into()
            .map_err(|_| PhraseError::WordCount(words))?;
        Ok(RecoverySecret(Zeroizing::new(bytes)))
    }

    /// The phrase: 24 words separated by single spaces.
    pub fn phrase(&self) -> Zeroizing<String> {
        // 32 bytes is a valid BIP39 entropy length: this cannot fail.
        match bip39::Mnemonic::from_entropy(self.0.as_slice()) {
            Ok(mnemonic) => Zeroizing::new(mnemonic.words().collect::<Vec<_>>().join(" ")),
            Err(_) => Zeroizing::new(String::new()),
        }
    }

    /// The keys the phrase gives.
    pub fn keys(&self) -> RecoveryKeys {
        let entry = Zeroizing::new(blake3::derive_key(CONTEXT_ENTRY, self.0.as_slice()));
        RecoveryKeys {
            entry: DeviceKey::from_secret_bytes(&entry),
            wrap: WrapKey::from_device_secret(&entry),
            mailbox_secret: Zeroizing::new(blake3::derive_key(CONTEXT_MAILBOX, self.0.as_slice())),
        }
    }
}

/// The keys of a phrase's roster entry and snapshot mailbox.
pub struct RecoveryKeys {
    entry: DeviceKey,
    wrap: WrapKey,
    mailbox_secret: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for RecoveryKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryKeys")
            .field("entry", &self.entry.device_id())
            .finish_non_exhaustive()
    }
}

impl RecoveryKeys {
    /// The roster entry's id.
    pub fn entry_id(&self) -> DeviceId {
        self.entry.device_id()
    }

    /// The roster entry's wrap key.
    pub fn wrap(&self) -> &WrapKey {
        &self.wrap
    }

    /// The snapshot mailbox's secret (carried in the roster entry).
    pub fn mailbox_secret(&self) -> &[u8; 32] {
        &self.mailbox_secret
    }

    /// The snapshot mailbox's keys.
    pub fn mailbox(&self) -> InviteKeys {
        InviteKeys::from_secret(&self.mailbox_secret)
    }

    /// The entry's endorsement of `device` adding itself in `epoch`.
    pub fn endorse(
        &self,
        epoch: &EpochId,
        device: &DeviceId,
        wrap_key: &[u8; 32],
        name: &str,
    ) -> Endorsement {
        Endorsement {
            by: self.entry.device_id(),
            signature: self
                .entry
                .sign(&endorsement_message(epoch, device, wrap_key, name)),
        }
    }
}

/// A member's snapshot of the group for the phrase of `entry` (a roster entry with a
/// snapshot mailbox secret): an admission of the entry into the head epoch, its secret
/// wrapped to the entry's key, sealed for the snapshot mailbox and signed by the member.
pub fn snapshot(
    admitter: &Admitter<'_>,
    entry: &Member,
    rng: &mut Rng,
) -> Result<Vec<u8>, AdmitError> {
    let secret = entry.recovery.as_ref().ok_or(AdmitError::Malformed)?;
    let me = admitter.device.device_id();
    let head = admitter.roster.head();
    let context = WrapContext {
        purpose: Purpose::Admission,
        group: admitter.group,
        written_in: head,
        opens: head.number,
        author: me,
        recipient: entry.device,
    };
    let wrapped = wrap(&entry.wrap_key, &context, admitter.epoch_secret, rng)
        .map_err(|_| AdmitError::Malformed)?;
    let admission = Admission {
        joiner: entry.device,
        group: admitter.group,
        group_name: admitter.group_name.to_owned(),
        relays: admitter.relays.to_vec(),
        epoch: head,
        wrapped,
        founder: admitter.roster.founder().clone(),
        members: admitter.roster.members().cloned().collect(),
        removed: admitter.roster.removed_devices().into_iter().collect(),
    };
    seal(
        &InviteKeys::from_secret(&secret.0),
        Kind::Admission,
        admitter.device,
        &admission,
        rng,
    )
}

/// Read a snapshot found in the phrase's mailbox: the group, epoch and secret it gives.
pub fn read_snapshot(keys: &RecoveryKeys, sealed: &[u8]) -> Result<Joined, AcceptError> {
    accept(&keys.mailbox(), sealed, &keys.entry_id(), keys.wrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phrase_reads_back_to_the_same_keys_however_it_is_typed() {
        let secret = RecoverySecret::random(&mut Rng::seeded(7));
        let phrase = secret.phrase();
        assert_eq!(phrase.split(' ').count(), PHRASE_WORDS);
        let typed = format!("  {}\n", phrase.to_uppercase().replace(' ', "   "));
        let back = RecoverySecret::parse(&typed).expect("parses");
        assert_eq!(back.keys().entry_id(), secret.keys().entry_id());
        assert_eq!(back.keys().wrap().public(), secret.keys().wrap().public());
        assert_eq!(
            back.keys().mailbox().mailbox_id(),
            secret.keys().mailbox().mailbox_id()
        );
        // Two phrases give unrelated keys.
        let other = RecoverySecret::random(&mut Rng::seeded(8)).keys();
        assert_ne!(other.entry_id(), secret.keys().entry_id());
        assert_ne!(other.mailbox_secret(), secret.keys().mailbox_secret());
    }

    #[test]
    fn a_mistyped_phrase_is_refused_with_a_clear_error() {
        let phrase = RecoverySecret::random(&mut Rng::seeded(9)).phrase();
        let mut words: Vec<&str> = phrase.split(' ').collect();
        assert_eq!(
            RecoverySecret::parse(&words[..12].join(" ")).map(|_| ()),
            Err(PhraseError::WordCount(12))
        );
        // A word from the list in the wrong place: the checksum fails.
        let swapped = if words[0] == "abandon" {
            "ability"
        } else {
            "abandon"
        };
        words[0] = swapped;
        assert!(matches!(
            RecoverySecret::parse(&words.join(" ")),
            Err(PhraseError::Invalid(_))
        ));
        words[0] = "zerokx";
        assert!(matches!(
            RecoverySecret::parse(&words.join(" ")),
            Err(PhraseError::Invalid(_))
        ));
        assert!(!format!("{:?}", RecoverySecret::parse(&phrase)).contains(words[1]));
    }
}
