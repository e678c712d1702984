//! The client tree's types and messages (DESIGN.md §2, §6): the app-facing ids, events,
//! receipts, status and errors, the records the Encryptor seals and opens, and the message
//! enums of the Encryptor, the RelayConnections and the SyncCoordinator. Plain data only:
//! keys travel as bytes ([`EpochSecret`], [`MailboxSeed`]) and each actor derives what it
//! needs from them, so nothing here depends on the actors.

pub use crate::errors::{
    InvalidInput, InviteError, PairingError, PassphraseError, RecoveryError, StoreError,
};
use crate::link::{LinkEvent, LinkReceiver, LinkSender};
use crate::wire::AdmissionText;
use crate::{BlobId, DeviceId, Epoch, ErrorCode, Item, Limits, MailboxId, RelayAddr};
use bytes::Bytes;
use ractor::RpcReplyPort;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// A group's id: the mailbox id of its epoch 0 (public; safe to log and show).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub MailboxId);

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_hex())
    }
}

impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupId({})", self.0.short())
    }
}

impl FromStr for GroupId {
    type Err = crate::ids::ParseIdError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(GroupId(text.parse()?))
    }
}

/// What the client tells the app.
#[derive(Clone, PartialEq, Eq)]
pub enum Event {
    /// A record of the group, opened, verified, new (never delivered before).
    Received {
        /// The group.
        group: GroupId,
        /// The device that wrote and signed it.
        sender: DeviceId,
        /// The sender's sequence number.
        seq: u64,
        /// Hybrid logical clock timestamp of the write.
        hlc: u64,
        /// Its blob id (the same on every relay).
        blob_id: BlobId,
        /// The app's bytes.
        payload: Vec<u8>,
    },
    /// A relay connection is up (hello'd, groups joined).
    RelayUp {
        /// The relay.
        relay: DeviceId,
    },
    /// A relay connection went down; the client reconnects with backoff.
    RelayDown {
        /// The relay.
        relay: DeviceId,
        /// Why.
        reason: String,
    },
    /// Records `from..to` (exclusive) of `sender` were skipped: a relay withheld or lost them
    /// (they are delivered if they turn up later).
    GapDetected {
        /// The group.
        group: GroupId,
        /// The sender.
        sender: DeviceId,
        /// First missing seq.
        from: u64,
        /// One past the last missing seq.
        to: u64,
    },
    /// A record that opened but whose sender is not on the group's roster: a device that
    /// holds the group's key without having been admitted (or was removed). Never delivered.
    UnknownSender {
        /// The group.
        group: GroupId,
        /// The device that signed it.
        sender: DeviceId,
        /// The relay that served it.
        relay: DeviceId,
        /// The id it was served under.
        blob_id: BlobId,
    },
    /// A roster operation of a member was taken (a device invited or added): `devices()`
    /// lists the roster as it is now. It holds `seq` of the sender's records (it is not
    /// handed over as `Received`).
    RosterChanged {
        /// The group.
        group: GroupId,
        /// The member that wrote it.
        sender: DeviceId,
        /// Its seq among the sender's records.
        seq: u64,
    },
    /// A member removed this device from the group: the group was re-keyed without it. It
    /// reads and writes nothing of the group any more (`ClientError::Removed`).
    Removed {
        /// The group.
        group: GroupId,
    },
    /// The group went to a new key epoch (a member removed a device): records are sealed
    /// in it from now on, in its own mailbox.
    EpochChanged {
        /// The group.
        group: GroupId,
        /// The new epoch's number.
        epoch: u32,
    },
    /// A member put a large file into the group: fetch it with `get_file` (it is not
    /// downloaded by itself).
    File {
        /// The group.
        group: GroupId,
        /// The member that put it.
        sender: DeviceId,
        /// Its seq among the sender's records.
        seq: u64,
        /// Hybrid logical clock timestamp of the announcement.
        hlc: u64,
        /// The file.
        file: FileRef,
    },
    /// A relay served an item that does not open (tampered, wrong key, bad signature).
    Undecryptable {
        /// The group.
        group: GroupId,
        /// The relay that served it.
        relay: DeviceId,
        /// The id it was served under.
        blob_id: BlobId,
        /// What failed.
        reason: String,
    },
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Received {
                group,
                sender,
                seq,
                blob_id,
                payload,
                ..
            } => f
                .debug_struct("Received")
                .field("group", group)
                .field("sender", sender)
                .field("seq", seq)
                .field("blob_id", blob_id)
                .field("payload_len", &payload.len())
                .finish(),
            Event::RelayUp { relay } => f.debug_struct("RelayUp").field("relay", relay).finish(),
            Event::RelayDown { relay, reason } => f
                .debug_struct("RelayDown")
                .field("relay", relay)
                .field("reason", reason)
                .finish(),
            Event::GapDetected {
                group,
                sender,
                from,
                to,
            } => f
                .debug_struct("GapDetected")
                .field("group", group)
                .field("sender", sender)
                .field("from", from)
                .field("to", to)
                .finish(),
            Event::RosterChanged { group, sender, seq } => f
                .debug_struct("RosterChanged")
                .field("group", group)
                .field("sender", sender)
                .field("seq", seq)
                .finish(),
            Event::UnknownSender {
                group,
                sender,
                relay,
                blob_id,
            } => f
                .debug_struct("UnknownSender")
                .field("group", group)
                .field("sender", sender)
                .field("relay", relay)
                .field("blob_id", blob_id)
                .finish(),
            Event::Removed { group } => f.debug_struct("Removed").field("group", group).finish(),
            Event::EpochChanged { group, epoch } => f
                .debug_struct("EpochChanged")
                .field("group", group)
                .field("epoch", epoch)
                .finish(),
            Event::File {
                group,
                sender,
                seq,
                file,
                ..
            } => f
                .debug_struct("File")
                .field("group", group)
                .field("sender", sender)
                .field("seq", seq)
                .field("file", file)
                .finish(),
            Event::Undecryptable {
                group,
                relay,
                blob_id,
                reason,
            } => f
                .debug_struct("Undecryptable")
                .field("group", group)
                .field("relay", relay)
                .field("blob_id", blob_id)
                .field("reason", reason)
                .finish(),
        }
    }
}

