//! One open segment of one partition: its boundary rules, within-segment dedup and aggregates (DESIGN.md §4).
//!
//! Everything here is a pure function of the records fed in, so a replay from the segment start rebuilds
//! exactly the same state, and the same boundaries.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use common::dead_letter::DeadLetter;
use common::schema::Decoder;
use common::store::{SpeedRow, ViewKey};
use common::view::{dimension_text, Granularity, ViewSet};
use foldhash::{HashMap, HashMapExt};

/// Id of an interned dimension value; [`NULL`] stands for a null (or empty) value.
type ValueId = u32;
const NULL: ValueId = u32::MAX;
const UNSET: ValueId = u32::MAX - 1;

/// Key of an aggregate cell inside a segment: view index, granularity, bucket start (Unix seconds) and the
/// id of the view's dimension tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct CellKey {
    view: u32,
    granularity: Granularity,
    bucket: i64,
    tuple: u32,
}

#[derive(Debug)]
struct Cell {
    key: CellKey,
    /// Index of the cell's first metric in `Segment::metrics` (the view's metrics follow in order).
    at: usize,
    dirty: bool,
}

/// Interned items of one segment, item <-> dense id: dimension texts (`Interner<str>`) and each view's
/// dimension tuples of value ids (`Interner<[ValueId]>`).
#[derive(Debug)]
struct Interner<T: ?Sized> {
    ids: HashMap<Box<T>, u32>,
    items: Vec<Box<T>>,
}

impl<T: ?Sized> Default for Interner<T> {
    fn default() -> Self {
        Interner { ids: HashMap::new(), items: Vec::new() }
    }
}

impl<T: ?Sized + Eq + std::hash::Hash> Interner<T>
where
    for<'a> Box<T>: From<&'a T>,
{
    fn id(&mut self, item: &T) -> u32 {
        if let Some(&id) = self.ids.get(item) {
            return id;
        }
        let id = self.items.len() as u32;
        self.items.push(item.into());
        self.ids.insert(item.into(), id);
        id
    }
}

impl Interner<str> {
    fn text(&self, id: ValueId) -> Option<String> {
        (id != NULL).then(|| self.items[id as usize].to_string())
    }
}

