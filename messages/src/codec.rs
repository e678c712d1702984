//! Encoding and decoding of frames: CBOR bodies and the `u32` big-endian length prefix.
//!
//! Decoding hostile bytes never panics and never allocates more than the input it was given:
//! the length prefix is checked against [`FRAME_BYTES_MAX`] before a body is buffered, and
//! the CBOR decoder reads byte and text strings in bounded chunks, so a forged length inside
//! the body cannot make it allocate. Unknown frame tags are reported as
//! [`DecodeError::Unsupported`] with the request id when one can be recovered, so the relay
//! can answer `Error{code: unsupported}` instead of dropping the connection.

use crate::ids::ReqId;
use crate::wire::{FRAME_BYTES_MAX, FRAME_TAGS, Frame};
use bytes::{BufMut, Bytes, BytesMut};
use ciborium::Value;

/// Bytes of the length prefix in front of every frame on a stream.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Why a frame could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded frame exceeds the limit.
    #[error("frame of {bytes} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Encoded size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// CBOR serialisation failed (cannot happen for well-formed frames).
    #[error("cbor encoding failed: {0}")]
    Cbor(String),
}

/// Why bytes could not be decoded into a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The declared or actual frame length exceeds the limit.
    #[error("frame of {bytes} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Declared or actual size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The frame is well-formed CBOR with a tag this version does not know.
    #[error("unsupported frame tag {tag:?}")]
    Unsupported {
        /// The unknown tag (truncated to 64 characters).
        tag: String,
        /// The frame's `req` field, when it had a readable one.
        req: Option<ReqId>,
    },
    /// The bytes are not a valid frame.
    #[error("malformed frame: {detail}")]
    Malformed {
        /// What was wrong.
        detail: String,
        /// The frame's `req` field, when it had a readable one.
        req: Option<ReqId>,
    },
}

impl DecodeError {
    /// The request id recovered from the bad frame, if any.
    pub fn req(&self) -> Option<ReqId> {
        match self {
            DecodeError::TooLarge { .. } => None,
            DecodeError::Unsupported { req, .. } | DecodeError::Malformed { req, .. } => *req,
        }
    }
}

/// Encode a frame body (no length prefix).
pub fn encode(frame: &Frame) -> Result<Vec<u8>, EncodeError> {
    let mut body = Vec::with_capacity(encoded_size_hint(frame));
    ciborium::into_writer(frame, &mut body).map_err(|e| EncodeError::Cbor(e.to_string()))?;
    if body.len() > FRAME_BYTES_MAX {
        return Err(EncodeError::TooLarge {
            bytes: body.len(),
            limit: FRAME_BYTES_MAX,
        });
    }
    Ok(body)
}

/// Encode a frame with its length prefix, ready to write to a stream.
pub fn encode_prefixed(frame: &Frame) -> Result<Bytes, EncodeError> {
    let body = encode(frame)?;
    let mut out = BytesMut::with_capacity(LENGTH_PREFIX_BYTES + body.len());
    put_prefixed(&mut out, &body)?;
    Ok(out.freeze())
}

/// Append `len(body) as u32 BE ‖ body` to `out`, refusing bodies over the limit.
pub fn put_prefixed(out: &mut BytesMut, body: &[u8]) -> Result<(), EncodeError> {
    if body.len() > FRAME_BYTES_MAX {
        return Err(EncodeError::TooLarge {
            bytes: body.len(),
            limit: FRAME_BYTES_MAX,
        });
    }
    let len = u32::try_from(body.len()).expect("FRAME_BYTES_MAX fits in u32");
    out.reserve(LENGTH_PREFIX_BYTES + body.len());
    out.put_u32(len);
    out.put_slice(body);
    Ok(())
}

/// Check a length prefix read from a stream before the body is buffered.
pub fn body_len(prefix: [u8; LENGTH_PREFIX_BYTES]) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(DecodeError::TooLarge {
            bytes: len,
            limit: FRAME_BYTES_MAX,
        });
    }
    Ok(len)
}

/// Decode one frame body (no length prefix).
pub fn decode(body: &[u8]) -> Result<Frame, DecodeError> {
    if body.len() > FRAME_BYTES_MAX {
        return Err(DecodeError::TooLarge {
            bytes: body.len(),
            limit: FRAME_BYTES_MAX,
        });
    }
    let mut reader = body;
    match ciborium::from_reader::<Frame, _>(&mut reader) {
        Ok(frame) if reader.is_empty() => Ok(frame),
        Ok(_) => Err(DecodeError::Malformed {
            detail: format!("{} trailing bytes after the frame", reader.len()),
            req: None,
        }),
        Err(err) => Err(classify(body, err.to_string())),
    }
}

/// Work out why a body failed to decode: unknown tag or malformed, and its `req` if any.
/// Only runs on the error path, so the second parse costs nothing in normal operation.
fn classify(body: &[u8], detail: String) -> DecodeError {
    let detail: String = detail.chars().take(200).collect();
    let Ok(value) = ciborium::from_reader::<Value, _>(body) else {
        return DecodeError::Malformed { detail, req: None };
    };
    let Value::Map(entries) = value else {
        return DecodeError::Malformed { detail, req: None };
    };
    let [(Value::Text(tag), fields)] = entries.as_slice() else {
        return DecodeError::Malformed { detail, req: None };
    };
    let req = match fields {
        Value::Map(fields) => fields.iter().find_map(|(key, value)| match (key, value) {
            (Value::Text(name), Value::Integer(req)) if name == "req" => {
                u64::try_from(*req).ok().map(ReqId)
            }
            _ => None,
        }),
        _ => None,
    };
    if FRAME_TAGS.contains(&tag.as_str()) {
        DecodeError::Malformed { detail, req }
    } else {
        DecodeError::Unsupported {
            tag: tag.chars().take(64).collect(),
            req,
        }
    }
}

/// A little over the frame's payload so that encoding a push does one allocation.
fn encoded_size_hint(frame: &Frame) -> usize {
    const FIXED_FIELDS_BYTES: usize = 160;
    match frame {
        Frame::Push { ciphertext, .. } => ciphertext.len() + FIXED_FIELDS_BYTES,
        Frame::Deliver { item, .. } => item.ciphertext.len() + FIXED_FIELDS_BYTES,
        Frame::PullPage { items, .. } => items
            .iter()
            .map(|item| item.ciphertext.len() + FIXED_FIELDS_BYTES)
            .sum::<usize>()
            .min(FRAME_BYTES_MAX)
            .saturating_add(FIXED_FIELDS_BYTES),
        _ => FIXED_FIELDS_BYTES,
    }
}
