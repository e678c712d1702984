//! The relay's configuration: a TOML file (`--config relay.toml`, every key optional) under a
//! few command-line flags, validated once at start-up (DESIGN.md §6, §7).
//!
//! [`Cli::resolve`] is the one entry point of the binary: it reads the file (or takes the
//! defaults), applies the flags on top (flags win), and validates the result, so the tree is
//! only ever built from a [`RelayConfig`] whose every limit is usable. `deploy/relay.toml`
//! lists every option at its default; a test keeps the two equal.
//!
//! Errors are one line and name the file and the offending key, because operators read them
//! in `journalctl` or `docker logs`.

use clap::Parser;
use serde::{Deserialize, Deserializer};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use zerok_actors::relay::blob_store::core::{
    ITEM_CHARGE_BYTES, MAILBOX_INDEX_ENTRIES, charged_bytes,
};
use zerok_messages::wire::{BLOB_BYTES_MAX, FRAME_BYTES_MAX, Limits};

/// Data directory when neither the file nor `--data-dir` names one: beside the working
/// directory, so a first `cargo run` works without setup.
pub const DATA_DIR_DEFAULT: &str = "./zerok-relay-data";
/// UDP port of the QUIC endpoint; 7341 (TCP) is the HTTP port beside it.
pub const QUIC_PORT_DEFAULT: u16 = 7340;
/// TCP port of the operator HTTP endpoints.
pub const HTTP_PORT_DEFAULT: u16 = 7341;
/// The text that turns the HTTP endpoints off, in the file (`http = "off"`) and on the
/// command line (`--http off`).
pub const HTTP_OFF: &str = "off";

/// Most requests one connection may have in flight: 4096 frames of up to ~1 MiB is already
/// 4 GiB of potential queued work per connection; more is a misconfiguration.
pub const INFLIGHT_MAX_LIMIT: u32 = 4096;
/// Longest shutdown grace accepted. DESIGN.md §7 promises exit within 10 s by default;
/// a minute is the most a supervisor (systemd, docker) should reasonably be told to wait.
pub const GRACE_SECS_LIMIT: u64 = 60;
/// Smallest `connections.unread_bytes_max`: room for a few replies and one page share.
pub const UNREAD_BYTES_MIN: u64 = 64 * 1024;
/// Largest byte budget accepted (connections.*_bytes_*): permits are counted in `u32`
/// and 4 GiB of queued frames is a misconfiguration anyway.
pub const BYTE_BUDGET_LIMIT: u64 = u32::MAX as u64;
/// Smallest `store.segment_bytes`.
pub const SEGMENT_BYTES_MIN: u64 = 1024 * 1024;
/// Default `store.max_bytes`: 10 GiB, a hundred full mailboxes at the default quota; a
/// relay on a bigger disk raises it, the free-disk floor guards a smaller one.
pub const STORE_MAX_BYTES_DEFAULT: u64 = 10 * 1024 * 1024 * 1024;
/// Default `store.max_items`: 20,000,000 index entries. The index is on disk (~140 B per
/// item before the LSM tree's overhead, ~3 GiB at the limit); what stays in memory is one
/// meta per mailbox (~150 B), and a mailbox is charged 64 entries, so at most 312,500
/// mailboxes (~50 MiB) fit.
pub const STORE_MAX_ITEMS_DEFAULT: u64 = 20_000_000;
/// Default `store.min_free_disk_bytes`: 512 MiB left for the system (logs, package updates)
/// and for the relay's own segment rolls and marks.
pub const STORE_MIN_FREE_DISK_BYTES_DEFAULT: u64 = 512 * 1024 * 1024;

/// Upper bound of the CBOR encoding of one [`zerok_messages::Item`] beside its ciphertext:
/// four field names, two `u64`s, a 32-byte id and a byte-string header come to 97 bytes.
/// Used to keep a pull page inside one frame; a test checks it against the real codec.
pub const PULL_ITEM_OVERHEAD_BYTES: u64 = 128;
/// Upper bound of the encoding of a `PullPage` frame beside its items (tag, request id,
/// next cursor, `has_more`, array header). A test checks it against the real codec.
pub const PULL_PAGE_OVERHEAD_BYTES: u64 = 256;

/// Everything a relay is configured with.
///
/// In the file every key is optional (missing keys take their default) and unknown keys are
/// refused, so a typo never silently leaves a default in force.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Where the store (`store/`), the node key (`node.key`) and the address file
    /// (`relay.addr`) live.
    pub data_dir: PathBuf,
    /// UDP address of the QUIC endpoint.
    pub bind: SocketAddr,
    /// TCP address of `/health`, `/ready` and `/metrics`; `None` turns them off. In TOML a
    /// string: `"127.0.0.1:7341"`, or `"off"`.
    #[serde(deserialize_with = "deserialize_http")]
    pub http: Option<SocketAddr>,
    /// Addresses written to `relay.addr` for clients, when the bound address is not the one
    /// clients reach (a public IP, a NAT or container port mapping). Empty: the bound
    /// sockets, with an unspecified IP written as loopback. At most 8.
    pub advertise: Vec<SocketAddr>,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// What one item, mailbox, connection and pull may hold.
    pub limits: LimitsConfig,
    /// How many connections, for how long, how fast.
    pub connections: ConnectionsConfig,
    /// Frame rates per device and for the whole relay.
    pub rate_limits: RateLimitsConfig,
    /// The embedded store (a segment log) and its sweeper.
    pub store: StoreConfig,
    /// How a stop signal is handled.
    pub shutdown: ShutdownConfig,
    /// Who may create mailboxes, and how fast.
    pub admission: AdmissionSettings,
    /// Large files over iroh-blobs.
    pub content: ContentSettings,
}

/// Large files (sealed by clients) kept in `content/` of the data dir and served over
/// iroh-blobs on the relay's endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContentSettings {
    /// Whether the relay keeps files at all (off: offers are answered `unsupported`).
    pub enabled: bool,
    /// Bytes of files one mailbox (one group's epoch) may hold.
    pub mailbox_quota_bytes: u64,
    /// Bytes of distinct files the relay holds in total.
    pub max_bytes: u64,
    /// Largest file, in bytes.
    pub file_bytes_max: u64,
    /// Seconds a file is kept when its offer names no TTL; announcing it again restarts it.
    pub ttl_default_secs: u64,
    /// Longest TTL an offer may ask for.
    pub ttl_max_secs: u64,
    /// iroh-blobs connections served at once.
    pub connections_max: u32,
}

impl Default for ContentSettings {
    fn default() -> Self {
        let defaults = zerok_actors::relay::content::ContentConfig::default();
        Self {
            enabled: true,
            mailbox_quota_bytes: defaults.mailbox_quota_bytes,
            max_bytes: defaults.budget_bytes,
            file_bytes_max: defaults.file_bytes_max,
            ttl_default_secs: defaults.ttl_default.as_secs(),
            ttl_max_secs: defaults.ttl_max.as_secs(),
            connections_max: defaults.connections_max as u32,
        }
    }
}

