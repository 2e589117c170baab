//! A fake LLM provider for tests and benchmarks.
//!
//! [`FakeLlm`] is a loopback HTTP server that speaks the real wire formats of
//! three provider APIs:
//!
//! - OpenAI chat completions: `POST …/chat/completions` under any prefix
//!   (`/v1/chat/completions`, Groq's `/openai/v1/chat/completions`, …), since
//!   OpenAI-compatible endpoints are configured by base URL;
//! - Anthropic messages: `POST …/messages` (normally `/v1/messages`);
//! - Google Gemini: `POST …/models/{model}:generateContent` (normally under
//!   `/v1beta`).
//!
//! It answers from a script: a FIFO queue of [`Reply`] values, one consumed
//! per request (replies pushed for a model or a dialect are preferred over the
//! shared queue). When nothing is scripted it answers the deterministic text
//! `fake reply #N`, where `N` counts the chat requests the fake has received
//! (from 1), with token counts derived from the request (see [`Reply`]).
//! Every request is recorded for later assertions.
//!
//! It also stands in for a webhook subscriber: a `POST` to any path under
//! `/events/` is recorded and answered from the shared queue (the one
//! [`FakeLlm::push`] fills): `200 {}` when nothing is scripted or the reply
//! is a completion, the status of a [`Reply::error`] or [`Reply::raw`]
//! otherwise, and [`Reply::hang`] hangs.
//!
//! ```no_run
//! # async fn demo() {
//! use fake_llm::{FakeLlm, Reply};
//! use serde_json::json;
//!
//! let fake = FakeLlm::start().await;
//! fake.push(Reply::rate_limited(2));
//! fake.push(Reply::tool_call("calculator", json!({"expression": "2+2"})));
//! fake.push(Reply::text("4").tokens(12, 1));
//! // point the provider base URL at fake.url() and run the code under test…
//! assert_eq!(fake.received().len(), 3);
//! # }
//! ```
//!
//! The server runs on a thread of its own, so it keeps answering while the
//! test blocks or runs on another runtime; it stops when the last clone of
//! the [`FakeLlm`] is dropped.

#![deny(missing_docs)]

mod render;
mod server;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One of the provider wire formats the fake speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// OpenAI chat completions (and every OpenAI-compatible endpoint).
    OpenAi,
    /// Anthropic messages.
    Anthropic,
    /// Google Gemini `generateContent`.
    Gemini,
}

impl Dialect {
    /// Every dialect, in a fixed order.
    pub const ALL: [Dialect; 3] = [Dialect::OpenAi, Dialect::Anthropic, Dialect::Gemini];

    /// The dialect served at `path`, and for Gemini the model named in it.
    ///
    /// `None` when the fake has no chat endpoint at `path`.
    pub fn from_path(path: &str) -> Option<(Dialect, Option<String>)> {
        let path = path.trim_end_matches('/');
        if path.ends_with("/chat/completions") {
            return Some((Dialect::OpenAi, None));
        }
        if path.ends_with("/messages") {
            return Some((Dialect::Anthropic, None));
        }
        let last = path.rsplit('/').next()?;
        let model = last.strip_suffix(":generateContent")?;
        let parent = path[..path.len() - last.len()].trim_end_matches('/');
        if parent.ends_with("/models") && !model.is_empty() {
            return Some((Dialect::Gemini, Some(model.to_owned())));
        }
        None
    }
}

/// A tool (function) call the fake answers with.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    /// The tool's name.
    pub name: String,
    /// The arguments, as a JSON value (OpenAI receives them serialised to a
    /// string, as the real API sends them).
    pub arguments: Value,
}

