//! The admission ledger: mailboxes a relay in `token` mode admitted and what each token used,
//! in `<data_dir>/admission.ledger`, so budgets and admissions survive restarts.
//!
//! Layout: an 8-byte magic, then 64-byte records (mailbox 32, token id 16, budget 4, expiry 8,
//! CRC-32 4), appended one per admission and `fdatasync`ed before the admission is answered.
//! The file is mode 0600 and its directory is synced when it is created. At load a torn or
//! damaged tail (a crash mid-append) is cut off; a file that is not a ledger is refused, never
//! overwritten. A failed append is undone by truncation (or the ledger refuses further
//! appends), so records never misalign. Its size is bounded by the budgets handed out.

use super::token::{AdmissionToken, TOKEN_ID_BYTES};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tracing::warn;
use zerok_messages::MailboxId;

/// File in the data dir holding admitted mailboxes and token usage (token mode).
pub const LEDGER_FILE: &str = "admission.ledger";
/// First bytes of the ledger: what it is and its layout version.
pub(super) const LEDGER_MAGIC: &[u8; 8] = b"ZKADM\x00\x00\x01";
/// Bytes of one ledger record: mailbox 32, token id 16, budget 4, expiry 8, CRC-32 4.
pub(super) const LEDGER_RECORD_BYTES: usize = 64;
/// Largest ledger accepted at start: 1 GiB is 16M admissions, far beyond any budget an
/// operator hands out; a bigger file is not ours.
const LEDGER_BYTES_MAX: u64 = 1 << 30;

/// Why the admission state could not be loaded at start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// Reading or creating the ledger failed.
    #[error("admission ledger {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not an admission ledger (never overwritten).
    #[error("admission ledger {}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

pub(super) struct LedgerFile {
    path: PathBuf,
    file: Option<std::fs::File>,
    /// Bytes of the file that hold whole, valid records (and the header).
    len: u64,
    /// A write failed and could not be undone: refuse creations rather than misalign.
    is_broken: bool,
}

pub(super) fn record_bytes(
    mailbox: &MailboxId,
    token: &AdmissionToken,
) -> [u8; LEDGER_RECORD_BYTES] {
    let mut record = [0u8; LEDGER_RECORD_BYTES];
    record[..32].copy_from_slice(mailbox.as_bytes());
    record[32..48].copy_from_slice(&token.token_id);
    record[48..52].copy_from_slice(&token.mailboxes.to_be_bytes());
    record[52..60].copy_from_slice(&token.expires_at_unix_secs.to_be_bytes());
    let crc = crc32fast::hash(&record[..60]);
    record[60..].copy_from_slice(&crc.to_be_bytes());
    record
}

/// `(mailbox, token id)` of a valid record.
fn parse_record(record: &[u8]) -> Option<(MailboxId, [u8; TOKEN_ID_BYTES])> {
    if record.len() != LEDGER_RECORD_BYTES {
        return None;
    }
    let crc = u32::from_be_bytes(record[60..].try_into().ok()?);
    if crc32fast::hash(&record[..60]) != crc {
        return None;
    }
    let mailbox = MailboxId(record[..32].try_into().ok()?);
    let token_id = record[32..48].try_into().ok()?;
    Some((mailbox, token_id))
}

fn open_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    let _ = dir;
    Ok(())
}

impl LedgerFile {
    /// Read `path` (absent: empty) into `admitted` and `usage`; cut a torn tail.
    pub(super) fn load(
        path: &Path,
        admitted: &mut HashSet<MailboxId>,
        usage: &mut HashMap<[u8; TOKEN_ID_BYTES], u32>,
    ) -> Result<LedgerFile, LedgerError> {
        let io = |source| LedgerError::Io {
            path: path.to_path_buf(),
            source,
        };
        let corrupt = |reason: &str| LedgerError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.to_owned(),
        };
        let mut file = match open_options().open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(LedgerFile {
                    path: path.to_path_buf(),
                    file: None,
                    len: 0,
                    is_broken: false,
                });
            }
            Err(err) => return Err(io(err)),
        };
        let size = file.metadata().map_err(io)?.len();
        if size > LEDGER_BYTES_MAX {
            return Err(corrupt("larger than any ledger this relay writes"));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.read_to_end(&mut bytes).map_err(io)?;
        if bytes.len() < LEDGER_MAGIC.len() {
            // Created but the header never made it: start it again.
            file.set_len(0).map_err(io)?;
            return Ok(LedgerFile {
                path: path.to_path_buf(),
                file: Some(file),
                len: 0,
                is_broken: false,
            });
        }
        if &bytes[..LEDGER_MAGIC.len()] != LEDGER_MAGIC {
            return Err(corrupt("not an admission ledger of this version"));
        }
        let mut good = LEDGER_MAGIC.len();
        for record in bytes[LEDGER_MAGIC.len()..].chunks(LEDGER_RECORD_BYTES) {
            let Some((mailbox, token_id)) = parse_record(record) else {
                break;
            };
            if admitted.insert(mailbox) {
                *usage.entry(token_id).or_insert(0) += 1;
            }
            good += LEDGER_RECORD_BYTES;
        }
        if good < bytes.len() {
            warn!(
                path = %path.display(),
                dropped_bytes = bytes.len() - good,
                "admission ledger had a torn or damaged tail; cut it off"
            );
            file.set_len(good as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        Ok(LedgerFile {
            path: path.to_path_buf(),
            file: Some(file),
            len: good as u64,
            is_broken: false,
        })
    }

    /// Append one record durably; on failure nothing is appended (or the ledger is marked
    /// broken when even that cannot be ensured).
    pub(super) fn append(&mut self, record: &[u8; LEDGER_RECORD_BYTES]) -> std::io::Result<()> {
        if self.is_broken {
            return Err(std::io::Error::other("ledger broken by an earlier failure"));
        }
        if self.file.is_none() {
            let file = open_options()
                .create(true)
                .truncate(false)
                .open(&self.path)?;
            self.file = Some(file);
            self.len = 0;
            if let Some(dir) = self.path.parent() {
                sync_dir(dir)?;
            }
        }
        let Some(file) = self.file.as_mut() else {
            return Err(std::io::Error::other("ledger not open"));
        };
        let mut bytes = Vec::with_capacity(LEDGER_MAGIC.len() + LEDGER_RECORD_BYTES);
        if self.len == 0 {
            bytes.extend_from_slice(LEDGER_MAGIC);
        }
        bytes.extend_from_slice(record);
        let result = (|| {
            std::io::Seek::seek(file, std::io::SeekFrom::Start(self.len))?;
            file.write_all(&bytes)?;
            file.sync_data()
        })();
        match result {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(err) => {
                if file
                    .set_len(self.len)
                    .and_then(|()| file.sync_data())
                    .is_err()
                {
                    self.is_broken = true;
                }
                Err(err)
            }
        }
    }
}
