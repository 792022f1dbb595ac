//! The fleet simulation: many real workers (the library's run loop, each
//! with its own popper connection, lease and upkeep) against a private
//! Redis, idle, counting what they cost Redis with `INFO commandstats`.
//!
//! `FLEET_WORKERS` sets the fleet's size (default 1,000, the size the
//! README's target is stated for); `FLEET_WINDOW_SECS` the measured window
//! (default 45 s: a lease and a half at the default `WORKER_LEASE_MS`, so
//! every periodic job of every worker falls in it at least once). Run it
//! with `--nocapture` to see the per-command breakdown.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Parser;
use sendonce_shared::queue::{self, Queue, RedisTls};
use sendonce_shared::store::Store;
use sendonce_testkit::{RedisOptions, RedisServer, TestDatabase, eventually, unique_prefix};
use sendonce_worker::config::WorkerConfig;
use sendonce_worker::mailer::Mailer;
use sendonce_worker::runner::Worker;
use tokio::time::Instant;

/// The budget: Redis commands per second per idle worker.
const COMMANDS_PER_WORKER_PER_SEC: f64 = 5.0;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Calls per command since the server started, from `INFO commandstats`.
async fn command_calls(redis: &RedisServer) -> BTreeMap<String, u64> {
    let info = redis
        .command(&["INFO", "commandstats"])
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_fleet_costs_redis_a_few_commands_per_worker_per_second() {
    let workers: usize = env_or("FLEET_WORKERS", 1000);
    let window = Duration::from_secs(env_or("FLEET_WINDOW_SECS", 45));
    let redis = RedisServer::start(RedisOptions::default()).await;
    let db = TestDatabase::create().await;
    let prefix = unique_prefix();
    let redis_url = redis.url();
    // Defaults everywhere but the addresses: the lease, the beat, the
    // reaper and the depth refresh are what an operator runs.
    let config = WorkerConfig::try_parse_from([
        "sendonce-worker",
        "--database-url",
        db.url(),
        "--redis-url",
        &redis_url,
        "--redis-key-prefix",
        &prefix,
        // Never dialled: an idle fleet sends nothing.
        "--smtp-url",
        "smtp://127.0.0.1:9",
        "--metrics-addr",
        "127.0.0.1:0",
    ])
    .expect("worker settings");
    config.validate().expect("valid settings");
    let lease = config.worker_lease;
    let store = Store::connect(
        &config.common.database_url,
        &config.common.postgres.options(),
        16,
    )
    .expect("store");
    store.migrate().await.expect("migrations");
    let queue = Queue::new(
        queue::connect(&config.common.redis_url, &RedisTls::default()).expect("redis client"),
        &prefix,
    );

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut fleet = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let mailer = Mailer::from_config(&config).expect("mailer");
        let worker = Worker::new(config.clone(), queue.clone(), store.clone(), mailer);
        let mut stopped = stopped.clone();
        fleet.spawn(worker.run(async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
    }
    let keys = queue.keys().clone();
    eventually(
        "every worker registered and a housekeeper elected",
        Duration::from_secs(120),
        || {
            let redis = &redis;
            let keys = keys.clone();
            async move {
                let registered = redis
                    .command(&["ZCARD", &keys.shard(0).leases()])
                    .await
                    .ok()?;
                let housekeeper = redis.command(&["GET", &keys.housekeeper()]).await.ok()?;
                (registered.trim() == workers.to_string() && !housekeeper.trim().is_empty())
                    .then_some(())
            }
        },
    )
    .await;
    // Past the start-up burst (each timer's first tick is immediate).
    tokio::time::sleep(Duration::from_secs(2)).await;

    // One worker dies holding a task: it registered, took the task, and
    // never beat again. The fleet must hand the task back within about a
    // lease of that last beat, while it costs what it costs.
    let dead = "fleet-sim-dead";
    queue
        .heartbeat(dead, lease)
        .await
        .expect("dead worker's lease");
    let died_at = Instant::now();
    redis
        .command(&[
            "LPUSH",
            &keys.shard(0).processing(dead),
            "a task its worker died with",
        ])
        .await
        .expect("its task");

    let before = command_calls(&redis).await;
    let measured_from = Instant::now();
    // This test's own LLENs are not the fleet's cost.
    let mut probes = 0u64;
    let reaped_after = eventually("the dead worker's task handed back", lease * 2, || {
        probes += 1;
        let redis = &redis;
        let list = keys.shard(0).processing(dead);
        async move {
            let len = redis.command(&["LLEN", &list]).await.ok()?;
            (len.trim() == "0").then(|| died_at.elapsed())
        }
    })
    .await;
    tokio::time::sleep_until(measured_from + window).await;
    let after = command_calls(&redis).await;
    let seconds = measured_from.elapsed().as_secs_f64();

    let _ = stop.send(true);
    while let Some(result) = fleet.join_next().await {
        result
            .expect("worker task")
            .expect("worker stopped cleanly");
    }

    let mut by_command: Vec<(String, f64)> = after
        .iter()
        .map(|(name, calls)| {
            let mut delta = calls - before.get(name).copied().unwrap_or(0);
            if name == "llen" {
                delta = delta.saturating_sub(probes);
            }
            (name.clone(), delta as f64 / seconds)
        })
        .filter(|(_, rate)| *rate > 0.0)
        .collect();
    by_command.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = by_command.iter().map(|(_, rate)| rate).sum();
    eprintln!(
        "{workers} idle workers over {seconds:.1} s: {total:.0} Redis commands/s ({:.2} per worker); a dead worker's task handed back {reaped_after:?} after its last beat (lease {lease:?})",
        total / workers as f64
    );
    for (name, rate) in &by_command {
        eprintln!("  {name:>12} {rate:>10.1}/s");
    }
    assert!(
        total <= COMMANDS_PER_WORKER_PER_SEC * workers as f64,
        "{total:.0} commands/s from {workers} idle workers, over the budget of {COMMANDS_PER_WORKER_PER_SEC} per worker: {by_command:?}"
    );
}
