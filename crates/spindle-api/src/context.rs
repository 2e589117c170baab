//! What a handler can reach: storage opened lazily, migrated on first use.

use spindle_http::ApiError;
use spindle_store::{Db, DbError, KvError, KvStore, migrate};
use std::cell::OnceCell;

/// The host's storage, as a component provides it (Spin's SQLite and
/// key-value store in production, rusqlite and memory in native tests).
pub trait Backends {
    /// Opens the `default` SQLite database: a new connection each call.
    fn open_db(&self) -> Result<Box<dyn Db>, DbError>;
    /// Opens the `default` key-value store.
    fn open_kv(&self) -> Result<Box<dyn KvStore>, KvError>;
}

/// One request's access to storage. Nothing is opened until a handler asks,
/// and the database is brought to the current schema the first time it is.
pub struct RequestContext {
    backends: Box<dyn Backends>,
    db: OnceCell<Box<dyn Db>>,
    kv: OnceCell<Box<dyn KvStore>>,
}

impl RequestContext {
    /// A context over `backends`.
    pub fn new(backends: Box<dyn Backends>) -> Self {
        Self {
            backends,
            db: OnceCell::new(),
            kv: OnceCell::new(),
        }
    }

    /// The database, migrated to the current schema.
    pub fn db(&self) -> Result<&dyn Db, ApiError> {
        if let Some(db) = self.db.get() {
            return Ok(db.as_ref());
        }
        let db = self.backends.open_db()?;
        migrate(db.as_ref())?;
        Ok(self.db.get_or_init(|| db).as_ref())
    }

    /// The key-value store.
    pub fn kv(&self) -> Result<&dyn KvStore, ApiError> {
        if let Some(kv) = self.kv.get() {
            return Ok(kv.as_ref());
        }
        let kv = self.backends.open_kv()?;
        Ok(self.kv.get_or_init(|| kv).as_ref())
    }
}
