//! Tokens, the caller's identity and the audit log over HTTP (`cloud auth`, `cloud audit`):
//!
//! - `POST /apis/minicloud.dev/v1/tokens` `{"name", "role", "namespace"?, "expiresInSeconds"?}`
//!   answers the token's record and, once, the token itself (`token`);
//! - `GET /apis/minicloud.dev/v1/tokens` lists the records (never a token);
//! - `DELETE /apis/minicloud.dev/v1/tokens/{name}` revokes one;
//! - `GET /apis/minicloud.dev/v1/whoami` says who the caller is;
//! - `GET /apis/minicloud.dev/v1/audit?since=RFC3339&limit=N` reads the audit log.
//!
//! All but `whoami` need role admin; an administrator of one namespace sees and manages that
//! namespace's tokens and audit entries only, and makes tokens for it only.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::audit_note::AuditNote;
use super::error::ApiError;
use super::request::parse_body;
use super::AppState;
use crate::auth::{tokens, AccessError, AccessStore, AuditQuery, NewToken, Permission, Principal, Role, Verb};

/// The longest a token may live.
const MAX_LIFETIME_SECONDS: u64 = 10 * 365 * 24 * 3600;
/// Audit entries answered at most (and by default).
const MAX_AUDIT_ENTRIES: usize = 10_000;

impl From<AccessError> for ApiError {
    fn from(error: AccessError) -> ApiError {
        match error {
            AccessError::AlreadyExists(_) => {
                let mut api = ApiError::forbidden(error.to_string());
                api.status = StatusCode::CONFLICT;
                api.reason = "AlreadyExists";
                api
            }
            AccessError::NotFound(_) => ApiError::not_found(error.to_string()),
            AccessError::Store(error) => error.into(),
        }
    }
}

fn access_store(state: &AppState) -> Result<&Arc<dyn AccessStore>, ApiError> {
    state.access.as_ref().ok_or_else(|| ApiError::not_possible("this server's store keeps no tokens"))
}

/// What a token is asked for.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenRequest {
    name: String,
    role: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    expires_in_seconds: Option<u64>,
}

/// Checks a token request and turns it into the token to create.
fn new_token(request: TokenRequest, now: DateTime<Utc>) -> Result<NewToken, ApiError> {
    let field = |field: &str, message: String| {
        ApiError::invalid_causes(
            "the token request is invalid",
            vec![super::error::Cause { field: field.into(), message }],
        )
    };
    minicloud_crds::validation::check_dns_label(&request.name).map_err(|reason| field("name", reason))?;
    if crate::auth::reserved_name(&request.name) {
        return Err(field(
            "name",
            format!(
                "{:?} is kept for minicloud's own identities (anonymous, system-*); choose another name",
                request.name
            ),
        ));
    }
    let role = Role::parse(&request.role).map_err(|reason| field("role", reason))?;
    if let Some(namespace) = &request.namespace {
        minicloud_crds::validation::check_dns_label(namespace).map_err(|reason| field("namespace", reason))?;
    }
    let expires_at = match request.expires_in_seconds {
        None => None,
        Some(0) => return Err(field("expiresInSeconds", "must be at least 1".into())),
        Some(seconds) if seconds > MAX_LIFETIME_SECONDS => {
            return Err(field("expiresInSeconds", format!("at most {MAX_LIFETIME_SECONDS} (ten years)")))
        }
        Some(seconds) => Some(now + chrono::Duration::seconds(i64::try_from(seconds).unwrap_or(i64::MAX))),
    };
    Ok(NewToken { name: request.name, role, namespace: request.namespace, expires_at })
}

