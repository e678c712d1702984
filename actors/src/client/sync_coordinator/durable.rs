//! What waits for the store's group commit: enqueued records (sent to relays and answered
//! once durable) and sync barriers.

use super::*;

impl CoordinatorState {
    /// The store made everything up to `durable.through` durable: answer and send what
    /// waited for it, in order.
    pub(super) fn on_durable(&mut self, durable: Durable) {
        let mut touched = std::collections::BTreeSet::new();
        while let Some((ticket, _)) = self.after_durable.front() {
            let failed = durable.error.clone().filter(|_| *ticket > durable.through);
            if *ticket > durable.through && failed.is_none() {
                break;
            }
            let Some((_, action)) = self.after_durable.pop_front() else {
                break;
            };
            match (action, failed) {
                (AfterDurable::Enqueued { reply, .. }, Some(error)) => {
                    let _ = reply.send(Err(StoreError::Flush(error).into()));
                }
                (AfterDurable::Barrier(reply), Some(_)) => drop(reply),
                (AfterDurable::Reserved { .. }, Some(_)) => {}
                // Not posted: the admitting member could not keep its `Add` (the store is
                // failing, and the coordinator stops).
                (AfterDurable::Post { .. }, Some(_)) => {}
                (AfterDurable::Post { watch, bytes }, None) => self.post(watch, bytes),
                (
                    AfterDurable::Enqueued {
                        pushes,
                        reply,
                        queued,
                    },
                    None,
                ) => {
                    for (group, seq) in pushes {
                        if let Some(state) = self.groups.get_mut(&group) {
                            state.outbox.made_sendable(seq);
                            touched.insert(group);
                        }
                    }
                    let _ = reply.send(Ok(queued));
                }
                (AfterDurable::Barrier(reply), None) => {
                    let _ = reply.send(());
                }
                (AfterDurable::Reserved { group, through }, None) => {
                    if let Some(state) = self.groups.get_mut(&group) {
                        state.outbox.made_sendable(through);
                        touched.insert(group);
                    }
                }
            }
        }
        // Newly sendable pushes go to every relay of their group, within its window.
        self.send_new(touched);
    }

    /// Hand `groups`' newly sendable pushes to every relay of theirs, within its window.
    pub(super) fn send_new(&mut self, groups: std::collections::BTreeSet<GroupId>) {
        for group in groups {
            let relays: Vec<DeviceId> = self
                .groups
                .get(&group)
                .map(|g| g.relays.iter().map(|r| r.id).collect())
                .unwrap_or_default();
            for relay in relays {
                self.top_up(relay, group);
            }
        }
    }

    /// Answer `barrier` once everything applied so far is durable.
    pub(super) fn pass_when_durable(&mut self, barrier: RpcReplyPort<()>) {
        let ticket = self.args.store.request_flush();
        self.after_durable
            .push_back((ticket, AfterDurable::Barrier(barrier)));
    }
}
