//! The shared restart policy at work in the relay's supervisors, over virtual time: a
//! BlobStore that fails every time it starts is restarted by Infra with growing, jittered
//! delays until the intensity limit, then Infra stops itself with the reason; a GroupRouter
//! that fails every time it starts is restarted the same way, then its mailbox is parked for
//! the policy's period (other mailboxes unaffected) and started again after it.

#![allow(clippy::unwrap_used)]

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, ActorStatus, SupervisionEvent};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use zerok_actors::clock::Clock;
use zerok_actors::fault::FaultPlan;
use zerok_actors::relay::blob_store::ItemStore;
use zerok_actors::relay::blob_store::core::{CommitPlan, MailboxMeta, StoreBudget, StoreLimits};
use zerok_actors::relay::infra::{InfraActor, InfraArgs};
use zerok_actors::relay::metrics::RelayMetrics;
use zerok_actors::relay::routers_supervisor::{RoutersSupervisorActor, RoutersSupervisorArgs};
use zerok_actors::rng::Rng;
use zerok_actors::shared_ref::SharedRef;
use zerok_actors::supervision::RestartPolicy;
use zerok_messages::relay::{
    AppendRequest, BlobStoreMsg, InfraMsg, Page, RoutersMsg, StoreError, StoreStats, SweepReport,
};
use zerok_messages::{Cursor, MailboxId};

/// Margin around a timer's due time: tokio's timer wheel fires on millisecond ticks.
const TICK: Duration = Duration::from_millis(10);

const MAILBOX: MailboxId = MailboxId([1; 32]);
const OTHER: MailboxId = MailboxId([2; 32]);

/// An in-memory item store that records when a BlobStore starts on it (each start reads the
/// budget once) and, once told to, makes every start fail.
#[derive(Default)]
struct FailingStarts {
    starts: Mutex<Vec<Instant>>,
    is_failing: AtomicBool,
}

impl FailingStarts {
    fn starts(&self) -> Vec<Instant> {
        self.starts.lock().unwrap().clone()
    }
}

impl ItemStore for FailingStarts {
    fn budget(&self) -> StoreBudget {
        self.starts.lock().unwrap().push(Instant::now());
        assert!(
            !self.is_failing.load(Ordering::SeqCst),
            "injected failure of a store start"
        );
        StoreBudget::unlimited()
    }
    fn meta(&self, _: &MailboxId) -> MailboxMeta {
        MailboxMeta::default()
    }
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }
    fn commit(
        &self,
        _: &[AppendRequest],
        _: u64,
        _: &StoreLimits,
        _: &FaultPlan,
    ) -> Result<CommitPlan, StoreError> {
        Err(StoreError::Unavailable("not in this test".into()))
    }
    fn read_page(&self, _: &MailboxId, _: u64, _: u32, _: u32, _: u64) -> Result<Page, StoreError> {
        Err(StoreError::Unavailable("not in this test".into()))
    }
    fn sweep(&self, _: u64, _: u32) -> Result<SweepReport, StoreError> {
        Ok(SweepReport::default())
    }
}

/// A supervisor stand-in: forwards every end of a child it supervises, with the reason.
struct Watcher;

impl Actor for Watcher {
    type Msg = ();
    type State = tokio::sync::mpsc::UnboundedSender<(ActorId, String)>;
    type Arguments = tokio::sync::mpsc::UnboundedSender<(ActorId, String)>;

    async fn pre_start(
        &self,
        _: ActorRef<()>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<()>,
        event: SupervisionEvent,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(ended) = zerok_actors::supervision::ended(&event) {
            let _ = tx.send(ended);
        }
        Ok(())
    }
}

/// A BlobStore stand-in for routers: records when each router starts (its one `GetLatest`)
/// and fails that lookup for the mailboxes in `failing`, so their routers fail to start.
struct RouterStarts;

#[derive(Clone, Default)]
struct RouterStartsLog {
    starts: Arc<Mutex<Vec<(MailboxId, Instant)>>>,
    failing: Arc<Mutex<BTreeSet<MailboxId>>>,
}

impl RouterStartsLog {
    fn starts_of(&self, mailbox: MailboxId) -> Vec<Instant> {
        let starts = self.starts.lock().unwrap();
        starts
            .iter()
            .filter(|(m, _)| *m == mailbox)
            .map(|(_, at)| *at)
            .collect()
    }

    fn set_failing(&self, mailbox: MailboxId, is_failing: bool) {
        let mut failing = self.failing.lock().unwrap();
        if is_failing {
            failing.insert(mailbox);
        } else {
            failing.remove(&mailbox);
        }
    }
}

impl Actor for RouterStarts {
    type Msg = BlobStoreMsg;
    type State = RouterStartsLog;
    type Arguments = RouterStartsLog;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        log: RouterStartsLog,
    ) -> Result<RouterStartsLog, ActorProcessingErr> {
        Ok(log)
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        message: Self::Msg,
        log: &mut RouterStartsLog,
    ) -> Result<(), ActorProcessingErr> {
        if let BlobStoreMsg::GetLatest { mailbox, reply } = message {
            log.starts.lock().unwrap().push((mailbox, Instant::now()));
            let answer = if log.failing.lock().unwrap().contains(&mailbox) {
                Err(StoreError::Unavailable("injected".into()))
            } else {
                Ok(Cursor(0))
            };
            let _ = reply.send(answer);
        }
        Ok(())
    }
}

