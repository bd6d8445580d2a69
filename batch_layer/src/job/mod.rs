//! A batch run (DESIGN.md §5): cutoffs, Polars recompute, a new generation, the manifest switch, cleanup.
//!
//! Runs never overlap: a run takes the `batch` lease in the store, renews it every third of
//! `batch.lease_ttl` while it works, and every write it makes (generation number, rows, manifest, deletes)
//! is fenced by the lease's token, atomically with the write. A run that stalls past its ttl (a GC pause, a
//! SIGSTOP, a slow disk) and is taken over can therefore neither publish nor delete anything: its next write
//! fails with "lost the batch lease", and it stops. Generation numbers come from a counter in the store and
//! are never reused; a published generation is never rewritten and the current one never deleted. A run is
//! idempotent: running it twice gives the same view.

pub mod compute;
pub mod export;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::config::Config;
use common::schema::Decoder;
use common::store::{CutoffProgress, Lease, Manifest, ViewStore};
use common::view::ViewSet;
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::archive;
use crate::metrics as m;
use crate::{cutoff, Error, Result};

/// Name of the lease that keeps batch runs from overlapping.
pub const LEASE: &str = "batch";

/// Options of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Show a progress bar on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
}

/// Runs the batch job once. Returns the published manifest, or `None` when another run holds the lease.
///
/// Errors: the store or archive cannot be read or written, Polars fails, the archive lost offsets the
/// published generation counted ([`Error::ArchiveLost`]), or the run lost its lease
/// ([`common::Error::Fenced`]); the previous generation then stays in place.
pub async fn run_once(config: &Config, store: &Arc<dyn ViewStore>, options: &RunOptions) -> Result<Option<Manifest>> {
    m::describe();
    let holder = format!("pid{}-{}", std::process::id(), Utc::now().timestamp_nanos_opt().unwrap_or_default());
    let ttl = config.batch.lease_ttl;
    let Some(lease) = store.acquire_lease(LEASE, &holder, ttl).await? else {
        info!("another batch run holds the lease; skipping");
        metrics::counter!(m::BATCH_RUNS, "outcome" => "skipped").increment(1);
        return Ok(None);
    };
    let lost = CancellationToken::new();
    let done = CancellationToken::new();
    let renewer = tokio::spawn(renew(store.clone(), lease.clone(), ttl, lost.clone(), done.clone()));
    let result = run_leased(config, store, options, &lease, &lost).await;
    done.cancel();
    let _ = renewer.await;
    if !lost.is_cancelled() {
        if let Err(e) = store.release_lease(&lease).await {
            warn!(error = %e, "cannot release the batch lease; it expires after batch.lease_ttl");
        }
    }
    let outcome = match &result {
        Ok(_) => "published",
        Err(Error::Common(common::Error::Fenced { .. })) => "lost_lease",
        Err(_) => "failed",
    };
    metrics::counter!(m::BATCH_RUNS, "outcome" => outcome).increment(1);
    result.map(Some)
}

/// Renews `lease` every third of `ttl` until `done`; cancels `lost` when a renewal finds it gone. A store
/// error is retried at the next tick (if the lease expires meanwhile, that renewal reports it lost).
async fn renew(
    store: Arc<dyn ViewStore>,
    lease: Lease,
    ttl: Duration,
    lost: CancellationToken,
    done: CancellationToken,
) {
    let every = (ttl / 3).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match store.renew_lease(&lease, ttl).await {
            Ok(true) => {}
            Ok(false) => {
                warn!(token = lease.token, "the batch lease was lost (taken over or expired); this run stops");
                lost.cancel();
                return;
            }
            Err(e) => warn!(error = %e, "cannot renew the batch lease; retrying"),
        }
    }
}

/// Fails with the lease error once the renewer found the lease gone (the store would refuse the next write
/// anyway; this stops the run before more work).
fn check_lease(lease: &Lease, lost: &CancellationToken) -> Result<()> {
    if lost.is_cancelled() {
        return Err(Error::Common(common::Error::Fenced {
            name: lease.name.clone(),
            holder: lease.holder.clone(),
            token: lease.token,
        }));
    }
    Ok(())
}

