//! Reading a segment's records into the index (at open, and for `zerok-relay check`).
//!
//! A segment of the current format is walked batch by batch (format in [`super::core`]). A
//! record that fails its CRC inside a batch whose header holds is skipped and reported, and
//! the walk goes on with the next record (the header says where it starts). A damaged batch
//! header is passed by searching forward for the next batch header that holds; the records
//! of the damaged batch are taken by their own frames as far as they verify, and the rest of
//! it is reported. Only the **last** batch of the **newest** segment may be torn (every batch
//! is durable before the next is written): when it is incomplete, or its records fail, with
//! no valid batch after it, and the store was not closed cleanly (the last batch is not the
//! "closed" marker), the scan reports it as a torn tail and indexes none of it; the caller
//! cuts it off. Zeros after the last batch are the presized, unused end of the segment.
//!
//! Reads go through a [`Window`] of positional reads, so the walk can jump (re-sync) without
//! a seekable reader; memory is one window ([`WINDOW_BYTES`]) plus the largest batch header.

use super::*;

/// Bytes read at once while walking a segment: large enough that a walk is a few large
/// reads per segment, small enough to be nothing beside the index.
const WINDOW_BYTES: usize = 1 << 20;

/// One damaged range found by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Where it starts in its segment file.
    pub offset: u64,
    /// How many bytes it covers.
    pub bytes: u64,
    /// What was damaged: `"record"`, `"batch header"`, `"segment header"`, `"data after the
    /// last batch"`.
    pub what: &'static str,
}

/// What reading one segment found.
#[derive(Debug, Default, Clone)]
pub(super) struct Scanned {
    /// The segment's format (3 or 4).
    pub(super) format: u8,
    /// End of the last whole batch (where appending would go on).
    pub(super) good_len: u64,
    /// Start of an incomplete last batch (a torn, never acknowledged write) to cut off.
    pub(super) torn_at: Option<u64>,
    /// Start of the "closed" marker when it is the last batch of the segment.
    pub(super) closed_at: Option<u64>,
    /// Damaged ranges, in file order.
    pub(super) damage: Vec<Damage>,
    /// (mailbox, cursor) as damaged records seem to say (unverified): where a lost record
    /// may have set its mailbox's newest cursor.
    pub(super) cursor_hints: Vec<(MailboxId, u64)>,
    /// Batches, item records and mark records indexed.
    pub(super) batches: u64,
    pub(super) items: u64,
    pub(super) marks: u64,
}

/// How to scan.
#[derive(Debug, Clone, Copy)]
pub(super) struct ScanContext {
    /// The store's sync marker.
    pub(super) sync: [u8; SYNC_BYTES],
    /// Whether this is the newest segment (the only one whose last batch may be torn).
    pub(super) is_newest: bool,
    /// Check every item's blob id against `BLAKE3` of its ciphertext (`zerok-relay check`).
    pub(super) verify_blob_ids: bool,
}

/// Positional reads of a file through one buffer.
pub(super) struct Window<'a> {
    file: &'a dyn StoreFile,
    len: u64,
    start: u64,
    buf: Vec<u8>,
}

impl<'a> Window<'a> {
    pub(super) fn new(file: &'a dyn StoreFile) -> std::io::Result<Self> {
        Ok(Self {
            file,
            len: file.len()?,
            start: 0,
            buf: Vec::new(),
        })
    }

    /// `n` bytes at `at`; `None` when the file ends before.
    pub(super) fn get(&mut self, at: u64, n: usize) -> std::io::Result<Option<&[u8]>> {
        let Some(end) = at.checked_add(n as u64).filter(|end| *end <= self.len) else {
            return Ok(None);
        };
        let is_inside = at >= self.start && end <= self.start + self.buf.len() as u64;
        if !is_inside {
            let want = (n.max(WINDOW_BYTES) as u64).min(self.len - at) as usize;
            self.buf.resize(want, 0);
            self.start = at;
            if let Err(err) = self.file.read_exact_at(&mut self.buf, at) {
                self.buf.clear();
                return Err(err);
            }
        }
        let from = (at - self.start) as usize;
        Ok(Some(&self.buf[from..from + n]))
    }

    /// The end of the non-zero data from `from` on (`from` when everything after is zero).
    fn data_end(&mut self, from: u64) -> std::io::Result<u64> {
        let mut end = from;
        let mut at = from;
        while at < self.len {
            let n = (self.len - at).min(WINDOW_BYTES as u64) as usize;
            let Some(chunk) = self.get(at, n)? else { break };
            if let Some(last) = chunk.iter().rposition(|b| *b != 0) {
                end = at + last as u64 + 1;
            }
            at += n as u64;
        }
        Ok(end)
    }
}

