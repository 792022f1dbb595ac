//! The console's handlers: each reads what its page shows, in the session's
//! tenant scope, and renders it; each action checks the session's CSRF
//! token and write scope, acts through the same store calls as the API
//! (with the same audit rows), and redirects back with a notice.

use actix_web::cookie::Cookie;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use sendonce_shared::domain::{JobId, Note, Tenant};
use sendonce_shared::store::{
    Actor, Added, DeadReason, FailedFilter, FailedJob, JobLookup, RequeueSelection, WebhookPatch,
};

use super::ConsoleSettings;
use super::error::ConsoleError;
use super::session::{self, Session};
use super::views::{self, *};
use crate::auth::{ALL_TENANTS, JwtKeys};
use crate::state::AppState;
use crate::telemetry;

/// Rows per page of every list.
const PAGE: usize = 50;
/// Rows asked of the store for a page: one more than shown tells whether
/// there is a next.
const FETCH: i64 = PAGE as i64 + 1;
/// Most entries one dead-letter action may select.
const MAX_SELECTED: usize = 1000;
/// The read scopes that open a section of the console; a token needs one
/// of them to sign in.
const READ_SCOPES: [&str; 4] = [
    "jobs:read",
    "failed:read",
    "suppressions:read",
    "webhooks:read",
];

const STYLESHEET: &str = include_str!("../../assets/console.css");

type Page = Result<HttpResponse, ConsoleError>;

fn render(page: &impl Template) -> Page {
    let html = page.render().map_err(ConsoleError::unavailable)?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(html))
}

fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .finish()
}

/// A form body, repeated fields (`ids`) included.
fn form<T: DeserializeOwned>(body: &[u8]) -> Result<T, ConsoleError> {
    serde_html_form::from_bytes(body)
        .map_err(|e| ConsoleError::BadRequest(format!("the form could not be read: {e}")))
}

/// A page fetched with [`FETCH`] rows: at most [`PAGE`] of them, and, when
/// there were more, the query string of the next page, made from the last
/// row shown.
fn paged<T>(mut rows: Vec<T>, next: impl FnOnce(&T) -> String) -> (Vec<T>, Option<String>) {
    if rows.len() <= PAGE {
        return (rows, None);
    }
    rows.truncate(PAGE);
    let next = rows.last().map(next);
    (rows, next)
}

fn query_string(pairs: &[(&str, &str)]) -> String {
    let pairs: Vec<_> = pairs.iter().filter(|(_, v)| !v.is_empty()).collect();
    serde_html_form::to_string(pairs).unwrap_or_default()
}

fn nav(session: &Session, active: &'static str) -> Nav {
    Nav {
        active,
        who: match session.subject() {
            "" => "(no subject)".to_owned(),
            sub => sub.to_owned(),
        },
        tenant: if session.has(ALL_TENANTS) {
            "all tenants".to_owned()
        } else {
            format!("tenant {}", session.claims.tenant)
        },
        csrf: session.csrf.clone(),
        jobs: session.has("jobs:read"),
        dead_letters: session.has("failed:read"),
        suppressions: session.has("suppressions:read"),
        webhooks: session.has("webhooks:read"),
    }
}

fn unavailable(e: impl Into<anyhow::Error>) -> ConsoleError {
    ConsoleError::unavailable(e)
}

/// A notice after an action, from the redirect's `done` and `n`: fixed
/// sentences only, so a crafted link cannot put words in the console's
/// mouth.
fn flash(done: Option<&str>, n: Option<u64>) -> Option<String> {
    let n = n.unwrap_or(0);
    let entries = |n: u64| if n == 1 { "entry" } else { "entries" };
    Some(match done? {
        "requeued" => format!("Requeued {n} dead-letter {}.", entries(n)),
        "discarded" => format!("Discarded {n} dead-letter {}.", entries(n)),
        "gone" => "Nothing was done: the selected entries are gone (another operator acted on them) or none was selected.".to_owned(),
        "canceled" => "The job was canceled: nothing will be sent for it.".to_owned(),
        "suppressed" => "The address is suppressed.".to_owned(),
        "listed" => "The address was suppressed already.".to_owned(),
        "lifted" => "The suppression was lifted: later jobs to the address are sent.".to_owned(),
        "resumed" => "The endpoint was resumed: its held deliveries are due now.".to_owned(),
        _ => return None,
    })
}

/// `GET /console`: to `/console/`.
pub async fn to_overview() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/console/"))
        .finish()
}

/// `GET /console/assets/console.css`.
pub async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(STYLESHEET)
}

/// Any other path under `/console/`.
pub async fn not_found() -> Page {
    Err(ConsoleError::NotFound(
        "there is no such console page".into(),
    ))
}

/// `GET /console/sign-in`.
pub async fn sign_in_form(settings: web::Data<ConsoleSettings>) -> Page {
    sign_in_page(&settings, None, actix_web::http::StatusCode::OK)
}

