//! The view store (DESIGN.md §6): speed rows, batch rows by generation, seals, manifests and the batch lease.
//!
//! One async trait, [`ViewStore`], with one backend per database. The contract every backend keeps (the
//! conformance suite in `common/tests/store_conformance.rs` holds each backend to it):
//! - **speed rows** are keyed by (view, granularity, bucket_start, dims, partition, segment_start) and hold
//!   the whole value of the key over the segment's records below `upto_offset` (set semantics, DESIGN.md
//!   §4). A write replaces a stored row only when its `upto_offset` is larger, and is dropped when the
//!   segment has a recorded seal ending before its `upto_offset`: no row ever counts records past its
//!   segment's seal, whatever an earlier run with other segment limits or a zombie member tries to write.
//!   [`ViewStore::finalize_segment`] removes rows written past a seal before it was recorded.
//! - a **seal** is recorded first-writer-wins: [`ViewStore::record_seal`] returns the seal that is recorded;
//!   a new seal is refused below the partition's published cutoff (the seals there may have been pruned,
//!   and recording one again would let a lagging or zombie member start a segment off the seal chain).
//! - **batch writes are fenced**: each takes the [`Lease`] of the run and fails with [`Error::Fenced`] once
//!   another run has taken the lease over (or it expired), atomically with the write itself. Generation
//!   numbers come from [`ViewStore::allocate_generation`] and are never reused; a published generation's
//!   rows are never rewritten and the current one is never deleted.
//! - publishing a **manifest** is a single write, the switch to its generation (DESIGN.md §5).

mod postgres;
mod scylla;
mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use self::scylla::{ScyllaStore, ScyllaUrl};
pub use postgres::{MirrorApplied, MirrorChanges, PostgresStore};
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
    /// One value per view metric: counts, or sums in micro-units ([`crate::decimal`]).
    pub metrics: Vec<i128>,
}

/// A batch row of one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRow {
    pub key: ViewKey,
    /// As [`SpeedRow::metrics`].
    pub metrics: Vec<i128>,
}

/// A sealed segment `[start, end)` of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

/// How far a partition's cutoff has got, for stall detection (`/healthz`, DESIGN.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CutoffProgress {
    /// When the cutoff last moved (or was first published).
    pub moved_at: DateTime<Utc>,
    /// The partition's log end (high watermark) seen by the run that moved it; -1 when unknown.
    pub log_end_then: i64,
}

/// What a batch run published (DESIGN.md §5 step 4). Maps keyed by partition have the partition number as
/// their JSON key (`{"0": 1234}`), hence the `value_type`s for the OpenAPI schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Manifest {
    pub generation: i64,
    /// C[p] per partition: the batch view holds exactly the records with `archive_starts[p] <= offset < C[p]`.
    #[schema(value_type = BTreeMap<String, i64>)]
    pub cutoffs: BTreeMap<i32, i64>,
    /// Where each partition's archive coverage begins; every later run must find the archive contiguous from
    /// here, or it refuses to publish (a lost range is read again from Kafka by the archiver, or reported).
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, i64>)]
    pub archive_starts: BTreeMap<i32, i64>,
    /// Rows written per `view/granularity`.
    pub rows: BTreeMap<String, u64>,
    /// Archive records below the cutoffs.
    pub records_scanned: u64,
    /// Records dropped because the same (partition, offset) was archived twice.
    pub repeated_records_removed: u64,
    /// Events dropped because their dedup key was already seen (the event was produced more than once).
    pub duplicates_removed: u64,
    /// Records whose named dedup key was missing, null or empty: each counted as its own event.
    #[serde(default)]
    pub records_without_dedup_key: u64,
    /// Problems that held a cutoff back (an archive gap, an archive that begins too late).
    pub cutoff_notes: Vec<String>,
    /// Each partition's log end (high watermark) when the run started; empty when Kafka was unreachable.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, i64>)]
    pub log_ends: BTreeMap<i32, i64>,
    /// When each cutoff last moved, and the log end then.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, CutoffProgress>)]
    pub cutoff_progress: BTreeMap<i32, CutoffProgress>,
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
    /// Return at most this many rows (the store stops reading there); `None` = all.
    pub limit: Option<usize>,
    /// Speed reads only: skip the segments of partition `p` that start below `speed_from[p]`, the cutoffs
    /// of the manifest the caller merges with (those rows are in its batch generation, DESIGN.md §5), so
    /// they neither cost a read nor count toward `limit`; partitions absent: every segment. Batch reads
    /// ignore it. Pass the cutoffs of the manifest read *before* this read, never the store's latest.
    pub speed_from: BTreeMap<i32, i64>,
}

