//! The store through a real PgBouncer in transaction mode, as a fleet
//! behind a pooler runs it: several processes (each a pool of its own)
//! share the pooler's server connections.
//!
//! With statements prepared once per connection and cached (the direct
//! path, `DATABASE_POOLER=none`) the first test fails here: a name such as
//! `s3` means another process's statement on a shared server connection
//! (`prepared statement "s3" does not exist`, `bind message supplies 3
//! parameters, but prepared statement "s1" requires 2`, wrong results).

use futures::future::join_all;
use secrecy::SecretString;
use sendonce_shared::domain::Task;
use sendonce_shared::store::{Accepted, Claim, PgOptions, Pooler, Sending, Store, Submission};
use sendonce_testkit::{PgBouncer, TestDatabase};

use crate::{LEASE, task};

const PROCESSES: usize = 6;
const JOBS: usize = 240;
const IN_FLIGHT: usize = 8;

fn through(bouncer: &PgBouncer, db: &TestDatabase, pooler: Pooler) -> Store {
    let options = PgOptions {
        pooler,
        ..PgOptions::default()
    };
    Store::connect(
        &SecretString::from(bouncer.url(db.url())),
        &options,
        IN_FLIGHT,
    )
    .expect("pool")
}

/// One process's share of the jobs, `IN_FLIGHT` at a time: claim, fence,
/// record `sent`, as a worker does; any error or unexpected answer is
/// reported.
async fn work(store: Store, worker: String, tasks: Vec<Task>) -> Vec<String> {
    store.renew_lease(&worker, LEASE).await.expect("lease");
    let mut problems = Vec::new();
    for chunk in tasks.chunks(IN_FLIGHT) {
        let results = join_all(chunk.iter().map(|t| async {
            match store.claim(t, &worker).await {
                Ok(Claim::Proceed {
                    attempt: 1, fence, ..
                }) => match store.mark_sending(t, fence, &worker, &[]).await {
                    Ok(Sending::Go) => store
                        .mark_sent(t, "250 ok", &[])
                        .await
                        .map_err(|e| format!("mark_sent: {e:?}")),
                    other => Err(format!("mark_sending: {other:?}")),
                },
                other => Err(format!("claim: {other:?}")),
            }
        }))
        .await;
        problems.extend(results.into_iter().filter_map(Result::err));
    }
    problems
}

#[tokio::test]
async fn many_processes_claiming_through_a_transaction_pooler_all_get_the_right_answers() {
    let db = TestDatabase::create().await;
    crate::store_for(&db).migrate().await.expect("migrate");
    let bouncer = PgBouncer::start().await;
    let stores: Vec<Store> = (0..PROCESSES)
        .map(|_| through(&bouncer, &db, Pooler::Transaction))
        .collect();
    let tasks: Vec<Task> = (0..JOBS).map(|i| task(&format!("pooled:{i}"))).collect();
    let submissions: Vec<Submission> = tasks
        .iter()
        .map(|t| Submission::new(t.clone(), t.email.fingerprint()))
        .collect();
    // Accepted through the pooler too, in batches from every process.
    let accepted = join_all(
        submissions
            .chunks(JOBS / PROCESSES)
            .zip(&stores)
            .map(|(batch, store)| store.accept(batch)),
    )
    .await;
    for answers in accepted {
        let answers = answers.expect("accepted");
        assert!(answers.iter().all(|a| *a == Accepted::New), "{answers:?}");
    }

    let shares = (0..PROCESSES).map(|p| {
        tasks
            .iter()
            .skip(p)
            .step_by(PROCESSES)
            .cloned()
            .collect::<Vec<_>>()
    });
    let problems: Vec<String> = join_all(
        stores
            .iter()
            .zip(shares)
            .enumerate()
            .map(|(p, (store, share))| work(store.clone(), format!("w{p}"), share)),
    )
    .await
    .into_iter()
    .flatten()
    .collect();

    assert!(
        problems.is_empty(),
        "{} of {JOBS} jobs went wrong, e.g. {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
    let client = db.connect().await;
    let sent: i64 = client
        .query_one("SELECT count(*) FROM deliveries WHERE state = 'sent'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(sent, JOBS as i64);
}

#[tokio::test]
async fn five_processes_migrating_at_once_through_a_transaction_pooler_all_succeed() {
    let db = TestDatabase::create().await;
    let bouncer = PgBouncer::start().await;
    let stores: Vec<Store> = (0..5)
        .map(|_| through(&bouncer, &db, Pooler::Transaction))
        .collect();

    let results = join_all(stores.iter().map(Store::migrate)).await;

    let applied: Vec<usize> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("a migration run failed: {e:?}")))
        .collect();
    assert_eq!(
        applied.iter().filter(|n| **n > 0).count(),
        1,
        "applied once: {applied:?}"
    );
    // And the schema works through the pooler.
    let store = &stores[0];
    store.renew_lease("w", LEASE).await.expect("lease");
    assert!(matches!(
        store.claim(&task("after-migration"), "w").await,
        Ok(Claim::Proceed { attempt: 1, .. })
    ));
}
