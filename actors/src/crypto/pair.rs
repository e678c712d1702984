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

/// Which message of the exchange a [`PairPost`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Step {
    /// The SPAKE2 message ([`start`]).
    Spake,
    /// The confirmation tag ([`PairKey::confirmation`]).
    Confirm,
}

/// What each side posts in the rendezvous mailbox (CBOR). The mailbox is public: anything
/// there may come from anyone, so each side takes the first message of the other role
/// that is not older than its own start (an earlier pairing's leftovers would only make a
/// wrong key, which the confirmation catches).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PairPost {
    /// The side that posted it: 1 the device in the group, 2 the new one.
    pub role: u8,
    /// Which message.
    pub step: Step,
    /// The poster's wall clock (unix ms).
    pub at_ms: u64,
    /// The SPAKE2 message or the tag.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// Largest post a side reads (a SPAKE2 message is 33 bytes).
const POST_BYTES_MAX: usize = 256;

impl PairPost {
    /// `role`'s post.
    pub fn new(role: Role, step: Step, at_ms: u64, body: Vec<u8>) -> PairPost {
        PairPost {
            role: role.byte(),
            step,
            at_ms,
            body,
        }
    }

    /// Its bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // CBOR into a Vec cannot fail for this type.
        let _ = ciborium::into_writer(self, &mut out);
        out
    }

    /// A post read from the mailbox (`None`: not one).
    pub fn decode(bytes: &[u8]) -> Option<PairPost> {
        if bytes.len() > POST_BYTES_MAX {
            return None;
        }
        ciborium::from_reader(bytes).ok()
    }

    /// Whether `role` posted it.
    pub fn is_from(&self, role: Role) -> bool {
        self.role == role.byte()
    }
}

/// One side's view of the exchange in the rendezvous mailbox: feed it the other side's
/// posts in mailbox order; it says what to post and when the pairing is done.
pub struct Exchange {
    role: Role,
    started_ms: u64,
    pairing: Option<Pairing>,
    key: Option<PairKey>,
    theirs: Option<[u8; 32]>,
}

impl Exchange {
    /// Start as `role` at `now_ms`: the exchange and the first post (the SPAKE2 message).
    pub fn start(code: &PairCode, role: Role, now_ms: u64, rng: &mut Rng) -> (Exchange, PairPost) {
        let (pairing, message) = start(code, role, rng);
        let post = PairPost::new(role, Step::Spake, now_ms, message);
        (
            Exchange {
                role,
                started_ms: now_ms,
                pairing: Some(pairing),
                key: None,
                theirs: None,
            },
            post,
        )
    }

    /// Take a post read from the mailbox: what to post in answer (this side's confirmation
    /// tag, once it has the other side's SPAKE2 message). Its own posts, and the other
    /// side's from more than `window_ms` before this side started, are skipped. Once both
    /// tags are in, a wrong code fails (`WrongCode`): the pairing is over.
    pub fn take(&mut self, post: &PairPost, window_ms: u64) -> Result<Option<PairPost>, PairError> {
        if post.is_from(self.role) || post.at_ms.saturating_add(window_ms) < self.started_ms {
            return Ok(None);
        }
        let mut answer = None;
        match post.step {
            Step::Spake => {
                if let Some(pairing) = self.pairing.take() {
                    let key = pairing.finish(&post.body)?;
                    // Stamped no earlier than the other side's start, so it reads it.
                    let at_ms = post.at_ms.max(self.started_ms);
                    let tag = key.confirmation().to_vec();
                    answer = Some(PairPost::new(self.role, Step::Confirm, at_ms, tag));
                    self.key = Some(key);
                }
            }
            Step::Confirm => {
                if self.theirs.is_none() {
                    let tag = post.body.as_slice().try_into();
                    self.theirs = Some(tag.map_err(|_| PairError::BadMessage)?);
                }
            }
        }
        if let (Some(key), Some(theirs)) = (&self.key, &self.theirs) {
            key.check(theirs)?;
        }
        Ok(answer)
    }

