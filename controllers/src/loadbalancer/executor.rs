//! Carries out [`super::plan`]'s steps over HAProxy's Runtime API ([`RuntimeApi`]), and the
//! reload of a validated configuration. What a step needs from HAProxy, and which answers
//! confirm it, is written here once; the decisions are not.

use std::path::Path;

use super::admin::{AdminError, RuntimeApi};
use super::config;
use super::plan::Step;
use super::state;
use crate::docker::ContainerDriver;
use crate::reconciler::ReconcileError;

/// What sending the steps did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Done {
    /// Targets that joined (each once, however many listeners).
    pub joined: Vec<String>,
    /// Servers that are gone from HAProxy or back in rotation: (backend, server); their drain
    /// is over.
    pub settled: Vec<(String, String)>,
    /// A removal did not go through (typically idle connections HAProxy has not purged yet):
    /// the next round tries again.
    pub unfinished: bool,
}

/// Sends the steps in order. A join, move or return that HAProxy refuses fails the round; a
/// drain or removal that does not go through is retried next round.
pub async fn execute(api: &dyn RuntimeApi, steps: &[Step]) -> Result<Done, AdminError> {
    let mut done = Done::default();
    for step in steps {
        let (backend, server) = step.server();
        let id = format!("{backend}/{server}");
        match step {
            Step::Add { address, arguments, .. } => {
                api.expect(&format!("add server {id} {address} {arguments}"), &["New server registered"]).await?;
                api.expect(&format!("enable health {id}"), &[]).await?;
                api.expect(&format!("enable server {id}"), &[]).await?;
                if !done.joined.iter().any(|joined| joined == server) {
                    done.joined.push(server.to_owned());
                }
            }
            Step::Move { ip, port, .. } => {
                let command = format!("set server {id} addr {ip} port {port}");
                api.expect(&command, &["IP changed", "no need", "port changed", "IP and port"]).await?;
            }
            Step::Return { .. } => {
                api.expect(&format!("set server {id} state ready"), &[]).await?;
                done.settled.push((backend.to_owned(), server.to_owned()));
            }
            Step::Drain { .. } => {
                if let Err(error) = api.expect(&format!("set server {id} state drain"), &[]).await {
                    tracing::debug!(%error, server = %id, "drain not started");
                    done.unfinished = true;
                }
            }
            Step::Remove { already_maint, shutdown_sessions, .. } => {
                let removal = async {
                    if !already_maint {
                        api.expect(&format!("set server {id} state maint"), &[]).await?;
                    }
                    if *shutdown_sessions {
                        api.expect(&format!("shutdown sessions server {id}"), &[]).await?;
                    }
                    api.expect(&format!("del server {id}"), &["Server deleted"]).await
                };
                match removal.await {
                    Ok(()) => done.settled.push((backend.to_owned(), server.to_owned())),
                    Err(error) => {
                        tracing::debug!(%error, server = %id, "removal not finished");
                        done.unfinished = true;
                    }
                }
            }
        }
    }
    Ok(done)
}