/// A batch header found at some offset.
struct BatchHeader {
    start: u64,
    records_start: u64,
    end: u64,
    lens: Vec<u32>,
}

enum BatchRead {
    /// A header that holds.
    Header(BatchHeader),
    /// Zeros where a header would start.
    Zero,
    /// The file ends inside the header.
    Short,
    /// Not a header that holds.
    Bad,
}

fn read_batch(
    win: &mut Window<'_>,
    at: u64,
    sync: &[u8; SYNC_BYTES],
) -> std::io::Result<BatchRead> {
    let Some(fixed) = win.get(at, BATCH_FIXED)? else {
        return Ok(BatchRead::Short);
    };
    if fixed.iter().all(|b| *b == 0) {
        return Ok(BatchRead::Zero);
    }
    let Some((count, total)) = core::parse_batch_fixed(fixed, sync) else {
        return Ok(BatchRead::Bad);
    };
    let header_len = core::batch_header_len(count);
    let Some(header) = win.get(at, header_len)? else {
        return Ok(BatchRead::Short);
    };
    let Some(lens) = core::parse_batch_header(header, sync) else {
        return Ok(BatchRead::Bad);
    };
    let records_start = at + header_len as u64;
    Ok(BatchRead::Header(BatchHeader {
        start: at,
        records_start,
        end: records_start + total,
        lens,
    }))
}

/// The next offset at or after `from` where a batch header holds.
fn resync(
    win: &mut Window<'_>,
    from: u64,
    sync: &[u8; SYNC_BYTES],
) -> std::io::Result<Option<u64>> {
    let mut at = from;
    loop {
        let n = (win.len.saturating_sub(at)).min(WINDOW_BYTES as u64) as usize;
        if n < BATCH_FIXED {
            return Ok(None);
        }
        let Some(chunk) = win.get(at, n)? else {
            return Ok(None);
        };
        let Some(found) = chunk.windows(SYNC_BYTES).position(|w| w == sync) else {
            at += (n - (SYNC_BYTES - 1)) as u64;
            continue;
        };
        let candidate = at + found as u64;
        if let BatchRead::Header(_) = read_batch(win, candidate, sync)? {
            return Ok(Some(candidate));
        }
        at = candidate + 1;
    }
}

/// Whether a record frame is whole and what it claims: its own length agrees with the
/// batch header's, its CRC holds, its body decodes (and, when asked, its blob id is the
/// `BLAKE3` of its ciphertext).
fn verify_frame<'f>(frame: &'f [u8], verify_blob_ids: bool) -> Option<Record<'f>> {
    let header: &[u8; FRAME_HEADER] = frame.get(..FRAME_HEADER)?.try_into().ok()?;
    let (len, _) = core::parse_frame_header(header)?;
    if FRAME_HEADER + len != frame.len() {
        return None;
    }
    match core::decode_frame(frame)? {
        Record::Item(item)
            if verify_blob_ids && BlobId::of_ciphertext(item.ciphertext) != item.blob_id =>
        {
            None
        }
        record => Some(record),
    }
}

/// What a record that failed its check seems to say of its mailbox and cursor, read
/// without trusting it (the damage may be anywhere in it).
pub(super) fn cursor_hint(frame: &[u8]) -> Option<(MailboxId, u64)> {
    let body = frame.get(FRAME_HEADER..)?;
    let kind = *body.first()?;
    let is_known_kind = kind == core::KIND_ITEM || kind == core::KIND_MARK;
    if !is_known_kind || body.len() < core::MARK_BODY {
        return None;
    }
    let mailbox = MailboxId(body.get(1..33)?.try_into().ok()?);
    let cursor = u64::from_le_bytes(body.get(33..41)?.try_into().ok()?);
    Some((mailbox, cursor))
}

/// Where a scan puts the records it verified: the index, or `zerok-relay check`'s tally.
pub(super) trait ScanSink {
    /// An item record at `offset` of `segment`, `len` bytes.
    fn item(
        &mut self,
        segment: u32,
        offset: u64,
        len: usize,
        item: &ItemRecord<'_>,
    ) -> Result<(), IndexError>;
    /// A mark record in `segment`.
    fn mark(&mut self, segment: u32, mailbox: &MailboxId, latest: u64);
}

impl ScanSink for Index {
    fn item(
        &mut self,
        segment: u32,
        offset: u64,
        len: usize,
        item: &ItemRecord<'_>,
    ) -> Result<(), IndexError> {
        // A replay meets items the index may hold already (a compaction copy).
        self.insert_item(segment, offset, len, item, true)?;
        self.count_records(segment, 1);
        Ok(())
    }

