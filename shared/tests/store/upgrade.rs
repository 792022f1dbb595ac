//! Upgrading a live database holding jobs in every state: migration 2
//! (fencing) over schema 1, migration 4 (durable acceptance) over schema 3 (retention indexes),
//! migration 5 (the audit trail) over schema 4, migration 6 (tenants) over
//! schema 5, migration 7 (cancel) over schema 6, migration 8 (refused
//! recipients) over schema 7, migration 9 (webhooks and suppressions) over
//! schema 8, migration 10 (held deliveries' index) over schema 9,
//! migration 11 (time-ordered event ids) over schema 10, migration 12
//! (workers' heartbeats) over schema 11, migration 13 (priorities and the
//! counters of `GET /stats`) over schema 12.

use refinery::Target;
use sendonce_shared::domain::{EmailAddress, Task, Tenant};
use sendonce_shared::store::{
    Accepted, Actor, AuditFilter, Cancel, Claim, FailedFilter, JobLookup, RequeueSelection, Store,
    Submission,
};
use sendonce_testkit::TestDatabase;

use crate::{LEASE, insert_dead_letter, insert_row, store_for, task};

const STATES: [&str; 7] = [
    "queued",
    "processing",
    "retrying",
    "sending",
    "sent",
    "failed",
    "uncertain",
];

/// A database at schema `version` holding a row in every state (keys
/// `upgrade<version>:<state>`, fence 1, held by a worker long gone).
async fn at_schema(version: i32) -> (TestDatabase, Store, tokio_postgres::Client, Vec<Task>) {
    let db = TestDatabase::create().await;
    let store = store_for(&db);
    store
        .migrate_to(Target::Version(version))
        .await
        .unwrap_or_else(|e| panic!("schema {version}: {e}"));
    let client = db.connect().await;
    let tasks: Vec<_> = STATES
        .iter()
        .map(|state| task(&format!("upgrade{version}:{state}")))
        .collect();
    for (t, state) in tasks.iter().zip(STATES) {
        insert_row(&client, t, state).await;
    }
    (db, store, client, tasks)
}

/// Each row of [`at_schema`] carries on under its token after the upgrade:
/// waiting and abandoned ones are claimed with the next token, a cut
/// `sending` is ambiguous, finished ones are done.
async fn assert_claims_carry_on(store: &Store, tasks: &[Task]) {
    store.renew_lease("new", LEASE).await.expect("lease");
    for (t, state) in tasks.iter().zip(STATES) {
        let claim = store.claim(t, "new").await.expect("claim");
        let expected = match state {
            "queued" | "processing" | "retrying" => {
                matches!(claim, Claim::Proceed { fence, .. } if fence.get() == 2)
            }
            "sending" => matches!(claim, Claim::Ambiguous { .. }),
            _ => claim == Claim::AlreadyDone,
        };
        assert!(expected, "{state}: {claim:?}");
    }
}

#[tokio::test]
async fn migration_2_keeps_jobs_in_every_state_and_their_promise() {
    let db = TestDatabase::create().await;
    let store = store_for(&db);
    store
        .migrate_to(Target::Version(1))
        .await
        .expect("schema 1");
    let client = db.connect().await;
    let tasks: Vec<_> = STATES
        .iter()
        .map(|state| task(&format!("upgrade:{state}")))
        .collect();
    for (t, state) in tasks.iter().zip(STATES) {
        client
            .execute(
                "INSERT INTO deliveries (idempotency_key, job_id, state, attempts)
                 VALUES ($1, $2, $3, 1)",
                &[&t.idempotency_key.as_str(), &t.job_id.as_uuid(), &state],
            )
            .await
            .expect("a schema-1 row");
    }
    insert_dead_letter(&client, &tasks[5], "failed").await;

    assert_eq!(
        store.migrate().await.expect("upgrade"),
        13,
        "migrations 2 to 14"
    );

    let rows = client
        .query(
            "SELECT state, attempts, fence, holder FROM deliveries ORDER BY idempotency_key",
            &[],
        )
        .await
        .expect("rows");
    assert_eq!(rows.len(), STATES.len());
    for row in &rows {
        assert_eq!(row.get::<_, i32>(1), 1);
        assert_eq!(row.get::<_, i64>(2), 0, "no token yet");
        assert_eq!(row.get::<_, Option<String>>(3), None);
    }
    let failed = client
        .query_one("SELECT count(*) FROM failed_jobs", &[])
        .await
        .expect("count");
    assert_eq!(failed.get::<_, i64>(0), 1);
    // Each old row carries on: a claim from a waiting state or from a
    // holder that no longer exists proceeds with a first token, a cut
    // `sending` is ambiguous, a finished job stays finished.
    store.renew_lease("new", LEASE).await.expect("lease");
    for (t, state) in tasks.iter().zip(STATES) {
        let claim = store.claim(t, "new").await.expect("claim");
        let expected = match state {
            "queued" | "processing" | "retrying" => matches!(claim, Claim::Proceed { .. }),
            "sending" => matches!(claim, Claim::Ambiguous { .. }),
            _ => claim == Claim::AlreadyDone,
        };
        assert!(expected, "{state}: {claim:?}");
        if let Claim::Proceed { fence, .. } = claim {
            assert_eq!(fence.get(), 1, "{state}");
        }
    }
}

