//! The SMTP side: a pool of lettre's low-level connections, driven one
//! command at a time so the worker knows at which stage a failure happened.
//!
//! lettre's high-level `AsyncSmtpTransport::send` reports an error without
//! saying whether the message data had gone out. Here `MAIL`, `RCPT` and
//! `DATA` are separate commands; the caller's `before_data` hook runs between
//! the server's `354` and the data, and records that the data is about to go
//! out. A failure before that point is safe to retry; a failure after it,
//! without a definite reply, is the ambiguous window.
//!
//! `SMTP_URL` may name several relays, each with its own pool. A relay that
//! cannot be reached, or says it is over its limit, before the `354` is
//! skipped for `SMTP_RELAY_COOLDOWN_MS` and the send moves on to the next
//! one in the same attempt: nothing was sent, and `before_data` has not run,
//! so the claim and its fence carry over untouched. From the `354` on, the
//! send stays with its relay.
//!
//! Messages are DKIM-signed with the key of their `From` domain when
//! `DKIM_KEYS_DIR` has one (the `dkim` module).

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use deadpool::managed::{Object, Pool, PoolError};
use lettre::Message;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use sendonce_shared::domain::{EmailAddress, Task};
use sendonce_shared::store::RefusedRecipient;

pub use connection::{ConnectError, SmtpManager, SmtpSettings, TlsMode};
pub use dkim::{DkimKeyError, DkimKeys, parse_selector};
use relays::says_relay_is_busy;
pub use relays::{RelayChooser, RelayPolicy, SmtpRelays};
use wire::redact;

use crate::telemetry::{self, Unavailable};

mod connection;
mod dkim;
mod message;
mod relays;
mod wire;

/// A send that went through: the server's reply to the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// The server accepted the message (`250` after the data).
    Accepted {
        /// The reply, e.g. `250 2.0.0 Ok: queued as ABC`.
        reply: String,
        /// Recipients it refused for good at `RCPT` (the message went to
        /// the others).
        refused: Vec<RefusedRecipient>,
    },
    /// `before_data` said another holder owns this attempt; nothing was sent.
    Fenced,
}

/// A send that did not go through.
#[derive(Debug, thiserror::Error)]
pub enum SendError<E> {
    /// Refused or failed before the data went out, in a way that may pass
    /// later (4xx, connection refused or reset, timeout).
    #[error("transient SMTP failure: {error}")]
    Transient {
        /// What happened.
        error: String,
        /// The server's reply, if it gave one.
        reply: Option<String>,
    },
    /// Every relay tried was unavailable before the data, and at least one
    /// of them said it is over its limit (`421`, `451 4.7.x`, `454`):
    /// nothing was sent, and the fault is the relays', not the message's.
    #[error("SMTP relays over their limits: {error}")]
    RelayBusy {
        /// What happened at the last relay that said so.
        error: String,
        /// Its reply.
        reply: Option<String>,
        /// How long until a relay's cooldown ends (zero if one has).
        retry_after: Duration,
    },
    /// Refused for good (5xx, an address the server rejects).
    #[error("permanent SMTP failure: {error}")]
    Permanent {
        /// What happened.
        error: String,
        /// The server's reply, if it gave one.
        reply: Option<String>,
    },
    /// The data went out but no reply was read: the server may or may not
    /// have accepted the message.
    #[error("outcome unknown after the data went out: {error}")]
    Uncertain {
        /// What happened.
        error: String,
    },
    /// `before_data` failed; nothing was sent.
    #[error("could not record that the data is going out")]
    Hook(#[source] E),
}

/// Why a transaction did not reach the server's `354`.
enum NotOpened<E> {
    /// The relay said it is over its limit; another relay may take it.
    Busy {
        error: String,
        reply: Option<String>,
    },
    /// Anything else: the send's outcome.
    Failed(SendError<E>),
}

/// One relay of `SMTP_URL` and its pooled connections.
struct Relay {
    /// `host:port`, for logs and metrics.
    name: String,
    pool: Pool<SmtpManager>,
}

/// How the mailer uses the relays of `SMTP_URL`.
#[derive(Debug, Clone, Copy)]
pub struct RelayOptions {
    /// Which relay a send tries first.
    pub policy: RelayPolicy,
    /// Pooled connections per relay.
    pub max_connections: usize,
    /// How long a relay that could not be reached, or said it is over its
    /// limit, is skipped.
    pub cooldown: Duration,
}

/// Sends tasks over pooled SMTP connections to one or more relays.
pub struct Mailer {
    relays: Vec<Relay>,
    chooser: RelayChooser,
    timeout: Duration,
    default_from: EmailAddress,
    dkim: DkimKeys,
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let relays: Vec<_> = self
            .relays
            .iter()
            .map(|r| (r.name.as_str(), r.pool.status()))
            .collect();
        f.debug_struct("Mailer")
            .field("relays", &relays)
            .field("chooser", &self.chooser)
            .field("timeout", &self.timeout)
            .field("dkim", &self.dkim)
            .finish()
    }
}

