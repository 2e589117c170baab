//! The harness of Spindle's black-box suite.
//!
//! Tests talk HTTP to a [`Target`]: the URL in `SPINDLE_URL` (a real
//! `spin up`) when it is set, otherwise the test host serving the freshly
//! built components from `spin.toml`. No test may depend on which it is.
#![deny(missing_docs)]

use spin_test_host::{HostOptions, RunningHost};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;
use ureq::Agent;

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
    let options = HostOptions::new(manifest_path(), state.path().to_path_buf());
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

    /// `POST path` with a body sent chunked, with no length given up front.
    pub fn post_chunked(&self, path: &str, body: &[u8]) -> Reply {
        let mut reader = body;
        let result = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .send(ureq::SendBody::from_reader(&mut reader));
        self.finish(result, "POST", path)
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
