//! The registry of kinds: the typed resource of each kind, its names (singular, plural, short
//! names, as kubectl accepts them) and the JSON Schema generated from its Rust type.

use std::fmt;

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::applyset::{ApplySetSpec, ApplySetStatus};
use crate::certificate::{CertificateSpec, CertificateStatus};
use crate::database::{ManagedDatabaseSpec, ManagedDatabaseStatus};
use crate::instance::{InstanceSpec, InstanceStatus};
use crate::lease::{LeaseSpec, LeaseStatus};
use crate::loadbalancer::{LoadBalancerSpec, LoadBalancerStatus};
use crate::meta::{ObjectMeta, API_VERSION};
use crate::policy::{PolicySpec, PolicyStatus};
use crate::route::{RouteSpec, RouteStatus};
use crate::scalinggroup::{ScalingGroupSpec, ScalingGroupStatus};
use crate::secret::{SecretSpec, SecretStatus};
use crate::stack::{StackSpec, StackStatus};
use crate::sync::{SyncSpec, SyncStatus};

macro_rules! typed_resource {
    ($(#[$doc:meta])* $name:ident, $spec:ty, $status:ty) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name {
            /// Always `minicloud.dev/v1`.
            pub api_version: String,
            /// The kind of the object.
            pub kind: String,
            /// Name, namespace, labels and bookkeeping.
            pub metadata: ObjectMeta,
            /// Desired state, written by users.
            pub spec: $spec,
            /// Observed state, written by controllers only.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub status: Option<$status>,
        }
    };
}

typed_resource!(
    /// One container, kept running.
    Instance, InstanceSpec, InstanceStatus
);
typed_resource!(
    /// An HAProxy load balancer in front of Instances.
    LoadBalancer, LoadBalancerSpec, LoadBalancerStatus
);
typed_resource!(
    /// A group of identical Instances, autoscaled.
    ScalingGroup, ScalingGroupSpec, ScalingGroupStatus
);
typed_resource!(
    /// A database with credentials, backups and restore.
    ManagedDatabase, ManagedDatabaseSpec, ManagedDatabaseStatus
);
typed_resource!(
    /// A parameterised bundle of resources.
    Stack, StackSpec, StackStatus
);
typed_resource!(
    /// Sensitive values (passwords, keys) that Instances read as environment variables.
    Secret, SecretSpec, SecretStatus
);

typed_resource!(
    /// HTTP routing rules attached to LoadBalancer listeners.
    Route, RouteSpec, RouteStatus
);
typed_resource!(
    /// A TLS key pair for some DNS names, issued and renewed.
    Certificate, CertificateSpec, CertificateStatus
);

typed_resource!(
    /// Who holds a piece of work shared by control-plane replicas (coordination/v1 Lease).
    Lease, LeaseSpec, LeaseStatus
);

typed_resource!(
    /// The inventory of a set of applied manifests (prune scope).
    ApplySet, ApplySetSpec, ApplySetStatus
);
typed_resource!(
    /// A directory of manifests kept applied continuously.
    Sync, SyncSpec, SyncStatus
);
typed_resource!(
    /// Admission rules checked on every create and update.
    Policy, PolicySpec, PolicyStatus
);

/// Every kind minicloud knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    Instance,
    LoadBalancer,
    ScalingGroup,
    ManagedDatabase,
    Stack,
    Secret,
    ApplySet,
    Sync,
    Policy,
    Route,
    Certificate,
    Lease,
}

impl Kind {
    /// All kinds, in the order they are applied (dependencies first; policies before what they
    /// govern).
    pub const ALL: [Kind; 12] = [
        Kind::Policy,
        Kind::Secret,
        Kind::Certificate,
        Kind::ManagedDatabase,
        Kind::Instance,
        Kind::ScalingGroup,
        Kind::LoadBalancer,
        Kind::Route,
        Kind::Stack,
        Kind::ApplySet,
        Kind::Sync,
        Kind::Lease,
    ];