/// The sign-in form with a fresh double-submit token in the form and in its
/// cookie.
fn sign_in_page(
    settings: &ConsoleSettings,
    error: Option<String>,
    status: actix_web::http::StatusCode,
) -> Page {
    let csrf = session::random_token();
    let mut cookie = session::cookie(settings, session::sign_in_cookie(settings), csrf.clone());
    cookie.set_max_age(actix_web::cookie::time::Duration::hours(1));
    let html = SignInPage { csrf, error }
        .render()
        .map_err(ConsoleError::unavailable)?;
    Ok(HttpResponse::build(status)
        .cookie(cookie)
        .content_type("text/html; charset=utf-8")
        .body(html))
}

#[derive(Debug, Deserialize)]
struct SignInForm {
    csrf: Option<String>,
    token: Option<String>,
}

/// `POST /console/sign-in`: a bearer token for a session cookie.
pub async fn sign_in(
    req: HttpRequest,
    state: web::Data<AppState>,
    settings: web::Data<ConsoleSettings>,
    keys: web::Data<JwtKeys>,
    body: web::Bytes,
) -> Page {
    session::check_same_origin(&req)?;
    let form: SignInForm = form(&body)?;
    let cookie = req.cookie(session::sign_in_cookie(&settings));
    match (&cookie, &form.csrf) {
        (Some(cookie), Some(csrf)) if session::same_secret(cookie.value(), csrf) => {}
        _ => return Err(ConsoleError::Csrf),
    }
    let token = form.token.as_deref().unwrap_or_default().trim();
    let token = token
        .strip_prefix("Bearer ")
        .or_else(|| token.strip_prefix("bearer "))
        .unwrap_or(token)
        .trim();
    let Ok(claims) = keys.verify(token) else {
        return sign_in_page(
            &settings,
            Some(
                "That token is malformed, badly signed, expired or not meant for this API.".into(),
            ),
            actix_web::http::StatusCode::UNAUTHORIZED,
        );
    };
    if !READ_SCOPES.iter().any(|scope| claims.has_scope(scope)) {
        return Err(ConsoleError::Forbidden(format!(
            "the token has none of the scopes the console shows: {}",
            READ_SCOPES.join(", ")
        )));
    }
    tracing::info!(sub = claims.sub.as_deref().unwrap_or_default(), tenant = %claims.tenant, "console sign-in");
    let session = Session::start(&state, &settings, claims).await?;
    let mut spent = Cookie::new(session::sign_in_cookie(&settings), "");
    spent.set_path("/");
    spent.make_removal();
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/console/"))
        .cookie(session)
        .cookie(spent)
        .finish())
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

/// `POST /console/sign-out`: ends the session everywhere.
pub async fn sign_out(
    req: HttpRequest,
    state: web::Data<AppState>,
    settings: web::Data<ConsoleSettings>,
    session: Session,
    body: web::Bytes,
) -> Page {
    session::check_same_origin(&req)?;
    let form: CsrfForm = form(&body)?;
    if !form
        .csrf
        .is_some_and(|csrf| session::same_secret(&csrf, &session.csrf))
    {
        return Err(ConsoleError::Csrf);
    }
    tracing::info!(sub = session.subject(), "console sign-out");
    session.end(&state).await?;
    let mut gone = Cookie::new(session::session_cookie(&settings), "");
    gone.set_path("/");
    gone.make_removal();
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/console/sign-in"))
        .cookie(gone)
        .finish())
}

/// `GET /console/`.
pub async fn overview(state: web::Data<AppState>, session: Session) -> Page {
    let tenant = session.tenant_scope(None);
    let numbers = state
        .store
        .console_overview(tenant.as_ref())
        .await
        .map_err(unavailable)?;
    let now = Utc::now();
    let fleet = if session.has(ALL_TENANTS) {
        let (depths, depths_source) =
            match state.queue.published_depths().await.map_err(unavailable)? {
                Some(depths) => (depths, "as the housekeeping worker last counted them"),
                None => (
                    state.queue.depths().await.map_err(unavailable)?,
                    "counted now (no worker has published them lately)",
                ),
            };
        let workers = state.store.console_workers().await.map_err(unavailable)?;
        Some(Fleet {
            ready: depths.ready,
            scheduled: depths.scheduled,
            processing: depths.processing,
            depths_source,
            workers: workers
                .into_iter()
                .map(|w| WorkerRow {
                    id: w.worker_id,
                    in_flight: w.in_flight,
                    last_heartbeat: w
                        .last_heartbeat
                        .map_or_else(|| "—".to_owned(), |at| views::age(&at, &now)),
                    alive: w.alive,
                })
                .collect(),
        })
    } else {
        None
    };
    render(&OverviewPage {
        nav: nav(&session, "overview"),
        fleet,
        sent: numbers.sent_last_hour,
        failed: numbers.failed_last_hour,
        uncertain: numbers.uncertain_last_hour,
        suppressed: numbers.suppressed_last_hour,
        scheduled: numbers.scheduled,
        in_flight: numbers.in_flight,
        oldest_ready: numbers
            .oldest_ready
            .map_or_else(|| "none".to_owned(), |at| views::age(&at, &now)),
        now: views::time(&now),
    })
}