/// Loads the validated candidate into the running HAProxy: the server states are saved first
/// (DOWN, DRAIN and MAINT survive the reload), the candidate becomes the configuration, and
/// HAProxy's master reloads on SIGUSR2.
pub async fn reload(
    api: &dyn RuntimeApi,
    driver: &dyn ContainerDriver,
    container: &str,
    directory: &Path,
) -> Result<(), ReconcileError> {
    if let Ok(states) = api.command("show servers state").await {
        state::write_atomically(&directory.join(config::STATE_FILE), &states)?;
    }
    state::install_candidate(directory)?;
    driver.signal(container, "SIGUSR2").await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;

    /// A Runtime API that records commands and answers from a script (default: an empty
    /// answer, which confirms).
    #[derive(Default)]
    struct FakeApi {
        sent: Mutex<Vec<String>>,
        answers: Vec<(&'static str, &'static str)>,
    }

    #[async_trait]
    impl RuntimeApi for FakeApi {
        async fn command(&self, command: &str) -> Result<String, AdminError> {
            self.sent.lock().expect("lock").push(command.to_owned());
            let answer = self.answers.iter().find(|(prefix, _)| command.starts_with(prefix));
            Ok(answer.map_or(String::new(), |(_, answer)| (*answer).to_owned()))
        }
    }

    fn add(backend: &str, server: &str) -> Step {
        Step::Add {
            backend: backend.into(),
            server: server.into(),
            address: "172.18.0.2:8080".into(),
            arguments: "check inter 2000".into(),
        }
    }

    #[tokio::test]
    async fn a_join_is_added_checked_and_enabled_and_counted_once() {
        let api = FakeApi { answers: vec![("add server", "New server registered.")], ..FakeApi::default() };
        let done = execute(&api, &[add("be-http", "web-1"), add("be-admin", "web-1")]).await.expect("execute");
        assert_eq!(done.joined, ["web-1"]);
        assert_eq!(
            api.sent.lock().expect("lock")[..3],
            [
                "add server be-http/web-1 172.18.0.2:8080 check inter 2000".to_owned(),
                "enable health be-http/web-1".into(),
                "enable server be-http/web-1".into(),
            ]
        );
    }

    #[tokio::test]
    async fn a_refused_join_fails_the_round() {
        let api = FakeApi { answers: vec![("add server", "Already exists a server")], ..FakeApi::default() };
        let refused = execute(&api, &[add("be-http", "web-1")]).await;
        assert!(matches!(refused, Err(AdminError::Refused { .. })), "{refused:?}");
    }

    #[tokio::test]
    async fn a_removal_that_does_not_go_through_is_tried_again() {
        let remove = Step::Remove {
            backend: "be-http".into(),
            server: "web-1".into(),
            already_maint: false,
            shutdown_sessions: true,
        };
        let api = FakeApi { answers: vec![("del server", "Server still has connections")], ..FakeApi::default() };
        let done = execute(&api, std::slice::from_ref(&remove)).await.expect("not fatal");
        assert!(done.unfinished && done.settled.is_empty(), "{done:?}");
        let sent = api.sent.lock().expect("lock").clone();
        assert_eq!(
            sent,
            [
                "set server be-http/web-1 state maint",
                "shutdown sessions server be-http/web-1",
                "del server be-http/web-1"
            ]
        );

        let api = FakeApi { answers: vec![("del server", "Server deleted.")], ..FakeApi::default() };
        let done = execute(&api, &[remove]).await.expect("removed");
        assert_eq!(done.settled, [("be-http".to_owned(), "web-1".to_owned())]);
    }

    #[tokio::test]
    async fn a_server_already_in_maintenance_is_not_set_again() {
        let remove = Step::Remove {
            backend: "be-http".into(),
            server: "web-1".into(),
            already_maint: true,
            shutdown_sessions: false,
        };
        let api = FakeApi { answers: vec![("del server", "Server deleted.")], ..FakeApi::default() };
        execute(&api, &[remove]).await.expect("removed");
        assert_eq!(*api.sent.lock().expect("lock"), ["del server be-http/web-1"]);
    }

    #[tokio::test]
    async fn moves_and_returns_use_their_commands() {
        let steps = [
            Step::Move { backend: "be-http".into(), server: "web-1".into(), ip: "172.18.0.9".into(), port: 8080 },
            Step::Return { backend: "be-http".into(), server: "web-2".into() },
        ];
        let api = FakeApi { answers: vec![("set server be-http/web-1 addr", "IP changed from")], ..FakeApi::default() };
        let done = execute(&api, &steps).await.expect("execute");
        assert_eq!(
            *api.sent.lock().expect("lock"),
            ["set server be-http/web-1 addr 172.18.0.9 port 8080", "set server be-http/web-2 state ready"]
        );
        assert_eq!(done.settled, [("be-http".to_owned(), "web-2".to_owned())], "its drain is over");
    }
}
