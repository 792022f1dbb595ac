//! Domain types. Each one is parsed once, at the edge, and cannot hold an
//! invalid value afterwards; the worker re-parses what it reads back from
//! Redis and Postgres through the same constructors.
//!
//! # Layout
//!
//! This file holds the values of one field each (address, key, subject,
//! body) and the email and task they make up; the maps a request may carry
//! have their own modules: [`headers`] (the headers a client adds to its
//! message) and [`metadata`] (its own labels, never sent), as do the files
//! it sends with it, [`attachments`], and its [`priority`].

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use lettre::message::{Mailbox, Mailboxes};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

pub use attachments::{Attachment, Attachments, InvalidAttachment, RawAttachment};
pub use headers::CustomHeaders;
pub use metadata::Metadata;
pub use priority::Priority;

pub mod attachments;
pub mod headers;
pub mod metadata;
pub mod priority;
pub mod webhooks;

/// Why a value was refused. The field name lives in the caller, which knows
/// which field it was parsing; this only says what was wrong with the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidValue {
    /// The value was empty where something is required.
    #[error("must not be empty")]
    Empty,
    /// The value is longer than the protocol or our storage allows.
    #[error("must be at most {max} bytes")]
    TooLong {
        /// The limit, in bytes.
        max: usize,
    },
    /// Text for people to read is longer than allowed.
    #[error("must be at most {max} characters")]
    TooManyChars {
        /// The limit, in characters.
        max: usize,
    },
    /// The value holds CR, LF, NUL or another control character, which would
    /// let it break out of the header it ends up in.
    #[error("must not contain control characters (CR, LF, NUL, ...)")]
    ControlCharacter,
    /// An idempotency key holds something other than printable ASCII.
    #[error("must be printable ASCII (0x21 to 0x7E, or space)")]
    NotPrintableAscii,
    /// Not exactly one RFC 5322 mailbox.
    #[error(
        "must be exactly one email address, e.g. \"Ada <ada@example.com>\" (no lists or groups)"
    )]
    NotOneMailbox,
    /// The mailbox did not parse.
    #[error("is not a valid email address")]
    BadAddress,
    /// Neither a text nor an HTML body was given.
    #[error("needs at least one of `text` or `html`")]
    NoBody,
    /// Not a UUID.
    #[error("is not a UUID")]
    NotUuid,
    /// A character that reorders the text around it (U+202E and its
    /// kin), which can make `invoice\u{202E}fdp.exe` show as a PDF.
    #[error(
        "must not contain bidirectional formatting characters (U+202A to U+202E, U+2066 to U+2069, ...)"
    )]
    BidiFormatting,
    /// A filename holding a quote, a backslash or a slash.
    #[error("must not contain `\"`, `\\` or `/`")]
    FilenameSpecial,
    /// Not an RFC 2045 media type.
    #[error(
        "must be a media type `type/subtype`, optionally with `; name=value` parameters, of printable ASCII (e.g. \"application/pdf\")"
    )]
    NotMediaType,
    /// A media type whose body has a structure of its own.
    #[error("may not be `multipart/*` or `message/*`")]
    CompositeMediaType,
    /// Not standard base64.
    #[error("must be standard base64 (RFC 4648 §4: `A-Z a-z 0-9 + /`, padded with `=`, one line)")]
    NotBase64,
    /// Not a content id sendonce accepts.
    #[error("must be 1 to 100 characters of A-Z, a-z, 0-9, `.`, `_`, `@`, `-`")]
    NotContentId,
}

