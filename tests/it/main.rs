//! The integration tests, one binary: each module is one area, run against the real
//! components (SQLite, PostgreSQL, the Docker engine, HAProxy, `cloud server` itself);
//! `common` holds what they share. One binary links the application once, not once per area.

#[macro_use]
mod common;

mod acme;
mod api;
mod cli;
mod cli_validate;
mod console;
mod databases;
mod disk_full;
mod docker_driver;
mod gitops;
mod hardening;
mod high_availability;
mod instances;
mod isolation;
mod kubectl;
mod layering;
mod loadbalancers;
mod openapi_fresh;
mod policies;
mod pull;
mod resilience;
mod routing;
mod scalinggroups;
mod secrets;
mod security;
mod stacks;
mod store_memory;
mod store_postgres;
mod store_sqlite;
mod up;
