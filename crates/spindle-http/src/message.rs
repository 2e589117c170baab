//! Requests and responses as the API sees them, independent of the host.

use crate::error::{ApiError, ErrorDetail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::any::Any;
use std::fmt;

/// The largest request body the API reads; a larger one answers 413 unread.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// An HTTP method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
    /// OPTIONS
    Options,
    /// Any other method, upper case.
    Other(String),
}

impl Method {
    /// Parses a method name as it arrives on the wire.
    pub fn parse(name: &str) -> Self {
        match name.to_ascii_uppercase().as_str() {
            "GET" => Self::Get,
            "HEAD" => Self::Head,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "PATCH" => Self::Patch,
            "DELETE" => Self::Delete,
            "OPTIONS" => Self::Options,
            other => Self::Other(other.to_string()),
        }
    }

    /// The method's name on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
            Self::Options => "OPTIONS",
            Self::Other(name) => name,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An incoming API request with its body read in full.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    /// The request method.
    pub method: Method,
    /// The path, without the query string.
    pub path: String,
    /// The raw query string, without the `?`.
    pub query: String,
    /// Headers with lower-case names, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl ApiRequest {
    /// A request for `method` and a path that may carry a query string.
    pub fn new(method: Method, path_with_query: &str) -> Self {
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((path_with_query, ""));
        Self {
            method,
            path: path.to_string(),
            query: query.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of query parameter `name`, as sent (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }

    /// The first value of query parameter `name`, decoded as
    /// `application/x-www-form-urlencoded` (`%XX` escapes, `+` is a space).
    pub fn query_text(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    }

    /// Reads the body as a JSON object whose fields are all in `allowed`; an
    /// empty body is an empty object. 400 for anything else, naming the field.
    pub fn json_object(
        &self,
        allowed: &[&str],
    ) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
        if self.body.is_empty() {
            return Ok(serde_json::Map::new());
        }
        let serde_json::Value::Object(object) = self.json::<serde_json::Value>()? else {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        };
        if let Some(unknown) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::BadRequest {
                message: format!("unknown field {unknown:?}"),
                details: vec![ErrorDetail::new(
                    unknown.clone(),
                    format!("accepted fields: {}", allowed.join(", ")),
                )],
            });
        }
        Ok(object)
    }

    /// Reads the body as JSON of type `T`: 400 when it is missing, not JSON
    /// (the detail says where it stopped), or not of that shape (see
    /// [`from_json`]).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.body.is_empty() {
            return Err(ApiError::bad_request(
                "request body is empty; JSON expected",
            ));
        }
        let value = serde_json::from_slice(&self.body).map_err(|e| ApiError::BadRequest {
            message: "request body is malformed JSON".into(),
            details: vec![ErrorDetail::new(
                format!("body:{}:{}", e.line(), e.column()),
                e.to_string(),
            )],
        })?;
        from_json(value)
    }
}

/// Reads a JSON value as a `T`; 400 when it is not of that shape, with a
/// detail at the JSON path of the offending field (`model_config.max_tokens`,
/// `tools[1]`; a missing field is named itself, `name`), or at `body` when
/// the whole value is of the wrong type.
pub fn from_json<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let parent = match error.path().to_string() {
            root if root == "." => None,
            path => Some(path),
        };
        let message = error.inner().to_string();
        let (path, problem) = match missing_field(&message) {
            Some(field) => (
                match parent {
                    Some(parent) => format!("{parent}.{field}"),
                    None => field.to_string(),
                },
                "is required".to_string(),
            ),
            None => (parent.unwrap_or_else(|| "body".into()), message),
        };
        ApiError::BadRequest {
            message: "request body is JSON of the wrong shape".into(),
            details: vec![ErrorDetail::new(path, problem)],
        }
    })
}

/// The field serde names in its "missing field `name`" error, which it
/// reports at the path of the object lacking it.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.strip_suffix('`')
}

/// A response ready to be written back by the host adapter.
#[derive(Debug)]
pub struct ApiResponse {
    /// The HTTP status.
    pub status: u16,
    /// Headers with lower-case names.
    pub headers: Vec<(String, String)>,
    /// The body bytes (with a `stream`, what is sent before it).
    pub body: Vec<u8>,
    /// The rest of the body, written while the client reads it; `None` for a
    /// body that is all in `body`.
    pub stream: Option<BodyStream>,
}

