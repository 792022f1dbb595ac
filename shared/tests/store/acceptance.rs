//! Durable acceptance: the API's batches, the group commit, and the
//! reconciler's scans, against a real Postgres.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use sendonce_shared::store::{Accepted, Acceptor, Claim, Store, Submission};
use sendonce_testkit::TestDatabase;

use crate::{LEASE, store_for, task};

async fn migrated() -> (TestDatabase, Store) {
    let db = TestDatabase::create().await;
    let store = store_for(&db);
    store.migrate().await.expect("migrate");
    (db, store)
}

fn submission(key: &str) -> Submission {
    let task = task(key);
    let fingerprint = task.email.fingerprint();
    Submission::new(task, fingerprint)
}

#[tokio::test]
async fn a_batch_records_each_key_once_and_answers_repeats_and_earlier_keys_as_replays() {
    let (_db, store) = migrated().await;
    let earlier = submission("accept:earlier");
    store
        .accept(std::slice::from_ref(&earlier))
        .await
        .expect("accept");
    let (a, b) = (submission("accept:a"), submission("accept:b"));
    let batch = [
        a.clone(),
        submission("accept:a"),
        b.clone(),
        submission("accept:earlier"),
    ];

    let answers = store.accept(&batch).await.expect("accept");

    let replay_of = |s: &Submission| Accepted::Replay {
        job_id: s.task.job_id,
        fingerprint: Some(s.fingerprint.clone()),
        status: "queued".into(),
    };
    assert_eq!(
        answers,
        [
            Accepted::New,
            replay_of(&a),
            Accepted::New,
            replay_of(&earlier)
        ]
    );
}

#[tokio::test]
async fn concurrent_batches_with_overlapping_keys_give_each_key_one_job() {
    let (_db, store) = migrated().await;
    let keys: Vec<String> = (0..40).map(|i| format!("overlap:{i}")).collect();
    // Each batch takes the keys in another order.
    let batches: Vec<Vec<Submission>> = (0..6)
        .map(|b| {
            let mut batch: Vec<Submission> = keys.iter().map(|k| submission(k)).collect();
            batch.rotate_left(b * 7);
            if b % 2 == 1 {
                batch.reverse();
            }
            batch
        })
        .collect();

    let answers = join_all(batches.iter().map(|b| store.accept(b))).await;

    let new = answers
        .into_iter()
        .flat_map(|a| a.expect("no batch fails (no deadlock)"))
        .filter(|a| *a == Accepted::New)
        .count();
    assert_eq!(new, keys.len());
}

#[tokio::test]
async fn the_group_commit_answers_every_request_and_pushes_each_new_task_once() {
    let (_db, store) = migrated().await;
    let pushed = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&pushed);
    let acceptor = Acceptor::spawn(store.clone(), move |tasks: Vec<(String, Duration)>| {
        let sink = Arc::clone(&sink);
        async move {
            sink.lock()
                .expect("lock")
                .extend(tasks.into_iter().map(|(raw, _)| raw));
            Ok::<(), std::convert::Infallible>(())
        }
    });
    let requests: Vec<Submission> = (0..300)
        .map(|i| submission(&format!("group:{}", i % 100)))
        .collect();

    let answers = join_all(requests.iter().map(|r| acceptor.accept(r.clone()))).await;

    let new = answers
        .iter()
        .filter(|a| matches!(a, Ok(Accepted::New)))
        .count();
    let replays = answers
        .iter()
        .filter(|a| matches!(a, Ok(Accepted::Replay { .. })))
        .count();
    assert_eq!((new, replays), (100, 200));
    assert_eq!(pushed.lock().expect("lock").len(), 100);
}

#[tokio::test]
async fn an_accepted_job_is_claimed_with_the_first_token() {
    let (_db, store) = migrated().await;
    let job = submission("accept:claim");
    store
        .accept(std::slice::from_ref(&job))
        .await
        .expect("accept");
    store.renew_lease("w", LEASE).await.expect("lease");

    let claim = store.claim(&job.task, "w").await.expect("claim");

    let Claim::Proceed { attempt, fence, .. } = claim else {
        panic!("the accepted job proceeds: {claim:?}");
    };
    assert_eq!((attempt, fence.get()), (1, 1));
}

#[tokio::test]
async fn the_reconciler_pushes_only_jobs_that_waited_too_long_then_leaves_them_alone() {
    let (db, store) = migrated().await;
    let jobs: Vec<Submission> = [
        "stale:queued",
        "fresh:queued",
        "stale:retrying",
        "due:later",
    ]
    .iter()
    .map(|k| submission(k))
    .collect();
    store.accept(&jobs).await.expect("accept");
    db.connect()
        .await
        .batch_execute(
            "UPDATE deliveries SET updated_at = now() - interval '1 hour'
             WHERE idempotency_key IN ('stale:queued', 'stale:retrying', 'due:later');
             UPDATE deliveries SET state = 'retrying',
                    next_attempt_at = now() - interval '30 minutes'
             WHERE idempotency_key = 'stale:retrying';
             UPDATE deliveries SET state = 'retrying',
                    next_attempt_at = now() + interval '1 hour'
             WHERE idempotency_key = 'due:later';",
        )
        .await
        .expect("age the rows");
    let after = Duration::from_secs(600);

    let mut pushed = Vec::new();
    let n = store
        .reconcile_stale(after, 100, async |tasks: Vec<String>| {
            pushed.extend(tasks);
            Ok::<(), std::convert::Infallible>(())
        })
        .await
        .expect("reconcile");
    let again = store
        .reconcile_stale(after, 100, async |_: Vec<String>| {
            Ok::<(), std::convert::Infallible>(())
        })
        .await
        .expect("reconcile");

    assert_eq!((n, again), (2, 0));
    let mut keys: Vec<String> = pushed
        .iter()
        .map(|t| {
            sendonce_shared::domain::Task::from_json(t)
                .expect("a task")
                .idempotency_key
                .to_string()
        })
        .collect();
    keys.sort();
    assert_eq!(keys, ["stale:queued", "stale:retrying"]);
}

#[tokio::test]
async fn a_failed_push_leaves_the_waiting_jobs_for_the_next_round() {
    let (db, store) = migrated().await;
    store
        .accept(&[submission("push:fails")])
        .await
        .expect("accept");
    db.connect()
        .await
        .batch_execute("UPDATE deliveries SET updated_at = now() - interval '1 hour'")
        .await
        .expect("age the row");
    let after = Duration::from_secs(600);

    let failed = store
        .reconcile_stale(after, 100, async |_: Vec<String>| Err("Redis is down"))
        .await
        .expect("reconcile");
    let retried = store
        .reconcile_stale(after, 100, async |_: Vec<String>| Ok::<(), &str>(()))
        .await
        .expect("reconcile");

    assert_eq!((failed, retried), (0, 1));
}

#[tokio::test]
async fn a_pass_pages_through_every_waiting_job_and_nothing_else() {
    let (_db, store) = migrated().await;
    let jobs: Vec<Submission> = (0..5).map(|i| submission(&format!("page:{i}"))).collect();
    store.accept(&jobs).await.expect("accept");
    store.renew_lease("w", LEASE).await.expect("lease");
    store.claim(&jobs[0].task, "w").await.expect("claim");
    let until = store.now().await.expect("now");

    let mut cursor = None;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = store
            .waiting_page(until, cursor.as_ref(), 2)
            .await
            .expect("a page");
        pages += 1;
        seen.extend(page.tasks);
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }

    assert_eq!(
        (seen.len(), pages),
        (4, 3),
        "the claimed job is not waiting"
    );
}
