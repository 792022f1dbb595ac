//! The KEDA `ScaledObject`'s wake-up query (deploy/kubernetes/base) against the
//! real schema: it counts every job a worker still has to finish, and
//! nothing finished, so workers scaled to zero wake when, and only when,
//! there is work.

use sendonce_testkit::TestDatabase;

use crate::{insert_row, store_for, task};

/// Every state a job row can be in.
const STATES: [&str; 7] = [
    "queued",
    "processing",
    "sending",
    "retrying",
    "sent",
    "failed",
    "uncertain",
];

/// The `query:` of the ScaledObject's postgresql trigger.
fn wake_up_query() -> String {
    let manifest = include_str!("../../../deploy/kubernetes/base/worker-scaledobject.yaml");
    let line = manifest
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("query: "))
        .expect("the ScaledObject has a postgresql query");
    line.strip_prefix('"')
        .and_then(|l| l.strip_suffix('"'))
        .expect("the query is one double-quoted line")
        .to_owned()
}

#[tokio::test]
async fn the_wake_up_query_counts_the_unfinished_jobs_and_nothing_else() {
    let db = TestDatabase::create().await;
    store_for(&db).migrate().await.expect("migrations");
    let client = db.connect().await;
    let query = wake_up_query();
    let count = async || -> i64 {
        client
            .query_one(query.as_str(), &[])
            .await
            .expect("the query runs on the current schema")
            .get(0)
    };
    assert_eq!(count().await, 0, "an empty table wakes nobody");

    for state in STATES {
        let t = task(&format!("autoscale:{state}"));
        insert_row(&client, &t, state).await;
    }

    assert_eq!(
        count().await,
        4,
        "queued, processing, sending and retrying are unfinished; sent, failed and uncertain are not"
    );
}
