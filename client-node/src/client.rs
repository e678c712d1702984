//! The app-facing handle: [`Client`]. The actor tree it starts is in [`crate::tree`].

use crate::tree::{ClientRoot, ENCRYPTOR_RESTART_POLICY, RootArgs, RootMsg};
use ractor::{Actor, ActorRef};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::warn;
use zeroize::Zeroizing;
use zerok_actors::client::content_transfer::{CONTENT_DIR, ContentTransferArgs, TransferMsg};
use zerok_actors::client::local_store::{KeyFileIdentity, LocalStore, SyncHook};
use zerok_actors::client::sync_coordinator::{CONN_RESTART_POLICY, Coordinator, CoordinatorArgs};
use zerok_actors::clock::Clock;
use zerok_actors::crypto::admit::{self, InviteKeys, JoinRequest};
use zerok_actors::crypto::content::FileAnnounce;
use zerok_actors::crypto::envelope::DeviceKey;
use zerok_actors::crypto::envelope::RecordKind;
use zerok_actors::crypto::invite::InviteV2;
use zerok_actors::crypto::keys::{GroupSecret, KdfParams, MailboxSigner, SALT_BYTES};
pub use zerok_actors::crypto::pair::PairCode;
use zerok_actors::crypto::pair::{Exchange, PairError, PairPost, Role as PairRole, rendezvous};
use zerok_actors::crypto::recovery::{self, RecoverySecret};
use zerok_actors::crypto::roster::{Change, EpochId, Op as RosterOp};
use zerok_actors::crypto::wrap::WrapKey;
use zerok_actors::fault::FaultPlan;
use zerok_actors::link::Dialer;
use zerok_actors::link::iroh::{IrohConfig, IrohNode, load_or_create_secret_key};
use zerok_actors::relay::admission::AdmissionToken;
use zerok_actors::rng::Rng;
use zerok_messages::client::{ClientError, Event, GroupId, Receipt, Status, SyncReport};
use zerok_messages::client::{ContentError, FileRef, Progress};
use zerok_messages::client::{DeviceInfo, Founder, GroupRecord, InviteWatch};
use zerok_messages::errors::{
    InvalidInput, InviteError, PairingError, PassphraseError, RecoveryError, StoreError,
    TokenRefusal,
};
use zerok_messages::sync::lock;
use zerok_messages::{BlobId, DeviceId, Epoch, RelayAddr};

/// Events the app's channel holds; beyond it records wait in the client's bounded backlog and
/// relay up/down events are coalesced (the client never waits for the app).
pub const EVENTS_BUFFER: usize = 1024;

/// How long [`Client::join`] waits for a member to admit this device.
pub const JOIN_WAIT: Duration = Duration::from_secs(60);
/// How long the invite a pairing makes stays valid (and how old a message of the device in
/// the group the new device still reads).
pub const PAIR_INVITE_VALID: Duration = Duration::from_secs(600);
/// Clock skew allowed between two devices pairing: the device in the group skips the new
/// device's messages from before its own start less this (an earlier attempt's leftovers in
/// the same rendezvous mailbox would spend its code).
const PAIR_CLOCK_SKEW: Duration = Duration::from_secs(10);

/// How long a recovering device keeps reading the phrase's mailbox once a snapshot opened
/// (a later epoch's snapshot may follow from another relay).
const RECOVERY_SETTLE: Duration = Duration::from_secs(2);
/// Snapshots a recovering device weighs (a flooded mailbox is read no further).
const RECOVERY_SNAPSHOTS_MAX: usize = 256;

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// How a client starts.
#[derive(Debug)]
pub struct ClientConfig {
    /// Home dir: device key (`device.key`), local store (`store/`).
    pub home: PathBuf,
    /// Relays that must durably ack a push before its receipt (capped by the group's count).
    pub ack_quorum: usize,
    /// Whether to subscribe and pull records (false for push-only use). With it on, records
    /// wait for the app to read [`Client::events`] (nothing is dropped; past
    /// `events_backlog_max` they wait on the relay); pushes and other calls keep working.
    pub receive: bool,
    /// Received items held for an app that is not reading its events; beyond it the client
    /// stops taking items from relays (they wait there) until the app catches up.
    pub events_backlog_max: usize,
    /// UDP address of the client's endpoint.
    pub bind: SocketAddr,
    /// Wall time (HLC timestamps, invite expiry).
    pub clock: Clock,
    /// Randomness (`None` = system).
    pub rng: Option<Rng>,
    /// Faults to inject into the client's actors and its local store (tests and the chaos
    /// harness; none by default).
    pub faults: FaultPlan,
    /// Told of every journal sync of the local store (the chaos harness images the device's
    /// disk with it, for power cuts); none by default.
    pub on_store_sync: Option<SyncHook>,
    /// How relays are reached (iroh QUIC on `bind` by default).
    pub transport: Transport,
    /// This device's name on the rosters of the groups it founds or joins (`None`:
    /// "device" and the short form of its id). At most 64 bytes.
    pub device_name: Option<String>,
}

/// Makes the dialer of a device (given its id) for [`Transport::Dialer`].
pub type MakeDialer = Arc<dyn Fn(DeviceId) -> Arc<dyn Dialer> + Send + Sync>;

/// How a client reaches relays.
#[derive(Clone, Default)]
pub enum Transport {
    /// iroh QUIC, bound on [`ClientConfig::bind`].
    #[default]
    Iroh,
    /// Links from another transport (the chaos harness's simulated network): the dialer the
    /// function makes for this device's id. Nothing is bound.
    Dialer(MakeDialer),
    /// No relay is reached and nothing is bound: the client works on its home alone, for
    /// what only reads or edits it (`zerok status`, `zerok devices`, `zerok relays`). What it queues is sent by the
    /// next client on this home that is online; content cannot be put or got.
    Offline,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Iroh => f.write_str("Iroh"),
            Transport::Dialer(_) => f.write_str("Dialer(..)"),
            Transport::Offline => f.write_str("Offline"),
        }
    }
}

