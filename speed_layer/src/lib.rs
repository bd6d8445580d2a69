//! The speed layer (DESIGN.md §4): a Kafka consumer group that aggregates records per segment and writes
//! set-semantics speed rows to the view store within about a second.
//!
//! Flow: [`consumer::run`] receives records -> [`segment::Segment`] decodes, drops repeated dedup keys within
//! the segment and aggregates every view x granularity -> dirty rows are flushed every
//! `speed.flush_interval` -> at a boundary the segment is sealed (rows flushed, seal recorded, then the
//! Kafka offset committed).

pub mod consumer;
pub mod metrics;
pub mod segment;

pub use consumer::run;

/// Result alias of the speed layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the speed layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kafka client call failed.
    #[error("kafka ({context}): {source}")]
    Kafka {
        context: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The view store or the dead-letter output failed.
    #[error(transparent)]
    Common(#[from] common::Error),
    /// Shutdown was requested while a store or Kafka call was being retried.
    #[error("shut down while retrying a store or Kafka call")]
    Cancelled,
}

impl Error {
    pub(crate) fn kafka(context: &'static str) -> impl FnOnce(rdkafka::error::KafkaError) -> Error {
        move |source| Error::Kafka { context, source }
    }
}
