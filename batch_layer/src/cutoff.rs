//! Cutoffs (DESIGN.md §5 step 1): per partition, the largest seal end `e` such that the archive covers every
//! offset from the partition's archive start up to `e`.
//!
//! Seals below the published cutoffs are pruned (with the speed rows they covered), so a run reads only the
//! seals past them and the seal chain starts at the published cutoff; a partition's first run starts it at
//! its first seal. The archive start is fixed by a partition's first published cutoff (the start of the run
//! of contiguous files that holds the first seal start) and carried in every manifest after, so a lost
//! archive range below the published cutoff is caught instead of silently dropping records from the next
//! generation.

use std::collections::BTreeMap;

use common::store::Seal;

use crate::archive::ArchiveFile;

/// What a run will use, and what held it back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// C[p], for partitions whose batch view has begun (a cutoff and an archive start); the others get no
    /// entry, which the merge reads as 0 ("not seen by the batch", DESIGN.md §5).
    pub cutoffs: BTreeMap<i32, i64>,
    /// Where each partition's batch view begins (records at `archive_starts[p] <= offset < C[p]`).
    pub archive_starts: BTreeMap<i32, i64>,
    /// Whatever held a cutoff back: an archive gap, a seal gap, an archive that begins too late.
    pub notes: Vec<String>,
    /// Partitions whose archive no longer covers offsets the published generation counted:
    /// `(partition, from, to)`, the first missing range. A run must not publish over these.
    pub lost: Vec<(i32, i64, i64)>,
}

/// The cutoffs from `seals` (those at or past the published cutoffs) and the archive `files`.
/// `published` and `starts` are the current manifest's cutoffs and archive starts (empty before the first
/// run). A published cutoff of 0 (written by earlier versions for a partition the batch had not begun) is
/// read as none. A published cutoff without a recorded archive start (a manifest of an earlier version)
/// requires the archive to be contiguous from its first file.
pub fn compute(
    seals: &[Seal],
    files: &BTreeMap<i32, Vec<ArchiveFile>>,
    published: &BTreeMap<i32, i64>,
    starts: &BTreeMap<i32, i64>,
) -> Plan {
    let published: BTreeMap<i32, i64> = published.iter().filter(|(_, &c)| c > 0).map(|(&p, &c)| (p, c)).collect();
    let mut by_partition: BTreeMap<i32, Vec<Seal>> = published.keys().map(|&p| (p, Vec::new())).collect();
    for s in seals {
        by_partition.entry(s.partition).or_default().push(*s);
    }
    let mut plan = Plan::default();
    let empty = Vec::new();
    for (partition, mut seals) in by_partition {
        seals.sort_by_key(|s| s.start);
        let previous = published.get(&partition).copied();
        let Some(chain_start) = previous.or_else(|| seals.first().map(|s| s.start)) else { continue };

        // The seal chain from its start: each segment starts where the previous one ended.
        let mut chain_ends = Vec::new();
        let mut at = chain_start;
        for s in seals.iter().filter(|s| s.start >= chain_start) {
            if s.start == at {
                at = s.end;
                chain_ends.push(at);
            } else if s.start > at {
                plan.notes
                    .push(format!("partition {partition}: no seal for offsets {at}..{} (seals stop there)", s.start));
                break;
            }
        }

        // The archive's contiguous coverage from the partition's archive start.
        let pfiles = files.get(&partition).unwrap_or(&empty);
        let archive_start = match (starts.get(&partition), previous) {
            (Some(&start), _) => Some(start),
            (None, Some(_)) => Some(pfiles.first().map_or(0, |f| f.first)),
            (None, None) => run_start(pfiles, chain_start).or_else(|| {
                if let Some(f) = pfiles.iter().find(|f| f.first > chain_start) {
                    plan.notes.push(format!(
                        "partition {partition}: archive begins at offset {} after the first segment start {chain_start}",
                        f.first
                    ));
                }
                None
            }),
        };
        let covered = match archive_start {
            Some(start) => {
                let (covered, gap) = contiguous_end(pfiles, start);
                if let Some((from, to)) = gap {
                    plan.notes.push(format!("partition {partition}: archive gap at offsets {from}..{to}"));
                }
                covered
            }
            None => chain_start,
        };
        let cutoff = chain_ends.iter().copied().filter(|&e| e <= covered).max().or(previous).unwrap_or(0);
        if let Some(previous) = previous.filter(|&p| covered < p) {
            let to = pfiles.iter().map(|f| f.first).filter(|&f| f > covered).min().unwrap_or(previous).min(previous);
            plan.lost.push((partition, covered, to));
        }
        // a partition's batch view begins with its first cutoff past 0, and only with an archive start
        if let Some(start) = archive_start.filter(|_| cutoff > 0) {
            plan.archive_starts.insert(partition, start);
            plan.cutoffs.insert(partition, cutoff);
        }
    }
    plan
}

