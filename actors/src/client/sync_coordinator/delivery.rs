//! The receive path's pure core: what goes to the app now, given the room in its event
//! channel, and what that changes (DESIGN.md §6). No channel, no store, no actor: `inbox.rs`
//! hands the events over, persists what the core says and waits for room when it says so.
//!
//! - Relay up/down events are coalesced per relay (the latest wins) and go first.
//! - Opened items go in arrival order, each only when there is room for its two possible
//!   events (a gap, then the record), so nothing is ever dropped for lack of room.
//! - Duplicates (recently seen blob ids) and this device's own records are dropped; a record
//!   that did not open is reported undecryptable; the rest go through the group's seq
//!   tracker (the caller's `judge`): replays are dropped, gaps reported. In a group with a
//!   roster, a record whose sender is not a member is reported (`UnknownSender`), never
//!   delivered; the client's own kinds (the roster's operations) are taken by `judge` and
//!   not handed to the app.
//! - A relay batch's cursor is persisted only once all its items were handed over.

use super::inbox::EVENT_ROOM;
use crate::client::local_store::ReceivedBatch;
use crate::client::seen::SeenIds;
use crate::crypto::content::FileAnnounce;
use crate::crypto::envelope::{OpenError, OpenedRecord, RecordKind};
use crate::crypto::seq::SeqVerdict;
use std::collections::{BTreeMap, VecDeque};
use zerok_messages::client::{Event, GroupId};
use zerok_messages::{BlobId, DeviceId, MailboxId};

/// An item after opening.
pub(super) struct Received {
    pub(super) blob_id: BlobId,
    pub(super) opened: Result<OpenedRecord, OpenError>,
}

/// A relay's batch of items not yet fully handed to the app.
pub(super) struct Backlog {
    pub(super) relay: DeviceId,
    pub(super) group: GroupId,
    /// The mailbox they were read from (the group's current epoch's, or a past one's):
    /// its cursor moves.
    pub(super) mailbox: MailboxId,
    pub(super) items: VecDeque<Received>,
    pub(super) upto: u64,
}

/// What the group's state says of a record (`judge`).
pub(super) enum Judged {
    /// From a member (or a group without a roster): its place in the sender's seqs.
    Seq(SeqVerdict),
    /// Its sender is not on the group's roster.
    NotMember,
    /// A group this device left: dropped.
    Left,
}

/// What one [`Delivery::drain`] decided.
#[derive(Default)]
pub(super) struct Drained {
    /// Events to hand over now, in order; never more than the room given.
    pub(super) events: Vec<Event>,
    /// What each touched `(group, mailbox)`'s received state changes.
    pub(super) persist: BTreeMap<(GroupId, MailboxId), ReceivedBatch>,
    /// Stopped for lack of room: wait until the app makes some.
    pub(super) wait_for_room: bool,
}

/// The receive path's state between drains.
pub(super) struct Delivery {
    /// This device: its own records coming back are dropped.
    own: DeviceId,
    /// Recent blob ids pushed or taken (bounded).
    pub(super) seen: SeenIds,
    /// Opened items not yet handed over, in arrival order.
    backlog: VecDeque<Backlog>,
    /// Items received and not yet handed over (opened or still opening).
    pub(super) backlog_items: usize,
    /// Relay up/down events not handed over yet: the latest per relay.
    link_events: Vec<(DeviceId, Event)>,
}

impl Delivery {
    pub(super) fn new(own: DeviceId) -> Self {
        Delivery {
            own,
            seen: SeenIds::default(),
            backlog: VecDeque::new(),
            backlog_items: 0,
            link_events: Vec::new(),
        }
    }

    /// Opened items waiting for the app.
    pub(super) fn is_empty(&self) -> bool {
        self.backlog.is_empty()
    }

    /// Opened items join the backlog.
    pub(super) fn push(&mut self, batch: Backlog) {
        self.backlog.push_back(batch);
    }

