use std::process::ExitCode;

use clap::Parser;
use sendonce_shared::telemetry;
use sendonce_worker::Application;
use sendonce_worker::config::WorkerConfig;

#[tokio::main]
async fn main() -> ExitCode {
    let config = WorkerConfig::parse();
    if let Err(e) = run(config).await {
        eprintln!("sendonce-worker: {e:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

async fn run(config: WorkerConfig) -> anyhow::Result<()> {
    telemetry::init(
        config.common.log_format,
        &config.common.rust_log,
        config.common.log_plain_keys,
    )?;
    let metrics = sendonce_worker::telemetry::install_metrics()?;
    let app = Application::build(config, Some(metrics)).await?;
    app.run_until_stopped(telemetry::shutdown_signal()).await
}
