//! The channel halves of a `Link` (see `zerok_actors::link` for transports and semantics).
//!
//! They live here, not beside the transports, because actor messages carry them: a session
//! hands its [`LinkSender`] to a group router so live deliveries go straight onto the
//! subscriber's bounded queue. Pure tokio channels; no I/O, no iroh.

use crate::wire::FRAME_BYTES_MAX;
use bytes::Bytes;
use tokio::sync::mpsc;

/// Frames queued per direction of a link before senders wait. 64 frames keep a pipelined
/// connection busy (each side can have a batch in flight) while bounding a link's buffered
/// memory to 64 × 1 MiB in the worst case and ~64 KiB for typical 1 KiB records.
pub const LINK_QUEUE_FRAMES: usize = 64;

/// What a link transports in each direction: a frame body, or the reason the link broke.
///
/// The error is boxed so that a queue slot is one `Bytes` (32 bytes) instead of a
/// `LinkError` (72): tokio allocates a channel's slots 32 at a time when it is created, and
/// every connection has two of these queues, so a slot's size is paid on every idle
/// connection while errors are sent at most once per link.
pub type Wire = Result<Bytes, Box<LinkError>>;

/// Why a link operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Nothing answered at the address.
    #[error("cannot reach {addr}: {detail}")]
    Unreachable {
        /// The address dialled.
        addr: String,
        /// What the transport said.
        detail: String,
    },
    /// An operation did not finish in time.
    #[error("{what} timed out after {after_ms} ms")]
    Timeout {
        /// What timed out.
        what: &'static str,
        /// The timeout.
        after_ms: u64,
    },
    /// The frame is over the limit.
    #[error("frame of {bytes} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Frame size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The send queue is full (`try_send` only).
    #[error("link send queue is full")]
    Full,
    /// The connection is closed; nothing more can be sent.
    #[error("link closed")]
    Closed,
    /// The connection was torn down by the peer, the transport or a local abort.
    #[error("link reset: {0}")]
    Reset(String),
    /// The peer broke the framing rules.
    #[error("link protocol error: {0}")]
    Protocol(String),
    /// The peer is not who the address said.
    #[error("peer identity mismatch: expected {expected}, got {actual}")]
    WrongPeer {
        /// The id in the address.
        expected: crate::DeviceId,
        /// The id the transport authenticated.
        actual: crate::DeviceId,
    },
    /// The local endpoint could not be set up.
    #[error("link setup failed: {0}")]
    Setup(String),
}

/// Sending half of a link. Cloneable: several actors may send on one link; the link
/// half-closes when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct LinkSender {
    tx: mpsc::Sender<Wire>,
}

impl LinkSender {
    #[doc(hidden)]
    /// Wrap a transport channel (for transport implementations).
    pub fn new(tx: mpsc::Sender<Wire>) -> Self {
        Self { tx }
    }

    fn check(body: &Bytes) -> Result<(), LinkError> {
        if body.len() > FRAME_BYTES_MAX {
            return Err(LinkError::TooLarge {
                bytes: body.len(),
                limit: FRAME_BYTES_MAX,
            });
        }
        Ok(())
    }

    /// Queue a frame body, waiting while the queue is full.
    pub async fn send(&self, body: Bytes) -> Result<(), LinkError> {
        Self::check(&body)?;
        self.tx.send(Ok(body)).await.map_err(|_| LinkError::Closed)
    }

    /// Queue a frame body if there is room now.
    pub fn try_send(&self, body: Bytes) -> Result<(), LinkError> {
        Self::check(&body)?;
        self.tx.try_send(Ok(body)).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => LinkError::Full,
            mpsc::error::TrySendError::Closed(_) => LinkError::Closed,
        })
    }

    /// Whether the link can no longer carry frames.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Half-close: the peer receives what is queued, then end of stream.
    pub fn finish(self) {
        drop(self);
    }

    /// Tear the connection down; the peer sees a reset. Frames still queued may be lost.
    pub fn abort(self, reason: &str) {
        // The transport pump reads the error and closes the connection. If the queue is full
        // the pump is stuck on a slow peer; spawning the abort lets it through once there is
        // room, and dropping the connection happens either way when the pump exits.
        let reason = LinkError::Reset(reason.to_owned());
        if let Err(mpsc::error::TrySendError::Full(err)) = self.tx.try_send(Err(Box::new(reason))) {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(err).await;
            });
        }
    }
}

/// Receiving half of a link.
#[derive(Debug)]
pub struct LinkReceiver {
    rx: mpsc::Receiver<Wire>,
}

impl LinkReceiver {
    #[doc(hidden)]
    /// Wrap a transport channel (for transport implementations).
    pub fn new(rx: mpsc::Receiver<Wire>) -> Self {
        Self { rx }
    }

    /// The next frame body; `Ok(None)` when the peer finished its side cleanly.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, LinkError> {
        match self.rx.recv().await {
            Some(Ok(body)) => Ok(Some(body)),
            Some(Err(err)) => Err(*err),
            None => Ok(None),
        }
    }
}

/// A pair of channels, one per direction, for a transport pump.
pub fn channel() -> (mpsc::Sender<Wire>, mpsc::Receiver<Wire>) {
    mpsc::channel(LINK_QUEUE_FRAMES)
}

/// What a LinkReader tells its owner (a relay Session or a client RelayConnection); owners'
/// message types implement `From<LinkEvent>`.
#[derive(Debug)]
pub enum LinkEvent {
    /// A frame body arrived, holding one of the connection's in-flight slots until answered.
    Frame {
        /// The CBOR frame body.
        body: Bytes,
        /// The in-flight slot.
        permit: tokio::sync::OwnedSemaphorePermit,
    },
    /// The link ended: cleanly (`None`) or with an error.
    Closed {
        /// Why, if it broke.
        error: Option<LinkError>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_slot_is_one_frame_body() {
        // Every idle connection pays 2 × 32 slots of this (see `Wire`).
        assert_eq!(std::mem::size_of::<Wire>(), std::mem::size_of::<Bytes>());
    }

    #[tokio::test]
    async fn an_abort_reaches_the_receiver_as_its_error() {
        let (tx, rx) = channel();
        let (sender, mut receiver) = (LinkSender::new(tx), LinkReceiver::new(rx));
        sender.abort("gone");
        assert_eq!(receiver.recv().await, Err(LinkError::Reset("gone".into())));
    }
}
