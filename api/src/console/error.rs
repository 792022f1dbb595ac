//! How console requests fail: an HTML page with the status, or a redirect
//! to sign in. Never the cause of a 5xx (that goes to the log).

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, ResponseError};
use askama::Template;

use super::views::ErrorPage;

/// Every way a console request can fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsoleError {
    /// No session, or an expired or ended one: `303` to the sign-in page.
    #[error("sign in first")]
    SignIn,
    /// The sign-in token did not verify.
    #[error("{0}")]
    Unauthorized(String),
    /// The session lacks the scope, or the request is not what it claims.
    #[error("{0}")]
    Forbidden(String),
    /// A POST without the session's CSRF token, or from another origin.
    #[error(
        "the form's CSRF token is missing or wrong, or it was posted from another site; reload the page and try again"
    )]
    Csrf,
    /// No such page or record (or another tenant's).
    #[error("{0}")]
    NotFound(String),
    /// The record has gone too far for the action.
    #[error("{0}")]
    Conflict(String),
    /// The request could not be read.
    #[error("{0}")]
    BadRequest(String),
    /// A write scope's rate limit is spent.
    #[error("too many actions; wait a moment and try again")]
    TooManyRequests,
    /// Redis or Postgres did not answer.
    #[error("the console cannot reach its store; try again")]
    Unavailable(#[source] anyhow::Error),
}

impl ConsoleError {
    /// A store or queue failure, logged with its cause.
    pub fn unavailable(e: impl Into<anyhow::Error>) -> Self {
        Self::Unavailable(e.into())
    }
}

impl From<crate::problem::ApiError> for ConsoleError {
    fn from(e: crate::problem::ApiError) -> Self {
        use crate::problem::ApiError;
        match e {
            ApiError::TooManyRequests { .. } => Self::TooManyRequests,
            ApiError::NotFound(detail) => Self::NotFound(detail),
            ApiError::Forbidden(scope) => {
                Self::Forbidden(format!("this needs the `{scope}` scope"))
            }
            ApiError::BadRequest(detail) => Self::BadRequest(detail),
            ApiError::InvalidField { .. } => Self::BadRequest(e.to_string()),
            other => Self::Unavailable(anyhow::anyhow!("{other}")),
        }
    }
}

impl ResponseError for ConsoleError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::SignIn => StatusCode::SEE_OTHER,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::Csrf => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::SignIn = self {
            return HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/console/sign-in"))
                .finish();
        }
        if let Self::Unavailable(cause) = self {
            tracing::error!(error = format!("{cause:#}"), "console request failed");
        }
        let status = self.status_code();
        let page = ErrorPage {
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error"),
            detail: self.to_string(),
        };
        match page.render() {
            Ok(html) => HttpResponse::build(status)
                .content_type("text/html; charset=utf-8")
                .body(html),
            Err(e) => {
                tracing::error!(error = %e, "console error page did not render");
                HttpResponse::build(status).finish()
            }
        }
    }
}