impl Mailer {
    /// The mailer `config` describes: its relays, policy, per-relay pools,
    /// cooldown, default sender, step timeout and DKIM keys. Logs which
    /// sender domains sign.
    pub fn from_config(config: &crate::config::WorkerConfig) -> anyhow::Result<Self> {
        let dkim = match &config.dkim_keys_dir {
            Some(dir) => DkimKeys::load(dir, &config.dkim_selector)
                .context("failed to load the keys of DKIM_KEYS_DIR")?,
            None => DkimKeys::none(),
        };
        if let (Some(dir), true) = (&config.dkim_keys_dir, dkim.is_empty()) {
            tracing::warn!(
                dkim_keys_dir = %dir.display(),
                "DKIM: DKIM_KEYS_DIR holds no key; no sender domain signs"
            );
        } else if dkim.is_empty() {
            tracing::info!("DKIM: DKIM_KEYS_DIR is unset; no sender domain signs");
        } else {
            let domains = dkim.signers().collect::<Vec<_>>().join(", ");
            tracing::info!(
                %domains,
                "DKIM: these sender domains sign; any other goes unsigned"
            );
        }
        Self::new(
            &config.smtp,
            RelayOptions {
                policy: config.smtp_relay_policy,
                max_connections: config.smtp_relay_max_connections(),
                cooldown: config.smtp_relay_cooldown,
            },
            config.mail_from.clone(),
            config.smtp_timeout,
            dkim,
        )
    }

    /// A mailer with a pool of up to `options.max_connections` connections
    /// per relay; `timeout` bounds the connect and every step of a send;
    /// messages from a domain `dkim` has a key for are signed.
    pub fn new(
        relays: &SmtpRelays,
        options: RelayOptions,
        default_from: EmailAddress,
        timeout: Duration,
        dkim: DkimKeys,
    ) -> anyhow::Result<Self> {
        let relays = relays
            .iter()
            .map(|settings| {
                let pool = Pool::builder(SmtpManager {
                    settings: settings.clone(),
                    timeout,
                })
                .max_size(options.max_connections)
                .runtime(deadpool::Runtime::Tokio1)
                .create_timeout(Some(timeout))
                .build()?;
                let name = settings.name();
                telemetry::relay_registered(&name);
                Ok(Relay { name, pool })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            chooser: RelayChooser::new(relays.len(), options.policy, options.cooldown),
            relays,
            timeout,
            default_from,
            dkim,
        })
    }

    /// Builds the RFC 5322 message for `task`, DKIM-signed if its `From`
    /// domain has a key: the same bytes on every attempt (the `message`
    /// module), but for the signature's `t=` and `b=`. The recipients whose
    /// suppression keys are in `leave_out` are left out of the envelope.
    pub fn build_message(
        &self,
        task: &Task,
        leave_out: &[String],
    ) -> Result<Message, lettre::error::Error> {
        message::build(task, &self.default_from, &self.dkim, leave_out)
    }