    /// The kind as written in `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Instance => "Instance",
            Kind::LoadBalancer => "LoadBalancer",
            Kind::ScalingGroup => "ScalingGroup",
            Kind::ManagedDatabase => "ManagedDatabase",
            Kind::Stack => "Stack",
            Kind::Secret => "Secret",
            Kind::ApplySet => "ApplySet",
            Kind::Sync => "Sync",
            Kind::Policy => "Policy",
            Kind::Route => "Route",
            Kind::Certificate => "Certificate",
            Kind::Lease => "Lease",
        }
    }

    /// Lower-case plural, used in API paths (`instances`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Instance => "instances",
            Kind::LoadBalancer => "loadbalancers",
            Kind::ScalingGroup => "scalinggroups",
            Kind::ManagedDatabase => "manageddatabases",
            Kind::Stack => "stacks",
            Kind::Secret => "secrets",
            Kind::ApplySet => "applysets",
            Kind::Sync => "syncs",
            Kind::Policy => "policies",
            Kind::Route => "routes",
            Kind::Certificate => "certificates",
            Kind::Lease => "leases",
        }
    }

    /// Abbreviations accepted on the command line.
    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::Instance => &["inst"],
            Kind::LoadBalancer => &["lb"],
            Kind::ScalingGroup => &["sg"],
            Kind::ManagedDatabase => &["db"],
            Kind::Stack => &[],
            Kind::Secret => &[],
            Kind::ApplySet => &[],
            Kind::Sync => &[],
            Kind::Policy => &["pol"],
            Kind::Route => &["rt"],
            Kind::Certificate => &["cert"],
            Kind::Lease => &[],
        }
    }

    /// Whether something (a controller, a sync loop) reports conditions and an observed
    /// generation on objects of this kind; Secrets, ApplySets and Policies are data only.
    pub fn reports_conditions(self) -> bool {
        !matches!(self, Kind::Secret | Kind::ApplySet | Kind::Policy | Kind::Lease)
    }

    /// The kind of a plural (`instances`).
    pub fn from_plural(plural: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.plural() == plural)
    }

    /// The kind named by its exact `kind:` spelling.
    pub fn from_kind_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// The kind named on a command line: singular, plural or short name, any case.
    pub fn from_cli_name(name: &str) -> Option<Kind> {
        let lower = name.to_ascii_lowercase();
        Kind::ALL.into_iter().find(|kind| {
            kind.as_str().eq_ignore_ascii_case(&lower)
                || kind.plural() == lower
                || kind.short_names().contains(&lower.as_str())
        })
    }

    /// File name of the kind's checked-in schema under `crds/schemas/`.
    pub fn schema_file_name(self) -> String {
        format!("{}.schema.json", self.as_str().to_ascii_lowercase())
    }

    /// The kind's JSON Schema (draft-07), generated from its Rust type. `apiVersion` and `kind`
    /// are pinned to their only valid values so editors can complete them.
    pub fn schema(self) -> Value {
        let generator = SchemaSettings::draft07().into_generator();
        let schema = match self {
            Kind::Instance => generator.into_root_schema_for::<Instance>(),
            Kind::LoadBalancer => generator.into_root_schema_for::<LoadBalancer>(),
            Kind::ScalingGroup => generator.into_root_schema_for::<ScalingGroup>(),
            Kind::ManagedDatabase => generator.into_root_schema_for::<ManagedDatabase>(),
            Kind::Stack => generator.into_root_schema_for::<Stack>(),
            Kind::Secret => generator.into_root_schema_for::<Secret>(),
            Kind::ApplySet => generator.into_root_schema_for::<ApplySet>(),
            Kind::Sync => generator.into_root_schema_for::<Sync>(),
            Kind::Policy => generator.into_root_schema_for::<Policy>(),
            Kind::Route => generator.into_root_schema_for::<Route>(),
            Kind::Certificate => generator.into_root_schema_for::<Certificate>(),
            Kind::Lease => generator.into_root_schema_for::<Lease>(),
        };
        let mut schema = schema.to_value();
        if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
            properties.insert(
                "apiVersion".into(),
                serde_json::json!({"description": "Always `minicloud.dev/v1`.", "type": "string", "enum": [API_VERSION]}),
            );
            properties.insert(
                "kind".into(),
                serde_json::json!({"description": "The kind of the object.", "type": "string", "enum": [self.as_str()]}),
            );
        }
        if let Some(object) = schema.as_object_mut() {
            object.insert(
                "$id".into(),
                Value::String(format!("https://minicloud.dev/schemas/v1/{}", self.schema_file_name())),
            );
        }
        schema
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An object of any kind, with its typed spec and status.
#[derive(Clone, Debug, PartialEq)]
pub enum TypedObject {
    Instance(Instance),
    LoadBalancer(LoadBalancer),
    ScalingGroup(ScalingGroup),
    ManagedDatabase(ManagedDatabase),
    Stack(Stack),
    Secret(Secret),
    ApplySet(ApplySet),
    Sync(Sync),
    Policy(Policy),
    Route(Route),
    Certificate(Certificate),
    Lease(Lease),
}

