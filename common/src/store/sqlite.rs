//! SQLite backend of the view store (sqlx): the embedded default, one file in WAL mode.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{encode_dims, encode_metrics, BatchRow, Manifest, RowQuery, Seal, SpeedRow, ViewKey, ViewStore};
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
    expires_at_ms INTEGER NOT NULL
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

impl SqliteStore {
    /// Opens (creating if missing, with its parent directory) the database at `url` (`sqlite://path`).
    pub async fn open(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(err("open"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .row_buffer_size(8192);
        if let Some(parent) = options.get_filename().parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
        }
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await.map_err(err("open"))?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await.map_err(err("schema"))?;
        Ok(SqliteStore { pool })
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
}

fn push_range(qb: &mut QueryBuilder<'_, Sqlite>, query: &RowQuery) {
    qb.push(" view = ").push_bind(query.view.clone());
    qb.push(" AND granularity = ").push_bind(query.granularity.as_str());
    if let Some(from) = query.from {
        qb.push(" AND bucket_start >= ").push_bind(from);
    }
    if let Some(to) = query.to {
        qb.push(" AND bucket_start < ").push_bind(to);
    }
}

#[async_trait]
impl ViewStore for SqliteStore {
    async fn upsert_speed_rows(&self, rows: &[SpeedRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(err("speed_rows"))?;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
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
            qb.build().execute(&mut *tx).await.map_err(err("speed_rows"))?;
        }
        tx.commit().await.map_err(err("speed_rows"))
    }

    async fn speed_rows(&self, query: &RowQuery) -> Result<Vec<SpeedRow>> {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT json_group_array(json_array(bucket_start, json(dims), kafka_partition, segment_start, upto_offset, \
             json(metrics))) FROM speed_rows WHERE",
        );
        push_range(&mut qb, query);
        type Packed = (i64, Vec<Option<String>>, i32, i64, i64, Vec<i64>);
        let rows: Vec<Packed> = self.fetch_packed(qb, "speed_rows").await?;
        Ok(rows
            .into_iter()
            .map(|(bucket_start, dims, partition, segment_start, upto_offset, metrics)| SpeedRow {
                key: ViewKey { view: query.view.clone(), granularity: query.granularity, bucket_start, dims },
                partition,
                segment_start,
                upto_offset,
                metrics,
            })
            .collect())
    }

    async fn delete_speed_rows_after(&self, partition: i32, segment_start: i64, upto_offset: i64) -> Result<u64> {
        let done =
            sqlx::query("DELETE FROM speed_rows WHERE kafka_partition = ? AND segment_start = ? AND upto_offset > ?")
                .bind(partition)
                .bind(segment_start)
                .bind(upto_offset)
                .execute(&self.pool)
                .await
                .map_err(err("speed_rows"))?;
        Ok(done.rows_affected())
    }

    async fn delete_absorbed_speed_rows(&self, cutoffs: &BTreeMap<i32, i64>) -> Result<u64> {
        let mut tx = self.pool.begin().await.map_err(err("speed_rows"))?;
        let mut deleted = 0;
        for (&partition, &cutoff) in cutoffs {
            let done = sqlx::query("DELETE FROM speed_rows WHERE kafka_partition = ? AND segment_start < ?")
                .bind(partition)
                .bind(cutoff)
                .execute(&mut *tx)
                .await
                .map_err(err("speed_rows"))?;
            deleted += done.rows_affected();
        }
        tx.commit().await.map_err(err("speed_rows"))?;
        Ok(deleted)
    }

    async fn record_seal(&self, topic: &str, seal: Seal) -> Result<Seal> {
        sqlx::query("INSERT INTO seals (topic, kafka_partition, start_offset, end_offset) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING")
            .bind(topic)
            .bind(seal.partition)
            .bind(seal.start)
            .bind(seal.end)
            .execute(&self.pool)
            .await
            .map_err(err("seals"))?;
        self.seal_at(topic, seal.partition, seal.start)
            .await?
            .ok_or_else(|| Error::StoreCorrupt { table: "seals", message: "seal vanished after insert".into() })
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
        let rows = sqlx::query(
            "SELECT kafka_partition, start_offset, end_offset FROM seals WHERE topic = ? ORDER BY kafka_partition, start_offset",
        )
        .bind(topic)
        .fetch_all(&self.pool)
        .await
        .map_err(err("seals"))?;
        Ok(rows
            .iter()
            .map(|r| Seal {
                partition: r.get("kafka_partition"),
                start: r.get("start_offset"),
                end: r.get("end_offset"),
            })
            .collect())
    }

    async fn delete_generation(&self, generation: i64) -> Result<()> {
        sqlx::query("DELETE FROM batch_rows WHERE generation = ?")
            .bind(generation)
            .execute(&self.pool)
            .await
            .map_err(err("batch_rows"))?;
        Ok(())
    }

    async fn write_batch_rows(&self, generation: i64, rows: &[BatchRow]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(err("batch_rows"))?;
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
            "SELECT json_group_array(json_array(bucket_start, json(dims), json(metrics))) FROM batch_rows \
             WHERE generation = ",
        );
        qb.push_bind(generation).push(" AND");
        push_range(&mut qb, query);
        let rows: Vec<(i64, Vec<Option<String>>, Vec<i64>)> = self.fetch_packed(qb, "batch_rows").await?;
        Ok(rows
            .into_iter()
            .map(|(bucket_start, dims, metrics)| BatchRow {
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

    async fn publish_manifest(&self, manifest: &Manifest) -> Result<()> {
        let body = serde_json::to_string(manifest).expect("manifest serializes");
        sqlx::query("INSERT INTO manifests (generation, body) VALUES (?, ?)")
            .bind(manifest.generation)
            .bind(body)
            .execute(&self.pool)
            .await
            .map_err(err("manifests"))?;
        Ok(())
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

    async fn delete_manifests_before(&self, generation: i64) -> Result<()> {
        sqlx::query("DELETE FROM manifests WHERE generation < ?")
            .bind(generation)
            .execute(&self.pool)
            .await
            .map_err(err("manifests"))?;
        Ok(())
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let now = chrono::Utc::now().timestamp_millis();
        let done = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at_ms) VALUES (?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms \
             WHERE leases.expires_at_ms < ? OR leases.holder = excluded.holder",
        )
        .bind(name)
        .bind(holder)
        .bind(now + ttl.as_millis() as i64)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(err("leases"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        sqlx::query("DELETE FROM leases WHERE name = ? AND holder = ?")
            .bind(name)
            .bind(holder)
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
