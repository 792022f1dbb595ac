//! Webhook dispatch: claims under concurrency, leases, the retry schedule
//! running out, and the resume a success brings.

use std::collections::HashSet;
use std::time::Duration;

use futures::future::join_all;
use sendonce_shared::store::{AttemptOutcome, DueDelivery, Store};
use sendonce_testkit::TestDatabase;
use uuid::Uuid;

use crate::store_for;

/// A lease long enough to outlive any test.
const LEASE: Duration = Duration::from_secs(600);

async fn migrated() -> (TestDatabase, Store, tokio_postgres::Client) {
    let db = TestDatabase::create().await;
    let store = store_for(&db);
    store.migrate().await.expect("migrate");
    let client = db.connect().await;
    (db, store, client)
}

/// An endpoint of tenant `t` subscribed to every type.
async fn insert_endpoint(client: &tokio_postgres::Client) -> Uuid {
    let id = Uuid::now_v7();
    client
        .execute(
            "INSERT INTO webhooks (id, tenant, url, event_types, secret)
             VALUES ($1, 't', 'https://example.com/hook', ARRAY['job.sent', 'job.failed'],
                     'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')",
            &[&id],
        )
        .await
        .expect("an endpoint");
    id
}

/// An event with one `pending` delivery, due now, to each of `endpoints`;
/// the delivery ids in their order.
async fn insert_event(client: &tokio_postgres::Client, endpoints: &[Uuid]) -> Vec<i64> {
    let event: Uuid = client
        .query_one(
            "INSERT INTO events (tenant, type, job_id, data)
             VALUES ('t', 'job.sent', gen_random_uuid(), '{\"attempts\": 1}')
             RETURNING id",
            &[],
        )
        .await
        .expect("an event")
        .get(0);
    let mut ids = Vec::new();
    for endpoint in endpoints {
        let id: i64 = client
            .query_one(
                "INSERT INTO webhook_deliveries (endpoint_id, event_id, state, next_attempt_at)
                 VALUES ($1, $2, 'pending', now()) RETURNING id",
                &[endpoint, &event],
            )
            .await
            .expect("a delivery")
            .get(0);
        ids.push(id);
    }
    ids
}

async fn state_of(client: &tokio_postgres::Client, delivery: i64) -> (String, i32) {
    let row = client
        .query_one(
            "SELECT state, attempts FROM webhook_deliveries WHERE id = $1",
            &[&delivery],
        )
        .await
        .expect("the delivery");
    (row.get(0), row.get(1))
}

async fn failing_since(client: &tokio_postgres::Client, endpoint: Uuid) -> bool {
    client
        .query_one(
            "SELECT failing_since IS NOT NULL FROM webhooks WHERE id = $1",
            &[&endpoint],
        )
        .await
        .expect("the endpoint")
        .get(0)
}

async fn claim_all(store: &Store) -> Vec<DueDelivery> {
    store
        .claim_webhook_deliveries(100, 100, LEASE, &[])
        .await
        .expect("claim")
}

fn failed(retry_in: Option<Duration>) -> AttemptOutcome<'static> {
    AttemptOutcome::Failed {
        status: Some(500),
        error: None,
        retry_in,
    }
}

#[tokio::test]
async fn two_concurrent_claimers_never_get_the_same_delivery() {
    let (_db, store, client) = migrated().await;
    let endpoints = [
        insert_endpoint(&client).await,
        insert_endpoint(&client).await,
    ];
    let mut all = HashSet::new();
    for _ in 0..50 {
        all.extend(insert_event(&client, &endpoints).await);
    }

    let claims = join_all((0..8).map(|_| async {
        let mut mine = Vec::new();
        loop {
            let got = store
                .claim_webhook_deliveries(3, 2, LEASE, &[])
                .await
                .expect("claim");
            if got.is_empty() {
                return mine;
            }
            mine.extend(got.into_iter().map(|d| d.id));
        }
    }))
    .await;

    let claimed: Vec<i64> = claims.into_iter().flatten().collect();
    let unique: HashSet<i64> = claimed.iter().copied().collect();
    assert_eq!(claimed.len(), unique.len(), "a delivery claimed twice");
    assert_eq!(unique, all, "every due delivery claimed once");
}

