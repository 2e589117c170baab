//! The thin layer between Spin's SDK and Spindle's host-independent crates:
//! Spin's SQLite and key-value store behind the [`Db`] and [`KvStore`] ports,
//! and [`serve`], which turns a Spin request into an [`ApiRequest`] and the
//! router's [`ApiResponse`] back into a Spin response.
//!
//! ```ignore
//! #[spin_sdk::http_component]
//! async fn handle(request: IncomingRequest, out: ResponseOutparam) {
//!     spindle_spin::serve("accounts", &spindle_api::accounts::router(), request, out).await
//! }
//! ```
#![deny(missing_docs)]

mod outbound;
mod wire;

use futures::{Stream, TryStreamExt};
use spin_sdk::http::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};
use spin_sdk::{key_value, sqlite};
use spindle_api::{Backends, RequestContext};
use spindle_http::{
    ApiError, ApiRequest, ApiResponse, BodyStream, MAX_BODY_BYTES, Method, OutboundError,
    OutboundRequest, OutboundResponse, Router,
};
use spindle_store::{Db, DbError, KvError, KvStore, Rows, TransactionState, Value};

/// Spin's `default` SQLite database and key-value store.
pub struct SpinBackends;

impl Backends for SpinBackends {
    fn open_db(&self) -> Result<Box<dyn Db>, DbError> {
        let connection = sqlite::Connection::open_default()
            .map_err(|e| DbError::from_message(sqlite_message(e)))?;
        Ok(Box::new(SpinDb(connection, TransactionState::default())))
    }

    fn open_kv(&self) -> Result<Box<dyn KvStore>, KvError> {
        let store = key_value::Store::open_default().map_err(|e| KvError(e.to_string()))?;
        Ok(Box::new(SpinKv(store)))
    }

    fn variable(&self, name: &str) -> Option<String> {
        // Undefined (not mapped in this component's spin.toml) and unset alike.
        spin_sdk::variables::get(name).ok()
    }

    fn send(&self, request: &OutboundRequest) -> Result<OutboundResponse, OutboundError> {
        outbound::send(request, None)
    }

    fn send_keeping_alive(
        &self,
        request: &OutboundRequest,
        keep_alive: &mut dyn FnMut() -> u64,
    ) -> Result<OutboundResponse, OutboundError> {
        outbound::send(request, Some(keep_alive))
    }

    fn sleep_ms(&self, ms: u64) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }

    fn random_bytes(&self, buffer: &mut [u8]) {
        // The same `wasi` bindings the SDK links (wasi:random@0.2.0), so the
        // component's imports stay within the `route` world.
        let bytes = wasi::random::random::get_random_bytes(buffer.len() as u64);
        buffer.copy_from_slice(&bytes);
    }
}

struct SpinDb(sqlite::Connection, TransactionState);

impl Db for SpinDb {
    fn execute(&self, sql: &str, params: &[Value]) -> Result<Rows, DbError> {
        let params: Vec<sqlite::Value> = params.iter().map(to_spin).collect();
        let result = self
            .0
            .execute(sql, &params)
            .map_err(|e| DbError::from_message(sqlite_message(e)))?;
        Ok(Rows {
            columns: result.columns,
            rows: result
                .rows
                .into_iter()
                .map(|row| row.values.into_iter().map(from_spin).collect())
                .collect(),
        })
    }

    fn transaction(&self) -> &TransactionState {
        &self.1
    }
}

/// Spin reports SQLite's own failures as `Io(message)`; the message is what
/// tells a locked database from a constraint failure.
fn sqlite_message(error: sqlite::Error) -> String {
    match error {
        sqlite::Error::Io(message) => message,
        other => other.to_string(),
    }
}

fn to_spin(value: &Value) -> sqlite::Value {
    match value {
        Value::Null => sqlite::Value::Null,
        Value::Integer(i) => sqlite::Value::Integer(*i),
        Value::Real(r) => sqlite::Value::Real(*r),
        Value::Text(s) => sqlite::Value::Text(s.clone()),
        Value::Blob(b) => sqlite::Value::Blob(b.clone()),
    }
}

fn from_spin(value: sqlite::Value) -> Value {
    match value {
        sqlite::Value::Null => Value::Null,
        sqlite::Value::Integer(i) => Value::Integer(i),
        sqlite::Value::Real(r) => Value::Real(r),
        sqlite::Value::Text(s) => Value::Text(s),
        sqlite::Value::Blob(b) => Value::Blob(b),
    }
}

struct SpinKv(key_value::Store);

