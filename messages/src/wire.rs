//! Wire protocol version 1: every frame a client and a relay exchange (DESIGN.md §3).
//!
//! A frame is one CBOR value: a map with exactly one key, the frame's tag, whose value is a
//! map of named fields. Tags are short stable names; a tag is never reused for another
//! meaning, and a new frame gets a new tag. Byte strings (ids, ciphertext, nonces) are CBOR
//! byte strings. Optional fields may be absent. Decoding lives in [`crate::codec`].

use crate::ids::{BlobId, Cursor, DeviceId, MailboxId, MailboxKey, ReqId, Signature64};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// ALPN of protocol version 1 on iroh QUIC.
pub const ALPN: &[u8] = b"zerok/1";

/// Largest ciphertext a relay stores in one item: 1 MiB. Bigger content goes over
/// iroh-blobs in chunks, so records stay small and a relay's memory per item is bounded.
pub const BLOB_BYTES_MAX: usize = 1024 * 1024;

/// Largest encoded frame: one maximal blob plus 4 KiB for the frame's other fields.
/// Anything bigger is a protocol error and is refused before it is buffered.
pub const FRAME_BYTES_MAX: usize = BLOB_BYTES_MAX + 4 * 1024;

/// Requests one connection may have in flight before the relay stops reading from it.
/// 256 keeps a pipelining client busy over a 100 ms path at ~2,500 pushes/s while
/// bounding a connection's queued work to 256 frames.
pub const MAX_INFLIGHT_DEFAULT: u32 = 256;

/// A relay's limits, announced in [`Frame::Welcome`] so clients can stay inside them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest frame the relay accepts, in bytes.
    pub frame_bytes_max: u32,
    /// Largest ciphertext of one item, in bytes.
    pub blob_bytes_max: u32,
    /// Bytes one mailbox may hold on this relay.
    pub mailbox_quota_bytes: u64,
    /// TTL applied when a push names none.
    pub ttl_default_secs: u32,
    /// Largest TTL a push may ask for; larger values are capped to it.
    pub ttl_max_secs: u32,
    /// Requests a connection may have in flight.
    pub inflight_max: u32,
    /// Most items one pull page holds.
    pub pull_items_max: u32,
    /// Most ciphertext bytes one pull page holds beyond its first item (a page always
    /// carries at least one item, so it fits one frame whatever this is).
    #[serde(default = "pull_bytes_max_default")]
    pub pull_bytes_max: u32,
}

/// Default of [`Limits::pull_bytes_max`]: half a blob, so a full page plus item overheads
/// always fits in [`FRAME_BYTES_MAX`].
pub const PULL_BYTES_MAX_DEFAULT: u32 = 512 * 1024;

fn pull_bytes_max_default() -> u32 {
    PULL_BYTES_MAX_DEFAULT
}

/// Longest admission token a `Join` may carry, in characters: a token is ~200 characters;
/// the bound lets a relay refuse a padded one before parsing it.
pub const ADMISSION_CHARS_MAX: usize = 512;

/// An admission token as text (`zerok-relay admit` prints it). It is a secret: whoever holds
/// it may create mailboxes on the relay, so its `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AdmissionText(pub String);

impl std::fmt::Debug for AdmissionText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdmissionText(<{} chars>)", self.0.len())
    }
}

/// One item of a mailbox, as returned by a pull or a live delivery.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Position of the item in its mailbox on this relay.
    pub cursor: Cursor,
    /// `BLAKE3(ciphertext)`.
    pub blob_id: BlobId,
    /// The sealed record, opaque to the relay.
    pub ciphertext: Bytes,
    /// Relay wall time when the item became durable, unix milliseconds.
    pub stored_at_ms: u64,
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Item")
            .field("cursor", &self.cursor)
            .field("blob_id", &self.blob_id)
            .field("ciphertext_len", &self.ciphertext.len())
            .field("stored_at_ms", &self.stored_at_ms)
            .finish()
    }
}

