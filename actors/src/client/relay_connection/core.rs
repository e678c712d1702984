//! The RelayConnection's pure core: the protocol state of one relay connection, as inputs
//! (a link came up or went, a frame arrived, the coordinator asked something, a timer fired)
//! and the effects they call for, made through [`ConnIo`]: frames to queue, events for the
//! coordinator, requests to send again later, sync answers. No actor, socket or clock in
//! here: the actor ([`super`]) dials, owns the link and its send queue, keeps the reply ports
//! and the timers; tests drive the core with a recording [`ConnIo`].
//!
//! Per group it keeps: joined on this link or not, the cursor up to which this relay's items
//! were received (`have`) and delivered to the app (`delivered`), whether a pull is out, and
//! the pushes waiting for the window. Per link: requests awaiting their answer, pushes in
//! flight, keep-alive.

use crate::crypto::join::sign_join;
use crate::crypto::keys::MailboxSigner;
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, warn};
use zerok_messages::client::{ConnGroup, GroupId, RelayEvent, Retry, SyncError};
use zerok_messages::wire::AdmissionText;
use zerok_messages::{BlobId, Cursor, DeviceId, Frame, Item, Limits, MailboxId, ReqId};

/// Pushes one connection has in flight.
pub const PUSHES_IN_FLIGHT_MAX: usize = 128;
/// Items of a group pulled from the relay ahead of what the coordinator has delivered to the
/// app. Catch-up pages come faster than records are opened; without this bound a late
/// joiner would hold the whole mailbox in memory (100,000 × 2 KiB envelopes were ~250 MiB).
/// 4,096 items (~4 pages, ~8 MiB of 1 KiB records) keep the opening pipeline busy.
pub const PULL_AHEAD_ITEMS_MAX: u64 = 4096;
/// A connection with no frame for this long, or a `Ping` unanswered this long, is dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(45);

/// The effects the core calls for. The actor carries them out at once, in order.
pub trait ConnIo {
    /// Queue a frame for the relay; `false` if it did not fit: the relay is not reading
    /// (the core sends nothing more on this link, and the actor drops it).
    fn send(&mut self, frame: Frame) -> bool;
    /// Whether another push may be queued now (pushes wait while the send queue is full of
    /// them, so other frames always find room).
    fn push_room(&self) -> bool;
    /// Tell the coordinator.
    fn emit(&mut self, event: RelayEvent);
    /// Send `request` of `group` again after `after`, on this link (a later link does it anew).
    fn retry_later(&mut self, group: GroupId, request: Retry, after: Duration);
    /// Answer every `SyncNow` waiting for `group`.
    fn sync_done(&mut self, group: GroupId, result: Result<(), SyncError>);
}

/// What the actor must do after a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Go on.
    Continue,
    /// The relay ended the connection: drop the link and redial.
    Lost(String),
}

/// What became of a `SyncNow`.
#[derive(Debug, PartialEq, Eq)]
pub enum SyncStart {
    /// This relay does not serve the group: answered at once.
    NotServed,
    /// The waiter is kept and answered through [`ConnIo::sync_done`].
    Waiting,
    /// Kept, and there is no link: the actor dials now.
    WaitingForLink,
}

enum Pending {
    Join(GroupId),
    Subscribe(GroupId),
    Pull(GroupId),
    Push { group: GroupId, seq: u64 },
    Ping,
}

struct GroupSync {
    /// The epoch's mailbox signer: join proofs (it opens nothing).
    signer: MailboxSigner,
    admission: Option<AdmissionText>,
    /// Subscribed even when the connection does not receive (an invite mailbox).
    always_receive: bool,
    /// Joins of this meeting mailbox refused in a row without a hint (the retry backs off).
    meeting_refusals: u32,
    /// This relay's items received up to here.
    have: u64,
    /// What the coordinator delivered of this relay's items (its persisted cursor).
    delivered: u64,
    /// A pull waits for `Delivered`: `have` is [`PULL_AHEAD_ITEMS_MAX`] ahead of it.
    is_pull_parked: bool,
    joined: bool,
    /// The coordinator's `Resend` arrived on this link: new pushes are taken.
    accepting: bool,
    paused: bool,
    pulling: bool,
    pull_again: bool,
    /// `SyncNow`s wait for the group (the actor holds their reply ports).
    is_sync_waiting: bool,
    queued: VecDeque<(u64, BlobId, Bytes)>,
}

