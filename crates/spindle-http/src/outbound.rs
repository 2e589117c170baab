//! Outgoing HTTP as the API sees it: what a component asks its host to send.

use thiserror::Error;

/// A request to another service (an LLM provider, an `http_get` tool call).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundRequest {
    /// The method, upper case.
    pub method: String,
    /// The absolute URL.
    pub url: String,
    /// Headers to send.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// How long to wait for the first byte of the answer, in milliseconds.
    pub timeout_ms: u64,
    /// The most response bytes to read; more is an error.
    pub max_response_bytes: usize,
}

impl OutboundRequest {
    /// The `Content-Length` to send: the body's length when there is a body,
    /// or when the method carries one (`POST`, `PUT`, `PATCH`: `0` for an
    /// empty one, since servers may answer `411` to a request without it);
    /// `None` for a bodiless `GET`, `HEAD` or `DELETE`. The whole body is
    /// known before sending, so it never needs to go out chunked.
    pub fn content_length(&self) -> Option<usize> {
        let carries_body = matches!(self.method.as_str(), "POST" | "PUT" | "PATCH");
        (carries_body || !self.body.is_empty()).then_some(self.body.len())
    }

    /// The headers to send: the caller's, without any framing header of
    /// theirs (`content-length`, `transfer-encoding`: the host frames the
    /// body), plus [`Self::content_length`].
    pub fn wire_headers(&self) -> Vec<(String, String)> {
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .filter(|(name, _)| {
                !name.eq_ignore_ascii_case("content-length")
                    && !name.eq_ignore_ascii_case("transfer-encoding")
            })
            .cloned()
            .collect();
        if let Some(length) = self.content_length() {
            headers.push(("content-length".into(), length.to_string()));
        }
        headers
    }
}

/// The answer to an [`OutboundRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundResponse {
    /// The HTTP status.
    pub status: u16,
    /// Headers with lower-case names.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// Why an outgoing request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OutboundError {
    /// No answer within the timeout.
    #[error("no answer within the timeout")]
    Timeout,
    /// The host refused the destination (not in `allowed_outbound_hosts`).
    #[error("destination not allowed: {0}")]
    Denied(String),
    /// The answer was larger than the caller reads.
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    /// Anything else: DNS, connection, protocol.
    #[error("request failed: {0}")]
    Failed(String),
}

impl OutboundError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Timeout | Self::Failed(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, body: &[u8], headers: &[(&str, &str)]) -> OutboundRequest {
        OutboundRequest {
            method: method.into(),
            url: "https://example.com/".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
            timeout_ms: 1_000,
            max_response_bytes: 1_000,
        }
    }

    #[test]
    fn a_known_body_carries_its_length() {
        assert_eq!(request("POST", b"{\"a\":1}", &[]).content_length(), Some(7));
        assert_eq!(request("DELETE", b"x", &[]).content_length(), Some(1));
        assert_eq!(request("POST", b"", &[]).content_length(), Some(0));
        assert_eq!(request("PUT", b"", &[]).content_length(), Some(0));
        assert_eq!(request("GET", b"", &[]).content_length(), None);
        assert_eq!(request("HEAD", b"", &[]).content_length(), None);
    }

    #[test]
    fn the_callers_framing_headers_are_replaced() {
        let sent = request(
            "POST",
            b"abc",
            &[
                ("Content-Length", "99"),
                ("transfer-encoding", "chunked"),
                ("x-a", "1"),
            ],
        )
        .wire_headers();
        assert_eq!(
            sent,
            [
                ("x-a".to_string(), "1".to_string()),
                ("content-length".to_string(), "3".to_string())
            ]
        );
        let get = request("GET", b"", &[("content-length", "5")]).wire_headers();
        assert!(get.is_empty());
    }
}
