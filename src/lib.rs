//! The `lambda` binary's library: the pieces of the CLI that are not a layer — producing events to Kafka
//! ([`produce`]), generating synthetic e-commerce events ([`generate`]) and the all-in-one demo ([`demo`]).
//! `src/main.rs` only parses arguments and calls into these and the layer crates.

pub mod demo;
pub mod generate;
pub mod produce;
