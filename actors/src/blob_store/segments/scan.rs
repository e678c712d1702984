//! Reading a segment's records at open.

use super::*;
/// What reading one segment found.
pub(super) struct Scanned {
    /// Bytes of whole records (and the magic) from the start.
    pub(super) good_len: u64,
    /// Whether something after `good_len` failed to decode (and is not the zeros of a
    /// presized segment).
    pub(super) damaged: bool,
}

/// Read the records of a segment from `from` (0, or the end of a record: the index's
/// checkpoint) into the index.
pub(super) fn scan_segment(
    index: &mut Index,
    id: u32,
    file: &dyn StoreFile,
    from: u64,
) -> std::io::Result<Scanned> {
    let mut reader = BufReader::with_capacity(1 << 20, SeqReader::new(file));
    let mut magic = [0u8; 8];
    if let Err(err) = reader.read_exact(&mut magic) {
        if err.kind() == ErrorKind::UnexpectedEof {
            return Ok(Scanned {
                good_len: 0,
                damaged: true,
            });
        }
        return Err(err);
    }
    if &magic != SEGMENT_MAGIC {
        return Ok(Scanned {
            good_len: 0,
            damaged: true,
        });
    }
    let mut offset = SEGMENT_MAGIC.len() as u64;
    if from > offset {
        reader = BufReader::with_capacity(1 << 20, SeqReader::at(file, from));
        offset = from;
    }
    let mut frame = Vec::new();
    loop {
        let mut header = [0u8; FRAME_HEADER];
        match read_full(&mut reader, &mut header)? {
            0 => {
                return Ok(Scanned {
                    good_len: offset,
                    damaged: false,
                });
            }
            n if n < FRAME_HEADER => break,
            _ => {}
        }
        let Some((len, _)) = core::parse_frame_header(&header) else {
            // Zeros where a header should be: the unused, presized end of the segment, unless
            // anything after them is not zero.
            let is_zero = header.iter().all(|b| *b == 0) && rest_is_zero(&mut reader)?;
            return Ok(Scanned {
                good_len: offset,
                damaged: !is_zero,
            });
        };
        frame.clear();
        frame.extend_from_slice(&header);
        frame.resize(FRAME_HEADER + len, 0);
        if read_full(&mut reader, &mut frame[FRAME_HEADER..])? < len {
            break;
        }
        match core::decode_frame(&frame) {
            Some(Record::Item(item)) => {
                index
                    .insert_item(id, offset, frame.len(), &item, true)
                    .map_err(std::io::Error::other)?;
                index.count_records(id, 1);
            }
            Some(Record::Mark { mailbox, latest }) => index.mark(id, &mailbox, latest),
            None => break,
        }
        offset += frame.len() as u64;
    }
    Ok(Scanned {
        good_len: offset,
        damaged: true,
    })
}

/// Whether everything left to read is zero.
pub(super) fn rest_is_zero(reader: &mut impl Read) -> std::io::Result<bool> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = read_full(reader, &mut buf)?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        if n < buf.len() {
            return Ok(true);
        }
    }
}

/// Read until `buf` is full or the file ends; answers the bytes read.
pub(super) fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}
