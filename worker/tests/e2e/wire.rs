//! What a strict SMTP server sees on the wire: every line ends in CRLF and
//! fits in 998 octets (RFC 5321 §2.3.8 and §4.5.3.1.6, RFC 5322 §2.1.1),
//! leading dots are doubled, and each job is exactly one message, whatever
//! the client put in its body or headers.

use std::cell::Cell;
use std::collections::HashMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use sendonce_shared::domain::IdempotencyKey;
use sendonce_testkit::smtp::ReceivedMail;
use serde_json::{Value, json};

use crate::helpers::{Options, TestSystem, decode_words, spawn_system};

/// RFC 5321 §4.5.3.1.6: 1000 octets with the CRLF.
const MAX_LINE_OCTETS: usize = 998;

/// Why the bytes of one message would trouble a strict server, if they would.
fn wire_fault(wire: &[u8]) -> Option<String> {
    for (at, pair) in wire.windows(2).enumerate() {
        if pair[0] == b'\r' && pair[1] != b'\n' {
            return Some(format!("bare CR at byte {at}"));
        }
        if pair[1] == b'\n' && pair[0] != b'\r' {
            return Some(format!("bare LF at byte {}", at + 1));
        }
    }
    if wire.first() == Some(&b'\n') || wire.last() == Some(&b'\r') {
        return Some("bare CR or LF at an end of the data".into());
    }
    if !wire.ends_with(b"\r\n") {
        return Some("the data does not end with CRLF".into());
    }
    for (n, line) in wire.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > MAX_LINE_OCTETS {
            return Some(format!("line {n} is {} octets", line.len()));
        }
        // Only a line that began with a dot gets one more in front of it.
        if line.starts_with(b".") && !line.starts_with(b"..") {
            return Some(format!("line {n} starts with an unstuffed dot"));
        }
    }
    None
}

/// The message whose Message-ID belongs to `key`; fails unless exactly one.
fn the_one_message_for<'a>(mails: &'a [ReceivedMail], key: &str) -> &'a ReceivedMail {
    let id = IdempotencyKey::parse(key)
        .expect("valid key")
        .message_id("sendonce.test");
    let found: Vec<_> = mails
        .iter()
        .filter(|m| m.header("Message-ID").as_deref() == Some(id.as_str()))
        .collect();
    assert_eq!(found.len(), 1, "messages for key {key}");
    found[0]
}

/// Posts each body as a job with its own key and waits until all are sent.
async fn send_all(system: &TestSystem, jobs: &[(String, Value)]) {
    let mut ids = Vec::new();
    for (key, body) in jobs {
        let mut body = body.clone();
        body["idempotency_key"] = json!(key);
        ids.push(system.post_ok(&body).await["job_id"].clone());
    }
    for id in ids {
        system
            .wait_for_status(id.as_str().expect("job id"), "sent")
            .await;
    }
}

#[tokio::test]
async fn a_bare_cr_dot_cr_in_a_body_cannot_end_the_data_or_start_a_second_transaction() {
    let system = spawn_system(Options::default()).await;
    let _worker = system.spawn_worker().await;
    let payloads = [
        "hi\r.\rMAIL FROM:<ceo@bank.example>\nRCPT TO:<victim1@example.com>\nDATA\nwire me\r.\r",
        "a\r.\rb",
        "a\r.\r\nb",
        "x\r\r\ny",
        "a\n.\nb\r\n.\r\n..c",
    ];
    let jobs: Vec<_> = payloads
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            [
                (format!("smuggle:text:{i}"), json!({"text": p})),
                (format!("smuggle:html:{i}"), json!({"html": p})),
                (format!("smuggle:both:{i}"), json!({"text": p, "html": p})),
            ]
        })
        .map(|(key, mut body)| {
            body["to"] = json!("victim@example.com");
            body["subject"] = json!("hello");
            (key, body)
        })
        .collect();

    send_all(&system, &jobs).await;

    let mails = system.smtp.messages();
    assert_eq!(mails.len(), jobs.len(), "one message per job, no more");
    for (key, _) in &jobs {
        let mail = the_one_message_for(&mails, key);
        assert_eq!(wire_fault(&mail.wire), None, "job {key}");
        assert_eq!(mail.rcpt_to, ["victim@example.com"]);
    }
}

