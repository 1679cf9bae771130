//! `cloud secret reveal NAME KEY` prints one value of a Secret (everything else shows
//! `<redacted>`); `cloud secret rotate-key` seals every Secret again under a new key.

use clap::Subcommand;

use minicloud_client::Client;

/// What `cloud secret` does.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Print one value of a Secret (the server logs that it was revealed, never the value).
    Reveal {
        /// The Secret.
        name: String,
        /// The key whose value to print.
        key: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Re-encrypt every Secret under a new key; the server's key file then holds only the new
    /// key (servers sharing a PostgreSQL database need the new file too).
    RotateKey,
}

/// Runs `cloud secret ...`.
pub async fn run(client: &Client, command: SecretCommand) -> anyhow::Result<()> {
    match command {
        SecretCommand::Reveal { name, key, namespace } => {
            let value = client.reveal(&namespace, &name, &key).await?;
            // The value asked for, as it is (for scripts: `$(cloud secret reveal ...)`).
            super::output::write_data(&format!("{value}\n"));
        }
        SecretCommand::RotateKey => {
            let answer = client.rotate_secret_key().await?;
            let key = answer.get("key").and_then(serde_json::Value::as_str).unwrap_or("?");
            let rewritten = answer.get("rewritten").and_then(serde_json::Value::as_u64).unwrap_or(0);
            say!("secrets sealed with the new key {key} ({rewritten} stored rows re-encrypted)");
        }
    }
    Ok(())
}
