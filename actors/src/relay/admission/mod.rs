//! Admission: who may create mailboxes on a relay, and how fast (issue 10, DESIGN.md §7).
//!
//! A mailbox is *created* by the first `Join` the relay admits for it: the store holds nothing
//! for it (latest cursor 0) and it was not admitted before. Joins of existing mailboxes are
//! never checked here. Creation is decided by [`Admission::admit`]:
//!
//! - **mode** — `open` (any device may create; for a personal or LAN relay) or `token` (the
//!   Join must carry an admission token signed by this relay; for a public relay).
//! - **rates** — in both modes at most N new mailboxes per device and M per source address
//!   (IPv6 by /64) per hour, refused with `rate_limited` and a retry hint.
//!
//! An [`AdmissionToken`] is minted by the operator (`zerok-relay admit`), signed with the
//! relay's node key (the Ed25519 key behind its id), and carries the relay id, a random token
//! id, a budget of mailboxes and an expiry. Its text is `ZKA1` + base32 of `CBOR ‖ checksum`
//! like invite tokens. It is a bearer secret: never logged (only its id is).
//!
//! In token mode admitted mailboxes and each token's usage are kept in an append-only
//! [ledger](LEDGER_FILE) in the data dir (64-byte records with a CRC, one `fdatasync` per
//! admission, mode 0600), so budgets and admissions survive restarts; a torn last record is
//! cut off at load. Its size is bounded by the budgets the operator hands out. In open mode
//! admissions are remembered in memory only, at most [`RECENT_ADMISSIONS_MAX`], so a device
//! re-joining a still-empty mailbox is not charged again.
//!
//! Sessions hold a [`SessionAdmission`] (the shared [`Admission`] plus the connection's
//! source address) and ask it in their `Join` path after reading the mailbox's latest cursor.

use crate::clock::Clock;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ledger::{LedgerFile, record_bytes};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};
use zerok_messages::sync::lock;
use zerok_messages::wire::AdmissionText;
use zerok_messages::{Cursor, DeviceId, ErrorCode, Frame, MailboxId, ReqId};

mod ledger;
mod token;

pub use ledger::{LEDGER_FILE, LedgerError};
pub use token::{
    AdmissionToken, MintError, TOKEN_ID_BYTES, TOKEN_MAILBOXES_MAX, TOKEN_PREFIX,
    TOKEN_VALID_DAYS_MAX, TokenError, TokenRefusal, relay_id_of, token_id_hex,
};

/// Admissions open mode remembers (≈64 B each, so ~4 MiB): enough that reconnecting devices
/// of recently created, still empty mailboxes are not charged again; the oldest is forgotten
/// first, which only means one more charge.
pub const RECENT_ADMISSIONS_MAX: usize = 65_536;
/// New mailboxes one device may create per hour, by default: a device is in a handful of
/// groups and each key rotation adds one mailbox per relay; 64 leaves room for both.
pub const MAILBOXES_PER_DEVICE_PER_HOUR_DEFAULT: u32 = 64;
/// New mailboxes one source address (IPv6: its /64) may create per hour, by default: a NAT
/// of a busy office; the per-device bound alone does not stop a host minting device keys.
pub const MAILBOXES_PER_SOURCE_PER_HOUR_DEFAULT: u32 = 256;
/// Idle rate-limit keys are forgotten once this many are tracked, so the limiters' memory is
/// bounded by recently active devices and sources.
const RATE_KEYS_SHRINK_AT: usize = 4096;
/// Retry hint when the ledger could not be written.
const UNAVAILABLE_RETRY_MS: u64 = 1000;

/// Who may create mailboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdmissionMode {
    /// Any device (within the rates): a personal or LAN relay.
    #[default]
    Open,
    /// Only Joins carrying a valid admission token of this relay: a public relay.
    Token,
}