#[tokio::test]
async fn a_claim_gives_an_endpoint_at_most_its_share_less_the_requests_open_to_it() {
    let (_db, store, client) = migrated().await;
    let busy = insert_endpoint(&client).await;
    let quiet = insert_endpoint(&client).await;
    for _ in 0..10 {
        insert_event(&client, &[busy]).await;
    }
    let quiet_delivery = insert_event(&client, &[quiet]).await[0];

    let first = store
        .claim_webhook_deliveries(4, 2, LEASE, &[])
        .await
        .expect("claim");
    let topping_up = store
        .claim_webhook_deliveries(4, 2, LEASE, &[(busy, 1)])
        .await
        .expect("claim");
    let skipping = store
        .claim_webhook_deliveries(4, 2, LEASE, &[(busy, 2)])
        .await
        .expect("claim");

    let busy_claimed = first.iter().filter(|d| d.endpoint_id == busy).count();
    assert_eq!(busy_claimed, 2, "{first:?}");
    assert_eq!(topping_up.len(), 1, "{topping_up:?}");
    assert_eq!(topping_up[0].endpoint_id, busy);
    assert!(
        first
            .iter()
            .chain(&topping_up)
            .any(|d| d.id == quiet_delivery),
        "the quiet endpoint's delivery is claimed beside the busy one's backlog"
    );
    assert!(
        skipping.iter().all(|d| d.endpoint_id != busy),
        "{skipping:?}"
    );
    let d = &first[0];
    assert_eq!(d.event_type, "job.sent");
    assert_eq!(d.data["attempts"], 1);
    assert_eq!(d.url, "https://example.com/hook");
    assert!(d.previous_secret.is_none());
}

#[tokio::test]
async fn a_claimed_delivery_whose_lease_runs_out_unfinished_is_due_again() {
    let (_db, store, client) = migrated().await;
    let endpoint = insert_endpoint(&client).await;
    let delivery = insert_event(&client, &[endpoint]).await[0];
    let lease = Duration::from_millis(300);

    let first = store
        .claim_webhook_deliveries(10, 10, lease, &[])
        .await
        .expect("claim");
    let during = claim_all(&store).await;
    let again =
        sendonce_testkit::eventually("the lease to run out", Duration::from_secs(10), || {
            let store = store.clone();
            async move {
                let got = store
                    .claim_webhook_deliveries(10, 10, LEASE, &[])
                    .await
                    .expect("claim");
                (!got.is_empty()).then_some(got)
            }
        })
        .await;

    assert_eq!(first.len(), 1);
    assert!(during.is_empty(), "claimed again within the lease");
    assert_eq!(again.iter().map(|d| d.id).collect::<Vec<_>>(), [delivery]);
    // The first claim's lease ran out: its late failure records nothing.
    let late = store
        .record_webhook_attempt(&first[0], &failed(Some(Duration::ZERO)), Duration::ZERO)
        .await
        .expect("record");
    assert!(!late.written);
    assert_eq!(state_of(&client, delivery).await, ("pending".into(), 0));
}

#[tokio::test]
async fn a_failed_attempt_is_due_again_after_its_delay_and_logged() {
    let (_db, store, client) = migrated().await;
    let endpoint = insert_endpoint(&client).await;
    let delivery = insert_event(&client, &[endpoint]).await[0];
    let claimed = claim_all(&store).await;

    let recorded = store
        .record_webhook_attempt(
            &claimed[0],
            &AttemptOutcome::Failed {
                status: None,
                error: Some("connection refused"),
                retry_in: Some(Duration::from_secs(3600)),
            },
            Duration::from_millis(12),
        )
        .await
        .expect("record");

    assert!(recorded.written && !recorded.endpoint_failing);
    assert!(claim_all(&store).await.is_empty(), "not due for an hour");
    let row = client
        .query_one(
            "SELECT state, attempts, last_error, log->0->>'error', (log->0->>'duration_ms')::int,
                    next_attempt_at > now() + interval '59 minutes'
             FROM webhook_deliveries WHERE id = $1",
            &[&delivery],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, String>(0), "pending");
    assert_eq!(row.get::<_, i32>(1), 1);
    assert_eq!(
        row.get::<_, Option<String>>(2).as_deref(),
        Some("connection refused")
    );
    assert_eq!(
        row.get::<_, Option<String>>(3).as_deref(),
        Some("connection refused")
    );
    assert_eq!(row.get::<_, i32>(4), 12);
    assert!(row.get::<_, bool>(5));
}

#[tokio::test]
async fn an_exhausted_schedule_marks_the_endpoint_failing_and_holds_its_deliveries() {
    let (_db, store, client) = migrated().await;
    let endpoint = insert_endpoint(&client).await;
    let other = insert_endpoint(&client).await;
    let first = insert_event(&client, &[endpoint, other]).await;
    let waiting = insert_event(&client, &[endpoint]).await[0];
    let claimed = store
        .claim_webhook_deliveries(1, 1, LEASE, &[(other, 1)])
        .await
        .expect("claim");
    assert_eq!(claimed[0].id, first[0]);

    let recorded = store
        .record_webhook_attempt(&claimed[0], &failed(None), Duration::ZERO)
        .await
        .expect("record");

    assert!(recorded.written && recorded.endpoint_failing);
    assert_eq!(recorded.others_moved, 1);
    assert!(failing_since(&client, endpoint).await);
    assert_eq!(state_of(&client, first[0]).await, ("held".into(), 1));
    assert_eq!(state_of(&client, waiting).await, ("held".into(), 0));
    assert_eq!(state_of(&client, first[1]).await, ("pending".into(), 0));
    assert!(!failing_since(&client, other).await);
    let due: Vec<i64> = claim_all(&store).await.iter().map(|d| d.id).collect();
    assert_eq!(due, [first[1]], "only the other endpoint's delivery is due");
}

