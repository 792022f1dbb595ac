//! The worker's settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use sendonce_shared::config::{CommonConfig, parse_millis, secret};
use sendonce_shared::domain::EmailAddress;

use crate::mailer::{RelayPolicy, SmtpRelays, parse_selector};
use crate::webhooks::config::WebhookConfig;

/// What to do with a send whose outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnUncertain {
    /// Dead-letter it as `uncertain`; only an operator resends it.
    Dlq,
    /// Resend it (same Message-ID), trading at-most-once for at-least-once.
    Resend,
}

/// Settings of `sendonce-worker`.
#[derive(Debug, Clone, Parser)]
#[command(name = "sendonce-worker", version, about, args_override_self = true)]
pub struct WorkerConfig {
    #[command(flatten)]
    pub common: CommonConfig,

    /// SMTP relays, in lettre's URL syntax: `smtp://host:port` (plain),
    /// `smtp://host?tls=required` (STARTTLS), `smtps://user:pass@host:465`.
    /// Several relays are separated by commas, each with its own
    /// credentials and TLS; a comma inside a URL is written `%2C`.
    #[arg(
        long = "smtp-url",
        env = "SMTP_URL",
        default_value = "smtp://127.0.0.1:1025",
        value_parser = secret(SmtpRelays::parse),
        hide_env_values = true
    )]
    pub smtp: SmtpRelays,

    /// Which relay of `SMTP_URL` a send tries first: `failover` (the first
    /// available one in order) or `spread` (round-robin over the available
    /// ones). Either way a relay that cannot be reached, or is over its
    /// limit, is passed over for the next in the same attempt.
    #[arg(long, env = "SMTP_RELAY_POLICY", value_enum, default_value_t = RelayPolicy::Failover)]
    pub smtp_relay_policy: RelayPolicy,

    /// Pooled connections per relay in this process; a send waits for one
    /// of its relay's. Defaults to `WORKER_CONCURRENCY`.
    #[arg(long, env = "SMTP_RELAY_MAX_CONNECTIONS", value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub smtp_relay_max_connections: Option<u16>,

    /// How long, in ms, a relay that refused a connection, did not greet in
    /// time, or said it is over its limit is passed over while another relay
    /// is available.
    #[arg(long = "smtp-relay-cooldown-ms", env = "SMTP_RELAY_COOLDOWN_MS", default_value = "30000", value_parser = parse_millis)]
    pub smtp_relay_cooldown: Duration,

    /// Allow an `SMTP_URL` with a user and password but without assured
    /// TLS (`smtp://` plain, or `tls=opportunistic`): the password may then
    /// cross the network in clear. Off: such a URL stops the worker.
    #[arg(long, env = "SMTP_ALLOW_PLAINTEXT_AUTH", default_value_t = false)]
    pub smtp_allow_plaintext_auth: bool,

    /// Sender used when a job gives no `from`; its domain names the Message-ID.
    #[arg(long, env = "MAIL_FROM", default_value = "sendonce <noreply@sendonce.localhost>", value_parser = parse_address)]
    pub mail_from: EmailAddress,

    /// Directory of DKIM private keys (PEM), one per sender domain:
    /// `<domain>.pem` signs with `DKIM_SELECTOR`,
    /// `<selector>._domainkey.<domain>.pem` with its own selector. RSA or
    /// Ed25519, told apart by the key itself. A message whose `From`
    /// domain has no key goes unsigned; unset, none is signed.
    #[arg(long, env = "DKIM_KEYS_DIR")]
    pub dkim_keys_dir: Option<PathBuf>,

    /// The DKIM selector of keys named `<domain>.pem`.
    #[arg(long, env = "DKIM_SELECTOR", default_value = "sendonce", value_parser = parse_selector)]
    pub dkim_selector: String,

    /// Tasks in flight per process.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub worker_concurrency: u16,

    /// Postgres connections in this process's pool; a statement waits for
    /// one. Defaults to `WORKER_CONCURRENCY`, at least 2 and at most 8.
    /// Size the fleet's total for the Postgres server, not each process:
    /// see the README's sizing rule.
    #[arg(long, env = "DATABASE_POOL_SIZE", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub database_pool_size: Option<u16>,

    /// Address of the health and metrics endpoint.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9091")]
    pub metrics_addr: SocketAddr,

    /// First retry delay bound, in ms; doubled per attempt.
    #[arg(long = "retry-base-ms", env = "RETRY_BASE_MS", default_value = "1000", value_parser = parse_millis)]
    pub retry_base: Duration,

    /// Largest retry delay, in ms.
    #[arg(long = "retry-max-ms", env = "RETRY_MAX_MS", default_value = "300000", value_parser = parse_millis)]
    pub retry_max: Duration,

    /// SMTP attempts per task before it is dead-lettered.
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(i32).range(1..=100))]
    pub max_attempts: i32,

    /// Heartbeat lifetime, in ms: a worker silent for this long is presumed
    /// dead and its tasks are handed to others.
    #[arg(long = "worker-lease-ms", env = "WORKER_LEASE_MS", default_value = "30000", value_parser = parse_millis)]
    pub worker_lease: Duration,

    /// On SIGTERM, how long in-flight sends may take before they are
    /// abandoned and handed back, in ms.
    #[arg(long = "shutdown-grace-ms", env = "SHUTDOWN_GRACE_MS", default_value = "25000", value_parser = parse_millis)]
    pub shutdown_grace: Duration,

    /// Timeout of each SMTP step (connect, each command, the data), in ms.
    #[arg(long = "smtp-timeout-ms", env = "SMTP_TIMEOUT_MS", default_value = "30000", value_parser = parse_millis)]
    pub smtp_timeout: Duration,

    /// What to do with a send whose outcome is unknown.
    #[arg(long, env = "ON_UNCERTAIN", value_enum, default_value_t = OnUncertain::Dlq)]
    pub on_uncertain: OnUncertain,

    /// How long, in ms, an accepted job may wait in `queued` (or past its
    /// retry's due time) before the reconciler pushes it to Redis again, in
    /// case Redis lost its copy (eviction, a failover that dropped writes).
    /// Longer than a normal wait in the queue: a job still in Redis gets a
    /// second copy, which the claims absorb but which costs a pop.
    #[arg(long = "reconcile-after-ms", env = "RECONCILE_AFTER_MS", default_value = "300000", value_parser = parse_millis)]
    pub reconcile_after: Duration,

    /// Webhook dispatch (`WEBHOOK_*`, `APP_ENV`).
    #[command(flatten)]
    pub webhooks: WebhookConfig,
}

