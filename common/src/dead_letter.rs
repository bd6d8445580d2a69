//! The dead-letter output (DESIGN.md §8): records that fail to decode, with their partition, offset, raw
//! payload and the reason, as JSON Lines files under the archive root.
//!
//! Files are named by the offset range they cover, so a replay rewrites the same file instead of adding
//! lines: `<root>/_dead_letter/<consumer>/<topic>/partition=<p>/<first:020>-<next:020>.jsonl`
//! (`consumer` is `speed` or `archive`). Each is written to a temporary name, fsynced, renamed and the
//! directory fsynced ([`persist`]).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One dead-lettered record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Kafka timestamp, Unix milliseconds.
    pub timestamp_ms: Option<i64>,
    pub reason: String,
    /// The payload when it is valid UTF-8.
    pub payload: Option<String>,
    /// The payload in hex when it is not valid UTF-8.
    pub payload_hex: Option<String>,
}

impl DeadLetter {
    pub fn new(
        topic: &str,
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        payload: &[u8],
        reason: String,
    ) -> Self {
        let (payload, payload_hex) = match std::str::from_utf8(payload) {
            Ok(s) => (Some(s.to_owned()), None),
            Err(_) => (None, Some(payload.iter().map(|b| format!("{b:02x}")).collect())),
        };
        DeadLetter { topic: topic.to_owned(), partition, offset, timestamp_ms, reason, payload, payload_hex }
    }
}

/// Directory of one consumer's dead letters for one partition.
pub fn partition_dir(archive_root: &Path, consumer: &str, topic: &str, partition: i32) -> PathBuf {
    archive_root.join("_dead_letter").join(consumer).join(topic).join(format!("partition={partition}"))
}

/// Writes the dead letters of offsets `[first, next)` of one partition, replacing an earlier file of the same range.
pub fn write(archive_root: &Path, consumer: &str, first: i64, next: i64, letters: &[DeadLetter]) -> Result<PathBuf> {
    let letter = letters.first().expect("write is called with at least one letter");
    let dir = partition_dir(archive_root, consumer, &letter.topic, letter.partition);
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let path = dir.join(format!("{first:020}-{next:020}.jsonl"));
    let tmp = dir.join(format!(".{first:020}-{next:020}.jsonl.tmp"));
    let mut out = io::BufWriter::new(File::create(&tmp).map_err(|e| Error::io(&tmp, e))?);
    for l in letters {
        serde_json::to_writer(&mut out, l).map_err(|e| Error::io(&tmp, e.into()))?;
        out.write_all(b"\n").map_err(|e| Error::io(&tmp, e))?;
    }
    out.flush().map_err(|e| Error::io(&tmp, e))?;
    drop(out);
    persist(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

/// Reads every dead letter of `consumer` under `archive_root` (all topics and partitions), by partition and offset.
pub fn read_all(archive_root: &Path, consumer: &str) -> Result<Vec<DeadLetter>> {
    let mut out = Vec::new();
    let base = archive_root.join("_dead_letter").join(consumer);
    let Ok(topics) = fs::read_dir(&base) else { return Ok(out) };
    for topic in topics.flatten() {
        for part in fs::read_dir(topic.path()).map_err(|e| Error::io(topic.path(), e))?.flatten() {
            for file in fs::read_dir(part.path()).map_err(|e| Error::io(part.path(), e))?.flatten() {
                let path = file.path();
                if path.extension().is_some_and(|e| e == "jsonl")
                    && !file.file_name().to_string_lossy().starts_with('.')
                {
                    let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
                    for line in text.lines() {
                        out.push(serde_json::from_str(line).map_err(|e| Error::io(&path, e.into()))?);
                    }
                }
            }
        }
    }
    out.sort_by_key(|l: &DeadLetter| (l.partition, l.offset));
    Ok(out)
}

/// Makes a fully written temporary file durable under its final name: fsync the file, rename it over
/// `path`, fsync the directory (the POSIX recipe for an atomic, crash-safe replace).
pub fn persist(tmp: &Path, path: &Path) -> io::Result<()> {
    File::open(tmp)?.sync_all()?;
    fs::rename(tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_of_a_range_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let a = DeadLetter::new("t", 1, 7, Some(5), b"not json", "not JSON".into());
        let b = DeadLetter::new("t", 1, 9, None, &[0xff, 0x00], "not JSON".into());
        write(dir.path(), "speed", 0, 10, &[a.clone(), b.clone()]).unwrap();
        write(dir.path(), "speed", 0, 10, &[a.clone(), b.clone()]).unwrap();
        let back = read_all(dir.path(), "speed").unwrap();
        assert_eq!(back, vec![a, b.clone()]);
        assert_eq!(b.payload_hex.as_deref(), Some("ff00"));
        assert!(read_all(dir.path(), "archive").unwrap().is_empty());
    }
}
