//! The Postgres store against a real server: migrations under concurrency,
//! the L2 claim and the `sending` fence. Each test has its own database.
//! [`readiness`] tests the `/readyz` check against live and dead servers;
//! [`connection`] the queue's one shared Redis connection.

mod acceptance;
mod audit;
mod autoscaling;
mod connection;
mod console;
mod dispatch;
mod fairness;
mod leases;
mod outbox;
mod pooler;
mod postgres_tls;
mod priorities;
mod readiness;
mod redis_tls;
mod requeue;
mod shards;
mod start;
mod state_machine;
mod suppressions;
mod upgrade;
mod webhooks;

use std::time::Duration;

use futures::future::join_all;
use sendonce_shared::domain::{Body, Email, EmailAddress, IdempotencyKey, Subject, Task};
use sendonce_shared::store::{self, Claim, Retrying, Sending, Store};
use sendonce_testkit::TestDatabase;

/// A lease long enough to outlive any test.
const LEASE: Duration = Duration::from_secs(600);

/// Writes a row of `t` in `state`, held (fence 1) by a worker long gone,
/// as schema 3 and later have it.
async fn insert_row(client: &tokio_postgres::Client, t: &Task, state: &str) {
    client
        .execute(
            "INSERT INTO deliveries
                 (idempotency_key, job_id, state, attempts, fence, holder, task)
             VALUES ($1, $2, $3, 1, 1, 'gone', $4::text::jsonb)",
            &[
                &t.idempotency_key.as_str(),
                &t.job_id.as_uuid(),
                &state,
                &t.to_json(),
            ],
        )
        .await
        .expect("a row");
}

/// Writes the dead-letter entry of `t` with `reason` (`failed` or
/// `uncertain`) and answers its id.
async fn insert_dead_letter(client: &tokio_postgres::Client, t: &Task, reason: &str) -> i64 {
    client
        .query_one(
            "INSERT INTO failed_jobs (job_id, idempotency_key, task, reason, error, attempts)
             VALUES ($1, $2, $3::text::jsonb, $4, 'boom', 1)
             RETURNING id",
            &[
                &t.job_id.as_uuid(),
                &t.idempotency_key.as_str(),
                &t.to_json(),
                &reason,
            ],
        )
        .await
        .expect("a dead letter")
        .get(0)
}

fn store_for(db: &TestDatabase) -> Store {
    Store::new(store::connect(&secrecy::SecretString::from(db.url().to_owned()), 4).expect("pool"))
}

fn task(key: &str) -> Task {
    Task::new(
        Email::new(
            EmailAddress::parse("ada@example.com").expect("valid"),
            Subject::parse("Hi").expect("valid"),
            Body::new(Some("hello".into()), None).expect("valid"),
        ),
        Some(IdempotencyKey::parse(key).expect("valid")),
    )
}

#[tokio::test]
async fn six_processes_migrating_at_once_neither_race_nor_fail() {
    let db = TestDatabase::create().await;
    let stores: Vec<Store> = (0..6).map(|_| store_for(&db)).collect();

    let results = join_all(stores.iter().map(Store::migrate)).await;

    let applied: Vec<usize> = results
        .into_iter()
        .map(|r| r.expect("every migration run succeeds"))
        .collect();
    assert_eq!(
        applied.iter().filter(|n| **n > 0).count(),
        1,
        "applied once: {applied:?}"
    );
}

#[tokio::test]
async fn a_retry_that_does_not_count_gives_its_attempt_back_once_however_often_it_is_recorded() {
    let db = TestDatabase::create().await;
    let store = store_for(&db);
    store.migrate().await.expect("migrate");
    let t = task("relay:busy");
    store.renew_lease("w", LEASE).await.expect("lease");
    let Ok(Claim::Proceed { attempt, fence, .. }) = store.claim(&t, "w").await else {
        panic!("the first claim proceeds");
    };
    assert_eq!(attempt, 1);
    let busy = Retrying {
        error: "421 4.7.0 too many connections",
        smtp_reply: None,
        delay: Duration::ZERO,
        counted: false,
    };

    for _ in 0..2 {
        assert!(
            store
                .mark_retrying(&t, fence, busy)
                .await
                .expect("retrying")
        );
    }
    let again = store.claim(&t, "w").await.expect("claim again");

    let Claim::Proceed { attempt, fence, .. } = again else {
        panic!("the retry proceeds: {again:?}");
    };
    assert_eq!(attempt, 1, "the busy attempt was not counted");
    let counted = Retrying {
        counted: true,
        ..busy
    };
    store
        .mark_retrying(&t, fence, counted)
        .await
        .expect("retrying");
    let Ok(Claim::Proceed { attempt, .. }) = store.claim(&t, "w").await else {
        panic!("the next retry proceeds");
    };
    assert_eq!(attempt, 2, "a counted attempt stays counted");
}

