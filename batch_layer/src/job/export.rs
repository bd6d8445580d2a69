//! `lambda batch export`: the batch view computed exactly as a run computes it (DESIGN.md §5 steps 2-3),
//! written as Parquet instead of published. One file per view and granularity,
//! `<out>/<view>_<granularity>.parquet`, with columns `bucket_start` (Int64, Unix seconds UTC), one Utf8
//! column per dimension (null for a missing or empty value) and one column per metric (`count` Int64;
//! `sum_<field>` Decimal(38, 6) in the field's unit, exact), rows in no particular order.
//!
//! Used to inspect a generation before it is published, to hand exact aggregates to other tools, and by
//! the batch benchmark (`bench/batch`) to compare engines on identical output.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::Path;
use std::time::Instant;

use common::config::Config;
use common::schema::Decoder;
use common::view::ViewSet;
use polars::prelude::ParquetWriter;
use serde::Serialize;

use crate::archive;
use crate::job::compute;
use crate::Result;

/// What an export computed and wrote, with the time each phase took.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub cutoffs: BTreeMap<i32, i64>,
    /// `<view>/<granularity>` -> rows written.
    pub rows: BTreeMap<String, u64>,
    pub records_scanned: u64,
    pub repeated_records_removed: u64,
    pub duplicates_removed: u64,
    /// Scan, dedup and aggregation (the part a run shares), seconds.
    pub compute_seconds: f64,
    /// Writing the Parquet files, seconds.
    pub write_seconds: f64,
}

/// Computes the batch view of `config`'s archive in `[starts[p], cutoffs[p])` per partition (no lower bound
/// for a partition missing from `starts`; partitions without a cutoff are left out) and writes it under
/// `out` (created if missing).
///
/// Errors: the archive cannot be listed or read, Polars fails, or a file cannot be written.
pub fn export(
    config: &Config,
    starts: &BTreeMap<i32, i64>,
    cutoffs: &BTreeMap<i32, i64>,
    out: &Path,
) -> Result<ExportReport> {
    let views = ViewSet::new(config);
    let fields = Decoder::new(config).fields().to_vec();
    let files = archive::list(&config.archive.root, &config.kafka.topic)?;
    let clock = Instant::now();
    let computed = compute::compute(&views, &config.schema.event_time, &fields, &files, starts, cutoffs, |_, _| {})?;
    let compute_seconds = clock.elapsed().as_secs_f64();

    let clock = Instant::now();
    fs::create_dir_all(out).map_err(|e| common::Error::Io { path: out.to_owned(), source: e })?;
    let mut rows = BTreeMap::new();
    for table in &computed.tables {
        let path = out.join(format!("{}_{}.parquet", table.view, table.granularity));
        let mut frame = table.named(&views)?;
        let file = File::create(&path).map_err(|e| common::Error::Io { path: path.clone(), source: e })?;
        ParquetWriter::new(file).finish(&mut frame)?;
        rows.insert(format!("{}/{}", table.view, table.granularity), table.height() as u64);
    }
    Ok(ExportReport {
        cutoffs: cutoffs.clone(),
        rows,
        records_scanned: computed.records_scanned,
        repeated_records_removed: computed.repeated_records_removed,
        duplicates_removed: computed.duplicates_removed,
        compute_seconds,
        write_seconds: clock.elapsed().as_secs_f64(),
    })
}
