//! The push path: app calls take their seqs at once, are sealed in batches (the Encryptor,
//! all cores), written to the outbox in one atomic batch per group and answered once the
//! store's group commit made them durable. They go to every relay of the group, a window at
//! a time, as soon as they are written when a durable seq reservation covers them (the local
//! sync and the relay's overlap), else once durable; acks make receipts at the quorum, and an entry leaves the outbox once
//! every relay acked it. Refused pushes are retried after the relay's hint.

use super::*;

impl CoordinatorState {
    pub(super) fn quorum(&self, group: &GroupState) -> usize {
        self.args.ack_quorum.clamp(1, group.relays.len().max(1))
    }

    /// Take seqs for an app call's records and queue them for sealing; answered once they
    /// are sealed and durable (`on_sealed`, `on_durable`).
    pub(super) fn enqueue(
        &mut self,
        myself: &ActorRef<CoordMsg>,
        group: GroupId,
        kind: RecordKind,
        payloads: Vec<Vec<u8>>,
        reply: RpcReplyPort<Result<Vec<(u64, BlobId)>, ClientError>>,
    ) {
        let refused = if payloads.len() > ENQUEUE_MANY_RECORDS_MAX {
            Some(ClientError::Invalid(InvalidInput::TooManyRecords {
                count: payloads.len(),
                max: ENQUEUE_MANY_RECORDS_MAX,
            }))
        } else if let Some(large) = payloads.iter().find(|p| p.len() > PAYLOAD_BYTES_MAX) {
            // Checked here, before a seq is taken: a record that fails to seal later would
            // leave a gap in this device's seqs.
            Some(ClientError::Invalid(InvalidInput::PayloadTooLarge {
                bytes: large.len(),
                limit: PAYLOAD_BYTES_MAX,
            }))
        } else if let Some(state) = self.groups.get(&group) {
            if state.record.removed {
                let _ = reply.send(Err(ClientError::Removed(group)));
                return;
            }
            // A device that is not on the roster (a copied home dir with its new key, or a
            // removed device) would write records every member refuses.
            let me = self.args.device.device_id();
            state
                .roster
                .as_ref()
                .filter(|r| !r.is_member(&r.head(), &me))
                .map(|_| ClientError::NotMember(group))
        } else {
            Some(ClientError::UnknownGroup(group))
        };
        if let Some(error) = refused {
            let _ = reply.send(Err(error));
            return;
        }
        if payloads.is_empty() {
            let _ = reply.send(Ok(Vec::new()));
            return;
        }
        let now_ms = self.args.clock.now_unix_ms();
        let Some(state) = self.groups.get_mut(&group) else {
            return;
        };
        self.seal_waiters.push(SealWaiter {
            count: payloads.len(),
            reply,
        });
        for payload in payloads {
            let seq = state.next_seq;
            state.next_seq += 1;
            self.to_seal.push(ToSeal {
                group,
                seq: seq.saturating_sub(state.seq_base),
                hlc: state.hlc.tick(now_ms),
                kind,
                payload,
            });
        }
        self.start_seal(myself);
    }

    /// Send what waits to be sealed to the Encryptor, unless a batch is there already (it
    /// comes back as `Sealed`, which starts the next).
    pub(super) fn start_seal(&mut self, myself: &ActorRef<CoordMsg>) {
        if self.is_sealing || self.to_seal.is_empty() {
            return;
        }
        self.is_sealing = true;
        // Whole calls, until the batch holds SEAL_BATCH_RECORDS_MAX records (at least one).
        let mut take_waiters = 0;
        let mut take_records = 0;
        for waiter in &self.seal_waiters {
            if take_waiters > 0 && take_records + waiter.count > SEAL_BATCH_RECORDS_MAX {
                break;
            }
            take_waiters += 1;
            take_records += waiter.count;
        }
        let waiters: Vec<SealWaiter> = self.seal_waiters.drain(..take_waiters).collect();
        let records: Arc<Vec<ToSeal>> = Arc::new(self.to_seal.drain(..take_records).collect());
        // The outbox numbering: the record's seq plus the group's base.
        let numbered: Vec<(GroupId, u64, u64)> = records
            .iter()
            .map(|r| {
                let base = self.groups.get(&r.group).map_or(0, |g| g.seq_base);
                (r.group, r.seq + base, r.hlc)
            })
            .collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.args.encryptor.cast(EncryptorMsg::SealMany {
            records: Arc::clone(&records),
            reply: tx.into(),
        });
        let myself = myself.clone();
        tokio::spawn(async move {
            // An Encryptor that died answers nothing (or not every record): the batch is
            // sealed again by its successor, under the same seqs.
            let message = match rx.await {
                Ok(results) if results.len() == records.len() => CoordMsg::Sealed {
                    records: numbered,
                    results,
                    waiters,
                },
                _ => CoordMsg::SealFailed { records, waiters },
            };
            let _ = myself.cast(message);
        });
    }

