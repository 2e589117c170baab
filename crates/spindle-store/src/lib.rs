//! Spindle's storage ports and schema.
//!
//! SQLite is the source of truth ([`Db`]); the key-value store ([`KvStore`])
//! holds only what need not be atomic. Components implement both on Spin;
//! native tests use [`MemoryKv`] and, with the `rusqlite` feature,
//! [`RusqliteDb`], which behaves like Spin's SQLite.
#![deny(missing_docs)]

mod db;
mod kv;
pub mod migrations;
#[cfg(feature = "rusqlite")]
mod native;
pub mod split;

pub use db::{Db, DbError, DbErrorKind, OrgScoped, Rows, TransactionState, Value, in_transaction};
pub use kv::{KvError, KvStore, MemoryKv};
pub use migrations::{MigrationError, MigrationOutcome, migrate};
#[cfg(feature = "rusqlite")]
pub use native::RusqliteDb;

/// Now, in UTC milliseconds since the Unix epoch: how Spindle stores times.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
