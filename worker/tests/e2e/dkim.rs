//! DKIM: what the SMTP server receives from the worker binary verifies
//! with an independent verifier (mail-auth, on ring) against the public
//! keys of `worker/tests/data/dkim`, and stops verifying once changed.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mail_auth::common::parse::TxtRecordParser as _;
use mail_auth::common::verify::DomainKey;
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};
use sendonce_testkit::ReceivedMail;
use sendonce_testkit::unique_prefix;
use serde_json::json;

use crate::helpers::{
    DEADLINE, Options, TestSystem, spawn_system, start_worker_process, worker_exit_reason,
};

/// Where the tests' DKIM keys are, private (`<name>.pem`) and public
/// (`<name>.pub.pem`).
fn test_key(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/dkim")
        .join(name)
}

/// A `DKIM_KEYS_DIR`: the RSA key for `sendonce.test` (the default
/// sender's domain) under the default selector, the Ed25519 key for
/// `bücher.test` under the selector `ed`.
fn keys_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sendonce-dkim-{}", unique_prefix()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    for (name, key) in [
        ("sendonce.test.pem", "rsa.pem"),
        ("ed._domainkey.bücher.test.pem", "ed25519.pem"),
    ] {
        std::fs::copy(test_key(key), dir.join(name)).expect("copy a key");
    }
    dir
}

/// The DER inside a PEM file.
fn pem_der(name: &str) -> Vec<u8> {
    let pem = std::fs::read_to_string(test_key(name)).expect("a PEM file");
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).expect("base64")
}

/// The DNS the verifier sees: the TXT records an operator publishes for
/// the keys of [`keys_dir`], as the README says to write them.
#[derive(Default)]
struct Dns(Mutex<HashMap<String, Txt>>);

impl ResolverCache<String, Txt> for Dns {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let records = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        records.get(name).cloned()
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut records = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        records.remove(name)
    }

    fn insert(&self, key: String, value: Txt, _: std::time::Instant) {
        let mut records = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        records.insert(key, value);
    }
}

impl Dns {
    fn published() -> Self {
        let dns = Self::default();
        // RSA: `p=` is the SubjectPublicKeyInfo; Ed25519 (RFC 8463): the
        // raw 32-byte key, the last 32 bytes of its SubjectPublicKeyInfo.
        let rsa = STANDARD.encode(pem_der("rsa.pub.pem"));
        let ed25519 = pem_der("ed25519.pub.pem");
        let ed25519 = STANDARD.encode(&ed25519[ed25519.len() - 32..]);
        for (name, record) in [
            (
                "sendonce._domainkey.sendonce.test.",
                format!("v=DKIM1; k=rsa; p={rsa}"),
            ),
            (
                "ed._domainkey.xn--bcher-kva.test.",
                format!("v=DKIM1; k=ed25519; p={ed25519}"),
            ),
        ] {
            let key = DomainKey::parse(record.as_bytes()).expect("a DKIM key record");
            let mut records = dns.0.lock().unwrap_or_else(PoisonError::into_inner);
            records.insert(name.to_owned(), key.into());
        }
        dns
    }
}

/// The result of each DKIM signature of `raw`, checked by mail-auth
/// against [`Dns::published`].
async fn verify(raw: &[u8]) -> Vec<DkimResult> {
    let dns = Dns::published();
    // Never asked: every key the tests sign with is in `dns`.
    let authenticator = MessageAuthenticator::new_cloudflare().expect("a resolver");
    let message = AuthenticatedMessage::parse(raw).expect("a message");
    authenticator
        .verify_dkim(Parameters::new(&message).with_txt_cache(&dns))
        .await
        .iter()
        .map(|output| output.result().clone())
        .collect()
}

/// `data` with the first `from` replaced by `to`.
fn tampered(data: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(data.to_vec()).expect("an ASCII message");
    assert!(text.contains(from), "{from:?} is in the message");
    text.replacen(from, to, 1).into_bytes()
}

/// Posts one job from each sender, runs the worker binary with
/// `DKIM_KEYS_DIR`, and returns the received message of each (recipient
/// `n@example.com` for the `n`th job) and the domains its start-up log
/// said sign.
async fn send_from(
    system: &TestSystem,
    jobs: &[serde_json::Value],
) -> (Vec<ReceivedMail>, serde_json::Value) {
    let dir = keys_dir();
    let worker = start_worker_process(
        system,
        &["--dkim-keys-dir", dir.to_str().expect("a UTF-8 path")],
    )
    .await;
    let domains = worker.child.wait_for_json_field("domains", DEADLINE).await;
    for (n, job) in jobs.iter().enumerate() {
        let mut job = job.clone();
        job["to"] = json!(format!("{n}@example.com"));
        let answer = system.post_ok(&job).await;
        system
            .wait_for_status(answer["job_id"].as_str().expect("a job id"), "sent")
            .await;
    }
    worker.stop().await;
    let messages = system.smtp.messages();
    let mail = |n: usize| {
        messages
            .iter()
            .find(|m| m.rcpt_to == [format!("{n}@example.com")])
            .cloned()
            .expect("the job's message")
    };
    ((0..jobs.len()).map(mail).collect(), domains)
}

