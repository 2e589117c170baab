//! Loading an app and serving its requests: one fresh instance per request, as Spin does.

use crate::allowed_hosts::AllowedHosts;
use crate::host::{self, HostState};
use crate::manifest::Manifest;
use crate::routes::{RouteMatch, Router};
use crate::{Fault, FaultPlan, HostOptions, Invocation};
use anyhow::{Context, bail};
use bytes::Bytes;
use http::header::{HOST, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context as TaskContext, Poll};
use tokio::sync::{oneshot, watch};
use tokio::task::{AbortHandle, JoinHandle};
use wasmtime::component::Component;
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// The host Spin treats as "this app" in an outbound URL; relative URLs become it too.
pub(crate) const SELF_ALT: &str = "self.alt";

/// A component of the app, compiled and pre-instantiated once.
pub(crate) struct ComponentInfo {
    pub id: String,
    pre: ProxyPre<HostState>,
    pub allowed: AllowedHosts,
    pub key_value_stores: Vec<String>,
    pub sqlite_databases: Vec<String>,
    /// `[component.<id>.variables]`, resolved at startup.
    pub variables: BTreeMap<String, String>,
}

/// A loaded app and the state shared by its requests.
pub(crate) struct App {
    engine: Engine,
    router: Router,
    components: HashMap<String, Arc<ComponentInfo>>,
    /// The `default` key-value store (Spin: `.spin/sqlite_key_value.db`).
    pub kv: Arc<Mutex<rusqlite::Connection>>,
    /// The `default` SQLite database (Spin: `.spin/sqlite_db.db`).
    pub sqlite_path: PathBuf,
    addr: OnceLock<SocketAddr>,
    faults: Option<Arc<dyn FaultPlan>>,
    seq: AtomicU64,
    /// How many invocations are running, background work included.
    inflight: watch::Sender<usize>,
    /// Running instances by invocation number, so shutdown can drop them.
    running: Mutex<HashMap<u64, JoinHandle<()>>>,
    /// Set once [`App::abort_all`] began: the host is going away.
    stopped: AtomicBool,
}

/// The one engine of every app in this process, and its epoch clock.
///
/// Spin keeps compiled components in wasmtime's cache, so a second `spin up`
/// of the same app starts at once; sharing the engine lets [`compile`] do the
/// same here (a test binary starts many apps from the same five components).
fn shared_engine() -> anyhow::Result<Engine> {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    if let Some(engine) = ENGINE.get() {
        return Ok(engine.clone());
    }
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    // Epoch ticks make a busy guest yield, so one CPU-bound handler cannot
    // starve the others and an aborted instance stops promptly.
    config.epoch_interruption(true);
    let engine = Engine::new(&config)?;
    Ok(ENGINE
        .get_or_init(|| {
            let clock = engine.clone();
            std::thread::spawn(move || {
                loop {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    clock.increment_epoch();
                }
            });
            engine
        })
        .clone())
}

/// `path` compiled with the shared engine, once per version of the file (its
/// length and modification time), as Spin's compilation cache keys on content.
fn compile(engine: &Engine, path: &std::path::Path) -> anyhow::Result<Component> {
    type Version = (PathBuf, u64, std::time::SystemTime);
    static COMPILED: OnceLock<Mutex<HashMap<Version, Component>>> = OnceLock::new();
    let metadata = std::fs::metadata(path)?;
    let version = (path.to_path_buf(), metadata.len(), metadata.modified()?);
    let cache = COMPILED.get_or_init(Default::default);
    if let Some(component) = cache.lock().unwrap().get(&version) {
        return Ok(component.clone());
    }
    let component = Component::from_file(engine, path)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot compile {}", path.display()))?;
    cache.lock().unwrap().insert(version, component.clone());
    Ok(component)
}

