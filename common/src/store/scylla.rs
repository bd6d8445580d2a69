//! ScyllaDB / Cassandra backend of the view store (the `scylla` crate): `scylla://HOST[:PORT][,HOST...]/KEYSPACE`.
//!
//! Schema: `deploy/scylla/schema.cql` (embedded; applied by `lambda store init` and on open when a table is
//! missing). The contract of [`ViewStore`] maps onto CQL without multi-statement transactions this way
//! (DESIGN.md §4-6; "Lightweight transactions" and "Timestamps" in the ScyllaDB/Cassandra CQL docs):
//! - **speed rows are ordered by write timestamp, not by reading first.** Every write and delete of a
//!   segment's cells carries `USING TIMESTAMP` on the offset scale ([`open_timestamp`], [`SEAL_SHADOW`],
//!   [`final_timestamp`], [`ABSORBED`]): the cell with the larger `upto_offset` wins in any arrival order,
//!   equal timestamps carry equal values (the same records below the same offset), and a late write never
//!   hides a later offset the way a server-clock write would.
//! - **a seal shadows its segment.** [`ViewStore::finalize_segment`] writes the final cells at
//!   `2^62 + seal.end`, then deletes the segment's partitions at `2^62 - 1`: every open-segment write,
//!   before or after, lies below that tombstone, so nothing written past the seal (a zombie, an earlier run
//!   with other limits) survives, and the final cells never dip. A crash between the two statements is
//!   repaired by the replay that follows (the offset is committed after the finalize). Open writes also read
//!   the segment's seal first and drop rows past it, so a sealed but not yet finalized segment is not
//!   overrun.
//! - **seals** are `INSERT ... IF NOT EXISTS` (first writer wins). The check against the published cutoff
//!   is a read before it, not atomic with it: a seal that slips below a cutoff published meanwhile belongs
//!   to a segment below the cutoff, which the serving merge (segment_start >= C[p]) and the batch run
//!   (seals past the cutoff) both ignore.
//! - **the control partition** (lease, generation counter, manifests) is written by lightweight
//!   transactions only. The lease row's holder and token carry the lease's TTL, so it expires by the
//!   replicas' clocks; a fenced publish or allocation is one conditional batch on that partition, with the
//!   lease condition `IF holder = ? AND token = ?` beside its own. Fenced deletes and batch-row writes check
//!   the lease (a serial read) first: they touch only rows no published generation needs (an unpublished
//!   generation of the writer's own, generations and segments below what was published), so a zombie's late
//!   statement cannot change an answer.
//!
//! One datacenter: LOCAL_SERIAL makes a lightweight transaction atomic within the local datacenter only, so
//! every layer must use the same datacenter of the cluster (replicate to others for reads and disaster
//! recovery, but do not run layers against two of them).
//!
//! Requests: prepared statements (token-aware routing by the driver's default policy), LOCAL_QUORUM reads
//! and writes, LOCAL_SERIAL for lightweight transactions and the reads that must see them, at most
//! [`MAX_IN_FLIGHT`] requests per call, and retries with exponential backoff for the idempotent requests on
//! retryable errors only ([`retryable`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::response::query_result::QueryResult;
use scylla::response::PagingState;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};
use sha2::{Digest, Sha256};

use super::{
    decode_dims, decode_metrics, encode_dims, encode_metrics, BatchRow, Lease, Manifest, RowQuery, Seal, SpeedRow,
    ViewKey, ViewStore,
};
use crate::error::{Error, Result};
use crate::view::Granularity;

/// The schema, applied statement by statement ([`schema_statements`]).
pub const SCHEMA: &str = include_str!("../../../deploy/scylla/schema.cql");

/// Open-segment writes are stamped with their `upto_offset`, which must lie below this.
pub const FINAL_BASE: i64 = 1 << 62;
/// The timestamp of the delete that shadows a sealed segment's open-segment writes.
pub const SEAL_SHADOW: i64 = FINAL_BASE - 1;
/// The timestamp of the delete of a segment the batch view absorbed: above every write.
pub const ABSORBED: i64 = i64::MAX;
/// Registrations (speed_segments, speed_partitions) are stamped 0: an [`ABSORBED`] delete hides them for good.
const REGISTERED: i64 = 0;
/// The largest offset (seal end or `upto_offset`) this store accepts: `final_timestamp` stays below
/// [`ABSORBED`].
pub const MAX_OFFSET: i64 = FINAL_BASE - 2;

/// Requests one store call keeps in flight at most.
pub const MAX_IN_FLIGHT: usize = 64;
/// Rows per unlogged single-partition batch, and the bytes of values it may carry (Cassandra fails batches
/// over `batch_size_fail_threshold`, 50 KiB by default).
const ROWS_PER_BATCH: usize = 64;
const BATCH_BYTES: usize = 32 * 1024;
/// Rows per page of a read.
const PAGE_SIZE: i32 = 5_000;
/// Attempts of an idempotent request, with backoff 100, 200, 400 ms between them.
const ATTEMPTS: u32 = 4;

const SCOPE: &str = "lambda";
const CURRENT: &str = "current";
const GENERATION_COUNTER: &str = "counter/generation";
const SECONDS_PER_DAY: i64 = 86_400;

/// The write timestamp of an open-segment speed row: its `upto_offset`.
///
/// Errors: [`Error::StoreRefused`] outside `0..=MAX_OFFSET`.
pub fn open_timestamp(upto_offset: i64) -> Result<i64> {
    check_offset("upto_offset", upto_offset)?;
    Ok(upto_offset)
}

/// The write timestamp of a sealed segment's final rows: `2^62 + seal_end`, above [`SEAL_SHADOW`] and
/// every [`open_timestamp`], below [`ABSORBED`].
pub fn final_timestamp(seal_end: i64) -> Result<i64> {
    check_offset("seal end", seal_end)?;
    Ok(FINAL_BASE + seal_end)
}

fn check_offset(what: &str, offset: i64) -> Result<()> {
    if (0..=MAX_OFFSET).contains(&offset) {
        Ok(())
    } else {
        Err(Error::StoreRefused {
            table: "speed_rows",
            message: format!("{what} {offset} is outside 0..={MAX_OFFSET}, the offsets write timestamps can carry"),
        })
    }
}

/// A parsed `scylla://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScyllaUrl {
    /// `host:port` of each contact point (port 9042 when not given).
    pub nodes: Vec<String>,
    pub keyspace: String,
    /// `?replication_factor=N` for a keyspace `store init` creates; `None`: min(3, nodes in the cluster).
    pub replication_factor: Option<u32>,
}

impl ScyllaUrl {
    /// Parses `scylla://host1[:port],host2[:port]/keyspace[?replication_factor=N]`.
    ///
    /// Errors: [`Error::ConfigInvalid`] naming `store.url` and the part at fault.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |message: String| Error::invalid("store.url", format!("`{url}`: {message}"));
        let rest =
            url.strip_prefix("scylla://").ok_or_else(|| bad("expected scylla://HOST[:PORT],.../KEYSPACE".into()))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (hosts, keyspace) = rest
            .split_once('/')
            .ok_or_else(|| bad("no keyspace: expected scylla://HOST[:PORT],.../KEYSPACE".into()))?;
        let mut nodes = Vec::new();
        for host in hosts.split(',') {
            if host.is_empty() {
                return Err(bad("an empty host".into()));
            }
            let has_port = match host.rsplit_once(':') {
                Some((_, port)) if !host.ends_with(']') => {
                    port.parse::<u16>().map_err(|_| bad(format!("port `{port}` is not a number")))?;
                    true
                }
                _ => false,
            };
            nodes.push(if has_port { host.to_owned() } else { format!("{host}:9042") });
        }
        let valid = keyspace.len() <= 48
            && keyspace.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && keyspace.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(bad(format!(
                "keyspace `{keyspace}` is not a CQL name (a letter, then letters, digits or _, at most 48)"
            )));
        }
        let mut replication_factor = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("replication_factor", n)) => {
                    replication_factor = Some(
                        n.parse::<u32>()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| bad(format!("replication_factor `{n}` is not a positive number")))?,
                    )
                }
                _ => return Err(bad(format!("unknown option `{pair}` (known: replication_factor=N)"))),
            }
        }
        Ok(ScyllaUrl { nodes, keyspace: keyspace.to_ascii_lowercase(), replication_factor })
    }
}

/// The statements of [`SCHEMA`]: `--` comments dropped, split at `;`.
pub fn schema_statements() -> Vec<String> {
    let text: String =
        SCHEMA.lines().map(|line| line.split_once("--").map_or(line, |(code, _)| code)).collect::<Vec<_>>().join("\n");
    text.split(';').map(|s| s.split_whitespace().collect::<Vec<_>>().join(" ")).filter(|s| !s.is_empty()).collect()
}

/// The statement creating the keyspace: NetworkTopologyStrategy with a `replication_factor` (valid on
/// ScyllaDB and on Cassandra 4.0+; no `tablets` option, which Cassandra rejects).
pub fn create_keyspace_statement(keyspace: &str, replication_factor: u32) -> String {
    format!(
        "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = \
         {{'class': 'NetworkTopologyStrategy', 'replication_factor': {replication_factor}}}"
    )
}

/// Whether a failed request may pass when sent again: the coordinator timed out, too few replicas were
/// alive, a node was overloaded or bootstrapping, a rate limit was hit, or the connection or pool failed.
/// A syntax, validation, authorization or configuration error fails the same way again; so does a read or
/// write *failure* (a replica refused, e.g. too many tombstones).
pub fn retryable(error: &ExecutionError) -> bool {
    match error {
        ExecutionError::ConnectionPoolError(_) | ExecutionError::RequestTimeout(_) | ExecutionError::EmptyPlan => true,
        ExecutionError::LastAttemptError(attempt) => match attempt {
            RequestAttemptError::DbError(db, _) => retryable_db_error(db),
            RequestAttemptError::BrokenConnectionError(_) | RequestAttemptError::UnableToAllocStreamId => true,
            _ => false,
        },
        _ => false,
    }
}

/// [`retryable`] for an error the server returned.
pub fn retryable_db_error(error: &DbError) -> bool {
    matches!(
        error,
        DbError::Unavailable { .. }
            | DbError::Overloaded
            | DbError::IsBootstrapping
            | DbError::ReadTimeout { .. }
            | DbError::WriteTimeout { .. }
            | DbError::TruncateError
            | DbError::RateLimitReached { .. }
    )
}

fn cql(table: &'static str) -> impl FnOnce(ExecutionError) -> Error {
    move |source| {
        let retryable = retryable(&source);
        Error::Cql { table, cause: Box::new(source), retryable }
    }
}

fn corrupt(table: &'static str) -> impl Fn(String) -> Error {
    move |message| Error::StoreCorrupt { table, message }
}

