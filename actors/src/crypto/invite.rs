//! Invite tokens: how a new device learns a group's relays and secret.
//!
//! A token is `ZK1` followed by unpadded RFC 4648 base32 (upper case: QR codes encode it in
//! their compact alphanumeric mode) of `CBOR(invite) ‖ checksum(4)`, where the checksum is the
//! first 4 bytes of BLAKE3 over a domain string and the CBOR. Decoding ignores case,
//! whitespace and `-`, so a token survives being wrapped or re-typed; a typo fails the
//! checksum instead of producing a wrong group.
//!
//! A token carries the group secret (or, for a passphrase group, the salt and KDF parameters
//! while the passphrase travels separately): it IS a secret. Its `Debug` is redacted and it
//! must never be logged. `expires_at` bounds how long a leaked token can be redeemed by a
//! careful client; it cannot revoke the secret inside (that needs an epoch rotation).

use super::keys::{GroupSecret, KdfParams, SALT_BYTES};
use serde::{Deserialize, Serialize};
use zerok_messages::addr::RELAY_ADDR_SOCKETS_MAX;
use zerok_messages::errors::INVITE_PREFIX as PREFIX;
pub use zerok_messages::errors::InviteError;
use zerok_messages::{Epoch, MailboxId, RelayAddr};

/// Version number inside the CBOR.
const VERSION: u8 = 1;
/// Checksum domain string.
const CHECKSUM_DOMAIN: &[u8] = b"zerok invite checksum v1";
/// Checksum length: 32 bits make an undetected typo a one-in-four-billion event.
const CHECKSUM_BYTES: usize = 4;
/// Most relays an invite lists: groups use 2-3; more is a mistake or an attack on the parser.
pub const INVITE_RELAYS_MAX: usize = 16;
/// Longest token accepted, in characters: 16 relays × 8 addresses fit comfortably.
pub const INVITE_CHARS_MAX: usize = 16 * 1024;
/// Longest group name, in bytes.
pub const GROUP_NAME_BYTES_MAX: usize = 64;

/// The secret part of an invite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InviteSecret {
    /// The group secret itself.
    Key(GroupSecret),
    /// A passphrase group: the joiner enters the passphrase and derives with these.
    Passphrase {
        /// Argon2id salt.
        salt: [u8; SALT_BYTES],
        /// Argon2id parameters.
        kdf: KdfParams,
    },
}

/// Everything a device needs to join a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// The group's relays, in order of preference.
    pub relays: Vec<RelayAddr>,
    /// The secret or how to derive it.
    pub secret: InviteSecret,
    /// The group's current key epoch.
    pub epoch: Epoch,
    /// After this unix time the token is refused.
    pub expires_at_unix_secs: u64,
    /// A human label for the group (not secret, not unique).
    pub group_name: String,
    /// The group's id (its epoch-0 mailbox id, public), so a joiner can tell a mistyped
    /// passphrase from the right one before joining a group nobody else is in.
    pub group_id: Option<MailboxId>,
}

#[derive(Serialize, Deserialize)]
struct InviteWire {
    v: u8,
    relays: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_bytes32")]
    key: Option<[u8; 32]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    salt: Option<serde_bytes::ByteBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kdf: Option<KdfParams>,
    epoch: Epoch,
    exp: u64,
    #[serde(default)]
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_bytes32")]
    gid: Option<[u8; 32]>,
}

mod opt_bytes32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) => s.serialize_bytes(bytes),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
        let bytes: Option<serde_bytes::ByteBuf> = Option::deserialize(d)?;
        bytes
            .map(|bytes| {
                <[u8; 32]>::try_from(bytes.as_slice())
                    .map_err(|_| serde::de::Error::custom("key must be 32 bytes"))
            })
            .transpose()
    }
}

fn checksum(body: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(CHECKSUM_DOMAIN);
    hasher.update(body);
    let hash = hasher.finalize();
    let mut out = [0; CHECKSUM_BYTES];
    out.copy_from_slice(&hash.as_bytes()[..CHECKSUM_BYTES]);
    out
}

/// A token's text for `wire`: the prefix, then base32 of its CBOR and checksum.
fn encode_token(wire: &impl Serialize) -> String {
    let mut body = zeroize::Zeroizing::new(Vec::new());
    ciborium::into_writer(wire, &mut *body).expect("writing CBOR to a Vec cannot fail");
    let sum = checksum(&body);
    body.extend_from_slice(&sum);
    format!("{PREFIX}{}", data_encoding::BASE32_NOPAD.encode(&body))
}

