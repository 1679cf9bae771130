//! `Certificate`: a TLS key pair for some DNS names, obtained from one issuer — an ACME CA
//! (Let's Encrypt, step-ca, pebble; HTTP-01 answered by the load balancer serving those
//! names), a self-signed certificate, or a key pair the user put in a Secret — and renewed
//! before it expires. The key pair lives in the Secret `NAME-tls` (keys `tls.crt`, `tls.key`),
//! owned by the Certificate; HTTPS listeners name the Certificate.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::http::check_hostname;
use crate::loadbalancer::LocalObjectRef;
use crate::meta::Condition;
use crate::rules::{check_dns_label, Errors};
use crate::FieldPath;

/// The key of the certificate chain (PEM) in a TLS Secret.
pub const CERT_KEY: &str = "tls.crt";
/// The key of the private key (PEM) in a TLS Secret.
pub const KEY_KEY: &str = "tls.key";
/// At most this many names per certificate (Let's Encrypt's limit).
pub const MAX_DNS_NAMES: usize = 100;
/// The annotation that asks for a new certificate now, due or not (the console's "Renew now"):
/// a timestamp; each new value is answered by one new certificate, recorded in
/// `status.lastRenewalRequest`.
pub const RENEW_REQUEST_ANNOTATION: &str = "minicloud.dev/renew-requested-at";

/// The Secret that holds a Certificate's key pair.
pub fn secret_name(certificate: &str) -> String {
    format!("{certificate}-tls")
}

/// Desired certificate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateSpec {
    /// The names the certificate is for (exact, or `*.example.com`); at least one.
    pub dns_names: Vec<String>,
    /// Who issues it: exactly one of `acme`, `selfSigned` or `secretRef`.
    pub issuer: Issuer,
    /// How long before expiry renewal starts, e.g. `720h` or `30d`. Defaults to a third of the
    /// certificate's lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<String>,
}

/// Exactly one way to obtain the certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Issuer {
    /// An ACME CA (HTTP-01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeIssuer>,
    /// A certificate signed by its own key (for tests and offline use; browsers warn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_signed: Option<SelfSigned>,
    /// A key pair the user provides: a Secret in the same namespace with `tls.crt` and
    /// `tls.key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectRef>,
}

impl Issuer {
    /// How the issuer reads in the status (`acme`, `selfSigned`, `secretRef`).
    pub fn kind_name(&self) -> &'static str {
        match (&self.acme, &self.self_signed, &self.secret_ref) {
            (Some(_), _, _) => "acme",
            (_, Some(_), _) => "selfSigned",
            (_, _, Some(_)) => "secretRef",
            _ => "none",
        }
    }
}

/// An ACME certificate authority.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AcmeIssuer {
    /// The directory URL, e.g. `https://acme-staging-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    /// The account's contact address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// PEM certificates the client trusts for the directory (a private CA such as step-ca, or a
    /// test CA); the system's roots otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
}

/// A self-signed certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelfSigned {
    /// Lifetime in days. Defaults to 90.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3650))]
    pub days: Option<u32>,
}

/// Observed state of a certificate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateStatus {
    /// The generation the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (a valid key pair for the names is in the Secret) and `Issuing`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The Secret holding the key pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Validity of the current certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<DateTime<Utc>>,
    /// When renewal starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<DateTime<Utc>>,
    /// Serial number (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// The issuer's distinguished name, as the certificate says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_name: Option<String>,
    /// Failed attempts since the last success (backoff grows with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_attempts: Option<u32>,
    /// Not before this time is the next attempt made (backoff after a failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_time: Option<DateTime<Utc>>,
    /// The ACME order in flight (its URL), so a restarted control plane resumes it rather than
    /// placing another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_url: Option<String>,
    /// The HTTP-01 challenges of that order: every HTTP listener answers them at
    /// `/.well-known/acme-challenge/TOKEN`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub challenges: Vec<Http01Challenge>,
    /// When the challenges were published (the CA is told to look a moment later, once load
    /// balancers answer them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenges_published_time: Option<DateTime<Utc>>,
    /// The last request to renew now ([`RENEW_REQUEST_ANNOTATION`]) a new certificate answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_renewal_request: Option<String>,
}

