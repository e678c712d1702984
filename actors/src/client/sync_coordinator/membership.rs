//! Membership (issue 14, DESIGN.md §4 "Membership"): each group's roster, kept from the
//! `ROSTER` records of its mailbox, and the invite mailboxes where members admit devices.
//!
//! - A roster operation is an ordinary record of the group (kind `ROSTER`, sealed, signed,
//!   in the author's seqs): it reaches every relay through the outbox and every device
//!   through sync. A received one counts only if its author is the record's sender and a
//!   member; this device's own are applied as they are queued.
//! - In a group with a roster, records of devices that are not members are reported
//!   (`UnknownSender`), never delivered (`judge`).
//! - **Invite mailboxes** ride on the relay connections as extra groups, their items routed
//!   here instead of to the Encryptor. A member watches the mailbox of every invite its
//!   roster holds until it expires or is used; a request there is judged by [`Admitter::serve`]; the
//!   `Add` it makes is queued like any record, and the admission is posted only once **every**
//!   relay of the group acked that `Add`: so on every relay the `Add` comes before the
//!   joiner's first record, and receivers need no hold buffer. A joiner's watch
//!   (`WatchInvite`) posts its request and hands the mailbox's items to the joining call.

use super::*;
use crate::crypto::admit::{Admitter, InviteKeys, Served};
use crate::crypto::roster::{Change, EpochId, Member, Op, Roster, SecretBytes};
use crate::crypto::seq::SeqVerdict;
use delivery::Judged;
use zerok_messages::Item;
use zerok_messages::client::{
    DeviceInfo, Founder, InviteWatch, RecordKind, RecoveryAdded, UNWATCH_GRACE,
};

/// Invites of one group whose mailboxes a member watches at once: its own first, newest
/// first, then the other members' newest (an invite just made is the one about to be used,
/// and a member handing out invites by the thousand cannot starve another's).
pub const WATCHED_INVITES_MAX: usize = 16;
/// How long an admitting member waits, once the group's quorum of relays acked the `Add`,
/// for the other relays to ack it before it posts the admission anyway: a relay that is
/// down (or refuses this device) must not stop every admission. Until that relay has the
/// `Add`, readers of it alone may see the joiner's first records reported as
/// `UnknownSender`; the relays that had it deliver them.
pub const ADMISSION_WAIT_ALL_RELAYS: Duration = Duration::from_secs(10);
/// Items of one invite mailbox a member judges; past it the mailbox is flooded (only a
/// token holder can post there) and the rest are ignored.
pub const INVITE_ITEMS_MAX: usize = 64;

/// Who watches an invite mailbox.
pub(super) enum Role {
    /// A member, admitting into `group`.
    Member { group: GroupId },
    /// A call of this device (a joiner waiting to be admitted, a pairing): the mailbox's
    /// items go to it; `admission` is the group whose admission tokens its Joins carry.
    Joiner {
        items: mpsc::Sender<Vec<Item>>,
        admission: Option<GroupId>,
    },
    /// A member keeping `group`'s snapshot for a recovery phrase (its latest post is a
    /// snapshot of `epoch`).
    Recovery {
        group: GroupId,
        epoch: Option<EpochId>,
    },
}

/// An invite mailbox this device meets others in.
pub(super) struct Watch {
    pub(super) seed: MailboxSeed,
    pub(super) relays: Vec<RelayAddr>,
    pub(super) role: Role,
    /// What this device posted there, `(seq, blob_id, bytes)`: sent again on every join.
    pub(super) posts: Vec<(u64, BlobId, Bytes)>,
    /// Past this time (unix ms) the watch ends (`u64::MAX` for a joiner's: it ends it).
    pub(super) expires_at_ms: u64,
    /// This device answered a request here: the watch stays until the invite expires, even
    /// once the invite is used (its admission may still wait for its `Add`'s acks, and the
    /// joiner reads it from here).
    pub(super) answered: bool,
    /// Items judged so far, by id (members: at most [`INVITE_ITEMS_MAX`]): the same request
    /// served by every relay is judged once.
    pub(super) judged: BTreeSet<BlobId>,
    /// Seqs of `posts` some relay acked.
    pub(super) acked: BTreeSet<u64>,
    /// Tells this watch from a later one of the same mailbox.
    pub(super) serial: u64,
    /// Unwatched: it ends once every post is acked, or at its `UnwatchDue`.
    pub(super) closing: bool,
    /// Told when a relay next acks a post here.
    pub(super) on_acked: Vec<tokio::sync::oneshot::Sender<()>>,
    /// The device this (member's) watch last admitted.
    pub(super) admitted: Option<DeviceId>,
    /// Told, once a relay acked a post here, the device admitted (`AdmissionPosted`).
    pub(super) on_admitted: Vec<tokio::sync::oneshot::Sender<DeviceId>>,
}

