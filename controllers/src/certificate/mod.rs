//! The Certificate controller: keeps a valid key pair for the Certificate's DNS names in the
//! Secret `NAME-tls` (type `Tls`, owned by the Certificate, so deleted with it), and renews it
//! before it expires. HTTPS listeners read that Secret.
//!
//! | decision | where |
//! |---|---|
//! | whether the stored pair is still good (valid now, every name covered, not due) | [`is_current`] |
//! | when renewal is due (`renewBefore`, else a third of the lifetime before expiry) | [`renewal_time`] |
//! | self-signed: make a new pair | [`crate::tls::self_signed`] |
//! | secretRef: accept the user's pair, or say why not (the last good pair stays) | [`CertificateController::user_pair`] |
//! | what status, conditions and events say | [`report`] |
//!
//! A pair that does not pass [`crate::tls::inspect`] is never written to `NAME-tls`: `Ready`
//! says what is wrong, and load balancers keep serving the pair they have.

pub mod acme;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use minicloud_crds::certificate::{
    parse_duration_seconds, secret_name, AcmeIssuer, CertificateSpec, CertificateStatus, CERT_KEY, KEY_KEY,
    RENEW_REQUEST_ANNOTATION,
};
use minicloud_crds::conditions::set_condition;
use minicloud_crds::kinds::Certificate;
use minicloud_crds::meta::{ConditionStatus, ObjectMeta, API_VERSION};
use minicloud_crds::{Kind, Object, ObjectKey};
use minicloud_store::{EventType, Store, StoreError};
use serde_json::json;

use crate::meta::owner_reference;
use crate::reconciler::{Action, Cleanup, Context, Controller, ReconcileError};
use crate::tls::{self, Inspected};

use self::acme::{AcmeClient, AcmeError, OrderStatus};

/// Lifetime of a self-signed certificate when the spec names none.
const DEFAULT_SELF_SIGNED_DAYS: u32 = 90;
/// At most this long between two looks at a certificate (expiry is also checked then).
const LONGEST_WAIT: Duration = Duration::from_secs(3600);

/// How soon to come back while an order moves.
const SOON: Duration = Duration::from_secs(1);

/// Reconciles Certificates.
pub struct CertificateController {
    store: Arc<dyn Store>,
    acme: Option<Arc<dyn AcmeClient>>,
}

/// What the Secret `NAME-acme` keeps: the account, and the key of the order being finalized.
#[derive(Default)]
struct AcmeState {
    account: Option<String>,
    order_key: Option<String>,
    order_url: Option<String>,
}

/// A key pair as stored.
struct Pair {
    chain: String,
    key: String,
}

impl CertificateController {
    pub fn new(store: Arc<dyn Store>) -> CertificateController {
        CertificateController { store, acme: None }
    }

    /// Issues from ACME CAs through `client`.
    pub fn with_acme(mut self, client: Arc<dyn AcmeClient>) -> CertificateController {
        self.acme = Some(client);
        self
    }