impl ContentSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.file_bytes_max == 0 {
            return Err(invalid("content.file_bytes_max", "must be at least 1"));
        }
        if self.ttl_default_secs == 0 || self.ttl_default_secs > self.ttl_max_secs {
            return Err(invalid(
                "content.ttl_default_secs",
                "must be in 1..=content.ttl_max_secs",
            ));
        }
        if self.connections_max == 0 {
            return Err(invalid("content.connections_max", "must be at least 1"));
        }
        Ok(())
    }

    /// The content service's settings (`min_free_disk_bytes`: the store's floor).
    pub fn to_config(
        &self,
        min_free_disk_bytes: u64,
    ) -> zerok_actors::relay::content::ContentConfig {
        zerok_actors::relay::content::ContentConfig {
            mailbox_quota_bytes: self.mailbox_quota_bytes,
            budget_bytes: self.max_bytes,
            file_bytes_max: self.file_bytes_max,
            ttl_default: Duration::from_secs(self.ttl_default_secs),
            ttl_max: Duration::from_secs(self.ttl_max_secs),
            connections_max: self.connections_max as usize,
            min_free_disk_bytes,
            ..zerok_actors::relay::content::ContentConfig::default()
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// What one item, mailbox, connection and pull may hold. Most are announced to clients in
/// `Welcome` ([`LimitsConfig::to_wire`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest ciphertext of one item, 1..=1 MiB (the protocol's `BLOB_BYTES_MAX`).
    pub blob_bytes_max: u32,
    /// Bytes one mailbox may be charged: its ciphertext plus a fixed charge per item for
    /// what an item costs beside it (`ITEM_CHARGE_BYTES`, 289 B: its record header on disk
    /// and its index memory); at least one largest item.
    pub mailbox_quota_bytes: u64,
    /// Items one mailbox may hold; at least 1.
    pub mailbox_items_max: u64,
    /// TTL of a push that names none, in seconds; at least 1.
    pub ttl_default_secs: u32,
    /// Largest TTL a push may ask for (larger ones are capped); at least `ttl_default_secs`.
    pub ttl_max_secs: u32,
    /// Requests one connection may have in flight, 1..=4096.
    pub inflight_max: u32,
    /// Most items one pull page holds; at least 1.
    pub pull_items_max: u32,
    /// Most ciphertext bytes one pull page holds (the first item is always returned, however
    /// big). Together with `pull_items_max` a full page must fit one frame, which bounds it
    /// to about 900 KiB at 1000 items per page.
    pub pull_bytes_max: u32,
}

/// How many connections, for how long, how fast.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionsConfig {
    /// Connections open at once; new ones beyond it are refused.
    pub max: u32,
    /// A connection with no frame for this long is closed, in seconds.
    pub idle_timeout_secs: u64,
    /// New connections accepted per second from one IP address (sustained).
    pub per_ip_per_sec: u32,
    /// New connections one IP address may open at once before `per_ip_per_sec` applies.
    pub per_ip_burst: u32,
    /// Connections (handshaking or open) one source may hold at once: an IPv4 address or an
    /// IPv6 /64. Checked before the handshake, so one host cannot take every slot.
    pub per_source_max: u32,
    /// Of those, handshakes that have not opened their stream yet.
    pub handshakes_per_source_max: u32,
    /// Connections one device (endpoint id) may hold at once.
    pub per_device_max: u32,
    /// A connection must finish its handshake and open its stream within this long, in
    /// milliseconds.
    pub handshake_timeout_ms: u64,
    /// Bytes of replies one connection may leave unread (queued, not yet taken by QUIC); a
    /// peer that holds more is disconnected. At least 64 KiB.
    pub unread_bytes_max: u64,
    /// Bytes of replies all connections together may leave unread; at least
    /// `unread_bytes_max`.
    pub unread_bytes_total_max: u64,
    /// Bytes of request frames one connection may have in flight (read, not yet answered);
    /// at least one frame (1 MiB + 4 KiB).
    pub inflight_bytes_max: u64,
    /// Bytes of request frames all connections together may have in flight; at least
    /// `inflight_bytes_max`.
    pub inflight_bytes_total_max: u64,
}

/// Frame rates per device and for the whole relay (token buckets). A limited request is
/// answered `Error{rate_limited, retry_after_ms}`. None may be 0.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Frames per second one device may send (sustained).
    pub frames_per_device_per_sec: u32,
    /// Frames one device may send at once.
    pub frames_per_device_burst: u32,
    /// Frames per second one source (IPv4 address or IPv6 /64) may send, all its devices
    /// together (sustained): one host's share of the global budget.
    pub frames_per_source_per_sec: u32,
    /// Frames one source may send at once.
    pub frames_per_source_burst: u32,
    /// Frames per second the relay accepts from everyone together (sustained).
    pub frames_global_per_sec: u32,
    /// Frames the relay accepts at once from everyone together.
    pub frames_global_burst: u32,
}

/// The embedded store (a segment log) and its sweeper.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Most pushes in one group commit (one flush acknowledges them all).
    pub commit_max_items: u32,
    /// Seconds between two sweeps of expired items.
    pub sweep_interval_secs: u64,
    /// Most items one sweep slice evicts before letting pushes through again.
    pub sweep_slice_items: u32,
    /// Size at which a log segment is closed and a new one started, in bytes (at least
    /// 1 MiB). Disk space comes back a whole segment at a time.
    pub segment_bytes: u64,
    /// Bytes all mailboxes together may be charged (ciphertext plus the per-item charge);
    /// pushes beyond it are refused `quota_exceeded` with a retry hint until items expire.
    pub max_bytes: u64,
    /// Index entries all mailboxes together may hold: one per item plus 64 per mailbox the
    /// relay knows. Bounds the index's memory (~200 B per entry).
    pub max_items: u64,
    /// Pushes are refused while the store's filesystem has less free space than this, in
    /// bytes; 0 turns the floor off.
    pub min_free_disk_bytes: u64,
}

/// Who may create mailboxes on this relay, and how fast (a mailbox is created by the first
/// Join of a group key the relay holds nothing for).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionSettings {
    /// `open`: any device may create mailboxes (a personal or LAN relay); `token`: only Joins
    /// carrying an admission token from `zerok-relay admit` (a public relay).
    pub mode: AdmissionModeArg,
    /// New mailboxes one device may create per hour (both modes); at least 1.
    pub mailboxes_per_device_per_hour: u32,
    /// New mailboxes one source address (IPv6: its /64) may create per hour; at least 1.
    pub mailboxes_per_source_per_hour: u32,
}

