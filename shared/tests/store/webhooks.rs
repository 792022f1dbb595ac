//! Webhook endpoints: each read and change is confined to its tenant, a
//! rotation keeps the old secret for the overlap, a resume makes the held
//! deliveries due, a replay makes one due whatever its state, and a delete
//! takes the deliveries with it.

use std::time::Duration;

use sendonce_shared::domain::Tenant;
use sendonce_shared::domain::webhooks::{
    EventType, EventTypes, UrlPolicy, WebhookSecret, WebhookUrl,
};
use sendonce_shared::store::{NewWebhook, Store, Webhook, WebhookPatch};
use sendonce_testkit::TestDatabase;
use uuid::Uuid;

use crate::store_for;

async fn migrated(db: &TestDatabase) -> Store {
    let store = store_for(db);
    store.migrate().await.expect("migrate");
    store
}

fn tenant(name: &str) -> Tenant {
    Tenant::parse(name).expect("a tenant")
}

fn new_webhook(url: &str) -> NewWebhook {
    NewWebhook {
        url: WebhookUrl::parse(url, UrlPolicy::Public).expect("a URL"),
        event_types: EventTypes::default_subscription(),
        description: None,
    }
}

async fn create(store: &Store, owner: &str, url: &str) -> (Webhook, WebhookSecret) {
    let secret = WebhookSecret::generate();
    let webhook = store
        .create_webhook(&tenant(owner), &new_webhook(url), &secret)
        .await
        .expect("create");
    (webhook, secret)
}

/// Writes an event of `endpoint`'s tenant and its delivery to `endpoint`
/// in `state`, as the outbox and the dispatcher would; answers the
/// delivery's id.
async fn insert_delivery(client: &tokio_postgres::Client, endpoint: Uuid, state: &str) -> i64 {
    client
        .query_one(
            "WITH e AS (
                 INSERT INTO events (tenant, type, job_id, data)
                 SELECT tenant, 'job.sent', gen_random_uuid(), '{}' FROM webhooks WHERE id = $1
                 RETURNING id)
             INSERT INTO webhook_deliveries
                 (endpoint_id, event_id, state, attempts, next_attempt_at, last_status, log)
             SELECT $1, e.id, $2::text, 3, CASE WHEN $2::text = 'pending' THEN now() + interval '1 hour' END,
                    500, '[{\"at\": \"2026-12-01T10:00:00Z\", \"status\": 500, \"error\": \"HTTP 500\", \"duration_ms\": 12}]'
             FROM e
             RETURNING id",
            &[&endpoint, &state],
        )
        .await
        .expect("a delivery")
        .get(0)
}

/// `(state, attempts, due now or earlier)` of delivery `id`.
async fn delivery_state(client: &tokio_postgres::Client, id: i64) -> (String, i32, bool) {
    let row = client
        .query_one(
            "SELECT state, attempts, next_attempt_at <= now() FROM webhook_deliveries WHERE id = $1",
            &[&id],
        )
        .await
        .expect("the delivery");
    (
        row.get(0),
        row.get(1),
        row.get::<_, Option<bool>>(2) == Some(true),
    )
}

#[tokio::test]
async fn an_endpoint_is_seen_and_changed_only_by_its_own_tenant() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    let (mine, _) = create(&store, "shop", "https://hooks.example.com/a").await;
    let billing = tenant("billing");
    let patch = WebhookPatch {
        resume: true,
        ..WebhookPatch::default()
    };

    let seen = store.webhook(mine.id, Some(&billing)).await.expect("get");
    let listed = store
        .webhooks_page(Some(&billing), None, 10)
        .await
        .expect("list");
    let patched = store
        .patch_webhook(mine.id, Some(&billing), &patch)
        .await
        .expect("patch");
    let deleted = store
        .delete_webhook(mine.id, Some(&billing))
        .await
        .expect("delete");

    assert_eq!(
        (seen, listed, patched, deleted),
        (None, vec![], None, false)
    );
    assert_eq!(
        store
            .webhook(mine.id, Some(&tenant("shop")))
            .await
            .expect("get"),
        Some(mine.clone())
    );
    assert_eq!(
        store
            .webhook(mine.id, None)
            .await
            .expect("an operator's get"),
        Some(mine)
    );
}

