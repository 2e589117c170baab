//! What one instance sees: the Spin 2 interfaces (key-value, SQLite, variables)
//! and the WASI basics, all kept in the per-request `Store`.

use crate::app::{App, ComponentInfo};
use rusqlite::types::{Value as SqlValue, ValueRef};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::{outgoing_handler, types as http_types};
use wasmtime_wasi_http::p2::body::HostOutgoingBody;
use wasmtime_wasi_http::p2::types::{
    HostFutureIncomingResponse, HostOutgoingRequest, HostOutgoingResponse, HostResponseOutparam,
};
use wasmtime_wasi_http::{FieldMap, WasiHttp, WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/deps/spin@2.0.0",
        inline: "
            package spindle:test-host;
            world spin-imports {
                import fermyon:spin/key-value@2.0.0;
                import fermyon:spin/sqlite@2.0.0;
                import fermyon:spin/variables@2.0.0;
            }
        ",
        imports: { default: async | trappable },
        with: {
            "fermyon:spin/key-value.store": super::KvStore,
            "fermyon:spin/sqlite.connection": super::SqlConnection,
        },
    });
}
use bindings::fermyon::spin::{key_value as kv, sqlite, variables};

/// An open key-value store: a label's view of the shared key-value database.
pub struct KvStore {
    label: String,
    db: Arc<Mutex<rusqlite::Connection>>,
}

/// An open SQLite connection: each `open` gets its own, as in Spin.
pub struct SqlConnection(Arc<Mutex<rusqlite::Connection>>);

/// The data of one instance's `Store`.
pub struct HostState {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    pub(crate) outbound: crate::app::Outbound,
    component: Arc<ComponentInfo>,
    app: Arc<App>,
    /// The invocation's fault: when its side-effecting host calls start to trap.
    fault: crate::Fault,
    /// Side-effecting host calls made so far (for [`crate::Fault::AbortAtHostCall`]).
    host_calls: u32,
    response: ResponseWatch,
}

/// Watches the guest answer, so [`HostState::alive`] knows when its response
/// is complete: set (`response-outparam.set`) and its body finished.
///
/// Response bodies are told from request bodies by their resource reps, which
/// the table reuses; every call that creates an `outgoing-body` updates the
/// map, so a live rep in it is always a response body.
#[derive(Default)]
struct ResponseWatch {
    /// Live response bodies (`outgoing-body` rep) and their "finished" flag.
    bodies: HashMap<u32, Arc<AtomicBool>>,
    /// The same flag by `outgoing-response` rep, for `response-outparam.set`.
    responses: HashMap<u32, Arc<AtomicBool>>,
    /// Set with the response: its body's flag (already true without a body).
    sent: Option<Arc<AtomicBool>>,
}

impl HostState {
    pub(crate) fn new(
        app: Arc<App>,
        component: Arc<ComponentInfo>,
        fault: crate::Fault,
    ) -> HostState {
        // Like Spin: no preopened directories, no environment, no sockets; the
        // guest's stdout/stderr go to the host's.
        let wasi = WasiCtx::builder().inherit_stdout().inherit_stderr().build();
        HostState {
            table: ResourceTable::new(),
            wasi,
            http: WasiHttpCtx::new(),
            outbound: crate::app::Outbound {
                app: app.clone(),
                component: component.clone(),
            },
            component,
            app,
            fault,
            host_calls: 0,
            response: ResponseWatch::default(),
        }
    }

