//! PostgreSQL backend of the view store (sqlx): `postgres://user:password@host:port/database`.
//!
//! Schema: the versioned migrations in `common/migrations/postgres/`, applied by `lambda store init` and on
//! open (sqlx's migrator holds an advisory lock while it runs, so services starting together apply them
//! once). Same tables and the same JSON text columns as the SQLite store.
//!
//! Concurrency (READ COMMITTED, set on every connection whatever the server's default; each statement sees
//! what was committed before it began):
//! - *speed rows against seals*: a speed-row write takes a shared transaction-level advisory lock per
//!   segment it writes, then reads the segment's seal in a **separate statement** (a statement's snapshot is
//!   taken when it starts, so a seal read in the same statement as the lock could miss a seal committed
//!   while it waited); [`ViewStore::record_seal`] takes the same lock exclusively. So a seal is either
//!   seen by a write (which then drops rows past it), or recorded after the write committed (and the
//!   owner's [`ViewStore::finalize_segment`] deletes what the write left past it). See "Advisory Locks" in
//!   the PostgreSQL manual (§13.3.5).
//! - *fencing*: a fenced write runs in a transaction whose first statement updates the lease row
//!   (`... WHERE holder = $ AND token = $ AND expires_at >= clock_timestamp()`), which row-locks it until
//!   commit; a concurrent take-over (`INSERT ... ON CONFLICT DO UPDATE` on the same row) waits for that
//!   commit and then re-checks its condition on the new row version.
//! - *seals against cutoffs*: a publish takes an exclusive advisory lock per partition's cutoff, a seal's
//!   check a shared one before its insert, so no seal lands below a cutoff published meanwhile.
//! - *conflicting upserts*: rows are written sorted by key, so two writers of the same cells (a zombie and
//!   the new owner) lock them in the same order; `finalize_segment` takes its segment's lock exclusively
//!   before deleting. A deadlock PostgreSQL still reports (40P01) is a retryable error.
//! - *keys*: rows are keyed by `dims_hash = sha256(dims)`, not `dims` (a btree entry holds about 2.7 kB).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder, Row};

use super::{
    decode_dims, decode_metrics, encode_dims, encode_metrics, BatchRow, Lease, Manifest, RowQuery, Seal, SpeedRow,
    ViewKey, ViewStore,
};
use crate::error::{Error, Result};

/// Rows per `INSERT ... SELECT FROM UNNEST(...)` statement: one round trip each, and the arrays of a chunk
/// (about 200 bytes a row) bound the memory a large flush takes.
const ROWS_PER_STATEMENT: usize = 5_000;

/// The PostgreSQL view store.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

fn err(table: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Store { table, source }
}

fn ttl_ms(ttl: Duration) -> i64 {
    ttl.as_millis().try_into().unwrap_or(i64::MAX)
}

/// The advisory-lock key of a segment (see the module docs): `hashtextextended` of this text.
fn segment_lock_key(topic: &str, partition: i32, start: i64) -> String {
    format!("lambda/segment/{topic}/{partition}/{start}")
}

/// The advisory-lock key of a partition's published cutoff: taken exclusively by a publish, shared by a
/// seal's check against the cutoff.
fn cutoff_lock_key(partition: i32) -> String {
    format!("lambda/cutoff/{partition}")
}

/// Session settings of every connection, whatever the server, database or role defaults are: the
/// concurrency argument of the module docs needs READ COMMITTED (under REPEATABLE READ a transaction's
/// snapshot is taken at its first statement, before a lock wait); a seal must be durable when its commit
/// returns (it precedes a Kafka commit); and a frozen process (a zombie, a paused VM) must not hold locks
/// for ever: its idle transaction is ended after a minute, and a lock waited on for 30 s fails the
/// statement with a retryable error (55P03).
const SESSION_SETTINGS: [(&str, &str); 4] = [
    ("default_transaction_isolation", r"read\ committed"), // a space in libpq's options is escaped
    ("synchronous_commit", "on"),
    ("lock_timeout", "30s"),
    ("idle_in_transaction_session_timeout", "60s"),
];

/// Builds the migrator of `common/migrations/postgres/`. Versions the database has and this binary does
/// not know (applied by a newer release during a rolling deploy) are accepted.
fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations/postgres");
    migrator.set_ignore_missing(true);
    migrator
}