#[tokio::test]
async fn l2_alone_lets_one_of_many_racing_jobs_own_a_key() {
    let db = TestDatabase::create().await;
    let store = store_for(&db);
    store.migrate().await.expect("migrate");
    let tasks: Vec<Task> = (0..8).map(|_| task("race:l2")).collect();

    store.renew_lease("w", LEASE).await.expect("lease");
    let claims = join_all(tasks.iter().map(|t| store.claim(t, "w"))).await;

    let proceed = claims
        .iter()
        .filter(|c| matches!(c, Ok(Claim::Proceed { .. })))
        .count();
    let duplicates = claims
        .iter()
        .filter(|c| matches!(c, Ok(Claim::Duplicate { .. })))
        .count();
    assert_eq!((proceed, duplicates), (1, 7), "{claims:?}");
}

#[tokio::test]
async fn of_two_holders_of_one_job_only_the_newest_token_starts_sending() {
    let db = TestDatabase::create().await;
    let store = store_for(&db);
    store.migrate().await.expect("migrate");
    store.renew_lease("a", LEASE).await.expect("lease");
    store.renew_lease("b", LEASE).await.expect("lease");
    let t = task("fence:1");
    let Ok(Claim::Proceed {
        attempt: 1,
        fence: first,
        ..
    }) = store.claim(&t, "a").await
    else {
        panic!("the first claim proceeds");
    };
    // A live holder keeps its attempt: a spare copy waits.
    assert_eq!(store.claim(&t, "b").await.ok(), Some(Claim::Held));
    // The same task held twice, as after a wrongly presumed death: A's lease
    // lapsed and B took the attempt over.
    store.release_lease("a").await.expect("lapse");
    let Ok(Claim::Proceed {
        attempt: 2,
        fence: second,
        ..
    }) = store.claim(&t, "b").await
    else {
        panic!("the re-claim proceeds");
    };
    assert!(second > first);

    let fenced = join_all([
        store.mark_sending(&t, first, "a", &[]),
        store.mark_sending(&t, second, "b", &[]),
    ])
    .await;

    assert!(
        matches!(fenced[..], [Ok(Sending::Lost), Ok(Sending::Go)]),
        "{fenced:?}"
    );
    assert_eq!(store.claim(&t, "a").await.ok(), Some(Claim::Held));
}

#[tokio::test]
async fn a_holder_whose_lease_lapsed_does_not_start_sending() {
    let db = TestDatabase::create().await;
    let store = store_for(&db);
    store.migrate().await.expect("migrate");
    store.renew_lease("a", LEASE).await.expect("lease");
    let t = task("fence:lapsed");
    let Ok(Claim::Proceed { fence, .. }) = store.claim(&t, "a").await else {
        panic!("the claim proceeds");
    };

    store.release_lease("a").await.expect("lapse");

    assert_eq!(
        store.mark_sending(&t, fence, "a", &[]).await.ok(),
        Some(Sending::Lost)
    );
}

#[tokio::test]
async fn a_claim_given_up_after_a_lapsed_lease_is_taken_at_once_though_its_worker_lives_on() {
    let db = TestDatabase::create().await;
    let store = store_for(&db);
    store.migrate().await.expect("migrate");
    store.renew_lease("a", LEASE).await.expect("lease");
    store.renew_lease("b", LEASE).await.expect("lease");
    let t = task("fence:released");
    let Ok(Claim::Proceed { fence, .. }) = store.claim(&t, "a").await else {
        panic!("the claim proceeds");
    };
    store.release_lease("a").await.expect("lapse");
    assert_eq!(
        store.mark_sending(&t, fence, "a", &[]).await.ok(),
        Some(Sending::Lost)
    );

    store.release_claim(&t, fence).await.expect("release");
    store.renew_lease("a", LEASE).await.expect("a lives on");

    assert!(
        matches!(
            store.claim(&t, "b").await,
            Ok(Claim::Proceed { attempt: 2, .. })
        ),
        "another copy takes the row without waiting for a's lease"
    );
}
