//! API errors: one type that every handler returns, rendered as a Kubernetes `Status` object
//! (`{kind: Status, status: Failure, code, reason, message, details: {causes}}`) with the
//! matching HTTP status, so that kubectl and client libraries read them as they read
//! Kubernetes' own.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use minicloud_crds::FieldError;
pub use minicloud_model::answers::Cause;
use serde_json::json;

use crate::store::StoreError;

/// An error as the API reports it.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    /// CamelCase machine-readable reason (`NotFound`, `Conflict`, `Invalid`, ...).
    pub reason: &'static str,
    pub message: String,
    /// Field problems, for validation errors.
    pub causes: Vec<Cause>,
    /// Kind and name concerned, when there is one.
    pub target: Option<(String, String)>,
}

impl ApiError {
    fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, reason, message: message.into(), causes: Vec::new(), target: None }
    }

    /// 400: the request itself is malformed.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 400 with every field problem of an object.
    pub fn invalid(what: &str, errors: Vec<FieldError>) -> ApiError {
        let causes =
            errors.into_iter().map(|error| Cause { field: error.path.to_string(), message: error.message }).collect();
        ApiError::invalid_causes(&format!("{what} is invalid"), causes)
    }

    /// 400 with field problems: the message is `headline: field: problem; ...`.
    pub fn invalid_causes(headline: &str, causes: Vec<Cause>) -> ApiError {
        let summary = causes.iter().map(|cause| format!("{}: {}", cause.field, cause.message)).collect::<Vec<_>>();
        let mut error =
            ApiError::new(StatusCode::BAD_REQUEST, "Invalid", format!("{headline}: {}", summary.join("; ")));
        error.causes = causes;
        error
    }

    /// 401: the request carries no valid token.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", message)
    }

    /// 403: the request may not do this.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    /// 415: the body is not in a type the API reads.
    pub fn unsupported_media_type(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", message)
    }

    /// 404: no such resource type or object.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    /// 409: the object exists but what was asked of it is not there yet (e.g. logs before the
    /// container was created).
    pub fn not_started(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "NotStarted", message)
    }

    /// 409: the server is not set up to do this (e.g. rotate a key it did not read from a file).
    pub fn not_possible(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "NotPossible", message)
    }

    /// 405: the path exists, the method does not.
    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
    }

    /// 408: the client did not send its request in time.
    pub fn request_timeout(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::REQUEST_TIMEOUT, "Timeout", message)
    }

    /// 413: the body exceeds the limit.
    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("request body is larger than {} MiB; split the batch", limit >> 20),
        )
    }

    /// 413: what the request would make is larger than an object may be.
    pub fn too_large_object(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge", message)
    }

    /// 429: a per-server limit is reached; retry later.
    pub fn too_many_requests(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", message)
    }

    /// 503: the server is shutting down or the store is unreachable.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", message)
    }

    /// The JSON body of this error.
    pub fn body(&self) -> serde_json::Value {
        let mut details = serde_json::Map::new();
        if let Some((kind, name)) = &self.target {
            details.insert("kind".into(), json!(kind));
            details.insert("name".into(), json!(name));
        }
        if !self.causes.is_empty() {
            let causes: Vec<_> = self
                .causes
                .iter()
                .map(|cause| json!({"reason": "FieldValueInvalid", "field": cause.field, "message": cause.message}))
                .collect();
            details.insert("causes".into(), json!(causes));
        }
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "code": self.status.as_u16(),
            "reason": self.reason,
            "message": self.message,
            "details": details,
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        let message = error.to_string();
        let (status, reason, target) = match &error {
            StoreError::NotFound(key) => (StatusCode::NOT_FOUND, "NotFound", Some(key)),
            StoreError::AlreadyExists(key) => (StatusCode::CONFLICT, "AlreadyExists", Some(key)),
            StoreError::Conflict { key, .. } => (StatusCode::CONFLICT, "Conflict", Some(key)),
            StoreError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid", None),
            StoreError::TooLarge { key, .. } => (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge", Some(key)),
            StoreError::Expired { .. } => (StatusCode::GONE, "Expired", None),
            StoreError::UnsupportedUrl(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError", None),
            StoreError::Database(_) => {
                tracing::error!(%error, "store failure");
                (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", None)
            }
            StoreError::Corrupt(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError", None),
            StoreError::Secret(_) => (StatusCode::INTERNAL_SERVER_ERROR, "SecretUnreadable", None),
        };
        let mut api = ApiError::new(status, reason, message);
        api.target = target.map(|key| (key.kind.as_str().to_owned(), key.name.clone()));
        api
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        response.extensions_mut().insert(super::audit_note::AuditNote(self.message));
        response
    }
}