impl RowQuery {
    /// Every row of `view` at `granularity`.
    pub fn all(view: &str, granularity: Granularity) -> Self {
        RowQuery { view: view.to_owned(), granularity, from: None, to: None, limit: None, speed_from: BTreeMap::new() }
    }
}

/// A held lease: its name, the holder, and the fencing token of this acquisition. Tokens of one lease name
/// only grow, each acquisition taking a new one; a write fenced by a lease succeeds only while the lease
/// still carries this holder and token and has not expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    pub token: i64,
}

/// The view store. Every method is atomic on its own; errors are [`Error::Store`] (see `is_retryable`),
/// [`Error::Fenced`] for a fenced write whose lease is gone, [`Error::StoreRefused`] for a write the
/// contract forbids.
#[async_trait]
pub trait ViewStore: Send + Sync + std::fmt::Debug {
    /// Writes speed rows of open segments of `topic`. Each replaces a stored row of the same key only if its
    /// `upto_offset` is larger, and is dropped if its segment has a recorded seal that ends before its
    /// `upto_offset` (a zombie or an earlier run writing past the seal).
    async fn upsert_speed_rows(&self, topic: &str, rows: &[SpeedRow]) -> Result<()>;
    /// Makes a sealed segment's rows final, in one transaction: deletes the segment's rows whose
    /// `upto_offset` is past `seal.end` (written before the seal was recorded, by an earlier run with larger
    /// limits or a zombie), then upserts `rows` (every cell of the segment, `upto_offset = seal.end`).
    async fn finalize_segment(&self, topic: &str, seal: Seal, rows: &[SpeedRow]) -> Result<()>;
    /// Bounds a sealed segment that cannot be finalized (retention deleted part of it before a replay)
    /// to its seal: deletes the segment's rows whose `upto_offset` is past `seal.end`, as
    /// [`ViewStore::finalize_segment`] does, and keeps every other row (its recorder's, final or partial).
    /// Returns the number of rows deleted: each also held records of the seal itself, now missing from
    /// the speed view until the batch covers them.
    async fn trim_segment(&self, topic: &str, seal: Seal) -> Result<u64>;
    /// Speed rows matching `query`, every segment.
    async fn speed_rows(&self, query: &RowQuery) -> Result<Vec<SpeedRow>>;

    /// Records `seal` unless a seal for the same (topic, partition, start) exists; returns the recorded one.
    /// `None` when no seal exists at `seal.start` and it lies below the partition's published cutoff: the
    /// caller resumes at the cutoff (those records are in the batch view). Checked atomically with the insert.
    async fn record_seal(&self, topic: &str, seal: Seal) -> Result<Option<Seal>>;
    /// The seal of the segment starting at `start`, if recorded.
    async fn seal_at(&self, topic: &str, partition: i32, start: i64) -> Result<Option<Seal>>;
    /// Every recorded seal of `topic`, ordered by partition then start.
    async fn seals(&self, topic: &str) -> Result<Vec<Seal>>;
    /// The seals of `topic` starting at or after `from[p]` (every seal of partitions not in `from`),
    /// ordered by partition then start: what a batch run reads past the published cutoffs.
    async fn seals_from(&self, topic: &str, from: &BTreeMap<i32, i64>) -> Result<Vec<Seal>>;
    /// Deletes, for each partition, the speed rows of segments starting below `cutoffs[p]` and the seals of
    /// `topic` starting below it (segments the batch absorbed). Fenced. Returns (rows, seals) deleted.
    async fn delete_absorbed(&self, fence: &Lease, topic: &str, cutoffs: &BTreeMap<i32, i64>) -> Result<(u64, u64)>;

    /// A new generation number, larger than every number handed out or published before. Fenced.
    async fn allocate_generation(&self, fence: &Lease) -> Result<i64>;
    /// Deletes every row of `generation` (a crashed run's leftovers, or an expired generation). Fenced;
    /// refuses the current manifest's generation.
    async fn delete_generation(&self, fence: &Lease, generation: i64) -> Result<()>;
    /// Appends batch rows to `generation` (not visible to readers until its manifest is published). Fenced;
    /// refuses a published generation.
    async fn write_batch_rows(&self, fence: &Lease, generation: i64, rows: &[BatchRow]) -> Result<()>;
    /// Batch rows of `generation` matching `query`.
    async fn batch_rows(&self, generation: i64, query: &RowQuery) -> Result<Vec<BatchRow>>;
    /// Generations that hold batch rows, ascending.
    async fn generations(&self) -> Result<Vec<i64>>;
    /// Generations that have a manifest (published and not yet expired), ascending.
    async fn published_generations(&self) -> Result<Vec<i64>>;