    /// Sends `message`, calling `before_data` after the server's `354` and
    /// before the data. The relays are tried in the chooser's order until
    /// one gives a `354`; the first failure that is not about the relay
    /// (a refused recipient, say) ends the send. A connection that saw any
    /// failure is discarded.
    pub async fn send<E>(
        &self,
        message: &Message,
        before_data: impl AsyncFnOnce() -> Result<bool, E>,
    ) -> Result<Delivered, SendError<E>> {
        let body = message.formatted();
        let mut busy = None;
        let mut refused = None;
        for i in self.chooser.candidates(Instant::now()) {
            let relay = &self.relays[i];
            let mut conn = match relay.pool.get().await {
                Ok(conn) => conn,
                Err(e) => {
                    let error = format!("could not connect to {}: {e}", relay.name);
                    match &e {
                        PoolError::Backend(ConnectError::Smtp(smtp))
                            if says_relay_is_busy(smtp) =>
                        {
                            self.unavailable(i, Unavailable::Busy, &error);
                            busy = Some((error, Some(redact(&smtp.to_string()))));
                        }
                        _ => {
                            self.unavailable(i, Unavailable::Unreachable, &error);
                            refused = Some(error);
                        }
                    }
                    continue;
                }
            };
            match self.open(&mut conn, message, &body).await {
                Ok(refused) => {
                    self.chooser.recovered(i);
                    let result = self
                        .transmit(i, &mut conn, &body, refused, before_data)
                        .await;
                    if !matches!(result, Ok(Delivered::Accepted { .. })) {
                        // Mid-transaction or broken: never hand it to the next task.
                        drop(Object::take(conn));
                    }
                    return result;
                }
                Err(NotOpened::Busy { error, reply }) => {
                    drop(Object::take(conn));
                    self.unavailable(i, Unavailable::Busy, &error);
                    busy = Some((error, reply));
                }
                Err(NotOpened::Failed(e)) => {
                    drop(Object::take(conn));
                    return Err(e);
                }
            }
        }
        Err(match (busy, refused) {
            (Some((error, reply)), _) => SendError::RelayBusy {
                error,
                reply,
                retry_after: self.chooser.next_available_in(Instant::now()),
            },
            (None, error) => SendError::Transient {
                error: error.unwrap_or_else(|| "no SMTP relay to try".into()),
                reply: None,
            },
        })
    }

    /// Relay `i` could not be reached or is over its limit: other relays
    /// go first until its cooldown ends.
    fn unavailable(&self, i: usize, cause: Unavailable, error: &str) {
        let relay = &self.relays[i];
        self.chooser.cool_down(i, Instant::now());
        telemetry::relay_unavailable(&relay.name, cause);
        tracing::warn!(
            relay = %relay.name,
            cause = cause.as_str(),
            %error,
            "SMTP relay unavailable: the other relays go first until its cooldown ends"
        );
    }

    /// `MAIL`, `RCPT` and `DATA`, up to the server's `354`. A recipient
    /// refused for good (5xx) is left out and returned, as long as another
    /// one is accepted; with none accepted, the first refusal fails the
    /// send as a single recipient's always did. Any other failure, a
    /// temporary refusal of one recipient included, ends the attempt with
    /// nothing sent (the message must reach all its recipients in one
    /// transaction, or none).
    async fn open<E>(
        &self,
        conn: &mut AsyncSmtpConnection,
        message: &Message,
        body: &[u8],
    ) -> Result<Vec<RefusedRecipient>, NotOpened<E>> {
        let envelope = message.envelope();
        // `build_message` leaves nothing but addresses with a non-ASCII local
        // part outside ASCII: lettre encodes non-ASCII display names and
        // subjects as encoded words and bodies as quoted-printable or
        // base64, and IDN domains are A-labels by then. Such an address, in
        // the envelope or in a header, is what needs SMTPUTF8 (RFC 6531).
        let mut params = Vec::new();
        if !body.is_ascii() {
            let server = conn.server_info();
            if !server.supports_feature(Extension::SmtpUtfEight) {
                return Err(NotOpened::Failed(SendError::Permanent {
                    error: "an address has a non-ASCII local part, which needs SMTPUTF8, \
                            and the SMTP server does not offer SMTPUTF8"
                        .into(),
                    reply: None,
                }));
            }
            params.push(MailParameter::SmtpUtfEight);
            if server.supports_feature(Extension::EightBitMime) {
                params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
            }
        }
        self.step(conn.command(Mail::new(envelope.from().cloned(), params)))
            .await
            .map_err(not_opened)?;
        let mut refused = Vec::new();
        let mut first_refusal = None;
        for rcpt in envelope.to() {
            match self
                .step(conn.command(Rcpt::new(rcpt.clone(), vec![])))
                .await
            {
                Ok(_) => {}
                Err(Failure::Smtp(e)) if e.is_permanent() && !says_relay_is_busy(&e) => {
                    refused.push(RefusedRecipient {
                        recipient: rcpt.to_string(),
                        reply: redact(&e.to_string()),
                    });
                    first_refusal.get_or_insert(e);
                }
                Err(other) => return Err(not_opened(other)),
            }
        }
        if refused.len() == envelope.to().len()
            && let Some(e) = first_refusal
        {
            return Err(not_opened(Failure::Smtp(e)));
        }
        self.step(conn.command(Data)).await.map_err(not_opened)?;
        Ok(refused)
    }