/// Admission settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Open or token.
    pub mode: AdmissionMode,
    /// New mailboxes one device may create per hour.
    pub mailboxes_per_device_per_hour: u32,
    /// New mailboxes one source address (IPv6: its /64) may create per hour.
    pub mailboxes_per_source_per_hour: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            mode: AdmissionMode::Open,
            mailboxes_per_device_per_hour: MAILBOXES_PER_DEVICE_PER_HOUR_DEFAULT,
            mailboxes_per_source_per_hour: MAILBOXES_PER_SOURCE_PER_HOUR_DEFAULT,
        }
    }
}

/// Which creation rate refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreationScope {
    /// Per device.
    Device,
    /// Per source address.
    Source,
}

impl CreationScope {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CreationScope::Device => "mailbox_device",
            CreationScope::Source => "mailbox_source",
        }
    }
}

/// Why a Join that would create a mailbox was refused. `Display` is the client's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Token mode and the Join carried none.
    #[error(
        "admission token required: this relay creates mailboxes only for holders of its \
         admission tokens"
    )]
    TokenRequired,
    /// The token is unreadable or its signature is wrong.
    #[error("admission token invalid: {0}")]
    Invalid(String),
    /// The token is for another relay.
    #[error("admission token is for another relay")]
    OtherRelay,
    /// The token expired.
    #[error("admission token expired")]
    Expired,
    /// The token's budget is spent.
    #[error("admission token used up: its {0} mailboxes were all created")]
    UsedUp(u32),
    /// Too many new mailboxes from this device or address.
    #[error("too many new mailboxes from this {}", match scope { CreationScope::Device => "device", CreationScope::Source => "address" })]
    RateLimited {
        /// Which limit.
        scope: CreationScope,
        /// When to retry.
        retry_after: Duration,
    },
    /// The admission could not be recorded (disk); nothing was created.
    #[error("admission could not be recorded; retry later")]
    Unavailable,
}

impl Refusal {
    /// The protocol code of the refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::RateLimited { .. } => ErrorCode::RateLimited,
            Refusal::Unavailable => ErrorCode::Unavailable,
            _ => ErrorCode::Unauthorized,
        }
    }

    /// The `Error` frame answering the Join `req`.
    pub fn to_frame(&self, req: ReqId) -> Frame {
        let retry_after_ms = match self {
            Refusal::RateLimited { retry_after, .. } => Some(
                u64::try_from(retry_after.as_micros().div_ceil(1000))
                    .unwrap_or(u64::MAX)
                    .max(1),
            ),
            Refusal::Unavailable => Some(UNAVAILABLE_RETRY_MS),
            _ => None,
        };
        Frame::Error {
            req: Some(req),
            code: self.code(),
            message: self.to_string(),
            retry_after_ms,
        }
    }
}

impl From<TokenRefusal> for Refusal {
    fn from(refusal: TokenRefusal) -> Self {
        match refusal {
            TokenRefusal::OtherRelay => Refusal::OtherRelay,
            TokenRefusal::Expired => Refusal::Expired,
            TokenRefusal::BadSignature => Refusal::Invalid("bad signature".into()),
        }
    }
}

struct Ledger {
    /// Admitted mailboxes (token mode: all, from the file; open mode: the recent ones).
    admitted: HashSet<MailboxId>,
    /// Open mode: admission order, to forget the oldest beyond [`RECENT_ADMISSIONS_MAX`].
    order: VecDeque<MailboxId>,
    /// Token mode: mailboxes created per token id.
    usage: HashMap<[u8; TOKEN_ID_BYTES], u32>,
    /// Token mode: the file.
    file: Option<LedgerFile>,
}

/// What [`Admission::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// The mailbox was admitted before (by another Join); nothing charged.
    Already,
    /// This Join creates the mailbox; it was charged (and, in token mode, recorded).
    Created,
}