/// `admission.mode` and `--admission`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AdmissionModeArg {
    /// Any device may create mailboxes.
    #[default]
    Open,
    /// Only holders of this relay's admission tokens may create mailboxes.
    Token,
}

impl AdmissionSettings {
    /// The settings as the admission component takes them.
    pub fn to_config(&self) -> zerok_actors::relay::admission::AdmissionConfig {
        zerok_actors::relay::admission::AdmissionConfig {
            mode: match self.mode {
                AdmissionModeArg::Open => zerok_actors::relay::admission::AdmissionMode::Open,
                AdmissionModeArg::Token => zerok_actors::relay::admission::AdmissionMode::Token,
            },
            mailboxes_per_device_per_hour: self.mailboxes_per_device_per_hour,
            mailboxes_per_source_per_hour: self.mailboxes_per_source_per_hour,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        require_positive(
            "admission.mailboxes_per_device_per_hour",
            self.mailboxes_per_device_per_hour.into(),
        )?;
        require_positive(
            "admission.mailboxes_per_source_per_hour",
            self.mailboxes_per_source_per_hour.into(),
        )
    }
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        // Open: the embedded default is a personal relay; a public one sets `token`. The rates
        // are the admission component's documented defaults.
        Self {
            mode: AdmissionModeArg::Open,
            mailboxes_per_device_per_hour:
                zerok_actors::relay::admission::MAILBOXES_PER_DEVICE_PER_HOUR_DEFAULT,
            mailboxes_per_source_per_hour:
                zerok_actors::relay::admission::MAILBOXES_PER_SOURCE_PER_HOUR_DEFAULT,
        }
    }
}

/// How a stop signal (SIGINT, SIGTERM) is handled.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Seconds between the signal and a forced exit: sessions are told `Bye` and durable
    /// writes finish within it. 1..=60.
    pub grace_secs: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DATA_DIR_DEFAULT),
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), QUIC_PORT_DEFAULT),
            // Localhost: the endpoints are for the operator's scraper and probes on this
            // machine, not for the internet (DESIGN.md §7).
            http: Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                HTTP_PORT_DEFAULT,
            )),
            advertise: Vec::new(),
            log_format: LogFormat::Pretty,
            limits: LimitsConfig::default(),
            connections: ConnectionsConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            store: StoreConfig::default(),
            shutdown: ShutdownConfig::default(),
            admission: AdmissionSettings::default(),
            content: ContentSettings::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            // The protocol's maximum: records bigger than this go by content reference.
            blob_bytes_max: 1024 * 1024,
            // 100 MiB: a small team's backlog of a week without one group filling the disk.
            mailbox_quota_bytes: 100 * 1024 * 1024,
            // 100,000: a busy group's week; a fifth of the relay's default item budget.
            mailbox_items_max: zerok_actors::relay::blob_store::core::MAILBOX_ITEMS_MAX_DEFAULT,
            // A week: a laptop that was off over a holiday still catches up.
            ttl_default_secs: 7 * 24 * 3600,
            // A month: long enough for any sync gap, short enough that a relay forgets.
            ttl_max_secs: 30 * 24 * 3600,
            inflight_max: zerok_messages::wire::MAX_INFLIGHT_DEFAULT,
            // 1000 small records make one round trip for a typical catch-up.
            pull_items_max: 1000,
            // 512 KiB: with 1000 items of overhead a full page stays inside one frame
            // (1 MiB + 4 KiB), and a catch-up of large records still moves ~0.5 MiB a trip.
            pull_bytes_max: 512 * 1024,
        }
    }
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        Self {
            // 10 000: one machine's worth of mostly idle devices (DESIGN.md §8).
            max: 10_000,
            // 5 minutes: clients ping more often than that; a silent peer is gone.
            idle_timeout_secs: 300,
            // 20/s and 50 at once: a NAT full of devices reconnecting after an outage
            // gets through within seconds, a flood from one address does not.
            per_ip_per_sec: 20,
            per_ip_burst: 50,
            // A household or office behind one NAT: a few devices per person, a connection
            // per relay each, reconnects overlapping old connections. 32 × (1 MiB QUIC window
            // + budgets below) keeps one host far from the relay's memory budget.
            per_source_max: 32,
            // Handshakes take a round trip or two; 8 at once is a burst of reconnects.
            handshakes_per_source_max: 8,
            // One connection per relay, a reconnect overlapping the old one, a CLI beside
            // the app.
            per_device_max: 4,
            // A handshake is one or two round trips: 5 s covers a slow mobile link, and a
            // half-open dial holds its slot no longer.
            handshake_timeout_ms: 5_000,
            // 2 MiB: a pull page (512 KiB) streaming plus a thousand live deliveries.
            unread_bytes_max: 2 * 1024 * 1024,
            // 64 MiB for everyone: what the relay's memory budget can give to slow readers.
            unread_bytes_total_max: 64 * 1024 * 1024,
            // 4 MiB: 256 pipelined 1 KiB pushes, or 3 full-size items at once.
            inflight_bytes_max: 4 * 1024 * 1024,
            // 64 MiB for everyone: pushes wait for the disk in here.
            inflight_bytes_total_max: 64 * 1024 * 1024,
        }
    }
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            // A busy device syncs hundreds of records a second; 2000 (4000 at once) leaves
            // headroom for catch-up pulls and pipelined pushes.
            frames_per_device_per_sec: 2000,
            frames_per_device_burst: 4000,
            // A quarter of the global budget: one host with any number of device keys
            // leaves three quarters for everyone else.
            frames_per_source_per_sec: 25_000,
            frames_per_source_burst: 50_000,
            // Around what one machine's store commits; beyond it, queueing only adds latency.
            frames_global_per_sec: 100_000,
            frames_global_burst: 200_000,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            // 4096: a batch of small pushes flushes in about one fsync's time.
            commit_max_items: 4096,
            // A minute: expiry is in days, so sweeping more often only costs I/O.
            sweep_interval_secs: 60,
            // 1000 deletions take milliseconds, so a sweep never stalls pushes for long.
            sweep_slice_items: 1000,
            // 64 MiB: the hot mailbox heads of a small relay stay in memory.
            segment_bytes: 64 * 1024 * 1024,
            max_bytes: STORE_MAX_BYTES_DEFAULT,
            max_items: STORE_MAX_ITEMS_DEFAULT,
            min_free_disk_bytes: STORE_MIN_FREE_DISK_BYTES_DEFAULT,
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        // 8 s of grace leaves 2 s of the 10 s promise (DESIGN.md §7) for closing the store.
        Self { grace_secs: 8 }
    }
}

