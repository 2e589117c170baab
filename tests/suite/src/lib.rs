//! The harness of Spindle's black-box suite.
//!
//! Tests talk HTTP to a [`Target`]. Where it runs is chosen by the environment:
//!
//! - nothing set: the project's wasmtime test host (`tests/host`) serving the
//!   freshly built components from `spin.toml`, each target on fresh state;
//! - `SPINDLE_HOST=spin`: a real `spin up` that the harness starts itself for
//!   each target (`SPIN_BIN`, else `spin` on `PATH`), on loopback and fresh
//!   state, in a process group of its own that is killed with the target
//!   (or when the test binary exits);
//! - `SPINDLE_URL=http://…`: an app someone else started (its configuration
//!   must be [`suite_variables`]); tests that need a configuration of their
//!   own then fail with a message saying so, since nothing can start one.
//!
//! No test may depend on which it is, and none passes by not running where
//! it cannot: a test that needs what only some of them give lives in a
//! module named for that need, so a run where it cannot hold skips it by name
//! and cargo reports it as filtered out, never as passed; called elsewhere,
//! its harness function fails saying so.
//!
//! - `host_faults`: tests of the test host's fault injection
//!   ([`configured_with_faults`]); a run on real Spin or `SPINDLE_URL`
//!   skips them (`--skip host_faults::`).
//! - `sole_ticker`: tests that count what their own ticks start
//!   ([`shared_ticked_by_the_suite_alone`]), which needs an app only the suite
//!   ticks; a run against `SPINDLE_URL` skips them (`--skip sole_ticker::`).
#![deny(missing_docs)]

use fake_llm::FakeLlm;
use serde_json::{Value, json};
use spin_test_host::{FaultPlan, HostOptions, RunningHost};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use ureq::Agent;

/// The platform admin key the suite's app runs with (`admin_key`).
pub const ADMIN_KEY: &str = "suite-admin-key-not-for-production";
/// The HS256 secret the suite's app runs with (`jwt_secret`).
pub const JWT_SECRET: &str = "suite-jwt-secret-of-at-least-32-bytes";
/// The issuer the suite's app requires (`jwt_issuer`).
pub const JWT_ISSUER: &str = "spindle-suite";
/// The audience the suite's app requires (`jwt_audience`).
pub const JWT_AUDIENCE: &str = "spindle-api";

/// The key that signs the app's internal dispatch (`internal_key`).
pub const INTERNAL_KEY: &str = "suite-internal-key-not-for-production";
/// The key an external scheduler calls `/internal/tick` with (`tick_key`).
pub const TICK_KEY: &str = "suite-tick-key-not-for-production";
/// The `metrics_token` the suite configures (`GET /metrics`).
pub const METRICS_TOKEN: &str = "suite-metrics-token-not-for-production";
/// How long a claimed step may run before the tick may hand it to another
/// invocation (`step_lease_ms`): short, so recovery tests are quick.
pub const STEP_LEASE_MS: u64 = 2_000;

/// The first retry delay of a failed event delivery (`event_retry_base_ms`):
/// short, so retry tests are quick.
pub const EVENT_RETRY_BASE_MS: u64 = 200;

/// A fixture file's text (`tests/suite/fixtures/NAME`).
pub fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Milliseconds since the Unix epoch on this machine's clock, the one the
/// app under test stamps its times with.
pub fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_millis(),
    )
    .expect("a time that fits in i64 ms")
}

/// An API timestamp (RFC 3339) in ms since the epoch; panics, showing it,
/// when it is not one.
pub fn timestamp_ms(timestamp: &Value) -> i64 {
    let text = timestamp
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {timestamp}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .timestamp_millis()
}

/// The step of node `node` in `run` (a `GET /api/v1/executions/:id` body);
/// panics, showing the run, when it has none.
pub fn step<'a>(run: &'a Value, node: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["node_id"] == node)
        .unwrap_or_else(|| panic!("no step {node} in {run:#}"))
}

/// The step of node `node` in `run`, if the run has one yet.
pub fn find_step<'a>(run: &'a Value, node: &str) -> Option<&'a Value> {
    run["steps"]
        .as_array()?
        .iter()
        .find(|s| s["node_id"] == node)
}

