//! What differs between database engines: image, port, where the data lives, the container's
//! environment, and the commands (run inside the container) that check readiness, dump and
//! restore. Passwords reach commands through their environment, never their arguments.

use minicloud_crds::database::Engine;

/// The credentials of a database, as its Secret holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub database: String,
}

/// A command run inside the database's container, with its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub argv: Vec<String>,
    pub env: Vec<String>,
}

fn command(argv: &[&str], env: Vec<String>) -> Command {
    Command { argv: argv.iter().map(|a| (*a).to_owned()).collect(), env }
}

/// The image of an engine (built by `scripts/local-images.sh`).
pub fn image(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => "minicloud/postgres:local",
        Engine::Mysql => "minicloud/mariadb:local",
        Engine::Redis => "minicloud/redis:local",
    }
}

/// The port the engine listens on inside its container.
pub fn port(engine: Engine) -> u16 {
    match engine {
        Engine::Postgres => 5432,
        Engine::Mysql => 3306,
        Engine::Redis => 6379,
    }
}

/// Where the engine keeps its data (the volume is mounted there).
pub(crate) fn data_path(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => "/var/lib/postgresql/data",
        Engine::Mysql => "/var/lib/mysql",
        Engine::Redis => "/data",
    }
}

/// The file name extension of a dump.
pub(crate) fn dump_extension(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => "pgdump",
        Engine::Mysql => "sql",
        Engine::Redis => "rdb",
    }
}

/// The username a new database gets.
pub(crate) fn default_username(engine: Engine) -> &'static str {
    match engine {
        Engine::Redis => "default",
        _ => "app",
    }
}

/// The container's environment (the images' entrypoints initialise the data directory from
/// it on first start).
pub(crate) fn container_env(engine: Engine, credentials: &Credentials) -> Vec<String> {
    match engine {
        Engine::Postgres => vec![
            format!("POSTGRES_USER={}", credentials.username),
            format!("POSTGRES_PASSWORD={}", credentials.password),
            format!("POSTGRES_DB={}", credentials.database),
        ],
        Engine::Mysql => vec![
            format!("MARIADB_USER={}", credentials.username),
            format!("MARIADB_PASSWORD={}", credentials.password),
            format!("MARIADB_DATABASE={}", credentials.database),
        ],
        Engine::Redis => vec![format!("REDIS_PASSWORD={}", credentials.password)],
    }
}

/// How an application on the database's network connects (`host` is the database's name).
pub fn url(engine: Engine, credentials: &Credentials, host: &str) -> String {
    let Credentials { username, password, database } = credentials;
    match engine {
        Engine::Postgres => format!("postgres://{username}:{password}@{host}:5432/{database}"),
        Engine::Mysql => format!("mysql://{username}:{password}@{host}:3306/{database}"),
        Engine::Redis => format!("redis://{username}:{password}@{host}:6379/{database}"),
    }
}

fn mysql_env(credentials: &Credentials) -> Vec<String> {
    vec![format!("MYSQL_PWD={}", credentials.password)]
}

fn redis_env(credentials: &Credentials) -> Vec<String> {
    vec![format!("REDISCLI_AUTH={}", credentials.password)]
}

/// Exits 0 when the engine accepts connections (its own check, through the local socket or
/// loopback inside the container).
pub fn readiness(engine: Engine, credentials: &Credentials) -> Command {
    match engine {
        Engine::Postgres => command(
            &["pg_isready", "-q", "-h", "/tmp", "-U", &credentials.username, "-d", &credentials.database],
            Vec::new(),
        ),
        Engine::Mysql => command(
            &["mariadb-admin", "ping", "--silent", "-h", "127.0.0.1", "-u", &credentials.username],
            mysql_env(credentials),
        ),
        // `redis-cli ping` prints PONG, or an error on standard output with exit code 0:
        // checked by the caller.
        Engine::Redis => command(&["redis-cli", "--no-auth-warning", "ping"], redis_env(credentials)),
    }
}

/// Logs in over TCP with the generated credentials, as a client on the network would (the
/// readiness check alone passes on a data directory whose users or `pg_hba.conf` are not the
/// ones the credentials Secret names). Exits 0 (Redis: prints `PONG`) when they work.
pub fn login(engine: Engine, credentials: &Credentials) -> Command {
    match engine {
        Engine::Postgres => command(
            &[
                "psql",
                "-X",
                "-q",
                "-A",
                "-t",
                "-w",
                "-h",
                "127.0.0.1",
                "-U",
                &credentials.username,
                "-d",
                &credentials.database,
                "-c",
                "SELECT 1",
            ],
            vec![format!("PGPASSWORD={}", credentials.password), "PGCONNECT_TIMEOUT=5".into()],
        ),
        Engine::Mysql => command(
            &[
                "mariadb",
                "--connect-timeout=5",
                "-h",
                "127.0.0.1",
                "-u",
                &credentials.username,
                "-e",
                "SELECT 1",
                &credentials.database,
            ],
            mysql_env(credentials),
        ),
        Engine::Redis => {
            command(&["redis-cli", "--no-auth-warning", "-h", "127.0.0.1", "ping"], redis_env(credentials))
        }
    }
}