impl ClientConfig {
    /// Defaults for `home`: quorum 1, receiving, any port.
    pub fn new(home: impl Into<PathBuf>) -> Self {
        Self {
            home: home.into(),
            ack_quorum: 1,
            receive: true,
            events_backlog_max: 8192,
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            clock: Clock::system(),
            rng: None,
            faults: FaultPlan::none(),
            on_store_sync: None,
            transport: Transport::Iroh,
            device_name: None,
        }
    }
}

/// How a new group gets its secret.
pub enum NewSecret {
    /// 32 random bytes (invites carry the secret).
    Random,
    /// Argon2id of a passphrase (devices are admitted by members all the same: invites carry
    /// neither the passphrase's salt nor anything that checks a guess).
    Passphrase(String),
}

/// A running client. Cheap calls, all async; drop or [`Client::shutdown`] to stop.
pub struct Client {
    coordinator: Coordinator,
    root: ActorRef<RootMsg>,
    root_handle: Mutex<Option<tokio::task::JoinHandle<()>>>,
    events: Mutex<Option<mpsc::Receiver<Event>>>,
    /// `None` on another transport ([`Transport::Dialer`]).
    endpoint: Option<IrohNode>,
    device_id: DeviceId,
    /// Signs join requests.
    device: Arc<DeviceKey>,
    /// Opens the group secret an admission wraps to this device.
    wrap: Arc<WrapKey>,
    /// Its name on rosters.
    device_name: String,
    /// Whether this client receives (an app's, `zerok pull`'s) or only pushes.
    receive: bool,
    /// The local store (the coordinator owns it; a joiner seeds a group's roster in it).
    store: LocalStore,
    clock: Clock,
    rng: Mutex<Rng>,
    /// The home dir.
    home: PathBuf,
    /// The ContentTransfer (`None` on a transport without iroh-blobs, or once it died).
    content: Arc<Mutex<Option<ActorRef<TransferMsg>>>>,
}

/// Files this device put or was told of, in the home (`zerok get ID`).
const FILES_DIR: &str = "files";

/// [`Client::remember_file`] for the client of `home` (from a task without the client).
pub fn remember_file_in(home: &Path, file: &FileRef) -> Result<(), ClientError> {
    let dir = home.join(FILES_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| home_err(home, e))?;
    let mut bytes = Vec::with_capacity(512);
    bytes.extend_from_slice(&file.group.0.0);
    bytes.extend_from_slice(&FileAnnounce::of(file).encode());
    std::fs::write(dir.join(file.id()), &bytes).map_err(|e| home_err(home, e))
}

/// The files remembered in `home` whose id starts with `prefix` (lower case), by name, then
/// id. An entry that does not decode (written by a newer version, or damaged) is skipped.
fn known_files_in(home: &Path, prefix: &str) -> Result<Vec<FileRef>, ClientError> {
    let entries = match std::fs::read_dir(home.join(FILES_DIR)) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(home_err(home, err)),
    };
    let mut files = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let bytes = std::fs::read(entry.path()).map_err(|e| home_err(home, e))?;
        let Some((group, announce)) = bytes.split_first_chunk::<32>() else {
            continue;
        };
        if let Ok(announce) = FileAnnounce::decode(announce) {
            files.push(announce.into_file_ref(GroupId(zerok_messages::MailboxId(*group))));
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id().cmp(&b.id())));
    Ok(files)
}

fn home_err(home: &Path, message: impl std::fmt::Display) -> ClientError {
    ClientError::Home {
        path: home.display().to_string(),
        message: message.to_string(),
    }
}

impl Client {
    /// Start a client on its home dir (created if missing, mode 0700).
    pub async fn start(config: ClientConfig) -> Result<Client, ClientError> {
        let home = config.home.clone();
        std::fs::create_dir_all(&home).map_err(|e| home_err(&home, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| home_err(&home, e))?;
        }
        let mut rng = config.rng.unwrap_or_else(Rng::system);
        let key_path = home.join("device.key");
        let mut secret =
            load_or_create_secret_key(&key_path, &mut rng).map_err(|e| home_err(&home, e))?;
        let store_dir = home.join("store");
        let store = zerok_actors::exec::blocking(move || LocalStore::open(&store_dir))
            .await
            .map_err(|e| home_err(&home, e))??;
        store.set_faults(config.faults.clone());
        store.set_sync_hook(config.on_store_sync.clone());
        if let Some(fresh) = take_new_key_if_copied(&home, &key_path, &store, &mut rng).await? {
            secret = fresh;
        }
        let device = Arc::new(DeviceKey::from_secret_bytes(&secret));
        let wrap = Arc::new(WrapKey::from_device_secret(&secret));
        let device_id = device.device_id();
        let device_name = match config.device_name.clone() {
            Some(name) if name.len() > zerok_actors::crypto::roster::DEVICE_NAME_BYTES_MAX => {
                return Err(InvalidInput::DeviceNameTooLong.into());
            }
            Some(name) => name,
            None => format!("device {}", device_id.short()),
        };
        let (endpoint, dialer): (Option<IrohNode>, Option<Arc<dyn Dialer>>) = match &config
            .transport
        {
            Transport::Iroh => {
                let endpoint = IrohNode::bind(IrohConfig::new(secret, config.bind))
                    .await
                    .map_err(|e| home_err(&home, format!("cannot bind {}: {e}", config.bind)))?;
                debug_assert_eq!(endpoint.local_id(), device_id);
                let dialer: Arc<dyn Dialer> = Arc::new(endpoint.dialer());
                (Some(endpoint), Some(dialer))
            }
            Transport::Dialer(make) => (None, Some(make(device_id))),
            Transport::Offline => (None, None),
        };
        let (events_tx, events_rx) = mpsc::channel(EVENTS_BUFFER);
        let coordinator_ref = Arc::new(Mutex::new(None));
        let content_ref = Arc::new(Mutex::new(None));
        let coordinator_rng = rng.fork();
        let clock = config.clock.clone();
        let (ack_quorum, receive) = (config.ack_quorum, config.receive);
        let backlog_max = config.events_backlog_max;
        let faults = config.faults.clone();
        let coordinator_device = Arc::clone(&device);
        let coordinator_wrap = Arc::clone(&wrap);
        let client_store = store.clone();
        let args = RootArgs {
            device: Arc::clone(&device),
            rng: rng.fork(),
            faults: config.faults.clone(),
            encryptor_restart: ENCRYPTOR_RESTART_POLICY,
            coordinator: Box::new(move |encryptor| CoordinatorArgs {
                store,
                device: coordinator_device,
                wrap: coordinator_wrap,
                encryptor,
                dialer,
                events: events_tx,
                ack_quorum,
                receive,
                backlog_max,
                clock,
                rng: coordinator_rng,
                conn_restart: CONN_RESTART_POLICY,
                faults,
            }),
            coordinator_ref: Arc::clone(&coordinator_ref),
            content: endpoint.as_ref().map(|endpoint| ContentTransferArgs {
                dir: home.join(CONTENT_DIR),
                endpoint: endpoint.clone(),
                clock: config.clock.clone(),
            }),
            content_ref: Arc::clone(&content_ref),
        };
        let (root, root_handle) = match Actor::spawn(None, ClientRoot, args).await {
            Ok(spawned) => spawned,
            Err(err) => {
                if let Some(endpoint) = &endpoint {
                    endpoint.close().await;
                }
                return Err(home_err(
                    &config.home,
                    format!("client failed to start: {err}"),
                ));
            }
        };
        let coordinator = lock(&coordinator_ref).take().ok_or(ClientError::Stopped)?;
        Ok(Client {
            coordinator: Coordinator::new(coordinator),
            root,
            root_handle: Mutex::new(Some(root_handle)),
            events: Mutex::new(Some(events_rx)),
            endpoint,
            device_id,
            device,
            wrap,
            device_name,
            receive,
            store: client_store,
            clock: config.clock,
            rng: Mutex::new(rng),
            home,
            content: content_ref,
        })
    }

