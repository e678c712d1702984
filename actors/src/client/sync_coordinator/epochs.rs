//! Key epochs (issue 14, docs/DESIGN.md §4 "Removal"): a member removes a device by a
//! `Rekey` roster operation that wraps a fresh epoch secret to every other member. Every
//! member that takes it (the remover too) moves the group to the roster's head epoch:
//!
//! 1. App enqueues of the group wait (`held`), and nothing of it goes to relays.
//! 2. Its keys: the new epoch's secret is unwrapped with this device's wrap key (and any
//!    other epoch a rekey wrapped to it, a concurrent loser among them, so its records are
//!    read too); the Encryptor gets each.
//! 3. The outbox moves: every queued push is sealed again under the new epoch (the
//!    Encryptor's `Reseal`; same seq, timestamp and payload), except roster operations,
//!    which stay in the epoch they were written in (the rekey itself must reach the
//!    members through the old mailbox: they learn the new one from it).
//! 4. One atomic store write: the group's record (new secret, the left epoch among its
//!    past ones), the re-sealed pushes (acks forgotten) and the cursors, which now belong
//!    to the left epoch's mailbox. Then the connections join the new mailbox (read from
//!    its start), keep reading the past ones until relays dropped their records
//!    ([`PAST_EPOCH_READ`]), and pushes and held enqueues go on.
//!
//! A device the head epoch leaves out marks the group removed: it syncs it no more and
//! refuses enqueues (`ClientError::Removed`). A crash anywhere in between is harmless: the
//! rekey is in the roster (kept in the store), so the group is behind again when loaded and
//! the move runs again from the outbox as it was.

use super::*;
use crate::crypto::envelope::envelope_epoch;
use crate::crypto::roster::{Change, EpochId, Op};
use crate::crypto::wrap::{Purpose, WrapContext, unwrap, wrap};
use zerok_messages::client::{PastEpoch, Resealed};

/// How long a left epoch's mailbox is read: relays keep a record at most this long (their
/// largest TTL), so nothing written there before its writers moved on is missed.
pub const PAST_EPOCH_READ: Duration = Duration::from_secs(30 * 24 * 3600);
/// Blob ids of re-sealed pushes remembered (a caller may still wait for the old one).
const ALIASES_MAX: usize = 16_384;
/// BLAKE3 context of a past epoch's stream key.
const STREAM_CONTEXT: &str = "zerok past epoch stream v1";

/// A left epoch whose mailbox is still read.
pub(super) struct PastStream {
    /// Its key in connections, the Encryptor and the store's cursors.
    pub(super) stream: GroupId,
    pub(super) epoch: Epoch,
    pub(super) secret: EpochSecret,
    pub(super) mailbox: MailboxId,
    pub(super) seed: MailboxSeed,
    pub(super) read_until_ms: u64,
}

/// The move to a new epoch under way.
pub(super) struct Switch {
    head: EpochId,
    secret: Zeroizing<[u8; 32]>,
    /// Epochs left by this move (the current one first).
    left: Vec<PastEpoch>,
}

/// An app enqueue waiting for its group's move.
pub(super) struct Held {
    kind: RecordKind,
    payloads: Vec<Vec<u8>>,
    reply: RpcReplyPort<Result<Vec<(u64, BlobId)>, ClientError>>,
}

/// Old blob id → new, for pushes sealed again.
#[derive(Default)]
pub(super) struct Aliases {
    map: HashMap<BlobId, BlobId>,
    order: VecDeque<BlobId>,
}

impl Aliases {
    fn insert(&mut self, old: BlobId, new: BlobId) {
        if self.map.insert(old, new).is_none() {
            self.order.push_back(old);
        }
        while self.order.len() > ALIASES_MAX {
            if let Some(gone) = self.order.pop_front() {
                self.map.remove(&gone);
            }
        }
    }

    /// The id a push is known by now (itself unless it was sealed again, maybe twice).
    pub(super) fn resolve(&self, mut id: BlobId) -> BlobId {
        for _ in 0..8 {
            match self.map.get(&id) {
                Some(next) => id = *next,
                None => break,
            }
        }
        id
    }
}