impl Watch {
    /// A watch of a mailbox (signed for by `seed`) on `relays` that has posted `posts`.
    fn new(
        seed: MailboxSeed,
        relays: Vec<RelayAddr>,
        role: Role,
        expires_at_ms: u64,
        posts: Vec<(u64, BlobId, Bytes)>,
        serial: u64,
    ) -> Watch {
        Watch {
            seed,
            relays,
            role,
            posts,
            expires_at_ms,
            answered: false,
            judged: BTreeSet::new(),
            acked: BTreeSet::new(),
            serial,
            closing: false,
            on_acked: Vec::new(),
            admitted: None,
            on_admitted: Vec::new(),
        }
    }
}

/// An admission waiting until every relay of the group acked its `Add`.
pub(super) struct Admitting {
    pub(super) group: GroupId,
    /// The `Add`'s outbox seq.
    pub(super) seq: u64,
    /// The invite mailbox to post in.
    pub(super) watch: GroupId,
    pub(super) admission: Vec<u8>,
}

/// A founder's roster entry.
pub(super) fn founder_member(founder: &Founder) -> Member {
    Member {
        device: founder.device,
        wrap_key: founder.wrap_key,
        name: founder.name.clone(),
        added_by: founder.device,
        added_at_ms: founder.at_ms,
        via: None,
        recovery: None,
    }
}

/// The group state's verdict on a received record: roster first, then seqs; a roster
/// operation from a member is applied (and kept in the store) here.
pub(super) fn judge(
    store: &LocalStore,
    now_ms: u64,
    group_id: GroupId,
    state: &mut GroupState,
    record: &OpenedRecord,
) -> (Judged, bool) {
    let mut changed = false;
    if let Some(roster) = &mut state.roster
        && !roster.is_member(&roster.head(), &record.sender)
    {
        // A device adding itself with a recovery phrase's endorsement: its first record.
        if !(record.kind == RecordKind::ROSTER && take_self_add(store, group_id, roster, record)) {
            return (Judged::NotMember, false);
        }
        changed = true;
    }
    let verdict = state.tracker.observe(record.sender, record.seq);
    state.hlc.observe(record.hlc, now_ms);
    state.tracker.note_seen(
        record.sender,
        crate::crypto::seq::Hlc::unix_ms(record.hlc),
        now_ms,
    );
    if let Some(roster) = &mut state.roster
        && record.kind == RecordKind::ROSTER
        && verdict != SeqVerdict::Replay
    {
        changed |= take_op(store, group_id, roster, record);
    }
    (Judged::Seq(verdict), changed)
}

/// A non-member's roster record: applied only if it is an endorsed self-add that makes its
/// sender a member of the head epoch (anything else from a non-member is not kept).
fn take_self_add(
    store: &LocalStore,
    group: GroupId,
    roster: &mut Roster,
    record: &OpenedRecord,
) -> bool {
    let Ok(op) = ciborium::from_reader::<Op, _>(record.payload.as_slice()) else {
        return false;
    };
    if op.author != record.sender || op.epoch != roster.head() || !roster.admits_itself(&op) {
        return false;
    }
    take_op(store, group, roster, record) && roster.is_member(&roster.head(), &record.sender)
}

