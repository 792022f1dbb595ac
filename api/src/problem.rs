//! The API's error type and its RFC 9457 `application/problem+json` form.
//! 4xx answers say what to fix; 5xx answers say nothing about internals (the
//! cause chain goes to the log).

use std::str::FromStr;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request could not be read (malformed JSON, wrong types, unknown
    /// fields, bad query string).
    #[error("{0}")]
    BadRequest(String),
    /// A field was read but its value is invalid.
    #[error("`{field}` {reason}")]
    InvalidField {
        /// The field, as named in the request.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The idempotency key was used before for a different request.
    #[error("{0}")]
    KeyReused(String),
    /// No credentials, or credentials of another scheme than Bearer: the
    /// challenge carries no error code (RFC 6750 §3.1).
    #[error("an Authorization: Bearer token is required")]
    NoCredentials,
    /// The credentials are ambiguous, e.g. more than one `Authorization`
    /// header (RFC 6750 §3.1 `invalid_request`).
    #[error("{0}")]
    InvalidRequest(String),
    /// A bearer token that does not verify. The detail is the same whatever
    /// was wrong with it; the reason is logged at DEBUG.
    #[error("the bearer token is malformed, badly signed, expired or not meant for this API")]
    Unauthorized,
    /// A valid token without the scope this route needs.
    #[error("this request needs the `{0}` scope")]
    Forbidden(&'static str),
    /// No such resource.
    #[error("{0}")]
    NotFound(String),
    /// The job has gone too far for the action (a cancel of a job whose
    /// message is being sent, or that is finished).
    #[error("the job is `{state}`: {reason}")]
    Conflict {
        /// The job's state, as `GET /jobs/{id}` names it.
        state: String,
        /// Why the action cannot be done in that state.
        reason: &'static str,
    },
    /// The body did not arrive within `BODY_TIMEOUT_MS`.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// The body is larger than allowed.
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The body is not JSON.
    #[error("the body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    /// The caller's tenant has `MAX_QUEUED_PER_TENANT` jobs unfinished.
    #[error(
        "this tenant has {unfinished} unfinished jobs, and MAX_QUEUED_PER_TENANT is {max}; \
         retry once some are done"
    )]
    BacklogFull {
        /// The tenant's unfinished jobs, as last counted.
        unfinished: u64,
        /// The cap.
        max: u64,
    },
    /// The caller's write rate limit is spent.
    #[error("too many requests; retry in {retry_after_secs} s")]
    TooManyRequests {
        /// Seconds until the next request is allowed.
        retry_after_secs: u64,
    },
    /// `MAX_LARGE_REQUESTS` large bodies are being read already.
    #[error("too many large requests in progress; retry shortly, or send smaller batches")]
    TooManyLargeRequests,
    /// A readiness probe found dependencies down.
    #[error("not ready: {0} did not answer in time")]
    NotReady(String),
    /// A readiness probe during `SHUTDOWN_DELAY_MS` after SIGTERM.
    #[error("not ready: shutting down")]
    ShuttingDown,
    /// A dependency (Redis, Postgres) failed or is down.
    #[error("a dependency is unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// A bug or an unexpected state.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// Wraps a dependency failure.
    pub fn unavailable(e: impl Into<anyhow::Error>) -> Self {
        Self::Unavailable(e.into())
    }
}

/// Parses the optional `field` (`?reason=failed`) into a `T` whose parse
/// error says what is wrong with the value; refused naming the field.
pub fn parse_field<T: FromStr<Err = String>>(
    field: &'static str,
    value: Option<&str>,
) -> Result<Option<T>, ApiError> {
    value
        .map(|v| {
            v.parse()
                .map_err(|reason| ApiError::InvalidField { field, reason })
        })
        .transpose()
}

/// RFC 9457 problem details, the body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem<'a> {
    /// Always `about:blank`: the status says what kind of problem it is.
    r#type: &'a str,
    /// The status's reason phrase.
    title: &'a str,
    /// The HTTP status.
    status: u16,
    /// What went wrong, naming the field at fault; opaque for 5xx.
    detail: String,
    /// On a `409`, the job's current state.
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<String>,
}

impl ApiError {
    /// The problem details this error answers with; also how a batch
    /// reports one item's error.
    pub fn problem(&self) -> Problem<'static> {
        let status = self.status_code();
        let detail = match self {
            Self::Unavailable(_) => "a dependency is unavailable; retry later".to_owned(),
            Self::Internal(_) => "an internal error occurred".to_owned(),
            other => other.to_string(),
        };
        Problem {
            r#type: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail,
            state: match self {
                Self::Conflict { state, .. } => Some(state.clone()),
                _ => None,
            },
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::InvalidField { .. } | Self::KeyReused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized | Self::NoCredentials => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooManyRequests { .. } | Self::BacklogFull { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::Unavailable(_)
            | Self::NotReady(_)
            | Self::ShuttingDown
            | Self::TooManyLargeRequests => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() && !matches!(self, Self::NotReady(_) | Self::ShuttingDown) {
            tracing::error!(error = ?anyhow_chain(self), "request failed");
        }
        let mut response = HttpResponse::build(status);
        response.content_type("application/problem+json");
        match self {
            Self::NoCredentials => {
                response
                    .insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
            }
            Self::InvalidRequest(_) => {
                response.insert_header((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_request\""),
                ));
            }
            Self::Unauthorized => {
                response.insert_header((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                ));
            }
            Self::Forbidden(scope) => {
                if let Ok(v) = HeaderValue::from_str(&format!(
                    "Bearer error=\"insufficient_scope\", scope=\"{scope}\""
                )) {
                    response.insert_header((header::WWW_AUTHENTICATE, v));
                }
            }
            Self::Unavailable(_) | Self::TooManyLargeRequests | Self::BacklogFull { .. } => {
                response.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
            }
            // The rest of the body may never come: free the connection.
            Self::RequestTimeout => {
                response.force_close();
            }
            Self::TooManyRequests { retry_after_secs } => {
                response.insert_header((header::RETRY_AFTER, *retry_after_secs));
            }
            _ => {}
        }
        response.json(self.problem())
    }
}

fn anyhow_chain(e: &ApiError) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
