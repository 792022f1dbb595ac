//! Webhook endpoints: create, list, read, patch (URL, event types,
//! description, secret rotation, resume), delete; an endpoint's delivery
//! log, and replaying one delivery. The signing secret is shown twice
//! only: in the answer that creates it and in the one that rotates it.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use sendonce_shared::domain::Note;
use sendonce_shared::domain::webhooks::{EventType, EventTypes, WebhookSecret, WebhookUrl};
use sendonce_shared::store::{NewWebhook, Webhook, WebhookDelivery, WebhookPatch};
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use crate::auth::{Authorized, scope};
use crate::paging::Keyset;
use crate::problem::{ApiError, parse_field};
use crate::state::AppState;

/// The overlap of a rotation without `overlap_seconds`: a day.
const DEFAULT_OVERLAP_SECS: u64 = 86_400;
/// The longest overlap: a week.
const MAX_OVERLAP_SECS: u64 = 7 * 86_400;

/// `POST /webhooks` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where events are POSTed: `https` (`http` too with
    /// `APP_ENV=development`), no user name or password, not an IP address
    /// in a private, loopback, link-local or other non-public range, nor
    /// `localhost` (allowed with `APP_ENV=development`).
    #[schema(
        max_length = 2048,
        pattern = "^https?://",
        example = "https://example.com/hooks/sendonce"
    )]
    pub url: String,
    /// The event types to receive; every type but `job.retrying` when
    /// absent.
    #[serde(default)]
    #[schema(value_type = Option<Vec<EventType>>, min_items = 1)]
    pub event_types: Option<Vec<String>>,
    /// Your own words about it: 1 to 500 characters, no control characters.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub description: Option<String>,
}

/// `PATCH /webhooks/{id}` body: what to change; absent members stay.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchWebhook {
    /// A new URL, as in `POST /webhooks`.
    #[serde(default)]
    #[schema(max_length = 2048, pattern = "^https?://")]
    pub url: Option<String>,
    /// New event types (at least one).
    #[serde(default)]
    #[schema(value_type = Option<Vec<EventType>>, min_items = 1)]
    pub event_types: Option<Vec<String>>,
    /// A new description; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(
        value_type = Option<String>,
        min_length = 1,
        max_length = 500,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub description: Option<Option<String>>,
    /// Make a new secret, shown in this answer only; the current one goes
    /// on signing too for `overlap_seconds`.
    #[serde(default)]
    pub rotate_secret: Option<bool>,
    /// With `rotate_secret`: how long the current secret goes on signing,
    /// 0 to 604800 seconds (default 86400).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 604800)]
    pub overlap_seconds: Option<u64>,
    /// Clear `failing_since` and make every held delivery due now.
    #[serde(default)]
    pub resume: Option<bool>,
}

/// Tells a member given as `null` (`Some(None)`) from an absent one
/// (`None`, by `#[serde(default)]`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// An endpoint, and its secret when this answer made one.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookWithSecret {
    /// The endpoint.
    #[serde(flatten)]
    pub webhook: Webhook,
    /// The signing secret (`whsec_` and base64): in the answer that creates
    /// the endpoint and in the one that rotates it, never again.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^whsec_[A-Za-z0-9+/]+={0,2}$")]
    pub secret: Option<String>,
}

/// `GET /webhooks` query string.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// With the scope `tenants:all`: only this tenant's endpoints (every
    /// tenant's when absent). Without it, ignored: a caller sees its own.
    #[param(min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")]
    pub tenant: Option<String>,
}

/// `GET /webhooks/{id}/deliveries` query string.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One page of endpoints.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookPage {
    /// Endpoints, newest first.
    pub items: Vec<Webhook>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// One page of an endpoint's delivery log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryPage {
    /// Deliveries, newest first.
    pub items: Vec<WebhookDelivery>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

fn url(state: &AppState, raw: &str) -> Result<WebhookUrl, ApiError> {
    WebhookUrl::parse(raw, state.webhook_urls).map_err(|e| ApiError::InvalidField {
        field: "url",
        reason: e.to_string(),
    })
}

fn event_types(raw: &[String]) -> Result<EventTypes, ApiError> {
    EventTypes::parse(raw).map_err(|reason| ApiError::InvalidField {
        field: "event_types",
        reason,
    })
}

fn description(raw: String) -> Result<Note, ApiError> {
    Note::parse(raw).map_err(|e| ApiError::InvalidField {
        field: "description",
        reason: e.to_string(),
    })
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::InvalidField {
        field: "id",
        reason: "is not a UUID".into(),
    })
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no webhook endpoint {id}"))
}

