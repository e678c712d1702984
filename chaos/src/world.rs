//! [`SimWorld`]: relays and devices as turmoil hosts joined by the simulated network of
//! [`crate::net`], driven step by step by a scenario, with a recorder of what the apps saw.
//!
//! - A **relay** host runs the real relay tree (`RelayNode::start` with a simulated listener,
//!   no HTTP) on its own data dir, its store's segments on a simulated disk (`SimFs`) that
//!   outlives the host. Crashing and restarting the host is a killed and restarted relay
//!   process: its files survive (the page cache does). [`SimWorld::power_loss`] crashes it
//!   and cuts the disk's power: only what the store synced survives (or a torn part of the
//!   rest). The store's index and the relay's other files stay on the real file system.
//! - A **device** host runs a real `Client` (the public API, its own home dir) as an app
//!   would: the first device creates the group on every relay and publishes one invite per
//!   other device (invites are single use), the others join with theirs (the first device
//!   admits them); then each takes the pushes a scenario queues for it, records the
//!   ones acked, and records every record it receives. A restarted device starts its client
//!   again on the same home dir. Its local store keeps an image of what it synced
//!   ([`DeviceDisk`]): [`SimWorld::device_power_loss`] crashes the host and puts the image
//!   back (or a torn part of what came after).
//! - Time is turmoil's simulated time: timeouts, backoffs and pings of both trees run in it.
//!   Every host's wall clock is [`WALL_START_MS`] plus simulated time plus its own shift
//!   ([`WorldConfig::clock_skew_ms`], [`SimWorld::shift_clock`]: skewed clocks and clocks that
//!   jump).
//!
//! Every host runs on the calling thread, and blocking work (store syncs and reads, seals)
//! runs inline there (`zerok_actors::exec`), so simulated time does not depend on the real
//! machine's speed.

use crate::device_disk::DeviceDisk;
use crate::hostile::{Rewrite, rewriting};
use crate::net::{SimDialer, listen, relay_addr};
use ractor::ActorCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use zerok_actors::clock::Clock;
use zerok_actors::fault::FaultPlan;
use zerok_actors::link::LinkListener;
use zerok_actors::relay::blob_store::fs::{OpenMode, PowerCut, SimFs};
use zerok_actors::relay::blob_store::segments::SEGMENT_SUFFIX;
use zerok_actors::relay::metrics::RelayMetrics;
use zerok_actors::rng::Rng;
use zerok_client::{
    Client, ClientConfig, ClientError, Event, GroupId, NewSecret, PairCode, Transport,
};
use zerok_messages::sync::lock;
use zerok_messages::{DeviceId, RelayAddr};
use zerok_relay::config::{RelayConfig, StoreConfig};
use zerok_relay::tree::{RelayNode, Seams};

/// How often a device looks for new pushes to make.
const COMMAND_POLL: Duration = Duration::from_millis(5);

/// How long an app waits before pushing a record again whose push failed.
const APP_RETRY: Duration = Duration::from_millis(500);

/// The relays' segment size.
const SEGMENT_BYTES: u64 = 1024 * 1024;

/// How often a device reads its relay cursors from its client's status.
const CURSOR_PROBE: Duration = Duration::from_millis(100);

/// The longest a simulation may run (sim time); scenarios stop long before.
const SIMULATION_MAX: Duration = Duration::from_secs(24 * 3600);

/// Wall time (unix ms) at the start of every simulation, before any host's shift.
pub const WALL_START_MS: u64 = 1_800_000_000_000;

/// A device's local store, inside its home (as `zerok_client` places it).
const DEVICE_STORE_DIR: &str = "store";

/// Invites made by the first device stay valid this long.
const INVITE_VALID: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long a pairing side waits for the other (each step: the exchange, the admission).
const PAIR_WAIT: Duration = Duration::from_secs(120);

/// One record a device's app received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The device that wrote it.
    pub sender: DeviceId,
    /// Its seq.
    pub seq: u64,
    /// The app's bytes.
    pub payload: Vec<u8>,
}

/// A `GapDetected` a device's app got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The sender.
    pub sender: DeviceId,
    /// First missing seq.
    pub from: u64,
    /// One past the last.
    pub to: u64,
    /// Records the device had received before it.
    pub after_received: usize,
}

/// A relay cursor a device's client reported (in its status), when it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorSeen {
    /// The device's start it was seen in (a restart may go back to its last saved cursor).
    pub start: u64,
    /// The relay.
    pub relay: DeviceId,
    /// The group's key epoch (each has its own mailbox, read from its start).
    pub epoch: u32,
    /// The group's cursor on it.
    pub cursor: u64,
}