/// Waits until the fake provider has received a request (a step is now in
/// its provider call); panics after `within`.
pub fn await_provider_call(within: Duration) {
    let deadline = Instant::now() + within;
    while fake_llm().received().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the step never called the provider"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The fake LLM provider the suite's app talks to: on a free port with the
/// test host, on `127.0.0.1:9999` for an app the suite did not start (which
/// must be configured with [`suite_variables`] for that port).
pub fn fake_llm() -> &'static FakeLlm {
    static FAKE: OnceLock<FakeLlm> = OnceLock::new();
    FAKE.get_or_init(|| {
        let port = if is_external() { 9999 } else { 0 };
        FakeLlm::start_blocking(SocketAddr::from(([127, 0, 0, 1], port)))
            .expect("the fake LLM provider starts")
    })
}

/// The API key the suite configures for `provider` (its `<provider>_api_key`).
pub fn provider_key(provider: &str) -> String {
    format!("test-{provider}-key")
}

/// The Spin variables the suite's app runs with. A real `spin up` under test
/// must be started with the same values (README.md, "Testing against Spin").
pub fn suite_variables() -> HashMap<String, String> {
    let fake = fake_llm().url();
    let mut variables = HashMap::from([
        ("openai_base_url".to_string(), format!("{fake}/v1")),
        ("anthropic_base_url".to_string(), format!("{fake}/v1")),
        ("gemini_base_url".to_string(), format!("{fake}/v1beta")),
        ("groq_base_url".to_string(), format!("{fake}/openai/v1")),
        (
            "openai_compatible_base_url".to_string(),
            format!("{fake}/compat/v1"),
        ),
        ("provider_timeout_ms".to_string(), "5000".to_string()),
        ("internal_key".to_string(), INTERNAL_KEY.to_string()),
        ("tick_key".to_string(), TICK_KEY.to_string()),
        ("metrics_token".to_string(), METRICS_TOKEN.to_string()),
        ("step_lease_ms".to_string(), STEP_LEASE_MS.to_string()),
        // The suite drives the tick itself, so tests know which tick did what
        // (one test switches the app's own tick on).
        ("self_tick".to_string(), "false".to_string()),
    ]);
    variables.insert(
        "event_retry_base_ms".to_string(),
        EVENT_RETRY_BASE_MS.to_string(),
    );
    for provider in ["openai", "anthropic", "gemini", "groq"] {
        variables.insert(format!("{provider}_api_key"), provider_key(provider));
    }
    variables.extend([
        ("admin_key".to_string(), ADMIN_KEY.to_string()),
        ("jwt_secret".to_string(), JWT_SECRET.to_string()),
        ("jwt_issuer".to_string(), JWT_ISSUER.to_string()),
        ("jwt_audience".to_string(), JWT_AUDIENCE.to_string()),
        ("jwt_public_key".to_string(), fixture("jwt-ed25519.pub.pem")),
    ]);
    variables
}

/// Whether the suite runs against an app it did not start (`SPINDLE_URL`).
pub fn is_external() -> bool {
    std::env::var_os("SPINDLE_URL").is_some()
}

/// Whether the harness starts a real `spin up` for each target (`SPINDLE_HOST=spin`).
pub fn is_real_spin() -> bool {
    std::env::var("SPINDLE_HOST").is_ok_and(|host| host == "spin")
}

/// Where the suite sends its requests.
pub struct Target {
    base: String,
    agent: Agent,
    // The app the harness started for this target (none with `SPINDLE_URL`);
    // behind a lock so that a test can kill and restart it.
    instance: Mutex<Option<Instance>>,
}

/// An app the harness started: the test host in this process, or a real Spin.
enum Instance {
    TestHost {
        // Declared before the runtime: the host is dropped first.
        host: Option<RunningHost>,
        options: HostOptions,
        runtime: tokio::runtime::Runtime,
        _state: tempfile::TempDir,
    },
    Spin(SpinApp),
}

/// The target shared by every test of a binary: started once, on first use.
pub fn shared() -> &'static Target {
    static SHARED: OnceLock<Target> = OnceLock::new();
    SHARED.get_or_init(fresh)
}

