//! Every metric of the serving layer, declared once (Prometheus naming).

use metrics::{describe_counter, describe_gauge, describe_histogram};

pub const REQUESTS: &str = "http_requests_total";
pub const REQUEST_SECONDS: &str = "http_request_seconds";
pub const BATCH_CUTOFF_LAG: &str = "batch_cutoff_lag_records";

/// Registers the descriptions (idempotent).
pub fn describe() {
    describe_counter!(REQUESTS, "HTTP requests, by route and status");
    describe_histogram!(REQUEST_SECONDS, "HTTP request latency, by route");
    describe_gauge!(
        BATCH_CUTOFF_LAG,
        "Log end minus the published cutoff, by partition, as of the published manifest (records the batch view lacks)"
    );
}