/// Why an error frame was sent. Codes are stable strings on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame's tag or the requested version is not supported.
    Unsupported,
    /// The frame could not be decoded or its fields are invalid.
    BadRequest,
    /// The join proof is missing or invalid.
    Unauthorized,
    /// The request names a mailbox this connection has not joined.
    NotJoined,
    /// The blob or frame exceeds a limit.
    TooLarge,
    /// The mailbox is full.
    QuotaExceeded,
    /// Too many requests; retry after `retry_after_ms`.
    RateLimited,
    /// The relay cannot serve right now (shutting down, store restarting); retry later.
    Unavailable,
    /// A bug or storage failure on the relay.
    Internal,
    /// The content named is not held for this mailbox (never offered, expired, or not
    /// completely uploaded).
    NotFound,
    /// A code from a newer protocol revision that this build does not know.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The stable wire name of the code.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// Whether the same request may succeed later without change.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ErrorCode::RateLimited | ErrorCode::Unavailable)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a side closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ByeReason {
    /// The relay is shutting down; reconnect later or elsewhere.
    Shutdown,
    /// The connection was idle past the idle timeout.
    Idle,
    /// The client is done.
    ClientDone,
    /// The peer broke the protocol; the error frame before says how.
    ProtocolViolation,
    /// A reason from a newer revision.
    #[serde(other)]
    Unknown,
}