/// The first offset of the run of contiguous (or overlapping) files that holds `offset`, if a file holds it.
fn run_start(files: &[ArchiveFile], offset: i64) -> Option<i64> {
    let holder = files.iter().position(|f| f.first <= offset && offset < f.next)?;
    let mut start = files[holder].first;
    // files are ordered by first; walk back while an earlier file reaches the run's start
    for f in files[..holder].iter().rev() {
        if f.next >= start {
            start = start.min(f.first);
        }
    }
    Some(start)
}

/// The end of the contiguous coverage of `files` from `start`, and the first gap after it
/// (`(covered, Some((covered, next file first)))`); `start` itself when no file holds it.
fn contiguous_end(files: &[ArchiveFile], start: i64) -> (i64, Option<(i64, i64)>) {
    let mut covered = start;
    for f in files {
        if f.next <= covered {
            continue; // wholly inside the coverage, or before the start
        }
        if f.first <= covered {
            covered = f.next;
        } else {
            return (covered, Some((covered, f.first)));
        }
    }
    (covered, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(partition: i32, start: i64, end: i64) -> Seal {
        Seal { partition, start, end }
    }

    fn files(ranges: &[(i32, i64, i64)]) -> BTreeMap<i32, Vec<ArchiveFile>> {
        let mut out: BTreeMap<i32, Vec<ArchiveFile>> = BTreeMap::new();
        for &(partition, first, next) in ranges {
            out.entry(partition).or_default().push(ArchiveFile { partition, first, next, path: Default::default() });
        }
        for f in out.values_mut() {
            f.sort_by_key(|f| (f.first, f.next));
        }
        out
    }

    fn first_run(seals: &[Seal], files: &BTreeMap<i32, Vec<ArchiveFile>>) -> Plan {
        compute(seals, files, &BTreeMap::new(), &BTreeMap::new())
    }

    #[test]
    fn cutoff_is_the_last_seal_end_the_archive_covers() {
        let seals = [seal(0, 0, 100), seal(0, 100, 250), seal(0, 250, 300), seal(1, 0, 40)];
        let plan = first_run(&seals, &files(&[(0, 0, 120), (0, 120, 260), (1, 0, 10)]));
        assert_eq!(plan.cutoffs[&0], 250, "300 is not archived yet");
        assert_eq!(plan.cutoffs.get(&1), None, "archive of partition 1 ends before the first seal end: not begun");
        assert_eq!(plan.archive_starts, BTreeMap::from([(0, 0)]), "a start is fixed once a cutoff is published");
        assert!(plan.notes.is_empty() && plan.lost.is_empty(), "{plan:?}");
    }

    #[test]
    fn gaps_stop_the_cutoff_and_are_reported() {
        let seals = [seal(0, 0, 100), seal(0, 100, 200), seal(0, 200, 300)];
        let plan = first_run(&seals, &files(&[(0, 0, 150), (0, 160, 400)]));
        assert_eq!(plan.cutoffs[&0], 100);
        assert!(plan.notes[0].contains("archive gap at offsets 150..160"), "{plan:?}");

        let plan = first_run(&seals, &files(&[(0, 5, 400)]));
        assert_eq!(plan.cutoffs.get(&0), None);
        assert!(plan.notes[0].contains("archive begins at offset 5"), "{plan:?}");

        let plan = first_run(&[seal(0, 0, 100), seal(0, 150, 200)], &files(&[(0, 0, 400)]));
        assert_eq!(plan.cutoffs[&0], 100);
        assert!(plan.notes[0].contains("no seal for offsets 100..150"), "{plan:?}");
    }

    /// Review finding: a first run before the archive holds the first segment must not publish a cutoff of
    /// 0, or every later run would chain from 0 where no seal starts, and the cutoff would never move.
    #[test]
    fn a_partition_the_batch_has_not_begun_catches_up_later() {
        let seals = [seal(0, 57, 107), seal(0, 107, 200)];
        let early = first_run(&seals, &files(&[(0, 0, 30)]));
        assert!(early.cutoffs.is_empty() && early.archive_starts.is_empty(), "{early:?}");
        // what an earlier version published: cutoff 0 and no archive start
        let later =
            compute(&seals, &files(&[(0, 40, 150), (0, 150, 220)]), &BTreeMap::from([(0, 0)]), &BTreeMap::new());
        assert_eq!((later.cutoffs.get(&0), later.archive_starts.get(&0)), (Some(&200), Some(&40)), "{later:?}");
    }

    /// A manifest of an earlier version (a cutoff, no archive start): the archive must be contiguous from its
    /// first file, or the lost range is reported.
    #[test]
    fn a_cutoff_without_an_archive_start_requires_the_whole_archive() {
        let published = BTreeMap::from([(0, 300)]);
        let holed = compute(&[], &files(&[(0, 0, 100), (0, 150, 400)]), &published, &BTreeMap::new());
        assert_eq!(holed.lost, vec![(0, 100, 150)], "{holed:?}");
        let whole = compute(&[seal(0, 300, 350)], &files(&[(0, 0, 100), (0, 100, 400)]), &published, &BTreeMap::new());
        assert!(whole.lost.is_empty());
        assert_eq!((whole.cutoffs[&0], whole.archive_starts[&0]), (350, 0));
    }

    #[test]
    fn partitions_without_seals_have_no_cutoff() {
        assert!(first_run(&[], &files(&[(0, 0, 400)])).cutoffs.is_empty());
    }

    /// The archive may begin before the first segment (an archiver that started earlier): the batch view
    /// then begins with the archive's contiguous run, and that start is kept.
    #[test]
    fn the_archive_start_is_the_run_holding_the_first_segment() {
        let seals = [seal(0, 150, 300)];
        let plan = first_run(&seals, &files(&[(0, 0, 20), (0, 40, 100), (0, 90, 200), (0, 200, 300)]));
        assert_eq!((plan.cutoffs[&0], plan.archive_starts[&0]), (300, 40));
    }

    /// Later runs read only the seals past the published cutoffs and chain from them; the archive must
    /// still cover everything from the recorded start.
    #[test]
    fn later_runs_chain_from_the_published_cutoff() {
        let published = BTreeMap::from([(0, 200), (1, 50)]);
        let starts = BTreeMap::from([(0, 0), (1, 0)]);
        let seals = [seal(0, 200, 260), seal(0, 260, 300)]; // partition 1: nothing new sealed
        let archive = files(&[(0, 0, 100), (0, 100, 280), (0, 280, 290), (1, 0, 60)]);
        let plan = compute(&seals, &archive, &published, &starts);
        assert_eq!(plan.cutoffs, BTreeMap::from([(0, 260), (1, 50)]), "{plan:?}");
        assert_eq!(plan.archive_starts, starts);
        assert!(plan.lost.is_empty(), "{plan:?}");

        // a seal that does not start at the cutoff (an off-chain leftover) is not followed
        let plan = compute(&[seal(0, 150, 400), seal(0, 200, 230)], &archive, &published, &starts);
        assert_eq!(plan.cutoffs[&0], 230);
    }

    /// Files below the published cutoff disappear: the run reports the exact missing range instead of
    /// publishing a generation that silently lacks them.
    #[test]
    fn a_lost_archive_range_below_the_published_cutoff_is_reported() {
        let published = BTreeMap::from([(0, 300)]);
        let starts = BTreeMap::from([(0, 0)]);
        let seals = [seal(0, 300, 400)];
        let plan = compute(&seals, &files(&[(0, 0, 100), (0, 180, 400)]), &published, &starts);
        assert_eq!(plan.lost, vec![(0, 100, 180)], "{plan:?}");
        let wiped = compute(&seals, &BTreeMap::new(), &published, &starts);
        assert_eq!(wiped.lost, vec![(0, 0, 300)], "{wiped:?}");
        let refilled = compute(&seals, &files(&[(0, 0, 100), (0, 100, 180), (0, 180, 400)]), &published, &starts);
        assert!(refilled.lost.is_empty());
        assert_eq!(refilled.cutoffs[&0], 400);
    }
}
