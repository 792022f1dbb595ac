//! Bearer-JWT authentication and scopes.
//!
//! The accepted algorithm comes from `JWT_ALGORITHM`, never from the token's
//! header: HS256 with `JWT_SECRET`, or RS256 / ES256 / EdDSA with the PEM
//! public key in `JWT_PUBLIC_KEY_FILE`. `alg: none` and HMAC tokens keyed
//! with a public key's bytes (algorithm confusion) therefore never verify.
//! `exp` is required, `nbf` honoured, both within `JWT_LEEWAY_SECS`; `iss`
//! and `aud` are required and checked when `JWT_ISSUER` / `JWT_AUDIENCE` are
//! set. The space-separated `scope` claim lists what the bearer may do.
//!
//! # Using it in a handler
//!
//! Take an [`Authorized`] argument naming the scope the route needs; the
//! scope is then part of the handler's signature and cannot be forgotten:
//!
//! ```text
//! pub async fn add_job(caller: Authorized<scope::JobsWrite>, ...) -> ... {
//!     let subject = caller.subject();
//! ```
//!
//! Extraction answers 401 with a bare `WWW-Authenticate: Bearer` challenge
//! without Bearer credentials (RFC 6750 §3.1), 401 with
//! `error="invalid_token"` and one opaque detail for a token that does not
//! verify (including one with `crit` or `b64: false` header parameters,
//! RFC 7515 §4.1.11), 400 `error="invalid_request"` for more than one
//! `Authorization` header, 403 (`error="insufficient_scope"`) without the
//! scope, and 429 when a write scope's per-subject rate limit is spent.

use futures::future::LocalBoxFuture;
use std::marker::PhantomData;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header;
use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload, web};
use anyhow::{Context, bail};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use sendonce_shared::domain::Tenant;

use crate::config::{ApiConfig, AppEnv, JwtAlgorithm};
use crate::problem::ApiError;
use crate::rate_limit::RateLimit;

/// Shortest `JWT_SECRET` accepted outside development: HS256's own output
/// size, below which the key is easier to guess than the hash.
pub const MIN_SECRET_BYTES: usize = 32;

/// Secrets printed in this repository (docker-compose.yml, README): anyone
/// can sign tokens with them, so production refuses them.
const PUBLISHED_SECRETS: &[&str] = &["dev-only-insecure-jwt-secret-change-me-0123456789"];

/// The scopes routes ask for, as types so a handler names its scope in its
/// signature (`Authorized<scope::JobsWrite>`).
pub mod scope {
    /// A scope a route can require.
    pub trait Scope {
        /// The scope as it appears in the token's `scope` claim.
        const NAME: &'static str;
        /// Whether calls under this scope count against `RATE_LIMIT_PER_SEC`.
        const RATE_LIMITED: bool;
    }

    /// Post jobs (`jobs:write`).
    #[derive(Debug)]
    pub struct JobsWrite;
    /// Read job status (`jobs:read`).
    #[derive(Debug)]
    pub struct JobsRead;
    /// Read the dead-letter table (`failed:read`).
    #[derive(Debug)]
    pub struct FailedRead;
    /// Requeue or discard dead-letter entries (`failed:write`).
    #[derive(Debug)]
    pub struct FailedWrite;
    /// Read the audit trail of requeues and discards (`audit:read`).
    #[derive(Debug)]
    pub struct AuditRead;
    /// Read webhook endpoints and their delivery logs (`webhooks:read`).
    #[derive(Debug)]
    pub struct WebhooksRead;
    /// Create, change and delete webhook endpoints, replay deliveries
    /// (`webhooks:write`).
    #[derive(Debug)]
    pub struct WebhooksWrite;
    /// Read the suppression list (`suppressions:read`).
    #[derive(Debug)]
    pub struct SuppressionsRead;
    /// Add addresses to the suppression list and lift them
    /// (`suppressions:write`).
    #[derive(Debug)]
    pub struct SuppressionsWrite;