/// Proof a push is durable on enough relays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The record's blob id (the same on every relay).
    pub blob_id: BlobId,
    /// Relays that acknowledged it as durable.
    pub acked_by: Vec<DeviceId>,
}

/// One relay of a group, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayStatus {
    /// Its address.
    pub addr: RelayAddr,
    /// Whether a connection is up now.
    pub connected: bool,
    /// Items of the group received from it (its cursor).
    pub cursor: u64,
}

/// One group, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    /// Its id.
    pub id: GroupId,
    /// Its human label.
    pub name: String,
    /// Its relays.
    pub relays: Vec<RelayStatus>,
    /// Pushes not yet acknowledged by every relay.
    pub outbox: usize,
    /// Pushes not yet acknowledged by enough relays for a receipt.
    pub unacked: usize,
    /// Recent blob ids remembered (own pushes and records taken, of every group), kept to
    /// skip duplicates before opening; bounded (the client's `SEEN_IDS_MAX`).
    pub seen_ids: u64,
    /// The current key epoch.
    pub epoch: u32,
    /// A member removed this device from the group.
    pub removed: bool,
}

/// What `status()` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This device.
    pub device_id: DeviceId,
    /// Its groups.
    pub groups: Vec<GroupStatus>,
}

/// What `sync_now` achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Relays pulled to their end.
    pub synced: Vec<DeviceId>,
    /// Relays that could not be reached, with why.
    pub failed: Vec<(DeviceId, String)>,
}