/// Apply a received roster operation (its author must be the record's sender); answers
/// whether the roster changed.
fn take_op(store: &LocalStore, group: GroupId, roster: &mut Roster, record: &OpenedRecord) -> bool {
    let op: Op = match ciborium::from_reader(record.payload.as_slice()) {
        Ok(op) => op,
        Err(_) => {
            warn!(sender = %record.sender.short(), "roster record does not parse; ignored");
            return false;
        }
    };
    if op.author != record.sender {
        warn!(sender = %record.sender.short(), "roster operation signed by another device than its author; ignored");
        return false;
    }
    match roster.apply(op.clone()) {
        Ok(true) => {
            if let Err(err) = store.put_roster_ops(&group, &[op]) {
                warn!(error = %err, "roster operation not kept");
            }
            true
        }
        Ok(false) => false,
        Err(err) => {
            warn!(error = %err, "roster operation refused");
            false
        }
    }
}

impl CoordinatorState {
    /// Queue this device's roster operation in `group` (applied and kept at once); answers
    /// its outbox seq. `reply` hears when it is durable.
    pub(super) fn write_op(
        &mut self,
        myself: &ActorRef<CoordMsg>,
        group: GroupId,
        op: Op,
        reply: RpcReplyPort<Result<Vec<(u64, BlobId)>, ClientError>>,
    ) -> Result<u64, ClientError> {
        let mut payload = Vec::new();
        ciborium::into_writer(&op, &mut payload)
            .map_err(|e| StoreError::Db(format!("roster operation: {e}")))?;
        let state = self
            .groups
            .get_mut(&group)
            .ok_or(ClientError::UnknownGroup(group))?;
        let roster = state.roster.as_mut().ok_or(ClientError::NoRoster(group))?;
        roster
            .apply(op.clone())
            .map_err(|e| StoreError::Db(e.to_string()))?;
        self.args.store.put_roster_ops(&group, &[op])?;
        let seq = state.next_seq;
        self.enqueue(myself, group, RecordKind::ROSTER, vec![payload], reply);
        Ok(seq)
    }

    /// `CoordMsg::Invite`: make the invite known to every member (a roster operation), and
    /// answer its secret once that operation is durable here.
    pub(super) async fn invite(
        &mut self,
        myself: &ActorRef<CoordMsg>,
        group: GroupId,
        expires_at_ms: u64,
        secret: Option<Zeroizing<[u8; 32]>>,
        reply: RpcReplyPort<Result<Zeroizing<[u8; 32]>, ClientError>>,
    ) {
        let me = self.args.device.device_id();
        let secret = secret.unwrap_or_else(|| Zeroizing::new(self.args.rng.bytes()));
        let made = (|| {
            let state = self
                .groups
                .get(&group)
                .ok_or(ClientError::UnknownGroup(group))?;
            let roster = state.roster.as_ref().ok_or(ClientError::NoRoster(group))?;
            let head = roster.head();
            if !roster.is_member(&head, &me) {
                return Err(ClientError::NoRoster(group));
            }
            // Later than this device's invites before it, even within one millisecond: a
            // member watches its newest invites.
            let after = roster
                .invites()
                .iter()
                .filter(|i| i.issued_by == me)
                .map(|i| i.issued_at_ms + 1)
                .max()
                .unwrap_or(0);
            Ok(Op {
                author: me,
                epoch: head,
                at_ms: self.args.clock.now_unix_ms().max(after),
                change: Change::Invite {
                    id: InviteKeys::from_secret(&secret).mailbox_id(),
                    secret: SecretBytes(*secret),
                    expires_at_ms,
                },
            })
        })();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let written = made.and_then(|op| self.write_op(myself, group, op, tx.into()));
        if let Err(err) = written {
            let _ = reply.send(Err(err));
            return;
        }
        self.refresh_watches(myself).await;
        tokio::spawn(async move {
            let answer = match rx.await {
                Ok(Ok(_)) => Ok(secret),
                Ok(Err(err)) => Err(err),
                Err(_) => Err(ClientError::Stopped),
            };
            let _ = reply.send(answer);
        });
    }

