//! `lambda batch schedule`: runs the batch job on a cron expression (cron crate, UTC) until shutdown.

use std::sync::Arc;

use chrono::Utc;
use common::config::{parse_cron, Config};
use common::store::ViewStore;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::job::{run_once, RunOptions};
use crate::Result;

/// Runs [`run_once`] at every time of `cron_expr` (UTC) until `shutdown`; a failed run is logged and the
/// schedule goes on. A run in progress when shutdown is requested finishes first.
pub async fn run(
    config: Config,
    store: Arc<dyn ViewStore>,
    cron_expr: &str,
    shutdown: CancellationToken,
) -> Result<()> {
    let schedule =
        parse_cron(cron_expr).map_err(|message| common::Error::ConfigInvalid { key: "batch.cron".into(), message })?;
    info!(cron = cron_expr, "batch schedule started");
    for next in schedule.upcoming(Utc) {
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        match run_once(&config, &store, &RunOptions::default()).await {
            Ok(Some(m)) => info!(generation = m.generation, "scheduled batch run published"),
            Ok(None) => {}
            Err(e) => error!(error = %e, "scheduled batch run failed; the previous generation stays"),
        }
    }
    info!("batch schedule stopped");
    Ok(())
}