/// The relay's admission state, shared by every session.
pub struct Admission {
    relay_id: DeviceId,
    mode: AdmissionMode,
    clock: Clock,
    per_device: DefaultKeyedRateLimiter<DeviceId>,
    per_source: DefaultKeyedRateLimiter<IpAddr>,
    rate_clock: DefaultClock,
    ledger: Mutex<Ledger>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("relay_id", &self.relay_id.short())
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

fn per_hour(count: u32) -> Quota {
    Quota::per_hour(NonZeroU32::new(count).unwrap_or(NonZeroU32::MIN))
}

/// The rate-limit key of a source address: IPv4 as is, IPv6 by its /64 (one host usually
/// holds a whole /64), IPv4-mapped IPv6 as the IPv4 address.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        v4 => v4,
    }
}

impl Admission {
    /// Admission for relay `relay_id`; in token mode the ledger in `data_dir` is loaded (and
    /// created on the first admission).
    pub fn load(
        relay_id: DeviceId,
        config: &AdmissionConfig,
        clock: Clock,
        data_dir: &Path,
    ) -> Result<Admission, LedgerError> {
        let mut admitted = HashSet::new();
        let mut usage = HashMap::new();
        let file = match config.mode {
            AdmissionMode::Token => Some(LedgerFile::load(
                &data_dir.join(LEDGER_FILE),
                &mut admitted,
                &mut usage,
            )?),
            AdmissionMode::Open => None,
        };
        if config.mode == AdmissionMode::Token {
            info!(
                admitted = admitted.len(),
                tokens = usage.len(),
                "admission by token"
            );
        }
        Ok(Admission {
            relay_id,
            mode: config.mode,
            clock,
            per_device: RateLimiter::keyed(per_hour(config.mailboxes_per_device_per_hour)),
            per_source: RateLimiter::keyed(per_hour(config.mailboxes_per_source_per_hour)),
            rate_clock: DefaultClock::default(),
            ledger: Mutex::new(Ledger {
                admitted,
                order: VecDeque::new(),
                usage,
                file,
            }),
        })
    }

    /// Open admission with rates no test reaches: for actor tests that are not about it.
    pub fn unlimited(relay_id: DeviceId) -> Admission {
        let config = AdmissionConfig {
            mode: AdmissionMode::Open,
            mailboxes_per_device_per_hour: u32::MAX,
            mailboxes_per_source_per_hour: u32::MAX,
        };
        Self::load(relay_id, &config, Clock::system(), Path::new("."))
            .expect("open mode reads no file")
    }

    /// The mode.
    pub fn mode(&self) -> AdmissionMode {
        self.mode
    }

    /// Whether `mailbox` was admitted before (token mode: ever; open mode: recently).
    pub fn is_admitted(&self, mailbox: &MailboxId) -> bool {
        lock(&self.ledger).admitted.contains(mailbox)
    }

    /// Mailboxes created with the token `token_id` so far.
    pub fn used(&self, token_id: &[u8; TOKEN_ID_BYTES]) -> u32 {
        lock(&self.ledger).usage.get(token_id).copied().unwrap_or(0)
    }

    /// Whether [`Admission::admit`] may block on disk (token mode writes the ledger).
    pub fn is_blocking(&self) -> bool {
        self.mode == AdmissionMode::Token
    }

    /// Charge one creation to `device` and then to `source`. The device goes first: a device
    /// over its own bound then costs its address nothing, so it cannot use up its NAT
    /// neighbours' share; a creation refused by the address bound still counts for the device.
    fn check_rates(&self, device: &DeviceId, source: Option<IpAddr>) -> Result<(), Refusal> {
        if self.per_device.len() > RATE_KEYS_SHRINK_AT {
            self.per_device.retain_recent();
        }
        if self.per_source.len() > RATE_KEYS_SHRINK_AT {
            self.per_source.retain_recent();
        }
        let now = self.rate_clock.now();
        self.per_device
            .check_key(device)
            .map_err(|not_until| Refusal::RateLimited {
                scope: CreationScope::Device,
                retry_after: not_until.wait_time_from(now),
            })?;
        if let Some(ip) = source {
            self.per_source
                .check_key(&source_key(ip))
                .map_err(|not_until| Refusal::RateLimited {
                    scope: CreationScope::Source,
                    retry_after: not_until.wait_time_from(now),
                })?;
        }
        Ok(())
    }