#[tokio::test]
async fn every_header_line_fits_in_998_octets_at_the_limits_of_each_field() {
    let system = spawn_system(Options::default()).await;
    let _worker = system.spawn_worker().await;
    let address = "<a@x.test>";
    // The longest display name each address field accepts (998 in all).
    let name = |fill: &str| fill.repeat((998 - address.len() - 1) / fill.len());
    let subjects = [
        "x".repeat(998),
        "é".repeat(499),
        "word ".repeat(199) + "end",
        format!("{} {}", "y".repeat(500), "z".repeat(497)),
    ];
    let names = [
        name("n"),
        name("é"),
        name("n "),
        format!("\"{}\"", name("q,").trim_end_matches(',')),
    ];
    let mut jobs = Vec::new();
    for (i, subject) in subjects.iter().enumerate() {
        jobs.push((
            format!("long:subject:{i}"),
            json!({"to": "a@x.test", "subject": subject, "text": "hi"}),
        ));
    }
    for (i, name) in names.iter().enumerate() {
        let mailbox = format!("{} {address}", name.trim_end());
        for field in ["to", "from", "reply_to"] {
            let mut body = json!({"to": "a@x.test", "subject": "s", "text": "hi"});
            body[field] = json!(mailbox);
            jobs.push((format!("long:{field}:{i}"), body));
        }
    }
    // A job's own headers, at the longest value each name accepts.
    let most = |name: &str| 998 - name.len() - ": ".len();
    let headers = [
        ("X-Long", "x".repeat(most("X-Long"))),
        ("X-Long", "é".repeat(most("X-Long") / 2)),
        ("X-Long", "word ".repeat(most("X-Long") / 5)),
        (
            "List-Unsubscribe",
            format!(
                "<https://x.test/{}>",
                "u".repeat(most("List-Unsubscribe") - 17)
            ),
        ),
    ];
    for (i, (name, value)) in headers.iter().enumerate() {
        let body =
            json!({"to": "a@x.test", "subject": "s", "text": "hi", "headers": {*name: value}});
        jobs.push((format!("long:header:{i}"), body));
    }

    send_all(&system, &jobs).await;

    let mails = system.smtp.messages();
    assert_eq!(mails.len(), jobs.len());
    for (key, body) in &jobs {
        let mail = the_one_message_for(&mails, key);
        assert_eq!(wire_fault(&mail.wire), None, "job {key}");
        let subject = mail.header("Subject").expect("a Subject");
        assert_eq!(decode_words(&subject), body["subject"], "job {key}");
        for (field, header) in [("to", "To"), ("from", "From"), ("reply_to", "Reply-To")] {
            let Some(sent) = body[field].as_str().filter(|s| s.len() > 900) else {
                continue;
            };
            let got = decode_words(&mail.header(header).expect("the header"));
            let name = sent.trim_end_matches(address).trim().trim_matches('"');
            assert!(
                got.trim_end_matches(address).trim().trim_matches('"') == name,
                "job {key}: {header} came out as {got:?}"
            );
        }
        if let Some(headers) = body["headers"].as_object() {
            for (name, value) in headers {
                let got = decode_words(&mail.header(name).expect("the header"));
                assert_eq!(
                    got.trim_end(),
                    value.as_str().expect("text").trim_end(),
                    "job {key}"
                );
            }
        }
    }
}

/// Body text rich in what breaks SMTP: bare CR and LF, leading dots, long
/// lines, non-ASCII.
fn hostile_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\r".to_owned()),
        Just("\n".to_owned()),
        Just("\r\n".to_owned()),
        Just(".".to_owned()),
        Just("\r.\r".to_owned()),
        Just("\r\n.\r\n".to_owned()),
        Just("\n..\n".to_owned()),
        "[a-z .]{0,12}",
        "\\PC{0,12}",
        (990..1100usize).prop_map(|n| "w".repeat(n)),
        (300..700usize).prop_map(|n| "é".repeat(n)),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

fn hostile_body() -> impl Strategy<Value = Value> {
    prop_oneof![
        hostile_text().prop_map(|text| json!({"text": text})),
        hostile_text().prop_map(|html| json!({"html": html})),
        (hostile_text(), hostile_text())
            .prop_map(|(text, html)| json!({"text": text, "html": html})),
    ]
}