/// What one device's app did and saw.
#[derive(Debug, Default)]
pub struct DeviceLog {
    /// Its id, once its client started.
    pub id: OnceLock<DeviceId>,
    /// Pushes queued by the scenario, not yet started.
    pending: Mutex<VecDeque<Vec<u8>>>,
    /// Payloads whose `push` returned a receipt (durable here and acked by a relay).
    pub acked: Mutex<Vec<Vec<u8>>>,
    /// Payloads whose `push` failed.
    pub failed: Mutex<Vec<Vec<u8>>>,
    /// Records received, in the order the app got them (every start of the device).
    pub received: Mutex<Vec<Received>>,
    /// `GapDetected` events.
    pub gaps: Mutex<Vec<Gap>>,
    /// `Undecryptable` (and `UnknownSender`) events.
    pub undecryptable: Mutex<u64>,
    /// `RosterChanged` events: the (sender, seq) of each roster record taken, which holds a
    /// seq of its sender as a received record does.
    pub roster: Mutex<Vec<(DeviceId, u64)>>,
    /// Times its client started.
    pub starts: Mutex<u64>,
    /// Its relay cursors, each time one changed (read from the client's status).
    pub cursors: Mutex<Vec<CursorSeen>>,
    /// Whether it has the group (created or joined once; kept across restarts).
    joined: Mutex<bool>,
    /// Devices (by index) its app is to remove from the group, not yet started.
    removals: Mutex<VecDeque<usize>>,
    /// A member removed it from the group (`Event::Removed`): it receives nothing more.
    pub removed: Mutex<bool>,
}

/// State shared by the hosts and the scenario.
#[derive(Debug, Default)]
pub struct Shared {
    /// The group, once the first device created it.
    pub group: OnceLock<GroupId>,
    /// Its invites (tokens, or pairing codes), one per other device (device `i` takes the
    /// `i - 1`th).
    invites: OnceLock<Vec<String>>,
    /// One log per device.
    pub devices: Vec<DeviceLog>,
    /// Structured events, in order, stamped with simulated time.
    pub trace: Mutex<Vec<String>>,
    /// Each host's actor tree (its root) as of its last start, for kills by name.
    actors: Mutex<BTreeMap<String, ActorCell>>,
    /// Hosts whose tree stopped on its own (escalation past its supervisors), each time.
    pub tree_stops: Mutex<Vec<String>>,
    /// Relay budgets as the relays' metrics showed them, sampled while they ran.
    pub budgets: Mutex<BudgetLog>,
}

impl Shared {
    /// Whether the first device created the group and published its invites (the others
    /// are joining with them, or joined).
    pub fn invites_published(&self) -> bool {
        self.invites.get().is_some()
    }
}

/// What the relays' budget probes saw: how many samples, and every sample over its limit.
#[derive(Debug, Default, Clone)]
pub struct BudgetLog {
    /// Samples taken (each reads every budget of one relay).
    pub samples: u64,
    /// `host: what value > limit`, each time a sample found one over.
    pub over: Vec<String>,
}

impl Shared {
    /// Empty logs for `devices` devices.
    pub fn with_devices(devices: usize) -> Shared {
        Shared {
            devices: (0..devices).map(|_| DeviceLog::default()).collect(),
            ..Shared::default()
        }
    }

    fn record(&self, line: String) {
        let at = turmoil::sim_elapsed().unwrap_or_default();
        lock(&self.trace).push(format!("{:>10.3} {line}", at.as_secs_f64() * 1e3));
    }
}

/// The shape of a world.
#[derive(Debug, Clone)]
pub struct WorldConfig {
    /// Seeds turmoil (network latency draws) and every host's randomness.
    pub seed: u64,
    /// Relays (hosts `relay0`, `relay1`, ...); the group uses all of them.
    pub relays: usize,
    /// Devices (hosts `dev0`, `dev1`, ...).
    pub devices: usize,
    /// Relays that must ack a push (capped by the relays).
    pub ack_quorum: usize,
    /// Longest latency of one message (drawn per message, exponential, from 0).
    pub max_latency: Duration,
    /// Faults injected into device `i`'s client (`faults[i]`; none past the end).
    pub faults: Vec<FaultPlan>,
    /// Faults injected into relay `i`'s tree and store (`relay_faults[i]`).
    pub relay_faults: Vec<FaultPlan>,
    /// What relay `i`'s host does to the frames its relay sends (`hostile[i]`; honest
    /// past the end).
    pub hostile: Vec<Rewrite>,
    /// Hosts whose wall clock is off from the others' from the start, by how many
    /// milliseconds (negative: behind).
    pub clock_skew_ms: Vec<(String, i64)>,
    /// The relays' item budget (`store.max_items`: one index entry per item plus
    /// `MAILBOX_INDEX_ENTRIES` per mailbox); `None`: the default.
    pub relay_max_items: Option<u64>,
    /// The other devices join by pairing with the first one (a code it shows, typed on
    /// theirs) instead of by its invite tokens.
    pub pairing: bool,
}

impl Default for WorldConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            relays: 1,
            devices: 2,
            ack_quorum: 1,
            max_latency: Duration::from_millis(100),
            faults: Vec::new(),
            relay_faults: Vec::new(),
            hostile: Vec::new(),
            clock_skew_ms: Vec::new(),
            relay_max_items: None,
            pairing: false,
        }
    }
}

/// Relays and devices in one simulation.
pub struct SimWorld {
    sim: turmoil::Sim<'static>,
    /// What the apps did and saw.
    pub shared: Arc<Shared>,
    relays: Vec<(String, DeviceId, PathBuf)>,
    /// The relays' store disks (kept across crashes).
    disks: Vec<SimFs>,
    /// The devices' store disks (kept across crashes).
    device_disks: Vec<DeviceDisk>,
    /// Every host's clock shift (kept across crashes).
    clocks: BTreeMap<String, Arc<AtomicI64>>,
    /// Relays that lost their data ([`SimWorld::wipe_relay`]).
    wiped: BTreeSet<DeviceId>,
    /// Hosts whose tree a scenario stopped by killing a top-level actor.
    escalated: Mutex<BTreeSet<String>>,
    devices: Vec<String>,
    /// Whether a relay host rewrites frames (undecryptable items are then expected).
    pub is_hostile: bool,
    _dirs: tempfile::TempDir,
}

