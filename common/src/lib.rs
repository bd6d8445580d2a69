//! Everything the three layers share: the event schema and its decoder, the view definitions and
//! bucketing, the configuration, the view-store trait with its backends, the dead-letter output,
//! shutdown and telemetry (DESIGN.md §2).
//!
//! Flow: Kafka record -> [`schema::Decoder`] -> [`schema::Event`] -> per-view keys
//! ([`view::ViewSet::keys_of`]) -> speed rows / batch rows in a [`store::ViewStore`].

pub mod config;
pub mod dead_letter;
pub mod decimal;
pub mod error;
pub mod kafka;
pub mod schema;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod testing;
pub mod view;

pub use config::Config;
pub use error::{Error, Result};