    impl Scope for JobsWrite {
        const NAME: &'static str = "jobs:write";
        const RATE_LIMITED: bool = true;
    }
    impl Scope for JobsRead {
        const NAME: &'static str = "jobs:read";
        const RATE_LIMITED: bool = false;
    }
    impl Scope for FailedRead {
        const NAME: &'static str = "failed:read";
        const RATE_LIMITED: bool = false;
    }
    impl Scope for FailedWrite {
        const NAME: &'static str = "failed:write";
        const RATE_LIMITED: bool = true;
    }
    impl Scope for AuditRead {
        const NAME: &'static str = "audit:read";
        const RATE_LIMITED: bool = false;
    }
    impl Scope for WebhooksRead {
        const NAME: &'static str = "webhooks:read";
        const RATE_LIMITED: bool = false;
    }
    impl Scope for WebhooksWrite {
        const NAME: &'static str = "webhooks:write";
        const RATE_LIMITED: bool = true;
    }
    impl Scope for SuppressionsRead {
        const NAME: &'static str = "suppressions:read";
        const RATE_LIMITED: bool = false;
    }
    impl Scope for SuppressionsWrite {
        const NAME: &'static str = "suppressions:write";
        const RATE_LIMITED: bool = true;
    }
}

use scope::Scope;

/// The claims sendonce reads. `nbf`, `iss` and `aud` are checked by the
/// validation, not read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token was issued to; the rate limit's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Space-separated scopes.
    #[serde(default)]
    pub scope: String,
    /// The caller's tenant: the claim named by `JWT_TENANT_CLAIM`, or
    /// the tenant `default` when the token has none. Set by
    /// [`JwtKeys::verify`].
    #[serde(skip)]
    pub tenant: Tenant,
    /// The other claims, where the tenant claim is looked up.
    #[serde(flatten, skip_serializing)]
    other: serde_json::Map<String, serde_json::Value>,
}

/// The scope of operators, whose reads and actions span every tenant.
pub const ALL_TENANTS: &str = "tenants:all";

impl Claims {
    /// Whether the token carries `wanted`.
    pub fn has_scope(&self, wanted: &str) -> bool {
        self.scope.split(' ').any(|s| s == wanted)
    }

    /// Whose budget a write spends under `RATE_LIMIT_PER_SEC`: a tenant's
    /// (`tenant:<name>`), shared by all its tokens so that one
    /// application's burst cannot starve another; in the tenant `default`,
    /// each token subject's own (`sub:<sub>`), as before tenants.
    pub fn rate_key(&self) -> String {
        if self.tenant.is_default() {
            format!("sub:{}", self.sub.as_deref().unwrap_or_default())
        } else {
            format!("tenant:{}", self.tenant)
        }
    }

    /// The tenant the caller's reads and actions are confined to: its own,
    /// or none with the scope `tenants:all` (then `filter`, a `tenant`
    /// parameter, narrows them to one; ignored without that scope, so a
    /// tenant never learns that another exists).
    pub fn tenant_scope(&self, filter: Option<Tenant>) -> Option<Tenant> {
        if self.has_scope(ALL_TENANTS) {
            filter
        } else {
            Some(self.tenant.clone())
        }
    }
}