/// Every frame of protocol version 1. The serde tag of each variant is its stable wire tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Frame {
    /// c→r, first frame: the versions the client speaks.
    #[serde(rename = "hello")]
    Hello {
        /// Protocol versions the client supports, any order.
        versions: Vec<u16>,
        /// Free-form client name and version, for the relay's logs (at most 128 bytes).
        client_agent: String,
    },
    /// r→c, answer to `Hello`.
    #[serde(rename = "welcome")]
    Welcome {
        /// The version chosen for this connection.
        version: u16,
        /// The relay's endpoint id (its identity key).
        relay_id: DeviceId,
        /// Fresh random nonce that join proofs on this connection must sign.
        #[serde(with = "serde_bytes")]
        nonce: [u8; 32],
        /// The relay's limits.
        limits: Limits,
    },
    /// c→r: prove membership of the mailbox governed by `mailbox_key`.
    #[serde(rename = "join")]
    Join {
        /// Request id.
        req: ReqId,
        /// Public key of the mailbox; the mailbox id is its BLAKE3.
        mailbox_key: MailboxKey,
        /// Signature by the mailbox key over the join transcript (DESIGN.md §4).
        proof: Signature64,
        /// The relay's admission token, for a Join that creates the mailbox on a relay that
        /// admits by token; absent otherwise (and in frames of older clients).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        admission: Option<AdmissionText>,
    },
    /// r→c: the join proof was valid.
    #[serde(rename = "joined")]
    Joined {
        /// Request id of the `Join`.
        req: ReqId,
        /// The joined mailbox.
        mailbox: MailboxId,
        /// The newest cursor in the mailbox (0 when empty).
        latest: Cursor,
    },
    /// c→r: store a sealed record. Idempotent on (mailbox, blob_id).
    #[serde(rename = "push")]
    Push {
        /// Request id.
        req: ReqId,
        /// Target mailbox; must be joined on this connection.
        mailbox: MailboxId,
        /// `BLAKE3(ciphertext)`; the relay checks it.
        blob_id: BlobId,
        /// The sealed record.
        ciphertext: Bytes,
        /// Requested time to live; absent means the relay default; capped by the relay.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_secs: Option<u32>,
    },
    /// r→c: the push is durable.
    #[serde(rename = "push_ack")]
    PushAck {
        /// Request id of the `Push`.
        req: ReqId,
        /// The item's cursor in the mailbox.
        cursor: Cursor,
        /// True when the blob was already stored; `cursor` is then the original one.
        duplicate: bool,
    },
    /// c→r: read items after a cursor, paged by count and bytes.
    #[serde(rename = "pull")]
    Pull {
        /// Request id.
        req: ReqId,
        /// Mailbox to read; must be joined.
        mailbox: MailboxId,
        /// Return items with a cursor strictly greater than this.
        after: Cursor,
        /// Most items to return (capped by the relay).
        max_items: u32,
        /// Most ciphertext bytes to return (capped by the relay; at least one item is
        /// returned when one exists).
        max_bytes: u32,
    },
    /// r→c: one page of a pull.
    #[serde(rename = "pull_page")]
    PullPage {
        /// Request id of the `Pull`.
        req: ReqId,
        /// Items in cursor order.
        items: Vec<Item>,
        /// Cursor to pass as `after` for the next page.
        next: Cursor,
        /// Whether more items exist after `next`.
        has_more: bool,
    },
    /// c→r: deliver new items of a mailbox live, starting after `after`.
    #[serde(rename = "subscribe")]
    Subscribe {
        /// Request id.
        req: ReqId,
        /// Mailbox; must be joined.
        mailbox: MailboxId,
        /// Deliver items with a cursor greater than this.
        after: Cursor,
    },
    /// r→c: the subscription is active.
    #[serde(rename = "subscribed")]
    Subscribed {
        /// Request id of the `Subscribe`.
        req: ReqId,
        /// The mailbox.
        mailbox: MailboxId,
        /// Newest cursor at subscription time; items up to it are fetched with `Pull`.
        latest: Cursor,
    },
    /// c→r: stop live delivery for a mailbox.
    #[serde(rename = "unsubscribe")]
    Unsubscribe {
        /// Request id.
        req: ReqId,
        /// The mailbox.
        mailbox: MailboxId,
    },
    /// r→c: live delivery stopped.
    #[serde(rename = "unsubscribed")]
    Unsubscribed {
        /// Request id of the `Unsubscribe`.
        req: ReqId,
    },
    /// r→c: a new item of a subscribed mailbox.
    #[serde(rename = "deliver")]
    Deliver {
        /// The mailbox.
        mailbox: MailboxId,
        /// The item.
        item: Item,
    },
    /// r→c: the subscriber fell behind; pull up to `latest`.
    #[serde(rename = "notify")]
    Notify {
        /// The mailbox.
        mailbox: MailboxId,
        /// Newest cursor in the mailbox.
        latest: Cursor,
    },
    /// Either side: keep-alive.
    #[serde(rename = "ping")]
    Ping {
        /// Request id, echoed by `Pong`.
        req: ReqId,
    },
    /// Either side: answer to `Ping`.
    #[serde(rename = "pong")]
    Pong {
        /// Request id of the `Ping`.
        req: ReqId,
    },
    /// r→c: a request failed, or the connection is about to close.
    #[serde(rename = "error")]
    Error {
        /// Request that failed; absent for connection-level errors.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<ReqId>,
        /// What went wrong.
        code: ErrorCode,
        /// Human-readable detail (never contains secrets or payload).
        message: String,
        /// For `rate_limited` and `unavailable`: when to retry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// Either side: graceful close.
    #[serde(rename = "bye")]
    Bye {
        /// Why.
        reason: ByeReason,
    },
    /// c→r: this device will upload the sealed file `hash` (BLAKE3 of the ciphertext, as
    /// iroh-blobs verifies it) of `size` bytes for a joined mailbox, or announces it again
    /// (its TTL restarts). The relay counts it against the mailbox's content quota and its
    /// own budget and answers `ContentGrant`: this connection's device may push the bytes
    /// from `have` on over iroh-blobs (ALPN `/iroh-bytes/4`) on the same endpoint.
    #[serde(rename = "content_offer")]
    ContentOffer {
        /// Request id.
        req: ReqId,
        /// The mailbox the content belongs to; must be joined on this connection.
        mailbox: MailboxId,
        /// BLAKE3 of the sealed file (its iroh-blobs hash).
        hash: BlobId,
        /// Bytes of the sealed file.
        size: u64,
        /// Requested time to live; absent means the relay default; capped by the relay.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_secs: Option<u32>,
    },
    /// c→r: this device wants to download `hash` of a joined mailbox. Answered with a
    /// `ContentGrant` (the device may fetch it over iroh-blobs) or `not_found`.
    #[serde(rename = "content_open")]
    ContentOpen {
        /// Request id.
        req: ReqId,
        /// The mailbox the content was offered to; must be joined on this connection.
        mailbox: MailboxId,
        /// BLAKE3 of the sealed file.
        hash: BlobId,
    },
    /// r→c: answer to `ContentOffer` or `ContentOpen`.
    #[serde(rename = "content_grant")]
    ContentGrant {
        /// Request id.
        req: ReqId,
        /// The content.
        hash: BlobId,
        /// Bytes of the sealed file.
        size: u64,
        /// Bytes of its verified prefix the relay holds for this mailbox (`size` once it is
        /// complete).
        have: u64,
    },
}

/// Every wire tag of version 1, in a stable order. A tag is never removed from this list.
pub const FRAME_TAGS: &[&str] = &[
    "hello",
    "welcome",
    "join",
    "joined",
    "push",
    "push_ack",
    "pull",
    "pull_page",
    "subscribe",
    "subscribed",
    "unsubscribe",
    "unsubscribed",
    "deliver",
    "notify",
    "ping",
    "pong",
    "error",
    "bye",
    "content_offer",
    "content_open",
    "content_grant",
];

