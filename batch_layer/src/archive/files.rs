//! Naming and listing of archive files: `<root>/<topic>/partition=<p>/<first:020>-<next:020>.parquet`,
//! where `[first, next)` is the offset range the file covers (records that were dead-lettered included).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::Error;

/// One archive file covering offsets `[first, next)` of `partition`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveFile {
    pub partition: i32,
    pub first: i64,
    pub next: i64,
    pub path: PathBuf,
}

/// Directory of one partition's files.
pub fn partition_dir(root: &Path, topic: &str, partition: i32) -> PathBuf {
    root.join(topic).join(format!("partition={partition}"))
}

/// File name of the range `[first, next)`.
pub fn file_name(first: i64, next: i64) -> String {
    format!("{first:020}-{next:020}.parquet")
}

fn parse_name(name: &str) -> Option<(i64, i64)> {
    let stem = name.strip_suffix(".parquet")?;
    let (a, b) = stem.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Every archive file of `topic` by partition, ordered by `first`. Temporary files (`.name.tmp`) are skipped.
pub fn list(root: &Path, topic: &str) -> Result<BTreeMap<i32, Vec<ArchiveFile>>, Error> {
    let mut out: BTreeMap<i32, Vec<ArchiveFile>> = BTreeMap::new();
    let dir = root.join(topic);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::Io { path: dir, source: e }),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(partition) = name.strip_prefix("partition=").and_then(|p| p.parse::<i32>().ok()) else { continue };
        out.insert(partition, list_partition(root, topic, partition)?);
    }
    Ok(out)
}

/// The files of one partition, ordered by `first`.
pub fn list_partition(root: &Path, topic: &str, partition: i32) -> Result<Vec<ArchiveFile>, Error> {
    let dir = partition_dir(root, topic, partition);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Io { path: dir, source: e }),
    };
    let mut files: Vec<ArchiveFile> = entries
        .flatten()
        .filter_map(|e| {
            let (first, next) = parse_name(&e.file_name().to_string_lossy())?;
            Some(ArchiveFile { partition, first, next, path: e.path() })
        })
        .collect();
    files.sort_by_key(|f| (f.first, f.next));
    Ok(files)
}

/// Removes leftovers of a crash in `dir`: temporary files (never renamed, so never committed).
pub fn remove_temp_files(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort() {
        assert_eq!(parse_name(&file_name(0, 1200)), Some((0, 1200)));
        assert_eq!(parse_name(".x.tmp"), None);
        let root = tempfile::tempdir().unwrap();
        let dir = partition_dir(root.path(), "t", 2);
        fs::create_dir_all(&dir).unwrap();
        for (a, b) in [(100, 250), (0, 100)] {
            fs::write(dir.join(file_name(a, b)), b"").unwrap();
        }
        fs::write(dir.join(".00-01.parquet.tmp"), b"").unwrap();
        let listed = list(root.path(), "t").unwrap();
        let ranges: Vec<(i64, i64)> = listed[&2].iter().map(|f| (f.first, f.next)).collect();
        assert_eq!(ranges, vec![(0, 100), (100, 250)]);
        remove_temp_files(&dir);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);
    }
}
