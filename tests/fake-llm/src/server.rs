//! The HTTP side: accepting connections, routing, recording, answering.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::render::{self, Completion};
use crate::{Dialect, ReceivedRequest, Reply, ReplyKind, Shared};

/// How long [`Reply::hang`] keeps a request open.
const HANG: Duration = Duration::from_secs(3600);

/// Stops the server thread when dropped.
pub(crate) struct Handle {
    _stop: oneshot::Sender<()>,
}

/// Binds `addr` and serves on a thread of its own with its own runtime.
pub(crate) fn spawn(
    addr: SocketAddr,
    shared: Arc<Shared>,
) -> std::io::Result<(SocketAddr, Handle)> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(format!("fake-llm-{}", addr.port()))
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                tokio::select! {
                    () = accept_loop(listener, shared) => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime here cancels every connection still open.
        })?;
    Ok((addr, Handle { _stop: stop }))
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| handle(shared.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// What was decided, under the lock, to answer one request.
enum Plan {
    Immediate(Response<Full<Bytes>>),
    /// A webhook delivery (`POST /events/…`), answered from the shared queue.
    Event {
        reply: Option<Reply>,
        latency: Duration,
    },
    Reply {
        dialect: Dialect,
        model: String,
        seq: u64,
        input_tokens: u64,
        reply: Option<Reply>,
        latency: Duration,
    },
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let received_at = std::time::Instant::now();
    let json_body: Option<Value> = serde_json::from_slice(&bytes).ok();
    let route =
        Dialect::from_path(parts.uri.path()).filter(|_| parts.method == hyper::Method::POST);
    let model = route.as_ref().and_then(|(_, m)| m.clone()).or_else(|| {
        json_body
            .as_ref()
            .and_then(|b| b.get("model"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });

    let plan = {
        let mut state = shared.lock();
        if !state.no_recording {
            state.received.push(ReceivedRequest {
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
                query: parts.uri.query().map(str::to_owned),
                headers: parts
                    .headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.as_str().to_owned(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                body: json_body.clone().unwrap_or(Value::Null),
                raw_body: String::from_utf8_lossy(&bytes).into_owned(),
                dialect: route.as_ref().map(|(d, _)| *d),
                model: model.clone(),
                received_at,
            });
        }
        let is_event =
            parts.method == hyper::Method::POST && parts.uri.path().starts_with("/events/");
        match (route, &json_body) {
            (None, _) if is_event => {
                let reply = state.queue.pop_front();
                let latency = state.latency + reply.as_ref().map_or(Duration::ZERO, |r| r.latency);
                Plan::Event { reply, latency }
            }
            (None, _) => Plan::Immediate(not_found(&parts.method, parts.uri.path())),
            (Some((dialect, _)), None) => {
                state.seq += 1;
                let body = render::error(
                    dialect,
                    400,
                    Some("The request body is not valid JSON."),
                    None,
                    state.seq,
                );
                *state.answered.entry(400).or_default() += 1;
                Plan::Immediate(json_response(StatusCode::BAD_REQUEST, &body))
            }
            (Some((dialect, _)), Some(body)) => {
                state.seq += 1;
                let over_limit = match state.rate_limit {
                    None => false,
                    Some(per_second) => {
                        let now = std::time::Instant::now();
                        let (tokens, filled) = state.bucket;
                        let refill = filled.map_or(0.0, |at| now.duration_since(at).as_secs_f64());
                        let tokens = (tokens + refill * per_second as f64).min(per_second as f64);
                        let allowed = tokens >= 1.0;
                        state.bucket = (if allowed { tokens - 1.0 } else { tokens }, Some(now));
                        !allowed
                    }
                };
                let reply = if over_limit {
                    state.rate_limited += 1;
                    Some(Reply::rate_limited(1))
                } else {
                    state.next_reply(dialect, model.as_deref())
                };
                let latency = state.latency + reply.as_ref().map_or(Duration::ZERO, |r| r.latency);
                Plan::Reply {
                    dialect,
                    model: model.unwrap_or_else(|| "fake-model".to_owned()),
                    seq: state.seq,
                    input_tokens: render::input_tokens(dialect, body),
                    reply,
                    latency,
                }
            }
        }
    };

    if !matches!(plan, Plan::Immediate(_)) {
        // A held answer waits for the release (the sender lives as long as the server).
        let _ = shared.held.subscribe().wait_for(|held| !held).await;
    }
    let (dialect, model, seq, input_tokens, reply, latency) = match plan {
        Plan::Immediate(response) => return Ok(response),
        Plan::Event { reply, latency } => return Ok(event_answer(reply, latency).await),
        Plan::Reply {
            dialect,
            model,
            seq,
            input_tokens,
            reply,
            latency,
        } => (dialect, model, seq, input_tokens, reply, latency),
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let reply = reply.unwrap_or_else(|| Reply::text(format!("fake reply #{seq}")));
    let mut response = match &reply.kind {
        ReplyKind::Completion { text, calls } => {
            let (input, output) = reply
                .tokens
                .unwrap_or_else(|| (input_tokens, render::output_tokens(text.as_deref(), calls)));
            let body = render::completion(
                dialect,
                &Completion {
                    model: &model,
                    seq,
                    created: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    text: text.as_deref(),
                    calls,
                    truncated: reply.truncated,
                    input_tokens: input,
                    output_tokens: output,
                },
            );
            *shared.lock().successes.entry(dialect).or_default() += 1;
            json_response(StatusCode::OK, &body)
        }
        ReplyKind::Error { status, message } => {
            let body = render::error(dialect, *status, message.as_deref(), reply.retry_after, seq);
            json_response(status_code(*status), &body)
        }
        ReplyKind::Raw { status, body } => {
            let mut response = Response::new(Full::new(Bytes::from(body.clone())));
            *response.status_mut() = status_code(*status);
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        ReplyKind::Hang => {
            tokio::time::sleep(HANG).await;
            let body = render::error(dialect, 504, None, None, seq);
            json_response(StatusCode::GATEWAY_TIMEOUT, &body)
        }
    };
    *shared
        .lock()
        .answered
        .entry(response.status().as_u16())
        .or_default() += 1;
    if let Some(secs) = reply.retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    let id_header = match dialect {
        Dialect::OpenAi => Some(("x-request-id", format!("req_fake{seq}"))),
        Dialect::Anthropic => Some(("request-id", format!("req_fake{seq}"))),
        Dialect::Gemini => None,
    };
    if let Some((name, value)) = id_header
        && let Ok(value) = HeaderValue::from_str(&value)
    {
        response.headers_mut().insert(name, value);
    }
    Ok(response)
}

/// The answer to a webhook delivery: `200 {}` unless a scripted reply says
/// otherwise (an error's status with its message, a raw reply as it is, a hang).
async fn event_answer(reply: Option<Reply>, latency: Duration) -> Response<Full<Bytes>> {
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match reply.map(|r| r.kind) {
        None | Some(ReplyKind::Completion { .. }) => json_response(StatusCode::OK, &json!({})),
        Some(ReplyKind::Error { status, message }) => json_response(
            status_code(status),
            &json!({"error": message.unwrap_or_else(|| "scripted failure".to_owned())}),
        ),
        Some(ReplyKind::Raw { status, body }) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status_code(status);
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Some(ReplyKind::Hang) => {
            tokio::time::sleep(HANG).await;
            json_response(StatusCode::GATEWAY_TIMEOUT, &json!({}))
        }
    }
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn not_found(method: &hyper::Method, path: &str) -> Response<Full<Bytes>> {
    let body = json!({"error": {
        "message": format!("fake-llm has no endpoint {method} {path}"),
        "type": "invalid_request_error",
        "param": null,
        "code": "unknown_url",
    }});
    json_response(StatusCode::NOT_FOUND, &body)
}