fn joined(addresses: &[String]) -> String {
    addresses.join(", ")
}

fn job_row(job: &sendonce_shared::store::JobSummary) -> JobRow {
    JobRow {
        job_id: job.job_id.to_string(),
        tenant: job.tenant.clone(),
        key: job.idempotency_key.clone(),
        state: job.state.clone(),
        attempts: job.attempts,
        to: joined(&job.to),
        subject: job.subject.clone().unwrap_or_default(),
        created_at: views::time(&job.created_at),
    }
}

#[derive(Debug, Deserialize)]
pub struct JobsQuery {
    q: Option<String>,
}

/// `GET /console/jobs?q=`.
pub async fn jobs(
    state: web::Data<AppState>,
    session: Session,
    query: web::Query<JobsQuery>,
) -> Page {
    session.require("jobs:read")?;
    let q = query.q.as_deref().unwrap_or_default().trim().to_owned();
    let mut page = JobsPage {
        nav: nav(&session, "jobs"),
        q: q.clone(),
        results: None,
        error: None,
    };
    if q.len() > 512 {
        page.error = Some("That is longer than any key or address.".into());
    } else if let Some(lookup) = JobLookup::parse(&q) {
        let found = state
            .store
            .find_jobs(&lookup, session.tenant_scope(None).as_ref(), PAGE as i64)
            .await
            .map_err(unavailable)?;
        page.results = Some(found.iter().map(job_row).collect());
    }
    render(&page)
}

fn parse_job_id(raw: &str) -> Result<JobId, ConsoleError> {
    raw.parse()
        .map_err(|_| ConsoleError::NotFound(format!("no job {raw}")))
}

fn dead_letter_row(entry: FailedJob) -> DeadLetterRow {
    DeadLetterRow {
        id: entry.id,
        job_id: entry.job_id.to_string(),
        tenant: entry.tenant,
        key: entry.idempotency_key,
        to: entry.to.unwrap_or_default(),
        subject: entry.subject.unwrap_or_default(),
        reason: entry.reason,
        error: entry.error,
        smtp_reply: entry.smtp_reply.unwrap_or_default(),
        attempts: entry.attempts,
        failed_at: views::time(&entry.failed_at),
    }
}

/// `GET /console/jobs/{job_id}`.
pub async fn job(
    state: web::Data<AppState>,
    settings: web::Data<ConsoleSettings>,
    session: Session,
    path: web::Path<String>,
) -> Page {
    session.require("jobs:read")?;
    let id = parse_job_id(&path)?;
    let Some(detail) = state
        .store
        .job_detail(id, session.tenant_scope(None).as_ref(), &settings.mail_from)
        .await
        .map_err(unavailable)?
    else {
        return Err(ConsoleError::NotFound(format!("no job {id}")));
    };
    let optional = |value: Option<String>| value.unwrap_or_else(|| "—".to_owned());
    let mut fields = vec![
        ("Tenant", detail.summary.tenant.clone()),
        ("From", optional(detail.from.clone())),
        ("To", joined(&detail.summary.to)),
    ];
    if !detail.cc.is_empty() {
        fields.push(("Cc", joined(&detail.cc)));
    }
    if !detail.bcc.is_empty() {
        fields.push(("Bcc", joined(&detail.bcc)));
    }
    fields.extend([
        ("Subject", optional(detail.summary.subject.clone())),
        ("Attempts", detail.summary.attempts.to_string()),
        ("Accepted", views::time(&detail.summary.created_at)),
        ("Last change", views::time(&detail.summary.updated_at)),
        ("Sent", views::time_or_dash(detail.sent_at.as_ref())),
        (
            "Next attempt",
            views::time_or_dash(detail.next_attempt_at.as_ref()),
        ),
    ]);
    if let Some(at) = &detail.canceled_at {
        fields.push(("Canceled", views::time(at)));
    }
    if let Some(holder) = &detail.holder {
        fields.push(("Last claimed by", holder.clone()));
    }
    if detail.maybe_sent {
        fields.push((
            "Earlier attempt",
            "may have delivered it (it was uncertain before)".to_owned(),
        ));
    }
    fields.extend([
        ("Last error", optional(detail.last_error.clone())),
        ("Last reply", optional(detail.smtp_reply.clone())),
    ]);
    if !detail.refused_recipients.is_null() {
        fields.push(("Refused recipients", detail.refused_recipients.to_string()));
    }
    if detail
        .metadata
        .as_object()
        .is_some_and(|metadata| !metadata.is_empty())
    {
        fields.push(("Metadata", detail.metadata.to_string()));
    }
    let can_cancel = session.has("jobs:write")
        && matches!(
            detail.summary.state.as_str(),
            "queued" | "retrying" | "processing"
        );
    render(&JobPage {
        nav: nav(&session, "jobs"),
        job: job_row(&detail.summary),
        fields,
        message_id: detail
            .message_id
            .clone()
            .unwrap_or_else(|| "— (the message was pruned)".to_owned()),
        history: detail
            .history
            .iter()
            .map(|entry| HistoryRow {
                at: views::time(&entry.at),
                what: match &entry.actor {
                    Some(actor) if !actor.is_empty() => format!("{} by {actor}", entry.what),
                    _ => entry.what.clone(),
                },
                attempts: entry.attempts.map(|n| n.to_string()).unwrap_or_default(),
                detail: [&entry.smtp_reply, &entry.error, &entry.note]
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" · "),
            })
            .collect(),
        duplicates: detail
            .duplicates
            .iter()
            .map(|dup| DuplicateRow {
                job_id: dup.job_id.to_string(),
                layer: match dup.layer.as_str() {
                    "l1" => "Redis (L1)".to_owned(),
                    "l2" => "Postgres (L2)".to_owned(),
                    other => other.to_owned(),
                },
                at: views::time(&dup.created_at),
            })
            .collect(),
        dead_letter: detail.dead_letter.map(dead_letter_row),
        can_cancel,
    })
}