#[test]
fn any_body_goes_out_as_one_message_of_crlf_lines_of_at_most_998_octets_with_dots_stuffed() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let system = runtime.block_on(spawn_system(Options::default()));
    let _worker = runtime.block_on(system.spawn_worker());
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(16);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    // The runner takes an `Fn`: the counts live in cells.
    let sent = Cell::new(0);
    let case = Cell::new(0);
    let outcome = runner.run(&proptest::collection::vec(hostile_body(), 1..6), |bodies| {
        case.set(case.get() + 1);
        let jobs: Vec<_> = bodies
            .into_iter()
            .enumerate()
            .map(|(i, mut body)| {
                body["to"] = json!("prop@example.com");
                body["subject"] = json!("property");
                (format!("prop:{}:{i}", case.get()), body)
            })
            .collect();
        runtime.block_on(send_all(&system, &jobs));
        sent.set(sent.get() + jobs.len());
        let mails = system.smtp.messages();
        prop_assert_eq!(mails.len(), sent.get(), "one message per job");
        let by_key: HashMap<_, _> = jobs
            .iter()
            .map(|(key, _)| (key, the_one_message_for(&mails, key)))
            .collect();
        for (key, mail) in by_key {
            if let Some(fault) = wire_fault(&mail.wire) {
                return Err(TestCaseError::fail(format!("job {key}: {fault}")));
            }
        }
        Ok(())
    });
    if let Err(err) = outcome {
        panic!("{err}");
    }
}

#[tokio::test]
async fn a_server_without_smtputf8_gets_idn_domains_as_a_labels_and_no_utf8_parameters() {
    let system = spawn_system(Options::default()).await;
    system.smtp.set_without_utf8(true);
    let _worker = system.spawn_worker().await;
    let job = json!({
        "to": "Jürgen <user@bücher.de>",
        "from": "shop@bücher.de",
        "reply_to": "help@bücher.de",
        "subject": "Grüße",
        "text": "Schöne Grüße",
    });

    send_all(&system, &[("idn:1".to_owned(), job)]).await;

    let mails = system.smtp.messages();
    let mail = the_one_message_for(&mails, "idn:1");
    assert_eq!(mail.rcpt_to, ["user@xn--bcher-kva.de"]);
    assert_eq!(mail.mail_from, "shop@xn--bcher-kva.de");
    assert!(
        mail.mail_parameters.is_empty(),
        "{:?}",
        mail.mail_parameters
    );
    assert!(mail.data.is_ascii(), "8-bit data to a 7-bit server");
    for header in ["To", "From", "Reply-To"] {
        let value = mail.header(header).expect("the header");
        assert!(
            value.ends_with("@xn--bcher-kva.de>") || value.ends_with("@xn--bcher-kva.de"),
            "{header}: {value}"
        );
    }
}

#[tokio::test]
async fn a_non_ascii_local_part_fails_for_good_with_a_clear_reason_when_the_server_lacks_smtputf8()
{
    let system = spawn_system(Options::default()).await;
    system.smtp.set_without_utf8(true);
    let _worker = system.spawn_worker().await;
    let mut jobs = Vec::new();
    for (i, field) in ["to", "from", "reply_to"].into_iter().enumerate() {
        let mut body = json!({"to": "plain@example.com", "subject": "s", "text": "t"});
        body[field] = json!("josé@example.com");
        body["idempotency_key"] = json!(format!("utf8-local:{i}"));
        jobs.push(system.post_ok(&body).await["job_id"].clone());
    }

    for job_id in &jobs {
        let job = system
            .wait_for_status(job_id.as_str().expect("job id"), "failed")
            .await;
        let error = job["last_error"].as_str().unwrap_or_default();
        assert!(error.contains("SMTPUTF8"), "{job}");
        assert_eq!(job["attempts"], 1, "no retry of a permanent failure");
    }
    assert!(system.smtp.messages().is_empty());
    assert_eq!(system.smtp.attempts_for("josé@example.com"), 0);
    assert_eq!(system.smtp.attempts_for("plain@example.com"), 0);
}

#[tokio::test]
async fn smtputf8_is_asked_for_exactly_when_an_envelope_or_header_address_needs_it() {
    let system = spawn_system(Options::default()).await;
    let _worker = system.spawn_worker().await;
    let base = json!({"to": "plain@example.com", "subject": "é", "text": "é"});
    let mut jobs = vec![("utf8:none".to_owned(), base.clone())];
    for field in ["to", "from", "reply_to"] {
        let mut body = base.clone();
        body[field] = json!("josé@example.com");
        jobs.push((format!("utf8:{field}"), body));
    }
    let mut idn = base.clone();
    idn["to"] = json!("user@bücher.de");
    jobs.push(("utf8:idn".to_owned(), idn));

    send_all(&system, &jobs).await;

    let mails = system.smtp.messages();
    let smtputf8 = |key: &str| {
        the_one_message_for(&mails, key)
            .mail_parameters
            .iter()
            .any(|p| p == "SMTPUTF8")
    };
    assert!(!smtputf8("utf8:none"));
    assert!(!smtputf8("utf8:idn"), "an A-label needs no SMTPUTF8");
    for field in ["to", "from", "reply_to"] {
        assert!(smtputf8(&format!("utf8:{field}")), "{field}");
    }
}