fn decode_err<E: std::fmt::Display>(table: &'static str) -> impl Fn(E) -> Error {
    move |e| Error::StoreCorrupt { table, message: e.to_string() }
}

/// sha256 of the dimension text: the clustering key of a row (as `dims_hash` of the PostgreSQL store).
pub fn dims_hash(dims: &str) -> Vec<u8> {
    Sha256::digest(dims.as_bytes()).to_vec()
}

/// The UTC day (its first second) of a bucket: the batch-row partition it belongs to.
pub fn day_of(bucket_start: i64) -> i64 {
    bucket_start.div_euclid(SECONDS_PER_DAY) * SECONDS_PER_DAY
}

/// The control-partition row of a manifest: `manifest/` and the generation zero-padded, so names sort as
/// generations do.
fn manifest_name(generation: i64) -> String {
    format!("manifest/{generation:020}")
}

fn lease_name(name: &str) -> String {
    format!("lease/{name}")
}

/// A lease's TTL in whole seconds: rounded up, plus one, because a cell's expiry is kept in whole seconds
/// (a TTL of 1 could expire at once). Never shorter than asked; at most a second longer.
pub fn ttl_seconds(ttl: Duration) -> i32 {
    let secs = ttl.as_secs().saturating_add(u64::from(ttl.subsec_nanos() > 0)).saturating_add(1);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

/// The statements, prepared once per session.
#[derive(Debug)]
struct Statements {
    speed_insert: PreparedStatement,
    speed_delete: PreparedStatement,
    speed_select: PreparedStatement,
    speed_upto: PreparedStatement,
    speed_cell_delete: PreparedStatement,
    speed_count: PreparedStatement,
    segment_register: PreparedStatement,
    segments_delete_below: PreparedStatement,
    segments_below: PreparedStatement,
    segments: PreparedStatement,
    partition_register: PreparedStatement,
    partitions_of_view: PreparedStatement,
    partitions: PreparedStatement,
    batch_insert: PreparedStatement,
    batch_select: PreparedStatement,
    batch_delete_day: PreparedStatement,
    day_register: PreparedStatement,
    days: PreparedStatement,
    days_delete: PreparedStatement,
    generation_register: PreparedStatement,
    generations: PreparedStatement,
    generation_delete: PreparedStatement,
    seal_insert: PreparedStatement,
    seal_select: PreparedStatement,
    seal_check: PreparedStatement,
    seals_from: PreparedStatement,
    seals_delete_below: PreparedStatement,
    seals_count_below: PreparedStatement,
    seal_partition_register: PreparedStatement,
    seal_partitions: PreparedStatement,
    control_init: PreparedStatement,
    control_row: PreparedStatement,
    manifests: PreparedStatement,
    latest_manifest: PreparedStatement,
    lease_check: PreparedStatement,
    lease_take: PreparedStatement,
    lease_token: PreparedStatement,
    lease_renew: PreparedStatement,
    lease_release: PreparedStatement,
    counter_bump: PreparedStatement,
    current_switch: PreparedStatement,
    manifest_insert: PreparedStatement,
    manifest_delete: PreparedStatement,
}

/// The CQL text of every statement, by name (unit-tested without a server: see the tests).
pub mod cql {
    pub const SPEED_INSERT: &str = "INSERT INTO speed_rows (view_name, granularity, kafka_partition, segment_start, \
        bucket_start, dims_hash, dims, upto_offset, metrics) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?";
    pub const SPEED_DELETE: &str = "DELETE FROM speed_rows USING TIMESTAMP ? \
        WHERE view_name = ? AND granularity = ? AND kafka_partition = ? AND segment_start = ?";
    pub const SPEED_SELECT: &str = "SELECT bucket_start, dims, upto_offset, metrics FROM speed_rows \
        WHERE view_name = ? AND granularity = ? AND kafka_partition = ? AND segment_start = ? \
        AND bucket_start >= ? AND bucket_start < ?";
    /// The cells of one segment and the offset each counts up to (a trim's read).
    pub const SPEED_UPTO: &str = "SELECT bucket_start, dims, upto_offset FROM speed_rows \
        WHERE view_name = ? AND granularity = ? AND kafka_partition = ? AND segment_start = ?";
    /// One cell's delete, at the timestamp of the open write it removes (a tombstone wins a tie).
    pub const SPEED_CELL_DELETE: &str = "DELETE FROM speed_rows USING TIMESTAMP ? \
        WHERE view_name = ? AND granularity = ? AND kafka_partition = ? AND segment_start = ? \
        AND bucket_start = ? AND dims_hash = ?";
    pub const SPEED_COUNT: &str = "SELECT COUNT(*) FROM speed_rows \
        WHERE view_name = ? AND granularity = ? AND kafka_partition = ? AND segment_start = ?";
    pub const SEGMENT_REGISTER: &str = "INSERT INTO speed_segments (view_name, granularity, kafka_partition, \
        segment_start) VALUES (?, ?, ?, ?) USING TIMESTAMP ?";
    /// The cleanup of absorbed segments: one range tombstone per (view, granularity, Kafka partition).
    pub const SEGMENTS_DELETE_BELOW: &str = "DELETE FROM speed_segments USING TIMESTAMP ? \
        WHERE view_name = ? AND granularity = ? AND kafka_partition = ? AND segment_start < ?";
    pub const SEGMENTS_BELOW: &str = "SELECT segment_start FROM speed_segments \
        WHERE view_name = ? AND granularity = ? AND kafka_partition = ? AND segment_start < ?";
    /// The registered segments of one (view, granularity, Kafka partition) from a cutoff on.
    pub const SEGMENTS: &str = "SELECT segment_start FROM speed_segments \
        WHERE view_name = ? AND granularity = ? AND kafka_partition = ? AND segment_start >= ?";
    pub const PARTITION_REGISTER: &str = "INSERT INTO speed_partitions (shard, view_name, granularity, \
        kafka_partition) VALUES (0, ?, ?, ?) USING TIMESTAMP ?";
    pub const PARTITIONS_OF_VIEW: &str =
        "SELECT kafka_partition FROM speed_partitions WHERE shard = 0 AND view_name = ? AND granularity = ?";
    pub const PARTITIONS: &str = "SELECT view_name, granularity, kafka_partition FROM speed_partitions WHERE shard = 0";
    pub const BATCH_INSERT: &str = "INSERT INTO batch_rows (generation, view_name, granularity, day, bucket_start, \
        dims_hash, dims, metrics) VALUES (?, ?, ?, ?, ?, ?, ?, ?)";
    pub const BATCH_SELECT: &str = "SELECT bucket_start, dims, metrics FROM batch_rows \
        WHERE generation = ? AND view_name = ? AND granularity = ? AND day = ? AND bucket_start >= ? AND bucket_start < ?";
    pub const BATCH_DELETE_DAY: &str =
        "DELETE FROM batch_rows WHERE generation = ? AND view_name = ? AND granularity = ? AND day = ?";
    pub const DAY_REGISTER: &str =
        "INSERT INTO batch_days (generation, view_name, granularity, day) VALUES (?, ?, ?, ?)";
    pub const DAYS: &str = "SELECT view_name, granularity, day FROM batch_days WHERE generation = ?";
    pub const DAYS_DELETE: &str = "DELETE FROM batch_days WHERE generation = ?";
    pub const GENERATION_REGISTER: &str = "INSERT INTO batch_generations (shard, generation) VALUES (0, ?)";
    pub const GENERATIONS: &str = "SELECT generation FROM batch_generations WHERE shard = 0";
    pub const GENERATION_DELETE: &str = "DELETE FROM batch_generations WHERE shard = 0 AND generation = ?";
    pub const SEAL_INSERT: &str = "INSERT INTO seals (topic, kafka_partition, start_offset, end_offset) \
        VALUES (?, ?, ?, ?) IF NOT EXISTS";
    pub const SEAL_SELECT: &str =
        "SELECT end_offset FROM seals WHERE topic = ? AND kafka_partition = ? AND start_offset = ?";
    pub const SEALS_FROM: &str = "SELECT start_offset, end_offset FROM seals \
        WHERE topic = ? AND kafka_partition = ? AND start_offset >= ?";
    pub const SEALS_DELETE_BELOW: &str =
        "DELETE FROM seals WHERE topic = ? AND kafka_partition = ? AND start_offset < ?";
    pub const SEALS_COUNT_BELOW: &str =
        "SELECT COUNT(*) FROM seals WHERE topic = ? AND kafka_partition = ? AND start_offset < ?";
    pub const SEAL_PARTITION_REGISTER: &str = "INSERT INTO seal_partitions (topic, kafka_partition) VALUES (?, ?)";
    pub const SEAL_PARTITIONS: &str = "SELECT kafka_partition FROM seal_partitions WHERE topic = ?";
    pub const CONTROL_INIT: &str = "INSERT INTO control (scope, name, value) VALUES (?, ?, 0) IF NOT EXISTS";
    pub const CONTROL_ROW: &str = "SELECT holder, lease_token, value FROM control WHERE scope = ? AND name = ?";
    pub const MANIFESTS: &str =
        "SELECT name FROM control WHERE scope = ? AND name >= 'manifest/' AND name < 'manifest0'";
    pub const LATEST_MANIFEST: &str = "SELECT body FROM control WHERE scope = ? AND name >= 'manifest/' \
        AND name < 'manifest0' ORDER BY name DESC LIMIT 1";
    /// The lease condition of a fenced conditional batch (it rewrites `value`, the last token handed out,
    /// with the fence's own token, which it already is while the lease holds).
    pub const LEASE_CHECK: &str =
        "UPDATE control SET value = ? WHERE scope = ? AND name = ? IF holder = ? AND lease_token = ?";
    /// Taking a lease: with [`LEASE_TOKEN`] in one conditional batch.
    pub const LEASE_TAKE: &str =
        "UPDATE control USING TTL ? SET holder = ?, lease_token = ? WHERE scope = ? AND name = ?";
    pub const LEASE_TOKEN: &str = "UPDATE control SET value = ? WHERE scope = ? AND name = ? IF value = ?";
    pub const LEASE_RENEW: &str = "UPDATE control USING TTL ? SET holder = ?, lease_token = ? \
        WHERE scope = ? AND name = ? IF holder = ? AND lease_token = ?";
    pub const LEASE_RELEASE: &str =
        "DELETE holder, lease_token FROM control WHERE scope = ? AND name = ? IF holder = ? AND lease_token = ?";
    pub const COUNTER_BUMP: &str = "UPDATE control SET value = ? WHERE scope = ? AND name = ? IF value = ?";
    pub const CURRENT_SWITCH: &str = "UPDATE control SET value = ? WHERE scope = ? AND name = ? IF value < ?";
    pub const MANIFEST_INSERT: &str = "INSERT INTO control (scope, name, body) VALUES (?, ?, ?)";
    pub const MANIFEST_DELETE: &str = "DELETE FROM control WHERE scope = ? AND name = ?";
}

/// Whether a statement is a lightweight transaction (its outcome is read from `[applied]`).
fn is_lwt(text: &str) -> bool {
    text.contains(" IF ")
}

impl Statements {
    async fn prepare(session: &Session) -> Result<Self> {
        let prepare = |text: &'static str| async move {
            let mut statement =
                session.prepare(text).await.map_err(|e| cql("prepare")(ExecutionError::PrepareError(e)))?;
            if is_lwt(text) {
                statement.set_serial_consistency(Some(SerialConsistency::LocalSerial));
            } else {
                statement.set_is_idempotent(true);
            }
            statement.set_page_size(PAGE_SIZE);
            Ok::<_, Error>(statement)
        };
        // reads that must see lightweight transactions read at LOCAL_SERIAL
        let serial = |mut statement: PreparedStatement| {
            statement.set_consistency(Consistency::LocalSerial);
            statement
        };
        Ok(Statements {
            speed_insert: prepare(cql::SPEED_INSERT).await?,
            speed_delete: prepare(cql::SPEED_DELETE).await?,
            speed_select: prepare(cql::SPEED_SELECT).await?,
            speed_upto: prepare(cql::SPEED_UPTO).await?,
            speed_cell_delete: prepare(cql::SPEED_CELL_DELETE).await?,
            speed_count: prepare(cql::SPEED_COUNT).await?,
            segment_register: prepare(cql::SEGMENT_REGISTER).await?,
            segments_delete_below: prepare(cql::SEGMENTS_DELETE_BELOW).await?,
            segments_below: prepare(cql::SEGMENTS_BELOW).await?,
            segments: prepare(cql::SEGMENTS).await?,
            partition_register: prepare(cql::PARTITION_REGISTER).await?,
            partitions_of_view: prepare(cql::PARTITIONS_OF_VIEW).await?,
            partitions: prepare(cql::PARTITIONS).await?,
            batch_insert: prepare(cql::BATCH_INSERT).await?,
            batch_select: prepare(cql::BATCH_SELECT).await?,
            batch_delete_day: prepare(cql::BATCH_DELETE_DAY).await?,
            day_register: prepare(cql::DAY_REGISTER).await?,
            days: prepare(cql::DAYS).await?,
            days_delete: prepare(cql::DAYS_DELETE).await?,
            generation_register: prepare(cql::GENERATION_REGISTER).await?,
            generations: prepare(cql::GENERATIONS).await?,
            generation_delete: prepare(cql::GENERATION_DELETE).await?,
            seal_insert: prepare(cql::SEAL_INSERT).await?,
            seal_select: serial(prepare(cql::SEAL_SELECT).await?),
            // an open write's check needs only seals whose record_seal returned (committed at LOCAL_QUORUM);
            // one still in flight is shadowed by its finalize
            seal_check: prepare(cql::SEAL_SELECT).await?,
            seals_from: prepare(cql::SEALS_FROM).await?,
            seals_delete_below: prepare(cql::SEALS_DELETE_BELOW).await?,
            seals_count_below: prepare(cql::SEALS_COUNT_BELOW).await?,
            seal_partition_register: prepare(cql::SEAL_PARTITION_REGISTER).await?,
            seal_partitions: prepare(cql::SEAL_PARTITIONS).await?,
            control_init: prepare(cql::CONTROL_INIT).await?,
            control_row: serial(prepare(cql::CONTROL_ROW).await?),
            manifests: serial(prepare(cql::MANIFESTS).await?),
            // LOCAL_QUORUM, not a Paxos round per API request: a publish that returned is committed at
            // quorum, and one in flight leaves readers on the previous generation, which is still whole
            latest_manifest: prepare(cql::LATEST_MANIFEST).await?,
            lease_check: prepare(cql::LEASE_CHECK).await?,
            lease_take: prepare(cql::LEASE_TAKE).await?,
            lease_token: prepare(cql::LEASE_TOKEN).await?,
            lease_renew: prepare(cql::LEASE_RENEW).await?,
            lease_release: prepare(cql::LEASE_RELEASE).await?,
            counter_bump: prepare(cql::COUNTER_BUMP).await?,
            current_switch: prepare(cql::CURRENT_SWITCH).await?,
            manifest_insert: prepare(cql::MANIFEST_INSERT).await?,
            manifest_delete: prepare(cql::MANIFEST_DELETE).await?,
        })
    }
}

