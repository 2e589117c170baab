//! The SQLite port: one statement per call, as Spin runs it.

use std::cell::Cell;
use thiserror::Error;

/// A SQLite value, as Spin's `sqlite` interface carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// NULL
    Null,
    /// INTEGER
    Integer(i64),
    /// REAL
    Real(f64),
    /// TEXT
    Text(String),
    /// BLOB
    Blob(Vec<u8>),
}

impl Value {
    /// The integer, if this is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The text, if this is text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Text(s) => Some(s),
            _ => None,
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Integer(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self::Text(v.to_string())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}

/// The result of one statement: column names and rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// Each row's values, in column order.
    pub rows: Vec<Vec<Value>>,
}

impl Rows {
    /// The first column of the first row, if any.
    pub fn scalar(&self) -> Option<&Value> {
        self.rows.first().and_then(|row| row.first())
    }

    /// The first column of the first row as an integer (a `COUNT(*)`, a `MAX`).
    pub fn scalar_i64(&self) -> Option<i64> {
        self.scalar().and_then(Value::as_i64)
    }

    /// The first row, if any.
    pub fn into_first(self) -> Option<Vec<Value>> {
        self.rows.into_iter().next()
    }
}

/// What kind of failure a statement met; decides whether a retry may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbErrorKind {
    /// The file is locked by another writer ("database is locked"/busy).
    Busy,
    /// A UNIQUE, FOREIGN KEY, CHECK or NOT NULL constraint refused the write.
    Constraint,
    /// Anything else: bad SQL, a missing table, a broken connection.
    Other,
}

/// A failed statement.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("sqlite: {message}")]
pub struct DbError {
    /// What kind of failure.
    pub kind: DbErrorKind,
    /// SQLite's message.
    pub message: String,
}

impl DbError {
    /// Classifies an error by SQLite's message, the only thing Spin's
    /// interface passes through (`Error::Io(message)`).
    pub fn from_message(message: impl Into<String>) -> Self {
        let message = message.into();
        let lower = message.to_ascii_lowercase();
        let kind = if lower.contains("database is locked") || lower.contains("busy") {
            DbErrorKind::Busy
        } else if lower.contains("constraint failed") {
            DbErrorKind::Constraint
        } else {
            DbErrorKind::Other
        };
        Self { kind, message }
    }

    /// Whether the same statement may succeed if tried again.
    pub fn is_transient(&self) -> bool {
        self.kind == DbErrorKind::Busy
    }
}

/// A SQLite connection. `execute` runs exactly one statement: Spin runs only
/// the first of a `;`-separated string and reports success, so callers must
/// never pass more than one.
pub trait Db {
    /// Runs one statement with positional (`?`) parameters.
    fn execute(&self, sql: &str, params: &[Value]) -> Result<Rows, DbError>;

    /// The [`in_transaction`] calls open on this connection, so a nested one
    /// joins the outer transaction.
    fn transaction(&self) -> &TransactionState;
}

/// What [`in_transaction`] keeps per connection: how deep it is nested, and
/// whether a nested call failed.
#[derive(Debug, Default)]
pub struct TransactionState {
    depth: Cell<u32>,
    doomed: Cell<bool>,
}

/// Runs `work` inside `BEGIN IMMEDIATE` … `COMMIT`, rolling back when it
/// fails. Spin has no transaction API: these are plain statements on one
/// connection, and a transaction left open at the end of a request is rolled
/// back by the host. Inside another `in_transaction` on the same connection
/// it joins that transaction (no statement of its own: each costs a host
/// call): its work commits with the outer one, and when it fails the outer
/// one rolls back too, even if its caller goes on after the error.
pub fn in_transaction<T, E>(db: &dyn Db, work: impl FnOnce(&dyn Db) -> Result<T, E>) -> Result<T, E>
where
    E: From<DbError>,
{
    let state = db.transaction();
    let depth = state.depth.get();
    if depth > 0 {
        state.depth.set(depth + 1);
        let result = work(db);
        state.depth.set(depth);
        if result.is_err() {
            state.doomed.set(true);
        }
        return result;
    }
    begin_with_retries(db)?;
    state.depth.set(1);
    let result = work(db);
    state.depth.set(0);
    let doomed = state.doomed.replace(false);
    let result = result.and_then(|value| {
        if doomed {
            return Err(DbError::from_message(
                "a nested transaction failed, so the transaction around it was rolled back",
            )
            .into());
        }
        db.execute("COMMIT", &[])?;
        Ok(value)
    });
    if result.is_err() {
        // The error that matters is the one already in hand; a failed
        // rollback leaves nothing committed either.
        let _ = db.execute("ROLLBACK", &[]);
    }
    result
}

/// How many times [`in_transaction`] asks again for the write lock after
/// SQLite's own busy timeout (5 s on Spin) ran out.
const BEGIN_ATTEMPTS: u32 = 4;

/// Starts a transaction. `BEGIN IMMEDIATE` takes the write lock, waiting in
/// SQLite's busy handler; a busy answer changed nothing, so under a burst of
/// writers it is asked again rather than failing the work.
fn begin_with_retries(db: &dyn Db) -> Result<(), DbError> {
    let mut attempt = 1;
    loop {
        match db.execute("BEGIN IMMEDIATE", &[]) {
            Err(error) if error.is_transient() && attempt < BEGIN_ATTEMPTS => attempt += 1,
            other => return other.map(|_| ()),
        }
    }
}

/// The database seen by one organisation. Every statement must filter on
/// `org_id = ?1`, and `?1` is always the organisation's id: a query that
/// forgets the filter is refused before it runs, so the unscoped query is
/// hard to write by accident.
pub struct OrgScoped<'a> {
    db: &'a dyn Db,
    org_id: String,
}

impl<'a> OrgScoped<'a> {
    /// `db` as organisation `org_id` sees it.
    pub fn new(db: &'a dyn Db, org_id: impl Into<String>) -> Self {
        Self {
            db,
            org_id: org_id.into(),
        }
    }

    /// The organisation's id.
    pub fn org_id(&self) -> &str {
        &self.org_id
    }

    /// Runs `sql` with `?1` bound to the organisation and `params` as `?2…`.
    pub fn execute(&self, sql: &str, params: &[Value]) -> Result<Rows, DbError> {
        if !sql.contains("org_id = ?1") {
            return Err(DbError {
                kind: DbErrorKind::Other,
                message: format!("refused a statement not scoped by `org_id = ?1`: {sql}"),
            });
        }
        let mut bound = Vec::with_capacity(params.len() + 1);
        bound.push(Value::Text(self.org_id.clone()));
        bound.extend_from_slice(params);
        self.db.execute(sql, &bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_database_is_transient() {
        let error = DbError::from_message("database is locked");
        assert_eq!(error.kind, DbErrorKind::Busy);
        assert!(error.is_transient());
    }

    #[test]
    fn constraint_failures_are_recognised_and_final() {
        let error = DbError::from_message("UNIQUE constraint failed: api_keys.key_hash");
        assert_eq!(error.kind, DbErrorKind::Constraint);
        assert!(!error.is_transient());
    }
}
