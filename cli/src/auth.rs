//! `cloud auth`: API tokens (`token create|list|revoke`) and `whoami`. A new token is printed
//! alone on standard output, once (`TOKEN=$(cloud auth token create ci --role edit)`); what it
//! grants goes to standard error.

use clap::Subcommand;
use serde_json::{json, Value};

use super::output;
use minicloud_client::Client;

/// What `cloud auth` does.
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Tokens: `create NAME --role view|edit|admin [--namespace NS] [--expires 30d]`, `list`,
    /// `revoke NAME`.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print who the server takes this client for: token name, role and namespace.
    Whoami,
}

/// What `cloud auth token` does.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (only this once: the server keeps only its hash).
    Create {
        /// The token's name (a DNS label), e.g. `ci` or `alice`.
        name: String,
        /// view: read; edit: read and change objects; admin: also tokens, policies, the audit
        /// log and secret values.
        #[arg(long, value_parser = ["view", "edit", "admin"])]
        role: String,
        /// Good for this namespace only (default: every namespace).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Lifetime, e.g. 12h, 30d (default: until revoked).
        #[arg(long, value_parser = super::parse_duration)]
        expires: Option<std::time::Duration>,
    },
    /// List tokens: name, role, namespace, state, expiry, last use.
    List {
        #[arg(short = 'o', long, value_parser = ["json"])]
        output: Option<String>,
    },
    /// Revoke tokens: requests carrying them are refused from now on.
    Revoke {
        #[arg(required = true, num_args = 1..)]
        names: Vec<String>,
    },
}

/// Runs `cloud auth ...`.
pub async fn run(client: &Client, command: AuthCommand) -> anyhow::Result<()> {
    match command {
        AuthCommand::Whoami => {
            let me = client.whoami().await?;
            let text = |key: &str| me.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
            let scope = match me.get("namespace").and_then(Value::as_str) {
                Some(namespace) => format!("in namespace {namespace}"),
                None => "in every namespace".to_owned(),
            };
            say!("{} (role {} {scope}) at {}", text("name"), text("role"), client.server());
            if me.get("authentication") == Some(&Value::Bool(false)) {
                say!("this server runs without authentication: every client has every permission");
            }
        }
        AuthCommand::Token(TokenCommand::Create { name, role, namespace, expires }) => {
            let mut request = json!({"name": name, "role": role});
            if let Some(namespace) = &namespace {
                request["namespace"] = json!(namespace);
            }
            if let Some(expires) = expires {
                request["expiresInSeconds"] = json!(expires.as_secs().max(1));
            }
            let created = client.create_token(&request).await?;
            let token = created.get("token").and_then(Value::as_str).unwrap_or_default();
            let scope =
                namespace.map_or_else(|| "every namespace".to_owned(), |namespace| format!("namespace {namespace}"));
            let expiry = created
                .get("expiresAt")
                .and_then(Value::as_str)
                .map_or_else(|| "never expires".to_owned(), |at| format!("expires {at}"));
            say_err!("token {name:?} created: role {role} in {scope}, {expiry}. It is shown only now:");
            say!("{token}");
        }
        AuthCommand::Token(TokenCommand::List { output }) => {
            let tokens = client.tokens().await?;
            if output.is_some() {
                say!("{}", serde_json::to_string_pretty(&json!({"items": tokens}))?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = tokens.iter().map(token_row).collect();
            show!("{}", output::table(&["NAME", "ROLE", "NAMESPACE", "STATE", "EXPIRES", "LAST USED", "AGE"], &rows));
        }
        AuthCommand::Token(TokenCommand::Revoke { names }) => {
            for name in names {
                client.revoke_token(&name).await?;
                say!("token {name:?} revoked");
            }
        }
    }
    Ok(())
}

fn token_row(token: &Value) -> Vec<String> {
    let text = |key: &str| token.get(key).and_then(Value::as_str).map(str::to_owned);
    let time = |key: &str| {
        text(key).and_then(|at| chrono::DateTime::parse_from_rfc3339(&at).ok()).map(|at| at.with_timezone(&chrono::Utc))
    };
    let expires = match time("expiresAt") {
        Some(at) if at > chrono::Utc::now() => format!("in {}", output::age_until(at)),
        Some(at) => format!("{} ago", output::age(Some(at))),
        None => "never".to_owned(),
    };
    vec![
        text("name").unwrap_or_default(),
        text("role").unwrap_or_default(),
        text("namespace").unwrap_or_else(|| "*".to_owned()),
        text("state").unwrap_or_default(),
        expires,
        time("lastUsedAt").map_or_else(|| "never".to_owned(), |at| format!("{} ago", output::age(Some(at)))),
        output::age(time("createdAt")),
    ]
}
