//! The audit trail: each requeue and discard writes one row per entry it
//! changed, in the transaction that changes it, and nothing else does.

use std::cell::Cell;

use sendonce_shared::domain::{Note, Task, Tenant};
use sendonce_shared::store::{
    Actor, AuditAction, AuditEntry, AuditFilter, DeadReason, RequeueError, RequeueSelection, Store,
};
use sendonce_testkit::TestDatabase;

use crate::{insert_dead_letter, insert_row, store_for, task};

/// A store on a migrated database of its own.
async fn migrated(db: &TestDatabase) -> Store {
    let store = store_for(db);
    store.migrate().await.expect("migrate");
    store
}

/// Dead-letters `n` jobs as `reason` (their keys' rows in that state too)
/// and answers them with their entry ids.
async fn dead(db: &TestDatabase, n: usize, reason: &str) -> Vec<(Task, i64)> {
    let client = db.connect().await;
    let mut entries = Vec::with_capacity(n);
    for i in 0..n {
        let t = task(&format!("audit:{reason}:{i}"));
        insert_row(&client, &t, reason).await;
        let id = insert_dead_letter(&client, &t, reason).await;
        entries.push((t, id));
    }
    entries
}

/// A push that always succeeds: these tests look at Postgres only.
async fn pushed(_: Vec<String>) -> Result<(), String> {
    Ok(())
}

fn alice() -> Actor {
    Actor {
        sub: "alice".into(),
        note: Some(Note::parse("the relay is fixed (INC-42)").expect("a note")),
        request_id: Some("req-7".into()),
        tenant: Tenant::default_tenant(),
        scope: None,
    }
}

/// The whole trail, oldest first.
async fn trail(store: &Store) -> Vec<AuditEntry> {
    let mut rows = store
        .audit_page(&AuditFilter::default(), None, 10_000)
        .await
        .expect("the audit trail");
    rows.reverse();
    rows
}

/// How many entries the dead-letter table holds, and how many keys wait in
/// `queued`.
async fn counts(db: &TestDatabase) -> (i64, i64) {
    let row = db
        .connect()
        .await
        .query_one(
            "SELECT (SELECT count(*) FROM failed_jobs),
                    (SELECT count(*) FROM deliveries WHERE state = 'queued')",
            &[],
        )
        .await
        .expect("counts");
    (row.get(0), row.get(1))
}

fn assert_row(row: &AuditEntry, action: AuditAction, (t, id): &(Task, i64), dead_reason: &str) {
    assert_eq!(row.actor, "alice");
    assert_eq!(row.action, action.as_str());
    assert_eq!(
        (row.failed_job_id, row.job_id, row.idempotency_key.as_str()),
        (*id, t.job_id, t.idempotency_key.as_str())
    );
    assert_eq!(row.dead_reason, dead_reason);
    assert_eq!(row.note.as_deref(), Some("the relay is fixed (INC-42)"));
    assert_eq!(row.request_id.as_deref(), Some("req-7"));
}

#[tokio::test]
async fn a_requeue_by_ids_writes_one_audit_row_per_entry_it_requeued() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    let failed = dead(&db, 2, "failed").await;
    let uncertain = dead(&db, 1, "uncertain").await;
    let chosen = RequeueSelection::Ids(vec![failed[1].1, uncertain[0].1, 999_999]);

    let requeued = store
        .requeue_failed(&chosen, &alice(), pushed)
        .await
        .expect("the requeue succeeds");

    assert_eq!(requeued, 2);
    let mut rows = trail(&store).await;
    rows.sort_by_key(|row| row.failed_job_id);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_row(&rows[0], AuditAction::Requeue, &failed[1], "failed");
    assert_row(&rows[1], AuditAction::Requeue, &uncertain[0], "uncertain");
}

#[tokio::test]
async fn a_requeue_of_all_writes_one_audit_row_per_entry_over_every_batch() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    // More than one requeue batch (500).
    let entries = dead(&db, 600, "failed").await;

    let requeued = store
        .requeue_failed(
            &RequeueSelection::All(Some(DeadReason::Failed)),
            &alice(),
            pushed,
        )
        .await
        .expect("the requeue succeeds");

    assert_eq!(requeued, 600);
    let mut rows = trail(&store).await;
    rows.sort_by_key(|row| row.failed_job_id);
    assert_eq!(rows.len(), entries.len());
    for (row, entry) in rows.iter().zip(&entries) {
        assert_row(row, AuditAction::Requeue, entry, "failed");
    }
}

