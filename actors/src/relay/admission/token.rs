//! Admission tokens: the text an operator hands out (`zerok-relay admit`) so its holder may
//! create mailboxes on a relay in `token` mode.
//!
//! A token carries the relay id, a random token id, a budget of mailboxes and an expiry,
//! signed (Ed25519, strict) with the relay's node key, the key behind its id, so a relay checks
//! its own tokens with no state but the usage it counts. Text: `ZKA1` + unpadded base32 of
//! `CBOR ‖ checksum(4)` like invite tokens; decoding ignores case, whitespace and `-`, and a
//! typo fails the checksum. A token is a bearer secret: its `Debug` shows only its id.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use zerok_messages::DeviceId;
pub use zerok_messages::errors::{TOKEN_PREFIX, TokenError, TokenRefusal};
use zerok_messages::wire::ADMISSION_CHARS_MAX;

/// Version number inside the CBOR.
const TOKEN_VERSION: u8 = 1;
/// Domain string of the relay's signature over a token.
const SIGN_DOMAIN: &[u8] = b"zerok admission v1";
/// Checksum domain string.
const CHECKSUM_DOMAIN: &[u8] = b"zerok admission checksum v1";
/// Checksum length: 32 bits make an undetected typo a one-in-four-billion event.
const CHECKSUM_BYTES: usize = 4;
/// Length of a token id: 128 random bits never collide between tokens of one relay.
pub const TOKEN_ID_BYTES: usize = 16;
/// Largest budget of one token: a token is for a person or an app's groups, not a relay's
/// worth of mailboxes; the bound also bounds the ledger a leaked token can grow.
pub const TOKEN_MAILBOXES_MAX: u32 = 100_000;
/// Longest validity of one token, in days: ten years; longer is a mistake.
pub const TOKEN_VALID_DAYS_MAX: u64 = 3650;

/// An admission token: the relay's permission to create up to `mailboxes` mailboxes on it
/// until `expires_at_unix_secs`. Verified against the relay's id (its public key).
#[derive(Clone, PartialEq, Eq)]
pub struct AdmissionToken {
    /// The relay that signed it (and the only one that accepts it).
    pub relay_id: DeviceId,
    /// Random id; usage is counted per id.
    pub token_id: [u8; TOKEN_ID_BYTES],
    /// Mailboxes it may create.
    pub mailboxes: u32,
    /// Unix time after which it is refused.
    pub expires_at_unix_secs: u64,
    signature: [u8; 64],
}

impl std::fmt::Debug for AdmissionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmissionToken")
            .field("relay_id", &self.relay_id.short())
            .field("token_id", &token_id_hex(&self.token_id))
            .field("mailboxes", &self.mailboxes)
            .field("expires_at_unix_secs", &self.expires_at_unix_secs)
            .finish_non_exhaustive()
    }
}

/// Why a token could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// Budget out of range.
    #[error("mailboxes must be in 1..={TOKEN_MAILBOXES_MAX}")]
    Mailboxes,
    /// Validity out of range.
    #[error("valid days must be in 1..={TOKEN_VALID_DAYS_MAX}")]
    ValidDays,
}

#[derive(Serialize, Deserialize)]
struct TokenWire {
    v: u8,
    #[serde(with = "serde_bytes")]
    relay: Vec<u8>,
    #[serde(with = "serde_bytes")]
    id: Vec<u8>,
    n: u32,
    exp: u64,
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
}

#[derive(Deserialize)]
struct VersionPeek {
    v: u8,
}

fn checksum(body: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(CHECKSUM_DOMAIN);
    hasher.update(body);
    let mut out = [0; CHECKSUM_BYTES];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..CHECKSUM_BYTES]);
    out
}

fn signed_bytes(
    relay_id: &DeviceId,
    token_id: &[u8; TOKEN_ID_BYTES],
    mailboxes: u32,
    expires_at_unix_secs: u64,
) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(SIGN_DOMAIN.len() + 1 + 32 + TOKEN_ID_BYTES + 12);
    bytes.extend_from_slice(SIGN_DOMAIN);
    bytes.push(TOKEN_VERSION);
    bytes.extend_from_slice(relay_id.as_bytes());
    bytes.extend_from_slice(token_id);
    bytes.extend_from_slice(&mailboxes.to_be_bytes());
    bytes.extend_from_slice(&expires_at_unix_secs.to_be_bytes());
    bytes
}

/// Lower-case hex of a token id, for logs and the operator.
pub fn token_id_hex(token_id: &[u8; TOKEN_ID_BYTES]) -> String {
    data_encoding::HEXLOWER.encode(token_id)
}

