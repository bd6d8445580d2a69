//! The OpenAPI 3.1 document of the API, served at `GET /openapi.json`.
//!
//! utoipa generates it from the handlers' `#[utoipa::path]` annotations and the response types below
//! ([`crate::api::ApiDoc`]); [`document`] then specializes it to the configuration it serves:
//! - one path per configured view, `/v1/views/<view>`, whose `granularity` and `order_by` list exactly
//!   that view's granularities and metrics, with one optional equality filter per dimension; the templated
//!   `/v1/views/{view}` stays for names that are not configured (404);
//! - the bearer security scheme on every `/v1` operation when `serve.auth_tokens` is set.
//!
//! Constraints between parameters that JSON Schema cannot state are in the descriptions and answered with
//! a 400 naming the parameter: `from` before `to`, `top` only with `order_by`, a dimension named once in
//! `group_by`, at most `serve.max_rows` rows in the range.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use common::view::{Granularity, ViewSet};
use serde::{Deserialize, Serialize};
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{OpenApi, Required};
use utoipa::{IntoParams, ToSchema};

use crate::merge::Source;

/// `GET /v1/views`: the configured views.
#[derive(Debug, Serialize, ToSchema)]
pub struct ViewList {
    pub views: Vec<ViewInfo>,
}

/// One configured view: what it can be grouped, filtered and ordered by.
#[derive(Debug, Serialize, ToSchema)]
pub struct ViewInfo {
    pub name: String,
    /// Dimension names, in config order; each is also an optional equality filter parameter.
    pub dimensions: Vec<String>,
    /// Metric names (`count`, `sum_price`, ...), the keys of `rows[].metrics`.
    pub metrics: Vec<String>,
    pub granularities: Vec<Granularity>,
    /// The query parameters of `GET /v1/views/{view}` and what each does.
    pub parameters: BTreeMap<String, String>,
}

/// `GET /v1/views/{view}`: the merged answer (README "Querying"). Written by [`crate::answer::write_answer`]
/// without building values; this type is its schema, and a test parses written answers into it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ViewAnswer {
    pub view: String,
    pub granularity: Granularity,
    /// The batch generation merged with the speed rows; null before the first batch run.
    pub manifest: Option<AnswerManifest>,
    /// How duplicate events are counted ([`crate::answer::DEDUP_RULE`]).
    pub dedup: String,
    /// By `bucket_start`, or by the `order_by` metric.
    pub rows: Vec<AnswerRow>,
}

/// The manifest an answer was merged under (DESIGN.md §5).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerManifest {
    pub generation: i64,
    /// Cutoff offset per partition (JSON key: the partition number).
    pub cutoffs: BTreeMap<String, i64>,
    pub finished_at: DateTime<Utc>,
}

/// One bucket of one group.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerRow {
    /// Start of the bucket, RFC 3339 UTC.
    pub bucket_start: DateTime<Utc>,
    /// Value of each `group_by` dimension; null for a missing, null or empty field.
    pub dims: BTreeMap<String, Option<String>>,
    /// Value of each metric: counts are integers, sums exact decimals with at most 6 places.
    #[schema(value_type = BTreeMap<String, f64>)]
    pub metrics: BTreeMap<String, serde_json::Number>,
    pub source: Source,
}

/// A 400: the request's parameter `parameter` is wrong, and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct BadRequest {
    pub error: BadParameter,
}

/// See [`BadRequest`].
#[derive(Debug, Serialize, ToSchema)]
pub struct BadParameter {
    /// The query parameter at fault (a parameter name, or a dimension name used as a filter).
    #[schema(min_length = 1)]
    pub parameter: String,
    pub message: String,
}

/// Any other error (401, 404, 500, 503).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorMessage,
}

/// See [`ErrorBody`].
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorMessage {
    pub message: String,
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, `degraded` (the batch view has stalled; see `reasons`) or `store unreachable` (with a 503).
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<String>>,
}

/// The query parameters of `GET /v1/views/{view}`; a configured view's path adds one per dimension.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // a schema only: the handler reads the raw pairs (dimension filters are open-ended)
pub struct ViewQuery {
    /// Bucket width: one of the view's granularities.
    granularity: Granularity,
    /// Buckets starting at or after this RFC 3339 time (before `to`).
    #[param(required = false, nullable = false)]
    from: DateTime<Utc>,
    /// Buckets starting before this RFC 3339 time.
    #[param(required = false, nullable = false)]
    to: DateTime<Utc>,
    /// Comma-separated dimensions to group by, each at most once (default: all; empty: none).
    #[param(required = false, nullable = false)]
    group_by: String,
    /// `metric`, `metric:asc` or `metric:desc` (default desc): sort rows by it instead of by bucket.
    #[param(required = false, nullable = false)]
    order_by: String,
    /// Totals per group over the whole range, the N first by `order_by` (which it needs).
    #[param(required = false, nullable = false, minimum = 1, maximum = 10000)]
    top: u32,
}

/// Names a dimension cannot take as a filter: the query parameters.
const RESERVED: [&str; 6] = ["granularity", "from", "to", "group_by", "order_by", "top"];

/// The document for `views`, with bearer auth on `/v1` when `auth` (see the module docs).
pub fn document(views: &ViewSet, auth: bool) -> OpenApi {
    use utoipa::OpenApi as _;
    let mut doc = crate::api::ApiDoc::openapi();
    let template = doc.paths.paths.get("/v1/views/{view}").and_then(|item| item.get.clone());
    if let Some(template) = template {
        for view in &views.views {
            let mut op = template.clone();
            op.operation_id = Some(format!("query_{}", view.name));
            op.summary = Some(format!("Query the view `{}`", view.name));
            let mut params: Vec<Parameter> =
                op.parameters.take().unwrap_or_default().into_iter().filter(|p| p.name != "view").collect();
            for p in &mut params {
                match p.name.as_str() {
                    "granularity" => {
                        p.schema = Some(enum_schema(view.granularities.iter().map(|g| g.as_str().to_owned())).into())
                    }
                    "order_by" => {
                        let values =
                            view.metric_names.iter().flat_map(|m| [m.clone(), format!("{m}:asc"), format!("{m}:desc")]);
                        p.schema = Some(enum_schema(values).into());
                    }
                    "group_by" => {
                        let dimensions = view.dimensions.join(", ");
                        p.description = Some(format!(
                            "Comma-separated dimensions of {dimensions} to group by, each at most once (default: \
                             all; empty: none)."
                        ));
                    }
                    _ => {}
                }
            }
            for dimension in view.dimensions.iter().filter(|d| !RESERVED.contains(&d.as_str())) {
                params.push(
                    ParameterBuilder::new()
                        .name(dimension)
                        .parameter_in(ParameterIn::Query)
                        .required(Required::False)
                        .description(Some(format!("Only rows whose `{dimension}` equals this value.")))
                        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                        .build(),
                );
            }
            op.parameters = Some(params);
            let path = format!("/v1/views/{}", view.name);
            doc.paths.paths.insert(path, utoipa::openapi::PathItem::new(utoipa::openapi::HttpMethod::Get, op));
        }
    }
    if auth {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        for (path, item) in doc.paths.paths.iter_mut() {
            if let (true, Some(op)) = (path.starts_with("/v1/"), item.get.as_mut()) {
                op.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
            }
        }
    }
    doc
}

fn enum_schema(values: impl IntoIterator<Item = String>) -> Schema {
    Schema::Object(ObjectBuilder::new().schema_type(Type::String).enum_values(Some(values)).build())
}