/// What this process already registered (saves a write per flush; bounded).
#[derive(Debug, Default)]
struct Registered {
    partitions: HashSet<(String, Granularity, i32)>,
    segments: HashSet<(String, Granularity, i32, i64)>,
    seal_partitions: HashSet<(String, i32)>,
    /// Seal ends seen by writes (a seal never changes once recorded).
    seals: std::collections::HashMap<(String, i32, i64), i64>,
}

impl Registered {
    const MAX: usize = 100_000;

    fn trim(&mut self) {
        if self.segments.len() > Self::MAX {
            self.segments.clear();
        }
        if self.seals.len() > Self::MAX {
            self.seals.clear();
        }
    }
}

/// The ScyllaDB / Cassandra view store.
#[derive(Clone)]
pub struct ScyllaStore {
    session: Arc<Session>,
    statements: Arc<Statements>,
    registered: Arc<Mutex<Registered>>,
    keyspace: String,
}

impl std::fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaStore").field("keyspace", &self.keyspace).finish_non_exhaustive()
    }
}

/// A speed row's bound values, in [`cql::SPEED_INSERT`] order.
type SpeedValues<'a> = (&'a str, &'a str, i32, i64, i64, Vec<u8>, String, i64, String, i64);
/// A batch row's bound values, in [`cql::BATCH_INSERT`] order.
type BatchValues<'a> = (i64, &'a str, &'a str, i64, i64, Vec<u8>, String, String);

fn speed_values(row: &SpeedRow, timestamp: i64) -> SpeedValues<'_> {
    let dims = encode_dims(&row.key.dims);
    (
        &row.key.view,
        row.key.granularity.as_str(),
        row.partition,
        row.segment_start,
        row.key.bucket_start,
        dims_hash(&dims),
        dims,
        row.upto_offset,
        encode_metrics(&row.metrics),
        timestamp,
    )
}

/// Splits rows (already grouped by partition key) into single-partition chunks of at most
/// [`ROWS_PER_BATCH`] rows and about [`BATCH_BYTES`] of text each.
fn chunks<T>(rows: Vec<T>, partition: impl Fn(&T) -> String, bytes: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let (mut current_key, mut current_bytes) = (None::<String>, 0);
    for row in rows {
        let key = partition(&row);
        let size = bytes(&row);
        let full = out.last().is_none_or(|c| c.len() >= ROWS_PER_BATCH || current_bytes + size > BATCH_BYTES);
        if full || current_key.as_deref() != Some(key.as_str()) {
            out.push(Vec::new());
            current_bytes = 0;
            current_key = Some(key);
        }
        current_bytes += size;
        out.last_mut().expect("pushed above").push(row);
    }
    out
}

impl ScyllaStore {
    /// Connects to the cluster of `url`, creates the keyspace and tables if any is missing (as
    /// [`ScyllaStore::init`]) and prepares the statements.
    ///
    /// Errors: [`Error::ConfigInvalid`] for a malformed URL, [`Error::Cql`] when the cluster is unreachable
    /// or refuses a statement.
    pub async fn open(url: &str) -> Result<Self> {
        let parsed = ScyllaUrl::parse(url)?;
        let session = connect(&parsed).await?;
        if !schema_complete(&session, &parsed.keyspace).await? {
            apply_schema(&session, &parsed).await?;
        }
        Self::with_session(session, &parsed.keyspace).await
    }

    /// `lambda store init`: creates the keyspace (if missing) and every table, idempotently; one line per
    /// step for the person who ran it.
    pub async fn init(url: &str) -> Result<Vec<String>> {
        let parsed = ScyllaUrl::parse(url)?;
        let session = connect(&parsed).await?;
        let lines = apply_schema(&session, &parsed).await?;
        Self::with_session(session, &parsed.keyspace).await?;
        Ok(lines)
    }

    async fn with_session(session: Session, keyspace: &str) -> Result<Self> {
        check_keys(&session, keyspace).await?;
        session
            .use_keyspace(keyspace, false)
            .await
            .map_err(|e| cql("keyspace")(ExecutionError::UseKeyspaceError(e)))?;
        let statements = Statements::prepare(&session).await?;
        let store = ScyllaStore {
            session: Arc::new(session),
            statements: Arc::new(statements),
            registered: Arc::default(),
            keyspace: keyspace.to_owned(),
        };
        for name in [GENERATION_COUNTER, CURRENT] {
            store.lwt(&store.statements.control_init, (SCOPE, name), "control").await?;
        }
        Ok(store)
    }

    /// Executes an idempotent statement, retrying retryable errors with backoff.
    async fn run(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        table: &'static str,
    ) -> Result<QueryResult> {
        retrying(table, || self.session.execute_unpaged(statement, &values)).await
    }

    /// Executes a lightweight transaction (not retried here: the callers read the outcome back) and
    /// returns `[applied]`.
    async fn lwt(&self, statement: &PreparedStatement, values: impl SerializeRow, table: &'static str) -> Result<bool> {
        let result = self.session.execute_unpaged(statement, values).await.map_err(cql(table))?;
        applied(result, table)
    }

    /// Executes a conditional batch on the control partition and returns `[applied]`.
    async fn conditional(
        &self,
        batch: &Batch,
        values: impl scylla::serialize::batch::BatchValues,
        table: &'static str,
    ) -> Result<bool> {
        let result = self.session.batch(batch, values).await.map_err(cql(table))?;
        applied(result, table)
    }

    fn conditional_batch(&self, statements: &[&PreparedStatement]) -> Batch {
        let mut batch = Batch::new(BatchType::Logged);
        for statement in statements {
            batch.append_statement((*statement).clone());
        }
        batch.set_serial_consistency(Some(SerialConsistency::LocalSerial));
        batch
    }