#[tokio::test]
async fn a_success_on_a_failing_endpoint_resumes_it_and_its_held_deliveries_are_due() {
    let (_db, store, client) = migrated().await;
    let endpoint = insert_endpoint(&client).await;
    let first = insert_event(&client, &[endpoint]).await[0];
    let second = insert_event(&client, &[endpoint]).await[0];
    let third = insert_event(&client, &[endpoint]).await[0];
    let claimed = store
        .claim_webhook_deliveries(1, 1, LEASE, &[])
        .await
        .expect("claim");
    store
        .record_webhook_attempt(&claimed[0], &failed(None), Duration::ZERO)
        .await
        .expect("record");
    // A replay: the first delivery is due again, the endpoint still failing.
    let replay = "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = now()
                  WHERE id = $1";
    client.execute(replay, &[&first]).await.expect("replay");
    let replayed = claim_all(&store).await;
    assert_eq!(replayed.iter().map(|d| d.id).collect::<Vec<_>>(), [first]);
    let still_failing = store
        .record_webhook_attempt(&replayed[0], &failed(Some(Duration::ZERO)), Duration::ZERO)
        .await
        .expect("record");
    assert!(still_failing.written && !still_failing.endpoint_failing);
    assert_eq!(state_of(&client, first).await, ("held".into(), 2));
    client.execute(replay, &[&first]).await.expect("replay");
    let replayed = claim_all(&store).await;

    let resumed = store
        .record_webhook_attempt(
            &replayed[0],
            &AttemptOutcome::Delivered { status: 204 },
            Duration::ZERO,
        )
        .await
        .expect("record");

    assert!(resumed.written && resumed.endpoint_resumed);
    assert_eq!(resumed.others_moved, 2);
    assert!(!failing_since(&client, endpoint).await);
    assert_eq!(state_of(&client, first).await, ("delivered".into(), 3));
    let due: HashSet<i64> = claim_all(&store).await.iter().map(|d| d.id).collect();
    assert_eq!(due, HashSet::from([second, third]));
}

#[tokio::test]
async fn the_oldest_undelivered_age_is_per_endpoint_and_ignores_delivered_events() {
    let (_db, store, client) = migrated().await;
    let waiting = insert_endpoint(&client).await;
    let done = insert_endpoint(&client).await;
    let ids = insert_event(&client, &[waiting, done]).await;
    client
        .execute(
            "UPDATE webhook_deliveries SET created_at = now() - interval '1 hour'",
            &[],
        )
        .await
        .expect("age");
    let claimed = claim_all(&store).await;
    let to_done = claimed.iter().find(|d| d.id == ids[1]).expect("claimed");
    store
        .record_webhook_attempt(
            to_done,
            &AttemptOutcome::Delivered { status: 200 },
            Duration::ZERO,
        )
        .await
        .expect("record");

    let ages = store.oldest_undelivered_webhooks().await.expect("ages");

    assert_eq!(ages.len(), 1, "{ages:?}");
    assert_eq!(ages[0].0, waiting);
    assert!(ages[0].1 >= Duration::from_secs(3600), "{ages:?}");
}

#[tokio::test]
async fn a_delivery_left_held_on_an_endpoint_no_longer_failing_is_made_due() {
    let (_db, store, client) = migrated().await;
    let stray = insert_endpoint(&client).await;
    let failing = insert_endpoint(&client).await;
    let [on_stray, on_failing] = insert_event(&client, &[stray, failing]).await[..] else {
        panic!("two deliveries");
    };
    // As a fan-out that read `failing_since` just before a resume
    // committed leaves it: held, on an endpoint that is not failing.
    client
        .execute(
            "UPDATE webhook_deliveries SET state = 'held', next_attempt_at = NULL",
            &[],
        )
        .await
        .expect("held");
    client
        .execute(
            "UPDATE webhooks SET failing_since = now() WHERE id = $1",
            &[&failing],
        )
        .await
        .expect("failing");

    assert_eq!(
        store.release_stray_held_webhooks().await.expect("release"),
        1
    );

    assert_eq!(state_of(&client, on_stray).await.0, "pending");
    assert_eq!(
        state_of(&client, on_failing).await.0,
        "held",
        "its endpoint is failing"
    );
    assert_eq!(store.release_stray_held_webhooks().await.expect("again"), 0);
}
