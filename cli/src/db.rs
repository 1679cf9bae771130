//! `cloud db backup NAME`, `cloud db backups NAME`, `cloud db restore NAME --backup ID`: the
//! on-demand side of managed databases. A backup or restore is asked for with an annotation
//! carrying a new request id (`minicloud.dev/backup-request`, `minicloud.dev/restore-request`);
//! the command then follows the database's status until the controller has answered that id,
//! and reports what happened.

use std::time::{Duration, Instant};

use clap::Subcommand;
use minicloud_crds::database::{BACKUP_REQUEST_ANNOTATION, RESTORE_REQUEST_ANNOTATION};
use minicloud_crds::{Kind, Object};
use serde_json::Value;

use super::output::{age, table};
use super::{modify, OutputFormat};
use minicloud_client::Client;

/// What `cloud db` does.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Take a backup now and wait for it: prints its name, size and SHA-256.
    Backup {
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// How long to wait for the backup, e.g. 10m.
        #[arg(long, default_value = "10m", value_parser = super::parse_duration)]
        timeout: Duration,
    },
    /// List a database's backups (newest last).
    Backups {
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(short = 'o', long, value_enum)]
        output: Option<OutputFormat>,
    },
    /// Restore a backup into the database (its SHA-256 is checked first); what the backup holds
    /// replaces what the database holds.
    Restore {
        name: String,
        /// The backup's name, as `cloud db backups NAME` lists it.
        #[arg(long)]
        backup: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(long, default_value = "10m", value_parser = super::parse_duration)]
        timeout: Duration,
    },
}

/// Runs `cloud db ...`.
pub async fn run(client: &Client, command: DbCommand) -> anyhow::Result<()> {
    match command {
        DbCommand::Backup { name, namespace, timeout } => backup(client, &namespace, &name, timeout).await,
        DbCommand::Backups { name, namespace, output } => backups(client, &namespace, &name, output).await,
        DbCommand::Restore { name, backup, namespace, timeout } => {
            restore(client, &namespace, &name, &backup, timeout).await
        }
    }
}

fn request_id() -> String {
    minicloud_crds::database::request_id(chrono::Utc::now(), rand::random())
}

/// Sets `annotation` to `value` on the database.
async fn ask(client: &Client, namespace: &str, name: &str, annotation: &str, value: &str) -> anyhow::Result<()> {
    modify(client, Kind::ManagedDatabase, namespace, name, |object| {
        if object.metadata.deletion_timestamp.is_some() {
            anyhow::bail!("manageddatabase/{name} is being deleted");
        }
        object.metadata.annotations.insert(annotation.to_owned(), value.to_owned());
        Ok(true)
    })
    .await
    .map(drop)
}

