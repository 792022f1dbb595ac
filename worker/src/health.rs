//! The worker's small HTTP server on `METRICS_ADDR`: liveness, readiness
//! and Prometheus metrics.

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::{App, HttpResponse, HttpServer, web};
use metrics_exporter_prometheus::PrometheusHandle;
use sendonce_shared::queue::Queue;
use sendonce_shared::readiness;
use sendonce_shared::store::Store;

struct State {
    queue: Queue,
    store: Store,
    metrics: Option<PrometheusHandle>,
}

/// Starts serving on `listener`; the returned server runs when awaited.
pub fn serve(
    listener: TcpListener,
    queue: Queue,
    store: Store,
    metrics: Option<PrometheusHandle>,
) -> std::io::Result<Server> {
    tracing::info!(
        metrics_addr = %listener.local_addr()?,
        "serving /healthz, /readyz and /metrics"
    );
    let state = web::Data::new(State {
        queue,
        store,
        metrics,
    });
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(render_metrics))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn readyz(state: web::Data<State>) -> HttpResponse {
    match readiness::check(&state.queue, &state.store).await {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({
            "status": "ready",
            "warnings": readiness::warnings(&state.queue).await,
        })),
        Err(not_ready) => HttpResponse::ServiceUnavailable()
            .content_type("application/problem+json")
            .json(serde_json::json!({
                "type": "about:blank",
                "title": "Service Unavailable",
                "status": 503,
                "detail": format!("not ready: {not_ready}"),
                "down": not_ready.down,
            })),
    }
}

async fn render_metrics(state: web::Data<State>) -> HttpResponse {
    match &state.metrics {
        Some(handle) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(handle.render()),
        None => HttpResponse::NotFound().finish(),
    }
}
