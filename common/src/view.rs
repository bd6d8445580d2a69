//! View definitions, granularities and bucketing (DESIGN.md §3 `[[views]]`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::{Config, FieldType};
use crate::decimal::int_to_micros;
use crate::schema::FieldRef;

/// Width of a time bucket. Buckets are aligned to the Unix epoch in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    /// Every granularity, finest first.
    pub const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    /// Bucket width in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            Granularity::Minute => 60,
            Granularity::Hour => 3_600,
            Granularity::Day => 86_400,
        }
    }

    /// Start (Unix seconds) of the bucket holding `micros` (Unix microseconds); floors for negative times.
    pub fn bucket_start(self, micros: i64) -> i64 {
        let step = self.seconds();
        micros.div_euclid(step * 1_000_000) * step
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Granularity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "minute" => Ok(Granularity::Minute),
            "hour" => Ok(Granularity::Hour),
            "day" => Ok(Granularity::Day),
            other => Err(format!("unknown granularity `{other}`; expected one of minute, hour, day")),
        }
    }
}

/// A metric as written in the config: `count` or `sum:<field>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metric {
    Count,
    Sum(String),
}

impl Metric {
    /// Name in answers and tables: `count`, `sum_<field>`.
    pub fn output_name(&self) -> String {
        match self {
            Metric::Count => "count".into(),
            Metric::Sum(field) => format!("sum_{field}"),
        }
    }
}

impl FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "count" => Ok(Metric::Count),
            Some(("sum", field)) if !field.is_empty() => Ok(Metric::Sum(field.to_owned())),
            _ => Err(format!("unknown metric `{s}`; expected `count` or `sum:<field>`")),
        }
    }
}

/// A metric resolved against the schema.
#[derive(Debug, Clone)]
pub enum ResolvedMetric {
    /// Number of events.
    Count,
    /// Sum of a numeric field in micro-units (null values add nothing).
    Sum { field: usize, ty: FieldType },
}

impl ResolvedMetric {
    /// The contribution of an event with field `values` (schema order): 1 for count, the field value in
    /// micro-units for a sum (null adds nothing), exact for every accepted value ([`crate::decimal`]).
    pub fn contribution(&self, values: &[FieldRef<'_>]) -> i128 {
        match self {
            ResolvedMetric::Count => 1,
            ResolvedMetric::Sum { field, .. } => match &values[*field] {
                FieldRef::I64(v) => int_to_micros(*v),
                FieldRef::Decimal(micros) => *micros,
                _ => 0,
            },
        }
    }

    /// True when the stored value is micro-units (printed as a decimal).
    pub fn is_decimal(&self) -> bool {
        matches!(self, ResolvedMetric::Sum { .. })
    }
}

/// One view resolved against the schema.
#[derive(Debug, Clone)]
pub struct View {
    pub name: String,
    /// Dimension names, in config order.
    pub dimensions: Vec<String>,
    /// Schema field index of each dimension.
    pub dimension_fields: Vec<usize>,
    pub metrics: Vec<ResolvedMetric>,
    /// Output name of each metric (`count`, `sum_price`).
    pub metric_names: Vec<String>,
    /// Config text of each metric (`count`, `sum:price`).
    pub metric_specs: Vec<String>,
    pub granularities: Vec<Granularity>,
}

/// The dimension value of a field as text, `None` for null and for the empty string: strings as they are,
/// integers in decimal (written into `buf`).
pub fn dimension_text<'v>(value: &'v FieldRef<'_>, buf: &'v mut itoa::Buffer) -> Option<&'v str> {
    match value {
        FieldRef::Str(s) if !s.is_empty() => Some(s),
        FieldRef::I64(v) => Some(buf.format(*v)),
        _ => None,
    }
}

/// Every view of the config, resolved.
#[derive(Debug, Clone)]
pub struct ViewSet {
    pub views: Vec<View>,
}

impl ViewSet {
    /// Resolves the (validated) config's views against its schema.
    pub fn new(config: &Config) -> Self {
        let index = |name: &str| {
            config.schema.fields.iter().position(|f| f.name == name).expect("validated config names known fields")
        };
        let views = config
            .views
            .iter()
            .map(|v| {
                let metrics: Vec<ResolvedMetric> = v
                    .metrics
                    .iter()
                    .map(|m| match Metric::from_str(m).expect("validated metric") {
                        Metric::Count => ResolvedMetric::Count,
                        Metric::Sum(field) => {
                            let i = index(&field);
                            ResolvedMetric::Sum { field: i, ty: config.schema.fields[i].ty }
                        }
                    })
                    .collect();
                View {
                    name: v.name.clone(),
                    dimensions: v.dimensions.clone(),
                    dimension_fields: v.dimensions.iter().map(|d| index(d)).collect(),
                    metric_names: v
                        .metrics
                        .iter()
                        .map(|m| Metric::from_str(m).expect("validated").output_name())
                        .collect(),
                    metric_specs: v.metrics.clone(),
                    metrics,
                    granularities: v.granularities.clone(),
                }
            })
            .collect();
        ViewSet { views }
    }

    pub fn get(&self, name: &str) -> Option<&View> {
        self.views.iter().find(|v| v.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_floor_to_utc_boundaries() {
        // 2019-11-08 08:14:53 UTC
        let t = 1_573_200_893_000_000;
        assert_eq!(Granularity::Minute.bucket_start(t), 1_573_200_840);
        assert_eq!(Granularity::Hour.bucket_start(t), 1_573_200_000);
        assert_eq!(Granularity::Day.bucket_start(t), 1_573_171_200);
        assert_eq!(Granularity::Minute.bucket_start(-1), -60);
    }

    #[test]
    fn metrics_parse() {
        assert_eq!("count".parse::<Metric>(), Ok(Metric::Count));
        assert_eq!("sum:price".parse::<Metric>(), Ok(Metric::Sum("price".into())));
        assert!("avg:price".parse::<Metric>().is_err());
        assert!("sum:".parse::<Metric>().is_err());
    }
}
