//! A small but real SMTP server for tests, with faults chosen per recipient.
//!
//! # Layout
//!
//! - [`SmtpServer`] owns one listener task; every connection runs as its own
//!   session task, and all of them write to one shared record of what arrived.
//! - [`Fault`] is a misbehaviour a recipient asks for with a `+tag` in its
//!   local part (`alice+flaky-2@example.com`), or that
//!   [`SmtpServer::set_default_fault`] imposes on untagged recipients.
//! - [`ReceivedMail`] is one message whose data fully arrived, with helpers to
//!   read its headers and body.
//! - [`MailEvent`] plus [`SmtpServer::start_with_observer`] let the
//!   `sendonce-smtp-sink` binary persist each outcome before the client hears
//!   about it.
//!
//! The server speaks the subset of ESMTP that lettre's client uses (EHLO,
//! HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT, several messages per
//! connection). Faults are keyed on the recipient rather than configured per
//! server so that one server can carry the healthy and the failing traffic of
//! a test at the same time.

use std::collections::HashMap;
use std::error::Error;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Largest message accepted; advertised with the `SIZE` extension.
const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;

/// How long the listener rests after a failed `accept` (for example when out
/// of file descriptors), so that it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// A misbehaviour injected for one recipient.
///
/// Each variant has a tag, its [`Display`](fmt::Display) form, that selects
/// it when it appears after a `+` in a recipient's local part:
/// `format!("alice+{}@example.com", Fault::Flaky(2))` is
/// `alice+flaky-2@example.com`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `tempfail-rcpt`: every RCPT gets `451 4.3.0 try again later`.
    TempfailRcpt,
    /// `flaky-N`: the first N RCPTs for this exact address get 451, later
    /// ones are accepted.
    Flaky(usize),
    /// `reject-rcpt`: RCPT gets `550 5.1.1 no such user`.
    RejectRcpt,
    /// `reject-data`: the data is read, then `554 5.6.0 message rejected`.
    RejectData,
    /// `tempfail-data`: the data is read, then `451 4.3.0 try again`.
    TempfailData,
    /// `slow-data-MS`: the data is read, and the 250 comes MS milliseconds
    /// later.
    SlowData(Duration),
    /// `drop-after-data`: the data is read and kept as a cut message, then the
    /// connection is closed without a reply.
    DropAfterData,
    /// `drop-before-data`: the connection is closed as soon as RCPT arrives,
    /// without a reply.
    DropBeforeData,
    /// `busy-CODE-N`: the first N RCPTs for this exact address get the reply
    /// of a relay over its limit, CODE one of 421 (`421 4.7.0`, and the
    /// connection is closed), 451 (`451 4.7.1`) or 454 (`454 4.7.0`); later
    /// ones are accepted.
    Busy(u16, usize),
}

impl Fault {
    /// The fault a recipient address asks for with a `+tag`, if any.
    ///
    /// Every `+`-separated part of the local part is tried, so
    /// `alice+x+flaky-1@example.com` works too.
    pub fn for_address(address: &str) -> Option<Self> {
        let local = address.rsplit_once('@').map_or(address, |(local, _)| local);
        local.split('+').skip(1).find_map(|tag| tag.parse().ok())
    }

    /// Whether the fault acts after the message data arrived; such faults are
    /// carried from RCPT to the end of DATA.
    fn acts_on_data(self) -> bool {
        matches!(
            self,
            Self::RejectData | Self::TempfailData | Self::SlowData(_) | Self::DropAfterData
        )
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TempfailRcpt => f.write_str("tempfail-rcpt"),
            Self::Flaky(n) => write!(f, "flaky-{n}"),
            Self::RejectRcpt => f.write_str("reject-rcpt"),
            Self::RejectData => f.write_str("reject-data"),
            Self::TempfailData => f.write_str("tempfail-data"),
            Self::SlowData(delay) => write!(f, "slow-data-{}", delay.as_millis()),
            Self::DropAfterData => f.write_str("drop-after-data"),
            Self::DropBeforeData => f.write_str("drop-before-data"),
            Self::Busy(code, n) => write!(f, "busy-{code}-{n}"),
        }
    }
}