    /// After the `354`: records that the data is going out, then sends it
    /// over relay `relay` and reads the reply.
    async fn transmit<E>(
        &self,
        relay: usize,
        conn: &mut AsyncSmtpConnection,
        body: &[u8],
        refused: Vec<RefusedRecipient>,
        before_data: impl AsyncFnOnce() -> Result<bool, E>,
    ) -> Result<Delivered, SendError<E>> {
        if !before_data().await.map_err(SendError::Hook)? {
            return Ok(Delivered::Fenced);
        }
        match self.step(conn.message(body)).await {
            Ok(response) => {
                telemetry::relay_sent(&self.relays[relay].name);
                Ok(Delivered::Accepted {
                    reply: reply_text(&response),
                    refused,
                })
            }
            // A definite refusal of the data: not delivered, so retried as
            // any 4xx; if it says the relay is over its limit, later sends
            // also prefer the other relays for a while.
            Err(Failure::Smtp(e)) if e.is_transient() => {
                let error = redact(&e.to_string());
                if says_relay_is_busy(&e) {
                    self.unavailable(relay, Unavailable::Busy, &error);
                }
                Err(SendError::Transient {
                    reply: Some(error.clone()),
                    error,
                })
            }
            Err(Failure::Smtp(e)) if e.is_permanent() => Err(SendError::Permanent {
                reply: Some(redact(&e.to_string())),
                error: redact(&e.to_string()),
            }),
            Err(other) => Err(SendError::Uncertain {
                error: other.to_string(),
            }),
        }
    }

    async fn step<T>(
        &self,
        fut: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Failure::Smtp(e)),
            Err(_) => Err(Failure::Timeout(self.timeout)),
        }
    }
}

/// A failed SMTP step.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Smtp(lettre::transport::smtp::Error),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
}

fn not_opened<E>(failure: Failure) -> NotOpened<E> {
    match failure {
        Failure::Smtp(e) if says_relay_is_busy(&e) => NotOpened::Busy {
            reply: Some(redact(&e.to_string())),
            error: redact(&e.to_string()),
        },
        failure => NotOpened::Failed(before_data_error(failure)),
    }
}

fn before_data_error<E>(failure: Failure) -> SendError<E> {
    match failure {
        Failure::Smtp(e) if e.is_permanent() || e.is_client() => SendError::Permanent {
            reply: e.is_permanent().then(|| redact(&e.to_string())),
            error: redact(&e.to_string()),
        },
        Failure::Smtp(e) => SendError::Transient {
            reply: (e.is_transient()).then(|| redact(&e.to_string())),
            error: redact(&e.to_string()),
        },
        timeout @ Failure::Timeout(_) => SendError::Transient {
            error: timeout.to_string(),
            reply: None,
        },
    }
}

fn reply_text(response: &Response) -> String {
    let lines: Vec<&str> = response.message().collect();
    redact(&format!("{} {}", response.code(), lines.join(" ")))
}
