//! Building and running the HTTP server.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::error::JsonPayloadError;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use sendonce_shared::queue::{self, Queue};
use sendonce_shared::store::{Acceptor, Store};
use tracing_actix_web::TracingLogger;

use crate::auth::JwtKeys;
use crate::backlog::Backlog;
use crate::config::ApiConfig;
use crate::console::{self, ConsoleSettings};
use crate::handoff::Handoff;
use crate::limits::{self, BodyTimeout, LargeBody, LargeRequests};
use crate::openapi;
use crate::problem::ApiError;
use crate::rate_limit::RateLimit;
use crate::routes;
use crate::sender_policy::SenderPolicy;
use crate::state::AppState;
use crate::telemetry;

/// A bound, not yet running API server, and its metrics server.
pub struct Application {
    port: u16,
    server: Server,
    metrics_port: u16,
    metrics_server: Server,
    shutdown_delay: Duration,
    draining: Arc<AtomicBool>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .field("metrics_port", &self.metrics_port)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Connects, applies migrations and binds `API_ADDR` (port 0 picks a
    /// free one, for tests).
    pub async fn build(
        config: ApiConfig,
        metrics: Option<PrometheusHandle>,
    ) -> anyhow::Result<Self> {
        let keys = JwtKeys::from_config(&config)?;
        for warning in JwtKeys::warnings(&config) {
            tracing::warn!("{warning}");
        }
        let senders = SenderPolicy::load(config.sender_policy_file.as_deref())?;
        senders
            .reload_on_sighup()
            .context("failed to listen for SIGHUP (sender policy reloads)")?;
        let store = Store::connect(
            &config.common.database_url,
            &config.common.postgres.options(),
            16,
        )?;
        store
            .migrate()
            .await
            .context("failed to apply migrations to DATABASE_URL")?;
        let queue = Queue::sharded(
            queue::connect(&config.common.redis_url, &config.common.redis_tls())?,
            &config.common.redis_key_prefix,
            config.common.queue_shards,
        );
        sendonce_shared::readiness::check_layout_at_start(&queue).await?;
        sendonce_shared::readiness::warn_at_start(&queue).await;
        let handoff = Handoff::new(queue.clone());
        let pusher = handoff.clone();
        let acceptor = Acceptor::spawn(store.clone(), move |tasks: Vec<(String, Duration)>| {
            let handoff = pusher.clone();
            async move { handoff.push(tasks).await }
        });
        let backlog = config
            .max_queued_per_tenant
            .map(|max| Arc::new(Backlog::new(store.clone(), max)));
        let state = AppState {
            queue,
            store,
            acceptor,
            handoff,
            max_job_bytes: usize::try_from(config.max_job_bytes)
                .context("MAX_JOB_BYTES does not fit in memory")?,
            max_message_bytes: usize::try_from(config.max_message_bytes)
                .context("MAX_MESSAGE_BYTES does not fit in memory")?,
            max_schedule_days: config.max_schedule_days,
            max_recipients: usize::from(config.max_recipients),
            webhook_urls: config.app_env.url_policy(),
            senders,
            backlog,
            draining: Arc::default(),
        };
        let draining = Arc::clone(&state.draining);
        let listener = TcpListener::bind(config.api_addr)
            .with_context(|| format!("failed to bind API_ADDR {}", config.api_addr))?;
        let port = listener.local_addr()?.port();
        let limits = Limits {
            max_body_bytes: usize::try_from(config.max_body_bytes)
                .context("MAX_BODY_BYTES does not fit in memory")?,
            large_body_bytes: usize::try_from(config.large_body_bytes)
                .context("LARGE_BODY_BYTES does not fit in memory")?,
            rate: config
                .rate_limit_per_sec
                .map(|per_sec| RateLimit::per_second(per_sec, state.queue.clone())),
            max_batch_bytes: usize::try_from(config.max_batch_bytes)
                .context("MAX_BATCH_BYTES does not fit in memory")?,
            large_requests: LargeRequests::new(
                usize::try_from(config.max_large_requests)
                    .context("MAX_LARGE_REQUESTS does not fit in memory")?,
            ),
            body_timeout: BodyTimeout(Duration::from_millis(config.body_timeout_ms)),
            max_connections: usize::try_from(limits::max_connections(config.max_connections)?)
                .context("MAX_CONNECTIONS does not fit in memory")?,
        };
        let metrics_listener = TcpListener::bind(config.metrics_addr)
            .with_context(|| format!("failed to bind METRICS_ADDR {}", config.metrics_addr))?;
        let metrics_port = metrics_listener.local_addr()?.port();
        let metrics_server = serve_metrics(metrics_listener, state.clone(), metrics)?;
        let console = config
            .console
            .enabled
            .then(|| ConsoleSettings::new(&config.console, config.app_env));
        if console.is_some() {
            tracing::info!("the operator console is served under /console/");
        }
        let server = serve(listener, state, keys, limits, console)?;
        Ok(Self {
            port,
            server,
            metrics_port,
            metrics_server,
            shutdown_delay: config.shutdown_delay,
            draining,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The bound port of `METRICS_ADDR`.
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// Serves until `shutdown` resolves; then, for `SHUTDOWN_DELAY_MS`,
    /// goes on serving with `/readyz` answering 503; then stops accepting,
    /// drains in-flight requests and returns.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let metrics_handle = self.metrics_server.handle();
        let server = tokio::spawn(self.server);
        let metrics_server = tokio::spawn(self.metrics_server);
        shutdown.await;
        if !self.shutdown_delay.is_zero() {
            self.draining.store(true, Ordering::Release);
            tracing::info!(delay = ?self.shutdown_delay, "shutting down: /readyz answers 503 while requests are still served");
            tokio::time::sleep(self.shutdown_delay).await;
        }
        tracing::info!("shutting down: draining in-flight requests");
        handle.stop(true).await;
        metrics_handle.stop(true).await;
        server.await??;
        metrics_server.await??;
        Ok(())
    }
}

pub(crate) fn json_error(err: JsonPayloadError, _: &actix_web::HttpRequest) -> actix_web::Error {
    match err {
        JsonPayloadError::Overflow { limit }
        | JsonPayloadError::OverflowKnownLength { limit, .. } => {
            ApiError::PayloadTooLarge(limit).into()
        }
        JsonPayloadError::ContentType => ApiError::UnsupportedMediaType.into(),
        JsonPayloadError::Payload(e) if limits::is_body_timeout(&e) => {
            ApiError::RequestTimeout.into()
        }
        JsonPayloadError::Deserialize(e) => {
            ApiError::BadRequest(format!("the JSON body is invalid: {e}")).into()
        }
        other => ApiError::BadRequest(format!("the body could not be read: {other}")).into(),
    }
}

async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route".into()))
}

/// Request limits from the configuration.
struct Limits {
    max_body_bytes: usize,
    large_body_bytes: usize,
    max_batch_bytes: usize,
    large_requests: LargeRequests,
    rate: Option<RateLimit>,
    body_timeout: BodyTimeout,
    /// Over all worker threads.
    max_connections: usize,
}

/// `/metrics`, `/healthz` and `/readyz` on `METRICS_ADDR`, one thread, no
/// authentication: keep it off public networks.
fn serve_metrics(
    listener: TcpListener,
    state: AppState,
    metrics: Option<PrometheusHandle>,
) -> anyhow::Result<Server> {
    tracing::info!(
        metrics_addr = %listener.local_addr()?,
        "serving /healthz, /readyz and /metrics"
    );
    let state = web::Data::new(state);
    let metrics = metrics.map(web::Data::new);
    let server = HttpServer::new(move || {
        let mut app = App::new()
            .app_data(state.clone())
            .route("/healthz", web::get().to(routes::health::healthz))
            .route("/readyz", web::get().to(routes::health::readyz))
            .route("/metrics", web::get().to(routes::health::metrics));
        if let Some(m) = &metrics {
            app = app.app_data(m.clone());
        }
        app
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}

fn serve(
    listener: TcpListener,
    state: AppState,
    keys: JwtKeys,
    limits: Limits,
    console: Option<ConsoleSettings>,
) -> anyhow::Result<Server> {
    let state = web::Data::new(state);
    let keys = web::Data::new(keys);
    let rate = limits.rate.map(web::Data::new);
    let max_body_bytes = limits.max_body_bytes;
    let body_timeout = limits.body_timeout;
    let max_batch_bytes = limits.max_batch_bytes;
    let large_requests = web::Data::new(limits.large_requests);
    let large_body = web::Data::new(LargeBody(limits.large_body_bytes));
    // actix's cap is per worker thread; one worker per core, as its default.
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    let server = HttpServer::new(move || {
        let mut app = App::new()
            .app_data(body_timeout)
            .wrap(from_fn(limits::body_deadline))
            .wrap(from_fn(telemetry::record_request))
            .wrap(TracingLogger::<telemetry::RequestSpan>::new())
            .wrap(from_fn(telemetry::request_id))
            .app_data(state.clone())
            .app_data(keys.clone())
            .app_data(
                web::JsonConfig::default()
                    .limit(max_body_bytes)
                    .error_handler(json_error),
            )
            // App-level data: a resource's own is not yet in place when
            // its middleware runs.
            .app_data(large_requests.clone())
            .app_data(large_body.clone())
            .service(
                web::resource("/addJob")
                    .route(web::post().to(routes::add_job::add_job))
                    .wrap(from_fn(limits::bound_large_requests)),
            )
            .service(
                routes::add_jobs::resource("/addJobs", max_batch_bytes)
                    .wrap(from_fn(limits::bound_large_requests)),
            )
            .app_data(web::QueryConfig::default().error_handler(|err, _| {
                ApiError::BadRequest(format!("the query string is invalid: {err}")).into()
            }))
            .app_data(web::PathConfig::default().error_handler(|err, _| {
                ApiError::BadRequest(format!("the path is invalid: {err}")).into()
            }))
            .route("/jobs/{job_id}", web::get().to(routes::jobs::get_job))
            .route(
                "/jobs/{job_id}/cancel",
                web::post().to(routes::jobs::cancel),
            )
            .route("/stats", web::get().to(routes::stats::stats))
            .route("/failedJobs", web::get().to(routes::failed_jobs::list))
            .route(
                "/failedJobs/retry",
                web::post().to(routes::failed_jobs::retry_bulk),
            )
            .route(
                "/failedJobs/{id}/retry",
                web::post().to(routes::failed_jobs::retry_one),
            )
            .route(
                "/failedJobs/{id}",
                web::delete().to(routes::failed_jobs::discard),
            )
            .route("/audit", web::get().to(routes::audit::list))
            .route("/webhooks", web::get().to(routes::webhooks::list))
            .route("/webhooks", web::post().to(routes::webhooks::create))
            .route("/webhooks/{id}", web::get().to(routes::webhooks::get))
            .route("/webhooks/{id}", web::patch().to(routes::webhooks::patch))
            .route("/webhooks/{id}", web::delete().to(routes::webhooks::delete))
            .route(
                "/webhooks/{id}/deliveries",
                web::get().to(routes::webhooks::deliveries),
            )
            .route(
                "/webhooks/{id}/deliveries/{delivery_id}/replay",
                web::post().to(routes::webhooks::replay),
            )
            .route("/suppressions", web::get().to(routes::suppressions::list))
            .route("/suppressions", web::post().to(routes::suppressions::add))
            .route(
                "/suppressions/{address}",
                web::delete().to(routes::suppressions::lift),
            )
            .route("/healthz", web::get().to(routes::health::healthz))
            .default_service(web::to(not_found))
            .route("/readyz", web::get().to(routes::health::readyz))
            .route("/openapi.json", web::get().to(openapi::openapi_json));
        if let Some(r) = &rate {
            app = app.app_data(r.clone());
        }
        if let Some(settings) = &console {
            app = app.configure(console::configure(settings.clone()));
        }
        app
    })
    .workers(workers)
    .max_connections((limits.max_connections / workers).max(1))
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}
