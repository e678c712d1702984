//! Identifiers and small newtypes shared by the wire protocol, the actors and the stores.
//!
//! Every 32-byte id is carried on the wire as a CBOR byte string (never an array of
//! integers) and printed as lowercase hex. None of these types holds a secret: they are
//! public keys, hashes and counters, safe to log.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Error returned when a hex id cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected} hex characters, got {got:?}")]
pub struct ParseIdError {
    /// Number of hex characters the id needs.
    pub expected: usize,
    /// The (possibly truncated) text that failed to parse.
    pub got: String,
}

/// Parse exactly `2 * N` hex characters into `N` bytes.
pub fn parse_hex<const N: usize>(text: &str) -> Result<[u8; N], ParseIdError> {
    let error = || ParseIdError {
        expected: 2 * N,
        got: text.chars().take(80).collect(),
    };
    let decoded = data_encoding::HEXLOWER_PERMISSIVE
        .decode(text.as_bytes())
        .map_err(|_| error())?;
    decoded.try_into().map_err(|_| error())
}

macro_rules! id32 {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(#[serde(with = "serde_bytes")] pub [u8; 32]);

        impl $name {
            /// Length of the id in bytes.
            pub const LEN: usize = 32;

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Lowercase hex, 64 characters.
            pub fn to_hex(&self) -> String {
                data_encoding::HEXLOWER.encode(&self.0)
            }

            /// First 8 hex characters: enough to tell ids apart in logs.
            pub fn short(&self) -> String {
                data_encoding::HEXLOWER.encode(&self.0[..4])
            }
        }

        impl From<[u8; 32]> for $name {
            fn from(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                parse_hex::<32>(text).map(Self)
            }
        }
    };
}

id32!(
    /// A device: the Ed25519 public key of its iroh endpoint. Relays are devices too.
    DeviceId
);
id32!(
    /// A mailbox on a relay: BLAKE3 of its [`MailboxKey`]. One per group and epoch.
    MailboxId
);
id32!(
    /// The Ed25519 public key that join proofs for a mailbox are checked against.
    MailboxKey
);
id32!(
    /// A stored item: BLAKE3 of its ciphertext, the same on every relay.
    BlobId
);

impl MailboxKey {
    /// The mailbox this key governs: `BLAKE3(key)`.
    pub fn mailbox_id(&self) -> MailboxId {
        MailboxId(*blake3::hash(&self.0).as_bytes())
    }
}

impl BlobId {
    /// The id of a ciphertext: `BLAKE3(ciphertext)`.
    pub fn of_ciphertext(ciphertext: &[u8]) -> Self {
        BlobId(*blake3::hash(ciphertext).as_bytes())
    }
}

/// An Ed25519 signature (join proofs, record signatures).
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Signature64(#[serde(with = "serde_bytes")] pub [u8; 64]);

impl fmt::Debug for Signature64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Signature64({})",
            data_encoding::HEXLOWER.encode(&self.0[..4])
        )
    }
}

/// A position in one mailbox on one relay. Assigned by the relay, strictly increasing per
/// mailbox, starting at 1; `Cursor(0)` means "before everything".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Cursor(pub u64);

impl Cursor {
    /// The position before the first item.
    pub const START: Cursor = Cursor(0);

    /// The cursor after this one.
    pub fn next(self) -> Cursor {
        Cursor(self.0.saturating_add(1))
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A key epoch of a group. Epoch 0 is the group's first; rotation adds one.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u32);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A client-chosen request id, echoed by the response.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct ReqId(pub u64);

impl fmt::Display for ReqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let id = DeviceId([0xab; 32]);
        let text = id.to_hex();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<DeviceId>().unwrap(), id);
        assert!("abcd".parse::<DeviceId>().is_err());
        assert!(format!("{}zz", &text[..62]).parse::<DeviceId>().is_err());
    }

    #[test]
    fn ids_encode_as_cbor_byte_strings() {
        let mut out = Vec::new();
        ciborium::into_writer(&BlobId([7; 32]), &mut out).unwrap();
        // 0x58 0x20 = byte string of length 32; an array of integers would start with 0x98.
        assert_eq!(&out[..2], &[0x58, 0x20]);
        assert_eq!(out.len(), 34);
    }

    #[test]
    fn mailbox_id_is_blake3_of_key() {
        let key = MailboxKey([1; 32]);
        assert_eq!(key.mailbox_id().0, *blake3::hash(&[1; 32]).as_bytes());
    }
}
