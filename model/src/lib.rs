//! What both sides of minicloud agree on, with no HTTP and no SQL: reading and validating
//! manifests ([`manifest`], on the position-keeping YAML reader [`yaml`]; [`yaml_out`] writes
//! YAML back), template bundles
//! ([`templates`]), the three-way apply merge and field diffs ([`merge`]) and what a change does to what runs
//! ([`impact`]), keeping secret
//! values out of what is shown ([`redact`]), the table columns of `get` ([`columns`]), the
//! API's answer types ([`answers`]) and its OpenAPI document ([`openapi`]).
//!
//! The server (`minicloud-server`) and the command line (`minicloud-cli`, through
//! `minicloud-client`) both build on it; it depends on nothing of theirs.

pub mod answers;
pub mod columns;
pub mod files;
pub mod impact;
pub mod manifest;
pub mod merge;
pub mod openapi;
pub mod redact;
pub mod templates;
pub mod yaml;
pub mod yaml_out;
