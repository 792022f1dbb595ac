//! Settings both binaries read: environment variables, each also a CLI flag,
//! parsed once at start-up so a bad value stops the process with an error
//! naming the variable.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::{Arg, Args, Command, ValueEnum};
use secrecy::{ExposeSecret, SecretString};

use crate::domain::webhooks::UrlPolicy;
use crate::queue::RedisTls;
use crate::store::{PgOptions, Pooler};

/// Which deployment this is (`APP_ENV`), read by the API and the worker.
/// Development relaxes the API's start-up refusals of weak or published
/// secrets, and lets webhook endpoints be `http://` URLs on private or
/// loopback addresses; nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AppEnv {
    /// Every start-up check applies; webhooks go to public `https://`
    /// targets only.
    Production,
    /// Published and short `JWT_SECRET`s are tolerated (docker-compose);
    /// webhooks may go to any `http(s)://` URL (a receiver on localhost).
    Development,
}

impl AppEnv {
    /// Which webhook endpoint URLs this deployment accepts and delivers to.
    pub fn url_policy(self) -> UrlPolicy {
        match self {
            Self::Production => UrlPolicy::Public,
            Self::Development => UrlPolicy::Development,
        }
    }
}

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
        value_parser = secret(parse_postgres_url),
        hide_env_values = true
    )]
    pub database_url: SecretString,

    /// Postgres connection settings besides the URL.
    #[command(flatten)]
    pub postgres: PostgresConfig,

    /// Redis connection URL (the queue and the L1 dedup keys): `redis://`
    /// or `rediss://` (TLS) for one server, `redis+sentinel://h:p,h:p/master[/db]`
    /// for a primary found through Sentinel, `redis+cluster://h:p,h:p` for a
    /// Cluster (`rediss+...` for TLS).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        value_parser = secret(parse_redis_url),
        hide_env_values = true
    )]
    pub redis_url: SecretString,

    /// PEM file of the CA that signed the Redis server's certificate
    /// (`rediss://` URLs); unset, the system's roots.
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// PEM client certificate (chain) for Redis servers that ask for one
    /// (`tls-auth-clients`); with `REDIS_CLIENT_KEY_FILE`.
    #[arg(
        long,
        env = "REDIS_CLIENT_CERT_FILE",
        requires = "redis_client_key_file"
    )]
    pub redis_client_cert_file: Option<PathBuf>,

    /// PEM private key of `REDIS_CLIENT_CERT_FILE`.
    #[arg(
        long,
        env = "REDIS_CLIENT_KEY_FILE",
        requires = "redis_client_cert_file"
    )]
    pub redis_client_key_file: Option<PathBuf>,

    /// Prefix of every Redis key, used as a hash tag (`{sendonce}:queue`) so
    /// all keys a script touches live in one Redis Cluster slot.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "sendonce", value_parser = parse_prefix)]
    pub redis_key_prefix: String,

    /// How many shards the queue's keys are spread over: `{prefix}` for 1,
    /// `{prefix:0}` .. `{prefix:k-1}` otherwise, chosen by a hash of the
    /// idempotency key, so a Redis Cluster spreads them over its masters.
    /// Every process must use the same count; changing it needs a drain.
    #[arg(long, env = "QUEUE_SHARDS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=i64::from(crate::queue::MAX_SHARDS)))]
    pub queue_shards: u16,

    /// How long, in seconds, the L1 dedup key of an idempotency key lives in
    /// Redis. (Replays are answered from Postgres, with no time limit.)
    #[arg(long, env = "DEDUP_TTL_SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    pub dedup_ttl_secs: u64,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// Log filter, in `tracing_subscriber::EnvFilter` syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub rust_log: String,

    /// Log idempotency keys as they are instead of as a short hash; for
    /// development (keys often hold addresses).
    #[arg(long, env = "LOG_PLAIN_KEYS", default_value_t = false)]
    pub log_plain_keys: bool,
}

/// Postgres connection settings besides `DATABASE_URL` (whose `sslmode`
/// chooses TLS).
#[derive(Debug, Clone, Args)]
pub struct PostgresConfig {
    /// `none` (direct connections, or a pooler in session mode) or
    /// `transaction` (PgBouncer `pool_mode = transaction` and the like:
    /// statements go out unnamed, no startup options are sent).
    #[arg(long, env = "DATABASE_POOLER", value_enum, default_value_t = Pooler::None)]
    pub database_pooler: Pooler,

    /// PEM file of the CAs trusted for `sslmode=verify-ca` and
    /// `verify-full` (default: the system's roots).
    #[arg(long, env = "DATABASE_CA_FILE")]
    pub database_ca_file: Option<PathBuf>,

    /// `statement_timeout` of every session, in milliseconds (0: none);
    /// the client also gives up on a statement 1 s after it.
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT_MS", default_value = "5000", value_parser = parse_millis)]
    pub database_statement_timeout_ms: Duration,

