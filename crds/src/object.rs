//! The kind-independent form of an object, as the store persists it and the API serves it:
//! typed metadata, `spec` and `status` as JSON. Controllers convert to the typed kinds.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::kinds::{Kind, TypedObject};
use crate::meta::ObjectMeta;

/// Any object, with spec and status as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Object {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Value,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub status: Value,
}

/// Converting a typed object to the generic form failed (cannot happen for well-formed types).
#[derive(Debug, thiserror::Error)]
#[error("cannot convert object to JSON: {0}")]
pub struct ObjectError(#[from] serde_json::Error);

impl Object {
    /// The generic form of a typed object.
    pub fn from_typed(object: &TypedObject) -> Result<Object, ObjectError> {
        let value = match object {
            TypedObject::Instance(o) => serde_json::to_value(o)?,
            TypedObject::LoadBalancer(o) => serde_json::to_value(o)?,
            TypedObject::ScalingGroup(o) => serde_json::to_value(o)?,
            TypedObject::ManagedDatabase(o) => serde_json::to_value(o)?,
            TypedObject::Stack(o) => serde_json::to_value(o)?,
            TypedObject::Secret(o) => serde_json::to_value(o)?,
            TypedObject::ApplySet(o) => serde_json::to_value(o)?,
            TypedObject::Sync(o) => serde_json::to_value(o)?,
            TypedObject::Policy(o) => serde_json::to_value(o)?,
            TypedObject::Route(o) => serde_json::to_value(o)?,
            TypedObject::Certificate(o) => serde_json::to_value(o)?,
            TypedObject::Lease(o) => serde_json::to_value(o)?,
        };
        Ok(serde_json::from_value(value)?)
    }

    /// The object's namespace, with the default applied.
    pub fn namespace(&self) -> &str {
        self.metadata.namespace_or_default()
    }

    /// Identity of the object, when its kind is known.
    pub fn key(&self) -> Option<ObjectKey> {
        Some(ObjectKey {
            kind: Kind::from_kind_name(&self.kind)?,
            namespace: self.namespace().to_owned(),
            name: self.metadata.name.clone(),
        })
    }
}

/// Identity of an object: kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    /// A key from its parts.
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> ObjectKey {
        ObjectKey { kind, namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ObjectKey {
    /// `instance/web` in the default namespace, `instance/web -n staging` elsewhere.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str().to_ascii_lowercase(), self.name)?;
        if self.namespace != crate::DEFAULT_NAMESPACE {
            write!(f, " -n {}", self.namespace)?;
        }
        Ok(())
    }
}
