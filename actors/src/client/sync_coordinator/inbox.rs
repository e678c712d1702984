//! The receive path: items from any relay are deduplicated by recent blob ids, opened in
//! batches (the Encryptor, all cores, in arrival order), seq-checked per sender and handed
//! to the app through the bounded event channel; what does not fit waits in a bounded
//! backlog (relays are paused beyond it). Received state is applied once per drained batch.
//! Relay up/down events never wait for the app either: they are coalesced per relay.

use super::*;

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
        group: GroupId,
        items: Vec<zerok_messages::Item>,
        upto: u64,
    ) -> Result<(), ClientError> {
        if !self.groups.contains_key(&group) {
            return Ok(());
        }
        if !self.is_receive_idle() && self.backlog_items + items.len() > self.args.backlog_max {
            // The app is not reading, or records arrive faster than they are opened: stop
            // taking this relay's items for the group. Its connection rewinds to what is
            // persisted and waits until the backlog drained (a batch is always taken when
            // nothing is waiting, so it drains and resumes). Items waiting to be opened
            // count: they are held in memory as much as those waiting for the app.
            let to = self.args.store.cursor(&group, &relay)?;
            if let Some(conn) = self.conns.get(&relay) {
                let _ = conn.actor.cast(RelayConnMsg::Pause {
                    group,
                    rewind_to: to,
                });
                self.paused.insert((relay, group));
            }
            return Ok(());
        }
        let fresh: Vec<_> = items
            .into_iter()
            .filter(|item| !self.seen.contains(&item.blob_id))
            .collect();
        self.backlog_items += fresh.len();
        self.to_open.push(ToOpenBatch {
            relay,
            group,
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
        self.is_opening = true;
        let batches = std::mem::take(&mut self.to_open);
        let envelopes = batches
            .iter()
            .flat_map(|b| {
                b.items.iter().map(|item| ToOpen {
                    group: b.group,
                    blob_id: item.blob_id,
                    envelope: item.ciphertext.clone(),
                })
            })
            .collect();
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
            self.backlog.push_back(Backlog {
                relay: batch.relay,
                group: batch.group,
                items,
                upto: batch.upto,
            });
        }
        self.start_open(myself);
        self.drain(myself)
    }

    /// Nothing received is waiting to be opened or handed over.
    pub(super) fn is_receive_idle(&self) -> bool {
        self.backlog.is_empty() && self.to_open.is_empty() && !self.is_opening
    }

    /// Deliver backlog items while the event channel has room; never waits for the app. A
    /// relay batch's cursor is persisted once all its items were handed over; what one call
    /// handed over is applied to the store once per group.
    pub(super) fn drain(&mut self, myself: &ActorRef<CoordMsg>) -> Result<(), ClientError> {
        let events = self.args.events.clone();
        while !self.link_events.is_empty() {
            if !events.is_closed() && events.capacity() == 0 {
                self.wait_for_room(myself);
                return Ok(());
            }
            let (_, event) = self.link_events.remove(0);
            hand_over(&events, event);
        }
        let mut touched: BTreeMap<GroupId, ReceivedBatch> = BTreeMap::new();
        while let Some(mut front) = self.backlog.pop_front() {
            let batch = touched.entry(front.group).or_default();
            while let Some(item) = front.items.pop_front() {
                // Up to two events per item (a gap and the record).
                if !events.is_closed() && events.capacity() < EVENT_ROOM {
                    front.items.push_front(item);
                    // What was handed over so far is persisted now (not the cursor).
                    self.backlog.push_front(front);
                    for (group, batch) in touched {
                        self.persist(group, batch)?;
                    }
                    self.wait_for_room(myself);
                    return Ok(());
                }
                self.backlog_items = self.backlog_items.saturating_sub(1);
                self.deliver(&events, front.relay, front.group, item, batch);
            }
            batch.cursors.push((front.relay, front.upto));
        }
        for (group, batch) in touched {
            self.persist(group, batch)?;
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
        mut batch: ReceivedBatch,
    ) -> Result<(), ClientError> {
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
                let _ = conn.actor.cast(RelayConnMsg::Delivered { group, upto });
            }
        }
        self.args.store.apply_received(&group, &batch)?;
        Ok(())
    }

    /// Check and hand one opened item to the app (the channel has room for two events).
    /// Duplicates (the same blob from another relay, or twice in a page) are dropped by the
    /// seen ids, and past them by the seq tracker.
    pub(super) fn deliver(
        &mut self,
        events: &mpsc::Sender<Event>,
        relay: DeviceId,
        group: GroupId,
        item: Received,
        batch: &mut ReceivedBatch,
    ) {
        if self.seen.contains(&item.blob_id) {
            return;
        }
        let record = match item.opened {
            Ok(record) => record,
            Err(OpenError::Own) => {
                // This device's own record, served back (its id was forgotten).
                self.seen.insert(item.blob_id);
                return;
            }
            Err(err) => {
                hand_over(
                    events,
                    Event::Undecryptable {
                        group,
                        relay,
                        blob_id: item.blob_id,
                        reason: err.to_string(),
                    },
                );
                return;
            }
        };
        if record.sender == self.own {
            // This device's own record, served back (its id was forgotten).
            self.seen.insert(item.blob_id);
            return;
        }
        let Some(state) = self.groups.get_mut(&group) else {
            return;
        };
        let verdict = state.tracker.observe(record.sender, record.seq);
        state.hlc.observe(record.hlc, self.args.clock.now_unix_ms());
        self.seen.insert(item.blob_id);
        batch.observed += 1;
        match verdict {
            SeqVerdict::Replay => {
                debug!(sender = %record.sender.short(), seq = record.seq, "replayed record dropped");
                return;
            }
            SeqVerdict::Gap { from, to } => hand_over(
                events,
                Event::GapDetected {
                    group,
                    sender: record.sender,
                    from,
                    to,
                },
            ),
            SeqVerdict::New => {}
        }
        hand_over(
            events,
            Event::Received {
                group,
                sender: record.sender,
                seq: record.seq,
                hlc: record.hlc,
                blob_id: item.blob_id,
                payload: record.payload,
            },
        );
    }

    /// Tell the app a relay went up or down, never waiting for it: with room (and nothing
    /// older waiting) at once, else kept as the relay's latest state until the app reads.
    pub(super) fn emit_link(&mut self, myself: &ActorRef<CoordMsg>, relay: DeviceId, event: Event) {
        let events = &self.args.events;
        if self.link_events.is_empty() && (events.is_closed() || events.capacity() > 0) {
            hand_over(events, event);
            return;
        }
        match self.link_events.iter_mut().find(|(r, _)| *r == relay) {
            Some(queued) => queued.1 = event,
            None => self.link_events.push((relay, event)),
        }
        self.wait_for_room(myself);
    }
}

/// Queue an event for the app; the caller made sure there is room. A closed stream (the app
/// dropped it) swallows events.
pub(super) fn hand_over(events: &mpsc::Sender<Event>, event: Event) {
    if let Err(err) = events.try_send(event) {
        debug!(error = %err, "event not handed over");
    }
}

/// An item after opening.
pub(super) struct Received {
    pub(super) blob_id: BlobId,
    pub(super) opened: Result<OpenedRecord, OpenError>,
}

/// A relay's batch of items not yet fully handed to the app.
pub(super) struct Backlog {
    pub(super) relay: DeviceId,
    pub(super) group: GroupId,
    pub(super) items: VecDeque<Received>,
    pub(super) upto: u64,
}