thread_local! {
    /// The trace of the last world dropped on this thread.
    static LAST_TRACE: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The trace of the last [`SimWorld`] dropped on this thread (a scenario's, once it ended).
pub fn last_trace() -> Vec<String> {
    LAST_TRACE.with(|t| t.borrow().clone())
}

impl Drop for SimWorld {
    fn drop(&mut self) {
        crate::net::clear_bandwidth();
        let trace = self.trace();
        LAST_TRACE.with(|t| *t.borrow_mut() = trace);
        zerok_actors::exec::set_inline(false);
    }
}

/// The id of relay `i` (the simulation picks it; the relay takes it from its listener).
pub fn relay_id(i: usize) -> DeviceId {
    DeviceId([0xA0 + i as u8; 32])
}

/// Host name of relay `i`.
pub fn relay_host(i: usize) -> String {
    format!("relay{i}")
}

/// Host name of device `i`.
pub fn device_host(i: usize) -> String {
    format!("dev{i}")
}

impl SimWorld {
    /// Build the world and start every host.
    pub fn new(config: WorldConfig) -> anyhow::Result<SimWorld> {
        // Every host runs on this thread: blocking work runs inline, so simulated time sees
        // it finish at the same point in every run (`zerok_actors::exec`).
        zerok_actors::exec::set_inline(true);
        let mut sim = turmoil::Builder::new()
            .simulation_duration(SIMULATION_MAX)
            .rng_seed(config.seed)
            .max_message_latency(config.max_latency)
            .build();
        // The hosts' real files (relay data dirs and indexes, device homes) on a tmpfs when
        // there is one: their fsyncs are not what a simulation tests (the relay stores'
        // disks are simulated), and cost most of a run's time on a real disk.
        let dirs = match std::path::Path::new("/dev/shm").is_dir() {
            true => tempfile::tempdir_in("/dev/shm")?,
            false => tempfile::tempdir()?,
        };
        let shared = Arc::new(Shared::with_devices(config.devices));
        let mut relays = Vec::new();
        let mut disks = Vec::new();
        let mut clocks = BTreeMap::new();
        let mut shift_of = |host: &str| {
            let skew = config
                .clock_skew_ms
                .iter()
                .filter(|(h, _)| h == host)
                .map(|(_, ms)| *ms)
                .sum::<i64>();
            let shift = Arc::new(AtomicI64::new(skew));
            clocks.insert(host.to_owned(), Arc::clone(&shift));
            shift
        };
        for i in 0..config.relays {
            let (host, id) = (relay_host(i), relay_id(i));
            let data_dir = dirs.path().join(&host);
            relays.push((host.clone(), id, data_dir.clone()));
            let seed = config.seed ^ (0x1000 + i as u64);
            let name = host.clone();
            let faults = config.relay_faults.get(i).cloned().unwrap_or_default();
            let rewrite = config.hostile.get(i).copied().unwrap_or_default();
            let disk = SimFs::new();
            disks.push(disk.clone());
            let setup = RelayHost {
                name,
                id,
                data_dir,
                disk,
                shift: shift_of(&host),
                seed,
                faults,
                rewrite,
                max_items: config.relay_max_items,
                shared: Arc::clone(&shared),
            };
            sim.host(host.as_str(), move || relay_software(setup.clone()));
        }
        let relay_hosts: Vec<(String, DeviceId)> =
            relays.iter().map(|(h, id, _)| (h.clone(), *id)).collect();
        let mut devices = Vec::new();
        let mut device_disks = Vec::new();
        for i in 0..config.devices {
            let host = device_host(i);
            devices.push(host.clone());
            let home = dirs.path().join(&host);
            let disk = DeviceDisk::new(home.join(DEVICE_STORE_DIR));
            device_disks.push(disk.clone());
            let shared = Arc::clone(&shared);
            let relay_hosts = relay_hosts.clone();
            let seed = config.seed ^ (0x2000 + i as u64);
            let quorum = config.ack_quorum;
            let faults = config.faults.get(i).cloned().unwrap_or_default();
            let setup = DeviceHost {
                i,
                home,
                shared,
                relay_hosts,
                shift: shift_of(&host),
                seed,
                quorum,
                faults,
                disk,
                pairing: config.pairing,
            };
            sim.host(host.as_str(), move || device_software(setup.clone()));
        }
        Ok(SimWorld {
            sim,
            shared,
            relays,
            disks,
            device_disks,
            clocks,
            wiped: BTreeSet::new(),
            escalated: Mutex::new(BTreeSet::new()),
            devices,
            is_hostile: config.hostile.iter().any(|r| !r.is_honest()),
            _dirs: dirs,
        })
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.sim.elapsed()
    }

    /// Run for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) -> anyhow::Result<()> {
        let until = self.sim.elapsed() + d;
        while self.sim.elapsed() < until {
            self.sim
                .step()
                .map_err(|e| anyhow::anyhow!("simulation failed: {e}"))?;
        }
        Ok(())
    }

    /// Run until `done` holds (checked every simulated millisecond), at most `max`.
    pub fn run_until(
        &mut self,
        max: Duration,
        mut done: impl FnMut(&Shared) -> bool,
    ) -> anyhow::Result<bool> {
        let until = self.sim.elapsed() + max;
        while self.sim.elapsed() < until {
            if done(&self.shared) {
                return Ok(true);
            }
            self.sim
                .step()
                .map_err(|e| anyhow::anyhow!("simulation failed: {e}"))?;
        }
        Ok(done(&self.shared))
    }

    /// Queue `payload` to be pushed by device `i`'s app.
    pub fn push(&self, i: usize, payload: Vec<u8>) {
        lock(&self.shared.devices[i].pending).push_back(payload);
    }

    /// Have device `by`'s app remove device `target` from the group (once it knows its id).
    pub fn remove(&self, by: usize, target: usize) {
        lock(&self.shared.devices[by].removals).push_back(target);
    }

    /// Device `i`'s log.
    pub fn device(&self, i: usize) -> &DeviceLog {
        &self.shared.devices[i]
    }

    /// Wait until every device has the group and a connected client.
    pub fn settle(&mut self) -> anyhow::Result<()> {
        let ready = self.run_until(Duration::from_secs(120), |shared| {
            shared.devices.iter().all(|d| *lock(&d.joined))
        })?;
        anyhow::ensure!(ready, "devices did not join the group");
        Ok(())
    }

    /// Record a line in the trace, stamped with simulated time (faults the scenario made).
    pub fn note(&self, line: String) {
        let at = self.sim.elapsed();
        lock(&self.shared.trace).push(format!("{:>10.3} {line}", at.as_secs_f64() * 1e3));
    }

    /// Cut the network between hosts `a` and `b` (both ways).
    pub fn partition(&self, a: &str, b: &str) {
        self.note(format!("fault: partition {a} {b}"));
        self.sim.partition(a, b);
    }

    /// Cut the network from `from` to `to` only.
    pub fn partition_oneway(&self, from: &str, to: &str) {
        self.note(format!("fault: partition {from} -> {to}"));
        self.sim.partition_oneway(from, to);
    }

    /// Heal a partition between `a` and `b`.
    pub fn repair(&self, a: &str, b: &str) {
        self.note(format!("fault: repair {a} {b}"));
        self.sim.repair(a, b);
    }

    /// Hold messages between `a` and `b` (delivered on release).
    pub fn hold(&self, a: &str, b: &str) {
        self.note(format!("fault: hold {a} {b}"));
        self.sim.hold(a, b);
    }

    /// Release held messages between `a` and `b`.
    pub fn release(&self, a: &str, b: &str) {
        self.note(format!("fault: release {a} {b}"));
        self.sim.release(a, b);
    }

    /// Make the network between `a` and `b` lose messages with probability `p` (0 heals it);
    /// on simulated TCP a lost message breaks the connection (a reset).
    pub fn lossy(&mut self, a: &str, b: &str, p: f64) {
        self.note(format!("fault: loss {a} {b} {p}"));
        self.sim.set_link_fail_rate(a, b, p);
    }

    /// Limit what host `name` sends, per link, to `bytes_per_sec` (`None`: unlimited).
    pub fn bandwidth(&self, name: &str, bytes_per_sec: Option<u64>) {
        self.note(format!("fault: bandwidth {name} {bytes_per_sec:?}"));
        crate::net::set_bandwidth(self.sim.lookup(name), bytes_per_sec);
    }

    /// Crash host `name` (a killed process; its files survive).
    pub fn crash(&mut self, name: &str) {
        self.note(format!("fault: crash {name}"));
        self.sim.crash(name);
    }

    /// Start host `name` again (after a crash), or crash and restart it.
    pub fn bounce(&mut self, name: &str) {
        self.note(format!("fault: bounce {name}"));
        self.sim.bounce(name);
    }

    /// Crash relay `i`'s host and cut its disk's power: its store keeps only what was
    /// synced, or with [`PowerCut::Torn`] also a random page-granular part of the rest. Start
    /// it again with [`SimWorld::bounce`].
    pub fn power_loss(&mut self, i: usize, cut: PowerCut) {
        self.note(format!("fault: power loss relay{i} {cut:?}"));
        self.sim.crash(relay_host(i).as_str());
        self.disks[i].power_cut(cut);
    }

    /// Crash device `i`'s host and cut its disk's power: its local store keeps only what was
    /// synced, or with [`PowerCut::Torn`] also a random page-granular part of what was
    /// appended since ([`DeviceDisk`]). Start it again with [`SimWorld::bounce`].
    pub fn device_power_loss(&mut self, i: usize, cut: PowerCut) -> anyhow::Result<()> {
        self.sim.crash(device_host(i).as_str());
        let lost = self.device_disks[i].power_cut(cut)?;
        self.note(format!(
            "fault: power loss dev{i} {cut:?}: {lost} unsynced bytes lost"
        ));
        Ok(())
    }

    /// Device `i`'s store disk.
    pub fn device_disk(&self, i: usize) -> &DeviceDisk {
        &self.device_disks[i]
    }

    /// Crash relay `i`'s host and lose its whole store (segments and index): it comes back
    /// empty, with the same id, as a relay whose disk died. Start it with [`SimWorld::bounce`].
    pub fn wipe_relay(&mut self, i: usize) {
        self.note(format!("fault: relay{i} loses its store"));
        self.sim.crash(relay_host(i).as_str());
        self.disks[i].wipe();
        self.wiped.insert(self.relays[i].1);
        let index = self.relays[i].2.join(zerok_relay::tree::SIM_INDEX_DIR);
        let _ = std::fs::remove_dir_all(index);
    }

    /// Kill the oldest actor of kind `kind` (see [`actor_kind`]) in host `name`'s tree, as
    /// a bug that panics it would; its supervisor decides what follows. Whether one was
    /// found. (The oldest by actor id: a tree's children come in no fixed order, ids in the
    /// order the actors started.)
    pub fn kill_actor(&self, name: &str, kind: &str) -> bool {
        let root = lock(&self.shared.actors).get(name).cloned();
        let mut todo: Vec<ActorCell> = root.into_iter().collect();
        let mut found: Option<ActorCell> = None;
        while let Some(cell) = todo.pop() {
            if actor_kind(&cell) == kind
                && found.as_ref().is_none_or(|f| cell.get_id() < f.get_id())
            {
                found = Some(cell.clone());
            }
            todo.extend(cell.get_children());
        }
        self.note(format!(
            "fault: kill {kind} on {name} ({})",
            if found.is_some() { "found" } else { "none" }
        ));
        match found {
            Some(cell) => {
                if TOP_LEVEL_KINDS.contains(&kind) {
                    lock(&self.escalated).insert(name.to_owned());
                }
                cell.kill();
                true
            }
            None => false,
        }
    }

    /// The kinds of the actors running in host `name`'s tree, sorted.
    pub fn actor_kinds(&self, name: &str) -> Vec<&'static str> {
        let Some(root) = lock(&self.shared.actors).get(name).cloned() else {
            return Vec::new();
        };
        let mut kinds = Vec::new();
        let mut todo = vec![root];
        while let Some(cell) = todo.pop() {
            kinds.push(actor_kind(&cell));
            todo.extend(cell.get_children());
        }
        kinds.sort_unstable();
        kinds
    }

    /// Damage relay `i`'s disk under its oldest segment: eight bytes in the middle of its
    /// data inverted and synced (a bad sector). The relay should be down (crashed); its
    /// store finds the damage when it reads. Whether a segment with data was found.
    pub fn damage_relay_segment(&self, i: usize) -> bool {
        let disk = &self.disks[i];
        let fs = disk.shared();
        let dir = self.relays[i].2.join(zerok_relay::tree::STORE_DIR);
        let Ok(mut names) = fs.list_dir(&dir) else {
            return false;
        };
        names.sort();
        let Some(name) = names
            .into_iter()
            .find(|n| n.to_string_lossy().ends_with(SEGMENT_SUFFIX))
        else {
            return false;
        };
        let path = dir.join(name);
        let Ok(bytes) = disk.read_file(&path) else {
            return false;
        };
        let end = bytes.iter().rposition(|b| *b != 0).unwrap_or(0);
        if end < 256 {
            return false;
        }
        let at = end / 2;
        let flipped: Vec<u8> = bytes[at..at + 8].iter().map(|b| !b).collect();
        self.note(format!("fault: relay{i}'s segment damaged at byte {at}"));
        fs.open(&path, OpenMode::ReadWrite)
            .and_then(|file| {
                file.write_all_at(&flipped, at as u64)?;
                file.sync_data()
            })
            .is_ok()
    }

    /// Make host `name`'s wall clock jump by `by_ms` (negative: back in time).
    pub fn shift_clock(&self, name: &str, by_ms: i64) {
        if let Some(shift) = self.clocks.get(name) {
            shift.fetch_add(by_ms, Ordering::SeqCst);
        }
        self.note(format!("fault: clock of {name} jumps {by_ms} ms"));
    }

    /// Say that host `name`'s tree may stop on its own in this scenario (a fault the
    /// scenario injects escalates by design), so `no_escalation_beyond_policy` allows it.
    pub fn expect_escalation(&self, name: &str) {
        lock(&self.escalated).insert(name.to_owned());
    }

    /// Hosts whose tree a scenario stopped on purpose (a top-level actor killed).
    pub fn escalated_hosts(&self) -> BTreeSet<String> {
        lock(&self.escalated).clone()
    }

    /// Relays that lost their data so far.
    pub fn wiped_relays(&self) -> BTreeSet<DeviceId> {
        self.wiped.clone()
    }

    /// Relay `i`'s store disk (to fail it at a sync, or break its syncs).
    pub fn relay_disk(&self, i: usize) -> &SimFs {
        &self.disks[i]
    }

    /// Every relay's store disk.
    pub fn relay_disks(&self) -> &[SimFs] {
        &self.disks
    }

    /// Host names of the relays.
    pub fn relay_hosts(&self) -> Vec<String> {
        self.relays.iter().map(|(h, _, _)| h.clone()).collect()
    }

    /// Host names of the devices.
    pub fn device_hosts(&self) -> Vec<String> {
        self.devices.clone()
    }

    /// Data dirs of the relays (what their disks hold).
    pub fn relay_dirs(&self) -> Vec<PathBuf> {
        self.relays.iter().map(|(_, _, d)| d.clone()).collect()
    }

    /// The recorded trace.
    pub fn trace(&self) -> Vec<String> {
        lock(&self.shared.trace).clone()
    }
}

