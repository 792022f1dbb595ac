//! `POST /addJob`: validate, record the job in Postgres (the group commit),
//! then push it to the queue; once per idempotency key.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use sendonce_shared::domain::{
    Attachments, Body, CustomHeaders, Email, EmailAddress, IdempotencyKey, JobId, Metadata,
    Priority, RawAttachment, Recipients, Subject, Task,
};
use sendonce_shared::store::{Accepted, Submission};
use sendonce_shared::telemetry;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::auth::{Authorized, scope};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// The request body, as sent. Unknown fields are refused so a typo
/// (`"htm"`) is an error, not a silently empty body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "to": "Ada Lovelace <ada@example.com>",
    "subject": "Welcome",
    "text": "Hello Ada",
    "idempotency_key": "welcome:user-42"
}))]
pub struct AddJobBody {
    /// The `To` recipients: one mailbox, e.g. `Ada <ada@example.com>`, or
    /// an array of them; each exactly one mailbox (no lists or groups).
    pub to: OneOrMore,
    /// The `Cc` recipients.
    #[serde(default)]
    pub cc: Vec<String>,
    /// Recipients who get the message without appearing in any header.
    #[serde(default)]
    pub bcc: Vec<String>,
    /// Subject line: no control characters.
    #[schema(max_length = 998)]
    pub subject: String,
    /// Plain-text body.
    #[serde(default)]
    pub text: Option<String>,
    /// HTML body.
    #[serde(default)]
    pub html: Option<String>,
    /// Sender. With a sender policy, one of the senders the caller's
    /// tenant may use; when absent, the tenant's default sender, else the
    /// worker's `MAIL_FROM`.
    #[serde(default)]
    pub from: Option<String>,
    /// Reply-To mailbox.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// The client's business key: 1 to 255 printable ASCII characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255)]
    pub idempotency_key: Option<String>,
    /// When to send it (RFC 3339, e.g. `2026-12-24T08:00:00Z`), at most
    /// `MAX_SCHEDULE_DAYS` ahead; the job is `scheduled` until then. A time
    /// already past sends at once.
    #[serde(default)]
    #[schema(format = DateTime, value_type = Option<String>)]
    pub send_at: Option<String>,
    /// Headers to add to the message, at most 50, by name (unique without
    /// regard to case): `List-Unsubscribe`, `List-Unsubscribe-Post`,
    /// `List-Id`, `List-Help`, `List-Subscribe`, `List-Post`, `List-Owner`,
    /// `List-Archive`, `In-Reply-To`, `References`, `Auto-Submitted`,
    /// `Precedence`, `Keywords`, `Feedback-ID`, `Comments` and `X-*`; any
    /// other is refused, naming it. A value is one line without control
    /// characters, `Name: value` at most 998 bytes; printable ASCII except
    /// in `X-*` and `Comments`, which may hold any text (sent as RFC 2047
    /// encoded words).
    #[serde(default)]
    #[schema(value_type = Option<std::collections::HashMap<String, String>>)]
    pub headers: Option<Entries>,
    /// The client's labels for the job, never sent: at most 20 keys of 1 to
    /// 40 characters of `A-Z a-z 0-9 _ . -`, values of at most 500 bytes
    /// without control characters, 4096 bytes in all. Returned by
    /// `GET /jobs/{id}` and `GET /failedJobs`, which filters on it.
    #[serde(default)]
    #[schema(value_type = Option<std::collections::HashMap<String, String>>)]
    pub metadata: Option<Entries>,
    /// Files sent with the message, at most 20. One with a `content_id` is
    /// an inline part the `html` shows as `cid:<content_id>`; the others
    /// are attachments. `text`, `html` and the decoded contents together
    /// make at most `MAX_MESSAGE_BYTES` (default 10 MiB), else `422`
    /// naming `attachments`.
    #[serde(default)]
    #[schema(max_items = 20)]
    pub attachments: Vec<RawAttachment>,
    /// `high`, `normal` (the default) or `low`: workers take `high` jobs
    /// first, but give `normal` and `low` at least one pop in ten each
    /// while they have jobs ready (README, "Priorities"). Anything else is
    /// refused with `422` naming `priority`.
    #[serde(default)]
    #[schema(value_type = Option<Priority>)]
    pub priority: Option<String>,
}