#[derive(Debug, Deserialize)]
struct CancelForm {
    csrf: Option<String>,
    back: Option<String>,
}

/// `POST /console/jobs/{job_id}/cancel`.
pub async fn cancel_job(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: Session,
    path: web::Path<String>,
    body: web::Bytes,
) -> Page {
    let form: CancelForm = form(&body)?;
    session
        .authorize_post(&req, form.csrf.as_deref(), "jobs:write")
        .await?;
    let id = parse_job_id(&path)?;
    match state
        .store
        .cancel(id, session.tenant_scope(None).as_ref())
        .await
        .map_err(unavailable)?
    {
        sendonce_shared::store::Cancel::Canceled => {}
        sendonce_shared::store::Cancel::TooLate { status, reason } => {
            return Err(ConsoleError::Conflict(format!(
                "the job is `{status}`: {reason}"
            )));
        }
        sendonce_shared::store::Cancel::Unknown => {
            return Err(ConsoleError::NotFound(format!("no job {id}")));
        }
    }
    tracing::info!(job_id = %id, sub = session.subject(), "job canceled from the console");
    Ok(if form.back.as_deref() == Some("scheduled") {
        see_other("/console/scheduled?done=canceled")
    } else {
        see_other(&format!("/console/jobs/{id}"))
    })
}

#[derive(Debug, Deserialize)]
pub struct DeadLettersQuery {
    reason: Option<String>,
    tenant: Option<String>,
    since: Option<String>,
    uncertain_before: Option<i64>,
    failed_before: Option<i64>,
    done: Option<String>,
    n: Option<u64>,
}

/// A `since` from the filter form: `datetime-local` (taken as UTC, as the
/// console shows every time) or RFC 3339.
fn parse_since(raw: &str) -> Result<Option<DateTime<Utc>>, ConsoleError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    if let Ok(at) = DateTime::parse_from_rfc3339(raw) {
        return Ok(Some(at.with_timezone(&Utc)));
    }
    ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(raw, format).ok())
        .map(|at| Some(at.and_utc()))
        .ok_or_else(|| {
            ConsoleError::BadRequest(format!(
                "`since` is not a time: {raw:?} (give e.g. 2026-12-03T19:40, UTC)"
            ))
        })
}

fn parse_tenant(raw: Option<&str>) -> Result<Option<Tenant>, ConsoleError> {
    match raw.map(str::trim) {
        None | Some("") => Ok(None),
        Some(name) => Tenant::parse(name)
            .map(Some)
            .map_err(|e| ConsoleError::BadRequest(format!("`tenant` {e}"))),
    }
}