/// Where a [`BodyStream`] writes: sends one chunk to the client at once and
/// answers `false` when the client has gone (the producer should then stop).
pub type ChunkSink<'a> = dyn FnMut(&[u8]) -> bool + 'a;

type Producer = Box<dyn FnOnce(&dyn Any, &mut ChunkSink<'_>)>;

/// A body produced piece by piece after the head is sent, e.g. Server-Sent
/// Events. It runs with the component's context, so it can read storage
/// and sleep while the response is open.
pub struct BodyStream(Producer);

impl BodyStream {
    /// A stream that `produce` writes, given the context of type `C` that
    /// the router ran the handler with.
    pub fn new<C: 'static>(produce: impl FnOnce(&C, &mut ChunkSink<'_>) + 'static) -> Self {
        // The router is generic over its context and the response is not, so
        // the context travels as `Any`; `run` gets the same `C` back.
        Self(Box::new(
            move |ctx: &dyn Any, write: &mut ChunkSink<'_>| match ctx.downcast_ref::<C>() {
                Some(ctx) => produce(ctx, write),
                None => debug_assert!(false, "a body stream run with another context type"),
            },
        ))
    }

    /// Writes the body through `write`; the host adapter calls this once the
    /// head is out. `ctx` must be the context the handler was given.
    pub fn run<C: 'static>(self, ctx: &C, write: &mut ChunkSink<'_>) {
        (self.0)(ctx, write)
    }
}

impl fmt::Debug for BodyStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BodyStream(..)")
    }
}