/// A token's CBOR body (checksum verified) and the version inside it.
fn decode_token(token: &str) -> Result<(zeroize::Zeroizing<Vec<u8>>, u8), InviteError> {
    if token.len() > INVITE_CHARS_MAX {
        return Err(InviteError::TooLong);
    }
    let cleaned: String = token
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let data = cleaned.strip_prefix(PREFIX).ok_or(InviteError::Prefix)?;
    let mut raw = zeroize::Zeroizing::new(
        data_encoding::BASE32_NOPAD
            .decode(data.as_bytes())
            .map_err(|_| InviteError::Encoding)?,
    );
    if raw.len() < CHECKSUM_BYTES {
        return Err(InviteError::Checksum);
    }
    let (body, sum) = raw.split_at(raw.len() - CHECKSUM_BYTES);
    if checksum(body) != sum {
        return Err(InviteError::Checksum);
    }
    // Peek at the version before the full parse, so another layout says "version".
    let version = ciborium::from_reader::<ciborium::Value, _>(body)
        .ok()
        .and_then(|value| match value {
            ciborium::Value::Map(entries) => entries.into_iter().find_map(|(k, v)| {
                (k.as_text() == Some("v"))
                    .then(|| v.as_integer().and_then(|i| u8::try_from(i).ok()))
                    .flatten()
            }),
            _ => None,
        })
        .ok_or_else(|| InviteError::Malformed("no version".into()))?;
    let body_len = raw.len() - CHECKSUM_BYTES;
    raw.truncate(body_len);
    Ok((raw, version))
}

/// Check what every version's invite carries: 1 to 16 relay addresses and a short name.
fn parse_relays(relays: &[String], name: &str) -> Result<Vec<RelayAddr>, InviteError> {
    if relays.is_empty() || relays.len() > INVITE_RELAYS_MAX {
        return Err(InviteError::Malformed(
            "an invite lists 1 to 16 relays".to_owned(),
        ));
    }
    if name.len() > GROUP_NAME_BYTES_MAX {
        return Err(InviteError::Malformed("group name too long".to_owned()));
    }
    let relays = relays
        .iter()
        .map(|text| text.parse::<RelayAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| InviteError::Malformed(format!("relay address: {err}")))?;
    debug_assert!(
        relays
            .iter()
            .all(|r| r.addrs.len() <= RELAY_ADDR_SOCKETS_MAX)
    );
    Ok(relays)
}

/// An invite of version 2 (issue 14; docs/DESIGN.md §4 "Membership"): a one-time invite
/// secret, the group's relays, its name and an expiry. No group secret and no group id: the
/// joiner is admitted by a member, over the invite mailbox the invite secret gives
/// (`crate::crypto::admit`). Still a secret until used (it lets its holder ask to be
/// admitted), so its `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct InviteV2 {
    /// The group's relays, in order of preference.
    pub relays: Vec<RelayAddr>,
    /// The one-time invite secret.
    pub invite_secret: zeroize::Zeroizing<[u8; 32]>,
    /// After this unix time the token is refused (by the joiner here; by members, who do
    /// not trust the joiner, by their own clocks).
    pub expires_at_unix_secs: u64,
    /// A human label for the group (not secret, not unique).
    pub group_name: String,
}

impl std::fmt::Debug for InviteV2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InviteV2")
            .field("relays", &self.relays)
            .field("expires_at_unix_secs", &self.expires_at_unix_secs)
            .field("group_name", &self.group_name)
            .finish_non_exhaustive()
    }
}

/// Version of [`InviteV2`] tokens.
const VERSION_2: u8 = 2;

#[derive(Serialize, Deserialize)]
struct InviteWireV2 {
    v: u8,
    relays: Vec<String>,
    #[serde(with = "serde_bytes")]
    s: [u8; 32],
    exp: u64,
    #[serde(default)]
    name: String,
}

impl Drop for InviteWireV2 {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.s);
    }
}

impl InviteV2 {
    /// The token text.
    pub fn encode(&self) -> String {
        encode_token(&InviteWireV2 {
            v: VERSION_2,
            relays: self.relays.iter().map(ToString::to_string).collect(),
            s: *self.invite_secret,
            exp: self.expires_at_unix_secs,
            name: self.group_name.clone(),
        })
    }

    /// Parse and check a token at wall time `now_unix_secs`. A version 1 token (it carries
    /// the group's secret) is refused with [`InviteError::CarriesSecret`].
    pub fn decode(token: &str, now_unix_secs: u64) -> Result<InviteV2, InviteError> {
        let (body, version) = decode_token(token)?;
        match version {
            VERSION_2 => {}
            VERSION => return Err(InviteError::CarriesSecret),
            other => return Err(InviteError::Version(other)),
        }
        let wire: InviteWireV2 = ciborium::from_reader(body.as_slice())
            .map_err(|err| InviteError::Malformed(err.to_string().chars().take(120).collect()))?;
        let relays = parse_relays(&wire.relays, &wire.name)?;
        if now_unix_secs >= wire.exp {
            return Err(InviteError::Expired(wire.exp));
        }
        Ok(InviteV2 {
            relays,
            invite_secret: zeroize::Zeroizing::new(wire.s),
            expires_at_unix_secs: wire.exp,
            group_name: wire.name.clone(),
        })
    }
}

