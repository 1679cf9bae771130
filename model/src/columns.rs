//! The columns `cloud get` prints and the API's Kubernetes `Table` answers carry (so that
//! `kubectl get` shows the same): per kind, the headers and each object's cells, computed from
//! its spec and status.

use chrono::{DateTime, Utc};
use minicloud_crds::{Kind, Object};
use serde_json::Value;

/// A short age: `45s`, `12m`, `3h`, `9d`.
pub fn age(since: Option<DateTime<Utc>>) -> String {
    let Some(since) = since else { return "<unknown>".into() };
    short_duration((Utc::now() - since).num_seconds().max(0))
}

/// The time left until `at`, as short as an age.
pub fn age_until(at: DateTime<Utc>) -> String {
    short_duration((at - Utc::now()).num_seconds().max(0))
}

fn short_duration(seconds: i64) -> String {
    match seconds {
        0..=119 => format!("{seconds}s"),
        120..=7199 => format!("{}m", seconds / 60),
        7200..=172_799 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// The status of the condition `type_`, when present.
pub fn condition<'o>(object: &'o Object, type_: &str) -> Option<&'o Value> {
    object.status.get("conditions")?.as_array()?.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

fn text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    }
}

/// The items of an array, each as `cell` says, joined by commas; `-` for none.
fn list(value: Option<&Value>, cell: impl Fn(&Value) -> String) -> String {
    let cells: Vec<String> =
        value.and_then(Value::as_array).map(|items| items.iter().map(cell).collect()).unwrap_or_default();
    if cells.is_empty() {
        "-".into()
    } else {
        cells.join(",")
    }
}

/// `*` (every host) for an empty host-name list.
fn or_star(names: String) -> String {
    if names == "-" {
        "*".into()
    } else {
        names
    }
}

/// `5m ago` for a timestamp, `-` without one.
fn ago(value: Option<&Value>) -> String {
    value
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or("-".into(), |t| format!("{} ago", age(Some(t.with_timezone(&chrono::Utc)))))
}

/// READY and STATUS cells: the Ready condition's status and reason.
fn readiness(object: &Object) -> (String, String) {
    if object.metadata.deletion_timestamp.is_some() {
        return ("False".into(), "Terminating".into());
    }
    match condition(object, "Ready") {
        Some(ready) => (text(ready.get("status")), text(ready.get("reason"))),
        None => ("Unknown".into(), "Pending".into()),
    }
}

/// The column headers of `kind` (with `wide`, the extra ones after them).
pub fn headers(kind: Kind, wide: bool) -> Vec<&'static str> {
    let mut headers: Vec<&str> = match kind {
        Kind::Instance => vec!["NAME", "READY", "STATUS", "RESTARTS", "PORTS", "AGE"],
        Kind::LoadBalancer => vec!["NAME", "READY", "ENDPOINT", "TARGETS", "ALGORITHM", "AGE"],
        Kind::ScalingGroup => vec!["NAME", "READY", "MIN", "MAX", "CPU", "AGE"],
        Kind::ManagedDatabase => vec!["NAME", "ENGINE", "VERSION", "READY", "ENDPOINT", "LAST BACKUP", "AGE"],
        Kind::Stack => vec!["NAME", "READY", "STATUS", "RESOURCES", "AGE"],
        Kind::Secret => vec!["NAME", "TYPE", "KEYS", "AGE"],
        Kind::ApplySet => vec!["NAME", "MEMBERS", "LAST APPLY", "AGE"],
        Kind::Sync => vec!["NAME", "READY", "STATUS", "OBJECTS", "LAST SYNC", "REVISION", "AGE"],
        Kind::Policy => vec!["NAME", "ENFORCEMENT", "RULES", "NAMESPACES", "AGE"],
        Kind::Route => vec!["NAME", "HOSTNAMES", "PARENTS", "ACCEPTED", "AGE"],
        Kind::Certificate => vec!["NAME", "DNS NAMES", "READY", "NOT AFTER", "ISSUER", "AGE"],
        Kind::Lease => vec!["NAME", "HOLDER", "AGE"],
    };
    if wide {
        headers.extend(match kind {
            Kind::Instance => vec!["IMAGE", "CONTAINER"],
            Kind::LoadBalancer => vec!["STATUS", "NETWORK", "LISTENERS"],
            Kind::ScalingGroup => vec!["UP-TO-DATE", "STATUS", "IMAGE"],
            Kind::ManagedDatabase => vec!["STATUS", "CREDENTIALS", "BACKUPS"],
            Kind::Stack => vec!["TEMPLATE"],
            Kind::Secret => vec![],
            Kind::ApplySet => vec!["KEPT"],
            Kind::Sync => vec!["DIRECTORY", "COMMIT"],
            Kind::Policy => vec!["RULE NAMES"],
            Kind::Route => vec!["READY", "STATUS", "RULES"],
            Kind::Certificate => vec!["STATUS", "SECRET", "SERIAL"],
            Kind::Lease => vec!["RENEWED", "DURATION", "TRANSITIONS"],
        });
    }
    headers
}