/// Whether a readiness check's output says the engine runs but refuses the credentials (Redis
/// answers its `ping` with an authentication error then).
pub(crate) fn refuses_credentials(output: &str) -> bool {
    ["WRONGPASS", "NOAUTH", "invalid password", "invalid username-password"].iter().any(|sign| output.contains(sign))
}

/// What a successful readiness check prints, when exit code 0 is not enough.
pub(crate) fn readiness_output(engine: Engine) -> Option<&'static str> {
    match engine {
        Engine::Redis => Some("PONG"),
        _ => None,
    }
}

/// Writes a consistent dump to standard output. (Redis: the snapshot file, once `BGSAVE` has
/// finished; see [`redis_snapshot`].)
pub fn dump(engine: Engine, credentials: &Credentials) -> Command {
    match engine {
        Engine::Postgres => command(
            &["pg_dump", "-Fc", "-h", "/tmp", "-U", &credentials.username, "-d", &credentials.database],
            Vec::new(),
        ),
        Engine::Mysql => command(
            &[
                "mariadb-dump",
                "--single-transaction",
                "--routines",
                "--triggers",
                "-h",
                "127.0.0.1",
                "-u",
                &credentials.username,
                &credentials.database,
            ],
            mysql_env(credentials),
        ),
        Engine::Redis => command(&["cat", "/data/dump.rdb"], Vec::new()),
    }
}

/// Reads a dump from standard input into the database (what is in the dump replaces what is
/// there). Redis: the snapshot is put in place and Redis is shut down without saving, so that
/// the next start loads it (see [`redis_install_snapshot`]).
pub fn restore(engine: Engine, credentials: &Credentials) -> Command {
    match engine {
        Engine::Postgres => command(
            &[
                "pg_restore",
                "--clean",
                "--if-exists",
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                "-h",
                "/tmp",
                "-U",
                &credentials.username,
                "-d",
                &credentials.database,
            ],
            Vec::new(),
        ),
        Engine::Mysql => command(
            &["mariadb", "-h", "127.0.0.1", "-u", &credentials.username, &credentials.database],
            mysql_env(credentials),
        ),
        Engine::Redis => command(&["sh", "-c", "cat > /data/restore.rdb"], Vec::new()),
    }
}

/// Redis: starts a snapshot (`BGSAVE`).
pub(crate) fn redis_snapshot(credentials: &Credentials) -> Command {
    command(&["redis-cli", "--no-auth-warning", "BGSAVE"], redis_env(credentials))
}

/// Redis: the persistence section of `INFO`, to see when the snapshot is done.
pub(crate) fn redis_persistence(credentials: &Credentials) -> Command {
    command(&["redis-cli", "--no-auth-warning", "INFO", "persistence"], redis_env(credentials))
}

/// Redis: whether `INFO persistence` says no snapshot runs and the last one worked, and how
/// many snapshots it made since it started (`rdb_saves`: a count, so two snapshots within one
/// second still differ, unlike `rdb_last_save_time`).
pub(crate) fn redis_snapshot_state(info: &str) -> (bool, bool, i64) {
    let field =
        |name: &str| info.lines().find_map(|line| line.trim().strip_prefix(name)?.strip_prefix(':').map(str::to_owned));
    let idle = field("rdb_bgsave_in_progress").as_deref() == Some("0");
    let ok = field("rdb_last_bgsave_status").as_deref() == Some("ok");
    let saves = field("rdb_saves").and_then(|t| t.parse().ok()).unwrap_or(0);
    (idle, ok, saves)
}

/// Redis: puts the uploaded snapshot in place and stops Redis without saving over it.
pub(crate) fn redis_install_snapshot(credentials: &Credentials) -> Command {
    command(
        &["sh", "-c", "mv /data/restore.rdb /data/dump.rdb && redis-cli --no-auth-warning SHUTDOWN NOSAVE; true"],
        redis_env(credentials),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials() -> Credentials {
        Credentials { username: "app".into(), password: "pw-never-in-argv".into(), database: "app".into() }
    }

    #[test]
    fn passwords_never_reach_a_command_line() {
        for engine in [Engine::Postgres, Engine::Mysql, Engine::Redis] {
            let credentials = credentials();
            for command in [
                readiness(engine, &credentials),
                login(engine, &credentials),
                dump(engine, &credentials),
                restore(engine, &credentials),
                redis_snapshot(&credentials),
                redis_persistence(&credentials),
                redis_install_snapshot(&credentials),
            ] {
                assert!(command.argv.iter().all(|a| !a.contains("pw-never-in-argv")), "{engine:?}: {command:?}");
            }
        }
        assert!(url(Engine::Postgres, &credentials(), "db").starts_with("postgres://app:pw-never-in-argv@db:5432/"));
    }

    #[test]
    fn redis_snapshot_progress_is_read_from_info() {
        let info = "# Persistence\r\nloading:0\r\nrdb_bgsave_in_progress:0\r\nrdb_last_save_time:1700000000\r\nrdb_last_bgsave_status:ok\r\nrdb_saves:3\r\n";
        assert_eq!(redis_snapshot_state(info), (true, true, 3));
        let running = "rdb_bgsave_in_progress:1\r\nrdb_last_bgsave_status:ok\r\nrdb_saves:5\r\n";
        assert_eq!(redis_snapshot_state(running), (false, true, 5));
        assert_eq!(redis_snapshot_state("rdb_last_bgsave_status:err\r\n"), (false, false, 0));
    }
}