impl Invite {
    /// The token text. A secret: show it only to the person inviting.
    pub fn encode(&self) -> String {
        let (key, salt, kdf) = match &self.secret {
            InviteSecret::Key(secret) => (Some(*secret.expose_bytes()), None, None),
            InviteSecret::Passphrase { salt, kdf } => (
                None,
                Some(serde_bytes::ByteBuf::from(salt.to_vec())),
                Some(*kdf),
            ),
        };
        let wire = InviteWire {
            v: VERSION,
            relays: self.relays.iter().map(ToString::to_string).collect(),
            key,
            salt,
            kdf,
            epoch: self.epoch,
            exp: self.expires_at_unix_secs,
            name: self.group_name.clone(),
            gid: self.group_id.map(|id| id.0),
        };
        encode_token(&wire)
    }

    /// Parse and check a token at wall time `now_unix_secs`.
    pub fn decode(token: &str, now_unix_secs: u64) -> Result<Invite, InviteError> {
        let (body, version) = decode_token(token)?;
        if version != VERSION {
            return Err(InviteError::Version(version));
        }
        let body = body.as_slice();
        let wire: InviteWire = ciborium::from_reader(body)
            .map_err(|err| InviteError::Malformed(err.to_string().chars().take(120).collect()))?;
        let invite = Self::from_wire(wire)?;
        if now_unix_secs >= invite.expires_at_unix_secs {
            return Err(InviteError::Expired(invite.expires_at_unix_secs));
        }
        Ok(invite)
    }

