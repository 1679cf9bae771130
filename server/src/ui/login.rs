//! Signing in to the console. With authentication on, a page opened without a valid token is
//! sent to `/ui/login`, where the user pastes a token; `POST /ui/login` checks it and sets it as
//! the cookie the console's requests carry (`HttpOnly`: no script reads it; `SameSite=Strict`:
//! no other site's request carries it; good for reads only, see `api::access`). `POST
//! /ui/logout` clears it. Failed sign-ins share the rate of requests without a valid token and
//! are audited.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use chrono::Utc;
use maud::{html, DOCTYPE};
use serde::Deserialize;

use crate::api::access::COOKIE;
use crate::api::error::ApiError;
use crate::api::request::parse_body;
use crate::api::AppState;
use crate::auth::{AuditEntry, AuthError};

/// The longest a console session lasts (shorter when the token expires sooner).
const SESSION_SECONDS: i64 = 30 * 24 * 3600;

pub const SCRIPT: &str = include_str!("assets/login.js");

/// `GET /ui/login`
pub async fn page() -> Html<String> {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (super::html::head("Sign in"))
            body {
                header { strong { "minicloud" } }
                main id="main" {
                    h1 { "Sign in" }
                    form id="login" {
                        p {
                            label for="token" { "API token" } br;
                            input id="token" name="token" type="password" autocomplete="current-password" size="60"
                                required placeholder="mc_…";
                        }
                        p { button type="submit" { "Sign in" } }
                        p id="problem" class="problem" role="alert" {}
                        p class="hint" {
                            "Make one with " code { "cloud auth token create NAME --role view" }
                            "; the first start of " code { "cloud server --auth" } " printed an admin token."
                        }
                    }
                }
                script type="module" src="/ui/assets/login.js" {}
            }
        }
    };
    Html(markup.into_string() + "\n")
}

#[derive(Deserialize)]
struct Credentials {
    token: String,
}

/// `POST /ui/login` with `{"token": "mc_…"}`: sets the cookie (204), or says why not.
pub async fn sign_in(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let body = match parse_body(body, &state.limits).await {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    let Ok(credentials) = serde_json::from_value::<Credentials>(body) else {
        return ApiError::bad_request("send {\"token\": \"mc_…\"}").into_response();
    };
    let Some(auth) = state.auth.clone() else {
        // Nothing to sign in to: every request is allowed.
        return StatusCode::NO_CONTENT.into_response();
    };
    let request_id = headers.get("x-request-id").and_then(|value| value.to_str().ok()).unwrap_or("-").to_owned();
    let (principal, expires_at, code, message) = match auth.authenticate_until(credentials.token.trim()).await {
        Ok((principal, expires_at)) => (principal.name, expires_at, StatusCode::NO_CONTENT, String::new()),
        Err(AuthError::Store(error)) => {
            return ApiError::unavailable(format!("cannot check the token now: {error}")).into_response()
        }
        Err(AuthError::TooMany(_)) => {
            return ApiError::too_many_requests("too many failed sign-ins; wait a little").into_response()
        }
        Err(error) => ("-".to_owned(), None, StatusCode::UNAUTHORIZED, error.to_string()),
    };
    if let Some(log) = &state.audit {
        let entry = AuditEntry {
            time: Utc::now(),
            request_id,
            principal,
            verb: "login".into(),
            resource: "console".into(),
            namespace: None,
            name: None,
            code: code.as_u16(),
            message: message.clone(),
        };
        log.record(entry).await;
    }
    if code != StatusCode::NO_CONTENT {
        return ApiError::unauthorized(message).into_response();
    }
    let lifetime = expires_at.map_or(SESSION_SECONDS, |at| (at - Utc::now()).num_seconds().clamp(1, SESSION_SECONDS));
    let secure = if forwarded_over_https(&headers) { "; Secure" } else { "" };
    let cookie =
        format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={lifetime}{secure}", credentials.token.trim());
    set_cookie(StatusCode::NO_CONTENT.into_response(), &cookie)
}

/// `POST /ui/logout`: clears the cookie; the header's "Sign out" form is then sent to the
/// sign-in page (a script's request gets 204).
pub async fn sign_out(headers: HeaderMap) -> Response {
    let secure = if forwarded_over_https(&headers) { "; Secure" } else { "" };
    let from_a_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    let answer = if from_a_form {
        axum::response::Redirect::to("/ui/login").into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    };
    set_cookie(answer, &format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"))
}

/// Whether a reverse proxy says the browser used HTTPS (then the cookie is `Secure`).
fn forwarded_over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}

fn set_cookie(mut response: Response, cookie: &str) -> Response {
    match HeaderValue::from_str(cookie) {
        Ok(value) => {
            response.headers_mut().insert(header::SET_COOKIE, value);
            response
        }
        Err(_) => ApiError::bad_request("the token holds characters a token never has").into_response(),
    }
}