/// Verifies tokens, and mints them when the key is symmetric.
#[derive(Clone)]
pub struct JwtKeys {
    decoding: DecodingKey,
    /// Only with HS256: the API holds no private key for the others.
    encoding: Option<EncodingKey>,
    validation: Validation,
    /// `JWT_TENANT_CLAIM`.
    tenant_claim: String,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl JwtKeys {
    /// Reads and checks the JWT settings. The error names the variable at
    /// fault: a missing or weak `JWT_SECRET`, an unreadable or mismatched
    /// `JWT_PUBLIC_KEY_FILE`, or a setting that does not fit the algorithm.
    pub fn from_config(config: &ApiConfig) -> anyhow::Result<Self> {
        let (algorithm, decoding, encoding) = match config.jwt_algorithm {
            JwtAlgorithm::Hs256 => {
                if config.jwt_public_key_file.is_some() {
                    bail!(
                        "JWT_PUBLIC_KEY_FILE is set but JWT_ALGORITHM is HS256; set JWT_ALGORITHM to the key's algorithm"
                    );
                }
                let secret = config
                    .jwt_secret
                    .as_ref()
                    .context("JWT_SECRET is required when JWT_ALGORITHM is HS256")?;
                check_secret(secret, config.app_env)?;
                let bytes = secret.expose_secret().as_bytes();
                (
                    Algorithm::HS256,
                    DecodingKey::from_secret(bytes),
                    Some(EncodingKey::from_secret(bytes)),
                )
            }
            asymmetric => {
                if config.jwt_secret.is_some() {
                    bail!(
                        "JWT_SECRET is set but JWT_ALGORITHM is {asymmetric:?}; unset it, tokens are verified with JWT_PUBLIC_KEY_FILE"
                    );
                }
                let path = config.jwt_public_key_file.as_ref().with_context(|| {
                    format!("JWT_PUBLIC_KEY_FILE is required when JWT_ALGORITHM is {asymmetric:?}")
                })?;
                let pem = std::fs::read(path).with_context(|| {
                    format!("failed to read JWT_PUBLIC_KEY_FILE {}", path.display())
                })?;
                let (algorithm, key) = match asymmetric {
                    JwtAlgorithm::Rs256 => (Algorithm::RS256, DecodingKey::from_rsa_pem(&pem)),
                    JwtAlgorithm::Es256 => (Algorithm::ES256, DecodingKey::from_ec_pem(&pem)),
                    _ => (Algorithm::EdDSA, DecodingKey::from_ed_pem(&pem)),
                };
                let key = key.with_context(|| {
                    format!(
                        "JWT_PUBLIC_KEY_FILE {} is not a PEM public key for {asymmetric:?}",
                        path.display()
                    )
                })?;
                (algorithm, key, None)
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = config.jwt_leeway_secs;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(issuer) = &config.jwt_issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &config.jwt_audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Self {
            decoding,
            encoding,
            validation,
            tenant_claim: config.jwt_tenant_claim.clone(),
        })
    }

    /// Verifies `token` and returns its claims. Every refusal is the same
    /// opaque [`ApiError::Unauthorized`]; the reason goes to the DEBUG log.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let refuse = |reason: &dyn std::fmt::Display| {
            tracing::debug!(%reason, "bearer token refused");
            ApiError::Unauthorized
        };
        let header = jsonwebtoken::decode_header(token).map_err(|e| refuse(&e))?;
        // RFC 7515 §4.1.11: a recipient that does not understand every
        // `crit` parameter must reject the token; sendonce understands none.
        // RFC 7797's `b64: false` (an unencoded payload) must be listed in
        // `crit`, and is refused even when it is not.
        if let Some(crit) = &header.crit {
            return Err(refuse(&format!("critical header parameters {crit:?}")));
        }
        if header
            .extras
            .inner()
            .get("b64")
            .is_some_and(|b64| b64 != &serde_json::Value::Bool(true))
        {
            return Err(refuse(&"an unencoded payload (b64)"));
        }
        let mut claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| refuse(&e))?;
        claims.tenant = self.tenant_of(&claims).map_err(|e| refuse(&e))?;
        Ok(claims)
    }

    /// The tenant named by the `JWT_TENANT_CLAIM` claim: a string (or an
    /// integer) that is a [`Tenant`] name; the tenant `default` when the
    /// claim is absent.
    fn tenant_of(&self, claims: &Claims) -> Result<Tenant, String> {
        let value = match self.tenant_claim.as_str() {
            "sub" => claims.sub.clone().map(serde_json::Value::String),
            name => claims.other.get(name).cloned(),
        };
        let tenant = match value {
            None | Some(serde_json::Value::Null) => return Ok(Tenant::default_tenant()),
            Some(serde_json::Value::String(s)) => s,
            Some(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
            Some(other) => {
                return Err(format!(
                    "the tenant claim `{}` is not a string: {other}",
                    self.tenant_claim
                ));
            }
        };
        Tenant::parse(tenant).map_err(|e| format!("the tenant claim `{}` {e}", self.tenant_claim))
    }

    /// What the operator should know about these settings, logged at
    /// start-up: with `JWT_AUDIENCE` unset, a token minted for any other
    /// service that trusts the same issuer and key is accepted here.
    pub fn warnings(config: &ApiConfig) -> Vec<&'static str> {
        let mut warnings = Vec::new();
        if config.jwt_audience.is_none() && config.app_env != AppEnv::Development {
            warnings.push(
                "JWT_AUDIENCE is unset: tokens for any audience are accepted; set it to the `aud` your issuer puts in tokens for this API",
            );
        }
        warnings
    }

    /// Mints an HS256 token for `sub` with `scope`, valid for `ttl`, with the
    /// configured `iss` and `aud`.
    pub fn mint(&self, sub: &str, scope: &str, ttl: Duration) -> anyhow::Result<String> {
        self.mint_with(sub, scope, ttl, serde_json::Map::new())
    }

    /// As [`JwtKeys::mint`], with `extra` claims besides (a tenant claim
    /// other than `sub`, in tests).
    pub fn mint_with(
        &self,
        sub: &str,
        scope: &str,
        ttl: Duration,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> anyhow::Result<String> {
        let encoding = self.encoding.as_ref().context(
            "only HS256 tokens can be minted here; tokens for a public key come from its issuer",
        )?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let mut claims = serde_json::json!({
            "sub": sub,
            "exp": now + ttl.as_secs(),
            "iat": now,
            "scope": scope,
        });
        for (name, value) in extra {
            claims[name] = value;
        }
        if let Some(issuer) = self.validation.iss.iter().flatten().next() {
            claims["iss"] = issuer.as_str().into();
        }
        if let Some(audience) = self.validation.aud.iter().flatten().next() {
            claims["aud"] = audience.as_str().into();
        }
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            encoding,
        )?)
    }
}