/// Follows the database until `answered` says the controller is done (or `timeout`).
async fn follow(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
    what: &str,
    answered: impl Fn(&Object) -> bool,
) -> anyhow::Result<Object> {
    let started = Instant::now();
    loop {
        let object = client.get(Kind::ManagedDatabase, namespace, name).await?;
        if answered(&object) {
            return Ok(object);
        }
        if started.elapsed() > timeout {
            let ready = super::get::condition(&object, "Ready")
                .and_then(|c| Some(format!("{}: {}", c.get("reason")?.as_str()?, c.get("message")?.as_str()?)))
                .unwrap_or_else(|| "no Ready condition yet".into());
            anyhow::bail!(
                "manageddatabase/{name}: no answer to the {what} after {timeout:?} (Ready: {ready}); it still runs when the database can; see `cloud describe db {name}`"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn backup(client: &Client, namespace: &str, name: &str, timeout: Duration) -> anyhow::Result<()> {
    let request = request_id();
    ask(client, namespace, name, BACKUP_REQUEST_ANNOTATION, &request).await?;
    say_err!("backing up manageddatabase/{name}…");
    // Answered when the controller answered this request, or the request that replaced it in
    // the annotation (written after this one, so its backup is taken after this was asked):
    // two `cloud db backup` at once both see a backup taken after they asked.
    let object = follow(client, namespace, name, timeout, "backup request", |object| {
        let last = object.status.get("lastBackupRequest").and_then(Value::as_str);
        let asked = object.metadata.annotations.get(BACKUP_REQUEST_ANNOTATION).map(String::as_str);
        last == Some(request.as_str()) || (asked.is_some() && asked != Some(request.as_str()) && last == asked)
    })
    .await?;
    let backed_up = super::get::condition(&object, "BackedUp");
    if backed_up.and_then(|c| c.get("status")).and_then(Value::as_str) != Some("True") {
        let message = backed_up.and_then(|c| c.get("message")).and_then(Value::as_str).unwrap_or("the backup failed");
        anyhow::bail!("manageddatabase/{name}: {message}");
    }
    let message = backed_up.and_then(|c| c.get("message")).and_then(Value::as_str).unwrap_or("backup taken");
    say!("manageddatabase/{name}: {message}");
    Ok(())
}

async fn restore(client: &Client, namespace: &str, name: &str, backup: &str, timeout: Duration) -> anyhow::Result<()> {
    let request = request_id();
    ask(client, namespace, name, RESTORE_REQUEST_ANNOTATION, &format!("{request} {backup}")).await?;
    say_err!("restoring {backup} into manageddatabase/{name}…");
    let object = follow(client, namespace, name, timeout, "restore request", |object| {
        let last = object.status.pointer("/lastRestore/request").and_then(Value::as_str);
        last == Some(request.as_str())
            || object.metadata.annotations.get(RESTORE_REQUEST_ANNOTATION).is_some_and(|v| !v.starts_with(&request))
    })
    .await?;
    if object.status.pointer("/lastRestore/request").and_then(Value::as_str) != Some(request.as_str()) {
        let other = object.metadata.annotations.get(RESTORE_REQUEST_ANNOTATION).cloned().unwrap_or_default();
        anyhow::bail!("manageddatabase/{name}: another restore request ({other}) replaced this one before it ran; nothing was restored for it");
    }
    let message = object.status.pointer("/lastRestore/message").and_then(Value::as_str).unwrap_or("");
    if object.status.pointer("/lastRestore/succeeded") != Some(&Value::Bool(true)) {
        anyhow::bail!("manageddatabase/{name}: {message}");
    }
    // Redis restarts on the restored data: wait until it accepts connections again.
    follow(client, namespace, name, timeout, "restart after the restore", |object| {
        let ready = super::get::condition(object, "Ready");
        ready.and_then(|c| c.get("status")).and_then(Value::as_str) == Some("True")
    })
    .await?;
    say!("manageddatabase/{name}: {message}");
    Ok(())
}

async fn backups(client: &Client, namespace: &str, name: &str, output: Option<OutputFormat>) -> anyhow::Result<()> {
    let object = client.get(Kind::ManagedDatabase, namespace, name).await?;
    let listed: Vec<Value> = object.status["backups"].as_array().cloned().unwrap_or_default();
    let text = |backup: &Value, key: &str| {
        backup.get(key).map_or("-".to_owned(), |v| v.as_str().map_or(v.to_string(), str::to_owned))
    };
    match output {
        Some(OutputFormat::Json) => say!("{}", serde_json::to_string_pretty(&Value::Array(listed))?),
        Some(OutputFormat::Yaml) => show!("{}", super::output::yaml(&Value::Array(listed), 0)),
        Some(OutputFormat::Name) => {
            for backup in &listed {
                say!("{}", text(backup, "name"));
            }
        }
        Some(OutputFormat::Wide) | None => {
            if listed.is_empty() {
                say_err!("No backups of manageddatabase/{name} yet (`cloud db backup {name}` takes one).");
                return Ok(());
            }
            let wide = output == Some(OutputFormat::Wide);
            let mut headers = vec!["NAME", "AGE", "SIZE", "REASON"];
            if wide {
                headers.extend(["TIME", "SHA256"]);
            }
            let rows: Vec<Vec<String>> = listed
                .iter()
                .map(|backup| {
                    let time = backup
                        .get("time")
                        .and_then(Value::as_str)
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| t.with_timezone(&chrono::Utc));
                    let size = backup.get("sizeBytes").and_then(Value::as_u64).map_or("-".into(), human_size);
                    let mut row = vec![text(backup, "name"), age(time), size, text(backup, "reason")];
                    if wide {
                        row.extend([text(backup, "time"), text(backup, "sha256")]);
                    }
                    row
                })
                .collect();
            show!("{}", table(&headers, &rows));
        }
    }
    Ok(())
}

/// `1.5 MiB`, `812 KiB`, `96 B`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_ls_h() {
        assert_eq!(human_size(96), "96 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(812 * 1024), "812 KiB");
        assert_eq!(human_size(105 * 1024 * 1024), "105 MiB");
    }
}