/// One HTTP-01 challenge: the CA fetches `/.well-known/acme-challenge/TOKEN` from the name and
/// expects the key authorization.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Http01Challenge {
    pub dns_name: String,
    pub token: String,
    pub key_authorization: String,
}

impl Http01Challenge {
    /// Whether the token and key authorization are what ACME makes (base64url, and a `.`
    /// between the two parts of the key authorization): nothing else is ever served.
    pub fn is_well_formed(&self) -> bool {
        let base64url = |text: &str| {
            !text.is_empty()
                && text.len() <= 256
                && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let key = self.key_authorization.split_once('.');
        base64url(&self.token) && key.is_some_and(|(token, thumbprint)| token == self.token && base64url(thumbprint))
    }
}

/// Parses a duration such as `720h`, `30d`, `90m` or `3600s` into seconds.
pub fn parse_duration_seconds(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; write a number and a unit, e.g. 720h or 30d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d (e.g. 720h or 30d)")),
    };
    number.checked_mul(scale).ok_or_else(|| format!("{text:?} is too long"))
}

/// The semantic rules of a certificate spec.
pub(crate) fn check_certificate_spec(spec: &CertificateSpec, path: &FieldPath, errors: &mut Errors) {
    if spec.dns_names.is_empty() {
        errors.add(path.key("dnsNames"), "give at least one DNS name");
    }
    if spec.dns_names.len() > MAX_DNS_NAMES {
        errors.add(path.key("dnsNames"), format!("at most {MAX_DNS_NAMES} names per certificate"));
    }
    for (index, name) in spec.dns_names.iter().enumerate() {
        if let Err(message) = check_hostname(name, true) {
            errors.add(path.key("dnsNames").index(index), message);
        }
    }
    let issuer = path.key("issuer");
    let given = [spec.issuer.acme.is_some(), spec.issuer.self_signed.is_some(), spec.issuer.secret_ref.is_some()];
    if given.iter().filter(|given| **given).count() != 1 {
        errors.add(issuer.clone(), "give exactly one of `acme`, `selfSigned` or `secretRef`");
    }
    if let Some(acme) = &spec.issuer.acme {
        let url = acme.directory.as_str();
        let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
        if !scheme_ok || url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            errors.add(
                issuer.key("acme").key("directory"),
                format!("{url:?} is not a directory URL; e.g. https://acme-v02.api.letsencrypt.org/directory"),
            );
        }
        if let Some(email) = &acme.email {
            let plausible =
                email.split_once('@').is_some_and(|(user, domain)| !user.is_empty() && domain.contains('.'));
            if !plausible || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
                errors.add(issuer.key("acme").key("email"), format!("{email:?} is not an email address"));
            }
        }
        if let Some(bundle) = &acme.ca_bundle {
            if !bundle.contains("-----BEGIN CERTIFICATE-----") {
                errors.add(
                    issuer.key("acme").key("caBundle"),
                    "give one or more PEM certificates (-----BEGIN CERTIFICATE-----)",
                );
            }
        }
        if spec.dns_names.iter().any(|name| name.starts_with("*.")) {
            errors.add(
                path.key("dnsNames"),
                "ACME issues wildcard names only through DNS-01, which minicloud does not answer; name each host",
            );
        }
    }
    if let Some(reference) = &spec.issuer.secret_ref {
        if let Err(message) = check_dns_label(&reference.name) {
            errors.add(issuer.key("secretRef").key("name"), message);
        }
    }
    if let Some(renew_before) = &spec.renew_before {
        if let Err(message) = parse_duration_seconds(renew_before) {
            errors.add(path.key("renewBefore"), message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_seconds("720h"), Ok(720 * 3600));
        assert_eq!(parse_duration_seconds("30d"), Ok(30 * 86_400));
        for bad in ["", "h", "30", "30w", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration_seconds(bad).is_err(), "{bad:?}");
        }
    }
}
