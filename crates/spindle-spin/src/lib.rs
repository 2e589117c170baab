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

use futures::TryStreamExt;
use spin_sdk::http::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};
use spin_sdk::{key_value, sqlite};
use spindle_api::{Backends, RequestContext};
use spindle_http::{
    ApiError, ApiRequest, ApiResponse, MAX_BODY_BYTES, Method, OutboundError, OutboundRequest,
    OutboundResponse, Router,
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
    let mut response = match read_request(request).await {
        Ok(request) => router.handle(&ctx, &request),
        Err(error) => error.into_response(),
    };
    // Says which component answered: routing is Spin's, and this makes it visible.
    response.set_header("spindle-component", component);
    write_response(&ctx, out, response).await;
    // The client has its answer; Spin runs the component on until this returns.
    ctx.run_deferred();
}

async fn read_request(request: IncomingRequest) -> Result<ApiRequest, ApiError> {
    let method = Method::parse(&request.method().to_string());
    let mut api_request = ApiRequest::new(method, &request.path_with_query().unwrap_or_default());
    api_request.headers = request
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
    let too_large = ApiError::PayloadTooLarge {
        limit: MAX_BODY_BYTES,
    };
    let declared = api_request
        .header("content-length")
        .and_then(|length| length.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES) {
        return Err(too_large);
    }
    let mut body = Vec::new();
    let mut stream = request.into_body_stream();
    while let Some(chunk) = stream
        .try_next()
        .await
        .map_err(|e| ApiError::bad_request(format!("request body could not be read: {e:?}")))?
    {
        // Stop reading as soon as the limit is passed: a chunked body has no
        // length to check up front.
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large);
        }
        body.extend(chunk);
    }
    api_request.body = body;
    Ok(api_request)
}

async fn write_response(ctx: &RequestContext, out: ResponseOutparam, mut response: ApiResponse) {
    let stream = response.stream.take();
    let headers: Vec<(String, Vec<u8>)> = response
        .headers
        .into_iter()
        .map(|(name, value)| (name, value.into_bytes()))
        .collect();
    let fields = Fields::from_list(&headers).unwrap_or_else(|_| Fields::new());
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
    let mut write = |chunk: &[u8]| {
        // `blocking-write-and-flush` takes at most 4096 bytes a call; the
        // flush is what makes each event reach the client at once. An error
        // means the client went away (the host closed the stream).
        chunk
            .chunks(4096)
            .all(|piece| output.blocking_write_and_flush(piece).is_ok())
    };
    if write(&response.body) {
        stream.run(ctx, &mut write);
    }
    // The stream must be dropped before its body is finished.
    drop(output);
    if let Err(error) = OutgoingBody::finish(body, None) {
        eprintln!("spindle: finishing the response body failed: {error:?}");
    }
}