/// Walk a child that fails at every start through its restarts: after the crash at `crashed`,
/// the `n`-th restart comes no sooner than `(1 - jitter)` of its base delay and no later than
/// the base delay, for `n` in `1..=intensity`. `starts()` lists every start so far (the first,
/// successful one included). Returns the time of the last restart.
async fn expect_growing_restarts(
    policy: &RestartPolicy,
    crashed: Instant,
    starts: impl Fn() -> Vec<Instant>,
) -> Instant {
    let mut last = crashed;
    for n in 1..=policy.intensity {
        let base = policy.base_delay(n);
        let earliest = base.mul_f64(1.0 - policy.jitter);
        tokio::time::sleep_until(last + earliest - TICK).await;
        assert_eq!(starts().len(), n as usize, "restart {n} came too early");
        tokio::time::sleep_until(last + base + TICK).await;
        let seen = starts();
        assert_eq!(seen.len(), n as usize + 1, "restart {n} did not come");
        let gap = seen[n as usize] - last;
        assert!(
            gap >= earliest && gap <= base + Duration::from_millis(1),
            "restart {n} after {gap:?}, outside {earliest:?}..={base:?}"
        );
        last = seen[n as usize];
    }
    last
}

#[tokio::test(start_paused = true)]
async fn infra_restarts_a_store_failing_at_every_start_with_growing_delays_then_escalates() {
    let policy = RestartPolicy::STANDARD;
    let store = Arc::new(FailingStarts::default());
    let metrics = RelayMetrics::new();
    let (tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
    let (watcher, _) = Actor::spawn(None, Watcher, tx).await.unwrap();
    let args = InfraArgs {
        store: store.clone(),
        limits: StoreLimits::default(),
        clock: Clock::virtual_at(1_700_000_000_000),
        faults: FaultPlan::none(),
        metrics: metrics.clone(),
        sweep_interval: Duration::from_secs(24 * 3600),
        sweep_slice_items: 10,
        store_restart: policy,
        sweeper_restart: policy,
        rng: Rng::seeded(7),
    };
    let (infra, infra_done) = Actor::spawn_linked(None, InfraActor, args, watcher.get_cell())
        .await
        .unwrap();
    assert_eq!(store.starts().len(), 1);
    let shared = ractor::call!(infra, |reply| InfraMsg::GetStore { reply }).unwrap();

    store.is_failing.store(true, Ordering::SeqCst);
    shared.get().kill();
    let crashed = Instant::now();
    let last = expect_growing_restarts(&policy, crashed, || store.starts()).await;
    // Six crashes (the kill and five failed restarts) within 31 s of the 60 s window: the
    // sixth escalated instead of scheduling a sixth restart.
    assert!(last - crashed < policy.period);
    // Escalation is immediate: Infra has stopped by the time of the crash that escalated.
    let (id, reason) = tokio::time::timeout(TICK, ended.recv())
        .await
        .expect("infra did not stop")
        .unwrap();
    assert_eq!(id, infra.get_id());
    assert!(
        reason.contains("blob_store crashed more than 5 times within 60 s"),
        "{reason}"
    );
    infra_done.await.unwrap();
    assert_eq!(infra.get_status(), ActorStatus::Stopped);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(store.starts().len(), 1 + policy.intensity as usize);
    assert_eq!(
        metrics
            .actor_restarts_total
            .with_label_values(&["blob_store"])
            .get(),
        u64::from(policy.intensity)
    );
}

#[tokio::test(start_paused = true)]
async fn a_router_failing_at_every_start_is_restarted_with_growing_delays_then_its_mailbox_is_parked()
 {
    let policy = RestartPolicy::STANDARD;
    let log = RouterStartsLog::default();
    let (store, _) = Actor::spawn(None, RouterStarts, log.clone()).await.unwrap();
    let metrics = RelayMetrics::new();
    let (routers, _) = Actor::spawn(
        None,
        RoutersSupervisorActor,
        RoutersSupervisorArgs {
            store: SharedRef::new(store),
            metrics: metrics.clone(),
            router_restart: policy,
            rng: Rng::seeded(11),
            faults: FaultPlan::none(),
        },
    )
    .await
    .unwrap();
    let get_router = |mailbox| {
        let routers = routers.clone();
        async move { ractor::call!(routers, |reply| RoutersMsg::GetRouter { mailbox, reply }).unwrap() }
    };
    let first = get_router(MAILBOX).await.unwrap();
    get_router(OTHER).await.unwrap();

    log.set_failing(MAILBOX, true);
    first.kill();
    let crashed = Instant::now();
    let last = expect_growing_restarts(&policy, crashed, || log.starts_of(MAILBOX)).await;
    assert!(last - crashed < policy.period);

    // The sixth crash parked the mailbox: no restart for a period, lookups refused, the
    // supervisor and the other mailbox unaffected.
    let parked = get_router(MAILBOX).await.unwrap_err();
    assert!(
        matches!(&parked, StoreError::Unavailable(text) if text.contains("retry later")),
        "{parked}"
    );
    assert!(get_router(OTHER).await.is_ok());
    assert_eq!(routers.get_status(), ActorStatus::Running);
    tokio::time::sleep_until(last + policy.period - TICK).await;
    assert_eq!(log.starts_of(MAILBOX).len(), 1 + policy.intensity as usize);
    assert!(get_router(MAILBOX).await.is_err());

    // After the period the router is started again, with a fresh streak.
    log.set_failing(MAILBOX, false);
    tokio::time::sleep_until(last + policy.period + TICK).await;
    assert_eq!(log.starts_of(MAILBOX).len(), 2 + policy.intensity as usize);
    let restarted = get_router(MAILBOX).await.unwrap();
    assert_ne!(restarted.get_id(), first.get_id());
    assert_eq!(restarted.get_status(), ActorStatus::Running);
    assert_eq!(
        metrics
            .actor_restarts_total
            .with_label_values(&["group_router"])
            .get(),
        u64::from(policy.intensity)
    );
}
