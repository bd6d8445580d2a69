//! Configuration (DESIGN.md §3).
//!
//! Layering, later wins: the embedded defaults (`defaults.toml`, compiled in) < the user's TOML file <
//! `LAMBDA__SECTION__KEY` environment variables (e.g. `LAMBDA__KAFKA__BROKERS=host:9092`). Unknown keys
//! are an error, durations carry units (`"250ms"`, `"5m"`), and [`Config::validate`] names the bad key.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::view::{Granularity, Metric};

/// The embedded defaults: the e-commerce schema and the `by_type`, `by_brand`, `by_category` views.
pub const DEFAULTS_TOML: &str = include_str!("defaults.toml");

/// The whole configuration of every layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub schema: SchemaConfig,
    pub views: Vec<ViewConfig>,
    pub store: StoreConfig,
    pub archive: ArchiveConfig,
    pub speed: SpeedConfig,
    pub batch: BatchConfig,
    pub serve: ServeConfig,
    #[serde(default)]
    pub bi: BiConfig,
}

/// `[bi]`: the SQL mirror that copies the views into PostgreSQL for BI tools when the store is not
/// PostgreSQL itself (issue 10, item 4; run by `lambda serve` when `url` is set, or by `lambda mirror`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BiConfig {
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE` of the mirror; empty (default): no mirror.
    #[serde(default)]
    pub url: String,
    /// A mirror pass runs this often; the mirror lags the store by at most about this much.
    #[serde(with = "humantime_serde", default = "default_bi_interval")]
    pub interval: Duration,
}

fn default_bi_interval() -> Duration {
    Duration::from_secs(10)
}

impl Default for BiConfig {
    fn default() -> Self {
        BiConfig { url: String::new(), interval: default_bi_interval() }
    }
}

/// `[kafka]`: where the events are and the consumer groups that read them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` bootstrap servers.
    pub brokers: String,
    /// The topic of JSON events.
    pub topic: String,
    /// Consumer group id of the speed layer.
    pub speed_group: String,
    /// Consumer group id of the archiver (its own group, DESIGN.md §4).
    pub archive_group: String,
    /// librdkafka properties applied to every client (e.g. `"security.protocol" = "ssl"`).
    #[serde(default)]
    pub client: BTreeMap<String, String>,
    /// librdkafka properties for the consumers only, applied after `client` (e.g. `"session.timeout.ms"`).
    #[serde(default)]
    pub consumer: BTreeMap<String, String>,
    /// librdkafka properties for `lambda produce` only, applied after `client` (e.g. `"compression.type"`).
    #[serde(default)]
    pub producer: BTreeMap<String, String>,
}

/// `[schema]`: the event fields, the event-time field and the dedup key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaConfig {
    pub fields: Vec<FieldConfig>,
    /// Name of the `timestamp` field that buckets events.
    pub event_time: String,
    /// Accepted timestamp formats, tried in order: chrono `strftime` patterns or `"rfc3339"`.
    /// A pattern without a zone is read as UTC.
    pub time_formats: Vec<String>,
    /// `"content"` (a 128-bit hash of the canonical field values) or the name of a field.
    pub dedup_key: String,
    /// What a record whose named dedup key is missing, null or empty is: its own event (`keep`, counted in
    /// `records_without_dedup_key_total`) or a dead letter (`dead_letter`). Never merged with another.
    #[serde(default)]
    pub dedup_missing: DedupMissing,
    /// Field whose value keys the Kafka message (`lambda produce`); none sends unkeyed messages.
    #[serde(default)]
    pub message_key: Option<String>,
    /// Records larger than this many bytes go to the dead-letter output.
    pub max_record_bytes: usize,
}

/// `schema.dedup_missing`: the fate of a record whose named dedup key is missing, null or empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DedupMissing {
    /// The record is its own event: never merged with another record.
    #[default]
    Keep,
    /// The record goes to the dead-letter output with the reason.
    DeadLetter,
}

/// One `[[schema.fields]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: FieldType,
}

/// Field types of the event schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    /// A JSON integer that fits an i64.
    I64,
    /// A JSON number, read exactly from its text as a decimal with 6 places, at most 1e15 in magnitude
    /// ([`crate::decimal`]); archived as `DECIMAL(22, 6)`.
    F64,
    Timestamp,
}

