//! A Postgres that stops answering (every process of its cluster
//! SIGSTOPped: the kernel still acknowledges, so neither TCP nor the
//! server's own `statement_timeout` notices) fails the task's statements
//! within `DATABASE_STATEMENT_TIMEOUT_MS` plus the client's grace (or, when
//! the step needs a new connection because upkeep holds the open ones,
//! within `DATABASE_CONNECT_TIMEOUT_MS`), onto the normal infrastructure
//! retry; `/readyz` says Postgres is down; once it
//! answers again every job is sent exactly once.

use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

use sendonce_testkit::{CapturedChild, PostgresServer, TestDatabase, eventually};

use crate::helpers::{DEADLINE, Options, keyed_task, spawn_system};

/// Log lines of `worker` saying a step failed on the silent server: a
/// statement on an open connection, or the opening of a new one (seen in
/// CI when the housekeeper's passes held the open ones), timed out.
fn timed_out(worker: &CapturedChild) -> Vec<String> {
    worker
        .stdout()
        .into_iter()
        .filter(|l| {
            l.contains("infrastructure error")
                && (l.contains("did not answer within")
                    || l.contains("Timeout occurred while creating a new object"))
        })
        .collect()
}

/// Polls `probe` until it holds or `deadline` passes; unlike `eventually`
/// it does not panic, so the caller can resume Postgres first (a panic
/// while it is stopped would hang dropping the database).
async fn within<F, Fut>(deadline: Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if probe().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

async fn state(db: &TestDatabase, key: &str) -> Option<String> {
    db.connect()
        .await
        .query_opt(
            "SELECT state FROM deliveries WHERE idempotency_key = $1",
            &[&key],
        )
        .await
        .expect("read the row")
        .map(|r| r.get(0))
}

#[tokio::test]
async fn a_silent_postgres_fails_statements_within_the_timeout_and_nothing_is_sent_twice() {
    let system = spawn_system(Options::default()).await;
    let mut postgres = PostgresServer::start().await;
    let db = TestDatabase::create_on(&postgres.admin_url()).await;
    let metrics_port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let worker = system.spawn_captured_worker(&[
        "--database-url",
        db.url(),
        "--database-statement-timeout-ms",
        "500",
        "--database-connect-timeout-ms",
        "1000",
        "--metrics-addr",
        &metrics,
    ]);
    let readyz = format!("http://{metrics}/readyz");
    eventually("the worker is ready", DEADLINE, || async {
        let ready = system.client.get(&readyz).send().await.ok()?;
        ready.status().is_success().then_some(())
    })
    .await;

    // The claim runs into the silent server.
    postgres.pause();
    let first = keyed_task("ada@example.com", "silent:claim", "Silent");
    system.push_task(&first).await;
    let paused = Instant::now();
    let failed = within(Duration::from_secs(10), || async {
        !timed_out(&worker).is_empty()
    })
    .await;
    let took = paused.elapsed();
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        let answer = system.client.get(&readyz).send().await.ok()?;
        Some((answer.status().as_u16(), answer.text().await.ok()?))
    })
    .await
    .ok()
    .flatten();
    postgres.resume();
    assert!(
        failed,
        "no step failed on the timeout: {:#?}",
        worker.stdout()
    );
    // A new connection's 1 s, the statement's 500 ms plus the 1 s grace,
    // with room for a slow machine: not forever.
    assert!(took < Duration::from_secs(6), "took {took:?}");
    let (status, body) = answer.expect("readyz answers");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("postgres"), "{body}");
    system.smtp.wait_for_messages(1, DEADLINE).await;
    eventually("the first job recorded sent", DEADLINE, || async {
        (state(&db, "silent:claim").await.as_deref() == Some("sent")).then_some(())
    })
    .await;

    // Postgres goes silent while the server holds its 250 for a second:
    // `mark_sent` (or, on a slow machine, the `sending` fence just before)
    // times out and is retried until it lands. Either way the message
    // reaches the server once and ends `sent`, not `uncertain`.
    let before = timed_out(&worker).len();
    let second = keyed_task("bob+slow-data-1500@example.com", "silent:sent", "Silent");
    system.push_task(&second).await;
    eventually("the second RCPT", DEADLINE, || async {
        (system.smtp.attempts_for("bob+slow-data-1500@example.com") > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    postgres.pause();
    let failed = within(Duration::from_secs(10), || async {
        timed_out(&worker).len() > before
    })
    .await;
    postgres.resume();
    assert!(
        failed,
        "no step failed on the timeout: {:#?}",
        worker.stdout()
    );
    eventually("the second job recorded sent", DEADLINE, || async {
        (state(&db, "silent:sent").await.as_deref() == Some("sent")).then_some(())
    })
    .await;
    let messages = system.smtp.wait_for_messages(2, DEADLINE).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(system.smtp.messages().len(), 2, "{messages:?}");
    let dead: i64 = db
        .connect()
        .await
        .query_one("SELECT count(*) FROM failed_jobs", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(dead, 0, "nothing dead-lettered");
    drop(worker);
}
