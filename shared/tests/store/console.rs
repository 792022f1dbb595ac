//! The operator console's reads: the overview, the workers, job search, a
//! job's page and the scheduled jobs, each confined to its tenant.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sendonce_shared::domain::{EmailAddress, JobId, Note, Task, Tenant};
use sendonce_shared::store::{
    Actor, Claim, DeadReason, DedupLayer, Failure, Fence, JobLookup, PgOptions, Pooler,
    RequeueSelection, Retrying, Sending, Store, Submission,
};
use sendonce_testkit::{PgBouncer, TestDatabase};

use crate::{LEASE, store_for, task};

async fn setup() -> (TestDatabase, Store, tokio_postgres::Client) {
    let db = TestDatabase::create().await;
    let store = store_for(&db);
    store.migrate().await.expect("migrate");
    store.renew_lease("w", LEASE).await.expect("lease");
    let client = db.connect().await;
    (db, store, client)
}

fn tenant(name: &str) -> Tenant {
    Tenant::parse(name).expect("a tenant")
}

/// A task of `key` in tenant `of`.
fn task_of(of: &str, key: &str) -> Task {
    task(key).in_tenant(tenant(of))
}

/// A task of `key` in tenant `of`, to be sent at `at`.
fn scheduled(of: &str, key: &str, at: DateTime<Utc>) -> Task {
    let mut t = task_of(of, key);
    t.email.send_at = Some(at);
    t
}

async fn accept(store: &Store, tasks: &[&Task]) {
    let jobs: Vec<Submission> = tasks
        .iter()
        .map(|t| Submission::new((*t).clone(), t.email.fingerprint()))
        .collect();
    store.accept(&jobs).await.expect("accept");
}

async fn claim(store: &Store, t: &Task) -> Fence {
    match store.claim(t, "w").await.expect("claim") {
        Claim::Proceed { fence, .. } => fence,
        other => panic!("the claim proceeds: {other:?}"),
    }
}

/// Accepts `t` and takes it to `sent`, as a worker does.
async fn sent(store: &Store, t: &Task) {
    accept(store, &[t]).await;
    let fence = claim(store, t).await;
    assert_eq!(
        store
            .mark_sending(t, fence, "w", &[])
            .await
            .expect("sending"),
        Sending::Go
    );
    store.mark_sent(t, "250 2.0.0 ok", &[]).await.expect("sent");
}

/// Accepts `t` and dead-letters its first attempt with `reason`.
async fn dead(store: &Store, t: &Task, reason: DeadReason) {
    accept(store, &[t]).await;
    let fence = claim(store, t).await;
    let failure = Failure {
        reason,
        error: "550 5.1.1 no such user",
        smtp_reply: Some("550 5.1.1 no such user"),
    };
    assert!(
        store.dead_letter(t, fence, failure).await.expect("dead"),
        "dead-lettered"
    );
}

async fn db_now(client: &tokio_postgres::Client) -> DateTime<Utc> {
    client
        .query_one("SELECT now()", &[])
        .await
        .expect("now")
        .get(0)
}

fn mail_from() -> EmailAddress {
    EmailAddress::parse("sendonce <noreply@sendonce.test>").expect("valid")
}

