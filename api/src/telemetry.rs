//! The API's telemetry: metric names and buckets, the request-id and
//! request-metrics middlewares, and the root span every request's log lines
//! carry.
//!
//! Middleware order (outermost first): [`request_id`] fixes the request's
//! id, `TracingLogger` with [`RequestSpan`] opens the span that carries it,
//! and [`record_request`] counts and times the request.

use std::time::Instant;

use actix_web::HttpMessage;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use metrics::{Unit, counter, describe_counter, describe_histogram, histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use tracing::Span;
use tracing_actix_web::RootSpanBuilder;

use crate::auth::Authenticated;

/// Jobs accepted and queued (replays of an accepted key not counted).
pub const JOBS_ENQUEUED: &str = "sendonce_jobs_enqueued_total";
/// Requests answered, by `route` (the matched pattern) and `status`.
pub const API_REQUESTS: &str = "sendonce_api_requests_total";
/// Time to answer a request, by `route`.
pub const API_REQUEST_DURATION: &str = "sendonce_api_request_duration_seconds";
/// Every metric the API names (`sendonce_redis_evicts_keys`, which both
/// binaries export, is the shared crate's). The monitoring tests check the
/// Grafana dashboard's and the alert rules' uses of these against the live
/// API, and of every other name against the live worker.
pub const METRICS: &[&str] = &[JOBS_ENQUEUED, API_REQUESTS, API_REQUEST_DURATION];

/// The header carrying the request id, taken from the request when it is
/// sensible, generated otherwise, and echoed in the response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest request id accepted from a client.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The `route` label of a request that matched no route. Labels use the
/// route's pattern (`/jobs/{job_id}`), never the raw path, so a client
/// cannot create a series per URL.
const UNMATCHED_ROUTE: &str = "unmatched";

/// Routes whose requests are logged at debug level: probes and scrapes
/// arrive every few seconds and say nothing about the traffic.
const QUIET_ROUTES: &[&str] = &["/healthz", "/readyz"];

/// Each route's pattern, as `startup` registers it, and the status it
/// answers when all goes well; these series are registered at zero on
/// start-up, so dashboards and alerts see them before the first request.
/// Tests check that every entry is counted under its pattern and that every
/// path of the OpenAPI document is here.
pub const ROUTES: &[(&str, u16)] = &[
    ("/addJob", 202),
    ("/addJobs", 200),
    ("/jobs/{job_id}", 200),
    ("/jobs/{job_id}/cancel", 200),
    ("/stats", 200),
    ("/failedJobs", 200),
    ("/failedJobs/retry", 200),
    ("/failedJobs/{id}/retry", 200),
    ("/failedJobs/{id}", 204),
    ("/audit", 200),
    ("/webhooks", 200),
    ("/webhooks", 201),
    ("/webhooks/{id}", 200),
    ("/webhooks/{id}", 204),
    ("/webhooks/{id}/deliveries", 200),
    ("/webhooks/{id}/deliveries/{delivery_id}/replay", 200),
    ("/suppressions", 200),
    ("/suppressions", 201),
    ("/suppressions/{address}", 204),
    ("/healthz", 200),
    ("/readyz", 200),
    ("/openapi.json", 200),
];

/// Upper bounds of the request duration buckets, in seconds: most requests
/// take one Redis or Postgres round trip (milliseconds); the tail shows a
/// dependency in trouble.
const REQUEST_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the global recorder and registers every metric at zero.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle =
        sendonce_shared::telemetry::install_metrics(&[(API_REQUEST_DURATION, REQUEST_BUCKETS)])?;
    register();
    Ok(handle)
}

fn register() {
    describe_counter!(JOBS_ENQUEUED, "Jobs accepted and queued.");
    describe_counter!(
        API_REQUESTS,
        "Requests answered, by route pattern and status."
    );
    describe_histogram!(
        API_REQUEST_DURATION,
        Unit::Seconds,
        "Time to answer a request, by route pattern."
    );
    counter!(JOBS_ENQUEUED).absolute(0);
    for (route, status) in ROUTES {
        counter!(API_REQUESTS, "route" => *route, "status" => status.to_string()).absolute(0);
        let _ = histogram!(API_REQUEST_DURATION, "route" => *route);
    }
}