/// A target of its own: with the test host or real Spin, a new app on empty
/// state; with `SPINDLE_URL`, that same URL (whose state is whatever it is).
pub fn fresh() -> Target {
    match std::env::var("SPINDLE_URL") {
        Ok(base) => Target::new(base.trim_end_matches('/').to_string(), None),
        Err(_) => start(suite_variables(), None),
    }
}

/// A new app on empty state, run with exactly `variables`: on the test host,
/// or on a real Spin of its own with `SPINDLE_HOST=spin`.
///
/// # Panics
/// With `SPINDLE_URL`, whose configuration the suite cannot choose.
pub fn configured(variables: HashMap<String, String>) -> Target {
    assert!(
        !is_external(),
        "this test needs an app with a configuration of its own, which the suite cannot start \
         under SPINDLE_URL: run it with SPINDLE_HOST=spin (a real Spin the suite starts) or on the test host"
    );
    start(variables, None)
}

/// A new test host on empty state with `variables` and a fault plan (which
/// invocations to abort). Tests calling it live in a `host_faults` module.
///
/// # Panics
/// Unless the suite runs on the test host: only it can inject faults.
pub fn configured_with_faults(
    variables: HashMap<String, String>,
    faults: Arc<dyn FaultPlan>,
) -> Target {
    assert!(
        !is_external() && !is_real_spin(),
        "this test needs the test host's fault injection: a run on real Spin skips it (--skip host_faults::)"
    );
    start(variables, Some(faults))
}

/// The [`shared`] target, for a test that counts what its own ticks start:
/// the suite must be the only one ticking the app (its variables switch the
/// app's own tick off). Tests calling it live in a `sole_ticker` module.
///
/// # Panics
/// With `SPINDLE_URL`, whose app someone else's scheduler may tick too.
pub fn shared_ticked_by_the_suite_alone() -> &'static Target {
    assert!(
        !is_external(),
        "this test counts what the suite's own ticks start, which needs an app only the suite \
         ticks: a run against SPINDLE_URL skips it (--skip sole_ticker::)"
    );
    shared()
}

/// Takes the fake provider for one test: tests that script it run one at a
/// time, each from an empty script and record.
pub fn fake_turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    let guard = TURN.lock().unwrap_or_else(|e| e.into_inner());
    fake_llm().clear();
    guard
}

fn start(variables: HashMap<String, String>, faults: Option<Arc<dyn FaultPlan>>) -> Target {
    let state = tempfile::tempdir().expect("temp dir for the app's state");
    if is_real_spin() {
        let app = SpinApp::start(variables, state, free_port());
        return Target::new(app.url(), Some(Instance::Spin(app)));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut options = HostOptions::new(manifest_path(), state.path().to_path_buf());
    options.variables = variables;
    options.faults = faults;
    let host = serve_test_host(&runtime, options.clone());
    // A restart listens on the same address again.
    options.listen = host.addr();
    let base = host.url();
    Target::new(
        base,
        Some(Instance::TestHost {
            host: Some(host),
            options,
            runtime,
            _state: state,
        }),
    )
}

fn serve_test_host(runtime: &tokio::runtime::Runtime, options: HostOptions) -> RunningHost {
    runtime
        .block_on(spin_test_host::serve(options))
        .expect("the test host starts on the built components (build them first: cargo build --target wasm32-wasip2 --release)")
}

/// A free port on loopback, for an app that must be told its port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// The `spin` binary a real-Spin run uses: `SPIN_BIN`, else `spin` on `PATH`.
fn spin_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("SPIN_BIN") {
        return PathBuf::from(bin);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("spin"))
        .find(|candidate| candidate.is_file())
        .expect("SPINDLE_HOST=spin needs a spin binary: set SPIN_BIN or put spin on PATH")
}

