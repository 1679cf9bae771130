//! The store as the application opens it: the contract, rules and in-memory store from the
//! `minicloud-store` crate (re-exported here), and [`SqlStore`], its implementation on SQLite
//! and PostgreSQL — the only code in minicloud that speaks SQL.

pub mod sql;

pub use minicloud_store::*;

pub use self::sql::SqlStore;
pub use self::sql::WatchLag;
