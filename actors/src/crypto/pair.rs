//! Pairing two devices side by side with a short code (issue 14; docs/DESIGN.md §4
//! "Membership").
//!
//! The device already in the group shows a code of 8 digits, `NN-NNNNNN`
//! ([`PairCode`]); its user types it on the new device.
//! - The first two digits are the **nameplate**: which rendezvous mailbox the two devices
//!   meet in ([`rendezvous`]). It is public: the relay may learn it.
//! - The other six are the **password** of a SPAKE2 exchange (the `spake2` crate, over
//!   Ed25519), run through that mailbox. The relay learns nothing of the password or the key.
//!
//! Each side then proves it holds the same key with a confirmation tag
//! ([`PairKey::confirmation`]). A wrong code gives different keys and the check fails
//! ([`PairError::WrongCode`]). An attacker gets one guess per code: the existing device ends
//! the session on a failed check, and a new attempt needs a new code.
//!
//! With the right code, the shared key gives a fresh invite secret ([`PairKey::invite_secret`]),
//! and the admission runs as for an invite token (`super::admit`) in the invite mailbox that
//! secret gives.

use crate::rng::Rng;
use spake2::{Ed25519Group, Identity, Password, Spake2};
use zeroize::Zeroizing;

/// Nameplates: the first two digits of a code.
const NAMEPLATES: u32 = 100;
/// Passwords: the last six digits.
const PASSWORDS: u32 = 1_000_000;
/// BLAKE3 context of a rendezvous mailbox's seed, from its nameplate.
const CONTEXT_RENDEZVOUS: &str = "zerok pair rendezvous v1";
/// BLAKE3 context of the confirmation key.
const CONTEXT_CONFIRM: &str = "zerok pair confirm v1";
/// BLAKE3 context of the invite secret a pairing gives.
const CONTEXT_INVITE: &str = "zerok pair invite v1";
const ID_EXISTING: &[u8] = b"zerok pair v1: the device in the group";
const ID_NEW: &[u8] = b"zerok pair v1: the new device";

/// Why a pairing failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    /// Not `NN-NNNNNN`.
    #[error("a pairing code is 8 digits, like 12-345678")]
    BadCode,
    /// The other side's message is not a SPAKE2 message.
    #[error("the other device's pairing message is malformed")]
    BadMessage,
    /// The two devices used different codes (or someone guessed): start again with a new
    /// code.
    #[error("the pairing code did not match; start again with a new code")]
    WrongCode,
}

/// A pairing code: nameplate and password.
#[derive(Clone, PartialEq, Eq)]
pub struct PairCode {
    nameplate: u32,
    password: Zeroizing<u32>,
}

impl std::fmt::Debug for PairCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PairCode({:02}-[redacted])", self.nameplate)
    }
}

impl PairCode {
    /// A fresh code.
    pub fn random(rng: &mut Rng) -> PairCode {
        PairCode {
            nameplate: rng.below(u64::from(NAMEPLATES)) as u32,
            password: Zeroizing::new(rng.below(u64::from(PASSWORDS)) as u32),
        }
    }

    /// Read a code as typed: 8 digits, spaces and `-` anywhere ignored.
    pub fn parse(text: &str) -> Result<PairCode, PairError> {
        let digits: Zeroizing<String> = Zeroizing::new(
            text.chars()
                .filter(|c| !c.is_whitespace() && *c != '-')
                .collect(),
        );
        if digits.len() != 8 || !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(PairError::BadCode);
        }
        let nameplate = digits[..2].parse().map_err(|_| PairError::BadCode)?;
        let password = digits[2..].parse().map_err(|_| PairError::BadCode)?;
        Ok(PairCode {
            nameplate,
            password: Zeroizing::new(password),
        })
    }

    /// The code as shown to the user: `NN-NNNNNN`. A secret until the pairing ends.
    pub fn reveal(&self) -> String {
        format!("{:02}-{:06}", self.nameplate, *self.password)
    }

    /// The nameplate (public: which rendezvous mailbox).
    pub fn nameplate(&self) -> u32 {
        self.nameplate
    }
}

/// The seed of the rendezvous mailbox of `nameplate` (anyone can derive it: it only says
/// where to meet).
pub fn rendezvous(nameplate: u32) -> zerok_messages::client::MailboxSeed {
    zerok_messages::client::MailboxSeed(Zeroizing::new(blake3::derive_key(
        CONTEXT_RENDEZVOUS,
        &nameplate.to_be_bytes(),
    )))
}

/// Which side of the pairing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The device already in the group (it shows the code).
    Existing,
    /// The device joining (it types the code).
    New,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Role::Existing => 1,
            Role::New => 2,
        }
    }
}

/// Our [`Rng`] as the `rand_core` 0.6 generator `spake2` draws from.
struct SpakeRng<'a>(&'a mut Rng);

impl rand_core_06::RngCore for SpakeRng<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut bytes = [0u8; 4];
        self.0.fill(&mut bytes);
        u32::from_le_bytes(bytes)
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core_06::Error> {
        self.0.fill(dest);
        Ok(())
    }
}

/// `Rng` is the system's generator in production (a seeded one only in tests and simulation).
impl rand_core_06::CryptoRng for SpakeRng<'_> {}

/// One side's pairing under way.
pub struct Pairing {
    state: Spake2<Ed25519Group>,
    role: Role,
}

