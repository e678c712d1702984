//! Messages of the relay's actors (DESIGN.md §2): BlobStore, GroupRouter.
//!
//! Push path: `Session ─Push→ GroupRouter ─Append→ BlobStore`; the store group-commits,
//! then answers the router with one `Stored` per batch, in order; the router acks the pushing
//! sessions and fans the items out to subscribers. Pull path: `Session ─Read→ BlobStore`.

use crate::ids::{BlobId, Cursor, MailboxId};
use crate::link::LinkSender;
use crate::wire::{ErrorCode, Item};
use bytes::Bytes;
use ractor::{ActorRef, RpcReplyPort};

/// One push queued for a group commit.
#[derive(Clone, PartialEq, Eq)]
pub struct AppendRequest {
    /// Caller-chosen id matching the answer in [`GroupRouterMsg::Stored`] to this request.
    pub token: u64,
    /// Target mailbox.
    pub mailbox: MailboxId,
    /// `BLAKE3(ciphertext)`, already checked by the session.
    pub blob_id: BlobId,
    /// The sealed record.
    pub ciphertext: Bytes,
    /// Requested TTL; `None` = the store's default; capped by the store's maximum.
    pub ttl_secs: Option<u32>,
}

impl std::fmt::Debug for AppendRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendRequest")
            .field("token", &self.token)
            .field("mailbox", &self.mailbox)
            .field("blob_id", &self.blob_id)
            .field("ciphertext_len", &self.ciphertext.len())
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

/// What happened to one [`AppendRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Durable.
    Stored {
        /// The item's cursor.
        cursor: Cursor,
        /// Already stored before: `cursor` is the original one and nothing was written.
        duplicate: bool,
        /// When it was first stored, unix milliseconds.
        stored_at_ms: u64,
    },
    /// Not stored.
    Rejected(StoreError),
}

/// Why the store refused or failed a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The mailbox would exceed its quota.
    #[error("mailbox quota of {quota_bytes} bytes exceeded")]
    QuotaExceeded {
        /// The quota.
        quota_bytes: u64,
    },
    /// The blob is over the size limit.
    #[error("blob of {bytes} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Blob size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The store cannot serve right now (I/O error, restarting); retry later. The text goes
    /// to the client: it never carries an OS error (those go to the relay's log).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The mailbox holds as many items as one mailbox may.
    #[error("mailbox item limit of {items_max} reached")]
    MailboxItemsExceeded {
        /// The limit.
        items_max: u64,
    },
    /// The relay's storage is full: its byte or item budget is spent, its disk is below the
    /// free-space floor, or the disk refused a write (`ENOSPC`, `EDQUOT`). Space comes back
    /// when items expire and the sweeper runs.
    #[error("relay storage full")]
    StorageFull {
        /// When to try again: about when the next sweep may have freed space.
        retry_after_ms: u64,
    },
}

/// Retry hint of a refusal that only expiry can lift (a mailbox at its quota or item cap):
/// the relay's default sweep interval, when expired items give their space back. Clients
/// cap what they wait anyway.
pub const QUOTA_RETRY_AFTER_MS: u64 = 60_000;
/// Retry hint of a transient failure (a write failed, the store is restarting).
pub const UNAVAILABLE_RETRY_AFTER_MS: u64 = 1_000;

impl StoreError {
    /// The wire error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::QuotaExceeded { .. }
            | StoreError::MailboxItemsExceeded { .. }
            | StoreError::StorageFull { .. } => ErrorCode::QuotaExceeded,
            StoreError::TooLarge { .. } => ErrorCode::TooLarge,
            StoreError::Unavailable(_) => ErrorCode::Unavailable,
        }
    }

    /// The `retry_after_ms` of the error frame: every refusal that may succeed later
    /// without change says when; `None` only for a request that never will (too large).
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            StoreError::StorageFull { retry_after_ms } => Some(*retry_after_ms),
            StoreError::QuotaExceeded { .. } | StoreError::MailboxItemsExceeded { .. } => {
                Some(QUOTA_RETRY_AFTER_MS)
            }
            StoreError::Unavailable(_) => Some(UNAVAILABLE_RETRY_AFTER_MS),
            StoreError::TooLarge { .. } => None,
        }
    }
}

/// One page of a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Items in cursor order, none expired.
    pub items: Vec<Item>,
    /// Pass as `after` for the next page.
    pub next: Cursor,
    /// Whether items exist after `next`.
    pub has_more: bool,
}

