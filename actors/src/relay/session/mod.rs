//! Session: one per client connection, under the SessionsSupervisor (DESIGN.md §2).
//!
//! It owns the link's sending half and a linked [`LinkReader`](crate::link_reader) that feeds
//! it frames with an in-flight permit each ([`Limits::inflight_max`] requests and
//! `inflight_bytes_max` of their frames per connection). The pure [`core::SessionCore`]
//! decides; `handle` carries out: pushes are cast to the mailbox's GroupRouter in frame order
//! (so one connection's pushes keep their order), their acks are awaited in a task with
//! [`REQUEST_TIMEOUT`]; pulls go to the BlobStore from a task.
//!
//! Output is bounded by bytes and never awaited in `handle`, so idle checks and shutdown
//! always run: replies are queued with `try_send` on the link, whose budget is what the peer
//! may leave unread; a reply that does not fit means the peer stopped reading, and the
//! connection is aborted. Pull pages are bulk: at most [`PULL_PAGES_PREPARED_MAX`] are read
//! from the store at once per connection, each waits at most [`SLOW_READER_TIMEOUT`] for its
//! share of the queue, and a peer that lets that pass is aborted. A session is never
//! restarted: its death is a closed connection, and the client reconnects.

pub mod core;

use crate::fault::{FaultPlan, FaultPoint};
use crate::link_reader::{LinkReaderActor, LinkReaderArgs};
use crate::relay::admission::SessionAdmission;
use crate::relay::metrics::RelayMetrics;
use crate::relay::rate_limit::RelayLimiters;
use crate::shared_ref::SharedRef;
use ::core::time::Duration;
use bytes::Bytes;
use core::{Action, SessionCore};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::{Semaphore, oneshot};
use tracing::{Instrument, debug, warn};
use zerok_messages::codec;
use zerok_messages::link::{FramePermit, LinkError, LinkReceiver, LinkSender};
use zerok_messages::relay::{
    BlobStoreMsg, ContentGrant, ContentMsg, ContentRefusal, GroupRouterMsg, RoutersMsg, SessionMsg,
    StoreError, SubscriberId,
};
use zerok_messages::wire::ByeReason;
use zerok_messages::{BlobId, DeviceId, ErrorCode, Frame, Limits, MailboxId, ReqId};

/// How long a request may wait on the router or store before the client is told to retry.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a call to the routers supervisor may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Pull pages read from the store and waiting for room on one connection at once: two keep a
/// catch-up streaming (one page is written while the next is read) and bound what pulls that
/// are never read can pin to two pages (today's pages are ≤ 1 MiB).
pub const PULL_PAGES_PREPARED_MAX: usize = 2;
/// How long a pull page may wait for room in the connection's queue: a peer that has not
/// read half its budget in this long is not reading, and is disconnected.
pub const SLOW_READER_TIMEOUT: Duration = Duration::from_secs(10);

/// The session's actor type.
pub struct SessionActor;

/// What a session needs.
pub struct SessionArgs {
    /// The peer, authenticated by the link.
    pub peer: DeviceId,
    /// The link's halves.
    pub sender: LinkSender,
    /// Receiving half, handed to the LinkReader.
    pub receiver: LinkReceiver,
    /// This relay's id (signed into join proofs).
    pub relay_id: DeviceId,
    /// Fresh random nonce for this connection's join proofs.
    pub nonce: [u8; 32],
    /// Limits announced in `Welcome`.
    pub limits: Limits,
    /// The BlobStore.
    pub store: SharedRef<BlobStoreMsg>,
    /// The routers supervisor.
    pub routers: ActorRef<RoutersMsg>,
    /// The content service (`None`: this relay keeps no content).
    pub content: Option<ActorRef<ContentMsg>>,
    /// This session's subscriber id (unique per relay process).
    pub subscriber_id: SubscriberId,
    /// The peer's IP address, when the transport knows it (per-source frame limits).
    pub source: Option<IpAddr>,
    /// Bytes of request frames the connection may hold in flight.
    pub inflight_bytes_max: usize,
    /// Bytes of request frames every connection together may hold in flight (`None`: no
    /// shared bound).
    pub inflight_bytes_total: Option<Arc<Semaphore>>,
    /// Close after this long without a frame.
    pub idle_timeout: Duration,
    /// Frame rate limits (per device, global), shared by all sessions.
    pub limiters: Arc<RelayLimiters>,
    /// Metrics.
    pub metrics: RelayMetrics,
    /// Who may create mailboxes, for this connection's source.
    pub admission: SessionAdmission,
    /// Fault injection (none in production): `FrameReceive` ends the session on a frame as
    /// a bug a peer's frame triggers would; `FrameSend` breaks the link as a reply is sent.
    pub faults: FaultPlan,
}

