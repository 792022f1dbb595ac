//! `GET /stats` and the `priority` field: the counts match the jobs in
//! every state, priority by priority, within the caller's tenant; a
//! priority is kept with its job, and anything but the three is refused.

use serde_json::{Value, json};

use crate::helpers::{TestApi, assert_problem, spawn_api, valid_body};

const PRIORITIES: [&str; 3] = ["high", "normal", "low"];
/// The count fields of one priority and of the whole.
const COUNTS: [&str; 10] = [
    "ready",
    "scheduled",
    "processing",
    "sent",
    "duplicate",
    "failed",
    "uncertain",
    "canceled",
    "suppressed",
    "dead_letters",
];

/// Posts one job of `tenant` at `priority` (and `send_at`, if given);
/// answers its id.
async fn post(api: &TestApi, tenant: &str, priority: &str, send_at: Option<&str>) -> String {
    let mut body = valid_body();
    body["priority"] = json!(priority);
    if let Some(at) = send_at {
        body["send_at"] = json!(at);
    }
    let (status, answer) = api
        .send(
            "POST",
            "/addJob",
            &api.tenant_token(tenant, "jobs:write"),
            Some(&body),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    answer["job_id"].as_str().expect("a job id").to_owned()
}

/// Runs `sql` with the job's id as `$1`, as a worker's write would.
async fn on_job(api: &TestApi, job: &str, sql: &str) {
    let job: uuid::Uuid = job.parse().expect("a job id");
    api.db()
        .connect()
        .await
        .execute(sql, &[&job])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Moves the job into `state` as its worker would, with its dead letter
/// for `failed` and `uncertain`.
async fn end_in(api: &TestApi, job: &str, state: &str) {
    on_job(
        api,
        job,
        &format!(
            "UPDATE deliveries SET state = '{state}', fence = 1, holder = 'w' WHERE job_id = $1"
        ),
    )
    .await;
    if matches!(state, "failed" | "uncertain") {
        on_job(
            api,
            job,
            &format!(
                "INSERT INTO failed_jobs (job_id, tenant, idempotency_key, task, reason, error, attempts)
                 SELECT job_id, tenant, idempotency_key, task, '{state}', 'boom', 1
                 FROM deliveries WHERE job_id = $1"
            ),
        )
        .await;
    }
}

async fn stats(api: &TestApi, token: &str, query: &str) -> Value {
    let (status, body) = api
        .send("GET", &format!("/stats{query}"), token, None)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn stats_count_the_jobs_in_every_state_by_priority_within_the_callers_tenant() {
    let api = spawn_api().await;
    // Tenant a: of each priority, one job in each state.
    let later = (chrono::Utc::now() + chrono::Duration::days(10)).to_rfc3339();
    for priority in PRIORITIES {
        post(&api, "a", priority, Some(&later)).await;
        let ready = post(&api, "a", priority, None).await;
        for state in [
            "processing",
            "sent",
            "failed",
            "uncertain",
            "canceled",
            "suppressed",
        ] {
            let job = post(&api, "a", priority, None).await;
            end_in(&api, &job, state).await;
        }
        // A second job of the ready one's key, skipped by a worker.
        on_job(
            &api,
            &ready,
            "INSERT INTO duplicate_jobs (job_id, tenant, idempotency_key, duplicate_of, layer)
             SELECT gen_random_uuid(), tenant, idempotency_key, job_id, 'l2'
             FROM deliveries WHERE job_id = $1",
        )
        .await;
    }
    // A discarded dead letter leaves its job failed; a late 250 moves a
    // failed job to sent.
    let discarded = post(&api, "a", "low", None).await;
    end_in(&api, &discarded, "failed").await;
    on_job(
        &api,
        &discarded,
        "DELETE FROM failed_jobs WHERE job_id = $1",
    )
    .await;
    let late = post(&api, "a", "low", None).await;
    end_in(&api, &late, "failed").await;
    on_job(
        &api,
        &late,
        "WITH sent AS (UPDATE deliveries SET state = 'sent' WHERE job_id = $1 RETURNING job_id)
         DELETE FROM failed_jobs f USING sent WHERE f.job_id = sent.job_id",
    )
    .await;
    // Tenant b: one ready, one sent.
    post(&api, "b", "normal", None).await;
    let b_sent = post(&api, "b", "normal", None).await;
    end_in(&api, &b_sent, "sent").await;
    api.db()
        .connect()
        .await
        .execute(
            "INSERT INTO worker_leases (worker_id, expires_at) VALUES
                 ('alive', now() + interval '1 minute'), ('dead', now() - interval '1 minute')",
            &[],
        )
        .await
        .expect("leases");

    let of_a = stats(&api, &api.tenant_token("a", "jobs:read"), "").await;
    for priority in PRIORITIES {
        let mut expected = json!({
            "ready": 1, "scheduled": 1, "processing": 1, "sent": 1, "duplicate": 1,
            "failed": 1, "uncertain": 1, "canceled": 1, "suppressed": 1, "dead_letters": 2,
        });
        if priority == "low" {
            expected["failed"] = json!(2);
            expected["sent"] = json!(2);
        }
        let seen = &of_a["priorities"][priority];
        for field in COUNTS {
            assert_eq!(seen[field], expected[field], "{priority} {field}: {of_a}");
        }
        assert!(
            seen["oldest_ready_age_seconds"].as_f64().is_some(),
            "{of_a}"
        );
    }
    for field in COUNTS {
        let sum: i64 = PRIORITIES
            .iter()
            .map(|p| of_a["priorities"][p][field].as_i64().expect("a count"))
            .sum();
        assert_eq!(of_a[field].as_i64(), Some(sum), "total {field}: {of_a}");
    }
    assert_eq!(of_a["workers_alive"], 1, "{of_a}");

    // b sees its own, whatever it asks for; tenants:all sees both, or one.
    let of_b = stats(&api, &api.tenant_token("b", "jobs:read"), "?tenant=a").await;
    assert_eq!(
        (of_b["ready"].as_i64(), of_b["sent"].as_i64()),
        (Some(1), Some(1)),
        "{of_b}"
    );
    assert_eq!(of_b["priorities"]["normal"]["sent"], 1, "{of_b}");
    assert_eq!(of_b["priorities"]["high"]["ready"], 0, "{of_b}");
    assert!(of_b["priorities"]["high"]["oldest_ready_age_seconds"].is_null());
    let operator = api.token("jobs:read tenants:all");
    let of_all = stats(&api, &operator, "").await;
    for field in COUNTS {
        let both = of_a[field].as_i64().unwrap_or(0) + of_b[field].as_i64().unwrap_or(0);
        assert_eq!(of_all[field].as_i64(), Some(both), "{field}: {of_all}");
    }
    assert_eq!(stats(&api, &operator, "?tenant=b").await["sent"], 1);
}

#[tokio::test]
async fn stats_need_the_jobs_read_scope() {
    let api = spawn_api().await;
    let (status, _) = api
        .send("GET", "/stats", &api.token("jobs:write"), None)
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_priority_is_kept_in_the_task_and_the_row_and_normal_is_left_out_of_the_task() {
    let api = spawn_api().await;
    let token = api.token("jobs:write");
    let mut high = valid_body();
    high["priority"] = json!("high");
    assert_eq!(api.post_job(Some(&token), &high).await.status(), 202);
    let mut normal = valid_body();
    normal["priority"] = json!("normal");
    assert_eq!(api.post_job(Some(&token), &normal).await.status(), 202);
    let response = api
        .post_jobs(
            &token,
            &[
                json!({"to": "b@example.com", "subject": "s", "text": "t", "priority": "low"}),
                valid_body(),
            ],
        )
        .await;
    assert_eq!(response.status(), 200);

    let rows = api
        .db()
        .connect()
        .await
        .query(
            "SELECT priority, task->>'priority' FROM deliveries ORDER BY created_at, priority",
            &[],
        )
        .await
        .expect("rows");
    let mut seen: Vec<(String, Option<String>)> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("high".into(), Some("high".into())),
            ("low".into(), Some("low".into())),
            ("normal".into(), None),
            ("normal".into(), None),
        ]
    );
    let mut redis = api.redis().await;
    let queued: Vec<String> = redis::cmd("LRANGE")
        .arg(format!("{{{}}}:queue", api.prefix))
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .expect("LRANGE");
    assert_eq!(
        queued
            .iter()
            .filter(|t| t.contains(r#""priority":"high""#))
            .count(),
        1
    );
}

#[tokio::test]
async fn a_priority_other_than_high_normal_or_low_is_refused_naming_the_field() {
    let api = spawn_api().await;
    let token = api.token("jobs:write");
    for bad in [json!("urgent"), json!("HIGH"), json!("")] {
        let mut body = valid_body();
        body["priority"] = bad.clone();
        let response = api.post_job(Some(&token), &body).await;
        let problem = assert_problem(response, 422, "priority").await;
        assert_eq!(problem["status"], 422, "{bad}");
    }
    let mut bad = valid_body();
    bad["priority"] = json!("urgent");
    let response = api.post_jobs(&token, &[bad, valid_body()]).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("JSON");
    assert_eq!(answer["items"][0]["error"]["status"], 422, "{answer}");
    assert!(
        answer["items"][0]["error"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("priority")),
        "{answer}"
    );
    assert_eq!(api.recorded().await, 1, "only the valid job");
}
