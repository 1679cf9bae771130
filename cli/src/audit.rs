//! `cloud audit [--since 1h] [-o json]`: the audit log (who did what, to which object, with what
//! result, and the request id to find it in the server's log), oldest first. Needs role admin.

use serde_json::{json, Value};

use super::output;
use minicloud_client::Client;

/// Runs `cloud audit`.
pub async fn run(
    client: &Client,
    since: Option<std::time::Duration>,
    limit: Option<usize>,
    json_output: bool,
) -> anyhow::Result<()> {
    let since = match since {
        Some(since) => Some(
            (chrono::Utc::now() - chrono::Duration::from_std(since)?)
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        ),
        None => None,
    };
    let entries = client.audit(since.as_deref(), limit).await?;
    if json_output {
        output::write_data(&format!("{}\n", serde_json::to_string_pretty(&json!({"items": entries}))?));
        return Ok(());
    }
    if entries.is_empty() {
        say!("no audit entries{}", if since.is_some() { " in that time" } else { "" });
        return Ok(());
    }
    let rows: Vec<Vec<String>> = entries.iter().map(row).collect();
    show!("{}", output::table(&["TIME", "WHO", "VERB", "OBJECT", "CODE", "REQUEST", "MESSAGE"], &rows));
    Ok(())
}

fn row(entry: &Value) -> Vec<String> {
    let text = |key: &str| entry.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
    let mut object = text("resource");
    if !text("name").is_empty() {
        object = format!("{object}/{}", text("name"));
    }
    if !text("namespace").is_empty() {
        object = format!("{object} -n {}", text("namespace"));
    }
    let mut message = text("message");
    if message.chars().count() > 100 {
        message = format!("{}…", message.chars().take(99).collect::<String>());
    }
    vec![
        text("time").split('.').next().unwrap_or("").replace('T', " "),
        text("principal"),
        text("verb"),
        object,
        entry.get("code").and_then(Value::as_u64).map(|code| code.to_string()).unwrap_or_default(),
        text("requestId"),
        message,
    ]
}