/// Session state.
pub struct SessionState {
    /// `session{peer}`: one device's story in the relay's log.
    span: tracing::Span,
    core: SessionCore,
    peer: DeviceId,
    sender: LinkSender,
    store: SharedRef<BlobStoreMsg>,
    routers: ActorRef<RoutersMsg>,
    content: Option<ActorRef<ContentMsg>>,
    router_cache: BTreeMap<MailboxId, ActorRef<GroupRouterMsg>>,
    subscriber_id: SubscriberId,
    source: Option<IpAddr>,
    pages: Arc<Semaphore>,
    idle_timeout: Duration,
    last_frame_at: tokio::time::Instant,
    limits: Limits,
    limiters: Arc<RelayLimiters>,
    metrics: RelayMetrics,
    admission: SessionAdmission,
    faults: FaultPlan,
}

fn encode(frame: &Frame, metrics: &RelayMetrics) -> Option<Bytes> {
    if let Frame::Error { code, .. } = frame {
        metrics
            .errors_total
            .with_label_values(&[code.as_str()])
            .inc();
    }
    match codec::encode(frame) {
        Ok(body) => Some(Bytes::from(body)),
        Err(err) => {
            warn!(error = %err, tag = frame.tag(), "response not encodable");
            None
        }
    }
}

/// Where a session's replies go, cheap to clone into the tasks that answer requests.
#[derive(Clone)]
struct Replies {
    sender: LinkSender,
    metrics: RelayMetrics,
    session: ActorRef<SessionMsg>,
    faults: FaultPlan,
}

impl Replies {
    /// Queue a reply without waiting. A full queue means the peer holds more than its
    /// budget unread: it is disconnected.
    fn queue(&self, frame: Frame) {
        let Some(body) = encode(&frame, &self.metrics) else {
            return;
        };
        if self.faults.should_fail(FaultPoint::FrameSend) {
            self.sender.clone().abort("fault injected: a send failed");
            return;
        }
        match self.sender.try_send(body) {
            Ok(()) | Err(LinkError::Closed) => {}
            Err(LinkError::Full) => self.not_reading(),
            Err(err) => warn!(error = %err, tag = frame.tag(), "reply not queued"),
        }
    }

    /// The peer left more than its budget unread: tear the connection down (the transport
    /// stops writing at once) and end the session.
    fn not_reading(&self) {
        self.metrics.slow_peers_disconnected_total.inc();
        self.sender.clone().abort("peer is not reading");
        self.session.stop(Some("peer is not reading".into()));
    }
}

fn store_error_frame(req: ReqId, err: &StoreError) -> Frame {
    let code = err.code();
    Frame::Error {
        req: Some(req),
        code,
        message: err.to_string(),
        retry_after_ms: err.retry_after_ms(),
    }
}

fn unavailable(req: ReqId, what: &str) -> Frame {
    Frame::Error {
        req: Some(req),
        code: ErrorCode::Unavailable,
        message: what.to_owned(),
        retry_after_ms: Some(1000),
    }
}

impl SessionState {
    async fn router(&mut self, mailbox: MailboxId) -> Result<ActorRef<GroupRouterMsg>, StoreError> {
        if let Some(router) = self.router_cache.get(&mailbox)
            && ractor::ACTIVE_STATES.contains(&router.get_status())
        {
            return Ok(router.clone());
        }
        let router = ractor::call_t!(
            self.routers,
            |reply| RoutersMsg::GetRouter { mailbox, reply },
            LOOKUP_TIMEOUT.as_millis() as u64
        )
        .map_err(|err| StoreError::Unavailable(format!("router lookup failed: {err}")))??;
        self.router_cache.insert(mailbox, router.clone());
        Ok(router)
    }

    fn replies(&self, myself: &ActorRef<SessionMsg>) -> Replies {
        Replies {
            sender: self.sender.clone(),
            metrics: self.metrics.clone(),
            session: myself.clone(),
            faults: self.faults.clone(),
        }
    }

