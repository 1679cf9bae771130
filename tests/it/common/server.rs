//! A real `cloud server` process for tests: on a free port, on a fresh SQLite directory or a
//! fresh PostgreSQL database, killed and cleaned up when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TestDb;

/// A running server.
pub struct TestServer {
    pub url: String,
    child: Child,
    pub database: Option<TestDb>,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// What the server printed on standard output (the admin token, with --auth).
    pub stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl TestServer {
    /// Starts `cloud server` on `database` (extra arguments appended) and waits until it listens.
    pub async fn start(database: TestDb, extra: &[&str]) -> TestServer {
        TestServer::start_with_env(database, extra, &[]).await
    }

    /// Like [`TestServer::start`], with environment variables for the server process.
    pub async fn start_with_env(database: TestDb, extra: &[&str], env: &[(&str, &str)]) -> TestServer {
        TestServer::launch(database, extra, env).listening()
    }

    /// Starts one server per database at the same instant (every process spawned before any
    /// is waited for), with the same arguments.
    pub async fn start_together(databases: Vec<TestDb>, extra: &[&str]) -> Vec<TestServer> {
        let launched: Vec<Launched> =
            databases.into_iter().map(|database| TestServer::launch(database, extra, &[])).collect();
        launched.into_iter().map(Launched::listening).collect()
    }

    /// Spawns the server process; [`Launched::listening`] waits for its address.
    fn launch(database: TestDb, extra: &[&str], env: &[(&str, &str)]) -> Launched {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cloud"));
        command.arg("server");
        // Any free port, unless the caller names one (to restart a server where clients expect it).
        if !extra.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command.args(["--database-url", &database.url]).args(extra);
        // Test servers share the tests' key (an empty value in `env` removes it).
        command.env(minicloud_server::KEY_ENV, super::test_key_base64());
        for (name, value) in env {
            if value.is_empty() {
                command.env_remove(name);
            } else {
                command.env(name, value);
            }
        }
        command.env("RUST_LOG", "info").stdout(Stdio::piped()).stderr(Stdio::piped());
        // A test killed outright (no Drop runs) takes its servers with it: a server left
        // running would recreate the containers the next run's sweep removes.
        #[cfg(target_os = "linux")]
        // SAFETY: the closure runs in the child between fork and exec and only calls prctl,
        // which is async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().expect("start cloud server");
        let stderr = child.stderr.take().expect("stderr");
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let printed = stdout.clone();
        let output = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(output).lines().map_while(Result::ok) {
                if let Ok(mut lines) = printed.lock() {
                    lines.push(line);
                }
            }
        });
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Text logs say `address=HOST:PORT`, JSON logs `"address":"HOST:PORT"`.
                let found = line.split("address=").nth(1).or_else(|| line.split("\"address\":\"").nth(1));
                if let Some(rest) = found {
                    let address =
                        rest.split(|c: char| c.is_whitespace() || c == '"' || c == ',').next().unwrap_or("").to_owned();
                    let _ = address_tx.send(address);
                }
                if let Ok(mut lines) = sink.lock() {
                    lines.push(line);
                }
            }
        });
        Launched { child, database, log, stdout, address: address_rx }
    }

    /// The store's cluster id (`/version`), which every Docker name this server gives carries.
    /// (A server with `--auth` answers `/version` without a token too.)
    pub async fn cluster(&self) -> String {
        let version: serde_json::Value =
            reqwest::get(format!("{}/version", self.url)).await.expect("version").json().await.expect("json");
        version["cluster"].as_str().unwrap_or_else(|| panic!("no cluster id: {version}")).to_owned()
    }

    /// Makes a token with `admin` (`{"name", "role", "namespace"?}`) and returns it.
    pub async fn create_token(&self, admin: &str, request: serde_json::Value) -> String {
        let created: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/apis/minicloud.dev/v1/tokens", self.url))
            .bearer_auth(admin)
            .json(&request)
            .send()
            .await
            .expect("create token")
            .json()
            .await
            .expect("json");
        created["token"].as_str().unwrap_or_else(|| panic!("no token: {created}")).to_owned()
    }

    /// The admin token a server started with `--auth` printed (`admin token: TOKEN`), waiting
    /// a little for the line to be read; `None` when it printed none.
    pub fn printed_admin_token(&self) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = self.stdout.lock().ok().and_then(|lines| {
                lines.iter().rev().find_map(|line| line.strip_prefix("admin token: ").map(str::to_owned))
            });
            if found.is_some() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts an API-only server on a fresh SQLite directory.
    pub async fn sqlite() -> TestServer {
        TestServer::start(TestDb::sqlite().await, &["--no-controllers"]).await
    }

    /// Starts an API-only server on a fresh PostgreSQL database.
    pub async fn postgres() -> TestServer {
        TestServer::start(TestDb::postgres().await, &["--no-controllers"]).await
    }

    /// The process id, to send signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills the server with SIGKILL (no chance to clean up) and hands back its database, to
    /// start another server on it.
    pub fn crash(mut self) -> TestDb {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.database.take().expect("database")
    }

    /// Stops the server and drops its database.
    pub async fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(database) = self.database.take() {
            database.cleanup().await;
        }
    }
}

/// A server process spawned, not yet known to listen.
struct Launched {
    child: Child,
    database: TestDb,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    address: std::sync::mpsc::Receiver<String>,
}

impl Launched {
    /// Waits (30 s at most) until the server says where it listens.
    fn listening(mut self) -> TestServer {
        let address = self.address.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
            let _ = self.child.kill();
            panic!("cloud server did not start: {:?}", self.log.lock().map(|l| l.clone()).unwrap_or_default())
        });
        TestServer {
            url: format!("http://{address}"),
            child: self.child,
            database: Some(self.database),
            log: self.log,
            stdout: self.stdout,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `csrf` field of the first form of a console page, read as any client can read the page.
pub async fn form_token_of(page: &str) -> String {
    let html = reqwest::get(page).await.expect("page").text().await.expect("html");
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).unwrap_or_else(|| panic!("a form with a token in {html}")) + marker.len();
    html[start..].split('"').next().expect("token").to_owned()
}
