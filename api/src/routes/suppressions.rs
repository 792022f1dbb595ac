//! The suppression list: list, add by hand, lift. Jobs to a listed address
//! end `suppressed` without an SMTP conversation; the worker adds the
//! addresses a server refused for good.

use actix_web::{HttpResponse, web};
use sendonce_shared::domain::{EmailAddress, Note, Tenant};
use sendonce_shared::store::{Added, Suppression};
use serde::{Deserialize, Serialize};

use crate::auth::{Authorized, Claims, scope};
use crate::paging::Keyset;
use crate::problem::{ApiError, parse_field};
use crate::state::AppState;

/// `GET /suppressions` query string.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// With the scope `tenants:all`: only this tenant's list (every
    /// tenant's when absent). Without it, ignored: a caller sees its own.
    #[param(min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")]
    pub tenant: Option<String>,
}

/// `?tenant=` of the routes that change a list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TenantQuery {
    /// With the scope `tenants:all`: change this tenant's list (the
    /// caller's own when absent). Without it, ignored.
    #[param(min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")]
    pub tenant: Option<String>,
}

/// `POST /suppressions` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddSuppression {
    /// The address to suppress (a display name is allowed and dropped).
    #[schema(min_length = 1, max_length = 998, example = "ada@example.com")]
    pub address: String,
    /// Why: 1 to 500 characters, no control characters.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub note: Option<String>,
}

/// One page of suppression lists.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SuppressionPage {
    /// Entries, by tenant and address.
    pub items: Vec<Suppression>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// The list an action changes: the caller's own, or with `tenants:all` the
/// one `?tenant=` names.
fn target(claims: &Claims, query: &TenantQuery) -> Result<Tenant, ApiError> {
    let named = parse_field("tenant", query.tenant.as_deref())?;
    Ok(claims
        .tenant_scope(named)
        .unwrap_or_else(|| claims.tenant.clone()))
}

/// The address as the list keys it ([`EmailAddress::suppression_key`]).
pub(crate) fn suppression_key(raw: &str, field: &'static str) -> Result<String, ApiError> {
    EmailAddress::parse(raw)
        .map(|address| address.suppression_key())
        .map_err(|e| ApiError::InvalidField {
            field,
            reason: e.to_string(),
        })
}

/// The cursor key of an entry: its tenant (which holds no space) and
/// address.
fn cursor_key(entry: &Suppression) -> String {
    format!("{} {}", entry.tenant, entry.address)
}

/// `GET /suppressions`.
#[utoipa::path(
    get,
    operation_id = "list_suppressions",
    path = "/suppressions",
    tag = "suppressions",
    params(ListQuery),
    responses((status = 200, description = "One page, by tenant and address", body = SuppressionPage)),
    security(("bearer" = ["suppressions:read"])),
)]
#[tracing::instrument(name = "list_suppressions", skip_all)]
pub async fn list(
    caller: Authorized<scope::SuppressionsRead>,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let keyset = Keyset::<String>::parse(query.limit, query.cursor.as_deref())?;
    let tenant = caller
        .claims
        .tenant_scope(parse_field("tenant", query.tenant.as_deref())?);
    let after = match &keyset.before {
        Some(key) => Some(key.split_once(' ').ok_or_else(|| ApiError::InvalidField {
            field: "cursor",
            reason: "is not a cursor this API issued".into(),
        })?),
        None => None,
    };
    let rows = state
        .store
        .suppressions_page(tenant.as_ref(), after, keyset.fetch())
        .await
        .map_err(ApiError::unavailable)?;
    let (items, next_cursor) = keyset.page(rows, cursor_key);
    Ok(HttpResponse::Ok().json(SuppressionPage { items, next_cursor }))
}

/// `POST /suppressions`.
#[utoipa::path(
    post,
    operation_id = "add_suppression",
    path = "/suppressions",
    tag = "suppressions",
    params(TenantQuery),
    request_body = AddSuppression,
    responses(
        (status = 201, description = "The address is now suppressed", body = Suppression),
        (status = 200, description = "The address was suppressed already: its entry, unchanged (a bounce stays a bounce, with its reply)", body = Suppression),
    ),
    security(("bearer" = ["suppressions:write"])),
)]
#[tracing::instrument(name = "add_suppression", skip_all)]
pub async fn add(
    caller: Authorized<scope::SuppressionsWrite>,
    state: web::Data<AppState>,
    query: web::Query<TenantQuery>,
    body: web::Json<AddSuppression>,
) -> Result<HttpResponse, ApiError> {
    let tenant = target(&caller.claims, &query)?;
    let body = body.into_inner();
    let address = suppression_key(&body.address, "address")?;
    let note = body
        .note
        .map(Note::parse)
        .transpose()
        .map_err(|e| ApiError::InvalidField {
            field: "note",
            reason: e.to_string(),
        })?;
    match state
        .store
        .add_suppression(&tenant, &address, note.as_ref())
        .await
        .map_err(ApiError::unavailable)?
    {
        Added::New(entry) => {
            tracing::info!("address suppressed");
            Ok(HttpResponse::Created().json(entry))
        }
        Added::Existing(entry) => Ok(HttpResponse::Ok().json(entry)),
    }
}

/// `DELETE /suppressions/{address}`.
#[utoipa::path(
    delete,
    operation_id = "lift_suppression",
    path = "/suppressions/{address}",
    tag = "suppressions",
    params(
        ("address" = String, Path, description = "The address, URL-encoded (`ada%2Btag%40example.com`); matched as the list keys it (lower-cased, the domain in A-labels)"),
        TenantQuery,
    ),
    responses((status = 204, description = "Lifted: later jobs to the address are sent")),
    security(("bearer" = ["suppressions:write"])),
)]
#[tracing::instrument(name = "lift_suppression", skip_all)]
pub async fn lift(
    caller: Authorized<scope::SuppressionsWrite>,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<TenantQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = target(&caller.claims, &query)?;
    let address = suppression_key(&path, "address")?;
    if state
        .store
        .lift_suppression(&tenant, &address)
        .await
        .map_err(ApiError::unavailable)?
    {
        tracing::info!("suppression lifted");
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::NotFound(format!("{address} is not suppressed")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_keyed_by_its_lower_cased_addr_spec_with_the_domain_in_a_labels() {
        let key = |raw| suppression_key(raw, "address").ok();
        assert_eq!(
            key("Ada Lovelace <Ada.L@Example.COM>").as_deref(),
            Some("ada.l@example.com")
        );
        assert_eq!(
            key("ada+tag@bücher.example").as_deref(),
            Some("ada+tag@xn--bcher-kva.example")
        );
        assert_eq!(key("not an address"), None);
    }
}