impl GroupSync {
    fn new(group: &ConnGroup) -> Self {
        Self {
            signer: MailboxSigner::from_seed(&group.mailbox_seed),
            admission: group.admission.clone(),
            always_receive: group.always_receive,
            meeting_refusals: 0,
            have: group.cursor,
            delivered: group.cursor,
            is_pull_parked: false,
            joined: false,
            accepting: false,
            paused: false,
            pulling: false,
            pull_again: false,
            is_sync_waiting: false,
            queued: VecDeque::new(),
        }
    }
}

/// The protocol state of one link.
struct LinkState {
    nonce: [u8; 32],
    limits: Limits,
    pending: BTreeMap<u64, Pending>,
    next_req: u64,
    pushes_in_flight: usize,
    last_frame: Instant,
    /// When the oldest unanswered `Ping` was sent.
    ping_sent_at: Option<Instant>,
    /// A frame did not fit: nothing more is sent on this link.
    is_stalled: bool,
}

/// How long a refused Join of a meeting mailbox (`ConnGroup::always_receive`) waits before
/// it is sent again, when the relay gave no hint; doubled with each refusal in a row, up to
/// 256 times (8.5 minutes).
pub const MEETING_JOIN_RETRY: Duration = Duration::from_secs(2);

/// Where a pull page leaves the connection's cursor of the group: at the page's `next`, but
/// never beyond the last item it actually carried (`last_received`). A relay's `next` is only
/// its word: trusted as is, a page of 3 items with `next = 1000` would skip cursors 4..=1000
/// for good, and `next = u64::MAX` would stop this relay from ever serving the group again.
/// An empty page advances nothing (an honest relay says `next > after` there only when the
/// items in between expired; reading that range again costs one empty page).
pub fn page_upto(have: u64, next: u64, last_received: Option<u64>) -> u64 {
    match last_received {
        Some(last) => have.max(next.min(last)),
        None => have,
    }
}

/// The protocol state of one relay connection.
pub struct ConnCore {
    relay: DeviceId,
    device: DeviceId,
    receive: bool,
    groups: BTreeMap<GroupId, GroupSync>,
    link: Option<LinkState>,
}

impl ConnCore {
    /// A connection of `device` to `relay` serving `groups`, not linked yet.
    pub fn new(relay: DeviceId, device: DeviceId, receive: bool, groups: &[ConnGroup]) -> Self {
        Self {
            relay,
            device,
            receive,
            groups: groups
                .iter()
                .map(|g| (g.group, GroupSync::new(g)))
                .collect(),
            link: None,
        }
    }

    /// Whether a link is up.
    pub fn has_link(&self) -> bool {
        self.link.is_some()
    }

    /// Whether a frame did not fit the link's queue (the actor drops the link).
    pub fn is_stalled(&self) -> bool {
        self.link.as_ref().is_some_and(|l| l.is_stalled)
    }

    /// A link is up (hello'd): join every group.
    pub fn connected(
        &mut self,
        io: &mut impl ConnIo,
        nonce: [u8; 32],
        limits: Limits,
        now: Instant,
    ) {
        self.link = Some(LinkState {
            nonce,
            limits,
            pending: BTreeMap::new(),
            next_req: 1,
            pushes_in_flight: 0,
            last_frame: now,
            ping_sent_at: None,
            is_stalled: false,
        });
        self.join_all(io);
    }

    /// The link is gone (or a dial failed): nothing is joined; pushes wait for the
    /// coordinator's next `Resend`; waiting syncs fail with `why`. Returns whether a link was
    /// up.
    pub fn lost(&mut self, io: &mut impl ConnIo, why: SyncError) -> bool {
        let had_link = self.link.take().is_some();
        for (group, sync) in &mut self.groups {
            sync.joined = false;
            sync.accepting = false;
            sync.pulling = false;
            sync.is_pull_parked = false;
            sync.queued.clear();
            if std::mem::take(&mut sync.is_sync_waiting) {
                io.sync_done(*group, Err(why.clone()));
            }
        }
        had_link
    }

    /// The groups this relay serves now (a group kept keeps its state).
    pub fn set_groups(&mut self, io: &mut impl ConnIo, groups: Vec<ConnGroup>) {
        let mut next = BTreeMap::new();
        for g in groups {
            let sync = match self.groups.remove(&g.group) {
                Some(mut sync) if sync.signer.mailbox_id() == g.mailbox => {
                    sync.admission = g.admission;
                    sync
                }
                Some(old) => {
                    // The group went to a new epoch's mailbox: what was asked of the old
                    // one is forgotten (a late ack there is not an ack of the new mailbox).
                    if old.is_sync_waiting {
                        io.sync_done(g.group, Err(SyncError::NotServed));
                    }
                    self.forget_requests(g.group);
                    GroupSync::new(&g)
                }
                None => GroupSync::new(&g),
            };
            next.insert(g.group, sync);
        }
        for (group, sync) in &self.groups {
            if sync.is_sync_waiting {
                io.sync_done(*group, Err(SyncError::NotServed));
            }
        }
        self.groups = next;
        self.join_all(io);
    }

