//! Cutoffs (DESIGN.md §5 step 1): per partition, the largest seal end `e` such that the archive covers every
//! offset from the start of the partition's first recorded segment up to `e`.

use std::collections::BTreeMap;

use common::store::Seal;

use crate::archive::ArchiveFile;

/// Cutoffs per partition, and notes on whatever held one back (a gap in the archive or in the seals, an
/// archive that begins after the first segment). Partitions without seals get no entry (cutoff 0).
pub fn compute(seals: &[Seal], files: &BTreeMap<i32, Vec<ArchiveFile>>) -> (BTreeMap<i32, i64>, Vec<String>) {
    let mut by_partition: BTreeMap<i32, Vec<Seal>> = BTreeMap::new();
    for s in seals {
        by_partition.entry(s.partition).or_default().push(*s);
    }
    let mut cutoffs = BTreeMap::new();
    let mut notes = Vec::new();
    for (partition, mut seals) in by_partition {
        seals.sort_by_key(|s| s.start);
        let first_start = seals[0].start;

        // The seal chain from the first segment: each segment starts where the previous one ended.
        let mut chain_ends = Vec::new();
        let mut at = first_start;
        for s in &seals {
            if s.start == at {
                at = s.end;
                chain_ends.push(at);
            } else if s.start > at {
                notes.push(format!("partition {partition}: no seal for offsets {at}..{} (seals stop there)", s.start));
                break;
            }
        }

        // The archive's contiguous coverage from the first segment start.
        let empty = Vec::new();
        let pfiles = files.get(&partition).unwrap_or(&empty);
        let mut covered = None;
        for f in pfiles {
            match covered {
                None if f.first <= first_start && first_start < f.next => covered = Some(f.next),
                None if f.first <= first_start => {}
                None => {
                    notes.push(format!(
                        "partition {partition}: archive begins at offset {} after the first segment start {first_start}",
                        f.first
                    ));
                    break;
                }
                Some(upto) if f.first == upto => covered = Some(f.next),
                Some(upto) if f.first < upto => covered = Some(upto.max(f.next)),
                Some(upto) => {
                    notes.push(format!("partition {partition}: archive gap at offsets {upto}..{}", f.first));
                    break;
                }
            }
        }
        let covered = covered.unwrap_or(first_start);
        let cutoff = chain_ends.iter().copied().filter(|&e| e <= covered).max().unwrap_or(0);
        cutoffs.insert(partition, cutoff);
    }
    (cutoffs, notes)
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
        out
    }

    #[test]
    fn cutoff_is_the_last_seal_end_the_archive_covers() {
        let seals = [seal(0, 0, 100), seal(0, 100, 250), seal(0, 250, 300), seal(1, 0, 40)];
        let (c, notes) = compute(&seals, &files(&[(0, 0, 120), (0, 120, 260), (1, 0, 10)]));
        assert_eq!(c[&0], 250, "300 is not archived yet");
        assert_eq!(c[&1], 0, "archive of partition 1 ends before the first seal end");
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn gaps_stop_the_cutoff_and_are_reported() {
        let seals = [seal(0, 0, 100), seal(0, 100, 200), seal(0, 200, 300)];
        let (c, notes) = compute(&seals, &files(&[(0, 0, 150), (0, 160, 400)]));
        assert_eq!(c[&0], 100);
        assert!(notes[0].contains("archive gap at offsets 150..160"), "{notes:?}");

        let (c, notes) = compute(&seals, &files(&[(0, 5, 400)]));
        assert_eq!(c[&0], 0);
        assert!(notes[0].contains("archive begins at offset 5"), "{notes:?}");

        let (c, notes) = compute(&[seal(0, 0, 100), seal(0, 150, 200)], &files(&[(0, 0, 400)]));
        assert_eq!(c[&0], 100);
        assert!(notes[0].contains("no seal for offsets 100..150"), "{notes:?}");
    }

    #[test]
    fn partitions_without_seals_have_no_cutoff() {
        let (c, _) = compute(&[], &files(&[(0, 0, 400)]));
        assert!(c.is_empty());
    }
}
