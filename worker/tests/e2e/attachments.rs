//! Attachments end to end: what the SMTP server receives, read with a
//! MIME parser (mail-parser), holds each attachment byte for byte (bytes
//! that are not UTF-8, a text file's bare line feeds) with its filename and
//! content type, and each inline part, with its `Content-ID`, in a
//! `multipart/related` beside the HTML that refers to it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mail_parser::{Message, MessageParser, MessagePart, MimeHeaders, PartType};
use serde_json::{Value, json};

use crate::helpers::{DEADLINE, Options, spawn_system};

/// Every byte value, twice over in a shuffled order, with CR, LF and NUL
/// among them: nothing UTF-8 or line-based survives unchanged by accident.
fn binary() -> Vec<u8> {
    (0..=255u8)
        .chain((0..=255u8).rev().map(|b| b ^ 0x5a))
        .collect()
}

fn attachment(filename: &str, content_type: &str, bytes: &[u8], id: Option<&str>) -> Value {
    let mut part = json!({"filename": filename, "content_type": content_type,
                          "content": STANDARD.encode(bytes)});
    if let Some(id) = id {
        part["content_id"] = json!(id);
    }
    part
}

/// The part whose filename is `name`.
fn named<'a>(message: &'a Message<'a>, name: &str) -> &'a MessagePart<'a> {
    message
        .parts
        .iter()
        .find(|p| p.attachment_name() == Some(name))
        .unwrap_or_else(|| panic!("no part named {name}"))
}

/// The `type/subtype` of `part`.
fn media_type(part: &MessagePart<'_>) -> String {
    part.content_type()
        .map(|ct| format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default()))
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// The multipart that holds part `child`, if any.
fn parent_of<'a>(message: &'a Message<'a>, child: usize) -> Option<&'a MessagePart<'a>> {
    message.parts.iter().find(|p| {
        matches!(&p.body, PartType::Multipart(children)
            if children.iter().any(|&c| c as usize == child))
    })
}

/// The message the SMTP server received for the job `body`.
async fn sent(body: &Value) -> Vec<u8> {
    let system = spawn_system(Options::default()).await;
    let _worker = system.spawn_worker().await;
    let answer = system.post_ok(body).await;
    system
        .wait_for_status(answer["job_id"].as_str().expect("a job id"), "sent")
        .await;
    let messages = system.smtp.wait_for_messages(1, DEADLINE).await;
    messages[0].data.clone()
}

#[tokio::test]
async fn attachments_arrive_byte_exact_and_inline_parts_beside_the_html_that_shows_them() {
    let logo = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    let notes = b"line one\nline two\r\nline three\n".to_vec();
    let body = json!({
        "to": "ada@example.com",
        "subject": "Your invoice",
        "text": "Your invoice is attached.",
        "html": "<p><img src=\"cid:logo@shop.example.com\"> Your invoice is attached.</p>",
        "idempotency_key": "attachments:invoice",
        "attachments": [
            attachment("Rechnung März 2026.bin", "application/octet-stream", &binary(), None),
            attachment("notes.txt", "text/plain; charset=utf-8", &notes, None),
            attachment("logo.png", "image/png", &logo, Some("logo@shop.example.com")),
        ],
    });

    let data = sent(&body).await;

    let message = MessageParser::default()
        .parse(&data)
        .expect("a MIME message");
    assert_eq!(media_type(message.root_part()), "multipart/mixed");

    let file = named(&message, "Rechnung März 2026.bin");
    assert_eq!(file.contents(), binary(), "byte for byte");
    assert_eq!(media_type(file), "application/octet-stream");
    assert!(
        file.content_disposition()
            .is_some_and(|d| d.is_attachment())
    );

    let text = named(&message, "notes.txt");
    assert_eq!(text.contents(), notes, "its line breaks as they were");
    assert_eq!(media_type(text), "text/plain");

    let (at, inline) = message
        .parts
        .iter()
        .enumerate()
        .find(|(_, p)| p.attachment_name() == Some("logo.png"))
        .expect("the inline part");
    assert_eq!(inline.contents(), logo);
    assert_eq!(
        inline.content_id().map(|id| id.trim_matches(['<', '>'])),
        Some("logo@shop.example.com")
    );
    assert!(inline.content_disposition().is_some_and(|d| d.is_inline()));
    let related = parent_of(&message, at).expect("a multipart holds it");
    assert_eq!(media_type(related), "multipart/related");
    let html = message.body_html(0).expect("an HTML body");
    assert!(html.contains("cid:logo@shop.example.com"), "{html}");
}

#[tokio::test]
async fn a_message_without_inline_parts_has_no_related_part() {
    let body = json!({
        "to": "ada@example.com", "subject": "Report", "text": "Attached.",
        "idempotency_key": "attachments:report",
        "attachments": [attachment("report.csv", "text/csv", b"a,b\n1,2\n", None)],
    });

    let data = sent(&body).await;

    let message = MessageParser::default()
        .parse(&data)
        .expect("a MIME message");
    assert_eq!(media_type(message.root_part()), "multipart/mixed");
    assert!(
        message
            .parts
            .iter()
            .all(|p| media_type(p) != "multipart/related")
    );
    assert_eq!(named(&message, "report.csv").contents(), b"a,b\n1,2\n");
    assert_eq!(
        message.body_text(0).as_deref().map(str::trim_end),
        Some("Attached.")
    );
}