    /// Decide a Join that would create `mailbox` (the store holds nothing for it), by
    /// `device` from `source`, carrying `token`. On `Created` the creation is charged to the
    /// rates and, in token mode, durably recorded against the token's budget. Blocks on disk
    /// in token mode (see [`Admission::is_blocking`]).
    pub fn admit(
        &self,
        mailbox: MailboxId,
        device: &DeviceId,
        source: Option<IpAddr>,
        token: Option<&AdmissionText>,
    ) -> Result<Admitted, Refusal> {
        let mut ledger = lock(&self.ledger);
        if ledger.admitted.contains(&mailbox) {
            return Ok(Admitted::Already);
        }
        let token = match self.mode {
            AdmissionMode::Open => None,
            AdmissionMode::Token => {
                let text = token.ok_or(Refusal::TokenRequired)?;
                let token = AdmissionToken::decode(&text.0)
                    .map_err(|err| Refusal::Invalid(err.to_string()))?;
                token.verify(&self.relay_id, self.clock.now_unix_secs())?;
                if ledger.usage.get(&token.token_id).copied().unwrap_or(0) >= token.mailboxes {
                    return Err(Refusal::UsedUp(token.mailboxes));
                }
                Some(token)
            }
        };
        self.check_rates(device, source)?;
        match token {
            Some(token) => {
                let record = record_bytes(&mailbox, &token);
                if let Some(file) = ledger.file.as_mut()
                    && let Err(err) = file.append(&record)
                {
                    warn!(error = %err, "admission not recorded");
                    return Err(Refusal::Unavailable);
                }
                ledger.admitted.insert(mailbox);
                *ledger.usage.entry(token.token_id).or_insert(0) += 1;
                info!(
                    mailbox = %mailbox.short(),
                    device = %device.short(),
                    token_id = %token_id_hex(&token.token_id),
                    used = ledger.usage.get(&token.token_id).copied().unwrap_or(0),
                    budget = token.mailboxes,
                    "mailbox admitted by token"
                );
            }
            None => {
                ledger.admitted.insert(mailbox);
                ledger.order.push_back(mailbox);
                while ledger.order.len() > RECENT_ADMISSIONS_MAX {
                    if let Some(oldest) = ledger.order.pop_front() {
                        ledger.admitted.remove(&oldest);
                    }
                }
            }
        }
        Ok(Admitted::Created)
    }
}

/// A session's view of admission: the relay's [`Admission`] and the connection's source.
#[derive(Debug, Clone)]
pub struct SessionAdmission {
    admission: Arc<Admission>,
    source: Option<IpAddr>,
}

impl SessionAdmission {
    /// For a connection from `source` (`None` when the transport does not say).
    pub fn new(admission: Arc<Admission>, source: Option<IpAddr>) -> Self {
        Self { admission, source }
    }

    /// Open admission without limits, for tests of other things.
    pub fn unlimited(relay_id: DeviceId) -> Self {
        Self::new(Arc::new(Admission::unlimited(relay_id)), None)
    }

    /// Decide a valid Join of `mailbox` by `device`, whose latest cursor on the store is
    /// `latest`: existing mailboxes pass at once; a creation goes through
    /// [`Admission::admit`] (off the runtime when it writes the ledger).
    pub async fn check_join(
        &self,
        mailbox: MailboxId,
        latest: Cursor,
        device: DeviceId,
        token: Option<AdmissionText>,
    ) -> Result<Admitted, Refusal> {
        if latest.0 > 0 || self.admission.is_admitted(&mailbox) {
            return Ok(Admitted::Already);
        }
        if !self.admission.is_blocking() {
            return self
                .admission
                .admit(mailbox, &device, self.source, token.as_ref());
        }
        let admission = Arc::clone(&self.admission);
        let source = self.source;
        crate::exec::blocking(move || admission.admit(mailbox, &device, source, token.as_ref()))
            .await
            .unwrap_or(Err(Refusal::Unavailable))
    }
}

