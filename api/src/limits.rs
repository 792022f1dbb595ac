//! Limits that keep slow or greedy clients from exhausting the API: a
//! deadline on each request body, a cap on open connections below the
//! process's open-file limit, and a bound on large bodies read at once.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpMessage;
use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes};
use futures::{Stream, StreamExt};
use tokio::sync::Semaphore;

use crate::problem::ApiError;

/// Open files kept back from `MAX_CONNECTIONS` for the Postgres and Redis
/// pools, the listeners, logs and key files.
pub const RESERVED_FDS: u64 = 256;

/// The largest connection cap derived when `MAX_CONNECTIONS` is unset.
const DEFAULT_MAX_CONNECTIONS: u64 = 25_000;

/// How long a request's body may take to arrive once its head has.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);

/// Middleware: a body still arriving after [`BodyTimeout`] ends with a
/// `TimedOut` read error, which the JSON extractor's error handler answers
/// `408`. Without it a client that sends a `Content-Length` and then nothing
/// (or a byte now and then) holds its connection and file descriptor for
/// ever.
pub async fn body_deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if let Some(BodyTimeout(timeout)) = req.app_data::<BodyTimeout>().copied() {
        let deadline = tokio::time::Instant::now() + timeout;
        let payload = req.take_payload();
        let timed = futures::stream::unfold(Some(payload), move |payload| async move {
            let mut payload = payload?;
            match tokio::time::timeout_at(deadline, payload.next()).await {
                Ok(Some(chunk)) => Some((chunk, Some(payload))),
                Ok(None) => None,
                Err(_) => Some((Err(body_timed_out(timeout)), None)),
            }
        });
        let timed: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> = Box::pin(timed);
        req.set_payload(Payload::from(timed));
    }
    next.call(req).await
}

fn body_timed_out(timeout: Duration) -> PayloadError {
    PayloadError::Io(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the body did not arrive within {} ms", timeout.as_millis()),
    ))
}

/// Whether a body read failed on [`body_deadline`]'s deadline.
pub fn is_body_timeout(err: &PayloadError) -> bool {
    matches!(err, PayloadError::Io(e) if e.kind() == io::ErrorKind::TimedOut)
}

/// Requests with a body over `MAX_BODY_BYTES` (only `/addJobs` accepts
/// them) being read or handled now, at most `MAX_LARGE_REQUESTS`.
#[derive(Debug, Clone)]
pub struct LargeRequests(Arc<Semaphore>);

impl LargeRequests {
    /// Room for `n` at once.
    pub fn new(n: usize) -> Self {
        Self(Arc::new(Semaphore::new(n)))
    }
}

/// Bodies over this many bytes (`LARGE_BODY_BYTES`) count as large.
#[derive(Debug, Clone, Copy)]
pub struct LargeBody(pub usize);

/// Middleware: a request whose body is large, or of unannounced length,
/// holds one of [`LargeRequests`]' permits while it is read and handled;
/// without one it answers `503` with `Retry-After` at once. A few large
/// jobs (attachments) or batches at a time then bound what the API holds
/// in memory for them, however many arrive.
pub async fn bound_large_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let large = match req.app_data::<web::Data<LargeBody>>() {
        Some(large) => large.0,
        None => return next.call(req).await,
    };
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let permit = match (length, req.app_data::<web::Data<LargeRequests>>()) {
        (Some(length), _) if length <= large => None,
        (_, Some(requests)) => Some(
            Arc::clone(&requests.0)
                .try_acquire_owned()
                .map_err(|_| ApiError::TooManyLargeRequests)?,
        ),
        (_, None) => None,
    };
    let response = next.call(req).await;
    drop(permit);
    response
}

/// The connection cap: `MAX_CONNECTIONS` when set, refused when it leaves
/// fewer than [`RESERVED_FDS`] of the open-file limit; otherwise that limit
/// less the reserve. Past the cap the listener stops accepting, so a flood
/// of connections waits in the kernel's backlog instead of failing every
/// `accept` (and every Postgres or Redis connect) with `EMFILE`.
pub fn max_connections(configured: Option<u64>) -> anyhow::Result<u64> {
    let limit = open_file_limit();
    match (configured, limit) {
        (Some(n), Some(limit)) if n.saturating_add(RESERVED_FDS) > limit => anyhow::bail!(
            "MAX_CONNECTIONS {n} leaves fewer than {RESERVED_FDS} of the {limit} open files \
             this process may have for Postgres, Redis and logs; lower it or raise the limit \
             (ulimit -n)"
        ),
        (Some(n), _) => Ok(n),
        (None, Some(limit)) => {
            Ok((limit.saturating_sub(RESERVED_FDS)).clamp(1, DEFAULT_MAX_CONNECTIONS))
        }
        (None, None) => Ok(DEFAULT_MAX_CONNECTIONS),
    }
}

/// The soft open-file limit (`ulimit -n`), from `/proc/self/limits`; `None`
/// where that file does not exist or says `unlimited`.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_stays_below_the_open_file_limit() {
        let Some(limit) = open_file_limit() else {
            return;
        };
        let derived = max_connections(None).expect("derived");
        assert!(derived + RESERVED_FDS <= limit || derived == 1);
        assert!(max_connections(Some(limit)).is_err());
        assert_eq!(max_connections(Some(16)).ok(), Some(16));
    }
}
