//! The `sendonce-smtp-sink` binary records what it receives and exits on
//! SIGTERM.
//!
//! # Layout
//!
//! One test: start the sink on port 0, deliver one healthy and one cut
//! message, read the record file, then stop the sink with SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn sink_records_accepted_and_cut_messages() {
    let record = std::env::temp_dir().join(format!("sendonce-sink-{}.jsonl", uuid::Uuid::now_v7()));
    let mut sink = Command::new(env!("CARGO_BIN_EXE_sendonce-smtp-sink"))
        .args(["--listen", "127.0.0.1:0", "--record"])
        .arg(&record)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sendonce-smtp-sink");
    let mut stdout = BufReader::new(sink.stdout.take().expect("piped stdout"));
    let mut banner = String::new();
    tokio::time::timeout(WAIT, stdout.read_line(&mut banner))
        .await
        .expect("sink prints its address in time")
        .expect("read sink stdout");
    let addr: std::net::SocketAddr = banner
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("unexpected banner {banner:?}"));

    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(addr.port())
        .timeout(Some(WAIT))
        .build();
    for (to, id) in [
        ("alice@example.com", "<ok@sendonce.test>"),
        ("bob+drop-after-data@example.com", "<cut@sendonce.test>"),
    ] {
        let message = Message::builder()
            .from("sender@example.com".parse().expect("valid sender"))
            .to(to.parse().expect("valid recipient"))
            .subject(format!("to {to}"))
            .message_id(Some(id.to_owned()))
            .body(String::from("hello"))
            .expect("build message");
        let sent = transport.send(message).await;
        assert_eq!(sent.is_ok(), id.starts_with("<ok"), "{to}: {sent:?}");
    }

    // The sink writes each line before it replies or cuts, so both lines are
    // there once the client has its answers.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&record)
        .expect("read record")
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    assert_eq!(
        lines,
        [
            serde_json::json!({
                "event": "accepted",
                "mail_from": "sender@example.com",
                "rcpt_to": ["alice@example.com"],
                "message_id": "<ok@sendonce.test>",
                "subject": "to alice@example.com",
            }),
            serde_json::json!({
                "event": "cut",
                "mail_from": "sender@example.com",
                "rcpt_to": ["bob+drop-after-data@example.com"],
                "message_id": "<cut@sendonce.test>",
                "subject": "to bob+drop-after-data@example.com",
            }),
        ]
    );

    let pid = sink.id().expect("sink is running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let status = tokio::time::timeout(WAIT, sink.wait())
        .await
        .expect("sink exits on SIGTERM in time")
        .expect("wait for sink");
    assert!(status.success(), "{status}");
    std::fs::remove_file(&record).expect("remove record");
}
