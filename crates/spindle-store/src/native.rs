//! A [`Db`] on rusqlite that behaves like Spin's SQLite, for native tests.

use crate::db::{Db, DbError, Rows, TransactionState, Value};
use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::types::ValueRef;
use rusqlite::{Batch, Connection};
use std::path::Path;
use std::time::Duration;

/// A SQLite connection with Spin's semantics: only the first statement of a
/// string runs, and the busy timeout is Spin's 5 s.
pub struct RusqliteDb(Connection, TransactionState);

impl RusqliteDb {
    /// Opens (or creates) the database file at `path`, a new connection each call.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let connection = Connection::open(path).map_err(to_db_error)?;
        connection
            .busy_timeout(Duration::from_secs(5))
            .map_err(to_db_error)?;
        Ok(Self(connection, TransactionState::default()))
    }

    /// A private in-memory database.
    pub fn memory() -> Self {
        // Opening an in-memory database only fails when SQLite cannot allocate.
        Self(
            Connection::open_in_memory().expect("in-memory SQLite"),
            TransactionState::default(),
        )
    }
}

impl Db for RusqliteDb {
    fn execute(&self, sql: &str, params: &[Value]) -> Result<Rows, DbError> {
        // `Batch` prepares one statement at a time; taking only the first
        // reproduces Spin, which ignores the rest of the string.
        let mut batch = Batch::new(&self.0, sql);
        let Some(mut statement) = batch.next().map_err(to_db_error)? else {
            return Ok(Rows::default());
        };
        let columns: Vec<String> = statement
            .column_names()
            .into_iter()
            .map(String::from)
            .collect();
        let params: Vec<rusqlite::types::Value> = params.iter().map(to_sql).collect();
        let mut cursor = statement
            .query(rusqlite::params_from_iter(params))
            .map_err(to_db_error)?;
        let mut rows = Vec::new();
        while let Some(row) = cursor.next().map_err(to_db_error)? {
            let values = (0..columns.len())
                .map(|i| row.get_ref(i).map(from_sql))
                .collect::<Result<Vec<_>, _>>()
                .map_err(to_db_error)?;
            rows.push(values);
        }
        Ok(Rows { columns, rows })
    }

    fn transaction(&self) -> &TransactionState {
        &self.1
    }
}

fn to_sql(value: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as Sql;
    match value {
        Value::Null => Sql::Null,
        Value::Integer(i) => Sql::Integer(*i),
        Value::Real(r) => Sql::Real(*r),
        Value::Text(s) => Sql::Text(s.clone()),
        Value::Blob(b) => Sql::Blob(b.clone()),
    }
}

fn from_sql(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(r) => Value::Real(r),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

fn to_db_error(error: rusqlite::Error) -> DbError {
    DbError::from_message(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{OrgScoped, in_transaction};

    #[test]
    fn only_the_first_statement_runs_like_spin() {
        let db = RusqliteDb::memory();
        db.execute("CREATE TABLE t (n INTEGER)", &[]).unwrap();
        db.execute("INSERT INTO t VALUES (10); INSERT INTO t VALUES (11)", &[])
            .unwrap();
        let rows = db.execute("SELECT n FROM t; garbage", &[]).unwrap();
        assert_eq!(rows.rows, vec![vec![Value::Integer(10)]]);
    }

    #[test]
    fn org_scoped_queries_see_only_their_organisation() {
        let db = RusqliteDb::memory();
        db.execute("CREATE TABLE t (org_id TEXT, n INTEGER)", &[])
            .unwrap();
        db.execute("INSERT INTO t VALUES ('a', 1), ('b', 2)", &[])
            .unwrap();
        let scoped = OrgScoped::new(&db, "a");
        let rows = scoped
            .execute(
                "SELECT n FROM t WHERE org_id = ?1 AND n > ?2",
                &[Value::Integer(0)],
            )
            .unwrap();
        assert_eq!(rows.rows, vec![vec![Value::Integer(1)]]);
    }

    #[test]
    fn org_scoped_refuses_an_unscoped_statement() {
        let db = RusqliteDb::memory();
        db.execute("CREATE TABLE t (org_id TEXT, n INTEGER)", &[])
            .unwrap();
        let error = OrgScoped::new(&db, "a")
            .execute("DELETE FROM t", &[])
            .unwrap_err();
        assert!(error.message.contains("not scoped"), "{error}");
    }

    fn count(db: &RusqliteDb) -> i64 {
        db.execute("SELECT COUNT(*) FROM t", &[])
            .unwrap()
            .scalar_i64()
            .unwrap()
    }

    #[test]
    fn a_nested_failure_rolls_back_the_whole_transaction_even_when_swallowed() {
        let db = RusqliteDb::memory();
        db.execute("CREATE TABLE t (n INTEGER)", &[]).unwrap();
        let outer = in_transaction(&db, |db| -> Result<(), DbError> {
            db.execute("INSERT INTO t VALUES (1)", &[])?;
            let inner = in_transaction(db, |db| -> Result<(), DbError> {
                db.execute("INSERT INTO t VALUES (2)", &[])?;
                Err(DbError::from_message("refused"))
            });
            assert!(inner.is_err());
            Ok(())
        });
        assert!(
            outer.is_err(),
            "the outer transaction must not commit half of it"
        );
        assert_eq!(count(&db), 0);
        // The next transaction starts clean.
        in_transaction(&db, |db| db.execute("INSERT INTO t VALUES (3)", &[])).unwrap();
        assert_eq!(count(&db), 1);
    }

    #[test]
    fn an_outer_failure_undoes_the_nested_work_it_kept() {
        let db = RusqliteDb::memory();
        db.execute("CREATE TABLE t (n INTEGER)", &[]).unwrap();
        let outer = in_transaction(&db, |db| -> Result<(), DbError> {
            in_transaction(db, |db| db.execute("INSERT INTO t VALUES (1)", &[]))?;
            Err(DbError::from_message("refused"))
        });
        assert!(outer.is_err());
        assert_eq!(count(&db), 0);
        // The connection is usable and outside any transaction again.
        in_transaction(&db, |db| db.execute("INSERT INTO t VALUES (2)", &[])).unwrap();
        assert_eq!(count(&db), 1);
    }

    #[test]
    fn values_round_trip() {
        let db = RusqliteDb::memory();
        let rows = db
            .execute(
                "SELECT ?, ?, ?, ?, ?",
                &[
                    Value::Null,
                    Value::Integer(-3),
                    Value::Real(1.5),
                    Value::from("x"),
                    Value::Blob(vec![0, 1]),
                ],
            )
            .unwrap();
        assert_eq!(
            rows.rows[0],
            vec![
                Value::Null,
                Value::Integer(-3),
                Value::Real(1.5),
                Value::from("x"),
                Value::Blob(vec![0, 1])
            ]
        );
    }
}