#[tokio::test]
async fn migration_4_keeps_jobs_in_every_state_replays_their_keys_and_finds_the_waiting_ones() {
    let (_db, store, _client, tasks) = at_schema(3).await;

    assert_eq!(
        store.migrate().await.expect("upgrade"),
        11,
        "migrations 4 to 14"
    );

    // A replay of an old key: its request's fingerprint was never kept, so
    // it is answered as the original job, never recorded twice.
    let again: Vec<Submission> = tasks
        .iter()
        .map(|t| Submission::new(task(t.idempotency_key.as_str()), "unknown".into()))
        .collect();
    let answers = store.accept(&again).await.expect("accept");
    for (answer, t) in answers.iter().zip(&tasks) {
        let Accepted::Replay {
            job_id,
            fingerprint,
            ..
        } = answer
        else {
            panic!("{}: {answer:?}", t.idempotency_key);
        };
        assert_eq!((*job_id, fingerprint), (t.job_id, &None));
    }
    // The waiting rows are the reconciler's.
    let until = store.now().await.expect("now");
    let page = store.waiting_page(until, None, 100).await.expect("a page");
    assert_eq!(page.tasks.len(), 2, "queued and retrying");
    assert_claims_carry_on(&store, &tasks).await;
}

#[tokio::test]
async fn migration_5_keeps_jobs_in_every_state_and_the_dead_letters_and_starts_an_empty_audit_trail()
 {
    let (_db, store, client, tasks) = at_schema(4).await;
    let failed = insert_dead_letter(&client, &tasks[5], "failed").await;
    let uncertain = insert_dead_letter(&client, &tasks[6], "uncertain").await;

    assert_eq!(
        store.migrate().await.expect("upgrade"),
        10,
        "migrations 5 to 14 (the store reads the schema of the latest)"
    );

    let rows = client
        .query(
            "SELECT idempotency_key, state FROM deliveries ORDER BY idempotency_key",
            &[],
        )
        .await
        .expect("rows");
    let mut before: Vec<(String, String)> = tasks
        .iter()
        .zip(STATES)
        .map(|(t, state)| (t.idempotency_key.to_string(), state.to_owned()))
        .collect();
    before.sort();
    let after: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(after, before);
    let entries = store
        .failed_page(&FailedFilter::default(), None, 10)
        .await
        .expect("the dead letters");
    let kept: Vec<(i64, &str)> = entries.iter().map(|e| (e.id, e.reason.as_str())).collect();
    assert_eq!(kept, [(uncertain, "uncertain"), (failed, "failed")]);
    let trail = store
        .audit_page(&AuditFilter::default(), None, 10)
        .await
        .expect("the audit trail");
    assert!(trail.is_empty(), "{trail:?}");
    // Both actions work on the old entries and are recorded.
    let operator = Actor {
        sub: "ops".into(),
        ..Actor::default()
    };
    let requeued = store
        .requeue_failed(
            &RequeueSelection::Ids(vec![failed]),
            &operator,
            async |_: Vec<String>| Ok::<_, String>(()),
        )
        .await
        .expect("requeue");
    let discarded = store
        .discard_failed(uncertain, &operator)
        .await
        .expect("discard");
    assert_eq!((requeued, discarded), (1, true));
    let trail = store
        .audit_page(&AuditFilter::default(), None, 10)
        .await
        .expect("the audit trail");
    let recorded: Vec<(&str, &str, i64)> = trail
        .iter()
        .map(|r| (r.actor.as_str(), r.action.as_str(), r.failed_job_id))
        .collect();
    assert_eq!(
        recorded,
        [("ops", "discard", uncertain), ("ops", "requeue", failed)]
    );
}

