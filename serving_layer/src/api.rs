//! HTTP handlers, parameter validation and error mapping.
//!
//! Bad parameters get 400 with `{"error":{"parameter":"<name>","message":"..."}}`, an unknown view 404;
//! store failures get 500 (503 when retryable) with a generic message (the detail goes to the log, never to
//! the client). A query that would read more than `serve.max_rows` rows gets 400 before the store builds it.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use common::config::Config;
use common::store::{BatchRow, Manifest, RowQuery, ViewStore};
use common::view::{Granularity, View, ViewSet};
use moka::future::Cache;
use tracing::error;

use crate::answer::write_answer;
use crate::merge::{self, merge, Order, Shape};
use crate::metrics as m;
use crate::openapi::{self, BadParameter, BadRequest, ErrorBody, ErrorMessage, Health, ViewAnswer, ViewInfo, ViewList};

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    config: Arc<Config>,
    views: Arc<ViewSet>,
    store: Arc<dyn ViewStore>,
    /// Serialized answers by view and query string, for `serve.cache_ttl` (None when 0). Bounded in bytes
    /// (`serve.cache_bytes`) and in entries (`serve.cache_entries`): see [`AppState::new`].
    cache: Option<Cache<String, Cached>>,
    /// Keys whose refresh is running, so an expired answer is recomputed once, not once per request.
    refreshing: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Batch rows read per (generation, view, granularity, from, to). A published generation never
    /// changes (DESIGN.md §5), so these never go stale; they only spare re-reading the store on every
    /// answer refresh. Bounded by [`BATCH_CACHE_ROWS`].
    batch_rows: Cache<BatchKey, Arc<Vec<BatchRow>>>,
    /// The OpenAPI document of this configuration, serialized once ([`openapi::document`]).
    openapi: Bytes,
}

type BatchKey = (i64, String, Granularity, Option<i64>, Option<i64>);

/// Most batch rows kept in memory across all cached ranges (about 100 bytes each).
pub const BATCH_CACHE_ROWS: u64 = 2_000_000;

/// A cached answer: when it was computed, its JSON, and the same gzip-compressed once (for answers of
/// [`GZIP_MIN_BYTES`] or more) so clients sending `Accept-Encoding: gzip` get it without a compression per
/// request.
#[derive(Debug, Clone)]
struct Cached {
    at: Instant,
    body: Bytes,
    gzip: Option<Bytes>,
}

impl Cached {
    fn new(body: Bytes) -> Self {
        let gzip = (body.len() >= GZIP_MIN_BYTES).then(|| gzip(&body));
        Cached { at: Instant::now(), body, gzip }
    }

    /// Bytes this answer holds in the cache (its JSON and gzip forms).
    fn bytes(&self) -> u64 {
        (self.body.len() + self.gzip.as_ref().map_or(0, |g| g.len())) as u64
    }

    /// The response: gzip when the client accepts it and a compressed form exists.
    fn respond(&self, headers: &HeaderMap) -> Response {
        let mut response = match (&self.gzip, accepts_gzip(headers)) {
            (Some(gz), true) => {
                let mut r = json_response(gz.clone());
                r.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                r
            }
            _ => json_response(self.body.clone()),
        };
        response.headers_mut().insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        response
    }
}

/// Answers smaller than this are not compressed: the saving does not pay for the header and the work.
pub const GZIP_MIN_BYTES: usize = 4096;

/// gzip at the fastest level: a day of minute buckets (about 500 KB of JSON) compresses in a few
/// milliseconds to about a tenth, once per cache refresh.
fn gzip(body: &[u8]) -> Bytes {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 8), flate2::Compression::fast());
    encoder.write_all(body).expect("writing to memory does not fail");
    Bytes::from(encoder.finish().expect("writing to memory does not fail"))
}

/// True when `Accept-Encoding` lists `gzip` (or `*`) without `q=0` (RFC 9110 §12.5.3).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or_default();
            let refused = parts.any(|p| p.strip_prefix("q=").is_some_and(|q| q.parse::<f32>().is_ok_and(|q| q <= 0.0)));
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        },
    )
}

