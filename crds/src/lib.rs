//! minicloud's resource model: the kinds users declare (`Instance`, `LoadBalancer`,
//! `ScalingGroup`, `ManagedDatabase`, `Stack`, `Secret`, `Route`, `Certificate`) as Rust types, the JSON Schemas
//! generated from them (checked in under `crds/schemas/`, regenerated with
//! `cargo run -p minicloud-crds --bin gen-schemas`), and the semantic rules a schema cannot say
//! (name formats, min ≤ max, exactly one of two fields, ...).
//!
//! Everything here is pure data and pure functions: no I/O, no async. The application parses
//! manifests into these types, the store persists them as JSON, controllers read them.

pub mod applyset;
pub mod certificate;
pub mod conditions;
pub mod cron;
pub mod database;
pub mod http;
pub mod instance;
pub mod kinds;
pub mod lease;
pub mod loadbalancer;
pub mod meta;
pub mod object;
pub mod path;
pub mod policy;
pub mod quantity;
pub mod route;
pub mod rules;
pub mod scalinggroup;
pub mod secret;
pub mod stack;
pub mod stack_secrets;
pub mod sync;
pub mod validation;

pub use kinds::{Kind, TypedObject};
pub use meta::{ObjectMeta, API_GROUP, API_VERSION, DEFAULT_NAMESPACE};
pub use object::{Object, ObjectKey};
pub use path::{FieldError, FieldPath, PathSegment};
