use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sendonce_api::Application;
use sendonce_api::auth::JwtKeys;
use sendonce_api::config::ApiConfig;
use sendonce_shared::domain::Tenant;
use sendonce_shared::store::Store;
use sendonce_shared::store::retention::Pruned;
use sendonce_shared::telemetry;

/// Rows one `prune` transaction touches per table.
const PRUNE_BATCH: i64 = 1000;

/// The sendonce HTTP API.
#[derive(Debug, Parser)]
#[command(name = "sendonce-api", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: ApiConfig,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Remove finished jobs' personal data older than RETENTION_DAYS, in
    /// batches, and exit (run it daily, e.g. from cron).
    Prune,
    /// Print the OpenAPI document (also served at /openapi.json).
    Openapi,
    /// Print a bearer token signed with JWT_SECRET.
    Token {
        /// Who the token is for (`sub`).
        #[arg(long)]
        sub: String,
        /// Space-separated scopes, e.g. "jobs:write jobs:read".
        #[arg(
            long,
            default_value = "jobs:write jobs:read failed:read failed:write audit:read webhooks:read webhooks:write suppressions:read suppressions:write"
        )]
        scope: String,
        /// Lifetime, e.g. 1h, 30m, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// The tenant, put in the claim named by JWT_TENANT_CLAIM (unless
        /// that is `sub`); without it, the token is the tenant `default`'s.
        #[arg(long, value_parser = |s: &str| Tenant::parse(s).map_err(|e| e.to_string()))]
        tenant: Option<Tenant>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("sendonce-api: {e:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Token {
            sub,
            scope,
            ttl,
            tenant,
        } => {
            let mut extra = serde_json::Map::new();
            if let Some(tenant) = tenant {
                anyhow::ensure!(
                    config.jwt_tenant_claim != "sub",
                    "--tenant with JWT_TENANT_CLAIM=sub: give the tenant as --sub"
                );
                extra.insert(config.jwt_tenant_claim.clone(), tenant.as_str().into());
            }
            println!(
                "{}",
                JwtKeys::from_config(&config)?.mint_with(&sub, &scope, ttl, extra)?
            );
            Ok(())
        }
        Command::Openapi => {
            println!("{}", sendonce_api::openapi::document());
            Ok(())
        }
        Command::Migrate => {
            let store = Store::connect(
                &config.common.database_url,
                &config.common.postgres.options(),
                1,
            )?;
            let applied = store.migrate().await?;
            println!("applied {applied} migration(s)");
            Ok(())
        }
        Command::Prune => {
            let days = config
                .retention_days
                .context("RETENTION_DAYS is required by `prune`")?;
            let store = Store::connect(
                &config.common.database_url,
                &config.common.postgres.options(),
                1,
            )?;
            let mut total = Pruned::default();
            loop {
                let pruned = store.prune_batch(days, PRUNE_BATCH).await?;
                if pruned.is_empty() {
                    break;
                }
                total.deliveries += pruned.deliveries;
                total.failed_jobs += pruned.failed_jobs;
            }
            println!(
                "pruned {} finished job record(s) and {} dead-letter entr(ies) older than {days} days",
                total.deliveries, total.failed_jobs
            );
            Ok(())
        }
        Command::Serve => {
            telemetry::init(
                config.common.log_format,
                &config.common.rust_log,
                config.common.log_plain_keys,
            )?;
            let metrics = sendonce_api::telemetry::install_metrics()?;
            let app = Application::build(config, Some(metrics)).await?;
            tracing::info!(port = app.port(), "API listening");
            app.run_until_stopped(telemetry::shutdown_signal()).await
        }
    }
}
