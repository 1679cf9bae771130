//! `DeleteOptions`: what a DELETE asks for, from its body (as kubectl and the Kubernetes client
//! libraries send it: `{"kind": "DeleteOptions", "dryRun": ["All"], "preconditions": {...},
//! "propagationPolicy": "Background"}`) and its query (`?dryRun=All&propagationPolicy=...`,
//! and minicloud's own `?resourceVersion=N`).
//!
//! - `dryRun: ["All"]` answers as the delete would and changes nothing;
//! - `preconditions.uid` / `preconditions.resourceVersion` (and `?resourceVersion=`) make the
//!   delete apply only to that object, that version: otherwise 409 and nothing is deleted;
//! - `propagationPolicy`: children go with their owner in the background; `Background` and
//!   `Foreground` are accepted (the owner may go before its children: a `Warning` says so for
//!   `Foreground`), `Orphan` (and `orphanDependents: true`) is refused, because the children
//!   would be deleted all the same;
//! - `gracePeriodSeconds` is accepted and has no effect (containers stop as their controller
//!   stops them).

use std::collections::HashMap;

use serde_json::Value;

use super::error::ApiError;

/// What one DELETE asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    pub dry_run: bool,
    /// The uid the object must have.
    pub uid: Option<String>,
    /// The resourceVersion the object must have.
    pub resource_version: Option<String>,
    /// A warning for the answer (`Foreground` carried out as background deletion).
    pub warning: Option<String>,
}