/// Why a configuration could not be used. Every message is one line that names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type, or a key is unknown.
    #[error("config {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// `line L, column C: what`, one line.
        message: String,
    },
    /// A value is out of its range.
    #[error("config{}: invalid value for {field}: {reason}", origin(path.as_deref()))]
    Invalid {
        /// The file the values came from; `None` for defaults and flags only.
        path: Option<PathBuf>,
        /// Dotted key, e.g. `limits.ttl_max_secs`.
        field: &'static str,
        /// What the value must be.
        reason: String,
    },
}

fn origin(path: Option<&Path>) -> String {
    path.map(|path| format!(" {}", path.display()))
        .unwrap_or_default()
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: None,
        field,
        reason: reason.into(),
    }
}

fn require_positive(field: &'static str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(field, "must be at least 1"));
    }
    Ok(())
}

impl RelayConfig {
    /// The configuration of `path`, validated; the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<RelayConfig, ConfigError> {
        let config = Self::read(path)?;
        config.validate().map_err(|err| err.in_file(path))?;
        Ok(config)
    }

    /// Parse a configuration from TOML text without validating it; `path` only names the
    /// origin in errors.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<RelayConfig, ConfigError> {
        toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_path_buf(),
            message: one_line_parse_error(&err, text),
        })
    }

    fn read(path: Option<&Path>) -> Result<RelayConfig, ConfigError> {
        let Some(path) = path else {
            return Ok(RelayConfig::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, path)
    }

    /// Check every value against its range and the values against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if self.advertise.len() > zerok_messages::addr::RELAY_ADDR_SOCKETS_MAX {
            return Err(invalid(
                "advertise",
                format!(
                    "at most {} addresses",
                    zerok_messages::addr::RELAY_ADDR_SOCKETS_MAX
                ),
            ));
        }
        self.limits.validate()?;
        self.connections.validate()?;
        self.rate_limits.validate()?;
        self.store.validate()?;
        self.shutdown.validate()?;
        self.content.validate()?;
        self.admission.validate()
    }
}

impl ConfigError {
    /// Attribute a validation error to the file the values came from.
    fn in_file(self, file: Option<&Path>) -> ConfigError {
        match self {
            ConfigError::Invalid {
                path: None,
                field,
                reason,
            } => ConfigError::Invalid {
                path: file.map(Path::to_path_buf),
                field,
                reason,
            },
            other => other,
        }
    }
}

impl LimitsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let blob_bytes_max_limit = BLOB_BYTES_MAX as u64;
        if !(1..=blob_bytes_max_limit).contains(&u64::from(self.blob_bytes_max)) {
            return Err(invalid(
                "limits.blob_bytes_max",
                format!("must be in 1..={blob_bytes_max_limit}"),
            ));
        }
        let one_item = charged_bytes(u64::from(self.blob_bytes_max));
        if self.mailbox_quota_bytes < one_item {
            return Err(invalid(
                "limits.mailbox_quota_bytes",
                format!(
                    "must be >= {one_item} (blob_bytes_max plus the per-item charge of \
                     {ITEM_CHARGE_BYTES}) so a mailbox holds at least one item"
                ),
            ));
        }
        require_positive("limits.mailbox_items_max", self.mailbox_items_max)?;
        require_positive("limits.ttl_default_secs", self.ttl_default_secs.into())?;
        if self.ttl_max_secs < self.ttl_default_secs {
            return Err(invalid(
                "limits.ttl_max_secs",
                format!("must be >= ttl_default_secs ({})", self.ttl_default_secs),
            ));
        }
        if !(1..=INFLIGHT_MAX_LIMIT).contains(&self.inflight_max) {
            return Err(invalid(
                "limits.inflight_max",
                format!("must be in 1..={INFLIGHT_MAX_LIMIT}"),
            ));
        }
        require_positive("limits.pull_items_max", self.pull_items_max.into())?;
        require_positive("limits.pull_bytes_max", self.pull_bytes_max.into())?;
        let page_bytes_max = pull_page_bytes_max(self.pull_items_max);
        if page_bytes_max == 0 {
            return Err(invalid(
                "limits.pull_items_max",
                format!(
                    "must be < {} so a page of that many items fits one frame",
                    (FRAME_BYTES_MAX as u64 - PULL_PAGE_OVERHEAD_BYTES) / PULL_ITEM_OVERHEAD_BYTES
                ),
            ));
        }
        if u64::from(self.pull_bytes_max) > page_bytes_max {
            return Err(invalid(
                "limits.pull_bytes_max",
                format!(
                    "must be <= {page_bytes_max} so a page of pull_items_max ({}) items fits one \
                     frame",
                    self.pull_items_max
                ),
            ));
        }
        Ok(())
    }

    /// The limits announced to clients in `Welcome`.
    pub fn to_wire(&self) -> Limits {
        Limits {
            frame_bytes_max: u32::try_from(FRAME_BYTES_MAX).expect("FRAME_BYTES_MAX fits in u32"),
            blob_bytes_max: self.blob_bytes_max,
            mailbox_quota_bytes: self.mailbox_quota_bytes,
            ttl_default_secs: self.ttl_default_secs,
            ttl_max_secs: self.ttl_max_secs,
            inflight_max: self.inflight_max,
            pull_items_max: self.pull_items_max,
            pull_bytes_max: self.pull_bytes_max,
        }
    }
}

/// Most ciphertext bytes a page of `items` items may carry and still encode into one frame;
/// 0 when even empty items would not fit.
pub fn pull_page_bytes_max(items: u32) -> u64 {
    (FRAME_BYTES_MAX as u64)
        .saturating_sub(PULL_PAGE_OVERHEAD_BYTES)
        .saturating_sub(u64::from(items) * PULL_ITEM_OVERHEAD_BYTES)
}

impl ConnectionsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        require_positive("connections.max", self.max.into())?;
        require_positive("connections.idle_timeout_secs", self.idle_timeout_secs)?;
        require_positive("connections.per_ip_per_sec", self.per_ip_per_sec.into())?;
        require_positive("connections.per_ip_burst", self.per_ip_burst.into())?;
        require_positive("connections.per_source_max", self.per_source_max.into())?;
        require_positive(
            "connections.handshakes_per_source_max",
            self.handshakes_per_source_max.into(),
        )?;
        require_positive("connections.per_device_max", self.per_device_max.into())?;
        require_positive(
            "connections.handshake_timeout_ms",
            self.handshake_timeout_ms,
        )?;
        if self.unread_bytes_max < UNREAD_BYTES_MIN {
            return Err(invalid(
                "connections.unread_bytes_max",
                format!("must be at least {UNREAD_BYTES_MIN} (64 KiB)"),
            ));
        }
        if self.unread_bytes_total_max < self.unread_bytes_max {
            return Err(invalid(
                "connections.unread_bytes_total_max",
                "must be >= unread_bytes_max",
            ));
        }
        let frame = FRAME_BYTES_MAX as u64;
        if self.inflight_bytes_max < frame {
            return Err(invalid(
                "connections.inflight_bytes_max",
                format!("must be at least one frame ({frame} bytes)"),
            ));
        }
        if self.inflight_bytes_total_max < self.inflight_bytes_max {
            return Err(invalid(
                "connections.inflight_bytes_total_max",
                "must be >= inflight_bytes_max",
            ));
        }
        for (field, value) in [
            ("connections.unread_bytes_max", self.unread_bytes_max),
            (
                "connections.unread_bytes_total_max",
                self.unread_bytes_total_max,
            ),
            ("connections.inflight_bytes_max", self.inflight_bytes_max),
            (
                "connections.inflight_bytes_total_max",
                self.inflight_bytes_total_max,
            ),
        ] {
            if value > BYTE_BUDGET_LIMIT {
                return Err(invalid(
                    field,
                    format!("must be at most {BYTE_BUDGET_LIMIT}"),
                ));
            }
        }
        Ok(())
    }
}