impl Frame {
    /// The frame's stable wire tag.
    pub fn tag(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "hello",
            Frame::Welcome { .. } => "welcome",
            Frame::Join { .. } => "join",
            Frame::Joined { .. } => "joined",
            Frame::Push { .. } => "push",
            Frame::PushAck { .. } => "push_ack",
            Frame::Pull { .. } => "pull",
            Frame::PullPage { .. } => "pull_page",
            Frame::Subscribe { .. } => "subscribe",
            Frame::Subscribed { .. } => "subscribed",
            Frame::Unsubscribe { .. } => "unsubscribe",
            Frame::Unsubscribed { .. } => "unsubscribed",
            Frame::Deliver { .. } => "deliver",
            Frame::Notify { .. } => "notify",
            Frame::Ping { .. } => "ping",
            Frame::Pong { .. } => "pong",
            Frame::Error { .. } => "error",
            Frame::Bye { .. } => "bye",
            Frame::ContentOffer { .. } => "content_offer",
            Frame::ContentOpen { .. } => "content_open",
            Frame::ContentGrant { .. } => "content_grant",
        }
    }

    /// The request id a response to this frame must echo, if the frame carries one.
    pub fn req(&self) -> Option<ReqId> {
        match self {
            Frame::Join { req, .. }
            | Frame::Joined { req, .. }
            | Frame::Push { req, .. }
            | Frame::PushAck { req, .. }
            | Frame::Pull { req, .. }
            | Frame::PullPage { req, .. }
            | Frame::Subscribe { req, .. }
            | Frame::Subscribed { req, .. }
            | Frame::Unsubscribe { req, .. }
            | Frame::Unsubscribed { req }
            | Frame::Ping { req }
            | Frame::Pong { req }
            | Frame::ContentOffer { req, .. }
            | Frame::ContentOpen { req, .. }
            | Frame::ContentGrant { req, .. } => Some(*req),
            Frame::Error { req, .. } => *req,
            Frame::Hello { .. }
            | Frame::Welcome { .. }
            | Frame::Deliver { .. }
            | Frame::Notify { .. }
            | Frame::Bye { .. } => None,
        }
    }

    /// An error frame answering `req`.
    pub fn error(req: Option<ReqId>, code: ErrorCode, message: impl Into<String>) -> Frame {
        Frame::Error {
            req,
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    fn join(admission: Option<AdmissionText>) -> Frame {
        Frame::Join {
            req: ReqId(7),
            mailbox_key: MailboxKey([1; 32]),
            proof: Signature64([2; 64]),
            admission,
        }
    }

    #[test]
    fn join_with_and_without_an_admission_token_round_trips() {
        for frame in [join(None), join(Some(AdmissionText("ZKA1TOKEN".into())))] {
            let body = codec::encode(&frame).expect("encodes");
            assert_eq!(codec::decode(&body).expect("decodes"), frame);
        }
        // Without a token the field is left out, so older relays see the frame they know.
        let without = codec::encode(&join(None)).expect("encodes");
        let with = codec::encode(&join(Some(AdmissionText("x".into())))).expect("encodes");
        assert!(!without.windows(9).any(|w| w == b"admission"));
        assert!(with.windows(9).any(|w| w == b"admission"));
    }

    #[test]
    fn a_join_of_an_older_client_without_the_field_still_decodes() {
        use ciborium::Value;
        let old = Value::Map(vec![(
            Value::Text("join".into()),
            Value::Map(vec![
                (Value::Text("req".into()), Value::Integer(7.into())),
                (Value::Text("mailbox_key".into()), Value::Bytes(vec![1; 32])),
                (Value::Text("proof".into()), Value::Bytes(vec![2; 64])),
            ]),
        )]);
        let mut body = Vec::new();
        ciborium::into_writer(&old, &mut body).expect("writes");
        assert_eq!(codec::decode(&body).expect("decodes"), join(None));
    }

    #[test]
    fn an_admission_token_is_redacted_in_debug() {
        let text = format!("{:?}", join(Some(AdmissionText("ZKA1SECRET".into()))));
        assert!(!text.contains("SECRET"), "{text}");
    }
}
