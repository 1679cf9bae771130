//! `cloud kubeconfig`: a kubeconfig for the server the CLI talks to (cluster, user and context
//! `minicloud`), so that kubectl and Kubernetes client libraries reach it:
//! `cloud kubeconfig > ~/.kube/minicloud.yaml && export KUBECONFIG=~/.kube/minicloud.yaml`.

use minicloud_client::Client;

/// The kubeconfig text for `server`, with `namespace` as the context's namespace and the
/// client's token and private certificate authority, when it has them.
pub fn render(server: &str, namespace: &str, token: Option<&str>, authority: Option<&[u8]>) -> String {
    use base64::Engine;
    let user = match token {
        Some(token) => format!("{{token: {}}}", serde_json::Value::String(token.to_owned())),
        None => "{}".to_owned(),
    };
    let authority = authority
        .map(|pem| {
            format!("\n      certificate-authority-data: {}", base64::engine::general_purpose::STANDARD.encode(pem))
        })
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n  - name: minicloud\n    cluster:\n      server: {server}{authority}\nusers:\n  - name: minicloud\n    user: {user}\ncontexts:\n  - name: minicloud\n    context:\n      cluster: minicloud\n      user: minicloud\n      namespace: {namespace}\ncurrent-context: minicloud\npreferences: {{}}\n"
    )
}

/// Prints the kubeconfig once the server has answered (a kubeconfig for a server that is not
/// there would only fail later, less clearly).
pub async fn run(client: &Client, namespace: &str) -> anyhow::Result<()> {
    minicloud_crds::validation::check_dns_label(namespace)
        .map_err(|reason| anyhow::anyhow!("namespace {namespace:?} is not valid: {reason}"))?;
    client.version().await?;
    if client.token().is_some() && client.server().starts_with("http://") {
        say_err!(
            "warning: kubectl never sends a token over plain HTTP: put TLS in front of the server and use its https:// address (docs/security.md)"
        );
    }
    super::output::write_data(&render(client.server(), namespace, client.token(), client.certificate_authority()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubeconfig_is_valid_yaml_naming_the_server() {
        let text = render("http://127.0.0.1:7080", "shop", None, None);
        let documents = minicloud_model::yaml::parse_documents(&text).expect("YAML");
        let config = &documents[0].value;
        assert_eq!(config["users"][0]["user"], serde_json::json!({}));
        let with_token = render("https://127.0.0.1:7443", "shop", Some("mc_abc"), Some(b"PEM"));
        let documents = minicloud_model::yaml::parse_documents(&with_token).expect("YAML");
        assert_eq!(documents[0].value["users"][0]["user"]["token"], "mc_abc");
        assert_eq!(documents[0].value["clusters"][0]["cluster"]["certificate-authority-data"], "UEVN");
        assert_eq!(config["clusters"][0]["cluster"]["server"], "http://127.0.0.1:7080");
        assert_eq!(config["contexts"][0]["context"]["namespace"], "shop");
        assert_eq!(config["current-context"], "minicloud");
    }
}
