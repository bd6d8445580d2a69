//! The SQL mirror for BI tools (issue 10, item 4): when the view store is not PostgreSQL (SQLite today,
//! ScyllaDB later), a task copies the published manifest, its generation's batch rows and the speed rows
//! into a PostgreSQL database (`[bi] url`) every `bi.interval`, so SQL views there (and Superset on them)
//! merge the same numbers as the HTTP API.
//!
//! A pass, fenced by the mirror's own lease in the mirror database (one mirror at a time):
//! 1. reads the source's current manifest; if the mirror has an older one, copies that generation's batch
//!    rows (view by view, invisible until published; leftovers of a pass that died are deleted first);
//! 2. reads every speed row of the source, then the manifest again: if a batch run published in between,
//!    the pass stops and the next one starts over (two publishes could have cleaned up rows the first
//!    manifest needs);
//! 3. diffs those speed rows against the mirror's and applies, in **one transaction**, the manifest
//!    publish, the changed and vanished speed rows and the cleanup of old generations. Readers of the
//!    mirror see a whole pass or none of it, so the merge rule of DESIGN.md §5 holds there at every instant.
//!
//! Incremental: a generation's batch rows are copied once; speed rows are written only when their
//! `upto_offset` or values changed. Idempotent: a pass repeated after a crash at any point converges.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::config::Config;
use common::store::{Lease, MirrorChanges, PostgresStore, RowQuery, SpeedRow, ViewKey, ViewStore};
use common::Result;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics as m;

/// Lease name of the mirror in the mirror database.
pub const LEASE: &str = "bi-mirror";

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// The generation published in the mirror by this pass.
    pub published: Option<i64>,
    pub batch_rows_copied: u64,
    pub speed_rows_written: u64,
    pub speed_rows_deleted: u64,
    /// The pass stopped without changes: another mirror holds the lease, or a batch run published while
    /// it read.
    pub skipped: Option<&'static str>,
}

/// The mirror: a source store, the PostgreSQL mirror and the lease held between passes.
#[derive(Debug)]
pub struct Mirror {
    config: Config,
    source: Arc<dyn ViewStore>,
    target: PostgresStore,
    holder: String,
    lease: Option<Lease>,
}

impl Mirror {
    /// Connects to `bi.url` and brings its schema up to date (the store's PostgreSQL migrations).
    pub async fn open(config: Config, source: Arc<dyn ViewStore>) -> Result<Self> {
        let target = PostgresStore::open(&config.bi.url, 4).await?;
        let holder = format!("mirror-pid{}-{}", std::process::id(), chrono::Utc::now().timestamp_micros());
        Ok(Mirror { config, source, target, holder, lease: None })
    }

    /// The mirror database.
    pub fn target(&self) -> &PostgresStore {
        &self.target
    }

    fn ttl(&self) -> Duration {
        (self.config.bi.interval * 3).max(Duration::from_secs(30))
    }

    /// Every (view, granularity) of the configuration.
    fn queries(&self) -> Vec<RowQuery> {
        let mut queries = Vec::new();
        for view in &self.config.views {
            for &granularity in &view.granularities {
                queries.push(RowQuery::all(&view.name, granularity));
            }
        }
        queries
    }