impl PostgresStore {
    /// One transaction, after every writer of the segment and before any later one: deletes the segment's
    /// rows past `seal.end`, then upserts `rows` (the segment's final rows; none for a trim). Returns the
    /// rows deleted.
    async fn bound_to_seal(&self, topic: &str, seal: Seal, rows: &[SpeedRow]) -> Result<u64> {
        let mut tx = self.pool.begin().await.map_err(err("speed_rows"))?;
        // exclusive first: the delete below then never waits on a writer of this segment holding rows in
        // key order (a deadlock); the shared request of the upsert that follows is this transaction's own
        advisory_lock(&mut tx, Lock::Exclusive, &segment_lock_key(topic, seal.partition, seal.start), "seals").await?;
        let deleted = sqlx::query(
            "DELETE FROM speed_rows WHERE kafka_partition = $1 AND segment_start = $2 AND upto_offset > $3",
        )
        .bind(seal.partition)
        .bind(seal.start)
        .bind(seal.end)
        .execute(&mut *tx)
        .await
        .map_err(err("speed_rows"))?
        .rows_affected();
        upsert_speed(&mut tx, topic, rows).await?;
        tx.commit().await.map_err(err("speed_rows"))?;
        Ok(deleted)
    }

    /// Connects to `url` with a pool of at most `max_connections` and applies pending migrations.
    ///
    /// Errors: [`Error::Store`] when the server is unreachable or refuses the login, or a migration fails
    /// (for example one already applied was changed: the message names its version).
    pub async fn open(url: &str, max_connections: u32) -> Result<Self> {
        let store = Self::connect(url, max_connections).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects without touching the schema.
    ///
    /// Errors: [`Error::Store`] when unreachable; [`Error::StoreRefused`] for a database whose encoding is
    /// not UTF8 (dimension values are UTF-8 text).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let options =
            PgConnectOptions::from_str(url).map_err(err("open"))?.application_name("lambda").options(SESSION_SETTINGS);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(err("open"))?;
        let encoding: String =
            sqlx::query_scalar("SHOW server_encoding").fetch_one(&pool).await.map_err(err("open"))?;
        if encoding != "UTF8" {
            return Err(Error::StoreRefused {
                table: "open",
                message: format!("the database's encoding is {encoding}; create it with ENCODING 'UTF8'"),
            });
        }
        Ok(PostgresStore { pool })
    }

    /// Applies the migrations not yet applied; returns the versions it applied (empty when up to date).
    /// Reads `_sqlx_migrations` first and runs the migrator (which needs CREATE on the schema) only when
    /// this binary knows a migration the database lacks, so services can run with a role that may only
    /// read and write the tables once `lambda store init` has run.
    pub async fn migrate(&self) -> Result<Vec<i64>> {
        let migrator = migrator();
        let before: Vec<i64> = self.applied_migrations().await.unwrap_or_default();
        if migrator.iter().all(|m| before.contains(&m.version)) {
            return Ok(Vec::new());
        }
        migrator.run(&self.pool).await.map_err(|e| Error::Store { table: "migrations", source: e.into() })?;
        let after = self.applied_migrations().await?;
        Ok(after.into_iter().filter(|v| !before.contains(v)).collect())
    }

    /// Versions recorded in sqlx's `_sqlx_migrations` table, ascending.
    pub async fn applied_migrations(&self) -> Result<Vec<i64>> {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&self.pool)
            .await
            .map_err(err("migrations"))
    }

    /// The connection pool (for SQL views and ad-hoc inspection).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Begins a transaction that holds the lease row locked and has checked `fence` (see the module docs).
    async fn fenced(&self, fence: &Lease, table: &'static str) -> Result<sqlx::Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await.map_err(err(table))?;
        let held = sqlx::query(
            "UPDATE leases SET token = token WHERE name = $1 AND holder = $2 AND token = $3 \
             AND expires_at >= clock_timestamp()",
        )
        .bind(&fence.name)
        .bind(&fence.holder)
        .bind(fence.token)
        .execute(&mut *tx)
        .await
        .map_err(err("leases"))?;
        if held.rows_affected() != 1 {
            return Err(Error::Fenced { name: fence.name.clone(), holder: fence.holder.clone(), token: fence.token });
        }
        Ok(tx)
    }
}