    /// The tree's root actor, for probes that walk the tree (the chaos harness kills actors
    /// found under it).
    pub fn root_actor(&self) -> ractor::ActorCell {
        self.root.get_cell()
    }

    /// This device's id (also its iroh endpoint id).
    pub fn device_id(&self) -> DeviceId {
        self.device_id
    }

    /// The event stream. Taken once; later calls return `None`.
    pub fn events(&self) -> Option<mpsc::Receiver<Event>> {
        lock(&self.events).take()
    }

    /// Create a group on `relays`. Passphrase groups derive their secret with Argon2id (off
    /// the runtime; takes a moment by design).
    pub async fn create_group(
        &self,
        name: &str,
        secret: NewSecret,
        relays: Vec<RelayAddr>,
    ) -> Result<GroupId, ClientError> {
        self.create_group_admitted(name, secret, relays, &[]).await
    }

    /// [`Client::create_group`] on relays that admit by token: `admissions` are tokens from
    /// `zerok-relay admit`, each for one of `relays` (it names its relay). They are kept with
    /// the group and sent with this device's Joins, so the group's mailbox may be created.
    pub async fn create_group_admitted(
        &self,
        name: &str,
        secret: NewSecret,
        relays: Vec<RelayAddr>,
        admissions: &[String],
    ) -> Result<GroupId, ClientError> {
        if relays.is_empty() {
            return Err(InvalidInput::NoRelays.into());
        }
        let admissions = self.check_admissions(&relays, admissions)?;
        let (secret, salt) = match secret {
            NewSecret::Random => {
                let secret = GroupSecret::random(&mut self.lock_rng());
                (*secret.expose_bytes(), None)
            }
            NewSecret::Passphrase(passphrase) => {
                let salt: [u8; SALT_BYTES] = self.lock_rng().bytes();
                let secret = derive(passphrase, salt).await?;
                (secret, Some(salt.to_vec()))
            }
        };
        let record = GroupRecord {
            name: name.to_owned(),
            secret,
            epoch: 0,
            relays: relays.iter().map(ToString::to_string).collect(),
            passphrase_salt: salt,
            admissions,
            origin: Vec::new(),
            past: Vec::new(),
            removed: false,
        };
        let id = group_id(&record);
        let founder = Founder {
            device: self.device_id,
            wrap_key: self.wrap.public(),
            name: self.device_name.clone(),
            at_ms: self.clock.now_unix_ms(),
        };
        self.coordinator
            .put_group(id, record, Some(founder))
            .await?;
        Ok(id)
    }

    /// Keep an admission token (from `zerok-relay admit`) for one of `group`'s relays; its
    /// Joins carry it from now on. Returns the relay it is for.
    pub async fn set_admission(
        &self,
        group: GroupId,
        token: &str,
    ) -> Result<DeviceId, ClientError> {
        let mut record = self.group(group).await?;
        let relays: Vec<RelayAddr> = record
            .relays
            .iter()
            .filter_map(|r| r.parse().ok())
            .collect();
        let admissions = self.check_admissions(&relays, &[token.to_owned()])?;
        let relay = admissions
            .keys()
            .next()
            .and_then(|hex| relays.iter().find(|r| r.id.to_hex() == *hex))
            .map(|r| r.id)
            .ok_or(InvalidInput::AdmissionRefused(TokenRefusal::OtherRelay))?;
        record.admissions.extend(admissions);
        self.put_group(group, record).await?;
        Ok(relay)
    }

    /// Admission tokens by relay id, each checked: readable, for one of `relays`, signed by
    /// that relay, not expired.
    fn check_admissions(
        &self,
        relays: &[RelayAddr],
        tokens: &[String],
    ) -> Result<std::collections::BTreeMap<String, String>, ClientError> {
        let mut admissions = std::collections::BTreeMap::new();
        for text in tokens {
            let token = AdmissionToken::decode(text).map_err(InvalidInput::from)?;
            if !relays.iter().any(|r| r.id == token.relay_id) {
                return Err(InvalidInput::AdmissionNotForGroup(token.relay_id).into());
            }
            token
                .verify(&token.relay_id, self.clock.now_unix_secs())
                .map_err(InvalidInput::from)?;
            admissions.insert(token.relay_id.to_hex(), text.trim().to_owned());
        }
        Ok(admissions)
    }

