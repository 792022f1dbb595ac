//! Console sessions: a random cookie exchanged for a verified bearer token,
//! kept in Redis under the cookie's SHA-256; and the CSRF checks.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use sendonce_shared::domain::Tenant;

use super::ConsoleSettings;
use super::error::ConsoleError;
use crate::auth::Claims;
use crate::rate_limit::RateLimit;
use crate::state::AppState;

/// The session cookie's name: `__Host-` (which browsers accept only
/// `Secure`, host-only, `Path=/`) outside development.
pub fn session_cookie(settings: &ConsoleSettings) -> &'static str {
    if settings.secure_cookies {
        "__Host-sendonce_console"
    } else {
        "sendonce_console"
    }
}

/// The sign-in form's double-submit cookie.
pub fn sign_in_cookie(settings: &ConsoleSettings) -> &'static str {
    if settings.secure_cookies {
        "__Host-sendonce_console_signin"
    } else {
        "sendonce_console_signin"
    }
}

/// A cookie of the console's: `HttpOnly`, `SameSite=Strict`, `Path=/`,
/// `Secure` outside development.
pub fn cookie<'c>(settings: &ConsoleSettings, name: &'c str, value: String) -> Cookie<'c> {
    Cookie::build(name, value)
        .path("/")
        .http_only(true)
        .secure(settings.secure_cookies)
        .same_site(SameSite::Strict)
        .finish()
}

/// 32 random bytes, URL-safe base64: a cookie value or a CSRF token.
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn digest(cookie: &str) -> String {
    hex::encode(Sha256::digest(cookie.as_bytes()))
}

/// Whether two secrets are equal, in time that does not depend on where
/// they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What Redis holds for a session.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    claims: Claims,
    tenant: Tenant,
    csrf: String,
    /// Unix seconds.
    expires_at: u64,
}

/// A signed-in operator: the claims of the token they signed in with.
#[derive(Debug)]
pub struct Session {
    digest: String,
    /// The sign-in token's claims (scopes, tenant, subject).
    pub claims: Claims,
    /// The token every form of this session carries.
    pub csrf: String,
}

impl Session {
    /// Starts a session for `claims`, lasting `settings.session_ttl` but
    /// never past the token's `exp`. Returns the cookie to set.
    pub async fn start(
        state: &AppState,
        settings: &ConsoleSettings,
        claims: Claims,
    ) -> Result<Cookie<'static>, ConsoleError> {
        let now = unix_now();
        let left = claims.exp.saturating_sub(now);
        if left == 0 {
            return Err(ConsoleError::Unauthorized("the token has expired".into()));
        }
        let ttl = settings.session_ttl.min(Duration::from_secs(left));
        let value = random_token();
        let stored = Stored {
            tenant: claims.tenant.clone(),
            claims,
            csrf: random_token(),
            expires_at: now + ttl.as_secs(),
        };
        let json = serde_json::to_string(&stored).map_err(ConsoleError::unavailable)?;
        state
            .queue
            .put_console_session(&digest(&value), &json, ttl)
            .await
            .map_err(ConsoleError::unavailable)?;
        let mut cookie = cookie(settings, session_cookie(settings), value);
        cookie.set_max_age(actix_web::cookie::time::Duration::seconds(
            i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
        ));
        Ok(cookie)
    }

    /// Ends this session: its key in Redis goes, so its cookie no longer
    /// signs anyone in, wherever it was copied to.
    pub async fn end(self, state: &AppState) -> Result<(), ConsoleError> {
        state
            .queue
            .end_console_session(&self.digest)
            .await
            .map_err(ConsoleError::unavailable)
    }

    /// Whether the session's token has `scope`.
    pub fn has(&self, scope: &str) -> bool {
        self.claims.has_scope(scope)
    }

    /// `Ok` when the session's token has `scope`, else a 403 page naming it.
    pub fn require(&self, scope: &str) -> Result<(), ConsoleError> {
        if self.has(scope) {
            Ok(())
        } else {
            Err(ConsoleError::Forbidden(format!(
                "this needs the `{scope}` scope, which the token you signed in with does not have"
            )))
        }
    }

    /// The tenant this session's reads and actions are confined to (`None`:
    /// every tenant, with `tenants:all`).
    pub fn tenant_scope(&self, filter: Option<Tenant>) -> Option<Tenant> {
        self.claims.tenant_scope(filter)
    }

    /// Who acts, for the audit trail: the token's `sub`.
    pub fn subject(&self) -> &str {
        self.claims.sub.as_deref().unwrap_or_default()
    }

    /// Checks a POST of this session that needs `scope`: the form's `csrf`
    /// must be the session's, the request must not come from another site,
    /// the token must have `scope`, and its rate limit (as the API's write
    /// scopes have) must not be spent.
    pub async fn authorize_post(
        &self,
        req: &HttpRequest,
        csrf: Option<&str>,
        scope: &str,
    ) -> Result<(), ConsoleError> {
        check_same_origin(req)?;
        match csrf {
            Some(token) if same_secret(token, &self.csrf) => {}
            _ => return Err(ConsoleError::Csrf),
        }
        self.require(scope)?;
        if let Some(limit) = req.app_data::<web::Data<RateLimit>>() {
            limit.check(&self.claims.rate_key()).await?;
        }
        Ok(())
    }
}