    fn from_wire(wire: InviteWire) -> Result<Invite, InviteError> {
        let malformed = |what: &str| InviteError::Malformed(what.to_owned());
        let relays = parse_relays(&wire.relays, &wire.name)?;
        let secret = match (wire.key, wire.salt, wire.kdf) {
            (Some(key), None, None) => InviteSecret::Key(GroupSecret::from_bytes(key)),
            (None, Some(salt), Some(kdf)) => InviteSecret::Passphrase {
                salt: salt
                    .as_slice()
                    .try_into()
                    .map_err(|_| malformed("salt must be 16 bytes"))?,
                kdf,
            },
            _ => {
                return Err(malformed(
                    "an invite carries either a key or a salt and parameters",
                ));
            }
        };
        Ok(Invite {
            relays,
            secret,
            epoch: wire.epoch,
            expires_at_unix_secs: wire.exp,
            group_name: wire.name,
            group_id: wire.gid.map(MailboxId),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerok_messages::DeviceId;

    fn relay(n: u8) -> RelayAddr {
        RelayAddr {
            id: DeviceId([n; 32]),
            addrs: vec![format!("127.0.0.1:{}", 7000 + n as u16).parse().unwrap()],
        }
    }

    fn invite() -> Invite {
        Invite {
            relays: vec![relay(1), relay(2), relay(3)],
            secret: InviteSecret::Key(GroupSecret::from_bytes([0x5c; 32])),
            epoch: Epoch(0),
            expires_at_unix_secs: 2_000_000_000,
            group_name: "family".into(),
            group_id: None,
        }
    }

    #[test]
    fn round_trips_and_tolerates_formatting() {
        let token = invite().encode();
        assert!(token.starts_with("ZK1"));
        assert_eq!(Invite::decode(&token, 1_900_000_000).unwrap(), invite());
        let wrapped: String = token
            .to_lowercase()
            .as_bytes()
            .chunks(20)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("-\n  ");
        assert_eq!(Invite::decode(&wrapped, 1_900_000_000).unwrap(), invite());
        let passphrase = Invite {
            secret: InviteSecret::Passphrase {
                salt: [9; 16],
                kdf: KdfParams::V1,
            },
            group_id: Some(zerok_messages::MailboxId([4; 32])),
            ..invite()
        };
        assert_eq!(Invite::decode(&passphrase.encode(), 0).unwrap(), passphrase);
    }

    #[test]
    fn typos_truncation_and_expiry_are_refused() {
        let token = invite().encode();
        assert_eq!(
            Invite::decode(&token, 2_000_000_000),
            Err(InviteError::Expired(2_000_000_000))
        );
        // Change one character in the middle.
        let mut chars: Vec<char> = token.chars().collect();
        let mid = chars.len() / 2;
        chars[mid] = if chars[mid] == 'A' { 'B' } else { 'A' };
        let typo: String = chars.into_iter().collect();
        assert!(matches!(
            Invite::decode(&typo, 0),
            Err(InviteError::Checksum | InviteError::Encoding)
        ));
        assert!(Invite::decode(&token[..token.len() - 5], 0).is_err());
        assert_eq!(Invite::decode("hello", 0), Err(InviteError::Prefix));
        assert_eq!(Invite::decode("ZK1!!!!", 0), Err(InviteError::Encoding));
        assert_eq!(
            Invite::decode(&"ZK1".repeat(10_000), 0),
            Err(InviteError::TooLong)
        );
    }

    #[test]
    fn newer_versions_and_bad_content_are_typed_errors() {
        let encode_wire = |wire: &InviteWire| {
            let mut body = Vec::new();
            ciborium::into_writer(wire, &mut body).unwrap();
            let sum = checksum(&body);
            body.extend_from_slice(&sum);
            format!("ZK1{}", data_encoding::BASE32_NOPAD.encode(&body))
        };
        let wire = |v, relays: Vec<String>, key| InviteWire {
            v,
            relays,
            key,
            salt: None,
            kdf: None,
            epoch: Epoch(0),
            exp: u64::MAX,
            name: String::new(),
            gid: None,
        };
        let one = vec![relay(1).to_string()];
        assert_eq!(
            Invite::decode(&encode_wire(&wire(2, one.clone(), Some([0; 32]))), 0),
            Err(InviteError::Version(2))
        );
        assert!(matches!(
            Invite::decode(&encode_wire(&wire(1, vec![], Some([0; 32]))), 0),
            Err(InviteError::Malformed(_))
        ));
        assert!(matches!(
            Invite::decode(&encode_wire(&wire(1, one.clone(), None)), 0),
            Err(InviteError::Malformed(_))
        ));
        assert!(matches!(
            Invite::decode(
                &encode_wire(&wire(1, vec!["nope".into()], Some([0; 32]))),
                0
            ),
            Err(InviteError::Malformed(_))
        ));
        assert!(Invite::decode(&encode_wire(&wire(1, one, Some([0; 32]))), 0).is_ok());
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let printed = format!("{:?}", invite());
        assert!(printed.contains("redacted"));
        assert!(!printed.contains("92, 92")); // 0x5c = 92
    }

    fn invite_v2() -> InviteV2 {
        InviteV2 {
            relays: vec![relay(1), relay(2)],
            invite_secret: zeroize::Zeroizing::new([0x1A; 32]),
            expires_at_unix_secs: 2_000_000_000,
            group_name: "family".into(),
        }
    }

    #[test]
    fn a_version_2_invite_round_trips_and_carries_no_group_key() {
        let token = invite_v2().encode();
        assert!(token.starts_with("ZK1"));
        assert_eq!(
            InviteV2::decode(&token, 1_900_000_000).unwrap(),
            invite_v2()
        );
        assert_eq!(
            InviteV2::decode(&token, 2_000_000_000),
            Err(InviteError::Expired(2_000_000_000))
        );
        assert!(!format!("{:?}", invite_v2()).contains("26, 26"), "redacted");
        // What the token holds: relays, name, expiry and the invite secret. Nothing derived
        // from any group secret: the invite's mailbox is not the group's, and no 32 bytes of
        // the token's body are the group secret or its epoch keys' public mailbox key.
        let group = GroupSecret::from_bytes([0x5c; 32]);
        let keys = group.epoch_keys(Epoch(0));
        let invite_keys = crate::crypto::admit::InviteKeys::from_secret(&[0x1A; 32]);
        assert_ne!(invite_keys.mailbox_id(), keys.mailbox_id());
        let (body, version) = decode_token(&token).unwrap();
        assert_eq!(version, 2);
        for forbidden in [
            *group.expose_bytes(),
            keys.mailbox_key().0,
            keys.mailbox_id().0,
        ] {
            assert!(!body.windows(32).any(|w| w == forbidden));
        }
    }

    #[test]
    fn a_version_1_invite_is_refused_where_version_2_is_required_and_vice_versa() {
        let v1 = invite().encode();
        assert_eq!(
            InviteV2::decode(&v1, 1_900_000_000),
            Err(InviteError::CarriesSecret)
        );
        assert!(
            InviteError::CarriesSecret
                .to_string()
                .contains("ask a member for a new invite")
        );
        let v2 = invite_v2().encode();
        assert_eq!(
            Invite::decode(&v2, 1_900_000_000),
            Err(InviteError::Version(2))
        );
    }
}
