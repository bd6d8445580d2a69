//! SQLite backend of the view store (sqlx): the embedded default, one file in WAL mode.
//!
//! Durability: every connection runs with `synchronous = FULL`, so a statement that returns has reached the
//! disk. In WAL mode `NORMAL` only syncs at checkpoints, and a seal lost in an OS crash after its Kafka
//! commit would leave the committed offset pointing past a segment nobody can re-seal the same way.
//!
//! Fencing: a fenced write runs in a transaction whose first statement touches the lease row
//! (`UPDATE leases ... WHERE holder = ? AND token = ? AND expires_at_ms >= now`); that takes SQLite's write
//! lock, so the lease cannot change between the check and the write.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::{
    encode_dims, encode_metrics, BatchRow, Lease, Manifest, Metrics, RowQuery, Seal, SpeedRow, ViewKey, ViewStore,
};
use crate::error::{Error, Result};

/// Rows per multi-row INSERT (8 binds each stays far below SQLite's 32766-parameter limit).
const ROWS_PER_STATEMENT: usize = 500;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS speed_rows (
    view TEXT NOT NULL,
    granularity TEXT NOT NULL,
    bucket_start INTEGER NOT NULL,
    dims TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    segment_start INTEGER NOT NULL,
    upto_offset INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (view, granularity, bucket_start, dims, kafka_partition, segment_start)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS speed_rows_by_segment ON speed_rows (kafka_partition, segment_start);
CREATE TABLE IF NOT EXISTS batch_rows (
    generation INTEGER NOT NULL,
    view TEXT NOT NULL,
    granularity TEXT NOT NULL,
    bucket_start INTEGER NOT NULL,
    dims TEXT NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (generation, view, granularity, bucket_start, dims)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seals (
    topic TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    start_offset INTEGER NOT NULL,
    end_offset INTEGER NOT NULL,
    sealed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (topic, kafka_partition, start_offset)
);
CREATE TABLE IF NOT EXISTS manifests (
    generation INTEGER PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    token INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS published_cutoffs (
    kafka_partition INTEGER PRIMARY KEY,
    cutoff INTEGER NOT NULL
);
"#;

/// The SQLite view store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

fn err(table: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Store { table, source }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl SqliteStore {
    /// One transaction: deletes the segment's rows past `seal.end`, then upserts `rows` (the segment's final
    /// rows; none for a trim). Returns the rows deleted.
    async fn bound_to_seal(&self, topic: &str, seal: Seal, rows: &[SpeedRow]) -> Result<u64> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(err("speed_rows"))?;
        let deleted =
            sqlx::query("DELETE FROM speed_rows WHERE kafka_partition = ? AND segment_start = ? AND upto_offset > ?")
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

    /// Opens (creating if missing, with its parent directory) the database at `url` (`sqlite://path`), and
    /// brings its schema up to date (tables created, the lease token column and the generation counter
    /// added to a store made by an earlier version).
    pub async fn open(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(err("open"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .row_buffer_size(8192);
        if let Some(parent) = options.get_filename().parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
        }
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await.map_err(err("open"))?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await.map_err(err("schema"))?;
        let lease_columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info('leases')")
            .fetch_all(&pool)
            .await
            .map_err(err("schema"))?;
        if !lease_columns.iter().any(|c| c == "token") {
            sqlx::query("ALTER TABLE leases ADD COLUMN token INTEGER NOT NULL DEFAULT 0")
                .execute(&pool)
                .await
                .map_err(err("schema"))?;
        }
        sqlx::query(
            "INSERT OR IGNORE INTO counters (name, value) VALUES ('generation', \
             max((SELECT coalesce(max(generation), 0) FROM manifests), (SELECT coalesce(max(generation), 0) FROM batch_rows)))",
        )
        .execute(&pool)
        .await
        .map_err(err("schema"))?;
        let store = SqliteStore { pool };
        let known: i64 = sqlx::query_scalar("SELECT count(*) FROM published_cutoffs")
            .fetch_one(&store.pool)
            .await
            .map_err(err("schema"))?;
        if known == 0 {
            if let Some(manifest) = store.current_manifest().await? {
                let mut tx = store.pool.begin().await.map_err(err("schema"))?;
                set_cutoffs(&mut tx, &manifest.cutoffs).await?;
                tx.commit().await.map_err(err("schema"))?;
            }
        }
        Ok(store)
    }

    /// Runs a `SELECT json_group_array(json_array(...)) ...` and decodes its single value.
    ///
    /// Range reads return thousands of rows; sqlx copies every column of every row
    /// (`sqlite3_value_dup`, one C allocation each) and hands rows one at a time from its worker thread,
    /// about 2-5 µs per row. Letting SQLite pack the rows into one JSON text moves one value instead.
    async fn fetch_packed<T: serde::de::DeserializeOwned>(
        &self,
        mut qb: QueryBuilder<'_, Sqlite>,
        table: &'static str,
    ) -> Result<Vec<T>> {
        let text: String = qb.build_query_scalar().fetch_one(&self.pool).await.map_err(err(table))?;
        serde_json::from_str(&text).map_err(|e| Error::StoreCorrupt { table, message: e.to_string() })
    }

    /// The connection pool (for SQL views and ad-hoc inspection).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Begins a transaction that holds SQLite's write lock and has checked `fence` (see the module docs).
    async fn fenced(&self, fence: &Lease, table: &'static str) -> Result<sqlx::Transaction<'static, Sqlite>> {
        let mut tx = self.pool.begin().await.map_err(err(table))?;
        let held = sqlx::query(
            "UPDATE leases SET token = token WHERE name = ? AND holder = ? AND token = ? AND expires_at_ms >= ?",
        )
        .bind(&fence.name)
        .bind(&fence.holder)
        .bind(fence.token)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(err("leases"))?;
        if held.rows_affected() != 1 {
            return Err(Error::Fenced { name: fence.name.clone(), holder: fence.holder.clone(), token: fence.token });
        }
        Ok(tx)
    }
}

/// The current (highest published) generation, 0 when none.
async fn current_generation(conn: &mut SqliteConnection) -> Result<i64> {
    sqlx::query_scalar("SELECT coalesce(max(generation), 0) FROM manifests")
        .fetch_one(conn)
        .await
        .map_err(err("manifests"))
}

/// Records the published cutoffs (they only grow: a manifest is never published below the current one).
async fn set_cutoffs(conn: &mut SqliteConnection, cutoffs: &BTreeMap<i32, i64>) -> Result<()> {
    for (&partition, &cutoff) in cutoffs {
        sqlx::query(
            "INSERT INTO published_cutoffs (kafka_partition, cutoff) VALUES (?, ?) \
             ON CONFLICT (kafka_partition) DO UPDATE SET cutoff = max(cutoff, excluded.cutoff)",
        )
        .bind(partition)
        .bind(cutoff)
        .execute(&mut *conn)
        .await
        .map_err(err("published_cutoffs"))?;
    }
    Ok(())
}

/// Upserts `rows` under the speed-row rules: a larger `upto_offset` replaces, and nothing is written past
/// a recorded seal of the row's segment. Runs inside a transaction begun with `BEGIN IMMEDIATE` (the write
/// lock is held from the start), so no seal can be recorded between the seal lookup and the insert. One
/// lookup per segment in `rows` (a flush holds one or a few), then plain multi-row upserts.
async fn upsert_speed(conn: &mut SqliteConnection, topic: &str, rows: &[SpeedRow]) -> Result<()> {
    let mut seal_ends: Vec<((i32, i64), Option<i64>)> = Vec::new();
    for r in rows {
        let segment = (r.partition, r.segment_start);
        if !seal_ends.iter().any(|(s, _)| *s == segment) {
            let end: Option<i64> = sqlx::query_scalar(
                "SELECT end_offset FROM seals WHERE topic = ? AND kafka_partition = ? AND start_offset = ?",
            )
            .bind(topic)
            .bind(segment.0)
            .bind(segment.1)
            .fetch_optional(&mut *conn)
            .await
            .map_err(err("seals"))?;
            seal_ends.push((segment, end));
        }
    }
    let within_seal = |r: &&SpeedRow| {
        let end = seal_ends.iter().find(|(s, _)| *s == (r.partition, r.segment_start)).and_then(|(_, e)| *e);
        end.is_none_or(|end| r.upto_offset <= end)
    };
    let kept: Vec<&SpeedRow> = rows.iter().filter(within_seal).collect();
    for chunk in kept.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO speed_rows (view, granularity, bucket_start, dims, kafka_partition, segment_start, upto_offset, metrics) ",
        );
        qb.push_values(chunk, |mut b, r| {
            b.push_bind(r.key.view.clone())
                .push_bind(r.key.granularity.as_str())
                .push_bind(r.key.bucket_start)
                .push_bind(encode_dims(&r.key.dims))
                .push_bind(r.partition)
                .push_bind(r.segment_start)
                .push_bind(r.upto_offset)
                .push_bind(encode_metrics(&r.metrics));
        });
        qb.push(
            " ON CONFLICT (view, granularity, bucket_start, dims, kafka_partition, segment_start) DO UPDATE SET \
             upto_offset = excluded.upto_offset, metrics = excluded.metrics \
             WHERE excluded.upto_offset > speed_rows.upto_offset",
        );
        qb.build().execute(&mut *conn).await.map_err(err("speed_rows"))?;
    }
    Ok(())
}

/// `WHERE` conditions of a range read (the caller wrote `WHERE`).
/// The `WHERE` conditions (and `LIMIT`) of a row read; `speed` adds [`RowQuery::speed_from`].
fn push_range(qb: &mut QueryBuilder<'_, Sqlite>, query: &RowQuery, speed: bool) {
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

#[async_trait]
impl ViewStore for SqliteStore {
    async fn upsert_speed_rows(&self, topic: &str, rows: &[SpeedRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(err("speed_rows"))?;
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
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT json_group_array(json_array(bucket_start, json(dims), kafka_partition, segment_start, upto_offset, \
             json(metrics))) FROM (SELECT * FROM speed_rows WHERE",
        );
        push_range(&mut qb, query, true);
        qb.push(")");
        type Packed = (i64, Vec<Option<String>>, i32, i64, i64, Metrics);
        let rows: Vec<Packed> = self.fetch_packed(qb, "speed_rows").await?;
        Ok(rows
            .into_iter()
            .map(|(bucket_start, dims, partition, segment_start, upto_offset, Metrics(metrics))| SpeedRow {
                key: ViewKey { view: query.view.clone(), granularity: query.granularity, bucket_start, dims },
                partition,
                segment_start,
                upto_offset,
                metrics,
            })
            .collect())
    }

    async fn record_seal(&self, topic: &str, seal: Seal) -> Result<Option<Seal>> {
        sqlx::query(
            "INSERT INTO seals (topic, kafka_partition, start_offset, end_offset) SELECT ?, ?, ?, ? \
             WHERE ? >= coalesce((SELECT cutoff FROM published_cutoffs WHERE kafka_partition = ?), 0) \
             ON CONFLICT DO NOTHING",
        )
        .bind(topic)
        .bind(seal.partition)
        .bind(seal.start)
        .bind(seal.end)
        .bind(seal.start)
        .bind(seal.partition)
        .execute(&self.pool)
        .await
        .map_err(err("seals"))?;
        // the recorded seal (ours, or an earlier one); none when refused below the cutoff
        self.seal_at(topic, seal.partition, seal.start).await
    }

    async fn seal_at(&self, topic: &str, partition: i32, start: i64) -> Result<Option<Seal>> {
        let row =
            sqlx::query("SELECT end_offset FROM seals WHERE topic = ? AND kafka_partition = ? AND start_offset = ?")
                .bind(topic)
                .bind(partition)
                .bind(start)
                .fetch_optional(&self.pool)
                .await
                .map_err(err("seals"))?;
        Ok(row.map(|r| Seal { partition, start, end: r.get("end_offset") }))
    }

    async fn seals(&self, topic: &str) -> Result<Vec<Seal>> {
        self.seals_from(topic, &BTreeMap::new()).await
    }

    async fn seals_from(&self, topic: &str, from: &BTreeMap<i32, i64>) -> Result<Vec<Seal>> {
        let mut qb =
            QueryBuilder::<Sqlite>::new("SELECT kafka_partition, start_offset, end_offset FROM seals WHERE topic = ");
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
        Ok(rows
            .iter()
            .map(|r| Seal {
                partition: r.get("kafka_partition"),
                start: r.get("start_offset"),
                end: r.get("end_offset"),
            })
            .collect())
    }

    async fn delete_absorbed(&self, fence: &Lease, topic: &str, cutoffs: &BTreeMap<i32, i64>) -> Result<(u64, u64)> {
        let mut tx = self.fenced(fence, "speed_rows").await?;
        let (mut rows, mut seals) = (0, 0);
        for (&partition, &cutoff) in cutoffs {
            let done = sqlx::query("DELETE FROM speed_rows WHERE kafka_partition = ? AND segment_start < ?")
                .bind(partition)
                .bind(cutoff)
                .execute(&mut *tx)
                .await
                .map_err(err("speed_rows"))?;
            rows += done.rows_affected();
            let done = sqlx::query("DELETE FROM seals WHERE topic = ? AND kafka_partition = ? AND start_offset < ?")
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
            "UPDATE counters SET value = max(value, (SELECT coalesce(max(generation), 0) FROM manifests)) + 1 \
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
        sqlx::query("DELETE FROM batch_rows WHERE generation = ?")
            .bind(generation)
            .execute(&mut *tx)
            .await
            .map_err(err("batch_rows"))?;
        tx.commit().await.map_err(err("batch_rows"))
    }

    async fn write_batch_rows(&self, fence: &Lease, generation: i64, rows: &[BatchRow]) -> Result<()> {
        let mut tx = self.fenced(fence, "batch_rows").await?;
        let published: Option<i64> = sqlx::query_scalar("SELECT generation FROM manifests WHERE generation = ?")
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
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO batch_rows (generation, view, granularity, bucket_start, dims, metrics) ",
            );
            qb.push_values(chunk, |mut b, r| {
                b.push_bind(generation)
                    .push_bind(r.key.view.clone())
                    .push_bind(r.key.granularity.as_str())
                    .push_bind(r.key.bucket_start)
                    .push_bind(encode_dims(&r.key.dims))
                    .push_bind(encode_metrics(&r.metrics));
            });
            qb.build().execute(&mut *tx).await.map_err(err("batch_rows"))?;
        }
        tx.commit().await.map_err(err("batch_rows"))
    }

    async fn batch_rows(&self, generation: i64, query: &RowQuery) -> Result<Vec<BatchRow>> {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT json_group_array(json_array(bucket_start, json(dims), json(metrics))) FROM \
             (SELECT * FROM batch_rows WHERE generation = ",
        );
        qb.push_bind(generation).push(" AND");
        push_range(&mut qb, query, false);
        qb.push(")");
        let rows: Vec<(i64, Vec<Option<String>>, Metrics)> = self.fetch_packed(qb, "batch_rows").await?;
        Ok(rows
            .into_iter()
            .map(|(bucket_start, dims, Metrics(metrics))| BatchRow {
                key: ViewKey { view: query.view.clone(), granularity: query.granularity, bucket_start, dims },
                metrics,
            })
            .collect())
    }

    async fn generations(&self) -> Result<Vec<i64>> {
        let rows = sqlx::query("SELECT DISTINCT generation FROM batch_rows ORDER BY generation")
            .fetch_all(&self.pool)
            .await
            .map_err(err("batch_rows"))?;
        Ok(rows.iter().map(|r| r.get("generation")).collect())
    }

    async fn published_generations(&self) -> Result<Vec<i64>> {
        sqlx::query_scalar("SELECT generation FROM manifests ORDER BY generation")
            .fetch_all(&self.pool)
            .await
            .map_err(err("manifests"))
    }

    async fn publish_manifest(&self, fence: &Lease, manifest: &Manifest) -> Result<()> {
        let body = serde_json::to_string(manifest).expect("manifest serializes");
        let mut tx = self.fenced(fence, "manifests").await?;
        let current = current_generation(&mut tx).await?;
        if manifest.generation <= current {
            return Err(Error::StoreRefused {
                table: "manifests",
                message: format!("generation {} is not above the published generation {current}", manifest.generation),
            });
        }
        sqlx::query("INSERT INTO manifests (generation, body) VALUES (?, ?)")
            .bind(manifest.generation)
            .bind(body)
            .execute(&mut *tx)
            .await
            .map_err(err("manifests"))?;
        set_cutoffs(&mut tx, &manifest.cutoffs).await?;
        tx.commit().await.map_err(err("manifests"))
    }

    async fn current_manifest(&self) -> Result<Option<Manifest>> {
        let row = sqlx::query("SELECT body FROM manifests ORDER BY generation DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(err("manifests"))?;
        row.map(|r| {
            serde_json::from_str(r.get::<&str, _>("body"))
                .map_err(|e| Error::StoreCorrupt { table: "manifests", message: e.to_string() })
        })
        .transpose()
    }

    async fn delete_manifests_before(&self, fence: &Lease, generation: i64) -> Result<()> {
        let mut tx = self.fenced(fence, "manifests").await?;
        sqlx::query("DELETE FROM manifests WHERE generation < ?")
            .bind(generation)
            .execute(&mut *tx)
            .await
            .map_err(err("manifests"))?;
        tx.commit().await.map_err(err("manifests"))
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<Lease>> {
        let now = now_ms();
        let token: Option<i64> = sqlx::query_scalar(
            "INSERT INTO leases (name, holder, expires_at_ms, token) VALUES (?, ?, ?, 1) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms, \
             token = leases.token + 1 WHERE leases.expires_at_ms < ? RETURNING token",
        )
        .bind(name)
        .bind(holder)
        .bind(now.saturating_add(ttl.as_millis().try_into().unwrap_or(i64::MAX)))
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(err("leases"))?;
        Ok(token.map(|token| Lease { name: name.to_owned(), holder: holder.to_owned(), token }))
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE leases SET expires_at_ms = ? WHERE name = ? AND holder = ? AND token = ? AND expires_at_ms >= ?",
        )
        .bind(now.saturating_add(ttl.as_millis().try_into().unwrap_or(i64::MAX)))
        .bind(&lease.name)
        .bind(&lease.holder)
        .bind(lease.token)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(err("leases"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        sqlx::query("UPDATE leases SET expires_at_ms = 0 WHERE name = ? AND holder = ? AND token = ?")
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