/// The cells of `object` under [`headers`].
pub fn row(kind: Kind, object: &Object, wide: bool) -> Vec<String> {
    let (ready, status) = readiness(object);
    let spec = &object.spec;
    let state = &object.status;
    let created = age(object.metadata.creation_timestamp);
    let mut cells = match kind {
        Kind::Instance => {
            let ports = state
                .get("ports")
                .and_then(Value::as_array)
                .map(|ports| {
                    ports
                        .iter()
                        .map(|p| {
                            format!(
                                "{}:{}->{}",
                                text(p.get("hostIP")),
                                text(p.get("hostPort")),
                                text(p.get("containerPort"))
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|ports| !ports.is_empty())
                .unwrap_or_else(|| "-".into());
            let phase = state.get("phase").and_then(Value::as_str).map(str::to_owned);
            let status = if status == "Pending" { phase.unwrap_or(status) } else { status };
            vec![
                object.metadata.name.clone(),
                ready,
                status,
                text(state.get("restartCount")).replace('-', "0"),
                ports,
                created,
            ]
        }
        Kind::LoadBalancer => {
            let endpoints = state
                .get("endpoints")
                .and_then(Value::as_object)
                .map(|map| map.values().map(|v| text(Some(v))).collect::<Vec<_>>().join(","))
                .filter(|text| !text.is_empty())
                .unwrap_or_else(|| "-".into());
            let targets = state.get("targets").and_then(Value::as_array).map_or_else(
                || "0/0".into(),
                |targets| {
                    let healthy = targets.iter().filter(|t| t.get("healthy") == Some(&Value::Bool(true))).count();
                    format!("{healthy}/{}", targets.len())
                },
            );
            let algorithm = spec.get("algorithm").map_or_else(|| "RoundRobin".to_owned(), |a| text(Some(a)));
            vec![object.metadata.name.clone(), ready, endpoints, targets, algorithm, created]
        }
        Kind::ScalingGroup => {
            let desired = state.get("desiredReplicas").or(spec.get("desiredReplicas")).or(spec.get("minReplicas"));
            let cpu = match (
                state.get("currentCpuUtilizationPercent"),
                spec.pointer("/autoscaling/targetCpuUtilizationPercent"),
            ) {
                (Some(cpu), Some(target)) => format!("{}%/{}%", text(Some(cpu)), text(Some(target))),
                (None, Some(target)) => format!("-/{}%", text(Some(target))),
                _ => "-".into(),
            };
            vec![
                object.metadata.name.clone(),
                format!("{}/{}", text(state.get("readyReplicas")).replace('-', "0"), text(desired)),
                text(spec.get("minReplicas")),
                text(spec.get("maxReplicas")),
                cpu,
                created,
            ]
        }
        Kind::ManagedDatabase => {
            let endpoint = state
                .get("endpoint")
                .map(|e| format!("{}:{}", text(e.get("host")), text(e.get("port"))))
                .unwrap_or_else(|| "-".into());
            let last_backup = ago(state.get("lastBackupTime"));
            vec![
                object.metadata.name.clone(),
                text(spec.get("engine")),
                text(spec.get("version")),
                ready,
                endpoint,
                last_backup,
                created,
            ]
        }
        Kind::Stack => {
            let resources = state.get("resources").and_then(Value::as_array).map_or_else(
                || format!("0/{}", spec.get("resources").and_then(Value::as_array).map_or(0, Vec::len)),
                |resources| {
                    let ready = resources.iter().filter(|r| r.get("ready") == Some(&Value::Bool(true))).count();
                    format!("{ready}/{}", resources.len())
                },
            );
            let phase = state.get("phase").and_then(Value::as_str).map_or(status, str::to_owned);
            vec![object.metadata.name.clone(), ready, phase, resources, created]
        }
        Kind::Secret => {
            let keys = spec.get("stringData").and_then(Value::as_object).map_or(0, |data| data.len());
            vec![object.metadata.name.clone(), text(spec.get("type")), keys.to_string(), created]
        }
        Kind::ApplySet => {
            let members = spec.get("members").and_then(Value::as_array).map_or(0, Vec::len);
            vec![object.metadata.name.clone(), members.to_string(), ago(state.get("lastApplyTime")), created]
        }
        Kind::Sync => {
            let revision: String = text(state.get("revision")).chars().take(12).collect();
            vec![
                object.metadata.name.clone(),
                ready,
                status,
                text(state.get("objects")).replace('-', "0"),
                ago(state.get("lastSyncTime")),
                revision,
                created,
            ]
        }
        Kind::Policy => {
            let rules = spec.get("rules").and_then(Value::as_array).map_or(0, Vec::len);
            let namespaces = spec
                .get("namespaces")
                .and_then(Value::as_array)
                .map(|namespaces| namespaces.iter().map(|n| text(Some(n))).collect::<Vec<_>>().join(","))
                .filter(|namespaces| !namespaces.is_empty())
                .unwrap_or_else(|| object.namespace().to_owned());
            let enforcement = spec.get("enforcement").map_or_else(|| "Deny".to_owned(), |e| text(Some(e)));
            vec![object.metadata.name.clone(), enforcement, rules.to_string(), namespaces, created]
        }
        Kind::Route => {
            let parents = list(spec.get("parentRefs"), |parent| {
                let section = parent.get("sectionName").map_or(String::new(), |s| format!("/{}", text(Some(s))));
                match parent.get("namespace") {
                    Some(namespace) => format!("{}/{}{section}", text(Some(namespace)), text(parent.get("name"))),
                    None => format!("{}{section}", text(parent.get("name"))),
                }
            });
            let accepted = state.get("parents").and_then(Value::as_array).map_or_else(
                || "-".into(),
                |parents| {
                    let accepted = parents
                        .iter()
                        .filter(|parent| {
                            parent.get("conditions").and_then(Value::as_array).is_some_and(|conditions| {
                                conditions.iter().any(|c| {
                                    c.get("type").and_then(Value::as_str) == Some("Accepted")
                                        && c.get("status").and_then(Value::as_str) == Some("True")
                                })
                            })
                        })
                        .count();
                    format!("{accepted}/{}", parents.len())
                },
            );
            let hostnames = list(spec.get("hostnames"), |name| text(Some(name)));
            vec![object.metadata.name.clone(), or_star(hostnames), parents, accepted, created]
        }
        Kind::Certificate => {
            let names = list(spec.get("dnsNames"), |name| text(Some(name)));
            let not_after = state
                .get("notAfter")
                .and_then(Value::as_str)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map_or("-".into(), |t| t.with_timezone(&Utc).format("%Y-%m-%d %H:%M").to_string());
            let issuer = spec
                .get("issuer")
                .and_then(Value::as_object)
                .and_then(|issuer| issuer.keys().next().cloned())
                .unwrap_or_else(|| "-".into());
            vec![object.metadata.name.clone(), names, ready, not_after, issuer, created]
        }
        Kind::Lease => {
            let holder = spec.get("holderIdentity").and_then(Value::as_str).filter(|h| !h.is_empty());
            vec![object.metadata.name.clone(), holder.unwrap_or("<none>").to_owned(), created]
        }
    };
    if wide {
        cells.extend(match kind {
            Kind::Instance => vec![text(spec.get("image")), text(state.get("containerId")).chars().take(12).collect()],
            Kind::LoadBalancer => {
                let network = spec.get("network").map_or_else(|| "default".to_owned(), |n| text(Some(n)));
                let listeners = list(spec.get("listeners"), |listener| {
                    let name = text(listener.get("name"));
                    let protocol = listener.get("protocol").map_or_else(|| "HTTP".to_owned(), |p| text(Some(p)));
                    let address = listener.get("address").map_or_else(|| "127.0.0.1".to_owned(), |a| text(Some(a)));
                    let port = listener.get("port").map_or_else(|| "auto".to_owned(), |p| text(Some(p)));
                    let routes = state
                        .get("listeners")
                        .and_then(Value::as_array)
                        .and_then(|all| {
                            all.iter().find(|l| l.get("name").and_then(Value::as_str) == Some(name.as_str()))
                        })
                        .and_then(|l| l.get("attachedRoutes"))
                        .map_or_else(|| "0".to_owned(), |n| text(Some(n)));
                    format!("{name}={address}:{port}/{protocol}({routes} routes)")
                });
                vec![readiness(object).1, network, listeners]
            }
            Kind::ScalingGroup => {
                let progressing = condition(object, "Progressing").map_or("-".into(), |c| text(c.get("reason")));
                vec![
                    text(state.get("updatedReplicas")).replace('-', "0"),
                    progressing,
                    text(spec.pointer("/template/spec/image")),
                ]
            }
            Kind::ManagedDatabase => vec![
                readiness(object).1,
                state.get("credentialsSecret").map_or("-".into(), |s| format!("secret/{}", text(Some(s)))),
                state.get("backups").and_then(Value::as_array).map_or(0, Vec::len).to_string(),
            ],
            Kind::Stack => vec![text(spec.pointer("/templateRef/name"))],
            Kind::Secret => vec![],
            Kind::ApplySet => vec![state.get("kept").and_then(Value::as_array).map_or(0, Vec::len).to_string()],
            Kind::Sync => vec![text(spec.get("directory")), text(state.get("commit")).chars().take(12).collect()],
            Kind::Policy => vec![spec
                .get("rules")
                .and_then(Value::as_array)
                .map(|rules| rules.iter().map(|rule| text(rule.get("name"))).collect::<Vec<_>>().join(","))
                .unwrap_or_default()],
            Kind::Route => {
                let rules = spec.get("rules").and_then(Value::as_array).map_or(0, Vec::len);
                let (ready, status) = readiness(object);
                vec![ready, status, rules.to_string()]
            }
            Kind::Lease => vec![
                ago(spec.get("renewTime")),
                spec.get("leaseDurationSeconds").map_or_else(|| "-".to_owned(), |d| format!("{}s", text(Some(d)))),
                text(spec.get("leaseTransitions")).replace('-', "0"),
            ],
            Kind::Certificate => vec![
                readiness(object).1,
                text(state.get("secretName")),
                text(state.get("serial")).chars().take(16).collect(),
            ],
        });
    }
    cells
}