    fn mark(&mut self, segment: u32, mailbox: &MailboxId, latest: u64) {
        Index::mark(self, segment, mailbox, latest);
    }
}

/// A sink that keeps nothing: a scan for its damage report only.
pub(super) struct NullSink;

impl ScanSink for NullSink {
    fn item(
        &mut self,
        _segment: u32,
        _offset: u64,
        _len: usize,
        _item: &ItemRecord<'_>,
    ) -> Result<(), IndexError> {
        Ok(())
    }

    fn mark(&mut self, _segment: u32, _mailbox: &MailboxId, _latest: u64) {}
}

/// Index one verified record.
fn apply(
    index: &mut dyn ScanSink,
    id: u32,
    offset: u64,
    record: &Record<'_>,
    scanned: &mut Scanned,
) -> std::io::Result<()> {
    match record {
        Record::Item(item) => {
            index
                .item(id, offset, FRAME_HEADER + item_body_len(item), item)
                .map_err(std::io::Error::other)?;
            scanned.items += 1;
        }
        Record::Mark { mailbox, latest } => {
            index.mark(id, mailbox, *latest);
            scanned.marks += 1;
        }
    }
    Ok(())
}

fn item_body_len(item: &ItemRecord<'_>) -> usize {
    ITEM_HEADER + item.ciphertext.len()
}

/// A batch whose records were checked: where the good ones lie and which failed.
struct CheckedBatch {
    start: u64,
    good: Vec<(u64, u32)>,
    failed: Vec<Damage>,
    hints: Vec<(MailboxId, u64)>,
    is_closed_marker: bool,
}

fn check_batch(
    win: &mut Window<'_>,
    header: &BatchHeader,
    ctx: &ScanContext,
) -> std::io::Result<CheckedBatch> {
    let mut checked = CheckedBatch {
        start: header.start,
        good: Vec::with_capacity(header.lens.len()),
        failed: Vec::new(),
        hints: Vec::new(),
        is_closed_marker: header.lens.is_empty(),
    };
    let mut at = header.records_start;
    for len in &header.lens {
        let is_good = match win.get(at, *len as usize)? {
            Some(frame) if verify_frame(frame, ctx.verify_blob_ids).is_some() => true,
            Some(frame) => {
                checked.hints.extend(cursor_hint(frame));
                false
            }
            None => false,
        };
        if is_good {
            checked.good.push((at, *len));
        } else {
            checked.failed.push(Damage {
                offset: at,
                bytes: u64::from(*len),
                what: "record",
            });
        }
        at += u64::from(*len);
    }
    Ok(checked)
}

/// Index the good records of a checked batch and report its failed ones.
fn commit_batch(
    win: &mut Window<'_>,
    index: &mut dyn ScanSink,
    id: u32,
    batch: CheckedBatch,
    scanned: &mut Scanned,
) -> std::io::Result<()> {
    for (at, len) in batch.good {
        // Checked by `check_batch`: decode without checking the CRC again.
        if let Some(frame) = win.get(at, len as usize)?
            && let Some(record) = frame.get(FRAME_HEADER..).and_then(core::decode_body)
        {
            apply(index, id, at, &record, scanned)?;
        }
    }
    scanned.damage.extend(batch.failed);
    scanned.cursor_hints.extend(batch.hints);
    scanned.batches += 1;
    Ok(())
}

/// Take what can be read of a damaged range `[start, end)` that begins with a batch header
/// that does not hold: its records, by their own frames, from where its (maybe intact) count
/// field says they start, as far as they verify. Reports the range.
fn salvage(
    win: &mut Window<'_>,
    index: &mut dyn ScanSink,
    id: u32,
    range: std::ops::Range<u64>,
    what: &'static str,
    ctx: &ScanContext,
    scanned: &mut Scanned,
) -> std::io::Result<()> {
    let std::ops::Range { start, end } = range;
    scanned.damage.push(Damage {
        offset: start,
        bytes: end - start,
        what,
    });
    let count = match win.get(start + SYNC_BYTES as u64, 4)? {
        Some(bytes) => u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as u64,
        None => return Ok(()),
    };
    let header_end = |count: u64| start + core::batch_header_len(0) as u64 + 4 * count;
    let mut at = header_end(count);
    if frame_at(win, at, end, ctx)?.is_none() {
        // The count is damaged too: records start after the first length entry at which a
        // frame verifies.
        let mut guess = 0;
        at = end;
        while header_end(guess) < end {
            if frame_at(win, header_end(guess), end, ctx)?.is_some() {
                at = header_end(guess);
                break;
            }
            guess += 1;
        }
    }
    while let Some(frame_len) = frame_at(win, at, end, ctx)? {
        if let Some(frame) = win.get(at, frame_len as usize)?
            && let Some(record) = verify_frame(frame, ctx.verify_blob_ids)
        {
            apply(index, id, at, &record, scanned)?;
        }
        at += frame_len;
    }
    Ok(())
}

