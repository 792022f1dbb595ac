//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! attributes and the request and response types, served at
//! `/openapi.json`. Error answers are added here, once, from what each
//! operation can fail with, so every route documents the same problems.

use std::sync::LazyLock;

use actix_web::HttpResponse;
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::Ref;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Header, Object, Type};
use utoipa::{Modify, OpenApi};

use crate::problem::Problem;
use crate::routes::{
    add_job, add_jobs, audit, failed_jobs, health, jobs, stats, suppressions, webhooks,
};

/// The document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "sendonce", description = "Transactional email with an exactly-once effect."),
    paths(
        add_job::add_job,
        add_jobs::add_jobs,
        jobs::get_job,
        jobs::cancel,
        stats::stats,
        failed_jobs::list,
        failed_jobs::retry_one,
        failed_jobs::retry_bulk,
        failed_jobs::discard,
        audit::list,
        webhooks::create,
        webhooks::list,
        webhooks::get,
        webhooks::patch,
        webhooks::delete,
        webhooks::deliveries,
        webhooks::replay,
        suppressions::list,
        suppressions::add,
        suppressions::lift,
        health::healthz,
        health::readyz,
        openapi_json,
    ),
    components(schemas(Problem)),
    modifiers(&Security, &Problems),
)]
pub struct ApiDoc;

static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
});

/// The document as JSON.
pub fn document() -> &'static str {
    &DOCUMENT
}

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses(
    (status = 200, description = "This document", body = Object),
))]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(DOCUMENT.as_str())
}

/// Declares the bearer-JWT scheme the operations' `security` names.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT signed with the configured algorithm; `scope` lists the granted \
                         scopes. The caller's tenant is the claim named by `JWT_TENANT_CLAIM` \
                         (default `tenant`; `default` without it): idempotency keys, jobs, \
                         dead letters, the audit trail, webhook endpoints and the suppression \
                         list are the tenant's. The scope \
                         `tenants:all` lifts that confinement, and lets `tenant` narrow the \
                         listings.",
                    ))
                    .build(),
            ),
        );
    }
}

/// Adds the problem answers each operation can give.
struct Problems;

impl Modify for Problems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for (method, operation) in [
                (HttpMethod::Get, item.get.as_mut()),
                (HttpMethod::Post, item.post.as_mut()),
                (HttpMethod::Patch, item.patch.as_mut()),
                (HttpMethod::Delete, item.delete.as_mut()),
            ] {
                if let Some(operation) = operation {
                    add_problems(method, operation);
                }
            }
        }
    }
}

fn add_problems(method: HttpMethod, operation: &mut Operation) {
    if operation.security.is_none() {
        return;
    }
    let writes = method != HttpMethod::Get;
    let has_body = operation.request_body.is_some();
    let has_path_param = operation
        .parameters
        .iter()
        .flatten()
        .any(|p| matches!(p.parameter_in, utoipa::openapi::path::ParameterIn::Path));
    let problems = [
        (
            "400",
            "The request could not be read: malformed JSON, unknown fields, bad query string; or more than one `Authorization` header (`WWW-Authenticate: Bearer error=\"invalid_request\"`)",
            true,
        ),
        (
            "401",
            "No bearer token (`WWW-Authenticate: Bearer`), or one that does not verify (`WWW-Authenticate: Bearer error=\"invalid_token\"`)",
            true,
        ),
        (
            "403",
            "The token lacks this route's scope (`WWW-Authenticate: Bearer error=\"insufficient_scope\"`)",
            true,
        ),
        ("404", "No such resource", has_path_param),
        (
            "408",
            "The body did not arrive within `BODY_TIMEOUT_MS`",
            has_body,
        ),
        (
            "413",
            "The body is larger than `MAX_BODY_BYTES` (`MAX_BATCH_BYTES` for `/addJobs`)",
            has_body,
        ),
        ("415", "The body is not `application/json`", has_body),
        ("422", "A value is invalid; `detail` names the field", true),
        (
            "429",
            "This token subject's write rate limit is spent; see `Retry-After`",
            writes,
        ),
        (
            "503",
            "Redis or Postgres is unavailable, or (`/addJobs`) `MAX_LARGE_REQUESTS` large bodies are being read; retry after `Retry-After`",
            true,
        ),
    ];
    for (status, description, applies) in problems {
        if !applies {
            continue;
        }
        let mut response = ResponseBuilder::new().description(description).content(
            "application/problem+json",
            Content::new(Some(Ref::from_schema_name("Problem"))),
        );
        if matches!(status, "429" | "503") {
            response =
                response.header("Retry-After", Header::new(Object::with_type(Type::Integer)));
        }
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert(response.build().into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_and_every_route_is_in_it() {
        let doc: serde_json::Value = serde_json::from_str(&DOCUMENT).expect("JSON");
        assert!(
            doc["openapi"]
                .as_str()
                .unwrap_or_default()
                .starts_with("3.1")
        );
        for path in [
            "/addJob",
            "/addJobs",
            "/jobs/{job_id}",
            "/failedJobs",
            "/failedJobs/retry",
            "/failedJobs/{id}/retry",
            "/failedJobs/{id}",
            "/audit",
            "/webhooks",
            "/webhooks/{id}",
            "/webhooks/{id}/deliveries",
            "/webhooks/{id}/deliveries/{delivery_id}/replay",
            "/suppressions",
            "/suppressions/{address}",
            "/healthz",
            "/readyz",
            "/openapi.json",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} is missing");
        }
        let add_job = &doc["paths"]["/addJob"]["post"]["responses"];
        for status in [
            "202", "200", "400", "401", "403", "413", "415", "422", "429", "503",
        ] {
            assert!(add_job[status].is_object(), "POST /addJob lacks {status}");
        }
        let patch = &doc["paths"]["/webhooks/{id}"]["patch"]["responses"];
        for status in ["200", "400", "401", "403", "404", "422", "429", "503"] {
            assert!(
                patch[status].is_object(),
                "PATCH /webhooks/{{id}} lacks {status}"
            );
        }
        let schemas = &doc["components"]["schemas"];
        for schema in [
            "Webhook",
            "WebhookWithSecret",
            "WebhookDelivery",
            "DeliveryAttempt",
            "EventType",
            "Suppression",
        ] {
            assert!(schemas[schema].is_object(), "schema {schema} is missing");
        }
        assert!(schemas["AddJobBody"]["properties"]["attachments"].is_object());
        for member in ["filename", "content_type", "content", "content_id"] {
            assert!(
                schemas["Attachment"]["properties"][member].is_object(),
                "an attachment's `{member}` is missing"
            );
        }
    }
}