/// What the fake answers to one request.
///
/// Build one with a constructor ([`Reply::text`], [`Reply::tool_call`],
/// [`Reply::error`], [`Reply::rate_limited`], [`Reply::server_error`],
/// [`Reply::malformed`], [`Reply::wrong_shape`], [`Reply::raw`],
/// [`Reply::hang`]) and adjust it with the chained methods.
///
/// Unless [`Reply::tokens`] sets them, token counts are derived from the
/// request and the reply: input tokens are the characters of every string in
/// the conversation (OpenAI `messages`; Anthropic `system` and `messages`;
/// Gemini `systemInstruction` and `contents`; `role` and `type` fields not
/// counted) divided by 4, rounded up, at least 1; output tokens are the words
/// of the text plus, per tool call, the characters of its name and JSON
/// arguments divided by 4 rounded up, at least 1 in all.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub(crate) kind: ReplyKind,
    pub(crate) tokens: Option<(u64, u64)>,
    pub(crate) truncated: bool,
    pub(crate) latency: Duration,
    pub(crate) retry_after: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ReplyKind {
    Completion {
        text: Option<String>,
        calls: Vec<ToolCall>,
    },
    Error {
        status: u16,
        message: Option<String>,
    },
    Raw {
        status: u16,
        body: String,
    },
    Hang,
}

impl Reply {
    fn new(kind: ReplyKind) -> Self {
        Reply {
            kind,
            tokens: None,
            truncated: false,
            latency: Duration::ZERO,
            retry_after: None,
        }
    }

    /// A successful text answer (`finish_reason` `stop`, `stop_reason`
    /// `end_turn`, `finishReason` `STOP`).
    pub fn text(content: impl Into<String>) -> Self {
        Reply::new(ReplyKind::Completion {
            text: Some(content.into()),
            calls: Vec::new(),
        })
    }

    /// A successful answer that calls one tool (`finish_reason` `tool_calls`,
    /// `stop_reason` `tool_use`, `finishReason` `STOP`). Add more calls with
    /// [`Reply::and_tool_call`] and accompanying text with
    /// [`Reply::with_text`].
    pub fn tool_call(name: impl Into<String>, arguments: Value) -> Self {
        Reply::tool_calls([(name, arguments)])
    }

    /// A successful answer that calls several tools, in order.
    pub fn tool_calls<N: Into<String>>(calls: impl IntoIterator<Item = (N, Value)>) -> Self {
        Reply::new(ReplyKind::Completion {
            text: None,
            calls: calls
                .into_iter()
                .map(|(name, arguments)| ToolCall {
                    name: name.into(),
                    arguments,
                })
                .collect(),
        })
    }

    /// An HTTP error with `status` and the dialect's error body. `message`
    /// replaces the provider's usual message for that status.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Reply::new(ReplyKind::Error {
            status,
            message: Some(message.into()),
        })
    }

    /// A `429` with the dialect's rate-limit error body and a `Retry-After`
    /// header of `retry_after_secs` seconds.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Reply::new(ReplyKind::Error {
            status: 429,
            message: None,
        })
        .retry_after(retry_after_secs)
    }

    /// A `500` with the dialect's internal-error body.
    pub fn server_error() -> Self {
        Reply::new(ReplyKind::Error {
            status: 500,
            message: None,
        })
    }

    /// A `200` whose body is not valid JSON (it is cut off mid-object).
    pub fn malformed() -> Self {
        Reply::raw(
            200,
            "{\"id\": \"fake-broken\", \"choices\": [{\"message\": ",
        )
    }

    /// A `200` whose body is valid JSON but not the dialect's response shape.
    pub fn wrong_shape() -> Self {
        Reply::raw(200, "{\"object\":\"unexpected\",\"data\":[]}")
    }

    /// Exactly `body` with `status`, served as `application/json`.
    pub fn raw(status: u16, body: impl Into<String>) -> Self {
        Reply::new(ReplyKind::Raw {
            status,
            body: body.into(),
        })
    }

    /// No answer: the request hangs for an hour (in practice until the client
    /// gives up or the fake is dropped).
    pub fn hang() -> Self {
        Reply::new(ReplyKind::Hang)
    }

    /// Adds a tool call after those already in the reply (a text reply keeps
    /// its text alongside the calls).
    pub fn and_tool_call(mut self, name: impl Into<String>, arguments: Value) -> Self {
        if let ReplyKind::Completion { calls, .. } = &mut self.kind {
            calls.push(ToolCall {
                name: name.into(),
                arguments,
            });
        }
        self
    }

    /// Sets the text of a successful reply (for a tool-call reply, the text
    /// the model says alongside its calls).
    pub fn with_text(mut self, content: impl Into<String>) -> Self {
        if let ReplyKind::Completion { text, .. } = &mut self.kind {
            *text = Some(content.into());
        }
        self
    }

    /// Sets the reported input and output token counts.
    pub fn tokens(mut self, input: u64, output: u64) -> Self {
        self.tokens = Some((input, output));
        self
    }

    /// Reports the answer as cut off by the token limit (`length`,
    /// `max_tokens`, `MAX_TOKENS`).
    pub fn truncated(mut self) -> Self {
        self.truncated = true;
        self
    }

    /// Waits `latency` before answering, on top of the fake's default latency.
    pub fn after(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Adds a `Retry-After: secs` header (Gemini 429 bodies also carry it as
    /// `RetryInfo`).
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Whether this reply is a successful completion (text or tool calls).
    pub fn is_success(&self) -> bool {
        matches!(self.kind, ReplyKind::Completion { .. })
    }
}

/// A request the fake received.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedRequest {
    /// The HTTP method, e.g. `POST`.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string without the `?`, if there was one (Gemini clients may
    /// pass `key=…` here).
    pub query: Option<String>,
    /// The headers in the order received, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON; `Value::Null` if it was empty or not JSON.
    pub body: Value,
    /// The body as text (lossy UTF-8).
    pub raw_body: String,
    /// The dialect of the endpoint hit, if it was a chat endpoint.
    pub dialect: Option<Dialect>,
    /// The model asked for (the body's `model`, or Gemini's path segment).
    pub model: Option<String>,
    /// When the fake received it (its body read, before any scripted latency):
    /// lets a test check when a client called, e.g. that a retry came no
    /// earlier than the `Retry-After` of the answer before it.
    pub received_at: Instant,
}

