//! The serving layer (DESIGN.md §7): an axum HTTP API that answers view queries by merging the batch view of
//! the current manifest with the speed rows past its cutoffs ([`merge`]).
//!
//! Endpoints: `GET /v1/views`, `GET /v1/views/{view}`, `GET /v1/manifest`, `GET /healthz`, `GET /metrics`,
//! `GET /openapi.json` ([`openapi`]).

pub mod answer;
pub mod api;
pub mod merge;
pub mod metrics;
pub mod mirror;
pub mod openapi;
pub mod sql_views;

use std::net::SocketAddr;
use std::sync::Arc;

use common::config::Config;
use common::store::ViewStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use api::{router, AppState};

/// Errors of the serving layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("http server: {0}")]
    Serve(#[source] std::io::Error),
}

/// Result alias of the serving layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Binds `serve.listen` and serves until `shutdown`, letting in-flight requests finish.
pub async fn run(config: Config, store: Arc<dyn ViewStore>, shutdown: CancellationToken) -> Result<()> {
    let addr = config.serve.listen;
    let listener = TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })?;
    serve(listener, config, store, shutdown).await
}

/// Serves on an already bound listener (tests bind `127.0.0.1:0`).
pub async fn serve(
    listener: TcpListener,
    config: Config,
    store: Arc<dyn ViewStore>,
    shutdown: CancellationToken,
) -> Result<()> {
    let app = router(AppState::new(config, store));
    info!(addr = %listener.local_addr().map_err(Error::Serve)?, "http api listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(Error::Serve)
}

/// Serves the process's Prometheus metrics at `GET /metrics` (and a liveness `GET /healthz`) on
/// `listener` until `shutdown`: the `--metrics-listen` address of `lambda speed`, `archive` and `batch
/// schedule` (bind it with [`bind`] before the layer starts, so a taken port fails the start).
pub async fn serve_metrics(listener: TcpListener, shutdown: CancellationToken) -> Result<()> {
    use axum::routing::get;
    let _ = common::telemetry::prometheus();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    common::telemetry::prometheus().render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    info!(addr = %listener.local_addr().map_err(Error::Serve)?, "metrics listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(Error::Serve)
}

/// Binds `addr`. Errors: [`Error::Bind`] naming it.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })
}