#[cfg(test)]
mod tests {
    use super::ledger::{LEDGER_MAGIC, LEDGER_RECORD_BYTES};
    use super::*;
    use std::io::Write;

    const SECRET: [u8; 32] = [7; 32];
    const NOW: u64 = 1_700_000_000;

    fn relay() -> DeviceId {
        relay_id_of(&SECRET)
    }

    fn token(id: u8, mailboxes: u32, expires: u64) -> AdmissionText {
        AdmissionText(
            AdmissionToken::mint(&SECRET, [id; 16], mailboxes, expires)
                .unwrap()
                .encode(),
        )
    }

    fn token_mode(dir: &Path) -> Admission {
        let config = AdmissionConfig {
            mode: AdmissionMode::Token,
            ..AdmissionConfig::default()
        };
        Admission::load(relay(), &config, Clock::manual(NOW * 1000), dir).unwrap()
    }

    fn mailbox(n: u8) -> MailboxId {
        MailboxId([n; 32])
    }

    const DEVICE: DeviceId = DeviceId([3; 32]);

    #[test]
    fn token_mode_refuses_without_a_valid_token_and_counts_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let admission = token_mode(dir.path());
        let admit = |n: u8, token: Option<&AdmissionText>| {
            admission.admit(mailbox(n), &DEVICE, None, token)
        };
        assert_eq!(admit(1, None), Err(Refusal::TokenRequired));
        let garbage = AdmissionText("ZKA1AAAA".into());
        assert!(matches!(admit(1, Some(&garbage)), Err(Refusal::Invalid(_))));
        assert_eq!(admit(1, Some(&token(1, 2, NOW))), Err(Refusal::Expired));
        let foreign = AdmissionText(
            AdmissionToken::mint(&[8; 32], [1; 16], 2, NOW + 60)
                .unwrap()
                .encode(),
        );
        assert_eq!(admit(1, Some(&foreign)), Err(Refusal::OtherRelay));
        assert!(!admission.is_admitted(&mailbox(1)));