fn keys(jobs: &[sendonce_shared::store::JobSummary]) -> Vec<(&str, &str, &str)> {
    jobs.iter()
        .map(|j| {
            (
                j.tenant.as_str(),
                j.idempotency_key.as_str(),
                j.state.as_str(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_overview_counts_the_last_hour_and_the_queue_of_its_tenant_only() {
    let (_db, store, client) = setup().await;
    let a = task_of("a", "sent");
    sent(&store, &a).await;
    let long_ago = task_of("a", "sent-long-ago");
    sent(&store, &long_ago).await;
    client
        .execute(
            "UPDATE deliveries SET sent_at = now() - interval '2 hours',
                                   updated_at = now() - interval '2 hours'
             WHERE job_id = $1",
            &[&long_ago.job_id.as_uuid()],
        )
        .await
        .expect("sent two hours ago");
    dead(&store, &task_of("a", "failed"), DeadReason::Failed).await;
    dead(&store, &task_of("a", "uncertain"), DeadReason::Uncertain).await;
    let suppressed = task_of("a", "suppressed");
    accept(&store, &[&suppressed]).await;
    let fence = claim(&store, &suppressed).await;
    assert!(
        store
            .suppress_job(&suppressed, fence, &[])
            .await
            .expect("suppressed")
    );
    let in_flight = task_of("a", "in-flight");
    accept(&store, &[&in_flight]).await;
    claim(&store, &in_flight).await;
    let (older, newer) = (task_of("a", "ready-1"), task_of("a", "ready-2"));
    accept(&store, &[&older, &newer]).await;
    client
        .execute(
            "UPDATE deliveries SET created_at = now() - interval '10 minutes',
                                   updated_at = now() - interval '10 minutes'
             WHERE job_id = $1",
            &[&older.job_id.as_uuid()],
        )
        .await
        .expect("waiting ten minutes");
    let later = Utc::now() + chrono::Duration::hours(1);
    accept(&store, &[&scheduled("a", "later", later)]).await;
    sent(&store, &task_of("b", "sent")).await;
    dead(&store, &task_of("b", "failed"), DeadReason::Failed).await;
    accept(&store, &[&scheduled("b", "later", later)]).await;
    let ten_minutes_ago: DateTime<Utc> = client
        .query_one(
            "SELECT created_at FROM deliveries WHERE job_id = $1",
            &[&older.job_id.as_uuid()],
        )
        .await
        .expect("row")
        .get(0);

    let of_a = store
        .console_overview(Some(&tenant("a")))
        .await
        .expect("overview");
    let of_all = store.console_overview(None).await.expect("overview");
    let of_c = store
        .console_overview(Some(&tenant("c")))
        .await
        .expect("overview");

    assert_eq!(
        (
            of_a.sent_last_hour,
            of_a.failed_last_hour,
            of_a.uncertain_last_hour,
            of_a.suppressed_last_hour,
            of_a.scheduled,
            of_a.in_flight,
        ),
        (1, 1, 1, 1, 1, 1),
        "{of_a:?}"
    );
    assert_eq!(of_a.oldest_ready, Some(ten_minutes_ago));
    assert_eq!(
        (
            of_all.sent_last_hour,
            of_all.failed_last_hour,
            of_all.scheduled,
            of_all.in_flight
        ),
        (2, 2, 2, 1),
        "{of_all:?}"
    );
    assert_eq!(
        (
            of_c.sent_last_hour,
            of_c.failed_last_hour,
            of_c.scheduled,
            of_c.in_flight,
            of_c.oldest_ready
        ),
        (0, 0, 0, 0, None),
        "{of_c:?}"
    );
}

#[tokio::test]
async fn workers_show_the_rows_they_hold_and_their_last_heartbeat_newest_first() {
    let (_db, store, client) = setup().await;
    let lease = Duration::from_secs(60);
    store.renew_lease("a", lease).await.expect("lease");
    store.renew_lease("b", lease).await.expect("lease");
    for i in 0..2 {
        let t = task(&format!("held-by-a:{i}"));
        accept(&store, &[&t]).await;
        assert!(matches!(
            store.claim(&t, "a").await.expect("claim"),
            Claim::Proceed { .. }
        ));
    }
    client
        .batch_execute(
            "UPDATE worker_leases SET expires_at = now() - interval '1 second'
             WHERE worker_id = 'b';
             INSERT INTO worker_leases (worker_id, expires_at)
             VALUES ('from-before-v12', now() + interval '1 minute')",
        )
        .await
        .expect("b lapsed; a lease renewed before migration 12");
    let before = db_now(&client).await;

    store.renew_lease("a", lease).await.expect("renew");

    let after = db_now(&client).await;
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
        [
            ("a", 2, true, true),
            ("b", 0, false, true),
            ("w", 0, true, true),
            ("from-before-v12", 0, true, false),
        ]
    );
    let beat = workers[0].last_heartbeat.expect("a heartbeat");
    assert!(before < beat && beat < after, "{before} < {beat} < {after}");
    assert!(workers[0].lease_expires_at > after);
}

#[tokio::test]
async fn a_job_is_found_by_id_key_or_recipient_in_cc_within_its_tenant() {
    let (_db, store, _client) = setup().await;
    let mut mine = task_of("a", "welcome:42");
    mine.email.cc = vec![EmailAddress::parse("Bob <Bob@Example.COM>").expect("valid")];
    let theirs = {
        let mut t = task_of("b", "welcome:42");
        t.email.bcc = vec![EmailAddress::parse("bob@example.com").expect("valid")];
        t
    };
    let unrelated = task_of("a", "other");
    // One batch after the other, so `theirs` is the newer.
    accept(&store, &[&mine, &unrelated]).await;
    accept(&store, &[&theirs]).await;
    let a = tenant("a");

    let by_id = store
        .find_jobs(&JobLookup::Id(mine.job_id), Some(&a), 10)
        .await
        .expect("find");
    let by_id_elsewhere = store
        .find_jobs(&JobLookup::Id(theirs.job_id), Some(&a), 10)
        .await
        .expect("find");
    let by_key = store
        .find_jobs(&JobLookup::Key("welcome:42".into()), Some(&a), 10)
        .await
        .expect("find");
    let by_key_everywhere = store
        .find_jobs(&JobLookup::Key("welcome:42".into()), None, 10)
        .await
        .expect("find");
    let lookup = JobLookup::parse("BOB@example.com").expect("a lookup");
    let by_recipient = store.find_jobs(&lookup, Some(&a), 10).await.expect("find");
    let by_recipient_everywhere = store.find_jobs(&lookup, None, 10).await.expect("find");

    assert_eq!(keys(&by_id), [("a", "welcome:42", "queued")]);
    assert_eq!(by_id[0].to, ["ada@example.com"]);
    assert_eq!(by_id[0].subject.as_deref(), Some("Hi"));
    assert!(by_id_elsewhere.is_empty(), "{by_id_elsewhere:?}");
    assert_eq!(keys(&by_key), [("a", "welcome:42", "queued")]);
    let mut everywhere = keys(&by_key_everywhere);
    everywhere.sort_unstable();
    assert_eq!(
        everywhere,
        [("a", "welcome:42", "queued"), ("b", "welcome:42", "queued")]
    );
    assert_eq!(
        by_recipient.iter().map(|j| j.job_id).collect::<Vec<_>>(),
        [mine.job_id]
    );
    assert_eq!(
        by_recipient_everywhere
            .iter()
            .map(|j| j.job_id)
            .collect::<Vec<_>>(),
        [theirs.job_id, mine.job_id],
        "newest first"
    );
}

#[tokio::test]
async fn a_duplicate_is_found_by_id_and_key_and_listed_on_its_owners_page() {
    let (_db, store, _client) = setup().await;
    let owner = task_of("a", "invoice:7");
    accept(&store, &[&owner]).await;
    let duplicate = task_of("a", "invoice:7");
    store
        .record_duplicate(&duplicate, Some(owner.job_id), DedupLayer::L2)
        .await
        .expect("duplicate");
    let a = tenant("a");

    let by_key = store
        .find_jobs(&JobLookup::Key("invoice:7".into()), Some(&a), 10)
        .await
        .expect("find");
    let by_id = store
        .find_jobs(&JobLookup::Id(duplicate.job_id), Some(&a), 10)
        .await
        .expect("find");
    let its_page = store
        .job_detail(duplicate.job_id, Some(&a), &mail_from())
        .await
        .expect("read")
        .expect("the duplicate's page");
    let owners_page = store
        .job_detail(owner.job_id, Some(&a), &mail_from())
        .await
        .expect("read")
        .expect("the owner's page");

    assert_eq!(
        by_key
            .iter()
            .map(|j| (j.job_id, j.state.as_str()))
            .collect::<Vec<_>>(),
        [(duplicate.job_id, "duplicate"), (owner.job_id, "queued")]
    );
    assert_eq!(keys(&by_id), [("a", "invoice:7", "duplicate")]);
    assert_eq!(its_page.summary.state, "duplicate");
    assert_eq!(its_page.history.len(), 1, "{:?}", its_page.history);
    assert_eq!(its_page.history[0].what, "job.duplicate");
    assert!(
        its_page.history[0]
            .note
            .as_deref()
            .is_some_and(|n| n.contains(&owner.job_id.to_string())),
        "{:?}",
        its_page.history
    );
    assert!(its_page.duplicates.is_empty());
    assert_eq!(its_page.message_id, None, "a duplicate sends nothing");
    assert_eq!(
        owners_page
            .duplicates
            .iter()
            .map(|d| (d.job_id, d.layer.as_str()))
            .collect::<Vec<_>>(),
        [(duplicate.job_id, "l2")]
    );
}

/// A history entry as the job page shows it: what, attempts, reply, error.
type Step<'a> = (&'a str, Option<i64>, Option<&'a str>, Option<&'a str>);

#[tokio::test]
async fn a_jobs_history_shows_its_acceptance_a_retry_and_its_send_in_order() {
    let (_db, store, _client) = setup().await;
    let mut t = task_of("a", "receipt:9");
    t.email.cc = vec![EmailAddress::parse("cc@example.com").expect("valid")];
    accept(&store, &[&t]).await;
    let fence = claim(&store, &t).await;
    let busy = Retrying {
        error: "451 4.3.0 try later",
        smtp_reply: Some("451 4.3.0 try later"),
        delay: Duration::ZERO,
        counted: true,
    };
    assert!(store.mark_retrying(&t, fence, busy).await.expect("retry"));
    let fence = claim(&store, &t).await;
    assert_eq!(
        store
            .mark_sending(&t, fence, "w", &[])
            .await
            .expect("sending"),
        Sending::Go
    );
    store
        .mark_sent(&t, "250 2.0.0 queued", &[])
        .await
        .expect("sent");

    let page = store
        .job_detail(t.job_id, Some(&tenant("a")), &mail_from())
        .await
        .expect("read")
        .expect("the page");

    let history: Vec<Step> = page
        .history
        .iter()
        .map(|h| {
            (
                h.what.as_str(),
                h.attempts,
                h.smtp_reply.as_deref(),
                h.error.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            ("accepted", None, None, None),
            (
                "job.retrying",
                Some(1),
                Some("451 4.3.0 try later"),
                Some("451 4.3.0 try later")
            ),
            ("job.sent", Some(2), Some("250 2.0.0 queued"), None),
        ]
    );
    assert!(page.history.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(
        (
            page.summary.state.as_str(),
            page.summary.attempts,
            page.smtp_reply.as_deref()
        ),
        ("sent", 2, Some("250 2.0.0 queued"))
    );
    assert_eq!(page.cc, ["cc@example.com"]);
    assert!(page.sent_at.is_some());
    assert_eq!(
        page.message_id,
        Some(t.idempotency_key.message_id("sendonce.test"))
    );
    assert!(page.dead_letter.is_none());
}

#[tokio::test]
async fn a_dead_letter_and_the_operator_who_requeued_it_show_on_the_jobs_page() {
    let (_db, store, _client) = setup().await;
    let t = task_of("a", "reset:3");
    dead(&store, &t, DeadReason::Failed).await;
    let a = tenant("a");
    let dead_page = store
        .job_detail(t.job_id, Some(&a), &mail_from())
        .await
        .expect("read")
        .expect("the page");
    let operator = Actor {
        sub: "alice".into(),
        note: Some(Note::parse("the mailbox exists now").expect("a note")),
        ..Actor::default()
    };
    let id = dead_page.dead_letter.as_ref().expect("its entry").id;
    let requeued = store
        .requeue_failed(
            &RequeueSelection::Ids(vec![id]),
            &operator,
            async |_: Vec<String>| Ok::<_, String>(()),
        )
        .await
        .expect("requeue");
    assert_eq!(requeued, 1);
    sent_again(&store, &t).await;

    let page = store
        .job_detail(t.job_id, Some(&a), &mail_from())
        .await
        .expect("read")
        .expect("the page");

    assert_eq!(
        dead_page
            .dead_letter
            .as_ref()
            .map(|e| (e.reason.as_str(), e.job_id)),
        Some(("failed", t.job_id))
    );
    let history: Vec<(&str, Option<&str>, Option<&str>)> = page
        .history
        .iter()
        .map(|h| (h.what.as_str(), h.actor.as_deref(), h.note.as_deref()))
        .collect();
    assert_eq!(
        history,
        [
            ("accepted", None, None),
            ("job.failed", None, None),
            ("requeued", Some("alice"), Some("the mailbox exists now")),
            ("job.sent", None, None),
        ]
    );
    assert!(page.dead_letter.is_none(), "requeued: no entry any more");
}

/// Claims the requeued `t` and takes it to `sent`.
async fn sent_again(store: &Store, t: &Task) {
    let fence = claim(store, t).await;
    assert_eq!(
        store
            .mark_sending(t, fence, "w", &[])
            .await
            .expect("sending"),
        Sending::Go
    );
    store.mark_sent(t, "250 ok", &[]).await.expect("sent");
}

#[tokio::test]
async fn another_tenants_job_has_no_page() {
    let (_db, store, _client) = setup().await;
    let theirs = task_of("b", "secret");
    accept(&store, &[&theirs]).await;

    let from_a = store
        .job_detail(theirs.job_id, Some(&tenant("a")), &mail_from())
        .await
        .expect("read");
    let from_b = store
        .job_detail(theirs.job_id, Some(&tenant("b")), &mail_from())
        .await
        .expect("read");
    let unknown = store
        .job_detail(JobId::new(), None, &mail_from())
        .await
        .expect("read");

    assert!(from_a.is_none(), "{from_a:?}");
    assert_eq!(
        from_b.map(|p| p.summary.idempotency_key),
        Some("secret".to_owned())
    );
    assert!(unknown.is_none());
}

#[tokio::test]
async fn scheduled_jobs_come_soonest_first_a_page_at_a_time_and_within_their_tenant() {
    let (_db, store, _client) = setup().await;
    let base = Utc::now() + chrono::Duration::hours(1);
    let at = |minutes: i64| base + chrono::Duration::minutes(minutes);
    // Two at the same instant: the job id orders them.
    let jobs = [
        scheduled("a", "s3", at(30)),
        scheduled("a", "s1", at(10)),
        scheduled("a", "s2a", at(20)),
        scheduled("a", "s2b", at(20)),
        scheduled("a", "s4", at(40)),
    ];
    let mut expected: Vec<(DateTime<Utc>, JobId)> = jobs
        .iter()
        .map(|t| (t.email.send_at.expect("scheduled"), t.job_id))
        .collect();
    expected.sort();
    let refs: Vec<&Task> = jobs.iter().collect();
    accept(&store, &refs).await;
    accept(
        &store,
        &[&task_of("a", "now"), &scheduled("b", "theirs", at(5))],
    )
    .await;
    let a = tenant("a");

    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .scheduled_page(Some(&a), after, 2)
            .await
            .expect("a page");
        let Some(last) = page.last() else { break };
        after = Some((last.send_at, last.job_id));
        pages.push(page);
    }

    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [2, 2, 1],
        "three pages"
    );
    let seen: Vec<(DateTime<Utc>, JobId)> = pages
        .iter()
        .flatten()
        .map(|j| (j.send_at, j.job_id))
        .collect();
    // Postgres keeps microseconds.
    let micros = |(at, id): (DateTime<Utc>, JobId)| (at.timestamp_micros(), id);
    assert_eq!(
        seen.into_iter().map(micros).collect::<Vec<_>>(),
        expected.into_iter().map(micros).collect::<Vec<_>>()
    );
    assert!(pages.iter().flatten().all(|j| j.tenant == "a"));
    let everyone = store.scheduled_page(None, None, 10).await.expect("a page");
    assert_eq!(everyone.len(), 6);
    assert_eq!(everyone[0].idempotency_key, "theirs");
}

/// Behind a transaction pooler each read's timeout is its transaction's
/// own: every read works, and the server connection it ran on keeps its
/// own `statement_timeout` afterwards.
#[tokio::test]
async fn the_console_reads_work_through_a_transaction_pooler_and_leave_no_setting_behind() {
    let (db, store, _client) = setup().await;
    let t = task_of("a", "pooled");
    sent(&store, &t).await;
    let bouncer = PgBouncer::start().await;
    let options = PgOptions {
        pooler: Pooler::Transaction,
        ..PgOptions::default()
    };
    let pooled = Store::connect(
        &secrecy::SecretString::from(bouncer.url(db.url())),
        &options,
        1,
    )
    .expect("pool");
    let a = tenant("a");

    let overview = pooled.console_overview(Some(&a)).await.expect("overview");
    let workers = pooled.console_workers().await.expect("workers");
    let found = pooled
        .find_jobs(&JobLookup::Key("pooled".into()), None, 10)
        .await
        .expect("find");
    let page = pooled
        .job_detail(t.job_id, Some(&a), &mail_from())
        .await
        .expect("read")
        .expect("the page");
    let scheduled = pooled
        .scheduled_page(Some(&a), None, 10)
        .await
        .expect("a page");

    assert_eq!(overview.sent_last_hour, 1);
    assert_eq!(workers.len(), 1);
    assert_eq!(keys(&found), [("a", "pooled", "sent")]);
    assert_eq!(page.history.len(), 2, "{:?}", page.history);
    assert!(scheduled.is_empty());
    let after: String = pooled
        .pool()
        .get()
        .await
        .expect("connection")
        .query_one("SHOW statement_timeout", &[])
        .await
        .expect("show")
        .get(0);
    assert_ne!(
        after, "5s",
        "the console's timeout leaked out of its transaction"
    );
}
