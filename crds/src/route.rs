//! `Route`: HTTP routing rules attached to the listeners of LoadBalancers — the Kubernetes
//! Gateway API's HTTPRoute in spirit and naming. A route names its parents (a LoadBalancer
//! and optionally one listener), the host names it serves, and rules: which requests
//! (path, headers, method, query parameters) go to which backends (Instances, ScalingGroups or
//! a label selector, in the route's namespace, with weights), with optional filters
//! (redirect, header changes, URL rewrite). The LoadBalancer's listener decides which
//! namespaces may attach; the route's status says, per parent, whether it was accepted and
//! whether its backends resolve.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::http::{check_header_name, check_hostname, check_method, check_query_name, check_route_path, check_value};
use crate::meta::{Condition, LabelSelector};
use crate::rules::{check_dns_label, check_label_key, check_label_value, Errors};
use crate::FieldPath;

/// Desired routing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    /// The LoadBalancers (and listeners) the route attaches to; at least one.
    pub parent_refs: Vec<ParentRef>,
    /// Host names served: exact (`shop.example.com`) or wildcard (`*.example.com`). None: every
    /// host the listener serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// Rules; at least one.
    pub rules: Vec<RouteRule>,
}

/// A LoadBalancer (and optionally one of its listeners) a route attaches to.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentRef {
    /// Name of the LoadBalancer.
    pub name: String,
    /// Its namespace; defaults to the route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The listener; absent: every HTTP and HTTPS listener that admits the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

impl ParentRef {
    /// The LoadBalancer's namespace, for a route in `own`.
    pub fn namespace_or<'a>(&'a self, own: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(own)
    }
}

/// Which requests go where.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRule {
    /// Any one matching is enough; none means every request (path prefix `/`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// Changes made to matched requests and their responses, or a redirect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<RouteFilter>,
    /// Where matched requests go, split by weight. A rule without backends (and without a
    /// redirect) answers 500.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<BackendRef>,
}

/// Conditions on a request; all must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// The path. Defaults to prefix `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Headers that must be present with exactly these values (names compared without case).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<NameValue>,
    /// The method (`GET`, `POST`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Query parameters that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<NameValue>,
}

impl RouteMatch {
    /// The path match, with the default (prefix `/`) filled in.
    pub fn path_or_default(&self) -> PathMatch {
        self.path.clone().unwrap_or_default()
    }
}

/// A path condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatch {
    /// `Exact` or `PathPrefix` (whole segments: `/api` matches `/api` and `/api/x`, not
    /// `/apix`). Defaults to `PathPrefix`.
    #[serde(default, rename = "type")]
    pub type_: PathMatchType,
    /// The path; starts with `/`. Defaults to `/`.
    #[serde(default = "root_path")]
    pub value: String,
}

fn root_path() -> String {
    "/".into()
}

impl Default for PathMatch {
    fn default() -> PathMatch {
        PathMatch { type_: PathMatchType::PathPrefix, value: root_path() }
    }
}

/// How a path is compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PathMatchType {
    /// The whole path, literally.
    Exact,
    /// A prefix of whole path segments.
    #[default]
    PathPrefix,
}

/// A header or query parameter and its exact value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

/// Where matched requests go.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    /// `Instance` or `ScalingGroup` (with `name`); absent with `selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<BackendKind>,
    /// Name of the Instance or ScalingGroup, in the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Instances in the route's namespace whose labels match (instead of `kind` and `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// The Instances' port that receives the requests.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Share of the rule's requests, relative to the other backends'. Defaults to 1; 0 sends
    /// nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub weight: Option<u32>,
}

impl BackendRef {
    /// The weight, defaulted.
    pub fn weight_or_default(&self) -> u32 {
        self.weight.unwrap_or(1)
    }

    /// How the backend reads in messages: `Instance/web`, `ScalingGroup/api`, `selector app=web`.
    pub fn describe(&self) -> String {
        match (&self.kind, &self.name, &self.selector) {
            (Some(kind), Some(name), _) => format!("{}/{name}", kind.as_str()),
            (_, _, Some(selector)) => {
                let labels: Vec<String> = selector.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("selector {}", labels.join(","))
            }
            _ => "an incomplete backend".into(),
        }
    }
}

/// The kinds a backend may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BackendKind {
    Instance,
    ScalingGroup,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Instance => "Instance",
            BackendKind::ScalingGroup => "ScalingGroup",
        }
    }
}

/// A change to matched requests (or their responses), in the Gateway API's shape: `type`
/// names which of the other fields is given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteFilter {
    /// `RequestRedirect`, `RequestHeaderModifier`, `ResponseHeaderModifier` or `URLRewrite`.
    #[serde(rename = "type")]
    pub type_: FilterType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "urlRewrite")]
    pub url_rewrite: Option<UrlRewrite>,
}

