//! The minicloud server: the HTTP API ([`api`], kubectl-compatible), the web console
//! ([`ui`]), authentication, policies and audit ([`auth`]), the SQL store on SQLite and
//! PostgreSQL ([`store`]), Secret sealing ([`secrets`]), and the composition root
//! ([`composition`]) that wires store, API and controllers together.
//!
//! It is the only crate with an HTTP server (axum) and SQL (sqlx). The resource kinds live in
//! `minicloud-crds`, the store contract in `minicloud-store`, the reconcile loops and drivers
//! in `minicloud-controllers`, what client and server share in `minicloud-model`. See
//! ARCHITECTURE.md for the bird's-eye view.

mod acme;
mod api;
mod auth;
pub mod composition;
mod secrets;
pub mod store;
mod ui;
mod usage;

pub use api::Limits;
pub use auth::{AuthSettings, Rate};
pub use secrets::{SecretKeys, KEY_ENV};
