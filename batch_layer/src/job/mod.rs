//! A batch run (DESIGN.md §5): cutoffs, Polars recompute, a new generation, the manifest switch, cleanup.
//! Runs never overlap (a lease in the store) and a run is idempotent.

pub mod compute;
pub mod export;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use common::config::Config;
use common::schema::Decoder;
use common::store::{Manifest, ViewStore};
use common::view::ViewSet;
use indicatif::{ProgressBar, ProgressStyle};
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
/// Errors: the store or archive cannot be read or written, Polars fails, or a cutoff would move below the
/// published one ([`Error::CutoffRegressed`]); the previous generation then stays in place.
pub async fn run_once(config: &Config, store: &Arc<dyn ViewStore>, options: &RunOptions) -> Result<Option<Manifest>> {
    m::describe();
    let holder = format!("{}-{}", std::process::id(), Utc::now().timestamp_nanos_opt().unwrap_or_default());
    if !store.acquire_lease(LEASE, &holder, config.batch.lease_ttl).await? {
        info!("another batch run holds the lease; skipping");
        metrics::counter!(m::BATCH_RUNS, "outcome" => "skipped").increment(1);
        return Ok(None);
    }
    let result = run_leased(config, store, options).await;
    if let Err(e) = store.release_lease(LEASE, &holder).await {
        warn!(error = %e, "cannot release the batch lease; it expires after batch.lease_ttl");
    }
    let outcome = if result.is_ok() { "published" } else { "failed" };
    metrics::counter!(m::BATCH_RUNS, "outcome" => outcome).increment(1);
    result.map(Some)
}

/// The cutoffs a run would use now (DESIGN.md §5 step 1), from the store's seals and the archive's files,
/// with notes on whatever held one back (each also logged as a warning).
pub async fn cutoffs(config: &Config, store: &Arc<dyn ViewStore>) -> Result<(BTreeMap<i32, i64>, Vec<String>)> {
    let seals = store.seals(&config.kafka.topic).await?;
    let files = archive::list(&config.archive.root, &config.kafka.topic)?;
    let (cutoffs, notes) = cutoff::compute(&seals, &files);
    for note in &notes {
        warn!(%note, "cutoff held back");
    }
    Ok((cutoffs, notes))
}

async fn run_leased(config: &Config, store: &Arc<dyn ViewStore>, options: &RunOptions) -> Result<Manifest> {
    let started_at = Utc::now();
    let clock = Instant::now();
    let topic = &config.kafka.topic;
    let previous = store.current_manifest().await?;

    // 1. cutoffs
    let (cutoffs, notes) = cutoffs(config, store).await?;
    let files = archive::list(&config.archive.root, topic)?;
    if let Some(prev) = &previous {
        for (&partition, &published) in &prev.cutoffs {
            let new = cutoffs.get(&partition).copied().unwrap_or(0);
            if new < published {
                return Err(Error::CutoffRegressed { partition, new, published });
            }
        }
    }
    let generation = previous.as_ref().map_or(1, |m| m.generation + 1);
    info!(generation, ?cutoffs, "batch run started");

    // 2-3. scan, dedup, aggregate (Polars is CPU-bound: keep it off the async workers)
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
        let (views, files, cutoffs, bar) = (views.clone(), files.clone(), cutoffs.clone(), bar.clone());
        let event_time = config.schema.event_time.clone();
        let fields = Decoder::new(config).fields().to_vec();
        tokio::task::spawn_blocking(move || {
            compute::compute(&views, &event_time, &fields, &files, &cutoffs, |view, g| {
                bar.set_message(format!("aggregating {view}/{g}"));
                bar.inc(1);
            })
        })
        .await
        .expect("polars task does not panic")?
    };

    // 3. the new generation (rows of a crashed attempt at the same number are cleared first)
    store.delete_generation(generation).await?;
    let mut rows = BTreeMap::new();
    for table in &computed.tables {
        let (view, g) = (&table.view, table.granularity);
        bar.set_message(format!("writing {view}/{g}"));
        let batch_rows = table.rows(&views).map_err(Error::Polars)?;
        store.write_batch_rows(generation, &batch_rows).await?;
        metrics::counter!(m::BATCH_ROWS).increment(batch_rows.len() as u64);
        rows.insert(format!("{view}/{g}"), batch_rows.len() as u64);
        bar.inc(1);
    }

    // 4. the manifest: one write, the switch
    let manifest = Manifest {
        generation,
        cutoffs: cutoffs.clone(),
        rows,
        records_scanned: computed.records_scanned,
        repeated_records_removed: computed.repeated_records_removed,
        duplicates_removed: computed.duplicates_removed,
        cutoff_notes: notes,
        started_at,
        finished_at: Utc::now(),
    };
    store.publish_manifest(&manifest).await?;
    bar.finish_and_clear();

    // 5. cleanup: generations past keep_generations, speed rows absorbed by the *previous* manifest
    let keep_from = generation - i64::from(config.batch.keep_generations) + 1;
    for old in store.generations().await?.into_iter().filter(|&g| g < keep_from) {
        store.delete_generation(old).await?;
    }
    store.delete_manifests_before(keep_from).await?;
    let absorbed = match &previous {
        Some(prev) => store.delete_absorbed_speed_rows(&prev.cutoffs).await?,
        None => 0,
    };
    metrics::gauge!(m::BATCH_GENERATION).set(generation as f64);
    metrics::gauge!(m::BATCH_DUPLICATES).set(manifest.duplicates_removed as f64);
    metrics::histogram!(m::BATCH_SECONDS).record(clock.elapsed().as_secs_f64());
    info!(
        generation,
        records = manifest.records_scanned,
        duplicates_removed = manifest.duplicates_removed,
        speed_rows_deleted = absorbed,
        seconds = clock.elapsed().as_secs_f64(),
        "batch generation published"
    );
    Ok(manifest)
}