    /// Runs one pass (module docs).
    pub async fn pass(&mut self) -> Result<PassReport> {
        let ttl = self.ttl();
        let lease = match self.lease.take() {
            Some(lease) if self.target.renew_lease(&lease, ttl).await? => lease,
            _ => match self.target.acquire_lease(LEASE, &self.holder, ttl).await? {
                Some(lease) => lease,
                None => {
                    return Ok(PassReport { skipped: Some("another mirror holds the lease"), ..Default::default() })
                }
            },
        };
        self.lease = Some(lease.clone());
        let mut report = PassReport::default();

        // 1. the manifest, and its generation's batch rows when the mirror lacks them
        let manifest = self.source.current_manifest().await?;
        let mirrored = self.target.current_manifest().await?.map(|m| m.generation);
        let publish = match &manifest {
            Some(m) if mirrored.is_none_or(|g| g < m.generation) => {
                if self.target.generations().await?.contains(&m.generation) {
                    self.target.delete_generation(&lease, m.generation).await?; // a pass that died midway
                }
                for query in self.queries() {
                    let rows = self.source.batch_rows(m.generation, &query).await?;
                    report.batch_rows_copied += rows.len() as u64;
                    self.target.write_batch_rows(&lease, m.generation, &rows).await?;
                }
                Some(m)
            }
            Some(m) if mirrored.is_some_and(|g| g > m.generation) => {
                warn!(source = m.generation, mirror = ?mirrored, "the mirror holds a newer generation than the store");
                None
            }
            _ => None,
        };

        // 2. the speed rows, under an unchanged manifest
        let mut source_rows: Vec<SpeedRow> = Vec::new();
        let mut mirror_rows: Vec<SpeedRow> = Vec::new();
        for query in self.queries() {
            source_rows.extend(self.source.speed_rows(&query).await?);
        }
        let again = self.source.current_manifest().await?.map(|m| m.generation);
        if again != manifest.as_ref().map(|m| m.generation) {
            report.skipped = Some("a batch run published while the pass read; the next pass starts over");
            return Ok(report);
        }
        for query in self.queries() {
            mirror_rows.extend(self.target.speed_rows(&query).await?);
        }

        // 3. the diff, applied in one transaction
        type Cell<'a> = (&'a ViewKey, i32, i64);
        let in_mirror: HashMap<Cell, &SpeedRow> =
            mirror_rows.iter().map(|r| ((&r.key, r.partition, r.segment_start), r)).collect();
        let in_source: HashMap<Cell, &SpeedRow> =
            source_rows.iter().map(|r| ((&r.key, r.partition, r.segment_start), r)).collect();
        let upsert: Vec<&SpeedRow> = source_rows
            .iter()
            .filter(|r| in_mirror.get(&(&r.key, r.partition, r.segment_start)).is_none_or(|old| *old != *r))
            .collect();
        let delete: Vec<&SpeedRow> =
            mirror_rows.iter().filter(|r| !in_source.contains_key(&(&r.key, r.partition, r.segment_start))).collect();
        let changes =
            MirrorChanges { publish, upsert, delete, keep_generations: self.config.batch.keep_generations as usize };
        let applied = self.target.apply_mirror(&lease, &changes).await?;
        report.published = applied.published;
        report.speed_rows_written = applied.speed_rows_written;
        report.speed_rows_deleted = applied.speed_rows_deleted;
        Ok(report)
    }

    /// Releases the mirror's lease (at shutdown), so another mirror can take over at once.
    pub async fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            let _ = self.target.release_lease(&lease).await;
        }
    }
}

/// Runs mirror passes every `bi.interval` until `shutdown`. A failed pass is logged and counted
/// (`bi_mirror_passes_total{result="error"}`) and the next one retries; only opening the mirror fails the
/// task.
pub async fn run(config: Config, source: Arc<dyn ViewStore>, shutdown: CancellationToken) -> Result<()> {
    m::describe();
    let interval = config.bi.interval;
    let mut mirror = Mirror::open(config, source).await?;
    info!(url = %common::store::redact(&mirror.config.bi.url), ?interval, "SQL mirror running");
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        match mirror.pass().await {
            Ok(report) => {
                let result = if report.skipped.is_some() { "skipped" } else { "ok" };
                metrics::counter!(m::MIRROR_PASSES, "result" => result).increment(1);
                metrics::counter!(m::MIRROR_ROWS).increment(report.speed_rows_written + report.speed_rows_deleted);
                if let Some(generation) = report.published {
                    metrics::gauge!(m::MIRROR_GENERATION).set(generation as f64);
                    info!(generation, batch_rows = report.batch_rows_copied, "mirror published a generation");
                }
                if report.skipped.is_none() {
                    metrics::gauge!(m::MIRROR_LAST_SUCCESS).set(chrono::Utc::now().timestamp() as f64);
                }
                debug!(?report, "mirror pass");
            }
            Err(e) => {
                metrics::counter!(m::MIRROR_PASSES, "result" => "error").increment(1);
                warn!(error = %e, "mirror pass failed; the next one retries");
            }
        }
    }
    mirror.release().await;
    Ok(())
}
