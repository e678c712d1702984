//! Invariants checked at the end of every scenario, as named functions over what a
//! [`SimWorld`](crate::world::SimWorld) recorded. Each answers `Err` with what broke.

use crate::world::{Shared, show};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use zerok_actors::relay::blob_store::fs::SimFs;
use zerok_messages::DeviceId;
use zerok_messages::sync::lock;

/// A broken invariant: its name and what broke it.
pub type Violation = String;

/// Every push acknowledged to an app was received by every other device (at least once),
/// except a device removed from the group.
pub fn acked_pushes_reach_every_other_device(shared: &Shared) -> Result<(), Violation> {
    for (i, sender) in shared.devices.iter().enumerate() {
        let acked = lock(&sender.acked).clone();
        for (j, receiver) in shared.devices.iter().enumerate() {
            // A device removed from the group receives nothing more.
            if i == j || *lock(&receiver.removed) {
                continue;
            }
            let got: BTreeSet<Vec<u8>> = lock(&receiver.received)
                .iter()
                .map(|r| r.payload.clone())
                .collect();
            let missing: Vec<String> = acked
                .iter()
                .filter(|p| !got.contains(*p))
                .map(|p| show(p))
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "acked_pushes_reach_every_other_device: dev{j} lacks {} of dev{i}'s acked pushes, e.g. {:?}",
                    missing.len(),
                    &missing[..missing.len().min(3)]
                ));
            }
        }
    }
    Ok(())
}

/// No device's app received one record twice (holds while no receiver crashed: across a
/// crash delivery is at-least-once, DESIGN.md §6).
pub fn received_exactly_once(shared: &Shared) -> Result<(), Violation> {
    for (j, device) in shared.devices.iter().enumerate() {
        let mut seen = BTreeSet::new();
        for r in lock(&device.received).iter() {
            if !seen.insert((r.sender, r.seq)) {
                return Err(format!(
                    "received_exactly_once: dev{j} got seq {} of {} twice ({})",
                    r.seq,
                    r.sender.short(),
                    show(&r.payload)
                ));
            }
        }
    }
    Ok(())
}

/// A seq names one record: no device received two different payloads under one
/// (sender, seq), also across restarts of the sender (a crash never reuses a seq).
pub fn one_record_per_seq(shared: &Shared) -> Result<(), Violation> {
    let mut by_seq: HashMap<(DeviceId, u64), Vec<u8>> = HashMap::new();
    for (j, device) in shared.devices.iter().enumerate() {
        for r in lock(&device.received).iter() {
            let first = by_seq
                .entry((r.sender, r.seq))
                .or_insert_with(|| r.payload.clone());
            if *first != r.payload {
                return Err(format!(
                    "one_record_per_seq: dev{j} got seq {} of {} as {} and as {}",
                    r.seq,
                    r.sender.short(),
                    show(first),
                    show(&r.payload)
                ));
            }
        }
    }
    Ok(())
}

/// Per-sender order: a device receives a sender's records in seq order, except records
/// a `GapDetected` announced as missing earlier (they may arrive late). Redeliveries after a
/// receiver's restart (at-least-once) are not counted.
pub fn per_sender_order(shared: &Shared) -> Result<(), Violation> {
    for (j, device) in shared.devices.iter().enumerate() {
        let received = lock(&device.received).clone();
        let gaps = lock(&device.gaps).clone();
        let mut highest: BTreeMap<DeviceId, u64> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for (k, r) in received.iter().enumerate() {
            if !seen.insert((r.sender, r.seq)) {
                continue;
            }
            let top = highest.entry(r.sender).or_default();
            if r.seq < *top {
                let announced = gaps.iter().any(|g| {
                    g.sender == r.sender && g.from <= r.seq && r.seq < g.to && g.after_received <= k
                });
                if !announced {
                    return Err(format!(
                        "per_sender_order: dev{j} got seq {} of {} after seq {} with no gap announced",
                        r.seq,
                        r.sender.short(),
                        top
                    ));
                }
            }
            *top = (*top).max(r.seq);
        }
    }
    Ok(())
}

/// Nothing reaches an app that no app pushed: every received payload was queued by its
/// sender (no forgery, no tampered record opens).
pub fn only_pushed_records_are_received(
    shared: &Shared,
    pushed: &BTreeSet<Vec<u8>>,
) -> Result<(), Violation> {
    for (j, device) in shared.devices.iter().enumerate() {
        if let Some(r) = lock(&device.received)
            .iter()
            .find(|r| !pushed.contains(&r.payload))
        {
            return Err(format!(
                "only_pushed_records_are_received: dev{j} got {} that nobody pushed",
                show(&r.payload)
            ));
        }
    }
    Ok(())
}

