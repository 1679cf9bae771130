//! The shared store suite against a real PostgreSQL server (a fresh database per test).

store_suite!(crate::common::TestDb::postgres);