/// The cutoffs a run would use now (DESIGN.md §5 step 1), from the store's seals past the published
/// cutoffs and the archive's files, with notes on whatever held one back (each also logged as a warning).
pub async fn cutoffs(config: &Config, store: &Arc<dyn ViewStore>) -> Result<cutoff::Plan> {
    let previous = store.current_manifest().await?;
    Ok(plan(config, store, previous.as_ref()).await?.0)
}

/// The cutoff plan and the archive listing it was made from (the run computes from that same listing).
async fn plan(
    config: &Config,
    store: &Arc<dyn ViewStore>,
    previous: Option<&Manifest>,
) -> Result<(cutoff::Plan, BTreeMap<i32, Vec<archive::ArchiveFile>>)> {
    let empty = BTreeMap::new();
    let (published, starts) = previous.map_or((&empty, &empty), |m| (&m.cutoffs, &m.archive_starts));
    let seals = store.seals_from(&config.kafka.topic, published).await?;
    let files = archive::list(&config.archive.root, &config.kafka.topic)?;
    let plan = cutoff::compute(&seals, &files, published, starts);
    for note in &plan.notes {
        warn!(%note, "cutoff held back");
    }
    Ok((plan, files))
}

/// Each partition's high watermark, best effort: empty (with a warning) when Kafka cannot be reached.
async fn log_ends(config: &Config) -> BTreeMap<i32, i64> {
    let kafka = config.kafka.clone();
    let read = tokio::task::spawn_blocking(move || common::kafka::watermarks(&kafka, Duration::from_secs(5))).await;
    match read {
        Ok(Ok(marks)) => marks.into_iter().map(|(p, _, high)| (p, high)).collect(),
        Ok(Err(e)) => {
            warn!(error = %e, "cannot read the log ends from Kafka; the manifest records none");
            BTreeMap::new()
        }
        Err(e) => {
            warn!(error = %e, "the log-end task failed");
            BTreeMap::new()
        }
    }
}