/// A JSON object of strings, every entry as given: a name given twice is
/// kept twice, for the domain type to refuse, where a map would keep the
/// last silently.
#[derive(Debug, Default)]
pub struct Entries(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs;

        impl<'de> Visitor<'de> for Pairs {
            type Value = Entries;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of strings")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }

        deserializer.deserialize_map(Pairs)
    }
}

/// One mailbox, or an array of at least one.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum OneOrMore {
    /// One mailbox.
    One(String),
    /// Several mailboxes.
    More(Vec<String>),
}

/// Parses each of `all`, naming `name` (and the entry, in an array).
fn mailboxes(name: &'static str, all: Vec<String>) -> Result<Vec<EmailAddress>, ApiError> {
    all.iter()
        .enumerate()
        .map(|(i, s)| {
            EmailAddress::parse(s).map_err(|e| ApiError::InvalidField {
                field: name,
                reason: format!("entry {i}: {e}"),
            })
        })
        .collect()
}

/// A parsed request: what to send and under which key.
#[derive(Debug)]
pub struct NewJob {
    /// The message.
    pub email: Email,
    /// The key, when the client gave one.
    pub key: Option<IdempotencyKey>,
    /// Its priority.
    pub priority: Priority,
}

fn field<T, E: fmt::Display>(name: &'static str, r: Result<T, E>) -> Result<T, ApiError> {
    r.map_err(|e| ApiError::InvalidField {
        field: name,
        reason: e.to_string(),
    })
}

impl TryFrom<AddJobBody> for NewJob {
    type Error = ApiError;

    fn try_from(body: AddJobBody) -> Result<Self, ApiError> {
        let optional =
            |name, v: Option<String>| v.map(|s| field(name, EmailAddress::parse(&s))).transpose();
        Ok(Self {
            email: Email {
                to: match body.to {
                    OneOrMore::One(one) => field("to", EmailAddress::parse(&one))?.into(),
                    OneOrMore::More(more) => field("to", Recipients::new(mailboxes("to", more)?))?,
                },
                cc: mailboxes("cc", body.cc)?,
                bcc: mailboxes("bcc", body.bcc)?,
                from: optional("from", body.from)?,
                reply_to: optional("reply_to", body.reply_to)?,
                subject: field("subject", Subject::parse(body.subject))?,
                body: field("text", Body::new(body.text, body.html))?,
                send_at: body
                    .send_at
                    .map(|at| {
                        chrono::DateTime::parse_from_rfc3339(&at)
                            .map(|at| at.with_timezone(&chrono::Utc))
                            .map_err(|e| ApiError::InvalidField {
                                field: "send_at",
                                reason: format!("must be an RFC 3339 date and time ({e})"),
                            })
                    })
                    .transpose()?,
                headers: field(
                    "headers",
                    CustomHeaders::parse(body.headers.unwrap_or_default().0),
                )?,
                metadata: field(
                    "metadata",
                    Metadata::parse(body.metadata.unwrap_or_default().0),
                )?,
                attachments: field("attachments", Attachments::parse(body.attachments))?,
            },
            key: body
                .idempotency_key
                .map(|k| field("idempotency_key", IdempotencyKey::parse(k)))
                .transpose()?,
            priority: body
                .priority
                .map(|p| field("priority", Priority::parse(&p)))
                .transpose()?
                .unwrap_or_default(),
        })
    }
}

impl NewJob {
    /// What a replay of this request is compared with: the message's
    /// fingerprint, and the priority when it is not `normal` (so that the
    /// fingerprints of jobs from before priorities still match), before
    /// the sender policy fills in a default `from`.
    pub fn fingerprint(&self) -> String {
        let message = self.email.fingerprint();
        match self.priority {
            Priority::Normal => message,
            other => format!("{message}/{other}"),
        }
    }

    /// This job, when it has at most `max` recipients in all
    /// (`MAX_RECIPIENTS`).
    pub fn addressed_within(self, max: usize) -> Result<Self, ApiError> {
        let n = self.email.recipients().count();
        if n > max {
            return Err(ApiError::InvalidField {
                field: "to",
                reason: format!(
                    "`cc` and `bcc` together must name at most {max} recipients (MAX_RECIPIENTS), not {n}"
                ),
            });
        }
        Ok(self)
    }