/// Why a map of names to values ([`CustomHeaders`], [`Metadata`]) was
/// refused. As with [`InvalidValue`], the caller names the field; this
/// names the entry at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidEntry {
    /// More entries than allowed.
    #[error("must hold at most {max} entries, not {given}")]
    TooMany {
        /// The limit.
        max: usize,
        /// How many there were.
        given: usize,
    },
    /// A name that is not one of this map's form; shown escaped and cut
    /// short, since it may hold anything.
    #[error("has the name {name:?}, which is not {expected}")]
    BadName {
        /// The name, at most [`InvalidEntry::SHOWN_CHARS`] characters of it.
        name: String,
        /// What a name must be.
        expected: &'static str,
    },
    /// A header that sendonce writes itself, or that would change who the
    /// message is from or to, its identity, structure or trace.
    #[error(
        "may not set `{0}`: sendonce writes it, or it would change the message's sender, recipients, identity or structure"
    )]
    Reserved(String),
    /// A header outside the allow-list.
    #[error("may not set `{name}`: only {allowed} may be added")]
    NotAllowed {
        /// The header.
        name: String,
        /// The allow-list, in words.
        allowed: &'static str,
    },
    /// The same name twice (for headers, in any case).
    #[error("has `{0}` more than once")]
    Duplicate(String),
    /// A value refused for what it holds.
    #[error("`{name}` {problem}")]
    Value {
        /// Its name.
        name: String,
        /// What is wrong with it.
        problem: InvalidValue,
    },
    /// Names and values together are larger than allowed.
    #[error("must be at most {max} bytes in all (names and values), not {given}")]
    TooLarge {
        /// The limit.
        max: usize,
        /// The size given.
        given: usize,
    },
}

impl InvalidEntry {
    /// How much of a bad name an error shows.
    pub const SHOWN_CHARS: usize = 80;

    /// [`InvalidEntry::BadName`] for `name`, cut short.
    fn bad_name(name: &str, expected: &'static str) -> Self {
        Self::BadName {
            name: name.chars().take(Self::SHOWN_CHARS).collect(),
            expected,
        }
    }
}

/// A job's identity, minted by the API as a UUIDv7 so ids sort by creation
/// time and carry it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(transparent)]
pub struct JobId(Uuid);

impl JobId {
    /// A new, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The underlying UUID, for storage.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// When the job was created, read back from the UUIDv7 timestamp.
    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        let (secs, nanos) = self.0.get_timestamp()?.to_unix();
        DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for JobId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl FromStr for JobId {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| InvalidValue::NotUuid)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The conversions of a validated text newtype (`struct T(String)` with a
/// `parse`): from a `String` through `parse` (serde's `try_from`), back into
/// one (serde's `into`), and, with `display`, printing the text as it is.
macro_rules! text_newtype {
    ($t:ident) => {
        impl TryFrom<String> for $t {
            type Error = InvalidValue;

            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(s)
            }
        }

        impl From<$t> for String {
            fn from(value: $t) -> Self {
                value.0
            }
        }
    };
    ($t:ident, display) => {
        text_newtype!($t);

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_newtype!(IdempotencyKey, display);
text_newtype!(Subject);
text_newtype!(Tenant, display);

/// The client's business key ("welcome:user-42"): 1 to 255 printable ASCII
/// characters. At most one email is ever accepted by SMTP per key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, pattern = "^[ -~]{1,255}$")]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Longest key accepted, in bytes.
    pub const MAX_LEN: usize = 255;

    /// Parses a client-supplied key.
    pub fn parse(s: impl Into<String>) -> Result<Self, InvalidValue> {
        let s = s.into();
        if s.is_empty() {
            return Err(InvalidValue::Empty);
        }
        if s.len() > Self::MAX_LEN {
            return Err(InvalidValue::TooLong { max: Self::MAX_LEN });
        }
        if s.bytes().any(|b| b.is_ascii_control()) {
            return Err(InvalidValue::ControlCharacter);
        }
        if !s.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
            return Err(InvalidValue::NotPrintableAscii);
        }
        Ok(Self(s))
    }

    /// The key used when the client gives none: the job's own id, so the job
    /// is still sent at most once across retries and redeliveries.
    pub fn from_job_id(id: JobId) -> Self {
        Self(id.to_string())
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `Message-ID` for every attempt at this key: a hash, so that any
    /// key (spaces, quotes, `@`) yields a valid msg-id and the key itself is
    /// not disclosed to recipients.
    pub fn message_id(&self, domain: &str) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        format!("<{}@{domain}>", hex::encode(&digest[..16]))
    }

    /// The `n`th candidate MIME boundary for a message at this key (the
    /// mailer takes the first that no part holds): a hash, as the
    /// `Message-ID`, so every attempt writes the same one and the key does
    /// not show through.
    pub fn boundary(&self, n: u32) -> String {
        let mut digest = Sha256::new();
        digest.update(b"sendonce boundary\0");
        digest.update(self.0.as_bytes());
        digest.update(n.to_be_bytes());
        format!("sendonce-{}", hex::encode(&digest.finalize()[..16]))
    }
}

/// Exactly one RFC 5322 mailbox, optionally with a display name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress(Mailbox);

impl EmailAddress {
    /// Longest accepted mailbox text: one header line.
    pub const MAX_LEN: usize = 998;