/// Client errors. Messages never contain keys, passphrases, tokens or payloads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The home dir or its store cannot be used.
    #[error("home {path}: {message}")]
    Home {
        /// The home dir.
        path: String,
        /// What failed.
        message: String,
    },
    /// The local store failed.
    #[error("local store: {0}")]
    Store(#[from] StoreError),
    /// No such group on this device.
    #[error("unknown group {0}")]
    UnknownGroup(GroupId),
    /// The invite token was refused.
    #[error("invite: {0}")]
    Invite(#[from] InviteError),
    /// A passphrase is needed, or the one given was refused.
    #[error("passphrase: {0}")]
    Passphrase(#[from] PassphraseError),
    /// Bad input from the app.
    #[error("{0}")]
    Invalid(#[from] InvalidInput),
    /// A record could not be sealed (too large, or its group has no keys).
    #[error("seal: {0}")]
    Seal(#[from] SealError),
    /// Not acknowledged by enough relays in time; it stays queued and is retried.
    #[error("not yet acknowledged by enough relays ({acked} of {needed}); it stays queued")]
    NotYetAcked {
        /// Relays that did ack.
        acked: usize,
        /// Relays needed.
        needed: usize,
    },
    /// The client has stopped.
    #[error("client stopped")]
    Stopped,
    /// This device is not on the group's roster: a copy of a home dir (it took a new device
    /// key) or a removed device. Its records would be refused by every member.
    #[error(
        "this device is not on the roster of group {0} (a copied home dir, or a removed device): ask a member for an invite"
    )]
    NotMember(GroupId),
    /// Pairing with a short code failed.
    #[error("pairing: {0}")]
    Pairing(#[from] PairingError),
    /// Making or using a recovery phrase failed.
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    /// The group keeps no roster: it was joined with a version-1 invite, before rosters.
    #[error("group {0} has no device roster (it was joined with an invite from an older zerok)")]
    NoRoster(GroupId),
    /// A member removed this device from the group (it was re-keyed without it).
    #[error("this device was removed from group {0}: ask a member for a new invite")]
    Removed(GroupId),
    /// The device to remove is not on the group's roster.
    #[error("device {0} is not on the group's roster")]
    NotOnRoster(String),
    /// Putting or getting a large file failed.
    #[error(transparent)]
    Content(#[from] ContentError),
}

/// Why a large file could not be put or got.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContentError {
    /// Reading the source or writing the destination failed.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
    /// The content does not verify: a relay served bytes that are not the file's (BLAKE3
    /// of the ciphertext), or a chunk does not open (damaged, reordered, cut short).
    /// Nothing was written to the destination.
    #[error("content failed verification: {0}")]
    Integrity(String),
    /// No relay of the group holds the file (never uploaded there, or expired).
    #[error("no relay of the group holds this file")]
    NotFound,
    /// A relay refused (quota, size, membership).
    #[error("relay {relay} refused: {code}: {message}")]
    Refused {
        /// The relay.
        relay: String,
        /// Its error code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// No relay could be reached or finished the transfer.
    #[error("no relay took the transfer: {0}")]
    Unreachable(String),
    /// This client has no iroh endpoint (another transport), so it cannot move content.
    #[error("content needs the iroh transport")]
    NoTransport,
}

/// A large file put into a group: what a device needs to fetch and open it. It travels
/// inside a sealed `CONTENT_REF` record, so only the group sees it; `key` opens the file
/// (never logged: `Debug` leaves it out).
#[derive(Clone, PartialEq, Eq)]
pub struct FileRef {
    /// The group.
    pub group: GroupId,
    /// The mailbox (the group's epoch) the file was offered to on its relays.
    pub mailbox: MailboxId,
    /// BLAKE3 of the sealed file: its iroh-blobs hash.
    pub hash: BlobId,
    /// Bytes of the sealed file.
    pub sealed_size: u64,
    /// Bytes of the file.
    pub size: u64,
    /// The file's name (its last path component when it was put).
    pub name: String,
    /// The file's key.
    pub key: Zeroizing<[u8; 32]>,
}

impl FileRef {
    /// The id `zerok get` takes: the hex of the sealed file's hash.
    pub fn id(&self) -> String {
        self.hash.to_hex()
    }
}

impl fmt::Debug for FileRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileRef")
            .field("group", &self.group)
            .field("hash", &self.hash)
            .field("size", &self.size)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// How far a put or a get is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Hashing and sealing the file (plaintext bytes done of all).
    Sealing {
        /// Done.
        done: u64,
        /// All.
        total: u64,
    },
    /// Sending the sealed file to a relay (bytes sent in this transfer, and the bytes the
    /// relay had already: a resumed upload starts past them).
    Uploading {
        /// Sent.
        done: u64,
        /// To send.
        total: u64,
        /// Already on the relay.
        resumed_from: u64,
    },
    /// Fetching the sealed file and opening its chunks into the destination as they arrive
    /// (bytes received in this transfer, and the bytes an interrupted download kept: a
    /// resumed download starts past them).
    Downloading {
        /// Received.
        done: u64,
        /// To receive.
        total: u64,
        /// Kept from before.
        resumed_from: u64,
    },
    /// Checking the chunks an interrupted download of the same file into the same
    /// destination kept, before fetching the rest (plaintext bytes checked, of those kept).
    Checking {
        /// Checked.
        done: u64,
        /// Kept.
        total: u64,
    },
}

/// What a device needs to move a group's content: the mailbox to join on its relays, the
/// mailbox's signing seed, the epoch's content key.
pub struct ContentAccess {
    /// The mailbox.
    pub mailbox: MailboxId,
    /// Its signing seed (a secret).
    pub seed: MailboxSeed,
    /// The epoch's content key (a secret).
    pub content_key: Zeroizing<[u8; 32]>,
    /// The group's relays.
    pub relays: Vec<RelayAddr>,
}

impl fmt::Debug for ContentAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContentAccess")
            .field("mailbox", &self.mailbox)
            .field("relays", &self.relays.len())
            .finish_non_exhaustive()
    }
}

/// A device on a group's roster, as `devices()` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Its id.
    pub device: DeviceId,
    /// Its display name.
    pub name: String,
    /// The member that added it (itself, for the group's founder).
    pub added_by: DeviceId,
    /// When it was added (unix ms, by the adding member's clock).
    pub added_at_ms: u64,
    /// Its latest record this device received (unix ms of its timestamp), if any.
    pub last_seen_ms: Option<u64>,
    /// It is this device.
    pub is_self: bool,
}

/// This device as a group's founder: what its roster entry says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Founder {
    /// The founder's device.
    pub device: DeviceId,
    /// Its wrap key's public half.
    pub wrap_key: [u8; 32],
    /// Its display name.
    pub name: String,
    /// When it founded the group (unix ms).
    pub at_ms: u64,
}