    /// A sealed batch goes into the outbox (one atomic write per group) and waits for its
    /// flush.
    pub(super) fn on_sealed(
        &mut self,
        myself: &ActorRef<CoordMsg>,
        records: Vec<(GroupId, u64, u64)>,
        results: Vec<Result<Sealed, SealError>>,
        waiters: Vec<SealWaiter>,
    ) {
        self.is_sealing = false;
        let mut results = results.into_iter();
        let mut by_group: BTreeMap<GroupId, Vec<(u64, u64, OutboxEntry)>> = BTreeMap::new();
        let mut outcomes: Vec<Result<(GroupId, u64, BlobId), ClientError>> = Vec::new();
        for (group, seq, hlc) in records {
            match results.next() {
                Some(Ok(sealed)) => {
                    let entry = OutboxEntry {
                        blob_id: sealed.blob_id,
                        ciphertext: sealed.envelope,
                        acked_by: Vec::new(),
                        mailbox: None,
                    };
                    outcomes.push(Ok((group, seq, entry.blob_id)));
                    // Its copy served back by this device's own subscription is skipped.
                    self.delivery.seen.insert(entry.blob_id);
                    by_group.entry(group).or_default().push((seq, hlc, entry));
                }
                Some(Err(reason)) => outcomes.push(Err(ClientError::Seal(reason))),
                None => outcomes.push(Err(ClientError::Stopped)),
            }
        }
        let mut ticket = Ok(0);
        let mut written_groups = std::collections::BTreeSet::new();
        for (group, entries) in by_group {
            self.reserve_seqs(group, entries.last().map_or(0, |(seq, _, _)| *seq));
            let written = self.args.store.enqueue_many(&group, &entries);
            match written {
                Ok(t) => {
                    if let Some(state) = self.groups.get_mut(&group) {
                        for (seq, _, entry) in entries {
                            state.outbox.insert(seq, entry.blob_id);
                        }
                        written_groups.insert(group);
                    }
                    if let Ok(max) = ticket.as_mut() {
                        *max = t;
                    }
                }
                Err(err) => ticket = Err(err),
            }
        }
        let mut outcomes = outcomes.into_iter();
        for waiter in waiters {
            let mine: Vec<_> = outcomes.by_ref().take(waiter.count).collect();
            let result: Result<Vec<(GroupId, u64, BlobId)>, ClientError> =
                mine.into_iter().collect();
            match (result, &ticket) {
                (Ok(queued), Ok(ticket)) => self.after_durable.push_back((
                    *ticket,
                    AfterDurable::Enqueued {
                        pushes: queued.iter().map(|(g, seq, _)| (*g, *seq)).collect(),
                        queued: queued.iter().map(|(_, seq, id)| (*seq, *id)).collect(),
                        reply: waiter.reply,
                    },
                )),
                (Err(err), _) => {
                    let _ = waiter.reply.send(Err(err));
                }
                (_, Err(err)) => {
                    let _ = waiter.reply.send(Err(err.clone()));
                }
            }
        }
        // What a durable reservation covers goes to the relays now, while it is synced here.
        self.send_new(written_groups);
        self.start_seal(myself);
    }

    /// Renew `group`'s seq reservation when fewer than a seal batch of seqs is left past
    /// `last` (the last seq being written); it counts once its flush ticket is durable.
    fn reserve_seqs(&mut self, group: GroupId, last: u64) {
        let Some(state) = self.groups.get_mut(&group) else {
            return;
        };
        if state.reserving >= last + SEAL_BATCH_RECORDS_MAX as u64 {
            return;
        }
        let through = last + SEQS_RESERVED_AHEAD;
        match self.args.store.reserve_seqs(&group, through) {
            Ok(ticket) => {
                state.reserving = through;
                self.after_durable
                    .push_back((ticket, AfterDurable::Reserved { group, through }));
            }
            // Not fatal: these pushes wait for their own flush.
            Err(err) => warn!(error = %err, "seq reservation not written"),
        }
    }