#[tokio::test]
async fn endpoints_page_newest_first_and_keep_the_default_subscription() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(
            create(&store, "shop", &format!("https://hooks.example.com/{i}"))
                .await
                .0,
        );
    }
    create(&store, "billing", "https://hooks.example.com/other").await;

    let shop = tenant("shop");
    let first = store
        .webhooks_page(Some(&shop), None, 3)
        .await
        .expect("page");
    let second = store
        .webhooks_page(Some(&shop), Some(first[2].id), 3)
        .await
        .expect("page");

    let ids: Vec<Uuid> = first.iter().chain(&second).map(|w| w.id).collect();
    let expected: Vec<Uuid> = made.iter().rev().map(|w| w.id).collect();
    assert_eq!(ids, expected);
    assert!(!made[0].event_types.contains(&EventType::Retrying));
    assert_eq!(made[0].event_types.len(), 6);
}

#[tokio::test]
async fn a_rotation_keeps_the_old_secret_signing_for_the_overlap() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    let (endpoint, old) = create(&store, "shop", "https://hooks.example.com/a").await;
    let new = WebhookSecret::generate();
    let patch = WebhookPatch {
        rotate: Some((new.clone(), Duration::from_secs(3600))),
        ..WebhookPatch::default()
    };

    let rotated = store
        .patch_webhook(endpoint.id, Some(&tenant("shop")), &patch)
        .await
        .expect("patch")
        .expect("the endpoint");

    let row = db
        .connect()
        .await
        .query_one(
            "SELECT secret, previous_secret,
                    previous_secret_expires_at - now() BETWEEN interval '3590 s' AND interval '3600 s'
             FROM webhooks WHERE id = $1",
            &[&endpoint.id],
        )
        .await
        .expect("the row");
    assert_eq!(row.get::<_, String>(0), new.expose());
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some(old.expose())
    );
    assert!(row.get::<_, bool>(2), "the overlap is an hour");
    assert!(rotated.previous_secret_expires_at.is_some());
    assert_eq!(rotated.url, endpoint.url, "the rest is kept");
}

#[tokio::test]
async fn a_patch_changes_only_what_it_names() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    let (endpoint, _) = create(&store, "shop", "https://hooks.example.com/a").await;
    let patch = WebhookPatch {
        event_types: Some(
            EventTypes::new([EventType::Failed, EventType::Retrying]).expect("types"),
        ),
        ..WebhookPatch::default()
    };

    let patched = store
        .patch_webhook(endpoint.id, Some(&tenant("shop")), &patch)
        .await
        .expect("patch")
        .expect("the endpoint");

    assert_eq!(
        patched.event_types,
        [EventType::Failed, EventType::Retrying]
    );
    assert_eq!(
        (&patched.url, &patched.description, patched.created_at),
        (&endpoint.url, &endpoint.description, endpoint.created_at)
    );
    assert!(patched.updated_at >= endpoint.updated_at);
}

#[tokio::test]
async fn a_resume_clears_failing_and_makes_held_deliveries_due_now_and_no_others() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    let client = db.connect().await;
    let (endpoint, _) = create(&store, "shop", "https://hooks.example.com/a").await;
    let (other, _) = create(&store, "shop", "https://hooks.example.com/b").await;
    client
        .execute(
            "UPDATE webhooks SET failing_since = now() WHERE tenant = 'shop'",
            &[],
        )
        .await
        .expect("failing");
    let held = insert_delivery(&client, endpoint.id, "held").await;
    let delivered = insert_delivery(&client, endpoint.id, "delivered").await;
    let elsewhere = insert_delivery(&client, other.id, "held").await;

    let resumed = store
        .patch_webhook(
            endpoint.id,
            Some(&tenant("shop")),
            &WebhookPatch {
                resume: true,
                ..WebhookPatch::default()
            },
        )
        .await
        .expect("patch")
        .expect("the endpoint");

    assert_eq!(resumed.failing_since, None);
    assert_eq!(
        delivery_state(&client, held).await,
        ("pending".into(), 3, true)
    );
    assert_eq!(delivery_state(&client, delivered).await.0, "delivered");
    assert_eq!(delivery_state(&client, elsewhere).await.0, "held");
}