    /// Ask the content service, answer with its grant or refusal from a task.
    fn content_request(
        &self,
        replies: Replies,
        permit: FramePermit,
        req: ReqId,
        hash: BlobId,
        msg: impl FnOnce(ractor::RpcReplyPort<Result<ContentGrant, ContentRefusal>>) -> ContentMsg
        + Send
        + 'static,
    ) {
        let Some(content) = self.content.clone() else {
            replies.queue(Frame::error(
                Some(req),
                ErrorCode::Unsupported,
                "this relay keeps no content",
            ));
            return;
        };
        tokio::spawn(async move {
            let answer = ractor::call_t!(content, msg, REQUEST_TIMEOUT.as_millis() as u64);
            let frame = match answer {
                Ok(Ok(grant)) => Frame::ContentGrant {
                    req,
                    hash,
                    size: grant.size,
                    have: grant.have,
                },
                Ok(Err(refusal)) => Frame::error(Some(req), refusal.code(), refusal.to_string()),
                Err(_) => unavailable(req, "content service did not answer"),
            };
            replies.queue(frame);
            drop(permit);
        });
    }

    /// Queue a `Bye` for the peer.
    fn say_bye(&self, myself: &ActorRef<SessionMsg>, reason: ByeReason) {
        self.replies(myself).queue(SessionCore::bye(reason));
    }

    /// Decode one frame, apply the rate limits, and carry out what the core decides.
    async fn on_frame(&mut self, myself: &ActorRef<SessionMsg>, body: Bytes, permit: FramePermit) {
        self.last_frame_at = tokio::time::Instant::now();
        if self.faults.should_fail(FaultPoint::FrameReceive) {
            myself.stop(Some(
                "fault injected: a frame the session cannot handle".into(),
            ));
            return;
        }
        let action = match codec::decode(&body) {
            Ok(frame) => {
                if let Err(limited) = self.limiters.check_frame(&self.peer, self.source) {
                    self.metrics
                        .rate_limited_total
                        .with_label_values(&[limited.scope.as_str()])
                        .inc();
                    if let Some(req) = frame.req() {
                        let refusal = Frame::Error {
                            req: Some(req),
                            code: ErrorCode::RateLimited,
                            message: format!("{} frame rate exceeded", limited.scope.as_str()),
                            retry_after_ms: Some(limited.retry_after_ms()),
                        };
                        self.replies(myself).queue(refusal);
                    }
                    drop(permit);
                    return;
                }
                self.core.on_frame(frame)
            }
            Err(err) => {
                debug!(peer = %self.peer.short(), error = %err, "undecodable frame");
                self.core.on_decode_error(&err)
            }
        };
        self.carry_out(myself, action, permit).await;
    }

