//! TLS key pairs as minicloud handles them: checking a PEM certificate chain and private key
//! (that they parse, belong together, and are valid now), reading what a certificate says
//! (validity, serial, issuer, names), and making self-signed certificates. Used by the
//! Certificate controller (what it stores) and the LoadBalancer controller (what it hands to
//! HAProxy: never a pair that does not pass [`inspect`]).

use chrono::{DateTime, TimeZone, Utc};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

/// What is wrong with a key pair.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("the certificate is not PEM (-----BEGIN CERTIFICATE-----): {0}")]
    CertificateNotPem(String),
    #[error("the certificate does not parse: {0}")]
    CertificateInvalid(String),
    #[error("the private key is not a PKCS#8 PEM key (-----BEGIN PRIVATE KEY-----; convert one with `openssl pkcs8 -topk8 -nocrypt`): {0}")]
    KeyInvalid(String),
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("the certificate expired at {0}")]
    Expired(DateTime<Utc>),
    #[error("the certificate is not valid before {0}")]
    NotYetValid(DateTime<Utc>),
    #[error("cannot make a certificate: {0}")]
    Generate(String),
}

/// What a certificate says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspected {
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// Hex, lower case.
    pub serial: String,
    pub issuer: String,
    pub subject: String,
    /// The DNS names of its subject alternative names.
    pub dns_names: Vec<String>,
}

impl Inspected {
    /// Whether the certificate covers `name` (exactly, or through a `*.` name).
    pub fn covers(&self, name: &str) -> bool {
        self.dns_names
            .iter()
            .any(|have| have == name || minicloud_crds::http::hostname_matches(have, name) && !name.starts_with("*."))
    }
}

/// Checks a key pair (the first certificate of `chain` is the leaf) at `now`, and says what
/// the leaf says.
pub fn inspect(chain: &str, key: &str, now: DateTime<Utc>) -> Result<Inspected, TlsError> {
    let inspected = read_leaf(chain)?;
    let key = KeyPair::from_pem(key).map_err(|error| TlsError::KeyInvalid(error.to_string()))?;
    if leaf_public_key(chain)? != key.public_key_raw() {
        return Err(TlsError::KeyMismatch);
    }
    if now >= inspected.not_after {
        return Err(TlsError::Expired(inspected.not_after));
    }
    if now < inspected.not_before {
        return Err(TlsError::NotYetValid(inspected.not_before));
    }
    Ok(inspected)
}

/// Reads the leaf certificate of a PEM chain.
pub fn read_leaf(chain: &str) -> Result<Inspected, TlsError> {
    let pem = first_certificate(chain)?;
    let certificate = pem.parse_x509().map_err(|error| TlsError::CertificateInvalid(error.to_string()))?;
    let time = |t: x509_parser::time::ASN1Time| {
        Utc.timestamp_opt(t.timestamp(), 0)
            .single()
            .ok_or_else(|| TlsError::CertificateInvalid("a date is out of range".into()))
    };
    let mut dns_names = Vec::new();
    if let Ok(Some(names)) = certificate.subject_alternative_name() {
        for name in &names.value.general_names {
            if let GeneralName::DNSName(name) = name {
                dns_names.push((*name).to_owned());
            }
        }
    }
    Ok(Inspected {
        not_before: time(certificate.validity().not_before)?,
        not_after: time(certificate.validity().not_after)?,
        serial: certificate.raw_serial_as_string().replace(':', ""),
        issuer: certificate.issuer().to_string(),
        subject: certificate.subject().to_string(),
        dns_names,
    })
}

fn first_certificate(chain: &str) -> Result<Pem, TlsError> {
    for pem in Pem::iter_from_buffer(chain.as_bytes()) {
        let pem = pem.map_err(|error| TlsError::CertificateNotPem(error.to_string()))?;
        if pem.label == "CERTIFICATE" {
            return Ok(pem);
        }
    }
    Err(TlsError::CertificateNotPem("no CERTIFICATE block".into()))
}

fn leaf_public_key(chain: &str) -> Result<Vec<u8>, TlsError> {
    let pem = first_certificate(chain)?;
    let certificate = pem.parse_x509().map_err(|error| TlsError::CertificateInvalid(error.to_string()))?;
    Ok(certificate.public_key().subject_public_key.data.to_vec())
}

/// A new self-signed certificate (ECDSA P-256) for `names`, valid from now for `days`.
/// Returns (certificate PEM, private key PEM).
pub fn self_signed(names: &[String], days: u32, now: DateTime<Utc>) -> Result<(String, String), TlsError> {
    let generate = |error: rcgen::Error| TlsError::Generate(error.to_string());
    let key = KeyPair::generate().map_err(generate)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(generate)?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, names.first().cloned().unwrap_or_else(|| "minicloud".into()));
    subject.push(DnType::OrganizationName, "minicloud self-signed");
    params.distinguished_name = subject;
    let start = now - chrono::Duration::minutes(5);
    params.not_before = to_offset(start)?;
    params.not_after = to_offset(now + chrono::Duration::days(i64::from(days)))?;
    let mut serial = [0u8; 16];
    getrandom::fill(&mut serial).map_err(|error| TlsError::Generate(error.to_string()))?;
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let certificate = params.self_signed(&key).map_err(generate)?;
    Ok((certificate.pem(), key.serialize_pem()))
}

fn to_offset(time: DateTime<Utc>) -> Result<time::OffsetDateTime, TlsError> {
    time::OffsetDateTime::from_unix_timestamp(time.timestamp()).map_err(|error| TlsError::Generate(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_self_signed_pair_inspects_as_made() {
        let now = Utc::now();
        let (chain, key) = self_signed(&names(&["shop.example.com", "*.shop.example.com"]), 30, now).expect("make");
        let inspected = inspect(&chain, &key, now).expect("valid");
        assert_eq!(inspected.dns_names, names(&["shop.example.com", "*.shop.example.com"]));
        assert!(inspected.issuer.contains("shop.example.com"), "{}", inspected.issuer);
        assert_eq!((inspected.not_after - now).num_minutes(), 30 * 24 * 60 - 1, "30 days, to the second");
        assert!(inspected.covers("shop.example.com") && inspected.covers("a.shop.example.com"));
        assert!(!inspected.covers("example.com"));
        assert_eq!(inspected.serial.len(), 32, "{}", inspected.serial);
    }

    #[test]
    fn mismatched_expired_and_garbage_pairs_are_refused() {
        let now = Utc::now();
        let (chain, key) = self_signed(&names(&["a.example.com"]), 1, now).expect("make");
        let (_, other_key) = self_signed(&names(&["a.example.com"]), 1, now).expect("make");
        assert_eq!(inspect(&chain, &other_key, now), Err(TlsError::KeyMismatch));
        assert!(matches!(inspect(&chain, &key, now + chrono::Duration::days(2)), Err(TlsError::Expired(_))));
        assert!(matches!(inspect(&chain, &key, now - chrono::Duration::days(2)), Err(TlsError::NotYetValid(_))));
        assert!(matches!(inspect("hello", &key, now), Err(TlsError::CertificateNotPem(_))));
        assert!(matches!(inspect(&chain, "hello", now), Err(TlsError::KeyInvalid(_))));
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(inspect(garbage, &key, now).is_err());
    }
}