/// `GET /console/dead-letters`: `uncertain` entries first, then `failed`.
pub async fn dead_letters(
    state: web::Data<AppState>,
    session: Session,
    query: web::Query<DeadLettersQuery>,
) -> Page {
    session.require("failed:read")?;
    let query = query.into_inner();
    let all_tenants = session.has(ALL_TENANTS);
    let reason = query.reason.as_deref().unwrap_or_default();
    let wanted: &[DeadReason] = match reason {
        "" => &[DeadReason::Uncertain, DeadReason::Failed],
        "uncertain" => &[DeadReason::Uncertain],
        "failed" => &[DeadReason::Failed],
        other => {
            return Err(ConsoleError::BadRequest(format!(
                "`reason` is `{other}`, not `failed` or `uncertain`"
            )));
        }
    };
    let since_text = query.since.clone().unwrap_or_default();
    let tenant_text = query.tenant.clone().unwrap_or_default();
    let mut tables = Vec::new();
    for &reason_wanted in wanted {
        let filter = FailedFilter {
            tenant: session.tenant_scope(parse_tenant(query.tenant.as_deref())?),
            reason: Some(reason_wanted),
            since: parse_since(&since_text)?,
            metadata: None,
        };
        let before = match reason_wanted {
            DeadReason::Uncertain => query.uncertain_before,
            DeadReason::Failed => query.failed_before,
        };
        let rows = state
            .store
            .failed_page(&filter, before, FETCH)
            .await
            .map_err(unavailable)?;
        let (rows, next) = paged(rows, |last| {
            let cursor = match reason_wanted {
                DeadReason::Uncertain => "uncertain_before",
                DeadReason::Failed => "failed_before",
            };
            query_string(&[
                ("reason", reason_wanted.as_str()),
                ("tenant", &tenant_text),
                ("since", &since_text),
                (cursor, &last.id.to_string()),
            ])
        });
        tables.push(DeadLetterTable {
            reason: reason_wanted.as_str(),
            rows: rows.into_iter().map(dead_letter_row).collect(),
            next,
        });
    }
    render(&DeadLettersPage {
        nav: nav(&session, "dead-letters"),
        flash: flash(query.done.as_deref(), query.n),
        reason: reason.to_owned(),
        tenant: if all_tenants {
            tenant_text
        } else {
            String::new()
        },
        since: since_text,
        all_tenants,
        can_act: session.has("failed:write"),
        tables,
    })
}

#[derive(Debug, Deserialize)]
struct ActionForm {
    csrf: Option<String>,
    #[serde(default)]
    ids: Vec<i64>,
    one: Option<i64>,
    confirm: Option<String>,
    reason: Option<String>,
}

impl ActionForm {
    /// The entries acted on: the row's button's, or the checked ones.
    fn selection(&self) -> Result<Vec<i64>, ConsoleError> {
        let mut ids = match self.one {
            Some(id) => vec![id],
            None => self.ids.clone(),
        };
        ids.sort_unstable();
        ids.dedup();
        if ids.len() > MAX_SELECTED {
            return Err(ConsoleError::BadRequest(format!(
                "select at most {MAX_SELECTED} entries at once"
            )));
        }
        Ok(ids)
    }

    fn reason(&self) -> &str {
        self.reason.as_deref().unwrap_or_default().trim()
    }
}

fn actor(
    session: &Session,
    req: &HttpRequest,
    note: Option<String>,
) -> Result<Actor, ConsoleError> {
    let note = note
        .map(Note::parse)
        .transpose()
        .map_err(|e| ConsoleError::BadRequest(format!("the reason {e}")))?;
    Ok(Actor {
        sub: session.subject().to_owned(),
        tenant: session.claims.tenant.clone(),
        scope: session.tenant_scope(None),
        note,
        request_id: telemetry::request_id_in(req.headers()).map(str::to_owned),
    })
}

/// The phrase an operator types to requeue `n` uncertain entries.
fn confirm_phrase(uncertain: usize) -> String {
    format!("requeue {uncertain} uncertain")
}

/// `POST /console/dead-letters/requeue`: requeues the selection at once
/// when every entry in it is `failed`; with an `uncertain` one, only
/// through the confirmation (the typed phrase and a reason).
pub async fn requeue_dead_letters(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: Session,
    body: web::Bytes,
) -> Page {
    let form: ActionForm = form(&body)?;
    session
        .authorize_post(&req, form.csrf.as_deref(), "failed:write")
        .await?;
    let ids = form.selection()?;
    let entries = if ids.is_empty() {
        Vec::new()
    } else {
        state
            .store
            .failed_entries(&ids, session.tenant_scope(None).as_ref())
            .await
            .map_err(unavailable)?
    };
    if entries.is_empty() {
        return Ok(see_other("/console/dead-letters?done=gone"));
    }
    let uncertain = entries
        .iter()
        .filter(|entry| entry.reason == DeadReason::Uncertain.as_str())
        .count();
    let reason = form.reason();
    let note = if uncertain == 0 {
        (!reason.is_empty()).then(|| reason.to_owned())
    } else {
        let phrase = confirm_phrase(uncertain);
        let error = match form.confirm.as_deref().map(str::trim) {
            None => None,
            Some(typed) if typed != phrase => Some(format!(
                "Type exactly \u{201c}{phrase}\u{201d} to requeue (the selection holds {uncertain} uncertain {}).",
                if uncertain == 1 { "entry" } else { "entries" }
            )),
            Some(_) if reason.is_empty() => {
                Some("Give a reason: the audit trail keeps it with your name.".to_owned())
            }
            Some(_) if reason.chars().count() > 400 => {
                Some("Keep the reason to 400 characters.".to_owned())
            }
            Some(_) => {
                // Confirmed: on to the requeue below.
                Some(String::new())
            }
        };
        match error {
            Some(error) if error.is_empty() => {}
            error => {
                let page = ConfirmRequeuePage {
                    nav: nav(&session, "dead-letters"),
                    entries: entries.into_iter().map(dead_letter_row).collect(),
                    uncertain,
                    phrase,
                    reason: reason.to_owned(),
                    error: error.clone(),
                };
                let html = page.render().map_err(ConsoleError::unavailable)?;
                let status = if error.is_some() {
                    actix_web::http::StatusCode::UNPROCESSABLE_ENTITY
                } else {
                    actix_web::http::StatusCode::OK
                };
                return Ok(HttpResponse::build(status)
                    .content_type("text/html; charset=utf-8")
                    .body(html));
            }
        }
        Some(format!(
            "{reason} [console: confirmed a possible second message by typing \"{phrase}\"]"
        ))
    };
    let actor = actor(&session, &req, note)?;
    let selected: Vec<i64> = entries.iter().map(|entry| entry.id).collect();
    let requeued =
        crate::routes::failed_jobs::requeue(&state, RequeueSelection::Ids(selected), &actor)
            .await?;
    tracing::info!(
        requeued,
        uncertain,
        sub = session.subject(),
        "dead-letter entries requeued from the console"
    );
    Ok(see_other(&format!(
        "/console/dead-letters?done=requeued&n={requeued}"
    )))
}