impl FromStr for Fault {
    type Err = UnknownFault;

    fn from_str(tag: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownFault(tag.to_owned());
        let fault = match tag {
            "tempfail-rcpt" => Self::TempfailRcpt,
            "reject-rcpt" => Self::RejectRcpt,
            "reject-data" => Self::RejectData,
            "tempfail-data" => Self::TempfailData,
            "drop-after-data" => Self::DropAfterData,
            "drop-before-data" => Self::DropBeforeData,
            _ => {
                if let Some(n) = tag.strip_prefix("flaky-") {
                    Self::Flaky(n.parse().map_err(|_| unknown())?)
                } else if let Some(rest) = tag.strip_prefix("busy-") {
                    let (code, n) = rest.split_once('-').ok_or_else(unknown)?;
                    let code = code
                        .parse()
                        .ok()
                        .filter(|code| matches!(code, 421 | 451 | 454))
                        .ok_or_else(unknown)?;
                    Self::Busy(code, n.parse().map_err(|_| unknown())?)
                } else if let Some(ms) = tag.strip_prefix("slow-data-") {
                    Self::SlowData(Duration::from_millis(ms.parse().map_err(|_| unknown())?))
                } else {
                    return Err(unknown());
                }
            }
        };
        Ok(fault)
    }
}

/// A tag that names no [`Fault`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownFault(pub String);

impl fmt::Display for UnknownFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown SMTP fault tag {:?}", self.0)
    }
}

impl Error for UnknownFault {}

/// One message whose data fully arrived at the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// The MAIL FROM path, without angle brackets (empty for `<>`).
    pub mail_from: String,
    /// The parameters after the MAIL FROM path (`SMTPUTF8`,
    /// `BODY=8BITMIME`), as sent.
    pub mail_parameters: Vec<String>,
    /// The recipients the server accepted, in RCPT order.
    pub rcpt_to: Vec<String>,
    /// The message as sent after DATA: dot-stuffing undone, the final `.`
    /// line removed, line endings as the client sent them.
    pub data: Vec<u8>,
    /// The same bytes exactly as they crossed the wire, dot-stuffing
    /// included (the final `.` line removed), for checks of what a strict
    /// relay would see: line lengths, bare CR or LF, stuffing.
    pub wire: Vec<u8>,
}

impl ReceivedMail {
    /// The first header called `name` (compared case-insensitively), with
    /// folded continuation lines joined back (RFC 5322 unfolding) and outer
    /// whitespace trimmed. Encoded words are left as they are.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = String::from_utf8_lossy(self.split().0);
        let mut value: Option<String> = None;
        for line in head.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some(value) = value.as_mut() {
                    value.push_str(line);
                }
                continue;
            }
            if value.is_some() {
                break;
            }
            if let Some((field, rest)) = line.split_once(':')
                && field.trim().eq_ignore_ascii_case(name)
            {
                value = Some(rest.to_owned());
            }
        }
        value.map(|value| value.trim().to_owned())
    }

    /// Everything after the blank line that ends the headers, as text (not
    /// MIME-decoded).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(self.split().1).into_owned()
    }

    fn split(&self) -> (&[u8], &[u8]) {
        for separator in [&b"\r\n\r\n"[..], b"\n\n"] {
            if let Some(at) = self
                .data
                .windows(separator.len())
                .position(|window| window == separator)
            {
                return (&self.data[..at], &self.data[at + separator.len()..]);
            }
        }
        (&self.data, &[])
    }
}

/// What happened to a message whose data fully arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailEvent {
    /// The server is about to reply 250: the message is delivered.
    Accepted,
    /// The server is about to close the connection without a reply
    /// ([`Fault::DropAfterData`]): the client cannot know it was delivered.
    Cut,
}

impl MailEvent {
    /// `"accepted"` or `"cut"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Cut => "cut",
        }
    }
}

