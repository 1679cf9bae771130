//! The HTTP client the CLI uses to talk to `cloud server`. Every error names the server, and
//! API errors keep their reason and field causes so the CLI can print them.

use std::pin::Pin;

use bytes::{Buf, BytesMut};
use futures::{Stream, StreamExt};
use minicloud_crds::{Kind, Object};
use serde::Deserialize;
use serde_json::{json, Value};

use minicloud_model::answers::{Applied, Cause, Pruned};
use minicloud_store::Event;

/// What can go wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the minicloud server at {server}: {reason}. Start it with `cloud server` (or `cloud up`), or point --server / CLOUD_SERVER at it")]
    Unreachable { server: String, reason: String },
    #[error("the certificate of {server} is not trusted: {reason}. If a private authority signed it, pass that authority's PEM file with --certificate-authority FILE (or CLOUD_CERTIFICATE_AUTHORITY, or `cloud config set-context NAME --certificate-authority FILE`)")]
    Untrusted { server: String, reason: String },
    #[error("{message}")]
    Api { status: u16, reason: String, message: String, causes: Vec<Cause> },
    #[error("unexpected answer from {server}: {detail}")]
    Protocol { server: String, detail: String },
    #[error("{what} {value:?} is not valid: {reason}")]
    InvalidName { what: &'static str, value: String, reason: String },
    #[error("the token cannot be sent: {0}")]
    BadToken(String),
    #[error("the certificate authority cannot be used: {0}")]
    BadAuthority(String),
    #[error("the server address {server:?} is not a usable http:// or https:// URL: {reason}")]
    BadServer { server: String, reason: String },
}

impl ClientError {
    /// True for a 404 from the API.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Api { status: 404, .. })
    }
}

/// An API error body.
#[derive(Deserialize)]
struct ErrorBody {
    code: u16,
    reason: String,
    message: String,
    #[serde(default)]
    details: ErrorDetails,
}

#[derive(Default, Deserialize)]
struct ErrorDetails {
    #[serde(default)]
    causes: Vec<Cause>,
}

/// A list as the server returns it.
#[derive(Debug, Deserialize)]
pub struct ObjectListBody {
    pub metadata: ListMeta,
    pub items: Vec<Object>,
}

/// List metadata.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    pub resource_version: String,
}

/// One line of a watch stream.
#[derive(Debug, Deserialize)]
pub struct WatchLine {
    #[serde(rename = "type")]
    pub change: String,
    pub object: Value,
}

/// A stream of watch lines.
pub type WatchLines = Pin<Box<dyn Stream<Item = Result<WatchLine, ClientError>> + Send>>;

/// The answer to an apply.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyAnswer {
    pub dry_run: bool,
    pub items: Vec<Applied>,
    /// With an applyset: what prune did (or would do) to members no longer applied.
    #[serde(default)]
    pub pruned: Vec<Pruned>,
    /// What `Warn` policies said about the batch.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// An applyset an apply keeps (and prunes with).
#[derive(Clone, Debug, Default)]
pub struct ApplySetOptions {
    pub name: String,
    /// Where the ApplySet object lives.
    pub namespace: String,
    pub prune: bool,
    pub prune_stateful: bool,
}

/// What a delete did.
#[derive(Debug, Deserialize)]
pub struct DeleteAnswer {
    /// `Status` when the object is gone; the object's own kind while finalizers hold it.
    pub kind: String,
}

impl DeleteAnswer {
    /// Whether the object is still there, waiting for its finalizers.
    pub fn terminating(&self) -> bool {
        self.kind != "Status"
    }
}

#[derive(Deserialize)]
struct EventList {
    items: Vec<Event>,
}

/// A client of one server.
#[derive(Clone)]
pub struct Client {
    server: String,
    http: reqwest::Client,
    /// What the client authenticates with and trusts, for clients of other tools made from
    /// this one (`cloud kubeconfig`).
    credentials: Credentials,
}

/// How a client authenticates, and the certificate authority it trusts besides the system's.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// Sent as `Authorization: Bearer` on every request.
    pub token: Option<String>,
    /// PEM certificates of a private authority (e.g. a reverse proxy's self-signed certificate).
    pub certificate_authority: Option<Vec<u8>>,
}

impl Client {
    /// A client of the server at `server` (e.g. `http://127.0.0.1:7080`).
    pub fn new(server: &str) -> Client {
        Client {
            server: server.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            credentials: Credentials::default(),
        }
    }

