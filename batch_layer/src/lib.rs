//! The batch layer (DESIGN.md §4-5): the archiver, which writes every Kafka record to the Parquet master
//! dataset, and the batch job, which recomputes exact, deduplicated aggregates from it with Polars and
//! publishes them as a new generation behind a manifest.
//!
//! Flow: Kafka -> [`archive::archiver::run`] -> `<root>/<topic>/partition=<p>/<first>-<next>.parquet`;
//! seals (speed layer) + archive -> [`cutoff::compute`] -> [`job::run_once`] -> batch rows + manifest.

pub mod archive;
pub mod cutoff;
pub mod job;
pub mod metrics;
pub mod schedule;

/// Result alias of the batch layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the archiver and the batch job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka ({context}): {source}")]
    Kafka {
        context: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error(transparent)]
    Common(#[from] common::Error),
    #[error("parquet file {path}: {source}")]
    Parquet {
        path: std::path::PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("polars: {0}")]
    Polars(#[from] polars::error::PolarsError),
    /// The archive no longer holds offsets the published generation counted (files deleted or the archive
    /// wiped); publishing would drop those records.
    #[error("partition {partition}: the archive lacks offsets {from}..{to}, below the published cutoff {published}; refusing to publish (the archiver reads lost ranges again from Kafka while retention holds them; otherwise restore the files)")]
    ArchiveLost { partition: i32, from: i64, to: i64, published: i64 },
    /// A new cutoff is below the published one: the archive lost files the previous generation used.
    #[error("partition {partition}: cutoff {new} is below the published cutoff {published}; refusing to publish (was the archive truncated?)")]
    CutoffRegressed { partition: i32, new: i64, published: i64 },
    #[error("shut down while retrying")]
    Cancelled,
}

impl Error {
    pub(crate) fn kafka(context: &'static str) -> impl FnOnce(rdkafka::error::KafkaError) -> Error {
        move |source| Error::Kafka { context, source }
    }
}
