//! The system on the kinds of Redis teams run: TLS with a private CA and a
//! client certificate; a primary and replica watched by three sentinels,
//! failed over in the middle of a run; a 3-master Cluster whose slot for the
//! queue's keys moves to another node in the middle of a run. Each test
//! starts its own servers.

use std::collections::HashSet;
use std::time::Duration;

use sendonce_shared::queue::{self, Queue, RedisTls};
use sendonce_testkit::process::eventually;
use sendonce_testkit::tls::TestCerts;
use sendonce_testkit::{RedisCluster, RedisOptions, RedisSentinel, RedisServer, unique_prefix};
use serde_json::Value;

use crate::helpers::{DEADLINE, Options, TestSystem, email, spawn_system, worker_exit_reason};

/// Posts a job for `key` and returns its id.
async fn post(system: &TestSystem, key: &str) -> String {
    let answer: Value = system
        .post_ok(&email(
            &format!("{}@example.com", key.replace(':', "-")),
            Some(key),
        ))
        .await;
    answer["job_id"].as_str().expect("a job id").to_owned()
}

/// Every job `sent`, and the SMTP server got exactly one message per job.
async fn all_sent_once(system: &TestSystem, jobs: &[String]) {
    for job in jobs {
        system.wait_for_status(job, "sent").await;
    }
    let messages = system.smtp.wait_for_messages(jobs.len(), DEADLINE).await;
    assert_eq!(messages.len(), jobs.len(), "one message per job");
    let recipients: HashSet<_> = messages.iter().map(|m| m.rcpt_to.clone()).collect();
    assert_eq!(recipients.len(), jobs.len(), "no recipient got two");
}

fn tempdir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sendonce-{what}-{}", unique_prefix()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[tokio::test]
async fn jobs_are_posted_and_delivered_once_over_tls() {
    let certs = TestCerts::generate(&tempdir("tls"));
    let tls_port = sendonce_testkit::redis::free_port();
    let _redis = RedisServer::start_with(RedisOptions::default(), |_| {
        sendonce_testkit::redis::tls_args(&certs, tls_port)
    })
    .await;
    let path = |p: &std::path::Path| p.display().to_string();
    let system = spawn_system(Options {
        redis_url: Some(format!("rediss://127.0.0.1:{tls_port}")),
        redis_args: vec![
            "--redis-ca-file".into(),
            path(&certs.ca),
            "--redis-client-cert-file".into(),
            path(&certs.client_cert),
            "--redis-client-key-file".into(),
            path(&certs.client_key),
        ],
        ..Options::default()
    })
    .await;
    let before = system
        .post_ok(&email("tls-a@example.com", Some("tls:before")))
        .await;
    let _worker = system.spawn_worker().await;
    let after = system
        .post_ok(&email("tls-b@example.com", Some("tls:after")))
        .await;

    for job in [&before, &after] {
        system
            .wait_for_status(job["job_id"].as_str().expect("job id"), "sent")
            .await;
    }
    system.smtp.wait_for_messages(2, DEADLINE).await;
    assert_eq!(system.smtp.messages().len(), 2);
}

#[tokio::test]
async fn a_worker_given_the_wrong_ca_exits_at_start_with_a_one_line_reason() {
    let certs = TestCerts::generate(&tempdir("tls-wrong-ca"));
    let tls_port = sendonce_testkit::redis::free_port();
    let _redis = RedisServer::start_with(RedisOptions::default(), |_| {
        sendonce_testkit::redis::tls_args(&certs, tls_port)
    })
    .await;
    let path = |p: &std::path::Path| p.display().to_string();
    let system = spawn_system(Options {
        redis_url: Some(format!("rediss://127.0.0.1:{tls_port}")),
        redis_args: vec!["--redis-ca-file".into(), path(&certs.ca)],
        ..Options::default()
    })
    .await;
    let mut args = system.worker_args();
    args.extend(["--redis-ca-file".to_owned(), path(&certs.other_ca)]);

    let stderr = worker_exit_reason(&args).await;

    assert!(stderr.contains("REDIS_URL"), "{stderr}");
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
}

const MASTER: &str = "sendonce";

/// The line of `INFO sentinel` about [`MASTER`], when it is there.
async fn sentinel_view(sentinel: &RedisSentinel) -> Option<String> {
    let info = sentinel_command(sentinel, &["INFO", "sentinel"]).await?;
    info.lines()
        .find(|line| line.contains(&format!("name={MASTER},")))
        .map(str::to_owned)
}

