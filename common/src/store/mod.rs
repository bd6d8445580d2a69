//! The view store (DESIGN.md §6): speed rows, batch rows by generation, seals, manifests and the batch lease.
//!
//! One async trait, [`ViewStore`], with one backend per database. The rules every backend keeps:
//! - speed rows are keyed by (view, granularity, bucket_start, dims, partition, segment_start) and a write
//!   replaces a row only when its `upto_offset` is larger (set semantics, DESIGN.md §4);
//! - a seal is recorded first-writer-wins: [`ViewStore::record_seal`] returns the seal that is recorded;
//! - publishing a manifest is a single write, the switch to its generation (DESIGN.md §5).

mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use sqlite::SqliteStore;

use crate::error::{Error, Result};
use crate::view::Granularity;

/// Identity of an aggregate cell: view, granularity, bucket and dimension values (view order, `None` = null).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ViewKey {
    pub view: String,
    pub granularity: Granularity,
    /// Bucket start, Unix seconds UTC.
    pub bucket_start: i64,
    pub dims: Vec<Option<String>>,
}

/// A speed row: the whole value of `key` over the records of one segment below `upto_offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeedRow {
    pub key: ViewKey,
    pub partition: i32,
    /// First offset of the segment (the segment's identity within the partition).
    pub segment_start: i64,
    /// Offset after the last record this value includes.
    pub upto_offset: i64,
    /// One value per view metric: counts, or sums in micro-units.
    pub metrics: Vec<i64>,
}

/// A batch row of one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRow {
    pub key: ViewKey,
    pub metrics: Vec<i64>,
}

/// A sealed segment `[start, end)` of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

/// What a batch run published (DESIGN.md §5 step 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub generation: i64,
    /// C[p] per partition: the batch view holds exactly the records with `offset < C[p]`.
    pub cutoffs: BTreeMap<i32, i64>,
    /// Rows written per `view/granularity`.
    pub rows: BTreeMap<String, u64>,
    /// Archive records below the cutoffs.
    pub records_scanned: u64,
    /// Records dropped because the same (partition, offset) was archived twice.
    pub repeated_records_removed: u64,
    /// Events dropped because their dedup key was already seen (the event was produced more than once).
    pub duplicates_removed: u64,
    /// Problems that held a cutoff back (an archive gap, an archive that begins too late).
    pub cutoff_notes: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

/// Rows of one view and granularity with `from <= bucket_start < to` (Unix seconds; `None` = unbounded).
#[derive(Debug, Clone)]
pub struct RowQuery {
    pub view: String,
    pub granularity: Granularity,
    pub from: Option<i64>,
    pub to: Option<i64>,
}

/// The view store. Every method is atomic on its own; errors are [`Error::Store`] (see `is_retryable`).
#[async_trait]
pub trait ViewStore: Send + Sync + std::fmt::Debug {
    /// Writes speed rows; each replaces a stored row of the same key only if its `upto_offset` is larger.
    async fn upsert_speed_rows(&self, rows: &[SpeedRow]) -> Result<()>;
    /// Speed rows matching `query`, every segment.
    async fn speed_rows(&self, query: &RowQuery) -> Result<Vec<SpeedRow>>;
    /// Deletes the rows of segment (`partition`, `segment_start`) written past `upto_offset`
    /// (a consumer that lost a seal race drops what it wrote beyond the recorded end). Returns rows deleted.
    async fn delete_speed_rows_after(&self, partition: i32, segment_start: i64, upto_offset: i64) -> Result<u64>;
    /// Deletes the speed rows of segments below the cutoffs (`segment_start < cutoffs[p]`, i.e. segments
    /// ending at or below the cutoff, as cutoffs are seal ends). Returns rows deleted.
    async fn delete_absorbed_speed_rows(&self, cutoffs: &BTreeMap<i32, i64>) -> Result<u64>;

    /// Records `seal` unless a seal for the same (topic, partition, start) exists; returns the recorded one.
    async fn record_seal(&self, topic: &str, seal: Seal) -> Result<Seal>;
    /// The seal of the segment starting at `start`, if recorded.
    async fn seal_at(&self, topic: &str, partition: i32, start: i64) -> Result<Option<Seal>>;
    /// Every recorded seal of `topic`, ordered by partition then start.
    async fn seals(&self, topic: &str) -> Result<Vec<Seal>>;

    /// Deletes every row of `generation` (a crashed run's leftovers, or an expired generation).
    async fn delete_generation(&self, generation: i64) -> Result<()>;
    /// Appends batch rows to `generation` (not visible to readers until its manifest is published).
    async fn write_batch_rows(&self, generation: i64, rows: &[BatchRow]) -> Result<()>;
    /// Batch rows of `generation` matching `query`.
    async fn batch_rows(&self, generation: i64, query: &RowQuery) -> Result<Vec<BatchRow>>;
    /// Generations that hold batch rows, ascending.
    async fn generations(&self) -> Result<Vec<i64>>;

    /// Publishes `manifest`: one write that switches readers to its generation.
    async fn publish_manifest(&self, manifest: &Manifest) -> Result<()>;
    /// The manifest with the highest generation.
    async fn current_manifest(&self) -> Result<Option<Manifest>>;
    /// Deletes manifests of generations below `generation`.
    async fn delete_manifests_before(&self, generation: i64) -> Result<()>;

    /// Takes or renews lease `name` for `holder` until now + `ttl`; false when another holder has it.
    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool>;
    /// Releases lease `name` if `holder` has it.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<()>;

    /// Cheap round trip for health checks.
    async fn ping(&self) -> Result<()>;
}

/// Opens the store named by `url` (`sqlite://path`), creating its schema if needed.
pub async fn open(url: &str) -> Result<Arc<dyn ViewStore>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else {
        Err(Error::invalid("store.url", format!("`{url}`: unsupported store (only sqlite:// is built yet)")))
    }
}

/// Canonical JSON text of dimension values, the dims column of SQL backends: `["view",null]` (read back
/// with SQLite's `json()` inside the packed range reads).
pub fn encode_dims(dims: &[Option<String>]) -> String {
    serde_json::to_string(dims).expect("strings serialize")
}

/// JSON text of metric values: `[312,12345670000]`.
pub fn encode_metrics(metrics: &[i64]) -> String {
    serde_json::to_string(metrics).expect("integers serialize")
}
