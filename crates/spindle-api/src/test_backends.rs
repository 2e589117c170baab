//! A native stand-in for Spin in unit tests: real SQLite (in memory, or one
//! file every context opens, like instances of one app), an in-memory
//! key-value store that can be down, fixed variables, and no network.

use crate::context::Backends;
use spindle_http::{OutboundError, OutboundRequest, OutboundResponse};
use spindle_store::{Db, DbError, KvError, KvStore, MemoryKv, RusqliteDb};
use std::path::PathBuf;

/// The backends of a unit test's [`crate::RequestContext`].
#[derive(Default)]
pub(crate) struct TestBackends {
    db_file: Option<PathBuf>,
    variables: Vec<(&'static str, String)>,
    kv_down: bool,
}

impl TestBackends {
    /// SQLite in memory: each context gets a database of its own.
    pub(crate) fn memory() -> Self {
        Self::default()
    }

    /// SQLite in `path`, shared by every context opened on it.
    pub(crate) fn file(path: PathBuf) -> Self {
        Self {
            db_file: Some(path),
            ..Self::default()
        }
    }

    /// With Spin variable `name` set to `value`.
    pub(crate) fn variable(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.variables.push((name, value.into()));
        self
    }

    /// With a key-value store that cannot be opened.
    pub(crate) fn kv_down(mut self) -> Self {
        self.kv_down = true;
        self
    }
}

impl Backends for TestBackends {
    fn open_db(&self) -> Result<Box<dyn Db>, DbError> {
        Ok(match &self.db_file {
            Some(path) => Box::new(RusqliteDb::open(path)?),
            None => Box::new(RusqliteDb::memory()),
        })
    }

    fn open_kv(&self) -> Result<Box<dyn KvStore>, KvError> {
        if self.kv_down {
            return Err(KvError("no such store".into()));
        }
        Ok(Box::new(MemoryKv::default()))
    }

    fn variable(&self, name: &str) -> Option<String> {
        self.variables
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    }

    fn random_bytes(&self, buffer: &mut [u8]) {
        getrandom::fill(buffer).expect("the OS's random source");
    }

    fn send(&self, _: &OutboundRequest) -> Result<OutboundResponse, OutboundError> {
        Err(OutboundError::Denied("no network in unit tests".into()))
    }

    fn sleep_ms(&self, _: u64) {}
}
