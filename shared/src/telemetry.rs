//! Log and metrics set-up and the shutdown signal, shared by both binaries.
//! Each binary names and registers its own metrics (`api::telemetry`,
//! `worker::telemetry`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Logs go to stdout, one JSON object per
/// line with [`LogFormat::Json`], including the fields of enclosing spans so
/// every line about a job carries its `job_id` and `idempotency_key`.
pub fn init(format: LogFormat, filter: &str) -> anyhow::Result<()> {
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
