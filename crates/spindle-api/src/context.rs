//! What a handler can reach: storage opened lazily, migrated on first use.

use spindle_http::{ApiError, OutboundError, OutboundRequest, OutboundResponse};
use spindle_store::{Db, DbError, KvError, KvStore, migrate, now_ms};
use std::cell::{OnceCell, RefCell};

/// The host's storage, as a component provides it (Spin's SQLite and
/// key-value store in production, rusqlite and memory in native tests).
pub trait Backends {
    /// Opens the `default` SQLite database: a new connection each call.
    fn open_db(&self) -> Result<Box<dyn Db>, DbError>;
    /// Opens the `default` key-value store.
    fn open_kv(&self) -> Result<Box<dyn KvStore>, KvError>;
    /// A Spin variable of this component; `None` when undefined or empty.
    fn variable(&self, name: &str) -> Option<String>;
    /// Fills `buffer` from a cryptographically secure source.
    fn random_bytes(&self, buffer: &mut [u8]);
    /// Sends an outgoing HTTP request and reads its answer.
    fn send(&self, request: &OutboundRequest) -> Result<OutboundResponse, OutboundError>;
    /// Waits `ms` milliseconds (backoff between provider retries).
    fn sleep_ms(&self, ms: u64);
}

/// The shortest key Spindle accepts in a Spin variable (32 characters: a
/// random key of that length cannot be guessed, a short word can).
pub const MIN_SECRET_CHARS: usize = 32;

fn check_secret_length(name: &str, value: String) -> Result<String, ApiError> {
    if value.chars().count() < MIN_SECRET_CHARS {
        return Err(ApiError::misconfigured(
            name,
            format!("must be at least {MIN_SECRET_CHARS} characters"),
        ));
    }
    Ok(value)
}

/// One request's access to storage. Nothing is opened until a handler asks,
/// and the database is brought to the current schema the first time it is.
pub struct RequestContext {
    backends: Box<dyn Backends>,
    db: OnceCell<Box<dyn Db>>,
    kv: OnceCell<Box<dyn KvStore>>,
    deferred: RefCell<Vec<Deferred>>,
}

/// Work a handler leaves for after its response has been sent.
type Deferred = Box<dyn FnOnce(&RequestContext)>;

impl RequestContext {
    /// A context over `backends`.
    pub fn new(backends: Box<dyn Backends>) -> Self {
        Self {
            backends,
            db: OnceCell::new(),
            kv: OnceCell::new(),
            deferred: RefCell::new(Vec::new()),
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

    /// Runs `work` after the response has been sent: Spin keeps the
    /// component running until its handler returns, but a host that stops
    /// drops that work at once, so it must be safe to lose and redo.
    pub fn defer(&self, work: impl FnOnce(&RequestContext) + 'static) {
        self.deferred.borrow_mut().push(Box::new(work));
    }

    /// Runs the deferred work, including any it defers in turn; the host
    /// adapter calls this once the response is out.
    pub fn run_deferred(&self) {
        loop {
            let batch: Vec<Deferred> = self.deferred.borrow_mut().drain(..).collect();
            if batch.is_empty() {
                return;
            }
            for work in batch {
                work(self);
            }
        }
    }

    /// A setting: the Spin variable `name`, `None` when unset or empty.
    pub fn variable(&self, name: &str) -> Option<String> {
        self.backends.variable(name).filter(|v| !v.is_empty())
    }

    /// A key the app cannot work without (`admin_key`, `internal_key`): the
    /// Spin variable `name`, or 503 `misconfigured` naming it when it is unset
    /// or shorter than [`MIN_SECRET_CHARS`], which a guessable key would be.
    pub fn required_secret(&self, name: &str) -> Result<String, ApiError> {
        let value = self
            .variable(name)
            .ok_or_else(|| ApiError::misconfigured(name, "is not set"))?;
        check_secret_length(name, value)
    }

    /// An optional key (`tick_key`, `metrics_token`): `None` when unset, and
    /// 503 `misconfigured` when it is set but shorter than [`MIN_SECRET_CHARS`].
    pub fn optional_secret(&self, name: &str) -> Result<Option<String>, ApiError> {
        self.variable(name)
            .map(|value| check_secret_length(name, value))
            .transpose()
    }

    /// `N` bytes from the host's secure random source.
    pub fn random<const N: usize>(&self) -> [u8; N] {
        let mut bytes = [0u8; N];
        self.backends.random_bytes(&mut bytes);
        bytes
    }

    /// Sends an outgoing HTTP request through the host.
    pub fn send(&self, request: &OutboundRequest) -> Result<OutboundResponse, OutboundError> {
        self.backends.send(request)
    }

    /// Waits `ms` milliseconds.
    pub fn sleep_ms(&self, ms: u64) {
        self.backends.sleep_ms(ms);
    }

    /// A uniformly random number in `[0, 1)`, for jitter.
    pub fn random_unit(&self) -> f64 {
        (u64::from_le_bytes(self.random()) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A new Standard Webhooks secret: `whsec_` and 24 random bytes in base64.
    pub fn new_webhook_secret(&self) -> String {
        use base64::Engine;
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(self.random::<24>())
        )
    }

    /// A new id: a UUID v7, so ids sort by creation time.
    pub fn new_id(&self) -> String {
        let millis = u64::try_from(now_ms()).unwrap_or_default();
        uuid::Builder::from_unix_timestamp_millis(millis, &self.random())
            .into_uuid()
            .to_string()
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