    /// An invite token for `group`, valid for `valid_for`: a one-time invite secret, the
    /// group's relays and name, and the expiry (docs/DESIGN.md §4 "Membership"). It holds no
    /// key of the group: a member device admits whoever presents it first, if it is
    /// unexpired by that member's clock. Still a secret until used.
    pub async fn invite(&self, group: GroupId, valid_for: Duration) -> Result<String, ClientError> {
        let record = self.group(group).await?;
        let now = self.clock.now_unix_secs();
        let expires_at_unix_secs = now.saturating_add(valid_for.as_secs());
        let secret = self
            .coordinator
            .invite(group, expires_at_unix_secs.saturating_mul(1000), None)
            .await?;
        let invite = InviteV2 {
            relays: record
                .relays
                .iter()
                .filter_map(|r| r.parse().ok())
                .collect(),
            invite_secret: secret,
            expires_at_unix_secs,
            group_name: record.name.clone(),
        };
        Ok(invite.encode())
    }

    /// Whether `token` needs a passphrase to join: never, since invites are answered by
    /// members (kept for callers of the version-1 API). Checks the token.
    pub fn invite_needs_passphrase(&self, token: &str) -> Result<bool, ClientError> {
        InviteV2::decode(token, self.clock.now_unix_secs())?;
        Ok(false)
    }

    /// Join the group of an invite token, waiting up to [`JOIN_WAIT`] for a member to admit
    /// this device. `_passphrase` is not needed any more (members admit).
    pub async fn join(
        &self,
        token: &str,
        _passphrase: Option<String>,
    ) -> Result<GroupId, ClientError> {
        self.join_waiting(token, JOIN_WAIT).await
    }

    /// [`Client::join`], waiting up to `wait` for a member device to be online and admit
    /// this one: the request is posted in the invite's mailbox on its relays; a member that
    /// knows the invite checks it is unexpired and unused, adds this device to the roster
    /// and answers with the group's secret wrapped to this device's key.
    pub async fn join_waiting(&self, token: &str, wait: Duration) -> Result<GroupId, ClientError> {
        let invite = InviteV2::decode(token, self.clock.now_unix_secs())?;
        self.join_invite(&invite, wait).await
    }

    /// Join with `invite` (from a token, or from a pairing).
    async fn join_invite(&self, invite: &InviteV2, wait: Duration) -> Result<GroupId, ClientError> {
        let keys = InviteKeys::from_secret(&invite.invite_secret);
        let request = JoinRequest {
            device: self.device_id,
            wrap_key: self.wrap.public(),
            name: self.device_name.clone(),
            at_ms: self.clock.now_unix_ms(),
        };
        let sealed = admit::seal(
            &keys,
            admit::Kind::Request,
            &self.device,
            &request,
            &mut self.lock_rng(),
        )
        .map_err(|e| InviteError::Malformed(e.to_string()))?;
        let blob_id = BlobId(*blake3::hash(&sealed).as_bytes());
        let (items, mut answers) = mpsc::channel(64);
        let mailbox = keys.mailbox_id();
        self.coordinator.watch_invite(InviteWatch {
            mailbox,
            seed: keys.signer().seed(),
            relays: invite.relays.clone(),
            request: Some((blob_id, bytes::Bytes::from(sealed))),
            items,
            admission_group: None,
        })?;
        let found = tokio::time::timeout(wait, async {
            while let Some(items) = answers.recv().await {
                for item in items {
                    match admit::accept(&keys, &item.ciphertext, &self.device_id, &self.wrap) {
                        Ok(joined) => return Some(joined),
                        // Our own request served back, or something that is not for us.
                        Err(err) => tracing::debug!(error = %err, "invite mailbox item skipped"),
                    }
                }
            }
            None
        })
        .await;
        let joined = match found {
            Ok(Some(joined)) => joined,
            Ok(None) => return Err(ClientError::Stopped),
            Err(_) => {
                self.coordinator.unwatch_invite(mailbox);
                return Err(InviteError::NotAdmitted(wait.as_secs()).into());
            }
        };
        let result = self.keep_admission(&joined, None).await;
        // Only now: the relays stay wanted in between (no needless reconnect).
        self.coordinator.unwatch_invite(mailbox);
        result
    }

    /// Keep the group an admission gave this device, its roster seeded with the members the
    /// admission lists.
    async fn keep_admission(
        &self,
        joined: &zerok_actors::crypto::admit::Joined,
        own: Option<&RosterOp>,
    ) -> Result<GroupId, ClientError> {
        let admission = &joined.admission;
        let record = GroupRecord {
            name: admission.group_name.clone(),
            secret: *joined.secret,
            epoch: admission.epoch.number.0,
            relays: admission.relays.clone(),
            passphrase_salt: None,
            admissions: Default::default(),
            origin: if admission.epoch == EpochId::GENESIS {
                Vec::new()
            } else {
                admission.epoch.origin.to_vec()
            },
            past: Vec::new(),
            removed: false,
        };
        // Epoch 0's secret names the group; a later epoch's (the group was re-keyed) does
        // not, and the group is the one the admission names (authenticated by the invite).
        let id = if admission.epoch == EpochId::GENESIS {
            group_id(&record)
        } else {
            GroupId(admission.group)
        };
        if id.0 != admission.group {
            return Err(InviteError::KeyMismatch.into());
        }
        let founder = Founder {
            device: admission.founder.device,
            wrap_key: admission.founder.wrap_key,
            name: admission.founder.name.clone(),
            at_ms: admission.founder.added_at_ms,
        };
        // The members the admission lists, as the `Add`s that made them (the joiner's own
        // among them): this device writes at once, and knows members whose `Add` records
        // expired on the relays. An operation the admitter misdescribed has another id and
        // counts only if its author is a member (as any); the rest comes with catch-up.
        let ops: Vec<RosterOp> = admission
            .members
            .iter()
            .filter(|m| m.device != admission.founder.device)
            .map(|m| RosterOp {
                author: m.added_by,
                epoch: admission.epoch,
                at_ms: m.added_at_ms,
                change: Change::Add {
                    device: m.device,
                    wrap_key: m.wrap_key,
                    name: m.name.clone(),
                    via: m.via,
                    recovery: m.recovery.clone(),
                    endorsed: None,
                },
            })
            .collect();
        if admission.epoch == EpochId::GENESIS {
            self.store.put_roster_ops(&id, &ops)?;
        } else {
            // The roster starts at the epoch the admission named, with its members.
            self.store
                .put_roster_base(&id, &admission.epoch, &admission.members)?;
        }
        // This device's own operation (a recovered device's self-add): on its roster from
        // the start, so it is a member when the group loads.
        if let Some(op) = own {
            self.store.put_roster_ops(&id, std::slice::from_ref(op))?;
        }
        self.coordinator
            .put_group(id, record, Some(founder))
            .await?;
        Ok(id)
    }

