//! `cloud events [-n NS | -A] [--for KIND/NAME] [-w]`: events oldest first; `-w` keeps polling
//! for new ones.

use std::collections::HashMap;
use std::time::Duration;

use super::output::{age, table};
use super::parse_targets;
use minicloud_client::Client;
use minicloud_store::Event;

const POLL: Duration = Duration::from_millis(500);

fn rows(events: &[&Event], all_namespaces: bool) -> Vec<Vec<String>> {
    events
        .iter()
        .map(|event| {
            let mut cells = vec![
                age(Some(event.last_timestamp)),
                format!("{:?}", event.event_type),
                event.reason.clone(),
                format!("{}/{}", event.kind.to_ascii_lowercase(), event.name),
                event.count.to_string(),
                event.message.clone(),
            ];
            if all_namespaces {
                cells.insert(0, event.namespace.clone());
            }
            cells
        })
        .collect()
}

/// Prints events; with `watch`, keeps printing new and repeated ones.
pub async fn run(client: &Client, namespace: Option<&str>, object: Option<&str>, watch: bool) -> anyhow::Result<()> {
    let object = match object {
        Some(target) => {
            let parsed = parse_targets(&[target.to_owned()])?;
            match parsed.as_slice() {
                [(kind, Some(name))] => Some((*kind, name.clone())),
                _ => anyhow::bail!("--for takes KIND/NAME, e.g. instance/web"),
            }
        }
        None => None,
    };
    if object.is_some() && namespace.is_none() {
        anyhow::bail!("--for needs a namespace; drop -A");
    }
    let all_namespaces = namespace.is_none();
    let mut headers = vec!["LAST SEEN", "TYPE", "REASON", "OBJECT", "COUNT", "MESSAGE"];
    if all_namespaces {
        headers.insert(0, "NAMESPACE");
    }
    let mut seen: HashMap<i64, i64> = HashMap::new();
    let mut first = true;
    loop {
        let events = client.events(namespace, object.as_ref().map(|(kind, name)| (*kind, name.as_str()))).await?;
        let fresh: Vec<&Event> = events.iter().filter(|event| seen.get(&event.id) != Some(&event.count)).collect();
        if first && fresh.is_empty() && !watch {
            say_err!("No events found.");
        }
        if !fresh.is_empty() {
            let text = table(&headers, &rows(&fresh, all_namespaces));
            show!("{}", if first { text.as_str() } else { text.split_once('\n').map_or("", |(_, rest)| rest) });
            first = false;
        }
        seen.extend(events.iter().map(|event| (event.id, event.count)));
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}
