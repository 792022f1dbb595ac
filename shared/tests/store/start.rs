//! The write that claims a key and starts its data at once
//! (`Store::claim_sending`), after the read that finds the key waiting
//! (`Store::look`): issue 21's two durable writes per email.

use sendonce_shared::domain::Task;
use sendonce_shared::store::{Cancel, Claim, Fence, Look, Start, Store};
use sendonce_testkit::TestDatabase;

use crate::{LEASE, store_for, task};

/// A migrated store with `t` accepted (`queued`, token 0, as the API's
/// acceptance writes it) and live leases for workers `a` and `b`.
async fn accepted(t: &Task) -> (TestDatabase, Store) {
    let db = TestDatabase::create().await;
    let store = store_for(&db);
    store.migrate().await.expect("migrate");
    let client = db.connect().await;
    client
        .execute(
            "INSERT INTO deliveries (idempotency_key, job_id, state, task)
             VALUES ($1, $2, 'queued', $3::text::jsonb)",
            &[
                &t.idempotency_key.as_str(),
                &t.job_id.as_uuid(),
                &t.to_json(),
            ],
        )
        .await
        .expect("an accepted row");
    for worker in ["a", "b"] {
        store.renew_lease(worker, LEASE).await.expect("lease");
    }
    (db, store)
}