impl App {
    /// Reads the manifest, resolves variables and compiles every component; refuses
    /// to start where Spin would.
    pub fn load(opts: &HostOptions) -> anyhow::Result<App> {
        let manifest = Manifest::load(&opts.manifest)?;
        let vars = crate::variables::resolve_app(&manifest, &opts.variables)?;

        let engine = shared_engine()?;
        let linker = host::linker(&engine)?;

        let mut components = HashMap::new();
        for (id, decl) in &manifest.component {
            // Spin refuses to start when a component declares a store or database
            // that has no runtime configuration; locally only `default` has one.
            for label in decl.key_value_stores.iter().chain(&decl.sqlite_databases) {
                if label != "default" {
                    bail!(
                        "component {id:?} uses store or database {label:?}, which is not configured (only \"default\" is)"
                    );
                }
            }
            let lookup = |name: &str| {
                vars.get(name)
                    .cloned()
                    .with_context(|| format!("unknown variable {name:?}"))
            };
            let hosts = decl
                .allowed_outbound_hosts
                .iter()
                .map(|h| crate::variables::expand(h, &lookup))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let allowed =
                AllowedHosts::parse(&hosts).with_context(|| format!("component {id:?}"))?;
            let variables = crate::variables::resolve_component(id, decl, &vars)?;

            if !decl.source.exists() {
                bail!(
                    "component {id:?}: source {} does not exist (build it first)",
                    decl.source.display()
                );
            }
            let component = compile(&engine, &decl.source)?;
            host::check_imports(id, &component, &engine)?;
            let pre = ProxyPre::new(linker.instantiate_pre(&component)?)
                .map_err(anyhow::Error::from)
                .with_context(|| {
                    format!("component {id:?} does not export wasi:http/incoming-handler")
                })?;
            let info = ComponentInfo {
                id: id.clone(),
                pre,
                allowed,
                key_value_stores: decl.key_value_stores.clone(),
                sqlite_databases: decl.sqlite_databases.clone(),
                variables,
            };
            components.insert(id.clone(), Arc::new(info));
        }

        let router = Router::build(
            manifest
                .trigger
                .http
                .iter()
                .map(|t| (t.route.as_str(), t.component.as_str())),
        )?;
        std::fs::create_dir_all(&opts.state_dir)
            .with_context(|| format!("cannot create state dir {}", opts.state_dir.display()))?;
        let kv = host::open_kv(&opts.state_dir.join("sqlite_key_value.db"))?;
        Ok(App {
            engine,
            router,
            components,
            kv: Arc::new(Mutex::new(kv)),
            sqlite_path: opts.state_dir.join("sqlite_db.db"),
            addr: OnceLock::new(),
            faults: opts.faults.clone(),
            seq: AtomicU64::new(0),
            inflight: watch::Sender::new(0),
            running: Mutex::new(HashMap::new()),
            stopped: AtomicBool::new(false),
        })
    }

    pub fn set_addr(&self, addr: SocketAddr) {
        let _ = self.addr.set(addr);
    }

    fn addr(&self) -> SocketAddr {
        *self.addr.get().expect("address is set before serving")
    }