    /// Parses one mailbox, refusing lists, groups, trailing garbage and
    /// anything that could inject a header.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let trimmed = s.trim();
        if trimmed.is_empty() {
            return Err(InvalidValue::Empty);
        }
        if s.len() > Self::MAX_LEN {
            return Err(InvalidValue::TooLong { max: Self::MAX_LEN });
        }
        if s.chars().any(char::is_control) {
            return Err(InvalidValue::ControlCharacter);
        }
        let mut boxes = Mailboxes::from_str(trimmed)
            .map_err(|_| InvalidValue::BadAddress)?
            .into_iter();
        let (Some(mailbox), None) = (boxes.next(), boxes.next()) else {
            return Err(InvalidValue::NotOneMailbox);
        };
        // lettre's parser stops at the first mailbox and ignores what
        // follows, so check that the whole input was that one mailbox.
        let whole = if trimmed.ends_with('>') {
            trimmed.contains('<')
        } else {
            trimmed == mailbox.email.to_string()
        };
        if !whole {
            return Err(InvalidValue::NotOneMailbox);
        }
        // `"" <a@b>` prints as `a@b` and `" Ada " <a@b>` as `Ada <a@b>`:
        // normalise so the stored form parses back to the same value.
        let name = mailbox
            .name
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty());
        Ok(Self(Mailbox::new(name, mailbox.email)))
    }

    /// The lettre mailbox, for building the message.
    pub fn mailbox(&self) -> &Mailbox {
        &self.0
    }

    /// The domain part, e.g. for the Message-ID.
    pub fn domain(&self) -> &str {
        self.0.email.domain()
    }

    /// The form the suppression list keys this address by: see
    /// [`suppression_key`].
    pub fn suppression_key(&self) -> String {
        suppression_key(self.0.email.as_ref())
    }
}

