//! Attachments at the API: files with a filename, a content type, base64
//! content and, for inline parts, a `content_id`; every member that ends up
//! in a MIME header refused when it could break out of it, naming
//! `attachments`, the entry and the member; the whole message held to
//! `MAX_MESSAGE_BYTES` before anything is stored; batches take them too.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::helpers::{SECRET, TestApi, assert_problem, spawn_api, spawn_api_with, valid_body};

/// An attachment of `bytes`.
fn attachment(filename: &str, content_type: &str, bytes: &[u8]) -> Value {
    json!({"filename": filename, "content_type": content_type, "content": STANDARD.encode(bytes)})
}

/// The valid body with `attachments`.
fn with_attachments(attachments: Value) -> Value {
    let mut body = valid_body();
    body["attachments"] = attachments;
    body
}

/// Posts `attachments` and asserts a `422` naming `attachments` and `member`.
async fn assert_refused(api: &TestApi, attachments: Value, member: &str) {
    let response = api
        .post_job(
            Some(&api.token("jobs:write")),
            &with_attachments(attachments.clone()),
        )
        .await;
    let problem = assert_problem(response, 422, "`attachments`").await;
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!("`{member}`")),
        "{detail:?} does not name `{member}` for {attachments}"
    );
}

#[tokio::test]
async fn an_attachment_and_an_inline_part_are_accepted_and_kept_as_sent() {
    let api = spawn_api().await;
    let mut logo = attachment("logo.png", "image/png", b"\x89PNG\r\n\x1a\n");
    logo["content_id"] = json!("logo@shop.example.com");
    let attachments = json!([
        attachment(
            "Rechnung März.pdf",
            "application/pdf",
            &[0, 0xff, 0xfe, b'\n', 0x80]
        ),
        logo,
    ]);
    let mut body = with_attachments(attachments.clone());
    body["html"] = json!("<img src=\"cid:logo@shop.example.com\">");

    let response = api.post_job(Some(&api.token("jobs:write")), &body).await;

    assert_eq!(response.status().as_u16(), 202);
    let stored: Value = api
        .db()
        .connect()
        .await
        .query_one("SELECT task->'attachments' FROM deliveries", &[])
        .await
        .expect("the job's row")
        .get(0);
    assert_eq!(stored, attachments);
    assert_eq!(api.queue_len().await, 1);
}

#[tokio::test]
async fn a_filename_that_could_inject_a_header_or_hide_its_extension_is_refused() {
    let api = spawn_api().await;
    for bad in [
        "a.pdf\r\nBcc: eve@example.com",
        "a.pdf\nContent-Type: text/html",
        "a.pdf\r",
        "a\0.pdf",
        "a.pdf\"; filename=\"b.exe",
        "a\\b.pdf",
        "../../etc/passwd",
        "invoice\u{202E}fdp.exe",
        "",
        &"x".repeat(256),
    ] {
        assert_refused(
            &api,
            json!([attachment(bad, "application/pdf", b"%PDF")]),
            "filename",
        )
        .await;
    }
    api.assert_nothing_stored().await;
}

#[tokio::test]
async fn a_content_type_that_is_not_one_discrete_media_type_is_refused() {
    let api = spawn_api().await;
    for bad in [
        "text/plain\r\nBcc: eve@example.com",
        "text/plain;\r\n charset=utf-8",
        "text/html\nContent-Disposition: inline",
        "text/plain; name=\"a\"b\"",
        "text/plain; name=\"a\\\"\"",
        "multipart/mixed; boundary=\"x\"",
        "Multipart/Alternative",
        "message/rfc822",
        "text",
        "text/pla in",
        "",
    ] {
        assert_refused(
            &api,
            json!([attachment("a.txt", bad, b"hello")]),
            "content_type",
        )
        .await;
    }
    api.assert_nothing_stored().await;
}

#[tokio::test]
async fn content_that_is_not_standard_base64_is_refused() {
    let api = spawn_api().await;
    for bad in ["AP8", "AP8Q\r\n", "AP-_", "not base64!"] {
        let attachments = json!([{"filename": "a.bin", "content_type": "application/octet-stream", "content": bad}]);
        assert_refused(&api, attachments, "content").await;
    }
    api.assert_nothing_stored().await;
}