    /// How many invocations have been routed to a component so far.
    pub fn invocations(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    /// Resolves once no invocation (background work included) is running.
    pub async fn wait_idle(&self) {
        let mut rx = self.inflight.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Drops every running instance at once, as a stopping Spin does.
    pub async fn abort_all(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let tasks: Vec<_> = self
            .running
            .lock()
            .unwrap()
            .drain()
            .map(|(_, t)| t)
            .collect();
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Serves one request, from a client (`is_self == false`) or a self request.
    ///
    /// Like Spin, the response goes back as soon as the component sets it (its
    /// body streams while the guest writes it) and the instance runs on until its
    /// handler returns. An `Err` means "no response at all" (a failed connection).
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<WasiBody>,
        client: SocketAddr,
        is_self: bool,
    ) -> Result<Response<WasiBody>, Error> {
        // A request on a connection kept open from before a kill reaches no Spin.
        if self.stopped.load(Ordering::SeqCst) {
            return Err(Error::ConnectionTerminated);
        }
        let Some(route) = self.router.route(req.uri().path()) else {
            // Spin's 404 for a path no route matches: empty body.
            return Ok(status(StatusCode::NOT_FOUND));
        };
        let component = self.components[&route.component].clone();
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let invocation = Invocation {
            seq,
            component: route.component.clone(),
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            is_self_request: is_self,
        };
        let fault = self
            .faults
            .as_ref()
            .map_or(Fault::None, |f| f.fault_for(&invocation));
        if fault == Fault::AbortBeforeResponse {
            return Err(Error::ConnectionTerminated);
        }
        let req = self.spin_request(req, &route, client)?;

        let busy = Busy::new(self.clone(), seq);
        let mut store = Store::new(
            &self.engine,
            HostState::new(self.clone(), component.clone(), fault),
        );
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        let (tx, rx) = oneshot::channel();
        let mut http = store.data_mut().http();
        let incoming = http
            .new_incoming_request(Scheme::Http, req)
            .map_err(internal)?;
        let outparam = http.new_response_outparam(tx).map_err(internal)?;
        let abort = {
            // Held while spawning so the task cannot finish (and unregister) first.
            let mut running = self.running.lock().unwrap();
            let task = tokio::spawn(async move {
                let _busy = busy;
                let run = async {
                    let proxy = component.pre.instantiate_async(&mut store).await?;
                    proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut store, incoming, outparam)
                        .await
                };
                if let Err(e) = run.await {
                    eprintln!("spin-test-host: component {:?} failed: {e:?}", component.id);
                }
            });
            let abort = task.abort_handle();
            running.insert(seq, task);
            abort
        };
        match rx.await {
            Ok(Ok(resp)) if fault == Fault::AbortAfterResponse => Ok(resp.map(|body| {
                KillWhenSent {
                    body,
                    kill: Some(abort),
                }
                .boxed_unsync()
            })),
            Ok(Ok(resp)) => Ok(resp),
            // The guest answered with an error code, trapped, or returned without a
            // response: Spin answers 500 with an empty body.
            Ok(Err(code)) => {
                eprintln!(
                    "spin-test-host: component {:?} answered error {code:?}",
                    route.component
                );
                Ok(status(StatusCode::INTERNAL_SERVER_ERROR))
            }
            // A killed Spin answers nothing: its connections just close.
            Err(_) if self.stopped.load(Ordering::SeqCst) => Err(Error::ConnectionTerminated),
            Err(_) => Ok(status(StatusCode::INTERNAL_SERVER_ERROR)),
        }
    }

    /// Gives the request the shape Spin gives it: an absolute URI whose authority is
    /// the `Host` header, no `host` header, and the `spin-*` headers.
    fn spin_request(
        &self,
        req: Request<WasiBody>,
        route: &RouteMatch,
        client: SocketAddr,
    ) -> Result<Request<WasiBody>, Error> {
        let (mut parts, body) = req.into_parts();
        let host = match parts.headers.remove(HOST) {
            Some(h) => h
                .to_str()
                .map_err(|_| Error::HttpRequestUriInvalid)?
                .to_string(),
            None => self.addr().to_string(),
        };
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        parts.uri = Uri::builder()
            .scheme("http")
            .authority(host.as_str())
            .path_and_query(path_and_query.as_str())
            .build()
            .map_err(|_| Error::HttpRequestUriInvalid)?;
        let mut headers = vec![
            (
                "spin-full-url".to_string(),
                format!("http://{host}{path_and_query}"),
            ),
            ("spin-path-info".to_string(), route.path_info.clone()),
            ("spin-matched-route".to_string(), route.raw_route.clone()),
            ("spin-base-path".to_string(), "/".to_string()),
            (
                "spin-raw-component-route".to_string(),
                route.raw_route.clone(),
            ),
            (
                "spin-component-route".to_string(),
                route.component_route.clone(),
            ),
            ("spin-client-addr".to_string(), client.to_string()),
        ];
        for (name, value) in &route.params {
            headers.push((
                format!("spin-path-match-{}", name.to_ascii_lowercase()),
                value.clone(),
            ));
        }
        for (name, value) in headers {
            let name = HeaderName::try_from(name).map_err(|_| Error::HttpRequestUriInvalid)?;
            let value = HeaderValue::try_from(value).map_err(|_| Error::HttpRequestUriInvalid)?;
            parts.headers.insert(name, value);
        }
        Ok(Request::from_parts(parts, body))
    }

    /// A self request: served by this app's router in-process. It arrives as if
    /// sent to the listen address (that is the authority and `spin-full-url`),
    /// from a loopback client, with every header the caller set.
    async fn self_request(
        self: Arc<Self>,
        mut req: Request<WasiBody>,
    ) -> Result<Response<WasiBody>, Error> {
        let addr = self.addr().to_string();
        let path_and_query = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        *req.uri_mut() = Uri::builder()
            .scheme("http")
            .authority(addr.as_str())
            .path_and_query(path_and_query.as_str())
            .build()
            .map_err(|_| Error::HttpRequestUriInvalid)?;
        req.headers_mut().insert(
            HOST,
            HeaderValue::try_from(addr).map_err(|_| Error::HttpRequestUriInvalid)?,
        );
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        self.handle(req, loopback, true).await
    }
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::InternalError(Some(e.to_string()))
}

/// An empty response with `code`, like the ones Spin makes itself.
fn status(code: StatusCode) -> Response<WasiBody> {
    let mut resp = Response::new(
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = code;
    resp
}

/// Counts an invocation as running from its start until its instance is gone.
struct Busy {
    app: Arc<App>,
    seq: u64,
}

impl Busy {
    fn new(app: Arc<App>, seq: u64) -> Busy {
        app.inflight.send_modify(|n| *n += 1);
        Busy { app, seq }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.app.running.lock().unwrap().remove(&self.seq);
        self.app.inflight.send_modify(|n| *n -= 1);
    }
}

/// A response body that drops its instance once the body has been sent (or
/// abandoned): [`Fault::AbortAfterResponse`]. That comes after the guest may
/// have run on; `HostState::alive` is what stops its side effects at once.
struct KillWhenSent {
    body: WasiBody,
    kill: Option<AbortHandle>,
}

impl KillWhenSent {
    fn kill(&mut self) {
        if let Some(k) = self.kill.take() {
            k.abort();
        }
    }
}

impl http_body::Body for KillWhenSent {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            self.kill();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for KillWhenSent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Outbound HTTP for one instance, checked against its `allowed_outbound_hosts`.
pub(crate) struct Outbound {
    pub app: Arc<App>,
    pub component: Arc<ComponentInfo>,
}

type Sent = Box<
    dyn Future<
            Output = Result<
                (
                    Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        _received: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Sent {
        let uri = request.uri();
        let host = uri.host().unwrap_or_default().to_ascii_lowercase();
        let done =
            || Box::new(async { Ok(()) }) as Box<dyn Future<Output = Result<(), Error>> + Send>;
        if host == SELF_ALT {
            // A relative URL or host `self.alt`: needs `http://self` (or a `*` host).
            if !self.component.allowed.allows_self() {
                return Box::new(async { Err(Error::HttpRequestDenied) });
            }
            let app = self.app.clone();
            return Box::new(async move { Ok((app.self_request(request).await?, done())) });
        }
        // Everything else, `http://self/...` included, must match an entry.
        let scheme = uri.scheme_str().unwrap_or("https").to_string();
        if !self
            .component
            .allowed
            .allows_url(&scheme, &host, uri.port_u16())
        {
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        Box::new(async move {
            let (resp, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            let io: Box<dyn Future<Output = Result<(), Error>> + Send> = Box::new(io);
            Ok((resp.map(|b| b.boxed_unsync()), io))
        })
    }
}
