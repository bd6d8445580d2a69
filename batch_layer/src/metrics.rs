//! Every metric of the batch layer, declared once (Prometheus naming).

use metrics::{describe_counter, describe_gauge, describe_histogram};

pub const ARCHIVED_RECORDS: &str = "archive_records_total";
pub const ARCHIVE_FILES: &str = "archive_files_total";
pub const DEAD_LETTERS: &str = "dead_letters_total";
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
    describe_counter!(BATCH_RUNS, "Batch runs, by outcome (published, skipped, failed)");
    describe_counter!(BATCH_ROWS, "Batch rows written");
    describe_histogram!(BATCH_SECONDS, "Wall time of a published batch run");
    describe_gauge!(BATCH_GENERATION, "Generation of the last published manifest");
    describe_gauge!(BATCH_DUPLICATES, "Events removed as duplicates by the last batch run");
}