/// Kinds of actor whose death stops their tree: the relay's top-level actors and the
/// client's coordinator (the client's documented escalation), and either root.
pub const TOP_LEVEL_KINDS: &[&str] = &[
    "infra",
    "routers",
    "sessions",
    "listener",
    "coordinator",
    "root",
];

/// An actor's kind, by its message type: `store`, `sweeper`, `infra`, `router`, `routers`,
/// `session`, `sessions`, `listener`, `link_reader` (relay); `coordinator`, `connection`,
/// `encryptor` (client); `root` for either tree's root; `other` for anything else.
pub fn actor_kind(cell: &ActorCell) -> &'static str {
    use zerok_messages::client::{CoordMsg, EncryptorMsg, RelayConnMsg};
    use zerok_messages::relay::{
        BlobStoreMsg, CleanupSweeperMsg, GroupRouterMsg, InfraMsg, LinkReaderMsg, ListenerMsg,
        RoutersMsg, SessionMsg, SessionsMsg,
    };
    let is = |yes: Option<bool>| yes == Some(true);
    if is(cell.is_message_type_of::<BlobStoreMsg>()) {
        "store"
    } else if is(cell.is_message_type_of::<CleanupSweeperMsg>()) {
        "sweeper"
    } else if is(cell.is_message_type_of::<InfraMsg>()) {
        "infra"
    } else if is(cell.is_message_type_of::<GroupRouterMsg>()) {
        "router"
    } else if is(cell.is_message_type_of::<RoutersMsg>()) {
        "routers"
    } else if is(cell.is_message_type_of::<SessionMsg>()) {
        "session"
    } else if is(cell.is_message_type_of::<SessionsMsg>()) {
        "sessions"
    } else if is(cell.is_message_type_of::<ListenerMsg>()) {
        "listener"
    } else if is(cell.is_message_type_of::<LinkReaderMsg>()) {
        "link_reader"
    } else if is(cell.is_message_type_of::<CoordMsg>()) {
        "coordinator"
    } else if is(cell.is_message_type_of::<RelayConnMsg>()) {
        "connection"
    } else if is(cell.is_message_type_of::<EncryptorMsg>()) {
        "encryptor"
    } else if is(cell.is_message_type_of::<zerok_relay::tree::RelayRootMsg>())
        || is(cell.is_message_type_of::<zerok_client::tree::RootMsg>())
    {
        "root"
    } else {
        "other"
    }
}

