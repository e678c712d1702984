//! The relay's actor tree (DESIGN.md §2), started by [`RelayNode::start`].
//!
//! ```text
//! RelayRoot ─────────────────────────── escalates: a dead top-level child stops the node
//! ├── Infra ─────────────────────────── one-for-one, backoff; escalates; owns the Store
//! │   ├── BlobStore                      group commit, one flush per batch
//! │   └── CleanupSweeper                 evicts expired items in bounded slices
//! ├── RoutersSupervisor ─────────────── one-for-one, backoff; parks a mailbox past intensity
//! │   └── GroupRouter × active mailbox   acks pushes after the flush, fans out live
//! ├── SessionsSupervisor ────────────── admits or refuses links; sessions never restart
//! │   └── Session × connection
//! │       └── LinkReader                 in-flight permits bound each connection
//! ├── ContentService                     large files: iroh-blobs store, grants (iroh only)
//! ├── Listener                           accept loop of the iroh endpoint (zerok/1 links
//! │                                      to sessions, iroh-blobs connections to content)
//! └── HttpServer                         /health /ready /metrics (axum)
//! ```
//!
//! Wiring: Infra spawns the store and hands out a [`SharedRef`] to it; routers, sessions and
//! the sweeper reach the store only through it, so a restarted store is picked up without
//! anyone holding a stale ref. The Listener casts each accepted link to the
//! SessionsSupervisor; sessions ask the RoutersSupervisor for a mailbox's router. Sessions
//! share one [`Admission`] (open or token mode, creation rates, the admission ledger in the
//! data dir), which decides every Join that would create a mailbox.
//!
//! Shutdown ([`RelayNode::shutdown`]): `/ready` turns 503; the Listener stops (no new
//! connections); every Session says `Bye{shutdown}`; the store drains its queue (every push
//! already handed to it is committed and flushed); then routers, Infra (final flush) and the
//! HTTP server stop, and the iroh endpoint closes.

use crate::config::RelayConfig;
use crate::http::{self, HttpState};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::{error, info, warn};
use zerok_actors::clock::Clock;
use zerok_actors::fault::FaultPlan;
use zerok_actors::link::LinkListener;
use zerok_actors::link::QueuePool;
use zerok_actors::link::iroh::{IrohConfig, IrohNode, load_or_create_secret_key};
use zerok_actors::link::slots::{ConnectionSlots, SlotLimits};
use zerok_actors::relay::admission::Admission;
use zerok_actors::relay::blob_store::core::{StoreBudget, StoreLimits};
use zerok_actors::relay::blob_store::fs::{StoreFs, os_fs};
use zerok_actors::relay::blob_store::{ItemStore, Store, StoreOptions};
use zerok_actors::relay::content::{ContentActor, ContentArgs, ContentService};
use zerok_actors::relay::infra::{
    InfraActor, InfraArgs, STORE_RESTART_POLICY, SWEEPER_RESTART_POLICY,
};
use zerok_actors::relay::listener::{ListenerActor, ListenerArgs};
use zerok_actors::relay::metrics::RelayMetrics;
use zerok_actors::relay::rate_limit::{RateLimitConfig, RelayLimiters};
use zerok_actors::relay::routers_supervisor::{
    ROUTER_RESTART_POLICY, RoutersSupervisorActor, RoutersSupervisorArgs,
};
use zerok_actors::relay::sessions_supervisor::{
    SessionsConfig, SessionsSupervisorActor, SessionsSupervisorArgs,
};
use zerok_actors::rng::Rng;
use zerok_actors::shared_ref::SharedRef;
use zerok_messages::relay::{
    BlobStoreMsg, ContentMsg, InfraMsg, ListenerMsg, RoutersMsg, SessionsMsg,
};
use zerok_messages::{DeviceId, RelayAddr};