/// Totals for metrics and readiness.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Mailboxes holding at least one item.
    pub mailboxes: u64,
    /// Items stored.
    pub items: u64,
    /// Ciphertext bytes stored.
    pub bytes: u64,
    /// Group commits (one flush each) since the store started.
    pub commits: u64,
    /// Mailbox metas in memory (only mailboxes that hold or held items).
    pub cached_metas: u64,
    /// Segment files of the log.
    pub segments: u64,
    /// Bytes of the log on disk.
    pub disk_bytes: u64,
    /// Bytes charged against the relay's byte budget: ciphertext plus a per-item charge.
    pub charged_bytes: u64,
    /// Index entries charged against the relay's item budget: items plus mailboxes known.
    pub index_entries: u64,
    /// Free bytes of the store's filesystem at the last check (`u64::MAX` when unknown).
    pub free_disk_bytes: u64,
    /// Whether the store refuses pushes for lack of space (budget, disk floor, disk full).
    pub is_full: bool,
    /// Damaged records found (at open, and by reads since): never served.
    pub damaged_records: u64,
}

/// Result of one sweep slice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Items evicted in this slice.
    pub evicted: u64,
    /// Whether more expired items remain (sweep again soon).
    pub more: bool,
}

/// Messages of the BlobStore actor.
#[derive(Debug)]
pub enum BlobStoreMsg {
    /// Queue pushes for the next group commit. Once the batch is durable the store sends
    /// `reply_to` one [`GroupRouterMsg::Stored`] with the outcomes, in request order.
    Append {
        /// The pushes.
        requests: Vec<AppendRequest>,
        /// Who gets the outcomes.
        reply_to: ActorRef<GroupRouterMsg>,
    },
    /// Durable, unexpired items of `mailbox` with a cursor after `after`, at most `max_items`
    /// and `max_bytes` of ciphertext (at least one item when one exists).
    Read {
        /// Mailbox to read.
        mailbox: MailboxId,
        /// Exclusive lower bound.
        after: Cursor,
        /// Most items.
        max_items: u32,
        /// Most ciphertext bytes.
        max_bytes: u32,
        /// The page.
        reply: RpcReplyPort<Result<Page, StoreError>>,
    },
    /// The newest durable cursor of a mailbox (0 when it never held an item).
    GetLatest {
        /// The mailbox.
        mailbox: MailboxId,
        /// The cursor.
        reply: RpcReplyPort<Result<Cursor, StoreError>>,
    },
    /// Evict at most `max_items` expired items, oldest expiry first.
    Sweep {
        /// Bound of this slice, so a sweep never stalls pushes for long.
        max_items: u32,
        /// What was evicted.
        reply: RpcReplyPort<SweepReport>,
    },
    /// Totals.
    GetStats {
        /// The totals.
        reply: RpcReplyPort<StoreStats>,
    },
    /// Commit the pending batch (the store sends this to itself).
    CommitDue,
}

/// Messages of the CleanupSweeper, which evicts expired items in bounded slices.
#[derive(Debug)]
pub enum CleanupSweeperMsg {
    /// Sweep one slice now (sent on its interval, and again at once while more remain).
    SweepDue,
    /// Items evicted since start.
    GetEvicted {
        /// The count.
        reply: RpcReplyPort<u64>,
    },
}

/// Messages of the Infra supervisor, which owns the BlobStore and the CleanupSweeper.
#[derive(Debug)]
pub enum InfraMsg {
    /// Respawn the BlobStore after its backoff.
    StoreRestartDue,
    /// Respawn the sweeper after its backoff.
    SweeperRestartDue,
    /// Restarts of crashed children since start.
    GetRestarts {
        /// The count.
        reply: RpcReplyPort<u64>,
    },
    /// The BlobStore as a [`SharedRef`](crate::shared_ref::SharedRef): Infra swaps the ref
    /// inside after a restart, so holders always reach the live store.
    GetStore {
        /// The shared store ref.
        reply: RpcReplyPort<crate::shared_ref::SharedRef<BlobStoreMsg>>,
    },
}

/// Identifies one subscriber (one session) to a router.
pub type SubscriberId = u64;

/// A push acknowledged as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushAcked {
    /// The item's cursor.
    pub cursor: Cursor,
    /// Whether it was stored before.
    pub duplicate: bool,
}