impl RateLimitsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        require_positive(
            "rate_limits.frames_per_device_per_sec",
            self.frames_per_device_per_sec.into(),
        )?;
        require_positive(
            "rate_limits.frames_per_device_burst",
            self.frames_per_device_burst.into(),
        )?;
        require_positive(
            "rate_limits.frames_per_source_per_sec",
            self.frames_per_source_per_sec.into(),
        )?;
        require_positive(
            "rate_limits.frames_per_source_burst",
            self.frames_per_source_burst.into(),
        )?;
        require_positive(
            "rate_limits.frames_global_per_sec",
            self.frames_global_per_sec.into(),
        )?;
        require_positive(
            "rate_limits.frames_global_burst",
            self.frames_global_burst.into(),
        )
    }
}

impl StoreConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        require_positive("store.commit_max_items", self.commit_max_items.into())?;
        require_positive("store.sweep_interval_secs", self.sweep_interval_secs)?;
        require_positive("store.sweep_slice_items", self.sweep_slice_items.into())?;
        if self.segment_bytes < SEGMENT_BYTES_MIN {
            return Err(invalid(
                "store.segment_bytes",
                format!("must be at least {SEGMENT_BYTES_MIN} (1 MiB)"),
            ));
        }
        let one_item = charged_bytes(BLOB_BYTES_MAX as u64);
        if self.max_bytes < one_item {
            return Err(invalid(
                "store.max_bytes",
                format!("must be >= {one_item} so the relay holds at least one largest item"),
            ));
        }
        let one_mailbox = 1 + MAILBOX_INDEX_ENTRIES;
        if self.max_items < one_mailbox {
            return Err(invalid(
                "store.max_items",
                format!("must be >= {one_mailbox} so the relay holds at least one item"),
            ));
        }
        Ok(())
    }
}

impl ShutdownConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=GRACE_SECS_LIMIT).contains(&self.grace_secs) {
            return Err(invalid(
                "shutdown.grace_secs",
                format!("must be in 1..={GRACE_SECS_LIMIT}"),
            ));
        }
        Ok(())
    }
}

/// `line L, column C: message (near `source line`)`: toml's own rendering spans several
/// lines (a snippet with a caret), which log collectors split apart.
fn one_line_parse_error(err: &toml::de::Error, text: &str) -> String {
    let message = err
        .message()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let Some(span) = err.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    let column = text[line_start..start].chars().count() + 1;
    let source_line = text[line_start..].lines().next().unwrap_or("").trim();
    const SOURCE_CHARS_MAX: usize = 80;
    if source_line.is_empty() {
        return format!("line {line}, column {column}: {message}");
    }
    let excerpt: String = source_line.chars().take(SOURCE_CHARS_MAX).collect();
    format!("line {line}, column {column}: {message} (at `{excerpt}`)")
}

/// `ADDR:PORT`, or `off` for none.
fn parse_http_addr(text: &str) -> Result<Option<SocketAddr>, String> {
    if text == HTTP_OFF {
        return Ok(None);
    }
    text.parse::<SocketAddr>()
        .map(Some)
        .map_err(|err| format!("{err}: expected ADDR:PORT or \"{HTTP_OFF}\", got {text:?}"))
}

fn deserialize_http<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_http_addr(&text).map_err(serde::de::Error::custom)
}

/// The value of `--http`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpAddrArg(pub Option<SocketAddr>);

impl FromStr for HttpAddrArg {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_http_addr(text).map(HttpAddrArg)
    }
}