    /// Reads every page of `statement`, deserializing rows as `R` and mapping each through `f`.
    async fn read<R, T>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        table: &'static str,
        limit: Option<usize>,
        mut f: impl FnMut(R) -> Result<T>,
    ) -> Result<Vec<T>>
    where
        R: for<'frame, 'metadata> scylla::deserialize::row::DeserializeRow<'frame, 'metadata>,
    {
        let mut out = Vec::new();
        let mut paging = PagingState::start();
        loop {
            // serial reads are single-partition and small, and not paged (Cassandra refuses paging them)
            let serial = statement.get_consistency() == Some(Consistency::LocalSerial);
            let (result, response) = retrying(table, || async {
                if serial {
                    self.session
                        .execute_unpaged(statement, &values)
                        .await
                        .map(|r| (r, scylla::response::PagingStateResponse::NoMorePages))
                } else {
                    self.session.execute_single_page(statement, &values, paging.clone()).await
                }
            })
            .await?;
            let rows = result.into_rows_result().map_err(decode_err(table))?;
            for row in rows.rows::<R>().map_err(decode_err(table))? {
                out.push(f(row.map_err(decode_err(table))?)?);
                if limit.is_some_and(|l| out.len() >= l) {
                    return Ok(out);
                }
            }
            match response.into_paging_control_flow() {
                ControlFlow::Break(()) => return Ok(out),
                ControlFlow::Continue(next) => paging = next,
            }
        }
    }

    /// Runs `jobs` with at most [`MAX_IN_FLIGHT`] in flight; the first error wins.
    async fn all<F>(jobs: impl IntoIterator<Item = F>) -> Result<()>
    where
        F: std::future::Future<Output = Result<()>>,
    {
        futures::stream::iter(jobs).buffer_unordered(MAX_IN_FLIGHT).try_collect::<Vec<()>>().await.map(|_| ())
    }

    /// Writes `rows` (any partitions) with `statement`: single-partition unlogged batches, bounded concurrency.
    async fn write_rows<V: SerializeRow + Send + Sync>(
        &self,
        statement: &PreparedStatement,
        rows: Vec<(String, usize, V)>,
        table: &'static str,
    ) -> Result<()> {
        let groups = chunks(rows, |r| r.0.clone(), |r| r.1);
        Self::all(groups.into_iter().map(|group| async move {
            let values: Vec<V> = group.into_iter().map(|(_, _, v)| v).collect();
            if values.len() == 1 {
                self.run(statement, &values[0], table).await?;
                return Ok(());
            }
            let mut batch = Batch::new(BatchType::Unlogged);
            for _ in 0..values.len() {
                batch.append_statement(statement.clone());
            }
            batch.set_is_idempotent(true);
            retrying(table, || self.session.batch(&batch, &values)).await.map(|_| ())
        }))
        .await
    }

    /// Registers the (view, granularity, Kafka partition) triples and segments of `rows` before any of
    /// their cells is written (a read, a seal's shadow and a cleanup visit only registered segments).
    async fn register_segments(&self, rows: &[SpeedRow]) -> Result<()> {
        let (partitions, segments) = {
            let registered = self.registered.lock().expect("registry lock");
            let partitions: BTreeSet<(String, Granularity, i32)> = rows
                .iter()
                .map(|r| (r.key.view.clone(), r.key.granularity, r.partition))
                .filter(|v| !registered.partitions.contains(v))
                .collect();
            let segments: BTreeSet<(String, Granularity, i32, i64)> = rows
                .iter()
                .map(|r| (r.key.view.clone(), r.key.granularity, r.partition, r.segment_start))
                .filter(|s| !registered.segments.contains(s))
                .collect();
            (partitions, segments)
        };
        let s = &self.statements;
        Self::all(partitions.iter().cloned().map(|(view, g, p)| async move {
            self.run(&s.partition_register, (view.as_str(), g.as_str(), p, REGISTERED), "speed_partitions")
                .await
                .map(|_| ())
        }))
        .await?;
        Self::all(segments.iter().cloned().map(|(view, g, p, start)| async move {
            self.run(&s.segment_register, (view.as_str(), g.as_str(), p, start, REGISTERED), "speed_segments")
                .await
                .map(|_| ())
        }))
        .await?;
        let mut registered = self.registered.lock().expect("registry lock");
        registered.partitions.extend(partitions);
        registered.segments.extend(segments);
        registered.trim();
        Ok(())
    }

    /// Every registered (view, granularity, Kafka partition).
    async fn speed_partitions(&self) -> Result<Vec<(String, Granularity, i32)>> {
        self.read(&self.statements.partitions, (), "speed_partitions", None, |(view, g, p): (String, String, i32)| {
            let g = g.parse::<Granularity>().map_err(|e| corrupt("speed_partitions")(e.to_string()))?;
            Ok((view, g, p))
        })
        .await
    }

    /// (holder, token, value) of a control row, read at LOCAL_SERIAL; `None` when it does not exist.
    async fn control_row(&self, name: &str) -> Result<Option<(Option<String>, Option<i64>, Option<i64>)>> {
        let rows = self.read(&self.statements.control_row, (SCOPE, name), "control", None, Ok).await?;
        Ok(rows.into_iter().next())
    }

    async fn current_generation(&self) -> Result<i64> {
        Ok(self.control_row(CURRENT).await?.and_then(|(_, _, value)| value).unwrap_or(0))
    }

    /// Whether `fence` still holds its lease (a serial read).
    async fn holds(&self, fence: &Lease) -> Result<bool> {
        Ok(matches!(
            self.control_row(&lease_name(&fence.name)).await?,
            Some((Some(holder), Some(token), _)) if holder == fence.holder && token == fence.token
        ))
    }

    async fn check_fence(&self, fence: &Lease) -> Result<()> {
        if self.holds(fence).await? {
            Ok(())
        } else {
            Err(fenced(fence))
        }
    }

    /// The lease-condition statement of a fenced conditional batch, and its values.
    fn fence_values(fence: &Lease) -> (i64, &'static str, String, String, i64) {
        (fence.token, SCOPE, lease_name(&fence.name), fence.holder.clone(), fence.token)
    }
}

/// Runs `request` up to [`ATTEMPTS`] times, with backoff 100, 200, 400 ms, while it fails with a
/// [`retryable`] error; only for idempotent requests (reads, offset-stamped writes, registrations).
async fn retrying<T, F, Fut>(table: &'static str, mut request: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, ExecutionError>>,
{
    let mut delay = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match request().await {
            Ok(value) => return Ok(value),
            Err(e) if attempt < ATTEMPTS && retryable(&e) => {
                tracing::debug!(table, attempt, error = %e, "retrying a store request");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            Err(e) => return Err(cql(table)(e)),
        }
    }
}

fn fenced(fence: &Lease) -> Error {
    Error::Fenced { name: fence.name.clone(), holder: fence.holder.clone(), token: fence.token }
}

/// `[applied]` of a lightweight transaction's result (its first column).
fn applied(result: QueryResult, table: &'static str) -> Result<bool> {
    let rows = result.into_rows_result().map_err(decode_err(table))?;
    let row: Row = rows.first_row().map_err(decode_err(table))?;
    match row.columns.first() {
        Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
        other => Err(corrupt(table)(format!("expected [applied] first, got {other:?}"))),
    }
}

async fn connect(url: &ScyllaUrl) -> Result<Session> {
    let profile = ExecutionProfile::builder()
        .consistency(Consistency::LocalQuorum)
        .serial_consistency(Some(SerialConsistency::LocalSerial))
        .request_timeout(Some(Duration::from_secs(30)))
        .build();
    SessionBuilder::new()
        .known_nodes(&url.nodes)
        .default_execution_profile_handle(profile.into_handle())
        .build()
        .await
        .map_err(|e| Error::Cql { table: "connect", cause: Box::new(e), retryable: true })
}

/// Whether the keyspace has every table of the schema.
async fn schema_complete(session: &Session, keyspace: &str) -> Result<bool> {
    let wanted: BTreeSet<String> = schema_statements().iter().filter_map(|s| table_of(s)).collect();
    let result = session
        .query_unpaged("SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?", (keyspace,))
        .await
        .map_err(cql("system_schema.tables"))?;
    let rows = result.into_rows_result().map_err(decode_err("system_schema.tables"))?;
    let mut present = BTreeSet::new();
    for row in rows.rows::<(String,)>().map_err(decode_err("system_schema.tables"))? {
        present.insert(row.map_err(decode_err("system_schema.tables"))?.0);
    }
    Ok(wanted.is_subset(&present))
}

/// A table's primary key: its name, partition key columns and clustering columns, in order.
type TableKey = (String, Vec<String>, Vec<String>);

/// The primary key a `CREATE TABLE IF NOT EXISTS name (... PRIMARY KEY ((p1, p2), c1, c2))` statement
/// declares; `None` for other statements.
fn primary_key_of(statement: &str) -> Option<TableKey> {
    let table = table_of(statement)?;
    let key = statement.split("PRIMARY KEY").nth(1)?.trim_start().strip_prefix('(')?;
    let mut depth = 0;
    let close = key.char_indices().find_map(|(i, c)| {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return Some(i),
            ')' => depth -= 1,
            _ => {}
        }
        None
    })?;
    let key = &key[..close];
    let names = |text: &str| -> Vec<String> {
        text.split(',').map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect()
    };
    let (partition, clustering) = match key.trim_start().strip_prefix('(') {
        Some(rest) => {
            let (partition, clustering) = rest.split_once(')')?;
            (names(partition), names(clustering))
        }
        None => {
            let mut all = names(key);
            let first = all.remove(0);
            (vec![first], all)
        }
    };
    Some((table, partition, clustering))
}

/// Where the live tables' primary keys differ from [`SCHEMA`]'s: one line per table. `live` holds
/// `system_schema.columns` rows as (table, column, kind, position); tables absent there are not compared
/// (`store init` creates them).
fn key_mismatches(expected: &[TableKey], live: &[(String, String, String, i32)]) -> Vec<String> {
    let show = |p: &[String], c: &[String]| format!("(({}), {})", p.join(", "), c.join(", "));
    let mut out = Vec::new();
    for (table, partition, clustering) in expected {
        let mut columns: Vec<_> = live.iter().filter(|(t, ..)| t == table).collect();
        if columns.is_empty() {
            continue;
        }
        columns.sort_by_key(|(_, _, _, position)| *position);
        let of_kind = |kind: &str| -> Vec<String> {
            columns.iter().filter(|(_, _, k, _)| k == kind).map(|(_, c, _, _)| c.clone()).collect()
        };
        let (live_partition, live_clustering) = (of_kind("partition_key"), of_kind("clustering"));
        if &live_partition != partition || &live_clustering != clustering {
            out.push(format!(
                "table {table} has primary key {}, this build expects {}",
                show(&live_partition, &live_clustering),
                show(partition, clustering)
            ));
        }
    }
    out
}