/// The length of the frame at `at` when one verifies there and ends by `end`.
fn frame_at(
    win: &mut Window<'_>,
    at: u64,
    end: u64,
    ctx: &ScanContext,
) -> std::io::Result<Option<u64>> {
    if at + FRAME_HEADER as u64 > end {
        return Ok(None);
    }
    let Some(header) = win.get(at, FRAME_HEADER)? else {
        return Ok(None);
    };
    let mut fixed = [0u8; FRAME_HEADER];
    fixed.copy_from_slice(header);
    let Some((len, _)) = core::parse_frame_header(&fixed) else {
        return Ok(None);
    };
    let frame_len = (FRAME_HEADER + len) as u64;
    if at + frame_len > end {
        return Ok(None);
    }
    let Some(frame) = win.get(at, frame_len as usize)? else {
        return Ok(None);
    };
    Ok(verify_frame(frame, ctx.verify_blob_ids).map(|_| frame_len))
}

/// Read the records of segment `id` from `from_offset` on (0, or a batch boundary) into the
/// index; see the module doc for what is kept, reported and cut.
pub(super) fn scan_segment(
    index: &mut dyn ScanSink,
    id: u32,
    file: &dyn StoreFile,
    from_offset: u64,
    ctx: &ScanContext,
) -> std::io::Result<Scanned> {
    let mut win = Window::new(file)?;
    let mut scanned = Scanned {
        format: 4,
        ..Scanned::default()
    };
    let mut pos = from_offset;
    if pos < SEGMENT_HEADER as u64 {
        if win.get(0, SEGMENT_MAGIC_3.len())? == Some(SEGMENT_MAGIC_3.as_slice()) {
            return scan_v3(index, id, file, ctx);
        }
        let Some(header) = win.get(0, SEGMENT_HEADER)? else {
            // Shorter than its header: a segment whose creation never finished.
            scanned.torn_at = ctx.is_newest.then_some(0);
            if !ctx.is_newest && win.data_end(0)? > 0 {
                scanned.damage.push(Damage {
                    offset: 0,
                    bytes: win.len,
                    what: "segment header",
                });
            }
            return Ok(scanned);
        };
        if core::parse_segment_header(header).is_none() {
            scanned.damage.push(Damage {
                offset: 0,
                bytes: SEGMENT_HEADER as u64,
                what: "segment header",
            });
        }
        pos = SEGMENT_HEADER as u64;
    }
    scanned.good_len = pos;
    // A batch with failed records in the newest segment: indexed once a valid batch follows,
    // else it is the torn tail.
    let mut pending: Option<CheckedBatch> = None;
    loop {
        if pos >= win.len {
            break;
        }
        let found = read_batch(&mut win, pos, &ctx.sync)?;
        // Whether searching forward can find a batch after this point: not when the file
        // ends inside this one.
        let may_resync = matches!(found, BatchRead::Bad | BatchRead::Zero);
        let header = match found {
            BatchRead::Header(header) if header.end <= win.len => Some(header),
            BatchRead::Zero | BatchRead::Short if win.data_end(pos)? == pos => break,
            _ => None,
        };
        if let Some(header) = header {
            if let Some(batch) = pending.take() {
                commit_batch(&mut win, index, id, batch, &mut scanned)?;
            }
            let batch = check_batch(&mut win, &header, ctx)?;
            scanned.closed_at = batch.is_closed_marker.then_some(header.start);
            if batch.failed.is_empty() || !ctx.is_newest {
                commit_batch(&mut win, index, id, batch, &mut scanned)?;
            } else {
                pending = Some(batch);
            }
            pos = header.end;
            scanned.good_len = pos;
            continue;
        }
        // No batch that holds starts here.
        let next = if may_resync {
            resync(&mut win, pos + 1, &ctx.sync)?
        } else {
            None
        };
        match next {
            Some(next) => {
                if let Some(batch) = pending.take() {
                    commit_batch(&mut win, index, id, batch, &mut scanned)?;
                }
                salvage(
                    &mut win,
                    index,
                    id,
                    pos..next,
                    "batch header",
                    ctx,
                    &mut scanned,
                )?;
                scanned.closed_at = None;
                pos = next;
            }
            None => {
                if ctx.is_newest && scanned.closed_at.is_none() {
                    scanned.torn_at = Some(pending.take().map_or(pos, |b| b.start));
                    return Ok(scanned);
                }
                if let Some(batch) = pending.take() {
                    commit_batch(&mut win, index, id, batch, &mut scanned)?;
                }
                let end = win.data_end(pos)?.max(pos + 1).min(win.len);
                salvage(
                    &mut win,
                    index,
                    id,
                    pos..end,
                    "data after the last batch",
                    ctx,
                    &mut scanned,
                )?;
                scanned.closed_at = None;
                break;
            }
        }
    }
    if let Some(batch) = pending {
        // The last batch of the newest segment, with records that fail and nothing after it.
        scanned.torn_at = Some(batch.start);
    }
    Ok(scanned)
}