/// The relay id (Ed25519 public key) of a node secret key.
pub fn relay_id_of(node_secret: &[u8; 32]) -> DeviceId {
    DeviceId(
        SigningKey::from_bytes(node_secret)
            .verifying_key()
            .to_bytes(),
    )
}

impl AdmissionToken {
    /// Sign a token with the relay's node secret key: `mailboxes` new mailboxes until
    /// `expires_at_unix_secs`. `token_id` must be random.
    pub fn mint(
        node_secret: &[u8; 32],
        token_id: [u8; TOKEN_ID_BYTES],
        mailboxes: u32,
        expires_at_unix_secs: u64,
    ) -> Result<AdmissionToken, MintError> {
        if !(1..=TOKEN_MAILBOXES_MAX).contains(&mailboxes) {
            return Err(MintError::Mailboxes);
        }
        let key = SigningKey::from_bytes(node_secret);
        let relay_id = DeviceId(key.verifying_key().to_bytes());
        let signature = key
            .sign(&signed_bytes(
                &relay_id,
                &token_id,
                mailboxes,
                expires_at_unix_secs,
            ))
            .to_bytes();
        Ok(AdmissionToken {
            relay_id,
            token_id,
            mailboxes,
            expires_at_unix_secs,
            signature,
        })
    }

    /// Mint a token valid for `valid_days` from `now_unix_secs`.
    pub fn mint_for_days(
        node_secret: &[u8; 32],
        token_id: [u8; TOKEN_ID_BYTES],
        mailboxes: u32,
        now_unix_secs: u64,
        valid_days: u64,
    ) -> Result<AdmissionToken, MintError> {
        if !(1..=TOKEN_VALID_DAYS_MAX).contains(&valid_days) {
            return Err(MintError::ValidDays);
        }
        let expires = now_unix_secs.saturating_add(valid_days * 24 * 3600);
        Self::mint(node_secret, token_id, mailboxes, expires)
    }

    /// The token's text. A secret: show it only to whom it is for.
    pub fn encode(&self) -> String {
        let wire = TokenWire {
            v: TOKEN_VERSION,
            relay: self.relay_id.as_bytes().to_vec(),
            id: self.token_id.to_vec(),
            n: self.mailboxes,
            exp: self.expires_at_unix_secs,
            sig: self.signature.to_vec(),
        };
        let mut body = Vec::new();
        ciborium::into_writer(&wire, &mut body).expect("writing CBOR to a Vec cannot fail");
        let sum = checksum(&body);
        body.extend_from_slice(&sum);
        format!(
            "{TOKEN_PREFIX}{}",
            data_encoding::BASE32_NOPAD.encode(&body)
        )
    }