async fn sentinel_command(sentinel: &RedisSentinel, args: &[&str]) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{}", sentinel.port())).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async::<String>(&mut conn).await.ok()
}

#[tokio::test]
async fn jobs_posted_before_during_and_after_a_sentinel_failover_are_all_delivered_once() {
    let primary = RedisServer::start(RedisOptions::default()).await;
    let replica = RedisServer::start(RedisOptions::default()).await;
    replica.replicaof(Some(primary.port())).await;
    eventually("the replica is in sync", DEADLINE, || async {
        let info = replica.command(&["INFO", "replication"]).await.ok()?;
        info.contains("master_link_status:up").then_some(())
    })
    .await;
    let mut sentinels = Vec::new();
    for _ in 0..3 {
        sentinels.push(RedisSentinel::start(MASTER, primary.port()).await);
    }
    for sentinel in &sentinels {
        eventually(
            "each sentinel sees the replica and the other sentinels",
            DEADLINE,
            || async {
                let view = sentinel_view(sentinel).await?;
                (view.contains("status=ok")
                    && view.contains("slaves=1")
                    && view.contains("sentinels=3"))
                .then_some(())
            },
        )
        .await;
    }
    let nodes: Vec<String> = sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port()))
        .collect();
    let system = spawn_system(Options {
        redis_url: Some(format!("redis+sentinel://{}/{MASTER}", nodes.join(","))),
        // Jobs whose push met the demoted primary wait for the reconciler.
        worker_args: vec!["--reconcile-after-ms".into(), "1000".into()],
        ..Options::default()
    })
    .await;
    let _worker = system.spawn_worker().await;
    let mut jobs = Vec::new();
    for i in 0..5 {
        jobs.push(post(&system, &format!("sentinel:before:{i}")).await);
    }
    all_sent_once(&system, &jobs).await;

    sentinel_command(&sentinels[0], &["SENTINEL", "FAILOVER", MASTER])
        .await
        .expect("SENTINEL FAILOVER answers OK");
    // Post while the failover runs.
    let new_primary = format!("address=127.0.0.1:{},", replica.port());
    let until = tokio::time::Instant::now() + DEADLINE;
    let mut during = 0;
    loop {
        jobs.push(post(&system, &format!("sentinel:during:{during}")).await);
        during += 1;
        // Done when the sentinels name the replica, and have turned the old
        // primary into its replica (until then it still takes writes).
        if sentinel_view(&sentinels[1])
            .await
            .is_some_and(|view| view.contains(&new_primary))
            && primary
                .command(&["INFO", "replication"])
                .await
                .is_ok_and(|info| info.contains("role:slave"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the failover never finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..5 {
        jobs.push(post(&system, &format!("sentinel:after:{i}")).await);
    }

    all_sent_once(&system, &jobs).await;
    assert!(during >= 1);
}

/// A node of a cluster as `CLUSTER NODES` lists it.
/// The Cluster slot that holds the queue of `prefix` (all its keys).
async fn queue_slot(cluster: &RedisCluster, prefix: &str) -> u16 {
    cluster.nodes[0]
        .command(&["CLUSTER", "KEYSLOT", &format!("{{{prefix}}}:queue")])
        .await
        .expect("KEYSLOT")
        .parse()
        .expect("a slot")
}

struct Node {
    id: String,
    port: u16,
    /// The master's id, for a replica.
    master: Option<String>,
    slots: Vec<(u16, u16)>,
}

impl Node {
    fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

async fn cluster_nodes(any: &RedisServer) -> Vec<Node> {
    let text = any
        .command(&["CLUSTER", "NODES"])
        .await
        .expect("CLUSTER NODES");
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let port = fields[1]
                .split(['@', ','])
                .next()
                .and_then(|addr| addr.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .expect("a node port");
            let slots = fields[8..]
                .iter()
                .filter(|f| !f.starts_with('['))
                .map(|range| {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    (a.parse().expect("slot"), b.parse().expect("slot"))
                })
                .collect();
            Node {
                id: fields[0].to_owned(),
                port,
                master: (fields[3] != "-").then(|| fields[3].to_owned()),
                slots,
            }
        })
        .collect()
}

async fn admin(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to a node")
}

async fn setslot(port: u16, slot: u16, how: &[&str]) {
    redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg(how)
        .query_async::<()>(&mut admin(port).await)
        .await
        .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {slot} {how:?} on {port}: {e}"));
}

#[tokio::test]
async fn jobs_posted_before_during_and_after_a_cluster_slot_migration_are_all_delivered_once() {
    let cluster = RedisCluster::start(3).await;
    let system = spawn_system(Options {
        redis_url: Some(cluster.url()),
        worker_args: vec!["--reconcile-after-ms".into(), "1000".into()],
        ..Options::default()
    })
    .await;
    let _worker = system.spawn_worker().await;
    let slot = queue_slot(&cluster, &system.prefix).await;
    let nodes = cluster_nodes(&cluster.nodes[0]).await;
    let owns = |n: &Node| n.owns(slot);
    let from = nodes.iter().find(|n| owns(n)).expect("the slot's owner");
    let to = nodes.iter().find(|n| !owns(n)).expect("another node");

    // A plain connection to a node that does not serve the slot is not
    // ready: its keyed write answers MOVED (a PING would pass).
    let wrong = Queue::new(
        queue::connect(
            &format!("redis://127.0.0.1:{}", to.port).into(),
            &RedisTls::default(),
        )
        .expect("client"),
        &system.prefix,
    );
    assert!(wrong.ping().await.is_ok());
    assert!(wrong.probe_write().await.is_err(), "MOVED");

    let mut jobs = Vec::new();
    for i in 0..5 {
        jobs.push(post(&system, &format!("cluster:before:{i}")).await);
    }
    all_sent_once(&system, &jobs).await;
    for i in 0..3 {
        jobs.push(post(&system, &format!("cluster:queued:{i}")).await);
    }

    // Move the slot as `redis-cli --cluster reshard` does, posting between
    // the steps: clients meet ASK while keys are split, MOVED after.
    setslot(to.port, slot, &["IMPORTING", &from.id]).await;
    setslot(from.port, slot, &["MIGRATING", &to.id]).await;
    let mut source = admin(from.port).await;
    let mut during = 0;
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(1)
            .query_async(&mut source)
            .await
            .expect("GETKEYSINSLOT");
        if keys.is_empty() {
            break;
        }
        redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(to.port)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&keys)
            .query_async::<()>(&mut source)
            .await
            .expect("MIGRATE");
        jobs.push(post(&system, &format!("cluster:during:{during}")).await);
        during += 1;
    }
    for node in &nodes {
        setslot(node.port, slot, &["NODE", &to.id]).await;
    }
    for i in 0..5 {
        jobs.push(post(&system, &format!("cluster:after:{i}")).await);
    }

    all_sent_once(&system, &jobs).await;
    assert!(during >= 1, "the slot held keys to move");
    let readyz = system
        .client
        .get(format!("{}/readyz", system.api))
        .send()
        .await
        .expect("GET /readyz");
    assert_eq!(readyz.status(), 200);
}