/// Refuses a request that says it comes from another site: an `Origin`
/// that is not `CONSOLE_ORIGIN` (or, unset, whose host is not this
/// request's `Host`), or `Sec-Fetch-Site: cross-site`/`same-site`.
/// Requests without either (old browsers, curl) rely on the CSRF token
/// alone.
pub fn check_same_origin(req: &HttpRequest) -> Result<(), ConsoleError> {
    let headers = req.headers();
    if let Some(site) = headers.get("sec-fetch-site")
        && matches!(site.as_bytes(), b"cross-site" | b"same-site")
    {
        return Err(ConsoleError::Csrf);
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    let configured = req
        .app_data::<web::Data<ConsoleSettings>>()
        .and_then(|settings| settings.origin.clone());
    let same = match configured {
        Some(expected) => origin.eq_ignore_ascii_case(&expected),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default();
            !host.is_empty()
                && origin
                    .split_once("://")
                    .is_some_and(|(_, origin_host)| origin_host.eq_ignore_ascii_case(host))
        }
    };
    if same {
        Ok(())
    } else {
        Err(ConsoleError::Csrf)
    }
}

impl FromRequest for Session {
    type Error = ConsoleError;
    type Future = LocalBoxFuture<'static, Result<Self, ConsoleError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let settings = req.app_data::<web::Data<ConsoleSettings>>().cloned();
        let cookie = settings.as_ref().and_then(|settings| {
            req.cookie(session_cookie(settings))
                .map(|c| c.value().to_owned())
        });
        Box::pin(async move {
            let (Some(state), Some(cookie)) = (state, cookie) else {
                return Err(ConsoleError::SignIn);
            };
            let digest = digest(&cookie);
            let Some(json) = state
                .queue
                .console_session(&digest)
                .await
                .map_err(ConsoleError::unavailable)?
            else {
                return Err(ConsoleError::SignIn);
            };
            let stored: Stored = serde_json::from_str(&json).map_err(|e| {
                tracing::warn!(error = %e, "a console session in Redis does not parse; signing in again");
                ConsoleError::SignIn
            })?;
            if stored.expires_at <= unix_now() {
                return Err(ConsoleError::SignIn);
            }
            let mut claims = stored.claims;
            claims.tenant = stored.tenant;
            Ok(Session {
                digest,
                claims,
                csrf: stored.csrf,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    #[test]
    fn a_post_from_another_origin_or_site_is_refused() {
        let same = TestRequest::post()
            .insert_header((header::HOST, "mail.example:8080"))
            .insert_header((header::ORIGIN, "https://mail.example:8080"))
            .to_http_request();
        assert!(check_same_origin(&same).is_ok());
        let bare = TestRequest::post()
            .insert_header((header::HOST, "mail.example"))
            .to_http_request();
        assert!(check_same_origin(&bare).is_ok());
        for (name, value) in [
            ("origin", "https://evil.example"),
            ("origin", "null"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-site", "same-site"),
        ] {
            let req = TestRequest::post()
                .insert_header((header::HOST, "mail.example"))
                .insert_header((name, value))
                .to_http_request();
            assert!(
                matches!(check_same_origin(&req), Err(ConsoleError::Csrf)),
                "{name}: {value}"
            );
        }
    }

    #[test]
    fn behind_a_proxy_that_rewrites_host_the_configured_origin_decides() {
        let settings = ConsoleSettings {
            session_ttl: Duration::from_secs(60),
            secure_cookies: true,
            origin: Some("https://ops.example.com".into()),
            mail_from: sendonce_shared::domain::EmailAddress::parse("a@b.example")
                .expect("address"),
        };
        let post = |origin: &str| {
            TestRequest::post()
                .app_data(web::Data::new(settings.clone()))
                .insert_header((header::HOST, "api:8080"))
                .insert_header((header::ORIGIN, origin.to_owned()))
                .to_http_request()
        };
        assert!(check_same_origin(&post("https://ops.example.com")).is_ok());
        assert!(check_same_origin(&post("http://api:8080")).is_err());
    }

    #[test]
    fn cookies_are_host_only_and_secure_outside_development() {
        let production = ConsoleSettings {
            session_ttl: Duration::from_secs(60),
            secure_cookies: true,
            origin: None,
            mail_from: sendonce_shared::domain::EmailAddress::parse("a@b.example")
                .expect("address"),
        };
        let cookie = cookie(&production, session_cookie(&production), "v".into());
        assert_eq!(cookie.name(), "__Host-sendonce_console");
        assert_eq!(
            (
                cookie.secure(),
                cookie.http_only(),
                cookie.same_site(),
                cookie.path()
            ),
            (Some(true), Some(true), Some(SameSite::Strict), Some("/"))
        );
        let development = ConsoleSettings {
            secure_cookies: false,
            ..production.clone()
        };
        assert_eq!(session_cookie(&development), "sendonce_console");
    }

    #[test]
    fn tokens_are_random_and_compared_whole() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(same_secret(&a, &a.clone()));
        assert!(!same_secret(&a, &b));
        assert!(!same_secret(&a, &a[..42]));
    }
}
