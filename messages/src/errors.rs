//! Error types shared by the crates: what an app, the CLI or a relay operator is told when
//! input is refused or a part fails. Each is an enum to match on; a `String` inside is only
//! the detail of a lower layer's error (an OS or database message), never the kind.

use crate::DeviceId;

/// Invite token prefix of version 1.
pub const INVITE_PREFIX: &str = "ZK1";
/// Admission token prefix of version 1.
pub const TOKEN_PREFIX: &str = "ZKA1";
/// Fewest characters a passphrase may have.
pub const PASSPHRASE_CHARS_MIN: usize = 8;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InviteError {
    /// Not a 0k-sync invite.
    #[error("not a 0k-sync invite (it should start with {INVITE_PREFIX})")]
    Prefix,
    /// Longer than any valid invite.
    #[error("invite is too long")]
    TooLong,
    /// Characters outside the token alphabet.
    #[error("invite contains characters that are not part of a token")]
    Encoding,
    /// Mistyped or truncated.
    #[error("invite checksum does not match: it was mistyped or cut short")]
    Checksum,
    /// Made by a newer version.
    #[error("invite version {0} is not supported by this version of zerok")]
    Version(u8),
    /// Well-formed text, invalid content.
    #[error("invite content is invalid: {0}")]
    Malformed(String),
    /// Past its expiry.
    #[error("invite expired at unix time {0}")]
    Expired(u64),
    /// Its key derivation is not one this version knows.
    #[error("invite uses a key derivation this version does not support")]
    UnsupportedKdf,
    /// Its key does not give the group id it names (a damaged or forged invite).
    #[error("the invite's key does not match its group")]
    KeyMismatch,
    /// A version 1 invite, which carries the group's secret: refused where invites no
    /// longer may (ask a member for a new one).
    #[error(
        "this invite was made by an older zerok and carries the group's secret; ask a member for a new invite"
    )]
    CarriesSecret,
    /// No member admitted this device in time: none was online, or the invite is expired,
    /// used or unknown to them (members do not say which, to a token holder).
    #[error(
        "no member of the group admitted this device within {0} s: a member device must be online (is the inviting device running?), and the invite unused and unexpired"
    )]
    NotAdmitted(u64),
}

/// Why pairing two devices with a short code failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PairingError {
    /// Not 8 digits.
    #[error("a pairing code is 8 digits, like 12-345678")]
    BadCode,
    /// The two devices used different codes (or someone guessed first): the code is spent.
    #[error(
        "the code did not match; start again with a new code (`zerok pair` on the device in the group)"
    )]
    WrongCode,
    /// The other device did not answer in time.
    #[error(
        "no answer from the other device within {0} s (is `zerok pair` running on it, with the same relay?)"
    )]
    NoAnswer(u64),
    /// The codes matched, but the new device was not admitted in time (it did not ask, or
    /// the group's relays did not take its admission).
    #[error(
        "the code matched, but the new device was not admitted within {0} s (did it stop? are the group's relays reachable?)"
    )]
    NotAdmitted(u64),
}

/// Why making or using a recovery phrase failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// Not a phrase (word count, an unknown word, a wrong checksum).
    #[error("{0}")]
    BadPhrase(String),
    /// No relay given had a snapshot of a group for this phrase in time.
    #[error(
        "no group found for this phrase on the relays given within {0} s (is the relay address the one `zerok export-recovery` printed? a phrase whose entry was removed, or whose group had no device online within the relays' retention, finds nothing)"
    )]
    NothingFound(u64),
    /// The phrase's entry or snapshot did not reach a relay in time: the phrase is not
    /// given out (the entry stays on the roster, harmless; remove it with `zerok devices`).
    #[error("the recovery phrase did not reach a relay within {0} s; try again when a relay is up")]
    NotOnRelay(u64),
    /// Every snapshot found was posted by a device another snapshot says was removed.
    #[error(
        "the snapshots found for this phrase contradict each other (a removed device posted one); recover from a phrase exported after the removal"
    )]
    Conflicting,
    /// The phrase's latest snapshot is from before the group's current epoch: the phrase
    /// was revoked, or no device of the group ran since it was re-keyed.
    #[error(
        "this device is not in the group's current key epoch: the recovery phrase was revoked (its entry removed), or no device of the group has run since the group was re-keyed; ask a member device for an invite, in a new home"
    )]
    Outdated,
    /// This device is in the phrase's group already.
    #[error("this device is in group {0} already; recover on a new device (a new home)")]
    AlreadyInGroup(String),
}

