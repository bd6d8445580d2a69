//! Every metric of the speed layer, declared once (Prometheus naming).

use metrics::{describe_counter, describe_histogram};

pub const RECORDS: &str = "speed_records_total";
pub const DUPLICATES: &str = "speed_duplicates_dropped_total";
pub const DEAD_LETTERS: &str = "dead_letters_total";
pub const ROWS_WRITTEN: &str = "speed_rows_written_total";
pub const SEGMENTS_SEALED: &str = "speed_segments_sealed_total";
pub const SEAL_CONFLICTS: &str = "speed_seal_conflicts_total";
pub const FLUSH_SECONDS: &str = "speed_flush_seconds";
pub const STORE_RETRIES: &str = "speed_store_retries_total";
pub const RECORDS_WITHOUT_KEY: &str = "records_without_dedup_key_total";
pub const RECORDS_LOST: &str = "records_lost_to_retention_total";
pub const SEALS_SKIPPED: &str = "speed_seals_skipped_total";
pub const ROWS_TRIMMED: &str = "speed_rows_trimmed_total";

/// Registers the descriptions (idempotent).
pub fn describe() {
    describe_counter!(RECORDS, "Kafka records consumed by the speed layer");
    describe_counter!(DUPLICATES, "Records dropped because their dedup key was already seen in the segment");
    describe_counter!(DEAD_LETTERS, "Records that failed to decode, by consumer (speed, archive)");
    describe_counter!(ROWS_WRITTEN, "Speed rows written to the view store");
    describe_counter!(SEGMENTS_SEALED, "Segments sealed (seal recorded, offset committed)");
    describe_counter!(SEAL_CONFLICTS, "Seals that found a different end already recorded");
    describe_histogram!(FLUSH_SECONDS, "Time to write one flush of speed rows");
    describe_counter!(STORE_RETRIES, "View store writes retried after a retryable error");
    describe_counter!(
        RECORDS_WITHOUT_KEY,
        "Records whose named dedup key was missing, null or empty, each counted as its own event, by consumer"
    );
    describe_counter!(RECORDS_LOST, "Offsets deleted by retention before the consumer read them, by consumer");
    describe_counter!(
        SEALS_SKIPPED,
        "Recorded seals whose replay found records deleted by retention: kept as their recorder left them, not finalized"
    );
    describe_counter!(
        ROWS_TRIMMED,
        "Rows of skipped seals that counted records past the seal end, deleted with the seal's own records they held"
    );
}