    /// Watch the mailbox of every invite a member may still admit with (and stop watching
    /// the rest); re-wire the connections if that changed anything.
    pub(super) async fn refresh_watches(&mut self, myself: &ActorRef<CoordMsg>) {
        let me = self.args.device.device_id();
        let now = self.args.clock.now_unix_ms();
        let mut wanted: BTreeMap<GroupId, (GroupId, SecretBytes, u64)> = BTreeMap::new();
        for (id, state) in &self.groups {
            let Some(roster) = &state.roster else {
                continue;
            };
            if !roster.is_member(&roster.head(), &me) {
                continue;
            }
            let mut invites = roster.invites();
            // A used invite is watched only by the member that admitted with it, for a
            // joiner that asks again (its admission was lost in a crash of either side):
            // the `Add` is on the roster, so it gets its admission again, without another.
            // Only a receiving client does (a long-running one): a push-only command does
            // not read a used invite's mailbox every time it starts.
            let admitted_by_me = |id: &MailboxId| {
                roster
                    .members()
                    .any(|m| m.via.as_ref() == Some(id) && m.added_by == me)
            };
            let receive = self.args.receive;
            invites.retain(|i| {
                now < i.expires_at_ms && (i.used_by.is_none() || (receive && admitted_by_me(&i.id)))
            });
            invites.sort_by_key(|i| (i.issued_by != me, std::cmp::Reverse(i.issued_at_ms)));
            for invite in invites.into_iter().take(WATCHED_INVITES_MAX) {
                wanted.insert(
                    GroupId(invite.id),
                    (*id, invite.secret, invite.expires_at_ms),
                );
            }
        }
        let before: BTreeSet<GroupId> = self.watches.keys().copied().collect();
        self.watches.retain(|id, watch| match watch.role {
            Role::Member { .. } => {
                wanted.contains_key(id) || (watch.answered && now < watch.expires_at_ms)
            }
            Role::Joiner { .. } => true,
            // Kept by `keep_snapshots`.
            Role::Recovery { .. } => true,
        });
        for (id, (group, secret, expires_at_ms)) in wanted {
            if !self.watches.contains_key(&id) {
                let role = Role::Member { group };
                self.watch_mailbox(id, group, &secret.0, role, expires_at_ms);
            }
        }
        self.keep_snapshots(false);
        let after: BTreeSet<GroupId> = self.watches.keys().copied().collect();
        if before != after {
            self.rewire(myself).await;
        }
    }

    /// `AdmissionPosted`. A member posts nothing but admissions in an invite's mailbox, so
    /// any post of it a relay acked is one.
    pub(super) fn admission_posted(
        &mut self,
        mailbox: MailboxId,
        told: tokio::sync::oneshot::Sender<DeviceId>,
    ) {
        let Some(watch) = self.watches.get_mut(&GroupId(mailbox)) else {
            return;
        };
        if !matches!(watch.role, Role::Member { .. }) {
            return;
        }
        match watch.admitted {
            Some(device) if !watch.acked.is_empty() => {
                let _ = told.send(device);
            }
            _ => watch.on_admitted.push(told),
        }
    }

    /// `WatchInvite`: the joiner's side.
    pub(super) async fn watch_invite(&mut self, myself: &ActorRef<CoordMsg>, watch: InviteWatch) {
        let serial = self.next_watch_serial();
        self.watches.insert(
            GroupId(watch.mailbox),
            Watch::new(
                watch.seed,
                watch.relays,
                Role::Joiner {
                    items: watch.items,
                    admission: watch.admission_group,
                },
                u64::MAX,
                watch
                    .request
                    .into_iter()
                    .map(|(blob_id, request)| (1, blob_id, request))
                    .collect(),
                serial,
            ),
        );
        self.rewire(myself).await;
    }

    fn next_watch_serial(&mut self) -> u64 {
        self.watch_serial += 1;
        self.watch_serial
    }