fn check_secret(secret: &SecretString, env: AppEnv) -> anyhow::Result<()> {
    if env == AppEnv::Development {
        return Ok(());
    }
    let secret = secret.expose_secret();
    if PUBLISHED_SECRETS.contains(&secret) {
        bail!(
            "JWT_SECRET is the published development secret; set a private one (e.g. `openssl rand -hex 32`) or APP_ENV=development"
        );
    }
    if secret.len() < MIN_SECRET_BYTES {
        bail!(
            "JWT_SECRET is shorter than {MIN_SECRET_BYTES} bytes; set a longer one (e.g. `openssl rand -hex 32`) or APP_ENV=development"
        );
    }
    Ok(())
}

/// Marks a request whose bearer token verified, in its extensions: the
/// request log keeps answers to anyone else's 4xx at DEBUG, so that
/// strangers cannot flood it.
#[derive(Debug, Clone, Copy)]
pub struct Authenticated;

/// A verified caller holding scope `S`. See the module docs.
#[derive(Debug)]
pub struct Authorized<S: Scope> {
    /// The token's claims.
    pub claims: Claims,
    _scope: PhantomData<S>,
}

impl<S: Scope> Authorized<S> {
    /// Who the token was issued to, as the audit trail knows the caller:
    /// its `sub`, or "" for a token without one.
    pub fn subject(&self) -> &str {
        self.claims.sub.as_deref().unwrap_or_default()
    }

    /// Whose budget a request spends under `RATE_LIMIT_PER_SEC` (see
    /// [`Claims::rate_key`]).
    pub fn rate_key(&self) -> String {
        self.claims.rate_key()
    }
}

impl<S: Scope + 'static> FromRequest for Authorized<S> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let authorized = authorize::<S>(req);
        // The rate limit asks Redis (shared by every replica), so it is the
        // one asynchronous step; only scoped, verified callers reach it.
        let limit = S::RATE_LIMITED
            .then(|| req.app_data::<web::Data<RateLimit>>().cloned())
            .flatten();
        Box::pin(async move {
            let authorized = authorized?;
            if let Some(limit) = limit {
                limit.check(&authorized.rate_key()).await?;
            }
            Ok(authorized)
        })
    }
}

fn authorize<S: Scope>(req: &HttpRequest) -> Result<Authorized<S>, ApiError> {
    let claims = authenticate(req)?;
    if !claims.has_scope(S::NAME) {
        return Err(ApiError::Forbidden(S::NAME));
    }
    Ok(Authorized {
        claims,
        _scope: PhantomData,
    })
}

fn authenticate(req: &HttpRequest) -> Result<Claims, ApiError> {
    let keys = req
        .app_data::<web::Data<JwtKeys>>()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("JwtKeys not configured")))?;
    let mut values = req.headers().get_all(header::AUTHORIZATION);
    let value = values.next().ok_or(ApiError::NoCredentials)?;
    if values.next().is_some() {
        return Err(ApiError::InvalidRequest(
            "send one Authorization header, not several".into(),
        ));
    }
    let value = value.to_str().map_err(|_| ApiError::Unauthorized)?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    // Credentials of another scheme are, to a Bearer resource, none at all.
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::NoCredentials);
    }
    let claims = match token.trim() {
        "" => Err(ApiError::Unauthorized),
        token => keys.verify(token),
    }?;
    req.extensions_mut().insert(Authenticated);
    Ok(claims)
}
