//! One open segment of one partition: its boundary rules, within-segment dedup and aggregates (DESIGN.md §4).
//!
//! Everything here is a pure function of the records fed in, so a replay from the segment start rebuilds
//! exactly the same state, and the same boundaries.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::dead_letter::DeadLetter;
use common::schema::Decoder;
use common::store::{SpeedRow, ViewKey};
use common::view::{Granularity, ViewSet};

/// Key of an aggregate cell inside a segment: (view index, granularity, bucket start, dimension values).
pub type CellKey = (usize, Granularity, i64, Vec<Option<String>>);

/// Segment limits from `[speed]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_records: u64,
    pub max_age: Duration,
}

/// What applying a record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Decoded and aggregated.
    Counted,
    /// Its dedup key was already seen in this segment.
    Duplicate,
    /// Failed to decode; kept as a dead letter.
    DeadLetter(String),
}

/// The state of the open segment `[start, ...)` of one partition.
#[derive(Debug)]
pub struct Segment {
    pub partition: i32,
    pub start: i64,
    /// End adopted from a seal recorded earlier (by this consumer before a restart, or another one).
    pub sealed_end: Option<i64>,
    /// Offset after the last record applied (`start` while empty).
    pub position: i64,
    /// Records applied, dead letters and duplicates included.
    pub records: u64,
    first_timestamp_ms: Option<i64>,
    seen: HashSet<u128>,
    cells: HashMap<CellKey, Vec<i64>>,
    dirty: HashSet<CellKey>,
    dead_letters: Vec<DeadLetter>,
}

impl Segment {
    /// An empty segment at `start`; `sealed_end` is the end of a seal already recorded for `start`.
    pub fn open(partition: i32, start: i64, sealed_end: Option<i64>) -> Self {
        Segment {
            partition,
            start,
            sealed_end,
            position: start,
            records: 0,
            first_timestamp_ms: None,
            seen: HashSet::new(),
            cells: HashMap::new(),
            dirty: HashSet::new(),
            dead_letters: Vec::new(),
        }
    }

    /// True when the record at `offset` with Kafka timestamp `timestamp_ms` belongs to the next segment,
    /// so this one must be sealed first (at `self.seal_end_before(offset)`).
    ///
    /// Rule: an adopted seal ends where it was recorded; otherwise a non-empty segment seals before a record
    /// whose timestamp is `max_age` or more past the segment's first record.
    pub fn must_seal_before(&self, offset: i64, timestamp_ms: Option<i64>, limits: Limits) -> bool {
        match self.sealed_end {
            Some(end) => offset >= end,
            None => match (self.first_timestamp_ms, timestamp_ms) {
                (Some(first), Some(ts)) => ts.saturating_sub(first) >= limits.max_age.as_millis() as i64,
                _ => false,
            },
        }
    }

    /// End of the seal made before the record at `offset`.
    pub fn seal_end_before(&self, offset: i64) -> i64 {
        self.sealed_end.unwrap_or(offset)
    }

    /// True when the segment must seal now, at `self.position`: it reached its adopted end or `max_records`.
    pub fn is_full(&self, limits: Limits) -> bool {
        match self.sealed_end {
            Some(end) => self.position >= end,
            None => self.records >= limits.max_records,
        }
    }