impl ReceivedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) queue: VecDeque<Reply>,
    pub(crate) by_dialect: HashMap<Dialect, VecDeque<Reply>>,
    pub(crate) by_model: HashMap<String, VecDeque<Reply>>,
    pub(crate) received: Vec<ReceivedRequest>,
    pub(crate) successes: HashMap<Dialect, usize>,
    pub(crate) latency: Duration,
    pub(crate) no_recording: bool,
    pub(crate) seq: u64,
    /// Chat requests answered per second (a token bucket holding a second's
    /// worth, as providers limit); a request finding it empty gets a 429.
    pub(crate) rate_limit: Option<usize>,
    /// The bucket: requests it still allows, and when it was last filled.
    pub(crate) bucket: (f64, Option<std::time::Instant>),
    /// How many chat requests the rate limit answered with 429.
    pub(crate) rate_limited: usize,
    /// Chat requests answered, by the answer's HTTP status.
    pub(crate) answered: HashMap<u16, usize>,
}

impl State {
    /// The next scripted reply for a request, most specific queue first.
    pub(crate) fn next_reply(&mut self, dialect: Dialect, model: Option<&str>) -> Option<Reply> {
        if let Some(model) = model
            && let Some(reply) = self.by_model.get_mut(model).and_then(VecDeque::pop_front)
        {
            return Some(reply);
        }
        if let Some(reply) = self
            .by_dialect
            .get_mut(&dialect)
            .and_then(VecDeque::pop_front)
        {
            return Some(reply);
        }
        self.queue.pop_front()
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
    /// Whether answers are held ([`FakeLlm::hold`]); a held answer waits
    /// until this is false again.
    pub(crate) held: tokio::sync::watch::Sender<bool>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            state: Mutex::default(),
            held: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running fake provider. Cloning shares the same server; the server stops
/// when the last clone is dropped.
#[derive(Clone)]
pub struct FakeLlm {
    shared: Arc<Shared>,
    addr: SocketAddr,
    _server: Arc<server::Handle>,
}

impl std::fmt::Debug for FakeLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeLlm").field("addr", &self.addr).finish()
    }
}

impl FakeLlm {
    /// Starts a fake on `127.0.0.1` and a free port.
    ///
    /// # Panics
    /// If no loopback port can be bound.
    pub async fn start() -> FakeLlm {
        FakeLlm::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind the fake LLM to a loopback port")
    }