    /// A push from the coordinator (dropped until the group's `Resend` on this link: the
    /// coordinator resends).
    pub fn push(
        &mut self,
        io: &mut impl ConnIo,
        group: GroupId,
        seq: u64,
        blob_id: BlobId,
        ciphertext: Bytes,
    ) {
        if self.link.is_none() {
            return;
        }
        if let Some(sync) = self.groups.get_mut(&group)
            && sync.accepting
        {
            sync.queued.push_back((seq, blob_id, ciphertext));
            self.flush_pushes(io, group);
        }
    }

    /// The coordinator's answer to `Joined`: what this relay has not acked, in push order.
    pub fn resend(
        &mut self,
        io: &mut impl ConnIo,
        group: GroupId,
        entries: Vec<(u64, BlobId, Bytes)>,
    ) {
        if let Some(sync) = self.groups.get_mut(&group)
            && sync.joined
        {
            sync.accepting = true;
            sync.queued = entries.into_iter().collect();
            self.flush_pushes(io, group);
        }
    }

    /// Pull the group to the relay's end; answered through [`ConnIo::sync_done`].
    pub fn sync_now(&mut self, io: &mut impl ConnIo, group: GroupId) -> SyncStart {
        let Some(sync) = self.groups.get_mut(&group) else {
            return SyncStart::NotServed;
        };
        sync.is_sync_waiting = true;
        if sync.joined {
            self.start_pull(io, group);
            SyncStart::Waiting
        } else if self.link.is_none() {
            SyncStart::WaitingForLink
        } else {
            // Joining: the pull starts with `Joined`.
            SyncStart::Waiting
        }
    }

    /// The app is not keeping up: forget items after `rewind_to` and take none until resumed.
    pub fn pause(&mut self, group: GroupId, rewind_to: u64) {
        if let Some(sync) = self.groups.get_mut(&group) {
            sync.paused = true;
            sync.have = sync.have.min(rewind_to);
        }
    }

    /// Take items of the group again, catching up from the cursor.
    pub fn resume(&mut self, io: &mut impl ConnIo, group: GroupId) {
        if let Some(sync) = self.groups.get_mut(&group)
            && sync.paused
        {
            sync.paused = false;
            self.start_pull(io, group);
        }
    }

    /// The coordinator handed this relay's items up to `upto` to the app.
    pub fn delivered(&mut self, io: &mut impl ConnIo, group: GroupId, upto: u64) {
        if let Some(sync) = self.groups.get_mut(&group) {
            sync.delivered = sync.delivered.max(upto);
            if sync.is_pull_parked {
                self.start_pull(io, group);
            }
        }
    }

    /// A request's retry hint passed (on this link).
    pub fn retry(&mut self, io: &mut impl ConnIo, group: GroupId, request: Retry) {
        match request {
            Retry::Join => self.join(io, group),
            Retry::Subscribe => self.subscribe(io, group),
            Retry::Pull => self.start_pull(io, group),
        }
    }