/// An invite this device is waiting to be admitted with (the joiner's side): items of its
/// invite mailbox go to `items`.
pub struct InviteWatch {
    /// The invite mailbox.
    pub mailbox: MailboxId,
    /// Its signing seed (join proofs).
    pub seed: MailboxSeed,
    /// The relays to meet on.
    pub relays: Vec<RelayAddr>,
    /// The sealed join request to post, `(blob_id, bytes)`, if any (a recovering device
    /// only reads).
    pub request: Option<(BlobId, Bytes)>,
    /// Where the mailbox's items go.
    pub items: tokio::sync::mpsc::Sender<Vec<Item>>,
    /// The group whose admission tokens the Joins carry (a relay that admits by token
    /// creates the mailbox only for a holder), if this device is in one.
    pub admission_group: Option<GroupId>,
}

/// A recovery phrase's entry is on the roster (durable here).
#[derive(Debug)]
pub struct RecoveryAdded {
    /// The id of the record carrying the entry's `Add` (wait for its ack).
    pub add: BlobId,
    /// Fires once a relay acked the first snapshot in the phrase's mailbox.
    pub snapshot_acked: tokio::sync::oneshot::Receiver<()>,
}

/// How often a long-running member posts a fresh snapshot in each recovery mailbox it keeps
/// (well inside the relays' default retention of 7 days).
pub const RECOVERY_REFRESH: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A group this device belongs to.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// Human label.
    pub name: String,
    /// The group secret (derived from the passphrase for passphrase groups).
    #[serde(with = "serde_bytes")]
    pub secret: [u8; 32],
    /// Current key epoch.
    pub epoch: u32,
    /// Relay addresses, text form.
    pub relays: Vec<String>,
    /// For passphrase groups: the Argon2id salt (invites carry it instead of the secret).
    #[serde(default, with = "serde_bytes")]
    pub passphrase_salt: Option<Vec<u8>>,
    /// Admission tokens by relay id (hex), sent with this device's Joins so a relay in
    /// `token` mode lets it create the group's mailbox. Secrets, like `secret`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub admissions: std::collections::BTreeMap<String, String>,
    /// The rekey operation that began the current epoch (empty for epoch 0).
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Vec::is_empty")]
    pub origin: Vec<u8>,
    /// Epochs this device left for a later one: their mailboxes are still read (records
    /// written there before the writers switched) until [`PastEpoch::read_until_ms`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub past: Vec<PastEpoch>,
    /// A member removed this device: the group is kept (its roster, for `devices`), never
    /// synced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
}

/// An epoch a group's device has left.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PastEpoch {
    /// Its number.
    pub epoch: u32,
    /// The rekey that began it (empty for epoch 0).
    #[serde(default, with = "serde_bytes")]
    pub origin: Vec<u8>,
    /// Its secret.
    #[serde(with = "serde_bytes")]
    pub secret: [u8; 32],
    /// Its mailbox is read until then (unix ms): relays keep records at most that long.
    pub read_until_ms: u64,
}

impl std::fmt::Debug for PastEpoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PastEpoch")
            .field("epoch", &self.epoch)
            .field("read_until_ms", &self.read_until_ms)
            .finish_non_exhaustive()
    }
}

impl Drop for PastEpoch {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
    }
}

impl std::fmt::Debug for GroupRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupRecord")
            .field("name", &self.name)
            .field("epoch", &self.epoch)
            .field("relays", &self.relays)
            .finish_non_exhaustive()
    }
}

impl Drop for GroupRecord {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
    }
}

/// What the flusher made durable so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Durable {
    /// Every ticket up to this one is on disk.
    pub through: u64,
    /// A flush failed (the store's error): nothing after it is known to be on disk, and the store
    /// refuses to say otherwise from then on.
    pub error: Option<String>,
}

/// What a record carries, as far as the sync layer cares. Unknown kinds still open: apps and
/// later versions define their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RecordKind(pub u16);

impl RecordKind {
    /// Application data: the payload is the app's bytes.
    pub const APP: RecordKind = RecordKind(0);
    /// A reference to large content stored over iroh-blobs.
    pub const CONTENT_REF: RecordKind = RecordKind(1);
    /// A roster operation of the group (issue 14): the client's own, never handed to the app.
    pub const ROSTER: RecordKind = RecordKind(0x100);

    /// Kinds `0x100..0x200` are the client's own (the roster): taken by the client, never
    /// delivered to the app as `Received`.
    pub fn is_system(self) -> bool {
        (0x100..0x200).contains(&self.0)
    }
}