    /// Starts a fake listening on `addr`.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<FakeLlm> {
        FakeLlm::start_blocking(addr)
    }

    /// Starts a fake listening on `addr`, from code that is not async.
    pub fn start_blocking(addr: SocketAddr) -> std::io::Result<FakeLlm> {
        let shared = Arc::new(Shared::default());
        let (addr, handle) = server::spawn(addr, shared.clone())?;
        Ok(FakeLlm {
            shared,
            addr,
            _server: Arc::new(handle),
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the fake listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queues `reply` for the next chat request of any dialect and model.
    pub fn push(&self, reply: Reply) {
        self.shared.lock().queue.push_back(reply);
    }

    /// Queues `reply` for the next request in `dialect`; it is served before
    /// anything queued with [`FakeLlm::push`].
    pub fn push_for(&self, dialect: Dialect, reply: Reply) {
        let mut state = self.shared.lock();
        state
            .by_dialect
            .entry(dialect)
            .or_default()
            .push_back(reply);
    }

    /// Queues `reply` for the next request for `model`; it is served before
    /// anything queued with [`FakeLlm::push_for`] or [`FakeLlm::push`].
    pub fn push_for_model(&self, model: impl Into<String>, reply: Reply) {
        let mut state = self.shared.lock();
        state
            .by_model
            .entry(model.into())
            .or_default()
            .push_back(reply);
    }

    /// How many scripted replies have not been served yet.
    pub fn remaining(&self) -> usize {
        let state = self.shared.lock();
        state.queue.len()
            + state.by_dialect.values().map(VecDeque::len).sum::<usize>()
            + state.by_model.values().map(VecDeque::len).sum::<usize>()
    }

    /// Limits chat requests to `per_second` the way providers do, with a
    /// token bucket that refills at that rate and holds one second's worth:
    /// a request finding it empty gets a 429 with `Retry-After: 1` (and uses
    /// no scripted reply). `None` lifts it; [`FakeLlm::clear`] does too.
    pub fn set_rate_limit(&self, per_second: Option<usize>) {
        let mut state = self.shared.lock();
        state.rate_limit = per_second;
        state.bucket = (per_second.unwrap_or(0) as f64, None);
    }

    /// How many chat requests the rate limit has refused since the last clear.
    pub fn rate_limited(&self) -> usize {
        self.shared.lock().rate_limited
    }

    /// Sets the latency added to every reply (zero by default).
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// Holds every answer (chat and webhook) until [`FakeLlm::release`]: a
    /// request is still received and recorded at once, so a test sees the
    /// call in [`FakeLlm::received`] and can act while its client is known
    /// to wait on it; the answer follows the release (then its latency).
    /// [`FakeLlm::clear`] releases too.
    pub fn hold(&self) {
        self.shared.held.send_replace(true);
    }

    /// Sends the held answers and stops holding new ones.
    pub fn release(&self) {
        self.shared.held.send_replace(false);
    }

    /// Turns recording of requests on (the default) or off; off keeps memory
    /// flat in long benchmarks.
    pub fn set_recording(&self, on: bool) {
        self.shared.lock().no_recording = !on;
    }

    /// Every request received so far (also those to unknown paths), oldest
    /// first.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.shared.lock().received.clone()
    }

    /// The most recent request received.
    pub fn last_request(&self) -> Option<ReceivedRequest> {
        self.shared.lock().received.last().cloned()
    }

    /// How many successful completions (text or tool calls, scripted or
    /// default) the fake has answered in `dialect`.
    pub fn successes(&self, dialect: Dialect) -> usize {
        self.shared
            .lock()
            .successes
            .get(&dialect)
            .copied()
            .unwrap_or(0)
    }

    /// How many chat requests (any dialect) the fake has answered with HTTP
    /// `status`, scripted or not: a test that injects errors can check they
    /// were really served. A malformed body is a `200` that is no success
    /// ([`FakeLlm::successes`]); a request still hanging is not counted.
    pub fn answered(&self, status: u16) -> usize {
        self.shared
            .lock()
            .answered
            .get(&status)
            .copied()
            .unwrap_or(0)
    }

    /// Forgets the recorded requests, the success and answer counts and
    /// every scripted reply not yet served, releases held answers, and
    /// restarts the default replies at `#1`. The latency and recording
    /// settings stay.
    pub fn clear(&self) {
        self.release();
        let mut state = self.shared.lock();
        let latency = state.latency;
        let no_recording = state.no_recording;
        *state = State {
            latency,
            no_recording,
            ..State::default()
        };
    }
}

#[cfg(test)]
mod tests;