    /// How long opening a Postgres connection may take, in milliseconds.
    #[arg(long, env = "DATABASE_CONNECT_TIMEOUT_MS", default_value = "5000", value_parser = parse_millis)]
    pub database_connect_timeout_ms: Duration,

    /// `TCP_USER_TIMEOUT` of every Postgres connection, in milliseconds
    /// (0: the kernel's default): unacknowledged data older than this drops
    /// the connection.
    #[arg(long, env = "DATABASE_TCP_USER_TIMEOUT_MS", default_value = "10000", value_parser = parse_millis)]
    pub database_tcp_user_timeout_ms: Duration,
}

impl PostgresConfig {
    /// The settings as the store takes them.
    pub fn options(&self) -> PgOptions {
        PgOptions {
            pooler: self.database_pooler,
            ca_file: self.database_ca_file.clone(),
            statement_timeout: self.database_statement_timeout_ms,
            connect_timeout: self.database_connect_timeout_ms,
            tcp_user_timeout: self.database_tcp_user_timeout_ms,
        }
    }
}

impl CommonConfig {
    /// The Redis TLS files.
    pub fn redis_tls(&self) -> RedisTls {
        RedisTls {
            ca_file: self.redis_ca_file.clone(),
            client_cert_file: self.redis_client_cert_file.clone(),
            client_key_file: self.redis_client_key_file.clone(),
        }
    }

    /// The dedup lifetime as a duration.
    pub fn dedup_ttl(&self) -> Duration {
        Duration::from_secs(self.dedup_ttl_secs)
    }
}

/// Wraps the parser of a setting whose value may hold a secret (a URL with
/// a password), so a rejected value is not echoed: clap's own error message
/// quotes the value, which would print the password to the terminal and to
/// the orchestrator's logs. The error names the flag, the variable and the
/// cause instead.
pub fn secret<T, F>(parse: F) -> SecretValueParser<F>
where
    F: Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
{
    SecretValueParser(parse)
}

/// See [`secret`].
#[derive(Clone)]
pub struct SecretValueParser<F>(F);

impl<F> std::fmt::Debug for SecretValueParser<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValueParser")
    }
}

impl<T, F> TypedValueParser for SecretValueParser<F>
where
    F: Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
{
    type Value = T;

    fn parse_ref(&self, cmd: &Command, arg: Option<&Arg>, value: &OsStr) -> Result<T, clap::Error> {
        let reject = |cause: &str| {
            let name = match arg {
                Some(arg) => match (arg.get_long(), arg.get_env()) {
                    (Some(long), Some(env)) => {
                        format!("--{long} ({})", env.to_string_lossy())
                    }
                    (Some(long), None) => format!("--{long}"),
                    _ => arg.get_id().to_string(),
                },
                None => "a setting".to_owned(),
            };
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!(
                    "invalid value for {name} (value not shown: it may hold a secret): {cause}\n"
                ),
            )
            .with_cmd(cmd)
        };
        let text = value.to_str().ok_or_else(|| reject("not valid UTF-8"))?;
        (self.0)(text).map_err(|cause| reject(&cause))
    }
}

fn parse_postgres_url(s: &str) -> Result<SecretString, String> {
    crate::store::connection::parse(s)?;
    Ok(SecretString::from(s.to_owned()))
}

fn parse_redis_url(s: &str) -> Result<SecretString, String> {
    crate::queue::validate_url(s).map_err(|e| format!("not a Redis URL: {e}"))?;
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonConfig,
    }

    fn rejection(args: &[&str]) -> String {
        let err = Cli::try_parse_from(std::iter::once("sendonce").chain(args.iter().copied()))
            .expect_err("the value must be rejected");
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        err.to_string()
    }

    #[test]
    fn a_rejected_database_url_is_named_without_its_password() {
        let message = rejection(&[
            "--database-url",
            "postgres://app:hunter2-secret@db:notaport/sendonce",
        ]);
        assert!(message.contains("DATABASE_URL"), "{message}");
        assert!(
            message.contains("not a Postgres connection string"),
            "{message}"
        );
        assert!(!message.contains("hunter2-secret"), "{message}");
    }

    #[test]
    fn a_rejected_redis_url_is_named_without_its_password() {
        let message = rejection(&["--redis-url", "rediss://:hunter2-secret@cache:notaport"]);
        assert!(message.contains("REDIS_URL"), "{message}");
        assert!(message.contains("not a Redis URL"), "{message}");
        assert!(!message.contains("hunter2-secret"), "{message}");
    }

    #[test]
    fn valid_urls_are_accepted() {
        let cli = Cli::try_parse_from([
            "sendonce",
            "--database-url",
            "postgres://app:pw@db:5432/sendonce",
            "--redis-url",
            "redis://:pw@cache:6379",
        ])
        .expect("valid URLs");
        assert_eq!(expose(&cli.common.redis_url), "redis://:pw@cache:6379");
    }
}