/// `POST /console/dead-letters/discard`.
pub async fn discard_dead_letters(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: Session,
    body: web::Bytes,
) -> Page {
    let form: ActionForm = form(&body)?;
    session
        .authorize_post(&req, form.csrf.as_deref(), "failed:write")
        .await?;
    let ids = form.selection()?;
    let reason = form.reason();
    let actor = actor(
        &session,
        &req,
        (!reason.is_empty()).then(|| reason.to_owned()),
    )?;
    let mut discarded = 0u64;
    for id in ids {
        if state
            .store
            .discard_failed(id, &actor)
            .await
            .map_err(unavailable)?
        {
            discarded += 1;
        }
    }
    if discarded == 0 {
        return Ok(see_other("/console/dead-letters?done=gone"));
    }
    tracing::info!(
        discarded,
        sub = session.subject(),
        "dead-letter entries discarded from the console"
    );
    Ok(see_other(&format!(
        "/console/dead-letters?done=discarded&n={discarded}"
    )))
}

#[derive(Debug, Deserialize)]
pub struct ScheduledQuery {
    after_at: Option<String>,
    after_id: Option<String>,
    done: Option<String>,
}

/// `GET /console/scheduled`: jobs waiting for their `send_at`.
pub async fn scheduled(
    state: web::Data<AppState>,
    session: Session,
    query: web::Query<ScheduledQuery>,
) -> Page {
    session.require("jobs:read")?;
    let after = match (&query.after_at, &query.after_id) {
        (Some(at), Some(id)) => Some((
            DateTime::parse_from_rfc3339(at)
                .map_err(|e| ConsoleError::BadRequest(format!("`after_at` {e}")))?
                .with_timezone(&Utc),
            id.parse::<JobId>()
                .map_err(|e| ConsoleError::BadRequest(format!("`after_id` {e}")))?,
        )),
        _ => None,
    };
    let rows = state
        .store
        .scheduled_page(session.tenant_scope(None).as_ref(), after, FETCH)
        .await
        .map_err(unavailable)?;
    let (rows, next) = paged(rows, |last| {
        query_string(&[
            ("after_at", &last.send_at.to_rfc3339()),
            ("after_id", &last.job_id.to_string()),
        ])
    });
    let now = Utc::now();
    render(&ScheduledPage {
        nav: nav(&session, "scheduled"),
        flash: flash(query.done.as_deref(), None),
        rows: rows
            .into_iter()
            .map(|job| ScheduledRow {
                job_id: job.job_id.to_string(),
                tenant: job.tenant,
                key: job.idempotency_key,
                to: joined(&job.to),
                subject: job.subject.unwrap_or_default(),
                send_at: views::time(&job.send_at),
                due_in: views::age(&job.send_at, &now),
            })
            .collect(),
        next,
        can_cancel: session.has("jobs:write"),
    })
}

#[derive(Debug, Deserialize)]
pub struct SuppressionsQuery {
    after: Option<String>,
    done: Option<String>,
}