/// File in the data dir holding the node's secret key.
pub const NODE_KEY_FILE: &str = "node.key";
/// File in the data dir holding the relay's address, as clients are given it.
pub const ADDR_FILE: &str = "relay.addr";
/// Directory in the data dir holding the store.
pub const STORE_DIR: &str = "store";
/// The index's directory in the data dir when the segments are on another file system
/// ([`Seams::store_fs`]).
pub const SIM_INDEX_DIR: &str = "store-index";
/// How often the `unread_bytes` gauge is refreshed: often enough for a scrape to see an
/// attack, rarely enough to cost nothing.
const UNREAD_GAUGE_EVERY: Duration = Duration::from_secs(1);
/// Longest wait for one step of the shutdown that is not bounded by the grace time.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the relay could not start. Each is one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data dir cannot be created or written.
    #[error("data dir {path}: {message}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The store cannot be opened.
    #[error("{0}")]
    Store(#[from] zerok_actors::relay::blob_store::OpenError),
    /// The QUIC endpoint cannot be bound or its key read.
    #[error("QUIC endpoint on {addr}: {message}")]
    Endpoint {
        /// The bind address.
        addr: SocketAddr,
        /// What failed.
        message: String,
    },
    /// The HTTP address cannot be bound.
    #[error("HTTP on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// An actor failed to start.
    #[error("actor tree: {0}")]
    Actors(String),
    /// The admission ledger cannot be read.
    #[error("{0}")]
    Admission(#[from] zerok_actors::relay::admission::LedgerError),
}

/// Seams a test or the simulation can replace; the binary uses [`Seams::default`].
#[derive(Debug, Default)]
pub struct Seams {
    /// Wall time (`None` = system).
    pub clock: Option<Clock>,
    /// Randomness (`None` = system).
    pub rng: Option<Rng>,
    /// Fault injection.
    pub faults: FaultPlan,
    /// Links from another transport instead of the iroh endpoint (the chaos harness's
    /// simulated network), and the address clients are given; the relay's id is the
    /// address's. No endpoint is bound.
    pub listener: Option<(LinkListener, RelayAddr)>,
    /// The file system the store's segments live on instead of the real one (the chaos
    /// harness's disks that lose power); its index then goes to `store-index/` in the data
    /// dir, on the real file system.
    pub store_fs: Option<Arc<dyn StoreFs>>,
}

/// Messages of the RelayRoot.
#[derive(Debug)]
pub enum RelayRootMsg {
    /// Run the shutdown sequence, then stop the tree.
    Shutdown {
        /// Longest wait for sessions to end.
        grace: Duration,
        /// What the shutdown found.
        reply: RpcReplyPort<ShutdownReport>,
    },
}

/// What a shutdown found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Sessions that had not ended when the grace time ran out.
    pub sessions_left: usize,
    /// Whether the store confirmed every queued write before stopping.
    pub store_drained: bool,
}

struct RootArgs {
    infra: InfraArgs,
    admission: Arc<Admission>,
    sessions: SessionsConfig,
    rate_limits: RateLimitConfig,
    rng: Rng,
    /// The RoutersSupervisor's, for its restart jitter.
    routers_rng: Rng,
    listener: LinkListener,
    http: Option<(tokio::net::TcpListener, HttpState)>,
    /// The content service's arguments (`None`: no content on this relay or transport).
    content: Option<ContentArgs>,
}

struct RootState {
    infra: ActorRef<InfraMsg>,
    store: SharedRef<BlobStoreMsg>,
    routers: ActorRef<RoutersMsg>,
    sessions: ActorRef<SessionsMsg>,
    listener: ActorRef<ListenerMsg>,
    content: Option<ActorRef<ContentMsg>>,
    http: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    is_stopping: bool,
}

struct RelayRootActor;

fn actors_err(err: impl std::fmt::Display) -> ActorProcessingErr {
    ActorProcessingErr::from(err.to_string())
}