/// The key of a past epoch's mailbox as a stream (never a group id: epoch 0's mailbox id
/// is the group's).
pub(super) fn stream_id(mailbox: &MailboxId) -> GroupId {
    GroupId(MailboxId(blake3::derive_key(
        STREAM_CONTEXT,
        mailbox.as_bytes(),
    )))
}

/// The streams of a group record's past epochs.
pub(super) fn past_streams(past: &[PastEpoch]) -> Vec<PastStream> {
    past.iter()
        .map(|p| {
            let secret = EpochSecret {
                epoch: Epoch(p.epoch),
                secret: Zeroizing::new(p.secret),
            };
            let keys = EpochKeys::from_secret(&secret);
            PastStream {
                stream: stream_id(&keys.mailbox_id()),
                epoch: Epoch(p.epoch),
                mailbox: keys.mailbox_id(),
                seed: keys.mailbox_signer().seed(),
                secret,
                read_until_ms: p.read_until_ms,
            }
        })
        .collect()
}

/// Whether `me` must move `state` to its roster's head epoch, or find itself removed: the
/// head is not its epoch, or it is not in the head any more. A device that was never a
/// member (a copied home dir with its new key) has nothing to move.
fn move_due(state: &GroupState, me: &DeviceId) -> bool {
    let Some(roster) = &state.roster else {
        return false;
    };
    if state.record.removed {
        return false;
    }
    let head = roster.head();
    if roster.is_member(&head, me) {
        return head != current_epoch(&state.record);
    }
    // Not in the head epoch: removed (the group is marked so), or left out of it (added
    // while it was re-keyed: nothing to move to, and enqueues are refused, not held).
    roster.was_member(me) && roster.removed(me)
}

/// `group`'s roster and its head epoch, if `me` may write roster operations there (a
/// member of the head, not removed).
pub(super) fn writable_head<'a>(
    groups: &'a BTreeMap<GroupId, GroupState>,
    me: &DeviceId,
    group: GroupId,
) -> Result<(&'a Roster, EpochId), ClientError> {
    let state = groups.get(&group).ok_or(ClientError::UnknownGroup(group))?;
    if state.record.removed {
        return Err(ClientError::Removed(group));
    }
    let roster = state.roster.as_ref().ok_or(ClientError::NoRoster(group))?;
    let head = roster.head();
    if !roster.is_member(&head, me) {
        return Err(ClientError::NotMember(group));
    }
    Ok((roster, head))
}

impl CoordinatorState {
    /// The keys to move `group`'s content: of the head epoch (new files), or of the epoch
    /// whose mailbox is `mailbox` (this device's current or a past one it still reads).
    pub(super) fn content_access(
        &self,
        group: GroupId,
        mailbox: Option<MailboxId>,
    ) -> Result<zerok_messages::client::ContentAccess, ClientError> {
        let state = self
            .groups
            .get(&group)
            .ok_or(ClientError::UnknownGroup(group))?;
        let (secret, seed, mailbox) = match mailbox {
            None => {
                writable_head(&self.groups, &self.args.device.device_id(), group)?;
                (&state.secret, &state.mailbox_seed, state.mailbox)
            }
            Some(m) if m == state.mailbox && !state.record.removed => {
                (&state.secret, &state.mailbox_seed, m)
            }
            Some(m) => state
                .past
                .iter()
                .find(|past| past.mailbox == m && !state.record.removed)
                .map(|past| (&past.secret, &past.seed, m))
                .ok_or(zerok_messages::client::ContentError::NotFound)?,
        };
        Ok(zerok_messages::client::ContentAccess {
            mailbox,
            seed: seed.clone(),
            content_key: zeroize::Zeroizing::new(*EpochKeys::from_secret(secret).content_key()),
            relays: state.relays.clone(),
        })
    }
}