type Observer = Box<dyn Fn(MailEvent, &ReceivedMail) -> io::Result<()> + Send + Sync>;

/// State shared by the server handle and its session tasks.
struct Shared {
    record: Mutex<Record>,
    /// Woken whenever a message is recorded, for the `wait_for_*` helpers.
    changed: Notify,
    observer: Option<Observer>,
}

#[derive(Debug, Default)]
struct Record {
    accepted: Vec<ReceivedMail>,
    cut: Vec<ReceivedMail>,
    rcpt_attempts: HashMap<String, usize>,
    default_fault: Option<Fault>,
    /// Whether EHLO offers `SMTPUTF8` and `8BITMIME` (it does by default).
    without_utf8: bool,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("record", &self.record)
            .field("observer", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Record> {
        // A test that panicked while a session held the lock must not hide
        // the record from the test's other assertions.
        self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records an accepted message; the observer runs first so that, if it
    /// fails, the client is refused rather than told a lie.
    fn accept(&self, mail: ReceivedMail) -> io::Result<()> {
        if let Some(observer) = &self.observer {
            observer(MailEvent::Accepted, &mail)?;
        }
        self.lock().accepted.push(mail);
        self.changed.notify_waiters();
        Ok(())
    }

    fn cut(&self, mail: ReceivedMail) {
        if let Some(observer) = &self.observer
            && let Err(err) = observer(MailEvent::Cut, &mail)
        {
            tracing::error!(%err, "SMTP test server could not record a cut message");
        }
        self.lock().cut.push(mail);
        self.changed.notify_waiters();
    }
}

/// A running (or stopped) SMTP server on a loopback port.
///
/// Dropping it stops it, like [`SmtpServer::stop`] but without waiting for
/// the tasks to finish.
#[derive(Debug)]
pub struct SmtpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    /// Dropping or sending on this tells the listener task to shut down.
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl SmtpServer {
    /// Starts a server on a free port of 127.0.0.1.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound.
    pub async fn start() -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind the SMTP test server on 127.0.0.1:0")
    }

    /// Starts a server on `addr`, for example the address of a server that
    /// was stopped, to bring it back with an empty record.
    pub async fn start_on(addr: SocketAddr) -> io::Result<Self> {
        Self::launch(addr, None).await
    }

    /// Starts a server on `addr` that calls `observer` for every message
    /// whose data arrived, before the client hears the outcome.
    ///
    /// If the observer fails for an accepted message, the client gets a 451
    /// instead of 250 and the message is not recorded, so "the client saw 250"
    /// always implies "the observer saw the message". The observer runs on the
    /// session task, so it should be quick.
    pub async fn start_with_observer(
        addr: SocketAddr,
        observer: impl Fn(MailEvent, &ReceivedMail) -> io::Result<()> + Send + Sync + 'static,
    ) -> io::Result<Self> {
        Self::launch(addr, Some(Box::new(observer))).await
    }

    async fn launch(addr: SocketAddr, observer: Option<Observer>) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            record: Mutex::default(),
            changed: Notify::new(),
            observer,
        });
        let mut server = Self {
            addr,
            shared,
            running: None,
        };
        server.listen().await?;
        Ok(server)
    }

    async fn listen(&mut self) -> io::Result<()> {
        let listener = TcpListener::bind(self.addr).await?;
        // Port 0 becomes the real port here, so restart() binds the same one.
        self.addr = listener.local_addr()?;
        let (shutdown, stop) = oneshot::channel();
        let task = tokio::spawn(serve(listener, Arc::clone(&self.shared), stop));
        self.running = Some(Running { shutdown, task });
        Ok(())
    }

    /// Stops accepting connections and closes the open ones; returns once
    /// the port is closed, so clients then see "connection refused".
    pub async fn stop(&mut self) {
        if let Some(Running { shutdown, task }) = self.running.take() {
            drop(shutdown);
            if let Err(err) = task.await
                && err.is_panic()
            {
                std::panic::resume_unwind(err.into_panic());
            }
        }
    }

    /// Stops the server if it runs, then listens again on the same address,
    /// keeping everything recorded so far and the default fault.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.stop().await;
        self.listen().await
    }

    /// Whether the server is listening (it is, unless stopped).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `smtp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// Applies `fault` to every recipient without a fault tag, from the next
    /// RCPT on; `None` makes untagged recipients healthy again.
    pub fn set_default_fault(&self, fault: Option<Fault>) {
        self.shared.lock().default_fault = fault;
    }

    /// Makes later EHLO replies offer neither `SMTPUTF8` nor `8BITMIME`, like
    /// an old or strict server; it then refuses a MAIL with either parameter
    /// (`555`) and a non-ASCII path (`553 5.6.7`).
    pub fn set_without_utf8(&self, without: bool) {
        self.shared.lock().without_utf8 = without;
    }

    /// The messages accepted so far (replied 250 after DATA), oldest first.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.shared.lock().accepted.clone()
    }

    /// The messages whose data fully arrived but whose reply was withheld
    /// because the connection was cut on purpose, oldest first.
    pub fn cut_messages(&self) -> Vec<ReceivedMail> {
        self.shared.lock().cut.clone()
    }

    /// How many RCPT commands named exactly `rcpt`, refused ones included.
    pub fn attempts_for(&self, rcpt: &str) -> usize {
        self.shared
            .lock()
            .rcpt_attempts
            .get(rcpt)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until at least `n` messages were accepted and returns all of
    /// them.
    ///
    /// # Panics
    ///
    /// If fewer than `n` arrived within `timeout`.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        self.wait_for(n, timeout, "accepted", |record| &record.accepted)
            .await
    }

    /// Waits until at least `n` messages were cut and returns all of them.
    ///
    /// # Panics
    ///
    /// If fewer than `n` were cut within `timeout`.
    pub async fn wait_for_cut_messages(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        self.wait_for(n, timeout, "cut", |record| &record.cut).await
    }

    async fn wait_for(
        &self,
        n: usize,
        timeout: Duration,
        what: &str,
        list: fn(&Record) -> &Vec<ReceivedMail>,
    ) -> Vec<ReceivedMail> {
        let deadline = Instant::now() + timeout;
        loop {
            // Registering before looking means a message recorded between
            // the look and the wait still wakes us.
            let mut changed = pin!(self.shared.changed.notified());
            changed.as_mut().enable();
            {
                let record = self.shared.lock();
                if list(&record).len() >= n {
                    return list(&record).clone();
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let got = list(&self.shared.lock()).len();
                panic!(
                    "SMTP test server {}: expected {n} {what} message(s) within {timeout:?}, got {got}",
                    self.addr
                );
            }
        }
    }
}

