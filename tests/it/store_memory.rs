//! The shared store suite against the in-memory store (used by unit tests of reconcile
//! decisions): it must keep exactly the same contract as the SQL stores.

store_suite!(crate::common::TestDb::memory);