    /// `UnwatchInvite`: the watch ends once a relay acked everything posted there (the other
    /// side reads it from there), or [`UNWATCH_GRACE`] from now.
    pub(super) async fn unwatch(&mut self, myself: &ActorRef<CoordMsg>, mailbox: MailboxId) {
        let Some(watch) = self.watches.get_mut(&GroupId(mailbox)) else {
            return;
        };
        watch.closing = true;
        if watch
            .posts
            .iter()
            .all(|(seq, _, _)| watch.acked.contains(seq))
        {
            self.watches.remove(&GroupId(mailbox));
            self.rewire(myself).await;
        } else {
            let serial = watch.serial;
            myself.send_after(UNWATCH_GRACE, move || CoordMsg::UnwatchDue {
                mailbox,
                serial,
            });
        }
    }

    /// `UnwatchDue`.
    pub(super) async fn unwatch_due(
        &mut self,
        myself: &ActorRef<CoordMsg>,
        mailbox: MailboxId,
        serial: u64,
    ) {
        let id = GroupId(mailbox);
        if self.watches.get(&id).is_some_and(|w| w.serial == serial) {
            self.watches.remove(&id);
            self.rewire(myself).await;
        }
    }

    /// A relay acked this device's post `seq` in the watched mailbox `id`.
    pub(super) async fn on_watch_acked(
        &mut self,
        myself: &ActorRef<CoordMsg>,
        id: GroupId,
        seq: u64,
    ) {
        let Some(watch) = self.watches.get_mut(&id) else {
            return;
        };
        watch.acked.insert(seq);
        for told in watch.on_acked.drain(..) {
            let _ = told.send(());
        }
        if let Some(device) = watch.admitted {
            for told in watch.on_admitted.drain(..) {
                let _ = told.send(device);
            }
        }
        if watch.closing
            && watch
                .posts
                .iter()
                .all(|(seq, _, _)| watch.acked.contains(seq))
        {
            self.watches.remove(&id);
            self.rewire(myself).await;
        }
    }

    /// Items of an invite mailbox.
    pub(super) fn on_watch_items(
        &mut self,
        myself: &ActorRef<CoordMsg>,
        id: GroupId,
        items: Vec<Item>,
    ) {
        let Some(watch) = self.watches.get_mut(&id) else {
            return;
        };
        let group = match &watch.role {
            Role::Joiner { items: to, .. } => {
                // Never waits: a joining call that stopped reading misses nothing it needs
                // (the mailbox is read again from its start on the next join).
                let _ = to.try_send(items);
                return;
            }
            Role::Member { group } => *group,
            // A snapshot mailbox: nothing to read there.
            Role::Recovery { .. } => return,
        };
        let posted: BTreeSet<BlobId> = watch.posts.iter().map(|(_, b, _)| *b).collect();
        for item in items {
            if posted.contains(&item.blob_id) {
                continue;
            }
            let Some(watch) = self.watches.get_mut(&id) else {
                return;
            };
            if watch.judged.contains(&item.blob_id) {
                continue;
            }
            if watch.judged.len() >= INVITE_ITEMS_MAX {
                debug!(invite = %id.0.short(), "invite mailbox flooded; further items ignored");
                return;
            }
            watch.judged.insert(item.blob_id);
            self.serve(myself, group, id, &item.ciphertext);
        }
    }

    /// Judge one request posted in the invite mailbox `watch` of `group`.
    fn serve(
        &mut self,
        myself: &ActorRef<CoordMsg>,
        group: GroupId,
        watch: GroupId,
        request: &[u8],
    ) {
        let now = self.args.clock.now_unix_ms();
        let Some(state) = self.groups.get(&group) else {
            return;
        };
        let Some(roster) = &state.roster else {
            return;
        };
        let admitter = Admitter {
            device: &self.args.device,
            group: group.0,
            group_name: &state.record.name,
            relays: &state.record.relays,
            roster,
            epoch_secret: &state.secret.secret,
        };
        let served = admitter.serve(&watch.0, request, now, &mut self.args.rng);
        let Served {
            joiner,
            add,
            admission,
        } = match served {
            Ok(served) => served,
            Err(refusal) => {
                debug!(invite = %watch.0.short(), %refusal, "join request not admitted");
                return;
            }
        };
        if let Some(w) = self.watches.get_mut(&watch) {
            w.answered = true;
            w.admitted = Some(joiner);
        }
        match add {
            Some(op) => {
                // Posted once every relay of the group acked the Add (`on_added`).
                let (tx, _) = tokio::sync::oneshot::channel();
                match self.write_op(myself, group, op, tx.into()) {
                    Ok(seq) => {
                        self.admitting.push(Admitting {
                            group,
                            seq,
                            watch,
                            admission,
                        });
                    }
                    Err(err) => warn!(error = %err, "admission's roster operation not queued"),
                }
            }
            // The device was admitted with this invite before and asks again.
            None => self.post(watch, admission),
        }
    }