/// The epoch a group record is in.
pub(super) fn current_epoch(record: &GroupRecord) -> EpochId {
    let mut origin = [0u8; 32];
    if record.origin.len() == 32 {
        origin.copy_from_slice(&record.origin);
    }
    EpochId {
        number: Epoch(record.epoch),
        origin,
    }
}

impl CoordinatorState {
    /// Every key the Encryptor needs for `id`: its current epoch's and its past ones'.
    pub(super) fn register_keys(&self, id: GroupId) -> Result<(), ClientError> {
        let Some(state) = self.groups.get(&id) else {
            return Ok(());
        };
        let encryptor = &self.args.encryptor;
        let stopped = |_| ClientError::Stopped;
        encryptor
            .cast(EncryptorMsg::SetGroup {
                group: id,
                keys: state.secret.clone(),
            })
            .map_err(stopped)?;
        for past in &state.past {
            encryptor
                .cast(EncryptorMsg::SetGroup {
                    group: past.stream,
                    keys: past.secret.clone(),
                })
                .map_err(stopped)?;
        }
        Ok(())
    }

    /// Rebuild the map of past streams to groups.
    pub(super) fn index_streams(&mut self) {
        self.streams = self
            .groups
            .iter()
            .flat_map(|(id, g)| g.past.iter().map(move |p| (p.stream, *id)))
            .collect();
    }

    /// The key (in connections, the Encryptor and cursors) of `mailbox` of `group` now: the
    /// group's own for its current mailbox, a past epoch's stream for a left one (`None`:
    /// not read any more).
    pub(super) fn stream_key(&self, group: GroupId, mailbox: &MailboxId) -> Option<GroupId> {
        let state = self.groups.get(&group)?;
        if state.mailbox == *mailbox {
            return Some(group);
        }
        state
            .past
            .iter()
            .find(|p| p.mailbox == *mailbox)
            .map(|p| p.stream)
    }

    /// The group a stream (a group's current mailbox, or a past one's) belongs to.
    pub(super) fn group_of_stream(&self, stream: &GroupId) -> Option<GroupId> {
        if self.groups.contains_key(stream) {
            Some(*stream)
        } else {
            self.streams.get(stream).copied()
        }
    }

    /// The stream a queued push of `group` goes to: the mailbox of the epoch it was sealed
    /// in (a roster operation written before a rekey stays there).
    pub(super) fn push_stream(&self, group: GroupId, entry: &OutboxEntry) -> GroupId {
        let Some(state) = self.groups.get(&group) else {
            return group;
        };
        if let Some(mailbox) = entry.mailbox {
            return state
                .past
                .iter()
                .find(|p| p.mailbox == mailbox)
                .map_or(group, |p| p.stream);
        }
        match envelope_epoch(&entry.ciphertext) {
            Some(epoch) if epoch.0 != state.record.epoch => state
                .past
                .iter()
                .rev()
                .find(|p| p.epoch == epoch)
                .map_or(group, |p| p.stream),
            _ => group,
        }
    }

    /// `Joined` of a past epoch's mailbox: what this relay has not acked of the group's
    /// pushes sealed in that epoch (roster operations written before the move), again.
    pub(super) fn on_past_joined(
        &mut self,
        relay: DeviceId,
        stream: GroupId,
    ) -> Result<(), ClientError> {
        let Some(group) = self.streams.get(&stream).copied() else {
            return Ok(());
        };
        let Some(conn) = self.conns.get(&relay) else {
            return Ok(());
        };
        let mut entries = Vec::new();
        if !self.must_hold(&group) {
            for (seq, entry) in self.args.store.outbox(&group)? {
                if !entry.acked_by.contains(&relay) && self.push_stream(group, &entry) == stream {
                    entries.push((seq, entry.blob_id, Bytes::from(entry.ciphertext)));
                }
            }
        }
        let _ = conn.actor.cast(RelayConnMsg::Resend {
            group: stream,
            entries,
        });
        Ok(())
    }

    /// Whether `group`'s app enqueues must wait: it is moving to a new epoch, or its roster
    /// says it should.
    pub(super) fn must_hold(&self, group: &GroupId) -> bool {
        let me = self.args.device.device_id();
        self.groups.get(group).is_some_and(|state| {
            !state.record.removed && (state.switch.is_some() || move_due(state, &me))
        })
    }

