//! The SMTP test server against lettre's client and raw protocol exchanges.
//!
//! # Layout
//!
//! - Helpers build a lettre transport and messages.
//! - Tests: a plain delivery, one test per fault tag, the default fault,
//!   stop and restart, several messages on one connection, protocol errors.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sendonce_testkit::{Fault, SmtpServer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);
const SENDER: &str = "sender@example.com";

fn transport(server: &SmtpServer) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(server.addr().port())
        .timeout(Some(WAIT))
        .build()
}

fn message(to: &str, id: &str) -> Message {
    Message::builder()
        .from(SENDER.parse().expect("valid sender"))
        .to(to.parse().expect("valid recipient"))
        .subject(format!("subject {id}"))
        .message_id(Some(format!("<{id}@sendonce.test>")))
        // The leading dot checks that dot-stuffing is undone.
        .body(String::from("hello\r\n.leading dot\r\n"))
        .expect("build message")
}

async fn send(
    server: &SmtpServer,
    to: &str,
    id: &str,
) -> Result<(), lettre::transport::smtp::Error> {
    transport(server).send(message(to, id)).await.map(drop)
}

#[tokio::test]
async fn lettre_delivery_is_recorded() {
    let server = SmtpServer::start().await;
    assert_eq!(server.url(), format!("smtp://{}", server.addr()));

    send(&server, "alice@example.com", "m1")
        .await
        .expect("send");

    let messages = server.wait_for_messages(1, WAIT).await;
    let [mail] = messages.as_slice() else {
        panic!("expected one message, got {messages:?}");
    };
    assert_eq!(mail.mail_from, SENDER);
    assert_eq!(mail.rcpt_to, ["alice@example.com"]);
    assert_eq!(mail.header("subject").as_deref(), Some("subject m1"));
    assert_eq!(
        mail.header("Message-ID").as_deref(),
        Some("<m1@sendonce.test>")
    );
    assert!(
        mail.body_text().contains("\r\n.leading dot\r\n"),
        "body: {:?}",
        mail.body_text()
    );
    assert_eq!(server.attempts_for("alice@example.com"), 1);
    assert!(server.cut_messages().is_empty());
}