/// What one pass of the SQL mirror changes in a mirror database ([`PostgresStore::apply_mirror`]).
#[derive(Debug, Default)]
pub struct MirrorChanges<'a> {
    /// A manifest to publish (its batch rows written before with [`ViewStore::write_batch_rows`]).
    pub publish: Option<&'a Manifest>,
    /// Speed rows to write as they are in the source (new, or with another `upto_offset`).
    pub upsert: Vec<&'a SpeedRow>,
    /// Speed rows the source no longer has (absorbed by a batch run, or cut back to a seal).
    pub delete: Vec<&'a SpeedRow>,
    /// Published generations to keep (the newest ones); older rows and manifests are deleted.
    pub keep_generations: usize,
}

/// Counts of what [`PostgresStore::apply_mirror`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MirrorApplied {
    pub published: Option<i64>,
    pub speed_rows_written: u64,
    pub speed_rows_deleted: u64,
    pub generations_deleted: u64,
}

impl PostgresStore {
    /// Applies one pass of the SQL mirror (issue 10, item 4) in **one transaction**, fenced by the mirror's
    /// lease: publishes the new manifest, mirrors the speed rows, drops generations past the kept ones. A
    /// reader of the mirror sees the pass whole or not at all (the merge rule holds in every snapshot).
    /// Speed rows are written as the source has them (no `upto_offset` condition: the source already
    /// applied the rules, including cutting rows back to a seal).
    ///
    /// Errors: [`Error::Fenced`] when the mirror lost its lease; [`Error::StoreRefused`] for a manifest not
    /// above the mirror's current one; [`Error::Store`].
    pub async fn apply_mirror(&self, fence: &Lease, changes: &MirrorChanges<'_>) -> Result<MirrorApplied> {
        let mut applied = MirrorApplied::default();
        let mut tx = self.fenced(fence, "manifests").await?;
        if let Some(manifest) = changes.publish {
            publish_in(&mut tx, manifest).await?;
            applied.published = Some(manifest.generation);
        }
        for chunk in changes.delete.chunks(ROWS_PER_STATEMENT) {
            let delete = sqlx::query(
                "DELETE FROM speed_rows s USING UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], \
                 $5::INTEGER[], $6::BIGINT[]) AS d(view, granularity, bucket_start, dims, kafka_partition, \
                 segment_start) WHERE s.view = d.view AND s.granularity = d.granularity \
                 AND s.bucket_start = d.bucket_start AND s.dims_hash = sha256(convert_to(d.dims, 'UTF8')) \
                 AND s.kafka_partition = d.kafka_partition AND s.segment_start = d.segment_start",
            );
            let done = bind_cell_keys(delete, chunk).execute(&mut *tx).await.map_err(err("speed_rows"))?;
            applied.speed_rows_deleted += done.rows_affected();
        }
        applied.speed_rows_written = write_speed_rows(&mut tx, &changes.upsert, false).await?;
        let keep = i64::try_from(changes.keep_generations.max(1)).unwrap_or(i64::MAX);
        let oldest_kept: Option<i64> = sqlx::query_scalar(
            "SELECT min(generation) FROM (SELECT generation FROM manifests ORDER BY generation DESC LIMIT $1) k",
        )
        .bind(keep)
        .fetch_one(&mut *tx)
        .await
        .map_err(err("manifests"))?;
        if let Some(oldest) = oldest_kept {
            let done = sqlx::query("DELETE FROM manifests WHERE generation < $1")
                .bind(oldest)
                .execute(&mut *tx)
                .await
                .map_err(err("manifests"))?;
            applied.generations_deleted = done.rows_affected();
            sqlx::query("DELETE FROM batch_rows WHERE generation < $1")
                .bind(oldest)
                .execute(&mut *tx)
                .await
                .map_err(err("batch_rows"))?;
        }
        tx.commit().await.map_err(err("manifests"))?;
        Ok(applied)
    }
}