    /// This job, when its `send_at` is at most `max_days` ahead
    /// (`MAX_SCHEDULE_DAYS`).
    pub fn scheduled_within(self, max_days: u32) -> Result<Self, ApiError> {
        if let Some(at) = self.email.send_at
            && at > chrono::Utc::now() + chrono::Duration::days(i64::from(max_days))
        {
            return Err(ApiError::InvalidField {
                field: "send_at",
                reason: format!("must be at most {max_days} days ahead (MAX_SCHEDULE_DAYS)"),
            });
        }
        Ok(self)
    }

    /// This job, when its `text` and `html` together hold at most
    /// `max_bytes` (`MAX_JOB_BYTES`).
    pub fn within(self, max_bytes: usize) -> Result<Self, ApiError> {
        let body = &self.email.body;
        let bytes = body.text().map_or(0, str::len) + body.html().map_or(0, str::len);
        if bytes > max_bytes {
            return Err(ApiError::InvalidField {
                field: "text",
                reason: format!(
                    "and `html` together must be at most {max_bytes} bytes, not {bytes}"
                ),
            });
        }
        Ok(self)
    }

    /// This job, when its `text`, `html` and decoded attachments together
    /// hold at most `max_bytes` (`MAX_MESSAGE_BYTES`): refused naming
    /// `attachments`, or `text` for a job without any.
    pub fn message_within(self, max_bytes: usize) -> Result<Self, ApiError> {
        let email = &self.email;
        let body = &email.body;
        let bytes = body.text().map_or(0, str::len)
            + body.html().map_or(0, str::len)
            + email.attachments.size();
        if bytes > max_bytes {
            return Err(ApiError::InvalidField {
                field: if email.attachments.is_empty() {
                    "text"
                } else {
                    "attachments"
                },
                reason: format!(
                    "makes a message of {bytes} bytes (`text`, `html` and the attachments \
                     decoded); at most {max_bytes} are accepted (MAX_MESSAGE_BYTES)"
                ),
            });
        }
        Ok(self)
    }
}

/// The answer: which job now stands for the key, and its state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobAccepted {
    /// The job.
    pub job_id: JobId,
    /// Its key.
    pub idempotency_key: IdempotencyKey,
    /// `queued` for a new job; the current state for a replay.
    pub status: String,
}

/// Reads the `Idempotency-Key` header, if present.
pub fn header_key(req: &HttpRequest) -> Result<Option<IdempotencyKey>, ApiError> {
    req.headers()
        .get("Idempotency-Key")
        .map(|v| {
            let s = v.to_str().map_err(|_| ApiError::InvalidField {
                field: "Idempotency-Key",
                reason: "must be printable ASCII".into(),
            })?;
            field("Idempotency-Key", IdempotencyKey::parse(s))
        })
        .transpose()
}

/// `POST /addJob`. Answers 202 for a new job once it is recorded in
/// Postgres, 200 with the original job for a replay of the same request,
/// 422 when the key was used for another one, 503 when Postgres could not
/// record it (then nothing was queued).
#[utoipa::path(
    post,
    path = "/addJob",
    tag = "jobs",
    request_body = AddJobBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "The key, instead of `idempotency_key`; both must match when both are given")),
    responses(
        (status = 202, description = "A new job was queued", body = JobAccepted),
        (status = 200, description = "A replay of an accepted request: nothing was queued", body = JobAccepted),
        (status = 503, description = "The job could not be recorded; nothing was queued: retry with the same key", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["jobs:write"])),
)]
#[tracing::instrument(
    name = "add_job",
    level = "debug",
    skip_all,
    fields(job_id, idempotency_key)
)]
pub async fn add_job(
    caller: Authorized<scope::JobsWrite>,
    req: HttpRequest,
    root: tracing_actix_web::RootSpan,
    state: web::Data<AppState>,
    body: web::Json<AddJobBody>,
) -> Result<HttpResponse, ApiError> {
    let mut job = NewJob::try_from(body.into_inner())?
        .within(state.max_job_bytes)?
        .message_within(state.max_message_bytes)?
        .scheduled_within(state.max_schedule_days)?
        .addressed_within(state.max_recipients)?;
    // Of the request as sent: a replay matches whatever default `from` the
    // sender policy gives it now.
    let fingerprint = job.fingerprint();
    state
        .senders
        .apply(caller.claims.tenant.as_str(), &mut job.email)?;
    let key = match (job.key, header_key(&req)?) {
        (Some(body_key), Some(header)) if body_key != header => {
            return Err(ApiError::InvalidField {
                field: "idempotency_key",
                reason: "differs from the Idempotency-Key header".into(),
            });
        }
        (body_key, header) => body_key.or(header),
    };
    if let Some(backlog) = &state.backlog {
        backlog.admit(&caller.claims.tenant, 1).await?;
    }
    let task = Task::new(job.email, key)
        .in_tenant(caller.claims.tenant.clone())
        .at_priority(job.priority);
    // On the request's span (and this handler's): the request's one line
    // at INFO, "request answered", then names the job.
    for span in [tracing::Span::current(), (*root).clone()] {
        span.record("job_id", tracing::field::display(task.job_id));
        span.record(
            "idempotency_key",
            tracing::field::display(telemetry::key(&task.idempotency_key)),
        );
    }
    let (job_id, key) = (task.job_id, task.idempotency_key.clone());
    let scheduled = !task.email.due_in(chrono::Utc::now()).is_zero();
    let accepted = state
        .acceptor
        .accept(Submission::new(task, fingerprint.clone()))
        .await
        .map_err(ApiError::unavailable)?;
    let (status, accepted) = answer(job_id, key, &fingerprint, accepted, scheduled)?;
    if status == StatusCode::ACCEPTED {
        crate::telemetry::job_enqueued();
        tracing::debug!("job accepted");
    }
    Ok(HttpResponse::build(status).json(accepted))
}

