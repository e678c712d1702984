//! The crypto core (DESIGN.md §4): pure functions and small types, no actor, no I/O.
//!
//! - [`keys`]: group secret (random or Argon2id from a passphrase), per-epoch keys derived
//!   with BLAKE3 `derive_key`: content key, mailbox signing key, mailbox key and id.
//! - [`join`]: the join proof a device shows a relay to use a mailbox.
//! - [`envelope`]: sealing and opening records — XChaCha20-Poly1305 with the mailbox and
//!   epoch bound as associated data, sender signatures, padding buckets, `blob_id` checks.
//! - [`seq`]: per-sender sequence tracking (replays and gaps) and the hybrid logical clock.
//! - [`invite`]: the versioned, checksummed invite token.
//! - [`roster`]: the device roster (who may write in which epoch), derived from signed
//!   operations; [`wrap`]: epoch secrets wrapped to a device (HPKE); [`admit`]: the
//!   messages of an admission by invite; [`pair`]: short-code pairing with SPAKE2;
//!   [`recovery`]: recovery phrases (issue 14).
//! - [`content`]: large files as chunks sealed under a per-file key (issue 15).
//!
//! Secrets are zeroized on drop and never printed: their `Debug` says `[redacted]`.

pub mod admit;
pub mod content;
pub mod envelope;
pub mod invite;
pub mod join;
pub mod keys;
pub mod pair;
pub mod recovery;
pub mod roster;
pub mod seq;
pub mod wrap;

pub use envelope::{DeviceKey, OpenError, OpenedRecord, RecordKind, SealError};
pub use invite::{Invite, InviteError, InviteSecret};
pub use join::{join_transcript, sign_join, verify_join};
pub use keys::{EpochKeys, GroupSecret, KdfParams, PassphraseError};
pub use seq::{Hlc, SeqTracker, SeqVerdict};