/// Inserts `manifest` and raises the published cutoffs, inside a fenced transaction; refuses a generation
/// not above the current one.
async fn publish_in(conn: &mut PgConnection, manifest: &Manifest) -> Result<()> {
    let current = current_generation(&mut *conn).await?;
    if manifest.generation <= current {
        return Err(Error::StoreRefused {
            table: "manifests",
            message: format!("generation {} is not above the published generation {current}", manifest.generation),
        });
    }
    let body = serde_json::to_string(manifest).expect("manifest serializes");
    sqlx::query("INSERT INTO manifests (generation, body) VALUES ($1, $2::JSONB)")
        .bind(manifest.generation)
        .bind(body)
        .execute(&mut *conn)
        .await
        .map_err(err("manifests"))?;
    let (partitions, cutoffs): (Vec<i32>, Vec<i64>) = manifest.cutoffs.iter().map(|(&p, &c)| (p, c)).unzip();
    // exclusive per partition (BTreeMap order), so a seal checked against the cutoff waits for this commit
    for &partition in &partitions {
        advisory_lock(conn, Lock::Exclusive, &cutoff_lock_key(partition), "published_cutoffs").await?;
    }
    sqlx::query(
        "INSERT INTO published_cutoffs (kafka_partition, cutoff) SELECT * FROM UNNEST($1::INTEGER[], $2::BIGINT[]) \
         ON CONFLICT (kafka_partition) DO UPDATE SET cutoff = greatest(published_cutoffs.cutoff, excluded.cutoff)",
    )
    .bind(&partitions)
    .bind(&cutoffs)
    .execute(&mut *conn)
    .await
    .map_err(err("published_cutoffs"))?;
    Ok(())
}

/// How a transaction-level advisory lock is taken.
#[derive(Debug, Clone, Copy)]
enum Lock {
    Shared,
    Exclusive,
}

/// Takes the advisory lock named `key` (`hashtextextended` of it) until the end of the transaction, in a
/// statement of its own: what the caller reads next is read after the wait (see the module docs).
async fn advisory_lock(conn: &mut PgConnection, mode: Lock, key: &str, table: &'static str) -> Result<()> {
    let sql = match mode {
        Lock::Shared => "SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))",
        Lock::Exclusive => "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
    };
    sqlx::query(sql).bind(key).execute(conn).await.map_err(err(table))?;
    Ok(())
}

/// The current (highest published) generation, 0 when none.
async fn current_generation(conn: &mut PgConnection) -> Result<i64> {
    sqlx::query_scalar("SELECT coalesce(max(generation), 0)::BIGINT FROM manifests")
        .fetch_one(conn)
        .await
        .map_err(err("manifests"))
}

/// Upserts `rows` under the speed-row rules (larger `upto_offset` replaces; nothing past a recorded seal of
/// the row's segment), inside the caller's transaction. Takes the segments' advisory locks shared first.
async fn upsert_speed(conn: &mut PgConnection, topic: &str, rows: &[SpeedRow]) -> Result<()> {
    let mut segments: Vec<(i32, i64)> = rows.iter().map(|r| (r.partition, r.segment_start)).collect();
    segments.sort_unstable();
    segments.dedup();
    let mut seal_ends: BTreeMap<(i32, i64), i64> = BTreeMap::new();
    for &(partition, start) in &segments {
        advisory_lock(conn, Lock::Shared, &segment_lock_key(topic, partition, start), "seals").await?;
        let end: Option<i64> = sqlx::query_scalar(
            "SELECT end_offset FROM seals WHERE topic = $1 AND kafka_partition = $2 AND start_offset = $3",
        )
        .bind(topic)
        .bind(partition)
        .bind(start)
        .fetch_optional(&mut *conn)
        .await
        .map_err(err("seals"))?;
        if let Some(end) = end {
            seal_ends.insert((partition, start), end);
        }
    }
    // One row per key, the largest upto_offset (ON CONFLICT DO UPDATE cannot touch a row twice in one
    // statement), sorted by key so concurrent writers lock rows in the same order.
    let mut kept: Vec<&SpeedRow> = rows
        .iter()
        .filter(|r| seal_ends.get(&(r.partition, r.segment_start)).is_none_or(|&end| r.upto_offset <= end))
        .collect();
    kept.sort_by(|a, b| {
        (&a.key, a.partition, a.segment_start, std::cmp::Reverse(a.upto_offset)).cmp(&(
            &b.key,
            b.partition,
            b.segment_start,
            std::cmp::Reverse(b.upto_offset),
        ))
    });
    kept.dedup_by(|later, first| {
        later.key == first.key && later.partition == first.partition && later.segment_start == first.segment_start
    });
    write_speed_rows(conn, &kept, true).await?;
    Ok(())
}