impl WorkerConfig {
    /// Checks the relations between settings that clap cannot express.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.worker_lease >= Duration::from_millis(300),
            "WORKER_LEASE_MS must be at least 300"
        );
        anyhow::ensure!(
            self.retry_max >= self.retry_base,
            "RETRY_MAX_MS must not be below RETRY_BASE_MS"
        );
        anyhow::ensure!(
            !self.smtp_timeout.is_zero(),
            "SMTP_TIMEOUT_MS must be positive"
        );
        anyhow::ensure!(
            self.reconcile_after >= Duration::from_millis(100),
            "RECONCILE_AFTER_MS must be at least 100"
        );
        self.webhooks.validate()?;
        if !self.smtp_allow_plaintext_auth {
            let many = self.smtp.len() > 1;
            for (i, relay) in self.smtp.iter().enumerate() {
                let entry = if many {
                    format!(" entry {} of {}", i + 1, self.smtp.len())
                } else {
                    String::new()
                };
                anyhow::ensure!(
                    !relay.may_authenticate_in_plaintext(),
                    "SMTP_URL{entry} has credentials but no assured TLS (use smtps:// or \
                     ?tls=required, or set SMTP_ALLOW_PLAINTEXT_AUTH=true to send them in clear)"
                );
            }
        }
        Ok(())
    }

    /// Connections in this process's Postgres pool.
    pub fn database_pool_size(&self) -> usize {
        self.database_pool_size.map_or(
            usize::from(self.worker_concurrency).clamp(2, 8),
            usize::from,
        )
    }

    /// Pooled SMTP connections per relay.
    pub fn smtp_relay_max_connections(&self) -> usize {
        usize::from(
            self.smtp_relay_max_connections
                .unwrap_or(self.worker_concurrency),
        )
    }
}