/// Command line of `zerok-relay`. Flags override the file's values.
#[derive(Debug, Clone, PartialEq, Parser)]
#[command(
    name = "zerok-relay",
    version,
    about = "0k-sync relay: stores and forwards end-to-end-encrypted records it cannot read"
)]
pub struct Cli {
    /// TOML configuration file; without it every option has its default.
    #[arg(long, global = true, value_name = "PATH", env = "ZEROK_RELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (store, node key, relay.addr).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// UDP address of the QUIC endpoint.
    #[arg(long, value_name = "ADDR:PORT")]
    pub bind: Option<SocketAddr>,
    /// TCP address of /health, /ready, /metrics, or `off`.
    #[arg(long, value_name = "ADDR:PORT|off")]
    pub http: Option<HttpAddrArg>,
    /// Address to advertise in relay.addr instead of the bound one (repeatable).
    #[arg(long, value_name = "ADDR:PORT")]
    pub advertise: Vec<SocketAddr>,
    /// Log line format.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Who may create mailboxes: `open` (personal or LAN relay) or `token` (public relay).
    #[arg(long, value_enum, value_name = "MODE")]
    pub admission: Option<AdmissionModeArg>,
    /// Run a command instead of the relay.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Commands besides running the relay.
#[derive(Debug, Clone, PartialEq, clap::Subcommand)]
pub enum Command {
    /// Print an admission token (a secret) that lets its holder create mailboxes on this
    /// relay in `token` mode. Signed with the relay's node key in the data dir.
    Admit {
        /// How many mailboxes the token may create (a group uses one per key epoch).
        #[arg(long, default_value_t = 1, value_name = "N")]
        mailboxes: u32,
        /// Days until the token expires (mailboxes it created stay).
        #[arg(long, default_value_t = 30, value_name = "D")]
        valid_days: u64,
    },
    /// Verify the store of a stopped relay offline (every record's CRC and blob id) and print
    /// what was found: exit 0 when it is clean, 1 when anything is damaged, 2 when the store
    /// is in use by a running relay or cannot be read.
    Check,
}

impl Cli {
    /// The file's configuration (or the defaults) with the flags applied, validated.
    pub fn resolve(&self) -> Result<RelayConfig, ConfigError> {
        let path = self.config.as_deref();
        let mut config = RelayConfig::read(path)?;
        if let Some(data_dir) = &self.data_dir {
            config.data_dir.clone_from(data_dir);
        }
        if let Some(bind) = self.bind {
            config.bind = bind;
        }
        if let Some(HttpAddrArg(http)) = self.http {
            config.http = http;
        }
        if !self.advertise.is_empty() {
            config.advertise.clone_from(&self.advertise);
        }
        if let Some(log_format) = self.log_format {
            config.log_format = log_format;
        }
        if let Some(mode) = self.admission {
            config.admission.mode = mode;
        }
        config.validate().map_err(|err| err.in_file(path))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use zerok_messages::{BlobId, Cursor, Frame, Item, ReqId};

    /// A file in the system temp dir, unique to this process and test, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> TempFile {
            let path = std::env::temp_dir().join(format!(
                "zerok-relay-config-{}-{name}.toml",
                std::process::id()
            ));
            std::fs::write(&path, text).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn parse(text: &str) -> Result<RelayConfig, ConfigError> {
        let config = RelayConfig::from_toml_str(text, Path::new("test.toml"))?;
        config
            .validate()
            .map_err(|err| err.in_file(Some(Path::new("test.toml"))))?;
        Ok(config)
    }

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("zerok-relay").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_are_the_documented_values_and_valid() {
        let config = RelayConfig::load(None).unwrap();
        assert_eq!(config, RelayConfig::default());
        assert_eq!(config.data_dir, PathBuf::from("./zerok-relay-data"));
        assert_eq!(config.bind, "0.0.0.0:7340".parse().unwrap());
        assert_eq!(config.http, Some("127.0.0.1:7341".parse().unwrap()));
        assert_eq!(config.log_format, LogFormat::Pretty);
        assert_eq!(config.limits.blob_bytes_max, 1_048_576);
        assert_eq!(config.limits.mailbox_quota_bytes, 100 * 1_048_576);
        assert_eq!(config.limits.ttl_default_secs, 604_800);
        assert_eq!(config.limits.ttl_max_secs, 2_592_000);
        assert_eq!(config.limits.inflight_max, 256);
        assert_eq!(config.connections.max, 10_000);
        assert_eq!(config.rate_limits.frames_global_burst, 200_000);
        assert_eq!(config.store.commit_max_items, 4096);
        assert_eq!(config.limits.mailbox_items_max, 100_000);
        assert_eq!(config.store.max_bytes, 10 * 1024 * 1_048_576);
        assert_eq!(config.store.max_items, 20_000_000);
        assert_eq!(config.store.min_free_disk_bytes, 512 * 1_048_576);
        assert_eq!(config.shutdown.grace_secs, 8);
        // An empty file is the defaults too.
        assert_eq!(parse("").unwrap(), RelayConfig::default());
    }

    #[test]
    fn file_values_are_read_and_missing_keys_default() {
        let config = parse(
            "data_dir = \"/srv/relay\"\nlog_format = \"json\"\n[limits]\nttl_default_secs = 60\n\
             [store]\nsweep_interval_secs = 5\n",
        )
        .unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/srv/relay"));
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.limits.ttl_default_secs, 60);
        assert_eq!(config.limits.ttl_max_secs, 30 * 24 * 3600);
        assert_eq!(config.store.sweep_interval_secs, 5);
        assert_eq!(config.store.commit_max_items, 4096);
    }

    #[test]
    fn flags_override_file_values() {
        let file = TempFile::new(
            "flags",
            "data_dir = \"/from/file\"\nbind = \"10.0.0.1:1\"\nhttp = \"10.0.0.1:2\"\n\
             log_format = \"pretty\"\n[limits]\nttl_default_secs = 60\n",
        );
        let path = file.0.to_str().unwrap();

        let from_file = cli(&["--config", path]).resolve().unwrap();
        assert_eq!(from_file.data_dir, PathBuf::from("/from/file"));
        assert_eq!(from_file.bind, "10.0.0.1:1".parse().unwrap());
        assert_eq!(from_file.http, Some("10.0.0.1:2".parse().unwrap()));

        let data_dir = cli(&["--config", path, "--data-dir", "/from/flag"])
            .resolve()
            .unwrap();
        assert_eq!(data_dir.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(data_dir.bind, "10.0.0.1:1".parse().unwrap());

        let bind = cli(&["--config", path, "--bind", "127.0.0.1:9000"])
            .resolve()
            .unwrap();
        assert_eq!(bind.bind, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(bind.data_dir, PathBuf::from("/from/file"));

        let http = cli(&["--config", path, "--http", "[::1]:9001"])
            .resolve()
            .unwrap();
        assert_eq!(http.http, Some("[::1]:9001".parse().unwrap()));
        let http_off = cli(&["--config", path, "--http", "off"]).resolve().unwrap();
        assert_eq!(http_off.http, None);

        let json = cli(&["--config", path, "--log-format", "json"])
            .resolve()
            .unwrap();
        assert_eq!(json.log_format, LogFormat::Json);
        // Values no flag touches stay the file's.
        assert_eq!(json.limits.ttl_default_secs, 60);
    }

    #[test]
    fn flags_without_a_file_override_the_defaults() {
        let config = cli(&["--data-dir", "/d", "--http", "off"])
            .resolve()
            .unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/d"));
        assert_eq!(config.http, None);
        assert_eq!(config.bind, RelayConfig::default().bind);
    }

    #[test]
    fn bad_flag_values_are_refused_by_the_parser() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("zerok-relay").chain(args.iter().copied()))
        };
        assert!(parse(&["--bind", "nope"]).is_err());
        assert!(parse(&["--http", "on"]).is_err());
        assert!(parse(&["--log-format", "xml"]).is_err());
        assert!(parse(&["--unknown"]).is_err());
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_key() {
        let top = parse("data_dri = \"/x\"\n").unwrap_err().to_string();
        assert!(top.contains("unknown field `data_dri`"), "{top}");
        assert!(
            top.starts_with("config test.toml: line 1, column 1:"),
            "{top}"
        );

        let nested = parse("[limits]\nblob_bytes = 5\n").unwrap_err().to_string();
        assert!(nested.contains("unknown field `blob_bytes`"), "{nested}");
        assert!(nested.contains("line 2"), "{nested}");

        let section = parse("[limts]\n").unwrap_err().to_string();
        assert!(section.contains("`limts`"), "{section}");
    }

    #[test]
    fn bad_socket_addresses_are_refused() {
        let bind = parse("bind = \"localhost\"\n").unwrap_err();
        assert!(matches!(bind, ConfigError::Parse { .. }), "{bind:?}");
        let bind = bind.to_string();
        assert!(bind.contains("line 1"), "{bind}");
        assert!(bind.contains("bind = \"localhost\""), "{bind}");

        let http = parse("http = \"127.0.0.1\"\n").unwrap_err().to_string();
        assert!(http.contains("expected ADDR:PORT or \"off\""), "{http}");
        let http = parse("http = 7341\n").unwrap_err().to_string();
        assert!(http.contains("line 1"), "{http}");
    }