/// One `[[views]]` entry: an aggregate by dimensions at several granularities.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewConfig {
    pub name: String,
    /// Field names (string or i64 fields); a missing or empty value is the dimension value `null`.
    pub dimensions: Vec<String>,
    /// `count` or `sum:<field>` (an i64 or f64 field).
    pub metrics: Vec<String>,
    pub granularities: Vec<Granularity>,
}

/// `[store]`: the view store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://path` (embedded default), `postgres://user:password@host:port/database` or
    /// `scylla://host1:9042,host2/keyspace[?replication_factor=N]` (ScyllaDB or Cassandra).
    pub url: String,
    /// Most connections a process keeps to a PostgreSQL store (each layer opens its own pool).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

fn default_max_connections() -> u32 {
    crate::store::DEFAULT_MAX_CONNECTIONS
}

/// `[archive]`: the master dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Local directory of `<topic>/partition=<p>/<first>-<next>.parquet` files and `_dead_letter/`.
    pub root: PathBuf,
    /// A file is closed once it holds this many records.
    pub max_file_records: usize,
    /// A file is closed once its first record has waited this long (wall clock).
    #[serde(with = "humantime_serde")]
    pub max_file_age: Duration,
}

/// `[speed]`: flushing and segment limits (DESIGN.md §4).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeedConfig {
    /// Dirty speed rows are written to the store at this interval.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// A segment seals once it holds this many records.
    pub segment_max_records: u64,
    /// A segment seals before a record whose Kafka timestamp is this far past the segment's first record.
    #[serde(with = "humantime_serde")]
    pub segment_max_age: Duration,
    /// At the log end, a segment seals after this long without records.
    #[serde(with = "humantime_serde")]
    pub segment_max_idle: Duration,
}

/// `[batch]`: schedule and retention of the batch job (DESIGN.md §5).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Cron expression with seconds (`sec min hour dom mon dow [year]`) or the classic 5 fields.
    pub cron: String,
    /// Generations kept in the store (at least 2).
    pub keep_generations: u32,
    /// A run's lease lasts this long unless renewed; a running job renews it every third of it. A run
    /// that fails to renew in time loses the lease and can write nothing more (DESIGN.md §5).
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// `/healthz` says `degraded` when a partition's cutoff has not moved for this long while its log grew
    /// (or no generation was published for this long).
    #[serde(with = "humantime_serde", default = "default_stall_after")]
    pub stall_after: Duration,
}

fn default_stall_after() -> Duration {
    Duration::from_secs(30 * 60)
}

/// `[serve]`: the HTTP API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// Bearer tokens accepted by `/v1/*`; empty means no authentication.
    #[serde(default)]
    pub auth_tokens: Vec<String>,
    /// View answers are served from memory for this long after they are computed (identical query
    /// strings share one computation); after it, the first request triggers one recomputation and the
    /// stale answer is served until it lands. `0s` disables the cache. Answers can be this much older than
    /// the store, plus the time of one computation.
    #[serde(with = "humantime_serde", default = "default_cache_ttl")]
    pub cache_ttl: Duration,
    /// Most answers kept in the cache.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: u64,
    /// Most bytes of answers (JSON plus its gzip form) kept in the cache; a larger answer is not cached.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
    /// Most rows a query may read (batch or speed rows in its range); past it the query gets 400 naming the
    /// range and this limit, before the store builds the answer.
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
}

fn default_cache_bytes() -> u64 {
    256 * 1024 * 1024
}

fn default_max_rows() -> usize {
    1_000_000
}

fn default_cache_ttl() -> Duration {
    Duration::from_millis(200)
}

fn default_cache_entries() -> u64 {
    10_000
}

