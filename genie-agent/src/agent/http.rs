//! The metrics and health endpoints over HTTP (axum): `GET /metrics`, `/healthz` (the agent
//! process serves) and `/readyz` (it has a configuration enforced). Off unless
//! `--metrics-address` is given; bind it to localhost or a node-internal address (README,
//! "Metrics").

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    thread,
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tracing::{info, warn};

use super::Agent;

type Shared = Arc<Mutex<Agent>>;

/// Starts serving on `address` in a background thread with its own single-threaded runtime.
pub fn spawn(address: SocketAddr, agent: Shared) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    info!(address = %bound, "metrics listening");
    thread::Builder::new()
        .name("metrics".to_owned())
        .spawn(move || {
            let served = runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let app = Router::new()
                    .route("/metrics", get(metrics))
                    .route("/healthz", get(|| async { "ok\n" }))
                    .route("/readyz", get(ready))
                    .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
                    .with_state(agent);
                axum::serve(listener, app).await
            });
            if let Err(e) = served {
                warn!(error = %e, "the metrics server stopped");
            }
        })?;
    Ok(bound)
}

fn lock(agent: &Shared) -> std::sync::MutexGuard<'_, Agent> {
    agent.lock().unwrap_or_else(|p| p.into_inner())
}

async fn metrics(State(agent): State<Shared>) -> Response {
    // The lock is held for one read of the maps; encoding happens after it is released.
    let (metrics, snapshot) = {
        let agent = lock(&agent);
        (agent.metrics().clone(), agent.metrics_snapshot())
    };
    let rendered = snapshot
        .map_err(|e| {
            metrics.failed("scrape", e.kind());
            format!("reading the maps: {e}\n")
        })
        .and_then(|s| crate::metrics::render(&metrics, s).map_err(|e| format!("encoding: {e}\n")));
    match rendered {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(message) => (StatusCode::INTERNAL_SERVER_ERROR, message).into_response(),
    }
}

async fn ready(State(agent): State<Shared>) -> Response {
    let status = lock(&agent).status();
    if status.ready {
        "ready\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: {}\n",
                status
                    .config_error
                    .unwrap_or_else(|| "no configuration yet".to_owned())
            ),
        )
            .into_response()
    }
}
