//! The outbox: every job state change writes its event, and its deliveries
//! to the endpoints subscribed, in the statement that makes the change;
//! and the suppression list, checked by the claim and again by the
//! `sending` write.

use sendonce_shared::domain::{EmailAddress, Task};
use sendonce_shared::store::{
    Cancel, Claim, DeadReason, DedupLayer, Failure, RefusedRecipient, Retrying, Sending, Store,
};
use sendonce_testkit::TestDatabase;
use serde_json::Value;
use std::time::Duration;
use uuid::Uuid;

use super::{LEASE, store_for, task};

async fn setup() -> (TestDatabase, Store, tokio_postgres::Client) {
    let db = TestDatabase::create().await;
    let store = store_for(&db);
    store.migrate().await.expect("migrate");
    store.renew_lease("w", LEASE).await.expect("lease");
    let client = db.connect().await;
    (db, store, client)
}

/// An endpoint of `tenant` subscribed to `types`, failing or not.
async fn endpoint(
    client: &tokio_postgres::Client,
    tenant: &str,
    types: &[&str],
    failing: bool,
) -> Uuid {
    let id = Uuid::now_v7();
    client
        .execute(
            "INSERT INTO webhooks (id, tenant, url, event_types, secret, failing_since)
             VALUES ($1, $2, 'https://hooks.example.com/in', $3, 'whsec_c2VjcmV0',
                     CASE WHEN $4 THEN now() END)",
            &[&id, &tenant, &types, &failing],
        )
        .await
        .expect("an endpoint");
    id
}

/// The events of `job`, oldest first: (type, data).
async fn events(client: &tokio_postgres::Client, t: &Task) -> Vec<(String, Value)> {
    client
        .query(
            "SELECT type, data FROM events WHERE job_id = $1 ORDER BY created_at, id",
            &[&t.job_id.as_uuid()],
        )
        .await
        .expect("events")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The deliveries of `t`'s events: (endpoint, type, state).
async fn deliveries(client: &tokio_postgres::Client, t: &Task) -> Vec<(Uuid, String, String)> {
    client
        .query(
            "SELECT d.endpoint_id, e.type, d.state FROM webhook_deliveries d
             JOIN events e ON e.id = d.event_id
             WHERE e.job_id = $1 ORDER BY e.created_at, e.id, d.endpoint_id",
            &[&t.job_id.as_uuid()],
        )
        .await
        .expect("deliveries")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn claim(store: &Store, t: &Task) -> (sendonce_shared::store::Fence, Vec<String>) {
    match store.claim(t, "w").await.expect("claim") {
        Claim::Proceed {
            fence, suppressed, ..
        } => (fence, suppressed),
        other => panic!("the claim proceeds: {other:?}"),
    }
}

#[tokio::test]
async fn each_outcome_writes_one_event_with_its_data_and_a_delivery_per_subscribed_endpoint() {
    let (_db, store, client) = setup().await;
    let all = endpoint(
        &client,
        "default",
        &[
            "job.sent",
            "job.failed",
            "job.uncertain",
            "job.duplicate",
            "job.canceled",
            "job.suppressed",
        ],
        false,
    )
    .await;
    let sent_only = endpoint(&client, "default", &["job.sent"], false).await;
    let failing = endpoint(&client, "default", &["job.sent"], true).await;
    let other_tenant = endpoint(&client, "other", &["job.sent"], false).await;

    let sent = task("outbox:sent");
    let (fence, _) = claim(&store, &sent).await;
    assert_eq!(
        store
            .mark_sending(&sent, fence, "w", &sent.email.suppression_keys())
            .await
            .expect("sending"),
        Sending::Go
    );
    store.mark_sent(&sent, "250 ok", &[]).await.expect("sent");
    // A repeat of the record step writes nothing more.
    store.mark_sent(&sent, "250 ok", &[]).await.expect("again");
    let evs = events(&client, &sent).await;
    assert_eq!(evs.len(), 1, "{evs:?}");
    let (kind, data) = &evs[0];
    assert_eq!(kind, "job.sent");
    assert_eq!(data["job_id"], sent.job_id.to_string());
    assert_eq!(data["idempotency_key"], "outbox:sent");
    assert_eq!(data["tenant"], "default");
    assert_eq!(data["to"], "ada@example.com");
    assert_eq!(data["smtp_reply"], "250 ok");
    assert_eq!(data["attempts"], 1);
    let mut expected = vec![
        (all, "job.sent".to_owned(), "pending".to_owned()),
        (sent_only, "job.sent".to_owned(), "pending".to_owned()),
        (failing, "job.sent".to_owned(), "held".to_owned()),
    ];
    expected.sort();
    let mut got = deliveries(&client, &sent).await;
    got.sort();
    assert_eq!(got, expected, "never to {other_tenant}");

    let failed = task("outbox:failed");
    let (fence, _) = claim(&store, &failed).await;
    let failure = || Failure {
        reason: DeadReason::Failed,
        error: "refused",
        smtp_reply: Some("550 5.7.1 no"),
    };
    assert!(
        store
            .dead_letter(&failed, fence, failure())
            .await
            .expect("dead")
    );
    assert!(
        !store
            .dead_letter(&failed, fence, failure())
            .await
            .expect("repeat")
    );
    assert_eq!(
        events(&client, &failed)
            .await
            .iter()
            .map(|e| e.0.as_str())
            .collect::<Vec<_>>(),
        ["job.failed"]
    );
    assert_eq!(
        deliveries(&client, &failed).await,
        [(all, "job.failed".to_owned(), "pending".to_owned())]
    );

    let uncertain = task("outbox:uncertain");
    let (fence, _) = claim(&store, &uncertain).await;
    let cut = Failure {
        reason: DeadReason::Uncertain,
        error: "cut",
        smtp_reply: None,
    };
    assert!(
        store
            .dead_letter(&uncertain, fence, cut)
            .await
            .expect("dead")
    );
    assert_eq!(events(&client, &uncertain).await[0].0, "job.uncertain");

    let dup = task("outbox:sent");
    store
        .record_duplicate(&dup, Some(sent.job_id), DedupLayer::L2)
        .await
        .expect("dup");
    store
        .record_duplicate(&dup, Some(sent.job_id), DedupLayer::L2)
        .await
        .expect("repeat");
    let evs = events(&client, &dup).await;
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].0, "job.duplicate");
    assert_eq!(evs[0].1["duplicate_of"], sent.job_id.to_string());
    assert_eq!(evs[0].1["to"], "ada@example.com");

    let canceled = task("outbox:canceled");
    store.claim(&canceled, "w").await.expect("claim");
    assert_eq!(
        store.cancel(canceled.job_id, None).await.expect("cancel"),
        Cancel::Canceled
    );
    assert_eq!(
        store.cancel(canceled.job_id, None).await.expect("again"),
        Cancel::Canceled
    );
    assert_eq!(events(&client, &canceled).await.len(), 1);
    assert_eq!(events(&client, &canceled).await[0].0, "job.canceled");
}