    #[test]
    fn http_off_disables_http() {
        assert_eq!(parse("http = \"off\"\n").unwrap().http, None);
        assert_eq!(
            parse("http = \"0.0.0.0:8080\"\n").unwrap().http,
            Some("0.0.0.0:8080".parse().unwrap())
        );
    }

    #[test]
    fn ttl_max_below_ttl_default_is_refused() {
        let err = parse("[limits]\nttl_default_secs = 100\nttl_max_secs = 99\n").unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    field: "limits.ttl_max_secs",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "config test.toml: invalid value for limits.ttl_max_secs: must be >= \
             ttl_default_secs (100)"
        );
        assert!(parse("[limits]\nttl_default_secs = 100\nttl_max_secs = 100\n").is_ok());
    }

    #[test]
    fn zero_rates_are_refused() {
        for key in [
            "frames_per_device_per_sec",
            "frames_per_device_burst",
            "frames_global_per_sec",
            "frames_global_burst",
        ] {
            let err = parse(&format!("[rate_limits]\n{key} = 0\n")).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(&format!("invalid value for rate_limits.{key}:")),
                "{text}"
            );
            assert!(parse(&format!("[rate_limits]\n{key} = 1\n")).is_ok());
        }
        let err = parse("[connections]\nper_ip_per_sec = 0\n").unwrap_err();
        assert!(err.to_string().contains("connections.per_ip_per_sec"));
    }

    #[test]
    fn ranges_are_enforced() {
        let field = |text: &str| match parse(text) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected invalid, got {other:?}"),
        };
        assert_eq!(
            field("[limits]\nblob_bytes_max = 1048577\n"),
            "limits.blob_bytes_max"
        );
        assert_eq!(
            field("[limits]\nblob_bytes_max = 0\n"),
            "limits.blob_bytes_max"
        );
        assert_eq!(
            field("[limits]\ninflight_max = 4097\n"),
            "limits.inflight_max"
        );
        assert_eq!(field("[limits]\ninflight_max = 0\n"), "limits.inflight_max");
        assert_eq!(
            field("[limits]\nmailbox_quota_bytes = 1000\n"),
            "limits.mailbox_quota_bytes"
        );
        assert_eq!(
            field("[limits]\npull_bytes_max = 4194304\n"),
            "limits.pull_bytes_max"
        );
        assert_eq!(
            field("[limits]\npull_items_max = 100000\n"),
            "limits.pull_items_max"
        );
        assert_eq!(field("[shutdown]\ngrace_secs = 0\n"), "shutdown.grace_secs");
        assert_eq!(
            field("[shutdown]\ngrace_secs = 61\n"),
            "shutdown.grace_secs"
        );
        assert_eq!(
            field("[store]\ncommit_max_items = 0\n"),
            "store.commit_max_items"
        );
        assert_eq!(field("data_dir = \"\"\n"), "data_dir");
        assert_eq!(
            field("[limits]\nmailbox_quota_bytes = 1048576\n"),
            "limits.mailbox_quota_bytes"
        );
        assert_eq!(
            field("[limits]\nmailbox_items_max = 0\n"),
            "limits.mailbox_items_max"
        );
        assert_eq!(field("[store]\nmax_bytes = 1048576\n"), "store.max_bytes");
        assert_eq!(field("[store]\nmax_items = 64\n"), "store.max_items");
        assert!(parse("[store]\nmax_items = 65\nmin_free_disk_bytes = 0\n").is_ok());
        assert!(parse("[limits]\nblob_bytes_max = 1048576\ninflight_max = 4096\n").is_ok());
        assert!(parse("[shutdown]\ngrace_secs = 60\n").is_ok());
        // A negative number does not fit the unsigned field: a parse error, not a wrap.
        assert!(matches!(
            parse("[limits]\nttl_max_secs = -1\n"),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn parse_errors_are_one_line_with_a_position() {
        for text in [
            "bind = \n",
            "[limits\n",
            "x = 1\n",
            "[limits]\nttl_max_secs = \"long\"\n",
            "data_dir = \"a\"\ndata_dir = \"b\"\n",
        ] {
            let err = parse(text).unwrap_err();
            assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
            let message = err.to_string();
            assert!(!message.contains('\n'), "{message:?}");
            assert!(message.starts_with("config test.toml: line "), "{message}");
        }
    }

    #[test]
    fn read_and_invalid_errors_name_the_file() {
        let missing = RelayConfig::load(Some(Path::new("/nonexistent/zerok/relay.toml")))
            .unwrap_err()
            .to_string();
        assert!(
            missing.starts_with("config /nonexistent/zerok/relay.toml: cannot read:"),
            "{missing}"
        );

        let file = TempFile::new("invalid", "[shutdown]\ngrace_secs = 0\n");
        let invalid = RelayConfig::load(Some(&file.0)).unwrap_err().to_string();
        assert_eq!(
            invalid,
            format!(
                "config {}: invalid value for shutdown.grace_secs: must be in 1..=60",
                file.0.display()
            )
        );
        let via_cli = cli(&["--config", file.0.to_str().unwrap()])
            .resolve()
            .unwrap_err()
            .to_string();
        assert_eq!(via_cli, invalid);
        // clap refuses an empty --data-dir itself; a Cli built in code reaches validation.
        assert!(
            Cli::try_parse_from(["zerok-relay", "--data-dir", ""]).is_err(),
            "clap accepts an empty path"
        );
        let empty_data_dir = Cli {
            data_dir: Some(PathBuf::new()),
            ..cli(&[])
        };
        let no_file = empty_data_dir.resolve().unwrap_err().to_string();
        assert_eq!(
            no_file,
            "config: invalid value for data_dir: must not be empty"
        );
    }

    #[test]
    fn the_example_config_documents_the_defaults() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/relay.toml"));
        let config = RelayConfig::load(Some(path)).unwrap();
        assert_eq!(config, RelayConfig::default());
        // Every option is spelled out: no key of the defaults is left implicit.
        let text = std::fs::read_to_string(path).unwrap();
        for key in [
            "data_dir",
            "bind",
            "http",
            "log_format",
            "[limits]",
            "blob_bytes_max",
            "mailbox_quota_bytes",
            "ttl_default_secs",
            "ttl_max_secs",
            "inflight_max",
            "pull_items_max",
            "pull_bytes_max",
            "[connections]",
            "max",
            "idle_timeout_secs",
            "per_ip_per_sec",
            "per_ip_burst",
            "per_source_max",
            "handshakes_per_source_max",
            "per_device_max",
            "handshake_timeout_ms",
            "unread_bytes_max",
            "unread_bytes_total_max",
            "inflight_bytes_max",
            "inflight_bytes_total_max",
            "[rate_limits]",
            "frames_per_device_per_sec",
            "frames_per_device_burst",
            "frames_per_source_per_sec",
            "frames_per_source_burst",
            "frames_global_per_sec",
            "frames_global_burst",
            "[store]",
            "commit_max_items",
            "sweep_interval_secs",
            "sweep_slice_items",
            "segment_bytes",
            "max_bytes",
            "max_items",
            "min_free_disk_bytes",
            "mailbox_items_max",
            "[shutdown]",
            "grace_secs",
            "[admission]",
            "mode",
            "mailboxes_per_device_per_hour",
            "mailboxes_per_source_per_hour",
            "[content]",
            "enabled",
            "file_bytes_max",
            "connections_max",
        ] {
            let set = text.lines().any(|line| {
                let line = line.trim();
                line == key || line.starts_with(&format!("{key} ="))
            });
            assert!(set, "deploy/relay.toml does not set {key}");
        }
    }

    #[test]
    fn wire_limits_carry_the_configured_values() {
        let limits = LimitsConfig {
            blob_bytes_max: 1000,
            pull_items_max: 7,
            ..LimitsConfig::default()
        };
        let wire = limits.to_wire();
        assert_eq!(wire.blob_bytes_max, 1000);
        assert_eq!(wire.pull_items_max, 7);
        assert_eq!(wire.frame_bytes_max as usize, FRAME_BYTES_MAX);
        assert_eq!(wire.ttl_max_secs, limits.ttl_max_secs);
    }

    fn page(items: Vec<Item>) -> Frame {
        Frame::PullPage {
            req: ReqId(u64::MAX),
            items,
            next: Cursor(u64::MAX),
            has_more: true,
        }
    }

    fn item(ciphertext_bytes: usize) -> Item {
        Item {
            cursor: Cursor(u64::MAX),
            blob_id: BlobId([0xff; 32]),
            ciphertext: Bytes::from(vec![0xab; ciphertext_bytes]),
            stored_at_ms: u64::MAX,
        }
    }

    #[test]
    fn pull_overheads_bound_the_real_encoding() {
        let empty = zerok_messages::codec::encode(&page(Vec::new())).unwrap();
        assert!(
            empty.len() as u64 <= PULL_PAGE_OVERHEAD_BYTES,
            "{}",
            empty.len()
        );
        // Byte-string headers grow at 24, 256 and 65 536 bytes: cover each size class.
        for ciphertext_bytes in [0, 23, 255, 65_535, 70_000] {
            let items: Vec<Item> = (0..10).map(|_| item(ciphertext_bytes)).collect();
            let encoded = zerok_messages::codec::encode(&page(items)).unwrap();
            let bound = PULL_PAGE_OVERHEAD_BYTES
                + 10 * (PULL_ITEM_OVERHEAD_BYTES)
                + 10 * ciphertext_bytes as u64;
            assert!(
                encoded.len() as u64 <= bound,
                "{ciphertext_bytes}: {} > {bound}",
                encoded.len()
            );
        }
    }

    #[test]
    fn a_full_page_at_the_largest_valid_pull_bytes_max_encodes() {
        for pull_items_max in [1, 1000, LimitsConfig::default().pull_items_max] {
            let pull_bytes_max = pull_page_bytes_max(pull_items_max);
            let limits = LimitsConfig {
                pull_items_max,
                pull_bytes_max: u32::try_from(pull_bytes_max).unwrap(),
                ..LimitsConfig::default()
            };
            limits.validate().unwrap();
            let over = LimitsConfig {
                pull_bytes_max: limits.pull_bytes_max + 1,
                ..limits.clone()
            };
            assert!(over.validate().is_err());
            // pull_items_max items sharing pull_bytes_max of ciphertext: the worst page.
            let items_count = pull_items_max as usize;
            let each = pull_bytes_max as usize / items_count;
            let mut items: Vec<Item> = (0..items_count).map(|_| item(each)).collect();
            let rest = pull_bytes_max as usize - each * items_count;
            items[0] = item(each + rest);
            zerok_messages::codec::encode(&page(items)).unwrap();
        }
        // The default page is within the bound too.
        LimitsConfig::default().validate().unwrap();
    }

    #[test]
    fn admission_is_open_by_default_and_token_by_file_or_flag() {
        assert_eq!(
            RelayConfig::default().admission.mode,
            AdmissionModeArg::Open
        );
        let file =
            parse("[admission]\nmode = \"token\"\nmailboxes_per_device_per_hour = 3\n").unwrap();
        assert_eq!(file.admission.mode, AdmissionModeArg::Token);
        assert_eq!(file.admission.mailboxes_per_device_per_hour, 3);
        assert_eq!(
            file.admission.mailboxes_per_source_per_hour,
            zerok_actors::relay::admission::MAILBOXES_PER_SOURCE_PER_HOUR_DEFAULT
        );
        assert_eq!(
            cli(&["--admission", "token"])
                .resolve()
                .unwrap()
                .admission
                .mode,
            AdmissionModeArg::Token
        );
        assert!(parse("[admission]\nmode = \"closed\"\n").is_err());
        assert!(
            Cli::try_parse_from(["zerok-relay", "--admission", "closed"]).is_err(),
            "clap accepts an unknown mode"
        );
        let zero = parse("[admission]\nmailboxes_per_source_per_hour = 0\n").unwrap_err();
        assert!(
            zero.to_string()
                .contains("admission.mailboxes_per_source_per_hour"),
            "{zero}"
        );
    }

    #[test]
    fn admit_is_a_subcommand_that_takes_the_global_data_dir() {
        let parsed = cli(&[
            "admit",
            "--data-dir",
            "/d",
            "--mailboxes",
            "3",
            "--valid-days",
            "7",
        ]);
        assert_eq!(
            parsed.command,
            Some(Command::Admit {
                mailboxes: 3,
                valid_days: 7
            })
        );
        assert_eq!(parsed.resolve().unwrap().data_dir, PathBuf::from("/d"));
        let defaults = cli(&["admit"]);
        assert_eq!(
            defaults.command,
            Some(Command::Admit {
                mailboxes: 1,
                valid_days: 30
            })
        );
        assert_eq!(cli(&[]).command, None);
    }

    #[test]
    fn check_is_a_subcommand_that_takes_the_global_data_dir() {
        let parsed = cli(&["check", "--data-dir", "/d"]);
        assert_eq!(parsed.command, Some(Command::Check));
        assert_eq!(parsed.resolve().unwrap().data_dir, PathBuf::from("/d"));
    }
}