/// A record after opening: who wrote it, where it sits in the sender's sequence, what it says.
#[derive(Clone, PartialEq, Eq)]
pub struct OpenedRecord {
    /// The device that wrote and signed it.
    pub sender: DeviceId,
    /// The sender's sequence number (1, 2, 3, ... per sender and group).
    pub seq: u64,
    /// Hybrid logical clock timestamp of the write.
    pub hlc: u64,
    /// What the payload is.
    pub kind: RecordKind,
    /// The app's bytes.
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for OpenedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedRecord")
            .field("sender", &self.sender)
            .field("seq", &self.seq)
            .field("hlc", &self.hlc)
            .field("kind", &self.kind)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Why an envelope could not be opened. Any of these means: do not hand it to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The bytes are not an envelope of a known format.
    #[error("not an envelope of a known format")]
    Malformed,
    /// The envelope was sealed for another epoch than the keys given.
    #[error("envelope is for epoch {0}, keys are for another")]
    WrongEpoch(Epoch),
    /// `BLAKE3(envelope)` is not the blob id it came with.
    #[error("blob id does not match the envelope")]
    BlobIdMismatch,
    /// Authentication failed: tampered, truncated, wrong key or wrong mailbox.
    #[error("envelope failed authentication")]
    Undecryptable,
    /// Authenticated, but the record inside is malformed (a buggy or hostile group member).
    #[error("record inside the envelope is malformed")]
    BadRecord,
    /// The sender's signature does not verify.
    #[error("record signature does not verify")]
    BadSignature,
    /// Opened for a reader that wrote it (`open_unless_own`): this device's own record, served
    /// back by a relay. It is dropped, so its signature is not checked: a forged one would be
    /// dropped all the same, and an own record's check was a third of a big batch's work.
    #[error("a record of this device")]
    Own,
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
    /// The Encryptor holds no keys for the record's group.
    #[error("no keys for group {0}")]
    NoKeys(GroupId),
}

/// A sealed record ready to push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// `BLAKE3(envelope)`.
    pub blob_id: BlobId,
    /// The envelope bytes.
    pub envelope: Vec<u8>,
}

/// A group's epoch secret and its epoch, as plain bytes: what the Encryptor derives the
/// epoch's keys from. Zeroized on drop; `Debug` never shows it.
#[derive(Clone)]
pub struct EpochSecret {
    /// The epoch.
    pub epoch: Epoch,
    /// The epoch secret (for epoch 0, the group secret).
    pub secret: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for EpochSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EpochSecret({:?}, [redacted])", self.epoch)
    }
}

/// The seed of an epoch's mailbox signing key, as plain bytes: what a RelayConnection needs to
/// prove membership to relays (`Join`). It opens nothing: the content key is not derived from
/// it, so a connection never holds what decrypts records. Zeroized on drop.
#[derive(Clone)]
pub struct MailboxSeed(pub Zeroizing<[u8; 32]>);

impl fmt::Debug for MailboxSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MailboxSeed([redacted])")
    }
}

/// Messages of the Encryptor.
pub enum EncryptorMsg {
    /// Keys of a group (added or replaced).
    SetGroup {
        /// The group.
        group: GroupId,
        /// Its current epoch secret.
        keys: EpochSecret,
    },
    /// Seal payloads as this device's records; answers one result per record, in order.
    SealMany {
        /// The records (shared: the coordinator keeps them until they are sealed, so a batch
        /// an Encryptor died with is sealed again by its successor).
        records: Arc<Vec<ToSeal>>,
        /// The sealed envelopes.
        reply: RpcReplyPort<Vec<Result<Sealed, SealError>>>,
    },
    /// Move this device's own records to the group's current epoch: each is opened with
    /// the keys of the first of `from` it opens under and, unless it is one of the client's
    /// own kinds (a roster operation stays in the epoch it was written in), sealed again
    /// under the group's keys with its seq, timestamp, kind and payload. One answer per
    /// envelope, in order.
    Reseal {
        /// The group (its keys seal).
        group: GroupId,
        /// The epoch streams (keyed as in `SetGroup`) whose keys may open them.
        from: Vec<GroupId>,
        /// The envelopes.
        envelopes: Vec<Vec<u8>>,
        /// The new envelopes.
        reply: RpcReplyPort<Vec<Result<Resealed, SealError>>>,
    },
    /// Open received envelopes; answers one result per envelope, in order.
    OpenMany {
        /// The envelopes.
        envelopes: Vec<ToOpen>,
        /// The records, or why each does not open.
        reply: RpcReplyPort<Vec<Result<OpenedRecord, OpenError>>>,
    },
}

/// One of a device's own records after `EncryptorMsg::Reseal`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resealed {
    /// Sealed again under the group's current epoch.
    Moved(Sealed),
    /// One of the client's own kinds: it stays in the epoch it was written in, whose stream
    /// (as given in `from`) opened it.
    Kept(GroupId),
}

/// A record to seal.
#[derive(Clone)]
pub struct ToSeal {
    /// The group.
    pub group: GroupId,
    /// This device's seq in the group.
    pub seq: u64,
    /// HLC timestamp.
    pub hlc: u64,
    /// What the payload is.
    pub kind: RecordKind,
    /// The record's bytes.
    pub payload: Vec<u8>,
}

/// An envelope to open.
pub struct ToOpen {
    /// The group.
    pub group: GroupId,
    /// The id it was served under.
    pub blob_id: BlobId,
    /// The envelope.
    pub envelope: bytes::Bytes,
}

