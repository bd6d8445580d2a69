//! `lambda batch export`: the batch view computed exactly as a run computes it (DESIGN.md §5 steps 2-3),
//! written as Parquet instead of published. One file per view and granularity,
//! `<out>/<view>_<granularity>.parquet`, with columns `bucket_start` (Int64, Unix seconds UTC), one Utf8
//! column per dimension (null for a missing or empty value) and one Int64 column per metric (`count`;
//! `sum_<field>` in micro-units, 1e-6 of the field's unit), rows in (bucket, dimensions) order.
//!
//! Used to inspect a generation before it is published, to hand exact aggregates to other tools, and by
//! the batch benchmark (`bench/batch`) to compare engines on identical output.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::config::Config;
use common::schema::Decoder;
use common::store::BatchRow;
use common::view::ViewSet;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::Serialize;

use crate::archive;
use crate::job::compute;
use crate::{Error, Result};

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

/// Computes the batch view of `config`'s archive below `cutoffs` (per partition; records at offsets
/// `>= cutoff` and partitions without a cutoff are left out) and writes it under `out` (created if missing).
///
/// Errors: the archive cannot be listed or read, Polars fails, or a file cannot be written.
pub fn export(config: &Config, cutoffs: &BTreeMap<i32, i64>, out: &Path) -> Result<ExportReport> {
    let views = ViewSet::new(config);
    let fields = Decoder::new(config).fields().to_vec();
    let files = archive::list(&config.archive.root, &config.kafka.topic)?;
    let clock = Instant::now();
    let computed = compute::compute(&views, &config.schema.event_time, &fields, &files, cutoffs, |_, _| {})?;
    let compute_seconds = clock.elapsed().as_secs_f64();

    let clock = Instant::now();
    fs::create_dir_all(out).map_err(|e| common::Error::Io { path: out.to_owned(), source: e })?;
    let mut rows = BTreeMap::new();
    for (name, g, table) in &computed.tables {
        let view = views.get(name).expect("computed from these views");
        let path = out.join(format!("{name}_{g}.parquet"));
        write_table(&path, &view.dimensions, &view.metric_names, table)?;
        rows.insert(format!("{name}/{g}"), table.len() as u64);
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

fn write_table(path: &Path, dimensions: &[String], metrics: &[String], table: &[BatchRow]) -> Result<()> {
    let mut sorted: Vec<&BatchRow> = table.iter().collect();
    sorted.sort_by(|a, b| (a.key.bucket_start, &a.key.dims).cmp(&(b.key.bucket_start, &b.key.dims)));
    let mut fields = vec![Field::new("bucket_start", DataType::Int64, false)];
    let mut columns: Vec<ArrayRef> =
        vec![Arc::new(Int64Array::from_iter_values(sorted.iter().map(|r| r.key.bucket_start)))];
    for (i, d) in dimensions.iter().enumerate() {
        fields.push(Field::new(d, DataType::Utf8, true));
        columns.push(Arc::new(StringArray::from_iter(sorted.iter().map(|r| r.key.dims[i].as_deref()))));
    }
    for (i, m) in metrics.iter().enumerate() {
        fields.push(Field::new(m, DataType::Int64, false));
        columns.push(Arc::new(Int64Array::from_iter_values(sorted.iter().map(|r| r.metrics[i]))));
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    let file = File::create(path).map_err(|e| common::Error::Io { path: path.to_owned(), source: e })?;
    let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let perr = |source| Error::Parquet { path: path.to_owned(), source };
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(perr)?;
    writer.write(&batch).map_err(perr)?;
    writer.close().map_err(perr)?;
    Ok(())
}
