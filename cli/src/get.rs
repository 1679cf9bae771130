//! `cloud get KIND [NAME...]`: aligned tables with kind-specific columns (NAME, READY, STATUS,
//! AGE, ...), or `-o wide|yaml|json|name`; `-w` keeps printing rows as objects change.

use futures::StreamExt;
use minicloud_crds::{Kind, Object};
use serde_json::Value;

use super::output::{table_with_widths, write_data, yaml};
use super::{parse_targets, OutputFormat};
use minicloud_client::Client;
pub use minicloud_model::columns::condition;
use minicloud_model::columns::{headers, row};

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
            write_data(&format!("{}\n", serde_json::to_string_pretty(&value)?));
        }
        Some(OutputFormat::Yaml) => {
            for (index, object) in objects.iter().enumerate() {
                if index > 0 {
                    write_data("---\n");
                }
                write_data(&yaml(&serde_json::to_value(object)?, 0));
            }
        }
        Some(OutputFormat::Name) => {
            for object in objects {
                say!("{}/{}", kind.as_str().to_ascii_lowercase(), object.metadata.name);
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
            show!("{body}");
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
            Some(namespace) => say_err!("No {} found in namespace {namespace}.", kind.plural()),
            None => say_err!("No {} found.", kind.plural()),
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
            say!("{}/{} deleted", kind.as_str().to_ascii_lowercase(), object.metadata.name);
            continue;
        }
        print_objects(kind, std::slice::from_ref(&object), output, all_namespaces, headers_due, &mut widths)?;
        headers_due = false;
    }
    Ok(())
}