/// `POST /webhooks`.
#[utoipa::path(
    post,
    operation_id = "create_webhook",
    path = "/webhooks",
    tag = "webhooks",
    request_body = CreateWebhook,
    responses((status = 201, description = "The endpoint, with its secret (shown this once)", body = WebhookWithSecret)),
    security(("bearer" = ["webhooks:write"])),
)]
#[tracing::instrument(name = "create_webhook", skip_all)]
pub async fn create(
    caller: Authorized<scope::WebhooksWrite>,
    state: web::Data<AppState>,
    body: web::Json<CreateWebhook>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let new = NewWebhook {
        url: url(&state, &body.url)?,
        event_types: match &body.event_types {
            Some(raw) => event_types(raw)?,
            None => EventTypes::default_subscription(),
        },
        description: body.description.map(description).transpose()?,
    };
    let secret = WebhookSecret::generate();
    let webhook = state
        .store
        .create_webhook(&caller.claims.tenant, &new, &secret)
        .await
        .map_err(ApiError::unavailable)?;
    tracing::info!(id = %webhook.id, "webhook endpoint created");
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/webhooks/{}", webhook.id)))
        .json(WebhookWithSecret {
            webhook,
            secret: Some(secret.expose().to_owned()),
        }))
}

/// `GET /webhooks`.
#[utoipa::path(
    get,
    operation_id = "list_webhooks",
    path = "/webhooks",
    tag = "webhooks",
    params(ListQuery),
    responses((status = 200, description = "One page, newest first", body = WebhookPage)),
    security(("bearer" = ["webhooks:read"])),
)]
#[tracing::instrument(name = "list_webhooks", skip_all)]
pub async fn list(
    caller: Authorized<scope::WebhooksRead>,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let keyset = Keyset::<Uuid>::parse(query.limit, query.cursor.as_deref())?;
    let tenant = caller
        .claims
        .tenant_scope(parse_field("tenant", query.tenant.as_deref())?);
    let rows = state
        .store
        .webhooks_page(tenant.as_ref(), keyset.before, keyset.fetch())
        .await
        .map_err(ApiError::unavailable)?;
    let (items, next_cursor) = keyset.page(rows, |w| w.id);
    Ok(HttpResponse::Ok().json(WebhookPage { items, next_cursor }))
}

/// `GET /webhooks/{id}`.
#[utoipa::path(
    get,
    operation_id = "get_webhook",
    path = "/webhooks/{id}",
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's `id`")),
    responses((status = 200, description = "The endpoint (never its secret)", body = Webhook)),
    security(("bearer" = ["webhooks:read"])),
)]
#[tracing::instrument(name = "get_webhook", skip_all, fields(id = %path))]
pub async fn get(
    caller: Authorized<scope::WebhooksRead>,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    // Another tenant's endpoint answers as an unknown one does.
    let tenant = caller.claims.tenant_scope(None);
    match state
        .store
        .webhook(id, tenant.as_ref())
        .await
        .map_err(ApiError::unavailable)?
    {
        Some(webhook) => Ok(HttpResponse::Ok().json(webhook)),
        None => Err(not_found(id)),
    }
}

/// `PATCH /webhooks/{id}`.
#[utoipa::path(
    patch,
    operation_id = "patch_webhook",
    path = "/webhooks/{id}",
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's `id`")),
    request_body = PatchWebhook,
    responses((status = 200, description = "The endpoint as it now is; with `rotate_secret`, its new secret (shown this once)", body = WebhookWithSecret)),
    security(("bearer" = ["webhooks:write"])),
)]
#[tracing::instrument(name = "patch_webhook", skip_all, fields(id = %path))]
pub async fn patch(
    caller: Authorized<scope::WebhooksWrite>,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<PatchWebhook>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let body = body.into_inner();
    let rotate = body.rotate_secret.unwrap_or(false);
    let overlap = match (rotate, body.overlap_seconds) {
        (_, Some(secs)) if secs > MAX_OVERLAP_SECS => {
            return Err(ApiError::InvalidField {
                field: "overlap_seconds",
                reason: format!("must be at most {MAX_OVERLAP_SECS}"),
            });
        }
        (false, Some(_)) => {
            return Err(ApiError::InvalidField {
                field: "overlap_seconds",
                reason: "is given only with `rotate_secret: true`".into(),
            });
        }
        (_, secs) => Duration::from_secs(secs.unwrap_or(DEFAULT_OVERLAP_SECS)),
    };
    let secret = rotate.then(WebhookSecret::generate);
    let patch = WebhookPatch {
        url: body
            .url
            .as_deref()
            .map(|raw| url(&state, raw))
            .transpose()?,
        event_types: body.event_types.as_deref().map(event_types).transpose()?,
        description: body
            .description
            .map(|d| d.map(description).transpose())
            .transpose()?,
        rotate: secret.clone().map(|s| (s, overlap)),
        resume: body.resume.unwrap_or(false),
    };
    let tenant = caller.claims.tenant_scope(None);
    let Some(webhook) = state
        .store
        .patch_webhook(id, tenant.as_ref(), &patch)
        .await
        .map_err(ApiError::unavailable)?
    else {
        return Err(not_found(id));
    };
    tracing::info!(
        rotated = rotate,
        resumed = patch.resume,
        "webhook endpoint changed"
    );
    Ok(HttpResponse::Ok().json(WebhookWithSecret {
        webhook,
        secret: secret.map(|s| s.expose().to_owned()),
    }))
}

