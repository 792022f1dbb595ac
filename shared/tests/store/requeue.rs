//! Requeueing the dead-letter table.

use std::collections::HashMap;
use std::sync::Mutex;

use sendonce_shared::domain::Task;
use sendonce_shared::store::{Actor, RequeueSelection};
use sendonce_testkit::TestDatabase;

use crate::{insert_dead_letter, store_for, task};

/// More entries than one requeue batch holds, each dead-lettered as a worker
/// would leave it.
async fn dead_letters(db: &TestDatabase, n: usize) -> Vec<Task> {
    let client = db.connect().await;
    let tasks: Vec<Task> = (0..n).map(|i| task(&format!("bulk:{i}"))).collect();
    for t in &tasks {
        client
            .execute(
                "INSERT INTO deliveries (idempotency_key, job_id, state, attempts)
                 VALUES ($1, $2, 'failed', 5)",
                &[&t.idempotency_key.as_str(), &t.job_id.as_uuid()],
            )
            .await
            .expect("insert a delivery");
        insert_dead_letter(&client, t, "failed").await;
    }
    tasks
}

/// One `POST /failedJobs/retry {"all": true}` while the requeued jobs fail
/// again at once (a mass outage): each entry is requeued once by the call,
/// not again under its new entry id.
#[tokio::test]
async fn one_bulk_requeue_requeues_each_entry_at_most_once_even_if_it_fails_again_meanwhile() {
    let db = TestDatabase::create().await;
    let store = store_for(&db);
    store.migrate().await.expect("migrate");
    let tasks = dead_letters(&db, 600).await;
    let worker = db.connect().await;
    let pushed: Mutex<HashMap<String, usize>> = Mutex::default();
    let (everything, operator) = (RequeueSelection::All(None), Actor::default());

    let requeued = store
        .requeue_failed(&everything, &operator, async |batch: Vec<String>| {
            // Whatever an earlier batch committed fails again right away, as
            // a worker meeting the same outage would record it.
            worker
                .batch_execute(
                    "WITH again AS (
                         UPDATE deliveries SET state = 'failed'
                         WHERE state = 'queued' RETURNING job_id, idempotency_key)
                     INSERT INTO failed_jobs
                         (job_id, idempotency_key, task, reason, error, attempts)
                     SELECT job_id, idempotency_key, jsonb_build_object('job_id', job_id),
                            'failed', 'again', 1
                     FROM again ON CONFLICT (job_id) DO NOTHING",
                )
                .await
                .map_err(|e| e.to_string())?;
            let mut pushed = pushed.lock().expect("lock");
            for raw in batch {
                let task: serde_json::Value =
                    serde_json::from_str(&raw).map_err(|e| e.to_string())?;
                *pushed.entry(task["job_id"].to_string()).or_default() += 1;
            }
            if pushed.values().sum::<usize>() > 3 * tasks.len() {
                return Err("requeued without end".to_owned());
            }
            Ok::<(), String>(())
        })
        .await;

    let pushed = pushed.into_inner().expect("lock");
    let twice = pushed.values().filter(|n| **n > 1).count();
    assert_eq!(twice, 0, "{twice} entries requeued more than once");
    assert_eq!(requeued.expect("the requeue succeeds"), tasks.len() as u64);
}