/// No relay served an item that does not open (with honest relays, nothing is tampered).
pub fn nothing_undecryptable_served(shared: &Shared) -> Result<(), Violation> {
    for (j, device) in shared.devices.iter().enumerate() {
        if *lock(&device.undecryptable) > 0 {
            return Err(format!(
                "nothing_undecryptable_served: dev{j} was served undecryptable items"
            ));
        }
    }
    Ok(())
}

/// The relay cursors a device's client reports never go back while it runs (a restart may
/// resume from its last saved cursor, so each start is checked on its own), except on the
/// relays in `wiped`: a relay that lost its data is re-read from the start, by design.
pub fn cursors_never_go_back(shared: &Shared, wiped: &BTreeSet<DeviceId>) -> Result<(), Violation> {
    for (j, device) in shared.devices.iter().enumerate() {
        // Per epoch: a new epoch's mailbox is read from its start.
        let mut last: BTreeMap<(u64, DeviceId, u32), u64> = BTreeMap::new();
        for seen in lock(&device.cursors).iter() {
            if wiped.contains(&seen.relay) {
                continue;
            }
            let key = (seen.start, seen.relay, seen.epoch);
            if let Some(&before) = last.get(&key)
                && seen.cursor < before
            {
                return Err(format!(
                    "cursors_never_go_back: dev{j}'s cursor on relay {} went from {before} to {} (start {})",
                    seen.relay.short(),
                    seen.cursor,
                    seen.start
                ));
            }
            last.insert(key, seen.cursor);
        }
    }
    Ok(())
}

/// Restarts stay within the supervision policies: no host's tree stopped on its own
/// (a failure escalated past every supervisor) except the hosts in `escalated`, whose
/// top-level actor the scenario killed on purpose.
pub fn no_escalation_beyond_policy(
    shared: &Shared,
    escalated: &BTreeSet<String>,
) -> Result<(), Violation> {
    match lock(&shared.tree_stops)
        .iter()
        .find(|host| !escalated.contains(*host))
    {
        Some(host) => Err(format!(
            "no_escalation_beyond_policy: {host}'s tree stopped: a failure went past its supervisors"
        )),
        None => Ok(()),
    }
}

/// Quotas and memory budgets held on every relay while it ran: the budget probes (every
/// 100 ms of simulated time, from the relays' own metrics) found nothing over its limit
/// (store bytes and index entries, bytes per mailbox, unread reply bytes, sessions), and
/// they did run.
pub fn budgets_hold(shared: &Shared) -> Result<(), Violation> {
    let log = lock(&shared.budgets);
    if log.samples == 0 {
        return Err("budgets_hold: no relay budget was ever sampled".to_owned());
    }
    match log.over.first() {
        Some(first) => Err(format!(
            "budgets_hold: {} samples over a limit, first {first}",
            log.over.len()
        )),
        None => Ok(()),
    }
}

