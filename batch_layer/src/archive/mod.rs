//! The archive: Parquet files of one partition each, named by the offsets they cover (DESIGN.md §4).

pub mod archiver;
pub mod files;
pub mod parquet_file;

pub use files::{list, ArchiveFile};