/// A real `spin up` serving `spin.toml`, in a process group of its own.
///
/// `spin up` serves the app from a child process (`spin trigger http …`), so
/// killing `spin up` alone would leave the app serving and its port taken:
/// the app is started under a small shell that leads a new process group and
/// kills that whole group when its standard input closes, which happens when
/// [`SpinApp::kill`] closes it or when the test binary exits (statics such as
/// [`shared`] are never dropped, so a `Drop` alone would leak instances).
struct SpinApp {
    variables: HashMap<String, String>,
    state: tempfile::TempDir,
    port: u16,
    group: Option<Child>,
}

impl SpinApp {
    fn start(variables: HashMap<String, String>, state: tempfile::TempDir, port: u16) -> SpinApp {
        let mut app = SpinApp {
            variables,
            state,
            port,
            group: None,
        };
        app.launch();
        app
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.state.path().join("spin-up.log")
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("the spin up log file");
        let mut command = Command::new("sh");
        command
            .arg("-c")
            // `read` returns at end of input; `kill 0` signals the whole group.
            .arg(r#""$0" up --from "$1" --listen "$2" --state-dir "$3" & read -r _; kill -KILL 0"#)
            .arg(spin_binary())
            .arg(manifest_path())
            .arg(format!("127.0.0.1:{}", self.port))
            .arg(self.state.path().join("spin"))
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log);
        // Exactly the suite's configuration: nothing from the caller's environment.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SPIN_VARIABLE_") {
                command.env_remove(name);
            }
        }
        for (name, value) in &self.variables {
            command.env(format!("SPIN_VARIABLE_{}", name.to_uppercase()), value);
        }
        let mut group = command.spawn().expect("start spin up");
        let deadline = Instant::now() + Duration::from_secs(120);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = group.try_wait().expect("spin up's state");
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "spin up did not start serving on port {} ({}): {}",
                self.port,
                exited.map_or("timed out".to_string(), |status| status.to_string()),
                std::fs::read_to_string(self.log_path()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.group = Some(group);
    }

    /// Kills the whole process group at once (work after responses is lost,
    /// as on a host that dies) and waits until nothing listens on the port.
    fn kill(&mut self) {
        let Some(mut group) = self.group.take() else {
            return;
        };
        if let Ok(pgid) = i32::try_from(group.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        drop(group.stdin.take());
        let _ = group.wait();
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SpinApp {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Stop the test host's instances first, as a real Spin's are killed:
        // dropping the runtime alone would wait for work after responses (a
        // heartbeat link ticks for 20 s) before it lets go.
        if let Instance::TestHost { host, runtime, .. } = self
            && let Some(running) = host.take()
        {
            runtime.block_on(running.shutdown());
        }
    }
}

impl Target {
    fn new(base: String, instance: Option<Instance>) -> Target {
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .allow_non_standard_methods(true)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Target {
            base,
            agent,
            instance: Mutex::new(instance),
        }
    }

    /// Kills the app at once, as when its host dies (every invocation in
    /// flight and all work after responses is lost, open transactions roll
    /// back), then starts it again on the same state, address and
    /// configuration, and returns once it serves.
    ///
    /// # Panics
    /// With `SPINDLE_URL`: the suite did not start that app.
    pub fn kill_and_restart(&self) {
        let mut instance = self.instance.lock().unwrap_or_else(|e| e.into_inner());
        match instance
            .as_mut()
            .expect("kill_and_restart needs an app the suite started (not SPINDLE_URL)")
        {
            Instance::TestHost {
                host,
                options,
                runtime,
                ..
            } => {
                if let Some(running) = host.take() {
                    runtime.block_on(running.shutdown());
                }
                *host = Some(serve_test_host(runtime, options.clone()));
            }
            Instance::Spin(app) => {
                app.kill();
                app.launch();
            }
        }
    }
}

/// The app's `spin.toml`.
pub fn manifest_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../spin.toml")
}

/// An organisation the suite created, with its owner key's secret.
#[derive(Debug, Clone)]
pub struct Org {
    /// The organisation's id.
    pub id: String,
    /// The first owner key, in clear.
    pub owner_key: String,
}