/// Messages of a GroupRouter (one per active mailbox).
#[derive(Debug)]
pub enum GroupRouterMsg {
    /// Store a push; `reply` gets the ack once it is durable.
    Push {
        /// `BLAKE3(ciphertext)`.
        blob_id: BlobId,
        /// The sealed record.
        ciphertext: Bytes,
        /// Requested TTL.
        ttl_secs: Option<u32>,
        /// The ack or the reason it failed.
        reply: RpcReplyPort<Result<PushAcked, StoreError>>,
    },
    /// Outcomes of one group commit, from the BlobStore, in request order.
    Stored {
        /// `(token, outcome)` per request.
        results: Vec<(u64, StoreOutcome)>,
    },
    /// Deliver new items live to `sink` from now on.
    Subscribe {
        /// Who subscribes.
        subscriber: SubscriberId,
        /// The subscriber's link; the router only ever `try_send`s on it.
        sink: LinkSender,
        /// The newest durable cursor at subscription time.
        reply: RpcReplyPort<Cursor>,
    },
    /// Stop live delivery to `subscriber`.
    Unsubscribe {
        /// Who unsubscribes.
        subscriber: SubscriberId,
    },
    /// Retry notifying subscribers whose queue was full.
    NotifyDue,
    /// Check whether the router has been idle long enough to stop.
    IdleCheckDue,
    /// Check whether the BlobStore was replaced (restarted) while pushes were pending, and
    /// if so send them again (appends are idempotent on blob id, so a resend is safe).
    StoreCheckDue,
}

/// Messages of the RoutersSupervisor, which owns one GroupRouter per active mailbox.
#[derive(Debug)]
pub enum RoutersMsg {
    /// The router of `mailbox`, spawned on first use.
    GetRouter {
        /// The mailbox.
        mailbox: MailboxId,
        /// The router, or `Unavailable` while it is backing off after crashes.
        reply: RpcReplyPort<Result<ActorRef<GroupRouterMsg>, StoreError>>,
    },
    /// Respawn the router of `mailbox` after its backoff.
    RestartDue {
        /// The mailbox.
        mailbox: MailboxId,
    },
    /// Restarts of crashed routers since start.
    GetRestarts {
        /// The count.
        reply: RpcReplyPort<u64>,
    },
}

/// Messages of a Session (one per connection).
#[derive(Debug)]
pub enum SessionMsg {
    /// A frame body arrived from the link (sent by the LinkReader). The permit is one of the
    /// connection's in-flight slots; it is released when the request is answered.
    FrameReceived {
        /// The CBOR frame body.
        body: Bytes,
        /// The in-flight slot (and bytes) this request holds.
        permit: crate::link::FramePermit,
    },
    /// The link ended: cleanly (`None`) or with an error.
    LinkClosed {
        /// Why, if it broke.
        error: Option<crate::link::LinkError>,
    },
    /// Check for an idle connection.
    IdleCheckDue,
    /// The relay is shutting down: say `Bye` and stop.
    Shutdown,
}

impl From<crate::link::LinkEvent> for SessionMsg {
    fn from(event: crate::link::LinkEvent) -> Self {
        match event {
            crate::link::LinkEvent::Frame { body, permit } => {
                SessionMsg::FrameReceived { body, permit }
            }
            crate::link::LinkEvent::Closed { error } => SessionMsg::LinkClosed { error },
        }
    }
}

/// Messages of a LinkReader (the actor that reads one link for its owner).
#[derive(Debug)]
pub enum LinkReaderMsg {
    /// Read the next frame (the reader sends this to itself after each frame).
    ReadNext,
}

/// Messages of the SessionsSupervisor, which owns one Session per connection.
#[derive(Debug)]
pub enum SessionsMsg {
    /// The listener accepted a link whose peer the transport authenticated.
    Accepted {
        /// The peer.
        peer: crate::ids::DeviceId,
        /// The peer's network address, when known (per-IP limits).
        remote_addr: Option<std::net::SocketAddr>,
        /// Frames towards the peer.
        sender: LinkSender,
        /// Frames from the peer.
        receiver: crate::link::LinkReceiver,
    },
    /// Stop accepting, say `Bye{shutdown}` to every session and answer once all have ended
    /// (or `grace` passed).
    Shutdown {
        /// Longest wait for the sessions to end.
        grace: std::time::Duration,
        /// Sessions still open when the wait ended (0 = all ended).
        reply: RpcReplyPort<usize>,
    },
    /// Sessions open now.
    GetSessions {
        /// The count.
        reply: RpcReplyPort<usize>,
    },
    /// Periodic housekeeping: forget idle rate-limit keys.
    HousekeepingDue,
    /// Re-check whether a shutdown in progress is complete.
    ShutdownCheckDue,
}

