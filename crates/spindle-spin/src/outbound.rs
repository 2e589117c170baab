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

use crate::wire;

/// Most bytes asked of the host in one read of a response body.
const READ_CHUNK: u64 = 64 * 1024;

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
    let timeout_ns = nanoseconds(request.timeout_ms);
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
    let headers = wire::headers_from_wire(response.headers().entries());
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

/// A timeout in milliseconds as the host's nanoseconds; one too long to
/// count in nanoseconds is the longest the host can be told.
fn nanoseconds(ms: u64) -> u64 {
    ms.saturating_mul(1_000_000)
}

fn invalid(what: &str, url: &str) -> OutboundError {
    OutboundError::Failed(format!("{what}: {url}"))
}

/// The parts of an absolute `http`/`https` URL the host takes one by one:
/// the scheme, the authority, and the path with its query (`/` when the
/// URL has none).
fn split_url(url: &str) -> Result<(Scheme, &str, &str), OutboundError> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("http", rest)) => (Scheme::Http, rest),
        Some(("https", rest)) => (Scheme::Https, rest),
        _ => return Err(invalid("only absolute http(s) URLs are supported", url)),
    };
    Ok(match rest.find('/') {
        Some(slash) => (scheme, &rest[..slash], &rest[slash..]),
        None => (scheme, rest, "/"),
    })
}

/// The host's method for an upper-case method name.
fn wire_method(name: &str) -> Method {
    match name {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        "DELETE" => Method::Delete,
        "HEAD" => Method::Head,
        other => Method::Other(other.to_string()),
    }
}

fn build(request: &OutboundRequest) -> Result<OutgoingRequest, OutboundError> {
    let (scheme, authority, path) = split_url(&request.url)?;
    // With `content-length` set, the host sends the body with that length
    // instead of chunked (and checks that exactly that much is written).
    let fields = Fields::from_list(&wire::headers_to_wire(request.wire_headers()))
        .map_err(|e| invalid(&format!("bad header ({e:?})"), &request.url))?;
    let outgoing = OutgoingRequest::new(fields);
    outgoing
        .set_method(&wire_method(&request.method))
        .and_then(|()| outgoing.set_scheme(Some(&scheme)))
        .and_then(|()| outgoing.set_authority(Some(authority)))
        .and_then(|()| outgoing.set_path_with_query(Some(path)))
        .map_err(|()| invalid("invalid URL", &request.url))?;
    Ok(outgoing)
}

fn write_body(body: OutgoingBody, bytes: &[u8]) -> Result<(), OutboundError> {
    let failed = |e: StreamError| OutboundError::Failed(format!("sending the body: {e:?}"));
    {
        let stream = body
            .write()
            .map_err(|()| OutboundError::Failed("request body stream taken".into()))?;
        wire::write_in_pieces(bytes, |piece| stream.blocking_write_and_flush(piece))
            .map_err(failed)?;
    }
    OutgoingBody::finish(body, None).map_err(from_error_code)
}

/// Something a request waits on: a host pollable, in production.
trait Wait {
    /// Whether it is ready now.
    fn is_ready(&self) -> bool;
    /// Waits until it is ready.
    fn block(&self);
    /// Waits until it is ready or `ms` milliseconds have passed.
    fn block_at_most(&self, ms: u64);
}

impl Wait for Pollable {
    fn is_ready(&self) -> bool {
        self.ready()
    }

    fn block(&self) {
        Pollable::block(self);
    }

    fn block_at_most(&self, ms: u64) {
        let timer = monotonic_clock::subscribe_duration(nanoseconds(ms));
        poll(&[self, &timer]);
    }
}

/// Waits until `ready` is, calling `keep_alive` each time the time it asked
/// for has passed.
fn wait_for(ready: &impl Wait, keep_alive: &mut KeepAlive<'_>) {
    let Some(keep_alive) = keep_alive else {
        return ready.block();
    };
    while !ready.is_ready() {
        ready.block_at_most(keep_alive());
    }
}

/// One read of a response body.
enum Read {
    /// Bytes that arrived.
    Bytes(Vec<u8>),
    /// The body is over.
    End,
    /// The host could not read on; its description.
    Failed(String),
}