impl KvStore for SpinKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.0.get(key).map_err(|e| KvError(e.to_string()))
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.0.set(key, value).map_err(|e| KvError(e.to_string()))
    }

    fn delete(&self, key: &str) -> Result<(), KvError> {
        self.0.delete(key).map_err(|e| KvError(e.to_string()))
    }

    fn exists(&self, key: &str) -> Result<bool, KvError> {
        self.0.exists(key).map_err(|e| KvError(e.to_string()))
    }
}

/// Answers one Spin request for `component` with `router`, on Spin's storage.
pub async fn serve(
    component: &'static str,
    router: &Router<RequestContext>,
    request: IncomingRequest,
    out: ResponseOutparam,
) {
    let ctx = RequestContext::new(Box::new(SpinBackends));
    let response = answer(component, router, &ctx, read_request(request).await);
    write_response(&ctx, out, response).await;
    // The client has its answer; Spin runs the component on until this returns.
    ctx.run_deferred();
}

/// The router's answer to `request`, or the error's response when the
/// request could not be read, marked with the component that gave it:
/// routing is Spin's, and the header makes it visible.
fn answer<C>(
    component: &str,
    router: &Router<C>,
    ctx: &C,
    request: Result<ApiRequest, ApiError>,
) -> ApiResponse {
    let mut response = match request {
        Ok(request) => router.handle(ctx, &request),
        Err(error) => error.into_response(),
    };
    response.set_header("spindle-component", component);
    response
}

async fn read_request(request: IncomingRequest) -> Result<ApiRequest, ApiError> {
    let mut api_request = request_head(
        &request.method().to_string(),
        &request.path_with_query().unwrap_or_default(),
        request.headers().entries(),
    )?;
    api_request.body = read_body(request.into_body_stream()).await?;
    Ok(api_request)
}

/// The request as the API sees it, still without its body; 413 when its
/// `content-length` says the body is over [`MAX_BODY_BYTES`], so a body
/// that large is refused before a byte of it is read.
fn request_head(
    method: &str,
    path_with_query: &str,
    headers: Vec<(String, Vec<u8>)>,
) -> Result<ApiRequest, ApiError> {
    let mut api_request = ApiRequest::new(Method::parse(method), path_with_query);
    api_request.headers = wire::headers_from_wire(headers);
    let declared = api_request
        .header("content-length")
        .and_then(|length| length.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES) {
        return Err(ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    Ok(api_request)
}

/// Reads a request body of at most [`MAX_BODY_BYTES`]: 413 as soon as the
/// chunks read pass it (a chunked body has no length to check up front),
/// 400 when the host fails to deliver the body.
async fn read_body<E: std::fmt::Debug>(
    chunks: impl Stream<Item = Result<Vec<u8>, E>>,
) -> Result<Vec<u8>, ApiError> {
    let mut chunks = std::pin::pin!(chunks);
    let mut body = Vec::new();
    while let Some(chunk) = chunks
        .try_next()
        .await
        .map_err(|e| ApiError::bad_request(format!("request body could not be read: {e:?}")))?
    {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge {
                limit: MAX_BODY_BYTES,
            });
        }
        body.extend(chunk);
    }
    Ok(body)
}

async fn write_response(ctx: &RequestContext, out: ResponseOutparam, mut response: ApiResponse) {
    let stream = response.stream.take();
    let fields = Fields::from_list(&wire::headers_to_wire(response.headers))
        .unwrap_or_else(|_| Fields::new());
    let outgoing = OutgoingResponse::new(fields);
    // Our statuses are all valid HTTP codes; a refusal leaves Spin's default 200.
    let _ = outgoing.set_status_code(response.status);
    let Some(stream) = stream else {
        if let Err(error) = out.set_with_body(outgoing, response.body).await {
            eprintln!("spindle: writing the response failed: {error:?}");
        }
        return;
    };
    // A streamed body: the head goes out now, and each chunk as the producer
    // writes it. The response is not over until the body is finished, so
    // Spin keeps the instance (and its storage) alive while the stream runs.
    let Ok(body) = outgoing.body() else {
        eprintln!("spindle: the response body was already taken");
        return;
    };
    out.set(outgoing);
    let Ok(output) = body.write() else {
        eprintln!("spindle: the response body is not writable");
        return;
    };
    // The flush is what makes each event reach the client at once. An error
    // means the client went away (the host closed the stream).
    stream_body(ctx, &response.body, stream, |piece| {
        output.blocking_write_and_flush(piece)
    });
    // The stream must be dropped before its body is finished.
    drop(output);
    if let Err(error) = OutgoingBody::finish(body, None) {
        eprintln!("spindle: finishing the response body failed: {error:?}");
    }
}

