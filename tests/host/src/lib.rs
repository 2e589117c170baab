//! A small Spin-compatible host, so tests (and anyone without a `spin` binary)
//! can run Spindle's components the way Spin 4 runs them.
//!
//! It reads a `spin.toml` (manifest v2), compiles each component once and serves
//! HTTP with a fresh instance per request. Components get exactly the world
//! `route`: Spin 2 key-value, SQLite and variables, outbound wasi:http, and the
//! WASI CLI/clocks/random/io basics. Where Spin surprises (self requests, one
//! statement per SQLite `execute`, work after the response), the code says so.
//! `tests/probe` checks it against a real Spin's answers.

#![deny(missing_docs)]

pub mod allowed_hosts;
mod app;
mod host;
pub mod manifest;
pub mod routes;
pub mod variables;

use anyhow::Context;
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// How to run an app.
#[derive(Clone)]
pub struct HostOptions {
    /// The `spin.toml`; component sources are relative to its directory.
    pub manifest: PathBuf,
    /// Where the `default` key-value store and SQLite database live (Spin: `.spin/`).
    pub state_dir: PathBuf,
    /// Address to listen on; port 0 picks a free port ([`RunningHost::addr`] tells which).
    pub listen: SocketAddr,
    /// Variable values that win over `SPIN_VARIABLE_*` and defaults (like `--variable`).
    pub variables: HashMap<String, String>,
    /// Failures to inject, for tests of crash recovery.
    pub faults: Option<Arc<dyn FaultPlan>>,
}

impl HostOptions {
    /// Options for `manifest` with state in `state_dir`, on `127.0.0.1:0`.
    pub fn new(manifest: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> HostOptions {
        HostOptions {
            manifest: manifest.into(),
            state_dir: state_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            variables: HashMap::new(),
            faults: None,
        }
    }
}

/// One invocation of a component, as shown to a [`FaultPlan`].
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Number of the invocation, counting from 0 in the order they were routed.
    pub seq: u64,
    /// The component id that serves it.
    pub component: String,
    /// The HTTP method, e.g. `POST`.
    pub method: String,
    /// Path with query, e.g. `/internal/steps/7?x=1`.
    pub path: String,
    /// Whether it is a self request from another invocation of the app.
    pub is_self_request: bool,
}

/// What goes wrong with one invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Runs normally.
    None,
    /// The instance dies before it answers: the client's connection (or the
    /// caller's self request) fails and none of the component's code runs.
    AbortBeforeResponse,
    /// The response is delivered, then the instance is dropped at once: no more
    /// guest code runs and its SQLite connections close (open transactions roll back).
    ///
    /// Exactly: once the guest has set its response and finished its body, its
    /// next outbound HTTP, key-value or SQLite call traps, so no side effect
    /// follows the response; the task is aborted too once the body is sent (that
    /// stops pure computation).
    AbortAfterResponse,
    /// The instance dies at its n-th side-effecting host call (outbound HTTP,
    /// key-value, SQLite; counting from 1), before or after its response: that
    /// call and all after it never happen, as when a host shuts down mid-work.
    /// Dying before the response, it answers like a trapped guest (500).
    AbortAtHostCall(u32),
}

/// Decides a [`Fault`] for each invocation; closures `Fn(&Invocation) -> Fault` are plans too.
pub trait FaultPlan: Send + Sync {
    /// The fault for this invocation ([`Fault::None`] to run it normally).
    fn fault_for(&self, inv: &Invocation) -> Fault;
}

impl<F: Fn(&Invocation) -> Fault + Send + Sync> FaultPlan for F {
    fn fault_for(&self, inv: &Invocation) -> Fault {
        self(inv)
    }
}

/// An app being served; dropping it (or [`RunningHost::shutdown`]) stops it.
pub struct RunningHost {
    addr: SocketAddr,
    app: Arc<app::App>,
    accept: JoinHandle<()>,
}

/// Loads the app (compiling every component) and starts serving it.
///
/// Fails where `spin up` would refuse to start: a bad manifest, a required
/// variable without a value, a store or database label with no backing, an
/// import outside the world `route`, an unparsable `allowed_outbound_hosts`.
pub async fn serve(opts: HostOptions) -> anyhow::Result<RunningHost> {
    let listen = opts.listen;
    let app = tokio::task::spawn_blocking(move || app::App::load(&opts)).await??;
    let app = Arc::new(app);
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    app.set_addr(addr);

    let accept = tokio::spawn(accept_loop(app.clone(), listener));
    Ok(RunningHost { addr, app, accept })
}

async fn accept_loop(app: Arc<app::App>, listener: TcpListener) {
    // Connections live in this set, so stopping the loop closes them too.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, client)) = listener.accept().await else {
            // E.g. out of file descriptors: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let app = app.clone();
        connections.spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    async move {
                        let req =
                            req.map(|b| b.map_err(wasmtime_wasi_http::Error::from).boxed_unsync());
                        app.handle(req, client, false).await
                    }
                });
            let io = wasmtime_wasi_http::io::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

impl RunningHost {
    /// The address it listens on (the real port when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Resolves when no invocation is in flight, work after a response and the
    /// self requests it makes included: a chain of work has finished.
    pub async fn wait_idle(&self) {
        self.app.wait_idle().await
    }

    /// How many invocations have been routed to components (self requests included).
    pub fn invocations(&self) -> u64 {
        self.app.invocations()
    }

    /// Stops serving and drops every running instance at once, as Spin does on
    /// shutdown: work after a response is lost.
    pub async fn shutdown(self) {
        self.accept.abort();
        self.app.abort_all().await;
    }
}

impl Drop for RunningHost {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
