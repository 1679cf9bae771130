//! minicloud, the application: manifests (reading and validating YAML with precise errors),
//! the store (SQLite embedded by default, PostgreSQL in production) and the `cloud` command
//! line. The resource kinds themselves live in the `minicloud-crds` crate.
//!
//! See ARCHITECTURE.md for the bird's-eye view.

pub mod api;
pub mod cli;
pub mod client;
pub mod controllers;
pub mod docker;
pub mod manifest;
pub mod store;
