//! Encoding and decoding of frames: CBOR bodies and the `u32` big-endian length prefix.
//!
//! Decoding hostile bytes never panics and never allocates more than the input it was given:
//! the length prefix is checked against [`FRAME_BYTES_MAX`] before a body is buffered, and
//! the CBOR decoder reads byte and text strings in bounded chunks, so a forged length inside
//! the body cannot make it allocate. Unknown frame tags are reported as
//! [`DecodeError::Unsupported`] with the request id when one can be recovered, so the relay
//! can answer `Error{code: unsupported}` instead of dropping the connection. That recovery
//! reads only the body's first [`RECOVERY_WINDOW_BYTES`], so a malformed frame costs a
//! bounded amount of work whatever its size.

use crate::ids::ReqId;
use crate::wire::{FRAME_BYTES_MAX, FRAME_TAGS, Frame};
use bytes::{BufMut, Bytes, BytesMut};

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

/// Bytes at the start of a body that the error path reads to recover a frame's tag and
/// `req`. A frame starts with its tag (a one-entry map) and serde writes fields in declaration
/// order with `req` first in every frame that has one, so tag and `req` end within ~80 bytes
/// (map headers, a tag of at most 64 bytes, `"req"`, a u64); 256 leaves room for fields an
/// older or newer peer might put first. Only this prefix is looked at, so a malformed 1 MiB
/// frame costs the same small, constant work as a malformed 1 KiB one (re-parsing the whole
/// body into a CBOR value used to cost ~120 ms of CPU per garbage MiB).
pub const RECOVERY_WINDOW_BYTES: usize = 256;

/// Nesting the recovery scan skips through before giving up on finding `req` (a field before
/// `req` that holds arrays of maps is already not a frame of ours).
const RECOVERY_DEPTH_MAX: u32 = 4;

/// Work out why a body failed to decode: unknown tag or malformed, and its `req` if any,
/// from the body's first [`RECOVERY_WINDOW_BYTES`] only.
fn classify(body: &[u8], detail: String) -> DecodeError {
    let detail: String = detail.chars().take(200).collect();
    let window = &body[..body.len().min(RECOVERY_WINDOW_BYTES)];
    let Some(Recovered { tag, req }) = recover(window) else {
        return DecodeError::Malformed { detail, req: None };
    };
    if FRAME_TAGS.contains(&tag) {
        DecodeError::Malformed { detail, req }
    } else {
        DecodeError::Unsupported {
            tag: tag.chars().take(64).collect(),
            req,
        }
    }
}

/// What the error path could read of a frame that did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Recovered<'a> {
    tag: &'a str,
    req: Option<ReqId>,
}

/// Read a frame's tag and `req` from `window` without building any value: `{tag: {fields}}`
/// with a definite one-entry outer map and a text tag, else `None`. `req` is `None` when the
/// fields are not a definite map, or `req` is not an unsigned integer found in the window.
fn recover(window: &[u8]) -> Option<Recovered<'_>> {
    let mut scan = Scan {
        bytes: window,
        at: 0,
    };
    if scan.head()? != (MAJOR_MAP, Some(1)) {
        return None;
    }
    let tag = scan.text()?;
    let req = scan.find_req();
    Some(Recovered { tag, req })
}

const MAJOR_UNSIGNED: u8 = 0;
const MAJOR_NEGATIVE: u8 = 1;
const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_ARRAY: u8 = 4;
const MAJOR_MAP: u8 = 5;
const MAJOR_TAG: u8 = 6;

