//! `sendonce-chaos`: the full chaos run (see the README's "Chaos test").
//! Prints one summary line; exits non-zero, listing what went wrong, when a
//! property was violated.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sendonce_chaos::{Pauses, Scenario, cluster};

/// Runs the real API and workers under SIGKILLs, pauses (SIGSTOP) of
/// workers, the SMTP server and Postgres, a Redis kill and restart and SMTP
/// faults, then checks that no key took effect twice, no job was stranded
/// and no 250 a worker read ended other than sent.
#[derive(Debug, Parser)]
#[command(name = "sendonce-chaos", version, about)]
struct Args {
    /// Requests to `POST /addJob`.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    posts: u32,
    /// Percent of the posts that reuse a key posted before.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u8).range(0..=90))]
    reuse_percent: u8,
    /// Worker processes running at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// Seconds of chaos (kills and pauses; Redis restarts at the middle).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(2..=3600))]
    chaos_secs: u64,
    /// Mean milliseconds between two worker kills.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..))]
    kill_every_ms: u64,
    /// Mean milliseconds between two worker pauses (0: none).
    #[arg(long, default_value_t = millis(Pauses::default().worker_every))]
    pause_every_ms: u64,
    /// Shortest worker pause, in leases (WORKER_LEASE_MS).
    #[arg(long, default_value_t = Pauses::default().worker_leases.start)]
    pause_min_leases: f64,
    /// Longest worker pause, in leases.
    #[arg(long, default_value_t = Pauses::default().worker_leases.end)]
    pause_max_leases: f64,
    /// Milliseconds the SMTP server is paused, once (0: never).
    #[arg(long, default_value_t = millis(Pauses::default().smtp))]
    smtp_pause_ms: u64,
    /// Milliseconds Postgres is paused, once (0: never).
    #[arg(long, default_value_t = millis(Pauses::default().postgres))]
    postgres_pause_ms: u64,
    /// Seconds the queue may take to drain after the chaos.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    drain_secs: u64,
    /// `QUEUE_SHARDS` of the API and the workers.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    queue_shards: u16,
    /// Directory holding `sendonce-api`, `sendonce-worker` and
    /// `sendonce-smtp-sink` (default: the one this binary was built into).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sendonce-chaos: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

async fn run(args: Args) -> anyhow::Result<bool> {
    anyhow::ensure!(
        0.0 <= args.pause_min_leases && args.pause_min_leases <= args.pause_max_leases,
        "--pause-min-leases must be at least 0 and at most --pause-max-leases"
    );
    let bin_dir = match args.bin_dir {
        Some(dir) => dir,
        None => cluster::find_bin_dir()?,
    };
    let scenario = Scenario {
        posts: usize::try_from(args.posts)?,
        reuse_percent: usize::from(args.reuse_percent),
        workers: usize::from(args.workers),
        chaos: Duration::from_secs(args.chaos_secs),
        kill_every: Duration::from_millis(args.kill_every_ms),
        pauses: Pauses {
            worker_every: Duration::from_millis(args.pause_every_ms),
            worker_leases: args.pause_min_leases..args.pause_max_leases,
            smtp: Duration::from_millis(args.smtp_pause_ms),
            postgres: Duration::from_millis(args.postgres_pause_ms),
        },
        drain_timeout: Duration::from_secs(args.drain_secs),
        queue_shards: args.queue_shards,
        bin_dir,
    };
    let summary = sendonce_chaos::run(&scenario).await?;
    println!("{summary}");
    let violations = summary.check();
    for violation in &violations {
        eprintln!("violation: {violation}");
    }
    Ok(violations.is_empty())
}
