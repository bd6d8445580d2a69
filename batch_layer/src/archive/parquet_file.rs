//! The archive's Parquet layout: `_partition` (Int32), `_offset` (Int64), `_timestamp` (Kafka timestamp,
//! Timestamp(ms, UTC)), `_dedup_key` (FixedSizeBinary(16), big-endian u128; null when the record's named
//! dedup key is missing, null or empty: such a record is its own event), then the typed event fields
//! (string -> Utf8, i64 -> Int64, f64 -> Decimal128(22, 6) holding the exact micro-units of
//! [`common::decimal`], timestamp -> Timestamp(us, UTC)).

use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Decimal128Array, FixedSizeBinaryArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use common::config::FieldType;
use common::dead_letter::persist;
use common::decimal::{ARCHIVE_PRECISION, SCALE};
use common::schema::{Event, Value};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::{Error, Result};

/// One decoded record on its way to the archive.
#[derive(Debug, Clone)]
pub struct ArchivedRecord {
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub event: Event,
}

/// The Arrow schema of archive files for the given schema fields.
pub fn arrow_schema(fields: &[(String, FieldType)]) -> SchemaRef {
    let utc = Some(Arc::<str>::from("UTC"));
    let mut cols = vec![
        Field::new("_partition", DataType::Int32, false),
        Field::new("_offset", DataType::Int64, false),
        Field::new("_timestamp", DataType::Timestamp(TimeUnit::Millisecond, utc.clone()), true),
        Field::new("_dedup_key", DataType::FixedSizeBinary(16), true),
    ];
    for (name, ty) in fields {
        let dt = match ty {
            FieldType::String => DataType::Utf8,
            FieldType::I64 => DataType::Int64,
            FieldType::F64 => DataType::Decimal128(ARCHIVE_PRECISION, SCALE),
            FieldType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, utc.clone()),
        };
        cols.push(Field::new(name, dt, true));
    }
    Arc::new(Schema::new(cols))
}

/// Writes `records` of `partition` to `path` durably: a temporary file in the same directory, fsync,
/// rename, fsync of the directory. An empty `records` writes a valid file with no rows (its name still
/// covers the offsets of dead-lettered records).
pub fn write(path: &Path, partition: i32, fields: &[(String, FieldType)], records: &[ArchivedRecord]) -> Result<()> {
    let dir = path.parent().expect("archive files live in a partition directory");
    fs::create_dir_all(dir).map_err(|e| common::Error::Io { path: dir.to_owned(), source: e })?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().expect("file name").to_string_lossy()));
    let schema = arrow_schema(fields);
    let batch = to_batch(&schema, partition, fields, records)?;
    let file = File::create(&tmp).map_err(|e| common::Error::Io { path: tmp.clone(), source: e })?;
    let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let perr = |source| Error::Parquet { path: tmp.clone(), source };
    let mut writer = ArrowWriter::try_new(file, schema, Some(props)).map_err(perr)?;
    writer.write(&batch).map_err(perr)?;
    writer.close().map_err(perr)?;
    persist(&tmp, path).map_err(|e| common::Error::Io { path: path.to_owned(), source: e })?;
    Ok(())
}

fn to_batch(
    schema: &SchemaRef,
    partition: i32,
    fields: &[(String, FieldType)],
    records: &[ArchivedRecord],
) -> Result<RecordBatch> {
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from(vec![partition; records.len()])),
        Arc::new(Int64Array::from_iter_values(records.iter().map(|r| r.offset))),
        Arc::new(TimestampMillisecondArray::from_iter(records.iter().map(|r| r.timestamp_ms)).with_timezone("UTC")),
        Arc::new(FixedSizeBinaryArray::try_from_sparse_iter_with_size(
            records.iter().map(|r| r.event.dedup_key.map(u128::to_be_bytes)),
            16,
        )?),
    ];
    for (i, (_, ty)) in fields.iter().enumerate() {
        let values = records.iter().map(|r| &r.event.values[i]);
        let col: ArrayRef = match ty {
            FieldType::String => Arc::new(StringArray::from_iter(values.map(|v| match v {
                Value::Str(s) => Some(s.as_str()),
                _ => None,
            }))),
            FieldType::I64 => Arc::new(Int64Array::from_iter(values.map(|v| match v {
                Value::I64(x) => Some(*x),
                _ => None,
            }))),
            FieldType::F64 => Arc::new(
                Decimal128Array::from_iter(values.map(|v| match v {
                    Value::Decimal(micros) => Some(*micros),
                    _ => None,
                }))
                .with_precision_and_scale(ARCHIVE_PRECISION, SCALE)?,
            ),
            FieldType::Timestamp => Arc::new(
                TimestampMicrosecondArray::from_iter(values.map(|v| match v {
                    Value::Timestamp(x) => Some(*x),
                    _ => None,
                }))
                .with_timezone("UTC"),
            ),
        };
        columns.push(col);
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