/// A response as the suite sees it.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// Headers with lower-case names.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl Reply {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts DESIGN.md's error shape: this status, a JSON body
    /// `{"error": {"code", "message", "details"?}}` with this code and a message.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.header("content-type"), Some("application/json"));
        let body = self.json();
        let error = body["error"].as_object().expect("an `error` object");
        assert_eq!(error["code"], code, "{body}");
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "a message: {body}"
        );
        assert!(
            error
                .keys()
                .all(|k| ["code", "message", "details"].contains(&k.as_str())),
            "only code, message and details: {body}"
        );
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

impl Target {
    /// The base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], None)
    }

    /// Sends `method path` with headers and an optional body of known length.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Reply {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Like [`Target::request`], but a failure to reach the app or to read
    /// its answer (the app was killed, or is restarting) is an `Err`.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Reply, String> {
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(body.map(<[u8]>::to_vec).unwrap_or_default())
            .expect("a valid request");
        let mut response = self.agent.run(request).map_err(|e| e.to_string())?;
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_vec()
            .map_err(|e| format!("reading the body: {e}"))?;
        Ok(Reply {
            status: response.status().as_u16(),
            headers,
            body,
        })
    }

    /// `method path` with an optional bearer token and JSON body.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Reply {
        let authorization = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(authorization) = &authorization {
            headers.push(("authorization", authorization));
        }
        let body = body.map(|b| b.to_string());
        self.request(method, path, &headers, body.as_deref().map(str::as_bytes))
    }

    /// Creates an organisation with the platform admin key; panics unless 201.
    pub fn create_org(&self, name: &str) -> Org {
        let reply = self.call(
            "POST",
            "/api/v1/orgs",
            Some(ADMIN_KEY),
            Some(&json!({"name": name})),
        );
        assert_eq!(
            reply.status,
            201,
            "creating an org: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let body = reply.json();
        Org {
            id: body["organization"]["id"].as_str().unwrap().to_string(),
            owner_key: body["api_key"]["secret"].as_str().unwrap().to_string(),
        }
    }

    /// `POST path` of `body` as the org's owner; panics unless 201. Returns the new resource's id.
    pub fn create(&self, org: &Org, path: &str, body: &Value) -> String {
        let reply = self.call("POST", path, Some(&org.owner_key), Some(body));
        assert_eq!(
            reply.status,
            201,
            "POST {path}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        reply.json()["id"].as_str().expect("an id").to_string()
    }

    /// An agent on OpenAI's `gpt-4o-mini` (the fake provider in the suite).
    pub fn create_agent(&self, org: &Org) -> String {
        self.create(
            org,
            "/api/v1/agents",
            &json!({"name": "Worker", "model_config": {"provider": "openai", "model": "gpt-4o-mini"}}),
        )
    }

    /// `POST /internal/tick` with the suite's tick key, as an external scheduler calls it.
    pub fn tick(&self) -> Reply {
        let authorization = format!("Bearer {TICK_KEY}");
        self.request(
            "POST",
            "/internal/tick",
            &[("authorization", &authorization)],
            None,
        )
    }

    /// `POST /api/v1/executions/:id/retry` as the org's owner; panics unless
    /// the retry was taken (202).
    pub fn retry_run(&self, org: &Org, id: &str) {
        let reply = self.call(
            "POST",
            &format!("/api/v1/executions/{id}/retry"),
            Some(&org.owner_key),
            None,
        );
        assert_eq!(
            reply.status,
            202,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    }

    /// Starts a run of `workflow` with `inputs` as the org's owner; panics
    /// unless 202. Returns the execution's id.
    pub fn start_run(&self, org: &Org, workflow: &str, inputs: Value) -> String {
        let reply = self.call(
            "POST",
            &format!("/api/v1/workflows/{workflow}/execute"),
            Some(&org.owner_key),
            Some(&json!({"inputs": inputs})),
        );
        assert_eq!(
            reply.status,
            202,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let body = reply.json();
        let id = body["execution_id"].as_str().unwrap().to_string();
        assert_eq!(body["status_url"], format!("/api/v1/executions/{id}"));
        id
    }

    /// `GET /api/v1/executions/:id` as the org's owner.
    pub fn execution(&self, org: &Org, id: &str) -> Value {
        self.call(
            "GET",
            &format!("/api/v1/executions/{id}"),
            Some(&org.owner_key),
            None,
        )
        .json()
    }

    /// Every usage record of the org matching `query` (the filters of `GET
    /// /api/v1/usage/records`, e.g. `execution_id=…`; may be empty), all
    /// pages, in the API's order: one record per provider call.
    pub fn usage_records(&self, org: &Org, query: &str) -> Vec<Value> {
        let mut records = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = "/api/v1/usage/records?limit=1000".to_string();
            if !query.is_empty() {
                path = format!("{path}&{query}");
            }
            if let Some(cursor) = &cursor {
                path = format!("{path}&cursor={cursor}");
            }
            let reply = self.call("GET", &path, Some(&org.owner_key), None);
            assert_eq!(reply.status, 200, "GET {path}: {}", reply.json());
            let page = reply.json();
            records.extend(page["data"].as_array().expect("data").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return records,
            }
        }
    }

    /// Polls run `id` until it is completed, failed or cancelled, for at most 30 s.
    pub fn finished(&self, org: &Org, id: &str) -> Value {
        self.finished_within(org, id, Duration::from_secs(30))
    }

    /// Polls run `id` until it is completed, failed or cancelled, for at most `within`.
    pub fn finished_within(&self, org: &Org, id: &str, within: Duration) -> Value {
        self.await_run(org, id, "finish", within, has_ended)
    }

    /// Polls run `id` until `until` holds for it (its
    /// `GET /api/v1/executions/:id` body), for at most `within`, and returns
    /// that body. Panics, saying the run did not `what` and showing it, when
    /// `within` passes first.
    pub fn await_run(
        &self,
        org: &Org,
        id: &str,
        what: &str,
        within: Duration,
        until: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let run = self.execution(org, id);
            if until(&run) {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} did not {what} within {within:?}: {} (steps: {})",
                run["status"],
                run["steps"]
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Polls run `id` until its step of node `node` has `status`, for at
    /// most 30 s; returns the run.
    pub fn await_step(&self, org: &Org, id: &str, node: &str, status: &str) -> Value {
        let what = format!("have step {node} {status}");
        self.await_run(org, id, &what, Duration::from_secs(30), |run| {
            find_step(run, node).is_some_and(|step| step["status"] == status)
        })
    }

    /// Calls the tick, then reads run `id`, until the run has ended, for at
    /// most 30 s; returns it. For a run that waits for its time to come (a
    /// delay, a wait's timeout, a retry's backoff), which only a tick moves
    /// on: the test need not know when that is, and other tests' ticks of
    /// the same app may move it too.
    pub fn finished_ticking(&self, org: &Org, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let tick = self.tick();
            assert_eq!(
                tick.status,
                200,
                "the tick: {}",
                String::from_utf8_lossy(&tick.body)
            );
            let run = self.execution(org, id);
            if has_ended(&run) {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} did not finish with the tick: {} (steps: {})",
                run["status"],
                run["steps"]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Calls the tick every `interval` until the returned [`Ticker`] is
    /// dropped, as a scheduler would (cron, Spin's cron trigger, a CronJob).
    pub fn tick_every(&self, interval: Duration) -> Ticker {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (agent, url) = (self.agent.clone(), format!("{}/internal/tick", self.base));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    // A failed tick is like a missed cron run: the next one catches up.
                    let _ = agent
                        .post(&url)
                        .header("authorization", &format!("Bearer {TICK_KEY}"))
                        .send_empty();
                    std::thread::sleep(interval);
                }
            })
        };
        Ticker {
            stop,
            thread: Some(thread),
        }
    }

    /// Creates an API key of `role` with `token`; panics unless 201. Returns (id, secret).
    pub fn create_key(&self, token: &str, role: &str) -> (String, String) {
        let reply = self.call(
            "POST",
            "/api/v1/api-keys",
            Some(token),
            Some(&json!({"name": format!("{role} key"), "role": role})),
        );
        assert_eq!(
            reply.status,
            201,
            "creating a key: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let body = reply.json();
        (
            body["id"].as_str().unwrap().to_string(),
            body["secret"].as_str().unwrap().to_string(),
        )
    }

    /// Sends a request head and `body` over a raw connection, then reads
    /// the answer, without ending the body. Lets a test offer a body larger
    /// than the API reads without racing the server's early answer: the
    /// server has read all that was sent when it closes, so the close is
    /// clean and the answer arrives.
    pub fn raw_exchange(&self, head: &str, body: &[u8]) -> Reply {
        let authority = self
            .base
            .strip_prefix("http://")
            .expect("raw requests need an http:// base URL");
        let authority = authority.split('/').next().unwrap_or(authority);
        let mut stream = TcpStream::connect(authority).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let head = format!("{head}\r\nhost: {authority}\r\nconnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).expect("send the head");
        // The server may answer and close before taking it all: that is the point.
        let _ = stream.write_all(body);
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        parse_response(&raw)
    }
}

/// Whether `run` (a `GET /api/v1/executions/:id` body) is completed, failed or cancelled.
pub fn has_ended(run: &Value) -> bool {
    ["completed", "failed", "cancelled"].contains(&run["status"].as_str().unwrap_or(""))
}

/// One Server-Sent Event as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// Its `id:` field, if it had one.
    pub id: Option<String>,
    /// Its `event:` field (`message` when it had none).
    pub event: String,
    /// Its `data:` lines, joined with `\n`.
    pub data: String,
}

impl SseEvent {
    /// The data as JSON; panics with the event when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {self:?}"))
    }
}

