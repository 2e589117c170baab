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