/// Binds the six key columns of speed-row cells, `$1..$6` as arrays in table order: view, granularity,
/// bucket_start, dims (JSON text), kafka_partition, segment_start.
fn bind_cell_keys<'q>(
    query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    cells: &[&'q SpeedRow],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(cells.iter().map(|r| r.key.view.as_str()).collect::<Vec<_>>())
        .bind(cells.iter().map(|r| r.key.granularity.as_str()).collect::<Vec<_>>())
        .bind(cells.iter().map(|r| r.key.bucket_start).collect::<Vec<_>>())
        .bind(cells.iter().map(|r| encode_dims(&r.key.dims)).collect::<Vec<_>>())
        .bind(cells.iter().map(|r| r.partition).collect::<Vec<_>>())
        .bind(cells.iter().map(|r| r.segment_start).collect::<Vec<_>>())
}

/// Writes speed rows in chunks of [`ROWS_PER_STATEMENT`], one `INSERT ... SELECT FROM UNNEST` each;
/// `only_larger`: a stored row is replaced only by a larger `upto_offset` (the speed-row rule), else always
/// (the mirror copies what the source holds). Returns the rows inserted or replaced.
async fn write_speed_rows(conn: &mut PgConnection, rows: &[&SpeedRow], only_larger: bool) -> Result<u64> {
    let condition = if only_larger { " WHERE excluded.upto_offset > speed_rows.upto_offset" } else { "" };
    let sql = format!(
        "INSERT INTO speed_rows (view, granularity, bucket_start, dims, dims_hash, kafka_partition, segment_start, \
         upto_offset, metrics) \
         SELECT v, g, b, d, sha256(convert_to(d, 'UTF8')), p, s, u, m FROM UNNEST($1::TEXT[], $2::TEXT[], \
         $3::BIGINT[], $4::TEXT[], $5::INTEGER[], $6::BIGINT[], $7::BIGINT[], $8::TEXT[]) AS r(v, g, b, d, p, s, u, m) \
         ON CONFLICT (view, granularity, bucket_start, dims_hash, kafka_partition, segment_start) DO UPDATE SET \
         upto_offset = excluded.upto_offset, metrics = excluded.metrics{condition}"
    );
    let mut written = 0;
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let done = bind_cell_keys(sqlx::query(&sql), chunk)
            .bind(chunk.iter().map(|r| r.upto_offset).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| encode_metrics(&r.metrics)).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await
            .map_err(err("speed_rows"))?;
        written += done.rows_affected();
    }
    Ok(written)
}

/// `WHERE` conditions of a range read (the caller wrote `WHERE`).
/// The `WHERE` conditions (and `LIMIT`) of a row read; `speed` adds [`RowQuery::speed_from`].
fn push_range(qb: &mut QueryBuilder<'_, Postgres>, query: &RowQuery, speed: bool) {
    qb.push(" view = ").push_bind(query.view.clone());
    qb.push(" AND granularity = ").push_bind(query.granularity.as_str());
    if let Some(from) = query.from {
        qb.push(" AND bucket_start >= ").push_bind(from);
    }
    if let Some(to) = query.to {
        qb.push(" AND bucket_start < ").push_bind(to);
    }
    if speed {
        for (&partition, &cutoff) in &query.speed_from {
            qb.push(" AND NOT (kafka_partition = ").push_bind(partition);
            qb.push(" AND segment_start < ").push_bind(cutoff).push(")");
        }
    }
    if let Some(limit) = query.limit {
        qb.push(" LIMIT ").push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
    }
}

fn corrupt(table: &'static str) -> impl Fn(String) -> Error {
    move |message| Error::StoreCorrupt { table, message }
}

