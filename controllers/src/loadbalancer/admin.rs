//! HAProxy's Runtime API: the [`RuntimeApi`] trait the LoadBalancer's executor speaks, and
//! its client over the admin socket in the LoadBalancer's directory ([`AdminSocket`]): one
//! connection per command (the write half is shut down after sending, so HAProxy answers and
//! closes), bounded in time and in answer size. Also parses `show stat` into per-server rows:
//! state, last check, current sessions and the counters the metrics export.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// How long one command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read (a `show stat` of a few hundred servers is far below).
const MAX_ANSWER_BYTES: u64 = 8 * 1024 * 1024;

/// What can go wrong talking to HAProxy.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    #[error("cannot reach HAProxy's admin socket {path}: {reason}")]
    Unreachable { path: String, reason: String },
    #[error("HAProxy did not answer `{command}` within {seconds} s")]
    TimedOut { command: String, seconds: u64 },
    #[error("HAProxy refused `{command}`: {answer}")]
    Refused { command: String, answer: String },
    #[error("a command must be one line without `;`: {0:?}")]
    BadCommand(String),
}

/// The admin socket of one HAProxy.
#[derive(Clone, Debug)]
pub(crate) struct AdminSocket {
    path: PathBuf,
}

/// One server as `show stat` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ServerStat {
    pub backend: String,
    pub server: String,
    /// `UP`, `DOWN`, `DRAIN`, `MAINT`, `NOLB` (the first word of HAProxy's status).
    pub state: String,
    /// `ip:port`.
    pub address: String,
    /// `L7OK/200`, `L4CON`, ... (empty before the first check).
    pub last_check: String,
    /// Sessions open now.
    pub current_sessions: u64,
    /// Sessions (HTTP: requests) since HAProxy started.
    pub total_sessions: u64,
    /// HTTP responses by class: 1xx, 2xx, 3xx, 4xx, 5xx, other.
    pub responses: [u64; 6],
}

impl AdminSocket {
    pub fn new(path: impl Into<PathBuf>) -> AdminSocket {
        AdminSocket { path: path.into() }
    }

    /// Sends one command and returns the whole answer.
    pub async fn command(&self, command: &str) -> Result<String, AdminError> {
        self.send(command, None).await
    }

    /// Sends one command with a multi-line payload (`COMMAND <<`, the payload, an empty line),
    /// as `set ssl cert` takes a PEM file. The payload must be non-empty lines of printable
    /// ASCII (an empty line would end it early).
    pub async fn command_with_payload(&self, command: &str, payload: &str) -> Result<String, AdminError> {
        let lines_ok =
            payload.lines().all(|line| !line.trim().is_empty() && line.bytes().all(|b| (b' '..=b'~').contains(&b)));
        if payload.trim().is_empty() || !lines_ok {
            return Err(AdminError::BadCommand(format!("{command} with a payload that is not PEM-like text")));
        }
        self.send(command, Some(payload)).await
    }

    async fn send(&self, command: &str, payload: Option<&str>) -> Result<String, AdminError> {
        if command.contains(['\n', '\r', ';']) {
            return Err(AdminError::BadCommand(command.to_owned()));
        }
        let request = match payload {
            Some(payload) => format!("{command} <<\n{}\n\n", payload.trim_end()),
            None => format!("{command}\n"),
        };
        let exchange = async {
            let unreachable = |error: std::io::Error| AdminError::Unreachable {
                path: self.path.display().to_string(),
                reason: error.to_string(),
            };
            let mut stream = UnixStream::connect(&self.path).await.map_err(unreachable)?;
            stream.write_all(request.as_bytes()).await.map_err(unreachable)?;
            stream.shutdown().await.map_err(unreachable)?;
            let mut answer = Vec::new();
            (&mut stream).take(MAX_ANSWER_BYTES).read_to_end(&mut answer).await.map_err(unreachable)?;
            Ok(String::from_utf8_lossy(&answer).into_owned())
        };
        tokio::time::timeout(COMMAND_TIMEOUT, exchange)
            .await
            .map_err(|_| AdminError::TimedOut { command: command.to_owned(), seconds: COMMAND_TIMEOUT.as_secs() })?
    }
}

/// HAProxy's Runtime API, one command at a time: the admin socket in production, a fake in
/// the executor's unit tests.
#[async_trait]
pub(crate) trait RuntimeApi: Send + Sync {
    /// Sends one command and returns the whole answer.
    async fn command(&self, command: &str) -> Result<String, AdminError>;