/// A host's wall clock: the world's start plus simulated time plus the host's shift.
fn wall_clock(shift: Arc<AtomicI64>) -> Clock {
    let elapsed = turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64;
    Clock::virtual_shifted(WALL_START_MS + elapsed, shift)
}

/// What a relay host runs with, across its restarts.
#[derive(Clone)]
struct RelayHost {
    name: String,
    id: DeviceId,
    data_dir: PathBuf,
    disk: SimFs,
    shift: Arc<AtomicI64>,
    seed: u64,
    faults: FaultPlan,
    rewrite: Rewrite,
    max_items: Option<u64>,
    shared: Arc<Shared>,
}

/// A relay process under a service manager: the tree runs until it stops on its own (a
/// top-level actor died: escalation), then is started again a second later on the same
/// listener, as systemd's `Restart=always` would.
async fn relay_software(host: RelayHost) -> turmoil::Result {
    let mut outer = listen(host.id).await?;
    if !host.rewrite.is_honest() {
        outer = rewriting(outer, host.rewrite);
    }
    let addr = relay_addr(&host.name, host.id);
    let config = RelayConfig {
        data_dir: host.data_dir.clone(),
        http: None,
        store: StoreConfig {
            // 1 MiB segments instead of 64: long scenarios roll segments, and a restart
            // scans a 1 MiB active segment for its end, not 64 MiB of zeros in memory.
            segment_bytes: SEGMENT_BYTES,
            max_items: host.max_items.unwrap_or(StoreConfig::default().max_items),
            ..StoreConfig::default()
        },
        ..RelayConfig::default()
    };
    for run in 0u64.. {
        // This run's listener: links from the host's, until the tree stops.
        let (tx, rx) = tokio::sync::mpsc::channel(128);
        let forward = tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tx.closed() => break,
                    link = outer.accept() => match link {
                        Some(link) => {
                            if tx.send(link).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                }
            }
            outer
        });
        let seams = Seams {
            rng: Some(Rng::seeded(host.seed ^ run)),
            clock: Some(wall_clock(Arc::clone(&host.shift))),
            listener: Some((LinkListener::new(host.id, rx), addr.clone())),
            faults: host.faults.clone(),
            store_fs: Some(host.disk.shared()),
        };
        let mut node = RelayNode::start(&config, seams)
            .await
            .map_err(|e| format!("relay start: {e}"))?;
        lock(&host.shared.actors).insert(host.name.clone(), node.root_actor());
        let probe = tokio::spawn(probe_budgets(
            host.name.clone(),
            node.metrics.clone(),
            config.clone(),
            Arc::clone(&host.shared),
        ));
        node.stopped().await;
        probe.abort();
        drop(node);
        host.shared.record(format!(
            "{} tree stopped; restarted by its service manager",
            host.name
        ));
        lock(&host.shared.tree_stops).push(host.name.clone());
        outer = forward.await.map_err(|e| format!("listener: {e}"))?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// Read a relay's budgets from its metrics every [`CURSOR_PROBE`] while it runs, and
