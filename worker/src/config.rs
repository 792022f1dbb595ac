//! The worker's settings.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use sendonce_shared::config::{CommonConfig, parse_millis, secret};
use sendonce_shared::domain::EmailAddress;

use crate::mailer::SmtpSettings;

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

    /// SMTP server, in lettre's URL syntax: `smtp://host:port` (plain),
    /// `smtp://host?tls=required` (STARTTLS), `smtps://user:pass@host:465`.
    #[arg(
        long = "smtp-url",
        env = "SMTP_URL",
        default_value = "smtp://127.0.0.1:1025",
        value_parser = secret(parse_smtp_url),
        hide_env_values = true
    )]
    pub smtp: SmtpSettings,

    /// Allow an `SMTP_URL` with a user and password but without assured
    /// TLS (`smtp://` plain, or `tls=opportunistic`): the password may then
    /// cross the network in clear. Off: such a URL stops the worker.
    #[arg(long, env = "SMTP_ALLOW_PLAINTEXT_AUTH", default_value_t = false)]
    pub smtp_allow_plaintext_auth: bool,

    /// Sender used when a job gives no `from`; its domain names the Message-ID.
    #[arg(long, env = "MAIL_FROM", default_value = "sendonce <noreply@sendonce.localhost>", value_parser = parse_address)]
    pub mail_from: EmailAddress,

    /// Tasks in flight per process.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub worker_concurrency: u16,

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
        anyhow::ensure!(
            self.smtp_allow_plaintext_auth || !self.smtp.may_authenticate_in_plaintext(),
            "SMTP_URL has credentials but no assured TLS (use smtps:// or ?tls=required, \
             or set SMTP_ALLOW_PLAINTEXT_AUTH=true to send them in clear)"
        );
        Ok(())
    }
}

fn parse_smtp_url(s: &str) -> Result<SmtpSettings, String> {
    SmtpSettings::from_url(s)
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
}
