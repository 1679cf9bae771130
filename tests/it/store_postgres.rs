//! The shared store suite against a real PostgreSQL server (a fresh database per test).

mod common;

store_suite!(common::TestDb::postgres);