/// A group this relay serves, as the connection needs it.
#[derive(Clone)]
pub struct ConnGroup {
    /// The group.
    pub group: GroupId,
    /// Its mailbox id (the epoch's).
    pub mailbox: MailboxId,
    /// The epoch's mailbox signing seed: join proofs are signed with it.
    pub mailbox_seed: MailboxSeed,
    /// Items of the group already received from this relay.
    pub cursor: u64,
    /// This relay's admission token for the group, sent with every Join (a relay in `token`
    /// mode needs it to create the mailbox; others ignore it).
    pub admission: Option<AdmissionText>,
    /// Subscribed even by a client that does not receive records (an invite mailbox: its
    /// device admits or is being admitted there).
    pub always_receive: bool,
}

/// What a connection tells the coordinator.
#[derive(Debug)]
pub enum RelayEvent {
    /// Connected and hello'd.
    Up {
        /// The relay.
        relay: DeviceId,
    },
    /// The connection was lost or could not be made.
    Down {
        /// The relay.
        relay: DeviceId,
        /// Why.
        reason: String,
    },
    /// A group was joined on this connection: unacked pushes may be (re)sent.
    Joined {
        /// The relay.
        relay: DeviceId,
        /// The group.
        group: GroupId,
    },
    /// A push is durable on the relay.
    Acked {
        /// The relay.
        relay: DeviceId,
        /// The group.
        group: GroupId,
        /// Own seq of the push.
        seq: u64,
    },
    /// The relay refused a push for now.
    PushRefused {
        /// The relay.
        relay: DeviceId,
        /// The group.
        group: GroupId,
        /// Own seq of the push.
        seq: u64,
        /// The code.
        code: ErrorCode,
        /// The relay's hint.
        retry_after_ms: Option<u64>,
    },
    /// Items served by the relay; everything up to `upto` has now been received from it.
    Items {
        /// The relay.
        relay: DeviceId,
        /// The group.
        group: GroupId,
        /// The mailbox they were read from (a group moves to a new epoch's mailbox).
        mailbox: MailboxId,
        /// The items, as served.
        items: Vec<Item>,
        /// The relay's cursor after these items.
        upto: u64,
    },
}

/// Messages of a RelayConnection.
pub enum RelayConnMsg {
    /// From the LinkReader.
    Link(LinkEvent),
    /// Dial now.
    ConnectDue,
    /// A dial finished.
    Connected {
        /// Which dial.
        generation: u64,
        /// Frames to the relay.
        sender: LinkSender,
        /// Frames from the relay.
        receiver: LinkReceiver,
        /// The join nonce of this connection.
        nonce: [u8; 32],
        /// The relay's limits.
        limits: Limits,
    },
    /// A dial failed.
    ConnectFailed {
        /// Which dial.
        generation: u64,
        /// Why.
        reason: String,
        /// The relay's hint, if it refused.
        retry_after: Option<Duration>,
    },
    /// The groups this relay serves (replaces the previous set).
    SetGroups(Vec<ConnGroup>),
    /// The coordinator's answer to `Joined`: every push of the group this relay has not
    /// acked, in push order. Pushes are accepted for the group only after it, so they reach
    /// the relay in push order even across reconnects.
    Resend {
        /// The group.
        group: GroupId,
        /// `(seq, blob_id, envelope)` in push order.
        entries: Vec<(u64, BlobId, Bytes)>,
    },
    /// Send a push (dropped until the group's `Resend` arrived: the coordinator resends).
    Push {
        /// The group.
        group: GroupId,
        /// Own seq.
        seq: u64,
        /// Its blob id.
        blob_id: BlobId,
        /// The envelope.
        ciphertext: Bytes,
    },
    /// Pull the group to the relay's end; answer when done.
    SyncNow {
        /// The group.
        group: GroupId,
        /// Done, or why not.
        reply: RpcReplyPort<Result<(), SyncError>>,
    },
    /// Keep-alive tick.
    PingDue,
    /// Send a request again that the relay refused for a moment (`retry_after_ms`).
    RetryDue {
        /// The connection it was refused on (a newer one joins, subscribes and pulls anew).
        generation: u64,
        /// The group.
        group: GroupId,
        /// Which request.
        request: Retry,
    },
    /// The app is not keeping up: forget items after `rewind_to` (they are fetched again)
    /// and take no more of the group until `Resume`.
    Pause {
        /// The group.
        group: GroupId,
        /// The persisted cursor.
        rewind_to: u64,
    },
    /// Take items of the group again, catching up from the cursor.
    Resume {
        /// The group.
        group: GroupId,
    },
    /// The coordinator handed the group's items up to this cursor to the app: pulls parked
    /// at [`PULL_AHEAD_ITEMS_MAX`] go on.
    Delivered {
        /// The group.
        group: GroupId,
        /// This relay's cursor, delivered.
        upto: u64,
    },
}

/// Why a relay could not be pulled to its end (`SyncNow`). Never carries keys or payloads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// This relay does not serve the group.
    #[error("group not served by this relay")]
    NotServed,
    /// The relay could not be reached.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The connection was lost before the pull finished.
    #[error("connection lost: {0}")]
    Lost(String),
    /// The relay refused the pull.
    #[error("pull refused: {}", .0.as_str())]
    Refused(ErrorCode),
}

