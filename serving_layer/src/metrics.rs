//! Every metric of the serving layer, declared once (Prometheus naming).

use metrics::{describe_counter, describe_gauge, describe_histogram};

pub const REQUESTS: &str = "http_requests_total";
pub const REQUEST_SECONDS: &str = "http_request_seconds";
pub const BATCH_CUTOFF_LAG: &str = "batch_cutoff_lag_records";
pub const MIRROR_PASSES: &str = "bi_mirror_passes_total";
pub const MIRROR_GENERATION: &str = "bi_mirror_generation";
pub const MIRROR_ROWS: &str = "bi_mirror_speed_rows_changed_total";
pub const MIRROR_LAST_SUCCESS: &str = "bi_mirror_last_success_timestamp_seconds";

/// Registers the descriptions (idempotent).
pub fn describe() {
    describe_counter!(REQUESTS, "HTTP requests, by route and status");
    describe_histogram!(REQUEST_SECONDS, "HTTP request latency, by route");
    describe_counter!(MIRROR_PASSES, "SQL mirror passes, by result (ok, skipped, error)");
    describe_gauge!(MIRROR_GENERATION, "Generation the SQL mirror has published");
    describe_counter!(MIRROR_ROWS, "Speed rows the SQL mirror wrote or deleted");
    describe_gauge!(MIRROR_LAST_SUCCESS, "Unix time of the SQL mirror's last complete pass");
    describe_gauge!(
        BATCH_CUTOFF_LAG,
        "Log end minus the published cutoff, by partition, as of the published manifest (records the batch view lacks)"
    );
}