/// Read a segment of format 3 (records without batches) as that format always was: a
/// record that fails is the end of its data; the caller cuts it off the newest segment and
/// refuses it anywhere else.
fn scan_v3(
    index: &mut dyn ScanSink,
    id: u32,
    file: &dyn StoreFile,
    ctx: &ScanContext,
) -> std::io::Result<Scanned> {
    let mut reader = BufReader::with_capacity(1 << 20, SeqReader::new(file));
    let mut scanned = Scanned {
        format: 3,
        ..Scanned::default()
    };
    let mut offset = SEGMENT_MAGIC_3.len() as u64;
    let mut skip = [0u8; 8];
    reader.read_exact(&mut skip)?;
    let mut frame = Vec::new();
    let damaged = loop {
        let mut header = [0u8; FRAME_HEADER];
        match read_full(&mut reader, &mut header)? {
            0 => break false,
            n if n < FRAME_HEADER => break true,
            _ => {}
        }
        let Some((len, _)) = core::parse_frame_header(&header) else {
            // Zeros where a header should be: the unused, presized end of the segment, unless
            // anything after them is not zero.
            let is_zero = header.iter().all(|b| *b == 0) && rest_is_zero(&mut reader)?;
            break !is_zero;
        };
        frame.clear();
        frame.extend_from_slice(&header);
        frame.resize(FRAME_HEADER + len, 0);
        if read_full(&mut reader, &mut frame[FRAME_HEADER..])? < len {
            break true;
        }
        match verify_frame(&frame, ctx.verify_blob_ids) {
            Some(record) => apply(index, id, offset, &record, &mut scanned)?,
            None => break true,
        }
        offset += frame.len() as u64;
    };
    scanned.good_len = offset;
    if damaged {
        if ctx.is_newest {
            scanned.torn_at = Some(offset);
        } else {
            scanned.damage.push(Damage {
                offset,
                bytes: file.len()?.saturating_sub(offset),
                what: "record",
            });
        }
    }
    Ok(scanned)
}

/// What a segment says the store's sync marker is.
pub(super) enum SyncFound {
    /// Its header (or its first batch header) holds with it.
    Verified([u8; SYNC_BYTES]),
    /// Its header is damaged; these are the bytes where the marker would be.
    Guess([u8; SYNC_BYTES]),
    /// A segment of format 3, or too short.
    None,
}

/// The store's sync marker as the segment header of `file` holds it, else as its first batch
/// header holds it (when that header's CRC holds with it).
pub(super) fn read_sync(file: &dyn StoreFile) -> std::io::Result<SyncFound> {
    let mut win = Window::new(file)?;
    let Some(header) = win.get(0, SEGMENT_HEADER)? else {
        return Ok(SyncFound::None);
    };
    if &header[..8] == SEGMENT_MAGIC_3 {
        return Ok(SyncFound::None);
    }
    if let Some(sync) = core::parse_segment_header(header) {
        return Ok(SyncFound::Verified(sync));
    }
    let mut guess = [0u8; SYNC_BYTES];
    guess.copy_from_slice(&header[8..8 + SYNC_BYTES]);
    let Some(first) = win.get(SEGMENT_HEADER as u64, SYNC_BYTES)? else {
        return Ok(SyncFound::Guess(guess));
    };
    let mut sync = [0u8; SYNC_BYTES];
    sync.copy_from_slice(first);
    match read_batch(&mut win, SEGMENT_HEADER as u64, &sync)? {
        BatchRead::Header(_) => Ok(SyncFound::Verified(sync)),
        _ => Ok(SyncFound::Guess(guess)),
    }
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
