//! The API's settings.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use secrecy::SecretString;
pub use sendonce_shared::config::AppEnv;
use sendonce_shared::config::{CommonConfig, parse_millis};
use sendonce_shared::domain::EmailAddress;

/// The one algorithm bearer tokens must be signed with. Taken from here,
/// never from a token's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with `JWT_SECRET`.
    #[value(name = "HS256")]
    Hs256,
    /// RSA PKCS#1 v1.5 with SHA-256; public key in `JWT_PUBLIC_KEY_FILE`.
    #[value(name = "RS256")]
    Rs256,
    /// ECDSA P-256 with SHA-256; public key in `JWT_PUBLIC_KEY_FILE`.
    #[value(name = "ES256")]
    Es256,
    /// Ed25519; public key in `JWT_PUBLIC_KEY_FILE`.
    #[value(name = "EdDSA")]
    EdDsa,
}

/// Settings of `sendonce-api`.
#[derive(Debug, Clone, Parser)]
#[command(name = "sendonce-api")]
pub struct ApiConfig {
    #[command(flatten)]
    pub common: CommonConfig,

    /// Address to listen on.
    #[arg(long, env = "API_ADDR", default_value = "0.0.0.0:8080")]
    pub api_addr: SocketAddr,

    /// Address of `/metrics` (with `/healthz` and `/readyz`), apart from
    /// `API_ADDR` so that it can stay off public networks.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,

    /// After SIGTERM, how long the API goes on serving while `/readyz`
    /// answers 503, in ms, so that load balancers take it out before its
    /// listener closes (0: stop accepting at once, as behind a `preStop`
    /// delay).
    #[arg(long = "shutdown-delay-ms", env = "SHUTDOWN_DELAY_MS", default_value = "0", value_parser = parse_millis)]
    pub shutdown_delay: Duration,

    /// `production` refuses weak or published secrets at start-up;
    /// `development` allows them.
    #[arg(long, env = "APP_ENV", value_enum, default_value_t = AppEnv::Production)]
    pub app_env: AppEnv,

    /// Algorithm every bearer token must be signed with.
    #[arg(long, env = "JWT_ALGORITHM", value_enum, default_value_t = JwtAlgorithm::Hs256)]
    pub jwt_algorithm: JwtAlgorithm,

    /// HS256 key that signs and verifies bearer tokens (at least 32 bytes).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub jwt_secret: Option<SecretString>,

    /// PEM public key (SPKI) verifying RS256, ES256 or EdDSA tokens.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Clock skew tolerated on `exp` and `nbf`, in seconds (0 to 60).
    #[arg(long, env = "JWT_LEEWAY_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=60))]
    pub jwt_leeway_secs: u64,

    /// When set, tokens must carry this `iss`.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// When set, tokens must carry this `aud`.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// The claim that names the caller's tenant (a private claim, or `sub`
    /// when each application has its own subject); tokens without it belong
    /// to the tenant `default`, as every job from before tenants does, so
    /// an upgrade changes nothing until tokens carry the claim.
    #[arg(long, env = "JWT_TENANT_CLAIM", default_value = "tenant", value_parser = parse_claim_name)]
    pub jwt_tenant_claim: String,

    /// A TOML file of the senders each tenant may put in `from`, and its
    /// default `from` (see README, "Sender policy"); re-read on SIGHUP.
    /// Unset: any `from` is accepted.
    #[arg(long, env = "SENDER_POLICY_FILE")]
    pub sender_policy_file: Option<std::path::PathBuf>,

    /// Largest accepted request body, in bytes. The default takes a job
    /// at `MAX_MESSAGE_BYTES`: its attachments come base64-encoded, a
    /// third larger than they are.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..=64 * 1024 * 1024))]
    pub max_body_bytes: u64,

    /// Largest accepted `POST /addJobs` body, in bytes; by default twice
    /// `MAX_BODY_BYTES`, so a batch holds at least one job of any size
    /// `/addJob` takes.
    #[arg(long, env = "MAX_BATCH_BYTES", default_value_t = 32 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..=256 * 1024 * 1024))]
    pub max_batch_bytes: u64,

    /// Largest `text` plus `html` of one job, in bytes, in `/addJob` and in
    /// each job of a batch.
    #[arg(long, env = "MAX_JOB_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..=64 * 1024 * 1024))]
    pub max_job_bytes: u64,

    /// Largest message of one job, in bytes: its `text`, `html` and
    /// attachments (decoded) together, in `/addJob` and in each job of a
    /// batch.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 10 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..=64 * 1024 * 1024))]
    pub max_message_bytes: u64,