fn parse_address(s: &str) -> Result<EmailAddress, String> {
    EmailAddress::parse(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::WorkerConfig;

    fn validated(args: &[&str]) -> anyhow::Result<()> {
        let args = std::iter::once("sendonce-worker").chain(args.iter().copied());
        WorkerConfig::try_parse_from(args)?.validate()
    }

    #[test]
    fn credentials_without_assured_tls_stop_the_worker_unless_allowed() {
        let refused = validated(&["--smtp-url", "smtp://user:pass@relay.example.com"])
            .expect_err("a password in clear is refused");
        assert!(
            refused.to_string().contains("SMTP_ALLOW_PLAINTEXT_AUTH"),
            "{refused}"
        );
        assert!(
            validated(&[
                "--smtp-url",
                "smtp://user:pass@relay.example.com?tls=opportunistic"
            ])
            .is_err()
        );
        validated(&[
            "--smtp-url",
            "smtp://user:pass@relay.example.com?tls=required",
        ])
        .expect("STARTTLS required");
        validated(&["--smtp-url", "smtps://user:pass@relay.example.com"]).expect("implicit TLS");
        validated(&["--smtp-url", "smtp://127.0.0.1:1025"]).expect("no credentials");
        validated(&[
            "--smtp-url",
            "smtp://user:pass@relay.example.com",
            "--smtp-allow-plaintext-auth",
        ])
        .expect("allowed on purpose");
    }

    #[test]
    fn every_relay_needs_assured_tls_for_its_credentials() {
        let refused = validated(&[
            "--smtp-url",
            "smtps://user:pass@a.example.com,smtp://user:pass@b.example.com",
        ])
        .expect_err("the second relay would send its password in clear");
        assert!(refused.to_string().contains("entry 2 of 2"), "{refused}");
        assert!(!refused.to_string().contains("pass"), "{refused}");
        validated(&[
            "--smtp-url",
            "smtps://user:pass@a.example.com,smtp://b.example.com:25",
        ])
        .expect("the second relay has no credentials");
        validated(&[
            "--smtp-url",
            "smtp://user:pass@a.example.com,smtp://user:pass@b.example.com",
            "--smtp-allow-plaintext-auth",
        ])
        .expect("allowed for every relay");
    }

    #[test]
    fn a_bad_relay_url_is_refused_naming_its_entry_but_not_its_text() {
        let args = [
            "sendonce-worker",
            "--smtp-url",
            "smtp://a.example.com,ftp://user:s3cret@b.example.com",
        ];
        let refused = WorkerConfig::try_parse_from(args).expect_err("a bad entry");
        let text = refused.to_string();
        assert!(
            text.contains("SMTP_URL") && text.contains("entry 2 of 2"),
            "{text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn relays_get_worker_concurrency_connections_each_unless_capped() {
        let parsed = |args: &[&str]| {
            let args = std::iter::once("sendonce-worker").chain(args.iter().copied());
            WorkerConfig::try_parse_from(args).expect("parses")
        };
        assert_eq!(
            parsed(&["--worker-concurrency", "8"]).smtp_relay_max_connections(),
            8
        );
        assert_eq!(
            parsed(&["--smtp-relay-max-connections", "3"]).smtp_relay_max_connections(),
            3
        );
    }

    #[test]
    fn the_postgres_pool_follows_worker_concurrency_between_2_and_8_unless_set() {
        let parsed = |args: &[&str]| {
            let args = std::iter::once("sendonce-worker").chain(args.iter().copied());
            WorkerConfig::try_parse_from(args).expect("parses")
        };
        assert_eq!(parsed(&[]).database_pool_size(), 8);
        assert_eq!(
            parsed(&["--worker-concurrency", "1"]).database_pool_size(),
            2
        );
        assert_eq!(
            parsed(&["--worker-concurrency", "5"]).database_pool_size(),
            5
        );
        assert_eq!(
            parsed(&["--database-pool-size", "3"]).database_pool_size(),
            3
        );
        assert!(
            WorkerConfig::try_parse_from(["sendonce-worker", "--database-pool-size", "0"]).is_err()
        );
    }
}
