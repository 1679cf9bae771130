//! API tokens: how they look, how they are made and hashed, and what the store holds about
//! them.
//!
//! A token is `mc_` followed by 43 base64url characters: 256 random bits. The server keeps only
//! its SHA-256 (a salted slow hash buys nothing against guessing 256 random bits, and a fast one
//! lets every request be checked by an index lookup), with the token's name, role, namespace,
//! expiry, last use and revocation. The token itself is shown once, when it is created.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Role;

/// What every token starts with (so that a leaked one is recognisable, e.g. by secret scanners).
pub const PREFIX: &str = "mc_";
/// Random bytes in a token.
const SECRET_BYTES: usize = 32;
/// Characters after the prefix: 32 bytes in unpadded base64url.
const SECRET_CHARS: usize = 43;

/// A newly made token: the text to hand out once, and the hash to keep.
pub struct Secret {
    pub text: String,
    pub hash: String,
}

/// Makes a new random token.
pub fn generate() -> Secret {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::fill(&mut bytes);
    let text = format!("{PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
    Secret { hash: hash(&text), text }
}

/// The hex SHA-256 of a token, as the store keeps it.
pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Whether `text` has a token's shape (checked before any lookup).
pub fn well_formed(text: &str) -> bool {
    text.strip_prefix(PREFIX).is_some_and(|secret| {
        secret.len() == SECRET_CHARS
            && secret.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    })
}

/// A token to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewToken {
    pub name: String,
    pub role: Role,
    pub namespace: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// What the store knows about a token (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub name: String,
    pub role: Role,
    /// `None`: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Updated at most once a minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TokenRecord {
    /// `active`, `expired` or `revoked` at `now`.
    pub fn state(&self, now: DateTime<Utc>) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|expiry| expiry <= now) {
            "expired"
        } else {
            "active"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_well_formed_unique_and_hashed() {
        let first = generate();
        let second = generate();
        assert!(well_formed(&first.text), "{}", first.text);
        assert_ne!(first.text, second.text);
        assert_eq!(first.hash, hash(&first.text));
        assert_eq!(first.hash.len(), 64);
        assert!(!first.hash.contains(&first.text[PREFIX.len()..]));
    }

    #[test]
    fn malformed_tokens_are_recognised_without_a_lookup() {
        let good = generate().text;
        for bad in
            ["", "mc_", "Bearer x", &good[1..], &format!("{good}x"), &good.replace('_', "/"), &good.to_uppercase()]
        {
            if bad == good {
                continue;
            }
            assert!(!well_formed(bad), "{bad:?}");
        }
    }

    #[test]
    fn state_reads_revocation_then_expiry() {
        let now = Utc::now();
        let mut record = TokenRecord {
            name: "a".into(),
            role: Role::View,
            namespace: None,
            created_at: now,
            expires_at: Some(now + chrono::Duration::seconds(1)),
            last_used_at: None,
            revoked_at: None,
        };
        assert_eq!(record.state(now), "active");
        assert_eq!(record.state(now + chrono::Duration::seconds(1)), "expired");
        record.revoked_at = Some(now);
        assert_eq!(record.state(now), "revoked");
    }
}