    /// Most recipients of one job, `to`, `cc` and `bcc` together.
    #[arg(long, env = "MAX_RECIPIENTS", default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub max_recipients: u16,

    /// How far ahead a job's `send_at` may be, in days.
    #[arg(long, env = "MAX_SCHEDULE_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub max_schedule_days: u32,

    /// Bodies over this many bytes, in `/addJob` (attachments) and
    /// `/addJobs`, are large: at most `MAX_LARGE_REQUESTS` of them are read
    /// at once.
    #[arg(long, env = "LARGE_BODY_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..=64 * 1024 * 1024))]
    pub large_body_bytes: u64,

    /// Requests with a body over `LARGE_BODY_BYTES` read at once; more
    /// answer `503` with `Retry-After`. Bounds their memory to about this
    /// many times `MAX_BATCH_BYTES`.
    #[arg(long, env = "MAX_LARGE_REQUESTS", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_large_requests: u64,

    /// How long a request body may take to arrive once the request's head
    /// has, in milliseconds; then `408`.
    #[arg(long, env = "BODY_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub body_timeout_ms: u64,

    /// Most connections open at once; unset, the open-file limit less 256.
    /// Refused at start-up when it leaves fewer than 256 open files spare.
    #[arg(long, env = "MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,

    /// Days a finished job keeps its personal data (the task copy, the
    /// server's reply, its dead-letter entry); `sendonce-api prune` removes
    /// what is older. Unset, nothing is pruned.
    #[arg(long, env = "RETENTION_DAYS", value_parser = clap::value_parser!(u32).range(1..))]
    pub retention_days: Option<u32>,

    /// Requests per second each tenant (in the tenant `default`, each
    /// token subject) may make to the write endpoints; unset means no limit.
    #[arg(long, env = "RATE_LIMIT_PER_SEC")]
    pub rate_limit_per_sec: Option<NonZeroU32>,

    /// Most unfinished jobs (queued, in flight or waiting for a retry) a
    /// tenant may have; over it, `POST /addJob` and `/addJobs` answer 429.
    /// Unset means no cap.
    #[arg(long, env = "MAX_QUEUED_PER_TENANT", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queued_per_tenant: Option<u64>,

    #[command(flatten)]
    pub console: ConsoleConfig,
}

/// Settings of the operator console (README, "Console").
#[derive(Debug, Clone, clap::Args)]
pub struct ConsoleConfig {
    /// Serve the operator console under `/console/`. Off, every `/console`
    /// path answers 404.
    #[arg(long = "console-enabled", env = "CONSOLE_ENABLED", default_value_t = false, action = clap::ArgAction::Set)]
    pub enabled: bool,

    /// How long a console session lasts, in seconds; never past the `exp`
    /// of the token it was signed in with.
    #[arg(long = "console-session-secs", env = "CONSOLE_SESSION_SECS", default_value_t = 1800, value_parser = clap::value_parser!(u64).range(60..=86_400))]
    pub session_secs: u64,

    /// The console's origin as browsers see it (`https://ops.example.com`),
    /// when a proxy in front of the API rewrites `Host`: a POST's `Origin`
    /// must then be this. Unset, it must match the request's `Host`.
    #[arg(long = "console-origin", env = "CONSOLE_ORIGIN", value_parser = parse_origin)]
    pub origin: Option<String>,

    /// The workers' `MAIL_FROM` (the same variable, the same default): its
    /// domain names every job's `Message-ID`, which a job's page shows.
    #[arg(long = "mail-from", env = "MAIL_FROM", default_value = "sendonce <noreply@sendonce.localhost>", value_parser = parse_mail_from)]
    pub mail_from: EmailAddress,
}

fn parse_origin(s: &str) -> Result<String, String> {
    let url = url::Url::parse(s).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an http or https origin, e.g. https://ops.example.com".into());
    }
    if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
        return Err("must be an origin only: scheme, host and port, no path".into());
    }
    Ok(url.origin().ascii_serialization())
}

fn parse_mail_from(s: &str) -> Result<EmailAddress, String> {
    EmailAddress::parse(s).map_err(|e| e.to_string())
}

fn parse_secret(s: &str) -> Result<SecretString, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(SecretString::from(s.to_owned()))
}

fn parse_claim_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be a claim name: 1 to 64 printable ASCII characters".into());
    }
    Ok(s.to_owned())
}
