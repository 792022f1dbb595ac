//! The Postgres store against a real server: migrations under concurrency,
//! the L2 claim and the `sending` fence. Each test has its own database.
//! [`readiness`] tests the `/readyz` check against live and dead servers;
//! [`connection`] the queue's one shared Redis connection.

mod connection;
mod readiness;

use futures::future::join_all;
use sendonce_shared::domain::{Body, Email, EmailAddress, IdempotencyKey, Subject, Task};
use sendonce_shared::store::{self, Claim, Store};
use sendonce_testkit::TestDatabase;

fn store_for(db: &TestDatabase) -> Store {
    Store::new(store::connect(&secrecy::SecretString::from(db.url().to_owned()), 4).expect("pool"))
}

fn task(key: &str) -> Task {
    Task::new(
        Email {
            from: None,
            to: EmailAddress::parse("ada@example.com").expect("valid"),
            reply_to: None,
            subject: Subject::parse("Hi").expect("valid"),
            body: Body::new(Some("hello".into()), None).expect("valid"),
        },
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
async fn l2_alone_lets_one_of_many_racing_jobs_own_a_key() {
    let db = TestDatabase::create().await;
    let store = store_for(&db);
    store.migrate().await.expect("migrate");
    let tasks: Vec<Task> = (0..8).map(|_| task("race:l2")).collect();

    let claims = join_all(tasks.iter().map(|t| store.claim(t))).await;

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
async fn two_holders_of_one_job_cannot_both_start_sending() {
    let db = TestDatabase::create().await;
    let store = store_for(&db);
    store.migrate().await.expect("migrate");
    let t = task("fence:1");
    assert!(matches!(
        store.claim(&t).await,
        Ok(Claim::Proceed { attempt: 1 })
    ));
    // The same task held twice, as after a wrongly presumed death.
    assert!(matches!(
        store.claim(&t).await,
        Ok(Claim::Proceed { attempt: 2 })
    ));

    let fenced = join_all([store.mark_sending(&t), store.mark_sending(&t)]).await;

    let winners = fenced.iter().filter(|r| matches!(r, Ok(true))).count();
    assert_eq!(winners, 1, "{fenced:?}");
    assert!(matches!(store.claim(&t).await, Ok(Claim::Ambiguous { .. })));
}
