//! `sendonce-smtp-sink`: the testkit SMTP server as a process of its own.
//!
//! # Layout
//!
//! - [`Args`]: `--listen`, `--record` and `--default-fault`.
//! - [`main`]: starts [`SmtpServer`] with an observer that appends one JSON
//!   line per accepted or cut message to the record file, prints the bound
//!   address, and stops on SIGTERM or SIGINT.
//!
//! A chaos test kills the API, the worker and this sink at will, then
//! compares what clients were told with what the sink really received. Each
//! line is therefore written before the SMTP client hears the 250 (or before
//! the connection is cut), so the file is the server's own truth even after a
//! `kill -9`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use anyhow::Context;
use clap::Parser;
use sendonce_testkit::smtp::{Fault, MailEvent, ReceivedMail, SmtpServer};
use tokio::signal::unix::{SignalKind, signal};

/// An SMTP server that records every message it receives as JSON lines and
/// injects faults chosen by `+tag`s in recipient addresses.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on; port 0 picks a free port, printed on stdout.
    #[arg(long, default_value = "127.0.0.1:2525")]
    listen: SocketAddr,
    /// File to append one JSON line per accepted or cut message to.
    #[arg(long)]
    record: PathBuf,
    /// Fault for recipients without a tag, such as `tempfail-rcpt`.
    #[arg(long)]
    default_fault: Option<Fault>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let record = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.record)
        .with_context(|| format!("open record file {}", args.record.display()))?;
    let record = Mutex::new(record);
    let mut server = SmtpServer::start_with_observer(args.listen, move |event, mail| {
        append(&record, event, mail)
    })
    .await
    .with_context(|| format!("listen on {}", args.listen))?;
    server.set_default_fault(args.default_fault);
    // Harnesses that pass port 0 read the real address from here.
    println!("sendonce-smtp-sink listening on {}", server.addr());

    let mut terminate = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted.context("wait for SIGINT")?,
        _ = terminate.recv() => {}
    }
    server.stop().await;
    Ok(())
}

/// Appends one event as a JSON line.
fn append(record: &Mutex<File>, event: MailEvent, mail: &ReceivedMail) -> io::Result<()> {
    let mut line = serde_json::to_vec(&serde_json::json!({
        "event": event.as_str(),
        "mail_from": mail.mail_from,
        "rcpt_to": mail.rcpt_to,
        "message_id": mail.header("Message-ID"),
        "subject": mail.header("Subject"),
    }))?;
    line.push(b'\n');
    // One unbuffered write per line: it reaches the kernel before the client
    // gets its reply, and concurrent sessions never interleave lines.
    record
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .write_all(&line)
}
