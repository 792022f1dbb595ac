//! One owner per attempt: a worker that was *paused* (not killed) past its
//! lease, a Redis that comes back without the heartbeats, and a Postgres
//! reply lost on the way back. Each test is a scenario that sent a key twice,
//! stranded a job or filed a false `uncertain` before fencing tokens.

use std::net::SocketAddr;
use std::time::Duration;

use sendonce_shared::store::{self, Store};
use sendonce_testkit::{RedisOptions, RedisServer, eventually};

use crate::helpers::{
    DEADLINE, Gate, Options, black_hole, email, postgres_cutting_reply_on, signal, spawn_system,
};

fn lease(ms: u32) -> Options {
    Options {
        worker_args: vec!["--worker-lease-ms".into(), ms.to_string()],
        ..Options::default()
    }
}

/// Worker A pops, is paused while it waits for the SMTP greeting, and
/// resumes after worker B took the task over and started the data. A's
/// connect deadline has passed by then: a transient failure, whose record
/// must not overwrite B's attempt nor schedule a second send.
#[tokio::test]
async fn a_worker_paused_past_its_lease_neither_overwrites_the_new_holder_nor_sends_again() {
    let system = spawn_system(lease(1000)).await;
    let (hole, _hole) = black_hole().await;
    let a = system.spawn_captured_worker(&["--smtp-url", &hole, "--smtp-timeout-ms", "2000"]);
    let key = "pause:twice";
    let rcpt = "twice+slow-data-3000@example.com";
    let job = system.post_ok(&email(rcpt, Some(key))).await;
    system.wait_for_held(1).await;

    signal(a.id(), "STOP");
    let _b = system
        .spawn_worker_with(&["--worker-lease-ms", "1000"])
        .await;
    system
        .wait_for_delivery(key, |state, _| state == "sending")
        .await;
    signal(a.id(), "CONT");

    system
        .wait_for_status(job["job_id"].as_str().expect("job id"), "sent")
        .await;
    system.wait_for_drained_queue().await;
    assert_eq!(system.smtp.attempts_for(rcpt), 1, "the data went out once");
    assert_eq!(system.smtp.messages().len(), 1);
}

/// A pops and is paused; B takes the task over; A resumes first to the
/// data step and is then killed. Whoever reaches the data, the job must end
/// in a terminal state without an operator.
#[tokio::test]
async fn a_job_whose_holders_were_paused_and_killed_still_reaches_a_terminal_state() {
    let system = spawn_system(lease(1000)).await;
    let to_a = Gate::to(system.smtp.addr()).await;
    let to_b = Gate::to(system.smtp.addr()).await;
    let mut a = system.spawn_captured_worker(&["--smtp-url", &to_a.url]);
    let key = "pause:stranded";
    let rcpt = "stranded+slow-data-2000@example.com";
    let job = system.post_ok(&email(rcpt, Some(key))).await;
    system.wait_for_held(1).await;

    signal(a.id(), "STOP");
    let b = system
        .spawn_worker_with(&["--smtp-url", &to_b.url, "--worker-lease-ms", "1000"])
        .await;
    // B reaped A's copy and holds it, stuck before its envelope.
    let queue = system.queue();
    eventually("B holding the task", DEADLINE, || async {
        let held = queue.held_by(&b.id).await.ok()?;
        (!held.is_empty()).then_some(())
    })
    .await;
    to_a.open();
    signal(a.id(), "CONT");
    // A either wins the data step or finds itself fenced and says so.
    eventually("A at the data step or fenced", DEADLINE, || async {
        let sending = system
            .delivery(key)
            .await
            .is_some_and(|(state, _)| state == "sending");
        let fenced = a
            .stdout()
            .iter()
            .chain(a.stderr().iter())
            .any(|line| line.contains("another holder owns this attempt"));
        (sending || fenced).then_some(())
    })
    .await;
    signal(a.id(), "KILL");
    tokio::task::spawn_blocking(move || a.wait())
        .await
        .expect("reap A");
    to_b.open();

    let done = system
        .wait_for_terminal(job["job_id"].as_str().expect("job id"))
        .await;
    system.wait_for_drained_queue().await;
    assert!(
        system.smtp.messages().len() + system.smtp.cut_messages().len() <= 1,
        "at most one data transfer: {done}"
    );
}

/// Redis (AOF, fsync always) is killed while A's data is out and comes
/// back 2.5 s later, past A's lease; a worker C starts right then, as a
/// supervisor would restart one. A then reads its `250`: the row must say
/// `sent`, with no `uncertain` entry for an operator to requeue.
#[tokio::test]
async fn a_redis_restart_while_the_data_is_out_does_not_make_a_delivered_message_uncertain() {
    let mut redis = RedisServer::start(RedisOptions { appendonly: true }).await;
    let system = spawn_system(Options {
        redis_url: Some(redis.url()),
        worker_args: vec!["--worker-lease-ms".into(), "2000".into()],
        ..Options::default()
    })
    .await;
    let _a = system.spawn_worker().await;
    let key = "restart:uncertain";
    let rcpt = "restart+slow-data-4000@example.com";
    let job = system.post_ok(&email(rcpt, Some(key))).await;
    system
        .wait_for_delivery(key, |state, _| state == "sending")
        .await;

    redis.stop();
    // The fault itself: Redis stays down past A's 2 s lease.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    redis.restart().await;
    let _c = system.spawn_worker().await;

    let done = system
        .wait_for_terminal(job["job_id"].as_str().expect("job id"))
        .await;
    assert_eq!(done["status"], "sent", "{done}");
    system.wait_for_drained_queue().await;
    let dlq = system.failed_jobs("limit=10").await;
    assert_eq!(dlq["items"].as_array().map(Vec::len), Some(0), "{dlq}");
    assert_eq!(system.smtp.messages().len(), 1);
}