/// Why a passphrase could not become a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PassphraseError {
    /// Too short to resist guessing.
    #[error("passphrase must have at least {PASSPHRASE_CHARS_MIN} characters")]
    TooShort,
    /// The parameters are not the fixed set this version accepts.
    #[error("unsupported key derivation parameters")]
    UnsupportedParams,
    /// Argon2 refused (cannot happen with valid parameters), or its thread was lost.
    #[error("key derivation failed: {0}")]
    Kdf(String),
    /// The group is a passphrase group and none was given.
    #[error("this group needs its passphrase")]
    Needed,
    /// The passphrase does not give the group's key.
    #[error("wrong passphrase for this group")]
    Wrong,
}

/// Why a token's text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not an admission token.
    #[error("not an admission token (it should start with {TOKEN_PREFIX})")]
    Prefix,
    /// Longer than any valid token.
    #[error("admission token is too long")]
    TooLong,
    /// Characters outside the token alphabet.
    #[error("admission token contains characters that are not part of a token")]
    Encoding,
    /// Mistyped or truncated.
    #[error("admission token checksum does not match: it was mistyped or cut short")]
    Checksum,
    /// Made by a newer version.
    #[error("admission token version {0} is not supported by this version")]
    Version(u8),
    /// Well-formed text, invalid content.
    #[error("admission token content is invalid: {0}")]
    Malformed(String),
}

/// Why a token does not admit here and now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// Signed for another relay.
    #[error("admission token is for another relay")]
    OtherRelay,
    /// The signature does not check out.
    #[error("admission token invalid: bad signature")]
    BadSignature,
    /// Past its expiry.
    #[error("admission token expired")]
    Expired,
}

/// Why the client's local store failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed (I/O, a damaged file): its message.
    #[error("database: {0}")]
    Db(String),
    /// A stored value does not decode (damaged, or written by an incompatible version).
    #[error("a stored {0} does not decode")]
    Decode(&'static str),
    /// A group commit's flush failed: records queued since are not known to be on disk.
    #[error("flush failed: {0}")]
    Flush(String),
    /// The store's flusher has stopped (the client is stopping).
    #[error("the store's flusher stopped")]
    FlusherStopped,
    /// An actor the store's writes go through has stopped.
    #[error("{0} stopped")]
    Stopped(&'static str),
}

/// Bad input from the app.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidInput {
    /// More records in one call than one call may carry.
    #[error("{count} records in one call; at most {max}")]
    TooManyRecords {
        /// Records given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A device name longer than a roster entry holds (64 bytes).
    #[error("device name longer than 64 bytes")]
    DeviceNameTooLong,
    /// A device cannot remove itself from a group (another member removes it).
    #[error("a device cannot remove itself; remove it from another device of the group")]
    RemoveSelf,
    /// A record kind the client keeps for itself (`0x100..0x200`: the roster).
    #[error("record kind {0:#x} is reserved for the client's own records")]
    SystemKind(u16),
    /// A payload larger than a record holds.
    #[error("payload of {bytes} bytes exceeds the record limit of {limit}")]
    PayloadTooLarge {
        /// Payload size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A group without relays.
    #[error("a group needs at least one relay")]
    NoRelays,
    /// An admission token that cannot be read.
    #[error(transparent)]
    AdmissionText(#[from] TokenError),
    /// An admission token that does not admit (bad signature, expired).
    #[error(transparent)]
    AdmissionRefused(#[from] TokenRefusal),
    /// An admission token for a relay that is not one of the group's.
    #[error("admission token is for relay {}, which is not one of the group's relays", .0.short())]
    AdmissionNotForGroup(DeviceId),
}
