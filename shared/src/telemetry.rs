//! Log and metrics set-up and the shutdown signal, shared by both binaries.
//! Each binary names and registers its own metrics (`api::telemetry`,
//! `worker::telemetry`).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::domain::IdempotencyKey;

/// `LOG_PLAIN_KEYS`: whether [`key`] shows keys as they are. Process-wide,
/// like the subscriber it serves.
static PLAIN_KEYS: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber. Logs go to stdout, one JSON object per
/// line with [`LogFormat::Json`], including the fields of enclosing spans so
/// every line about a job carries its `job_id` and `idempotency_key` (as
/// [`key`] shows it). `plain_keys` is `LOG_PLAIN_KEYS`.
pub fn init(format: LogFormat, filter: &str, plain_keys: bool) -> anyhow::Result<()> {
    PLAIN_KEYS.store(plain_keys, Ordering::Relaxed);
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("RUST_LOG is not a valid filter: {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("could not install the log subscriber: {e}"))
}

/// An idempotency key as logs show it: `sha256:` and the first 12 hex
/// digits of its SHA-256, unless `LOG_PLAIN_KEYS` is set. Callers often
/// build keys from addresses (`reset:ada@example.com`); the hash still ties
/// together every line about one key without writing the address down. It
/// is a pseudonym, not anonymity: whoever can guess a key can hash it.
pub fn key(key: &IdempotencyKey) -> LoggedKey<'_> {
    LoggedKey(key)
}

/// See [`key`].
#[derive(Debug, Clone, Copy)]
pub struct LoggedKey<'a>(&'a IdempotencyKey);

impl fmt::Display for LoggedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if PLAIN_KEYS.load(Ordering::Relaxed) {
            return f.write_str(self.0.as_str());
        }
        let digest = Sha256::digest(self.0.as_str().as_bytes());
        write!(f, "sha256:{}", hex::encode(&digest[..6]))
    }
}

/// Installs the global Prometheus recorder and returns the handle that
/// renders it for `/metrics`. Each histogram named in `buckets` gets those
/// upper bounds (in its unit, seconds for durations); any other histogram is
/// rendered as a summary.
pub fn install_metrics(
    buckets: &[(&str, &[f64])],
) -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    let mut builder = metrics_exporter_prometheus::PrometheusBuilder::new();
    for (name, bounds) in buckets {
        builder = builder
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full((*name).to_owned()),
                bounds,
            )
            .map_err(|e| anyhow::anyhow!("invalid buckets for {name}: {e}"))?;
    }
    builder
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("could not install the metrics recorder: {e}"))
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT will stop");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_logged_as_a_short_hash_unless_plain_keys_are_asked_for() {
        let k = IdempotencyKey::parse("reset:ada@example.com").expect("a key");
        let hashed = key(&k).to_string();
        assert!(hashed.starts_with("sha256:") && hashed.len() == "sha256:".len() + 12);
        assert!(!hashed.contains("ada"));
        assert_eq!(
            hashed,
            key(&k).to_string(),
            "the same key, the same pseudonym"
        );
        PLAIN_KEYS.store(true, Ordering::Relaxed);
        let plain = key(&k).to_string();
        PLAIN_KEYS.store(false, Ordering::Relaxed);
        assert_eq!(plain, "reset:ada@example.com");
    }
}