/// record every one found over its limit (`budgets_hold`): bytes and index entries charged
/// against the store's budgets, bytes stored per mailbox against the mailbox quota, replies
/// queued unread against the relay-wide limit, sessions against the connection limit.
async fn probe_budgets(
    host: String,
    metrics: RelayMetrics,
    config: RelayConfig,
    shared: Arc<Shared>,
) {
    let limit = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let mut every = tokio::time::interval(CURSOR_PROBE);
    loop {
        every.tick().await;
        let mailboxes = metrics.mailboxes.get().max(1);
        let checks = [
            (
                "charged bytes",
                metrics.store_charged_bytes.get(),
                metrics.store_charged_bytes_max.get(),
            ),
            (
                "index entries",
                metrics.store_index_entries.get(),
                metrics.store_index_entries_max.get(),
            ),
            (
                "stored bytes",
                metrics.bytes_stored.get(),
                limit(config.limits.mailbox_quota_bytes).saturating_mul(mailboxes),
            ),
            (
                "unread bytes",
                metrics.unread_bytes.get(),
                limit(config.connections.unread_bytes_total_max),
            ),
            (
                "sessions",
                metrics.sessions.get(),
                i64::from(config.connections.max),
            ),
        ];
        let mut log = lock(&shared.budgets);
        log.samples += 1;
        for (what, value, max) in checks {
            if value > max {
                log.over.push(format!("{host}: {what} {value} > {max}"));
            }
        }
    }
}

