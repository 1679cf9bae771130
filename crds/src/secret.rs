//! `Secret`: named sensitive values (passwords, keys) that Instances read as environment
//! variables. The SQL store keeps each value encrypted (see the application's `secrets`
//! module); the API never sends a value back except through the explicit `reveal` action:
//! everywhere else a value reads [`REDACTED`].

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::Condition;

/// What the API shows instead of a Secret's value. Written back as a value, it is refused: it
/// is the placeholder of `cloud get -o yaml`, not a password.
pub const REDACTED: &str = "<redacted>";

/// The sensitive values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretSpec {
    /// What the secret holds. Defaults to `Opaque`.
    #[serde(default, rename = "type")]
    pub type_: SecretType,
    /// Values as plain strings, by key (letters, digits, '-', '_' and '.').
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub string_data: BTreeMap<String, String>,
}

/// Kinds of secret.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SecretType {
    /// Arbitrary keys.
    #[default]
    Opaque,
    /// `username` and `password` keys.
    BasicAuth,
    /// Credentials generated for a ManagedDatabase.
    DatabaseCredentials,
    /// A TLS key pair: `tls.crt` (the PEM chain) and `tls.key` (the PEM private key).
    Tls,
}

/// Observed state of a secret.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretStatus {
    /// The generation last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` once stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
