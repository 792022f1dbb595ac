//! Settings both binaries read: environment variables, each also a CLI flag,
//! parsed once at start-up so a bad value stops the process with an error
//! naming the variable.

use std::time::Duration;

use clap::{Args, ValueEnum};
use secrecy::{ExposeSecret, SecretString};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

/// Settings shared by the API and the worker.
#[derive(Debug, Clone, Args)]
pub struct CommonConfig {
    /// Postgres connection URL (the authority for job state and the DLQ).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/sendonce",
        value_parser = parse_postgres_url,
        hide_env_values = true
    )]
    pub database_url: SecretString,

    /// Redis connection URL (the queue and the L1 dedup keys).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        value_parser = parse_redis_url,
        hide_env_values = true
    )]
    pub redis_url: SecretString,

    /// Prefix of every Redis key, used as a hash tag (`{sendonce}:queue`) so
    /// all keys a script touches live in one Redis Cluster slot.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "sendonce", value_parser = parse_prefix)]
    pub redis_key_prefix: String,

    /// How long, in seconds, the L1 dedup key and the API's replay record of
    /// an idempotency key live in Redis.
    #[arg(long, env = "DEDUP_TTL_SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    pub dedup_ttl_secs: u64,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// Log filter, in `tracing_subscriber::EnvFilter` syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub rust_log: String,
}

impl CommonConfig {
    /// The dedup lifetime as a duration.
    pub fn dedup_ttl(&self) -> Duration {
        Duration::from_secs(self.dedup_ttl_secs)
    }
}

fn parse_postgres_url(s: &str) -> Result<SecretString, String> {
    s.parse::<tokio_postgres::Config>()
        .map_err(|e| format!("not a Postgres connection string: {e}"))?;
    Ok(SecretString::from(s.to_owned()))
}

fn parse_redis_url(s: &str) -> Result<SecretString, String> {
    redis::Client::open(s).map_err(|e| format!("not a Redis URL: {e}"))?;
    Ok(SecretString::from(s.to_owned()))
}

fn parse_prefix(s: &str) -> Result<String, String> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
    {
        return Err("must be 1 to 64 printable ASCII characters without braces".into());
    }
    Ok(s.to_owned())
}

/// Parses a duration given in milliseconds.
pub fn parse_millis(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|e| format!("expected a whole number of milliseconds: {e}"))
}

/// Reads a secret for a place that needs the plain text.
pub fn expose(secret: &SecretString) -> &str {
    secret.expose_secret()
}
