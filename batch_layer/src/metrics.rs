//! Every metric of the batch layer, declared once (Prometheus naming).

use metrics::{describe_counter, describe_gauge, describe_histogram};

pub const ARCHIVED_RECORDS: &str = "archive_records_total";
pub const ARCHIVE_FILES: &str = "archive_files_total";
pub const DEAD_LETTERS: &str = "dead_letters_total";
pub const BATCH_CUTOFF_LAG: &str = "batch_cutoff_lag_records";
pub const RECORDS_WITHOUT_KEY: &str = "records_without_dedup_key_total";
pub const RECORDS_LOST: &str = "records_lost_to_retention_total";
pub const ARCHIVE_REFILLS: &str = "archive_ranges_refilled_total";
pub const BATCH_RUNS: &str = "batch_runs_total";
pub const BATCH_ROWS: &str = "batch_rows_total";
pub const BATCH_SECONDS: &str = "batch_run_seconds";
pub const BATCH_GENERATION: &str = "batch_generation";
pub const BATCH_DUPLICATES: &str = "batch_duplicates_removed";

/// Registers the descriptions (idempotent).
pub fn describe() {
    describe_counter!(ARCHIVED_RECORDS, "Records written to the Parquet archive");
    describe_counter!(ARCHIVE_FILES, "Parquet archive files written");
    describe_counter!(DEAD_LETTERS, "Records that failed to decode, by consumer (speed, archive)");
    describe_gauge!(
        BATCH_CUTOFF_LAG,
        "Log end minus the published cutoff, by partition, as of the last batch run (records the batch view lacks)"
    );
    describe_counter!(
        RECORDS_WITHOUT_KEY,
        "Records whose named dedup key was missing, null or empty, each counted as its own event, by consumer"
    );
    describe_counter!(RECORDS_LOST, "Offsets deleted by retention before the consumer read them, by consumer");
    describe_counter!(
        ARCHIVE_REFILLS,
        "Archive ranges found missing (deleted or wiped files) and read again from Kafka"
    );
    describe_counter!(BATCH_RUNS, "Batch runs, by outcome (published, skipped, failed)");
    describe_counter!(BATCH_ROWS, "Batch rows written");
    describe_histogram!(BATCH_SECONDS, "Wall time of a published batch run");
    describe_gauge!(BATCH_GENERATION, "Generation of the last published manifest");
    describe_gauge!(BATCH_DUPLICATES, "Events removed as duplicates by the last batch run");
}