#[async_trait]
impl ViewStore for PostgresStore {
    async fn upsert_speed_rows(&self, topic: &str, rows: &[SpeedRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(err("speed_rows"))?;
        upsert_speed(&mut tx, topic, rows).await?;
        tx.commit().await.map_err(err("speed_rows"))
    }

    async fn finalize_segment(&self, topic: &str, seal: Seal, rows: &[SpeedRow]) -> Result<()> {
        self.bound_to_seal(topic, seal, rows).await.map(|_| ())
    }

    async fn trim_segment(&self, topic: &str, seal: Seal) -> Result<u64> {
        self.bound_to_seal(topic, seal, &[]).await
    }

    async fn speed_rows(&self, query: &RowQuery) -> Result<Vec<SpeedRow>> {
        let mut qb = QueryBuilder::<Postgres>::new(
            "SELECT bucket_start, dims, kafka_partition, segment_start, upto_offset, metrics FROM speed_rows WHERE",
        );
        push_range(&mut qb, query, true);
        let rows = qb.build().fetch_all(&self.pool).await.map_err(err("speed_rows"))?;
        rows.iter()
            .map(|r| {
                Ok(SpeedRow {
                    key: ViewKey {
                        view: query.view.clone(),
                        granularity: query.granularity,
                        bucket_start: r.get(0),
                        dims: decode_dims(r.get(1)).map_err(corrupt("speed_rows"))?,
                    },
                    partition: r.get(2),
                    segment_start: r.get(3),
                    upto_offset: r.get(4),
                    metrics: decode_metrics(r.get(5)).map_err(corrupt("speed_rows"))?,
                })
            })
            .collect()
    }

    async fn record_seal(&self, topic: &str, seal: Seal) -> Result<Option<Seal>> {
        let mut tx = self.pool.begin().await.map_err(err("seals"))?;
        advisory_lock(&mut tx, Lock::Exclusive, &segment_lock_key(topic, seal.partition, seal.start), "seals").await?;
        // the cutoff check must see a publish that committed while this waited: lock, then a new statement
        advisory_lock(&mut tx, Lock::Shared, &cutoff_lock_key(seal.partition), "seals").await?;
        sqlx::query(
            "INSERT INTO seals (topic, kafka_partition, start_offset, end_offset) SELECT $1, $2, $3, $4 \
             WHERE $3 >= coalesce((SELECT cutoff FROM published_cutoffs WHERE kafka_partition = $2), 0) \
             ON CONFLICT DO NOTHING",
        )
        .bind(topic)
        .bind(seal.partition)
        .bind(seal.start)
        .bind(seal.end)
        .execute(&mut *tx)
        .await
        .map_err(err("seals"))?;
        let end: Option<i64> = sqlx::query_scalar(
            "SELECT end_offset FROM seals WHERE topic = $1 AND kafka_partition = $2 AND start_offset = $3",
        )
        .bind(topic)
        .bind(seal.partition)
        .bind(seal.start)
        .fetch_optional(&mut *tx)
        .await
        .map_err(err("seals"))?;
        tx.commit().await.map_err(err("seals"))?;
        // the recorded seal (ours, or an earlier one); none when refused below the cutoff
        Ok(end.map(|end| Seal { end, ..seal }))
    }

    async fn seal_at(&self, topic: &str, partition: i32, start: i64) -> Result<Option<Seal>> {
        let end: Option<i64> = sqlx::query_scalar(
            "SELECT end_offset FROM seals WHERE topic = $1 AND kafka_partition = $2 AND start_offset = $3",
        )
        .bind(topic)
        .bind(partition)
        .bind(start)
        .fetch_optional(&self.pool)
        .await
        .map_err(err("seals"))?;
        Ok(end.map(|end| Seal { partition, start, end }))
    }

    async fn seals(&self, topic: &str) -> Result<Vec<Seal>> {
        self.seals_from(topic, &BTreeMap::new()).await
    }

    async fn seals_from(&self, topic: &str, from: &BTreeMap<i32, i64>) -> Result<Vec<Seal>> {
        let mut qb =
            QueryBuilder::<Postgres>::new("SELECT kafka_partition, start_offset, end_offset FROM seals WHERE topic = ");
        qb.push_bind(topic.to_owned());
        if !from.is_empty() {
            qb.push(" AND start_offset >= CASE kafka_partition");
            for (&partition, &start) in from {
                qb.push(" WHEN ").push_bind(partition).push(" THEN ").push_bind(start);
            }
            qb.push(" ELSE start_offset END");
        }
        qb.push(" ORDER BY kafka_partition, start_offset");
        let rows = qb.build().fetch_all(&self.pool).await.map_err(err("seals"))?;
        Ok(rows.iter().map(|r| Seal { partition: r.get(0), start: r.get(1), end: r.get(2) }).collect())
    }

    async fn delete_absorbed(&self, fence: &Lease, topic: &str, cutoffs: &BTreeMap<i32, i64>) -> Result<(u64, u64)> {
        let mut tx = self.fenced(fence, "speed_rows").await?;
        let (mut rows, mut seals) = (0, 0);
        for (&partition, &cutoff) in cutoffs {
            let done = sqlx::query("DELETE FROM speed_rows WHERE kafka_partition = $1 AND segment_start < $2")
                .bind(partition)
                .bind(cutoff)
                .execute(&mut *tx)
                .await
                .map_err(err("speed_rows"))?;
            rows += done.rows_affected();
            let done = sqlx::query("DELETE FROM seals WHERE topic = $1 AND kafka_partition = $2 AND start_offset < $3")
                .bind(topic)
                .bind(partition)
                .bind(cutoff)
                .execute(&mut *tx)
                .await
                .map_err(err("seals"))?;
            seals += done.rows_affected();
        }
        tx.commit().await.map_err(err("speed_rows"))?;
        Ok((rows, seals))
    }

    async fn allocate_generation(&self, fence: &Lease) -> Result<i64> {
        let mut tx = self.fenced(fence, "counters").await?;
        let generation: i64 = sqlx::query_scalar(
            "UPDATE counters SET value = greatest(value, (SELECT coalesce(max(generation), 0) FROM manifests)) + 1 \
             WHERE name = 'generation' RETURNING value",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(err("counters"))?;
        tx.commit().await.map_err(err("counters"))?;
        Ok(generation)
    }

    async fn delete_generation(&self, fence: &Lease, generation: i64) -> Result<()> {
        let mut tx = self.fenced(fence, "batch_rows").await?;
        if current_generation(&mut tx).await? == generation {
            return Err(Error::StoreRefused {
                table: "batch_rows",
                message: format!("generation {generation} is the published one; it is never deleted"),
            });
        }
        sqlx::query("DELETE FROM batch_rows WHERE generation = $1")
            .bind(generation)
            .execute(&mut *tx)
            .await
            .map_err(err("batch_rows"))?;
        tx.commit().await.map_err(err("batch_rows"))
    }

    async fn write_batch_rows(&self, fence: &Lease, generation: i64, rows: &[BatchRow]) -> Result<()> {
        let mut tx = self.fenced(fence, "batch_rows").await?;
        let published: Option<i64> = sqlx::query_scalar("SELECT generation FROM manifests WHERE generation = $1")
            .bind(generation)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err("manifests"))?;
        if published.is_some() {
            return Err(Error::StoreRefused {
                table: "batch_rows",
                message: format!("generation {generation} is published; its rows are never rewritten"),
            });
        }
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let views: Vec<&str> = chunk.iter().map(|r| r.key.view.as_str()).collect();
            let granularities: Vec<&str> = chunk.iter().map(|r| r.key.granularity.as_str()).collect();
            let buckets: Vec<i64> = chunk.iter().map(|r| r.key.bucket_start).collect();
            let dims: Vec<String> = chunk.iter().map(|r| encode_dims(&r.key.dims)).collect();
            let metrics: Vec<String> = chunk.iter().map(|r| encode_metrics(&r.metrics)).collect();
            sqlx::query(
                "INSERT INTO batch_rows (generation, view, granularity, bucket_start, dims, dims_hash, metrics) \
                 SELECT $1, v, g, b, d, sha256(convert_to(d, 'UTF8')), m \
                 FROM UNNEST($2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[], $6::TEXT[]) AS r(v, g, b, d, m)",
            )
            .bind(generation)
            .bind(&views)
            .bind(&granularities)
            .bind(&buckets)
            .bind(&dims)
            .bind(&metrics)
            .execute(&mut *tx)
            .await
            .map_err(err("batch_rows"))?;
        }
        tx.commit().await.map_err(err("batch_rows"))
    }