impl TryFrom<String> for EmailAddress {
    type Error = InvalidValue;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<EmailAddress> for String {
    fn from(a: EmailAddress) -> Self {
        a.0.to_string()
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `to`: one mailbox or more. Stored and fingerprinted as a single string
/// when it holds one (as `to` always was, so tasks and replay fingerprints
/// from before several recipients are unchanged), else as an array.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "OneOrMany")]
pub struct Recipients(Vec<EmailAddress>);

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(EmailAddress),
    Many(Vec<EmailAddress>),
}

impl TryFrom<OneOrMany> for Recipients {
    type Error = InvalidValue;

    fn try_from(v: OneOrMany) -> Result<Self, Self::Error> {
        match v {
            OneOrMany::One(one) => Ok(Self(vec![one])),
            OneOrMany::Many(many) => Self::new(many),
        }
    }
}

impl Serialize for Recipients {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

impl Recipients {
    /// At least one mailbox.
    pub fn new(all: Vec<EmailAddress>) -> Result<Self, InvalidValue> {
        if all.is_empty() {
            return Err(InvalidValue::Empty);
        }
        Ok(Self(all))
    }

    /// The mailboxes, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, EmailAddress> {
        self.0.iter()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never: there is at least one.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<EmailAddress> for Recipients {
    fn from(one: EmailAddress) -> Self {
        Self(vec![one])
    }
}

/// A subject line: at most 998 bytes (RFC 5322's line limit), no control
/// characters, so it can never start a new header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subject(String);

impl Subject {
    /// RFC 5322 line length limit.
    pub const MAX_LEN: usize = 998;

    /// Parses a subject line.
    pub fn parse(s: impl Into<String>) -> Result<Self, InvalidValue> {
        let s = s.into();
        if s.len() > Self::MAX_LEN {
            return Err(InvalidValue::TooLong { max: Self::MAX_LEN });
        }
        if s.chars().any(char::is_control) {
            return Err(InvalidValue::ControlCharacter);
        }
        Ok(Self(s))
    }

    /// The subject as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An operator's note on an action on the dead-letter queue (why an entry
/// was requeued or discarded), kept in the audit trail: 1 to 500
/// characters of one line, no control characters, so that it reads the same
/// in a log, a terminal or a spreadsheet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note(String);

impl Note {
    /// Longest note accepted, in characters.
    pub const MAX_CHARS: usize = 500;

    /// Parses an operator's note.
    pub fn parse(s: impl Into<String>) -> Result<Self, InvalidValue> {
        let s = s.into();
        if s.is_empty() {
            return Err(InvalidValue::Empty);
        }
        if s.chars().count() > Self::MAX_CHARS {
            return Err(InvalidValue::TooManyChars {
                max: Self::MAX_CHARS,
            });
        }
        if s.chars().any(char::is_control) {
            return Err(InvalidValue::ControlCharacter);
        }
        Ok(Self(s))
    }

    /// The note as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The message body: text, HTML, or both (sent as multipart/alternative).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawBody", into = "RawBody")]
pub struct Body {
    text: Option<String>,
    html: Option<String>,
}

/// The wire form of [`Body`]; only [`Body`] guarantees a part is present.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RawBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    html: Option<String>,
}

impl Body {
    /// A body with at least one part. NUL is refused: SMTP cannot carry it.
    pub fn new(text: Option<String>, html: Option<String>) -> Result<Self, InvalidValue> {
        if text.is_none() && html.is_none() {
            return Err(InvalidValue::NoBody);
        }
        if [&text, &html]
            .into_iter()
            .flatten()
            .any(|p| p.contains('\0'))
        {
            return Err(InvalidValue::ControlCharacter);
        }
        Ok(Self { text, html })
    }

    /// The plain-text part.
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// The HTML part.
    pub fn html(&self) -> Option<&str> {
        self.html.as_deref()
    }
}

impl TryFrom<RawBody> for Body {
    type Error = InvalidValue;

    fn try_from(raw: RawBody) -> Result<Self, Self::Error> {
        Self::new(raw.text, raw.html)
    }
}

impl From<Body> for RawBody {
    fn from(b: Body) -> Self {
        Self {
            text: b.text,
            html: b.html,
        }
    }
}

/// What to send, as the client asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email {
    /// Sender; the worker's `MAIL_FROM` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<EmailAddress>,
    /// The recipients in `To`.
    pub to: Recipients,
    /// The recipients in `Cc`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<EmailAddress>,
    /// Recipients in the envelope only, never in a header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bcc: Vec<EmailAddress>,
    /// Where replies go, when not to `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<EmailAddress>,
    /// Subject line.
    pub subject: Subject,
    /// Text and/or HTML.
    #[serde(flatten)]
    pub body: Body,
    /// When to send it (scheduled send); absent: at once. Part of the
    /// request, so a replay must name the same time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<DateTime<Utc>>,
    /// Headers the client adds to the message. Left out of the JSON when
    /// there are none, so tasks and fingerprints from before them are
    /// unchanged.
    #[serde(default, skip_serializing_if = "CustomHeaders::is_empty")]
    pub headers: CustomHeaders,
    /// The client's labels for the job, returned with it and never sent.
    /// Left out of the JSON when empty, as `headers`.
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    pub metadata: Metadata,
    /// Files sent with the message. Left out of the JSON when there are
    /// none, as `headers`.
    #[serde(default, skip_serializing_if = "Attachments::is_empty")]
    pub attachments: Attachments,
}

impl Email {
    /// A message of `subject` and `body` to `to` alone, from the default
    /// sender, with nothing else set (tests, tools).
    pub fn new(to: EmailAddress, subject: Subject, body: Body) -> Self {
        Self {
            from: None,
            to: to.into(),
            cc: Vec::new(),
            bcc: Vec::new(),
            reply_to: None,
            subject,
            body,
            send_at: None,
            headers: CustomHeaders::default(),
            metadata: Metadata::default(),
            attachments: Attachments::default(),
        }
    }

    /// The suppression keys of every recipient, without repeats.
    pub fn suppression_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .recipients()
            .map(EmailAddress::suppression_key)
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Every recipient, `to`, `cc` then `bcc`.
    pub fn recipients(&self) -> impl Iterator<Item = &EmailAddress> {
        self.to.iter().chain(&self.cc).chain(&self.bcc)
    }

    /// How long until it is due, by this process's clock (zero when it is
    /// due now, or was never scheduled).
    pub fn due_in(&self, now: DateTime<Utc>) -> std::time::Duration {
        self.send_at
            .and_then(|at| (at - now).to_std().ok())
            .unwrap_or_default()
    }

    /// A digest of the request's content, so a replay of the same key can be
    /// told apart from a different request reusing the key.
    pub fn fingerprint(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(&Sha256::digest(&canonical)[..16])
    }
}

/// The application a job belongs to: its token's tenant claim (see the
/// API's `JWT_TENANT_CLAIM`). Idempotency keys are unique per tenant, and
/// every read and action on a job is scoped to its tenant. 1 to 128
/// printable ASCII characters without spaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, pattern = "^[!-~]{1,128}$")]
pub struct Tenant(String);

impl Tenant {
    /// Longest tenant name.
    pub const MAX_LEN: usize = 128;
    /// The tenant of tokens without a tenant claim, and of every job
    /// accepted before tenants existed.
    pub const DEFAULT: &str = "default";

    /// Parses a tenant name.
    pub fn parse(s: impl Into<String>) -> Result<Self, InvalidValue> {
        let s = s.into();
        if s.is_empty() {
            return Err(InvalidValue::Empty);
        }
        if s.len() > Self::MAX_LEN {
            return Err(InvalidValue::TooLong { max: Self::MAX_LEN });
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidValue::NotPrintableAscii);
        }
        Ok(Self(s))
    }

    /// The tenant `default`.
    pub fn default_tenant() -> Self {
        Self(Self::DEFAULT.to_owned())
    }

    /// Whether this is the tenant `default`.
    pub fn is_default(&self) -> bool {
        self.0 == Self::DEFAULT
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Tenant {
    fn default() -> Self {
        Self::default_tenant()
    }
}

impl std::str::FromStr for Tenant {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).map_err(|e| e.to_string())
    }
}

/// The form a suppression list keys an address (an addr-spec,
/// `user@domain`) by: lower-cased, its domain in A-labels, so that the
/// address a client posted, the one the envelope carried and the one an
/// operator types all find the same entry. (Local parts are case-sensitive
/// by the letter of RFC 5321; no mailbox provider treats them so.)
pub fn suppression_key(addr_spec: &str) -> String {
    let (user, domain) = addr_spec.rsplit_once('@').unwrap_or((addr_spec, ""));
    let domain = idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_lowercase());
    format!("{}@{domain}", user.to_lowercase())
}

/// One email job as it travels through Redis: the unit the worker pops,
/// claims, sends and acknowledges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Minted by the API; retries and redeliveries keep it.
    pub job_id: JobId,
    /// The client's business key; at most one effect per key.
    pub idempotency_key: IdempotencyKey,
    /// The message.
    #[serde(flatten)]
    pub email: Email,
    /// When the API accepted it.
    pub enqueued_at: DateTime<Utc>,
    /// Whose job it is; absent (the tenant `default`) in tasks from before
    /// tenants, and left out of the JSON for that tenant.
    #[serde(default, skip_serializing_if = "Tenant::is_default")]
    pub tenant: Tenant,
    /// Which ready list its pops take it from; absent (`normal`) in tasks
    /// from before priorities, and left out of the JSON for `normal`.
    #[serde(default, skip_serializing_if = "Priority::is_normal")]
    pub priority: Priority,
}

impl Task {
    /// A new task for `email`, keyed by `key` or, when the client gave none,
    /// by its own job id.
    pub fn new(email: Email, key: Option<IdempotencyKey>) -> Self {
        let job_id = JobId::new();
        Self {
            job_id,
            idempotency_key: key.unwrap_or_else(|| IdempotencyKey::from_job_id(job_id)),
            email,
            enqueued_at: Utc::now(),
            tenant: Tenant::default_tenant(),
            priority: Priority::Normal,
        }
    }