    /// A relay went up or down: the event to hand over now if there is `room` and nothing
    /// older waits, else `None` (kept as the relay's latest state until [`Delivery::drain`]).
    pub(super) fn link_event(
        &mut self,
        relay: DeviceId,
        event: Event,
        room: usize,
    ) -> Option<Event> {
        if self.link_events.is_empty() && room > 0 {
            return Some(event);
        }
        match self.link_events.iter_mut().find(|(r, _)| *r == relay) {
            Some(queued) => queued.1 = event,
            None => self.link_events.push((relay, event)),
        }
        None
    }

    /// Hand over what fits in `room` free events. `judge` is the group's roster, seq
    /// tracker and clock for a record (it takes the client's own kinds itself).
    pub(super) fn drain(
        &mut self,
        mut room: usize,
        judge: &mut dyn FnMut(GroupId, &OpenedRecord) -> Judged,
    ) -> Drained {
        let mut out = Drained::default();
        while !self.link_events.is_empty() {
            if room == 0 {
                out.wait_for_room = true;
                return out;
            }
            let (_, event) = self.link_events.remove(0);
            out.events.push(event);
            room -= 1;
        }
        while let Some(mut front) = self.backlog.pop_front() {
            let batch = out.persist.entry((front.group, front.mailbox)).or_default();
            while let Some(item) = front.items.pop_front() {
                if room < EVENT_ROOM {
                    // What was handed over so far is persisted now (not the cursor).
                    front.items.push_front(item);
                    self.backlog.push_front(front);
                    out.wait_for_room = true;
                    return out;
                }
                self.backlog_items = self.backlog_items.saturating_sub(1);
                let before = out.events.len();
                self.deliver(
                    front.relay,
                    front.group,
                    item,
                    batch,
                    judge,
                    &mut out.events,
                );
                room = room.saturating_sub(out.events.len() - before);
            }
            batch.cursors.push((front.relay, front.upto));
        }
        out
    }