/// Records a queued job.
pub fn job_enqueued() {
    counter!(JOBS_ENQUEUED).increment(1);
}

/// Middleware: keeps the client's `X-Request-Id` when it is a sensible
/// token, replaces it with a fresh UUID otherwise, and echoes it in the
/// response. Anything else (too long, odd characters) is replaced rather
/// than trusted, since it ends up in every log line of the request.
pub async fn request_id(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .filter(|v| is_sensible_id(v.as_bytes()))
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
                .expect("a UUID is a valid header value")
        });
    req.headers_mut().insert(REQUEST_ID, id.clone());
    let mut res = next.call(req).await?;
    res.headers_mut().insert(REQUEST_ID, id);
    Ok(res)
}

/// The request's id, as [`request_id`] fixed it in `headers`.
pub fn request_id_in(headers: &HeaderMap) -> Option<&str> {
    headers.get(&REQUEST_ID).and_then(|v| v.to_str().ok())
}

fn is_sensible_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Middleware: counts the request by route pattern and status, and times it.
pub async fn record_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let route = route_of(&req);
    let started = Instant::now();
    let result = next.call(req).await;
    let status = status_of(&result);
    counter!(API_REQUESTS, "route" => route.clone(), "status" => status.as_str().to_owned())
        .increment(1);
    histogram!(API_REQUEST_DURATION, "route" => route).record(started.elapsed().as_secs_f64());
    result
}

fn route_of(req: &ServiceRequest) -> String {
    req.match_pattern()
        .unwrap_or_else(|| UNMATCHED_ROUTE.to_owned())
}

fn status_of<B>(result: &Result<ServiceResponse<B>, actix_web::Error>) -> StatusCode {
    match result {
        Ok(res) => res.status(),
        Err(e) => e.as_response_error().status_code(),
    }
}

/// The root span of a request: method, route pattern, request id and, once
/// answered, status. Headers are never recorded (they carry bearer tokens),
/// nor the query string.
#[derive(Debug)]
pub struct RequestSpan;

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let request_id = request_id_in(request.headers()).unwrap_or_default();
        tracing::info_span!(
            "request",
            method = %request.method(),
            route = %route_of(request),
            request_id = %request_id,
            status = tracing::field::Empty,
            // Set by `POST /addJob`, so its one line at INFO names the job.
            job_id = tracing::field::Empty,
            idempotency_key = tracing::field::Empty,
        )
    }

    fn on_request_end<B: MessageBody>(
        span: Span,
        outcome: &Result<ServiceResponse<B>, actix_web::Error>,
    ) {
        let status = status_of(outcome).as_u16();
        span.record("status", status);
        // Probes are frequent; a 4xx to a caller without a valid token is
        // anyone's to cause, as often as they like.
        let quiet = outcome.as_ref().ok().is_some_and(|res| {
            let request = res.request();
            let probe = request
                .match_pattern()
                .is_some_and(|route| QUIET_ROUTES.contains(&route.as_str()));
            let stranger = res.status().is_client_error()
                && request.extensions().get::<Authenticated>().is_none();
            probe || stranger
        });
        span.in_scope(|| {
            if quiet {
                tracing::debug!(status, "request answered");
            } else {
                tracing::info!(status, "request answered");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_only_when_short_and_plain() {
        assert!(is_sensible_id(b"0193c0de-5b1a-7cc3-9f2e-1c2d3e4f5a6b"));
        assert!(is_sensible_id(b"lb:req_42.a"));
        assert!(!is_sensible_id(b""));
        assert!(!is_sensible_id(b"id with spaces"));
        assert!(!is_sensible_id(b"line\nbreak"));
        assert!(!is_sensible_id(&[b'a'; MAX_REQUEST_ID_LEN + 1]));
    }

    #[test]
    fn every_path_of_the_openapi_document_is_registered_at_start_up() {
        let document: serde_json::Value =
            serde_json::from_str(crate::openapi::document()).expect("the document is JSON");
        let paths = document["paths"].as_object().expect("paths");
        for path in paths.keys() {
            assert!(
                ROUTES.iter().any(|(route, _)| route == path),
                "{path} is served but missing from telemetry::ROUTES"
            );
        }
    }
}
