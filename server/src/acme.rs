//! The ACME client behind Certificates with `issuer.acme`: the controllers' [`AcmeClient`]
//! spoken with `instant-acme` (the protocol is not written here). Every call restores the
//! account from the credentials the controller keeps and, for an order, loads it from its URL,
//! so nothing lives in this process between two reconciles and a restarted control plane
//! resumes where the store says it was.
//!
//! A `caBundle` (a private CA, a test CA such as pebble's) is the only root trusted for the
//! directory; without one the system's roots are.

use std::io::Write as _;

use async_trait::async_trait;
use instant_acme::{
    Account, AccountBuilder, AccountCredentials, AuthorizationStatus, ChallengeStatus, ChallengeType, Identifier,
    NewAccount, NewOrder, Order,
};
use minicloud_controllers::certificate::acme::{AcmeClient, AcmeError, OrderStatus, OrderView};
use minicloud_crds::certificate::{AcmeIssuer, Http01Challenge};

/// The ACME client of the control plane.
#[derive(Default)]
pub struct InstantAcme;

/// An `instant-acme` error as the controller reports it: the CA's problem detail when there is
/// one.
fn error(error: instant_acme::Error) -> AcmeError {
    match error {
        instant_acme::Error::Api(problem) => AcmeError(problem_text(&problem)),
        other => AcmeError(other.to_string()),
    }
}

fn problem_text(problem: &instant_acme::Problem) -> String {
    let mut text = problem.detail.clone().unwrap_or_else(|| "the CA refused".into());
    if let Some(kind) = &problem.r#type {
        text.push_str(&format!(" ({kind})"));
    }
    for sub in &problem.subproblems {
        if let Some(detail) = &sub.detail {
            text.push_str(&format!("; {detail}"));
        }
    }
    text
}

/// An account builder trusting the issuer's CA bundle, or the system's roots.
fn builder(issuer: &AcmeIssuer) -> Result<AccountBuilder, AcmeError> {
    match &issuer.ca_bundle {
        None => Account::builder().map_err(error),
        Some(bundle) => {
            // instant-acme reads a root from a file: a private temporary one, gone at once.
            let mut file =
                tempfile::NamedTempFile::new().map_err(|e| AcmeError(format!("cannot write the CA bundle: {e}")))?;
            file.write_all(bundle.as_bytes()).map_err(|e| AcmeError(format!("cannot write the CA bundle: {e}")))?;
            Account::builder_with_root(file.path()).map_err(|e| AcmeError(format!("caBundle: {}", error(e))))
        }
    }
}

async fn account(issuer: &AcmeIssuer, credentials: &str) -> Result<Account, AcmeError> {
    let credentials: AccountCredentials = serde_json::from_str(credentials)
        .map_err(|e| AcmeError(format!("the stored ACME account does not parse: {e}")))?;
    builder(issuer)?.from_credentials(credentials).await.map_err(error)
}

async fn order(issuer: &AcmeIssuer, credentials: &str, url: &str) -> Result<Order, AcmeError> {
    account(issuer, credentials).await?.order(url.to_owned()).await.map_err(error)
}

#[async_trait]
impl AcmeClient for InstantAcme {
    async fn create_account(&self, issuer: &AcmeIssuer) -> Result<String, AcmeError> {
        let contact = issuer.email.as_ref().map(|email| format!("mailto:{email}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let new = NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false };
        let (_, credentials) = builder(issuer)?.create(&new, issuer.directory.clone(), None).await.map_err(error)?;
        serde_json::to_string(&credentials).map_err(|e| AcmeError(e.to_string()))
    }

    async fn new_order(&self, issuer: &AcmeIssuer, credentials: &str, names: &[String]) -> Result<String, AcmeError> {
        let identifiers: Vec<Identifier> = names.iter().map(|name| Identifier::Dns(name.clone())).collect();
        let order = account(issuer, credentials).await?.new_order(&NewOrder::new(&identifiers)).await.map_err(error)?;
        Ok(order.url().to_owned())
    }

    async fn order(&self, issuer: &AcmeIssuer, credentials: &str, url: &str) -> Result<OrderView, AcmeError> {
        let mut order = order(issuer, credentials, url).await?;
        let state = order.state();
        let status = match state.status {
            instant_acme::OrderStatus::Pending => OrderStatus::Pending,
            instant_acme::OrderStatus::Ready => OrderStatus::Ready,
            instant_acme::OrderStatus::Processing => OrderStatus::Processing,
            instant_acme::OrderStatus::Valid => OrderStatus::Valid,
            instant_acme::OrderStatus::Invalid => OrderStatus::Invalid,
        };
        let mut problem = state.error.as_ref().map(problem_text);
        let mut view = OrderView { status, challenges: Vec::new(), to_answer: Vec::new(), problem: None };
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.map_err(error)?;
            if authorization.status == AuthorizationStatus::Valid {
                continue;
            }
            let name = match authorization.identifier().identifier {
                Identifier::Dns(name) => name.clone(),
                other => format!("{other:?}"),
            };
            let invalid = authorization.status == AuthorizationStatus::Invalid;
            let Some(challenge) = authorization.challenge(ChallengeType::Http01) else {
                problem.get_or_insert_with(|| format!("the CA offers no HTTP-01 challenge for {name}"));
                continue;
            };
            if invalid {
                if let Some(failed) = &challenge.error {
                    problem = Some(format!("{name}: {}", problem_text(failed)));
                }
            }
            if challenge.status == ChallengeStatus::Pending {
                view.to_answer.push(challenge.token.clone());
            }
            view.challenges.push(Http01Challenge {
                dns_name: name,
                token: challenge.token.clone(),
                key_authorization: challenge.key_authorization().as_str().to_owned(),
            });
        }
        view.problem = problem;
        Ok(view)
    }

    async fn challenge_ready(
        &self,
        issuer: &AcmeIssuer,
        credentials: &str,
        url: &str,
        token: &str,
    ) -> Result<(), AcmeError> {
        let mut order = order(issuer, credentials, url).await?;
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.map_err(error)?;
            if let Some(mut challenge) = authorization.challenge(ChallengeType::Http01) {
                if challenge.token == token {
                    return challenge.set_ready().await.map_err(error);
                }
            }
        }
        Err(AcmeError(format!("the order has no challenge with token {token}")))
    }

    async fn finalize(
        &self,
        issuer: &AcmeIssuer,
        credentials: &str,
        url: &str,
        csr_der: &[u8],
    ) -> Result<(), AcmeError> {
        order(issuer, credentials, url).await?.finalize_csr(csr_der).await.map_err(error)
    }

    async fn certificate(
        &self,
        issuer: &AcmeIssuer,
        credentials: &str,
        url: &str,
    ) -> Result<Option<String>, AcmeError> {
        order(issuer, credentials, url).await?.certificate().await.map_err(error)
    }
}