    /// The quorum of `group`'s relays acked its push `seq`: an admission waiting for it is
    /// posted after [`ADMISSION_WAIT_ALL_RELAYS`] unless every relay acked it before.
    pub(super) fn on_quorum_acked(&self, myself: &ActorRef<CoordMsg>, group: GroupId, seq: u64) {
        if self
            .admitting
            .iter()
            .any(|a| a.group == group && a.seq == seq)
        {
            myself.send_after(ADMISSION_WAIT_ALL_RELAYS, move || CoordMsg::AdmissionDue {
                group,
                seq,
            });
        }
    }

    /// Every relay of `group` acked its push `seq` (or the wait for them is over): an
    /// admission waiting for it is posted once everything written here so far (the `Add`
    /// among it) is durable.
    pub(super) fn on_all_acked(&mut self, group: GroupId, seq: u64) {
        let (due, rest): (Vec<Admitting>, Vec<Admitting>) = std::mem::take(&mut self.admitting)
            .into_iter()
            .partition(|a| a.group == group && a.seq == seq);
        self.admitting = rest;
        for admitting in due {
            let ticket = self.args.store.request_flush();
            self.after_durable.push_back((
                ticket,
                AfterDurable::Post {
                    watch: admitting.watch,
                    bytes: admitting.admission,
                },
            ));
        }
    }

    /// Post `bytes` in the invite mailbox `watch` on its relays (again on every join).
    pub(super) fn post(&mut self, watch: GroupId, bytes: Vec<u8>) {
        let Some(w) = self.watches.get(&watch) else {
            return;
        };
        let seq = w.posts.len() as u64 + 1;
        self.post_as(watch, seq, bytes);
    }

    /// Post `bytes` as `seq` in the watched mailbox `watch`.
    fn post_as(&mut self, watch: GroupId, seq: u64, bytes: Vec<u8>) {
        let Some(w) = self.watches.get_mut(&watch) else {
            return;
        };
        let blob_id = BlobId(*blake3::hash(&bytes).as_bytes());
        let bytes = Bytes::from(bytes);
        w.posts.push((seq, blob_id, bytes.clone()));
        for relay in &w.relays {
            if let Some(conn) = self.conns.get(&relay.id) {
                let _ = conn.actor.cast(RelayConnMsg::Push {
                    group: watch,
                    seq,
                    blob_id,
                    ciphertext: bytes.clone(),
                });
            }
        }
    }

    /// `RelayEvent::Joined` of an invite mailbox: what this device posted there, again.
    pub(super) fn on_watch_joined(&self, relay: DeviceId, id: GroupId) {
        if let (Some(watch), Some(conn)) = (self.watches.get(&id), self.conns.get(&relay)) {
            let _ = conn.actor.cast(RelayConnMsg::Resend {
                group: id,
                entries: watch.posts.clone(),
            });
        }
    }