/// Hasher for dedup keys, which are already uniform 128-bit hashes (xxh3): folds the halves.
#[derive(Debug, Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word)).rotate_left(29);
        }
    }

    fn write_u128(&mut self, key: u128) {
        self.0 = (key as u64) ^ ((key >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

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
    /// Decoded and aggregated as its own event: its named dedup key is missing, null or empty.
    CountedWithoutKey,
    /// Its dedup key was already seen in this segment.
    Duplicate,
    /// Failed to decode; kept as a dead letter.
    DeadLetter(String),
}

/// The state of the open segment `[start, ...)` of one partition.
///
/// Cells are keyed by interned ids rather than text: each distinct dimension value is stored once per
/// segment, each distinct dimension tuple once per view, and a record costs one small-key lookup per
/// view x granularity. Metric values live in one flat vector.
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
    seen: HashSet<u128, BuildHasherDefault<KeyHasher>>,
    values: Interner<str>,
    tuples: Vec<Interner<[ValueId]>>,
    index: HashMap<CellKey, u32>,
    cells: Vec<Cell>,
    metrics: Vec<i128>,
    dirty: Vec<u32>,
    dead_letters: Vec<DeadLetter>,
    /// Scratch: value id per schema field of the current record (`UNSET` until needed).
    field_ids: Vec<ValueId>,
    /// Scratch: the current view's dimension tuple.
    tuple: Vec<ValueId>,
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
            seen: HashSet::default(),
            values: Interner::default(),
            tuples: Vec::new(),
            index: HashMap::new(),
            cells: Vec::new(),
            metrics: Vec::new(),
            dirty: Vec::new(),
            dead_letters: Vec::new(),
            field_ids: Vec::new(),
            tuple: Vec::new(),
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
        let event = match decoder.decode_ref(payload) {
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
        let applied = match event.dedup_key {
            Some(key) if !self.seen.insert(key) => return Applied::Duplicate,
            Some(_) => Applied::Counted,
            None => Applied::CountedWithoutKey, // its own event: never merged with another record
        };
        if self.tuples.len() < views.views.len() {
            self.tuples.resize_with(views.views.len(), Interner::default);
        }
        self.field_ids.clear();
        self.field_ids.resize(event.values.len(), UNSET);
        for (vi, view) in views.views.iter().enumerate() {
            self.tuple.clear();
            for &field in &view.dimension_fields {
                if self.field_ids[field] == UNSET {
                    let mut buf = itoa::Buffer::new();
                    self.field_ids[field] = match dimension_text(&event.values[field], &mut buf) {
                        Some(text) => self.values.id(text),
                        None => NULL,
                    };
                }
                self.tuple.push(self.field_ids[field]);
            }
            let tuple = self.tuples[vi].id(&self.tuple);
            for &granularity in &view.granularities {
                let key =
                    CellKey { view: vi as u32, granularity, bucket: granularity.bucket_start(event.event_time), tuple };
                let cell = self.cell(key, view.metrics.len());
                let at = self.cells[cell].at;
                for (value, metric) in self.metrics[at..at + view.metrics.len()].iter_mut().zip(&view.metrics) {
                    // saturates rather than wraps; with values of at most 1e21 micro-units it never does
                    *value = value.saturating_add(metric.contribution(&event.values));
                }
                self.mark_dirty(cell);
            }
        }
        applied
    }

    /// Index of the cell for `key`, created with `width` zero metrics if new.
    fn cell(&mut self, key: CellKey, width: usize) -> usize {
        let next = self.cells.len() as u32;
        let index = *self.index.entry(key).or_insert(next);
        if index == next {
            self.cells.push(Cell { key, at: self.metrics.len(), dirty: false });
            self.metrics.resize(self.metrics.len() + width, 0);
        }
        index as usize
    }

    fn mark_dirty(&mut self, cell: usize) {
        if !self.cells[cell].dirty {
            self.cells[cell].dirty = true;
            self.dirty.push(cell as u32);
        }
    }

    /// The changed cells since the last call, as speed rows carrying `upto_offset` (the whole value of each
    /// cell over this segment's records below it); clears the dirty set.
    pub fn take_dirty_rows(&mut self, views: &ViewSet, upto_offset: i64) -> Vec<SpeedRow> {
        let dirty = std::mem::take(&mut self.dirty);
        let rows = dirty.iter().map(|&cell| self.row(views, cell as usize, upto_offset)).collect();
        for cell in dirty {
            self.cells[cell as usize].dirty = false;
        }
        rows
    }

    /// Every cell of the segment as a speed row at `upto_offset` (what sealing writes: the final rows of the
    /// segment, replacing whatever earlier flushes or earlier runs left); clears the dirty set.
    pub fn all_rows(&mut self, views: &ViewSet, upto_offset: i64) -> Vec<SpeedRow> {
        for &cell in &std::mem::take(&mut self.dirty) {
            self.cells[cell as usize].dirty = false;
        }
        (0..self.cells.len()).map(|cell| self.row(views, cell, upto_offset)).collect()
    }

    fn row(&self, views: &ViewSet, cell: usize, upto_offset: i64) -> SpeedRow {
        let cell = &self.cells[cell];
        let view = &views.views[cell.key.view as usize];
        let tuple = &self.tuples[cell.key.view as usize].items[cell.key.tuple as usize];
        SpeedRow {
            key: ViewKey {
                view: view.name.clone(),
                granularity: cell.key.granularity,
                bucket_start: cell.key.bucket,
                dims: tuple.iter().map(|&id| self.values.text(id)).collect(),
            },
            partition: self.partition,
            segment_start: self.start,
            upto_offset,
            metrics: self.metrics[cell.at..cell.at + view.metrics.len()].to_vec(),
        }
    }

    /// Puts rows back into the dirty set after a failed write, so the next flush retries them.
    pub fn mark_dirty_again(&mut self, views: &ViewSet, rows: &[SpeedRow]) {
        for r in rows {
            let Some(vi) = views.views.iter().position(|v| v.name == r.key.view) else { continue };
            let ids: Option<Vec<ValueId>> = r
                .key
                .dims
                .iter()
                .map(|d| match d {
                    None => Some(NULL),
                    Some(text) => self.values.ids.get(text.as_str()).copied(),
                })
                .collect();
            let Some(tuple) = ids.and_then(|ids| self.tuples.get(vi)?.ids.get(ids.as_slice()).copied()) else {
                continue;
            };
            let key = CellKey { view: vi as u32, granularity: r.key.granularity, bucket: r.key.bucket_start, tuple };
            if let Some(&cell) = self.index.get(&key) {
                self.mark_dirty(cell as usize);
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

    /// Many records over several dimension values, flushed at random points (one flush "fails" and is
    /// marked dirty again), against aggregates computed directly from the generated fields.
    #[test]
    fn interned_cells_match_a_direct_aggregation() {
        use std::collections::BTreeMap;
        let config = Config::defaults();
        let (decoder, views) = (Decoder::new(&config), ViewSet::new(&config));
        let (types, brands) = (["view", "cart", "purchase"], ["", "apple", "samsung", "x\\\"y", "sony"]);
        let mut state: u64 = 42;
        let mut next = move |n: u64| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % n
        };
        let mut s = Segment::open(0, 0, None);
        let mut stored: BTreeMap<ViewKey, Vec<i128>> = BTreeMap::new();
        let mut truth: BTreeMap<ViewKey, Vec<i128>> = BTreeMap::new();
        let mut sent: Vec<(usize, usize, i64, u64)> = Vec::new();
        for offset in 0..5_000i64 {
            let record = if offset > 0 && next(10) == 0 {
                sent[next(sent.len() as u64) as usize] // an exact copy: a duplicate
            } else {
                (next(3) as usize, next(5) as usize, 1_572_566_400 + next(3 * 3_600) as i64, next(100_000))
            };
            let (t, b, second, cents) = record;
            let time = chrono::DateTime::from_timestamp(second, 0).unwrap().format("%Y-%m-%d %H:%M:%S UTC");
            let brand = serde_json::to_string(brands[b]).unwrap();
            let payload = format!(
                r#"{{"event_time":"{time}","event_type":"{}","brand":{brand},"price":{}.{:02},"category_code":"c{}"}}"#,
                types[t],
                cents / 100,
                cents % 100,
                t + b
            );
            let applied = s.apply("t", offset, None, payload.as_bytes(), &decoder, &views);
            let first = !sent.contains(&record);
            assert_eq!(applied, if first { Applied::Counted } else { Applied::Duplicate }, "{payload}");
            if first {
                sent.push(record);
                let text = |v: &str| (!v.is_empty()).then(|| v.to_owned());
                for view in &views.views {
                    let dims: Vec<Option<String>> = view
                        .dimensions
                        .iter()
                        .map(|d| match d.as_str() {
                            "event_type" => text(types[t]),
                            "brand" => text(brands[b]),
                            _ => Some(format!("c{}", t + b)),
                        })
                        .collect();
                    for &g in &view.granularities {
                        let key = ViewKey {
                            view: view.name.clone(),
                            granularity: g,
                            bucket_start: g.bucket_start(second * 1_000_000),
                            dims: dims.clone(),
                        };
                        let cell = truth.entry(key).or_insert_with(|| vec![0, 0]);
                        cell[0] += 1;
                        cell[1] += i128::from(cents) * 10_000;
                    }
                }
            }
            if next(200) == 0 {
                let rows = s.take_dirty_rows(&views, s.position);
                if next(3) == 0 {
                    s.mark_dirty_again(&views, &rows); // as after a failed write
                    let again = s.take_dirty_rows(&views, s.position);
                    let keys = |rows: &[SpeedRow]| rows.iter().map(|r| (r.key.clone(), ())).collect::<BTreeMap<_, _>>();
                    let again = keys(&again);
                    assert_eq!(again.len(), rows.len());
                    assert!(rows.iter().all(|r| again.contains_key(&r.key)));
                }
                for r in rows {
                    stored.insert(r.key, r.metrics);
                }
            }
        }
        for r in s.take_dirty_rows(&views, s.position) {
            stored.insert(r.key, r.metrics);
        }
        assert!(truth.len() > 100, "the data spreads over many cells");
        assert_eq!(stored, truth);
        // sealing writes every cell, whatever was flushed before
        let all: BTreeMap<ViewKey, Vec<i128>> =
            s.all_rows(&views, s.position).into_iter().map(|r| (r.key, r.metrics)).collect();
        assert_eq!(all, truth);
        assert!(!s.has_dirty());
    }
}