    async fn batch_rows(&self, generation: i64, query: &RowQuery) -> Result<Vec<BatchRow>> {
        let mut qb =
            QueryBuilder::<Postgres>::new("SELECT bucket_start, dims, metrics FROM batch_rows WHERE generation = ");
        qb.push_bind(generation).push(" AND");
        push_range(&mut qb, query, false);
        let rows = qb.build().fetch_all(&self.pool).await.map_err(err("batch_rows"))?;
        rows.iter()
            .map(|r| {
                Ok(BatchRow {
                    key: ViewKey {
                        view: query.view.clone(),
                        granularity: query.granularity,
                        bucket_start: r.get(0),
                        dims: decode_dims(r.get(1)).map_err(corrupt("batch_rows"))?,
                    },
                    metrics: decode_metrics(r.get(2)).map_err(corrupt("batch_rows"))?,
                })
            })
            .collect()
    }

    async fn generations(&self) -> Result<Vec<i64>> {
        sqlx::query_scalar("SELECT DISTINCT generation FROM batch_rows ORDER BY generation")
            .fetch_all(&self.pool)
            .await
            .map_err(err("batch_rows"))
    }

    async fn published_generations(&self) -> Result<Vec<i64>> {
        sqlx::query_scalar("SELECT generation FROM manifests ORDER BY generation")
            .fetch_all(&self.pool)
            .await
            .map_err(err("manifests"))
    }