/// What a device host runs with, across its restarts.
#[derive(Clone)]
struct DeviceHost {
    i: usize,
    home: PathBuf,
    shared: Arc<Shared>,
    relay_hosts: Vec<(String, DeviceId)>,
    shift: Arc<AtomicI64>,
    seed: u64,
    quorum: usize,
    faults: FaultPlan,
    disk: DeviceDisk,
    pairing: bool,
}

/// A device's app: it runs its client, and starts it again a second later when the client
/// stopped on its own (its coordinator died: the client's documented escalation).
async fn device_software(host: DeviceHost) -> turmoil::Result {
    loop {
        match run_client(host.clone()).await {
            Ok(()) => {
                host.shared.record(format!(
                    "dev{}: the client stopped; its app starts it again",
                    host.i
                ));
                lock(&host.shared.tree_stops).push(device_host(host.i));
            }
            // Starting failed (its store could not sync, say): the app tries again, as
            // an app would; a failure that lasts shows as pushes never acked.
            Err(err) => host.shared.record(format!(
                "dev{}: the app's client failed ({err}); it tries again",
                host.i
            )),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The first device shows one pairing code per other device (each its own rendezvous) and
/// waits for each in the background: the codes, in device order.
fn offer_pairings(
    client: &Arc<Client>,
    shared: &Arc<Shared>,
    group: GroupId,
    seed: u64,
) -> Vec<String> {
    let mut rng = Rng::seeded(seed ^ 0x7061_6972);
    let mut codes: Vec<PairCode> = Vec::new();
    while codes.len() + 1 < shared.devices.len() {
        let code = PairCode::random(&mut rng);
        if codes.iter().all(|c| c.nameplate() != code.nameplate()) {
            codes.push(code);
        }
    }
    let shown = codes.iter().map(PairCode::reveal).collect();
    for (k, code) in codes.into_iter().enumerate() {
        let client = Arc::clone(client);
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            let offered = client.pair_offer(group, &code, PAIR_WAIT).await;
            shared.record(format!(
                "dev0 paired with dev{}: {}",
                k + 1,
                offered.is_ok()
            ));
        });
    }
    shown
}

/// Run one client until it stops on its own (`Ok`) or the app fails (`Err`).
async fn run_client(host: DeviceHost) -> turmoil::Result {
    let DeviceHost {
        i,
        home,
        shared,
        relay_hosts,
        shift,
        seed,
        quorum,
        faults,
        disk,
        pairing,
    } = host;
    let log = &shared.devices[i];
    let starts = {
        let mut starts = lock(&log.starts);
        *starts += 1;
        *starts
    };
    let mut config = ClientConfig::new(home);
    config.rng = Some(Rng::seeded(seed ^ starts));
    config.ack_quorum = quorum;
    config.faults = faults;
    config.on_store_sync = Some(disk.hook());
    config.clock = wall_clock(shift);
    config.transport = Transport::Dialer(Arc::new(|id| Arc::new(SimDialer::new(id))));
    let client = Arc::new(
        Client::start(config)
            .await
            .map_err(|e| format!("client start: {e}"))?,
    );
    let _ = log.id.set(client.device_id());
    lock(&shared.actors).insert(device_host(i), client.root_actor());
    shared.record(format!("dev{i} started (start {starts})"));
    let mut events = client.events().ok_or("events taken")?;
    let relays: Vec<RelayAddr> = relay_hosts
        .iter()
        .map(|(host, id)| relay_addr(host, *id))
        .collect();
    let group = if *lock(&log.joined) {
        *shared.group.get().ok_or("joined without a group")?
    } else if i == 0 {
        let group = client
            .create_group("chaos", NewSecret::Random, relays)
            .await
            .map_err(|e| format!("create group: {e}"))?;
        let invites = if pairing {
            offer_pairings(&client, &shared, group, seed)
        } else {
            let mut invites = Vec::new();
            for _ in 1..shared.devices.len() {
                invites.push(
                    client
                        .invite(group, INVITE_VALID)
                        .await
                        .map_err(|e| format!("invite: {e}"))?,
                );
            }
            invites
        };
        let _ = shared.group.set(group);
        let _ = shared.invites.set(invites);
        group
    } else {
        let invite = loop {
            if let Some(invites) = shared.invites.get() {
                break invites
                    .get(i - 1)
                    .ok_or("no invite for this device")?
                    .clone();
            }
            tokio::time::sleep(COMMAND_POLL).await;
        };
        if pairing {
            let joined = client.pair_join(&invite, relays, PAIR_WAIT).await;
            shared.record(format!("dev{i} paired: {}", joined.is_ok()));
            joined.map_err(|e| format!("pair: {e}"))?
        } else {
            client
                .join(&invite, None)
                .await
                .map_err(|e| format!("join: {e}"))?
        }
    };
    *lock(&log.joined) = true;
    let mut poll = tokio::time::interval(COMMAND_POLL);
    let mut probe = tokio::time::interval(CURSOR_PROBE);
    loop {
        tokio::select! {
            _ = probe.tick() => {
                if let Ok(status) = client.status().await {
                    note_cursors(log, starts, &status);
                }
            }
            event = events.recv() => {
                let Some(event) = event else { return Ok(()) };
                on_event(&shared, i, event);
            }
            _ = poll.tick() => {
                let removals: Vec<usize> = lock(&log.removals).drain(..).collect();
                for target in removals {
                    let Some(device) = shared.devices.get(target).and_then(|d| d.id.get()) else {
                        continue;
                    };
                    let removed = client.remove_device(group, *device).await;
                    shared.record(format!("dev{i} removed dev{target}: {}", removed.is_ok()));
                }
                let pushes: Vec<Vec<u8>> = lock(&log.pending).drain(..).collect();
                for payload in pushes {
                    let client = Arc::clone(&client);
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move {
                        let log = &shared.devices[i];
                        match client.push(group, payload.clone()).await {
                            Ok(_) => {
                                shared.record(format!("dev{i} acked {}", show(&payload)));
                                lock(&log.acked).push(payload);
                            }
                            Err(err) => {
                                shared.record(format!("dev{i} push failed {}: {err}", show(&payload)));
                                lock(&log.failed).push(payload.clone());
                                // The app pushes it again (once its client is back, when
                                // it had stopped); a record pushed twice is two records.
                                if matches!(err, ClientError::Stopped) {
                                    lock(&log.pending).push_back(payload);
                                } else {
                                    tokio::time::sleep(APP_RETRY).await;
                                    lock(&log.pending).push_back(payload);
                                }
                            }
                        }
                    });
                }
            }
        }
    }
}