    /// Traps when the instance must already be dead: under
    /// [`crate::Fault::AbortAfterResponse`], once its response is complete;
    /// under [`crate::Fault::AbortAtHostCall`], from its n-th call on. Side
    /// effecting host calls (outbound HTTP, key-value, SQLite) check it first;
    /// the guest sets and finishes its response before its next call, so none
    /// gets through, whenever the host gets round to aborting its task.
    fn alive(&mut self) -> wasmtime::Result<()> {
        self.host_calls += 1;
        let complete = (self.response.sent.as_ref()).is_some_and(|f| f.load(Ordering::SeqCst));
        match self.fault {
            crate::Fault::AbortAfterResponse if complete => {
                wasmtime::bail!("instance aborted after its response (Fault::AbortAfterResponse)")
            }
            crate::Fault::AbortAtHostCall(n) if self.host_calls >= n => {
                wasmtime::bail!("instance aborted at host call {n} (Fault::AbortAtHostCall)")
            }
            _ => Ok(()),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// Adds everything the world `route` imports. The WASI part comes from
/// wasmtime-wasi's full p2 set; [`check_imports`] keeps components to the
/// interfaces Spin offers.
pub(crate) fn linker(engine: &wasmtime::Engine) -> anyhow::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    http_types::add_to_linker::<_, WasiHttp>(&mut linker, &Default::default(), HostState::http)?;
    add_outgoing_handler(&mut linker)?;
    watch_response(&mut linker)?;
    kv::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    sqlite::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    variables::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// The interfaces a Spindle component may import: the world `route`, plus wasi:io
/// which the HTTP and CLI interfaces are built on.
const ALLOWED_IMPORTS: &[&str] = &[
    "fermyon:spin/key-value@2.0.0",
    "fermyon:spin/sqlite@2.0.0",
    "fermyon:spin/variables@2.0.0",
    "wasi:http/types@0.2",
    "wasi:http/outgoing-handler@0.2",
    "wasi:cli/environment@0.2",
    "wasi:cli/exit@0.2",
    "wasi:cli/stdin@0.2",
    "wasi:cli/stdout@0.2",
    "wasi:cli/stderr@0.2",
    "wasi:cli/terminal-input@0.2",
    "wasi:cli/terminal-output@0.2",
    "wasi:cli/terminal-stdin@0.2",
    "wasi:cli/terminal-stdout@0.2",
    "wasi:cli/terminal-stderr@0.2",
    "wasi:clocks/monotonic-clock@0.2",
    "wasi:clocks/wall-clock@0.2",
    "wasi:random/random@0.2",
    "wasi:random/insecure@0.2",
    "wasi:random/insecure-seed@0.2",
    "wasi:io/error@0.2",
    "wasi:io/poll@0.2",
    "wasi:io/streams@0.2",
];

/// Refuses a component that imports anything outside the world `route`
/// (wasi:filesystem, wasi:sockets, other Spin interfaces…), naming the import.
pub(crate) fn check_imports(
    id: &str,
    component: &wasmtime::component::Component,
    engine: &wasmtime::Engine,
) -> anyhow::Result<()> {
    for (name, _) in component.component_type().imports(engine) {
        // "wasi:io/poll@0.2.6" matches "wasi:io/poll@0.2"; Spin's own interfaces match exactly.
        let ok = ALLOWED_IMPORTS
            .iter()
            .any(|a| name == *a || (a.starts_with("wasi:") && name.starts_with(&format!("{a}."))));
        if !ok {
            anyhow::bail!(
                "component {id:?} imports {name:?}, which this host (like Spindle's world `route`) does not provide"
            );
        }
    }
    Ok(())
}

/// `wasi:http/outgoing-handler#handle`, with one fix-up before wasmtime-wasi-http
/// sees the request.
///
/// A relative URL such as `/internal/ping` reaches the host with no authority (or,
/// from spin-sdk, the authority `:443`); wasmtime-wasi-http 48 fails the first
/// with `HttpRequestUriInvalid` before any hook runs. Spin treats both as self
/// requests, the same as host `self.alt`; so an authority without a host
/// becomes `self.alt` here and [`crate::app::Outbound`] handles them alike.
fn add_outgoing_handler(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    type Args = (
        Resource<HostOutgoingRequest>,
        Option<Resource<http_types::RequestOptions>>,
    );
    type Ret = (Result<Resource<HostFutureIncomingResponse>, http_types::ErrorCode>,);
    let mut handler = linker.instance("wasi:http/outgoing-handler@0.2.12")?;
    handler.func_wrap(
        "handle",
        |mut store, (request, options): Args| -> wasmtime::Result<Ret> {
            let state: &mut HostState = store.data_mut();
            state.alive()?;
            let mut view = state.http();
            let req = view.table.get_mut(&request)?;
            // spin-sdk sends a relative URL as authority ":443" (empty host); others send none.
            if req
                .authority
                .as_deref()
                .is_none_or(|a| a.is_empty() || a.starts_with(':'))
            {
                req.authority = Some(crate::app::SELF_ALT.to_string());
            }
            match outgoing_handler::Host::handle(&mut view, request, options) {
                Ok(future) => Ok((Ok(future),)),
                Err(e) => Ok((Err(http_types::Host::convert_error_code(&mut view, e)?),)),
            }
        },
    )?;
    Ok(())
}

/// Wraps the `wasi:http/types` functions that make, finish and send a response
/// body, to keep [`ResponseWatch`] up to date; each then does what
/// wasmtime-wasi-http does.
fn watch_response(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    let mut types = linker.instance("wasi:http/types@0.2.12")?;
    types.func_wrap(
        "[method]outgoing-response.body",
        |mut store, (resp,): (Resource<HostOutgoingResponse>,)| {
            let state: &mut HostState = store.data_mut();
            let resp_rep = resp.rep();
            let body = http_types::HostOutgoingResponse::body(&mut state.http(), resp)?;
            if let Ok(body) = &body {
                let finished = Arc::new(AtomicBool::new(false));
                let watch = &mut state.response;
                watch.bodies.insert(body.rep(), finished.clone());
                watch.responses.insert(resp_rep, finished);
            }
            Ok((body,))
        },
    )?;
    types.func_wrap(
        "[method]outgoing-request.body",
        |mut store, (req,): (Resource<HostOutgoingRequest>,)| {
            let state: &mut HostState = store.data_mut();
            let body = http_types::HostOutgoingRequest::body(&mut state.http(), req)?;
            if let Ok(body) = &body {
                // Its rep may be that of a response body dropped unfinished.
                state.response.bodies.remove(&body.rep());
            }
            Ok((body,))
        },
    )?;
    type FinishArgs = (Resource<HostOutgoingBody>, Option<Resource<FieldMap>>);
    types.func_wrap(
        "[static]outgoing-body.finish",
        |mut store, (body, trailers): FinishArgs| {
            let state: &mut HostState = store.data_mut();
            let finished = state.response.bodies.remove(&body.rep());
            let mut view = state.http();
            match http_types::HostOutgoingBody::finish(&mut view, body, trailers) {
                Ok(()) => {
                    if let Some(f) = finished {
                        f.store(true, Ordering::SeqCst);
                    }
                    Ok((Ok(()),))
                }
                Err(e) => Ok((Err(http_types::Host::convert_error_code(&mut view, e)?),)),
            }
        },
    )?;
    type SetArgs = (
        Resource<HostResponseOutparam>,
        Result<Resource<HostOutgoingResponse>, http_types::ErrorCode>,
    );
    types.func_wrap(
        "[static]response-outparam.set",
        |mut store, (param, resp): SetArgs| {
            let state: &mut HostState = store.data_mut();
            let finished = match &resp {
                // A body taken from it: complete once that body is finished.
                Ok(r) if state.table.get(r)?.body.is_some() => {
                    state.response.responses.remove(&r.rep())
                }
                // No body (empty) or an error (Spin's 500): complete now.
                _ => None,
            };
            state.response.sent = Some(finished.unwrap_or_else(|| Arc::new(AtomicBool::new(true))));
            http_types::HostResponseOutparam::set(&mut state.http(), param, resp)
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

// ---- fermyon:spin/variables@2.0.0 ----

impl variables::Host for HostState {
    async fn get(&mut self, name: String) -> wasmtime::Result<Result<String, variables::Error>> {
        if let Err(msg) = crate::variables::validate_name(&name) {
            return Ok(Err(variables::Error::InvalidName(msg)));
        }
        // A component sees only what its own `[component.<id>.variables]` maps.
        let id = &self.component.id;
        Ok(self
            .component
            .variables
            .get(&name)
            .cloned()
            .ok_or_else(|| variables::Error::Undefined(format!("no variable for {id:?}.{name:?}"))))
    }
}

// ---- fermyon:spin/key-value@2.0.0 ----

/// Runs blocking SQLite work off the async threads.
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> wasmtime::Result<R> {
    Ok(tokio::task::spawn_blocking(f).await?)
}

fn kv_err(e: rusqlite::Error) -> kv::Error {
    kv::Error::Other(e.to_string())
}

impl kv::Host for HostState {}

impl kv::HostStore for HostState {
    async fn open(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<KvStore>, kv::Error>> {
        self.alive()?;
        if !self.component.key_value_stores.contains(&label) {
            return Ok(Err(kv::Error::AccessDenied));
        }
        // Only `default` exists (startup refuses any other declared label).
        if label != "default" {
            return Ok(Err(kv::Error::NoSuchStore));
        }
        let db = self.app.kv.clone();
        Ok(Ok(self.table.push(KvStore { label, db })?))
    }

    async fn get(
        &mut self,
        store: Resource<KvStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, kv::Error>> {
        self.alive()?;
        let (db, label) = self.kv(&store)?;
        blocking(move || {
            let db = db.lock().unwrap();
            let mut st = db
                .prepare_cached("SELECT value FROM spin_key_value WHERE store=$1 AND key=$2")
                .map_err(kv_err)?;
            let mut rows = st.query([&label, &key]).map_err(kv_err)?;
            match rows.next().map_err(kv_err)? {
                Some(row) => Ok(Some(row.get::<_, Vec<u8>>(0).map_err(kv_err)?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn set(
        &mut self,
        store: Resource<KvStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), kv::Error>> {
        self.alive()?;
        let (db, label) = self.kv(&store)?;
        blocking(move || {
            db.lock()
                .unwrap()
                .prepare_cached(
                    "INSERT INTO spin_key_value (store, key, value) VALUES ($1, $2, $3)
                     ON CONFLICT(store, key) DO UPDATE SET value=$3",
                )
                .and_then(|mut st| st.execute(rusqlite::params![label, key, value]))
                .map(drop)
                .map_err(kv_err)
        })
        .await
    }

    async fn delete(
        &mut self,
        store: Resource<KvStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), kv::Error>> {
        self.alive()?;
        let (db, label) = self.kv(&store)?;
        blocking(move || {
            db.lock()
                .unwrap()
                .prepare_cached("DELETE FROM spin_key_value WHERE store=$1 AND key=$2")
                .and_then(|mut st| st.execute([label, key]))
                .map(drop)
                .map_err(kv_err)
        })
        .await
    }

    async fn exists(
        &mut self,
        store: Resource<KvStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, kv::Error>> {
        self.alive()?;
        let (db, label) = self.kv(&store)?;
        blocking(move || {
            db.lock()
                .unwrap()
                .prepare_cached("SELECT 1 FROM spin_key_value WHERE store=$1 AND key=$2 LIMIT 1")
                .and_then(|mut st| st.exists([label, key]))
                .map_err(kv_err)
        })
        .await
    }

    async fn get_keys(
        &mut self,
        store: Resource<KvStore>,
    ) -> wasmtime::Result<Result<Vec<String>, kv::Error>> {
        self.alive()?;
        let (db, label) = self.kv(&store)?;
        blocking(move || {
            let db = db.lock().unwrap();
            let mut st = db
                .prepare_cached("SELECT key FROM spin_key_value WHERE store=$1")
                .map_err(kv_err)?;
            let keys = st
                .query_map([label], |row| row.get::<_, String>(0))
                .map_err(kv_err)?;
            keys.collect::<Result<Vec<_>, _>>().map_err(kv_err)
        })
        .await
    }

    async fn drop(&mut self, store: Resource<KvStore>) -> wasmtime::Result<()> {
        self.alive()?;
        self.table.delete(store)?;
        Ok(())
    }
}

impl HostState {
    fn kv(
        &self,
        store: &Resource<KvStore>,
    ) -> wasmtime::Result<(Arc<Mutex<rusqlite::Connection>>, String)> {
        let s = self.table.get(store)?;
        Ok((s.db.clone(), s.label.clone()))
    }
}

// ---- fermyon:spin/sqlite@2.0.0 ----

fn io_err(e: impl std::fmt::Display) -> sqlite::Error {
    sqlite::Error::Io(e.to_string())
}

impl sqlite::Host for HostState {}

impl sqlite::HostConnection for HostState {
    async fn open(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<SqlConnection>, sqlite::Error>> {
        self.alive()?;
        if !self.component.sqlite_databases.contains(&label) {
            return Ok(Err(sqlite::Error::AccessDenied));
        }
        if label != "default" {
            return Ok(Err(sqlite::Error::NoSuchDatabase));
        }
        // A fresh connection per `open`: rusqlite's defaults are Spin's (rollback
        // journal, 5 s busy timeout), so a second connection in the same request
        // does not see the first one's uncommitted rows.
        let path = self.app.sqlite_path.clone();
        let conn = match blocking(move || rusqlite::Connection::open(path)).await? {
            Ok(c) => c,
            Err(e) => return Ok(Err(io_err(e))),
        };
        Ok(Ok(self
            .table
            .push(SqlConnection(Arc::new(Mutex::new(conn))))?))
    }

    async fn execute(
        &mut self,
        conn: Resource<SqlConnection>,
        statement: String,
        parameters: Vec<sqlite::Value>,
    ) -> wasmtime::Result<Result<sqlite::QueryResult, sqlite::Error>> {
        self.alive()?;
        let db = match self.table.get(&conn) {
            Ok(c) => c.0.clone(),
            Err(_) => return Ok(Err(sqlite::Error::InvalidConnection)),
        };
        let trace = *SQL_TRACE;
        blocking(move || {
            let started = std::time::Instant::now();
            let result = execute(&db.lock().unwrap(), &statement, parameters);
            if trace {
                let head: String = statement.split_whitespace().collect::<Vec<_>>().join(" ");
                let head: String = head.chars().take(90).collect();
                let at = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros());
                eprintln!("sqlite {} {at} {head}", started.elapsed().as_micros());
            }
            result
        })
        .await
    }

    async fn drop(&mut self, conn: Resource<SqlConnection>) -> wasmtime::Result<()> {
        self.alive()?;
        // Closing the connection rolls back a transaction the guest left open.
        self.table.delete(conn)?;
        Ok(())
    }
}

/// `SPIN_TEST_HOST_SQL_TRACE` set: print each statement with its time, a
/// profiling aid for the benchmark. Read once, not on every statement.
static SQL_TRACE: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var_os("SPIN_TEST_HOST_SQL_TRACE").is_some());

/// Runs ONE statement, as Spin does: only the first statement of the string is
/// compiled, the rest is ignored (even if it is not SQL), and the call still
/// answers Ok. So `"BEGIN; INSERT …; COMMIT"` only begins a transaction.
fn execute(
    db: &rusqlite::Connection,
    statement: &str,
    parameters: Vec<sqlite::Value>,
) -> Result<sqlite::QueryResult, sqlite::Error> {
    use rusqlite::fallible_iterator::FallibleIterator;
    // `prepare` would refuse a tail ("Multiple statements provided"); a `Batch`
    // prepares statements one at a time, so taking only its first leaves the
    // rest unparsed, which is what Spin's (older) rusqlite did.
    let Some(mut st) = rusqlite::Batch::new(db, statement).next().map_err(io_err)? else {
        return Ok(sqlite::QueryResult {
            columns: vec![],
            rows: vec![],
        });
    };
    let columns: Vec<String> = st.column_names().into_iter().map(String::from).collect();
    let params = parameters.into_iter().map(|v| match v {
        sqlite::Value::Integer(i) => SqlValue::Integer(i),
        sqlite::Value::Real(r) => SqlValue::Real(r),
        sqlite::Value::Text(t) => SqlValue::Text(t),
        sqlite::Value::Blob(b) => SqlValue::Blob(b),
        sqlite::Value::Null => SqlValue::Null,
    });
    let mut rows = st
        .query(rusqlite::params_from_iter(params))
        .map_err(io_err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(io_err)? {
        let values = (0..columns.len())
            .map(|i| {
                Ok(match row.get_ref(i)? {
                    ValueRef::Null => sqlite::Value::Null,
                    ValueRef::Integer(i) => sqlite::Value::Integer(i),
                    ValueRef::Real(r) => sqlite::Value::Real(r),
                    ValueRef::Text(t) => {
                        sqlite::Value::Text(String::from_utf8_lossy(t).into_owned())
                    }
                    ValueRef::Blob(b) => sqlite::Value::Blob(b.to_vec()),
                })
            })
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(io_err)?;
        out.push(sqlite::RowResult { values });
    }
    Ok(sqlite::QueryResult { columns, rows: out })
}

/// Opens the shared key-value database and creates Spin's table.
pub(crate) fn open_kv(path: &std::path::Path) -> anyhow::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.execute(
        "CREATE TABLE IF NOT EXISTS spin_key_value (
            store TEXT NOT NULL,
            key   TEXT NOT NULL,
            value BLOB NOT NULL,
            PRIMARY KEY (store, key)
        )",
        [],
    )?;
    Ok(conn)
}