    async fn publish_manifest(&self, fence: &Lease, manifest: &Manifest) -> Result<()> {
        let mut tx = self.fenced(fence, "manifests").await?;
        publish_in(&mut tx, manifest).await?;
        tx.commit().await.map_err(err("manifests"))
    }

    async fn current_manifest(&self) -> Result<Option<Manifest>> {
        let body: Option<String> =
            sqlx::query_scalar("SELECT body::TEXT FROM manifests ORDER BY generation DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(err("manifests"))?;
        body.map(|b| {
            serde_json::from_str(&b).map_err(|e| Error::StoreCorrupt { table: "manifests", message: e.to_string() })
        })
        .transpose()
    }

    async fn delete_manifests_before(&self, fence: &Lease, generation: i64) -> Result<()> {
        let mut tx = self.fenced(fence, "manifests").await?;
        sqlx::query("DELETE FROM manifests WHERE generation < $1")
            .bind(generation)
            .execute(&mut *tx)
            .await
            .map_err(err("manifests"))?;
        tx.commit().await.map_err(err("manifests"))
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<Lease>> {
        let token: Option<i64> = sqlx::query_scalar(
            "INSERT INTO leases (name, holder, expires_at, token) \
             VALUES ($1, $2, clock_timestamp() + $3 * INTERVAL '1 millisecond', 1) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at, \
             token = leases.token + 1 WHERE leases.expires_at < clock_timestamp() RETURNING token",
        )
        .bind(name)
        .bind(holder)
        .bind(ttl_ms(ttl))
        .fetch_optional(&self.pool)
        .await
        .map_err(err("leases"))?;
        Ok(token.map(|token| Lease { name: name.to_owned(), holder: holder.to_owned(), token }))
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE leases SET expires_at = clock_timestamp() + $1 * INTERVAL '1 millisecond' \
             WHERE name = $2 AND holder = $3 AND token = $4 AND expires_at >= clock_timestamp()",
        )
        .bind(ttl_ms(ttl))
        .bind(&lease.name)
        .bind(&lease.holder)
        .bind(lease.token)
        .execute(&self.pool)
        .await
        .map_err(err("leases"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        sqlx::query("UPDATE leases SET expires_at = '-infinity' WHERE name = $1 AND holder = $2 AND token = $3")
            .bind(&lease.name)
            .bind(&lease.holder)
            .bind(lease.token)
            .execute(&self.pool)
            .await
            .map_err(err("leases"))?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(err("ping"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_lock_keys_differ_by_topic_partition_and_start() {
        let keys = [
            segment_lock_key("events", 0, 100),
            segment_lock_key("events", 1, 100),
            segment_lock_key("events", 0, 101),
            segment_lock_key("other", 0, 100),
            segment_lock_key("events", 10, 0),
            segment_lock_key("events", 1, 0),
        ];
        let distinct: std::collections::BTreeSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
    }

    #[test]
    fn the_migrations_are_embedded_in_version_order() {
        let versions: Vec<i64> = migrator().iter().map(|m| m.version).collect();
        assert!(!versions.is_empty());
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    }
}