/// `POST /apis/minicloud.dev/v1/tokens`
pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Body,
) -> Result<(StatusCode, Extension<AuditNote>, Json<Value>), ApiError> {
    let store = access_store(&state)?;
    let body = parse_body(body, &state.limits).await?;
    let request: TokenRequest = serde_json::from_value(body).map_err(|error| {
        ApiError::bad_request(format!("send {{\"name\", \"role\", \"namespace\"?, \"expiresInSeconds\"?}}: {error}"))
    })?;
    let token = new_token(request, Utc::now())?;
    principal
        .check(&Permission::new(Verb::Create, "tokens", token.namespace.as_deref()))
        .map_err(|denial| ApiError::forbidden(denial.to_string()))?;
    if token.role > principal.role {
        return Err(ApiError::forbidden(format!(
            "token {:?} ({}) cannot make a token with the greater role {}",
            principal.name,
            principal.grant(),
            token.role
        )));
    }
    let secret = tokens::generate();
    let record = store.create_token(&token, &secret.hash).await?;
    tracing::info!(token = %record.name, role = %record.role, by = %principal.name, "token created");
    let mut answer = serde_json::to_value(&record).map_err(|error| ApiError::bad_request(error.to_string()))?;
    answer["token"] = json!(secret.text);
    let grant = Principal::token(&record.name, record.role, record.namespace.clone());
    let note = AuditNote(format!("token {:?} with {}", record.name, grant.grant()));
    Ok((StatusCode::CREATED, Extension(note), Json(answer)))
}

/// `GET /apis/minicloud.dev/v1/tokens`
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    let records = access_store(&state)?.list_tokens(principal.namespace.as_deref()).await?;
    let now = Utc::now();
    let items: Vec<Value> = records
        .iter()
        .map(|record| {
            let mut item = serde_json::to_value(record).unwrap_or_default();
            item["state"] = json!(record.state(now));
            item
        })
        .collect();
    Ok(Json(json!({"items": items})))
}

/// `DELETE /apis/minicloud.dev/v1/tokens/{name}`
pub async fn revoke(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = access_store(&state)?;
    let not_found = || ApiError::not_found(format!("no token named {name:?}; `cloud auth token list` shows them"));
    let record = store.token(&name).await?.ok_or_else(not_found)?;
    // A namespace's administrator neither revokes nor learns of other namespaces' tokens.
    if !principal.allows(&Permission::new(Verb::Delete, "tokens", record.namespace.as_deref())) {
        return Err(not_found());
    }
    let record = store.revoke_token(&name).await?;
    if let Some(auth) = &state.auth {
        auth.forget_cached();
    }
    tracing::info!(token = %record.name, by = %principal.name, "token revoked");
    Ok(Json(serde_json::to_value(&record).unwrap_or_default()))
}

/// `GET /apis/minicloud.dev/v1/whoami`
pub async fn whoami(State(state): State<AppState>, Extension(principal): Extension<Principal>) -> Json<Value> {
    Json(json!({
        "name": principal.name,
        "role": principal.role,
        "namespace": principal.namespace,
        "authentication": state.auth.is_some(),
    }))
}

/// `GET /apis/minicloud.dev/v1/audit`
pub async fn audit(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let limit = match params.get("limit") {
        Some(text) => Some(text.parse::<usize>().map_err(|_| {
            ApiError::bad_request(format!("limit={text:?}: write a number from 1 to {MAX_AUDIT_ENTRIES}"))
        })?),
        None => None,
    };
    let since = match params.get("since").map(String::as_str).filter(|since| !since.is_empty()) {
        Some(text) => Some(
            DateTime::parse_from_rfc3339(text)
                .map_err(|error| ApiError::bad_request(format!("since={text:?} is not an RFC 3339 time: {error}")))?
                .with_timezone(&Utc),
        ),
        None => None,
    };
    let query = AuditQuery {
        since,
        namespace: principal.namespace.clone(),
        limit: limit.unwrap_or(MAX_AUDIT_ENTRIES).clamp(1, MAX_AUDIT_ENTRIES),
    };
    let records = access_store(&state)?.audit(&query).await?;
    Ok(Json(json!({"items": records})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: &str, role: &str, expires: Option<u64>) -> TokenRequest {
        TokenRequest { name: name.into(), role: role.into(), namespace: None, expires_in_seconds: expires }
    }

    #[test]
    fn token_requests_are_checked_field_by_field() {
        let now = Utc::now();
        let token = new_token(request("ci", "edit", Some(60)), now).expect("valid");
        assert_eq!(token.expires_at, Some(now + chrono::Duration::seconds(60)));
        for (bad, field) in [
            (request("CI/x", "edit", None), "name"),
            (request("ci", "root", None), "role"),
            (request("ci", "view", Some(0)), "expiresInSeconds"),
            (request("ci", "view", Some(u64::MAX)), "expiresInSeconds"),
        ] {
            let error = new_token(bad, now).expect_err("invalid");
            assert_eq!(error.causes[0].field, field, "{}", error.message);
        }
    }
}
