//! Every metric of the serving layer, declared once (Prometheus naming).

use metrics::{describe_counter, describe_histogram};

pub const REQUESTS: &str = "http_requests_total";
pub const REQUEST_SECONDS: &str = "http_request_seconds";

/// Registers the descriptions (idempotent).
pub fn describe() {
    describe_counter!(REQUESTS, "HTTP requests, by route and status");
    describe_histogram!(REQUEST_SECONDS, "HTTP request latency, by route");
}