#[tokio::test]
async fn a_content_id_must_be_plain_and_unique() {
    let api = spawn_api().await;
    let inline = |id: &str| {
        let mut part = attachment("logo.png", "image/png", b"\x89PNG");
        part["content_id"] = json!(id);
        part
    };
    for bad in ["<logo>", "logo\r\nBcc: eve@example.com", "a b", ""] {
        assert_refused(&api, json!([inline(bad)]), "content_id").await;
    }
    let response = api
        .post_job(
            Some(&api.token("jobs:write")),
            &with_attachments(json!([inline("logo"), inline("LOGO")])),
        )
        .await;
    assert_problem(response, 422, "entry 1: `content_id` \"LOGO\"").await;
    api.assert_nothing_stored().await;
}

#[tokio::test]
async fn more_than_twenty_attachments_or_an_unknown_member_is_refused() {
    let api = spawn_api().await;
    let token = api.token("jobs:write");
    let many: Vec<Value> = (0..21)
        .map(|i| attachment(&format!("{i}.txt"), "text/plain", b"x"))
        .collect();
    let response = api
        .post_job(Some(&token), &with_attachments(json!(many)))
        .await;
    assert_problem(response, 422, "at most 20").await;

    let mut typo = attachment("a.txt", "text/plain", b"x");
    typo["contentid"] = json!("a");
    let response = api
        .post_job(Some(&token), &with_attachments(json!([typo])))
        .await;
    assert_problem(response, 400, "contentid").await;
    api.assert_nothing_stored().await;
}

#[tokio::test]
async fn a_message_over_max_message_bytes_is_refused_before_anything_is_stored() {
    let api = spawn_api_with(&["--jwt-secret", SECRET, "--max-message-bytes", "1000"]).await;
    let token = api.token("jobs:write");
    // `text` is "Hello": five bytes; the attachments count decoded.
    let over = with_attachments(json!([
        attachment("a.bin", "application/octet-stream", &[0; 500]),
        attachment("b.bin", "application/octet-stream", &[0; 496]),
    ]));

    let response = api.post_job(Some(&token), &over).await;

    let problem = assert_problem(response, 422, "`attachments`").await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("1001 bytes") && d.contains("MAX_MESSAGE_BYTES")),
        "{problem}"
    );
    api.assert_nothing_stored().await;
    let at_the_limit = with_attachments(json!([attachment(
        "a.bin",
        "application/octet-stream",
        &[0; 995]
    )]));
    assert_eq!(
        api.post_job(Some(&token), &at_the_limit)
            .await
            .status()
            .as_u16(),
        202
    );
}

#[tokio::test]
async fn a_message_of_max_message_bytes_fits_the_default_body_limit() {
    let api = spawn_api().await;
    let ten_mib = 10 * 1024 * 1024;
    // Five bytes of `text`, the rest an attachment of bytes that are not
    // UTF-8, base64-encoded to about 13.3 MiB of request.
    let body = with_attachments(json!([attachment(
        "big.bin",
        "application/octet-stream",
        &vec![0xff; ten_mib - 5]
    )]));

    let response = api.post_job(Some(&api.token("jobs:write")), &body).await;

    assert_eq!(response.status().as_u16(), 202);
}

#[tokio::test]
async fn a_batch_takes_attachments_and_refuses_a_hostile_one_alone() {
    let api = spawn_api().await;
    let mut good = with_attachments(json!([attachment("a.pdf", "application/pdf", b"%PDF-1.7")]));
    good["idempotency_key"] = json!("batch:good");
    let mut bad = with_attachments(json!([attachment(
        "a.pdf\r\nBcc: eve@example.com",
        "application/pdf",
        b"%PDF-1.7"
    )]));
    bad["idempotency_key"] = json!("batch:bad");

    let response = api.post_jobs(&api.token("jobs:write"), &[good, bad]).await;

    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().await.expect("JSON");
    let items = answer["items"].as_array().expect("items");
    assert_eq!(items[0]["status"], "queued", "{answer}");
    let detail = items[1]["error"]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("`attachments`") && detail.contains("`filename`"),
        "{answer}"
    );
    assert_eq!(api.queue_len().await, 1);
}
