//! The client side of the protocol's opening: send `Hello`, wait for `Welcome`. Shared by the
//! client's RelayConnection and the harness's protocol client, so both negotiate the same way
//! and read a refusal (an `Error` before `Welcome`, with its retry hint) the same way.

use super::{Link, LinkError, LinkReceiver, LinkSender};
use bytes::Bytes;
use std::time::Duration;
use zerok_messages::wire::PROTOCOL_VERSION;
use zerok_messages::{DeviceId, ErrorCode, Frame, Limits, codec};

/// A link the relay welcomed.
#[derive(Debug)]
pub struct Welcomed {
    /// Frames towards the relay.
    pub sender: LinkSender,
    /// Frames from the relay.
    pub receiver: LinkReceiver,
    /// The relay's id, as it announced it.
    pub relay_id: DeviceId,
    /// The join nonce of this connection.
    pub nonce: [u8; 32],
    /// The relay's limits.
    pub limits: Limits,
}

/// Why the opening failed.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// The link failed.
    #[error("link: {0}")]
    Link(#[from] LinkError),
    /// No `Welcome` in time.
    #[error("no welcome within {0:?}")]
    Timeout(Duration),
    /// The relay closed before `Welcome`.
    #[error("closed before welcome")]
    Closed,
    /// The relay refused the connection.
    #[error("refused: {}: {message}", code.as_str())]
    Refused {
        /// The code.
        code: ErrorCode,
        /// The relay's message.
        message: String,
        /// The relay's retry hint.
        retry_after_ms: Option<u64>,
    },
    /// Something else came first.
    #[error("unexpected {0}")]
    Unexpected(String),
}

impl HelloError {
    /// The relay's retry hint, when it refused with one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            HelloError::Refused {
                retry_after_ms: Some(ms),
                ..
            } => Some(Duration::from_millis(*ms)),
            _ => None,
        }
    }
}

/// Say `Hello` (protocol version 1, `client_agent`) on `link` and wait up to `timeout` for
/// the relay's `Welcome`.
pub async fn hello(
    link: Link,
    client_agent: &str,
    timeout: Duration,
) -> Result<Welcomed, HelloError> {
    let (_, sender, mut receiver) = link.into_parts();
    let hello = Frame::Hello {
        versions: vec![PROTOCOL_VERSION],
        client_agent: client_agent.to_owned(),
    };
    let body = codec::encode(&hello).map_err(|e| HelloError::Unexpected(e.to_string()))?;
    sender.send(Bytes::from(body)).await?;
    let first = tokio::time::timeout(timeout, receiver.recv())
        .await
        .map_err(|_| HelloError::Timeout(timeout))??
        .ok_or(HelloError::Closed)?;
    match codec::decode(&first).map_err(|e| HelloError::Unexpected(e.to_string()))? {
        Frame::Welcome {
            relay_id,
            nonce,
            limits,
            ..
        } => Ok(Welcomed {
            sender,
            receiver,
            relay_id,
            nonce,
            limits,
        }),
        Frame::Error {
            code,
            message,
            retry_after_ms,
            ..
        } => Err(HelloError::Refused {
            code,
            message,
            retry_after_ms,
        }),
        other => Err(HelloError::Unexpected(format!(
            "{} before welcome",
            other.tag()
        ))),
    }
}
