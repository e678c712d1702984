//! The coordinator's groups and connections: a group loaded from the local store (its
//! outbox, seqs and keys as plain data), one RelayConnection per relay of any group, re-wired
//! when groups or relay lists change, and `status()`.

use super::*;

impl CoordinatorState {
    pub(super) fn load_group(
        &self,
        id: GroupId,
        record: GroupRecord,
    ) -> Result<GroupState, ClientError> {
        let secret = epoch_secret(&record);
        let keys = EpochKeys::from_secret(&secret);
        let record_past = record.past.clone();
        let store = &self.args.store;
        let (next_seq, last_hlc) = store.own_seq(&id)?;
        let outbox = Outbox::new(
            store
                .outbox(&id)?
                .into_iter()
                .map(|(seq, e)| (seq, e.blob_id, e.acked_by)),
            next_seq.saturating_sub(1),
        );
        // Our own last timestamp goes through the same bound: a clock that was pinned far
        // ahead (before remote timestamps were bounded) recovers.
        let mut hlc = Hlc::new();
        hlc.observe(last_hlc, self.args.clock.now_unix_ms());
        Ok(GroupState {
            relays: parse_relays(&record),
            tracker: store.tracker(&id)?,
            record,
            mailbox: keys.mailbox_id(),
            mailbox_seed: keys.mailbox_signer().seed(),
            secret,
            outbox,
            next_seq,
            // Not known to be durable (a restarted coordinator): sends wait for the next one.
            reserving: store.reserved_seqs(&id)?,
            seq_base: store.seq_base(&id)?,
            hlc,
            roster: store.roster(&id)?,
            past: epochs::past_streams(&record_past),
            switch: None,
            held: Vec::new(),
        })
    }

    /// Make the connections match the groups' relay lists.
    pub(super) async fn rewire(&mut self, myself: &ActorRef<CoordMsg>) {
        let Some(dialer) = self.args.dialer.clone() else {
            return;
        };
        let mut wanted: BTreeMap<DeviceId, (RelayAddr, Vec<ConnGroup>)> = BTreeMap::new();
        let now = self.args.clock.now_unix_ms();
        for (id, group) in &self.groups {
            // A group this device was removed from is not synced.
            if group.record.removed {
                continue;
            }
            // Its current epoch's mailbox, and the past epochs' still read.
            let streams = [(*id, group.mailbox, group.mailbox_seed.clone())]
                .into_iter()
                .chain(
                    group
                        .past
                        .iter()
                        .filter(|p| now < p.read_until_ms)
                        .map(|p| (p.stream, p.mailbox, p.seed.clone())),
                );
            for (stream, mailbox, seed) in streams {
                for relay in &group.relays {
                    let cursor = self.args.store.cursor(&stream, &relay.id).unwrap_or(0);
                    wanted
                        .entry(relay.id)
                        .or_insert_with(|| (relay.clone(), Vec::new()))
                        .1
                        .push(ConnGroup {
                            group: stream,
                            mailbox,
                            mailbox_seed: seed.clone(),
                            cursor,
                            admission: group
                                .record
                                .admissions
                                .get(&relay.id.to_hex())
                                .cloned()
                                .map(AdmissionText),
                            always_receive: false,
                        });
                }
            }
        }
        for (id, watch) in &self.watches {
            // A member creates the invite mailbox with the group's admission token.
            let group = match &watch.role {
                membership::Role::Member { group } | membership::Role::Recovery { group, .. } => {
                    self.groups.get(group)
                }
                membership::Role::Joiner { admission, .. } => {
                    admission.as_ref().and_then(|g| self.groups.get(g))
                }
            };
            for relay in &watch.relays {
                wanted
                    .entry(relay.id)
                    .or_insert_with(|| (relay.clone(), Vec::new()))
                    .1
                    .push(ConnGroup {
                        group: *id,
                        mailbox: id.0,
                        mailbox_seed: watch.seed.clone(),
                        cursor: 0,
                        admission: group
                            .and_then(|g| g.record.admissions.get(&relay.id.to_hex()))
                            .cloned()
                            .map(AdmissionText),
                        always_receive: true,
                    });
            }
        }
        let gone: Vec<DeviceId> = self
            .conns
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            if let Some(entry) = self.conns.remove(&id) {
                entry.actor.stop(Some("relay removed".into()));
            }
        }
        for (id, (addr, groups)) in wanted {
            if self.restarting.contains(&id) {
                continue;
            }
            if let Some(entry) = self.conns.get(&id) {
                if entry.addr == addr {
                    let _ = entry.actor.cast(RelayConnMsg::SetGroups(groups));
                    continue;
                }
                // The relay moved: dial the new address.
                if let Some(entry) = self.conns.remove(&id) {
                    entry.actor.stop(Some("relay removed".into()));
                }
            }
            let args = RelayConnArgs {
                relay: addr.clone(),
                dialer: Arc::clone(&dialer),
                groups,
                receive: self.args.receive,
                coordinator: myself.clone(),
                rng: self.args.rng.fork(),
                faults: self.args.faults.clone(),
            };
            match Actor::spawn_linked(None, RelayConnActor, args, myself.get_cell()).await {
                Ok((actor, _)) => {
                    self.conns.insert(
                        id,
                        ConnEntry {
                            addr,
                            actor,
                            is_up: false,
                        },
                    );
                }
                Err(err) => warn!(error = %err, "relay connection failed to start"),
            }
        }
    }

    pub(super) fn status(&self) -> Status {
        let mut groups: Vec<GroupStatus> = self
            .groups
            .iter()
            .map(|(id, g)| {
                let quorum = self.quorum(g);
                GroupStatus {
                    id: *id,
                    name: g.record.name.clone(),
                    relays: g
                        .relays
                        .iter()
                        .map(|addr| RelayStatus {
                            addr: addr.clone(),
                            connected: self.conns.get(&addr.id).is_some_and(|c| c.is_up),
                            cursor: self.args.store.cursor(id, &addr.id).unwrap_or(0),
                        })
                        .collect(),
                    outbox: g.outbox.len(),
                    unacked: g.outbox.short_of(quorum),
                    seen_ids: self.delivery.seen.len() as u64,
                    epoch: g.record.epoch,
                    removed: g.record.removed,
                }
            })
            .collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Status {
            device_id: self.args.device.device_id(),
            groups,
        }
    }
}

/// The current epoch's secret of a group, as the Encryptor takes it.
pub(super) fn epoch_secret(record: &GroupRecord) -> EpochSecret {
    EpochSecret {
        epoch: Epoch(record.epoch),
        secret: Zeroizing::new(record.secret),
    }
}

pub(super) fn parse_relays(record: &GroupRecord) -> Vec<RelayAddr> {
    record
        .relays
        .iter()
        .filter_map(|text| match text.parse::<RelayAddr>() {
            Ok(addr) => Some(addr),
            Err(err) => {
                warn!(error = %err, "ignoring an unparsable relay address");
                None
            }
        })
        .collect()
}