/// The listener task: accepts until told to stop, then closes every session.
async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    // Sessions live in a JoinSet so that stopping the server can end them
    // all, which is what makes a stopped server look down to its clients.
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    sessions.spawn(Session::new(stream, Arc::clone(&shared)).run());
                }
                Err(err) => {
                    tracing::warn!(%err, "SMTP test server failed to accept");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(joined) = sessions.join_next(), if !sessions.is_empty() => {
                if let Err(err) = joined {
                    tracing::error!(%err, "SMTP test session failed");
                }
            }
        }
    }
    drop(listener);
    sessions.shutdown().await;
}

/// Whether a session goes on after a command.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

#[derive(Debug)]
struct Envelope {
    mail_from: String,
    mail_parameters: Vec<String>,
    /// Accepted recipients with the fault each asked for.
    rcpts: Vec<(String, Option<Fault>)>,
}

/// One client connection.
#[derive(Debug)]
struct Session {
    conn: BufReader<TcpStream>,
    shared: Arc<Shared>,
    greeted: bool,
    /// Whether this session's EHLO offered `SMTPUTF8` and `8BITMIME`.
    utf8: bool,
    envelope: Option<Envelope>,
}

impl Session {
    fn new(stream: TcpStream, shared: Arc<Shared>) -> Self {
        Self {
            conn: BufReader::new(stream),
            shared,
            greeted: false,
            utf8: true,
            envelope: None,
        }
    }