    /// Keep an app enqueue until the group's move is done.
    pub(super) fn hold(
        &mut self,
        group: GroupId,
        kind: RecordKind,
        payloads: Vec<Vec<u8>>,
        reply: RpcReplyPort<Result<Vec<(u64, BlobId)>, ClientError>>,
    ) {
        if let Some(state) = self.groups.get_mut(&group) {
            state.held.push(Held {
                kind,
                payloads,
                reply,
            });
        }
    }

    /// `CoordMsg::RemoveDevice`: a rekey without `device`, its new secret wrapped to every
    /// other member of the head epoch (this device too).
    pub(super) fn remove_device(
        &mut self,
        myself: &ActorRef<CoordMsg>,
        group: GroupId,
        device: DeviceId,
        reply: RpcReplyPort<Result<(), ClientError>>,
    ) {
        let on_roster = self
            .groups
            .get(&group)
            .and_then(|g| g.roster.as_ref())
            .and_then(|r| r.epoch(&r.head()).map(|v| v.members.contains_key(&device)));
        if on_roster == Some(false) {
            let _ = reply.send(Err(ClientError::NotOnRoster(device.short())));
            return;
        }
        self.rekey(myself, group, BTreeSet::from([device]), reply);
    }

    /// A rekey of `group` from its head epoch without `removed`: a fresh secret wrapped to
    /// every other member of the head epoch (this device too).
    fn rekey(
        &mut self,
        myself: &ActorRef<CoordMsg>,
        group: GroupId,
        removed: BTreeSet<DeviceId>,
        reply: RpcReplyPort<Result<(), ClientError>>,
    ) {
        let me = self.args.device.device_id();
        let made = (|| {
            let (roster, head) = writable_head(&self.groups, &me, group)?;
            if removed.contains(&me) {
                return Err(InvalidInput::RemoveSelf.into());
            }
            let view = roster.epoch(&head).ok_or(ClientError::NotMember(group))?;
            let secret = Zeroizing::new(self.args.rng.bytes::<32>());
            let opens = Epoch(head.number.0.saturating_add(1));
            let mut wrapped = BTreeMap::new();
            for member in view
                .members
                .values()
                .filter(|m| !removed.contains(&m.device))
            {
                let context = WrapContext {
                    purpose: Purpose::Rekey,
                    group: group.0,
                    written_in: head,
                    opens,
                    author: me,
                    recipient: member.device,
                };
                match wrap(&member.wrap_key, &context, &secret, &mut self.args.rng) {
                    Ok(bytes) => {
                        wrapped.insert(member.device, serde_bytes::ByteBuf::from(bytes));
                    }
                    // A member whose wrap key is not a key cannot be given the epoch: it is
                    // left out (it could never read it).
                    Err(err) => {
                        warn!(device = %member.device.short(), error = %err, "epoch secret not wrapped")
                    }
                }
            }
            Ok(Op {
                author: me,
                epoch: head,
                at_ms: self.args.clock.now_unix_ms(),
                change: Change::Rekey { removed, wrapped },
            })
        })();
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Err(err) = made.and_then(|op| self.write_op(myself, group, op, tx.into())) {
            let _ = reply.send(Err(err));
            return;
        }
        tokio::spawn(async move {
            let answer = match rx.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(err)) => Err(err),
                Err(_) => Err(ClientError::Stopped),
            };
            let _ = reply.send(answer);
        });
    }

    /// Move every group whose roster's head is not its epoch (unless records of it are being
    /// sealed: they go into the outbox first, and move with it).
    pub(super) async fn follow_heads(&mut self, myself: &ActorRef<CoordMsg>) {
        let me = self.args.device.device_id();
        let mut behind = Vec::new();
        let mut exposing = Vec::new();
        for (id, g) in &self.groups {
            let Some(roster) = &g.roster else {
                continue;
            };
            if g.switch.is_some() || g.record.removed {
                continue;
            }
            let head = roster.head();
            if move_due(g, &me) {
                behind.push(*id);
            } else if let Some((_, exposed)) = roster.rekey_needed()
                && roster
                    .ops()
                    .any(|(op_id, op)| *op_id == head.origin && op.author == me)
            {
                // A concurrent, losing rekey removed a device this device's winning rekey
                // still wrapped to: one more rekey shuts it out.
                exposing.push((*id, exposed));
            }
        }
        for (id, exposed) in exposing {
            let (tx, _) = tokio::sync::oneshot::channel();
            self.rekey(myself, id, exposed, tx.into());
        }
        for id in behind {
            if self.is_sealing || self.to_seal.iter().any(|r| r.group == id) {
                continue;
            }
            if let Err(err) = self.start_switch(myself, id).await {
                warn!(group = %id.0.short(), error = %err, "moving to the new epoch failed");
            }
        }
    }

    /// Begin moving `id` to its roster's head epoch (or mark it removed).
    async fn start_switch(
        &mut self,
        myself: &ActorRef<CoordMsg>,
        id: GroupId,
    ) -> Result<(), ClientError> {
        let me = self.args.device.device_id();
        let now = self.args.clock.now_unix_ms();
        let Some(state) = self.groups.get(&id) else {
            return Ok(());
        };
        let Some(roster) = &state.roster else {
            return Ok(());
        };
        let head = roster.head();
        if !roster.is_member(&head, &me) {
            if roster.removed(&me) {
                return self.mark_removed(myself, id).await;
            }
            // Added while a rekey it did not see was made (the rekey gave it no secret):
            // not removed, but not in the head epoch either; it must be admitted again.
            warn!(group = %id.0.short(), "this device is not in the group's current epoch (added while it was re-keyed); staying");
            return Ok(());
        }
        // Every epoch a rekey wrapped to this device that it does not hold yet.
        let current = current_epoch(&state.record);
        let held: BTreeSet<(u32, Vec<u8>)> = state
            .record
            .past
            .iter()
            .map(|p| (p.epoch, p.origin.clone()))
            .chain([(state.record.epoch, state.record.origin.clone())])
            .collect();
        let mut opened: BTreeMap<EpochId, Zeroizing<[u8; 32]>> = BTreeMap::new();
        for (op_id, op) in roster.ops() {
            let Change::Rekey { wrapped, .. } = &op.change else {
                continue;
            };
            let Some(bytes) = wrapped.get(&me) else {
                continue;
            };
            let epoch = EpochId {
                number: Epoch(op.epoch.number.0.saturating_add(1)),
                origin: *op_id,
            };
            if roster.epoch(&epoch).is_none() || held.contains(&(epoch.number.0, op_id.to_vec())) {
                continue;
            }
            let context = WrapContext {
                purpose: Purpose::Rekey,
                group: id.0,
                written_in: op.epoch,
                opens: epoch.number,
                author: op.author,
                recipient: me,
            };
            match unwrap(&self.args.wrap, &context, bytes) {
                Ok(secret) => {
                    opened.insert(epoch, secret);
                }
                Err(err) => {
                    warn!(author = %op.author.short(), error = %err, "a rekey's secret for this device does not open");
                }
            }
        }
        let Some(secret) = opened.remove(&head) else {
            warn!(group = %id.0.short(), "the head epoch's secret was not wrapped to this device; staying");
            return Ok(());
        };
        let read_until_ms = now.saturating_add(PAST_EPOCH_READ.as_millis() as u64);
        let mut left = vec![PastEpoch {
            epoch: current.number.0,
            origin: state.record.origin.clone(),
            secret: state.record.secret,
            read_until_ms,
        }];
        left.extend(opened.into_iter().map(|(epoch, secret)| PastEpoch {
            epoch: epoch.number.0,
            origin: epoch.origin.to_vec(),
            secret: *secret,
            read_until_ms,
        }));
        // The Encryptor: the left epochs' keys under their streams (the past ones it has
        // already), the head's, then the outbox sealed again with any of them.
        let mut from: Vec<GroupId> = state
            .past
            .iter()
            .filter(|p| now < p.read_until_ms)
            .map(|p| p.stream)
            .collect();
        for stream in past_streams(&left) {
            self.args
                .encryptor
                .cast(EncryptorMsg::SetGroup {
                    group: stream.stream,
                    keys: stream.secret.clone(),
                })
                .map_err(|_| ClientError::Stopped)?;
            from.push(stream.stream);
        }
        // The head's keys under a stream key of their own until the move is done: items of
        // the current mailbox still arriving are opened with the group's (its keys).
        let head_secret = EpochSecret {
            epoch: head.number,
            secret: Zeroizing::new(*secret),
        };
        let head_key = stream_id(&EpochKeys::from_secret(&head_secret).mailbox_id());
        self.args
            .encryptor
            .cast(EncryptorMsg::SetGroup {
                group: head_key,
                keys: head_secret,
            })
            .map_err(|_| ClientError::Stopped)?;
        let queued = self.args.store.outbox(&id)?;
        let seqs: Vec<u64> = queued.iter().map(|(seq, _)| *seq).collect();
        let envelopes: Vec<Vec<u8>> = queued.into_iter().map(|(_, e)| e.ciphertext).collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.args
            .encryptor
            .cast(EncryptorMsg::Reseal {
                group: head_key,
                from,
                envelopes,
                reply: tx.into(),
            })
            .map_err(|_| ClientError::Stopped)?;
        if let Some(state) = self.groups.get_mut(&id) {
            state.switch = Some(Switch { head, secret, left });
        }
        let myself = myself.clone();
        tokio::spawn(async move {
            let results = rx.await.ok();
            let _ = myself.cast(CoordMsg::Resealed {
                group: id,
                seqs,
                results,
            });
        });
        Ok(())
    }

    /// `CoordMsg::Resealed`: finish the move (one atomic store write), then go on.
    pub(super) async fn on_resealed(
        &mut self,
        myself: &ActorRef<CoordMsg>,
        id: GroupId,
        seqs: Vec<u64>,
        results: Option<Vec<Result<Resealed, SealError>>>,
    ) -> Result<(), ClientError> {
        let Some(state) = self.groups.get_mut(&id) else {
            return Ok(());
        };
        let Some(switch) = state.switch.take() else {
            return Ok(());
        };
        let Some(results) = results.filter(|r| r.len() == seqs.len()) else {
            // The Encryptor died: the move starts again (now, or once its successor has
            // the keys).
            self.follow_heads(myself).await;
            return Ok(());
        };
        let queued: BTreeMap<u64, OutboxEntry> = self.args.store.outbox(&id)?.into_iter().collect();
        let Some(state) = self.groups.get(&id) else {
            return Ok(());
        };
        // Where a roster operation that stays goes: the mailbox of the epoch that opened it.
        let mailboxes: BTreeMap<GroupId, MailboxId> = past_streams(&switch.left)
            .iter()
            .chain(state.past.iter())
            .map(|p| (p.stream, p.mailbox))
            .collect();
        let mut resealed = Vec::new();
        let mut moved = Vec::new();
        for (seq, result) in seqs.into_iter().zip(results) {
            let Some(old) = queued.get(&seq) else {
                // Acked by every relay meanwhile: nothing to move.
                continue;
            };
            match result {
                Ok(Resealed::Moved(sealed)) => {
                    moved.push((old.blob_id, sealed.blob_id));
                    resealed.push((
                        seq,
                        OutboxEntry {
                            blob_id: sealed.blob_id,
                            ciphertext: sealed.envelope,
                            acked_by: Vec::new(),
                            mailbox: None,
                        },
                    ));
                }
                Ok(Resealed::Kept(stream)) => {
                    let mut kept = old.clone();
                    kept.mailbox = mailboxes.get(&stream).copied().or(kept.mailbox);
                    resealed.push((seq, kept));
                }
                Err(err) => {
                    warn!(seq, error = %err, "a queued push could not be moved to the new epoch; it goes to its own")
                }
            }
        }
        let left_mailbox = state.mailbox;
        let mut record = state.record.clone();
        record
            .past
            .retain(|p| self.args.clock.now_unix_ms() < p.read_until_ms);
        record.past.extend(switch.left.iter().cloned());
        record.epoch = switch.head.number.0;
        record.origin = switch.head.origin.to_vec();
        record.secret = *switch.secret;
        let relays: Vec<DeviceId> = state.relays.iter().map(|r| r.id).collect();
        let ticket = self.args.store.switch_epoch(
            &id,
            &record,
            &resealed,
            &stream_id(&left_mailbox),
            &relays,
        )?;
        let mut fresh = self.load_group(id, record)?;
        let Some(state) = self.groups.get_mut(&id) else {
            return Ok(());
        };
        fresh.held = std::mem::take(&mut state.held);
        *state = fresh;
        for (old, new) in moved {
            self.resealed.insert(old, new);
            if let Some(waiters) = self.waiters.remove(&old) {
                self.waiters.entry(new).or_default().extend(waiters);
            }
            self.delivery.seen.insert(new);
        }
        debug!(ticket, "the move to the new epoch is written");
        self.index_streams();
        self.register_keys(id)?;
        tracing::info!(group = %id.0.short(), epoch = switch.head.number.0, "moved to a new key epoch");
        self.emit(Event::EpochChanged {
            group: id,
            epoch: switch.head.number.0,
        });
        self.rewire(myself).await;
        self.after_switch(myself, id, &switch.head);
        // The recovery phrases' snapshots follow the group to its new epoch.
        self.refresh_watches(myself).await;
        Ok(())
    }

    /// After a move: the author of the rekey announces it in the new epoch's mailbox too,
    /// the held enqueues go, and a later head is followed.
    fn after_switch(&mut self, myself: &ActorRef<CoordMsg>, id: GroupId, head: &EpochId) {
        let me = self.args.device.device_id();
        let held = self
            .groups
            .get_mut(&id)
            .map(|g| std::mem::take(&mut g.held))
            .unwrap_or_default();
        let announce = self
            .groups
            .get(&id)
            .and_then(|g| g.roster.as_ref())
            .and_then(|r| {
                r.ops()
                    .find(|(op_id, op)| **op_id == head.origin && op.author == me)
                    .map(|(_, op)| op.clone())
            });
        if let Some(origin) = announce {
            let mut payload = Vec::new();
            if ciborium::into_writer(&origin, &mut payload).is_ok() {
                let (tx, _) = tokio::sync::oneshot::channel();
                self.enqueue(myself, id, RecordKind::ROSTER, vec![payload], tx.into());
            }
        }
        for call in held {
            self.enqueue(myself, id, call.kind, call.payloads, call.reply);
        }
        // A later head, or a rekey this device owes (`follow_heads`).
        let _ = myself.cast(CoordMsg::RosterChanged);
    }

    /// This device is not in the group's head epoch: a member removed it.
    async fn mark_removed(
        &mut self,
        myself: &ActorRef<CoordMsg>,
        id: GroupId,
    ) -> Result<(), ClientError> {
        let Some(state) = self.groups.get_mut(&id) else {
            return Ok(());
        };
        state.record.removed = true;
        let record = state.record.clone();
        for call in std::mem::take(&mut state.held) {
            let _ = call.reply.send(Err(ClientError::Removed(id)));
        }
        self.args.store.put_group(&id, &record).await?;
        warn!(group = %id.0.short(), "this device was removed from the group");
        self.emit(Event::Removed { group: id });
        self.rewire(myself).await;
        Ok(())
    }

    /// Hand an event over now if there is room, else after the app made some (it is never
    /// dropped).
    fn emit(&self, event: Event) {
        let events = self.args.events.clone();
        if let Err(tokio::sync::mpsc::error::TrySendError::Full(event)) = events.try_send(event) {
            tokio::spawn(async move {
                let _ = events.send(event).await;
            });
        }
    }
}