/// `GET /console/suppressions`.
pub async fn suppressions(
    state: web::Data<AppState>,
    session: Session,
    query: web::Query<SuppressionsQuery>,
) -> Page {
    session.require("suppressions:read")?;
    let after = query
        .after
        .as_deref()
        .and_then(|cursor| cursor.split_once(' '));
    let rows = state
        .store
        .suppressions_page(session.tenant_scope(None).as_ref(), after, FETCH)
        .await
        .map_err(unavailable)?;
    let (rows, next) = paged(rows, |last| {
        query_string(&[("after", &format!("{} {}", last.tenant, last.address))])
    });
    render(&SuppressionsPage {
        nav: nav(&session, "suppressions"),
        flash: flash(query.done.as_deref(), None),
        rows: rows
            .into_iter()
            .map(|entry| SuppressionRow {
                detail: [entry.note, entry.smtp_reply]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" · "),
                tenant: entry.tenant,
                address: entry.address,
                reason: entry.reason,
                created_at: views::time(&entry.created_at),
            })
            .collect(),
        next,
        can_write: session.has("suppressions:write"),
        all_tenants: session.has(ALL_TENANTS),
    })
}

#[derive(Debug, Deserialize)]
struct SuppressionForm {
    csrf: Option<String>,
    address: Option<String>,
    note: Option<String>,
    tenant: Option<String>,
}

impl SuppressionForm {
    /// The tenant whose list is changed: the session's own, or (with
    /// `tenants:all`) the one the form names.
    fn tenant(&self, session: &Session) -> Result<Tenant, ConsoleError> {
        Ok(session
            .tenant_scope(parse_tenant(self.tenant.as_deref())?)
            .unwrap_or_else(|| session.claims.tenant.clone()))
    }

    fn address(&self) -> Result<String, ConsoleError> {
        Ok(crate::routes::suppressions::suppression_key(
            self.address.as_deref().unwrap_or_default(),
            "address",
        )?)
    }
}

/// `POST /console/suppressions`: adds an address by hand.
pub async fn add_suppression(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: Session,
    body: web::Bytes,
) -> Page {
    let form: SuppressionForm = form(&body)?;
    session
        .authorize_post(&req, form.csrf.as_deref(), "suppressions:write")
        .await?;
    let tenant = form.tenant(&session)?;
    let address = form.address()?;
    let note = form
        .note
        .as_deref()
        .map(str::trim)
        .filter(|note| !note.is_empty())
        .map(Note::parse)
        .transpose()
        .map_err(|e| ConsoleError::BadRequest(format!("the note {e}")))?;
    let done = match state
        .store
        .add_suppression(&tenant, &address, note.as_ref())
        .await
        .map_err(unavailable)?
    {
        Added::New(_) => "suppressed",
        Added::Existing(_) => "listed",
    };
    tracing::info!(
        sub = session.subject(),
        "address suppressed from the console"
    );
    Ok(see_other(&format!("/console/suppressions?done={done}")))
}

/// `POST /console/suppressions/lift`.
pub async fn lift_suppression(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: Session,
    body: web::Bytes,
) -> Page {
    let form: SuppressionForm = form(&body)?;
    session
        .authorize_post(&req, form.csrf.as_deref(), "suppressions:write")
        .await?;
    let tenant = form.tenant(&session)?;
    let address = form.address()?;
    if !state
        .store
        .lift_suppression(&tenant, &address)
        .await
        .map_err(unavailable)?
    {
        return Err(ConsoleError::NotFound(format!(
            "{address} is not suppressed"
        )));
    }
    tracing::info!(
        sub = session.subject(),
        "suppression lifted from the console"
    );
    Ok(see_other("/console/suppressions?done=lifted"))
}

fn webhook_row(hook: sendonce_shared::store::Webhook) -> WebhookRow {
    WebhookRow {
        id: hook.id.to_string(),
        tenant: hook.tenant,
        url: hook.url,
        events: hook
            .event_types
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        description: hook.description.unwrap_or_default(),
        failing_since: hook.failing_since.as_ref().map(views::time),
    }
}

#[derive(Debug, Deserialize)]
pub struct WebhooksQuery {
    before: Option<uuid::Uuid>,
}

/// `GET /console/webhooks`: the endpoints, failing ones marked.
pub async fn webhooks(
    state: web::Data<AppState>,
    session: Session,
    query: web::Query<WebhooksQuery>,
) -> Page {
    session.require("webhooks:read")?;
    let rows = state
        .store
        .webhooks_page(session.tenant_scope(None).as_ref(), query.before, FETCH)
        .await
        .map_err(unavailable)?;
    let (rows, next) = paged(rows, |last| {
        query_string(&[("before", &last.id.to_string())])
    });
    render(&WebhooksPage {
        nav: nav(&session, "webhooks"),
        rows: rows.into_iter().map(webhook_row).collect(),
        next,
    })
}

#[derive(Debug, Deserialize)]
pub struct WebhookQuery {
    before: Option<i64>,
    done: Option<String>,
}

fn parse_webhook_id(raw: &str) -> Result<uuid::Uuid, ConsoleError> {
    raw.parse()
        .map_err(|_| ConsoleError::NotFound(format!("no webhook endpoint {raw}")))
}