    /// Make a recovery phrase for `group`: 24 words that let a new device join the group
    /// on its own (`Client::recover`), with no other device online. The phrase is an entry
    /// on the roster (`zerok devices` lists it; removing it revokes the phrase); every rekey
    /// gives it the new epoch's secret, and long-running members keep a snapshot of the
    /// group for it on the relays. Answered once the relays have the entry and a snapshot
    /// (at most `wait`); the phrase is shown to nobody else and never stored.
    pub async fn export_recovery(
        &self,
        group: GroupId,
        wait: Duration,
    ) -> Result<Zeroizing<String>, ClientError> {
        let secret = RecoverySecret::random(&mut self.lock_rng());
        let keys = secret.keys();
        let added = self
            .coordinator
            .add_recovery(
                group,
                keys.entry_id(),
                keys.wrap().public(),
                Zeroizing::new(*keys.mailbox_secret()),
            )
            .await?;
        let on_relays = tokio::time::timeout(wait, async {
            self.wait_acked(group, added.add, None).await?;
            added.snapshot_acked.await.map_err(|_| ClientError::Stopped)
        })
        .await;
        match on_relays {
            Ok(Ok(())) => Ok(secret.phrase()),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(RecoveryError::NotOnRelay(wait.as_secs()).into()),
        }
    }

    /// Join a group with a recovery phrase ([`Client::export_recovery`]) found on `relays`,
    /// as this device (its own new key and sequence numbers): read the group's snapshot in
    /// the phrase's mailbox (the latest epoch found within `wait`), keep the group, and add
    /// this device to the roster with the phrase's endorsement. Answered once a relay acked
    /// that add (the group's other devices then accept this device's records), or, on a
    /// receiving client, `RecoveryError::Outdated` if a pull finds the group re-keyed past
    /// the phrase since.
    pub async fn recover(
        &self,
        phrase: &str,
        relays: Vec<RelayAddr>,
        wait: Duration,
    ) -> Result<GroupId, ClientError> {
        if relays.is_empty() {
            return Err(InvalidInput::NoRelays.into());
        }
        let secret =
            RecoverySecret::parse(phrase).map_err(|e| RecoveryError::BadPhrase(e.to_string()))?;
        let keys = secret.keys();
        // A group this device is in whose roster holds the phrase's entry (this device
        // keeps that phrase's snapshot mailbox: it must not read it as a stranger).
        for (group, _) in self.groups().await? {
            let on_roster = self.devices(group).await.unwrap_or_default();
            if on_roster.iter().any(|d| d.device == keys.entry_id()) {
                return Err(RecoveryError::AlreadyInGroup(group.0.short()).into());
            }
        }
        let mailbox_keys = keys.mailbox();
        let mailbox = mailbox_keys.mailbox_id();
        let (items, mut found) = mpsc::channel(64);
        self.coordinator.watch_invite(InviteWatch {
            mailbox,
            seed: mailbox_keys.signer().seed(),
            relays,
            request: None,
            items,
            admission_group: None,
        })?;
        let started = tokio::time::Instant::now();
        let mut snapshots: Vec<admit::Joined> = Vec::new();
        // Read until `wait` is over, or until the mailbox has been quiet for a moment after
        // a snapshot opened: every relay serves its snapshots in one catch-up.
        loop {
            let left = wait.saturating_sub(started.elapsed());
            let quiet = if snapshots.is_empty() {
                left
            } else {
                left.min(RECOVERY_SETTLE)
            };
            let Ok(Some(batch)) = tokio::time::timeout(quiet, found.recv()).await else {
                break;
            };
            for item in batch {
                match recovery::read_snapshot(&keys, &item.ciphertext) {
                    Ok(joined) if snapshots.len() < RECOVERY_SNAPSHOTS_MAX => {
                        snapshots.push(joined)
                    }
                    Ok(_) => {}
                    Err(err) => tracing::debug!(error = %err, "recovery mailbox item skipped"),
                }
            }
        }
        self.coordinator.unwatch_invite(mailbox);
        if snapshots.is_empty() {
            return Err(RecoveryError::NothingFound(wait.as_secs()).into());
        }
        // Every member can post here (the mailbox's secret is in the roster), a device
        // removed since too: a snapshot by a device any snapshot says was removed is not
        // taken. Of the rest, the latest epoch's.
        let removed: BTreeSet<DeviceId> = snapshots
            .iter()
            .flat_map(|s| s.admission.removed.iter().copied())
            .collect();
        let joined = snapshots
            .into_iter()
            .filter(|s| !removed.contains(&s.admitted_by))
            .max_by_key(|s| s.admission.epoch.number)
            .ok_or(RecoveryError::Conflicting)?;
        tracing::debug!(
            epoch = joined.admission.epoch.number.0,
            author = %joined.admitted_by.short(),
            "recovering from a snapshot"
        );
        let id = GroupId(joined.admission.group);
        if self.groups().await?.iter().any(|(g, _)| *g == id) {
            return Err(RecoveryError::AlreadyInGroup(id.0.short()).into());
        }
        let epoch = joined.admission.epoch;
        let own = RosterOp {
            author: self.device_id,
            epoch,
            at_ms: self.clock.now_unix_ms(),
            change: Change::Add {
                device: self.device_id,
                wrap_key: self.wrap.public(),
                name: self.device_name.clone(),
                via: None,
                recovery: None,
                endorsed: Some(keys.endorse(
                    &epoch,
                    &self.device_id,
                    &self.wrap.public(),
                    &self.device_name,
                )),
            },
        };
        let group = self.keep_admission(&joined, Some(&own)).await?;
        let mut cbor = Vec::new();
        ciborium::into_writer(&own, &mut cbor)
            .map_err(|e| StoreError::Db(format!("roster operation: {e}")))?;
        let written = self.coordinator.write_roster_op(group, cbor).await?;
        if let Some((_, blob_id)) = written.first() {
            let left = wait.saturating_sub(started.elapsed()).max(RECOVERY_SETTLE);
            self.wait_acked(group, *blob_id, Some(left)).await?;
        }
        // The group as the relays have it since the snapshot: a rekey it did not know (the
        // phrase's entry was removed, or no member ran since the group was re-keyed) leaves
        // this device outside the current epoch. Unknown if no relay answers now. Only a
        // receiving client pulls here: its app gets what the pull brings as events; a
        // push-only one (`zerok init --recover`) leaves the history to its next `pull`.
        if self.receive
            && self.sync_now(group).await.is_ok()
            && !self
                .devices(group)
                .await?
                .iter()
                .any(|d| d.device == self.device_id)
        {
            return Err(RecoveryError::Outdated.into());
        }
        Ok(group)
    }

