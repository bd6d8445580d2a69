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

/// Where the archiver of one partition reads next, and what is gone for good (DESIGN.md §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePlan {
    /// `Some((from, to))`: the first range missing from the archive that the log still holds, to read
    /// again (files deleted, the archive wiped). `None`: continue at [`ResumePlan::frontier`].
    pub refill: Option<(i64, i64)>,
    /// The end of the archive (the largest `next`), or the log start for an empty archive.
    pub frontier: i64,
    /// Ranges missing from the archive that retention has deleted from the log: they cannot be archived
    /// again (reported; the batch refuses to publish over them).
    pub lost: Vec<(i64, i64)>,
}

/// The resume plan of a partition whose archive holds `files` (ordered by `first`) while the log starts at
/// `low` (its low watermark). Missing ranges are the gaps between files and, when the log still holds
/// offsets before the first file, the range from `low` to it.
pub fn resume_plan(files: &[ArchiveFile], low: i64) -> ResumePlan {
    let mut holes = Vec::new();
    let mut covered = match files.first() {
        Some(f) if low < f.first => {
            holes.push((low, f.first));
            f.first
        }
        Some(f) => f.first,
        None => low,
    };
    for f in files {
        if f.first > covered {
            holes.push((covered, f.first));
        }
        covered = covered.max(f.next);
    }
    let mut plan = ResumePlan { refill: None, frontier: covered, lost: Vec::new() };
    for (from, to) in holes {
        if to <= low {
            plan.lost.push((from, to));
        } else {
            if from < low {
                plan.lost.push((from, low));
            }
            plan.refill = plan.refill.or(Some((from.max(low), to)));
        }
    }
    plan
}

/// The gaps between consecutive `files` (ordered by `first`): offsets no file covers.
pub fn gaps(files: &[ArchiveFile]) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut covered = files.first().map_or(0, |f| f.first);
    for f in files {
        if f.first > covered {
            out.push((covered, f.first));
        }
        covered = covered.max(f.next);
    }
    out
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

    fn ranges(ranges: &[(i64, i64)]) -> Vec<ArchiveFile> {
        ranges.iter().map(|&(first, next)| ArchiveFile { partition: 0, first, next, path: PathBuf::new() }).collect()
    }

    #[test]
    fn resume_at_the_first_missing_range_the_log_still_holds() {
        let plan = resume_plan(&ranges(&[(0, 100), (100, 250)]), 0);
        assert_eq!(plan, ResumePlan { refill: None, frontier: 250, lost: vec![] }, "contiguous: continue");
        let plan = resume_plan(&ranges(&[]), 40);
        assert_eq!(plan, ResumePlan { refill: None, frontier: 40, lost: vec![] }, "empty (or wiped): the log start");
        let plan = resume_plan(&ranges(&[(0, 100), (180, 250), (300, 400)]), 0);
        assert_eq!((plan.refill, plan.frontier), (Some((100, 180)), 400), "the first gap first");
        let plan = resume_plan(&ranges(&[(200, 300)]), 50);
        assert_eq!((plan.refill, plan.lost.clone()), (Some((50, 200)), vec![]), "early files lost, the log holds them");
        let plan = resume_plan(&ranges(&[(0, 100), (180, 250), (300, 400)]), 200);
        assert_eq!(plan.lost, vec![(100, 180)], "a gap retention deleted is lost");
        assert_eq!(plan.refill, Some((250, 300)));
        let plan = resume_plan(&ranges(&[(0, 100), (180, 250)]), 150);
        assert_eq!((plan.refill, plan.lost), (Some((150, 180)), vec![(100, 150)]), "partly deleted");
        let plan = resume_plan(&ranges(&[(0, 100), (50, 150), (150, 200)]), 0);
        assert_eq!((plan.refill, plan.frontier), (None, 200), "overlaps are no gap");
    }

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
