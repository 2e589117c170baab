//! The key-value port: caches, counters and idempotency keys, nothing atomic.

use std::cell::RefCell;
use std::collections::BTreeMap;
use thiserror::Error;

/// A failed key-value operation.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("key-value: {0}")]
pub struct KvError(pub String);

/// A key-value store. Spin 2's interface has no compare-and-swap, so nothing
/// that must be atomic belongs here.
pub trait KvStore {
    /// The value at `key`, if any.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    /// Stores `value` at `key`.
    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError>;
    /// Removes `key`; removing a missing key is not an error.
    fn delete(&self, key: &str) -> Result<(), KvError>;
    /// Whether `key` holds a value.
    fn exists(&self, key: &str) -> Result<bool, KvError>;
}

/// An in-memory [`KvStore`] for native tests.
#[derive(Debug, Default)]
pub struct MemoryKv(RefCell<BTreeMap<String, Vec<u8>>>);

impl KvStore for MemoryKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.0.borrow().get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.0.borrow_mut().insert(key.to_string(), value.to_vec());
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<(), KvError> {
        self.0.borrow_mut().remove(key);
        Ok(())
    }

    fn exists(&self, key: &str) -> Result<bool, KvError> {
        Ok(self.0.borrow().contains_key(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_kv_round_trips_and_deletes() {
        let kv = MemoryKv::default();
        kv.set("a", b"1").unwrap();
        assert_eq!(kv.get("a").unwrap(), Some(b"1".to_vec()));
        assert!(kv.exists("a").unwrap());
        kv.delete("a").unwrap();
        kv.delete("missing").unwrap();
        assert_eq!(kv.get("a").unwrap(), None);
    }
}
