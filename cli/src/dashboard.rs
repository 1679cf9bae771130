//! `cloud dashboard [--open]`: the console's address on the server the CLI talks to, after
//! checking that the server answers; with `--open`, a browser is started on it when the
//! machine has one (`xdg-open`, or `$BROWSER`).

use minicloud_client::Client;

/// The console's URL on `server`.
pub fn console_url(server: &str) -> String {
    format!("{}/ui", server.trim_end_matches('/'))
}

/// Prints the URL; opens it when asked and possible (saying so when not).
pub async fn run(client: &Client, open: bool) -> anyhow::Result<()> {
    client.version().await?;
    let url = console_url(client.server());
    say!("{url}");
    if open {
        let opener = std::env::var("BROWSER").ok().filter(|browser| !browser.trim().is_empty());
        let opener = opener.unwrap_or_else(|| "xdg-open".into());
        let started = std::process::Command::new(&opener)
            .arg(&url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Err(error) = started {
            say_err!("cannot start a browser ({opener}: {error}); open the address above yourself");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_lives_under_ui() {
        assert_eq!(console_url("http://127.0.0.1:7080"), "http://127.0.0.1:7080/ui");
        assert_eq!(console_url("http://127.0.0.1:7080/"), "http://127.0.0.1:7080/ui");
    }
}