    /// A client of `server` that sends the token and trusts the authority of `credentials`.
    pub fn with_credentials(server: &str, credentials: Credentials) -> Result<Client, ClientError> {
        let mut builder = reqwest::Client::builder();
        if let Some(token) = &credentials.token {
            let mut value =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(|_| {
                    ClientError::BadToken(
                        "it holds characters a token never has (was something else pasted with it?)".into(),
                    )
                })?;
            value.set_sensitive(true);
            builder = builder
                .default_headers(reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, value)]));
        }
        if let Some(pem) = &credentials.certificate_authority {
            let certificates = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|error| ClientError::BadAuthority(error.to_string()))?;
            if certificates.is_empty() {
                return Err(ClientError::BadAuthority("it holds no PEM certificate".into()));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder.build().map_err(|error| ClientError::BadAuthority(error.to_string()))?;
        Ok(Client { server: server.trim_end_matches('/').to_owned(), http, credentials })
    }

    /// The token this client sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.credentials.token.as_deref()
    }

    /// The private certificate authority this client trusts, if any (PEM).
    pub fn certificate_authority(&self) -> Option<&[u8]> {
        self.credentials.certificate_authority.as_deref()
    }

    /// Why a request got no answer: an untrusted certificate, or no server there.
    fn unreachable(&self, error: &reqwest::Error) -> ClientError {
        let reason = root_cause(error);
        if reason.contains("certificate") {
            return ClientError::Untrusted { server: self.server.clone(), reason };
        }
        ClientError::Unreachable { server: self.server.clone(), reason }
    }

    /// Checks that the server address is a usable URL.
    pub fn check_server(&self) -> Result<(), ClientError> {
        self.url(&[]).map(|_| ())
    }

    /// The server's address.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The URL of an API path given as segments. Each segment is percent-encoded as one path
    /// segment, so no value can add segments, a query or a fragment.
    fn url(&self, segments: &[&str]) -> Result<reqwest::Url, ClientError> {
        let bad = |reason: String| ClientError::BadServer { server: self.server.clone(), reason };
        let mut url = reqwest::Url::parse(&self.server).map_err(|error| bad(error.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(format!("unsupported scheme {:?}", url.scheme())));
        }
        url.path_segments_mut().map_err(|_| bad("it cannot have a path".into()))?.pop_if_empty().extend(segments);
        Ok(url)
    }

    /// `/apis/minicloud.dev/v1/[namespaces/NS/]PLURAL[/NAME][/SUBRESOURCE]`, with namespace and
    /// name checked.
    fn object_url(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: Option<&str>,
        subresource: Option<&str>,
    ) -> Result<reqwest::Url, ClientError> {
        let mut segments = vec!["apis", "minicloud.dev", "v1"];
        if let Some(namespace) = namespace {
            segments.extend(["namespaces", label("namespace", namespace)?]);
        }
        segments.push(kind.plural());
        if let Some(name) = name {
            segments.push(label("name", name)?);
        }
        segments.extend(subresource);
        self.url(&segments)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let response = request.send().await.map_err(|error| self.unreachable(&error))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => ClientError::Api {
                status: body.code,
                reason: body.reason,
                message: body.message,
                causes: body.details.causes,
            },
            Err(_) => ClientError::Protocol { server: self.server.clone(), detail: format!("HTTP {status}: {text}") },
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T, ClientError> {
        let response = self.send(request).await?;
        response
            .json()
            .await
            .map_err(|error| ClientError::Protocol { server: self.server.clone(), detail: error.to_string() })
    }

    /// Lists objects (every namespace when `namespace` is `None`).
    pub async fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        selector: Option<&str>,
    ) -> Result<ObjectListBody, ClientError> {
        let mut request = self.http.get(self.object_url(kind, namespace, None, None)?);
        if let Some(selector) = selector {
            request = request.query(&[("labelSelector", selector)]);
        }
        self.json(request).await
    }

    /// Reads one object.
    pub async fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Object, ClientError> {
        self.json(self.http.get(self.object_url(kind, Some(namespace), Some(name), None)?)).await
    }

    /// Applies a batch.
    pub async fn apply(&self, items: Vec<Value>, dry_run: bool) -> Result<ApplyAnswer, ClientError> {
        self.apply_with(items, dry_run, None).await
    }

    /// Applies a batch as (part of) an applyset, pruning what the set no longer holds when asked.
    pub async fn apply_with(
        &self,
        items: Vec<Value>,
        dry_run: bool,
        set: Option<&ApplySetOptions>,
    ) -> Result<ApplyAnswer, ClientError> {
        let mut query = vec![("dryRun", dry_run.to_string())];
        if let Some(set) = set {
            label("applyset", &set.name)?;
            label("namespace", &set.namespace)?;
            query.extend([
                ("applyset", set.name.clone()),
                ("applysetNamespace", set.namespace.clone()),
                ("prune", set.prune.to_string()),
                ("pruneStateful", set.prune_stateful.to_string()),
            ]);
        }
        let request = self
            .http
            .post(self.url(&["apis", "minicloud.dev", "v1", "apply"])?)
            .query(&query)
            .json(&json!({"items": items}));
        self.json(request).await
    }

    /// Replaces one object (spec, labels, annotations); its `metadata.resourceVersion` must be
    /// current, or the answer is a 409 Conflict.
    pub async fn replace(&self, object: &Object) -> Result<Object, ClientError> {
        let kind = Kind::from_kind_name(&object.kind).ok_or_else(|| ClientError::Protocol {
            server: self.server.clone(),
            detail: format!("unknown kind {:?}", object.kind),
        })?;
        let url = self.object_url(kind, Some(object.namespace()), Some(&object.metadata.name), None)?;
        self.json(self.http.put(url).json(object)).await
    }

    /// Replaces one object's status (the status subresource), whatever its resourceVersion.
    pub async fn replace_status(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        status: Value,
    ) -> Result<Object, ClientError> {
        let url = self.object_url(kind, Some(namespace), Some(name), Some("status"))?;
        self.json(self.http.put(url).json(&json!({"status": status}))).await
    }

    /// Records an event about an existing object (`event_type`: `Normal` or `Warning`).
    pub async fn record_event(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        event_type: &str,
        reason: &str,
        message: &str,
    ) -> Result<Event, ClientError> {
        let segments = ["apis", "minicloud.dev", "v1", "namespaces", label("namespace", namespace)?, "events"];
        let body = json!({
            "involvedObject": {"kind": kind.as_str(), "name": label("name", name)?},
            "type": event_type,
            "reason": reason,
            "message": message,
        });
        self.json(self.http.post(self.url(&segments)?).json(&body)).await
    }

    /// One value of a Secret (the API redacts them everywhere else).
    pub async fn reveal(&self, namespace: &str, name: &str, key: &str) -> Result<String, ClientError> {
        let url = self.object_url(Kind::Secret, Some(namespace), Some(name), Some("reveal"))?;
        let answer: Value = self.json(self.http.post(url).json(&json!({"key": key}))).await?;
        answer.get("value").and_then(Value::as_str).map(str::to_owned).ok_or_else(|| ClientError::Protocol {
            server: self.server.clone(),
            detail: "the reveal answer has no value".into(),
        })
    }

    /// Rotates the key that seals Secrets; returns the server's answer (`key`, `rewritten`).
    pub async fn rotate_secret_key(&self) -> Result<Value, ClientError> {
        let url = self.url(&["apis", "minicloud.dev", "v1", "secretkeys", "rotate"])?;
        self.json(self.http.post(url).json(&json!({}))).await
    }

    /// Deletes one object.
    pub async fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<DeleteAnswer, ClientError> {
        self.json(self.http.delete(self.object_url(kind, Some(namespace), Some(name), None)?)).await
    }

    /// Events of a namespace (all when `None`) or of one object.
    pub async fn events(
        &self,
        namespace: Option<&str>,
        object: Option<(Kind, &str)>,
    ) -> Result<Vec<Event>, ClientError> {
        let request = match namespace {
            None => self.http.get(self.url(&["apis", "minicloud.dev", "v1", "events"])?),
            Some(namespace) => {
                let segments = ["apis", "minicloud.dev", "v1", "namespaces", label("namespace", namespace)?, "events"];
                let request = self.http.get(self.url(&segments)?);
                match object {
                    Some((kind, name)) => request.query(&[("kind", kind.as_str()), ("name", label("name", name)?)]),
                    None => request,
                }
            }
        };
        Ok(self.json::<EventList>(request).await?.items)
    }

    /// An Instance's container output as a byte stream (kept open with `follow`).
    pub async fn logs(
        &self,
        namespace: &str,
        name: &str,
        follow: bool,
        tail: Option<u32>,
    ) -> Result<Pin<Box<dyn Stream<Item = Result<bytes::Bytes, ClientError>> + Send>>, ClientError> {
        let mut query = vec![("follow", follow.to_string())];
        if let Some(tail) = tail {
            query.push(("tailLines", tail.to_string()));
        }
        let url = self.object_url(Kind::Instance, Some(namespace), Some(name), Some("log"))?;
        let response = self.send(self.http.get(url).query(&query)).await?;
        let server = self.server.clone();
        Ok(Box::pin(response.bytes_stream().map(move |chunk| {
            chunk.map_err(|error| ClientError::Unreachable { server: server.clone(), reason: root_cause(&error) })
        })))
    }

    /// The server's version document.
    pub async fn version(&self) -> Result<Value, ClientError> {
        self.json(self.http.get(self.url(&["version"])?)).await
    }

    /// Creates a token; the answer holds the token itself (`token`), shown this once.
    pub async fn create_token(&self, request: &Value) -> Result<Value, ClientError> {
        self.json(self.http.post(self.url(&["apis", "minicloud.dev", "v1", "tokens"])?).json(request)).await
    }

    /// The tokens' records (never the tokens).
    pub async fn tokens(&self) -> Result<Vec<Value>, ClientError> {
        let list: Value = self.json(self.http.get(self.url(&["apis", "minicloud.dev", "v1", "tokens"])?)).await?;
        Ok(list.get("items").and_then(Value::as_array).cloned().unwrap_or_default())
    }

    /// Revokes a token by name.
    pub async fn revoke_token(&self, name: &str) -> Result<Value, ClientError> {
        let url = self.url(&["apis", "minicloud.dev", "v1", "tokens", label("token name", name)?])?;
        self.json(self.http.delete(url)).await
    }

    /// Who the server takes this client for.
    pub async fn whoami(&self) -> Result<Value, ClientError> {
        self.json(self.http.get(self.url(&["apis", "minicloud.dev", "v1", "whoami"])?)).await
    }

    /// Audit entries since `since` (RFC 3339), oldest first.
    pub async fn audit(&self, since: Option<&str>, limit: Option<usize>) -> Result<Vec<Value>, ClientError> {
        let mut query = Vec::new();
        if let Some(since) = since {
            query.push(("since", since.to_owned()));
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        let url = self.url(&["apis", "minicloud.dev", "v1", "audit"])?;
        let list: Value = self.json(self.http.get(url).query(&query)).await?;
        Ok(list.get("items").and_then(Value::as_array).cloned().unwrap_or_default())
    }

    /// Watches objects; without `resource_version` the current objects come first as ADDED.
    pub async fn watch(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        selector: Option<&str>,
        resource_version: Option<&str>,
    ) -> Result<WatchLines, ClientError> {
        let mut query = vec![("watch", "true".to_owned()), ("allowWatchBookmarks", "true".to_owned())];
        if let Some(selector) = selector {
            query.push(("labelSelector", selector.to_owned()));
        }
        if let Some(version) = resource_version {
            query.push(("resourceVersion", version.to_owned()));
        }
        let response = self.send(self.http.get(self.object_url(kind, namespace, None, None)?).query(&query)).await?;
        let server = self.server.clone();
        let bytes = response.bytes_stream();
        let state = (bytes, BytesMut::new(), server);
        Ok(Box::pin(futures::stream::unfold(state, |(mut bytes, mut buffer, server)| async move {
            loop {
                if let Some(end) = buffer.iter().position(|byte| *byte == b'\n') {
                    let line = buffer.split_to(end + 1);
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let parsed = serde_json::from_slice::<WatchLine>(line.chunk()).map_err(|error| {
                        ClientError::Protocol { server: server.clone(), detail: format!("bad watch line: {error}") }
                    });
                    return Some((parsed, (bytes, buffer, server)));
                }
                match bytes.next().await {
                    Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                    Some(Err(error)) => {
                        let failure = ClientError::Unreachable { server: server.clone(), reason: root_cause(&error) };
                        return Some((Err(failure), (bytes, BytesMut::new(), server)));
                    }
                    None => return None,
                }
            }
        })))
    }
}

/// A namespace or name as it may appear in a URL: a DNS-1123 label, or an error that says why not.
fn label<'v>(what: &'static str, value: &'v str) -> Result<&'v str, ClientError> {
    minicloud_crds::validation::check_dns_label(value).map_err(|reason| ClientError::InvalidName {
        what,
        value: value.to_owned(),
        reason,
    })?;
    Ok(value)
}

/// The innermost error message (reqwest wraps the interesting part).
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}