impl std::fmt::Debug for Pairing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pairing")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Start pairing as `role` with `code`: answers the message to send the other side.
pub fn start(code: &PairCode, role: Role, rng: &mut Rng) -> (Pairing, Vec<u8>) {
    // The whole code is the password (the nameplate too, so two codes that share a password
    // never agree on a key).
    let mut both = Zeroizing::new([0u8; 8]);
    both[..4].copy_from_slice(&code.nameplate.to_be_bytes());
    both[4..].copy_from_slice(&code.password.to_be_bytes());
    let password = Password::new(*both);
    let (existing, new) = (Identity::new(ID_EXISTING), Identity::new(ID_NEW));
    let (state, message) = match role {
        Role::Existing => {
            Spake2::<Ed25519Group>::start_a_with_rng(&password, &existing, &new, SpakeRng(rng))
        }
        Role::New => {
            Spake2::<Ed25519Group>::start_b_with_rng(&password, &existing, &new, SpakeRng(rng))
        }
    };
    (Pairing { state, role }, message)
}

impl Pairing {
    /// Finish with the other side's message: the shared key (equal on both sides only if
    /// both typed the same code; [`PairKey::check`] tells).
    pub fn finish(self, theirs: &[u8]) -> Result<PairKey, PairError> {
        let key = Zeroizing::new(
            self.state
                .finish(theirs)
                .map_err(|_| PairError::BadMessage)?,
        );
        Ok(PairKey {
            key: Zeroizing::new(blake3::derive_key(CONTEXT_CONFIRM, &key)),
            role: self.role,
        })
    }
}

/// The key a pairing gave one side.
pub struct PairKey {
    key: Zeroizing<[u8; 32]>,
    role: Role,
}

impl std::fmt::Debug for PairKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairKey")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl PairKey {
    fn tag(&self, role: Role) -> blake3::Hash {
        blake3::keyed_hash(&self.key, &[role.byte()])
    }

    /// This side's confirmation tag, to send the other side.
    pub fn confirmation(&self) -> [u8; 32] {
        *self.tag(self.role).as_bytes()
    }

    /// Check the other side's tag (constant time): `WrongCode` unless both used one code.
    pub fn check(&self, theirs: &[u8; 32]) -> Result<(), PairError> {
        let other = match self.role {
            Role::Existing => Role::New,
            Role::New => Role::Existing,
        };
        if self.tag(other) == blake3::Hash::from_bytes(*theirs) {
            Ok(())
        } else {
            Err(PairError::WrongCode)
        }
    }

    /// The invite secret the pairing gives (the admission runs in its invite mailbox).
    pub fn invite_secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(CONTEXT_INVITE, &*self.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(existing: &PairCode, new: &PairCode, seed: u64) -> (PairKey, PairKey) {
        let mut rng = Rng::seeded(seed);
        let (a, to_new) = start(existing, Role::Existing, &mut rng);
        let (b, to_existing) = start(new, Role::New, &mut rng);
        (
            a.finish(&to_existing).expect("a message"),
            b.finish(&to_new).expect("a message"),
        )
    }

    #[test]
    fn the_right_code_pairs_and_both_sides_get_one_invite_secret() {
        let code = PairCode::random(&mut Rng::seeded(1));
        let (a, b) = pair(&code, &code, 2);
        assert_eq!(b.check(&a.confirmation()), Ok(()));
        assert_eq!(a.check(&b.confirmation()), Ok(()));
        assert_eq!(*a.invite_secret(), *b.invite_secret());
        // Each pairing gives its own secret, even with the same code.
        let (c, _) = pair(&code, &code, 3);
        assert_ne!(*a.invite_secret(), *c.invite_secret());
        // A side's own tag is not the other side's (no reflection).
        assert_eq!(a.check(&a.confirmation()), Err(PairError::WrongCode));
    }

    #[test]
    fn a_wrong_code_fails_the_check_on_both_sides() {
        let code = PairCode::parse("12-345678").expect("code");
        for typed in ["12-345679", "13-345678", "87-654321"] {
            let guess = PairCode::parse(typed).expect("code");
            let (a, b) = pair(&code, &guess, 4);
            assert_eq!(
                a.check(&b.confirmation()),
                Err(PairError::WrongCode),
                "{typed}"
            );
            assert_eq!(
                b.check(&a.confirmation()),
                Err(PairError::WrongCode),
                "{typed}"
            );
            assert_ne!(*a.invite_secret(), *b.invite_secret());
        }
    }

    #[test]
    fn codes_read_as_typed_and_bad_input_is_an_error() {
        let code = PairCode::parse(" 07 - 012 345 ").expect("code");
        assert_eq!(code.reveal(), "07-012345");
        assert_eq!(code.nameplate(), 7);
        assert_eq!(PairCode::parse(&code.reveal()), Ok(code.clone()));
        assert!(!format!("{code:?}").contains("012345"), "redacted");
        for bad in ["", "1234567", "123456789", "12-34567a", "١٢-٣٤٥٦٧٨"] {
            assert_eq!(PairCode::parse(bad), Err(PairError::BadCode), "{bad:?}");
        }
        let (pairing, _) = start(&code, Role::New, &mut Rng::seeded(5));
        assert_eq!(
            pairing.finish(&[1, 2, 3]).map(|_| ()),
            Err(PairError::BadMessage)
        );
        // Rendezvous mailboxes differ by nameplate only.
        assert_ne!(*rendezvous(7).0, *rendezvous(8).0);
    }
}