fn json_response(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// An answer older than `serve.cache_ttl` is still served for up to this many TTLs while one refresh runs;
/// past that it is dropped and the next request computes it.
const STALE_TTLS: u32 = 20;

impl AppState {
    /// The handlers' state. The answer cache weighs each entry by its bytes (JSON, gzip form and key) with
    /// a floor of `cache_bytes / cache_entries`, against a capacity of `cache_bytes`: so it holds at most
    /// `cache_bytes` bytes and at most `cache_entries` answers, and an answer larger than the whole cache
    /// is not kept.
    pub fn new(config: Config, store: Arc<dyn ViewStore>) -> Self {
        let ttl = config.serve.cache_ttl;
        let bytes = config.serve.cache_bytes.max(1);
        let floor = (bytes / config.serve.cache_entries.max(1)).max(1);
        let cache = (!ttl.is_zero()).then(|| {
            Cache::builder()
                .max_capacity(bytes)
                .weigher(move |key: &String, answer: &Cached| {
                    u32::try_from((key.len() as u64 + answer.bytes()).max(floor)).unwrap_or(u32::MAX)
                })
                .time_to_live(ttl * STALE_TTLS)
                .build()
        });
        let views = ViewSet::new(&config);
        let doc = openapi::document(&views, !config.serve.auth_tokens.is_empty());
        let openapi = Bytes::from(serde_json::to_vec(&doc).expect("an OpenAPI document serializes"));
        AppState {
            views: Arc::new(views),
            config: Arc::new(config),
            openapi,
            store,
            cache,
            refreshing: Default::default(),
            batch_rows: Cache::builder()
                .max_capacity(BATCH_CACHE_ROWS)
                .weigher(|_, rows: &Arc<Vec<BatchRow>>| rows.len().try_into().unwrap_or(u32::MAX))
                .build(),
        }
    }
}

/// The API as utoipa generates it from the handlers below; [`openapi::document`] specializes it to a
/// configuration.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(
        title = "lambda serving API",
        description = "Exact aggregates over a Kafka topic of JSON events: the batch view of the current manifest merged with the speed rows past its cutoffs (DESIGN.md §5-7). Errors are JSON: a 400 names the parameter at fault."
    ),
    paths(list_views, query_view, manifest, healthz, prometheus, openapi_json),
    components(schemas(ViewList, ViewInfo, ViewAnswer, BadRequest, ErrorBody, Health, Manifest))
)]
pub struct ApiDoc;

/// The API's routes: `/v1/*` (behind bearer auth when `serve.auth_tokens` is set), `/healthz`, `/metrics`,
/// `/openapi.json`.
pub fn router(state: AppState) -> Router {
    // install the recorder before any request so no metric is recorded into the void
    let _ = common::telemetry::prometheus();
    m::describe();
    let v1 = Router::new()
        .route("/v1/views", get(list_views))
        .route("/v1/views/{view}", get(query_view))
        .route("/v1/manifest", get(manifest))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/healthz", get(healthz))
        .route("/metrics", get(prometheus))
        .route("/openapi.json", get(openapi_json))
        .fallback(|| async { ApiError::NotFound("no such route; see /openapi.json".into()) })
        .layer(middleware::from_fn(track))
        .with_state(state)
}

/// An API error: a bad parameter (400), missing auth (401), nothing to show (404) or an internal failure (500).
#[derive(Debug)]
pub enum ApiError {
    BadParameter { parameter: String, message: String },
    Unauthorized,
    NotFound(String),
    Internal(Arc<common::Error>),
}

fn bad(parameter: &str, message: impl Into<String>) -> ApiError {
    ApiError::BadParameter { parameter: parameter.to_owned(), message: message.into() }
}

impl From<common::Error> for ApiError {
    fn from(e: common::Error) -> Self {
        ApiError::Internal(Arc::new(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.respond()
    }
}

impl ApiError {
    fn respond(&self) -> Response {
        match self {
            ApiError::BadParameter { parameter, message } => {
                let error = BadParameter { parameter: parameter.clone(), message: message.clone() };
                (StatusCode::BAD_REQUEST, Json(BadRequest { error })).into_response()
            }
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(error_body("missing or invalid bearer token")),
            )
                .into_response(),
            ApiError::NotFound(message) => (StatusCode::NOT_FOUND, Json(error_body(message))).into_response(),
            ApiError::Internal(e) => {
                error!(error = %e, "request failed");
                if e.is_retryable() {
                    // a store or disk that is unreachable for a moment: the client may retry (RFC 9110 §10.2.3)
                    let message = "the view store is unavailable for a moment; retry";
                    (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], Json(error_body(message)))
                        .into_response()
                } else {
                    let message = "internal error; see the server log";
                    (StatusCode::INTERNAL_SERVER_ERROR, Json(error_body(message))).into_response()
                }
            }
        }
    }
}

