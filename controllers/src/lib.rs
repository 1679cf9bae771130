//! Controllers: one reconcile loop per kind, driving the world (Docker) toward what the store
//! says and writing what they observe back into status.
//!
//! This crate is where the layering is enforced by the compiler: its dependencies include no
//! SQL driver, no HTTP server and no HTTP client. Controllers see the store only through the
//! [`minicloud_store::Store`] trait and Docker only through [`docker::ContainerDriver`]; the
//! application (the `cloud server` composition root) hands them a real store and a real engine,
//! unit tests hand them [`minicloud_store::MemoryStore`] and a fake driver.

pub mod admission;
pub mod certificate;
pub mod container;
pub mod database;
pub mod docker;
pub mod instance;
pub mod leader;
pub mod loadbalancer;
pub mod meta;
pub mod metrics;
pub mod orphans;
pub mod owned;
pub mod queue;
pub mod reconciler;
pub mod route;
pub mod runtime;
pub mod scalinggroup;
pub mod stack;
pub mod tls;