#[tokio::test]
async fn jobs_posted_before_during_and_after_a_cluster_failover_are_all_delivered_once() {
    let cluster = RedisCluster::start_with_replicas(3, 1).await;
    let system = spawn_system(Options {
        redis_url: Some(cluster.url()),
        worker_args: vec!["--reconcile-after-ms".into(), "1000".into()],
        ..Options::default()
    })
    .await;
    let _worker = system.spawn_worker().await;
    let slot = queue_slot(&cluster, &system.prefix).await;
    let nodes = cluster_nodes(&cluster.nodes[0]).await;
    let master = nodes
        .iter()
        .find(|n| n.owns(slot))
        .expect("the slot's master");
    let replica = nodes
        .iter()
        .find(|n| n.master.as_deref() == Some(master.id.as_str()))
        .expect("its replica");

    let mut jobs = Vec::new();
    for i in 0..5 {
        jobs.push(post(&system, &format!("cluster-failover:before:{i}")).await);
    }
    all_sent_once(&system, &jobs).await;

    // A manual failover: the replica takes over the master's slots.
    redis::cmd("CLUSTER")
        .arg("FAILOVER")
        .query_async::<()>(&mut admin(replica.port).await)
        .await
        .expect("CLUSTER FAILOVER");
    let until = tokio::time::Instant::now() + DEADLINE;
    let mut during = 0;
    loop {
        jobs.push(post(&system, &format!("cluster-failover:during:{during}")).await);
        during += 1;
        let promoted = cluster_nodes(&cluster.nodes[0])
            .await
            .iter()
            .any(|n| n.id == replica.id && n.master.is_none() && !n.slots.is_empty());
        if promoted {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the failover never finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..5 {
        jobs.push(post(&system, &format!("cluster-failover:after:{i}")).await);
    }

    all_sent_once(&system, &jobs).await;
}

/// `QUEUE_SHARDS=12` on three masters: the shards' slots fall on every
/// master, and so do the keys of the jobs (each job's L1 key in its
/// shard); retries go through each shard's delayed set, a replay is the
/// same job, a second job for a key is a duplicate, and every job is sent
/// once.
#[tokio::test]
async fn twelve_shards_on_a_three_master_cluster_spread_the_keys_and_send_each_job_once() {
    const SHARDS: u16 = 12;
    let cluster = RedisCluster::start(3).await;
    let system = spawn_system(Options {
        redis_url: Some(cluster.url()),
        queue_shards: Some(SHARDS),
        ..Options::default()
    })
    .await;
    let _workers = tokio::join!(system.spawn_worker(), system.spawn_worker());
    let queue = system.queue();
    let nodes = cluster_nodes(&cluster.nodes[0]).await;
    let masters: Vec<&Node> = nodes.iter().filter(|n| !n.slots.is_empty()).collect();
    assert_eq!(masters.len(), 3);

    let mut jobs = Vec::new();
    for i in 0..48 {
        // Every fourth recipient is refused once: its retry waits in its
        // shard's delayed set.
        let flaky = if i % 4 == 0 { "+flaky-1" } else { "" };
        let answer = system
            .post_ok(&email(
                &format!("sharded-{i}{flaky}@example.com"),
                Some(&format!("sharded:{i}")),
            ))
            .await;
        jobs.push(answer["job_id"].as_str().expect("a job id").to_owned());
    }
    let replay = system
        .post_ok(&email("sharded-7@example.com", Some("sharded:7")))
        .await;
    let second = crate::helpers::keyed_task("sharded-7@example.com", "sharded:7", "Welcome aboard");
    system.push_task(&second).await;

    all_sent_once(&system, &jobs).await;
    assert_eq!(replay["job_id"], jobs[7].as_str());
    system
        .wait_for_status(&second.job_id.to_string(), "duplicate")
        .await;
    assert_eq!(system.smtp.messages().len(), jobs.len());

    // Where the shards are: each master owns the slot of some shard.
    let mut shards_per_master = vec![0; masters.len()];
    for shard in queue.keys().shards() {
        let slot: u16 = cluster.nodes[0]
            .command(&["CLUSTER", "KEYSLOT", &shard.queue()])
            .await
            .expect("KEYSLOT")
            .parse()
            .expect("a slot");
        let owner = masters.iter().position(|m| m.owns(slot)).expect("an owner");
        shards_per_master[owner] += 1;
    }
    // Where the keys are: every master holds L1 keys of these jobs.
    let pattern = format!("{{{}:*}}:dedup:*", system.prefix);
    let mut keys_per_master = Vec::new();
    for master in &masters {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(&mut admin(master.port).await)
            .await
            .expect("KEYS");
        keys_per_master.push(keys.len());
    }
    assert!(
        shards_per_master.iter().all(|&n| n > 0),
        "shards per master: {shards_per_master:?}"
    );
    assert!(
        keys_per_master.iter().all(|&n| n > 0),
        "L1 keys per master: {keys_per_master:?}"
    );
    assert_eq!(keys_per_master.iter().sum::<usize>(), jobs.len());
    let layout = cluster.nodes[0]
        .command(&["CLUSTER", "KEYSLOT", &queue.keys().layout()])
        .await
        .expect("KEYSLOT");
    let layout_owner = masters
        .iter()
        .find(|m| m.owns(layout.parse().expect("a slot")))
        .expect("an owner");
    let recorded: String = redis::cmd("GET")
        .arg(queue.keys().layout())
        .query_async(&mut admin(layout_owner.port).await)
        .await
        .expect("GET");
    assert_eq!(recorded, SHARDS.to_string());
    println!("shards per master {shards_per_master:?}, L1 keys per master {keys_per_master:?}");
}

#[tokio::test]
async fn a_worker_with_another_shard_count_than_the_queue_exits_at_start_with_a_one_line_reason() {
    let system = spawn_system(Options {
        queue_shards: Some(4),
        ..Options::default()
    })
    .await;
    let mut args = system.worker_args();
    args.extend(["--queue-shards".to_owned(), "2".to_owned()]);

    let stderr = worker_exit_reason(&args).await;

    assert!(
        stderr.contains("QUEUE_SHARDS is 2") && stderr.contains("in 4 shard(s)"),
        "{stderr}"
    );
}