/// The whole body that `next` reads piece by piece, refused as
/// [`OutboundError::TooLarge`] (and read no further) as soon as it passes
/// `limit` bytes.
fn read_limited(limit: usize, mut next: impl FnMut() -> Read) -> Result<Vec<u8>, OutboundError> {
    let mut bytes = Vec::new();
    loop {
        match next() {
            Read::Bytes(chunk) => {
                if bytes.len() + chunk.len() > limit {
                    return Err(OutboundError::TooLarge(limit));
                }
                bytes.extend(chunk);
            }
            Read::End => return Ok(bytes),
            Read::Failed(reason) => {
                return Err(OutboundError::Failed(format!("reading the body: {reason}")));
            }
        }
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
    read_limited(limit, || {
        wait_for(&readable, keep_alive);
        match stream.read(READ_CHUNK) {
            Ok(chunk) => Read::Bytes(chunk),
            Err(StreamError::Closed) => Read::End,
            Err(StreamError::LastOperationFailed(e)) => Read::Failed(e.to_debug_string()),
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    #[test]
    fn an_absolute_url_splits_into_scheme_authority_and_path_with_query() {
        let (scheme, authority, path) =
            split_url("https://api.example.com:8443/v1/chat?stream=false").unwrap();
        assert!(matches!(scheme, Scheme::Https));
        assert_eq!(authority, "api.example.com:8443");
        assert_eq!(path, "/v1/chat?stream=false");

        let (scheme, authority, path) = split_url("http://127.0.0.1:9999").unwrap();
        assert!(matches!(scheme, Scheme::Http));
        assert_eq!((authority, path), ("127.0.0.1:9999", "/"));
    }

    #[test]
    fn a_url_that_is_not_absolute_http_is_refused_naming_it() {
        for url in [
            "ftp://example.com/file",
            "/internal/steps/1",
            "example.com/x",
            "",
        ] {
            assert_eq!(
                split_url(url).err(),
                Some(OutboundError::Failed(format!(
                    "only absolute http(s) URLs are supported: {url}"
                ))),
                "{url}"
            );
        }
    }

    #[test]
    fn methods_map_to_the_hosts_and_any_other_is_passed_on_by_name() {
        let named = |name: &str| match wire_method(name) {
            Method::Get => "get".to_string(),
            Method::Post => "post".to_string(),
            Method::Put => "put".to_string(),
            Method::Patch => "patch".to_string(),
            Method::Delete => "delete".to_string(),
            Method::Head => "head".to_string(),
            Method::Other(other) => format!("other {other}"),
            _ => "unexpected".to_string(),
        };
        let mapped: Vec<String> = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "PURGE"]
            .into_iter()
            .map(named)
            .collect();
        assert_eq!(
            mapped,
            [
                "get",
                "post",
                "put",
                "patch",
                "delete",
                "head",
                "other PURGE"
            ]
        );
    }

    #[test]
    fn timeouts_go_to_the_host_in_nanoseconds_without_overflowing() {
        assert_eq!(nanoseconds(30_000), 30_000_000_000);
        assert_eq!(nanoseconds(u64::MAX), u64::MAX);
    }

    #[test]
    fn host_error_codes_become_denied_timeout_or_failed() {
        assert_eq!(
            from_error_code(ErrorCode::HttpRequestDenied),
            OutboundError::Denied("not in allowed_outbound_hosts".into())
        );
        for timeout in [
            ErrorCode::ConnectionTimeout,
            ErrorCode::ConnectionReadTimeout,
            ErrorCode::ConnectionWriteTimeout,
        ] {
            assert_eq!(from_error_code(timeout), OutboundError::Timeout);
        }
        let refused = from_error_code(ErrorCode::ConnectionRefused);
        assert!(
            matches!(&refused, OutboundError::Failed(reason) if reason.contains("ConnectionRefused")),
            "{refused:?}"
        );
        // A refused destination is final; a timeout or a failed connection may pass later.
        assert!(!from_error_code(ErrorCode::HttpRequestDenied).is_transient());
        assert!(from_error_code(ErrorCode::ConnectionTimeout).is_transient());
        assert!(refused.is_transient());
    }

    /// A pollable that becomes ready after a number of bounded waits.
    struct Pending {
        ready_after: usize,
        waits_ms: RefCell<Vec<u64>>,
        blocked: Cell<usize>,
    }

    impl Pending {
        fn ready_after(waits: usize) -> Self {
            Self {
                ready_after: waits,
                waits_ms: RefCell::new(Vec::new()),
                blocked: Cell::new(0),
            }
        }
    }

    impl Wait for Pending {
        fn is_ready(&self) -> bool {
            self.waits_ms.borrow().len() >= self.ready_after
        }

        fn block(&self) {
            self.blocked.set(self.blocked.get() + 1);
        }

        fn block_at_most(&self, ms: u64) {
            self.waits_ms.borrow_mut().push(ms);
        }
    }

    #[test]
    fn a_wait_without_keep_alive_just_blocks() {
        let pending = Pending::ready_after(3);
        wait_for(&pending, &mut None);
        assert_eq!(pending.blocked.get(), 1);
        assert!(pending.waits_ms.borrow().is_empty());
    }

    #[test]
    fn a_wait_keeping_alive_calls_it_before_each_wait_for_as_long_as_it_asks() {
        let pending = Pending::ready_after(3);
        let mut asked = [250, 100, 40].into_iter();
        let mut calls = 0;
        let mut keep_alive = || {
            calls += 1;
            asked.next().unwrap()
        };
        wait_for(&pending, &mut Some(&mut keep_alive));
        assert_eq!(calls, 3);
        assert_eq!(*pending.waits_ms.borrow(), vec![250, 100, 40]);
        assert_eq!(pending.blocked.get(), 0);
    }

    #[test]
    fn a_wait_on_something_ready_does_not_keep_alive() {
        let pending = Pending::ready_after(0);
        let mut calls = 0;
        let mut keep_alive = || {
            calls += 1;
            1_000
        };
        wait_for(&pending, &mut Some(&mut keep_alive));
        assert_eq!(calls, 0);
        assert_eq!(pending.blocked.get(), 0);
    }

    /// Reads that answer `reads` in turn and count how many were made.
    fn reads(reads: Vec<Read>) -> (impl FnMut() -> Read, std::rc::Rc<Cell<usize>>) {
        let made = std::rc::Rc::new(Cell::new(0));
        let mut reads = reads.into_iter();
        let counter = made.clone();
        let next = move || {
            counter.set(counter.get() + 1);
            reads.next().expect("read past the end of the body")
        };
        (next, made)
    }

    #[test]
    fn a_body_is_read_whole_until_its_end() {
        let (next, made) = reads(vec![
            Read::Bytes(b"{\"choices\":".to_vec()),
            Read::Bytes(Vec::new()),
            Read::Bytes(b"[]}".to_vec()),
            Read::End,
        ]);
        assert_eq!(read_limited(64, next).unwrap(), b"{\"choices\":[]}");
        assert_eq!(made.get(), 4);
    }

    #[test]
    fn a_body_of_exactly_the_limit_is_read() {
        let (next, _) = reads(vec![
            Read::Bytes(vec![1; 6]),
            Read::Bytes(vec![2; 4]),
            Read::End,
        ]);
        assert_eq!(read_limited(10, next).unwrap().len(), 10);
    }

    #[test]
    fn a_body_past_the_limit_is_too_large_and_read_no_further() {
        let (next, made) = reads(vec![
            Read::Bytes(vec![0; 8]),
            Read::Bytes(vec![0; 3]),
            Read::Bytes(vec![0; 1]),
            Read::End,
        ]);
        assert_eq!(read_limited(10, next), Err(OutboundError::TooLarge(10)));
        assert_eq!(made.get(), 2);
    }

    #[test]
    fn a_body_the_host_cannot_read_fails_with_its_reason() {
        let (next, _) = reads(vec![
            Read::Bytes(b"partial".to_vec()),
            Read::Failed("connection reset".into()),
        ]);
        assert_eq!(
            read_limited(64, next),
            Err(OutboundError::Failed(
                "reading the body: connection reset".into()
            ))
        );
    }
}
