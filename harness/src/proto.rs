//! A raw protocol-v1 client over the `Link` seam, for tests and benchmarks that talk to a
//! relay frame by frame (the app-facing client is `zerok-client`).
//!
//! One task reads the link: responses go to the request that is waiting for their `req`,
//! everything else (`Deliver`, `Notify`, `Bye`, errors without `req`) to [`ProtoClient::next_event`].
//! Requests may be pipelined from several tasks at once (`&self`).

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use zerok_actors::crypto::join::sign_join;
use zerok_actors::crypto::keys::{EpochKeys, MailboxSigner};
use zerok_actors::link::hello::{HelloError, Welcomed, hello};
use zerok_actors::link::{Dialer, LinkError, LinkSender};
use zerok_messages::sync::lock;
use zerok_messages::wire::AdmissionText;
use zerok_messages::{
    BlobId, Cursor, DeviceId, ErrorCode, Frame, Item, Limits, MailboxId, RelayAddr, ReqId, codec,
};

/// How long a request waits for its response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The link failed or closed.
    #[error("link: {0}")]
    Link(#[from] LinkError),
    /// The connection closed before the answer came.
    #[error("connection closed")]
    Closed,
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The relay answered with an error frame.
    #[error("relay refused: {code:?}: {message}")]
    Refused {
        /// The code.
        code: ErrorCode,
        /// The relay's message.
        message: String,
        /// The relay's retry hint.
        retry_after_ms: Option<u64>,
    },
    /// The relay answered with an unexpected frame.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

impl ProtoError {
    /// The error code, when the relay refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ProtoError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Frame>>>>;

/// A connected, hello'd protocol client.
pub struct ProtoClient {
    sender: LinkSender,
    waiters: Waiters,
    events: mpsc::UnboundedReceiver<Frame>,
    next_req: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
    /// The relay's id from `Welcome`.
    pub relay_id: DeviceId,
    /// This connection's join nonce.
    pub nonce: [u8; 32],
    /// The relay's limits.
    pub limits: Limits,
    /// This client's device id.
    pub device_id: DeviceId,
    /// Something that must live as long as the connection (its endpoint).
    owner: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl Drop for ProtoClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn refused(frame: Frame) -> ProtoError {
    match frame {
        Frame::Error {
            code,
            message,
            retry_after_ms,
            ..
        } => ProtoError::Refused {
            code,
            message,
            retry_after_ms,
        },
        other => ProtoError::Unexpected(other.tag().to_owned()),
    }
}

impl ProtoClient {
    /// Dial `addr`, say `Hello`, wait for `Welcome`.
    pub async fn connect(dialer: &dyn Dialer, addr: &RelayAddr) -> Result<ProtoClient, ProtoError> {
        let link = dialer.dial(addr).await?;
        let device_id = dialer.local_id();
        let Welcomed {
            sender,
            mut receiver,
            relay_id,
            nonce,
            limits,
        } = hello(link, "zerok-harness", REQUEST_TIMEOUT)
            .await
            .map_err(|err| match err {
                HelloError::Link(err) => ProtoError::Link(err),
                HelloError::Timeout(after) => ProtoError::Timeout(after),
                HelloError::Closed => ProtoError::Closed,
                HelloError::Refused {
                    code,
                    message,
                    retry_after_ms,
                } => ProtoError::Refused {
                    code,
                    message,
                    retry_after_ms,
                },
                HelloError::Unexpected(what) => ProtoError::Unexpected(what),
            })?;
        let waiters: Waiters = Arc::default();
        let (events_tx, events) = mpsc::unbounded_channel();
        let reader_waiters = Arc::clone(&waiters);
        let reader = tokio::spawn(async move {
            while let Ok(Some(body)) = receiver.recv().await {
                let Ok(frame) = codec::decode(&body) else {
                    continue;
                };
                let waiter = frame
                    .req()
                    .and_then(|req| lock(&reader_waiters).remove(&req.0));
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.send(frame);
                    }
                    None => {
                        let _ = events_tx.send(frame);
                    }
                }
            }
            lock(&reader_waiters).clear();
        });
        Ok(ProtoClient {
            sender,
            waiters,
            events,
            next_req: AtomicU64::new(1),
            reader,
            relay_id,
            nonce,
            limits,
            device_id,
            owner: None,
        })
    }

    /// Keep `owner` (e.g. the endpoint the link runs on) alive as long as this client.
    pub fn owning(mut self, owner: impl std::any::Any + Send + Sync) -> Self {
        self.owner = Some(Box::new(owner));
        self
    }

    /// Send the frame `make` builds with a fresh request id; wait for its answer.
    pub async fn request(&self, make: impl FnOnce(ReqId) -> Frame) -> Result<Frame, ProtoError> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(req, tx);
        let frame = make(ReqId(req));
        if let Err(err) = self.sender.send(encode(&frame)?).await {
            lock(&self.waiters).remove(&req);
            return Err(err.into());
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(_)) => Err(ProtoError::Closed),
            Err(_) => {
                lock(&self.waiters).remove(&req);
                Err(ProtoError::Timeout(REQUEST_TIMEOUT))
            }
        }
    }

    /// Join the mailbox of `keys` with a proof for this connection. Returns its latest cursor.
    pub async fn join(&self, keys: &EpochKeys) -> Result<Cursor, ProtoError> {
        let proof = sign_join(keys, &self.relay_id, &self.device_id, &self.nonce);
        self.join_with(keys, proof).await
    }

    /// Join the mailbox of any signer (an invite's, a recovery phrase's) with a proof for
    /// this connection. Returns its latest cursor.
    pub async fn join_signer(&self, signer: &MailboxSigner) -> Result<Cursor, ProtoError> {
        let proof = sign_join(signer, &self.relay_id, &self.device_id, &self.nonce);
        let mailbox_key = signer.mailbox_key();
        match self
            .request(|req| Frame::Join {
                req,
                mailbox_key,
                proof,
                admission: None,
            })
            .await?
        {
            Frame::Joined { latest, .. } => Ok(latest),
            other => Err(refused(other)),
        }
    }

    /// Join with a given proof (tests of bad proofs).
    pub async fn join_with(
        &self,
        keys: &EpochKeys,
        proof: zerok_messages::Signature64,
    ) -> Result<Cursor, ProtoError> {
        self.join_full(keys, proof, None).await
    }

    /// Join carrying an admission token (`token` admission relays need one to create).
    pub async fn join_admitted(&self, keys: &EpochKeys, token: &str) -> Result<Cursor, ProtoError> {
        let proof = sign_join(keys, &self.relay_id, &self.device_id, &self.nonce);
        self.join_full(keys, proof, Some(AdmissionText(token.to_owned())))
            .await
    }

    async fn join_full(
        &self,
        keys: &EpochKeys,
        proof: zerok_messages::Signature64,
        admission: Option<AdmissionText>,
    ) -> Result<Cursor, ProtoError> {
        let mailbox_key = keys.mailbox_key();
        match self
            .request(|req| Frame::Join {
                req,
                mailbox_key,
                proof,
                admission,
            })
            .await?
        {
            Frame::Joined { latest, .. } => Ok(latest),
            other => Err(refused(other)),
        }
    }

    /// Push a ciphertext. Returns `(cursor, duplicate)`.
    pub async fn push(
        &self,
        mailbox: MailboxId,
        ciphertext: Bytes,
    ) -> Result<(Cursor, bool), ProtoError> {
        let blob_id = BlobId::of_ciphertext(&ciphertext);
        self.push_as(mailbox, blob_id, ciphertext, None).await
    }

    /// Push with an explicit blob id and TTL (tests of bad ids).
    pub async fn push_as(
        &self,
        mailbox: MailboxId,
        blob_id: BlobId,
        ciphertext: Bytes,
        ttl_secs: Option<u32>,
    ) -> Result<(Cursor, bool), ProtoError> {
        match self
            .request(|req| Frame::Push {
                req,
                mailbox,
                blob_id,
                ciphertext,
                ttl_secs,
            })
            .await?
        {
            Frame::PushAck {
                cursor, duplicate, ..
            } => Ok((cursor, duplicate)),
            other => Err(refused(other)),
        }
    }

    /// One page of items after `after`. Returns `(items, next, has_more)`.
    pub async fn pull(
        &self,
        mailbox: MailboxId,
        after: Cursor,
        max_items: u32,
        max_bytes: u32,
    ) -> Result<(Vec<Item>, Cursor, bool), ProtoError> {
        match self
            .request(|req| Frame::Pull {
                req,
                mailbox,
                after,
                max_items,
                max_bytes,
            })
            .await?
        {
            Frame::PullPage {
                items,
                next,
                has_more,
                ..
            } => Ok((items, next, has_more)),
            other => Err(refused(other)),
        }
    }

    /// Every item after `after`, page by page.
    pub async fn pull_all(
        &self,
        mailbox: MailboxId,
        after: Cursor,
    ) -> Result<Vec<Item>, ProtoError> {
        let mut all = Vec::new();
        let mut after = after;
        loop {
            let (items, next, has_more) = self.pull(mailbox, after, u32::MAX, u32::MAX).await?;
            all.extend(items);
            after = next;
            if !has_more {
                return Ok(all);
            }
        }
    }

    /// Subscribe to live delivery; the client has everything up to `after` (a `Notify`
    /// follows when the relay holds newer items). Returns the latest cursor.
    pub async fn subscribe(&self, mailbox: MailboxId, after: Cursor) -> Result<Cursor, ProtoError> {
        match self
            .request(|req| Frame::Subscribe {
                req,
                mailbox,
                after,
            })
            .await?
        {
            Frame::Subscribed { latest, .. } => Ok(latest),
            other => Err(refused(other)),
        }
    }

    /// Round trip a `Ping`.
    pub async fn ping(&self) -> Result<(), ProtoError> {
        match self.request(|req| Frame::Ping { req }).await? {
            Frame::Pong { .. } => Ok(()),
            other => Err(refused(other)),
        }
    }

    /// The next frame that answered no request (`Deliver`, `Notify`, `Bye`, ...), or `None`
    /// when the connection closed or nothing came within `wait`.
    pub async fn next_event(&mut self, wait: Duration) -> Option<Frame> {
        tokio::time::timeout(wait, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Send raw bytes as one frame body (tests of garbage).
    pub async fn send_raw(&self, body: Bytes) -> Result<(), ProtoError> {
        Ok(self.sender.send(body).await?)
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.reader.is_finished()
    }
}

fn encode(frame: &Frame) -> Result<Bytes, ProtoError> {
    codec::encode(frame)
        .map(Bytes::from)
        .map_err(|err| ProtoError::Unexpected(err.to_string()))
}
