//! minicloud, the application: manifests (reading and validating YAML with precise errors),
//! the SQL store, the API server, the HTTP client, the `cloud` command line, and the
//! composition root ([`server`]) that wires store, API and controllers together. The resource
//! kinds live in `minicloud-crds`, the store contract in `minicloud-store`, the reconcile loops
//! and drivers in `minicloud-controllers`.
//!
//! See ARCHITECTURE.md for the bird's-eye view.

pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod columns;
pub mod manifest;
pub mod secrets;
pub mod server;
pub mod store;
pub mod templates;
pub mod ui;
