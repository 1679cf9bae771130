//! Docker helpers for tests: run the docker CLI, and remove what a test run marked with its
//! `minicloud.dev/test` label.

/// Runs `docker ARGS` and returns its trimmed standard output (empty on failure).
pub fn docker(args: &[&str]) -> String {
    std::process::Command::new("docker")
        .args(args)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Removes the containers, networks and volumes whose `minicloud.dev/test` label satisfies
/// `matches`.
pub fn remove_marked(matches: impl Fn(&str) -> bool) {
    let format = "{{.ID}} {{.Label \"minicloud.dev/test\"}}";
    for line in docker(&["ps", "-a", "--filter", "label=minicloud.dev/test", "--format", format]).lines() {
        if let Some((id, run)) = line.split_once(' ') {
            if matches(run) {
                docker(&["rm", "-f", id]);
            }
        }
    }
    for line in docker(&["network", "ls", "--filter", "label=minicloud.dev/test", "--format", format]).lines() {
        if let Some((id, run)) = line.split_once(' ') {
            if matches(run) {
                docker(&["network", "rm", id]);
            }
        }
    }
    let format = "{{.Name}} {{.Label \"minicloud.dev/test\"}}";
    for line in docker(&["volume", "ls", "--filter", "label=minicloud.dev/test", "--format", format]).lines() {
        if let Some((name, run)) = line.split_once(' ') {
            if matches(run) {
                docker(&["volume", "rm", "-f", name]);
            }
        }
    }
}