#[tokio::test]
async fn a_replay_makes_a_delivery_due_now_with_a_fresh_schedule_whatever_its_state() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    let client = db.connect().await;
    let (endpoint, _) = create(&store, "shop", "https://hooks.example.com/a").await;
    let shop = tenant("shop");
    let mut replayed = Vec::new();
    for state in ["delivered", "held", "pending"] {
        let id = insert_delivery(&client, endpoint.id, state).await;
        let delivery = store
            .replay_webhook_delivery(endpoint.id, id, Some(&shop))
            .await
            .expect("replay")
            .expect("the delivery");
        replayed.push((delivery.state, delivery.attempts, delivery.log.len()));
        assert_eq!(
            delivery_state(&client, id).await,
            ("pending".into(), 0, true)
        );
    }

    assert_eq!(replayed, vec![("pending".to_owned(), 0, 1); 3]);
}

#[tokio::test]
async fn a_replay_or_a_log_page_of_another_tenants_endpoint_finds_nothing() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    let client = db.connect().await;
    let (endpoint, _) = create(&store, "shop", "https://hooks.example.com/a").await;
    let (other, _) = create(&store, "shop", "https://hooks.example.com/b").await;
    let id = insert_delivery(&client, endpoint.id, "held").await;
    let billing = tenant("billing");

    let replay = store
        .replay_webhook_delivery(endpoint.id, id, Some(&billing))
        .await
        .expect("replay");
    let wrong_endpoint = store
        .replay_webhook_delivery(other.id, id, Some(&tenant("shop")))
        .await
        .expect("replay");
    let page = store
        .webhook_deliveries_page(endpoint.id, Some(&billing), None, 10)
        .await
        .expect("page");

    assert_eq!((replay, wrong_endpoint, page), (None, None, vec![]));
    assert_eq!(delivery_state(&client, id).await.0, "held");
}

#[tokio::test]
async fn the_delivery_log_pages_newest_first_with_each_attempt() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    let client = db.connect().await;
    let (endpoint, _) = create(&store, "shop", "https://hooks.example.com/a").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(insert_delivery(&client, endpoint.id, "pending").await);
    }
    let shop = tenant("shop");

    let first = store
        .webhook_deliveries_page(endpoint.id, Some(&shop), None, 2)
        .await
        .expect("page");
    let rest = store
        .webhook_deliveries_page(endpoint.id, Some(&shop), Some(first[1].id), 10)
        .await
        .expect("page");

    let listed: Vec<i64> = first.iter().chain(&rest).map(|d| d.id).collect();
    ids.reverse();
    assert_eq!(listed, ids);
    let one = &first[0];
    assert_eq!(one.event_type, EventType::Sent);
    assert_eq!((one.attempts, one.last_status), (3, Some(500)));
    assert_eq!(one.log.len(), 1);
    assert_eq!(one.log[0].status, Some(500));
    assert_eq!(one.log[0].duration_ms, Some(12));
}

#[tokio::test]
async fn deleting_an_endpoint_deletes_its_deliveries() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    let client = db.connect().await;
    let (endpoint, _) = create(&store, "shop", "https://hooks.example.com/a").await;
    insert_delivery(&client, endpoint.id, "held").await;

    let deleted = store
        .delete_webhook(endpoint.id, Some(&tenant("shop")))
        .await
        .expect("delete");

    let left: i64 = client
        .query_one("SELECT count(*) FROM webhook_deliveries", &[])
        .await
        .expect("count")
        .get(0);
    assert!(deleted);
    assert_eq!(left, 0);
    assert_eq!(store.webhook(endpoint.id, None).await.expect("get"), None);
}