    /// Pair a new device with `group` by a short code (the device in the group's side):
    /// show `code` (from [`PairCode::random`]) to the user, who types it on the new device
    /// ([`Client::pair_join`]). The two devices run a SPAKE2 exchange through a rendezvous
    /// mailbox on the group's relays; with the same code on both, this device makes an
    /// invite from the key they share and admits the new device with it. Answers the new
    /// device once its admission is on a relay, where it reads it: this device may stop
    /// then. A wrong code fails on both sides and spends the code. `wait` bounds the whole.
    pub async fn pair_offer(
        &self,
        group: GroupId,
        code: &PairCode,
        wait: Duration,
    ) -> Result<DeviceInfo, ClientError> {
        let deadline = tokio::time::Instant::now() + wait;
        let record = self.group(group).await?;
        let relays = record
            .relays
            .iter()
            .filter_map(|r| r.parse().ok())
            .collect();
        let secret = self
            .pair_exchange(code, PairRole::Existing, relays, Some(group), wait)
            .await?;
        let expires = self
            .clock
            .now_unix_ms()
            .saturating_add(millis(PAIR_INVITE_VALID));
        let secret = self
            .coordinator
            .invite(group, expires, Some(secret))
            .await?;
        // The `Add` is on this device's roster as soon as the request is judged; the
        // admission is posted only once the relays acked the `Add`. Stopping in between
        // would leave the new device admitted but never told.
        let invite = InviteKeys::from_secret(&secret).mailbox_id();
        let admitted = tokio::time::timeout_at(deadline, self.coordinator.admission_posted(invite))
            .await
            .unwrap_or(Ok(None))?;
        let added = match admitted {
            Some(device) => self
                .devices(group)
                .await?
                .into_iter()
                .find(|d| d.device == device),
            None => None,
        };
        added.ok_or_else(|| PairingError::NotAdmitted(wait.as_secs()).into())
    }

    /// Join a group by a short code shown by a device in it ([`Client::pair_offer`]),
    /// meeting it on `relays` (the group's, or one of them); then wait up to `wait` to be
    /// admitted as with an invite.
    pub async fn pair_join(
        &self,
        code: &str,
        relays: Vec<RelayAddr>,
        wait: Duration,
    ) -> Result<GroupId, ClientError> {
        if relays.is_empty() {
            return Err(InvalidInput::NoRelays.into());
        }
        let code = PairCode::parse(code).map_err(|_| PairingError::BadCode)?;
        let secret = self
            .pair_exchange(&code, PairRole::New, relays.clone(), None, wait)
            .await?;
        let invite = InviteV2 {
            relays,
            invite_secret: secret,
            expires_at_unix_secs: self.clock.now_unix_secs() + PAIR_INVITE_VALID.as_secs(),
            group_name: String::new(),
        };
        self.join_invite(&invite, wait).await
    }

    /// This side of a pairing's exchange in the rendezvous mailbox of `code`: the invite
    /// secret both sides get.
    async fn pair_exchange(
        &self,
        code: &PairCode,
        role: PairRole,
        relays: Vec<RelayAddr>,
        admission_group: Option<GroupId>,
        wait: Duration,
    ) -> Result<Zeroizing<[u8; 32]>, ClientError> {
        let seed = rendezvous(code.nameplate());
        let mailbox = MailboxSigner::from_seed(&seed).mailbox_id();
        let (mut exchange, first) =
            Exchange::start(code, role, self.clock.now_unix_ms(), &mut self.lock_rng());
        let first = first.encode();
        let (items, mut posts) = mpsc::channel(64);
        self.coordinator.watch_invite(InviteWatch {
            mailbox,
            seed,
            relays,
            request: Some((
                BlobId(*blake3::hash(&first).as_bytes()),
                bytes::Bytes::from(first),
            )),
            items,
            admission_group,
        })?;
        // The new device reads the other side's message from before it started (the code
        // was shown a while ago); the device in the group only allows for clock skew.
        let window = match role {
            PairRole::Existing => PAIR_CLOCK_SKEW,
            PairRole::New => PAIR_INVITE_VALID,
        };
        let outcome = tokio::time::timeout(wait, async {
            while let Some(items) = posts.recv().await {
                for item in items {
                    let Some(post) = PairPost::decode(&item.ciphertext) else {
                        continue;
                    };
                    match exchange.take(&post, millis(window)) {
                        Ok(Some(answer)) => {
                            self.coordinator.watch_post(mailbox, answer.encode())?
                        }
                        Ok(None) => {}
                        Err(PairError::WrongCode) => return Err(PairingError::WrongCode.into()),
                        // Not a message of the exchange (the mailbox is public): skipped.
                        Err(_) => continue,
                    }
                    if let Some(secret) = exchange.done() {
                        return Ok(secret);
                    }
                }
            }
            Err(ClientError::Stopped)
        })
        .await;
        self.coordinator.unwatch_invite(mailbox);
        match outcome {
            Ok(result) => result,
            Err(_) => Err(PairingError::NoAnswer(wait.as_secs()).into()),
        }
    }