async fn run_leased(
    config: &Config,
    store: &Arc<dyn ViewStore>,
    options: &RunOptions,
    lease: &Lease,
    lost: &CancellationToken,
) -> Result<Manifest> {
    let started_at = Utc::now();
    let clock = Instant::now();
    let topic = &config.kafka.topic;
    let previous = store.current_manifest().await?;
    let generation = store.allocate_generation(lease).await?;

    // 1. cutoffs
    let log_ends = log_ends(config).await;
    let (plan, files) = plan(config, store, previous.as_ref()).await?;
    if let Some(&(partition, from, to)) = plan.lost.first() {
        let published = previous.as_ref().and_then(|m| m.cutoffs.get(&partition).copied()).unwrap_or_default();
        return Err(Error::ArchiveLost { partition, from, to, published });
    }
    if let Some(prev) = &previous {
        for (&partition, &published) in &prev.cutoffs {
            let new = plan.cutoffs.get(&partition).copied().unwrap_or(0);
            if new < published {
                return Err(Error::CutoffRegressed { partition, new, published });
            }
        }
    }
    let cutoffs = plan.cutoffs.clone();
    info!(generation, token = lease.token, ?cutoffs, "batch run started");
    check_lease(lease, lost)?;

    // 2-3. scan, dedup, aggregate (Polars is CPU-bound: keep it off the async workers), from the listing
    // the cutoffs were planned on: a file that vanished since fails the read instead of going missing
    let views = ViewSet::new(config);
    let steps: u64 = views.views.iter().map(|v| v.granularities.len() as u64).sum();
    let bar = if options.progress { ProgressBar::new(steps * 2) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} batch generation {prefix} [{bar:30}] {pos}/{len} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix(generation.to_string());
    bar.set_message("scanning archive");
    let computed = {
        let (views, files, starts, cutoffs, bar) =
            (views.clone(), files.clone(), plan.archive_starts.clone(), cutoffs.clone(), bar.clone());
        let event_time = config.schema.event_time.clone();
        let fields = Decoder::new(config).fields().to_vec();
        tokio::task::spawn_blocking(move || {
            compute::compute(&views, &event_time, &fields, &files, &starts, &cutoffs, |view, g| {
                bar.set_message(format!("aggregating {view}/{g}"));
                bar.inc(1);
            })
        })
        .await
        .expect("polars task does not panic")?
    };
    check_lease(lease, lost)?;

    // 3. the new generation: a number nobody used before, so nothing of it exists yet
    let mut rows = BTreeMap::new();
    for table in &computed.tables {
        let (view, g) = (&table.view, table.granularity);
        bar.set_message(format!("writing {view}/{g}"));
        let batch_rows = table.rows(&views).map_err(Error::Polars)?;
        store.write_batch_rows(lease, generation, &batch_rows).await?;
        metrics::counter!(m::BATCH_ROWS).increment(batch_rows.len() as u64);
        rows.insert(format!("{view}/{g}"), batch_rows.len() as u64);
        bar.inc(1);
    }

    // 4. the manifest: one write, the switch
    let now = Utc::now();
    let cutoff_progress = cutoffs
        .iter()
        .map(|(&partition, &cutoff)| {
            let unchanged = previous.as_ref().filter(|p| p.cutoffs.get(&partition) == Some(&cutoff));
            let progress =
                unchanged.and_then(|p| p.cutoff_progress.get(&partition).copied()).unwrap_or(CutoffProgress {
                    moved_at: now,
                    log_end_then: log_ends.get(&partition).copied().unwrap_or(-1),
                });
            (partition, progress)
        })
        .collect();
    let manifest = Manifest {
        generation,
        cutoffs: cutoffs.clone(),
        archive_starts: plan.archive_starts.clone(),
        rows,
        records_scanned: computed.records_scanned,
        repeated_records_removed: computed.repeated_records_removed,
        duplicates_removed: computed.duplicates_removed,
        records_without_dedup_key: computed.records_without_dedup_key,
        cutoff_notes: plan.notes.clone(),
        log_ends: log_ends.clone(),
        cutoff_progress,
        started_at,
        finished_at: Utc::now(),
    };
    store.publish_manifest(lease, &manifest).await?;
    bar.finish_and_clear();

    // 5. cleanup: generations past keep_generations (and rows of runs that never published), then speed
    // rows and seals absorbed by the *previous* manifest, so a query that read it a moment ago still finds
    // every row it needs
    let published = store.published_generations().await?;
    let keep: Vec<i64> = published.iter().rev().take(config.batch.keep_generations as usize).copied().collect();
    let oldest_kept = keep.iter().copied().min().unwrap_or(generation);
    for old in store.generations().await?.into_iter().filter(|g| *g < generation && !keep.contains(g)) {
        store.delete_generation(lease, old).await?;
    }
    store.delete_manifests_before(lease, oldest_kept).await?;
    let (absorbed_rows, absorbed_seals) = match &previous {
        Some(prev) => store.delete_absorbed(lease, topic, &prev.cutoffs).await?,
        None => (0, 0),
    };
    metrics::gauge!(m::BATCH_GENERATION).set(generation as f64);
    metrics::gauge!(m::BATCH_DUPLICATES).set(manifest.duplicates_removed as f64);
    record_lag(&manifest);
    metrics::histogram!(m::BATCH_SECONDS).record(clock.elapsed().as_secs_f64());
    info!(
        generation,
        records = manifest.records_scanned,
        duplicates_removed = manifest.duplicates_removed,
        speed_rows_deleted = absorbed_rows,
        seals_deleted = absorbed_seals,
        seconds = clock.elapsed().as_secs_f64(),
        "batch generation published"
    );
    Ok(manifest)
}

/// Sets `batch_cutoff_lag_records{partition}` (log end minus cutoff) from a manifest.
pub fn record_lag(manifest: &Manifest) {
    for (&partition, &end) in &manifest.log_ends {
        let cutoff = manifest.cutoffs.get(&partition).copied().unwrap_or(0);
        metrics::gauge!(m::BATCH_CUTOFF_LAG, "partition" => partition.to_string()).set((end - cutoff).max(0) as f64);
    }
}