    /// Keep a snapshot of the group in the mailbox of every recovery phrase on the head
    /// rosters of the groups this device is a member of (a long-running client starts
    /// keeping them; a watch an export made is kept either way), post a fresh one where
    /// the group moved to another epoch since (or everywhere, `force`), and stop keeping
    /// those of entries no longer on the roster.
    pub(super) fn keep_snapshots(&mut self, force: bool) {
        let me = self.args.device.device_id();
        let mut wanted: BTreeMap<GroupId, (GroupId, Member)> = BTreeMap::new();
        for (id, state) in &self.groups {
            let Some(roster) = &state.roster else {
                continue;
            };
            if state.record.removed || !roster.is_member(&roster.head(), &me) {
                continue;
            }
            for entry in roster.members() {
                if let Some(secret) = &entry.recovery {
                    let mailbox = InviteKeys::from_secret(&secret.0).mailbox_id();
                    wanted.insert(GroupId(mailbox), (*id, entry.clone()));
                }
            }
        }
        self.watches.retain(|id, watch| match watch.role {
            Role::Recovery { .. } => wanted.contains_key(id),
            _ => true,
        });
        for (mailbox, (group, entry)) in wanted {
            let Some(head) = self
                .groups
                .get(&group)
                .and_then(|g| g.roster.as_ref())
                .map(Roster::head)
            else {
                continue;
            };
            match self.watches.get(&mailbox).map(|w| &w.role) {
                Some(Role::Recovery { epoch, .. }) if *epoch == Some(head) && !force => continue,
                Some(Role::Recovery { .. }) => {}
                // Another watch of the same mailbox (cannot be: the ids are hashes).
                Some(_) => continue,
                None if !self.args.receive => continue,
                None => self.start_keeping(group, &entry),
            }
            self.post_snapshot(mailbox, group, &entry, head);
        }
    }

    /// Start keeping the snapshot mailbox of `entry` (nothing posted yet).
    fn start_keeping(&mut self, group: GroupId, entry: &Member) {
        if let Some(secret) = &entry.recovery {
            let id = GroupId(InviteKeys::from_secret(&secret.0).mailbox_id());
            let role = Role::Recovery { group, epoch: None };
            self.watch_mailbox(id, group, &secret.0, role, u64::MAX);
        }
    }

    /// Watch the mailbox of `secret` (an invite's, a recovery phrase's), known as `id`, on
    /// `group`'s relays, as `role`, until `expires_at_ms` (nothing posted yet).
    fn watch_mailbox(
        &mut self,
        id: GroupId,
        group: GroupId,
        secret: &[u8; 32],
        role: Role,
        expires_at_ms: u64,
    ) {
        let Some(state) = self.groups.get(&group) else {
            return;
        };
        let keys = InviteKeys::from_secret(secret);
        let relays = state.relays.clone();
        let serial = self.next_watch_serial();
        let watch = Watch::new(
            keys.signer().seed(),
            relays,
            role,
            expires_at_ms,
            Vec::new(),
            serial,
        );
        self.watches.insert(id, watch);
    }

    /// Post a fresh snapshot of `group` (its `head` epoch) for `entry` in `mailbox`, in
    /// place of the one posted before (the relays keep that one until it expires).
    fn post_snapshot(&mut self, mailbox: GroupId, group: GroupId, entry: &Member, head: EpochId) {
        let Some(state) = self.groups.get(&group) else {
            return;
        };
        let Some(roster) = &state.roster else {
            return;
        };
        // Not while the group moves to its roster's head: the secret held is the old
        // epoch's (the move posts one when it is done).
        if epochs::current_epoch(&state.record) != head {
            return;
        }
        let admitter = Admitter {
            device: &self.args.device,
            group: group.0,
            group_name: &state.record.name,
            relays: &state.record.relays,
            roster,
            epoch_secret: &state.secret.secret,
        };
        let bytes = match crate::crypto::recovery::snapshot(&admitter, entry, &mut self.args.rng) {
            Ok(bytes) => bytes,
            Err(err) => {
                warn!(error = %err, "recovery snapshot not made");
                return;
            }
        };
        let Some(watch) = self.watches.get_mut(&mailbox) else {
            return;
        };
        watch.role = Role::Recovery {
            group,
            epoch: Some(head),
        };
        // Only the latest goes again on a join.
        let seq = watch.posts.last().map_or(0, |(seq, _, _)| *seq) + 1;
        watch.posts.clear();
        self.post_as(mailbox, seq, bytes);
    }

