//! The harness of Spindle's black-box suite.
//!
//! Tests talk HTTP to a [`Target`]: the URL in `SPINDLE_URL` (a real
//! `spin up`) when it is set, otherwise the test host serving the freshly
//! built components from `spin.toml`. No test may depend on which it is.
#![deny(missing_docs)]

use fake_llm::FakeLlm;
use serde_json::{Value, json};
use spin_test_host::{FaultPlan, HostOptions, RunningHost};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
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

/// Where the suite sends its requests.
pub struct Target {
    base: String,
    agent: Agent,
    // Keeps the host (and the runtime it runs on) alive as long as the target.
    _host: Option<(tokio::runtime::Runtime, RunningHost, tempfile::TempDir)>,
}

/// The target shared by every test of a binary: started once, on first use.
pub fn shared() -> &'static Target {
    static SHARED: OnceLock<Target> = OnceLock::new();
    SHARED.get_or_init(fresh)
}

/// A target of its own: with the test host, a new host on empty state; with
/// `SPINDLE_URL`, that same URL (whose state is whatever it is).
pub fn fresh() -> Target {
    fresh_with(suite_variables())
}

/// A new test host on empty state, run with exactly `variables`; `None` with
/// `SPINDLE_URL`, whose configuration the suite cannot choose.
pub fn configured(variables: HashMap<String, String>) -> Option<Target> {
    (!is_external()).then(|| fresh_with(variables))
}

/// A new test host on empty state with `variables` and a fault plan (which
/// invocations to abort); `None` with `SPINDLE_URL`.
pub fn configured_with_faults(
    variables: HashMap<String, String>,
    faults: Arc<dyn FaultPlan>,
) -> Option<Target> {
    (!is_external()).then(|| start_host(variables, Some(faults)))
}

/// Takes the fake provider for one test: tests that script it run one at a
/// time, each from an empty script and record.
pub fn fake_turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    let guard = TURN.lock().unwrap_or_else(|e| e.into_inner());
    fake_llm().clear();
    guard
}

fn fresh_with(variables: HashMap<String, String>) -> Target {
    start_host(variables, None)
}

fn start_host(variables: HashMap<String, String>, faults: Option<Arc<dyn FaultPlan>>) -> Target {
    let agent: Agent = Agent::config_builder()
        .http_status_as_error(false)
        .allow_non_standard_methods(true)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    if let Ok(base) = std::env::var("SPINDLE_URL") {
        return Target {
            base: base.trim_end_matches('/').to_string(),
            agent,
            _host: None,
        };
    }
    let state = tempfile::tempdir().expect("temp dir for the host's state");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut options = HostOptions::new(manifest_path(), state.path().to_path_buf());
    options.variables = variables;
    options.faults = faults;
    let host = runtime
        .block_on(spin_test_host::serve(options))
        .expect("the test host starts on the built components (build them first: cargo build --target wasm32-wasip2 --release)");
    Target {
        base: host.url(),
        agent,
        _host: Some((runtime, host, state)),
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
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(body.map(<[u8]>::to_vec).unwrap_or_default())
            .expect("a valid request");
        self.finish(self.agent.run(request), method, path)
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

    /// Polls run `id` until it is completed, failed or cancelled, for at most 30 s.
    pub fn finished(&self, org: &Org, id: &str) -> Value {
        self.finished_within(org, id, Duration::from_secs(30))
    }

    /// Polls run `id` until it is completed, failed or cancelled, for at most `within`.
    pub fn finished_within(&self, org: &Org, id: &str, within: Duration) -> Value {
        let deadline = std::time::Instant::now() + within;
        loop {
            let run = self.execution(org, id);
            if ["completed", "failed", "cancelled"].contains(&run["status"].as_str().unwrap_or(""))
            {
                return run;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "run {id} did not finish: {} (steps: {})",
                run["status"],
                run["steps"]
            );
            std::thread::sleep(Duration::from_millis(25));
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

    fn finish(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        method: &str,
        path: &str,
    ) -> Reply {
        let mut response = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
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
            .unwrap_or_else(|e| panic!("{method} {path}: reading the body: {e}"));
        Reply {
            status: response.status().as_u16(),
            headers,
            body,
        }
    }
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