    async fn carry_out(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        action: Action,
        permit: FramePermit,
    ) {
        let replies = self.replies(myself);
        let metrics = self.metrics.clone();
        match action {
            Action::Nothing => {}
            Action::Reply(frame) => replies.queue(frame),
            Action::ReplyAndClose(frame) => {
                replies.queue(frame);
                replies.queue(SessionCore::bye(ByeReason::ProtocolViolation));
                myself.stop(Some("protocol violation".into()));
            }
            Action::Close => myself.stop(Some("peer said bye".into())),
            Action::Joined {
                req,
                mailbox,
                admission,
                is_new_on_connection,
            } => {
                // Decided inline (not in a task), so a frame pipelined after the Join is
                // judged only once the Join is: a refused Join never lets a Push through.
                let store = self.store.get();
                let latest = ractor::call_t!(
                    store,
                    |reply| BlobStoreMsg::GetLatest { mailbox, reply },
                    LOOKUP_TIMEOUT.as_millis() as u64
                );
                let frame = match latest {
                    Ok(Ok(latest)) if !is_new_on_connection => Frame::Joined {
                        req,
                        mailbox,
                        latest,
                    },
                    Ok(Ok(latest)) => {
                        let decided = Box::pin(
                            self.admission
                                .check_join(mailbox, latest, self.peer, admission),
                        )
                        .await;
                        match decided {
                            Ok(_) => Frame::Joined {
                                req,
                                mailbox,
                                latest,
                            },
                            Err(refusal) => {
                                self.core.on_join_refused(&mailbox);
                                if let crate::relay::admission::Refusal::RateLimited {
                                    scope, ..
                                } = &refusal
                                {
                                    metrics
                                        .rate_limited_total
                                        .with_label_values(&[scope.as_str()])
                                        .inc();
                                }
                                debug!(peer = %self.peer.short(), mailbox = %mailbox.short(), refusal = %refusal, "mailbox creation refused");
                                refusal.to_frame(req)
                            }
                        }
                    }
                    Ok(Err(err)) => {
                        if is_new_on_connection {
                            self.core.on_join_refused(&mailbox);
                        }
                        store_error_frame(req, &err)
                    }
                    Err(_) => {
                        if is_new_on_connection {
                            self.core.on_join_refused(&mailbox);
                        }
                        unavailable(req, "store did not answer")
                    }
                };
                if let Frame::Joined { latest, .. } = &frame {
                    debug!(mailbox = %mailbox.short(), latest = latest.0, "joined");
                }
                replies.queue(frame);
                drop(permit);
            }
            Action::Push {
                req,
                mailbox,
                blob_id,
                ciphertext,
                ttl_secs,
            } => {
                let started = tokio::time::Instant::now();
                let (tx, rx) = oneshot::channel();
                let cast = match self.router(mailbox).await {
                    Ok(router) => router
                        .cast(GroupRouterMsg::Push {
                            blob_id,
                            ciphertext,
                            ttl_secs,
                            reply: tx.into(),
                        })
                        .map_err(|_| StoreError::Unavailable("mailbox router restarting".into())),
                    Err(err) => Err(err),
                };
                if let Err(err) = cast {
                    self.router_cache.remove(&mailbox);
                    metrics.pushes_total.with_label_values(&["failed"]).inc();
                    replies.queue(store_error_frame(req, &err));
                    return;
                }
                tokio::spawn(async move {
                    let frame = match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
                        Ok(Ok(Ok(acked))) => {
                            let result = if acked.duplicate {
                                "duplicate"
                            } else {
                                "stored"
                            };
                            metrics.pushes_total.with_label_values(&[result]).inc();
                            metrics
                                .push_latency_seconds
                                .observe(started.elapsed().as_secs_f64());
                            Frame::PushAck {
                                req,
                                cursor: acked.cursor,
                                duplicate: acked.duplicate,
                            }
                        }
                        Ok(Ok(Err(err))) => {
                            metrics.pushes_total.with_label_values(&["rejected"]).inc();
                            store_error_frame(req, &err)
                        }
                        Ok(Err(_)) | Err(_) => {
                            metrics.pushes_total.with_label_values(&["failed"]).inc();
                            unavailable(req, "push not confirmed; retry")
                        }
                    };
                    replies.queue(frame);
                    drop(permit);
                });
            }
            Action::Pull {
                req,
                mailbox,
                after,
                max_items,
                max_bytes,
            } => {
                let store = self.store.get();
                let pages = Arc::clone(&self.pages);
                tokio::spawn(async move {
                    // Wait for one of the connection's page slots before reading a page, so
                    // pulls that are never read pin at most that many pages.
                    let Ok(_page_slot) = pages.acquire_owned().await else {
                        return;
                    };
                    if replies.sender.is_closed() {
                        return;
                    }
                    let page = ractor::call_t!(
                        store,
                        |reply| BlobStoreMsg::Read {
                            mailbox,
                            after,
                            max_items,
                            max_bytes,
                            reply,
                        },
                        REQUEST_TIMEOUT.as_millis() as u64
                    );
                    let frame = match page {
                        Ok(Ok(page)) => {
                            metrics.pulls_total.inc();
                            Frame::PullPage {
                                req,
                                items: page.items,
                                next: page.next,
                                has_more: page.has_more,
                            }
                        }
                        Ok(Err(err)) => store_error_frame(req, &err),
                        Err(_) => unavailable(req, "store did not answer"),
                    };
                    let Some(body) = encode(&frame, &replies.metrics) else {
                        return;
                    };
                    let queued =
                        tokio::time::timeout(SLOW_READER_TIMEOUT, replies.sender.send_bulk(body));
                    match queued.await {
                        Ok(Ok(())) | Ok(Err(LinkError::Closed)) => {}
                        Ok(Err(err)) => warn!(error = %err, "pull page not queued"),
                        Err(_) => replies.not_reading(),
                    }
                    drop(permit);
                });
            }
            Action::Subscribe {
                req,
                mailbox,
                after,
            } => {
                let mut catch_up = None;
                let frame = match self.router(mailbox).await {
                    Ok(router) => {
                        let subscribed = ractor::call_t!(
                            router,
                            |reply| GroupRouterMsg::Subscribe {
                                subscriber: self.subscriber_id,
                                sink: replies.sender.clone(),
                                reply,
                            },
                            LOOKUP_TIMEOUT.as_millis() as u64
                        );
                        match subscribed {
                            Ok(latest) => {
                                debug!(mailbox = %mailbox.short(), after = after.0, latest = latest.0, "subscribed");
                                self.core.set_subscribed(mailbox, true);
                                if latest > after {
                                    catch_up = Some(Frame::Notify { mailbox, latest });
                                }
                                Frame::Subscribed {
                                    req,
                                    mailbox,
                                    latest,
                                }
                            }
                            Err(_) => {
                                self.router_cache.remove(&mailbox);
                                unavailable(req, "mailbox router restarting")
                            }
                        }
                    }
                    Err(err) => store_error_frame(req, &err),
                };
                replies.queue(frame);
                if let Some(notify) = catch_up {
                    replies.queue(notify);
                }
            }
            Action::ContentOffer {
                req,
                mailbox,
                hash,
                size,
                ttl_secs,
            } => {
                let device = self.peer;
                self.content_request(replies, permit, req, hash, move |reply| ContentMsg::Offer {
                    device,
                    mailbox,
                    hash,
                    size,
                    ttl_secs,
                    reply,
                });
            }
            Action::ContentOpen { req, mailbox, hash } => {
                let device = self.peer;
                self.content_request(replies, permit, req, hash, move |reply| ContentMsg::Open {
                    device,
                    mailbox,
                    hash,
                    reply,
                });
            }
            Action::Unsubscribe { req, mailbox } => {
                if let Some(router) = self.router_cache.get(&mailbox) {
                    let _ = router.cast(GroupRouterMsg::Unsubscribe {
                        subscriber: self.subscriber_id,
                    });
                }
                self.core.set_subscribed(mailbox, false);
                replies.queue(Frame::Unsubscribed { req });
            }
        }
    }
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SessionArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let inflight = Arc::new(Semaphore::new(args.limits.inflight_max.max(1) as usize));
        let inflight_bytes = Arc::new(Semaphore::new(args.inflight_bytes_max.max(1)));
        Actor::spawn_linked(
            None,
            LinkReaderActor::<SessionMsg>::default(),
            LinkReaderArgs {
                receiver: args.receiver,
                owner: myself.clone(),
                inflight,
                inflight_bytes: std::iter::once(inflight_bytes)
                    .chain(args.inflight_bytes_total)
                    .collect(),
            },
            myself.get_cell(),
        )
        .await?;
        let check_every = (args.idle_timeout / 4).max(Duration::from_millis(100));
        myself.send_interval(check_every, || SessionMsg::IdleCheckDue);
        args.metrics.sessions.inc();
        Ok(SessionState {
            span: tracing::info_span!("session", peer = %args.peer.short()),
            core: SessionCore::new(args.relay_id, args.peer, args.nonce, args.limits.clone()),
            peer: args.peer,
            sender: args.sender,
            store: args.store,
            routers: args.routers,
            content: args.content,
            router_cache: BTreeMap::new(),
            subscriber_id: args.subscriber_id,
            source: args.source,
            pages: Arc::new(Semaphore::new(PULL_PAGES_PREPARED_MAX)),
            idle_timeout: args.idle_timeout,
            last_frame_at: tokio::time::Instant::now(),
            limits: args.limits,
            limiters: args.limiters,
            metrics: args.metrics,
            admission: args.admission,
            faults: args.faults,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Every line this actor logs carries its span (see the state's `span`).
        let span = state.span.clone();
        async move {
            // Every await below is boxed: ractor keeps the future of `handle`, sized for its
            // largest branch, allocated for the actor's whole life, and a session is idle most of
            // its life. A box per handled message instead of ~3 KiB held per connection.
            match message {
                SessionMsg::FrameReceived { body, permit } => {
                    Box::pin(state.on_frame(&myself, body, permit)).await;
                }
                SessionMsg::LinkClosed { error } => {
                    if let Some(error) = error {
                        debug!(peer = %state.peer.short(), error = %error, "link broke");
                    }
                    myself.stop(Some("link closed".into()));
                }
                SessionMsg::IdleCheckDue => {
                    if state.last_frame_at.elapsed() >= state.idle_timeout {
                        state.say_bye(&myself, ByeReason::Idle);
                        myself.stop(Some("idle".into()));
                    }
                }
                SessionMsg::Shutdown => {
                    state.say_bye(&myself, ByeReason::Shutdown);
                    myself.stop(Some("relay shutdown".into()));
                }
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.metrics.sessions.dec();
        for mailbox in state.core.subscribed().clone() {
            if let Some(router) = state.router_cache.get(&mailbox) {
                let _ = router.cast(GroupRouterMsg::Unsubscribe {
                    subscriber: state.subscriber_id,
                });
            }
        }
        let _ = state.limits.inflight_max;
        Ok(())
    }
}