    /// `CoordMsg::AddRecovery`: the entry's `Add`, then its snapshot mailbox kept (by this
    /// device even if it is not a long-running one: the export waits for the snapshot).
    pub(super) async fn add_recovery(
        &mut self,
        myself: &ActorRef<CoordMsg>,
        group: GroupId,
        entry: DeviceId,
        wrap_key: [u8; 32],
        mailbox_secret: Zeroizing<[u8; 32]>,
        reply: RpcReplyPort<Result<RecoveryAdded, ClientError>>,
    ) {
        let me = self.args.device.device_id();
        let made = epochs::writable_head(&self.groups, &me, group).map(|(_, head)| Op {
            author: me,
            epoch: head,
            at_ms: self.args.clock.now_unix_ms(),
            change: Change::Add {
                device: entry,
                wrap_key,
                name: crate::crypto::recovery::ENTRY_NAME.to_owned(),
                via: None,
                recovery: Some(SecretBytes(*mailbox_secret)),
                endorsed: None,
            },
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Err(err) = made.and_then(|op| self.write_op(myself, group, op, tx.into())) {
            let _ = reply.send(Err(err));
            return;
        }
        let mailbox = GroupId(InviteKeys::from_secret(&mailbox_secret).mailbox_id());
        let entry_member = self
            .groups
            .get(&group)
            .and_then(|g| g.roster.as_ref())
            .and_then(|r| r.members().find(|m| m.device == entry).cloned());
        let (acked_tx, snapshot_acked) = tokio::sync::oneshot::channel();
        if let Some((entry, head)) = entry_member.zip(
            self.groups
                .get(&group)
                .and_then(|g| g.roster.as_ref())
                .map(Roster::head),
        ) {
            if !self.watches.contains_key(&mailbox) {
                self.start_keeping(group, &entry);
            }
            self.post_snapshot(mailbox, group, &entry, head);
            if let Some(watch) = self.watches.get_mut(&mailbox) {
                watch.on_acked.push(acked_tx);
            }
            self.rewire(myself).await;
        }
        tokio::spawn(async move {
            let answer = match rx.await {
                Ok(Ok(written)) => match written.first() {
                    Some((_, add)) => Ok(RecoveryAdded {
                        add: *add,
                        snapshot_acked,
                    }),
                    None => Err(ClientError::Stopped),
                },
                Ok(Err(err)) => Err(err),
                Err(_) => Err(ClientError::Stopped),
            };
            let _ = reply.send(answer);
        });
    }

    /// `CoordMsg::WriteRosterOp`: this device's own operation (a recovered device's
    /// self-add, already in the store).
    pub(super) fn write_roster_op(
        &mut self,
        myself: &ActorRef<CoordMsg>,
        group: GroupId,
        op: &[u8],
        reply: RpcReplyPort<Result<Vec<(u64, BlobId)>, ClientError>>,
    ) {
        let op: Op = match ciborium::from_reader(op) {
            Ok(op) => op,
            Err(e) => {
                let _ = reply.send(Err(StoreError::Db(format!("roster operation: {e}")).into()));
                return;
            }
        };
        if op.author != self.args.device.device_id() {
            let _ = reply.send(Err(ClientError::NotMember(group)));
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Err(err) = self.write_op(myself, group, op, tx.into()) {
            let _ = reply.send(Err(err));
            return;
        }
        tokio::spawn(async move {
            let answer = rx.await.unwrap_or(Err(ClientError::Stopped));
            let _ = reply.send(answer);
        });
    }

    /// `CoordMsg::Devices`.
    pub(super) fn devices(&self, group: GroupId) -> Result<Vec<DeviceInfo>, ClientError> {
        let state = self
            .groups
            .get(&group)
            .ok_or(ClientError::UnknownGroup(group))?;
        let roster = state.roster.as_ref().ok_or(ClientError::NoRoster(group))?;
        let me = self.args.device.device_id();
        Ok(roster
            .members()
            .map(|m| DeviceInfo {
                device: m.device,
                name: m.name.clone(),
                added_by: m.added_by,
                added_at_ms: m.added_at_ms,
                last_seen_ms: state.tracker.last_seen_ms(&m.device),
                is_self: m.device == me,
            })
            .collect())
    }
}