    /// Parse a token's text (case, whitespace and `-` are ignored). Does not verify it: see
    /// [`AdmissionToken::verify`].
    pub fn decode(text: &str) -> Result<AdmissionToken, TokenError> {
        if text.len() > ADMISSION_CHARS_MAX {
            return Err(TokenError::TooLong);
        }
        let cleaned: String = text
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let data = cleaned
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::Prefix)?;
        let raw = data_encoding::BASE32_NOPAD
            .decode(data.as_bytes())
            .map_err(|_| TokenError::Encoding)?;
        if raw.len() < CHECKSUM_BYTES {
            return Err(TokenError::Checksum);
        }
        let (body, sum) = raw.split_at(raw.len() - CHECKSUM_BYTES);
        if checksum(body) != sum {
            return Err(TokenError::Checksum);
        }
        let malformed = |err: &dyn std::fmt::Display| TokenError::Malformed(err.to_string());
        let peek: VersionPeek = ciborium::from_reader(body).map_err(|e| malformed(&e))?;
        if peek.v != TOKEN_VERSION {
            return Err(TokenError::Version(peek.v));
        }
        let wire: TokenWire = ciborium::from_reader(body).map_err(|e| malformed(&e))?;
        let relay: [u8; 32] = wire
            .relay
            .as_slice()
            .try_into()
            .map_err(|_| malformed(&"relay id must be 32 bytes"))?;
        let token_id: [u8; TOKEN_ID_BYTES] = wire
            .id
            .as_slice()
            .try_into()
            .map_err(|_| malformed(&"token id must be 16 bytes"))?;
        let signature: [u8; 64] = wire
            .sig
            .as_slice()
            .try_into()
            .map_err(|_| malformed(&"signature must be 64 bytes"))?;
        if !(1..=TOKEN_MAILBOXES_MAX).contains(&wire.n) {
            return Err(malformed(&"budget out of range"));
        }
        Ok(AdmissionToken {
            relay_id: DeviceId(relay),
            token_id,
            mailboxes: wire.n,
            expires_at_unix_secs: wire.exp,
            signature,
        })
    }

    /// Whether this token admits on relay `relay_id` at `now_unix_secs`: its relay, its
    /// signature (strict Ed25519 by the relay's key), its expiry — in that order, so a token
    /// of another relay says so rather than "bad signature".
    pub fn verify(&self, relay_id: &DeviceId, now_unix_secs: u64) -> Result<(), TokenRefusal> {
        if self.relay_id != *relay_id {
            return Err(TokenRefusal::OtherRelay);
        }
        let key = VerifyingKey::from_bytes(relay_id.as_bytes())
            .map_err(|_| TokenRefusal::BadSignature)?;
        let message = signed_bytes(
            &self.relay_id,
            &self.token_id,
            self.mailboxes,
            self.expires_at_unix_secs,
        );
        key.verify_strict(&message, &Signature::from_bytes(&self.signature))
            .map_err(|_| TokenRefusal::BadSignature)?;
        if now_unix_secs >= self.expires_at_unix_secs {
            return Err(TokenRefusal::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; 32] = [7; 32];
    const NOW: u64 = 1_700_000_000;

    fn relay() -> DeviceId {
        relay_id_of(&SECRET)
    }

    #[test]
    fn the_node_key_signs_for_the_iroh_id() {
        let iroh = iroh::SecretKey::from_bytes(&SECRET).public();
        assert_eq!(relay().as_bytes(), iroh.as_bytes());
    }

    #[test]
    fn tokens_round_trip_and_verify_only_on_their_relay_before_expiry() {
        let minted = AdmissionToken::mint(&SECRET, [1; 16], 5, NOW + 10).unwrap();
        let text = minted.encode();
        assert!(text.starts_with(TOKEN_PREFIX), "{text}");
        assert!(text.len() < ADMISSION_CHARS_MAX, "{}", text.len());
        let decoded = AdmissionToken::decode(&text).unwrap();
        assert_eq!(decoded, minted);
        // Lower case, wrapped with spaces and dashes, still reads.
        let sloppy = format!("{} - {}", &text[..20].to_lowercase(), &text[20..]);
        assert_eq!(AdmissionToken::decode(&sloppy).unwrap(), minted);
        decoded.verify(&relay(), NOW).unwrap();
        assert_eq!(
            decoded.verify(&relay(), NOW + 10),
            Err(TokenRefusal::Expired)
        );
        let other = relay_id_of(&[8; 32]);
        assert_eq!(decoded.verify(&other, NOW), Err(TokenRefusal::OtherRelay));
        // A token claiming this relay but signed by another key fails its signature.
        let mut forged = AdmissionToken::mint(&[8; 32], [1; 16], 5, NOW + 10).unwrap();
        forged.relay_id = relay();
        assert_eq!(
            forged.verify(&relay(), NOW),
            Err(TokenRefusal::BadSignature)
        );
        // A raised budget breaks the signature.
        let mut raised = minted.clone();
        raised.mailboxes = 500;
        let raised = AdmissionToken::decode(&raised.encode()).unwrap();
        assert_eq!(
            raised.verify(&relay(), NOW),
            Err(TokenRefusal::BadSignature)
        );
    }

    #[test]
    fn bad_token_text_is_a_typed_error() {
        let text = AdmissionToken::mint(&SECRET, [1; 16], 5, NOW)
            .unwrap()
            .encode();
        assert_eq!(AdmissionToken::decode("ZK1AAAA"), Err(TokenError::Prefix));
        assert_eq!(AdmissionToken::decode("ZKA1!!!"), Err(TokenError::Encoding));
        assert_eq!(
            AdmissionToken::decode(&"A".repeat(ADMISSION_CHARS_MAX + 1)),
            Err(TokenError::TooLong)
        );
        let mut typo = text.clone().into_bytes();
        let at = typo.len() / 2;
        typo[at] = if typo[at] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            AdmissionToken::decode(std::str::from_utf8(&typo).unwrap()),
            Err(TokenError::Checksum)
        );
        // Cut short: the checksum (or the base32 tail) no longer matches.
        assert!(matches!(
            AdmissionToken::decode(&text[..text.len() - 8]),
            Err(TokenError::Checksum | TokenError::Encoding)
        ));
        assert_eq!(
            AdmissionToken::mint(&SECRET, [1; 16], 0, NOW),
            Err(MintError::Mailboxes)
        );
        assert_eq!(
            AdmissionToken::mint_for_days(&SECRET, [1; 16], 1, NOW, 0),
            Err(MintError::ValidDays)
        );
    }
}
