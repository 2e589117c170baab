//! Outgoing HTTP on `wasi:http/outgoing-handler`, blocking: the API's
//! handlers are synchronous, and a request waits on its pollables directly,
//! beside a timer when it keeps something alive while it waits.

use spindle_http::{OutboundError, OutboundRequest, OutboundResponse};
use wasi::clocks::monotonic_clock;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasi::io::poll::{Pollable, poll};
use wasi::io::streams::StreamError;

/// Largest write the host accepts in one `blocking-write-and-flush`.
const WRITE_CHUNK: usize = 4096;

/// Called while a request waits: returns how many milliseconds may pass
/// before it is called again.
pub type KeepAlive<'a> = Option<&'a mut dyn FnMut() -> u64>;

/// Sends `request` and reads the whole answer, up to its size limit, calling
/// `keep_alive` (if any) while it waits for the answer and its body.
pub fn send(
    request: &OutboundRequest,
    mut keep_alive: KeepAlive<'_>,
) -> Result<OutboundResponse, OutboundError> {
    let outgoing = build(request)?;
    let body = outgoing
        .body()
        .map_err(|()| OutboundError::Failed("request body already taken".into()))?;
    let options = RequestOptions::new();
    let timeout_ns = request.timeout_ms.saturating_mul(1_000_000);
    // Hosts may not support every timeout; an unsupported one is not fatal.
    let _ = options.set_connect_timeout(Some(timeout_ns));
    let _ = options.set_first_byte_timeout(Some(timeout_ns));
    let _ = options.set_between_bytes_timeout(Some(timeout_ns));
    let future = outgoing_handler::handle(outgoing, Some(options)).map_err(from_error_code)?;
    // A refused request closes its body stream: the response's error code
    // (say, HttpRequestDenied) is the real reason, so it is read first.
    let written = write_body(body, &request.body);
    wait_for(&future.subscribe(), &mut keep_alive);
    let response = future
        .get()
        .ok_or_else(|| OutboundError::Failed("response not ready".into()))?
        .map_err(|()| OutboundError::Failed("response already taken".into()))?
        .map_err(from_error_code)?;
    written?;
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(name, value)| {
            (
                name.to_ascii_lowercase(),
                String::from_utf8_lossy(&value).into_owned(),
            )
        })
        .collect();
    let status = response.status();
    let incoming = response
        .consume()
        .map_err(|()| OutboundError::Failed("response body already taken".into()))?;
    let body = read_body(&incoming, request.max_response_bytes, &mut keep_alive)?;
    // The trailers are not needed; finishing releases the body.
    drop(IncomingBody::finish(incoming));
    Ok(OutboundResponse {
        status,
        headers,
        body,
    })
}

fn build(request: &OutboundRequest) -> Result<OutgoingRequest, OutboundError> {
    let invalid = |what: &str| OutboundError::Failed(format!("{what}: {}", request.url));
    let (scheme, rest) = match request.url.split_once("://") {
        Some(("http", rest)) => (Scheme::Http, rest),
        Some(("https", rest)) => (Scheme::Https, rest),
        _ => return Err(invalid("only absolute http(s) URLs are supported")),
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    // With `content-length` set, the host sends the body with that length
    // instead of chunked (and checks that exactly that much is written).
    let headers: Vec<(String, Vec<u8>)> = request
        .wire_headers()
        .into_iter()
        .map(|(name, value)| (name, value.into_bytes()))
        .collect();
    let fields =
        Fields::from_list(&headers).map_err(|e| invalid(&format!("bad header ({e:?})")))?;
    let outgoing = OutgoingRequest::new(fields);
    let method = match request.method.as_str() {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        "DELETE" => Method::Delete,
        "HEAD" => Method::Head,
        other => Method::Other(other.to_string()),
    };
    outgoing
        .set_method(&method)
        .and_then(|()| outgoing.set_scheme(Some(&scheme)))
        .and_then(|()| outgoing.set_authority(Some(authority)))
        .and_then(|()| outgoing.set_path_with_query(Some(path)))
        .map_err(|()| invalid("invalid URL"))?;
    Ok(outgoing)
}

fn write_body(body: OutgoingBody, bytes: &[u8]) -> Result<(), OutboundError> {
    let failed = |e: StreamError| OutboundError::Failed(format!("sending the body: {e:?}"));
    {
        let stream = body
            .write()
            .map_err(|()| OutboundError::Failed("request body stream taken".into()))?;
        for chunk in bytes.chunks(WRITE_CHUNK) {
            stream.blocking_write_and_flush(chunk).map_err(failed)?;
        }
    }
    OutgoingBody::finish(body, None).map_err(from_error_code)
}

/// Waits until `ready` is, calling `keep_alive` each time the time it asked
/// for has passed.
fn wait_for(ready: &Pollable, keep_alive: &mut KeepAlive<'_>) {
    let Some(keep_alive) = keep_alive else {
        return ready.block();
    };
    while !ready.ready() {
        let timer = monotonic_clock::subscribe_duration(keep_alive().saturating_mul(1_000_000));
        poll(&[ready, &timer]);
    }
}

fn read_body(
    body: &IncomingBody,
    limit: usize,
    keep_alive: &mut KeepAlive<'_>,
) -> Result<Vec<u8>, OutboundError> {
    let stream = body
        .stream()
        .map_err(|()| OutboundError::Failed("response body stream taken".into()))?;
    // Declared after the stream, so dropped before it (a child resource).
    let readable = stream.subscribe();
    let mut bytes = Vec::new();
    loop {
        wait_for(&readable, keep_alive);
        match stream.read(64 * 1024) {
            Ok(chunk) => {
                if bytes.len() + chunk.len() > limit {
                    return Err(OutboundError::TooLarge(limit));
                }
                bytes.extend(chunk);
            }
            Err(StreamError::Closed) => return Ok(bytes),
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(OutboundError::Failed(format!(
                    "reading the body: {}",
                    e.to_debug_string()
                )));
            }
        }
    }
}

fn from_error_code(code: ErrorCode) -> OutboundError {
    match code {
        ErrorCode::HttpRequestDenied => {
            OutboundError::Denied("not in allowed_outbound_hosts".into())
        }
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionWriteTimeout => OutboundError::Timeout,
        other => OutboundError::Failed(format!("{other:?}")),
    }
}