/// A request of a group that a relay may refuse for a moment and that is sent again after its
/// hint: without it, a `Join` refused by the relay's frame rate limit left the group unjoined
/// on this connection for good (no pushes, no catch-up) until the link dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// `Join`.
    Join,
    /// `Subscribe`.
    Subscribe,
    /// `Pull`.
    Pull,
}

impl From<LinkEvent> for RelayConnMsg {
    fn from(event: LinkEvent) -> Self {
        RelayConnMsg::Link(event)
    }
}

/// Messages of the coordinator.
pub enum CoordMsg {
    /// From a RelayConnection.
    Relay(RelayEvent),
    /// Seal and queue pushes durably, in order; answers `(seq, blob_id)` of each once all
    /// are durable.
    Enqueue {
        /// The group.
        group: GroupId,
        /// What they are (`APP` for the app's records).
        kind: RecordKind,
        /// The records.
        payloads: Vec<Vec<u8>>,
        /// The queued pushes.
        reply: RpcReplyPort<Result<Vec<(u64, BlobId)>, ClientError>>,
    },
    /// The Encryptor sealed a batch (`records` and `results` in the same order).
    Sealed {
        /// `(group, seq, hlc)` of each record.
        records: Vec<(GroupId, u64, u64)>,
        /// Each record's envelope (fewer than `records` if the Encryptor stopped).
        results: Vec<Result<Sealed, SealError>>,
        /// Who waits for them, in order, with how many records each.
        waiters: Vec<SealWaiter>,
    },
    /// The Encryptor died with a batch to seal: it is sealed again once it is restarted.
    SealFailed {
        /// The batch's records.
        records: Arc<Vec<ToSeal>>,
        /// Who waits for them.
        waiters: Vec<SealWaiter>,
    },
    /// The Encryptor died with received items to open: they are opened again once it is
    /// restarted (marking them undecryptable would skip them for good).
    OpenFailed {
        /// The relays' batches.
        batches: Vec<ToOpenBatch>,
    },
    /// The Encryptor was restarted (ClientRoot): the coordinator hands it every group's keys
    /// again, from the local store, and the batches it died with.
    EncryptorRestarted(ractor::ActorRef<EncryptorMsg>),
    /// The Encryptor opened a batch of received items (`results` in the batches' order).
    Opened {
        /// The relays' batches.
        batches: Vec<ToOpenBatch>,
        /// Each item's record.
        results: Vec<Result<OpenedRecord, OpenError>>,
    },
    /// The store's group commit made more durable.
    Durable(Durable),
    /// Answer once `blob_id` is acked by enough relays.
    WaitAcked {
        /// The group.
        group: GroupId,
        /// The push.
        blob_id: BlobId,
        /// The receipt.
        reply: RpcReplyPort<Receipt>,
    },
    /// Acks of a push so far: `(acked_by, needed)`.
    AckState {
        /// The group.
        group: GroupId,
        /// The push.
        blob_id: BlobId,
        /// Relays that acked and the quorum.
        reply: RpcReplyPort<(Vec<DeviceId>, usize)>,
    },
    /// Pull every relay of the group to its end.
    SyncNow {
        /// The group.
        group: GroupId,
        /// What was reached.
        reply: RpcReplyPort<SyncReport>,
    },
    /// Answers after every message sent before it was handled.
    Barrier {
        /// Done.
        reply: RpcReplyPort<()>,
    },
    /// Status of every group.
    Status {
        /// The status.
        reply: RpcReplyPort<Status>,
    },
    /// Add (or replace) a group.
    PutGroup {
        /// Its id.
        id: GroupId,
        /// Its record.
        record: GroupRecord,
        /// A new group's founder (this device, or the founder an admission named): the
        /// group keeps a roster from now on.
        founder: Option<Founder>,
        /// Done.
        reply: RpcReplyPort<Result<(), ClientError>>,
    },
    /// A group's record.
    GetGroup {
        /// Its id.
        id: GroupId,
        /// The record.
        reply: RpcReplyPort<Option<GroupRecord>>,
    },
    /// Resend refused pushes.
    RetryDue,
    /// Start the connection of a relay again after its restart delay.
    ConnRestartDue {
        /// The relay.
        relay: DeviceId,
    },
    /// The app's event channel has room again.
    EventRoom,
    /// The devices on a group's roster.
    Devices {
        /// The group.
        group: GroupId,
        /// Its devices.
        reply: RpcReplyPort<Result<Vec<DeviceInfo>, ClientError>>,
    },
    /// The keys to move content of `group`: of its current epoch, or of the epoch whose
    /// mailbox is `mailbox` (a file offered before a rekey).
    ContentAccess {
        /// The group.
        group: GroupId,
        /// The epoch's mailbox (`None`: the current one, where new files go).
        mailbox: Option<MailboxId>,
        /// The keys.
        reply: RpcReplyPort<Result<ContentAccess, ClientError>>,
    },
    /// Make an invite: a roster operation makes it known to every member (any may admit
    /// with it); this device serves its invite mailbox. Answers the invite secret.
    Invite {
        /// The group.
        group: GroupId,
        /// Past this time (unix ms) no member admits with it.
        expires_at_ms: u64,
        /// The invite secret to use (a pairing's), or `None` for a fresh random one.
        secret: Option<Zeroizing<[u8; 32]>>,
        /// The invite secret.
        reply: RpcReplyPort<Result<Zeroizing<[u8; 32]>, ClientError>>,
    },
    /// Post in a watched mailbox (again on every join, until it is unwatched).
    WatchPost {
        /// The mailbox.
        mailbox: MailboxId,
        /// What to post.
        bytes: Vec<u8>,
    },
    /// Meet members in an invite mailbox (the joiner's side) until `UnwatchInvite`.
    WatchInvite(InviteWatch),
    /// Tell `told` the device admitted once a relay acked an admission this device posted in
    /// the mailbox of one of its invites (at once if one was acked already): the joiner can
    /// read it there, and this device may stop. Dropped unanswered if this device does not
    /// (or no longer) serve that invite.
    AdmissionPosted {
        /// The invite mailbox.
        mailbox: MailboxId,
        /// Told.
        told: tokio::sync::oneshot::Sender<DeviceId>,
    },
    /// A group's roster changed: the invite mailboxes watched follow it.
    RosterChanged,
    /// An admission's `Add` was acked by the group's quorum a while ago: post it even if
    /// some relay has not acked (it is down, or refuses this device).
    AdmissionDue {
        /// The group.
        group: GroupId,
        /// The `Add`'s outbox seq.
        seq: u64,
    },
    /// Put a recovery phrase's entry on a group's roster (`entry`, its wrap key and its
    /// snapshot mailbox's secret) and keep the group's snapshot in that mailbox.
    AddRecovery {
        /// The group.
        group: GroupId,
        /// The entry's id (its Ed25519 key).
        entry: DeviceId,
        /// Its X25519 key.
        wrap_key: [u8; 32],
        /// The snapshot mailbox's secret.
        mailbox_secret: Zeroizing<[u8; 32]>,
        /// Answered once the entry's `Add` is durable here.
        reply: RpcReplyPort<Result<RecoveryAdded, ClientError>>,
    },
    /// Write a roster operation of this device (CBOR of an operation whose author is this
    /// device): a recovered device's self-add. Answered once it is durable here.
    WriteRosterOp {
        /// The group.
        group: GroupId,
        /// The operation's CBOR.
        op: Vec<u8>,
        /// Its outbox `(seq, blob_id)`.
        reply: RpcReplyPort<Result<Vec<(u64, BlobId)>, ClientError>>,
    },
    /// Time to post fresh snapshots in the recovery mailboxes this device keeps (the
    /// relays' retention must not drop them).
    RecoveryRefreshDue,
    /// Remove a device from a group's roster: re-key the group without it.
    RemoveDevice {
        /// The group.
        group: GroupId,
        /// The device.
        device: DeviceId,
        /// Answered once the rekey is durable here (the switch to the new epoch follows).
        reply: RpcReplyPort<Result<(), ClientError>>,
    },
    /// The Encryptor moved a group's queued records to its new epoch (`results` as
    /// `EncryptorMsg::Reseal` answers; `None`: it died first).
    Resealed {
        /// The group.
        group: GroupId,
        /// The outbox seqs of the envelopes, in order.
        seqs: Vec<u64>,
        /// The new envelopes.
        results: Option<Vec<Result<Resealed, SealError>>>,
    },
    /// Stop meeting in an invite mailbox, once a relay acked what this device posted there
    /// (at most [`UNWATCH_GRACE`] later).
    UnwatchInvite {
        /// The invite mailbox.
        mailbox: MailboxId,
    },
    /// The grace of an `UnwatchInvite` is over: the watch it closed ends now.
    UnwatchDue {
        /// The invite mailbox.
        mailbox: MailboxId,
        /// Which watch of the mailbox (a later one of the same mailbox stays).
        serial: u64,
    },
}

/// How long an unwatched invite mailbox stays joined for a relay to ack this device's last
/// post there (a pairing's last confirmation, posted just before its call returns).
pub const UNWATCH_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// An app call waiting for its records to be sealed and durable.
pub struct SealWaiter {
    /// Records of the call.
    pub count: usize,
    /// The caller.
    pub reply: RpcReplyPort<Result<Vec<(u64, BlobId)>, ClientError>>,
}

/// A relay's batch of items before opening.
pub struct ToOpenBatch {
    /// The relay that served them.
    pub relay: DeviceId,
    /// The group.
    pub group: GroupId,
    /// The mailbox they were read from (the group's current epoch's, or a past one's):
    /// its keys open them and its cursor moves.
    pub mailbox: MailboxId,
    /// The items, as served.
    pub items: Vec<Item>,
    /// The relay's cursor after them.
    pub upto: u64,
}