    /// Publishes `manifest`: one write that switches readers to its generation. Fenced; refuses a
    /// generation that is not above the current one.
    async fn publish_manifest(&self, fence: &Lease, manifest: &Manifest) -> Result<()>;
    /// The manifest with the highest generation.
    async fn current_manifest(&self) -> Result<Option<Manifest>>;
    /// Deletes manifests of generations below `generation`. Fenced.
    async fn delete_manifests_before(&self, fence: &Lease, generation: i64) -> Result<()>;

    /// Takes lease `name` for `holder` until now + `ttl` if it is free or expired, with a new fencing token;
    /// `None` when another holder has it.
    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<Lease>>;
    /// Extends `lease` to now + `ttl`; false when it was lost (taken over, or expired).
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool>;
    /// Releases `lease` if still held (it expires at once; its token is kept so tokens keep growing).
    async fn release_lease(&self, lease: &Lease) -> Result<()>;

    /// Cheap round trip for health checks.
    async fn ping(&self) -> Result<()>;
}

/// Connections a store opened by [`open`] keeps at most (PostgreSQL; `store.max_connections` overrides it).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 8;

/// Opens the store named by `url` (`sqlite://path`, `postgres://...` or `scylla://host:9042/keyspace`),
/// creating or migrating its schema.
pub async fn open(url: &str) -> Result<Arc<dyn ViewStore>> {
    open_with(url, DEFAULT_MAX_CONNECTIONS).await
}

/// As [`open`], with a pool of at most `max_connections` (PostgreSQL; SQLite keeps its own small pool, and
/// the ScyllaDB driver one connection per shard of each node).
///
/// Errors: [`Error::ConfigInvalid`] naming `store.url` for an unknown scheme; [`Error::Store`] when the
/// database cannot be opened or its schema not brought up to date.
pub async fn open_with(url: &str, max_connections: u32) -> Result<Arc<dyn ViewStore>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(PostgresStore::open(url, max_connections).await?))
    } else if url.starts_with("scylla:") {
        Ok(Arc::new(ScyllaStore::open(url).await?))
    } else {
        Err(Error::invalid(
            "store.url",
            format!(
                "`{}`: unsupported store (sqlite://path, postgres://user@host/db or scylla://host:9042/keyspace)",
                redact(url)
            ),
        ))
    }
}

/// Opens the store of `config` (its pool sized by `store.max_connections`).
pub async fn open_config(config: &crate::config::StoreConfig) -> Result<Arc<dyn ViewStore>> {
    open_with(&config.url, config.max_connections).await
}

/// [`open_config`] for a long-running service (`lambda speed`, `batch schedule`, `serve`, `mirror`): a store
/// server that cannot be reached yet (a retryable error, [`crate::Error::is_retryable`], e.g. PostgreSQL still
/// starting or restarting) is waited for, with a warning per attempt and backoff from 1 s doubling to 30 s.
/// Other errors return at once. `None` when `shutdown` is cancelled first (a clean stop: nothing was opened).
pub async fn open_config_waiting(
    config: &crate::config::StoreConfig,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Option<Arc<dyn ViewStore>>> {
    let mut backoff = std::time::Duration::from_secs(1);
    loop {
        // a connection attempt can itself wait out the pool's acquire timeout: shutdown does not wait for it
        let opened = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(None),
            opened = open_config(config) => opened,
        };
        match opened {
            // a SQLite file that cannot be opened is a mistake to report, not a server to wait for
            Err(e) if e.is_retryable() && !config.url.starts_with("sqlite:") => {
                tracing::warn!(store = %redact(&config.url), error = %e, ?backoff, "view store unreachable; waiting for it");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
            }
            opened => return opened.map(Some),
        }
    }
}

/// `lambda store init`: creates the schema of the store at `url`, or brings it up to date; idempotent.
/// Returns one line per step taken, for the person who ran it.
pub async fn init(url: &str) -> Result<Vec<String>> {
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let store = PostgresStore::connect(url, 1).await?;
        let applied = store.migrate().await?;
        let all = store.applied_migrations().await?;
        let mut lines = vec![format!("{}: PostgreSQL schema at version {}", redact(url), all.last().unwrap_or(&0))];
        if applied.is_empty() {
            lines.push("already up to date; nothing applied".to_owned());
        } else {
            lines.push(format!("applied migrations {applied:?}"));
        }
        Ok(lines)
    } else if url.starts_with("scylla:") {
        ScyllaStore::init(url).await
    } else {
        open(url).await?;
        Ok(vec![format!("{url}: SQLite schema created or up to date")])
    }
}

