//! `POST /addJobs`: up to [`MAX_JOBS`] `/addJob` bodies in one request,
//! recorded in Postgres in one statement, then pushed in one Redis round
//! trip, answered item by item in order.

use actix_web::{HttpRequest, HttpResponse, web};
use sendonce_shared::domain::{Task, Tenant};
use sendonce_shared::store::{Accepted, Submission};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::auth::{Authorized, scope};
use crate::problem::{ApiError, Problem};
use crate::rate_limit::RateLimit;
use crate::routes::add_job::{AddJobBody, JobAccepted, NewJob, answer};
use crate::state::AppState;

/// Most jobs in one request.
pub const MAX_JOBS: usize = 1000;

/// The request body. Each job is kept raw here and read on its own, so a
/// job with a wrong type or an unknown field fails alone, next to the
/// valid ones.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddJobsBody {
    /// `/addJob` bodies, 1 to 1000.
    #[schema(value_type = Vec<AddJobBody>)]
    pub jobs: Vec<Box<RawValue>>,
}

/// One item of the answer, at the position of its job in the request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ItemAnswer {
    /// Accepted: new (`queued`) or a replay of an accepted key.
    Accepted(JobAccepted),
    /// Refused; nothing was enqueued for this item.
    Refused {
        /// Why, as the problem `/addJob` would have answered.
        error: Problem<'static>,
    },
}

/// The answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AddJobsAnswer {
    /// One per job, in request order.
    pub items: Vec<ItemAnswer>,
}

/// One job of the batch, as a submission for `tenant` (its fingerprint
/// taken before the sender policy fills in a default `from`, as in
/// `POST /addJob`).
fn parse(raw: &RawValue, state: &AppState, tenant: &Tenant) -> Result<Submission, ApiError> {
    let body: AddJobBody = serde_json::from_str(raw.get())
        .map_err(|e| ApiError::BadRequest(format!("the job is invalid: {e}")))?;
    let mut job = NewJob::try_from(body)?
        .within(state.max_job_bytes)?
        .message_within(state.max_message_bytes)?
        .scheduled_within(state.max_schedule_days)?
        .addressed_within(state.max_recipients)?;
    let fingerprint = job.fingerprint();
    state.senders.apply(tenant.as_str(), &mut job.email)?;
    let task = Task::new(job.email, job.key)
        .in_tenant(tenant.clone())
        .at_priority(job.priority);
    Ok(Submission::new(task, fingerprint))
}

/// `POST /addJobs`. Answers 200 with one item per job when the request is
/// well-formed, whatever the items' fates; 4xx when it is not.
#[utoipa::path(
    post,
    path = "/addJobs",
    tag = "jobs",
    request_body = AddJobsBody,
    responses(
        (status = 200, description = "One answer per job, in request order: the accepted job or the problem with that job", body = AddJobsAnswer),
    ),
    security(("bearer" = ["jobs:write"])),
)]
#[tracing::instrument(name = "add_jobs", skip_all, fields(jobs, queued))]
pub async fn add_jobs(
    caller: Authorized<scope::JobsWrite>,
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<AddJobsBody>,
) -> Result<HttpResponse, ApiError> {
    if req.headers().contains_key("Idempotency-Key") {
        return Err(ApiError::BadRequest(
            "the Idempotency-Key header does not apply to /addJobs; give each job its \
             `idempotency_key`"
                .into(),
        ));
    }
    let jobs = body.into_inner().jobs;
    if jobs.is_empty() || jobs.len() > MAX_JOBS {
        return Err(ApiError::InvalidField {
            field: "jobs",
            reason: format!("must hold 1 to {MAX_JOBS} jobs, not {}", jobs.len()),
        });
    }
    tracing::Span::current().record("jobs", jobs.len());
    // The extractor took one job's worth from the caller's bucket; a batch
    // pays for the rest of its jobs too.
    if let Some(limit) = req.app_data::<web::Data<RateLimit>>() {
        limit.check_batch(&caller.rate_key(), jobs.len()).await?;
    }

    if let Some(backlog) = &state.backlog {
        backlog.admit(&caller.claims.tenant, jobs.len()).await?;
    }
    let parsed: Vec<Result<Submission, ApiError>> = jobs
        .iter()
        .map(|raw| parse(raw, &state, &caller.claims.tenant))
        .collect();
    drop(jobs);
    let mut valid = Vec::with_capacity(parsed.len());
    let mut refused = Vec::with_capacity(parsed.len());
    for item in parsed {
        refused.push(match item {
            Ok(submission) => {
                valid.push(submission);
                None
            }
            Err(e) => Some(e),
        });
    }
    let outcomes = if valid.is_empty() {
        Vec::new()
    } else {
        state
            .store
            .accept(&valid)
            .await
            .map_err(ApiError::unavailable)?
    };
    let now = chrono::Utc::now();
    let fresh: Vec<(String, std::time::Duration)> = valid
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| **o == Accepted::New)
        .map(|(s, _)| (s.json().to_owned(), s.task.email.due_in(now)))
        .collect();
    let queued = fresh.len();
    // Recorded, hence accepted, whatever Redis says now: a push that fails
    // is retried in the background, and the reconciler is the backstop.
    if !fresh.is_empty()
        && let Err(e) = state.handoff.push(fresh).await
    {
        tracing::warn!(error = %e, jobs = queued, "accepted jobs could not be pushed to Redis; they are recorded, and the reconciler will push them");
    }
    metrics::counter!(crate::telemetry::JOBS_ENQUEUED).increment(queued as u64);
    tracing::Span::current().record("queued", queued);
    tracing::info!("batch accepted");

    let answers: Vec<Result<(actix_web::http::StatusCode, JobAccepted), ApiError>> = valid
        .into_iter()
        .zip(outcomes)
        .map(|(submission, outcome)| {
            let Submission {
                task, fingerprint, ..
            } = submission;
            let scheduled = !task.email.due_in(now).is_zero();
            answer(
                task.job_id,
                task.idempotency_key,
                &fingerprint,
                outcome,
                scheduled,
            )
        })
        .collect();
    let mut answers = answers.into_iter();
    let items = refused
        .into_iter()
        .map(|refusal| {
            let outcome = match refusal {
                None => answers.next().unwrap_or_else(|| {
                    Err(ApiError::Internal(anyhow::anyhow!(
                        "fewer answers than valid jobs"
                    )))
                }),
                Some(e) => Err(e),
            };
            match outcome {
                Ok((_, accepted)) => ItemAnswer::Accepted(accepted),
                Err(e) => ItemAnswer::Refused { error: e.problem() },
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(AddJobsAnswer { items }))
}

/// The route, with its own body limit (`MAX_BATCH_BYTES`).
pub fn resource(path: &str, max_batch_bytes: usize) -> actix_web::Resource {
    web::resource(path)
        .app_data(
            web::JsonConfig::default()
                .limit(max_batch_bytes)
                .error_handler(crate::startup::json_error),
        )
        .route(web::post().to(add_jobs))
}
