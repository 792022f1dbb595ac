//! The small chaos run, part of every `cargo test`: 300 posts over 15 s of
//! worker kills and pauses, an SMTP server pause, a Postgres pause and one
//! Redis kill and restart. Needs the workspace's binaries built (`cargo
//! build --workspace --bins`; `scripts/test.sh` does it).

use std::time::Duration;

use sendonce_chaos::{Pauses, Scenario, cluster};

#[tokio::test]
async fn under_kills_pauses_and_a_redis_restart_no_key_is_sent_twice_stranded_or_falsely_uncertain()
{
    let scenario = Scenario {
        posts: 300,
        reuse_percent: 25,
        workers: 4,
        chaos: Duration::from_secs(15),
        kill_every: Duration::from_secs(2),
        pauses: Pauses::default(),
        // A healthy drain takes seconds; a stranded job waits it out, so
        // it bounds the wall time of a failing run.
        drain_timeout: Duration::from_secs(40),
        // Sharded, so that restarts, reaps and restores cross shards here;
        // the e2e suite covers one shard.
        queue_shards: 3,
        bin_dir: cluster::find_bin_dir().expect("the sendonce binaries"),
    };

    let summary = sendonce_chaos::run(&scenario).await.expect("the chaos run");

    println!("{summary}");
    let violations = summary.check();
    assert!(
        violations.is_empty(),
        "{summary}\n{}",
        violations.join("\n")
    );
    assert!(
        summary.faults.kills >= 3,
        "too few kills to mean anything: {summary}"
    );
    assert!(
        summary.faults.worker_pauses >= 2
            && summary.faults.smtp_pauses == 1
            && summary.faults.postgres_pauses == 1,
        "too few pauses to mean anything: {summary}"
    );
    assert!(summary.cut_keys > 0, "no data transfer was cut: {summary}");
}
