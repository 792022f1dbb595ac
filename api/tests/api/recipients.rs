//! Several recipients at the API: `to` as one mailbox or an array, `cc`,
//! `bcc`; each entry one mailbox, refused naming its field and entry; at
//! most `MAX_RECIPIENTS` in all; a one-recipient job stores `to` as the
//! string it always was (so replays of older keys still match).

use serde_json::{Value, json};

use crate::helpers::{SECRET, assert_problem, spawn_api, spawn_api_with};

fn body(to: Value, cc: Value, bcc: Value, key: &str) -> Value {
    json!({"to": to, "cc": cc, "bcc": bcc, "subject": "Hi", "text": "hello",
           "idempotency_key": key})
}

#[tokio::test]
async fn every_entry_is_one_mailbox_and_a_bad_one_is_named() {
    let api = spawn_api().await;
    let token = api.token("jobs:write");
    let cases = [
        (body(json!([]), json!([]), json!([]), "r:empty"), "to"),
        (
            body(
                json!(["a@example.com", "a@x.com, b@x.com"]),
                json!([]),
                json!([]),
                "r:list",
            ),
            "entry 1",
        ),
        (
            body(json!("a@example.com"), json!(["bad"]), json!([]), "r:cc"),
            "cc",
        ),
        (
            body(
                json!("a@example.com"),
                json!([]),
                json!(["x@y.com\r\nBcc: z@y.com"]),
                "r:bcc",
            ),
            "bcc",
        ),
    ];
    for (job, needle) in cases {
        assert_problem(api.post_job(Some(&token), &job).await, 422, needle).await;
    }
    assert_eq!(api.queue_len().await, 0, "nothing accepted");
}

#[tokio::test]
async fn more_than_max_recipients_is_refused() {
    let api = spawn_api_with(&["--jwt-secret", SECRET, "--max-recipients", "3"]).await;
    let token = api.token("jobs:write");
    let over = body(
        json!(["a@example.com", "b@example.com"]),
        json!(["c@example.com"]),
        json!(["d@example.com"]),
        "r:over",
    );
    assert_problem(
        api.post_job(Some(&token), &over).await,
        422,
        "MAX_RECIPIENTS",
    )
    .await;
    let at = body(
        json!(["a@example.com", "b@example.com"]),
        json!(["c@example.com"]),
        json!([]),
        "r:at",
    );
    assert_eq!(api.post_job(Some(&token), &at).await.status(), 202);
}

#[tokio::test]
async fn one_recipient_is_stored_as_before_and_several_as_an_array() {
    let api = spawn_api().await;
    let token = api.token("jobs:write");
    let one =
        json!({"to": "a@example.com", "subject": "Hi", "text": "x", "idempotency_key": "r:one"});
    let many = body(
        json!(["a@example.com", "b@example.com"]),
        json!([]),
        json!([]),
        "r:many",
    );
    for job in [&one, &many] {
        assert_eq!(api.post_job(Some(&token), job).await.status(), 202);
    }
    let rows = api
        .db()
        .connect()
        .await
        .query(
            "SELECT idempotency_key, jsonb_typeof(task->'to'), task ? 'cc'
             FROM deliveries ORDER BY idempotency_key",
            &[],
        )
        .await
        .expect("rows");
    let stored: Vec<(String, String, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        stored,
        [
            ("r:many".to_owned(), "array".to_owned(), false),
            ("r:one".to_owned(), "string".to_owned(), false)
        ]
    );
    // The same one-recipient request replays.
    assert_eq!(api.post_job(Some(&token), &one).await.status(), 200);
}
