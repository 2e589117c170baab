//! What a handler can reach: storage opened lazily, migrated on first use.

use spindle_http::{ApiError, OutboundError, OutboundRequest, OutboundResponse};
use spindle_store::{Db, DbError, KvError, KvStore, migrate, now_ms};
use std::cell::{Cell, OnceCell, RefCell};
use std::rc::Rc;

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
    /// Sends like [`Backends::send`], calling `keep_alive` while it waits for
    /// the answer: once at the start, then again each time the number of
    /// milliseconds it returned has passed. A host that cannot wait on a
    /// timer and a request at once just sends.
    fn send_keeping_alive(
        &self,
        request: &OutboundRequest,
        _keep_alive: &mut dyn FnMut() -> u64,
    ) -> Result<OutboundResponse, OutboundError> {
        self.send(request)
    }
    /// Waits `ms` milliseconds (backoff between provider retries).
    fn sleep_ms(&self, ms: u64);
    /// The time now, in milliseconds since the Unix epoch: the system clock,
    /// unless a test's backends move time themselves.
    fn now_ms(&self) -> i64 {
        now_ms()
    }
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
    keep_alive: RefCell<Option<Rc<KeepAlive>>>,
}

/// Work a handler leaves for after its response has been sent.
type Deferred = Box<dyn FnOnce(&RequestContext)>;

/// What [`RequestContext::keeping_alive`] renews while work waits on the host.
struct KeepAlive {
    schedule: Cell<Renewals>,
    renew: Box<dyn Fn(&RequestContext)>,
}

/// When something held (a step's lease) is renewed: every `every_ms`,
/// counted from its last renewal.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Renewals {
    every_ms: u64,
    last_ms: i64,
}

impl Renewals {
    /// Renewals every `every_ms` (at least 1), the last one at `now`.
    fn new(every_ms: u64, now: i64) -> Self {
        Self {
            every_ms: every_ms.max(1),
            last_ms: now,
        }
    }

    /// Whether a renewal is due at `now` (then counted as made), and how
    /// many milliseconds after `now` the next one is.
    fn due(&mut self, now: i64) -> (bool, u64) {
        let elapsed = u64::try_from(now.saturating_sub(self.last_ms)).unwrap_or(0);
        if elapsed >= self.every_ms {
            self.last_ms = now;
            (true, self.every_ms)
        } else {
            (false, self.every_ms - elapsed)
        }
    }
}