/// Messages of the Listener, which accepts links and hands them to the SessionsSupervisor.
#[derive(Debug)]
pub enum ListenerMsg {
    /// Links accepted since start.
    GetAccepted {
        /// The count.
        reply: RpcReplyPort<u64>,
    },
}

/// What a relay grants a device for one sealed file (answer to [`ContentMsg::Offer`] and
/// [`ContentMsg::Open`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentGrant {
    /// Bytes of the sealed file.
    pub size: u64,
    /// Bytes of its verified prefix held for the mailbox (`size` once complete).
    pub have: u64,
}

/// Why the content service refused an offer or an open; each maps to an error frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContentRefusal {
    /// The mailbox's content quota or the relay's content budget would be exceeded.
    #[error("{0}")]
    Quota(String),
    /// The file is larger than the relay takes.
    #[error("content of {size} bytes exceeds the relay's limit of {max}")]
    TooLarge {
        /// Offered size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Not held for this mailbox (never offered, expired, or not completely uploaded).
    #[error("no such content in this mailbox")]
    NotFound,
    /// The offer contradicts what the relay holds (another size for the same hash).
    #[error("{0}")]
    BadRequest(String),
    /// The content store failed.
    #[error("content store: {0}")]
    Unavailable(String),
}

impl ContentRefusal {
    /// A short stable name, for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ContentRefusal::Quota(_) => "quota",
            ContentRefusal::TooLarge { .. } => "too_large",
            ContentRefusal::NotFound => "not_found",
            ContentRefusal::BadRequest(_) => "bad_request",
            ContentRefusal::Unavailable(_) => "unavailable",
        }
    }

    /// The error code of the frame that answers the request.
    pub fn code(&self) -> ErrorCode {
        match self {
            ContentRefusal::Quota(_) => ErrorCode::QuotaExceeded,
            ContentRefusal::TooLarge { .. } => ErrorCode::TooLarge,
            ContentRefusal::NotFound => ErrorCode::NotFound,
            ContentRefusal::BadRequest(_) => ErrorCode::BadRequest,
            ContentRefusal::Unavailable(_) => ErrorCode::Unavailable,
        }
    }
}

/// Messages of the ContentService, which keeps sealed files in an iroh-blobs store and
/// decides who may push or fetch them over iroh-blobs.
#[derive(Debug)]
pub enum ContentMsg {
    /// A device on a connection that joined `mailbox` offers (or announces again) a file.
    Offer {
        /// The device (the endpoint that will push).
        device: crate::DeviceId,
        /// The joined mailbox.
        mailbox: MailboxId,
        /// BLAKE3 of the sealed file.
        hash: BlobId,
        /// Its size in bytes.
        size: u64,
        /// Requested TTL (`None` = the relay's default; capped).
        ttl_secs: Option<u32>,
        /// The grant.
        reply: RpcReplyPort<Result<ContentGrant, ContentRefusal>>,
    },
    /// A device on a connection that joined `mailbox` wants to fetch a file.
    Open {
        /// The device (the endpoint that will fetch).
        device: crate::DeviceId,
        /// The joined mailbox.
        mailbox: MailboxId,
        /// BLAKE3 of the sealed file.
        hash: BlobId,
        /// The grant.
        reply: RpcReplyPort<Result<ContentGrant, ContentRefusal>>,
    },
    /// A granted push of `hash` by `device` finished (sent by the provider's event task).
    Pushed {
        /// The device.
        device: crate::DeviceId,
        /// The content.
        hash: BlobId,
    },
    /// Forget expired files and grants (sent on the sweep interval).
    SweepDue,
    /// Totals.
    GetStats {
        /// The totals.
        reply: RpcReplyPort<ContentStats>,
    },
}

/// What the content service holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContentStats {
    /// (mailbox, file) entries.
    pub entries: u64,
    /// Distinct files.
    pub files: u64,
    /// Bytes of distinct files (what the budget counts).
    pub bytes: u64,
}