impl TypedObject {
    /// Which kind this is.
    pub fn kind(&self) -> Kind {
        match self {
            TypedObject::Instance(_) => Kind::Instance,
            TypedObject::LoadBalancer(_) => Kind::LoadBalancer,
            TypedObject::ScalingGroup(_) => Kind::ScalingGroup,
            TypedObject::ManagedDatabase(_) => Kind::ManagedDatabase,
            TypedObject::Stack(_) => Kind::Stack,
            TypedObject::Secret(_) => Kind::Secret,
            TypedObject::ApplySet(_) => Kind::ApplySet,
            TypedObject::Sync(_) => Kind::Sync,
            TypedObject::Policy(_) => Kind::Policy,
            TypedObject::Route(_) => Kind::Route,
            TypedObject::Certificate(_) => Kind::Certificate,
            TypedObject::Lease(_) => Kind::Lease,
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            TypedObject::Instance(o) => &o.metadata,
            TypedObject::LoadBalancer(o) => &o.metadata,
            TypedObject::ScalingGroup(o) => &o.metadata,
            TypedObject::ManagedDatabase(o) => &o.metadata,
            TypedObject::Stack(o) => &o.metadata,
            TypedObject::Secret(o) => &o.metadata,
            TypedObject::ApplySet(o) => &o.metadata,
            TypedObject::Sync(o) => &o.metadata,
            TypedObject::Policy(o) => &o.metadata,
            TypedObject::Route(o) => &o.metadata,
            TypedObject::Certificate(o) => &o.metadata,
            TypedObject::Lease(o) => &o.metadata,
        }
    }

    /// Deserializes a JSON document of the given kind. The error names the field path of the
    /// first value that does not fit.
    pub fn from_value(kind: Kind, value: Value) -> Result<TypedObject, crate::FieldError> {
        fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, crate::FieldError> {
            serde_path_to_error::deserialize(value).map_err(|error| {
                let path = crate::FieldPath::from_serde_path(error.path());
                crate::FieldError::new(path, error.into_inner().to_string())
            })
        }
        Ok(match kind {
            Kind::Instance => TypedObject::Instance(typed(value)?),
            Kind::LoadBalancer => TypedObject::LoadBalancer(typed(value)?),
            Kind::ScalingGroup => TypedObject::ScalingGroup(typed(value)?),
            Kind::ManagedDatabase => TypedObject::ManagedDatabase(typed(value)?),
            Kind::Stack => TypedObject::Stack(typed(value)?),
            Kind::Secret => TypedObject::Secret(typed(value)?),
            Kind::ApplySet => TypedObject::ApplySet(typed(value)?),
            Kind::Sync => TypedObject::Sync(typed(value)?),
            Kind::Policy => TypedObject::Policy(typed(value)?),
            Kind::Route => TypedObject::Route(typed(value)?),
            Kind::Certificate => TypedObject::Certificate(typed(value)?),
            Kind::Lease => TypedObject::Lease(typed(value)?),
        })
    }
}

/// The schema of `kind` as written to `crds/schemas/`: pretty JSON with a final newline.
pub fn render_schema(kind: Kind) -> String {
    let mut text = serde_json::to_string_pretty(&kind.schema()).unwrap_or_default();
    text.push('\n');
    text
}

/// Follows `$ref`, single-entry `allOf` and `anyOf: [T, null]` to the schema that describes a
/// value.
pub fn resolve_schema<'s>(root: &'s Value, mut node: &'s Value) -> &'s Value {
    for _ in 0..16 {
        if let Some(reference) = node.get("$ref").and_then(Value::as_str) {
            let Some(name) = reference.strip_prefix("#/definitions/") else { return node };
            match root.get("definitions").and_then(|definitions| definitions.get(name)) {
                Some(target) => node = target,
                None => return node,
            }
        } else if let Some(first) = node.get("allOf").and_then(|all| all.get(0)) {
            node = first;
        } else if let Some(options) = node.get("anyOf").and_then(Value::as_array) {
            match options.iter().find(|option| option.get("type") != Some(&Value::String("null".into()))) {
                Some(option) => node = option,
                None => return node,
            }
        } else {
            return node;
        }
    }
    node
}

/// The (resolved) schema of the value at `path` in a document described by `root`.
pub fn schema_at<'s>(root: &'s Value, path: &crate::FieldPath) -> Option<&'s Value> {
    let mut node = resolve_schema(root, root);
    for segment in &path.0 {
        let next = match segment {
            crate::PathSegment::Key(key) => node
                .get("properties")
                .and_then(|properties| properties.get(key))
                .or_else(|| node.get("additionalProperties").filter(|additional| additional.is_object())),
            crate::PathSegment::Index(_) => node.get("items"),
        }?;
        node = resolve_schema(root, next);
    }
    Some(node)
}