    /// Sends a command whose success HAProxy confirms with an empty answer or one starting with
    /// one of `confirmations`; anything else is [`AdminError::Refused`].
    async fn expect(&self, command: &str, confirmations: &[&str]) -> Result<(), AdminError> {
        let answer = self.command(command).await?;
        let answer = answer.trim();
        if answer.is_empty() || confirmations.iter().any(|confirmation| answer.starts_with(confirmation)) {
            Ok(())
        } else {
            Err(AdminError::Refused { command: command.to_owned(), answer: answer.to_owned() })
        }
    }

    /// Every server of every backend.
    async fn servers(&self) -> Result<Vec<ServerStat>, AdminError> {
        Ok(parse_stat(&self.command("show stat").await?))
    }
}

#[async_trait]
impl RuntimeApi for AdminSocket {
    async fn command(&self, command: &str) -> Result<String, AdminError> {
        AdminSocket::command(self, command).await
    }
}

/// Parses `show stat` CSV (columns found by their header names) into server rows; frontend
/// and backend summary rows are skipped.
pub(crate) fn parse_stat(csv: &str) -> Vec<ServerStat> {
    let mut lines = csv.lines();
    let Some(header) = lines.next().and_then(|line| line.strip_prefix("# ")) else { return Vec::new() };
    let columns: Vec<&str> = header.split(',').collect();
    let find = |name: &str| columns.iter().position(|column| *column == name);
    let index = |name| find(name).unwrap_or(usize::MAX);
    let (backend, server, status, address, check, code) =
        (index("pxname"), index("svname"), index("status"), index("addr"), index("check_status"), index("check_code"));
    let (scur, stot) = (index("scur"), index("stot"));
    let responses = ["hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other"].map(index);
    let mut servers = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let field = |at: usize| fields.get(at).copied().unwrap_or("");
        let number = |at: usize| field(at).parse::<u64>().unwrap_or(0);
        if line.is_empty() || matches!(field(server), "FRONTEND" | "BACKEND" | "") {
            continue;
        }
        let check_status = field(check).trim_start_matches('*').trim();
        let last_check = match (check_status, field(code)) {
            ("", _) => String::new(),
            (status, "") => status.to_owned(),
            (status, code) => format!("{status}/{code}"),
        };
        servers.push(ServerStat {
            backend: field(backend).to_owned(),
            server: field(server).to_owned(),
            state: field(status).split_whitespace().next().unwrap_or("").to_owned(),
            address: field(address).to_owned(),
            last_check,
            current_sessions: number(scur),
            total_sessions: number(stot),
            responses: responses.map(number),
        });
    }
    servers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_stat_rows_become_servers() {
        let csv = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,status,check_status,check_code,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,addr,\n\
            fe-http,FRONTEND,,,0,1,2000,9,OPEN,,,0,9,0,0,0,0,,\n\
            be-http,web-1,0,0,1,1,,5,UP,L7OK,200,0,5,0,0,0,0,172.18.0.2:8080,\n\
            be-http,web-2,0,0,0,1,,4,DOWN 1/3,* L4CON,,0,3,0,0,1,0,172.18.0.3:8080,\n\
            be-http,BACKEND,0,0,0,1,200,9,UP,,,0,8,0,0,1,0,,\n\n";
        let servers = parse_stat(csv);
        assert_eq!(servers.len(), 2);
        assert_eq!(
            servers[0],
            ServerStat {
                backend: "be-http".into(),
                server: "web-1".into(),
                state: "UP".into(),
                address: "172.18.0.2:8080".into(),
                last_check: "L7OK/200".into(),
                current_sessions: 1,
                total_sessions: 5,
                responses: [0, 5, 0, 0, 0, 0],
            }
        );
        assert_eq!((servers[1].state.as_str(), servers[1].last_check.as_str()), ("DOWN", "L4CON"));
        assert!(parse_stat("").is_empty());
        assert!(parse_stat("Unknown command\n").is_empty());
    }

    #[tokio::test]
    async fn commands_that_could_smuggle_a_second_command_are_refused() {
        let socket = AdminSocket::new("/nonexistent/admin.sock");
        for command in ["show stat\nshutdown frontend fe", "show stat; disable frontend fe"] {
            assert!(matches!(socket.command(command).await, Err(AdminError::BadCommand(_))));
        }
        assert!(matches!(socket.command("show stat").await, Err(AdminError::Unreachable { .. })));
    }
}