#[tokio::test]
async fn a_retry_writes_one_retrying_event_however_often_its_record_step_repeats() {
    let (_db, store, client) = setup().await;
    let t = task("outbox:retrying");
    let (fence, _) = claim(&store, &t).await;
    let retrying = Retrying {
        error: "451 later",
        smtp_reply: Some("451 4.3.0 later"),
        delay: Duration::from_secs(60),
        counted: true,
    };
    assert!(
        store
            .mark_retrying(&t, fence, retrying)
            .await
            .expect("retry")
    );
    assert!(
        store
            .mark_retrying(&t, fence, retrying)
            .await
            .expect("repeat")
    );
    let evs = events(&client, &t).await;
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].0, "job.retrying");
    assert_eq!(evs[0].1["error"], "451 later");
}

#[tokio::test]
async fn a_write_that_lost_its_token_writes_no_event() {
    let (_db, store, client) = setup().await;
    store.renew_lease("v", LEASE).await.expect("lease");
    let t = task("outbox:lost");
    let (old, _) = claim(&store, &t).await;
    store.release_claim(&t, old).await.expect("release");
    let Claim::Proceed { .. } = store.claim(&t, "v").await.expect("re-claim") else {
        panic!("v takes the row");
    };
    let failure = Failure {
        reason: DeadReason::Failed,
        error: "x",
        smtp_reply: None,
    };
    assert!(!store.dead_letter(&t, old, failure).await.expect("fenced"));
    assert!(events(&client, &t).await.is_empty());
}