    /// This task, of `tenant`.
    #[must_use]
    pub fn in_tenant(mut self, tenant: Tenant) -> Self {
        self.tenant = tenant;
        self
    }

    /// This task, at `priority`.
    #[must_use]
    pub fn at_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// The JSON stored in Redis.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Re-parses a task read back from Redis or Postgres.
    pub fn from_json(raw: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_plain_or_named_mailbox_parses() {
        assert!(EmailAddress::parse("ada@example.com").is_ok());
        assert!(EmailAddress::parse("Ada Lovelace <ada@example.com>").is_ok());
        assert!(EmailAddress::parse("\"Lovelace, Ada\" <ada@example.com>").is_ok());
    }

    #[test]
    fn empty_or_padded_display_names_are_stored_in_the_form_they_print_as() {
        for (given, printed) in [
            ("\"\" <ada@example.com>", "ada@example.com"),
            ("\" Ada \" <ada@example.com>", "Ada <ada@example.com>"),
        ] {
            let address = EmailAddress::parse(given).expect("valid");
            assert_eq!(address.to_string(), printed);
            assert_eq!(EmailAddress::parse(printed), Ok(address));
        }
    }

    #[test]
    fn lists_groups_garbage_and_injection_are_refused() {
        for bad in [
            "",
            "not-an-address",
            "ada@example.com, bob@example.com",
            "ada@example.com bob@example.com",
            "friends: ada@example.com;",
            "Ada <ada@example.com> trailing",
            "ada@example.com\r\nBcc: eve@example.com",
            "ada@example.com\0",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn keys_must_be_printable_ascii_and_short() {
        assert!(IdempotencyKey::parse("welcome:user-42").is_ok());
        assert_eq!(IdempotencyKey::parse(""), Err(InvalidValue::Empty));
        assert!(IdempotencyKey::parse("a".repeat(256)).is_err());
        assert!(IdempotencyKey::parse("a\nb").is_err());
        assert!(IdempotencyKey::parse("clé").is_err());
    }

    #[test]
    fn the_message_id_depends_only_on_the_key() {
        let a = IdempotencyKey::parse("k1").expect("valid key");
        let b = IdempotencyKey::parse("k2").expect("valid key");
        assert_eq!(a.message_id("x.test"), a.clone().message_id("x.test"));
        assert_ne!(a.message_id("x.test"), b.message_id("x.test"));
    }

    #[test]
    fn a_task_round_trips_through_json() {
        let email = Email::new(
            EmailAddress::parse("Ada <ada@example.com>").expect("valid"),
            Subject::parse("Hi").expect("valid"),
            Body::new(Some("hello".into()), None).expect("valid"),
        );
        let task = Task::new(email, None);
        let back = Task::from_json(&task.to_json()).expect("round trip");
        assert_eq!(task, back);
        assert_eq!(task.idempotency_key.as_str(), task.job_id.to_string());
    }

    #[test]
    fn an_email_without_headers_or_metadata_is_the_json_it_was_before_them() {
        let json = r#"{"to":"Ada <ada@example.com>","subject":"Hi","text":"hello"}"#;
        let email: Email = serde_json::from_str(json).expect("an email from before");
        assert!(email.headers.is_empty() && email.metadata.is_empty());
        assert_eq!(serde_json::to_string(&email).expect("serialise"), json);
    }

    #[test]
    fn headers_and_metadata_travel_with_the_task_and_are_parsed_again() {
        let json = r#"{"to":"ada@example.com","subject":"Hi","text":"hello",
            "headers":{"X-Campaign":"spring"},"metadata":{"user_id":"42"}}"#;
        let email: Email = serde_json::from_str(json).expect("an email");
        let task = Task::new(email, None);
        assert_eq!(Task::from_json(&task.to_json()).ok(), Some(task));
        let forged = r#"{"to":"ada@example.com","subject":"Hi","text":"hello",
            "headers":{"Bcc":"eve@example.com"}}"#;
        assert!(serde_json::from_str::<Email>(forged).is_err());
    }

    #[test]
    fn attachments_travel_with_the_task_as_sent_and_are_parsed_again() {
        let json = r#"{"to":"ada@example.com","subject":"Hi","html":"<img src=\"cid:logo\">","attachments":[{"filename":"logo.png","content_type":"image/png","content":"iVBORw==","content_id":"logo"}]}"#;
        let email: Email = serde_json::from_str(json).expect("an email");
        assert_eq!(email.attachments.size(), 4);
        assert_eq!(serde_json::to_string(&email).expect("serialise"), json);
        let task = Task::new(email, None);
        assert_eq!(Task::from_json(&task.to_json()).ok(), Some(task));
        let forged = json.replace("logo.png", "logo\\r\\nBcc: eve@example.com");
        assert!(serde_json::from_str::<Email>(&forged).is_err());
    }

    #[test]
    fn subjects_refuse_line_breaks() {
        assert!(Subject::parse("a\r\nBcc: x@y.z").is_err());
        assert!(Subject::parse("x".repeat(999)).is_err());
    }

    #[test]
    fn a_note_is_up_to_500_characters_of_one_line() {
        assert!(Note::parse("requeued after the relay outage, INC-42").is_ok());
        assert!(
            Note::parse("é".repeat(500)).is_ok(),
            "characters, not bytes"
        );
        assert_eq!(
            Note::parse("x".repeat(501)),
            Err(InvalidValue::TooManyChars { max: 500 })
        );
        assert_eq!(Note::parse(""), Err(InvalidValue::Empty));
        for bad in ["a\nb", "a\rb", "a\0b", "a\tb", "a\u{7f}b"] {
            assert_eq!(Note::parse(bad), Err(InvalidValue::ControlCharacter));
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Mailbox-shaped text: display names with quotes, commas, dots and
        /// non-ASCII, local parts with the specials RFC 5322 allows.
        fn mailbox_like() -> impl Strategy<Value = String> {
            let name = "[ -~\u{e9}\u{4e2d}]{0,24}";
            let local = "[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,20}";
            let domain = "[a-z0-9-]{1,12}(\\.[a-z]{2,6}){1,2}";
            (name, local, domain, 0..4u8).prop_map(|(name, local, domain, shape)| match shape {
                0 => format!("{local}@{domain}"),
                1 => format!("{name} <{local}@{domain}>"),
                2 => format!("\"{name}\" <{local}@{domain}>"),
                _ => format!("<{local}@{domain}>"),
            })
        }

        proptest! {
            #[test]
            fn an_accepted_address_prints_as_text_that_parses_back_to_it(s in mailbox_like()) {
                if let Ok(address) = EmailAddress::parse(&s) {
                    let printed = address.to_string();
                    prop_assert_eq!(EmailAddress::parse(&printed), Ok(address), "printed {:?}", printed);
                }
            }

            #[test]
            fn no_accepted_address_holds_a_control_character(s in "\\PC{0,8}[\\x00-\\x1f\\x7f]\\PC{0,8}@x.test") {
                prop_assert!(EmailAddress::parse(&s).is_err());
            }

            #[test]
            fn any_text_parses_as_an_address_or_is_refused_without_panicking(s in "\\PC{0,64}|.{0,64}") {
                if let Ok(address) = EmailAddress::parse(&s) {
                    prop_assert!(!address.to_string().contains(['\r', '\n', '\0']));
                }
            }

            #[test]
            fn a_key_is_accepted_exactly_when_it_is_1_to_255_printable_ascii(s in ".{0,300}|[ -~]{0,300}") {
                let expected = (1..=IdempotencyKey::MAX_LEN).contains(&s.len())
                    && s.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
                let parsed = IdempotencyKey::parse(s.clone());
                prop_assert_eq!(parsed.is_ok(), expected);
                if let Ok(key) = parsed {
                    let json = serde_json::to_string(&key).expect("serialise");
                    prop_assert_eq!(serde_json::from_str::<IdempotencyKey>(&json).ok(), Some(key));
                }
            }

            #[test]
            fn an_accepted_subject_is_one_short_line(s in ".{0,1100}|\\PC{0,1100}") {
                if let Ok(subject) = Subject::parse(s) {
                    prop_assert!(subject.as_str().len() <= Subject::MAX_LEN);
                    prop_assert!(!subject.as_str().chars().any(char::is_control));
                }
            }

            #[test]
            fn a_task_of_accepted_parts_survives_the_queue(
                to in mailbox_like(),
                subject in "\\PC{0,80}",
                text in proptest::option::of(".{0,80}"),
                html in proptest::option::of(".{0,80}"),
            ) {
                let (Ok(to), Ok(subject), Ok(body)) =
                    (EmailAddress::parse(&to), Subject::parse(subject), Body::new(text, html))
                else {
                    return Ok(());
                };
                let task = Task::new(Email::new(to, subject, body), None);
                prop_assert_eq!(Task::from_json(&task.to_json()).ok(), Some(task));
            }
        }
    }
}