impl RequestContext {
    /// A context over `backends`.
    pub fn new(backends: Box<dyn Backends>) -> Self {
        Self {
            backends,
            db: OnceCell::new(),
            kv: OnceCell::new(),
            deferred: RefCell::new(Vec::new()),
            keep_alive: RefCell::new(None),
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

    /// Sends an outgoing HTTP request through the host (renewing what
    /// [`Self::keeping_alive`] keeps while it waits).
    pub fn send(&self, request: &OutboundRequest) -> Result<OutboundResponse, OutboundError> {
        let keep_alive = self.keep_alive.borrow().clone();
        match keep_alive {
            Some(held) => self
                .backends
                .send_keeping_alive(request, &mut || self.renew_if_due(&held)),
            None => self.backends.send(request),
        }
    }

    /// Waits `ms` milliseconds (renewing what [`Self::keeping_alive`] keeps
    /// while it waits).
    pub fn sleep_ms(&self, ms: u64) {
        let keep_alive = self.keep_alive.borrow().clone();
        let Some(held) = keep_alive else {
            return self.backends.sleep_ms(ms);
        };
        let mut left = ms;
        while left > 0 {
            let part = self.renew_if_due(&held).min(left);
            self.backends.sleep_ms(part);
            left -= part;
        }
    }

    /// Runs `work`, calling `renew` every `every_ms` (measured from now)
    /// while it waits on the host: outgoing requests and sleeps. A workflow
    /// step keeps its lease this way however long its provider takes.
    pub fn keeping_alive<T>(
        &self,
        every_ms: u64,
        renew: impl Fn(&RequestContext) + 'static,
        work: impl FnOnce() -> T,
    ) -> T {
        let held = KeepAlive {
            schedule: Cell::new(Renewals::new(every_ms, now_ms())),
            renew: Box::new(renew),
        };
        let outer = self.keep_alive.replace(Some(Rc::new(held)));
        let result = work();
        self.keep_alive.replace(outer);
        result
    }

    /// Renews `held` if that is due; how long until it is due next (ms).
    fn renew_if_due(&self, held: &KeepAlive) -> u64 {
        let mut schedule = held.schedule.get();
        let (due, next_ms) = schedule.due(now_ms());
        held.schedule.set(schedule);
        if due {
            (held.renew)(self);
        }
        next_ms
    }

    /// The host's time now (ms since the Unix epoch), by which the engine
    /// measures how long an invocation has been working.
    pub fn now_ms(&self) -> i64 {
        self.backends.now_ms()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewal_is_due_once_its_interval_has_passed_since_the_last() {
        let mut renewals = Renewals::new(300, 1_000);
        assert_eq!(renewals.due(1_100), (false, 200));
        assert_eq!(renewals.due(1_300), (true, 300));
        assert_eq!(renewals.due(1_400), (false, 200));
        // A late renewal counts from when it was made.
        assert_eq!(renewals.due(2_000), (true, 300));
        assert_eq!(renewals.due(2_299), (false, 1));
        // A clock that went back waits a whole interval.
        assert_eq!(renewals.due(1_500), (false, 300));
        assert_eq!(Renewals::new(0, 0).due(0), (false, 1));
    }

    /// Records the host's sleeps, and waits for a "request" by calling its
    /// keep-alive `calls` times, really sleeping as long as it asks between.
    struct Recording {
        sleeps: Rc<RefCell<Vec<u64>>>,
        calls: usize,
    }

    impl Backends for Recording {
        fn open_db(&self) -> Result<Box<dyn Db>, DbError> {
            Err(DbError::from_message("no database"))
        }
        fn open_kv(&self) -> Result<Box<dyn KvStore>, KvError> {
            Err(KvError("no store".into()))
        }
        fn variable(&self, _: &str) -> Option<String> {
            None
        }
        fn random_bytes(&self, buffer: &mut [u8]) {
            buffer.fill(7);
        }
        fn send(&self, _: &OutboundRequest) -> Result<OutboundResponse, OutboundError> {
            Err(OutboundError::Denied("sent without keep-alive".into()))
        }
        fn send_keeping_alive(
            &self,
            _: &OutboundRequest,
            keep_alive: &mut dyn FnMut() -> u64,
        ) -> Result<OutboundResponse, OutboundError> {
            for _ in 0..self.calls {
                std::thread::sleep(std::time::Duration::from_millis(keep_alive()));
            }
            keep_alive();
            Ok(OutboundResponse {
                status: 200,
                headers: Vec::new(),
                body: Vec::new(),
            })
        }
        fn sleep_ms(&self, ms: u64) {
            self.sleeps.borrow_mut().push(ms);
        }
    }

    fn recording(calls: usize) -> (RequestContext, Rc<RefCell<Vec<u64>>>) {
        let sleeps = Rc::new(RefCell::new(Vec::new()));
        let backends = Recording {
            sleeps: sleeps.clone(),
            calls,
        };
        (RequestContext::new(Box::new(backends)), sleeps)
    }

    fn request() -> OutboundRequest {
        OutboundRequest {
            method: "GET".into(),
            url: "http://provider.test/".into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout_ms: 1_000,
            max_response_bytes: 1_024,
        }
    }

    #[test]
    fn a_request_kept_alive_renews_each_time_the_interval_passes() {
        let (ctx, _) = recording(3);
        let renewed = Rc::new(Cell::new(0));
        let counter = renewed.clone();
        let answer = ctx.keeping_alive(
            5,
            move |_| counter.set(counter.get() + 1),
            || ctx.send(&request()),
        );
        assert_eq!(answer.map(|r| r.status).ok(), Some(200));
        assert_eq!(renewed.get(), 3);
        // Outside `keeping_alive` the plain send is used.
        assert!(ctx.send(&request()).is_err());
    }

    #[test]
    fn a_sleep_kept_alive_waits_all_of_its_time_in_parts_of_at_most_the_interval() {
        let (ctx, sleeps) = recording(0);
        ctx.keeping_alive(300, |_| {}, || ctx.sleep_ms(1_000));
        let parts = sleeps.borrow_mut().drain(..).collect::<Vec<_>>();
        assert_eq!(parts.iter().sum::<u64>(), 1_000, "{parts:?}");
        assert!(parts.iter().all(|&ms| ms <= 300), "{parts:?}");
        ctx.sleep_ms(1_000);
        assert_eq!(*sleeps.borrow(), [1_000]);
    }
}