    /// The events of one opened item (none, one, or a gap and the record).
    fn deliver(
        &mut self,
        relay: DeviceId,
        group: GroupId,
        item: Received,
        batch: &mut ReceivedBatch,
        judge: &mut dyn FnMut(GroupId, &OpenedRecord) -> Judged,
        events: &mut Vec<Event>,
    ) {
        if self.seen.contains(&item.blob_id) {
            return;
        }
        let record = match item.opened {
            Ok(record) if record.sender != self.own => record,
            // This device's own record, served back (its id was forgotten).
            Ok(_) | Err(OpenError::Own) => {
                self.seen.insert(item.blob_id);
                return;
            }
            Err(err) => {
                events.push(Event::Undecryptable {
                    group,
                    relay,
                    blob_id: item.blob_id,
                    reason: err.to_string(),
                });
                return;
            }
        };
        let verdict = match judge(group, &record) {
            Judged::Seq(verdict) => verdict,
            Judged::Left => return,
            Judged::NotMember => {
                // Not remembered as seen: a copy served after its Add arrived still counts.
                events.push(Event::UnknownSender {
                    group,
                    sender: record.sender,
                    relay,
                    blob_id: item.blob_id,
                });
                return;
            }
        };
        self.seen.insert(item.blob_id);
        batch.observed += 1;
        match verdict {
            SeqVerdict::Replay => {
                tracing::debug!(sender = %record.sender.short(), seq = record.seq, "replayed record dropped");
                return;
            }
            SeqVerdict::Gap { from, to } => events.push(Event::GapDetected {
                group,
                sender: record.sender,
                from,
                to,
            }),
            SeqVerdict::New => {}
        }
        if record.kind.is_system() {
            events.push(Event::RosterChanged {
                group,
                sender: record.sender,
                seq: record.seq,
            });
            return;
        }
        if record.kind == RecordKind::CONTENT_REF {
            events.push(match FileAnnounce::decode(&record.payload) {
                Ok(announce) => Event::File {
                    group,
                    sender: record.sender,
                    seq: record.seq,
                    hlc: record.hlc,
                    file: announce.into_file_ref(group),
                },
                Err(err) => Event::Undecryptable {
                    group,
                    relay,
                    blob_id: item.blob_id,
                    reason: format!("file announcement: {err}"),
                },
            });
            return;
        }
        events.push(Event::Received {
            group,
            sender: record.sender,
            seq: record.seq,
            hlc: record.hlc,
            blob_id: item.blob_id,
            payload: record.payload,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::envelope::RecordKind;
    use crate::crypto::seq::SeqTracker;

    const OWN: DeviceId = DeviceId([1; 32]);
    const PEER: DeviceId = DeviceId([2; 32]);
    const RELAY: DeviceId = DeviceId([9; 32]);
    const GROUP: GroupId = GroupId(zerok_messages::MailboxId([3; 32]));

    fn item(n: u8, sender: DeviceId, seq: u64) -> Received {
        Received {
            blob_id: BlobId([n; 32]),
            opened: Ok(OpenedRecord {
                sender,
                seq,
                hlc: seq,
                kind: RecordKind::APP,
                payload: vec![n],
            }),
        }
    }

    fn batch(items: Vec<Received>, upto: u64) -> Backlog {
        Backlog {
            relay: RELAY,
            group: GROUP,
            mailbox: GROUP.0,
            items: items.into(),
            upto,
        }
    }

    /// Drain with a fresh tracker per call site.
    fn drain(delivery: &mut Delivery, tracker: &mut SeqTracker, room: usize) -> Drained {
        delivery.drain(room, &mut |group, record: &OpenedRecord| {
            if group == GROUP {
                Judged::Seq(tracker.observe(record.sender, record.seq))
            } else {
                Judged::Left
            }
        })
    }

    fn received_seqs(events: &[Event]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Received { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn items_go_in_order_and_a_batch_cursor_only_once_all_of_it_was_handed_over() {
        let mut delivery = Delivery::new(OWN);
        let mut tracker = SeqTracker::new();
        delivery.push(batch((1..=3).map(|s| item(s as u8, PEER, s)).collect(), 30));
        delivery.push(batch((4..=5).map(|s| item(s as u8, PEER, s)).collect(), 50));
        delivery.backlog_items = 5;
        // Room for three events: two items (each needs room for two), the batch cut short.
        let first = drain(&mut delivery, &mut tracker, 3);
        assert_eq!(received_seqs(&first.events), [1, 2]);
        assert!(first.wait_for_room);
        assert_eq!(first.persist[&(GROUP, GROUP.0)].observed, 2);
        assert!(
            first.persist[&(GROUP, GROUP.0)].cursors.is_empty(),
            "batch not done"
        );
        // Room again: the rest, and both batches' cursors.
        let rest = drain(&mut delivery, &mut tracker, 100);
        assert_eq!(received_seqs(&rest.events), [3, 4, 5]);
        assert!(!rest.wait_for_room);
        assert_eq!(
            rest.persist[&(GROUP, GROUP.0)].cursors,
            [(RELAY, 30), (RELAY, 50)]
        );
        assert!(delivery.is_empty());
        assert_eq!(delivery.backlog_items, 0);
    }

    #[test]
    fn nothing_is_handed_over_without_room_for_two_events() {
        let mut delivery = Delivery::new(OWN);
        let mut tracker = SeqTracker::new();
        delivery.push(batch(vec![item(1, PEER, 1)], 10));
        for room in [0, 1] {
            let drained = drain(&mut delivery, &mut tracker, room);
            assert!(
                drained.events.is_empty() && drained.wait_for_room,
                "room {room}"
            );
        }
        assert_eq!(
            received_seqs(&drain(&mut delivery, &mut tracker, 2).events),
            [1]
        );
    }

    #[test]
    fn duplicates_own_records_replays_and_failures_are_told_apart() {
        let mut delivery = Delivery::new(OWN);
        let mut tracker = SeqTracker::new();
        let undecryptable = Received {
            blob_id: BlobId([8; 32]),
            opened: Err(OpenError::Undecryptable),
        };
        let own_unchecked = Received {
            blob_id: BlobId([7; 32]),
            opened: Err(OpenError::Own),
        };
        delivery.push(batch(
            vec![
                item(1, PEER, 1),
                item(1, PEER, 1), // the same blob again: dropped silently
                item(2, OWN, 1),  // this device's own record: dropped, remembered
                own_unchecked,    // the same, recognised before its signature was checked
                item(3, PEER, 1), // another blob with a seq already seen: a replay
                item(4, PEER, 5), // seqs 2..=4 missing: a gap, then the record
                undecryptable,
            ],
            70,
        ));
        let drained = drain(&mut delivery, &mut tracker, 100);
        let kinds: Vec<String> = drained
            .events
            .iter()
            .map(|e| match e {
                Event::Received { seq, .. } => format!("received {seq}"),
                Event::GapDetected { from, to, .. } => format!("gap {from} {to}"),
                Event::Undecryptable { .. } => "undecryptable".into(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            ["received 1", "gap 2 5", "received 5", "undecryptable"]
        );
        assert!(delivery.seen.contains(&BlobId([2; 32])));
        assert!(delivery.seen.contains(&BlobId([7; 32])));
        // Judged by the tracker: the first, the replay and the one after the gap.
        assert_eq!(drained.persist[&(GROUP, GROUP.0)].observed, 3);
        assert_eq!(drained.persist[&(GROUP, GROUP.0)].cursors, [(RELAY, 70)]);
    }

    #[test]
    fn strangers_are_reported_and_the_clients_own_kinds_never_reach_the_app() {
        const STRANGER: DeviceId = DeviceId([4; 32]);
        let mut delivery = Delivery::new(OWN);
        let mut tracker = SeqTracker::new();
        let mut roster_item = item(2, PEER, 2);
        if let Ok(record) = &mut roster_item.opened {
            record.kind = RecordKind::ROSTER;
        }
        delivery.push(batch(
            vec![
                item(1, PEER, 1),
                roster_item,          // seq 2 of PEER: taken, not delivered
                item(3, STRANGER, 1), // not a member: reported
                item(4, PEER, 3),     // no gap: the roster record took seq 2
            ],
            40,
        ));
        let mut judged = Vec::new();
        let drained = delivery.drain(100, &mut |_, record: &OpenedRecord| {
            judged.push((record.sender, record.kind));
            if record.sender == STRANGER {
                Judged::NotMember
            } else {
                Judged::Seq(tracker.observe(record.sender, record.seq))
            }
        });
        assert_eq!(judged[1], (PEER, RecordKind::ROSTER), "judge sees it");
        let said: Vec<String> = drained
            .events
            .iter()
            .map(|e| match e {
                Event::Received { seq, .. } => format!("received {seq}"),
                Event::UnknownSender {
                    sender, blob_id, ..
                } => {
                    format!("unknown {} {}", sender.0[0], blob_id.0[0])
                }
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            said,
            [
                "received 1",
                &format!(
                    "{:?}",
                    Event::RosterChanged {
                        group: GROUP,
                        sender: PEER,
                        seq: 2
                    }
                ),
                "unknown 4 3",
                "received 3"
            ]
        );
        // The stranger's record is not remembered: a copy may count once its Add arrives.
        assert!(!delivery.seen.contains(&BlobId([3; 32])));
        assert!(delivery.seen.contains(&BlobId([2; 32])));
    }

    #[test]
    fn relay_states_are_coalesced_per_relay_and_go_before_records() {
        let mut delivery = Delivery::new(OWN);
        let mut tracker = SeqTracker::new();
        let (a, b) = (DeviceId([5; 32]), DeviceId([6; 32]));
        let up = |relay| Event::RelayUp { relay };
        let down = |relay| Event::RelayDown {
            relay,
            reason: "gone".into(),
        };
        // With room and nothing waiting, at once.
        assert!(delivery.link_event(a, up(a), 1).is_some());
        // Without room: kept, the latest per relay.
        assert!(delivery.link_event(a, down(a), 0).is_none());
        assert!(delivery.link_event(b, down(b), 0).is_none());
        assert!(delivery.link_event(a, up(a), 0).is_none());
        // Something waits: a later one queues behind it even with room.
        assert!(delivery.link_event(b, up(b), 5).is_none());
        delivery.push(batch(vec![item(1, PEER, 1)], 10));
        let drained = drain(&mut delivery, &mut tracker, 100);
        assert!(
            matches!(
                drained.events.as_slice(),
                [
                    Event::RelayUp { relay: first },
                    Event::RelayUp { relay: second },
                    Event::Received { seq: 1, .. }
                ] if *first == a && *second == b
            ),
            "{:?}",
            drained.events
        );
    }
}
