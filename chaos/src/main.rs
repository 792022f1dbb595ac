//! `sendonce-chaos`: the full chaos run (see the README's "Chaos test").
//! Prints one summary line; exits non-zero, listing what went wrong, when a
//! property was violated.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sendonce_chaos::{Scenario, cluster};

/// Runs the real API and workers under SIGKILLs, a Redis restart and SMTP
/// faults, then checks that no key took effect twice and no job was lost.
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
    /// Seconds of chaos (kills; Redis restarts at the middle).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(2..=3600))]
    chaos_secs: u64,
    /// Mean milliseconds between two worker kills.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..))]
    kill_every_ms: u64,
    /// Seconds the queue may take to drain after the chaos.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    drain_secs: u64,
    /// Directory holding `sendonce-api` and `sendonce-worker` (default: the
    /// one this binary was built into).
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

async fn run(args: Args) -> anyhow::Result<bool> {
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
        drain_timeout: Duration::from_secs(args.drain_secs),
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
