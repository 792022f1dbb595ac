//! What an email costs the database: the worker's durable writes on its
//! key's row (issue 21). The API's acceptance inserts the row; the worker
//! then commits twice per email on the common path: the claim together
//! with the `sending` step, and `sent` together with its event.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::helpers::{DEADLINE, Options, email, spawn_system};

#[tokio::test]
async fn a_sent_email_costs_two_writes_of_its_row_after_acceptance() {
    let system = spawn_system(Options::default()).await;
    let db = system.db.connect().await;
    // Every write of a `deliveries` row, in commit order, from inside the
    // writing statement's own transaction.
    db.batch_execute(
        "CREATE TABLE row_writes (
             n BIGINT GENERATED ALWAYS AS IDENTITY, job_id UUID, op TEXT, state TEXT);
         CREATE FUNCTION log_row_write() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO row_writes (job_id, op, state) VALUES (NEW.job_id, TG_OP, NEW.state);
             RETURN NEW;
         END $$;
         CREATE TRIGGER log_row_write AFTER INSERT OR UPDATE ON deliveries
             FOR EACH ROW EXECUTE FUNCTION log_row_write();",
    )
    .await
    .expect("install the write log");
    let _worker = system.spawn_worker().await;

    let mut jobs = Vec::new();
    for i in 0..5 {
        let body = email(
            &format!("writes-{i}@example.com"),
            Some(&format!("writes:{i}")),
        );
        let answer = system.post_ok(&body).await;
        jobs.push(answer["job_id"].as_str().expect("a job id").to_owned());
    }
    for job in &jobs {
        system.wait_for_status(job, "sent").await;
    }
    system.smtp.wait_for_messages(5, DEADLINE).await;

    let mut writes: BTreeMap<Uuid, Vec<String>> = BTreeMap::new();
    for row in db
        .query("SELECT job_id, op, state FROM row_writes ORDER BY n", &[])
        .await
        .expect("read the write log")
    {
        let op: String = row.get(1);
        let state: String = row.get(2);
        writes
            .entry(row.get(0))
            .or_default()
            .push(format!("{op} {state}"));
    }
    for job in &jobs {
        let job: Uuid = job.parse().expect("a UUID");
        assert_eq!(
            writes.get(&job).map(Vec::as_slice),
            Some(
                &[
                    "INSERT queued".to_owned(),
                    "UPDATE sending".to_owned(),
                    "UPDATE sent".to_owned()
                ][..]
            ),
            "job {job}: acceptance, then the claim with its start, then `sent`"
        );
    }
}

/// `DATABASE_POOL_SIZE` bounds the worker's Postgres connections whatever
/// its `WORKER_CONCURRENCY`: the fleet's connections are sized for the
/// server (README, "Sizing the Postgres pools"), and tasks share them.
#[tokio::test]
async fn a_worker_holds_no_more_postgres_connections_than_its_pool_size() {
    let system = spawn_system(Options::default()).await;
    let db = system.db.connect().await;
    let args = system.worker_args();
    let url = args
        .iter()
        .position(|a| a == "--database-url")
        .map(|i| args[i + 1].clone())
        .expect("the worker's database URL");
    let separator = if url.contains('?') { '&' } else { '?' };
    let name = "sendonce-pool-test";
    let url = format!("{url}{separator}application_name={name}");
    let _worker = system
        .spawn_worker_with(&[
            "--database-url",
            &url,
            "--worker-concurrency",
            "16",
            "--database-pool-size",
            "2",
        ])
        .await;

    let jobs = 40;
    for i in 0..jobs {
        let body = email(&format!("pool-{i}@example.com"), Some(&format!("pool:{i}")));
        system.post_ok(&body).await;
    }
    // The migration's two connections at start-up are outside the pool,
    // and named `<application_name> (migration)`: not counted here; nor
    // are other databases' backends.
    let connections = async || -> i64 {
        db.query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE application_name = $1 AND datname = current_database()",
            &[&name],
        )
        .await
        .expect("count the worker's connections")
        .get(0)
    };
    system.smtp.wait_for_messages(jobs, DEADLINE).await;
    if system.bouncer.is_some() {
        // Behind PgBouncer the server connections are its pool's, shared
        // by every client (README, "Sizing the Postgres pools"); the bound
        // is checked on the direct run of this suite.
        return;
    }
    assert!(
        connections().await >= 1,
        "the worker's connections were never seen"
    );
    // The pool keeps the connections it opened; a server process whose
    // client has already let go of it (a statement given up on) may take
    // a moment to end, so the bound is checked once the worker is at rest.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let open = connections().await;
        if open <= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{open} connections open with DATABASE_POOL_SIZE=2 after 16 tasks in flight"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
