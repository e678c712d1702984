//! The text form of a relay's address, as printed by `zerok-relay` into `relay.addr` and
//! carried in configs and invites: `<endpoint id hex>@<ip:port>[,<ip:port>...]`.
//!
//! The endpoint id is the relay's identity (its iroh public key); the socket addresses are
//! where to dial it directly. No discovery service is needed, so LANs and offline setups work.

use crate::ids::{DeviceId, ParseIdError};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// Most direct addresses one relay address may list: enough for v4 + v6 on a few interfaces,
/// small enough that an invite stays short.
pub const RELAY_ADDR_SOCKETS_MAX: usize = 8;

/// How to reach a relay: its identity and direct socket addresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RelayAddr {
    /// The relay's endpoint id.
    pub id: DeviceId,
    /// Direct UDP addresses, in order of preference.
    pub addrs: Vec<SocketAddr>,
}

/// Why a relay address text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseRelayAddrError {
    /// No `@` between id and addresses.
    #[error("relay address must look like <endpoint-id>@<ip:port>[,<ip:port>...]")]
    Shape,
    /// The endpoint id is not 64 hex characters.
    #[error("relay endpoint id: {0}")]
    Id(#[from] ParseIdError),
    /// A socket address is invalid.
    #[error("relay socket address {0:?} is not ip:port")]
    Socket(String),
    /// No or too many socket addresses.
    #[error("relay address needs 1 to {RELAY_ADDR_SOCKETS_MAX} socket addresses, got {0}")]
    SocketCount(usize),
}

impl fmt::Display for RelayAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@", self.id)?;
        for (index, addr) in self.addrs.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            write!(f, "{addr}")?;
        }
        Ok(())
    }
}

impl FromStr for RelayAddr {
    type Err = ParseRelayAddrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (id, sockets) = text.split_once('@').ok_or(ParseRelayAddrError::Shape)?;
        let id: DeviceId = id.parse()?;
        let addrs = sockets
            .split(',')
            .filter(|part| !part.is_empty())
            .map(|part| {
                part.parse::<SocketAddr>()
                    .map_err(|_| ParseRelayAddrError::Socket(part.chars().take(80).collect()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if addrs.is_empty() || addrs.len() > RELAY_ADDR_SOCKETS_MAX {
            return Err(ParseRelayAddrError::SocketCount(addrs.len()));
        }
        Ok(RelayAddr { id, addrs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        let addr = RelayAddr {
            id: DeviceId([0x5a; 32]),
            addrs: vec![
                "127.0.0.1:7340".parse().unwrap(),
                "[::1]:7340".parse().unwrap(),
            ],
        };
        let text = addr.to_string();
        assert_eq!(
            text,
            format!("{}@127.0.0.1:7340,[::1]:7340", "5a".repeat(32))
        );
        assert_eq!(text.parse::<RelayAddr>().unwrap(), addr);
        assert_eq!(format!(" {text}\n").parse::<RelayAddr>().unwrap(), addr);
    }

    #[test]
    fn rejects_bad_text() {
        let id = "5a".repeat(32);
        assert_eq!(
            "nothing".parse::<RelayAddr>(),
            Err(ParseRelayAddrError::Shape)
        );
        assert!(matches!(
            format!("{id}@").parse::<RelayAddr>(),
            Err(ParseRelayAddrError::SocketCount(0))
        ));
        assert!(matches!(
            format!("{id}@localhost").parse::<RelayAddr>(),
            Err(ParseRelayAddrError::Socket(_))
        ));
        assert!(matches!(
            "abc@127.0.0.1:1".parse::<RelayAddr>(),
            Err(ParseRelayAddrError::Id(_))
        ));
    }
}