#[tokio::test]
async fn migration_6_puts_every_job_entry_and_audit_row_in_the_default_tenant_and_keeps_their_promise()
 {
    let (_db, store, client, tasks) = at_schema(5).await;
    let failed = insert_dead_letter(&client, &tasks[5], "failed").await;
    client
        .execute(
            "INSERT INTO audit_log (actor, action, failed_job_id, job_id, idempotency_key, dead_reason)
             VALUES ('ops', 'discard', 1, $1, 'gone', 'failed')",
            &[&tasks[0].job_id.as_uuid()],
        )
        .await
        .expect("an audit row");

    assert_eq!(
        store.migrate().await.expect("upgrade"),
        9,
        "migrations 6 to 14"
    );

    for table in ["deliveries", "failed_jobs", "audit_log"] {
        let tenants: Vec<String> = client
            .query(&format!("SELECT DISTINCT tenant FROM {table}"), &[])
            .await
            .expect("tenants")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(tenants, ["default"], "{table}");
    }
    let entries = store
        .failed_page(&FailedFilter::default(), None, 10)
        .await
        .expect("the dead letters");
    assert_eq!(
        entries
            .iter()
            .map(|e| (e.id, e.tenant.as_str()))
            .collect::<Vec<_>>(),
        [(failed, "default")]
    );
    // The old keys are the default tenant's: replays there, new jobs in
    // another tenant.
    let replays: Vec<Submission> = tasks
        .iter()
        .map(|t| Submission::new(task(t.idempotency_key.as_str()), "unknown".into()))
        .collect();
    let answers = store.accept(&replays).await.expect("accept");
    assert!(
        answers.iter().all(|a| matches!(a, Accepted::Replay { .. })),
        "{answers:?}"
    );
    let elsewhere = Submission::new(
        task(tasks[4].idempotency_key.as_str()).in_tenant(Tenant::parse("shop").expect("a tenant")),
        "f".into(),
    );
    assert_eq!(
        store.accept(&[elsewhere]).await.expect("accept"),
        [Accepted::New]
    );
    assert_claims_carry_on(&store, &tasks).await;
}