    /// Hand `relay`'s connection the group's next durable pushes it has not acked, up to
    /// [`PUSHES_HANDED_MAX`] unacked, in push order.
    pub(super) fn top_up(&mut self, relay: DeviceId, group: GroupId) {
        let Some(state) = self.groups.get_mut(&group) else {
            return;
        };
        let Some(conn) = self.conns.get(&relay) else {
            return;
        };
        for seq in state.outbox.top_up(relay) {
            self.hand_push(conn, group, seq);
        }
    }

    /// Hand the queued push `seq` (read from the outbox) to `conn`.
    pub(super) fn hand_push(&self, conn: &ConnEntry, group: GroupId, seq: u64) {
        if self.must_hold(&group) {
            // Moving to a new epoch: everything queued goes once it is done.
            return;
        }
        match self.args.store.outbox_entry(&group, seq) {
            Ok(Some(entry)) => {
                let _ = conn.actor.cast(RelayConnMsg::Push {
                    group: self.push_stream(group, &entry),
                    seq,
                    blob_id: entry.blob_id,
                    ciphertext: Bytes::from(entry.ciphertext),
                });
            }
            Ok(None) => {}
            Err(err) => warn!(error = %err, "queued push unreadable"),
        }
    }

    /// Send the queued push `seq` to `relay` again (after a refusal).
    pub(super) fn resend_push(&self, relay: &DeviceId, group: GroupId, seq: u64) {
        if let Some(conn) = self.conns.get(relay) {
            self.hand_push(conn, group, seq);
        }
    }

    pub(super) fn remember_receipt(&mut self, blob_id: BlobId, acked_by: Vec<DeviceId>) {
        if self.recent.insert(blob_id, acked_by).is_none() {
            self.recent_order.push_back(blob_id);
        }
        while self.recent_order.len() > RECENT_RECEIPTS_MAX {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
    }

    pub(super) fn acked_by(&self, group: &GroupId, blob_id: &BlobId) -> Option<Vec<DeviceId>> {
        self.groups
            .get(group)
            .and_then(|state| state.outbox.acked_by(blob_id))
            .or_else(|| self.recent.get(blob_id).cloned())
    }

    pub(super) fn answer_waiters(
        &mut self,
        blob_id: &BlobId,
        acked_by: &[DeviceId],
        needed: usize,
    ) {
        if acked_by.len() < needed {
            return;
        }
        if let Some(waiters) = self.waiters.remove(blob_id) {
            for waiter in waiters {
                let _ = waiter.send(Receipt {
                    blob_id: *blob_id,
                    acked_by: acked_by.to_vec(),
                });
            }
        }
    }

    pub(super) async fn on_acked(
        &mut self,
        myself: &ActorRef<CoordMsg>,
        relay: DeviceId,
        group: GroupId,
        seq: u64,
    ) -> Result<(), ClientError> {
        let Some(state) = self.groups.get_mut(&group) else {
            return Ok(());
        };
        let Some((blob_id, acked_by)) = state.outbox.acked(relay, seq) else {
            return Ok(());
        };
        let all: Vec<DeviceId> = state.relays.iter().map(|r| r.id).collect();
        let done = self.args.store.ack(&group, seq, &acked_by, &all)?;
        if done && let Some(state) = self.groups.get_mut(&group) {
            state.outbox.remove(seq);
            self.remember_receipt(blob_id, acked_by.clone());
            self.on_all_acked(group, seq);
        }
        let needed = self.groups.get(&group).map_or(1, |g| self.quorum(g));
        if acked_by.len() == needed && !done {
            self.on_quorum_acked(myself, group, seq);
        }
        self.answer_waiters(&blob_id, &acked_by, needed);
        self.top_up(relay, group);
        Ok(())
    }

    pub(super) fn schedule_retry(&mut self, myself: &ActorRef<CoordMsg>, after: Duration) {
        if !self.is_retry_scheduled {
            self.is_retry_scheduled = true;
            myself.send_after(after, || CoordMsg::RetryDue);
        }
    }
}