    /// Keep-alive tick: why the link counts as dead, or `None` (a `Ping` went out if none is
    /// unanswered).
    pub fn ping_due(&mut self, io: &mut impl ConnIo, now: Instant) -> Option<&'static str> {
        let link = self.link.as_ref()?;
        if now.duration_since(link.last_frame) > DEAD_AFTER {
            return Some("keep-alive timeout");
        }
        if let Some(sent) = link.ping_sent_at {
            if now.duration_since(sent) > DEAD_AFTER {
                return Some("relay stopped answering");
            }
            return None;
        }
        self.send(io, |req| Frame::Ping { req }, Pending::Ping);
        if let Some(link) = self.link.as_mut() {
            link.ping_sent_at.get_or_insert(now);
        }
        None
    }

    /// A frame from the relay.
    pub fn on_frame(&mut self, io: &mut impl ConnIo, frame: Frame, now: Instant) -> Flow {
        let relay = self.relay;
        let mut pending = None;
        if let Some(link) = self.link.as_mut() {
            link.last_frame = now;
            pending = frame.req().and_then(|req| link.pending.remove(&req.0));
            match &pending {
                Some(Pending::Push { .. }) => {
                    link.pushes_in_flight = link.pushes_in_flight.saturating_sub(1);
                }
                // Pings are answered in order: the oldest unanswered one is answered now.
                Some(Pending::Ping) => link.ping_sent_at = None,
                _ => {}
            }
        }
        match (frame, pending) {
            (Frame::Joined { latest, .. }, Some(Pending::Join(group))) => {
                let Some(sync) = self.groups.get_mut(&group) else {
                    return Flow::Continue;
                };
                sync.joined = true;
                if latest.0 < sync.have {
                    // The relay lost its data (or is another one under the same id): its
                    // cursors restarted. Read it again from the start; blob ids dedupe.
                    warn!(
                        latest = latest.0,
                        had = sync.have,
                        "relay is behind our cursor; re-reading it from the start"
                    );
                    sync.have = 0;
                }
                let is_sync_waiting = sync.is_sync_waiting;
                io.emit(RelayEvent::Joined { relay, group });
                if is_sync_waiting {
                    self.start_pull(io, group);
                }
                self.subscribe(io, group);
                self.flush_pushes(io, group);
            }
            (Frame::PushAck { .. }, Some(Pending::Push { group, seq })) => {
                io.emit(RelayEvent::Acked { relay, group, seq });
                self.flush_pushes(io, group);
            }
            (
                Frame::PullPage {
                    items,
                    next,
                    has_more,
                    ..
                },
                Some(Pending::Pull(group)),
            ) => self.on_page(io, group, items, next, has_more),
            (Frame::Deliver { mailbox, item }, _) => {
                let Some(group) = self.group_of_mailbox(&mailbox) else {
                    return Flow::Continue;
                };
                let Some(sync) = self.groups.get_mut(&group) else {
                    return Flow::Continue;
                };
                if sync.paused {
                    return Flow::Continue;
                }
                if item.cursor.0 == sync.have + 1 && !sync.pulling {
                    sync.have = item.cursor.0;
                    let upto = sync.have;
                    io.emit(RelayEvent::Items {
                        relay,
                        group,
                        mailbox,
                        items: vec![item],
                        upto,
                    });
                } else if item.cursor.0 > sync.have {
                    self.start_pull(io, group);
                }
            }
            // `Subscribed` says how far the mailbox goes: catch up to there now rather than
            // count on the `Notify` a relay sends after it (a late joiner whose relay sent no
            // `Notify` waited for the next live push, forever in a quiet group).
            (
                Frame::Subscribed {
                    mailbox, latest, ..
                },
                Some(Pending::Subscribe(group)),
            ) if self.group_of_mailbox(&mailbox) == Some(group)
                && self.groups.get(&group).is_some_and(|g| latest.0 > g.have) =>
            {
                self.start_pull(io, group);
            }
            (Frame::Notify { mailbox, latest }, _) => {
                if let Some(group) = self.group_of_mailbox(&mailbox)
                    && self.groups.get(&group).is_some_and(|g| latest.0 > g.have)
                {
                    self.start_pull(io, group);
                }
            }
            (
                Frame::Error {
                    code,
                    message,
                    retry_after_ms,
                    ..
                },
                Some(pending),
            ) => {
                let hint = retry_after_ms.map(Duration::from_millis);
                match pending {
                    Pending::Push { group, seq } => {
                        io.emit(RelayEvent::PushRefused {
                            relay,
                            group,
                            seq,
                            code,
                            retry_after_ms,
                        });
                        self.flush_pushes(io, group);
                    }
                    Pending::Pull(group) => {
                        if let Some(sync) = self.groups.get_mut(&group) {
                            sync.pulling = false;
                            match hint {
                                // Waiters stay: the pull goes on after the hint.
                                Some(after) => io.retry_later(group, Retry::Pull, after),
                                None => {
                                    if std::mem::take(&mut sync.is_sync_waiting) {
                                        io.sync_done(group, Err(SyncError::Refused(code)));
                                    }
                                }
                            }
                        }
                    }
                    Pending::Join(group) => {
                        warn!(group = ?group, code = code.as_str(), message = %message, "join refused");
                        // A meeting mailbox (an invite's, a pairing's) may not exist yet on a
                        // relay that creates mailboxes only for token holders: the member
                        // that creates it may come later. It is asked for again.
                        let meeting = self.groups.get_mut(&group).filter(|g| g.always_receive);
                        match (hint, meeting) {
                            (Some(after), _) => io.retry_later(group, Retry::Join, after),
                            (None, Some(sync)) => {
                                let doublings = sync.meeting_refusals.min(8);
                                sync.meeting_refusals = sync.meeting_refusals.saturating_add(1);
                                let after = MEETING_JOIN_RETRY.saturating_mul(1 << doublings);
                                io.retry_later(group, Retry::Join, after);
                            }
                            (None, None) => {}
                        }
                    }
                    Pending::Subscribe(group) => {
                        debug!(group = ?group, code = code.as_str(), "subscribe refused");
                        if let Some(after) = hint {
                            io.retry_later(group, Retry::Subscribe, after);
                        }
                    }
                    Pending::Ping => debug!(code = code.as_str(), "ping refused"),
                }
            }
            (Frame::Error { code, .. }, None) => debug!(code = code.as_str(), "relay error"),
            (Frame::Bye { reason }, _) => {
                return Flow::Lost(format!("relay said bye ({reason:?})"));
            }
            _ => {}
        }
        Flow::Continue
    }

    fn on_page(
        &mut self,
        io: &mut impl ConnIo,
        group: GroupId,
        items: Vec<Item>,
        next: Cursor,
        has_more: bool,
    ) {
        let relay = self.relay;
        let Some(sync) = self.groups.get_mut(&group) else {
            return;
        };
        sync.pulling = false;
        if sync.paused {
            return;
        }
        let items: Vec<Item> = items
            .into_iter()
            .filter(|i| i.cursor.0 > sync.have)
            .collect();
        let last_received = items.iter().map(|i| i.cursor.0).max();
        let upto = page_upto(sync.have, next.0, last_received);
        sync.have = upto;
        // A page with nothing new cannot have more to follow: asking again would let a relay
        // keep us pulling empty pages forever.
        let again = (has_more && last_received.is_some()) || sync.pull_again;
        let is_done = !again && std::mem::take(&mut sync.is_sync_waiting);
        if !items.is_empty() || upto > 0 {
            io.emit(RelayEvent::Items {
                relay,
                group,
                mailbox: sync.signer.mailbox_id(),
                items,
                upto,
            });
        }
        if again {
            self.start_pull(io, group);
        } else if is_done {
            io.sync_done(group, Ok(()));
        }
    }

    fn join_all(&mut self, io: &mut impl ConnIo) {
        let unjoined: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, g)| !g.joined)
            .map(|(id, _)| *id)
            .collect();
        for group in unjoined {
            self.join(io, group);
        }
    }

    /// Send the group's `Join` (a fresh proof over this link's nonce).
    fn join(&mut self, io: &mut impl ConnIo, group: GroupId) {
        let Some(link) = self.link.as_ref() else {
            return;
        };
        let Some(sync) = self.groups.get(&group).filter(|g| !g.joined) else {
            return;
        };
        let proof = sign_join(&sync.signer, &self.relay, &self.device, &link.nonce);
        let (mailbox_key, admission) = (sync.signer.mailbox_key(), sync.admission.clone());
        self.send(
            io,
            |req| Frame::Join {
                req,
                mailbox_key,
                proof,
                admission,
            },
            Pending::Join(group),
        );
    }

    /// Subscribe to the group's live items after what this connection has.
    fn subscribe(&mut self, io: &mut impl ConnIo, group: GroupId) {
        let Some(sync) = self
            .groups
            .get(&group)
            .filter(|g| g.joined && (self.receive || g.always_receive))
        else {
            return;
        };
        let (mailbox, after) = (sync.signer.mailbox_id(), Cursor(sync.have));
        self.send(
            io,
            |req| Frame::Subscribe {
                req,
                mailbox,
                after,
            },
            Pending::Subscribe(group),
        );
    }

    fn start_pull(&mut self, io: &mut impl ConnIo, group: GroupId) {
        let Some(limits) = self.link.as_ref().map(|l| l.limits.clone()) else {
            return;
        };
        let Some(sync) = self.groups.get_mut(&group) else {
            return;
        };
        if !sync.joined || sync.paused {
            return;
        }
        if sync.pulling {
            sync.pull_again = true;
            return;
        }
        if sync.have.saturating_sub(sync.delivered) >= PULL_AHEAD_ITEMS_MAX {
            sync.is_pull_parked = true;
            return;
        }
        sync.is_pull_parked = false;
        sync.pulling = true;
        sync.pull_again = false;
        let (mailbox, after) = (sync.signer.mailbox_id(), Cursor(sync.have));
        self.send(
            io,
            |req| Frame::Pull {
                req,
                mailbox,
                after,
                max_items: limits.pull_items_max,
                max_bytes: limits.pull_bytes_max,
            },
            Pending::Pull(group),
        );
    }

    /// Send the group's queued pushes while the window has room.
    fn flush_pushes(&mut self, io: &mut impl ConnIo, group: GroupId) {
        loop {
            let Some(link) = self.link.as_ref() else {
                return;
            };
            if link.pushes_in_flight >= PUSHES_IN_FLIGHT_MAX || link.is_stalled || !io.push_room() {
                return;
            }
            let Some(sync) = self.groups.get_mut(&group).filter(|g| g.joined) else {
                return;
            };
            let Some((seq, blob_id, ciphertext)) = sync.queued.pop_front() else {
                return;
            };
            let mailbox = sync.signer.mailbox_id();
            self.send(
                io,
                |req| Frame::Push {
                    req,
                    mailbox,
                    blob_id,
                    ciphertext,
                    ttl_secs: None,
                },
                Pending::Push { group, seq },
            );
        }
    }

    /// Drop the requests in flight for `group`: their answers are ignored.
    fn forget_requests(&mut self, group: GroupId) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let mut pushes = 0;
        link.pending.retain(|_, p| {
            let of_group = match p {
                Pending::Join(g) | Pending::Subscribe(g) | Pending::Pull(g) => *g == group,
                Pending::Push { group: g, .. } => *g == group,
                Pending::Ping => false,
            };
            if of_group && matches!(p, Pending::Push { .. }) {
                pushes += 1;
            }
            !of_group
        });
        link.pushes_in_flight = link.pushes_in_flight.saturating_sub(pushes);
    }

    /// Queue a request; never waits.
    fn send(&mut self, io: &mut impl ConnIo, make: impl FnOnce(ReqId) -> Frame, pending: Pending) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        if link.is_stalled {
            return;
        }
        let req = link.next_req;
        link.next_req += 1;
        if !io.send(make(ReqId(req))) {
            link.is_stalled = true;
            return;
        }
        if matches!(pending, Pending::Push { .. }) {
            link.pushes_in_flight += 1;
        }
        link.pending.insert(req, pending);
    }

    fn group_of_mailbox(&self, mailbox: &MailboxId) -> Option<GroupId> {
        self.groups
            .iter()
            .find(|(_, g)| g.signer.mailbox_id() == *mailbox)
            .map(|(id, _)| *id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::GroupSecret;
    use zerok_messages::{Epoch, ErrorCode};

    const RELAY: DeviceId = DeviceId([7; 32]);
    const DEVICE: DeviceId = DeviceId([1; 32]);

    /// Records the effects.
    #[derive(Default)]
    struct Record {
        sent: Vec<Frame>,
        events: Vec<RelayEvent>,
        retries: Vec<(GroupId, Retry, Duration)>,
        done: Vec<(GroupId, Result<(), SyncError>)>,
        is_full: bool,
    }

    impl ConnIo for Record {
        fn send(&mut self, frame: Frame) -> bool {
            self.sent.push(frame);
            true
        }
        fn push_room(&self) -> bool {
            !self.is_full
        }
        fn emit(&mut self, event: RelayEvent) {
            self.events.push(event);
        }
        fn retry_later(&mut self, group: GroupId, request: Retry, after: Duration) {
            self.retries.push((group, request, after));
        }
        fn sync_done(&mut self, group: GroupId, result: Result<(), SyncError>) {
            self.done.push((group, result));
        }
    }

    fn group() -> (GroupId, ConnGroup) {
        let keys = GroupSecret::from_bytes([3; 32]).epoch_keys(Epoch(0));
        let group = GroupId(keys.mailbox_id());
        let conn_group = ConnGroup {
            group,
            mailbox: keys.mailbox_id(),
            mailbox_seed: keys.mailbox_signer().seed(),
            cursor: 0,
            admission: None,
            always_receive: false,
        };
        (group, conn_group)
    }

    fn limits() -> Limits {
        Limits {
            frame_bytes_max: 1 << 20,
            blob_bytes_max: 1 << 20,
            pull_items_max: 1000,
            pull_bytes_max: 4 << 20,
            mailbox_quota_bytes: 1 << 30,
            ttl_default_secs: 3600,
            ttl_max_secs: 3600,
            inflight_max: 64,
        }
    }

    /// A core whose one group is joined; the effects so far cleared.
    fn joined() -> (ConnCore, Record, GroupId, MailboxId) {
        let (group, conn_group) = group();
        let mailbox = conn_group.mailbox;
        let mut core = ConnCore::new(RELAY, DEVICE, true, &[conn_group]);
        let mut io = Record::default();
        core.connected(&mut io, [0; 32], limits(), Instant::now());
        let Some(Frame::Join { req, .. }) = io.sent.pop() else {
            panic!("a join first");
        };
        let joined = Frame::Joined {
            req,
            mailbox,
            latest: Cursor(0),
        };
        assert_eq!(
            core.on_frame(&mut io, joined, Instant::now()),
            Flow::Continue
        );
        assert!(matches!(io.events[..], [RelayEvent::Joined { .. }]));
        assert!(matches!(
            io.sent[..],
            [Frame::Subscribe {
                after: Cursor(0),
                ..
            }]
        ));
        (core, Record::default(), group, mailbox)
    }

    fn items(from: u64, to: u64) -> Vec<Item> {
        (from..=to)
            .map(|n| Item {
                cursor: Cursor(n),
                blob_id: BlobId::of_ciphertext(&n.to_be_bytes()),
                ciphertext: Bytes::copy_from_slice(&n.to_be_bytes()),
                stored_at_ms: 0,
            })
            .collect()
    }

    fn last_pull(io: &Record) -> Option<(ReqId, Cursor)> {
        io.sent.iter().rev().find_map(|f| match f {
            Frame::Pull { req, after, .. } => Some((*req, *after)),
            _ => None,
        })
    }

    #[test]
    fn a_notify_pulls_and_pages_go_on_until_the_end_then_answer_the_sync() {
        let (mut core, mut io, group, mailbox) = joined();
        assert_eq!(core.sync_now(&mut io, group), SyncStart::Waiting);
        let (req, after) = last_pull(&io).expect("a sync pulls");
        assert_eq!(after, Cursor(0));
        let page = Frame::PullPage {
            req,
            items: items(1, 3),
            next: Cursor(3),
            has_more: true,
        };
        core.on_frame(&mut io, page, Instant::now());
        assert!(
            matches!(&io.events[..], [RelayEvent::Items { upto: 3, items, .. }] if items.len() == 3)
        );
        let (req, after) = last_pull(&io).expect("more: pulled again");
        assert_eq!(after, Cursor(3));
        let end = Frame::PullPage {
            req,
            items: Vec::new(),
            next: Cursor(3),
            has_more: false,
        };
        core.on_frame(&mut io, end, Instant::now());
        assert_eq!(io.done, [(group, Ok(()))]);
        // A Notify beyond what we have pulls again; one at what we have does not.
        let before = io.sent.len();
        let at = Frame::Notify {
            mailbox,
            latest: Cursor(3),
        };
        core.on_frame(&mut io, at, Instant::now());
        assert_eq!(io.sent.len(), before);
        let beyond = Frame::Notify {
            mailbox,
            latest: Cursor(9),
        };
        core.on_frame(&mut io, beyond, Instant::now());
        assert_eq!(last_pull(&io).map(|(_, a)| a), Some(Cursor(3)));
        assert_eq!(io.sent.len(), before + 1);
    }

    #[test]
    fn subscribed_with_items_beyond_the_cursor_pulls_without_waiting_for_a_notify() {
        let (mut core, mut io, _, mailbox) = joined();
        let (group, _) = group();
        core.subscribe(&mut io, group);
        let Some(Frame::Subscribe { req, .. }) = io.sent.pop() else {
            panic!("a subscribe");
        };
        let subscribed = Frame::Subscribed {
            req,
            mailbox,
            latest: Cursor(8492),
        };
        core.on_frame(&mut io, subscribed, Instant::now());
        assert_eq!(last_pull(&io).map(|(_, a)| a), Some(Cursor(0)));
    }

    #[test]
    fn pulls_park_ahead_of_what_was_delivered_and_go_on_as_it_is() {
        let (mut core, mut io, group, mailbox) = joined();
        let notify = Frame::Notify {
            mailbox,
            latest: Cursor(10_000),
        };
        core.on_frame(&mut io, notify, Instant::now());
        let mut have = 0;
        while let Some((req, after)) = last_pull(&io) {
            io.sent.clear();
            let to = after.0 + 1000;
            let page = Frame::PullPage {
                req,
                items: items(after.0 + 1, to),
                next: Cursor(to),
                has_more: true,
            };
            core.on_frame(&mut io, page, Instant::now());
            have = to;
        }
        // Parked at the bound: nothing delivered yet.
        assert_eq!(have, PULL_AHEAD_ITEMS_MAX.div_ceil(1000) * 1000);
        core.delivered(&mut io, group, 2000);
        assert_eq!(last_pull(&io).map(|(_, a)| a), Some(Cursor(have)));
    }

    #[test]
    fn a_refused_join_subscribe_or_pull_is_sent_again_after_the_hint_and_a_bare_refusal_fails_the_sync()
     {
        let (group, conn_group) = group();
        let mut core = ConnCore::new(RELAY, DEVICE, true, &[conn_group]);
        let mut io = Record::default();
        core.connected(&mut io, [0; 32], limits(), Instant::now());
        let Some(Frame::Join { req, .. }) = io.sent.pop() else {
            panic!("a join");
        };
        let busy = |req, retry_after_ms| Frame::Error {
            req: Some(req),
            code: ErrorCode::RateLimited,
            message: "busy".into(),
            retry_after_ms,
        };
        core.on_frame(&mut io, busy(req, Some(700)), Instant::now());
        assert_eq!(
            io.retries,
            [(group, Retry::Join, Duration::from_millis(700))]
        );
        core.retry(&mut io, group, Retry::Join);
        assert!(matches!(io.sent[..], [Frame::Join { .. }]));
        // Refused without a hint (no token to create the mailbox): given up on, except for a
        // meeting mailbox, which its creator may make later.
        for meeting in [false, true] {
            let (group, mut conn_group) = self::group();
            conn_group.always_receive = meeting;
            let mut core = ConnCore::new(RELAY, DEVICE, true, &[conn_group]);
            let mut io = Record::default();
            core.connected(&mut io, [0; 32], limits(), Instant::now());
            let Some(Frame::Join { req, .. }) = io.sent.pop() else {
                panic!("a join");
            };
            let refused = Frame::Error {
                req: Some(req),
                code: ErrorCode::Unauthorized,
                message: "admission token required".into(),
                retry_after_ms: None,
            };
            core.on_frame(&mut io, refused, Instant::now());
            let expected = if meeting {
                vec![(group, Retry::Join, MEETING_JOIN_RETRY)]
            } else {
                Vec::new()
            };
            assert_eq!(io.retries, expected, "meeting {meeting}");
        }

        let (mut core, mut io, group, _) = joined();
        core.sync_now(&mut io, group);
        let (req, _) = last_pull(&io).unwrap();
        core.on_frame(&mut io, busy(req, None), Instant::now());
        assert_eq!(
            io.done,
            [(group, Err(SyncError::Refused(ErrorCode::RateLimited)))]
        );
    }

    #[test]
    fn pushes_wait_for_the_window_and_go_on_with_acks() {
        let (mut core, mut io, group, _) = joined();
        let pushes: Vec<_> = (1..=PUSHES_IN_FLIGHT_MAX as u64 + 5)
            .map(|seq| (seq, BlobId([seq as u8; 32]), Bytes::from_static(b"x")))
            .collect();
        core.resend(&mut io, group, pushes);
        let sent = |io: &Record| {
            io.sent
                .iter()
                .filter(|f| matches!(f, Frame::Push { .. }))
                .count()
        };
        assert_eq!(sent(&io), PUSHES_IN_FLIGHT_MAX);
        let Some(Frame::Push { req, .. }) = io.sent.first().cloned() else {
            panic!("a push");
        };
        core.on_frame(
            &mut io,
            Frame::PushAck {
                req,
                cursor: Cursor(1),
                duplicate: false,
            },
            Instant::now(),
        );
        assert!(matches!(io.events[..], [RelayEvent::Acked { seq: 1, .. }]));
        assert_eq!(sent(&io), PUSHES_IN_FLIGHT_MAX + 1);
        // A full send queue holds pushes back; the link going away forgets them (the
        // coordinator resends on the next Joined).
        io.is_full = true;
        let Some(Frame::Push { req, .. }) = io.sent.get(1).cloned() else {
            panic!("a push");
        };
        core.on_frame(
            &mut io,
            Frame::PushAck {
                req,
                cursor: Cursor(2),
                duplicate: false,
            },
            Instant::now(),
        );
        assert_eq!(sent(&io), PUSHES_IN_FLIGHT_MAX + 1);
        assert!(core.lost(&mut io, SyncError::Lost("test".into())));
        assert!(!core.has_link());
    }

    #[test]
    fn a_relays_next_never_skips_items_it_did_not_send() {
        assert_eq!(page_upto(0, 1000, Some(3)), 3);
        assert_eq!(page_upto(5, u64::MAX, Some(7)), 7);
        assert_eq!(page_upto(5, 9, None), 5);
        assert_eq!(page_upto(5, 2, Some(6)), 5);
    }
}