/// No plaintext on the relays' disks: no file under `dirs` (their data dirs on the real file
/// system) and no file of `disks` (their simulated store disks) contains `marker` (every
/// scenario payload starts with it).
pub fn no_plaintext_on_relays(
    dirs: &[impl AsRef<Path>],
    disks: &[SimFs],
    marker: &[u8],
) -> Result<(), Violation> {
    let finder = memchr::memmem::Finder::new(marker);
    let holds = |bytes: &[u8]| finder.find(bytes).is_some();
    for dir in dirs {
        let mut stack = vec![dir.as_ref().to_path_buf()];
        while let Some(path) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                if let Ok(entries) = std::fs::read_dir(&path) {
                    stack.extend(entries.flatten().map(|e| e.path()));
                }
            } else if let Ok(bytes) = std::fs::read(&path)
                && holds(&bytes)
            {
                return Err(format!(
                    "no_plaintext_on_relays: {} holds plaintext",
                    path.display()
                ));
            }
        }
    }
    for (i, disk) in disks.iter().enumerate() {
        if disk.file_contents().iter().any(|bytes| holds(bytes)) {
            return Err(format!(
                "no_plaintext_on_relays: a file on relay {i}'s store disk holds plaintext"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Each invariant fails on a recording that breaks it (and passes on one that does not).

    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::world::{CursorSeen, Gap, Received};
    use zerok_actors::relay::blob_store::fs::write_file_durably;

    const A: DeviceId = DeviceId([1; 32]);

    fn shared(devices: usize) -> Shared {
        Shared::with_devices(devices)
    }

    fn got(shared: &Shared, dev: usize, seq: u64, payload: &str) {
        lock(&shared.devices[dev].received).push(Received {
            sender: A,
            seq,
            payload: payload.as_bytes().to_vec(),
        });
    }

    #[test]
    fn a_lost_acked_push_is_caught() {
        let s = shared(2);
        lock(&s.devices[0].acked).push(b"p1".to_vec());
        lock(&s.devices[0].acked).push(b"p2".to_vec());
        got(&s, 1, 1, "p1");
        assert!(acked_pushes_reach_every_other_device(&s).is_err());
        got(&s, 1, 2, "p2");
        assert!(acked_pushes_reach_every_other_device(&s).is_ok());
    }

    #[test]
    fn a_duplicate_a_reused_seq_and_a_reordering_are_caught() {
        let s = shared(2);
        got(&s, 1, 1, "p1");
        got(&s, 1, 3, "p3");
        got(&s, 1, 2, "p2");
        assert!(received_exactly_once(&s).is_ok());
        assert!(
            per_sender_order(&s).is_err(),
            "2 after 3 with no gap announced"
        );
        lock(&s.devices[1].gaps).push(Gap {
            sender: A,
            from: 2,
            to: 3,
            after_received: 1,
        });
        assert!(
            per_sender_order(&s).is_ok(),
            "announced as missing, then filled"
        );
        got(&s, 1, 2, "p2");
        assert!(received_exactly_once(&s).is_err());
        assert!(one_record_per_seq(&s).is_ok());
        got(&s, 1, 3, "another record under seq 3");
        assert!(one_record_per_seq(&s).is_err());
    }

    #[test]
    fn a_forged_record_and_plaintext_on_disk_are_caught() {
        let s = shared(2);
        got(&s, 1, 1, "p1");
        let pushed: BTreeSet<Vec<u8>> = [b"p1".to_vec()].into();
        assert!(only_pushed_records_are_received(&s, &pushed).is_ok());
        got(&s, 1, 2, "forged");
        assert!(only_pushed_records_are_received(&s, &pushed).is_err());
        assert!(nothing_undecryptable_served(&s).is_ok());
        *lock(&s.devices[1].undecryptable) += 1;
        assert!(nothing_undecryptable_served(&s).is_err());
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("store")).unwrap();
        std::fs::write(dir.path().join("store/seg"), b"xx chaos-plaintext-1 xx").unwrap();
        let none: [SimFs; 0] = [];
        assert!(no_plaintext_on_relays(&[dir.path()], &none, b"chaos-plaintext-").is_err());
        assert!(no_plaintext_on_relays(&[dir.path()], &none, b"absent").is_ok());
        let disk = SimFs::new();
        let fs = disk.shared();
        fs.create_dir_all(Path::new("/store")).unwrap();
        write_file_durably(&*fs, Path::new("/store/seg"), b"xx chaos-plaintext-2 xx").unwrap();
        let empty = tempfile::tempdir().unwrap();
        assert!(
            no_plaintext_on_relays(
                &[empty.path()],
                std::slice::from_ref(&disk),
                b"chaos-plaintext-"
            )
            .is_err()
        );
        assert!(no_plaintext_on_relays(&[empty.path()], &[disk], b"absent").is_ok());
    }

    #[test]
    fn a_budget_over_its_limit_or_never_sampled_is_caught() {
        let s = shared(2);
        assert!(budgets_hold(&s).is_err(), "never sampled");
        lock(&s.budgets).samples = 3;
        assert_eq!(budgets_hold(&s), Ok(()));
        lock(&s.budgets)
            .over
            .push("relay0: index entries 25 > 24".to_owned());
        let err = budgets_hold(&s).unwrap_err();
        assert!(err.contains("index entries 25 > 24"), "{err}");
    }

    #[test]
    fn an_escalation_nobody_caused_is_caught() {
        let s = shared(1);
        assert!(no_escalation_beyond_policy(&s, &BTreeSet::new()).is_ok());
        lock(&s.tree_stops).push("relay0".to_owned());
        assert!(no_escalation_beyond_policy(&s, &BTreeSet::new()).is_err());
        assert!(no_escalation_beyond_policy(&s, &["relay0".to_owned()].into()).is_ok());
    }

    #[test]
    fn a_cursor_going_back_within_a_start_is_caught() {
        let s = shared(1);
        let seen = |start, cursor| {
            lock(&s.devices[0].cursors).push(CursorSeen {
                start,
                relay: A,
                epoch: 0,
                cursor,
            });
        };
        seen(1, 5);
        seen(1, 9);
        seen(2, 7);
        let none = BTreeSet::new();
        assert!(
            cursors_never_go_back(&s, &none).is_ok(),
            "a restart resumes from its saved cursor"
        );
        seen(2, 6);
        assert!(cursors_never_go_back(&s, &none).is_err());
        assert!(
            cursors_never_go_back(&s, &[A].into()).is_ok(),
            "a relay that lost its data is re-read from the start"
        );
    }
}