/// What an acceptance answers: `202` for a new job, `200` with the original
/// job for a replay of the same request (or of a request accepted before
/// fingerprints were kept, which cannot be told apart), 422 when the key
/// was used for a different one. `POST /addJobs` answers each item with it.
/// A new job is `scheduled` when its `send_at` is ahead, else `queued`.
pub fn answer(
    job_id: JobId,
    key: IdempotencyKey,
    fingerprint: &str,
    accepted: Accepted,
    scheduled: bool,
) -> Result<(StatusCode, JobAccepted), ApiError> {
    match accepted {
        Accepted::New => Ok((
            StatusCode::ACCEPTED,
            JobAccepted {
                job_id,
                idempotency_key: key,
                status: if scheduled { "scheduled" } else { "queued" }.into(),
            },
        )),
        Accepted::Replay {
            job_id: original,
            fingerprint: recorded,
            status,
        } => {
            if recorded.is_some_and(|r| r != fingerprint) {
                return Err(ApiError::KeyReused(format!(
                    "idempotency key `{key}` was already used for a different request (job {original})"
                )));
            }
            tracing::info!(original_job_id = %original, idempotency_key = %telemetry::key(&key), "replay of an accepted key; nothing queued");
            Ok((
                StatusCode::OK,
                JobAccepted {
                    job_id: original,
                    idempotency_key: key,
                    status,
                },
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// JSON objects shaped like a request: the known fields with text that
    /// mixes addresses, control characters and non-ASCII, sometimes an
    /// unknown field or a wrong type.
    fn request_like() -> impl Strategy<Value = Vec<u8>> {
        let text = prop_oneof![
            "[a-z]{1,8}@[a-z]{1,8}\\.test",
            "[A-Za-z ]{0,8} <[a-z]{1,8}@[a-z]{1,8}\\.test>",
            "\\PC{0,24}",
            ".{0,24}",
        ];
        let field = prop_oneof![
            Just("to"),
            Just("subject"),
            Just("text"),
            Just("html"),
            Just("from"),
            Just("reply_to"),
            Just("idempotency_key"),
            Just("priority"),
            Just("htm"),
        ];
        let value = prop_oneof![
            text.prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
        ];
        proptest::collection::btree_map(field, value, 0..8)
            .prop_map(|map| serde_json::to_vec(&map).unwrap_or_default())
    }

    proptest! {
        #[test]
        fn any_body_is_refused_or_becomes_a_task_that_survives_the_queue(
            bytes in prop_oneof![request_like(), proptest::collection::vec(any::<u8>(), 0..64)],
        ) {
            let Ok(body) = serde_json::from_slice::<AddJobBody>(&bytes) else {
                return Ok(());
            };
            match NewJob::try_from(body) {
                Err(e) => prop_assert!(
                    matches!(e, ApiError::InvalidField { .. }),
                    "a parsed body was refused with {e:?}"
                ),
                Ok(job) => {
                    let task = Task::new(job.email, job.key).at_priority(job.priority);
                    prop_assert_eq!(Task::from_json(&task.to_json()).ok(), Some(task));
                }
            }
        }
    }
}