#[tokio::test]
async fn no_outcome_is_recorded_when_its_event_cannot_be() {
    let (_db, store, client) = setup().await;
    let t = task("outbox:atomic");
    let (fence, _) = claim(&store, &t).await;
    client
        .batch_execute("ALTER TABLE events ADD CONSTRAINT no_more_events CHECK (false) NOT VALID")
        .await
        .expect("break the outbox");
    let failure = Failure {
        reason: DeadReason::Failed,
        error: "x",
        smtp_reply: None,
    };
    assert!(store.dead_letter(&t, fence, failure).await.is_err());
    assert!(store.mark_sent(&t, "250 ok", &[]).await.is_err());
    let state: String = client
        .query_one(
            "SELECT state FROM deliveries WHERE job_id = $1",
            &[&t.job_id.as_uuid()],
        )
        .await
        .expect("row")
        .get(0);
    assert_eq!(state, "processing");
    let dead: i64 = client
        .query_one("SELECT count(*) FROM failed_jobs", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(dead, 0);
}

#[tokio::test]
async fn the_claim_names_suppressed_recipients_and_a_job_with_only_those_ends_suppressed() {
    let (_db, store, client) = setup().await;
    let hook = endpoint(&client, "default", &["job.suppressed"], false).await;
    let first = task("suppress:first");
    let (fence, suppressed) = claim(&store, &first).await;
    assert!(suppressed.is_empty());
    store
        .mark_sending(&first, fence, "w", &first.email.suppression_keys())
        .await
        .expect("sending");
    let bounce = RefusedRecipient {
        recipient: "Ada@Example.COM".into(),
        reply: "550 5.1.1 no such user".into(),
    };
    store
        .mark_sent(&first, "250 ok", std::slice::from_ref(&bounce))
        .await
        .expect("sent");
    store
        .suppress_bounced(&first, std::slice::from_ref(&bounce))
        .await
        .expect("suppress");
    let row = client
        .query_one(
            "SELECT address, reason, smtp_reply, job_id FROM suppressions WHERE tenant = 'default'",
            &[],
        )
        .await
        .expect("an entry");
    assert_eq!(row.get::<_, String>(0), "ada@example.com");
    assert_eq!(row.get::<_, String>(1), "bounce");
    assert_eq!(row.get::<_, String>(2), "550 5.1.1 no such user");
    assert_eq!(row.get::<_, Uuid>(3), first.job_id.as_uuid());

    let next = task("suppress:next");
    let (fence, suppressed) = claim(&store, &next).await;
    assert_eq!(suppressed, ["ada@example.com"]);
    let refused = [RefusedRecipient {
        recipient: "ada@example.com".into(),
        reply: "not sent: on the suppression list".into(),
    }];
    assert!(
        store
            .suppress_job(&next, fence, &refused)
            .await
            .expect("suppress")
    );
    let job = store
        .job(next.job_id, None)
        .await
        .expect("read")
        .expect("job");
    assert_eq!(job.status, "suppressed");
    assert_eq!(job.refused_recipients, refused);
    assert_eq!(
        deliveries(&client, &next).await,
        [(hook, "job.suppressed".to_owned(), "pending".to_owned())]
    );
    assert_eq!(
        store.claim(&next, "w").await.expect("again"),
        Claim::AlreadyDone,
        "suppressed is terminal"
    );
    // Another tenant's list is its own.
    let elsewhere = task("suppress:elsewhere")
        .in_tenant(sendonce_shared::domain::Tenant::parse("other").expect("tenant"));
    assert!(claim(&store, &elsewhere).await.1.is_empty());
}

#[tokio::test]
async fn an_address_suppressed_after_the_claim_stops_the_sending_write() {
    let (_db, store, client) = setup().await;
    let t = task("suppress:race");
    let (fence, suppressed) = claim(&store, &t).await;
    assert!(suppressed.is_empty());
    let key = EmailAddress::parse("ADA@example.com")
        .expect("valid")
        .suppression_key();
    client
        .execute(
            "INSERT INTO suppressions (tenant, address, reason) VALUES ('default', $1, 'manual')",
            &[&key],
        )
        .await
        .expect("suppress");
    assert_eq!(
        store
            .mark_sending(&t, fence, "w", &t.email.suppression_keys())
            .await
            .expect("sending"),
        Sending::Suppressed
    );
    let state: String = client
        .query_one(
            "SELECT state FROM deliveries WHERE job_id = $1",
            &[&t.job_id.as_uuid()],
        )
        .await
        .expect("row")
        .get(0);
    assert_eq!(state, "processing", "the data did not start");
}

#[tokio::test]
async fn retention_deletes_old_events_every_endpoint_has_and_keeps_those_one_waits_for() {
    let (_db, store, client) = setup().await;
    let hook = endpoint(&client, "default", &["job.sent"], false).await;
    for key in [
        "retention:delivered",
        "retention:waiting",
        "retention:recent",
    ] {
        let t = task(key);
        let (fence, _) = claim(&store, &t).await;
        store
            .mark_sending(&t, fence, "w", &t.email.suppression_keys())
            .await
            .expect("sending");
        store.mark_sent(&t, "250 ok", &[]).await.expect("sent");
    }
    client
        .batch_execute(
            "UPDATE events SET created_at = now() - interval '40 days'
             WHERE data->>'idempotency_key' <> 'retention:recent';
             UPDATE webhook_deliveries d SET state = 'delivered' FROM events e
             WHERE e.id = d.event_id AND e.data->>'idempotency_key' <> 'retention:waiting';",
        )
        .await
        .expect("age them");

    let pruned = store.prune_batch(30, 1000).await.expect("prune");

    assert_eq!(pruned.events, 1);
    let mut left: Vec<String> = client
        .query("SELECT data->>'idempotency_key' FROM events", &[])
        .await
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect();
    left.sort();
    assert_eq!(left, ["retention:recent", "retention:waiting"], "{hook}");
}