/// Filter types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FilterType {
    RequestRedirect,
    RequestHeaderModifier,
    ResponseHeaderModifier,
    #[serde(rename = "URLRewrite")]
    UrlRewrite,
}

/// Answer with a redirect instead of forwarding.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestRedirect {
    /// `http` or `https`; defaults to the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Defaults to the request's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Defaults to the scheme's well-known port when `scheme` is given, else the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// 301, 302 (the default), 303, 307 or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
}

/// Header changes: set (replace), add (append), remove.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderModifier {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<NameValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<NameValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// Rewrite the request before it is forwarded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlRewrite {
    /// The `Host` header the backend sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The path the backend sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// How the path is rewritten.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathModifier {
    /// `ReplacePrefixMatch` (the matched prefix is replaced) or `ReplaceFullPath`.
    #[serde(rename = "type")]
    pub type_: PathModifierType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
}

/// Path rewrite types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PathModifierType {
    ReplacePrefixMatch,
    ReplaceFullPath,
}

/// Observed state of a route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteStatus {
    /// The generation the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: accepted by every parent, every backend found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Per parent: `Accepted` (reasons `Accepted`, `NotAllowedByListeners`,
    /// `NoMatchingListenerHostname`, `NoMatchingParent`, `Conflicted`) and `ResolvedRefs`
    /// (`ResolvedRefs`, `BackendNotFound`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<RouteParentStatus>,
}

/// How one parent took the route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteParentStatus {
    pub parent_ref: ParentRef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The URLs the route answers on, per attached listener.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub urls: BTreeMap<String, String>,
}

/// The semantic rules of a route spec.
pub(crate) fn check_route_spec(spec: &RouteSpec, path: &FieldPath, errors: &mut Errors) {
    if spec.parent_refs.is_empty() {
        errors.add(path.key("parentRefs"), "name at least one LoadBalancer to attach to");
    }
    for (index, parent) in spec.parent_refs.iter().enumerate() {
        let at = path.key("parentRefs").index(index);
        check_label(&parent.name, &at.key("name"), errors);
        if let Some(namespace) = &parent.namespace {
            check_label(namespace, &at.key("namespace"), errors);
        }
        if let Some(section) = &parent.section_name {
            check_label(section, &at.key("sectionName"), errors);
        }
    }
    for (index, hostname) in spec.hostnames.iter().enumerate() {
        if let Err(message) = check_hostname(hostname, true) {
            errors.add(path.key("hostnames").index(index), message);
        }
    }
    if spec.rules.is_empty() {
        errors.add(path.key("rules"), "give at least one rule");
    }
    for (index, rule) in spec.rules.iter().enumerate() {
        check_rule(rule, &path.key("rules").index(index), errors);
    }
}

fn check_label(value: &str, path: &FieldPath, errors: &mut Errors) {
    if let Err(message) = check_dns_label(value) {
        errors.add(path.clone(), message);
    }
}

fn check_rule(rule: &RouteRule, path: &FieldPath, errors: &mut Errors) {
    for (index, condition) in rule.matches.iter().enumerate() {
        let at = path.key("matches").index(index);
        if let Some(path_match) = &condition.path {
            if let Err(message) = check_route_path(&path_match.value) {
                errors.add(at.key("path").key("value"), message);
            }
        }
        check_name_values(&condition.headers, &at.key("headers"), check_header_name, errors);
        check_name_values(&condition.query_params, &at.key("queryParams"), check_query_name, errors);
        if let Some(Err(message)) = condition.method.as_deref().map(check_method) {
            errors.add(at.key("method"), message);
        }
    }
    let redirects = rule.filters.iter().filter(|f| f.type_ == FilterType::RequestRedirect).count();
    let rewrites = rule.filters.iter().filter(|f| f.type_ == FilterType::UrlRewrite).count();
    if redirects > 1 || rewrites > 1 {
        errors.add(path.key("filters"), "give at most one RequestRedirect and one URLRewrite per rule");
    }
    if redirects > 0 && rewrites > 0 {
        errors.add(path.key("filters"), "a rule redirects or rewrites, not both");
    }
    for (index, filter) in rule.filters.iter().enumerate() {
        check_filter(filter, rule, &path.key("filters").index(index), errors);
    }
    for (index, backend) in rule.backend_refs.iter().enumerate() {
        let at = path.key("backendRefs").index(index);
        match (&backend.kind, &backend.name, &backend.selector) {
            (Some(_), Some(name), None) => check_label(name, &at.key("name"), errors),
            (None, None, Some(selector)) => {
                if selector.match_labels.is_empty() {
                    errors.add(at.key("selector").key("matchLabels"), "give at least one label");
                }
                for (key, value) in &selector.match_labels {
                    let labels = at.key("selector").key("matchLabels").key(key);
                    if let Err(message) = check_label_key(key).and_then(|()| check_label_value(value)) {
                        errors.add(labels, message);
                    }
                }
            }
            _ => errors.add(at, "give `kind` and `name` (Instance or ScalingGroup), or a `selector`"),
        }
        if backend.port == 0 {
            errors.add(path.key("backendRefs").index(index).key("port"), "give a port from 1 to 65535");
        }
        if backend.weight_or_default() > 1_000_000 {
            errors.add(path.key("backendRefs").index(index).key("weight"), "at most 1000000");
        }
    }
}