    async fn run(mut self) {
        if let Err(err) = self.converse().await {
            tracing::debug!(%err, "SMTP test session ended with an I/O error");
        }
    }

    async fn converse(&mut self) -> io::Result<()> {
        self.reply("220 sendonce-testkit ESMTP ready").await?;
        let mut line = Vec::new();
        loop {
            line.clear();
            if self.conn.read_until(b'\n', &mut line).await? == 0 {
                return Ok(());
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            let (verb, arg) = text.split_once(' ').unwrap_or((text, ""));
            if self.command(verb, arg.trim()).await? == Flow::Close {
                return Ok(());
            }
        }
    }

    async fn command(&mut self, verb: &str, arg: &str) -> io::Result<Flow> {
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" | "HELO" if arg.is_empty() => {
                self.reply("501 5.5.4 a domain is required").await?;
            }
            "EHLO" => {
                self.hello();
                let utf8 = if self.utf8 {
                    "250-8BITMIME\r\n250-SMTPUTF8\r\n"
                } else {
                    ""
                };
                let reply = format!(
                    "250-sendonce-testkit greets {arg}\r\n\
                     250-PIPELINING\r\n\
                     {utf8}\
                     250 SIZE {MAX_MESSAGE_BYTES}"
                );
                self.reply(&reply).await?;
            }
            "HELO" => {
                self.hello();
                self.reply("250 sendonce-testkit").await?;
            }
            "MAIL" => self.mail(arg).await?,
            "RCPT" => return self.rcpt(arg).await,
            "DATA" => return self.data().await,
            "RSET" => {
                self.envelope = None;
                self.reply("250 2.0.0 OK").await?;
            }
            "NOOP" => self.reply("250 2.0.0 OK").await?,
            "QUIT" => {
                self.reply("221 2.0.0 bye").await?;
                return Ok(Flow::Close);
            }
            _ => self.reply("500 5.5.2 command not recognized").await?,
        }
        Ok(Flow::Continue)
    }

    fn hello(&mut self) {
        self.greeted = true;
        self.envelope = None;
        self.utf8 = !self.shared.lock().without_utf8;
    }

    async fn mail(&mut self, arg: &str) -> io::Result<()> {
        if !self.greeted {
            return self.reply("503 5.5.1 send EHLO or HELO first").await;
        }
        if self.envelope.is_some() {
            return self.reply("503 5.5.1 nested MAIL command").await;
        }
        let Some(from) = path_argument(arg, "FROM:") else {
            return self.reply("501 5.5.4 syntax: MAIL FROM:<address>").await;
        };
        let parameters: Vec<String> = arg
            .split_once('>')
            .map(|(_, rest)| rest.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        if !self.utf8 {
            let extended = |p: &String| {
                p.eq_ignore_ascii_case("SMTPUTF8") || p.eq_ignore_ascii_case("BODY=8BITMIME")
            };
            if parameters.iter().any(extended) {
                return self.reply("555 5.5.4 parameter not offered").await;
            }
            if !from.is_ascii() {
                return self.reply("553 5.6.7 non-ASCII address").await;
            }
        }
        self.envelope = Some(Envelope {
            mail_from: from.to_owned(),
            mail_parameters: parameters,
            rcpts: Vec::new(),
        });
        self.reply("250 2.1.0 OK").await
    }

    async fn rcpt(&mut self, arg: &str) -> io::Result<Flow> {
        if self.envelope.is_none() {
            self.reply("503 5.5.1 send MAIL first").await?;
            return Ok(Flow::Continue);
        }
        let Some(rcpt) = path_argument(arg, "TO:").filter(|rcpt| !rcpt.is_empty()) else {
            self.reply("501 5.5.4 syntax: RCPT TO:<address>").await?;
            return Ok(Flow::Continue);
        };
        let smtputf8 = self.envelope.as_ref().is_some_and(|envelope| {
            envelope
                .mail_parameters
                .iter()
                .any(|p| p.eq_ignore_ascii_case("SMTPUTF8"))
        });
        if !rcpt.is_ascii() && !smtputf8 {
            self.reply("553 5.6.7 non-ASCII address without SMTPUTF8")
                .await?;
            return Ok(Flow::Continue);
        }
        let (attempt, fault) = {
            let mut record = self.shared.lock();
            let attempts = record.rcpt_attempts.entry(rcpt.to_owned()).or_default();
            *attempts += 1;
            let attempt = *attempts;
            (attempt, Fault::for_address(rcpt).or(record.default_fault))
        };
        match fault {
            Some(Fault::TempfailRcpt) => self.reply("451 4.3.0 try again later").await?,
            Some(Fault::Flaky(n)) if attempt <= n => {
                self.reply("451 4.3.0 try again later").await?;
            }
            Some(Fault::RejectRcpt) => self.reply("550 5.1.1 no such user").await?,
            Some(Fault::DropBeforeData) => return Ok(Flow::Close),
            Some(Fault::Busy(421, n)) if attempt <= n => {
                self.reply("421 4.7.0 too many connections, closing")
                    .await?;
                return Ok(Flow::Close);
            }
            Some(Fault::Busy(451, n)) if attempt <= n => {
                self.reply("451 4.7.1 rate limit exceeded, try again later")
                    .await?;
            }
            Some(Fault::Busy(_, n)) if attempt <= n => {
                self.reply("454 4.7.0 relay over its sending limit").await?;
            }
            _ => {
                let rcpt = rcpt.to_owned();
                if let Some(envelope) = self.envelope.as_mut() {
                    envelope.rcpts.push((rcpt, fault));
                }
                self.reply("250 2.1.5 OK").await?;
            }
        }
        Ok(Flow::Continue)
    }

    async fn data(&mut self) -> io::Result<Flow> {
        let Some(envelope) = self.envelope.take_if(|envelope| !envelope.rcpts.is_empty()) else {
            self.reply("503 5.5.1 send MAIL and RCPT first").await?;
            return Ok(Flow::Continue);
        };
        self.reply("354 end data with <CR><LF>.<CR><LF>").await?;
        let Some((data, wire)) = self.read_data().await? else {
            return Ok(Flow::Close);
        };
        if data.len() > MAX_MESSAGE_BYTES {
            self.reply("552 5.3.4 message too big").await?;
            return Ok(Flow::Continue);
        }
        // SMTP has one reply per message, so a data-phase fault of any
        // recipient decides for all of them; the first such recipient wins.
        let fault = envelope
            .rcpts
            .iter()
            .find_map(|(_, fault)| fault.filter(|fault| fault.acts_on_data()));
        let mail = ReceivedMail {
            mail_from: envelope.mail_from,
            mail_parameters: envelope.mail_parameters,
            rcpt_to: envelope.rcpts.into_iter().map(|(rcpt, _)| rcpt).collect(),
            data,
            wire,
        };
        match fault {
            Some(Fault::DropAfterData) => {
                self.shared.cut(mail);
                return Ok(Flow::Close);
            }
            Some(Fault::RejectData) => self.reply("554 5.6.0 message rejected").await?,
            Some(Fault::TempfailData) => self.reply("451 4.3.0 try again").await?,
            _ => {
                if let Some(Fault::SlowData(delay)) = fault {
                    tokio::time::sleep(delay).await;
                }
                // Recorded before the reply is written: from here on the
                // server has taken responsibility for the message, even if
                // the client gave up waiting and never reads the 250.
                match self.shared.accept(mail) {
                    Ok(()) => self.reply("250 2.0.0 OK queued").await?,
                    Err(err) => {
                        tracing::error!(%err, "SMTP test server could not record a message");
                        self.reply("451 4.3.0 local error recording the message")
                            .await?;
                    }
                }
            }
        }
        Ok(Flow::Continue)
    }

    /// Reads the message after 354 up to the lone `.` line, unstuffed and
    /// as on the wire; `None` if the client hung up first.
    async fn read_data(&mut self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        let mut data = Vec::new();
        let mut wire = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            if self.conn.read_until(b'\n', &mut line).await? == 0 {
                return Ok(None);
            }
            if line == b".\r\n" || line == b".\n" {
                return Ok(Some((data, wire)));
            }
            // Past the limit the rest is still read, so the session stays in
            // step with the client, but not kept.
            if data.len() <= MAX_MESSAGE_BYTES {
                // Clients double a leading dot (RFC 5321 section 4.5.2).
                data.extend_from_slice(line.strip_prefix(b".").unwrap_or(&line));
                wire.extend_from_slice(&line);
            }
        }
    }

    async fn reply(&mut self, reply: &str) -> io::Result<()> {
        let stream = self.conn.get_mut();
        stream.write_all(format!("{reply}\r\n").as_bytes()).await?;
        stream.flush().await
    }
}