/// A Server-Sent Events response, read event by event as it arrives.
pub struct SseStream {
    /// The HTTP status.
    pub status: u16,
    /// Headers with lower-case names.
    pub headers: Vec<(String, String)>,
    lines: std::io::Lines<std::io::BufReader<ureq::BodyReader<'static>>>,
}

impl SseStream {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The next line of the stream as sent, without its line break; `None`
    /// once the server has ended the stream. Panics when the stream's
    /// deadline passes first.
    pub fn next_line(&mut self) -> Option<String> {
        self.lines
            .next()
            .map(|line| line.unwrap_or_else(|e| panic!("reading the event stream: {e}")))
    }

    /// The next event, as soon as it has arrived; `None` once the server
    /// has ended the stream. Panics when the stream's deadline passes first.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        let (mut id, mut event, mut data) = (None, None, Vec::new());
        for line in self.lines.by_ref() {
            let line = line.unwrap_or_else(|e| panic!("reading the event stream: {e}"));
            if line.is_empty() {
                // A blank line ends an event; one without data is not dispatched (SSE).
                if !data.is_empty() {
                    let event = event.unwrap_or_else(|| "message".to_string());
                    return Some(SseEvent {
                        id,
                        event,
                        data: data.join("\n"),
                    });
                }
                (id, event) = (None, None);
                continue;
            }
            if line.starts_with(':') {
                continue; // a comment
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_string();
            match field {
                "id" => id = Some(value),
                "event" => event = Some(value),
                "data" => data.push(value),
                _ => {} // `retry:` and unknown fields
            }
        }
        None
    }
}

impl Target {
    /// Opens `GET path` as a Server-Sent Events stream with `token` and
    /// `headers`; reading it panics once `deadline` has passed.
    pub fn events(
        &self,
        path: &str,
        token: &str,
        headers: &[(&str, &str)],
        deadline: Duration,
    ) -> SseStream {
        let mut builder = ureq::http::Request::builder()
            .method("GET")
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {token}"))
            .header("accept", "text/event-stream");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(()).expect("a valid request");
        let request = self
            .agent
            .configure_request(request)
            .timeout_global(Some(deadline))
            .build();
        let response = self
            .agent
            .run(request)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let status = response.status().as_u16();
        let reader = std::io::BufReader::new(response.into_body().into_reader());
        SseStream {
            status,
            headers,
            lines: std::io::BufRead::lines(reader),
        }
    }
}

/// Parses an HTTP/1.1 response read to the end of the connection.
fn parse_response(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
            .expect("a chunk size");
        if size == 0 {
            break;
        }
        let start = end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[(start + size + 2).min(data.len())..];
    }
    out
}

/// A background scheduler calling the tick; stops when dropped.
pub struct Ticker {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