impl ApiResponse {
    /// A JSON response of `value`.
    pub fn json(status: u16, value: &impl Serialize) -> Self {
        // Serialising our own response types cannot fail: they hold no maps
        // with non-string keys and no failing `Serialize` impls.
        let body = serde_json::to_vec(value).unwrap_or_default();
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body,
            stream: None,
        }
    }

    /// A `204 No Content` response.
    pub fn no_content() -> Self {
        Self {
            status: 204,
            headers: Vec::new(),
            body: Vec::new(),
            stream: None,
        }
    }

    /// A `200` response of `content_type` whose body `stream` writes while
    /// the client reads it.
    pub fn streaming(content_type: &str, stream: BodyStream) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type".into(), content_type.into())],
            body: Vec::new(),
            stream: Some(stream),
        }
    }

    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Sets a header, replacing any value it had.
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        let name = name.to_ascii_lowercase();
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Named {
        name: String,
    }

    fn with_body(body: &str) -> ApiRequest {
        let mut request = ApiRequest::new(Method::Post, "/x?a=1");
        request.body = body.as_bytes().to_vec();
        request
    }

    #[test]
    fn path_and_query_are_split() {
        let request = ApiRequest::new(Method::Get, "/api/v1/x?limit=5&offset=2");
        assert_eq!(request.path, "/api/v1/x");
        assert_eq!(request.query, "limit=5&offset=2");
    }

    #[test]
    fn query_parameters_are_found_by_name() {
        let request = ApiRequest::new(Method::Get, "/x?limit=5&flag&before=abc");
        assert_eq!(request.query_param("limit"), Some("5"));
        assert_eq!(request.query_param("flag"), Some(""));
        assert_eq!(request.query_param("before"), Some("abc"));
        assert_eq!(request.query_param("missing"), None);
    }

    #[test]
    fn query_text_is_form_decoded() {
        let request = ApiRequest::new(
            Method::Get,
            "/x?q=caf%C3%A9+bar&bad=%zz%&end=%4&from=2026-12-08T02%3A16%3A40Z&tz=%2B02:00",
        );
        assert_eq!(request.query_text("q").as_deref(), Some("café bar"));
        assert_eq!(request.query_text("bad").as_deref(), Some("%zz%"));
        assert_eq!(request.query_text("end").as_deref(), Some("%4"));
        assert_eq!(
            request.query_text("from").as_deref(),
            Some("2026-12-08T02:16:40Z")
        );
        assert_eq!(request.query_text("tz").as_deref(), Some("+02:00"));
        assert_eq!(request.query_text("missing"), None);
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        let error = with_body("{\"name\": ").json::<Named>().unwrap_err();
        assert_eq!(error.status(), 400);
        assert_eq!(error.to_string(), "request body is malformed JSON");
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Nested {
        name: String,
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        limit: u32,
        #[serde(default)]
        tags: Vec<String>,
    }

    #[test]
    fn a_body_of_the_right_shape_is_read_field_by_field() {
        let nested: Nested = with_body(r#"{"name": "n", "inner": {"limit": 3, "tags": ["a"]}}"#)
            .json()
            .unwrap();
        assert_eq!(nested.name, "n");
        let inner = nested.inner.expect("inner");
        assert_eq!((inner.limit, inner.tags), (3, vec!["a".to_string()]));
    }

    /// The one detail of a body that is not a `Nested`.
    fn shape_detail(body: &str) -> ErrorDetail {
        match with_body(body).json::<Nested>().unwrap_err() {
            ApiError::BadRequest { message, details } => {
                assert_eq!(message, "request body is JSON of the wrong shape");
                assert_eq!(details.len(), 1, "{details:?}");
                details[0].clone()
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_wrong_shape_is_a_bad_request_at_the_offending_field() {
        let at = |body| shape_detail(body).path;
        assert_eq!(at(r#"{"name": 5}"#), "name");
        assert_eq!(
            at(r#"{"name": "a", "inner": {"limit": -1}}"#),
            "inner.limit"
        );
        assert_eq!(
            at(r#"{"name": "a", "inner": {"limit": 1, "tags": "x"}}"#),
            "inner.tags"
        );
        assert_eq!(
            at(r#"{"name": "a", "inner": {"limit": 1, "tags": ["x", 2]}}"#),
            "inner.tags[1]"
        );
        assert_eq!(at(r#"{"name": "a", "extra": 1}"#), "extra");
        assert_eq!(at(r#""text""#), "body");
        let detail = shape_detail(r#"{"name": "a", "inner": {"limit": -1}}"#);
        assert_eq!(detail.problem, "invalid value: integer `-1`, expected u32");
    }

    #[test]
    fn a_missing_field_is_named_with_its_parents() {
        let missing = shape_detail(r#"{"inner": {"limit": 1}}"#);
        assert_eq!(missing, ErrorDetail::new("name", "is required"));
        assert_eq!(
            shape_detail(r#"{"name": "a", "inner": {}}"#).path,
            "inner.limit"
        );
    }

    #[test]
    fn malformed_json_says_where_it_stopped() {
        let error = with_body("{\n\"name\": ").json::<Named>().unwrap_err();
        let ApiError::BadRequest { details, .. } = error else {
            panic!("{error:?}");
        };
        assert_eq!(details[0].path, "body:2:8");
    }

    #[test]
    fn json_object_names_an_unknown_field() {
        assert!(with_body("").json_object(&["a"]).unwrap().is_empty());
        assert_eq!(with_body("{\"a\": 1}").json_object(&["a"]).unwrap()["a"], 1);
        let error = with_body("{\"a\": 1, \"b\": 2}")
            .json_object(&["a"])
            .unwrap_err();
        assert_eq!(error.to_string(), "unknown field \"b\"");
        assert_eq!(
            with_body("[1]").json_object(&["a"]).unwrap_err().status(),
            400
        );
    }

    #[test]
    fn empty_body_is_a_bad_request() {
        assert_eq!(with_body("").json::<Named>().unwrap_err().status(), 400);
        let named: Named = with_body(r#"{"name": "x"}"#).json().unwrap();
        assert_eq!(named.name, "x");
    }

    #[test]
    fn a_body_stream_gets_its_context_and_stops_when_the_client_goes() {
        let stream = BodyStream::new(|ctx: &String, write: &mut ChunkSink<'_>| {
            for piece in [ctx.as_str(), "second", "never"] {
                if !write(piece.as_bytes()) {
                    return;
                }
            }
        });
        let response = ApiResponse::streaming("text/event-stream", stream);
        assert_eq!(response.header("content-type"), Some("text/event-stream"));
        let mut chunks = Vec::new();
        response
            .stream
            .unwrap()
            .run(&"first".to_string(), &mut |chunk| {
                chunks.push(String::from_utf8_lossy(chunk).into_owned());
                // The client goes away after the second chunk.
                chunks.len() < 2
            });
        assert_eq!(chunks, ["first", "second"]);
    }

    #[test]
    fn methods_round_trip_case_insensitively() {
        assert_eq!(Method::parse("patch"), Method::Patch);
        assert_eq!(Method::parse("BREW").as_str(), "BREW");
    }
}