impl Config {
    /// Defaults < `file` < `LAMBDA__*` environment variables, then [`Config::validate`].
    ///
    /// Errors: [`Error::ConfigLoad`] (unreadable file, unknown key, wrong type: figment names the key)
    /// or [`Error::ConfigInvalid`].
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let mut figment = Figment::from(Toml::string(DEFAULTS_TOML));
        if let Some(file) = file {
            if !file.exists() {
                return Err(Error::io(file, std::io::Error::from(std::io::ErrorKind::NotFound)));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(Env::prefixed("LAMBDA__").split("__"));
        Self::extract(figment)
    }

    /// Defaults < the TOML text `overrides`, then [`Config::validate`]; no environment (tests, embedding).
    pub fn from_toml_str(overrides: &str) -> Result<Self> {
        Self::extract(Figment::from(Toml::string(DEFAULTS_TOML)).merge(Toml::string(overrides)))
    }

    /// The embedded defaults alone.
    pub fn defaults() -> Self {
        Self::from_toml_str("").expect("embedded defaults are valid")
    }

    fn extract(figment: Figment) -> Result<Self> {
        let config: Config = figment.extract().map_err(|e| Error::ConfigLoad(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every cross-field rule; the error names the first bad key.
    pub fn validate(&self) -> Result<()> {
        let k = &self.kafka;
        for (key, value) in [
            ("kafka.brokers", &k.brokers),
            ("kafka.topic", &k.topic),
            ("kafka.speed_group", &k.speed_group),
            ("kafka.archive_group", &k.archive_group),
        ] {
            if value.trim().is_empty() {
                return Err(Error::invalid(key, "must not be empty"));
            }
        }
        if k.speed_group == k.archive_group {
            return Err(Error::invalid("kafka.archive_group", "must differ from kafka.speed_group"));
        }
        for (section, overrides) in [("client", &k.client), ("consumer", &k.consumer)] {
            for key in overrides.keys() {
                if let Some(why) = reserved_consumer_key(key) {
                    return Err(Error::invalid(format!("kafka.{section}.\"{key}\""), why));
                }
            }
        }

        let s = &self.schema;
        let mut names = HashSet::new();
        for (i, f) in s.fields.iter().enumerate() {
            if f.name.is_empty() || f.name.starts_with('_') {
                return Err(Error::invalid(
                    format!("schema.fields[{i}].name"),
                    "must be non-empty and not start with `_` (reserved for _partition, _offset, ...)",
                ));
            }
            if !names.insert(f.name.as_str()) {
                return Err(Error::invalid(
                    format!("schema.fields[{i}].name"),
                    format!("duplicate field `{}`", f.name),
                ));
            }
        }
        match self.field_type(&s.event_time) {
            Some(FieldType::Timestamp) => {}
            Some(_) => {
                return Err(Error::invalid("schema.event_time", format!("field `{}` is not a timestamp", s.event_time)))
            }
            None => {
                return Err(Error::invalid(
                    "schema.event_time",
                    format!("no field `{}` in schema.fields", s.event_time),
                ))
            }
        }
        if s.time_formats.is_empty() {
            return Err(Error::invalid("schema.time_formats", "needs at least one format"));
        }
        if s.dedup_key != "content" && self.field_type(&s.dedup_key).is_none() {
            return Err(Error::invalid(
                "schema.dedup_key",
                format!("`{}` is neither `content` nor a field", s.dedup_key),
            ));
        }
        if let Some(key) = &s.message_key {
            if self.field_type(key).is_none() {
                return Err(Error::invalid("schema.message_key", format!("no field `{key}` in schema.fields")));
            }
        }
        if s.max_record_bytes == 0 {
            return Err(Error::invalid("schema.max_record_bytes", "must be positive"));
        }

        if self.views.is_empty() {
            return Err(Error::invalid("views", "at least one view is needed"));
        }
        let mut view_names = HashSet::new();
        for (i, v) in self.views.iter().enumerate() {
            let valid_name = !v.name.is_empty() && v.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_name {
                return Err(Error::invalid(format!("views[{i}].name"), "must be non-empty [A-Za-z0-9_]"));
            }
            if !view_names.insert(v.name.as_str()) {
                return Err(Error::invalid(format!("views[{i}].name"), format!("duplicate view `{}`", v.name)));
            }
            let mut dims = HashSet::new();
            for (j, d) in v.dimensions.iter().enumerate() {
                match self.field_type(d) {
                    Some(FieldType::String | FieldType::I64) => {}
                    Some(t) => {
                        return Err(Error::invalid(
                            format!("views[{i}].dimensions[{j}]"),
                            format!("field `{d}` is {t:?}; dimensions must be string or i64 fields"),
                        ))
                    }
                    None => {
                        return Err(Error::invalid(
                            format!("views[{i}].dimensions[{j}]"),
                            format!("no field `{d}` in schema.fields"),
                        ))
                    }
                }
                if !dims.insert(d) {
                    return Err(Error::invalid(
                        format!("views[{i}].dimensions[{j}]"),
                        format!("duplicate dimension `{d}`"),
                    ));
                }
            }
            if v.metrics.is_empty() {
                return Err(Error::invalid(format!("views[{i}].metrics"), "at least one metric is needed"));
            }
            for (j, m) in v.metrics.iter().enumerate() {
                let key = format!("views[{i}].metrics[{j}]");
                let metric = Metric::from_str(m).map_err(|e| Error::invalid(&key, e))?;
                if let Metric::Sum(field) = &metric {
                    match self.field_type(field) {
                        Some(FieldType::I64 | FieldType::F64) => {}
                        Some(t) => {
                            return Err(Error::invalid(
                                key,
                                format!("field `{field}` is {t:?}; sums need an i64 or f64 field"),
                            ))
                        }
                        None => return Err(Error::invalid(key, format!("no field `{field}` in schema.fields"))),
                    }
                }
            }
            if v.granularities.is_empty() {
                return Err(Error::invalid(format!("views[{i}].granularities"), "at least one granularity is needed"));
            }
        }

        let url = &self.store.url;
        if url.starts_with("scylla:") {
            crate::store::ScyllaUrl::parse(url)?;
        } else if !["sqlite:", "postgres:", "postgresql:"].iter().any(|scheme| url.starts_with(scheme)) {
            return Err(Error::invalid(
                "store.url",
                format!(
                    "`{}`: unsupported store (sqlite://PATH, postgres://USER:PASSWORD@HOST:PORT/DATABASE or \
                     scylla://HOST:9042[,HOST...]/KEYSPACE)",
                    crate::store::redact(url)
                ),
            ));
        }
        if !self.bi.url.is_empty() {
            if !(self.bi.url.starts_with("postgres:") || self.bi.url.starts_with("postgresql:")) {
                return Err(Error::invalid(
                    "bi.url",
                    format!(
                        "`{}`: the mirror is a PostgreSQL database (postgres://...)",
                        crate::store::redact(&self.bi.url)
                    ),
                ));
            }
            if self.bi.url == self.store.url {
                return Err(Error::invalid(
                    "bi.url",
                    "is the store itself: a PostgreSQL store needs no mirror; point the BI tool at it",
                ));
            }
            if self.bi.interval.is_zero() {
                return Err(Error::invalid("bi.interval", "must be above 0s"));
            }
        }
        if self.store.max_connections == 0 {
            return Err(Error::invalid("store.max_connections", "must be at least 1"));
        }
        if self.archive.max_file_records == 0 {
            return Err(Error::invalid("archive.max_file_records", "must be positive"));
        }
        for (key, d) in [
            ("archive.max_file_age", self.archive.max_file_age),
            ("speed.flush_interval", self.speed.flush_interval),
            ("speed.segment_max_age", self.speed.segment_max_age),
            ("speed.segment_max_idle", self.speed.segment_max_idle),
            ("batch.lease_ttl", self.batch.lease_ttl),
        ] {
            if d.is_zero() {
                return Err(Error::invalid(key, "must be a positive duration"));
            }
        }
        if self.speed.segment_max_records == 0 {
            return Err(Error::invalid("speed.segment_max_records", "must be positive"));
        }
        if self.serve.max_rows == 0 {
            return Err(Error::invalid("serve.max_rows", "must be positive"));
        }
        if self.batch.keep_generations < 2 {
            return Err(Error::invalid("batch.keep_generations", "must be at least 2 (DESIGN.md §5)"));
        }
        crate::config::parse_cron(&self.batch.cron).map_err(|e| Error::invalid("batch.cron", e))?;
        Ok(())
    }

    /// Type of the schema field `name`, if it exists.
    pub fn field_type(&self, name: &str) -> Option<FieldType> {
        self.schema.fields.iter().find(|f| f.name == name).map(|f| f.ty)
    }
}

/// Why a librdkafka consumer property may not be overridden, if it is one the design depends on.
///
/// Offsets are committed only after the downstream write is durable (so no auto commit or auto offset
/// store), a new group reads the topic from its start (`auto.offset.reset`), aborted transactional records
/// are never read (`isolation.level = read_committed`), and the group ids are `kafka.speed_group` and
/// `kafka.archive_group` (DESIGN.md §4).
pub fn reserved_consumer_key(key: &str) -> Option<&'static str> {
    match key {
        "enable.auto.commit" | "auto.commit.enable" | "enable.auto.offset.store" => Some(
            "offsets are committed only after the rows or files are durable (DESIGN.md §4); this cannot be overridden",
        ),
        "auto.offset.reset" | "offset.store.method" => Some(
            "a new consumer group must start at the earliest offset so nothing is skipped; this cannot be overridden",
        ),
        "isolation.level" => Some(
            "consumers read committed records only (aborted transactions are not events); this cannot be overridden",
        ),
        "group.id" => Some("set kafka.speed_group and kafka.archive_group instead"),
        "bootstrap.servers" | "metadata.broker.list" => Some("set kafka.brokers instead"),
        "enable.partition.eof" => Some("the consumers manage end-of-partition themselves; this cannot be overridden"),
        _ => None,
    }
}

/// Parses a cron expression: 6-7 fields with seconds (the `cron` crate's form) or the classic 5 fields
/// (`min hour dom mon dow`, run at second 0).
pub fn parse_cron(expr: &str) -> std::result::Result<cron::Schedule, String> {
    let fields = expr.split_whitespace().count();
    let full = if fields == 5 { format!("0 {expr}") } else { expr.to_owned() };
    cron::Schedule::from_str(&full).map_err(|e| format!("`{expr}` is not a cron expression: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_key(toml: &str) -> String {
        match Config::from_toml_str(toml) {
            Err(Error::ConfigInvalid { key, .. }) => key,
            Err(other) => other.to_string(),
            Ok(_) => panic!("config should be rejected: {toml}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::defaults();
        assert_eq!(c.views.len(), 3);
        assert_eq!(c.speed.flush_interval, Duration::from_millis(250));
    }

    #[test]
    fn unknown_key_is_named() {
        let msg = err_key("[speed]\nflush_intervall = \"1s\"\n");
        assert!(msg.contains("flush_intervall"), "{msg}");
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(err_key("[batch]\nkeep_generations = 1\n"), "batch.keep_generations");
        assert_eq!(err_key("[batch]\ncron = \"every minute\"\n"), "batch.cron");
        assert_eq!(
            err_key(
                "[[views]]\nname = \"v\"\ndimensions = [\"nope\"]\nmetrics = [\"count\"]\ngranularities = [\"day\"]\n"
            ),
            "views[0].dimensions[0]"
        );
        assert_eq!(
            err_key("[[views]]\nname = \"v\"\ndimensions = [\"brand\"]\nmetrics = [\"sum:brand\"]\ngranularities = [\"day\"]\n"),
            "views[0].metrics[0]"
        );
        assert_eq!(err_key("[store]\nurl = \"mysql://x\"\n"), "store.url");
    }

    #[test]
    fn bad_duration_is_reported_with_key() {
        let msg = err_key("[speed]\nflush_interval = \"soon\"\n");
        assert!(msg.contains("flush_interval"), "{msg}");
    }

    /// Issue 9, item 9: client overrides cannot switch off the settings exactly-once depends on.
    #[test]
    fn unsafe_kafka_overrides_are_rejected() {
        for section in ["client", "consumer"] {
            for key in [
                "enable.auto.commit",
                "auto.commit.enable",
                "enable.auto.offset.store",
                "auto.offset.reset",
                "isolation.level",
                "group.id",
            ] {
                let toml = format!("[kafka.{section}]\n\"{key}\" = \"true\"\n");
                let named = err_key(&toml);
                assert!(named.contains(section) && named.contains(key), "{toml} -> {named}");
            }
        }
        // settings the design does not depend on stay free
        assert!(Config::from_toml_str("[kafka.consumer]\n\"session.timeout.ms\" = \"6000\"\n").is_ok());
        assert!(Config::from_toml_str("[kafka.client]\n\"security.protocol\" = \"ssl\"\n").is_ok());
    }

    #[test]
    fn five_field_cron_is_accepted() {
        assert!(parse_cron("*/5 * * * *").is_ok());
        assert!(parse_cron("*/30 * * * * *").is_ok());
    }
}