/// Reads the options of a DELETE from its query and body (an empty body is no options);
/// contradictions between the two are refused.
pub fn delete_options(params: &HashMap<String, String>, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let mut options = DeleteOptions { dry_run: super::request::dry_run(params)?, ..DeleteOptions::default() };
    let mut propagation = params.get("propagationPolicy").cloned();
    if let Some(grace) = params.get("gracePeriodSeconds") {
        grace
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("gracePeriodSeconds {grace:?} is not a whole number")))?;
    }
    options.resource_version = params.get("resourceVersion").filter(|version| !version.is_empty()).cloned();
    if !body.iter().all(u8::is_ascii_whitespace) {
        let body: Value = serde_json::from_slice(body)
            .map_err(|error| ApiError::bad_request(format!("the DeleteOptions body is not valid JSON: {error}")))?;
        let Value::Object(body) = body else {
            return Err(ApiError::bad_request("the DELETE body must be a DeleteOptions object"));
        };
        if let Some(kind) = body.get("kind").and_then(Value::as_str).filter(|kind| *kind != "DeleteOptions") {
            return Err(ApiError::bad_request(format!("the DELETE body is a {kind}; send DeleteOptions or nothing")));
        }
        match body.get("dryRun") {
            None | Some(Value::Null) => {}
            Some(Value::Array(modes)) => {
                for mode in modes {
                    match mode.as_str() {
                        Some("All") => options.dry_run = true,
                        _ => return Err(ApiError::bad_request(format!("dryRun {mode}: the only dry run is \"All\""))),
                    }
                }
            }
            Some(other) => {
                return Err(ApiError::bad_request(format!("dryRun must be a list like [\"All\"], got {other}")))
            }
        }
        match body.get("preconditions") {
            None | Some(Value::Null) => {}
            Some(Value::Object(preconditions)) => {
                let text = |field: &str| match preconditions.get(field) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(value)) => Ok(Some(value.clone())),
                    Some(other) => {
                        Err(ApiError::bad_request(format!("preconditions.{field} must be a string, got {other}")))
                    }
                };
                options.uid = text("uid")?;
                if let Some(version) = text("resourceVersion")? {
                    if options.resource_version.as_ref().is_some_and(|query| *query != version) {
                        return Err(ApiError::bad_request(format!(
                            "preconditions.resourceVersion {version:?} contradicts ?resourceVersion={:?}",
                            options.resource_version.unwrap_or_default()
                        )));
                    }
                    options.resource_version = Some(version);
                }
            }
            Some(other) => return Err(ApiError::bad_request(format!("preconditions must be an object, got {other}"))),
        }
        match body.get("propagationPolicy") {
            None | Some(Value::Null) => {}
            Some(Value::String(policy)) => {
                if propagation.as_ref().is_some_and(|query| query != policy) {
                    return Err(ApiError::bad_request(format!(
                        "propagationPolicy {policy:?} in the body contradicts {:?} in the query",
                        propagation.unwrap_or_default()
                    )));
                }
                propagation = Some(policy.clone());
            }
            Some(other) => {
                return Err(ApiError::bad_request(format!("propagationPolicy must be a string, got {other}")))
            }
        }
        if body.get("orphanDependents") == Some(&Value::Bool(true)) {
            propagation = Some("Orphan".into());
        }
        match body.get("gracePeriodSeconds") {
            None | Some(Value::Null) => {}
            Some(Value::Number(number)) if number.is_i64() => {}
            Some(other) => {
                return Err(ApiError::bad_request(format!("gracePeriodSeconds must be a whole number, got {other}")))
            }
        }
    }
    match propagation.as_deref() {
        None | Some("" | "Background") => {}
        Some("Foreground") => {
            options.warning = Some(
                "propagationPolicy Foreground is carried out as Background: the owner may go before its children, which are deleted after it".into(),
            )
        }
        Some("Orphan") => {
            return Err(ApiError::bad_request(
                "minicloud does not orphan dependents: an owner's children are always deleted with it. Remove the ownerReference from the children first to keep them",
            ))
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "propagationPolicy {other:?} is not one of Background, Foreground, Orphan"
            )))
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn what_kubectl_and_the_python_client_send_is_read() {
        // kubectl delete --dry-run=server
        let kubectl =
            br#"{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Background","dryRun":["All"]}"#;
        let options = delete_options(&params(&[]), kubectl).expect("options");
        assert!(options.dry_run);
        // The Python client's delete(body={"dryRun": ["All"]}).
        assert!(delete_options(&params(&[]), br#"{"dryRun": ["All"]}"#).expect("options").dry_run);
        assert!(delete_options(&params(&[("dryRun", "All")]), b"").expect("options").dry_run);
        let preconditions = br#"{"preconditions": {"uid": "u-1", "resourceVersion": "7"}}"#;
        let options = delete_options(&params(&[]), preconditions).expect("options");
        assert_eq!((options.uid.as_deref(), options.resource_version.as_deref()), (Some("u-1"), Some("7")));
        assert!(!options.dry_run);
        assert_eq!(delete_options(&params(&[]), b"").expect("none"), DeleteOptions::default());
        let foreground = delete_options(&params(&[("propagationPolicy", "Foreground")]), b"").expect("accepted");
        assert!(foreground.warning.is_some());
        assert!(delete_options(&params(&[]), br#"{"gracePeriodSeconds": 0}"#).is_ok());
    }

    #[test]
    fn what_cannot_be_honoured_is_refused() {
        for (query, body) in [
            (vec![], &br#"{"propagationPolicy": "Orphan"}"#[..]),
            (vec![], br#"{"orphanDependents": true}"#),
            (vec![("propagationPolicy", "Orphan")], b""),
            (vec![], br#"{"dryRun": ["Some"]}"#),
            (vec![], br#"{"dryRun": "All"}"#),
            (vec![], br#"{"kind": "Instance"}"#),
            (vec![], br#"[1]"#),
            (vec![], b"{"),
            (vec![("resourceVersion", "3")], br#"{"preconditions": {"resourceVersion": "4"}}"#),
            (vec![("gracePeriodSeconds", "soon")], b""),
        ] {
            assert!(delete_options(&params(&query), body).is_err(), "{query:?} {}", String::from_utf8_lossy(body));
        }
    }
}