    /// Applies the record at `offset`: decode, drop a repeated dedup key, add to every view x granularity cell.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        topic: &str,
        offset: i64,
        timestamp_ms: Option<i64>,
        payload: &[u8],
        decoder: &Decoder,
        views: &ViewSet,
    ) -> Applied {
        debug_assert!(offset >= self.position, "records are applied in offset order");
        self.position = offset + 1;
        self.records += 1;
        if self.first_timestamp_ms.is_none() {
            self.first_timestamp_ms = timestamp_ms;
        }
        let event = match decoder.decode(payload) {
            Ok(event) => event,
            Err(e) => {
                self.dead_letters.push(DeadLetter::new(
                    topic,
                    self.partition,
                    offset,
                    timestamp_ms,
                    payload,
                    e.0.clone(),
                ));
                return Applied::DeadLetter(e.0);
            }
        };
        if !self.seen.insert(event.dedup_key) {
            return Applied::Duplicate;
        }
        for (vi, view) in views.views.iter().enumerate() {
            let dims = view.dims_of(&event);
            for &g in &view.granularities {
                let key: CellKey = (vi, g, g.bucket_start(event.event_time), dims.clone());
                let cell = self.cells.entry(key.clone()).or_insert_with(|| vec![0; view.metrics.len()]);
                for (value, metric) in cell.iter_mut().zip(&view.metrics) {
                    *value += metric.contribution(&event);
                }
                self.dirty.insert(key);
            }
        }
        Applied::Counted
    }

    /// The changed cells since the last call, as speed rows carrying `upto_offset` (the whole value of each
    /// cell over this segment's records below it); clears the dirty set.
    pub fn take_dirty_rows(&mut self, views: &ViewSet, upto_offset: i64) -> Vec<SpeedRow> {
        let rows = self
            .dirty
            .iter()
            .map(|key| {
                let (vi, g, bucket, dims) = key;
                SpeedRow {
                    key: ViewKey {
                        view: views.views[*vi].name.clone(),
                        granularity: *g,
                        bucket_start: *bucket,
                        dims: dims.clone(),
                    },
                    partition: self.partition,
                    segment_start: self.start,
                    upto_offset,
                    metrics: self.cells[key].clone(),
                }
            })
            .collect();
        self.dirty.clear();
        rows
    }

    /// Puts rows back into the dirty set after a failed write, so the next flush retries them.
    pub fn mark_dirty_again(&mut self, views: &ViewSet, rows: &[SpeedRow]) {
        for r in rows {
            if let Some(vi) = views.views.iter().position(|v| v.name == r.key.view) {
                self.dirty.insert((vi, r.key.granularity, r.key.bucket_start, r.key.dims.clone()));
            }
        }
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Dead letters of this segment so far.
    pub fn dead_letters(&self) -> &[DeadLetter] {
        &self.dead_letters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::Config;

    fn event(ts: &str, kind: &str, price: f64) -> Vec<u8> {
        format!(r#"{{"event_time":"{ts}","event_type":"{kind}","brand":"","price":{price},"user_id":1}}"#).into_bytes()
    }

    #[test]
    fn aggregates_dedups_and_dead_letters() {
        let config = Config::defaults();
        let (decoder, views) = (Decoder::new(&config), ViewSet::new(&config));
        let mut s = Segment::open(0, 10, None);
        assert_eq!(
            s.apply("t", 10, Some(0), &event("2019-11-01 00:00:01 UTC", "view", 1.5), &decoder, &views),
            Applied::Counted
        );
        assert_eq!(
            s.apply("t", 11, Some(0), &event("2019-11-01 00:00:01 UTC", "view", 1.5), &decoder, &views),
            Applied::Duplicate
        );
        assert_eq!(
            s.apply("t", 12, Some(0), &event("2019-11-01 00:00:59 UTC", "view", 2.25), &decoder, &views),
            Applied::Counted
        );
        assert!(matches!(s.apply("t", 13, Some(0), b"{", &decoder, &views), Applied::DeadLetter(_)));
        assert_eq!(s.position, 14);
        assert_eq!(s.records, 4);
        let rows = s.take_dirty_rows(&views, 14);
        // 3 views x 3 granularities, one cell each (same minute, same dims)
        assert_eq!(rows.len(), 9);
        for r in &rows {
            assert_eq!(r.metrics, vec![2, 3_750_000]);
            assert_eq!(r.upto_offset, 14);
            assert_eq!(r.segment_start, 10);
        }
        let brand = rows.iter().find(|r| r.key.view == "by_brand").unwrap();
        assert_eq!(brand.key.dims, vec![Some("view".to_owned()), None], "empty brand is null");
        assert!(s.take_dirty_rows(&views, 14).is_empty());
        assert_eq!(s.dead_letters().len(), 1);
    }

    #[test]
    fn boundaries_follow_count_age_and_adopted_seals() {
        let limits = Limits { max_records: 2, max_age: Duration::from_secs(10) };
        let config = Config::defaults();
        let (decoder, views) = (Decoder::new(&config), ViewSet::new(&config));
        let mut s = Segment::open(0, 0, None);
        assert!(!s.must_seal_before(0, Some(1_000), limits));
        s.apply("t", 0, Some(1_000), b"x", &decoder, &views);
        assert!(!s.must_seal_before(1, Some(10_999), limits));
        assert!(s.must_seal_before(1, Some(11_000), limits));
        assert_eq!(s.seal_end_before(1), 1);
        s.apply("t", 1, Some(2_000), b"x", &decoder, &views);
        assert!(s.is_full(limits));

        let mut adopted = Segment::open(0, 5, Some(7));
        assert!(!adopted.must_seal_before(6, Some(1_000_000), limits));
        assert!(adopted.must_seal_before(7, Some(0), limits));
        adopted.apply("t", 5, None, b"x", &decoder, &views);
        adopted.apply("t", 6, None, b"x", &decoder, &views);
        assert!(adopted.is_full(limits));
    }
}