/// The path in `FROM:<path> PARAMS` or `TO:<path> PARAMS`, without brackets.
fn path_argument<'a>(arg: &'a str, keyword: &str) -> Option<&'a str> {
    let rest = arg
        .get(..keyword.len())
        .filter(|prefix| prefix.eq_ignore_ascii_case(keyword))
        .and(arg.get(keyword.len()..))?;
    let (path, _parameters) = rest.trim_start().strip_prefix('<')?.split_once('>')?;
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_tags_round_trip() {
        let faults = [
            Fault::TempfailRcpt,
            Fault::Flaky(3),
            Fault::RejectRcpt,
            Fault::RejectData,
            Fault::TempfailData,
            Fault::SlowData(Duration::from_millis(250)),
            Fault::DropAfterData,
            Fault::DropBeforeData,
            Fault::Busy(421, 1),
            Fault::Busy(451, 2),
            Fault::Busy(454, 3),
        ];
        for fault in faults {
            assert_eq!(fault.to_string().parse::<Fault>(), Ok(fault));
        }
        assert!("flaky-x".parse::<Fault>().is_err());
        assert!("busy-450-1".parse::<Fault>().is_err());
        assert!("busy-421".parse::<Fault>().is_err());
        assert!("nonsense".parse::<Fault>().is_err());
    }

    #[test]
    fn faults_come_from_the_local_part() {
        assert_eq!(
            Fault::for_address("alice+flaky-2@example.com"),
            Some(Fault::Flaky(2))
        );
        assert_eq!(
            Fault::for_address("alice+list+reject-rcpt@example.com"),
            Some(Fault::RejectRcpt)
        );
        assert_eq!(Fault::for_address("alice+list@example.com"), None);
        assert_eq!(Fault::for_address("alice@tempfail-rcpt.example"), None);
    }

    #[test]
    fn headers_unfold_and_body_follows_the_blank_line() {
        let data = b"Subject: a long\r\n\tsubject\r\nmessage-id: <1@x>\r\n\r\nbody\r\n".to_vec();
        let mail = ReceivedMail {
            mail_from: String::new(),
            mail_parameters: Vec::new(),
            rcpt_to: Vec::new(),
            wire: data.clone(),
            data,
        };
        assert_eq!(mail.header("SUBJECT").as_deref(), Some("a long\tsubject"));
        assert_eq!(mail.header("Message-ID").as_deref(), Some("<1@x>"));
        assert_eq!(mail.header("To"), None);
        assert_eq!(mail.body_text(), "body\r\n");
    }

    #[test]
    fn paths_parse_with_parameters() {
        assert_eq!(
            path_argument("FROM:<a@b> BODY=8BITMIME", "FROM:"),
            Some("a@b")
        );
        assert_eq!(path_argument("from: <>", "FROM:"), Some(""));
        assert_eq!(path_argument("TO:a@b", "TO:"), None);
    }
}