#[tokio::test]
async fn a_discard_writes_one_audit_row() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    let entries = dead(&db, 2, "uncertain").await;

    let discarded = store
        .discard_failed(entries[0].1, &alice())
        .await
        .expect("the discard succeeds");

    assert!(discarded);
    let rows = trail(&store).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_row(&rows[0], AuditAction::Discard, &entries[0], "uncertain");
    assert_eq!(counts(&db).await, (1, 0));
}

#[tokio::test]
async fn a_requeue_whose_push_fails_leaves_neither_the_requeue_nor_its_audit_rows() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    let entries = dead(&db, 3, "failed").await;

    let result = store
        .requeue_failed(
            &RequeueSelection::Ids(entries.iter().map(|(_, id)| *id).collect()),
            &alice(),
            async |_: Vec<String>| Err("Redis is down"),
        )
        .await;

    assert!(matches!(result, Err(RequeueError::Push(_))), "{result:?}");
    assert!(trail(&store).await.is_empty());
    assert_eq!(counts(&db).await, (3, 0), "nothing requeued");
}

#[tokio::test]
async fn an_action_whose_audit_rows_cannot_be_written_changes_nothing() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    let entries = dead(&db, 2, "failed").await;
    db.connect()
        .await
        .batch_execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql
                 AS $$ BEGIN RAISE EXCEPTION 'the audit trail is full'; END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON audit_log
                 FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .await
        .expect("a trigger that refuses audit rows");
    let pushes = Cell::new(0);

    let requeue = store
        .requeue_failed(&RequeueSelection::All(None), &alice(), async |_| {
            pushes.set(pushes.get() + 1);
            Ok::<_, String>(())
        })
        .await;
    let discard = store.discard_failed(entries[0].1, &alice()).await;

    assert!(
        matches!(requeue, Err(RequeueError::Store(_))),
        "{requeue:?}"
    );
    assert!(discard.is_err(), "{discard:?}");
    assert_eq!(pushes.get(), 0, "nothing pushed");
    assert_eq!(counts(&db).await, (2, 0), "nothing requeued or discarded");
}

#[tokio::test]
async fn an_action_that_changes_nothing_writes_no_audit_row() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    dead(&db, 1, "failed").await;

    let by_ids = store
        .requeue_failed(&RequeueSelection::Ids(vec![404]), &alice(), pushed)
        .await
        .expect("a requeue of no entry");
    let no_uncertain = store
        .requeue_failed(
            &RequeueSelection::All(Some(DeadReason::Uncertain)),
            &alice(),
            pushed,
        )
        .await
        .expect("a requeue of no entry");
    let discarded = store
        .discard_failed(404, &alice())
        .await
        .expect("a discard of no entry");

    assert_eq!((by_ids, no_uncertain, discarded), (0, 0, false));
    assert!(trail(&store).await.is_empty());
    assert_eq!(counts(&db).await, (1, 0));
}

#[tokio::test]
async fn the_trail_reads_newest_first_by_page_and_by_action_and_actor() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    let entries = dead(&db, 3, "failed").await;
    let bob = Actor {
        sub: "bob".into(),
        ..Actor::default()
    };
    let alice = alice();
    for (i, (_, id)) in entries.iter().enumerate() {
        let actor = if i == 1 { &bob } else { &alice };
        assert!(store.discard_failed(*id, actor).await.expect("discard"));
    }
    let by = |action, actor: Option<&str>| AuditFilter {
        action,
        actor: actor.map(str::to_owned),
        tenant: None,
    };

    let first = store
        .audit_page(&AuditFilter::default(), None, 2)
        .await
        .expect("a page");
    let rest = store
        .audit_page(&AuditFilter::default(), Some(first[1].id), 2)
        .await
        .expect("a page");
    let bobs = store
        .audit_page(&by(Some(AuditAction::Discard), Some("bob")), None, 10)
        .await
        .expect("a page");
    let requeues = store
        .audit_page(&by(Some(AuditAction::Requeue), None), None, 10)
        .await
        .expect("a page");

    let pages: Vec<i64> = first.iter().chain(&rest).map(|r| r.failed_job_id).collect();
    let newest_first: Vec<i64> = entries.iter().rev().map(|(_, id)| *id).collect();
    assert_eq!(pages, newest_first);
    assert_eq!(bobs.len(), 1);
    assert_eq!(
        (bobs[0].failed_job_id, bobs[0].note.as_deref()),
        (entries[1].1, None)
    );
    assert!(requeues.is_empty());
}
