//! `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`: "may I?" answered from the
//! asking token's role and namespace (what `kubectl auth can-i` and client libraries send). It
//! decides with the same permission check the access layer applies to every request, so the
//! answer is what the request itself would meet; nothing is written.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use minicloud_crds::Kind;
use serde_json::{json, Value};

use super::error::ApiError;
use super::request::parse_body;
use super::AppState;
use crate::auth::{Permission, Principal, Verb};

/// The resources a review may ask about beyond the kinds' plurals.
const OTHER_RESOURCES: &[&str] = &["events", "namespaces", "tokens", "audit", "secretkeys", "metrics"];

/// Answers a `SelfSubjectAccessReview`.
pub async fn self_subject_access_review(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let review = parse_body(body, &state.limits).await?;
    if review.get("kind").and_then(Value::as_str).is_some_and(|kind| kind != "SelfSubjectAccessReview") {
        return Err(ApiError::bad_request("send a SelfSubjectAccessReview"));
    }
    let spec = review.get("spec").cloned().unwrap_or(json!({}));
    let (allowed, reason) = match (spec.get("resourceAttributes"), spec.get("nonResourceAttributes")) {
        (Some(attributes), _) => decide_resource(&principal, attributes)?,
        (None, Some(attributes)) => decide_non_resource(&principal, attributes),
        (None, None) => {
            return Err(ApiError::bad_request("spec needs resourceAttributes or nonResourceAttributes"));
        }
    };
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "metadata": {"creationTimestamp": null},
            "spec": spec,
            "status": {"allowed": allowed, "reason": reason},
        })),
    ))
}

/// The verbs a Kubernetes verb stands for (`*`: all of them).
fn verbs(verb: &str) -> Result<Vec<Verb>, String> {
    Ok(match verb {
        "get" => vec![Verb::Get],
        "list" => vec![Verb::List],
        "watch" => vec![Verb::Watch],
        "create" => vec![Verb::Create],
        "update" => vec![Verb::Update],
        "patch" => vec![Verb::Patch],
        "delete" => vec![Verb::Delete],
        "*" => vec![Verb::Get, Verb::List, Verb::Watch, Verb::Create, Verb::Update, Verb::Patch, Verb::Delete],
        "deletecollection" => return Err("minicloud has no deletecollection: delete objects one by one".into()),
        other => return Err(format!("verb {other:?} is not one minicloud knows")),
    })
}

fn decide_resource(principal: &Principal, attributes: &Value) -> Result<(bool, String), ApiError> {
    let text = |field: &str| attributes.get(field).and_then(Value::as_str).unwrap_or("").to_owned();
    let (group, resource, subresource) = (text("group"), text("resource"), text("subresource"));
    let namespace = Some(text("namespace")).filter(|namespace| !namespace.is_empty());
    if !matches!(group.as_str(), "" | "*" | minicloud_crds::API_GROUP) {
        return Ok((
            false,
            format!("minicloud serves the API group {} only, not {group:?}", minicloud_crds::API_GROUP),
        ));
    }
    let verbs = match verbs(&text("verb")) {
        Ok(verbs) => verbs,
        Err(reason) => return Ok((false, reason)),
    };
    let resources: Vec<String> = match resource.as_str() {
        "*" => Kind::ALL.iter().map(|kind| kind.plural().to_owned()).collect(),
        plural if Kind::from_plural(plural).is_some() || OTHER_RESOURCES.contains(&plural) => {
            vec![if subresource.is_empty() { plural.to_owned() } else { format!("{plural}/{subresource}") }]
        }
        "" => return Err(ApiError::bad_request("resourceAttributes.resource is required")),
        other => return Ok((false, format!("minicloud has no resource {other:?}"))),
    };
    for resource in &resources {
        for verb in &verbs {
            let permission = Permission { verb: *verb, resource: resource.clone(), namespace: namespace.clone() };
            if let Err(denial) = principal.check(&permission) {
                return Ok((false, denial.to_string()));
            }
        }
    }
    Ok((true, format!("allowed by {}", principal.grant())))
}

fn decide_non_resource(principal: &Principal, attributes: &Value) -> (bool, String) {
    let path = attributes.get("path").and_then(Value::as_str).unwrap_or("");
    match path {
        "/metrics" => match principal.check(&Permission::new(Verb::Get, "metrics", None)) {
            Ok(()) => (true, format!("allowed by {}", principal.grant())),
            Err(denial) => (false, denial.to_string()),
        },
        "/version" | "/healthz" | "/readyz" | "/api" | "/apis" | "/openapi/v2" | "/openapi/v3" => {
            (true, "discovery is open to every token".into())
        }
        other => (false, format!("minicloud decides {other:?} by its route; ask about a resource instead")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn editor_of(namespace: &str) -> Principal {
        Principal::token("ci", Role::Edit, Some(namespace.into()))
    }

    #[test]
    fn answers_follow_the_role_and_namespace() {
        let who = editor_of("shop");
        let ask = |verb: &str, resource: &str, namespace: &str| {
            decide_resource(
                &who,
                &json!({"verb": verb, "group": "minicloud.dev", "resource": resource, "namespace": namespace}),
            )
            .expect("decided")
            .0
        };
        assert!(ask("create", "instances", "shop"));
        assert!(ask("patch", "scalinggroups", "shop"));
        assert!(!ask("create", "instances", "prod"), "another namespace");
        assert!(!ask("create", "policies", "shop"), "policies need admin");
        assert!(ask("get", "policies", "shop"));
        assert!(!ask("list", "instances", ""), "every namespace is not its one");
        assert!(!ask("*", "*", "shop"));
        assert!(!ask("deletecollection", "instances", "shop"));
        let (allowed, reason) =
            decide_resource(&who, &json!({"verb": "get", "group": "apps", "resource": "deployments"}))
                .expect("decided");
        assert!(!allowed && reason.contains("minicloud.dev"), "{reason}");
        assert!(decide_resource(&Principal::anonymous(), &json!({"verb": "*", "resource": "*"})).expect("ok").0);
    }
}