fn error_body(message: &str) -> ErrorBody {
    ErrorBody { error: ErrorMessage { message: message.to_owned() } }
}

async fn auth(State(state): State<AppState>, request: Request, next: Next) -> Result<Response, ApiError> {
    let tokens = &state.config.serve.auth_tokens;
    if !tokens.is_empty() {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|t| tokens.iter().any(|ok| ok == t)) {
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(next.run(request).await)
}

async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(m::REQUESTS, "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!(m::REQUEST_SECONDS, "route" => route).record(started.elapsed().as_secs_f64());
    response
}

/// Health of the API and of the batch view.
///
/// `200 {"status":"ok"}`; `200 {"status":"degraded","reasons":[...]}` when the batch view has stalled
/// ([`stall_reasons`]); `503` when the store does not answer.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses(
    (status = 200, description = "The API answers; `degraded` names why the batch view has stalled", body = Health),
    (status = 503, description = "The view store does not answer", body = Health),
))]
async fn healthz(State(state): State<AppState>) -> Response {
    let manifest = match state.store.current_manifest().await {
        Ok(m) => m,
        Err(e) => {
            error!(error = %e, "health check: store unreachable");
            let health = Health { status: "store unreachable".into(), reasons: None };
            return (StatusCode::SERVICE_UNAVAILABLE, Json(health)).into_response();
        }
    };
    let reasons = manifest.map(|m| stall_reasons(&m, state.config.batch.stall_after, Utc::now())).unwrap_or_default();
    if reasons.is_empty() {
        Json(Health { status: "ok".into(), reasons: None }).into_response()
    } else {
        Json(Health { status: "degraded".into(), reasons: Some(reasons) }).into_response()
    }
}

/// The OpenAPI 3.1 document of this API and configuration.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses(
    (status = 200, description = "This document", content_type = "application/json", body = Object),
))]
async fn openapi_json(State(state): State<AppState>) -> Response {
    json_response(state.openapi.clone())
}

/// Why the batch view is stalled, as of `now` (DESIGN.md §5): a partition whose cutoff has not moved for
/// `stall_after` while its log grew (the run that last moved it saw a smaller log end than the latest run
/// does), with the run's notes on that partition; or no generation published for `stall_after`.
pub fn stall_reasons(manifest: &Manifest, stall_after: std::time::Duration, now: chrono::DateTime<Utc>) -> Vec<String> {
    let mut reasons = Vec::new();
    let stall = chrono::Duration::from_std(stall_after).unwrap_or(chrono::Duration::MAX);
    if now - manifest.finished_at > stall {
        reasons.push(format!(
            "no batch generation published since {} (generation {}); is `lambda batch schedule` running?",
            manifest.finished_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            manifest.generation
        ));
    }
    for (partition, progress) in &manifest.cutoff_progress {
        let (Some(&end), Some(&cutoff)) = (manifest.log_ends.get(partition), manifest.cutoffs.get(partition)) else {
            continue;
        };
        if now - progress.moved_at > stall && end > progress.log_end_then.max(cutoff) {
            let mut reason = format!(
                "partition {partition}: cutoff {cutoff} has not moved since {} while the log grew to {end}",
                progress.moved_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            let prefix = format!("partition {partition}:");
            for note in manifest.cutoff_notes.iter().filter(|n| n.starts_with(&prefix)) {
                reason.push_str(&format!(" ({})", &note[prefix.len()..].trim()));
            }
            reasons.push(reason);
        }
    }
    reasons
}

/// Prometheus metrics of the serving process (text exposition format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Metrics in the Prometheus text format", content_type = "text/plain", body = String),
))]
async fn prometheus(State(state): State<AppState>) -> Response {
    // the batch view's lag as of the published manifest (the batch process sets it too, in its own registry)
    if let Ok(Some(manifest)) = state.store.current_manifest().await {
        for (&partition, &end) in &manifest.log_ends {
            let cutoff = manifest.cutoffs.get(&partition).copied().unwrap_or(0);
            metrics::gauge!(m::BATCH_CUTOFF_LAG, "partition" => partition.to_string())
                .set((end - cutoff).max(0) as f64);
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], common::telemetry::prometheus().render()).into_response()
}

