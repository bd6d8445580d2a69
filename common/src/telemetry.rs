//! Logging (tracing) and the Prometheus recorder every layer's metrics go to.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the process-wide tracing subscriber (stderr; `RUST_LOG`-style `filter`, e.g. `info,rdkafka=warn`).
/// Colours only when stderr is a terminal, so log files and collectors get plain `key=value` text.
/// Safe to call more than once: later calls do nothing.
pub fn init_tracing(filter: &str) {
    use std::io::IsTerminal;
    let mut filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // PostgreSQL NOTICEs (`relation ... already exists, skipping` from idempotent DDL) are not news
    if let Ok(quiet) = "sqlx::postgres::notice=warn".parse() {
        filter = filter.add_directive(quiet);
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// The process-wide Prometheus recorder, installed on first use; `/metrics` renders it.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a global metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}
