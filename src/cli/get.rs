//! `cloud get KIND [NAME...]`: aligned tables with kind-specific columns (NAME, READY, STATUS,
//! AGE, ...), or `-o wide|yaml|json|name`; `-w` keeps printing rows as objects change.

use futures::StreamExt;
use minicloud_crds::{Kind, Object};
use serde_json::Value;

use super::output::{age, table_with_widths, yaml};
use super::{parse_targets, OutputFormat};
use crate::client::Client;

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

fn headers(kind: Kind, wide: bool) -> Vec<&'static str> {
    let mut headers: Vec<&str> = match kind {
        Kind::Instance => vec!["NAME", "READY", "STATUS", "RESTARTS", "PORTS", "AGE"],
        Kind::LoadBalancer => vec!["NAME", "READY", "ENDPOINT", "TARGETS", "ALGORITHM", "AGE"],
        Kind::ScalingGroup => vec!["NAME", "READY", "MIN", "MAX", "CPU", "AGE"],
        Kind::ManagedDatabase => vec!["NAME", "ENGINE", "VERSION", "READY", "ENDPOINT", "LAST BACKUP", "AGE"],
        Kind::Stack => vec!["NAME", "READY", "STATUS", "RESOURCES", "AGE"],
        Kind::Secret => vec!["NAME", "TYPE", "KEYS", "AGE"],
        Kind::ApplySet => vec!["NAME", "MEMBERS", "LAST APPLY", "AGE"],
        Kind::Sync => vec!["NAME", "READY", "STATUS", "OBJECTS", "LAST SYNC", "REVISION", "AGE"],
    };
    if wide {
        headers.extend(match kind {
            Kind::Instance => vec!["IMAGE", "CONTAINER"],
            Kind::LoadBalancer => vec!["STATUS", "NETWORK"],
            Kind::ScalingGroup => vec!["UP-TO-DATE", "STATUS", "IMAGE"],
            Kind::ManagedDatabase => vec!["STATUS", "CREDENTIALS", "BACKUPS"],
            Kind::Stack => vec!["TEMPLATE"],
            Kind::Secret => vec![],
            Kind::ApplySet => vec!["KEPT"],
            Kind::Sync => vec!["DIRECTORY", "COMMIT"],
        });
    }
    headers
}

fn row(kind: Kind, object: &Object, wide: bool) -> Vec<String> {
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
    };
    if wide {
        cells.extend(match kind {
            Kind::Instance => vec![text(spec.get("image")), text(state.get("containerId")).chars().take(12).collect()],
            Kind::LoadBalancer => {
                let network = spec.get("network").map_or_else(|| "default".to_owned(), |n| text(Some(n)));
                vec![readiness(object).1, network]
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
        });
    }
    cells
}

/// The rows of a table, with NAMESPACE first when listing every namespace.
fn rows(kind: Kind, objects: &[Object], wide: bool, all_namespaces: bool) -> Vec<Vec<String>> {
    objects
        .iter()
        .map(|object| {
            let mut cells = row(kind, object, wide);
            if all_namespaces {
                cells.insert(0, object.namespace().to_owned());
            }
            cells
        })
        .collect()
}

fn print_objects(
    kind: Kind,
    objects: &[Object],
    output: Option<OutputFormat>,
    all_namespaces: bool,
    with_headers: bool,
    widths: &mut Vec<usize>,
) -> anyhow::Result<()> {
    match output {
        Some(OutputFormat::Json) => {
            let value = if objects.len() == 1 {
                serde_json::to_value(&objects[0])?
            } else {
                serde_json::json!({"apiVersion": minicloud_crds::API_VERSION, "kind": "List", "items": objects})
            };
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Some(OutputFormat::Yaml) => {
            for (index, object) in objects.iter().enumerate() {
                if index > 0 {
                    println!("---");
                }
                print!("{}", yaml(&serde_json::to_value(object)?, 0));
            }
        }
        Some(OutputFormat::Name) => {
            for object in objects {
                println!("{}/{}", kind.as_str().to_ascii_lowercase(), object.metadata.name);
            }
        }
        Some(OutputFormat::Wide) | None => {
            let wide = output == Some(OutputFormat::Wide);
            let mut headers = headers(kind, wide);
            if all_namespaces {
                headers.insert(0, "NAMESPACE");
            }
            let rendered = table_with_widths(&headers, &rows(kind, objects, wide, all_namespaces), widths);
            let body =
                if with_headers { rendered.as_str() } else { rendered.split_once('\n').map_or("", |(_, rest)| rest) };
            print!("{body}");
        }
    }
    Ok(())
}

/// Runs `cloud get`.
pub async fn run(
    client: &Client,
    targets: &[String],
    namespace: Option<&str>,
    selector: Option<&str>,
    output: Option<OutputFormat>,
    watch: bool,
) -> anyhow::Result<()> {
    let targets = parse_targets(targets)?;
    let kind = targets[0].0;
    if targets.iter().any(|(other, _)| *other != kind) {
        anyhow::bail!("`get` lists one kind at a time");
    }
    let names: Vec<&str> = targets.iter().filter_map(|(_, name)| name.as_deref()).collect();
    let all_namespaces = namespace.is_none();
    let mut widths = Vec::new();
    let (objects, revision) = if names.is_empty() {
        let list = client.list(kind, namespace, selector).await?;
        (list.items, Some(list.metadata.resource_version))
    } else {
        let namespace = namespace.unwrap_or(minicloud_crds::DEFAULT_NAMESPACE);
        let mut objects = Vec::new();
        for name in &names {
            objects.push(client.get(kind, namespace, name).await?);
        }
        (objects, None)
    };
    if objects.is_empty() && !watch && !matches!(output, Some(OutputFormat::Json) | Some(OutputFormat::Yaml)) {
        match namespace {
            Some(namespace) => eprintln!("No {} found in namespace {namespace}.", kind.plural()),
            None => eprintln!("No {} found.", kind.plural()),
        }
    } else {
        print_objects(kind, &objects, output, all_namespaces, true, &mut widths)?;
    }
    if !watch {
        return Ok(());
    }
    let printed_headers = !objects.is_empty();
    let mut stream = client.watch(kind, namespace, selector, revision.as_deref()).await?;
    let mut headers_due = !printed_headers;
    while let Some(line) = stream.next().await {
        let line = line?;
        match line.change.as_str() {
            "BOOKMARK" => continue,
            "ERROR" => anyhow::bail!(
                "watch ended: {}",
                line.object.get("message").and_then(Value::as_str).unwrap_or("unknown error")
            ),
            _ => {}
        }
        let object: Object = serde_json::from_value(line.object)?;
        if !names.is_empty() && !names.contains(&object.metadata.name.as_str()) {
            continue;
        }
        if line.change == "DELETED" && output.is_none() {
            println!("{}/{} deleted", kind.as_str().to_ascii_lowercase(), object.metadata.name);
            continue;
        }
        print_objects(kind, std::slice::from_ref(&object), output, all_namespaces, headers_due, &mut widths)?;
        headers_due = false;
    }
    Ok(())
}
