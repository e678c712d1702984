//! The client's public types: ids, events, receipts, status, errors.

use std::fmt;
use std::str::FromStr;
use zerok_messages::{BlobId, DeviceId, MailboxId, RelayAddr};

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
    type Err = zerok_messages::ids::ParseIdError;
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
    /// skip duplicates before opening; bounded by [`crate::seen::SEEN_IDS_MAX`].
    pub seen_ids: u64,
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
#[derive(Debug, thiserror::Error)]
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
    Store(String),
    /// No such group on this device.
    #[error("unknown group {0}")]
    UnknownGroup(GroupId),
    /// The invite token was refused.
    #[error("invite: {0}")]
    Invite(String),
    /// A passphrase is needed, or the one given was refused.
    #[error("passphrase: {0}")]
    Passphrase(String),
    /// Bad input from the app.
    #[error("{0}")]
    Invalid(String),
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
}