/// Refuses a keyspace whose tables have other primary keys than [`SCHEMA`] (made by another build:
/// `CREATE TABLE IF NOT EXISTS` leaves such a table as it is, and the statements of this build would
/// still run on some of them with other meanings).
///
/// Errors: [`Error::StoreRefused`] naming every such table and what to do; [`Error::Cql`] when
/// `system_schema.columns` cannot be read.
async fn check_keys(session: &Session, keyspace: &str) -> Result<()> {
    let expected: Vec<TableKey> = schema_statements().iter().filter_map(|s| primary_key_of(s)).collect();
    let result = session
        .query_unpaged(
            "SELECT table_name, column_name, kind, position FROM system_schema.columns WHERE keyspace_name = ?",
            (keyspace,),
        )
        .await
        .map_err(cql("system_schema.columns"))?;
    let rows = result.into_rows_result().map_err(decode_err("system_schema.columns"))?;
    let mut live = Vec::new();
    for row in rows.rows::<(String, String, String, i32)>().map_err(decode_err("system_schema.columns"))? {
        live.push(row.map_err(decode_err("system_schema.columns"))?);
    }
    let mismatches = key_mismatches(&expected, &live);
    if mismatches.is_empty() {
        return Ok(());
    }
    Err(Error::StoreRefused {
        table: "schema",
        message: format!(
            "keyspace {keyspace} was made by another build of lambda: {}. No release used another layout; \
             drop the keyspace, run `lambda store init`, and reset the speed layer's consumer group to the \
             earliest offsets so it rebuilds the speed view",
            mismatches.join("; ")
        ),
    })
}

/// The table a `CREATE TABLE IF NOT EXISTS name (...)` statement creates.
fn table_of(statement: &str) -> Option<String> {
    let rest = statement.strip_prefix("CREATE TABLE IF NOT EXISTS ")?;
    Some(rest.split(|c: char| c.is_whitespace() || c == '(').next()?.to_owned())
}

async fn apply_schema(session: &Session, url: &ScyllaUrl) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let exists = session
        .query_unpaged("SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?", (&url.keyspace,))
        .await
        .map_err(cql("system_schema.keyspaces"))?
        .into_rows_result()
        .map_err(decode_err("system_schema.keyspaces"))?
        .rows_num()
        > 0;
    if exists {
        lines.push(format!("keyspace {} exists; left as it is", url.keyspace));
    } else {
        let nodes = session.get_cluster_state().get_nodes_info().len();
        let rf = url.replication_factor.unwrap_or_else(|| (nodes as u32).clamp(1, 3));
        session.query_unpaged(create_keyspace_statement(&url.keyspace, rf), ()).await.map_err(cql("keyspace"))?;
        lines.push(format!(
            "created keyspace {} with NetworkTopologyStrategy, replication_factor {rf} ({nodes} nodes seen): \
             options valid on both ScyllaDB and Cassandra 4.0+. On a ScyllaDB that makes new keyspaces \
             tablet-based and predates lightweight transactions on tablets, create the keyspace yourself \
             first with AND tablets = {{'enabled': false}}; store init leaves an existing keyspace as it is",
            url.keyspace
        ));
    }
    session
        .use_keyspace(&url.keyspace, false)
        .await
        .map_err(|e| cql("keyspace")(ExecutionError::UseKeyspaceError(e)))?;
    let statements = schema_statements();
    for statement in &statements {
        session.query_unpaged(statement.as_str(), ()).await.map_err(cql("schema"))?;
    }
    session.await_schema_agreement().await.map_err(|e| cql("schema")(ExecutionError::SchemaAgreementError(e)))?;
    lines.push(format!(
        "applied deploy/scylla/schema.cql: {} tables (CREATE TABLE IF NOT EXISTS; idempotent)",
        statements.len()
    ));
    Ok(lines)
}