/// The configured views: their dimensions, metrics, granularities and query parameters.
#[utoipa::path(get, path = "/v1/views", tag = "views", responses(
    (status = 200, description = "The configured views", body = ViewList),
    (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
))]
async fn list_views(State(state): State<AppState>) -> Json<ViewList> {
    let parameters: std::collections::BTreeMap<String, String> = [
        ("granularity", "required: one of the view's granularities"),
        ("from", "optional RFC 3339 time; buckets starting at or after it"),
        ("to", "optional RFC 3339 time; buckets starting before it"),
        ("group_by", "optional comma-separated dimensions (default: all; empty: none)"),
        ("order_by", "optional metric[:asc|:desc] (default desc); sorts rows by it instead of by bucket"),
        ("top", "optional N (1-10000, needs order_by): totals per group over the whole range, the N first by order_by"),
        ("<dimension>", "optional equality filter on a dimension"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let views = state
        .views
        .views
        .iter()
        .map(|v| ViewInfo {
            name: v.name.clone(),
            dimensions: v.dimensions.clone(),
            metrics: v.metric_names.clone(),
            granularities: v.granularities.clone(),
            parameters: parameters.clone(),
        })
        .collect();
    Json(ViewList { views })
}

/// The current manifest: the batch generation answers are merged with, its cutoffs and run statistics.
#[utoipa::path(get, path = "/v1/manifest", tag = "views", responses(
    (status = 200, description = "The current manifest (DESIGN.md §5)", body = Manifest),
    (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
    (status = 404, description = "No batch generation has been published yet", body = ErrorBody),
    (status = 500, description = "The view store failed; see the server log", body = ErrorBody),
    (status = 503, description = "The view store is unavailable for a moment", body = ErrorBody,
        headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
))]
async fn manifest(State(state): State<AppState>) -> Result<Json<Manifest>, ApiError> {
    match state.store.current_manifest().await? {
        Some(m) => Ok(Json(m)),
        None => Err(ApiError::NotFound("no batch generation has been published yet".into())),
    }
}

struct ParsedQuery {
    granularity: Granularity,
    from: Option<i64>,
    to: Option<i64>,
    shape: Shape,
    order: Option<Order>,
    top: Option<usize>,
}

/// Largest `top`; a ranking past it is an export, not a query.
pub const MAX_TOP: usize = 10_000;

fn parse_time(parameter: &str, value: &str) -> Result<i64, ApiError> {
    // RFC 3339 §5.6 separates date and time with `T` (or `t`); chrono also takes a space, JSON Schema's
    // `date-time` (which the OpenAPI document promises) does not
    if !matches!(value.as_bytes().get(10), Some(b'T' | b't')) {
        return Err(bad(parameter, format!("`{value}` is not an RFC 3339 time; e.g. 2019-11-01T00:00:00Z")));
    }
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp())
        .map_err(|e| bad(parameter, format!("`{value}` is not an RFC 3339 time ({e}); e.g. 2019-11-01T00:00:00Z")))
}

