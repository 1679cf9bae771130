//! The client's configuration file (`~/.config/minicloud/config`, or `CLOUD_CONFIG`): named
//! contexts, each a server and a token, and the current one — kubeconfig's idea, cut down.
//! `cloud config set-context|use-context|get-contexts|current-context|delete-context` edit it;
//! every other command reads it to know where to connect and which token to send.
//!
//! The file holds tokens: it is written with mode 0600 (atomically, through a temporary file
//! beside it), and a file others can read is reported. Where the server comes from `--server`
//! or `CLOUD_SERVER` and differs from the context's, the context's token is not sent: a token
//! goes only to the server it was saved for.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde::{Deserialize, Serialize};

use super::output;
use minicloud_client::Client;

/// The server a client talks to when nothing names one.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7080";

/// What goes wrong with the configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error(
        "{path}:{line}:{column}: {message}; fix the file or remove it (`cloud config set-context` writes a new one)"
    )]
    Parse { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{path}: {message}; fix the file or remove it (`cloud config set-context` writes a new one)")]
    Shape { path: PathBuf, message: String },
    #[error("cannot write {path}: {error}")]
    Write { path: PathBuf, error: std::io::Error },
    #[error("no context named {name:?} in {path}; `cloud config get-contexts` lists them")]
    UnknownContext { name: String, path: PathBuf },
    #[error("context name {0:?} is not valid: {1}")]
    BadName(String, String),
}

/// One context: where a server is and the token to send it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A PEM file of the authority that signed the server's certificate (a private one).
    #[serde(default, rename = "certificate-authority", skip_serializing_if = "Option::is_none")]
    pub certificate_authority: Option<PathBuf>,
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default, rename = "current-context", skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: Vec<Context>,
}

/// Where the file is: `CLOUD_CONFIG`, else `minicloud/config` in the user's configuration
/// directory.
pub fn path() -> PathBuf {
    if let Some(path) = std::env::var_os("CLOUD_CONFIG").filter(|path| !path.is_empty()) {
        return PathBuf::from(path);
    }
    dirs::config_dir().unwrap_or_else(|| PathBuf::from(".")).join("minicloud").join("config")
}

impl Config {
    /// Reads the file at `path`; a missing file is an empty configuration.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(error) => return Err(ConfigError::Read { path: path.to_owned(), error }),
        };
        warn_if_readable_by_others(path);
        let documents = minicloud_model::yaml::parse_documents(&text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            line: error.position.line,
            column: error.position.column,
            message: error.message,
        })?;
        let Some(document) = documents.into_iter().next() else { return Ok(Config::default()) };
        serde_json::from_value(document.value)
            .map_err(|error| ConfigError::Shape { path: path.to_owned(), message: error.to_string() })
    }

    /// Writes the file at `path` with mode 0600, replacing it whole (atomically).
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        minicloud_model::files::write_private_file(path, self.render().as_bytes())
            .map_err(|error| ConfigError::Write { path: path.to_owned(), error })
    }

    /// The file's text (every string JSON-quoted, which YAML reads as it is).
    fn render(&self) -> String {
        let quote = |text: &str| serde_json::Value::String(text.to_owned()).to_string();
        let mut text =
            String::from("# minicloud client configuration (`cloud config ...`). It holds tokens: keep it private.\n");
        if let Some(current) = &self.current_context {
            text.push_str(&format!("current-context: {}\n", quote(current)));
        }
        text.push_str(if self.contexts.is_empty() { "contexts: []\n" } else { "contexts:\n" });
        for context in &self.contexts {
            text.push_str(&format!("  - name: {}\n", quote(&context.name)));
            if let Some(server) = &context.server {
                text.push_str(&format!("    server: {}\n", quote(server)));
            }
            if let Some(token) = &context.token {
                text.push_str(&format!("    token: {}\n", quote(token)));
            }
            if let Some(authority) = &context.certificate_authority {
                text.push_str(&format!("    certificate-authority: {}\n", quote(&authority.to_string_lossy())));
            }
        }
        text
    }

    fn context(&self, name: &str) -> Option<&Context> {
        self.contexts.iter().find(|context| context.name == name)
    }
}

/// Says so on standard error when others may read the file.
fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(metadata) = std::fs::metadata(path) {
            if metadata.permissions().mode() & 0o077 != 0 {
                say_err!("warning: {} can be read by other users and holds tokens; run: chmod 600 {0}", path.display());
            }
        }
    }
}

/// What a command line says about the connection (flags or their environment variables).
#[derive(Clone, Debug, Default)]
pub struct Connection {
    pub server: Option<String>,
    pub token: Option<String>,
    pub context: Option<String>,
    pub certificate_authority: Option<PathBuf>,
}