/// `DELETE /webhooks/{id}`.
#[utoipa::path(
    delete,
    operation_id = "delete_webhook",
    path = "/webhooks/{id}",
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's `id`")),
    responses((status = 204, description = "The endpoint and its delivery log are deleted; its undelivered events are dropped")),
    security(("bearer" = ["webhooks:write"])),
)]
#[tracing::instrument(name = "delete_webhook", skip_all, fields(id = %path))]
pub async fn delete(
    caller: Authorized<scope::WebhooksWrite>,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let tenant = caller.claims.tenant_scope(None);
    if state
        .store
        .delete_webhook(id, tenant.as_ref())
        .await
        .map_err(ApiError::unavailable)?
    {
        tracing::info!("webhook endpoint deleted");
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(not_found(id))
    }
}

/// `GET /webhooks/{id}/deliveries`.
#[utoipa::path(
    get,
    operation_id = "list_webhook_deliveries",
    path = "/webhooks/{id}/deliveries",
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's `id`"), PageQuery),
    responses((status = 200, description = "One page of its delivery log, newest first", body = DeliveryPage)),
    security(("bearer" = ["webhooks:read"])),
)]
#[tracing::instrument(name = "list_webhook_deliveries", skip_all, fields(id = %path))]
pub async fn deliveries(
    caller: Authorized<scope::WebhooksRead>,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let keyset = Keyset::<i64>::parse(query.limit, query.cursor.as_deref())?;
    let tenant = caller.claims.tenant_scope(None);
    let store = &state.store;
    if store
        .webhook(id, tenant.as_ref())
        .await
        .map_err(ApiError::unavailable)?
        .is_none()
    {
        return Err(not_found(id));
    }
    let rows = store
        .webhook_deliveries_page(id, tenant.as_ref(), keyset.before, keyset.fetch())
        .await
        .map_err(ApiError::unavailable)?;
    let (items, next_cursor) = keyset.page(rows, |d| d.id);
    Ok(HttpResponse::Ok().json(DeliveryPage { items, next_cursor }))
}

/// `POST /webhooks/{id}/deliveries/{delivery_id}/replay`.
#[utoipa::path(
    post,
    operation_id = "replay_webhook_delivery",
    path = "/webhooks/{id}/deliveries/{delivery_id}/replay",
    tag = "webhooks",
    params(
        ("id" = Uuid, Path, description = "The endpoint's `id`"),
        ("delivery_id" = i64, Path, minimum = 1, description = "The delivery's `id`, from its delivery log"),
    ),
    responses((status = 200, description = "The delivery is `pending`, due now, with a fresh retry schedule, whatever its state was (a delivered event is sent again, with the same `webhook-id`)", body = WebhookDelivery)),
    security(("bearer" = ["webhooks:write"])),
)]
#[tracing::instrument(name = "replay_webhook_delivery", skip_all)]
pub async fn replay(
    caller: Authorized<scope::WebhooksWrite>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, delivery) = path.into_inner();
    let id = parse_id(&id)?;
    let delivery = delivery
        .parse::<i64>()
        .ok()
        .filter(|d| *d > 0)
        .ok_or_else(|| ApiError::InvalidField {
            field: "delivery_id",
            reason: "must be a positive integer".into(),
        })?;
    let tenant = caller.claims.tenant_scope(None);
    match state
        .store
        .replay_webhook_delivery(id, delivery, tenant.as_ref())
        .await
        .map_err(ApiError::unavailable)?
    {
        Some(replayed) => {
            tracing::info!(%id, delivery, "webhook delivery replayed");
            Ok(HttpResponse::Ok().json(replayed))
        }
        None => Err(ApiError::NotFound(format!(
            "no delivery {delivery} of webhook endpoint {id}"
        ))),
    }
}
