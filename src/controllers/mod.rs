//! Controllers: one reconcile loop per kind, driving the world (Docker) toward what the store
//! says and writing what they observe back into status. They see the store only through the
//! [`crate::store::Store`] trait and Docker only through [`crate::docker::ContainerDriver`]; no
//! SQL, no HTTP.

pub mod conditions;
pub mod helpers;
pub mod instance;
pub mod queue;
pub mod runtime;