        let two = token(2, 2, NOW + 60);
        assert_eq!(admit(1, Some(&two)), Ok(Admitted::Created));
        // Joining it again (any token or none) is not a creation and charges nothing.
        assert_eq!(admit(1, None), Ok(Admitted::Already));
        assert_eq!(admit(1, Some(&two)), Ok(Admitted::Already));
        assert_eq!(admit(2, Some(&two)), Ok(Admitted::Created));
        assert_eq!(admit(3, Some(&two)), Err(Refusal::UsedUp(2)));
        assert_eq!(admission.used(&[2; 16]), 2);
        // Another token has its own budget.
        assert_eq!(
            admit(3, Some(&token(3, 1, NOW + 60))),
            Ok(Admitted::Created)
        );
    }

    #[test]
    fn admissions_and_usage_survive_a_restart_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let two = token(2, 2, NOW + 60);
        {
            let admission = token_mode(dir.path());
            admission
                .admit(mailbox(1), &DEVICE, None, Some(&two))
                .unwrap();
        }
        let path = dir.path().join(LEDGER_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A crash mid-append leaves half a record.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(&[0xab; 20]).unwrap();
        drop(file);

        let admission = token_mode(dir.path());
        assert!(admission.is_admitted(&mailbox(1)));
        assert_eq!(admission.used(&[2; 16]), 1);
        assert_eq!(
            admission.admit(mailbox(2), &DEVICE, None, Some(&two)),
            Ok(Admitted::Created)
        );
        assert_eq!(
            admission.admit(mailbox(3), &DEVICE, None, Some(&two)),
            Err(Refusal::UsedUp(2))
        );
        drop(admission);
        let admission = token_mode(dir.path());
        assert!(admission.is_admitted(&mailbox(2)));
        assert_eq!(admission.used(&[2; 16]), 2);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            (LEDGER_MAGIC.len() + 2 * LEDGER_RECORD_BYTES) as u64
        );
    }

    #[test]
    fn a_file_that_is_not_a_ledger_is_refused_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LEDGER_FILE);
        std::fs::write(&path, b"something else entirely").unwrap();
        let config = AdmissionConfig {
            mode: AdmissionMode::Token,
            ..AdmissionConfig::default()
        };
        let err = Admission::load(relay(), &config, Clock::manual(0), dir.path()).unwrap_err();
        assert!(matches!(err, LedgerError::Corrupt { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"something else entirely");
    }

    #[test]
    fn creation_rates_are_per_device_and_per_source_with_a_retry_hint() {
        let config = AdmissionConfig {
            mode: AdmissionMode::Open,
            mailboxes_per_device_per_hour: 2,
            mailboxes_per_source_per_hour: 3,
        };
        let admission =
            Admission::load(relay(), &config, Clock::manual(0), Path::new(".")).unwrap();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let (a, b) = (DeviceId([1; 32]), DeviceId([2; 32]));
        assert_eq!(
            admission.admit(mailbox(1), &a, Some(ip), None),
            Ok(Admitted::Created)
        );
        assert_eq!(
            admission.admit(mailbox(2), &a, Some(ip), None),
            Ok(Admitted::Created)
        );
        // A re-join of an admitted (still empty) mailbox is free.
        assert_eq!(
            admission.admit(mailbox(2), &a, Some(ip), None),
            Ok(Admitted::Already)
        );
        let refused = admission.admit(mailbox(3), &a, Some(ip), None).unwrap_err();
        let Refusal::RateLimited { scope, retry_after } = refused.clone() else {
            panic!("{refused:?}");
        };
        assert_eq!(scope, CreationScope::Device);
        assert!(retry_after > Duration::from_secs(60), "{retry_after:?}");
        match refused.to_frame(ReqId(4)) {
            Frame::Error {
                code: ErrorCode::RateLimited,
                retry_after_ms: Some(ms),
                ..
            } => assert!(ms > 60_000),
            other => panic!("{other:?}"),
        }
        // Another device on the same /64 hits the source bound at the third creation.
        assert_eq!(
            admission.admit(mailbox(4), &b, Some(same_64), None),
            Ok(Admitted::Created)
        );
        assert!(matches!(
            admission.admit(mailbox(5), &b, Some(same_64), None),
            Err(Refusal::RateLimited {
                scope: CreationScope::Source,
                ..
            })
        ));
        // Another /64 is another source (a third device: b's refused try was charged to b).
        let other: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let c = DeviceId([4; 32]);
        assert_eq!(
            admission.admit(mailbox(6), &c, Some(other), None),
            Ok(Admitted::Created)
        );
    }

    #[test]
    fn source_keys_group_ipv6_by_64_and_unmap_ipv4() {
        let key = |text: &str| source_key(text.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:3:4:5:6"), key("2001:db8:1:2::"));
        assert_ne!(key("2001:db8:1:2::"), key("2001:db8:1:3::"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
    }

    #[test]
    fn refusal_messages_are_clear_and_never_carry_the_token() {
        let secret = token(9, 1, NOW + 60);
        for refusal in [
            Refusal::TokenRequired,
            Refusal::Expired,
            Refusal::UsedUp(1),
            Refusal::OtherRelay,
            Refusal::Invalid("bad signature".into()),
        ] {
            let Frame::Error { code, message, .. } = refusal.to_frame(ReqId(1)) else {
                panic!("not an error frame");
            };
            assert_eq!(code, ErrorCode::Unauthorized);
            assert!(message.starts_with("admission token"), "{message}");
            assert!(!message.contains(&secret.0[4..20]));
        }
        assert!(Refusal::TokenRequired.to_string().contains("required"));
        assert!(Refusal::Expired.to_string().contains("expired"));
        assert!(Refusal::UsedUp(1).to_string().contains("used up"));
        assert!(Refusal::OtherRelay.to_string().contains("another relay"));
        assert!(
            Refusal::Invalid(String::new())
                .to_string()
                .contains("invalid")
        );
    }
}
