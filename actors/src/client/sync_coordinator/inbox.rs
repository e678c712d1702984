//! The receive path: items from any relay are deduplicated by recent blob ids, opened in
//! batches (the Encryptor, all cores, in arrival order), seq-checked per sender and handed
//! to the app through the bounded event channel; what does not fit waits in a bounded
//! backlog (relays are paused beyond it). Received state is applied once per drained batch.
//! Relay up/down events never wait for the app either: they are coalesced per relay. What
//! goes to the app, and when, is decided by the pure core in `delivery.rs`; this file
//! opens, pauses and resumes relays, hands events over and persists.

use super::*;
use crate::fault::FaultPoint;
use delivery::Received;

/// Free event slots the coordinator waits for before it hands over a received item: an item
/// can make two events (a gap, then the record). The event channel must hold at least this
/// many (checked when the coordinator starts).
pub const EVENT_ROOM: usize = 2;

impl CoordinatorState {
    /// Queue a relay's items for opening, then delivery.
    pub(super) fn on_items(
        &mut self,
        myself: &ActorRef<CoordMsg>,
        relay: DeviceId,
        stream: GroupId,
        mailbox: MailboxId,
        items: Vec<zerok_messages::Item>,
        upto: u64,
    ) -> Result<(), ClientError> {
        if self.watches.contains_key(&stream) {
            self.on_watch_items(myself, stream, items);
            return Ok(());
        }
        // The group's current mailbox, or one of its past epochs' (read before a move, and
        // handed over after it, they count for the mailbox they came from).
        let Some(group) = self.group_of_stream(&stream) else {
            return Ok(());
        };
        let Some(key) = self.stream_key(group, &mailbox) else {
            return Ok(());
        };
        if !self.is_receive_idle()
            && self.delivery.backlog_items + items.len() > self.args.backlog_max
        {
            // The app is not reading, or records arrive faster than they are opened: stop
            // taking this relay's items for the group. Its connection rewinds to what is
            // persisted and waits until the backlog drained (a batch is always taken when
            // nothing is waiting, so it drains and resumes). Items waiting to be opened
            // count: they are held in memory as much as those waiting for the app.
            let to = self.args.store.cursor(&key, &relay)?;
            if let Some(conn) = self.conns.get(&relay) {
                let _ = conn.actor.cast(RelayConnMsg::Pause {
                    group: stream,
                    rewind_to: to,
                });
                self.paused.insert((relay, stream));
            }
            return Ok(());
        }
        let fresh: Vec<_> = items
            .into_iter()
            .filter(|item| !self.delivery.seen.contains(&item.blob_id))
            .collect();
        self.delivery.backlog_items += fresh.len();
        self.to_open.push(ToOpenBatch {
            relay,
            group,
            mailbox,
            items: fresh,
            upto,
        });
        self.start_open(myself);
        Ok(())
    }

    /// Send what waits to be opened to the Encryptor, unless a batch is there already (it
    /// comes back as `Opened`, which starts the next).
    pub(super) fn start_open(&mut self, myself: &ActorRef<CoordMsg>) {
        if self.is_opening || self.to_open.is_empty() {
            return;
        }
        // Opened with the keys of the mailbox they came from; one whose epoch this device
        // no longer reads is dropped (its cursor stays).
        let batches: Vec<(GroupId, ToOpenBatch)> = std::mem::take(&mut self.to_open)
            .into_iter()
            .filter_map(|b| self.stream_key(b.group, &b.mailbox).map(|key| (key, b)))
            .collect();
        if batches.is_empty() {
            return;
        }
        self.is_opening = true;
        let envelopes = batches
            .iter()
            .flat_map(|(key, b)| {
                b.items.iter().map(|item| ToOpen {
                    group: *key,
                    blob_id: item.blob_id,
                    envelope: item.ciphertext.clone(),
                })
            })
            .collect();
        let batches: Vec<ToOpenBatch> = batches.into_iter().map(|(_, b)| b).collect();
        let expected: usize = batches.iter().map(|b| b.items.len()).sum();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.args.encryptor.cast(EncryptorMsg::OpenMany {
            envelopes,
            reply: tx.into(),
        });
        let myself = myself.clone();
        tokio::spawn(async move {
            // An Encryptor that died answers nothing (or not every item): the items are
            // opened again by its successor, not taken as undecryptable.
            let message = match rx.await {
                Ok(results) if results.len() == expected => CoordMsg::Opened { batches, results },
                _ => CoordMsg::OpenFailed { batches },
            };
            let _ = myself.cast(message);
        });
    }

    /// Opened items join the backlog in arrival order and are delivered.
    pub(super) fn on_opened(
        &mut self,
        myself: &ActorRef<CoordMsg>,
        batches: Vec<ToOpenBatch>,
        results: Vec<Result<OpenedRecord, OpenError>>,
    ) -> Result<(), ClientError> {
        self.is_opening = false;
        let mut results = results.into_iter();
        for batch in batches {
            let items = batch
                .items
                .into_iter()
                .map(|item| Received {
                    blob_id: item.blob_id,
                    opened: results.next().unwrap_or(Err(OpenError::Malformed)),
                })
                .collect();
            self.delivery.push(Backlog {
                relay: batch.relay,
                group: batch.group,
                mailbox: batch.mailbox,
                items,
                upto: batch.upto,
            });
        }
        self.start_open(myself);
        self.drain(myself)
    }