/// Where to connect and with what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub server: String,
    pub token: Option<String>,
    pub certificate_authority: Option<PathBuf>,
}

/// The server, token and certificate authority to use: flags and environment first, then the
/// named or current context (its token and authority only for its own server), then
/// [`DEFAULT_SERVER`] without a token.
pub fn resolve(connection: &Connection, config: &Config, path: &Path) -> Result<Resolved, ConfigError> {
    let context = match connection.context.as_deref().or(config.current_context.as_deref()) {
        Some(name) => Some(
            config
                .context(name)
                .ok_or_else(|| ConfigError::UnknownContext { name: name.to_owned(), path: path.to_owned() })?,
        ),
        None => None,
    };
    let context_server = context.and_then(|context| context.server.clone());
    let server =
        connection.server.clone().or_else(|| context_server.clone()).unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    let same_server = |saved: &str| saved.trim_end_matches('/') == server.trim_end_matches('/');
    let own_context = context.filter(|context| same_server(context.server.as_deref().unwrap_or(DEFAULT_SERVER)));
    let token = connection
        .token
        .clone()
        .filter(|token| !token.trim().is_empty())
        .or_else(|| own_context.and_then(|context| context.token.clone()));
    let certificate_authority = connection
        .certificate_authority
        .clone()
        .or_else(|| own_context.and_then(|context| context.certificate_authority.clone()));
    Ok(Resolved { server, token, certificate_authority })
}

/// The client a command uses.
pub fn client(connection: &Connection) -> anyhow::Result<Client> {
    let path = path();
    let config = Config::load(&path)?;
    let resolved = resolve(connection, &config, &path)?;
    let certificate_authority =
        match &resolved.certificate_authority {
            Some(file) => Some(std::fs::read(file).map_err(|error| {
                anyhow::anyhow!("cannot read the certificate authority {}: {error}", file.display())
            })?),
            None => None,
        };
    let credentials = minicloud_client::Credentials { token: resolved.token, certificate_authority };
    Ok(Client::with_credentials(&resolved.server, credentials)?)
}

/// What `cloud config` does.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Create or change a context: `cloud config set-context prod --server https://... --token-stdin`.
    SetContext {
        name: String,
        /// The server's address.
        #[arg(long)]
        server: Option<String>,
        /// The token (visible in the shell's history; prefer --token-stdin).
        #[arg(long, conflicts_with = "token_stdin")]
        token: Option<String>,
        /// Read the token from standard input.
        #[arg(long)]
        token_stdin: bool,
        /// A PEM file of the authority that signed the server's certificate (when it is not one
        /// the system trusts, e.g. a self-signed reverse proxy).
        #[arg(long)]
        certificate_authority: Option<PathBuf>,
        /// Make it the current context too.
        #[arg(long = "use")]
        make_current: bool,
    },
    /// Make a context the current one.
    UseContext { name: String },
    /// List the contexts (tokens are not shown).
    GetContexts,
    /// Print the current context's name.
    CurrentContext,
    /// Remove a context.
    DeleteContext { name: String },
}