/// `GET /console/webhooks/{id}`: an endpoint and its delivery log.
pub async fn webhook(
    state: web::Data<AppState>,
    session: Session,
    path: web::Path<String>,
    query: web::Query<WebhookQuery>,
) -> Page {
    session.require("webhooks:read")?;
    let id = parse_webhook_id(&path)?;
    let tenant = session.tenant_scope(None);
    let Some(hook) = state
        .store
        .webhook(id, tenant.as_ref())
        .await
        .map_err(unavailable)?
    else {
        return Err(ConsoleError::NotFound(format!("no webhook endpoint {id}")));
    };
    let deliveries = state
        .store
        .webhook_deliveries_page(id, tenant.as_ref(), query.before, FETCH)
        .await
        .map_err(unavailable)?;
    let (deliveries, next) = paged(deliveries, |last| {
        query_string(&[("before", &last.id.to_string())])
    });
    render(&WebhookPage {
        nav: nav(&session, "webhooks"),
        flash: flash(query.done.as_deref(), None),
        endpoint: webhook_row(hook),
        deliveries: deliveries
            .into_iter()
            .map(|d| DeliveryRow {
                id: d.id,
                event: d.event_type.as_str().to_owned(),
                state: d.state,
                attempts: d.attempts,
                last_attempt: views::time_or_dash(d.last_attempt_at.as_ref()),
                last_status: d.last_status.map(|s| s.to_string()).unwrap_or_default(),
                last_error: d.last_error.unwrap_or_default(),
                next_attempt: views::time_or_dash(d.next_attempt_at.as_ref()),
            })
            .collect(),
        next,
        can_write: session.has("webhooks:write"),
    })
}

/// `POST /console/webhooks/{id}/resume`: clears a failing endpoint and makes
/// its held deliveries due.
pub async fn resume_webhook(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: Session,
    path: web::Path<String>,
    body: web::Bytes,
) -> Page {
    let form: CsrfForm = form(&body)?;
    session
        .authorize_post(&req, form.csrf.as_deref(), "webhooks:write")
        .await?;
    let id = parse_webhook_id(&path)?;
    let patch = WebhookPatch {
        resume: true,
        ..WebhookPatch::default()
    };
    if state
        .store
        .patch_webhook(id, session.tenant_scope(None).as_ref(), &patch)
        .await
        .map_err(unavailable)?
        .is_none()
    {
        return Err(ConsoleError::NotFound(format!("no webhook endpoint {id}")));
    }
    tracing::info!(webhook = %id, sub = session.subject(), "webhook endpoint resumed from the console");
    Ok(see_other(&format!("/console/webhooks/{id}?done=resumed")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_the_form_s_local_time_as_utc_or_rfc_3339() {
        let at = |raw| parse_since(raw).ok().flatten().map(|t| t.to_rfc3339());
        assert_eq!(
            at("2026-12-03T19:40"),
            Some("2026-12-03T19:40:00+00:00".into())
        );
        assert_eq!(
            at("2026-12-03T19:40:12"),
            Some("2026-12-03T19:40:12+00:00".into())
        );
        assert_eq!(
            at("2026-12-03T20:40:12+01:00"),
            Some("2026-12-03T19:40:12+00:00".into())
        );
        assert!(parse_since("").is_ok_and(|t| t.is_none()));
        assert!(parse_since("yesterday").is_err());
    }

    #[test]
    fn a_notice_is_one_of_the_console_s_own_sentences() {
        assert_eq!(
            flash(Some("requeued"), Some(2)).as_deref(),
            Some("Requeued 2 dead-letter entries.")
        );
        assert_eq!(
            flash(Some("discarded"), Some(1)).as_deref(),
            Some("Discarded 1 dead-letter entry.")
        );
        assert_eq!(flash(Some("Your account is locked, call 555"), None), None);
        assert_eq!(flash(None, Some(3)), None);
    }

    #[test]
    fn a_page_shows_at_most_page_rows_and_links_the_next_only_when_there_is_one() {
        let (rows, next) = paged((0..PAGE).collect(), |last| last.to_string());
        assert_eq!((rows.len(), next), (PAGE, None));
        let (rows, next) = paged((0..=PAGE).collect(), |last| last.to_string());
        assert_eq!((rows.len(), next), (PAGE, Some((PAGE - 1).to_string())));
    }

    #[test]
    fn the_confirmation_names_how_many_uncertain_entries_it_covers() {
        assert_eq!(confirm_phrase(1), "requeue 1 uncertain");
        assert_ne!(confirm_phrase(1), confirm_phrase(2));
    }

    #[test]
    fn a_selection_is_the_row_s_button_or_the_checked_boxes_without_repeats() {
        let checked: ActionForm = form(b"csrf=x&ids=3&ids=1&ids=3").expect("form");
        assert_eq!(checked.selection().ok(), Some(vec![1, 3]));
        let one: ActionForm = form(b"csrf=x&ids=3&one=7").expect("form");
        assert_eq!(one.selection().ok(), Some(vec![7]));
        assert!(form::<ActionForm>(b"ids=not-a-number").is_err());
    }
}