    /// Both tags are in and match: the invite secret the pairing gives.
    pub fn done(&self) -> Option<Zeroizing<[u8; 32]>> {
        match (&self.key, &self.theirs) {
            (Some(key), Some(theirs)) if key.check(theirs).is_ok() => Some(key.invite_secret()),
            _ => None,
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

    /// How one side of an exchange ended: failed, or the invite secret if it is done.
    type Ended = Result<Option<Zeroizing<[u8; 32]>>, PairError>;

    /// Run both sides over one simulated mailbox (every post, in order, to both): what
    /// each side ends with.
    fn exchange(existing: &PairCode, new: &PairCode, earlier: Vec<PairPost>) -> (Ended, Ended) {
        let mut rng = Rng::seeded(9);
        let (mut a, first_a) = Exchange::start(existing, Role::Existing, 10_000_000, &mut rng);
        let (mut b, first_b) = Exchange::start(new, Role::New, 10_060_000, &mut rng);
        let mut mailbox: Vec<PairPost> = earlier;
        mailbox.push(first_a);
        mailbox.push(first_b);
        let mut results = [Ok(None), Ok(None)];
        let mut read = 0;
        while read < mailbox.len() {
            let post = mailbox[read].clone();
            read += 1;
            for (side, result) in [&mut a, &mut b].into_iter().zip(results.iter_mut()) {
                if result.is_err() {
                    continue;
                }
                match side.take(&post, 600_000) {
                    Ok(Some(answer)) => mailbox.push(answer),
                    Ok(None) => {}
                    Err(err) => *result = Err(err),
                }
                if result.is_ok() {
                    *result = Ok(side.done());
                }
            }
        }
        let [ra, rb] = results;
        (ra, rb)
    }

    #[test]
    fn an_exchange_through_the_mailbox_pairs_with_the_right_code_only() {
        let code = PairCode::random(&mut Rng::seeded(1));
        let (a, b) = exchange(&code, &code, Vec::new());
        let (a, b) = (a.unwrap().expect("done"), b.unwrap().expect("done"));
        assert_eq!(*a, *b, "both sides get one invite secret");
        // A mistyped password: both sides fail, neither gets a secret.
        let wrong = PairCode::parse(&format!(
            "{:02}-{:06}",
            code.nameplate(),
            (*code.password + 1) % PASSWORDS
        ))
        .unwrap();
        let (a, b) = exchange(&code, &wrong, Vec::new());
        assert_eq!(
            (a.map(|_| ()), b.map(|_| ())),
            (Err(PairError::WrongCode), Err(PairError::WrongCode))
        );
        // A guesser's SPAKE2 message ahead of the new device's: the device in the group
        // takes the guess, fails, and the session is over (one guess per code).
        let guess = PairCode {
            nameplate: code.nameplate(),
            password: Zeroizing::new((*code.password + 7) % PASSWORDS),
        };
        let (_, guessed) = start(&guess, Role::New, &mut Rng::seeded(4));
        let mut rng = Rng::seeded(9);
        let (mut a, _) = Exchange::start(&code, Role::Existing, 1_000_000, &mut rng);
        let guess_post = PairPost::new(Role::New, Step::Spake, 1_000_500, guessed);
        let answer = a.take(&guess_post, 0).unwrap().expect("a tag in answer");
        assert_eq!(answer.step, Step::Confirm);
        let forged_tag = PairPost::new(Role::New, Step::Confirm, 1_000_600, vec![0; 32]);
        assert_eq!(
            a.take(&forged_tag, 0).map(|_| ()),
            Err(PairError::WrongCode)
        );
        assert!(a.done().is_none());
    }

    #[test]
    fn leftovers_of_an_earlier_pairing_are_skipped_by_their_age() {
        let code = PairCode::random(&mut Rng::seeded(2));
        // An earlier session's SPAKE2 message of the device in the group, 20 minutes old.
        let (_, old) = start(&code, Role::Existing, &mut Rng::seeded(7));
        let stale = PairPost::new(Role::Existing, Step::Spake, 10_000_000 - 1_200_000, old);
        let (a, b) = exchange(&code, &code, vec![stale]);
        assert_eq!(*a.unwrap().expect("done"), *b.unwrap().expect("done"));
        // Posts that are not pairing posts are not read.
        assert!(PairPost::decode(&[0xFF; 300]).is_none());
        assert!(PairPost::decode(b"not cbor").is_none());
    }
}