/// Writes a streamed response's body through `write_piece`: `head` (what
/// the handler put in the body before the stream), then whatever `stream`
/// produces with `ctx`, each chunk at once in pieces the host accepts. The
/// stream is not run when the head cannot be written, and is told the
/// client has gone (its write answers `false`) once a piece fails.
fn stream_body<C: 'static, E>(
    ctx: &C,
    head: &[u8],
    stream: BodyStream,
    mut write_piece: impl FnMut(&[u8]) -> Result<(), E>,
) {
    let mut write = |chunk: &[u8]| wire::write_in_pieces(chunk, &mut write_piece).is_ok();
    if write(head) {
        stream.run(ctx, &mut write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::{StreamExt, stream};
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    fn wire_headers(headers: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
            .collect()
    }

    fn too_large() -> ApiError {
        ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        }
    }

    #[test]
    fn the_request_head_keeps_method_path_query_and_lower_case_headers() {
        let request = request_head(
            "post",
            "/api/v1/executions?limit=2&cursor=abc",
            wire_headers(&[("Authorization", "Bearer k"), ("Idempotency-Key", "K-1")]),
        )
        .unwrap();
        assert_eq!(request.method, Method::Post);
        assert_eq!(request.path, "/api/v1/executions");
        assert_eq!(request.query, "limit=2&cursor=abc");
        assert_eq!(
            request.headers,
            vec![
                ("authorization".to_string(), "Bearer k".to_string()),
                ("idempotency-key".to_string(), "K-1".to_string()),
            ]
        );
        assert!(request.body.is_empty());
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_before_the_body_is_read() {
        let over = (MAX_BODY_BYTES + 1).to_string();
        let refused = request_head("POST", "/x", wire_headers(&[("Content-Length", &over)]));
        assert_eq!(refused.unwrap_err(), too_large());
    }

    #[test]
    fn a_declared_length_at_the_limit_or_unreadable_is_left_to_the_body_read() {
        let at_limit = MAX_BODY_BYTES.to_string();
        for length in [at_limit.as_str(), "not a number"] {
            let head = request_head("POST", "/x", wire_headers(&[("content-length", length)]));
            assert!(head.is_ok(), "content-length {length:?}: {head:?}");
        }
    }

    #[test]
    fn a_body_in_chunks_is_read_whole_and_in_order() {
        let chunks =
            stream::iter([b"{\"a\":".to_vec(), Vec::new(), b"1}".to_vec()].map(Ok::<_, ()>));
        assert_eq!(block_on(read_body(chunks)).unwrap(), b"{\"a\":1}");
    }

    #[test]
    fn a_body_of_exactly_the_limit_is_read() {
        let half = MAX_BODY_BYTES / 2;
        let chunks =
            stream::iter([vec![1u8; half], vec![2u8; MAX_BODY_BYTES - half]].map(Ok::<_, ()>));
        assert_eq!(block_on(read_body(chunks)).unwrap().len(), MAX_BODY_BYTES);
    }

    #[test]
    fn a_chunked_body_is_refused_at_the_chunk_that_passes_the_limit_and_read_no_further() {
        let pulled = Cell::new(0);
        let chunks = stream::iter([vec![0u8; MAX_BODY_BYTES], vec![0u8; 1], vec![0u8; 1]])
            .inspect(|_| pulled.set(pulled.get() + 1))
            .map(Ok::<_, ()>);
        assert_eq!(block_on(read_body(chunks)).unwrap_err(), too_large());
        assert_eq!(pulled.get(), 2, "chunks pulled from the host");
    }

    #[test]
    fn a_body_the_host_fails_to_deliver_is_a_bad_request() {
        let chunks = stream::iter([Ok(b"partial".to_vec()), Err("connection reset")]);
        let error = block_on(read_body(chunks)).unwrap_err();
        assert_eq!(
            error,
            ApiError::bad_request("request body could not be read: \"connection reset\"")
        );
        assert_eq!(error.status(), 400);
    }

    fn created(_: &(), _: &ApiRequest, _: &spindle_http::Params) -> Result<ApiResponse, ApiError> {
        let mut response = ApiResponse::json(201, &"made");
        // A handler cannot claim another component's name: the adapter's wins.
        response.set_header("spindle-component", "someone-else");
        Ok(response)
    }

    fn router() -> Router<()> {
        Router::new().route(Method::Post, "/things", created)
    }

    #[test]
    fn every_answer_names_the_component_that_gave_it() {
        let routed = answer(
            "workflows",
            &router(),
            &(),
            Ok(ApiRequest::new(Method::Post, "/things")),
        );
        let unrouted = answer(
            "workflows",
            &router(),
            &(),
            Ok(ApiRequest::new(Method::Get, "/nowhere")),
        );
        let unread = answer("workflows", &router(), &(), Err(too_large()));
        for (response, status) in [(&routed, 201), (&unrouted, 404), (&unread, 413)] {
            assert_eq!(response.status, status);
            assert_eq!(
                response
                    .headers
                    .iter()
                    .filter(|(name, _)| name == "spindle-component")
                    .map(|(_, value)| value.as_str())
                    .collect::<Vec<_>>(),
                vec!["workflows"]
            );
        }
        assert_eq!(routed.body, b"\"made\"");
    }

    #[test]
    fn a_request_that_could_not_be_read_answers_its_error_without_reaching_a_handler() {
        let response = answer("execute", &router(), &(), Err(too_large()));
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(body["error"]["code"], "payload_too_large");
    }

    /// The pieces written to the client, and whether the client is still there.
    #[derive(Default)]
    struct Client {
        pieces: Vec<Vec<u8>>,
        gone_after: Option<usize>,
    }

    impl Client {
        fn write(&mut self, piece: &[u8]) -> Result<(), &'static str> {
            if self.gone_after.is_some_and(|n| self.pieces.len() >= n) {
                return Err("closed");
            }
            self.pieces.push(piece.to_vec());
            Ok(())
        }
    }

    #[test]
    fn a_streamed_body_sends_its_head_then_each_chunk_in_pieces_the_host_accepts() {
        let stream = BodyStream::new(|ctx: &&str, write: &mut spindle_http::ChunkSink<'_>| {
            assert!(write(format!("event: {ctx}\n").as_bytes()));
            assert!(write(&[7u8; 5000]));
        });
        let mut client = Client::default();
        stream_body(&"ping", b"retry: 1000\n", stream, |piece| {
            client.write(piece)
        });
        let lengths: Vec<usize> = client.pieces.iter().map(Vec::len).collect();
        assert_eq!(lengths, vec![12, 12, 4096, 904]);
        assert_eq!(client.pieces[0], b"retry: 1000\n");
        assert_eq!(client.pieces[1], b"event: ping\n");
        assert_eq!(client.pieces[2..].concat(), vec![7u8; 5000]);
    }

    #[test]
    fn a_stream_is_not_run_when_its_head_cannot_be_written() {
        let ran = Rc::new(Cell::new(false));
        let stream = BodyStream::new({
            let ran = ran.clone();
            move |_: &(), _: &mut spindle_http::ChunkSink<'_>| ran.set(true)
        });
        let mut client = Client {
            gone_after: Some(0),
            ..Client::default()
        };
        stream_body(&(), b"head", stream, |piece| client.write(piece));
        assert!(!ran.get());
        assert!(client.pieces.is_empty());
    }

    #[test]
    fn a_stream_with_an_empty_head_runs_at_once() {
        let stream = BodyStream::new(|_: &(), write: &mut spindle_http::ChunkSink<'_>| {
            assert!(write(b"data: 1\n\n"));
        });
        let mut client = Client::default();
        stream_body(&(), b"", stream, |piece| client.write(piece));
        assert_eq!(client.pieces, vec![b"data: 1\n\n".to_vec()]);
    }

    #[test]
    fn a_stream_is_told_when_the_client_has_gone() {
        let answers = Rc::new(RefCell::new(Vec::new()));
        let stream = BodyStream::new({
            let answers = answers.clone();
            move |_: &(), write: &mut spindle_http::ChunkSink<'_>| {
                for event in [b"one".as_slice(), b"two", b"three"] {
                    answers.borrow_mut().push(write(event));
                }
            }
        });
        let mut client = Client {
            gone_after: Some(2),
            ..Client::default()
        };
        stream_body(&(), b"", stream, |piece| client.write(piece));
        assert_eq!(*answers.borrow(), vec![true, true, false]);
        assert_eq!(client.pieces, vec![b"one".to_vec(), b"two".to_vec()]);
    }

    #[test]
    fn database_values_cross_to_spin_and_back_unchanged() {
        let values = [
            Value::Null,
            Value::Integer(-7),
            Value::Real(2.5),
            Value::Text("née".into()),
            Value::Blob(vec![0, 255]),
        ];
        for value in values {
            assert_eq!(from_spin(to_spin(&value)), value);
        }
    }

    #[test]
    fn a_sqlite_failure_keeps_sqlites_own_message() {
        // The store tells a busy database from a constraint failure by this text.
        assert_eq!(
            sqlite_message(sqlite::Error::Io("database is locked".into())),
            "database is locked"
        );
        let other = sqlite_message(sqlite::Error::NoSuchDatabase);
        assert!(other.contains("NoSuchDatabase"), "{other}");
    }
}