/// Runs `cloud config ...`.
pub fn run(command: ConfigCommand) -> anyhow::Result<()> {
    let path = path();
    let mut config = Config::load(&path)?;
    match command {
        ConfigCommand::SetContext { name, server, token, token_stdin, certificate_authority, make_current } => {
            minicloud_crds::validation::check_dns_label(&name)
                .map_err(|reason| ConfigError::BadName(name.clone(), reason))?;
            let token = if token_stdin {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::Read::take(std::io::stdin(), 64 * 1024), &mut text)?;
                Some(text.trim().to_owned())
            } else {
                token
            };
            if let Some(server) = &server {
                Client::new(server).check_server()?;
            }
            let index = match config.contexts.iter().position(|context| context.name == name) {
                Some(index) => index,
                None => {
                    config.contexts.push(Context { name: name.clone(), ..Context::default() });
                    config.contexts.len() - 1
                }
            };
            let context = &mut config.contexts[index];
            if server.is_some() {
                context.server = server;
            }
            if token.is_some() {
                context.token = token.filter(|token| !token.is_empty());
            }
            if let Some(file) = certificate_authority {
                let absolute = std::path::absolute(&file)
                    .map_err(|error| anyhow::anyhow!("cannot resolve {}: {error}", file.display()))?;
                context.certificate_authority = Some(absolute);
            }
            if make_current || config.current_context.is_none() {
                config.current_context = Some(name.clone());
            }
            config.save(&path)?;
            say!("context {name:?} saved in {}", path.display());
        }
        ConfigCommand::UseContext { name } => {
            if config.context(&name).is_none() {
                return Err(ConfigError::UnknownContext { name, path }.into());
            }
            config.current_context = Some(name.clone());
            config.save(&path)?;
            say!("switched to context {name:?}");
        }
        ConfigCommand::GetContexts => {
            let rows: Vec<Vec<String>> = config
                .contexts
                .iter()
                .map(|context| {
                    let current = config.current_context.as_deref() == Some(context.name.as_str());
                    vec![
                        if current { "*".into() } else { String::new() },
                        context.name.clone(),
                        context.server.clone().unwrap_or_else(|| DEFAULT_SERVER.to_owned()),
                        if context.token.is_some() { "set" } else { "none" }.into(),
                    ]
                })
                .collect();
            show!("{}", output::table(&["CURRENT", "NAME", "SERVER", "TOKEN"], &rows));
        }
        ConfigCommand::CurrentContext => match &config.current_context {
            Some(name) => say!("{name}"),
            None => anyhow::bail!("no current context; `cloud config use-context NAME` sets one"),
        },
        ConfigCommand::DeleteContext { name } => {
            let before = config.contexts.len();
            config.contexts.retain(|context| context.name != name);
            if config.contexts.len() == before {
                return Err(ConfigError::UnknownContext { name, path }.into());
            }
            if config.current_context.as_deref() == Some(name.as_str()) {
                config.current_context = None;
            }
            config.save(&path)?;
            say!("context {name:?} deleted");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            current_context: Some("prod".into()),
            contexts: vec![
                Context {
                    name: "prod".into(),
                    server: Some("https://prod:7080".into()),
                    token: Some("mc_prod".into()),
                    certificate_authority: Some("/etc/prod-ca.pem".into()),
                },
                Context {
                    name: "local".into(),
                    server: None,
                    token: Some("mc_local".into()),
                    certificate_authority: None,
                },
            ],
        }
    }

    #[test]
    fn the_file_reads_back_what_was_written() {
        let mut config = config();
        config.contexts[0].token = Some("mc_\"quoted\": #not a comment".into());
        config.contexts[1].certificate_authority = Some("/path with spaces/ca.pem".into());
        let text = config.render();
        let documents = minicloud_model::yaml::parse_documents(&text).expect("YAML");
        let read: Config = serde_json::from_value(documents[0].value.clone()).expect("shape");
        assert_eq!(read, config);
    }

    #[test]
    fn flags_win_and_a_token_goes_only_to_its_server() {
        let path = Path::new("config");
        let config = config();
        let resolved = |server: &str, token: Option<&str>, authority: Option<&str>| Resolved {
            server: server.into(),
            token: token.map(str::to_owned),
            certificate_authority: authority.map(PathBuf::from),
        };
        let none = Connection::default();
        assert_eq!(
            resolve(&none, &config, path).expect("ok"),
            resolved("https://prod:7080", Some("mc_prod"), Some("/etc/prod-ca.pem"))
        );
        let elsewhere = Connection { server: Some("http://evil:7080".into()), ..Connection::default() };
        assert_eq!(resolve(&elsewhere, &config, path).expect("ok"), resolved("http://evil:7080", None, None));
        let with_token = Connection { token: Some("mc_flag".into()), ..elsewhere };
        assert_eq!(resolve(&with_token, &config, path).expect("ok").token.as_deref(), Some("mc_flag"));
        let local = Connection { context: Some("local".into()), ..Connection::default() };
        assert_eq!(resolve(&local, &config, path).expect("ok"), resolved(DEFAULT_SERVER, Some("mc_local"), None));
        let missing = Connection { context: Some("staging".into()), ..Connection::default() };
        assert!(resolve(&missing, &config, path).expect_err("unknown").to_string().contains("staging"));
        assert_eq!(resolve(&none, &Config::default(), path).expect("ok"), resolved(DEFAULT_SERVER, None, None));
    }

    #[test]
    fn a_broken_file_says_where() {
        let directory = tempfile::tempdir().expect("dir");
        let path = directory.path().join("config");
        std::fs::write(&path, "contexts:\n  - name: a\n    servr: x\n").expect("write");
        let error = Config::load(&path).expect_err("unknown field").to_string();
        assert!(error.contains("servr"), "{error}");
        std::fs::write(&path, "contexts: [\n").expect("write");
        let error = Config::load(&path).expect_err("bad YAML").to_string();
        assert!(error.contains(":2:"), "{error}");
    }
}