#[tokio::test]
async fn each_sender_domain_signs_with_its_own_key_and_a_domain_without_one_goes_unsigned() {
    let system = spawn_system(Options::default()).await;

    let (mails, domains) = send_from(
        &system,
        &[
            json!({"subject": "Welcome", "text": "Hello from sendonce."}),
            json!({
                "from": "Jürgen Größe <news@BÜCHER.test>",
                "reply_to": "help@bücher.test",
                "subject": "Grüße aus dem Bücherladen, mit einer recht langen Betreffzeile",
                "text": "Hallo,\n\nwillkommen.  \n",
                "html": "<p>Hallo, <b>willkommen</b>.</p>",
            }),
            json!({"from": "someone@unsigned.test", "subject": "Hi", "text": "Hi."}),
            // A non-ASCII local part keeps the domain as U-labels (SMTPUTF8).
            json!({"from": "josé@bücher.test", "subject": "Olá", "text": "Olá."}),
        ],
    )
    .await;

    assert_eq!(
        domains,
        "sendonce.test (s=sendonce, rsa-sha256), xn--bcher-kva.test (s=ed, ed25519-sha256)"
    );
    let [rsa, ed25519, unsigned, utf8] = &mails[..] else {
        panic!("four messages");
    };
    let signature = rsa.header("DKIM-Signature").expect("signed");
    assert!(signature.contains("a=rsa-sha256;"), "{signature}");
    assert_eq!(verify(&rsa.data).await, [DkimResult::Pass]);
    let signature = ed25519.header("DKIM-Signature").expect("signed");
    assert!(signature.contains("a=ed25519-sha256;"), "{signature}");
    assert!(signature.contains("d=xn--bcher-kva.test;"), "{signature}");
    assert_eq!(verify(&ed25519.data).await, [DkimResult::Pass]);
    assert_eq!(unsigned.header("DKIM-Signature"), None);
    assert!(verify(&unsigned.data).await.is_empty());
    assert_eq!(utf8.header("From").as_deref(), Some("josé@bücher.test"));
    let signature = utf8.header("DKIM-Signature").expect("signed");
    assert!(signature.contains("d=xn--bcher-kva.test;"), "{signature}");
    assert_eq!(verify(&utf8.data).await, [DkimResult::Pass]);
}

#[tokio::test]
async fn a_signed_message_whose_body_or_subject_is_changed_no_longer_verifies() {
    let system = spawn_system(Options::default()).await;

    let (mails, _) = send_from(
        &system,
        &[
            json!({"subject": "Your receipt", "text": "You paid 10 EUR."}),
            json!({"from": "news@bücher.test", "subject": "Your receipt", "text": "You paid 10 EUR."}),
        ],
    )
    .await;

    for mail in &mails {
        assert_eq!(verify(&mail.data).await, [DkimResult::Pass]);
        let body = tampered(&mail.data, "You paid 10 EUR.", "You paid 99 EUR.");
        let results = verify(&body).await;
        assert!(
            matches!(results[..], [DkimResult::Neutral(_) | DkimResult::Fail(_)]),
            "a changed body: {results:?}"
        );
        let subject = tampered(&mail.data, "Subject: Your receipt", "Subject: Your refund");
        let results = verify(&subject).await;
        assert!(
            matches!(results[..], [DkimResult::Fail(_)]),
            "a changed subject: {results:?}"
        );
    }
}

#[tokio::test]
async fn a_worker_given_a_bad_dkim_key_exits_at_start_naming_the_file() {
    let system = spawn_system(Options::default()).await;
    let dir = keys_dir();
    std::fs::write(dir.join("example.com.pem"), "not a key").expect("write a bad key");
    let mut args = system.worker_args();
    args.extend(["--dkim-keys-dir".to_owned(), dir.display().to_string()]);

    let stderr = worker_exit_reason(&args).await;

    assert!(stderr.contains("DKIM_KEYS_DIR"), "{stderr}");
    assert!(stderr.contains("example.com.pem"), "{stderr}");
}

#[tokio::test]
async fn the_one_click_unsubscribe_headers_are_signed_as_rfc_8058_asks() {
    let system = spawn_system(Options::default()).await;

    let (mails, _) = send_from(
        &system,
        &[json!({
            "subject": "News",
            "text": "This week.",
            "headers": {
                "List-Unsubscribe": "<https://sendonce.test/unsubscribe/1>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
        })],
    )
    .await;

    let mail = &mails[0];
    let signature = mail.header("DKIM-Signature").expect("signed");
    assert!(
        signature.contains("list-unsubscribe:list-unsubscribe-post"),
        "{signature}"
    );
    assert_eq!(verify(&mail.data).await, [DkimResult::Pass]);
    let redirected = tampered(&mail.data, "unsubscribe/1>", "unsubscribe/2>");
    let results = verify(&redirected).await;
    assert!(
        matches!(results[..], [DkimResult::Fail(_)]),
        "a changed List-Unsubscribe: {results:?}"
    );
}

#[tokio::test]
async fn a_message_with_attachments_verifies_and_its_attachment_is_covered() {
    let system = spawn_system(Options::default()).await;
    let content = STANDARD.encode((0..=255u8).collect::<Vec<u8>>());

    let (mails, _) = send_from(
        &system,
        &[json!({
            "subject": "Invoice",
            "text": "Attached.",
            "html": "<img src=\"cid:logo\">",
            "attachments": [
                {"filename": "invoice.bin", "content_type": "application/octet-stream",
                 "content": content},
                {"filename": "logo.png", "content_type": "image/png",
                 "content": "iVBORw0KGgo=", "content_id": "logo"},
            ],
        })],
    )
    .await;

    let mail = &mails[0];
    assert_eq!(verify(&mail.data).await, [DkimResult::Pass]);
    let changed = tampered(&mail.data, "iVBORw0KGgo=", "iVBORw0KGgp=");
    let results = verify(&changed).await;
    assert!(
        matches!(results[..], [DkimResult::Neutral(_) | DkimResult::Fail(_)]),
        "a changed attachment: {results:?}"
    );
}