fn parse_query(view: &View, params: &[(String, String)]) -> Result<ParsedQuery, ApiError> {
    let mut granularity = None;
    let (mut from, mut to) = (None, None);
    let mut group_by: Option<Vec<usize>> = None;
    let mut filters = Vec::new();
    let (mut order, mut top) = (None, None);
    let mut seen = std::collections::HashSet::new();
    // a pair without a name (`?=x`, `?&=`) filters nothing and names nothing to complain about: skipped
    for (name, value) in params.iter().filter(|(name, _)| !name.is_empty()) {
        if !seen.insert(name.as_str()) {
            return Err(bad(name, format!("`{name}` is given more than once")));
        }
        match name.as_str() {
            "granularity" => {
                let g: Granularity = value.parse().map_err(|e: String| bad("granularity", e))?;
                if !view.granularities.contains(&g) {
                    return Err(bad("granularity", format!("view `{}` has no `{g}` granularity", view.name)));
                }
                granularity = Some(g);
            }
            "from" => from = Some(parse_time("from", value)?),
            "to" => to = Some(parse_time("to", value)?),
            "order_by" => {
                let (metric, direction) = value.split_once(':').unwrap_or((value.as_str(), "desc"));
                let descending = match direction {
                    "desc" => true,
                    "asc" => false,
                    other => return Err(bad("order_by", format!("direction `{other}` must be asc or desc"))),
                };
                let i = view.metric_names.iter().position(|m| m == metric).ok_or_else(|| {
                    bad(
                        "order_by",
                        format!("`{metric}` is not a metric of `{}` ({})", view.name, view.metric_names.join(", ")),
                    )
                })?;
                order = Some(Order { metric: i, descending });
            }
            "top" => {
                // digits only: `+5` and ` 5` are not whole numbers in the API's schema either
                let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
                let n: usize = digits
                    .then(|| value.parse().ok())
                    .flatten()
                    .filter(|n| (1..=MAX_TOP).contains(n))
                    .ok_or_else(|| bad("top", format!("`{value}` must be a whole number from 1 to {MAX_TOP}")))?;
                top = Some(n);
            }
            "group_by" => {
                let mut idx = Vec::new();
                for d in value.split(',').map(str::trim).filter(|d| !d.is_empty()) {
                    let i = view.dimensions.iter().position(|x| x == d).ok_or_else(|| {
                        bad(
                            "group_by",
                            format!("`{d}` is not a dimension of `{}` ({})", view.name, view.dimensions.join(", ")),
                        )
                    })?;
                    if idx.contains(&i) {
                        return Err(bad("group_by", format!("dimension `{d}` is named twice")));
                    }
                    idx.push(i);
                }
                group_by = Some(idx);
            }
            dim => {
                let i = view.dimensions.iter().position(|x| x == dim).ok_or_else(|| {
                    bad(
                        dim,
                        format!(
                            "unknown parameter or dimension `{dim}`; `{}` has dimensions {} and parameters granularity, from, to, group_by, order_by, top",
                            view.name,
                            view.dimensions.join(", ")
                        ),
                    )
                })?;
                filters.push((i, value.clone()));
            }
        }
    }
    let granularity = granularity.ok_or_else(|| bad("granularity", "required: one of minute, hour, day"))?;
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            return Err(bad("from", "`from` must be before `to`"));
        }
    }
    if top.is_some() && order.is_none() {
        return Err(bad("top", "`top` ranks groups by a metric: give `order_by` too, e.g. order_by=count"));
    }
    Ok(ParsedQuery {
        granularity,
        from,
        to,
        order,
        top,
        shape: Shape { filters, group_by: group_by.unwrap_or_else(|| (0..view.dimensions.len()).collect()) },
    })
}

/// Query a view: the batch view merged with the speed rows past its cutoffs, per bucket and group.
///
/// Dimension names are filter parameters too (`?brand=apple`); the paths of the configured views list them.
#[utoipa::path(get, path = "/v1/views/{view}", tag = "views",
    params(("view" = String, Path, description = "A configured view's name"), openapi::ViewQuery),
    responses(
        (status = 200, description = "The merged answer", body = ViewAnswer),
        (status = 400, description = "A parameter is wrong; `error.parameter` names it", body = BadRequest),
        (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
        (status = 404, description = "No such view", body = ErrorBody),
        (status = 500, description = "The view store failed; see the server log", body = ErrorBody),
        (status = 503, description = "The view store is unavailable for a moment", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
    )
)]
async fn query_view(
    State(state): State<AppState>,
    view_name: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let view_name = match view_name {
        Ok(Path(name)) => name,
        // e.g. a percent-encoded name that is not UTF-8: no view has it
        Err(rejection) => return ApiError::NotFound(format!("no such view: {rejection}")).respond(),
    };
    let compute = {
        let state = state.clone();
        let view_name = view_name.clone();
        async move { answer_view(&state, &view_name, &params).await }
    };
    match &state.cache {
        None => compute.await.map_or_else(|e| e.respond(), |answer| json_response(answer.body)),
        Some(cache) => {
            let key = format!("{view_name}?{}", raw.unwrap_or_default());
            if let Some(cached) = cache.get(&key).await {
                if cached.at.elapsed() >= state.config.serve.cache_ttl
                    && state.refreshing.lock().expect("lock").insert(key.clone())
                {
                    // stale-while-revalidate: this request gets the stale answer, one task computes the next
                    let (cache, refreshing) = (cache.clone(), state.refreshing.clone());
                    let max_bytes = state.config.serve.cache_bytes;
                    tokio::spawn(async move {
                        match compute.await {
                            Ok(fresh) if fresh.bytes() <= max_bytes => cache.insert(key.clone(), fresh).await,
                            Ok(_) => cache.invalidate(&key).await,
                            Err(_) => {}
                        }
                        refreshing.lock().expect("lock").remove(&key);
                    });
                }
                return cached.respond(&headers);
            }
            // concurrent misses of one key share a single computation; errors are not cached, nor answers
            // larger than the whole cache (moka would only evict them at its next housekeeping)
            match cache.try_get_with(key.clone(), compute).await {
                Ok(cached) => {
                    if cached.bytes() > state.config.serve.cache_bytes {
                        cache.invalidate(&key).await;
                    }
                    cached.respond(&headers)
                }
                Err(e) => e.respond(),
            }
        }
    }
}