/// Record the relay cursors of `status` that changed since last seen in this start.
fn note_cursors(log: &DeviceLog, start: u64, status: &zerok_client::Status) {
    let mut seen = lock(&log.cursors);
    for group in &status.groups {
        for relay in &group.relays {
            let last = seen
                .iter()
                .rev()
                .find(|c| c.start == start && c.relay == relay.addr.id && c.epoch == group.epoch)
                .map(|c| c.cursor);
            if last != Some(relay.cursor) {
                seen.push(CursorSeen {
                    start,
                    relay: relay.addr.id,
                    epoch: group.epoch,
                    cursor: relay.cursor,
                });
            }
        }
    }
}

fn on_event(shared: &Shared, i: usize, event: Event) {
    let log = &shared.devices[i];
    match event {
        Event::Received {
            sender,
            seq,
            payload,
            ..
        } => {
            shared.record(format!(
                "dev{i} received {} from {} seq {seq}",
                show(&payload),
                sender.short()
            ));
            lock(&log.received).push(Received {
                sender,
                seq,
                payload,
            });
        }
        Event::GapDetected {
            sender, from, to, ..
        } => {
            shared.record(format!(
                "dev{i} gap {}..{} from {}",
                from,
                to,
                sender.short()
            ));
            let after_received = lock(&log.received).len();
            lock(&log.gaps).push(Gap {
                sender,
                from,
                to,
                after_received,
            });
        }
        Event::File { sender, seq, .. } => {
            // The simulation moves records only; a file announcement here is a bug.
            shared.record(format!(
                "dev{i} unexpected file announcement from {} seq {seq}",
                sender.short()
            ));
            *lock(&log.undecryptable) += 1;
        }
        Event::Undecryptable { .. } => {
            shared.record(format!("dev{i} undecryptable"));
            *lock(&log.undecryptable) += 1;
        }
        Event::RosterChanged { sender, seq, .. } => {
            shared.record(format!(
                "dev{i} roster record from {} seq {seq}",
                sender.short()
            ));
            lock(&log.roster).push((sender, seq));
        }
        Event::UnknownSender { sender, .. } => {
            // Every device of a scenario is admitted: a record refused for its sender is
            // as wrong as one that does not open.
            shared.record(format!("dev{i} unknown sender {}", sender.short()));
            *lock(&log.undecryptable) += 1;
        }
        Event::Removed { .. } => {
            shared.record(format!("dev{i} removed from the group"));
            *lock(&log.removed) = true;
        }
        Event::EpochChanged { epoch, .. } => shared.record(format!("dev{i} now in epoch {epoch}")),
        Event::RelayUp { relay } => shared.record(format!("dev{i} relay up {}", relay.short())),
        Event::RelayDown { relay, .. } => {
            shared.record(format!("dev{i} relay down {}", relay.short()));
        }
    }
}

/// A payload as the trace shows it (scenario payloads are short text).
pub fn show(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}