#[async_trait]
impl ViewStore for ScyllaStore {
    async fn upsert_speed_rows(&self, topic: &str, rows: &[SpeedRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        for row in rows {
            open_timestamp(row.upto_offset)?;
        }
        // register, then read the seals: a segment sealed after the read is shadowed by its finalize (the
        // registration is visible to it), one sealed before has its rows past the seal dropped here
        self.register_segments(rows).await?;
        let segments: BTreeSet<(i32, i64)> = rows.iter().map(|r| (r.partition, r.segment_start)).collect();
        let mut ends = BTreeMap::new();
        for (p, start) in segments {
            let cached =
                self.registered.lock().expect("registry lock").seals.get(&(topic.to_owned(), p, start)).copied();
            let end = match cached {
                Some(end) => Some(end),
                None => {
                    let ends: Vec<(i64,)> =
                        self.read(&self.statements.seal_check, (topic, p, start), "seals", None, Ok).await?;
                    ends.first().map(|(end,)| *end)
                }
            };
            if let Some(end) = end {
                self.registered.lock().expect("registry lock").seals.insert((topic.to_owned(), p, start), end);
                ends.insert((p, start), end);
            }
        }
        let mut values: Vec<(String, usize, SpeedValues<'_>)> = rows
            .iter()
            .filter(|r| ends.get(&(r.partition, r.segment_start)).is_none_or(|end| r.upto_offset <= *end))
            .map(|r| {
                let v = speed_values(r, r.upto_offset);
                let key = format!("{}\u{0}{}\u{0}{}\u{0}{}", v.0, v.1, v.2, v.3);
                (key, v.6.len() + v.8.len() + 64, v)
            })
            .collect();
        values.sort_by(|a, b| a.0.cmp(&b.0));
        self.write_rows(&self.statements.speed_insert, values, "speed_rows").await
    }

    async fn finalize_segment(&self, _topic: &str, seal: Seal, rows: &[SpeedRow]) -> Result<()> {
        let timestamp = final_timestamp(seal.end)?;
        if let Some(r) = rows.iter().find(|r| r.partition != seal.partition || r.segment_start != seal.start) {
            return Err(Error::StoreRefused {
                table: "speed_rows",
                message: format!(
                    "finalize of segment {}/{} got a row of segment {}/{}",
                    seal.partition, seal.start, r.partition, r.segment_start
                ),
            });
        }
        self.register_segments(rows).await?;
        // the final cells first, then the shadow below them: readers never see the segment empty
        let mut values: Vec<(String, usize, SpeedValues<'_>)> = rows
            .iter()
            .map(|r| {
                let v = speed_values(r, timestamp);
                (format!("{}\u{0}{}", v.0, v.1), v.6.len() + v.8.len() + 64, v)
            })
            .collect();
        values.sort_by(|a, b| a.0.cmp(&b.0));
        self.write_rows(&self.statements.speed_insert, values, "speed_rows").await?;
        // every view registered on this Kafka partition: its registration preceded any open write of it
        let views = self.speed_partitions().await?.into_iter().filter(|(_, _, p)| *p == seal.partition);
        let s = &self.statements;
        Self::all(views.map(|(view, g, _)| async move {
            self.run(
                &s.speed_delete,
                (SEAL_SHADOW, view.as_str(), g.as_str(), seal.partition, seal.start),
                "speed_rows",
            )
            .await
            .map(|_| ())
        }))
        .await
    }

    /// Reads the segment's cells of every view registered on its Kafka partition and deletes those past
    /// the seal end, each at its open write's timestamp (`upto_offset`; a tombstone wins a timestamp tie,
    /// and a later write past the seal is dropped by the write path, which sees the seal). No shadow: the
    /// cells up to the seal end are the recorder's and stay. A cell past the end that the read does not
    /// return (on fewer replicas than a quorum) is not deleted: see README, "Known leaks and limits".
    async fn trim_segment(&self, _topic: &str, seal: Seal) -> Result<u64> {
        let deleted = std::sync::atomic::AtomicU64::new(0);
        let deleted = &deleted;
        let views = self.speed_partitions().await?.into_iter().filter(|(_, _, p)| *p == seal.partition);
        let s = &self.statements;
        Self::all(views.map(|(view, g, _)| async move {
            let key = (view.as_str(), g.as_str(), seal.partition, seal.start);
            let past: Vec<(i64, String, i64)> =
                self.read(&s.speed_upto, key, "speed_rows", None, |row: (i64, String, i64)| Ok(row)).await?;
            for (bucket_start, dims, upto) in past.into_iter().filter(|(_, _, upto)| *upto > seal.end) {
                let cell = (key.0, key.1, key.2, key.3, bucket_start, dims_hash(&dims));
                let values = (open_timestamp(upto)?, cell.0, cell.1, cell.2, cell.3, cell.4, cell.5);
                self.run(&s.speed_cell_delete, values, "speed_rows").await?;
                deleted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(())
        }))
        .await?;
        Ok(deleted.load(std::sync::atomic::Ordering::Relaxed))
    }

    async fn speed_rows(&self, query: &RowQuery) -> Result<Vec<SpeedRow>> {
        if query.limit == Some(0) {
            return Ok(Vec::new());
        }
        let g = query.granularity.as_str();
        let s = &self.statements;
        let partitions: Vec<(i32,)> =
            self.read(&s.partitions_of_view, (query.view.as_str(), g), "speed_partitions", None, Ok).await?;
        // the registry partitions concurrently, each from the caller's cutoff on (RowQuery::speed_from)
        let per_partition = futures::stream::iter(partitions.into_iter().map(|(p,)| async move {
            let from = query.speed_from.get(&p).copied().unwrap_or(i64::MIN);
            let starts: Vec<(i64,)> =
                self.read(&s.segments, (query.view.as_str(), g, p, from), "speed_segments", None, Ok).await?;
            Ok::<_, Error>(starts.into_iter().map(move |(start,)| (p, start)))
        }))
        .buffered(MAX_IN_FLIGHT);
        let mut per_partition = std::pin::pin!(per_partition);
        let mut segments: Vec<(i32, i64)> = Vec::new();
        while let Some(starts) = per_partition.next().await {
            segments.extend(starts?);
        }
        let (from, to) = (query.from.unwrap_or(i64::MIN), query.to.unwrap_or(i64::MAX));
        let per_segment = futures::stream::iter(segments.into_iter().map(|(p, start)| async move {
            self.read(
                &self.statements.speed_select,
                (query.view.as_str(), g, p, start, from, to),
                "speed_rows",
                query.limit,
                |(bucket_start, dims, upto_offset, metrics): (i64, String, i64, String)| {
                    Ok(SpeedRow {
                        key: ViewKey {
                            view: query.view.clone(),
                            granularity: query.granularity,
                            bucket_start,
                            dims: decode_dims(&dims).map_err(corrupt("speed_rows"))?,
                        },
                        partition: p,
                        segment_start: start,
                        upto_offset,
                        metrics: decode_metrics(&metrics).map_err(corrupt("speed_rows"))?,
                    })
                },
            )
            .await
        }))
        .buffered(MAX_IN_FLIGHT);
        let mut per_segment = std::pin::pin!(per_segment);
        let mut out = Vec::new();
        while let Some(rows) = per_segment.next().await {
            out.extend(rows?);
            if let Some(limit) = query.limit {
                if out.len() >= limit {
                    out.truncate(limit);
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn record_seal(&self, topic: &str, seal: Seal) -> Result<Option<Seal>> {
        check_offset("seal end", seal.end)?;
        if let Some(existing) = self.seal_at(topic, seal.partition, seal.start).await? {
            return Ok(Some(existing));
        }
        let cutoff = self.current_manifest().await?.and_then(|m| m.cutoffs.get(&seal.partition).copied());
        if cutoff.is_some_and(|c| seal.start < c) {
            return Ok(None);
        }
        let key = (topic.to_owned(), seal.partition);
        if !self.registered.lock().expect("registry lock").seal_partitions.contains(&key) {
            self.run(&self.statements.seal_partition_register, (topic, seal.partition), "seal_partitions").await?;
            self.registered.lock().expect("registry lock").seal_partitions.insert(key);
        }
        let values = (topic, seal.partition, seal.start, seal.end);
        let applied = self.lwt(&self.statements.seal_insert, values, "seals").await?;
        // the cutoff check above is not atomic with the insert: a publish past `start` meanwhile (and a
        // cleanup that pruned the seal chain there) makes this seal one off the chain; read the cutoff again
        // (a seal at `start` can be pruned only after a publish past it, so this read sees that publish)
        let cutoff = self.current_manifest().await?.and_then(|m| m.cutoffs.get(&seal.partition).copied());
        if cutoff.is_some_and(|c| seal.start < c) {
            return Ok(None);
        }
        if applied {
            return Ok(Some(seal));
        }
        // another writer's seal (or this one, applied by a request that timed out): read it at LOCAL_SERIAL
        self.seal_at(topic, seal.partition, seal.start)
            .await?
            .map(Some)
            .ok_or_else(|| corrupt("seals")(format!("seal {seal:?} was refused but none is recorded")))
    }

    async fn seal_at(&self, topic: &str, partition: i32, start: i64) -> Result<Option<Seal>> {
        let ends: Vec<(i64,)> =
            self.read(&self.statements.seal_select, (topic, partition, start), "seals", None, Ok).await?;
        Ok(ends.first().map(|(end,)| Seal { partition, start, end: *end }))
    }

    async fn seals(&self, topic: &str) -> Result<Vec<Seal>> {
        self.seals_from(topic, &BTreeMap::new()).await
    }

    async fn seals_from(&self, topic: &str, from: &BTreeMap<i32, i64>) -> Result<Vec<Seal>> {
        let partitions: BTreeSet<i32> = self
            .read(&self.statements.seal_partitions, (topic,), "seal_partitions", None, |(p,): (i32,)| Ok(p))
            .await?
            .into_iter()
            .collect();
        let mut out = Vec::new();
        for partition in partitions {
            let start = from.get(&partition).copied().unwrap_or(i64::MIN);
            let seals = self
                .read(
                    &self.statements.seals_from,
                    (topic, partition, start),
                    "seals",
                    None,
                    |(start, end): (i64, i64)| Ok(Seal { partition, start, end }),
                )
                .await?;
            out.extend(seals);
        }
        Ok(out)
    }

    async fn delete_absorbed(&self, fence: &Lease, topic: &str, cutoffs: &BTreeMap<i32, i64>) -> Result<(u64, u64)> {
        self.check_fence(fence).await?;
        let s = &self.statements;
        let rows = std::sync::atomic::AtomicU64::new(0);
        let absorbed = self
            .speed_partitions()
            .await?
            .into_iter()
            .filter_map(|(view, g, p)| cutoffs.get(&p).map(|&cutoff| (view, g, p, cutoff)));
        // per (view, granularity, Kafka partition), concurrently: each segment below the cutoff is one
        // partition delete of its rows, then the registry loses them all in one range delete
        Self::all(absorbed.map(|(view, g, p, cutoff)| {
            let rows = &rows;
            async move {
                let registry = (view.as_str(), g.as_str(), p, cutoff);
                let starts: Vec<(i64,)> = self.read(&s.segments_below, registry, "speed_segments", None, Ok).await?;
                for (start,) in starts {
                    let key = (view.as_str(), g.as_str(), p, start);
                    let counted: Vec<(i64,)> = self.read(&s.speed_count, key, "speed_rows", None, Ok).await?;
                    rows.fetch_add(counted.first().map_or(0, |(n,)| *n as u64), std::sync::atomic::Ordering::Relaxed);
                    self.run(&s.speed_delete, (ABSORBED, key.0, key.1, p, start), "speed_rows").await?;
                }
                self.run(&s.segments_delete_below, (ABSORBED, registry.0, registry.1, p, cutoff), "speed_segments")
                    .await?;
                self.registered
                    .lock()
                    .expect("registry lock")
                    .segments
                    .retain(|(v, sg, sp, start)| !(*v == view && *sg == g && *sp == p && *start < cutoff));
                Ok(())
            }
        }))
        .await?;
        let rows = rows.into_inner();
        let mut seals = 0u64;
        for (&p, &cutoff) in cutoffs {
            let counted: Vec<(i64,)> = self.read(&s.seals_count_below, (topic, p, cutoff), "seals", None, Ok).await?;
            seals += counted.first().map_or(0, |(n,)| *n as u64);
            self.run(&s.seals_delete_below, (topic, p, cutoff), "seals").await?;
        }
        Ok((rows, seals))
    }

    async fn allocate_generation(&self, fence: &Lease) -> Result<i64> {
        let batch = self.conditional_batch(&[&self.statements.lease_check, &self.statements.counter_bump]);
        for _ in 0..20 {
            let last = self.control_row(GENERATION_COUNTER).await?.and_then(|(_, _, v)| v).unwrap_or(0);
            let next = last.max(self.current_generation().await?) + 1;
            let values = (Self::fence_values(fence), (next, SCOPE, GENERATION_COUNTER, last));
            if self.conditional(&batch, values, "control").await? {
                return Ok(next);
            }
            self.check_fence(fence).await?; // else the counter moved under us: read it again
        }
        Err(corrupt("control")("the generation counter did not settle in 20 conditional updates".into()))
    }

    async fn delete_generation(&self, fence: &Lease, generation: i64) -> Result<()> {
        self.check_fence(fence).await?;
        if self.current_generation().await? == generation {
            return Err(Error::StoreRefused {
                table: "batch_rows",
                message: format!("generation {generation} is the published one; it is never deleted"),
            });
        }
        let s = &self.statements;
        let days: Vec<(String, String, i64)> = self.read(&s.days, (generation,), "batch_days", None, Ok).await?;
        Self::all(days.into_iter().map(|(view, g, day)| async move {
            self.run(&s.batch_delete_day, (generation, view.as_str(), g.as_str(), day), "batch_rows").await.map(|_| ())
        }))
        .await?;
        self.run(&s.days_delete, (generation,), "batch_days").await?;
        self.run(&s.generation_delete, (generation,), "batch_generations").await?;
        Ok(())
    }

    async fn write_batch_rows(&self, fence: &Lease, generation: i64, rows: &[BatchRow]) -> Result<()> {
        self.check_fence(fence).await?;
        if generation <= self.current_generation().await? {
            return Err(Error::StoreRefused {
                table: "batch_rows",
                message: format!("generation {generation} is published; its rows are never rewritten"),
            });
        }
        let s = &self.statements;
        self.run(&s.generation_register, (generation,), "batch_generations").await?;
        let days: BTreeSet<(String, Granularity, i64)> =
            rows.iter().map(|r| (r.key.view.clone(), r.key.granularity, day_of(r.key.bucket_start))).collect();
        Self::all(days.iter().cloned().map(|(view, g, day)| async move {
            self.run(&s.day_register, (generation, view.as_str(), g.as_str(), day), "batch_days").await.map(|_| ())
        }))
        .await?;
        let mut values: Vec<(String, usize, BatchValues<'_>)> = rows
            .iter()
            .map(|r| {
                let dims = encode_dims(&r.key.dims);
                let day = day_of(r.key.bucket_start);
                let key = format!("{}\u{0}{}\u{0}{day}", r.key.view, r.key.granularity.as_str());
                let size = dims.len() + 64;
                let v = (
                    generation,
                    r.key.view.as_str(),
                    r.key.granularity.as_str(),
                    day,
                    r.key.bucket_start,
                    dims_hash(&dims),
                    dims,
                    encode_metrics(&r.metrics),
                );
                (key, size, v)
            })
            .collect();
        values.sort_by(|a, b| a.0.cmp(&b.0));
        self.write_rows(&s.batch_insert, values, "batch_rows").await?;
        // registered again after the rows: a writer that lost its lease mid-write may see its generation
        // deleted by the new holder's cleanup between the two; the second registration makes the next
        // cleanup find the rows it wrote after that (else they would stay, unreachable, for good)
        self.run(&s.generation_register, (generation,), "batch_generations").await?;
        Self::all(days.into_iter().map(|(view, g, day)| async move {
            self.run(&s.day_register, (generation, view.as_str(), g.as_str(), day), "batch_days").await.map(|_| ())
        }))
        .await
    }

    async fn batch_rows(&self, generation: i64, query: &RowQuery) -> Result<Vec<BatchRow>> {
        if query.limit == Some(0) {
            return Ok(Vec::new());
        }
        let s = &self.statements;
        let g = query.granularity.as_str();
        let (from, to) = (query.from.unwrap_or(i64::MIN), query.to.unwrap_or(i64::MAX));
        let days: Vec<(String, String, i64)> = self.read(&s.days, (generation,), "batch_days", None, Ok).await?;
        let mut out = Vec::new();
        for (_, _, day) in days.into_iter().filter(|(v, dg, day)| {
            *v == query.view && dg == g && *day < to && day.saturating_add(SECONDS_PER_DAY) > from
        }) {
            let left = query.limit.map(|l| l - out.len());
            let rows = self
                .read(
                    &s.batch_select,
                    (generation, query.view.as_str(), g, day, from, to),
                    "batch_rows",
                    left,
                    |(bucket_start, dims, metrics): (i64, String, String)| {
                        Ok(BatchRow {
                            key: ViewKey {
                                view: query.view.clone(),
                                granularity: query.granularity,
                                bucket_start,
                                dims: decode_dims(&dims).map_err(corrupt("batch_rows"))?,
                            },
                            metrics: decode_metrics(&metrics).map_err(corrupt("batch_rows"))?,
                        })
                    },
                )
                .await?;
            out.extend(rows);
            if query.limit.is_some_and(|l| out.len() >= l) {
                break;
            }
        }
        Ok(out)
    }

    async fn generations(&self) -> Result<Vec<i64>> {
        let mut out: Vec<i64> =
            self.read(&self.statements.generations, (), "batch_generations", None, |(g,): (i64,)| Ok(g)).await?;
        out.sort_unstable();
        Ok(out)
    }

    async fn published_generations(&self) -> Result<Vec<i64>> {
        let names: Vec<(String,)> = self.read(&self.statements.manifests, (SCOPE,), "control", None, Ok).await?;
        let mut out = names
            .iter()
            .map(|(name,)| {
                name.strip_prefix("manifest/")
                    .and_then(|g| g.parse::<i64>().ok())
                    .ok_or_else(|| corrupt("control")(format!("manifest row `{name}`")))
            })
            .collect::<Result<Vec<i64>>>()?;
        out.sort_unstable();
        Ok(out)
    }

    async fn publish_manifest(&self, fence: &Lease, manifest: &Manifest) -> Result<()> {
        let s = &self.statements;
        let body = serde_json::to_string(manifest).expect("manifest serializes");
        let name = manifest_name(manifest.generation);
        let batch = self.conditional_batch(&[&s.lease_check, &s.current_switch, &s.manifest_insert]);
        let values = (
            Self::fence_values(fence),
            (manifest.generation, SCOPE, CURRENT, manifest.generation),
            (SCOPE, name.as_str(), body.as_str()),
        );
        if self.conditional(&batch, values, "control").await? {
            return Ok(());
        }
        self.check_fence(fence).await?;
        let current = self.current_generation().await?;
        if current == manifest.generation && self.current_manifest().await?.as_ref() == Some(manifest) {
            return Ok(()); // applied by an earlier attempt whose answer was lost
        }
        Err(Error::StoreRefused {
            table: "manifests",
            message: format!("generation {} is not above the published generation {current}", manifest.generation),
        })
    }

    async fn current_manifest(&self) -> Result<Option<Manifest>> {
        let bodies: Vec<(Option<String>,)> =
            self.read(&self.statements.latest_manifest, (SCOPE,), "control", Some(1), Ok).await?;
        match bodies.into_iter().next() {
            Some((Some(body),)) => serde_json::from_str(&body).map(Some).map_err(decode_err("manifests")),
            Some((None,)) => Err(corrupt("manifests")("a manifest row without a body".into())),
            None => Ok(None),
        }
    }

    async fn delete_manifests_before(&self, fence: &Lease, generation: i64) -> Result<()> {
        let current = self.current_generation().await?;
        let old: Vec<i64> =
            self.published_generations().await?.into_iter().filter(|g| *g < generation && *g < current).collect();
        if old.is_empty() {
            return self.check_fence(fence).await;
        }
        // one conditional batch per 50 manifests, each fenced
        for chunk in old.chunks(50) {
            let mut statements = vec![&self.statements.lease_check];
            statements.extend(std::iter::repeat_n(&self.statements.manifest_delete, chunk.len()));
            let batch = self.conditional_batch(&statements);
            let names: Vec<String> = chunk.iter().map(|g| manifest_name(*g)).collect();
            let values: Vec<ControlValues<'_>> = std::iter::once(ControlValues::Fence(Self::fence_values(fence)))
                .chain(names.iter().map(|n| ControlValues::Name((SCOPE, n.as_str()))))
                .collect();
            if !self.conditional(&batch, values, "control").await? {
                return Err(fenced(fence));
            }
        }
        Ok(())
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<Lease>> {
        let row_name = lease_name(name);
        let s = &self.statements;
        let row = match self.control_row(&row_name).await? {
            Some(row) => row,
            None => {
                self.lwt(&s.control_init, (SCOPE, row_name.as_str()), "control").await?;
                self.control_row(&row_name).await?.unwrap_or((None, None, Some(0)))
            }
        };
        let (current_holder, _, last) = row;
        if current_holder.is_some() {
            return Ok(None);
        }
        let last = last.unwrap_or(0);
        let token = last + 1;
        let batch = self.conditional_batch(&[&s.lease_token, &s.lease_take]);
        let values =
            ((token, SCOPE, row_name.as_str(), last), (ttl_seconds(ttl), holder, token, SCOPE, row_name.as_str()));
        Ok(self.conditional(&batch, values, "control").await?.then(|| Lease {
            name: name.to_owned(),
            holder: holder.to_owned(),
            token,
        }))
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let row_name = lease_name(&lease.name);
        let values = (
            ttl_seconds(ttl),
            lease.holder.as_str(),
            lease.token,
            SCOPE,
            row_name.as_str(),
            lease.holder.as_str(),
            lease.token,
        );
        self.lwt(&self.statements.lease_renew, values, "control").await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let row_name = lease_name(&lease.name);
        let values = (SCOPE, row_name.as_str(), lease.holder.as_str(), lease.token);
        self.lwt(&self.statements.lease_release, values, "control").await.map(|_| ())
    }

    async fn ping(&self) -> Result<()> {
        self.session.query_unpaged("SELECT release_version FROM system.local", ()).await.map_err(cql("ping"))?;
        Ok(())
    }
}

/// The values of one statement of a fenced manifest-delete batch.
enum ControlValues<'a> {
    Fence((i64, &'static str, String, String, i64)),
    Name((&'static str, &'a str)),
}

impl SerializeRow for ControlValues<'_> {
    fn serialize(
        &self,
        ctx: &scylla::serialize::row::RowSerializationContext<'_>,
        writer: &mut scylla::serialize::writers::RowWriter,
    ) -> std::result::Result<(), scylla::serialize::SerializationError> {
        match self {
            ControlValues::Fence(v) => v.serialize(ctx, writer),
            ControlValues::Name(v) => v.serialize(ctx, writer),
        }
    }

    fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_of_the_schema_has_its_primary_key_parsed() {
        let keys: Vec<TableKey> = schema_statements().iter().filter_map(|s| primary_key_of(s)).collect();
        let tables: Vec<String> = schema_statements().iter().filter_map(|s| table_of(s)).collect();
        assert_eq!(keys.iter().map(|k| k.0.clone()).collect::<Vec<_>>(), tables);
        let segments = keys.iter().find(|k| k.0 == "speed_segments").unwrap();
        assert_eq!(segments.1, ["view_name", "granularity", "kafka_partition"]);
        assert_eq!(segments.2, ["segment_start"]);
        let simple = primary_key_of("CREATE TABLE IF NOT EXISTS t (a int, b int, PRIMARY KEY (a, b))").unwrap();
        assert_eq!(simple, ("t".to_owned(), vec!["a".to_owned()], vec!["b".to_owned()]));
    }

    #[test]
    fn a_table_made_with_another_primary_key_is_named() {
        let expected: Vec<TableKey> = schema_statements().iter().filter_map(|s| primary_key_of(s)).collect();
        let row = |t: &str, c: &str, k: &str, p: i32| (t.to_owned(), c.to_owned(), k.to_owned(), p);
        // the registry as the build before 1c492a4 made it, and a matching seals table
        let live = vec![
            row("speed_segments", "view_name", "partition_key", 0),
            row("speed_segments", "granularity", "partition_key", 1),
            row("speed_segments", "segment_start", "clustering", 1),
            row("speed_segments", "kafka_partition", "clustering", 0),
            row("seals", "topic", "partition_key", 0),
            row("seals", "kafka_partition", "partition_key", 1),
            row("seals", "start_offset", "clustering", 0),
            row("seals", "end_offset", "regular", -1),
        ];
        assert_eq!(
            key_mismatches(&expected, &live),
            ["table speed_segments has primary key ((view_name, granularity), kafka_partition, segment_start), \
              this build expects ((view_name, granularity, kafka_partition), segment_start)"]
        );
        assert!(key_mismatches(&expected, &live[4..]).is_empty());
    }

    #[test]
    fn timestamps_order_open_writes_below_the_shadow_below_final_writes_below_absorption() {
        for offset in [0, 1, 1_000, 1 << 40, MAX_OFFSET - 1, MAX_OFFSET] {
            let open = open_timestamp(offset).unwrap();
            assert_eq!(open, offset, "open writes are stamped with their upto_offset");
            assert!(open < SEAL_SHADOW, "{offset}: the seal's shadow hides every open write");
            let fin = final_timestamp(offset).unwrap();
            assert!(SEAL_SHADOW < fin, "{offset}: final rows survive the shadow");
            assert!(fin < ABSORBED, "{offset}: the absorbed delete hides final rows");
            for smaller in [0, offset / 2, (offset - 1).max(0)] {
                assert!(open_timestamp(smaller).unwrap() <= open, "a larger offset never loses");
                assert!(final_timestamp(smaller).unwrap() <= fin);
            }
        }
        for bad in [-1, MAX_OFFSET + 1, i64::MAX, i64::MIN] {
            assert!(matches!(open_timestamp(bad), Err(Error::StoreRefused { .. })), "{bad}");
            assert!(matches!(final_timestamp(bad), Err(Error::StoreRefused { .. })), "{bad}");
        }
    }

    /// Every statement that writes or deletes cells of a speed segment carries USING TIMESTAMP (a server-
    /// clock write would hide every later offset-stamped one); no lightweight transaction does (CQL rejects
    /// it); the registrations a cleanup deletes at ABSORBED are stamped too.
    #[test]
    fn speed_writes_carry_offset_timestamps_and_lwts_none() {
        let all = all_statements();
        for (name, text) in &all {
            let upper = text.to_ascii_uppercase();
            let writes = upper.starts_with("INSERT") || upper.starts_with("UPDATE") || upper.starts_with("DELETE");
            let speed = upper.contains(" SPEED_ROWS ")
                || upper.contains(" SPEED_SEGMENTS ")
                || upper.contains(" SPEED_PARTITIONS ");
            if writes && speed {
                assert!(upper.contains("USING TIMESTAMP ?"), "{name}: {text}");
            }
            if is_lwt(text) {
                assert!(!upper.contains("USING TIMESTAMP"), "{name}: {text}");
                assert!(
                    upper.contains(" CONTROL ") || upper.contains(" SEALS "),
                    "{name}: LWTs only on seals and control"
                );
            }
            assert!(!upper.contains("COUNTER "), "{name}: no counters");
        }
    }

    #[test]
    fn statements_name_only_tables_of_the_schema_and_bind_whole_partition_keys() {
        let tables: BTreeSet<String> = schema_statements().iter().filter_map(|s| table_of(s)).collect();
        assert_eq!(tables.len(), 9, "{tables:?}");
        for (name, text) in all_statements() {
            let words: Vec<&str> = text.split_whitespace().collect();
            let table = words
                .windows(2)
                .find(|w| matches!(w[0], "INTO" | "FROM" | "UPDATE"))
                .map(|w| w[1])
                .unwrap_or_else(|| panic!("{name}: no table"));
            assert!(tables.contains(table), "{name}: unknown table {table}");
            // token-aware routing and single-partition requests: every partition-key column is bound
            let schema = schema_statements().into_iter().find(|s| table_of(s).as_deref() == Some(table)).unwrap();
            let pk = schema.split("PRIMARY KEY ((").nth(1).unwrap().split(')').next().unwrap().to_owned();
            for column in pk.split(',').map(str::trim) {
                assert!(text.contains(column), "{name}: partition key column {column} of {table} unbound");
            }
        }
    }

    /// The segment registry is partitioned by Kafka partition and cleaned by one range delete below the
    /// cutoff, stamped like the rows it stands for: a cleanup leaves one range tombstone per partition,
    /// not one row tombstone per segment in a partition every read scans (review finding, issue 10).
    #[test]
    fn the_segment_registry_is_per_kafka_partition_and_cleaned_by_range() {
        let schema = schema_statements();
        let registry = schema.iter().find(|s| table_of(s).as_deref() == Some("speed_segments")).unwrap();
        assert!(
            registry.contains("PRIMARY KEY ((view_name, granularity, kafka_partition), segment_start)"),
            "{registry}"
        );
        assert!(cql::SEGMENTS_DELETE_BELOW.contains("USING TIMESTAMP ?"));
        assert!(cql::SEGMENTS_DELETE_BELOW.ends_with("segment_start < ?"));
        assert!(!cql::SEGMENTS.contains("ALLOW FILTERING") && !cql::PARTITIONS_OF_VIEW.contains("ALLOW FILTERING"));
    }

    fn all_statements() -> Vec<(&'static str, &'static str)> {
        vec![
            ("SPEED_INSERT", cql::SPEED_INSERT),
            ("SPEED_DELETE", cql::SPEED_DELETE),
            ("SPEED_SELECT", cql::SPEED_SELECT),
            ("SPEED_UPTO", cql::SPEED_UPTO),
            ("SPEED_CELL_DELETE", cql::SPEED_CELL_DELETE),
            ("SPEED_COUNT", cql::SPEED_COUNT),
            ("SEGMENT_REGISTER", cql::SEGMENT_REGISTER),
            ("SEGMENTS_DELETE_BELOW", cql::SEGMENTS_DELETE_BELOW),
            ("SEGMENTS_BELOW", cql::SEGMENTS_BELOW),
            ("SEGMENTS", cql::SEGMENTS),
            ("PARTITION_REGISTER", cql::PARTITION_REGISTER),
            ("PARTITIONS_OF_VIEW", cql::PARTITIONS_OF_VIEW),
            ("PARTITIONS", cql::PARTITIONS),
            ("BATCH_INSERT", cql::BATCH_INSERT),
            ("BATCH_SELECT", cql::BATCH_SELECT),
            ("BATCH_DELETE_DAY", cql::BATCH_DELETE_DAY),
            ("DAY_REGISTER", cql::DAY_REGISTER),
            ("DAYS", cql::DAYS),
            ("DAYS_DELETE", cql::DAYS_DELETE),
            ("GENERATION_REGISTER", cql::GENERATION_REGISTER),
            ("GENERATIONS", cql::GENERATIONS),
            ("GENERATION_DELETE", cql::GENERATION_DELETE),
            ("SEAL_INSERT", cql::SEAL_INSERT),
            ("SEAL_SELECT", cql::SEAL_SELECT),
            ("SEALS_FROM", cql::SEALS_FROM),
            ("SEALS_DELETE_BELOW", cql::SEALS_DELETE_BELOW),
            ("SEALS_COUNT_BELOW", cql::SEALS_COUNT_BELOW),
            ("SEAL_PARTITION_REGISTER", cql::SEAL_PARTITION_REGISTER),
            ("SEAL_PARTITIONS", cql::SEAL_PARTITIONS),
            ("CONTROL_INIT", cql::CONTROL_INIT),
            ("CONTROL_ROW", cql::CONTROL_ROW),
            ("MANIFESTS", cql::MANIFESTS),
            ("LATEST_MANIFEST", cql::LATEST_MANIFEST),
            ("LEASE_CHECK", cql::LEASE_CHECK),
            ("LEASE_TAKE", cql::LEASE_TAKE),
            ("LEASE_TOKEN", cql::LEASE_TOKEN),
            ("LEASE_RENEW", cql::LEASE_RENEW),
            ("LEASE_RELEASE", cql::LEASE_RELEASE),
            ("COUNTER_BUMP", cql::COUNTER_BUMP),
            ("CURRENT_SWITCH", cql::CURRENT_SWITCH),
            ("MANIFEST_INSERT", cql::MANIFEST_INSERT),
            ("MANIFEST_DELETE", cql::MANIFEST_DELETE),
        ]
    }

    #[test]
    fn the_schema_is_idempotent_and_has_no_counters() {
        let statements = schema_statements();
        assert!(!statements.is_empty());
        for s in &statements {
            assert!(s.starts_with("CREATE TABLE IF NOT EXISTS "), "{s}");
            assert!(!s.to_ascii_lowercase().contains(" counter"), "{s}");
            assert!(!s.contains('.'), "unqualified (the keyspace comes from the URL): {s}");
        }
        let speed = statements.iter().find(|s| table_of(s).as_deref() == Some("speed_rows")).unwrap();
        assert!(
            speed.contains(
                "PRIMARY KEY ((view_name, granularity, kafka_partition, segment_start), bucket_start, dims_hash)"
            ),
            "DESIGN.md §6 partitions speed rows by segment: {speed}"
        );
        let batch = statements.iter().find(|s| table_of(s).as_deref() == Some("batch_rows")).unwrap();
        assert!(
            batch.contains("PRIMARY KEY ((generation, view_name, granularity, day), bucket_start, dims_hash)"),
            "{batch}"
        );
        let keyspace = create_keyspace_statement("views", 3);
        assert!(keyspace.contains("'NetworkTopologyStrategy', 'replication_factor': 3"), "{keyspace}");
        assert!(!keyspace.contains("tablets"), "Cassandra rejects the tablets option: {keyspace}");
    }

    /// Reserved CQL keywords cannot name a column unquoted (`view` fails to parse on ScyllaDB, issue
    /// scylladb#10619): the reserved lists of the Cassandra CQL reference and ScyllaDB's docs.
    #[test]
    fn no_column_is_a_reserved_word() {
        const RESERVED: &[&str] = &[
            "add",
            "aggregate",
            "all",
            "allow",
            "alter",
            "and",
            "apply",
            "asc",
            "authorize",
            "batch",
            "begin",
            "by",
            "columnfamily",
            "create",
            "default",
            "delete",
            "desc",
            "describe",
            "drop",
            "entries",
            "execute",
            "from",
            "full",
            "grant",
            "if",
            "in",
            "index",
            "infinity",
            "insert",
            "into",
            "is",
            "keyspace",
            "limit",
            "materialized",
            "mbean",
            "mbeans",
            "modify",
            "nan",
            "norecursive",
            "not",
            "null",
            "of",
            "on",
            "or",
            "order",
            "primary",
            "rename",
            "replace",
            "revoke",
            "schema",
            "select",
            "set",
            "table",
            "to",
            "token",
            "truncate",
            "unlogged",
            "unset",
            "update",
            "use",
            "using",
            "view",
            "where",
            "with",
        ];
        let mut columns = 0;
        for statement in schema_statements() {
            let body = statement.split_once('(').unwrap().1.split("PRIMARY KEY").next().unwrap();
            for column in body.split(',').filter_map(|c| c.split_whitespace().next()) {
                columns += 1;
                assert!(!RESERVED.contains(&column.to_ascii_lowercase().as_str()), "column `{column}` is reserved");
            }
        }
        assert!(columns > 30, "{columns} columns parsed");
    }

    #[test]
    fn urls_name_hosts_ports_keyspace_and_options() {
        let url = ScyllaUrl::parse("scylla://10.0.0.1,10.0.0.2:19042/Views?replication_factor=2").unwrap();
        assert_eq!(url.nodes, vec!["10.0.0.1:9042", "10.0.0.2:19042"]);
        assert_eq!(url.keyspace, "views");
        assert_eq!(url.replication_factor, Some(2));
        assert_eq!(ScyllaUrl::parse("scylla://db/ks").unwrap().replication_factor, None);
        for (bad, says) in [
            ("scylla://db", "no keyspace"),
            ("scylla://db/1ks", "not a CQL name"),
            ("scylla://db/ks-x", "not a CQL name"),
            ("scylla://db:x/ks", "port `x`"),
            ("scylla://,db/ks", "empty host"),
            ("scylla://db/ks?replication_factor=0", "replication_factor"),
            ("scylla://db/ks?consistency=one", "unknown option"),
        ] {
            let err = ScyllaUrl::parse(bad).unwrap_err().to_string();
            assert!(err.contains("store.url") && err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn lease_ttls_are_never_shorter_than_asked() {
        assert_eq!(ttl_seconds(Duration::from_millis(300)), 2);
        assert_eq!(ttl_seconds(Duration::from_secs(1)), 2);
        assert_eq!(ttl_seconds(Duration::from_millis(1_001)), 3);
        assert_eq!(ttl_seconds(Duration::from_secs(u64::MAX)), i32::MAX);
    }

    #[test]
    fn manifest_rows_sort_as_generations_and_days_are_utc() {
        let mut names: Vec<String> = [10, 9, 100, 1].iter().map(|g| manifest_name(*g)).collect();
        names.sort();
        assert_eq!(names, vec![manifest_name(1), manifest_name(9), manifest_name(10), manifest_name(100)]);
        assert!(names.iter().all(|n| n.as_str() >= "manifest/" && n.as_str() < "manifest0"));
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(86_399), 0);
        assert_eq!(day_of(86_400), 86_400);
        assert_eq!(day_of(-1), -86_400);
    }

    #[test]
    fn batches_stay_in_one_partition_and_under_the_size_limit() {
        let rows: Vec<(String, usize)> =
            (0..300).map(|i| (format!("p{}", i / 100), if i % 50 == 0 { 40_000 } else { 100 })).collect();
        let groups = chunks(rows.clone(), |r| r.0.clone(), |r| r.1);
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 300, "every row once");
        for g in &groups {
            assert!(g.iter().all(|r| r.0 == g[0].0), "one partition per batch");
            assert!(g.len() <= ROWS_PER_BATCH);
            assert!(g.len() == 1 || g.iter().map(|r| r.1).sum::<usize>() <= BATCH_BYTES, "{}", g.len());
        }
    }

    #[test]
    fn only_passing_conditions_are_retried() {
        for e in [DbError::Overloaded, DbError::IsBootstrapping, DbError::TruncateError] {
            assert!(retryable_db_error(&e), "{e:?}");
        }
        for e in
            [DbError::SyntaxError, DbError::Invalid, DbError::Unauthorized, DbError::ConfigError, DbError::ServerError]
        {
            assert!(!retryable_db_error(&e), "{e:?}");
        }
        assert!(retryable(&ExecutionError::RequestTimeout(Duration::from_secs(1))));
    }

    #[test]
    fn dims_hashes_are_sha256_as_in_the_postgres_store() {
        // FIPS 180-2 test vector: sha256("abc"), as PostgreSQL's sha256(convert_to(dims, 'UTF8'))
        let hex: String = dims_hash("abc").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