/// `url` without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme + 3], &userinfo[..colon], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Canonical JSON text of dimension values, the dims column of SQL backends: `["view",null]` (read back
/// with SQLite's `json()` inside the packed range reads).
pub fn encode_dims(dims: &[Option<String>]) -> String {
    serde_json::to_string(dims).expect("strings serialize")
}

/// JSON text of metric values: `[312,12345670000]` (128-bit integers, written exactly).
pub fn encode_metrics(metrics: &[i128]) -> String {
    serde_json::to_string(metrics).expect("integers serialize")
}

/// Creates an empty database on the PostgreSQL server of `admin_url` (a URL whose user may create
/// databases) and returns `admin_url` pointing at it instead: for tests and benchmarks that each need a
/// store of their own. The name is `<prefix>_<pid>_<sequence>_<nanoseconds>`.
///
/// Errors: [`Error::Store`] when the server is unreachable or refuses `CREATE DATABASE`.
pub async fn create_scratch_postgres_database(admin_url: &str, prefix: &str) -> Result<String> {
    use sqlx::Connection;
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = Utc::now().timestamp_subsec_nanos();
    let name: String = format!("{prefix}_{}_{n}_{nanos}", std::process::id())
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect();
    let mut conn =
        sqlx::PgConnection::connect(admin_url).await.map_err(|source| Error::Store { table: "open", source })?;
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .map_err(|source| Error::Store { table: "open", source })?;
    conn.close().await.ok();
    Ok(with_database(admin_url, &name))
}

/// `url` (`postgres://user@host:port/db?options`) with its database replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[authority_start..].find('/').map_or(base.len(), |i| authority_start + i);
    format!("{}/{database}{query}", &base[..host_end])
}

/// Dimension values from their JSON text ([`encode_dims`]).
pub(crate) fn decode_dims(text: &str) -> std::result::Result<Vec<Option<String>>, String> {
    serde_json::from_str(text).map_err(|e| format!("dims `{text}`: {e}"))
}

/// Metric values from their JSON text ([`encode_metrics`]).
pub(crate) fn decode_metrics(text: &str) -> std::result::Result<Vec<i128>, String> {
    serde_json::from_str::<Metrics>(text).map(|m| m.0).map_err(|e| format!("metrics `{text}`: {e}"))
}

/// Metric values read from their JSON text (128-bit integers). serde_json reads an `i128` through a freshly
/// allocated `String` per number; a range read holds thousands of them, so each is taken as borrowed raw
/// text and parsed in place.
pub(crate) struct Metrics(pub(crate) Vec<i128>);

impl<'de> serde::Deserialize<'de> for Metrics {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Seq;
        impl<'de> serde::de::Visitor<'de> for Seq {
            type Value = Metrics;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of integers")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Metrics, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(4));
                while let Some(raw) = seq.next_element::<&'de serde_json::value::RawValue>()? {
                    out.push(raw.get().parse::<i128>().map_err(serde::de::Error::custom)?);
                }
                Ok(Metrics(out))
            }
        }
        deserializer.deserialize_seq(Seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_store_urls() {
        assert_eq!(redact("postgres://lambda:s3cret@db:5432/views"), "postgres://lambda:***@db:5432/views");
        assert_eq!(redact("postgres://lambda@db/views"), "postgres://lambda@db/views");
        assert_eq!(redact("sqlite://lambda-data/views.db"), "sqlite://lambda-data/views.db");
    }

    #[test]
    fn scratch_databases_replace_only_the_database_of_a_url() {
        assert_eq!(with_database("postgres://u:p@h:5/postgres", "x"), "postgres://u:p@h:5/x");
        assert_eq!(with_database("postgres://u@h:5", "x"), "postgres://u@h:5/x");
        assert_eq!(with_database("postgres://u@h/db?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
    }

    #[test]
    fn metrics_text_round_trips_at_the_edges_of_i128() {
        let values = vec![0, -1, i128::MAX, i128::MIN, 9_007_199_254_740_993];
        assert_eq!(decode_metrics(&encode_metrics(&values)).unwrap(), values);
        assert!(decode_metrics("[1.5]").is_err());
        assert!(decode_metrics("[\"1\"]").is_err());
    }
}