    /// The pair in a Secret, if the Secret exists and has both keys.
    async fn read_pair(&self, namespace: &str, name: &str) -> Result<Option<Pair>, ReconcileError> {
        match self.store.get(&ObjectKey::new(Kind::Secret, namespace, name)).await {
            Ok(secret) => {
                let data = |key: &str| secret.spec["stringData"][key].as_str().map(str::to_owned);
                Ok(match (data(CERT_KEY), data(KEY_KEY)) {
                    (Some(chain), Some(key)) => Some(Pair { chain, key }),
                    _ => None,
                })
            }
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Writes the pair into `NAME-tls` (created owned by the Certificate, or updated).
    async fn store_pair(&self, ctx: &Context<'_>, pair: &Pair) -> Result<(), ReconcileError> {
        let spec = json!({"type": "Tls", "stringData": {CERT_KEY: pair.chain, KEY_KEY: pair.key}});
        self.store_secret(ctx, &secret_name(ctx.name()), spec).await
    }

    /// The ACME account and pending order key of a Certificate.
    async fn read_acme_state(&self, ctx: &Context<'_>) -> Result<AcmeState, ReconcileError> {
        let key = ObjectKey::new(Kind::Secret, ctx.namespace(), acme_secret_name(ctx.name()));
        match self.store.get(&key).await {
            Ok(secret) => {
                let data = |key: &str| secret.spec["stringData"][key].as_str().map(str::to_owned);
                Ok(AcmeState { account: data("account"), order_key: data("order.key"), order_url: data("order.url") })
            }
            Err(StoreError::NotFound(_)) => Ok(AcmeState::default()),
            Err(error) => Err(error.into()),
        }
    }

    async fn write_acme_state(&self, ctx: &Context<'_>, state: &AcmeState) -> Result<(), ReconcileError> {
        let mut data = serde_json::Map::new();
        for (key, value) in
            [("account", &state.account), ("order.key", &state.order_key), ("order.url", &state.order_url)]
        {
            if let Some(value) = value {
                data.insert(key.to_owned(), json!(value));
            }
        }
        self.store_secret(ctx, &acme_secret_name(ctx.name()), json!({"type": "Opaque", "stringData": data})).await
    }

    /// Creates or updates a Secret owned by the Certificate.
    async fn store_secret(&self, ctx: &Context<'_>, name: &str, spec: serde_json::Value) -> Result<(), ReconcileError> {
        let name = name.to_owned();
        let key = ObjectKey::new(Kind::Secret, ctx.namespace(), &name);
        match self.store.get(&key).await {
            Ok(mut secret) => {
                let owned = secret.metadata.owner_references.iter().any(|o| o.uid == ctx.uid());
                if !owned && !secret.metadata.owner_references.is_empty() {
                    return Err(ReconcileError::InvalidSpec(format!(
                        "secret/{name} belongs to another object; delete it or rename the Certificate"
                    )));
                }
                secret.metadata.owner_references = vec![owner_reference(ctx.object())];
                secret.spec = spec;
                match self.store.update(secret).await {
                    Ok(_) => Ok(()),
                    Err(StoreError::Conflict { .. }) => {
                        Err(ReconcileError::Failed(format!("secret/{name} changed meanwhile; again")))
                    }
                    Err(error) => Err(error.into()),
                }
            }
            Err(StoreError::NotFound(_)) => {
                let secret = Object {
                    api_version: API_VERSION.to_owned(),
                    kind: Kind::Secret.as_str().to_owned(),
                    metadata: ObjectMeta {
                        name: name.clone(),
                        namespace: Some(ctx.namespace().to_owned()),
                        owner_references: vec![owner_reference(ctx.object())],
                        ..ObjectMeta::default()
                    },
                    spec,
                    status: serde_json::Value::Null,
                };
                match self.store.create(secret).await {
                    Ok(_) => Ok(()),
                    Err(StoreError::AlreadyExists(_)) => {
                        Err(ReconcileError::Failed(format!("secret/{name} appeared meanwhile; again")))
                    }
                    Err(error) => Err(error.into()),
                }
            }
            Err(error) => Err(error.into()),
        }
    }

    /// secretRef: the user's pair, checked. `Err` says why it cannot be used.
    async fn user_pair(
        &self,
        namespace: &str,
        source: &str,
        spec: &CertificateSpec,
        now: DateTime<Utc>,
    ) -> Result<Result<Pair, (&'static str, String)>, ReconcileError> {
        let Some(pair) = self.read_pair(namespace, source).await? else {
            return Ok(Err((
                "SecretNotFound",
                format!("secret/{source} does not exist or lacks {CERT_KEY} and {KEY_KEY}"),
            )));
        };
        let inspected = match tls::inspect(&pair.chain, &pair.key, now) {
            Ok(inspected) => inspected,
            Err(error) => return Ok(Err(("InvalidKeyPair", format!("secret/{source}: {error}")))),
        };
        if let Some(name) = spec.dns_names.iter().find(|name| !inspected.covers(name)) {
            return Ok(Err((
                "NamesNotCovered",
                format!(
                    "secret/{source}'s certificate does not cover {name} (it names {})",
                    inspected.dns_names.join(", ")
                ),
            )));
        }
        Ok(Ok(pair))
    }

    /// One step of ACME issuance (see [`acme`]).
    async fn acme_round(
        &self,
        ctx: &mut Context<'_>,
        spec: &CertificateSpec,
        issuer: &AcmeIssuer,
        mut status: CertificateStatus,
        stored: Option<(Pair, Inspected)>,
        now: DateTime<Utc>,
    ) -> Result<Action, ReconcileError> {
        let generation = ctx.generation();
        let secret = secret_name(ctx.name());
        let current = stored.as_ref().map(|(_, inspected)| inspected.clone());
        let renewal_asked = renewal_asked(ctx.object(), &status);
        if let Some(inspected) =
            current.as_ref().filter(|inspected| is_current(spec, inspected, now) && renewal_asked.is_none())
        {
            acme::forget_order(&mut status);
            status.next_attempt_time = None;
            report(&mut status, spec, Some(inspected), &secret, generation, now);
            ctx.write_status(&status).await?;
            let until = (renewal_time(spec, inspected) - now).to_std().unwrap_or_default();
            return Ok(Action::RequeueAfter(until.clamp(SOON, LONGEST_WAIT)));
        }
        if let Some(wait) = status.next_attempt_time.and_then(|next| (next - now).to_std().ok()) {
            report(&mut status, spec, current.as_ref(), &secret, generation, now);
            ctx.write_status(&status).await?;
            return Ok(Action::RequeueAfter(wait.max(SOON)));
        }
        let Some(client) = self.acme.clone() else {
            return self
                .acme_failed(ctx, spec, status, current, AcmeError("this control plane has no ACME client".into()), now)
                .await;
        };
        let mut state = self.read_acme_state(ctx).await?;
        let account = match state.account.clone() {
            Some(account) => account,
            None => match client.create_account(issuer).await {
                Ok(account) => {
                    state.account = Some(account.clone());
                    self.write_acme_state(ctx, &state).await?;
                    account
                }
                Err(error) => return self.acme_failed(ctx, spec, status, current, error, now).await,
            },
        };
        let Some(order_url) = status.order_url.clone() else {
            let order_url = match client.new_order(issuer, &account, &spec.dns_names).await {
                Ok(url) => url,
                Err(error) => {
                    if error.0.contains("accountDoesNotExist") {
                        state.account = None;
                        self.write_acme_state(ctx, &state).await?;
                    }
                    return self.acme_failed(ctx, spec, status, current, error, now).await;
                }
            };
            // Remembered before anything else happens to it: a restart resumes this order.
            status.order_url = Some(order_url.clone());
            let message = format!("order {order_url} placed for {}", spec.dns_names.join(", "));
            set_condition(
                &mut status.conditions,
                "Issuing",
                ConditionStatus::True,
                "OrderPlaced",
                message.clone(),
                generation,
                now,
            );
            report(&mut status, spec, current.as_ref(), &secret, generation, now);
            not_ready_yet(&mut status, current.as_ref(), "Issuing", &message, generation, now);
            ctx.write_status(&status).await?;
            ctx.event(EventType::Normal, "OrderPlaced", message).await;
            return Ok(Action::RequeueAfter(SOON));
        };
        let view = match client.order(issuer, &account, &order_url).await {
            Ok(view) => view,
            Err(error) => {
                if error.0.contains("accountDoesNotExist") {
                    // The CA forgot the account (a test CA restarted, an account deactivated):
                    // the next attempt makes a new one.
                    state.account = None;
                    self.write_acme_state(ctx, &state).await?;
                }
                return self.acme_failed(ctx, spec, status, current, error, now).await;
            }
        };
        match view.status {
            OrderStatus::Pending => {
                let challenges: Vec<_> = view.challenges.into_iter().filter(|c| c.is_well_formed()).collect();
                if status.challenges != challenges {
                    status.challenges = challenges;
                    status.challenges_published_time = Some(now);
                    let message = "answering the CA's HTTP-01 challenges on every HTTP listener";
                    set_condition(
                        &mut status.conditions,
                        "Issuing",
                        ConditionStatus::True,
                        "Validating",
                        message,
                        generation,
                        now,
                    );
                    ctx.write_status(&status).await?;
                    return Ok(Action::RequeueAfter(acme::PUBLISH_GRACE));
                }
                if acme::published_long_enough(&status, now) {
                    for token in &view.to_answer {
                        if let Err(error) = client.challenge_ready(issuer, &account, &order_url, token).await {
                            return self.acme_failed(ctx, spec, status, current, error, now).await;
                        }
                    }
                }
                ctx.write_status(&status).await?;
                Ok(Action::RequeueAfter(SOON))
            }
            OrderStatus::Ready => {
                let (csr, key) = match acme::csr(&spec.dns_names) {
                    Ok(made) => made,
                    Err(error) => return self.acme_failed(ctx, spec, status, current, error, now).await,
                };
                // The key is kept before the CSR is sent: the issued chain must find it.
                state.order_key = Some(key);
                state.order_url = Some(order_url.clone());
                self.write_acme_state(ctx, &state).await?;
                if let Err(error) = client.finalize(issuer, &account, &order_url, &csr).await {
                    return self.acme_failed(ctx, spec, status, current, error, now).await;
                }
                Ok(Action::RequeueAfter(SOON))
            }
            OrderStatus::Processing => Ok(Action::RequeueAfter(SOON)),
            OrderStatus::Valid => {
                let chain = match client.certificate(issuer, &account, &order_url).await {
                    Ok(Some(chain)) => chain,
                    Ok(None) => return Ok(Action::RequeueAfter(SOON)),
                    Err(error) => return self.acme_failed(ctx, spec, status, current, error, now).await,
                };
                let key = match (&state.order_key, &state.order_url) {
                    (Some(key), Some(url)) if *url == order_url => key.clone(),
                    _ => {
                        let error = AcmeError(
                            "the order's key is lost (the control plane stopped while finalizing); placing a new order"
                                .into(),
                        );
                        return self.acme_failed(ctx, spec, status, current, error, now).await;
                    }
                };
                let inspected = match tls::inspect(&chain, &key, now) {
                    Ok(inspected) => inspected,
                    Err(error) => {
                        return self
                            .acme_failed(
                                ctx,
                                spec,
                                status,
                                current,
                                AcmeError(format!("the CA's certificate: {error}")),
                                now,
                            )
                            .await
                    }
                };
                self.store_pair(ctx, &Pair { chain, key }).await?;
                if renewal_asked.is_some() {
                    status.last_renewal_request = renewal_asked;
                }
                state.order_key = None;
                state.order_url = None;
                self.write_acme_state(ctx, &state).await?;
                let (reason, verb, message) = issued(&inspected, stored.is_some());
                ctx.event(EventType::Normal, reason, message).await;
                acme::forget_order(&mut status);
                status.failed_attempts = None;
                status.next_attempt_time = None;
                set_condition(
                    &mut status.conditions,
                    "Issuing",
                    ConditionStatus::False,
                    reason,
                    format!("{verb} into secret/{secret}"),
                    generation,
                    now,
                );
                report(&mut status, spec, Some(&inspected), &secret, generation, now);
                ctx.write_status(&status).await?;
                let until = (renewal_time(spec, &inspected) - now).to_std().unwrap_or_default();
                Ok(Action::RequeueAfter(until.clamp(SOON, LONGEST_WAIT)))
            }
            OrderStatus::Invalid => {
                let problem = view.problem.unwrap_or_else(|| "the CA marked the order invalid".into());
                self.acme_failed(ctx, spec, status, current, AcmeError(problem), now).await
            }
        }
    }

    /// A failed attempt: the CA's problem in an event and the conditions, the order forgotten,
    /// the next attempt after a backoff; a certificate still valid stays Ready.
    async fn acme_failed(
        &self,
        ctx: &mut Context<'_>,
        spec: &CertificateSpec,
        mut status: CertificateStatus,
        current: Option<Inspected>,
        error: AcmeError,
        now: DateTime<Utc>,
    ) -> Result<Action, ReconcileError> {
        let generation = ctx.generation();
        let wait = acme::record_failure(&mut status, now);
        let attempts = status.failed_attempts.unwrap_or(1);
        let message = format!("{error} (attempt {attempts}; next in {} s)", wait.as_secs());
        ctx.event(EventType::Warning, "IssueFailed", message.clone()).await;
        set_condition(
            &mut status.conditions,
            "Issuing",
            ConditionStatus::False,
            "IssueFailed",
            message.clone(),
            generation,
            now,
        );
        report(&mut status, spec, current.as_ref(), &secret_name(ctx.name()), generation, now);
        not_ready_yet(&mut status, current.as_ref(), "IssueFailed", &message, generation, now);
        ctx.write_status(&status).await?;
        Ok(Action::RequeueAfter(wait))
    }
}

/// `Ready=False` with this reason, unless a valid certificate is in use (it stays Ready).
fn not_ready_yet(
    status: &mut CertificateStatus,
    current: Option<&Inspected>,
    reason: &str,
    message: &str,
    generation: i64,
    now: DateTime<Utc>,
) {
    if current.is_none() {
        set_condition(&mut status.conditions, "Ready", ConditionStatus::False, reason, message, generation, now);
    }
}

/// The event of a pair just stored: reason, verb and message (`Renewed` when one was there).
fn issued(inspected: &Inspected, renewed: bool) -> (&'static str, &'static str, String) {
    let (reason, verb) = if renewed { ("Renewed", "renewed") } else { ("Issued", "issued") };
    let message = format!(
        "{verb} for {} by {} (serial {}), valid until {}",
        inspected.dns_names.join(", "),
        inspected.issuer,
        inspected.serial,
        inspected.not_after.format("%Y-%m-%d %H:%M UTC")
    );
    (reason, verb, message)
}

/// The Secret that keeps a Certificate's ACME account and pending order key.
pub fn acme_secret_name(certificate: &str) -> String {
    format!("{certificate}-acme")
}

/// When renewal of a certificate is due.
pub fn renewal_time(spec: &CertificateSpec, inspected: &Inspected) -> DateTime<Utc> {
    let lifetime = inspected.not_after - inspected.not_before;
    let before = spec
        .renew_before
        .as_deref()
        .and_then(|text| parse_duration_seconds(text).ok())
        .and_then(|seconds| i64::try_from(seconds).ok())
        .map_or(lifetime / 3, chrono::Duration::seconds);
    inspected.not_after - before.min(lifetime)
}

/// The request to renew now ([`RENEW_REQUEST_ANNOTATION`]) no new certificate has answered yet.
fn renewal_asked(object: &minicloud_crds::Object, status: &CertificateStatus) -> Option<String> {
    object
        .metadata
        .annotations
        .get(RENEW_REQUEST_ANNOTATION)
        .filter(|asked| status.last_renewal_request.as_ref() != Some(*asked))
        .cloned()
}

/// Whether a stored pair can stay: valid now, covering every name, and not due for renewal.
fn is_current(spec: &CertificateSpec, inspected: &Inspected, now: DateTime<Utc>) -> bool {
    spec.dns_names.iter().all(|name| inspected.covers(name)) && now < renewal_time(spec, inspected)
}

/// Fills in status from the stored pair and sets `Ready` and `Issuing`.
fn report(
    status: &mut CertificateStatus,
    spec: &CertificateSpec,
    stored: Option<&Inspected>,
    secret: &str,
    generation: i64,
    now: DateTime<Utc>,
) {
    status.secret_name = Some(secret.to_owned());
    match stored {
        Some(inspected) => {
            status.not_before = Some(inspected.not_before);
            status.not_after = Some(inspected.not_after);
            status.renewal_time = Some(renewal_time(spec, inspected));
            status.serial = Some(inspected.serial.clone());
            status.issuer_name = Some(inspected.issuer.clone());
            let message = format!(
                "valid until {} for {}",
                inspected.not_after.format("%Y-%m-%d %H:%M UTC"),
                inspected.dns_names.join(", ")
            );
            set_condition(&mut status.conditions, "Ready", ConditionStatus::True, "Issued", message, generation, now);
        }
        None => {
            for field in [&mut status.not_before, &mut status.not_after, &mut status.renewal_time] {
                *field = None;
            }
            status.serial = None;
            status.issuer_name = None;
        }
    }
}

#[async_trait]
impl Controller for CertificateController {
    type Resource = Certificate;
    const KIND: Kind = Kind::Certificate;
    const FINALIZER: Option<&'static str> = None;

    fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    fn child_kinds(&self) -> Vec<Kind> {
        vec![Kind::Secret]
    }

    fn watched_kinds(&self) -> Vec<Kind> {
        // A secretRef's Secret is not a child: any Secret change in the namespace wakes.
        vec![Kind::Secret]
    }

    async fn apply(&self, ctx: &mut Context<'_>, certificate: Certificate) -> Result<Action, ReconcileError> {
        let now = Utc::now();
        let generation = ctx.generation();
        let spec = &certificate.spec;
        let mut status = certificate.status.clone().unwrap_or_default();
        status.observed_generation = Some(generation);
        let secret = secret_name(ctx.name());
        let stored = self.read_pair(ctx.namespace(), &secret).await?;
        let stored =
            stored.and_then(|pair| tls::inspect(&pair.chain, &pair.key, now).ok().map(|inspected| (pair, inspected)));
        let renewal_asked = renewal_asked(ctx.object(), &status);
        let issuer = &spec.issuer;
        if let Some(acme_issuer) = &issuer.acme {
            return self.acme_round(ctx, spec, acme_issuer, status, stored, now).await;
        }
        let outcome: Result<Option<Pair>, (&'static str, String)> = if let Some(self_signed) = &issuer.self_signed {
            match &stored {
                Some((_, inspected))
                    if is_current(spec, inspected, now)
                        && inspected.issuer.contains("minicloud self-signed")
                        && renewal_asked.is_none() =>
                {
                    Ok(None)
                }
                _ => {
                    let days = self_signed.days.unwrap_or(DEFAULT_SELF_SIGNED_DAYS);
                    tls::self_signed(&spec.dns_names, days, now)
                        .map(|(chain, key)| Some(Pair { chain, key }))
                        .map_err(|error| ("IssueFailed", error.to_string()))
                }
            }
        } else if let Some(reference) = &issuer.secret_ref {
            // The user's pair is read again every round: that answers a request to renew.
            if renewal_asked.is_some() {
                status.last_renewal_request = renewal_asked.clone();
            }
            match self.user_pair(ctx.namespace(), &reference.name, spec, now).await? {
                Ok(pair)
                    if stored
                        .as_ref()
                        .is_some_and(|(current, _)| current.chain == pair.chain && current.key == pair.key) =>
                {
                    Ok(None)
                }
                Ok(pair) => Ok(Some(pair)),
                Err(problem) => Err(problem),
            }
        } else {
            Err((
                "IssuerUnavailable",
                "ACME issuance is not available in this build yet; use selfSigned or secretRef".to_owned(),
            ))
        };
        let current = match outcome {
            Ok(None) => stored.map(|(_, inspected)| inspected),
            Ok(Some(pair)) => {
                let inspected = tls::inspect(&pair.chain, &pair.key, now)
                    .map_err(|error| ReconcileError::Failed(error.to_string()))?;
                self.store_pair(ctx, &pair).await?;
                if renewal_asked.is_some() {
                    status.last_renewal_request = renewal_asked.clone();
                }
                let (reason, verb, message) = issued(&inspected, stored.is_some());
                ctx.event(EventType::Normal, reason, message).await;
                set_condition(
                    &mut status.conditions,
                    "Issuing",
                    ConditionStatus::False,
                    reason,
                    format!("{verb} into secret/{secret}"),
                    generation,
                    now,
                );
                Some(inspected)
            }
            Err((reason, message)) => {
                let flipped = set_condition(
                    &mut status.conditions,
                    "Issuing",
                    ConditionStatus::False,
                    reason,
                    message.clone(),
                    generation,
                    now,
                );
                if flipped || status.conditions.iter().any(|c| c.type_ == "Ready" && c.reason != reason) {
                    ctx.event(EventType::Warning, reason, message.clone()).await;
                }
                report(&mut status, spec, stored.as_ref().map(|(_, inspected)| inspected), &secret, generation, now);
                let kept =
                    if stored.is_some() { " (the current certificate stays in use until it expires)" } else { "" };
                if stored.is_none() || reason != "IssueFailed" {
                    set_condition(
                        &mut status.conditions,
                        "Ready",
                        ConditionStatus::False,
                        reason,
                        format!("{message}{kept}"),
                        generation,
                        now,
                    );
                }
                ctx.write_status(&status).await?;
                return Ok(Action::AwaitChange);
            }
        };
        if !status.conditions.iter().any(|c| c.type_ == "Issuing") {
            set_condition(
                &mut status.conditions,
                "Issuing",
                ConditionStatus::False,
                "Issued",
                "nothing to do",
                generation,
                now,
            );
        }
        report(&mut status, spec, current.as_ref(), &secret, generation, now);
        ctx.write_status(&status).await?;
        let wait = current
            .as_ref()
            .and_then(|inspected| (renewal_time(spec, inspected) - now).to_std().ok())
            .map_or(LONGEST_WAIT, |until| until.min(LONGEST_WAIT));
        Ok(Action::RequeueAfter(wait.max(Duration::from_secs(1))))
    }

    async fn cleanup(&self, _: &mut Context<'_>, _: Certificate) -> Result<Cleanup, ReconcileError> {
        Ok(Cleanup::Done)
    }
}

#[cfg(test)]
mod tests {
    use minicloud_store::MemoryStore;

    use super::*;
    use crate::reconciler::reconcile;

    async fn create(store: &MemoryStore, kind: &str, name: &str, spec: serde_json::Value) {
        let object: Object = serde_json::from_value(json!({
            "apiVersion": "minicloud.dev/v1", "kind": kind,
            "metadata": {"name": name, "namespace": "default"}, "spec": spec,
        }))
        .expect("object");
        store.create(object).await.expect("create");
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn self_signed_is_issued_once_and_kept_until_due() {
        let store = Arc::new(MemoryStore::new());
        create(&store, "Certificate", "shop", json!({"dnsNames": ["shop.example.com"], "issuer": {"selfSigned": {}}}))
            .await;
        let controller = CertificateController::new(store.clone());
        let key = ObjectKey::new(Kind::Certificate, "default", "shop");
        reconcile(&controller, &key).await.expect("reconcile");
        let secret = store.get(&ObjectKey::new(Kind::Secret, "default", "shop-tls")).await.expect("secret");
        assert_eq!(secret.spec["type"], "Tls");
        assert_eq!(secret.metadata.owner_references[0].name, "shop");
        let status = store.get(&key).await.expect("cert").status;
        let serial = status["serial"].clone();
        assert!(status["conditions"].to_string().contains("\"Ready\""), "{status}");
        reconcile(&controller, &key).await.expect("again");
        assert_eq!(store.get(&key).await.expect("cert").status["serial"], serial, "not due: not renewed");

        // Asked to renew now: one new certificate answers the request, and only one.
        let mut certificate = store.get(&key).await.expect("cert");
        certificate.metadata.annotations.insert(RENEW_REQUEST_ANNOTATION.into(), "2026-12-08T01:00:00Z".into());
        store.update(certificate).await.expect("annotated");
        reconcile(&controller, &key).await.expect("renewed");
        let status = store.get(&key).await.expect("cert").status;
        assert_ne!(status["serial"], serial, "renewed on request");
        assert_eq!(status["lastRenewalRequest"], "2026-12-08T01:00:00Z");
        reconcile(&controller, &key).await.expect("again");
        assert_eq!(store.get(&key).await.expect("cert").status["serial"], status["serial"], "answered once");
    }

    #[tokio::test]
    async fn a_bad_user_pair_is_refused_and_the_good_one_kept() {
        let store = Arc::new(MemoryStore::new());
        let now = Utc::now();
        let (chain, key) = tls::self_signed(&names(&["a.example.com"]), 30, now).expect("pair");
        create(&store, "Secret", "mine", json!({"stringData": {"tls.crt": chain, "tls.key": key}})).await;
        create(
            &store,
            "Certificate",
            "a",
            json!({"dnsNames": ["a.example.com"], "issuer": {"secretRef": {"name": "mine"}}}),
        )
        .await;
        let controller = CertificateController::new(store.clone());
        let cert = ObjectKey::new(Kind::Certificate, "default", "a");
        reconcile(&controller, &cert).await.expect("reconcile");
        let installed = store.get(&ObjectKey::new(Kind::Secret, "default", "a-tls")).await.expect("a-tls").spec;
        assert_eq!(installed["stringData"]["tls.crt"], chain.as_str());

        // The user's Secret gets a key of another pair: refused, a-tls keeps the good pair.
        let (_, other_key) = tls::self_signed(&names(&["a.example.com"]), 30, now).expect("pair");
        let mut mine = store.get(&ObjectKey::new(Kind::Secret, "default", "mine")).await.expect("mine");
        mine.spec["stringData"]["tls.key"] = json!(other_key);
        store.update(mine).await.expect("update");
        reconcile(&controller, &cert).await.expect("reconcile");
        let status = store.get(&cert).await.expect("cert").status;
        let ready = status["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .find(|c| c["type"] == "Ready")
            .expect("Ready")
            .clone();
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("InvalidKeyPair")),
            "{ready}"
        );
        assert!(ready["message"].as_str().unwrap_or("").contains("does not belong"), "{ready}");
        let kept = store.get(&ObjectKey::new(Kind::Secret, "default", "a-tls")).await.expect("a-tls").spec;
        assert_eq!(kept, installed, "the last good pair stays");
    }

    #[test]
    fn renewal_is_due_a_third_of_the_lifetime_before_expiry_unless_told() {
        let now = Utc::now();
        let inspected = Inspected {
            not_before: now,
            not_after: now + chrono::Duration::days(90),
            serial: "01".into(),
            issuer: "x".into(),
            subject: "x".into(),
            dns_names: names(&["a.example.com"]),
        };
        let mut spec = CertificateSpec { dns_names: names(&["a.example.com"]), ..CertificateSpec::default() };
        assert_eq!(renewal_time(&spec, &inspected), now + chrono::Duration::days(60));
        spec.renew_before = Some("10d".into());
        assert_eq!(renewal_time(&spec, &inspected), now + chrono::Duration::days(80));
        assert!(is_current(&spec, &inspected, now));
        assert!(!is_current(&spec, &inspected, now + chrono::Duration::days(81)));
        spec.dns_names.push("b.example.com".into());
        assert!(!is_current(&spec, &inspected, now), "a new name needs a new certificate");
    }
}