async fn state(db: &TestDatabase, t: &Task) -> (String, i32, i64, Option<String>) {
    let row = db
        .connect()
        .await
        .query_one(
            "SELECT state, attempts, fence, holder FROM deliveries WHERE idempotency_key = $1",
            &[&t.idempotency_key.as_str()],
        )
        .await
        .expect("the row");
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

fn ready_fence(look: Look) -> Fence {
    match look {
        Look::Ready { fence, .. } => fence,
        other => panic!("expected the key waiting, got {other:?}"),
    }
}

#[tokio::test]
async fn one_write_claims_a_waiting_key_and_starts_its_data() {
    let t = task("start:one");
    let (db, store) = accepted(&t).await;
    let looked = ready_fence(store.look(&t, "a").await.expect("look"));
    assert_eq!(
        state(&db, &t).await,
        ("queued".into(), 0, 0, None),
        "reading writes nothing"
    );
    let start = store
        .claim_sending(&t, looked, "a", &["ada@example.com".into()])
        .await
        .expect("start");
    let Start::Go { attempt, fence } = start else {
        panic!("expected Go, got {start:?}");
    };
    assert_eq!((attempt, fence.get()), (1, 1));
    assert_eq!(
        state(&db, &t).await,
        ("sending".into(), 1, 1, Some("a".into()))
    );
}

#[tokio::test]
async fn of_two_workers_that_read_the_same_token_one_starts_the_data() {
    let t = task("start:race");
    let (db, store) = accepted(&t).await;
    let a = ready_fence(store.look(&t, "a").await.expect("look"));
    let b = ready_fence(store.look(&t, "b").await.expect("look"));
    let (ra, rb) = tokio::join!(
        store.claim_sending(&t, a, "a", &[]),
        store.claim_sending(&t, b, "b", &[])
    );
    let starts = [ra.expect("a"), rb.expect("b")];
    assert_eq!(
        starts
            .iter()
            .filter(|s| matches!(s, Start::Go { .. }))
            .count(),
        1,
        "{starts:?}"
    );
    assert!(starts.contains(&Start::Lost), "{starts:?}");
    // The loser's next read sees the winner's attempt in flight.
    let loser = if matches!(starts[0], Start::Go { .. }) {
        "b"
    } else {
        "a"
    };
    assert_eq!(
        store.look(&t, loser).await.expect("look"),
        Look::Settled(Claim::Held)
    );
    assert_eq!(state(&db, &t).await.0, "sending");
}

#[tokio::test]
async fn a_token_read_before_a_two_step_claim_starts_nothing() {
    let t = task("start:stale");
    let (_db, store) = accepted(&t).await;
    let looked = ready_fence(store.look(&t, "a").await.expect("look"));
    let Claim::Proceed { fence, .. } = store.claim(&t, "b").await.expect("claim") else {
        panic!("b claims");
    };
    assert_eq!(
        store
            .claim_sending(&t, looked, "a", &[])
            .await
            .expect("start"),
        Start::Lost
    );
    assert!(fence > looked);
}

#[tokio::test]
async fn a_worker_whose_lease_lapsed_starts_nothing() {
    let t = task("start:lapsed");
    let (db, store) = accepted(&t).await;
    let looked = ready_fence(store.look(&t, "a").await.expect("look"));
    store.release_lease("a").await.expect("lapse");
    assert_eq!(
        store
            .claim_sending(&t, looked, "a", &[])
            .await
            .expect("start"),
        Start::Lost
    );
    assert_eq!(state(&db, &t).await, ("queued".into(), 0, 0, None));
}

#[tokio::test]
async fn a_recipient_suppressed_after_the_read_stops_the_start() {
    let t = task("start:suppressed");
    let (db, store) = accepted(&t).await;
    let looked = ready_fence(store.look(&t, "a").await.expect("look"));
    db.connect()
        .await
        .execute(
            "INSERT INTO suppressions (tenant, address, reason) \
             VALUES ('default', 'ada@example.com', 'manual')",
            &[],
        )
        .await
        .expect("suppress");
    assert_eq!(
        store
            .claim_sending(&t, looked, "a", &["ada@example.com".into()])
            .await
            .expect("start"),
        Start::Suppressed
    );
    assert_eq!(state(&db, &t).await, ("queued".into(), 0, 0, None));
    // The next read names the suppressed recipient.
    let Look::Ready { suppressed, .. } = store.look(&t, "a").await.expect("look") else {
        panic!("still waiting");
    };
    assert_eq!(suppressed, vec!["ada@example.com".to_owned()]);
}

#[tokio::test]
async fn a_cancel_between_the_read_and_the_start_wins() {
    let t = task("start:cancel");
    let (db, store) = accepted(&t).await;
    let looked = ready_fence(store.look(&t, "a").await.expect("look"));
    assert_eq!(
        store.cancel(t.job_id, None).await.expect("cancel"),
        Cancel::Canceled
    );
    assert_eq!(
        store
            .claim_sending(&t, looked, "a", &[])
            .await
            .expect("start"),
        Start::Lost
    );
    assert_eq!(state(&db, &t).await.0, "canceled");
    // A terminal row is confirmed by the claim, which waits for the lock of
    // a requeue in progress.
    assert_eq!(store.look(&t, "a").await.expect("look"), Look::ClaimNow);
    assert_eq!(
        store.claim(&t, "a").await.expect("claim"),
        Claim::AlreadyDone
    );
}

#[tokio::test]
async fn a_start_that_committed_unseen_reads_as_mine_and_is_retried_under_its_token() {
    let t = task("start:mine");
    let (db, store) = accepted(&t).await;
    let looked = ready_fence(store.look(&t, "a").await.expect("look"));
    let Start::Go { fence, .. } = store
        .claim_sending(&t, looked, "a", &[])
        .await
        .expect("start")
    else {
        panic!("a starts");
    };
    // Worker `a` never saw the answer; its next read finds its own attempt.
    assert_eq!(
        store.look(&t, "a").await.expect("look"),
        Look::Mine { attempts: 1, fence }
    );
    // Anyone else waits for it (its holder is alive).
    assert_eq!(
        store.look(&t, "b").await.expect("look"),
        Look::Settled(Claim::Held)
    );
    let retrying = sendonce_shared::store::Retrying {
        error: "start failed",
        smtp_reply: None,
        delay: std::time::Duration::ZERO,
        counted: true,
    };
    assert!(
        store
            .mark_retrying(&t, fence, retrying)
            .await
            .expect("retry")
    );
    assert_eq!(state(&db, &t).await.0, "retrying");
    // Once `a`'s lease lapses, a `sending` row is uncertain, never `Mine`.
    let looked = ready_fence(store.look(&t, "a").await.expect("look"));
    store
        .claim_sending(&t, looked, "a", &[])
        .await
        .expect("start");
    store.release_lease("a").await.expect("lapse");
    assert!(matches!(
        store.look(&t, "a").await.expect("look"),
        Look::Settled(Claim::Ambiguous { attempts: 2, .. })
    ));
}

#[tokio::test]
async fn a_task_with_no_row_is_claimed_the_two_step_way_and_keeps_its_priority() {
    let db = TestDatabase::create().await;
    let store = store_for(&db);
    store.migrate().await.expect("migrate");
    store.renew_lease("a", LEASE).await.expect("lease");
    let t = task("start:no-row").at_priority(sendonce_shared::domain::Priority::High);
    assert_eq!(store.look(&t, "a").await.expect("look"), Look::ClaimNow);
    assert!(matches!(
        store.claim(&t, "a").await.expect("claim"),
        Claim::Proceed { attempt: 1, .. }
    ));
    let priority: String = db
        .connect()
        .await
        .query_one(
            "SELECT priority FROM deliveries WHERE idempotency_key = 'start:no-row'",
            &[],
        )
        .await
        .expect("the row")
        .get(0);
    assert_eq!(priority, "high");
}
