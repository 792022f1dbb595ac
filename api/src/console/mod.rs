//! The operator console: server-rendered pages under `/console/` (README,
//! "Console"), on when `CONSOLE_ENABLED=true`.
//!
//! - **No script.** Pages are HTML from [askama] templates compiled into the
//!   binary, with plain forms; the one stylesheet is embedded too, so the
//!   console works air-gapped and its Content-Security-Policy allows
//!   nothing but that stylesheet.
//! - **Sign-in** takes a bearer token the API accepts (verified by the same
//!   [`JwtKeys`](crate::auth::JwtKeys): algorithm, issuer, audience,
//!   expiry) and exchanges it for a session: a random cookie whose SHA-256
//!   keys the session in Redis, for `CONSOLE_SESSION_SECS` and never past
//!   the token's `exp`. Sign-out deletes it there, so a copied cookie dies
//!   with it.
//! - **Every form** carries the session's CSRF token (the sign-in form a
//!   double-submit one), the cookie is `SameSite=Strict`, and a POST whose
//!   `Origin` or `Sec-Fetch-Site` says it came from elsewhere is refused.
//! - **Scopes and tenants** are the API's: a page needs the scope its API
//!   route needs, an action its write scope, and a session sees its
//!   tenant's jobs only unless its token has `tenants:all`.

mod error;
mod pages;
mod session;
mod views;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::{Next, from_fn};
use actix_web::web;

use crate::config::{AppEnv, ConsoleConfig};

pub use error::ConsoleError;

/// What the console's handlers need besides the API's state.
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    /// How long a session lasts at most.
    pub session_ttl: std::time::Duration,
    /// Plain-http cookies (no `Secure`, no `__Host-` prefix) in
    /// development only.
    pub secure_cookies: bool,
    /// `CONSOLE_ORIGIN`: the origin a POST must come from, when not the
    /// request's `Host`.
    pub origin: Option<String>,
    /// The workers' `MAIL_FROM`, whose domain names each `Message-ID`.
    pub mail_from: sendonce_shared::domain::EmailAddress,
}

impl ConsoleSettings {
    /// The settings for `config` in `env`.
    pub fn new(config: &ConsoleConfig, env: AppEnv) -> Self {
        Self {
            session_ttl: std::time::Duration::from_secs(config.session_secs),
            secure_cookies: env != AppEnv::Development,
            origin: config.origin.clone(),
            mail_from: config.mail_from.clone(),
        }
    }
}

/// The Content-Security-Policy of every console response: the console's own
/// stylesheet and images, forms posting to itself, no script, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Adds the console's routes, under `/console`.
pub fn configure(settings: ConsoleSettings) -> impl Fn(&mut web::ServiceConfig) + Clone {
    move |cfg| {
        cfg.service(
            web::scope("/console")
                .app_data(web::Data::new(settings.clone()))
                .wrap(from_fn(security_headers))
                .route("", web::get().to(pages::to_overview))
                .route("/", web::get().to(pages::overview))
                .route("/assets/console.css", web::get().to(pages::stylesheet))
                .route("/sign-in", web::get().to(pages::sign_in_form))
                .route("/sign-in", web::post().to(pages::sign_in))
                .route("/sign-out", web::post().to(pages::sign_out))
                .route("/jobs", web::get().to(pages::jobs))
                .route("/jobs/{job_id}", web::get().to(pages::job))
                .route("/jobs/{job_id}/cancel", web::post().to(pages::cancel_job))
                .route("/dead-letters", web::get().to(pages::dead_letters))
                .route(
                    "/dead-letters/requeue",
                    web::post().to(pages::requeue_dead_letters),
                )
                .route(
                    "/dead-letters/discard",
                    web::post().to(pages::discard_dead_letters),
                )
                .route("/scheduled", web::get().to(pages::scheduled))
                .route("/suppressions", web::get().to(pages::suppressions))
                .route("/suppressions", web::post().to(pages::add_suppression))
                .route(
                    "/suppressions/lift",
                    web::post().to(pages::lift_suppression),
                )
                .route("/webhooks", web::get().to(pages::webhooks))
                .route("/webhooks/{id}", web::get().to(pages::webhook))
                .route(
                    "/webhooks/{id}/resume",
                    web::post().to(pages::resume_webhook),
                )
                .default_service(web::to(pages::not_found)),
        );
    }
}

/// Sets the security headers on every console response, its errors and
/// redirects included.
async fn security_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let mut res = next.call(req).await?;
    let headers = res.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("same-origin"),
        ),
        (
            HeaderName::from_static("permissions-policy"),
            HeaderValue::from_static("camera=(), microphone=(), geolocation=(), payment=()"),
        ),
    ] {
        headers.insert(name, value);
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    Ok(res)
}