impl Actor for RelayRootActor {
    type Msg = RelayRootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RootArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let metrics = args.infra.metrics.clone();
        let faults = args.infra.faults.clone();
        let (infra, _) =
            Actor::spawn_linked(None, InfraActor, args.infra, myself.get_cell()).await?;
        let store = ractor::call_t!(infra, |reply| InfraMsg::GetStore { reply }, 5_000)
            .map_err(actors_err)?;
        let (routers, _) = Actor::spawn_linked(
            None,
            RoutersSupervisorActor,
            RoutersSupervisorArgs {
                store: store.clone(),
                metrics: metrics.clone(),
                router_restart: ROUTER_RESTART_POLICY,
                rng: args.routers_rng,
                faults,
            },
            myself.get_cell(),
        )
        .await?;
        let content = match args.content {
            Some(content_args) => Some(
                Actor::spawn_linked(None, ContentActor, content_args, myself.get_cell())
                    .await?
                    .0,
            ),
            None => None,
        };
        let (sessions, _) = Actor::spawn_linked(
            None,
            SessionsSupervisorActor,
            SessionsSupervisorArgs {
                config: args.sessions,
                store: store.clone(),
                routers: routers.clone(),
                content: content.clone(),
                limiters: Arc::new(RelayLimiters::new(&args.rate_limits)),
                admission: args.admission,
                rng: args.rng,
                metrics,
            },
            myself.get_cell(),
        )
        .await?;
        let (listener, _) = Actor::spawn_linked(
            None,
            ListenerActor,
            ListenerArgs {
                listener: args.listener,
                sessions: sessions.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        let http = args.http.map(|(tcp, state)| {
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                let stopped = async move {
                    let _ = stop_rx.await;
                };
                if let Err(err) = http::serve(tcp, state, stopped).await {
                    error!(error = %err, "HTTP server failed");
                }
            });
            (stop_tx, task)
        });
        Ok(RootState {
            infra,
            store,
            routers,
            sessions,
            listener,
            content,
            http,
            is_stopping: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RelayRootMsg::Shutdown { grace, reply } => {
                state.is_stopping = true;
                let report = shutdown_children(state, grace).await;
                let _ = reply.send(report);
                myself.stop(Some("shutdown".into()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.is_stopping {
            return Ok(());
        }
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                error!(actor = ?cell.get_id(), error = %err, "a top-level relay actor failed; stopping the relay");
                myself.stop(Some("child failed".into()));
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                error!(actor = ?cell.get_id(), reason = reason.as_deref().unwrap_or(""), "a top-level relay actor stopped; stopping the relay");
                myself.stop(Some("child stopped".into()));
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((stop, task)) = state.http.take() {
            let _ = stop.send(());
            let _ = tokio::time::timeout(STEP_TIMEOUT, task).await;
        }
        Ok(())
    }
}

async fn shutdown_children(state: &mut RootState, grace: Duration) -> ShutdownReport {
    let mut report = ShutdownReport::default();
    let _ = state
        .listener
        .stop_and_wait(Some("shutdown".into()), Some(STEP_TIMEOUT))
        .await;
    match ractor::call_t!(
        state.sessions,
        |reply| SessionsMsg::Shutdown { grace, reply },
        (grace + STEP_TIMEOUT).as_millis() as u64
    ) {
        Ok(left) => report.sessions_left = left,
        Err(err) => warn!(error = %err, "sessions did not confirm the shutdown"),
    }
    // Routers hand their queued pushes to the store as they get them; stopping the routers
    // first and then asking the store for its stats (queued behind every pending commit)
    // confirms that everything handed over is durable.
    let _ = state
        .routers
        .stop_and_wait(Some("shutdown".into()), Some(STEP_TIMEOUT))
        .await;
    let _ = state
        .sessions
        .stop_and_wait(Some("shutdown".into()), Some(STEP_TIMEOUT))
        .await;
    if let Some(content) = &state.content {
        let _ = content
            .stop_and_wait(Some("shutdown".into()), Some(STEP_TIMEOUT))
            .await;
    }
    report.store_drained = ractor::call_t!(
        state.store.get(),
        |reply| BlobStoreMsg::GetStats { reply },
        STEP_TIMEOUT.as_millis() as u64
    )
    .is_ok();
    let _ = state
        .infra
        .stop_and_wait(Some("shutdown".into()), Some(STEP_TIMEOUT))
        .await;
    report
}

/// A running relay.
pub struct RelayNode {
    /// This relay's id (its iroh endpoint id).
    pub relay_id: DeviceId,
    /// The address clients are given (written to `relay.addr`).
    pub addr: RelayAddr,
    /// Where `/health`, `/ready`, `/metrics` are served.
    pub http_addr: Option<SocketAddr>,
    /// The node's metrics.
    pub metrics: RelayMetrics,
    root: ActorRef<RelayRootMsg>,
    root_handle: tokio::task::JoinHandle<()>,
    /// `None` on another transport ([`Seams::listener`]).
    endpoint: Option<IrohNode>,
    ready: Arc<AtomicBool>,
    /// The store, closed cleanly at the end of a shutdown.
    store: Arc<dyn ItemStore>,
}

fn data_dir_err(path: &std::path::Path, err: impl std::fmt::Display) -> StartError {
    StartError::DataDir {
        path: path.to_path_buf(),
        message: err.to_string(),
    }
}

impl RelayNode {
    /// Start a relay from `config`: data dir, node key, store, QUIC endpoint, HTTP, tree.
    pub async fn start(config: &RelayConfig, seams: Seams) -> Result<RelayNode, StartError> {
        let data_dir = &config.data_dir;
        create_private_dir(data_dir).map_err(|err| data_dir_err(data_dir, err))?;
        let Seams {
            clock,
            rng,
            faults,
            listener,
            store_fs,
        } = seams;
        let mut rng = rng.unwrap_or_else(Rng::system);
        let clock = clock.unwrap_or_else(Clock::system);
        let endpoint_err = |message: String| StartError::Endpoint {
            addr: config.bind,
            message,
        };
        let secret = load_or_create_secret_key(&data_dir.join(NODE_KEY_FILE), &mut rng)
            .map_err(|err| data_dir_err(data_dir, err))?;
        let store_dir = data_dir.join(STORE_DIR);
        let store_options = StoreOptions {
            segment_bytes: config.store.segment_bytes,
            budget: StoreBudget {
                bytes_max: config.store.max_bytes,
                index_entries_max: config.store.max_items,
                min_free_disk_bytes: config.store.min_free_disk_bytes,
                full_retry_after_ms: config.store.sweep_interval_secs.saturating_mul(1000),
            },
            faults: faults.clone(),
            index_dir: store_fs.as_ref().map(|_| data_dir.join(SIM_INDEX_DIR)),
            fs: store_fs.unwrap_or_else(os_fs),
            ..StoreOptions::new(config.store.segment_bytes)
        };
        let store =
            zerok_actors::exec::blocking(move || Store::open_with(&store_dir, store_options))
                .await
                .map_err(|err| data_dir_err(data_dir, err))??;
        let metrics = RelayMetrics::new();
        let connections = &config.connections;
        // Content needs iroh-blobs on the endpoint: not on another transport.
        let content = if config.content.enabled && listener.is_none() {
            let content_config = config.content.to_config(config.store.min_free_disk_bytes);
            let service = ContentService::open(data_dir, &content_config)
                .await
                .map_err(|err| data_dir_err(data_dir, err))?;
            let (tx, rx) = tokio::sync::mpsc::channel(content_config.connections_max);
            Some((
                tx,
                ContentArgs {
                    service,
                    config: content_config,
                    connections: rx,
                    clock: clock.clone(),
                    metrics: metrics.clone(),
                },
            ))
        } else {
            None
        };
        let (blobs, content) = match content {
            Some((tx, args)) => (Some(tx), Some(args)),
            None => (None, None),
        };
        let unread_pool = QueuePool::new(byte_budget(connections.unread_bytes_total_max));
        let iroh_config = IrohConfig {
            first_frame_timeout: Duration::from_millis(connections.handshake_timeout_ms),
            slots: Some(ConnectionSlots::with_metric(
                SlotLimits {
                    per_source_max: connections.per_source_max,
                    handshakes_per_source_max: connections.handshakes_per_source_max,
                    per_device_max: connections.per_device_max,
                },
                Some(metrics.connection_slots_refused_total.clone()),
            )),
            accepted_queue_bytes: byte_budget(connections.unread_bytes_max),
            accepted_queue_pool: Some(Arc::clone(&unread_pool)),
            is_bind_exact: true,
            blobs,
            ..IrohConfig::new(secret, config.bind)
        };
        let (endpoint, listener, mut addr) = match listener {
            Some((listener, addr)) => (None, listener, addr),
            None => {
                let endpoint = IrohNode::bind(iroh_config)
                    .await
                    .map_err(|err| endpoint_err(err.to_string()))?;
                tokio::spawn(publish_unread_bytes(
                    Arc::downgrade(&unread_pool),
                    metrics.clone(),
                ));
                let (listener, addr) = (endpoint.listen(), endpoint.local_addr());
                (Some(endpoint), listener, addr)
            }
        };
        let relay_id = addr.id;
        let admission = match Admission::load(
            relay_id,
            &config.admission.to_config(),
            clock.clone(),
            data_dir,
        ) {
            Ok(admission) => Arc::new(admission),
            Err(err) => {
                close(endpoint.as_ref()).await;
                return Err(err.into());
            }
        };
        if !config.advertise.is_empty() {
            addr.addrs = config.advertise.clone();
        }
        let ready = Arc::new(AtomicBool::new(false));
        let http = match config.http {
            Some(http_addr) => {
                let tcp = tokio::net::TcpListener::bind(http_addr)
                    .await
                    .map_err(|source| StartError::Http {
                        addr: http_addr,
                        source,
                    })?;
                let state = HttpState {
                    relay_id: relay_id.to_hex(),
                    version: env!("CARGO_PKG_VERSION"),
                    started: tokio::time::Instant::now(),
                    metrics: metrics.clone(),
                    ready: Arc::clone(&ready),
                };
                Some((tcp, state))
            }
            None => None,
        };
        let http_addr = match &http {
            Some((tcp, _)) => Some(tcp.local_addr().map_err(|source| StartError::Http {
                addr: config.http.unwrap_or(config.bind),
                source,
            })?),
            None => None,
        };
        let store: Arc<dyn ItemStore> = Arc::new(store);
        let limits = &config.limits;
        // Forked in this order so the sessions' generator is what it was before the
        // supervisors drew restart jitter (seeded runs stay as they were).
        let sessions_rng = rng.fork();
        let infra_rng = rng.fork();
        let routers_rng = rng.fork();
        let root_args = RootArgs {
            admission,
            infra: InfraArgs {
                store: Arc::clone(&store),
                limits: StoreLimits {
                    blob_bytes_max: limits.blob_bytes_max as usize,
                    mailbox_quota_bytes: limits.mailbox_quota_bytes,
                    mailbox_items_max: limits.mailbox_items_max,
                    ttl_default_secs: limits.ttl_default_secs,
                    ttl_max_secs: limits.ttl_max_secs,
                    commit_max_items: config.store.commit_max_items as usize,
                },
                clock,
                faults: faults.clone(),
                metrics: metrics.clone(),
                sweep_interval: Duration::from_secs(config.store.sweep_interval_secs),
                sweep_slice_items: config.store.sweep_slice_items,
                store_restart: STORE_RESTART_POLICY,
                sweeper_restart: SWEEPER_RESTART_POLICY,
                rng: infra_rng,
            },
            sessions: SessionsConfig {
                relay_id,
                limits: limits.to_wire(),
                max_connections: config.connections.max as usize,
                idle_timeout: Duration::from_secs(config.connections.idle_timeout_secs),
                inflight_bytes_max: byte_budget(connections.inflight_bytes_max),
                inflight_bytes_total: Some(Arc::new(tokio::sync::Semaphore::new(byte_budget(
                    connections.inflight_bytes_total_max,
                )))),
                faults: faults.clone(),
            },
            rate_limits: RateLimitConfig {
                connections_per_ip_per_sec: config.connections.per_ip_per_sec,
                connections_per_ip_burst: config.connections.per_ip_burst,
                frames_per_device_per_sec: config.rate_limits.frames_per_device_per_sec,
                frames_per_device_burst: config.rate_limits.frames_per_device_burst,
                frames_per_source_per_sec: config.rate_limits.frames_per_source_per_sec,
                frames_per_source_burst: config.rate_limits.frames_per_source_burst,
                frames_global_per_sec: config.rate_limits.frames_global_per_sec,
                frames_global_burst: config.rate_limits.frames_global_burst,
            },
            rng: sessions_rng,
            routers_rng,
            listener,
            http,
            content,
        };
        let (root, root_handle) = match Actor::spawn(None, RelayRootActor, root_args).await {
            Ok(spawned) => spawned,
            Err(err) => {
                close(endpoint.as_ref()).await;
                return Err(StartError::Actors(err.to_string()));
            }
        };
        let addr_text = addr.to_string();
        let addr_file = data_dir.join(ADDR_FILE);
        if let Err(err) = write_atomically(&addr_file, format!("{addr_text}\n").as_bytes()) {
            root.stop(None);
            close(endpoint.as_ref()).await;
            return Err(data_dir_err(data_dir, err));
        }
        ready.store(true, Ordering::SeqCst);
        info!(relay_id = %relay_id, addr = %addr_text, "relay started");
        Ok(RelayNode {
            relay_id,
            addr,
            http_addr,
            metrics,
            root,
            root_handle,
            endpoint,
            ready,
            store,
        })
    }

    /// The tree's root actor, for probes that walk the tree (the chaos harness kills actors
    /// found under it).
    pub fn root_actor(&self) -> ractor::ActorCell {
        self.root.get_cell()
    }

    /// Whether the tree is still running (false after a top-level actor died).
    pub fn is_running(&self) -> bool {
        !self.root_handle.is_finished()
    }

    /// Wait until the tree stops on its own (a top-level actor died).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.root_handle).await;
    }

    /// Stop gracefully: see the module doc. Returns what the shutdown found.
    pub async fn shutdown(self, grace: Duration) -> ShutdownReport {
        self.ready.store(false, Ordering::SeqCst);
        let report = ractor::call_t!(
            self.root,
            |reply| RelayRootMsg::Shutdown { grace, reply },
            (grace + 4 * STEP_TIMEOUT).as_millis() as u64
        )
        .unwrap_or_default();
        let _ = tokio::time::timeout(STEP_TIMEOUT, self.root_handle).await;
        close(self.endpoint.as_ref()).await;
        // Every acked push is durable already; the "closed" marker lets the next open tell
        // damage in the last write from a torn one.
        let store = self.store;
        if let Err(err) = zerok_actors::exec::blocking(move || store.close()).await {
            warn!(error = %err, "closing the store failed");
        }
        report
    }
}

/// Close the iroh endpoint, if the relay has one.
async fn close(endpoint: Option<&IrohNode>) {
    if let Some(endpoint) = endpoint {
        endpoint.close().await;
    }
}

/// Keep the `unread_bytes` gauge current while the endpoint (which holds the pool) lives.
async fn publish_unread_bytes(pool: std::sync::Weak<QueuePool>, metrics: RelayMetrics) {
    let mut every = tokio::time::interval(UNREAD_GAUGE_EVERY);
    loop {
        every.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        metrics
            .unread_bytes
            .set(i64::try_from(pool.bytes()).unwrap_or(i64::MAX));
    }
}

/// A configured byte budget as a count of permits (the config caps budgets at `u32::MAX`).
fn byte_budget(bytes: u64) -> usize {
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// Create the data dir (and its parents) if missing, and make it the relay user's alone
/// (mode 0700): it holds the node's secret key and other people's ciphertext and metadata.
fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Write `bytes` to `path` (mode 0600) through a temp file and a rename, so readers never see
/// half, and sync the directory so the rename survives a power cut.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    zerok_actors::link::iroh::write_file_durably(path, bytes)
}