/// Computes the answer of one view query: its JSON, and for a cached API its gzip form too.
async fn answer_view(state: &AppState, view_name: &str, params: &[(String, String)]) -> Result<Cached, ApiError> {
    let view = state.views.get(view_name).ok_or_else(|| {
        let known: Vec<&str> = state.views.views.iter().map(|v| v.name.as_str()).collect();
        ApiError::NotFound(format!("unknown view `{view_name}`; known views: {}", known.join(", ")))
    })?;
    let q = parse_query(view, params)?;
    let manifest = state.store.current_manifest().await?;
    let max_rows = state.config.serve.max_rows;
    // one row past the limit tells that the range holds more, without reading all of it
    let rq = RowQuery {
        view: view.name.clone(),
        granularity: q.granularity,
        from: q.from,
        to: q.to,
        limit: Some(max_rows.saturating_add(1)),
        // the merge drops speed rows below the cutoffs of this manifest: do not read them
        speed_from: manifest.as_ref().map(|m| m.cutoffs.clone()).unwrap_or_default(),
    };
    let too_many = |read: usize| {
        let bound = |t: Option<i64>| {
            t.and_then(|t| DateTime::from_timestamp(t, 0))
                .map_or_else(|| "unbounded".to_owned(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        };
        ApiError::BadParameter {
            parameter: if q.from.is_some() || q.to.is_some() { "from" } else { "granularity" }.to_owned(),
            message: format!(
                "the range {} .. {} of `{}` at {} granularity holds more than {max_rows} rows (read {read}; the limit is serve.max_rows); narrow from/to or use a coarser granularity",
                bound(q.from),
                bound(q.to),
                view.name,
                q.granularity
            ),
        }
    };
    let batch = match &manifest {
        Some(m) => {
            let key = (m.generation, rq.view.clone(), rq.granularity, rq.from, rq.to);
            let read = async { state.store.batch_rows(m.generation, &rq).await.map(Arc::new) };
            state.batch_rows.try_get_with(key, read).await.map_err(ApiError::Internal)?
        }
        None => Arc::new(Vec::new()),
    };
    if batch.len() > max_rows {
        return Err(too_many(batch.len()));
    }
    let speed = state.store.speed_rows(&rq).await?;
    if speed.len() > max_rows {
        return Err(too_many(speed.len()));
    }
    let view = view.clone();
    let cached = state.cache.is_some();
    // merging and serializing thousands of rows is CPU work: keep it off the async workers, so cached
    // answers and other requests are served meanwhile
    let build = move || {
        let mut merged = merge(manifest.as_ref(), &batch, &speed, &q.shape);
        match (q.order, q.top) {
            (Some(order), Some(n)) => merged = merge::top(merged, order, n),
            (Some(order), None) => merge::sort(&mut merged, order),
            _ => {}
        }
        let text = write_answer(&view, q.granularity, manifest.as_ref(), &q.shape.group_by, &merged);
        let body = Bytes::from(text);
        if cached {
            Cached::new(body)
        } else {
            Cached { at: Instant::now(), body, gzip: None }
        }
    };
    Ok(tokio::task::spawn_blocking(build).await.expect("answer building does not panic"))
}