#[tokio::test]
async fn migration_7_keeps_jobs_in_every_state_cancelable_where_their_data_has_not_started() {
    let (_db, store, client, tasks) = at_schema(6).await;

    assert_eq!(
        store.migrate().await.expect("upgrade"),
        8,
        "migrations 7 to 14"
    );

    let rows: Vec<(String, bool)> = client
        .query(
            "SELECT state, maybe_sent FROM deliveries ORDER BY idempotency_key",
            &[],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut expected: Vec<(String, bool)> =
        STATES.iter().map(|s| ((*s).to_owned(), false)).collect();
    expected.sort();
    let mut found = rows.clone();
    found.sort();
    assert_eq!(found, expected, "every row keeps its state");
    assert_claims_carry_on(&store, &tasks).await;

    // After the claims: the waiting rows are `processing` under "new",
    // the cut one still `sending`.
    for (t, state) in tasks.iter().zip(STATES) {
        let cancel = store.cancel(t.job_id, None).await.expect("cancel");
        let cancelable = matches!(state, "queued" | "processing" | "retrying");
        assert_eq!(
            cancel == Cancel::Canceled,
            cancelable,
            "{state}: {cancel:?}"
        );
    }
    let canceled: i64 = client
        .query_one(
            "SELECT count(*) FROM deliveries WHERE state = 'canceled'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(canceled, 3);
}

#[tokio::test]
async fn migration_8_keeps_jobs_in_every_state_with_no_refused_recipients() {
    let (_db, store, client, tasks) = at_schema(7).await;

    assert_eq!(
        store.migrate().await.expect("upgrade"),
        7,
        "migrations 8 to 14"
    );

    let rows: Vec<(String, Option<String>)> = client
        .query(
            "SELECT state, refused_recipients::text FROM deliveries ORDER BY state",
            &[],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut expected: Vec<(String, Option<String>)> =
        STATES.iter().map(|s| ((*s).to_owned(), None)).collect();
    expected.sort();
    assert_eq!(rows, expected);
    assert_claims_carry_on(&store, &tasks).await;
    // A job sent to some of its recipients records the others.
    let refused = [sendonce_shared::store::RefusedRecipient {
        recipient: "gone@example.com".into(),
        reply: "550 5.1.1 no such user".into(),
    }];
    store
        .mark_sent(&tasks[0], "250 ok", &refused)
        .await
        .expect("sent");
    let job = store
        .job(tasks[0].job_id, None)
        .await
        .expect("read")
        .expect("the job");
    assert_eq!(job.refused_recipients, refused);
}

#[tokio::test]
async fn migration_9_keeps_jobs_in_every_state_and_their_promise_and_starts_the_outbox() {
    let (_db, store, client, tasks) = at_schema(8).await;
    // A canceled job too: the state migration 9 rewrites the check around.
    let canceled = task("upgrade8:canceled");
    insert_row(&client, &canceled, "canceled").await;

    assert_eq!(
        store.migrate_to(Target::Version(9)).await.expect("upgrade"),
        1,
        "migration 9"
    );
    // The store's statements are those of the latest schema.
    store.migrate().await.expect("the later migrations");

    let mut rows: Vec<String> = client
        .query("SELECT state FROM deliveries", &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    rows.sort();
    let mut expected: Vec<String> = STATES
        .iter()
        .map(|s| (*s).to_owned())
        .chain(["canceled".to_owned()])
        .collect();
    expected.sort();
    assert_eq!(rows, expected, "every row keeps its state");
    assert_eq!(
        store.claim(&canceled, "new").await.expect("claim"),
        Claim::AlreadyDone
    );
    assert_claims_carry_on(&store, &tasks).await;
    // The waiting rows' next outcome writes its event.
    store
        .mark_sent(&tasks[0], "250 ok", &[])
        .await
        .expect("sent");
    let events: Vec<String> = client
        .query("SELECT type FROM events", &[])
        .await
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(events, ["job.sent"]);
}

#[tokio::test]
async fn migration_10_keeps_jobs_in_every_state_and_their_held_webhook_deliveries() {
    let (_db, store, client, tasks) = at_schema(9).await;
    client
        .batch_execute(
            "INSERT INTO webhooks (id, tenant, url, event_types, secret)
             VALUES ('01890000-0000-7000-8000-000000000001', 'default',
                     'https://example.com/hook', ARRAY['job.sent'], 'whsec_c2VjcmV0');
             INSERT INTO events (id, tenant, type, job_id, data)
             VALUES ('01890000-0000-7000-8000-000000000002', 'default', 'job.sent',
                     gen_random_uuid(), '{}');
             INSERT INTO webhook_deliveries (endpoint_id, event_id, state)
             VALUES ('01890000-0000-7000-8000-000000000001',
                     '01890000-0000-7000-8000-000000000002', 'held');",
        )
        .await
        .expect("a held delivery at schema 9");

    assert_eq!(
        store
            .migrate_to(Target::Version(10))
            .await
            .expect("upgrade"),
        1,
        "migration 10"
    );
    // The store's statements are those of the latest schema.
    store.migrate().await.expect("the later migrations");

    assert_claims_carry_on(&store, &tasks).await;
    assert_eq!(
        store.release_stray_held_webhooks().await.expect("release"),
        1,
        "the endpoint is not failing"
    );
}

#[tokio::test]
async fn migration_11_keeps_jobs_in_every_state_and_the_events_and_orders_new_event_ids_by_time() {
    let (_db, store, client, tasks) = at_schema(10).await;
    client
        .batch_execute(
            "INSERT INTO events (tenant, type, job_id, data)
             VALUES ('default', 'job.sent', gen_random_uuid(), '{}')",
        )
        .await
        .expect("an event at schema 10");

    assert_eq!(
        store
            .migrate_to(Target::Version(11))
            .await
            .expect("upgrade"),
        1,
        "migration 11"
    );
    // The store's statements are those of the latest schema.
    store.migrate().await.expect("the later migrations");

    assert_claims_carry_on(&store, &tasks).await;
    store
        .mark_sent(&tasks[0], "250 ok", &[])
        .await
        .expect("sent");
    let ids: Vec<(uuid::Uuid, String)> = client
        .query("SELECT id, type FROM events ORDER BY created_at", &[])
        .await
        .expect("events")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(ids.len(), 2, "the old event is kept: {ids:?}");
    let new = ids[1].0;
    assert_eq!(new.get_version_num(), 7, "{new}");
    let (secs, _) = new
        .get_timestamp()
        .expect("a v7 id carries its time")
        .to_unix();
    let now = chrono::Utc::now().timestamp().unsigned_abs();
    assert!(now.abs_diff(secs) < 60, "{new} is of now");
}

#[tokio::test]
async fn migration_12_keeps_jobs_in_every_state_and_the_leases_and_the_console_reads_them() {
    let (_db, store, client, tasks) = at_schema(11).await;
    let mail_from = EmailAddress::parse("noreply@sendonce.test").expect("valid");
    client
        .batch_execute(
            "INSERT INTO worker_leases (worker_id, expires_at)
             VALUES ('gone', now() - interval '1 hour')",
        )
        .await
        .expect("a lapsed lease at schema 11");

    assert_eq!(
        store
            .migrate_to(Target::Version(12))
            .await
            .expect("upgrade"),
        1,
        "migration 12"
    );
    store.migrate().await.expect("the later migrations");

    let workers = store.console_workers().await.expect("workers");
    let seen: Vec<(&str, i64, bool, bool)> = workers
        .iter()
        .map(|w| {
            (
                w.worker_id.as_str(),
                w.in_flight,
                w.alive,
                w.last_heartbeat.is_some(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [("gone", 2, false, false)],
        "its `processing` and `sending` rows, no heartbeat recorded"
    );
    let overview = store.console_overview(None).await.expect("overview");
    assert_eq!(
        (overview.in_flight, overview.scheduled),
        (2, 0),
        "{overview:?}"
    );
    let created: Vec<chrono::DateTime<chrono::Utc>> = client
        .query(
            "SELECT created_at FROM deliveries WHERE state IN ('queued', 'retrying')",
            &[],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(overview.oldest_ready, created.into_iter().min());
    for (t, state) in tasks.iter().zip(STATES) {
        let found = store
            .find_jobs(&JobLookup::Key(t.idempotency_key.to_string()), None, 10)
            .await
            .expect("find");
        assert_eq!(
            found
                .iter()
                .map(|j| (j.job_id, j.state.as_str()))
                .collect::<Vec<_>>(),
            [(t.job_id, state)]
        );
        let page = store
            .job_detail(t.job_id, None, &mail_from)
            .await
            .expect("read")
            .expect("the page");
        assert_eq!(page.history[0].what, "accepted", "{state}");
    }
    assert_claims_carry_on(&store, &tasks).await;
    store.renew_lease("gone", LEASE).await.expect("lease");
    let workers = store.console_workers().await.expect("workers");
    assert!(
        workers
            .iter()
            .any(|w| w.worker_id == "gone" && w.alive && w.last_heartbeat.is_some()),
        "{workers:?}"
    );
}

#[tokio::test]
async fn migration_13_keeps_jobs_in_every_state_counts_them_as_normal_and_their_tasks_still_parse()
{
    let (_db, store, client, tasks) = at_schema(12).await;
    let failed = &tasks[5];
    insert_dead_letter(&client, failed, "failed").await;
    let uncertain = &tasks[6];
    insert_dead_letter(&client, uncertain, "uncertain").await;
    insert_duplicate(&client, &tasks[4], "l2").await;
    // A task as schema 12's API stored it: no priority field.
    let stored: String = client
        .query_one("SELECT task::text FROM deliveries LIMIT 1", &[])
        .await
        .expect("a task")
        .get(0);
    assert!(!stored.contains("priority"), "{stored}");

    assert_eq!(
        store
            .migrate_to(Target::Version(13))
            .await
            .expect("upgrade"),
        1,
        "migration 13"
    );

    let priorities: Vec<String> = client
        .query("SELECT DISTINCT priority FROM deliveries", &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(priorities, ["normal"]);
    let parsed = Task::from_json(&stored).expect("an old task parses");
    assert!(parsed.priority.is_normal());
    let stats = store.stats(None).await.expect("stats");
    let normal = stats.priorities.normal;
    assert_eq!(
        (
            normal.ready,
            normal.processing,
            normal.sent,
            normal.failed,
            normal.uncertain,
            normal.duplicate,
            normal.dead_letters,
        ),
        (2, 2, 1, 1, 1, 1, 2),
        "queued and retrying are ready, processing and sending in flight: {stats:?}"
    );
    assert_eq!(stats.total, normal);
    assert_eq!(stats.priorities.high, Default::default());

    assert_claims_carry_on(&store, &tasks).await;
    // An outcome after the upgrade moves the counters.
    store
        .mark_sent(&tasks[0], "250 ok", &[])
        .await
        .expect("sent");
    let after = store.stats(None).await.expect("stats");
    assert_eq!(after.total.sent, 2, "{after:?}");
}

#[tokio::test]
async fn migration_14_keeps_the_counts_of_jobs_in_every_state_and_counts_on_without_the_live_index()
{
    let (_db, store, client, tasks) = at_schema(13).await;
    insert_dead_letter(&client, &tasks[5], "failed").await;
    insert_dead_letter(&client, &tasks[6], "uncertain").await;
    insert_duplicate(&client, &tasks[4], "l2").await;
    let before = store.stats(None).await.expect("stats at schema 13");

    assert_eq!(store.migrate().await.expect("upgrade"), 1, "migration 14");

    let live_index: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'deliveries_live'",
            &[],
        )
        .await
        .expect("indexes")
        .get(0);
    assert_eq!(live_index, 0);
    let after = store.stats(None).await.expect("stats");
    let ageless = |mut stats: sendonce_shared::store::Stats| {
        for counts in [
            &mut stats.total,
            &mut stats.priorities.high,
            &mut stats.priorities.normal,
            &mut stats.priorities.low,
        ] {
            counts.oldest_ready_age_seconds = None;
        }
        stats
    };
    assert_eq!(
        ageless(after),
        ageless(before),
        "the same counts from the other indexes"
    );
    assert!(after.total.oldest_ready_age_seconds >= before.total.oldest_ready_age_seconds);
    assert_eq!(
        (
            after.total.ready,
            after.total.processing,
            after.total.sent,
            after.total.failed,
            after.total.uncertain,
            after.total.duplicate,
            after.total.dead_letters,
        ),
        (2, 2, 1, 1, 1, 1, 2),
        "{after:?}"
    );

    assert_claims_carry_on(&store, &tasks).await;
    // Outcomes after the upgrade move the counters, through the new triggers.
    store
        .mark_sent(&tasks[0], "250 ok", &[])
        .await
        .expect("sent");
    insert_duplicate(&client, &tasks[4], "l1").await;
    client
        .execute(
            "DELETE FROM failed_jobs WHERE job_id = $1",
            &[&tasks[5].job_id.as_uuid()],
        )
        .await
        .expect("discard a dead letter");
    let later = store.stats(None).await.expect("stats");
    assert_eq!(
        (
            later.total.sent,
            later.total.duplicate,
            later.total.dead_letters
        ),
        (2, 2, 1),
        "{later:?}"
    );
}

/// Records a skipped job that named the key of `owner`, found by `layer`.
async fn insert_duplicate(client: &tokio_postgres::Client, owner: &Task, layer: &str) {
    client
        .execute(
            "INSERT INTO duplicate_jobs (job_id, idempotency_key, duplicate_of, layer)
             VALUES (gen_random_uuid(), $1, $2, $3)",
            &[
                &owner.idempotency_key.as_str(),
                &owner.job_id.as_uuid(),
                &layer,
            ],
        )
        .await
        .expect("a duplicate");
}