fn check_name_values(
    pairs: &[NameValue],
    path: &FieldPath,
    check_name: fn(&str) -> Result<(), String>,
    errors: &mut Errors,
) {
    for (index, pair) in pairs.iter().enumerate() {
        if let Err(message) = check_name(&pair.name) {
            errors.add(path.index(index).key("name"), message);
        }
        if let Err(message) = check_value(&pair.value) {
            errors.add(path.index(index).key("value"), message);
        }
    }
}

fn check_filter(filter: &RouteFilter, rule: &RouteRule, path: &FieldPath, errors: &mut Errors) {
    let given = [
        (FilterType::RequestRedirect, "requestRedirect", filter.request_redirect.is_some()),
        (FilterType::RequestHeaderModifier, "requestHeaderModifier", filter.request_header_modifier.is_some()),
        (FilterType::ResponseHeaderModifier, "responseHeaderModifier", filter.response_header_modifier.is_some()),
        (FilterType::UrlRewrite, "urlRewrite", filter.url_rewrite.is_some()),
    ];
    for (type_, field, present) in given {
        if (type_ == filter.type_) != present {
            let message = if present {
                format!("`{field}` does not go with type {:?}", filter.type_)
            } else {
                format!("type {:?} needs `{field}`", filter.type_)
            };
            errors.add(path.key(field), message);
        }
    }
    if let Some(redirect) = &filter.request_redirect {
        let at = path.key("requestRedirect");
        if let Some(scheme) = &redirect.scheme {
            if scheme != "http" && scheme != "https" {
                errors.add(at.key("scheme"), format!("{scheme:?}: use http or https"));
            }
        }
        if let Some(Err(message)) = redirect.hostname.as_deref().map(|h| check_hostname(h, false)) {
            errors.add(at.key("hostname"), message);
        }
        if redirect.port == Some(0) {
            errors.add(at.key("port"), "give a port from 1 to 65535");
        }
        if let Some(code) = redirect.status_code {
            if ![301, 302, 303, 307, 308].contains(&code) {
                errors.add(at.key("statusCode"), format!("{code}: use 301, 302, 303, 307 or 308"));
            }
        }
    }
    for (field, modifier) in [
        ("requestHeaderModifier", &filter.request_header_modifier),
        ("responseHeaderModifier", &filter.response_header_modifier),
    ] {
        let Some(modifier) = modifier else { continue };
        let at = path.key(field);
        check_name_values(&modifier.set, &at.key("set"), check_header_name, errors);
        check_name_values(&modifier.add, &at.key("add"), check_header_name, errors);
        for (index, name) in modifier.remove.iter().enumerate() {
            if let Err(message) = check_header_name(name) {
                errors.add(at.key("remove").index(index), message);
            }
        }
    }
    if let Some(rewrite) = &filter.url_rewrite {
        let at = path.key("urlRewrite");
        if let Some(Err(message)) = rewrite.hostname.as_deref().map(|h| check_hostname(h, false)) {
            errors.add(at.key("hostname"), message);
        }
        if let Some(modifier) = &rewrite.path {
            let at = at.key("path");
            let (value, field) = match modifier.type_ {
                PathModifierType::ReplacePrefixMatch => (&modifier.replace_prefix_match, "replacePrefixMatch"),
                PathModifierType::ReplaceFullPath => (&modifier.replace_full_path, "replaceFullPath"),
            };
            match value {
                None => errors.add(at.key(field), format!("type {:?} needs `{field}`", modifier.type_)),
                Some(value) => {
                    if let Err(message) = check_route_path(value) {
                        errors.add(at.key(field), message);
                    }
                }
            }
            let prefix_only = rule.matches.iter().all(|m| m.path_or_default().type_ == PathMatchType::PathPrefix);
            if modifier.type_ == PathModifierType::ReplacePrefixMatch && !prefix_only {
                errors.add(at.key("type"), "ReplacePrefixMatch needs every match of the rule to be a PathPrefix");
            }
        }
    }
}