#[tokio::test]
async fn tempfail_rcpt_always_refuses_temporarily() {
    let server = SmtpServer::start().await;
    let rcpt = "alice+tempfail-rcpt@example.com";
    for _ in 0..2 {
        let err = send(&server, rcpt, "m").await.expect_err("must fail");
        assert!(err.is_transient(), "{err}");
    }
    assert_eq!(server.attempts_for(rcpt), 2);
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn flaky_refuses_the_first_attempts_then_accepts() {
    let server = SmtpServer::start().await;
    let rcpt = "alice+flaky-2@example.com";
    for attempt in 1..=2 {
        let err = send(&server, rcpt, "m").await.expect_err("must fail");
        assert!(err.is_transient(), "attempt {attempt}: {err}");
    }
    send(&server, rcpt, "m").await.expect("third attempt");
    assert_eq!(server.attempts_for(rcpt), 3);
    assert_eq!(server.messages().len(), 1);
    // The count is per exact address.
    send(&server, "bob+flaky-1@example.com", "m")
        .await
        .expect_err("another address has its own count");
}

#[tokio::test]
async fn reject_rcpt_refuses_permanently() {
    let server = SmtpServer::start().await;
    let rcpt = "alice+reject-rcpt@example.com";
    let err = send(&server, rcpt, "m").await.expect_err("must fail");
    assert!(err.is_permanent(), "{err}");
    assert_eq!(
        err.status().map(|code| code.to_string()).as_deref(),
        Some("550")
    );
    assert_eq!(server.attempts_for(rcpt), 1);
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn data_faults_reply_after_reading_the_data() {
    let server = SmtpServer::start().await;

    let err = send(&server, "alice+reject-data@example.com", "m1")
        .await
        .expect_err("reject-data");
    assert!(err.is_permanent(), "{err}");
    assert_eq!(
        err.status().map(|code| code.to_string()).as_deref(),
        Some("554")
    );

    let err = send(&server, "alice+tempfail-data@example.com", "m2")
        .await
        .expect_err("tempfail-data");
    assert!(err.is_transient(), "{err}");

    assert!(server.messages().is_empty());
    assert!(server.cut_messages().is_empty());
}

#[tokio::test]
async fn slow_data_delays_the_acceptance() {
    let server = SmtpServer::start().await;
    let delay = Duration::from_millis(300);
    let rcpt = format!("alice+{}@example.com", Fault::SlowData(delay));
    assert_eq!(rcpt, "alice+slow-data-300@example.com");

    let started = Instant::now();
    send(&server, &rcpt, "m").await.expect("send");
    assert!(started.elapsed() >= delay, "took {:?}", started.elapsed());
    assert_eq!(server.messages().len(), 1);
}

#[tokio::test]
async fn drop_after_data_cuts_the_connection_and_keeps_the_message() {
    let server = SmtpServer::start().await;
    let err = send(&server, "alice+drop-after-data@example.com", "m1")
        .await
        .expect_err("the client gets no reply");
    assert!(!err.is_permanent() && !err.is_transient(), "{err}");

    let cut = server.wait_for_cut_messages(1, WAIT).await;
    assert_eq!(
        cut[0].header("Message-ID").as_deref(),
        Some("<m1@sendonce.test>")
    );
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn drop_before_data_cuts_the_connection_at_rcpt() {
    let server = SmtpServer::start().await;
    let rcpt = "alice+drop-before-data@example.com";
    send(&server, rcpt, "m")
        .await
        .expect_err("the client gets no reply");
    assert_eq!(server.attempts_for(rcpt), 1);
    assert!(server.messages().is_empty());
    assert!(server.cut_messages().is_empty());
}

#[tokio::test]
async fn default_fault_applies_to_untagged_recipients_only() {
    let server = SmtpServer::start().await;
    server.set_default_fault(Some(Fault::TempfailRcpt));

    let err = send(&server, "alice@example.com", "m1")
        .await
        .expect_err("untagged recipient gets the default fault");
    assert!(err.is_transient(), "{err}");
    send(&server, "bob+slow-data-0@example.com", "m2")
        .await
        .expect("a tag overrides the default");

    server.set_default_fault(None);
    send(&server, "alice@example.com", "m3")
        .await
        .expect("healthy again");
    assert_eq!(server.messages().len(), 2);
}

#[tokio::test]
async fn stopped_server_is_unreachable_until_restarted() {
    let mut server = SmtpServer::start().await;
    let addr = server.addr();
    send(&server, "alice@example.com", "m1")
        .await
        .expect("send");

    server.stop().await;
    assert!(!server.is_running());
    assert!(TcpStream::connect(addr).await.is_err());
    send(&server, "alice@example.com", "m2")
        .await
        .expect_err("server is down");

    server.restart().await.expect("restart on the same port");
    assert_eq!(server.addr(), addr);
    send(&server, "alice@example.com", "m3")
        .await
        .expect("send");
    assert_eq!(server.messages().len(), 2, "the record survives a restart");

    server.stop().await;
    let fresh = SmtpServer::start_on(addr)
        .await
        .expect("start on the old port");
    send(&fresh, "alice@example.com", "m4").await.expect("send");
    assert_eq!(fresh.messages().len(), 1);
}

#[tokio::test]
async fn several_messages_share_one_connection() {
    let server = SmtpServer::start().await;
    let mut conn = AsyncSmtpConnection::connect_tokio1(
        server.addr(),
        Some(WAIT),
        &ClientId::default(),
        None,
        None,
    )
    .await
    .expect("connect");
    for (to, id) in [("alice@example.com", "m1"), ("bob@example.com", "m2")] {
        let message = message(to, id);
        let envelope: Envelope = message.envelope().clone();
        conn.send(&envelope, &message.formatted())
            .await
            .expect("send");
    }
    conn.quit().await.expect("quit");

    let messages = server.wait_for_messages(2, WAIT).await;
    let ids: Vec<_> = messages
        .iter()
        .filter_map(|m| m.header("message-id"))
        .collect();
    assert_eq!(ids, ["<m1@sendonce.test>", "<m2@sendonce.test>"]);
}

/// A raw SMTP client that sends one line and reads one (possibly
/// multi-line) reply.
struct RawClient(BufReader<TcpStream>);

impl RawClient {
    async fn connect(addr: SocketAddr) -> Self {
        let mut client = Self(BufReader::new(
            TcpStream::connect(addr).await.expect("connect"),
        ));
        assert!(client.reply().await.starts_with("220 "));
        client
    }

    async fn reply(&mut self) -> String {
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            self.0.read_line(&mut line).await.expect("read reply");
            assert!(!line.is_empty(), "connection closed; got {reply:?}");
            reply.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return reply;
            }
        }
    }

    async fn send(&mut self, line: &str) -> String {
        self.0
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("write");
        self.reply().await
    }
}

#[tokio::test]
async fn protocol_errors_and_dot_stuffing() {
    let server = SmtpServer::start().await;
    let mut client = RawClient::connect(server.addr()).await;

    assert!(client.send("MAIL FROM:<a@x>").await.starts_with("503 "));
    assert!(client.send("FROB").await.starts_with("500 "));
    let ehlo = client.send("EHLO client.test").await;
    for extension in ["250-PIPELINING", "250-8BITMIME", "250-SMTPUTF8", "250 SIZE"] {
        assert!(ehlo.contains(extension), "{ehlo}");
    }
    assert!(client.send("RCPT TO:<b@x>").await.starts_with("503 "));
    assert!(client.send("DATA").await.starts_with("503 "));
    assert!(client.send("NOOP").await.starts_with("250 "));
    assert!(client.send("MAIL FROM:<a@x>").await.starts_with("250 "));
    assert!(client.send("MAIL FROM:<a@x>").await.starts_with("503 "));
    assert!(client.send("RSET").await.starts_with("250 "));
    assert!(client.send("HELO client.test").await.starts_with("250 "));
    assert!(
        client
            .send("mail from:<a@x> BODY=8BITMIME")
            .await
            .starts_with("250 ")
    );
    assert!(client.send("RCPT TO:<b@x>").await.starts_with("250 "));
    assert!(client.send("DATA").await.starts_with("354 "));
    let reply = client
        .send("Subject: folded\r\n  header\r\n\r\n..one\r\n..\r\nend\r\n.")
        .await;
    assert!(reply.starts_with("250 "), "{reply}");
    assert!(client.send("QUIT").await.starts_with("221 "));

    let messages = server.wait_for_messages(1, WAIT).await;
    assert_eq!(
        messages[0].header("SUBJECT").as_deref(),
        Some("folded  header")
    );
    assert_eq!(messages[0].body_text(), ".one\r\n.\r\nend\r\n");
    assert!(messages[0].wire.ends_with(b"\r\n..one\r\n..\r\nend\r\n"));
    assert_eq!(messages[0].rcpt_to, ["b@x"]);
    assert_eq!(messages[0].mail_parameters, ["BODY=8BITMIME"]);
}

#[tokio::test]
async fn a_server_without_utf8_offers_neither_extension_and_refuses_what_needs_them() {
    let server = SmtpServer::start().await;
    server.set_without_utf8(true);
    let mut client = RawClient::connect(server.addr()).await;

    let ehlo = client.send("EHLO client.test").await;
    assert!(
        !ehlo.contains("SMTPUTF8") && !ehlo.contains("8BITMIME"),
        "{ehlo}"
    );
    for refused in [
        "MAIL FROM:<a@x> SMTPUTF8",
        "MAIL FROM:<a@x> BODY=8BITMIME",
        "MAIL FROM:<josé@x>",
    ] {
        assert!(client.send(refused).await.starts_with("55"), "{refused}");
    }
    assert!(client.send("MAIL FROM:<a@x>").await.starts_with("250 "));
    assert!(client.send("RCPT TO:<josé@x>").await.starts_with("553 "));
    assert!(client.send("RCPT TO:<b@x>").await.starts_with("250 "));
}