    /// The devices on `group`'s roster: name, id, who added each and when, and when this
    /// device last received a record of each.
    pub async fn devices(&self, group: GroupId) -> Result<Vec<DeviceInfo>, ClientError> {
        self.coordinator.devices(group).await
    }

    /// Remove a device from `group` (a lost or stolen phone): the group is re-keyed without
    /// it. Its new epoch's secret is wrapped to every other member, the group moves to the
    /// epoch's own mailbox, and what this device had queued is sealed again in it. The
    /// removed device reads nothing written after it learns of the removal, and its records
    /// are refused by every member. Answered once the removal is durable here.
    pub async fn remove_device(&self, group: GroupId, device: DeviceId) -> Result<(), ClientError> {
        self.coordinator.remove_device(group, device).await
    }

    /// Every group's id and name.
    pub async fn groups(&self) -> Result<Vec<(GroupId, String)>, ClientError> {
        Ok(self
            .status()
            .await?
            .groups
            .into_iter()
            .map(|g| (g.id, g.name))
            .collect())
    }

    /// Replace a group's relay list.
    pub async fn set_relays(
        &self,
        group: GroupId,
        relays: Vec<RelayAddr>,
    ) -> Result<(), ClientError> {
        if relays.is_empty() {
            return Err(InvalidInput::NoRelays.into());
        }
        let mut record = self.group(group).await?;
        record.relays = relays.iter().map(ToString::to_string).collect();
        self.put_group(group, record).await
    }

    /// The relays of a group.
    pub async fn relays(&self, group: GroupId) -> Result<Vec<RelayAddr>, ClientError> {
        let record = self.group(group).await?;
        Ok(record
            .relays
            .iter()
            .filter_map(|r| r.parse().ok())
            .collect())
    }

    /// Seal `payload` and queue it durably; it is sent to every relay of the group and retried
    /// until acked. Returns its blob id once it is safe in the outbox.
    /// Concurrent calls share one local flush (group commit).
    pub async fn enqueue(&self, group: GroupId, payload: Vec<u8>) -> Result<BlobId, ClientError> {
        let queued = self.enqueue_many(group, vec![payload]).await?;
        queued.first().copied().ok_or(ClientError::Stopped)
    }

    /// [`Client::enqueue`] for several records at once, in order (they get consecutive seqs
    /// and reach every relay in this order): sealed in parallel, written in one atomic batch,
    /// durable in one flush. Returns their blob ids, in order, once all are safe in the
    /// outbox. At most [`zerok_actors::client::sync_coordinator::ENQUEUE_MANY_RECORDS_MAX`] records per call.
    pub async fn enqueue_many(
        &self,
        group: GroupId,
        payloads: Vec<Vec<u8>>,
    ) -> Result<Vec<BlobId>, ClientError> {
        let queued = self.coordinator.enqueue(group, payloads).await?;
        Ok(queued.into_iter().map(|(_, blob_id)| blob_id).collect())
    }

    /// Wait until `blob_id` is acked by enough relays; `None` waits as long as it takes.
    pub async fn wait_acked(
        &self,
        group: GroupId,
        blob_id: BlobId,
        timeout: Option<Duration>,
    ) -> Result<Receipt, ClientError> {
        self.coordinator.wait_acked(group, blob_id, timeout).await
    }

    /// Push: queue durably, then wait for enough relay acks.
    pub async fn push(&self, group: GroupId, payload: Vec<u8>) -> Result<Receipt, ClientError> {
        let blob_id = self.enqueue(group, payload).await?;
        self.wait_acked(group, blob_id, None).await
    }

    /// [`Client::push`] for several records: [`Client::enqueue_many`], then wait until each
    /// is acked by enough relays. Receipts in the records' order.
    pub async fn push_many(
        &self,
        group: GroupId,
        payloads: Vec<Vec<u8>>,
    ) -> Result<Vec<Receipt>, ClientError> {
        let blob_ids = self.enqueue_many(group, payloads).await?;
        let waits = blob_ids
            .into_iter()
            .map(|blob_id| self.wait_acked(group, blob_id, None));
        futures::future::join_all(waits).await.into_iter().collect()
    }

    /// Pull every relay of `group` to its end now; records arrive as events before this
    /// returns.
    pub async fn sync_now(&self, group: GroupId) -> Result<SyncReport, ClientError> {
        self.coordinator.sync_now(group).await
    }

    /// Put a large file into `group`: it is sealed in chunks, uploaded to the group's
    /// relays over iroh-blobs (an interrupted upload resumes), and announced in a record, so
    /// every member learns of it as [`Event::File`] and fetches it with
    /// [`Client::get_file`]. Answers once at least one relay holds all of it and the
    /// announcement is queued durably.
    pub async fn put_file(
        &self,
        group: GroupId,
        path: impl AsRef<Path>,
    ) -> Result<FileRef, ClientError> {
        self.put_file_with(group, path, None).await
    }

    /// [`Client::put_file`], telling `progress` how far it is.
    pub async fn put_file_with(
        &self,
        group: GroupId,
        path: impl AsRef<Path>,
        progress: Option<mpsc::Sender<Progress>>,
    ) -> Result<FileRef, ClientError> {
        let content = self.content()?;
        let access = self.coordinator.content_access(group, None).await?;
        let path = path.as_ref().to_path_buf();
        let file = ractor::call!(content, |reply| TransferMsg::Put {
            access,
            group,
            path,
            progress,
            reply,
        })
        .map_err(|_| ClientError::Stopped)??;
        self.coordinator
            .enqueue_as(
                group,
                RecordKind::CONTENT_REF,
                vec![FileAnnounce::of(&file).encode()],
            )
            .await?;
        self.remember_file(&file)?;
        Ok(file)
    }