    /// Nothing received is waiting to be opened or handed over.
    pub(super) fn is_receive_idle(&self) -> bool {
        self.delivery.is_empty() && self.to_open.is_empty() && !self.is_opening
    }

    /// Deliver backlog items while the event channel has room; never waits for the app. A
    /// relay batch's cursor is persisted once all its items were handed over; what one call
    /// handed over is applied to the store once per group.
    pub(super) fn drain(&mut self, myself: &ActorRef<CoordMsg>) -> Result<(), ClientError> {
        let events = self.args.events.clone();
        let room = room(&events);
        let CoordinatorState {
            delivery,
            groups,
            args,
            ..
        } = self;
        let mut roster_changed = false;
        let mut judge = |group: GroupId, record: &OpenedRecord| {
            let Some(state) = groups.get_mut(&group) else {
                return delivery::Judged::Left;
            };
            let now = args.clock.now_unix_ms();
            let (judged, changed) = membership::judge(&args.store, now, group, state, record);
            roster_changed |= changed;
            judged
        };
        let drained = delivery.drain(room, &mut judge);
        if roster_changed {
            let _ = myself.cast(CoordMsg::RosterChanged);
        }
        for event in drained.events {
            if matches!(event, Event::Received { .. })
                && self.args.faults.should_fail(FaultPoint::SkipReceived)
            {
                continue;
            }
            hand_over(&events, event);
        }
        for ((group, mailbox), batch) in drained.persist {
            self.persist(group, mailbox, batch)?;
        }
        if drained.wait_for_room {
            self.wait_for_room(myself);
            return Ok(());
        }
        // Everything delivered: barriers pass (once durable), paused connections may read
        // again.
        if self.is_receive_idle() {
            for barrier in std::mem::take(&mut self.barriers) {
                self.pass_when_durable(barrier);
            }
        }
        for (relay, group) in std::mem::take(&mut self.paused) {
            if let Some(conn) = self.conns.get(&relay) {
                let _ = conn.actor.cast(RelayConnMsg::Resume { group });
            }
        }
        Ok(())
    }

    pub(super) fn wait_for_room(&mut self, myself: &ActorRef<CoordMsg>) {
        if self.is_waiting_for_room {
            return;
        }
        self.is_waiting_for_room = true;
        let events = self.args.events.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            // Fails only when the app dropped its receiver: then drain hands over to nothing.
            if let Ok(permits) = events.reserve_many(EVENT_ROOM).await {
                drop(permits);
            }
            let _ = myself.cast(CoordMsg::EventRoom);
        });
    }

    /// Apply what received items changed. Nothing waits for it to be durable: the store's
    /// background flush, the next group commit, a barrier or the stop make it so (the app
    /// already has the events; a crash before that hands the last ones over again, as a
    /// crash between hand-over and flush always could).
    pub(super) fn persist(
        &mut self,
        group: GroupId,
        mailbox: MailboxId,
        mut batch: ReceivedBatch,
    ) -> Result<(), ClientError> {
        // The cursors are the mailbox's, wherever it is now (or none: no longer read).
        let stream = self.stream_key(group, &mailbox);
        if stream.is_none() {
            batch.cursors.clear();
        }
        let stream = stream.unwrap_or(group);
        if batch.observed == 0 && batch.cursors.is_empty() {
            return Ok(());
        }
        if batch.observed > 0 {
            batch.tracker = self.groups.get(&group).map(|g| g.tracker.clone());
        }
        // Connections parked at their pull-ahead bound go on.
        let delivered: BTreeMap<DeviceId, u64> = batch.cursors.iter().copied().collect();
        for (relay, upto) in delivered {
            if let Some(conn) = self.conns.get(&relay) {
                let _ = conn.actor.cast(RelayConnMsg::Delivered {
                    group: stream,
                    upto,
                });
            }
        }
        self.args
            .store
            .apply_received_from(&group, &stream, &batch)?;
        Ok(())
    }

    /// Tell the app a relay went up or down, never waiting for it: with room (and nothing
    /// older waiting) at once, else kept as the relay's latest state until the app reads.
    pub(super) fn emit_link(&mut self, myself: &ActorRef<CoordMsg>, relay: DeviceId, event: Event) {
        let events = &self.args.events;
        match self.delivery.link_event(relay, event, room(events)) {
            Some(now) => hand_over(events, now),
            None => self.wait_for_room(myself),
        }
    }
}

/// Free event slots for the app now; a closed stream (the app dropped it) takes everything,
/// into nothing.
fn room(events: &mpsc::Sender<Event>) -> usize {
    if events.is_closed() {
        usize::MAX
    } else {
        events.capacity()
    }
}

/// Queue an event for the app; the caller made sure there is room. A closed stream (the app
/// dropped it) swallows events.
pub(super) fn hand_over(events: &mpsc::Sender<Event>, event: Event) {
    if let Err(err) = events.try_send(event) {
        debug!(error = %err, "event not handed over");
    }
}
