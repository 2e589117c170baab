//! Schema migrations, applied by the app itself on first use.
//!
//! Every component calls [`migrate`] before touching the database. The fast
//! path is one read of `schema_migrations`. Otherwise all pending migrations
//! run in one `BEGIN IMMEDIATE` transaction: SQLite's DDL is transactional,
//! so a failure leaves no half-applied schema, and a second instance racing
//! the first waits on the write lock, then finds nothing left to apply.

use crate::db::{Db, DbError, Value, in_transaction};
use crate::now_ms;
use crate::split::{SplitError, split_statements};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// One numbered migration file from `migrations/`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its number, the `NNNN` of `NNNN_name.sql`.
    pub version: i64,
    /// Its file name.
    pub name: &'static str,
    /// The SQL text.
    pub sql: &'static str,
}

/// Spindle's migrations, in order. A test checks this list against the files.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_initial.sql",
        sql: include_str!("../../../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "0002_loops.sql",
        sql: include_str!("../../../migrations/0002_loops.sql"),
    },
    Migration {
        version: 3,
        name: "0003_schedules.sql",
        sql: include_str!("../../../migrations/0003_schedules.sql"),
    },
    Migration {
        version: 4,
        name: "0004_execution_logs.sql",
        sql: include_str!("../../../migrations/0004_execution_logs.sql"),
    },
    Migration {
        version: 5,
        name: "0005_pricing.sql",
        sql: include_str!("../../../migrations/0005_pricing.sql"),
    },
    Migration {
        version: 6,
        name: "0006_budgets.sql",
        sql: include_str!("../../../migrations/0006_budgets.sql"),
    },
    Migration {
        version: 7,
        name: "0007_metrics_and_admission.sql",
        sql: include_str!("../../../migrations/0007_metrics_and_admission.sql"),
    },
    Migration {
        version: 8,
        name: "0008_usage_report_indexes.sql",
        sql: include_str!("../../../migrations/0008_usage_report_indexes.sql"),
    },
    Migration {
        version: 9,
        name: "0009_retried_cost.sql",
        sql: include_str!("../../../migrations/0009_retried_cost.sql"),
    },
    Migration {
        version: 10,
        name: "0010_heartbeat.sql",
        sql: include_str!("../../../migrations/0010_heartbeat.sql"),
    },
    Migration {
        version: 11,
        name: "0011_step_failures.sql",
        sql: include_str!("../../../migrations/0011_step_failures.sql"),
    },
];

/// The schema level the code expects: the last migration's version.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// What [`migrate`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationOutcome {
    /// The schema level after the call.
    pub schema: i64,
    /// The versions this call applied (empty when the schema was current).
    pub applied: Vec<i64>,
}

/// Why the schema could not be brought up to date.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MigrationError {
    /// A statement failed; nothing of this call's migrations was kept.
    #[error("migration {version} failed: {source}")]
    Statement {
        /// The migration that failed.
        version: i64,
        /// The failure.
        source: DbError,
    },
    /// Reading or recording the applied versions failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A migration file could not be split into statements.
    #[error("migration {version} cannot be split: {source}")]
    Split {
        /// The migration.
        version: i64,
        /// Why.
        source: SplitError,
    },
    /// An applied migration's text has changed since it ran.
    #[error("migration {version} changed after it was applied")]
    Changed {
        /// The migration.
        version: i64,
    },
    /// The database is at a level this code does not know (a newer release ran).
    #[error("database schema {found} is newer than this build's {expected}")]
    TooNew {
        /// The level found.
        found: i64,
        /// The level this build knows.
        expected: i64,
    },
}

impl MigrationError {
    /// Whether trying again may succeed (another writer held the lock).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Statement { source, .. } | Self::Db(source) => source.is_transient(),
            _ => false,
        }
    }
}

/// Brings the database up to Spindle's schema.
pub fn migrate(db: &dyn Db) -> Result<MigrationOutcome, MigrationError> {
    migrate_with(db, MIGRATIONS)
}

/// Brings the database up to `migrations` (which must be in version order).
pub fn migrate_with(
    db: &dyn Db,
    migrations: &[Migration],
) -> Result<MigrationOutcome, MigrationError> {
    let latest = migrations.last().map_or(0, |m| m.version);
    // Fast path: a missing table is an error here, and simply means "not yet".
    if let Ok(rows) = db.execute("SELECT MAX(version) FROM schema_migrations", &[]) {
        let current = rows.scalar_i64().unwrap_or(0);
        if current == latest {
            return Ok(MigrationOutcome {
                schema: current,
                applied: Vec::new(),
            });
        }
        if current > latest {
            return Err(MigrationError::TooNew {
                found: current,
                expected: latest,
            });
        }
    }
    // Write-ahead logging, set once (it stays with the file): a commit then
    // syncs one log file instead of a journal and the database, and readers
    // no longer wait for writers. It cannot change inside a transaction, so
    // it goes first; a host whose SQLite refuses it (a remote database)
    // keeps its own mode, which is fine.
    let _ = db.execute("PRAGMA journal_mode = WAL", &[]);
    in_transaction(db, |db| apply_pending(db, migrations, latest))
}

fn apply_pending(
    db: &dyn Db,
    migrations: &[Migration],
    latest: i64,
) -> Result<MigrationOutcome, MigrationError> {
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (\
            version INTEGER PRIMARY KEY, \
            name TEXT NOT NULL, \
            checksum TEXT NOT NULL, \
            applied_at INTEGER NOT NULL)",
        &[],
    )?;
    let applied = db.execute("SELECT version, checksum FROM schema_migrations", &[])?;
    let mut outcome = MigrationOutcome {
        schema: latest,
        applied: Vec::new(),
    };
    for migration in migrations {
        let checksum = checksum(migration.sql);
        let recorded = applied
            .rows
            .iter()
            .find(|row| row.first().and_then(Value::as_i64) == Some(migration.version));
        if let Some(row) = recorded {
            if row.get(1).and_then(Value::as_str) != Some(checksum.as_str()) {
                return Err(MigrationError::Changed {
                    version: migration.version,
                });
            }
            continue;
        }
        apply_one(db, migration, checksum)?;
        outcome.applied.push(migration.version);
    }
    if let Some(newest) = applied.rows.iter().filter_map(|r| r[0].as_i64()).max()
        && newest > latest
    {
        return Err(MigrationError::TooNew {
            found: newest,
            expected: latest,
        });
    }
    Ok(outcome)
}

fn apply_one(db: &dyn Db, migration: &Migration, checksum: String) -> Result<(), MigrationError> {
    let version = migration.version;
    let statements = split_statements(migration.sql)
        .map_err(|source| MigrationError::Split { version, source })?;
    for statement in &statements {
        db.execute(statement, &[])
            .map_err(|source| MigrationError::Statement { version, source })?;
    }
    db.execute(
        "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, ?)",
        &[
            Value::Integer(version),
            Value::from(migration.name),
            Value::Text(checksum),
            Value::Integer(now_ms()),
        ],
    )?;
    Ok(())
}

fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