/// The `sending` UPDATE commits but its reply never reaches the worker.
/// No data went out, so the job is retried and sent, not filed `uncertain`.
#[tokio::test]
async fn a_lost_reply_to_the_sending_write_is_retried_not_made_uncertain() {
    let system = spawn_system(Options::default()).await;
    let store = Store::new(
        store::connect(&secrecy::SecretString::from(system.db.url().to_owned()), 1).expect("pool"),
    );
    store.migrate().await.expect("migrate");
    system
        .db
        .connect()
        .await
        .batch_execute(
            "CREATE FUNCTION announce_sending() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE NOTICE 'sendonce-test-cut-here'; RETURN NEW; END $$;
             CREATE TRIGGER announce_sending AFTER UPDATE ON deliveries FOR EACH ROW
             WHEN (NEW.state = 'sending') EXECUTE FUNCTION announce_sending();",
        )
        .await
        .expect("install the trigger");
    let mut url = url::Url::parse(system.db.url()).expect("database URL");
    let target = SocketAddr::new(
        url.host_str()
            .expect("host")
            .parse()
            .expect("an IP address"),
        url.port().unwrap_or(5432),
    );
    let port = postgres_cutting_reply_on(target, b"sendonce-test-cut-here").await;
    url.set_port(Some(port)).expect("set port");
    // Plaintext, so the proxy can read the notice (`prefer` would take TLS
    // from a server that offers it).
    url.query_pairs_mut().append_pair("sslmode", "disable");
    let _worker = system
        .spawn_worker_with(&["--database-url", url.as_str()])
        .await;

    let job = system
        .post_ok(&email("cut-reply@example.com", Some("lost:commit-reply")))
        .await;

    let done = system
        .wait_for_terminal(job["job_id"].as_str().expect("job id"))
        .await;
    assert_eq!(done["status"], "sent", "{done}");
    assert_eq!(system.smtp.messages().len(), 1);
}

/// A holder dies with one job claimed (the two-step claim, as for an
/// attempt that failed before its data) and another with its data out, and
/// Redis has lost their copies (so no reaper will ever bring them back).
/// The sweeper resolves both rows: the claimed one is sent, the cut one is
/// `uncertain`. Nothing is left in flight.
#[tokio::test]
async fn rows_a_dead_holder_left_in_flight_with_no_copy_in_redis_are_resolved_by_the_sweeper() {
    let system = spawn_system(lease(500)).await;
    let claimed = system
        .post_ok(&email("claimed@example.com", Some("sweep:claimed")))
        .await;
    // No worker runs yet: lose the task's copy, then claim its row for a
    // holder that never had a lease.
    let mut redis = redis::Client::open(system.redis_url.as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    redis::cmd("DEL")
        .arg(system.queue().keys().shard(0).queue())
        .query_async::<()>(&mut redis)
        .await
        .expect("lose the copy");
    let task: String = system
        .db
        .connect()
        .await
        .query_one(
            "SELECT task::text FROM deliveries WHERE idempotency_key = 'sweep:claimed'",
            &[],
        )
        .await
        .expect("the row")
        .get(0);
    let store = Store::new(
        store::connect(&secrecy::SecretString::from(system.db.url().to_owned()), 1).expect("pool"),
    );
    let task = sendonce_shared::domain::Task::from_json(&task).expect("a task");
    assert!(matches!(
        store.claim(&task, "dead-holder").await.expect("claim"),
        store::Claim::Proceed { .. }
    ));
    let b = system.spawn_captured_worker(&[]);
    let cut = system
        .post_ok(&email("cut+slow-data-30000@example.com", Some("sweep:cut")))
        .await;
    system
        .wait_for_delivery("sweep:cut", |state, _| state == "sending")
        .await;

    signal(b.id(), "KILL");
    let client = redis::Client::open(system.redis_url.as_str()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let keys = system.queue().keys().clone();
    let holders = system
        .db
        .connect()
        .await
        .query("SELECT holder FROM deliveries", &[])
        .await
        .expect("holders");
    for holder in holders.iter().filter_map(|r| r.get::<_, Option<String>>(0)) {
        redis::pipe()
            .del(keys.shard(0).processing(&holder))
            .zrem(keys.shard(0).leases(), &holder)
            .query_async::<()>(&mut conn)
            .await
            .expect("lose the copies");
    }
    let _rescuer = system
        .spawn_worker_with(&["--worker-lease-ms", "500"])
        .await;

    let claimed = system
        .wait_for_terminal(claimed["job_id"].as_str().expect("job id"))
        .await;
    let cut = system
        .wait_for_terminal(cut["job_id"].as_str().expect("job id"))
        .await;
    // The claimed job is sent by the rescuer; or the second worker's own
    // sweeper requeued it first and had its data out when it was killed,
    // and then it is rightly `uncertain` (a second attempt, cut): either
    // way resolved, never left in flight.
    let reaped_and_cut =
        claimed["status"] == "uncertain" && claimed["attempts"].as_i64().is_some_and(|a| a >= 2);
    assert!(claimed["status"] == "sent" || reaped_and_cut, "{claimed}");
    assert_eq!(cut["status"], "uncertain", "{cut}");
    assert!(
        cut["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("lost its lease"),
        "{cut}"
    );
}