    /// Fetch `file` from its group's relays (any that holds it; an interrupted download
    /// resumes from what was verified) and write it to `dest`, which appears only once all
    /// of it verified and opened. Answers the bytes fetched from relays this time.
    pub async fn get_file(
        &self,
        file: &FileRef,
        dest: impl AsRef<Path>,
    ) -> Result<u64, ClientError> {
        self.get_file_with(file, dest, None).await
    }

    /// [`Client::get_file`], telling `progress` how far it is.
    pub async fn get_file_with(
        &self,
        file: &FileRef,
        dest: impl AsRef<Path>,
        progress: Option<mpsc::Sender<Progress>>,
    ) -> Result<u64, ClientError> {
        let content = self.content()?;
        let access = self
            .coordinator
            .content_access(file.group, Some(file.mailbox))
            .await?;
        let (file, dest) = (file.clone(), dest.as_ref().to_path_buf());
        ractor::call!(content, |reply| TransferMsg::Get {
            access,
            file,
            dest,
            progress,
            reply,
        })
        .map_err(|_| ClientError::Stopped)?
        .map_err(ClientError::from)
    }

    /// Keep `file` in the home, so [`Client::known_file`] finds it by id (`zerok get ID`
    /// after `zerok pull` printed it). The home dir is private (mode 0700).
    pub fn remember_file(&self, file: &FileRef) -> Result<(), ClientError> {
        remember_file_in(&self.home, file)
    }

    /// A file this device put or was told of ([`Client::remember_file`]), by its id or a
    /// unique prefix of it.
    pub fn known_file(&self, id: &str) -> Result<Option<FileRef>, ClientError> {
        let mut matches = self.files_starting_with(id)?;
        Ok(match matches.len() {
            1 => matches.pop(),
            _ => None,
        })
    }

    /// The files this device put or was told of whose id starts with `prefix` (any case),
    /// by name, then id.
    pub fn files_starting_with(&self, prefix: &str) -> Result<Vec<FileRef>, ClientError> {
        known_files_in(&self.home, &prefix.to_ascii_lowercase())
    }

    /// Every file this device put or was told of (`zerok files`), of `group` or of every
    /// group, by name, then id.
    pub fn known_files(&self, group: Option<GroupId>) -> Result<Vec<FileRef>, ClientError> {
        let mut files = known_files_in(&self.home, "")?;
        files.retain(|f| group.is_none_or(|g| f.group == g));
        Ok(files)
    }

    fn content(&self) -> Result<ActorRef<TransferMsg>, ClientError> {
        if self.endpoint.is_none() {
            return Err(ContentError::NoTransport.into());
        }
        lock(&self.content).clone().ok_or(ClientError::Stopped)
    }

    /// Status of every group.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.coordinator.status().await
    }

    /// Stop: close relay connections (saying `Bye`), flush, close the endpoint.
    pub async fn shutdown(self) {
        let _ = self
            .root
            .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(10)))
            .await;
        let handle = lock(&self.root_handle).take();
        if let Some(handle) = handle {
            let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
        }
        if let Some(endpoint) = &self.endpoint {
            endpoint.close().await;
        }
    }

    fn lock_rng(&self) -> std::sync::MutexGuard<'_, Rng> {
        lock(&self.rng)
    }

    async fn group(&self, id: GroupId) -> Result<GroupRecord, ClientError> {
        self.coordinator.group(id).await
    }

    async fn put_group(&self, id: GroupId, record: GroupRecord) -> Result<(), ClientError> {
        self.coordinator.put_group(id, record, None).await
    }
}

/// A home dir that was copied, or restored from a backup, must not reuse the sequence
/// numbers its key already signed: receivers would drop the second record of a `(sender,
/// seq)` as a replay. `device.key` in a copy is a new file (new inode and birth time) with the
/// old bytes; when it is not the file the store recorded, this copy takes a new device key
/// (its records then start at seq 1 under a new sender id) and the store is told so. The
/// original, whose key file is unchanged, keeps its key. Returns the new key, if one was made.
async fn take_new_key_if_copied(
    home: &Path,
    key_path: &Path,
    store: &LocalStore,
    rng: &mut Rng,
) -> Result<Option<[u8; 32]>, ClientError> {
    let found = KeyFileIdentity::of(key_path).map_err(|e| home_err(home, e))?;
    match store.key_file()? {
        None => {
            store.set_key_file(&found).await?;
            Ok(None)
        }
        Some(recorded) if recorded.is_same_file(&found) => Ok(None),
        Some(_) => {
            let old_secret =
                load_or_create_secret_key(key_path, rng).map_err(|e| home_err(home, e))?;
            let old = DeviceKey::from_secret_bytes(&old_secret).device_id();
            warn!(
                home = %home.display(),
                old_device = %old.short(),
                "home dir was copied or restored from a backup; taking a new device key"
            );
            std::fs::remove_file(key_path).map_err(|e| home_err(home, e))?;
            let secret = load_or_create_secret_key(key_path, rng).map_err(|e| home_err(home, e))?;
            let identity = KeyFileIdentity::of(key_path).map_err(|e| home_err(home, e))?;
            store.new_device_key(old, &identity).await?;
            Ok(Some(secret))
        }
    }
}

fn group_id(record: &GroupRecord) -> GroupId {
    GroupId(
        GroupSecret::from_bytes(record.secret)
            .epoch_keys(Epoch(0))
            .mailbox_id(),
    )
}

async fn derive(passphrase: String, salt: [u8; SALT_BYTES]) -> Result<[u8; 32], ClientError> {
    zerok_actors::exec::blocking(move || {
        GroupSecret::from_passphrase(&passphrase, &salt, KdfParams::V1)
            .map(|secret| *secret.expose_bytes())
            .map_err(ClientError::from)
    })
    .await
    .map_err(|e| PassphraseError::Kdf(e.to_string()))?
}