/// A cursor over a CBOR prefix; every read fails (`None`) rather than step past the end.
struct Scan<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scan<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    /// An item's major type and argument (`None` argument = indefinite length).
    fn head(&mut self) -> Option<(u8, Option<u64>)> {
        let initial = *self.take(1)?.first()?;
        let (major, info) = (initial >> 5, initial & 0x1f);
        let argument = match info {
            0..=23 => Some(u64::from(info)),
            24 => Some(u64::from(self.take(1)?[0])),
            25 => Some(u64::from(u16::from_be_bytes(
                self.take(2)?.try_into().ok()?,
            ))),
            26 => Some(u64::from(u32::from_be_bytes(
                self.take(4)?.try_into().ok()?,
            ))),
            27 => Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?)),
            31 if major >= MAJOR_BYTES && major != MAJOR_TAG => None,
            _ => return None,
        };
        Some((major, argument))
    }

    /// A definite-length text string.
    fn text(&mut self) -> Option<&'a str> {
        let (major, len) = self.head()?;
        if major != MAJOR_TEXT {
            return None;
        }
        let bytes = self.take(usize::try_from(len?).ok()?)?;
        std::str::from_utf8(bytes).ok()
    }

    /// Skip one item (definite lengths only, at most `depth` levels deep).
    fn skip(&mut self, depth: u32) -> Option<()> {
        let (major, argument) = self.head()?;
        let argument = argument?;
        match major {
            MAJOR_UNSIGNED | MAJOR_NEGATIVE => {}
            MAJOR_BYTES | MAJOR_TEXT => {
                self.take(usize::try_from(argument).ok()?)?;
            }
            MAJOR_ARRAY | MAJOR_MAP => {
                let per_entry = if major == MAJOR_MAP { 2 } else { 1 };
                let items = argument.checked_mul(per_entry)?;
                // Each item is at least one byte: more than the window holds cannot fit.
                if items > self.bytes.len() as u64 || depth == 0 {
                    return None;
                }
                for _ in 0..items {
                    self.skip(depth - 1)?;
                }
            }
            MAJOR_TAG => self.skip(depth.checked_sub(1)?)?,
            // Simple values and floats: the argument bytes were the whole item.
            _ => {}
        }
        Some(())
    }

    /// The `req` field of the field map that follows the tag.
    fn find_req(&mut self) -> Option<ReqId> {
        let (major, fields) = self.head()?;
        if major != MAJOR_MAP {
            return None;
        }
        for _ in 0..fields? {
            let name = self.text()?;
            if name == "req" {
                return match self.head()? {
                    (MAJOR_UNSIGNED, Some(req)) => Some(ReqId(req)),
                    _ => None,
                };
            }
            self.skip(RECOVERY_DEPTH_MAX)?;
        }
        None
    }

    /// Bytes read so far (for tests: the scan never reads past its window).
    #[cfg(test)]
    fn examined(&self) -> usize {
        self.at
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use ciborium::Value;

    fn cbor(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(value, &mut out).unwrap();
        out
    }

    fn frame(tag: &str, fields: Vec<(&str, Value)>) -> Vec<u8> {
        let fields = fields
            .into_iter()
            .map(|(name, value)| (Value::Text(name.into()), value))
            .collect();
        cbor(&Value::Map(vec![(
            Value::Text(tag.into()),
            Value::Map(fields),
        )]))
    }

    #[test]
    fn an_unknown_tag_keeps_its_req_whatever_follows_it() {
        let junk = Value::Array(vec![Value::Integer(7.into()); 500_000]);
        let body = frame(
            "teleport",
            vec![("req", Value::Integer(9.into())), ("junk", junk)],
        );
        assert!(body.len() > 500_000);
        assert_eq!(
            decode(&body),
            Err(DecodeError::Unsupported {
                tag: "teleport".into(),
                req: Some(ReqId(9)),
            })
        );
    }

    #[test]
    fn fields_before_req_are_skipped_inside_the_window() {
        let body = frame(
            "teleport",
            vec![
                ("to", Value::Text("mars".into())),
                (
                    "how",
                    Value::Array(vec![Value::Map(vec![]), Value::Bool(true)]),
                ),
                ("req", Value::Integer(3.into())),
            ],
        );
        assert_eq!(decode(&body).unwrap_err().req(), Some(ReqId(3)));
    }

    #[test]
    fn recovery_reads_only_the_window() {
        // `req` after a 300-byte field lies past the window: it is not looked for there.
        let body = frame(
            "teleport",
            vec![
                ("pad", Value::Bytes(vec![0; 300])),
                ("req", Value::Integer(5.into())),
            ],
        );
        assert_eq!(
            decode(&body),
            Err(DecodeError::Unsupported {
                tag: "teleport".into(),
                req: None,
            })
        );
        // A scan over a large body never reads beyond its window.
        let mut big = frame("teleport", vec![("pad", Value::Bytes(vec![0; 1 << 20]))]);
        big.truncate(FRAME_BYTES_MAX);
        let window = &big[..RECOVERY_WINDOW_BYTES];
        let mut scan = Scan {
            bytes: window,
            at: 0,
        };
        assert_eq!(scan.head(), Some((MAJOR_MAP, Some(1))));
        assert_eq!(scan.text(), Some("teleport"));
        assert_eq!(scan.find_req(), None);
        assert!(scan.examined() <= RECOVERY_WINDOW_BYTES);
    }

    #[test]
    fn a_mebibyte_of_garbage_is_malformed() {
        let mut garbage = vec![0u8; 1 << 20];
        let mut x = 0x9e37_79b9_u32;
        for byte in &mut garbage {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *byte = x as u8;
        }
        for body in [garbage.clone(), [&[0xa1u8][..], &garbage].concat()] {
            assert!(
                matches!(decode(&body), Err(DecodeError::Malformed { .. })),
                "{:?}",
                decode(&body)
            );
        }
        // A known tag with fields that do not fit is malformed and keeps its req.
        let body = frame(
            "push",
            vec![
                ("req", Value::Integer(4.into())),
                ("mailbox", Value::Bytes(garbage)),
            ],
        );
        match decode(&body) {
            Err(DecodeError::Malformed { req, .. }) => assert_eq!(req, Some(ReqId(4))),
            other => panic!("expected malformed, got {other:?}"),
        }
    }

    #[test]
    fn headers_that_do_not_fit_the_window_are_refused_not_trusted() {
        // A map claiming 2^64-1 entries, a text claiming 2^32 bytes, reserved infos.
        for window in [
            &[0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
            &[0xa1, 0x7a, 0xff, 0xff, 0xff, 0xff, 0x61][..],
            &[0xa1, 0x61, 0x78, 0xbf][..],
            &[
                0xa1, 0x61, 0x78, 0xa1, 0x61, 0x61, 0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                0xff,
            ][..],
            &[0xa1, 0x61, 0x78, 0xa1, 0x63, b'r', b'e', b'q', 0x1c][..],
        ] {
            let recovered = recover(window);
            assert!(recovered.is_none_or(|r| r.req.is_none()), "{recovered:?}");
        }
    }
}
