//! Provider errors and how HTTP answers are classified into them.

use serde_json::Value;

use crate::{Provider, header_value};

/// Why a provider call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// 429 (or Anthropic's 529 "overloaded"): retry later, after `retry_after_secs` when given.
    #[error("provider rate limited: {message}")]
    RateLimited {
        /// Seconds from the `Retry-After` header (or Gemini's `RetryInfo`), when present.
        retry_after_secs: Option<u64>,
        /// The provider's own message.
        message: String,
    },
    /// A 5xx answer: the provider is having trouble.
    #[error("provider unavailable (HTTP {status}): {message}")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The provider's own message, or the status text.
        message: String,
    },
    /// The call took too long (reported by the caller's transport, or an HTTP 408).
    #[error("provider call timed out")]
    Timeout,
    /// The provider could not be reached (DNS, connection refused, TLS, reset).
    #[error("provider unreachable: {0}")]
    Transport(String),
    /// Any other 4xx: the request itself was refused; retrying will not help.
    #[error("provider rejected the request (HTTP {status}): {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The provider's own message from its error body, or the status text.
        message: String,
    },
    /// A 2xx body that is not the documented shape.
    #[error("malformed provider response: {0}")]
    Malformed(String),
    /// The provider needs an API key and none is configured.
    #[error("no API key configured for {provider} (set the `{variable}` variable)")]
    MissingApiKey {
        /// The provider.
        provider: Provider,
        /// The Spin variable to set.
        variable: &'static str,
    },
}

impl ProviderError {
    /// A stable machine-readable code for API responses and step records.
    pub fn code(&self) -> &'static str {
        match self {
            ProviderError::RateLimited { .. } => "provider_rate_limited",
            ProviderError::Server { .. } => "provider_unavailable",
            ProviderError::Timeout => "provider_timeout",
            ProviderError::Transport(_) => "provider_unreachable",
            ProviderError::Rejected { .. } => "provider_rejected",
            ProviderError::Malformed(_) => "provider_malformed_response",
            ProviderError::MissingApiKey { .. } => "provider_not_configured",
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ProviderError::RateLimited { .. }
                | ProviderError::Server { .. }
                | ProviderError::Timeout
                | ProviderError::Transport(_)
        )
    }

    /// The `Retry-After` hint in seconds, for rate-limit errors.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            ProviderError::RateLimited {
                retry_after_secs, ..
            } => *retry_after_secs,
            _ => None,
        }
    }
}

/// Reads a `Retry-After` value in whole seconds.
///
/// Only the delay-seconds form is understood; the HTTP-date form returns
/// `None` because this crate reads no clock (the caller then falls back to
/// its own backoff).
pub fn parse_retry_after(value: &str) -> Option<u64> {
    let v = value.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Absurdly long digit strings saturate rather than fail.
    Some(v.parse::<u64>().unwrap_or(u64::MAX))
}

/// The standard reason phrase for an HTTP status ("Too Many Requests"), or `HTTP <status>`.
pub fn status_text(status: u16) -> String {
    let text = match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Overloaded",
        _ => return format!("HTTP {status}"),
    };
    text.to_string()
}

/// Classifies a non-2xx answer.
pub(crate) fn classify_error(
    provider: Provider,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> ProviderError {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let message = json
        .as_ref()
        .and_then(error_message)
        .unwrap_or_else(|| status_text(status));
    let overloaded = provider == Provider::Anthropic && status == 529;
    if status == 429 || overloaded {
        let retry_after_secs = header_value(headers, "retry-after")
            .and_then(parse_retry_after)
            .or_else(|| json.as_ref().and_then(gemini_retry_delay));
        return ProviderError::RateLimited {
            retry_after_secs,
            message,
        };
    }
    match status {
        408 => ProviderError::Timeout,
        500..=599 => ProviderError::Server { status, message },
        _ => ProviderError::Rejected { status, message },
    }
}

/// The provider's own message from an error body.
///
/// OpenAI, Groq, Anthropic and Gemini all use `{"error": {"message": …}}`;
/// some OpenAI-compatible servers (Ollama) send `{"error": "…"}` or a
/// top-level `message`.
fn error_message(json: &Value) -> Option<String> {
    let text = match json.get("error") {
        Some(Value::Object(e)) => e.get("message").and_then(Value::as_str),
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    }
    .or_else(|| json.get("message").and_then(Value::as_str))?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Gemini's `google.rpc.RetryInfo` detail (`"retryDelay": "58s"`) in whole seconds, rounded up.
fn gemini_retry_delay(json: &Value) -> Option<u64> {
    let details = json.get("error")?.get("details")?.as_array()?;
    details.iter().find_map(|d| {
        let delay = d.get("retryDelay")?.as_str()?.strip_suffix('s')?;
        let secs: f64 = delay.parse().ok()?;
        (secs.is_finite() && secs >= 0.0).then(|| secs.ceil() as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, value: &str) -> Vec<(String, String)> {
        vec![(name.to_string(), value.to_string())]
    }

    #[test]
    fn codes_and_transience() {
        let cases = [
            (
                ProviderError::RateLimited {
                    retry_after_secs: None,
                    message: String::new(),
                },
                "provider_rate_limited",
                true,
            ),
            (
                ProviderError::Server {
                    status: 502,
                    message: String::new(),
                },
                "provider_unavailable",
                true,
            ),
            (ProviderError::Timeout, "provider_timeout", true),
            (
                ProviderError::Transport("refused".into()),
                "provider_unreachable",
                true,
            ),
            (
                ProviderError::Rejected {
                    status: 400,
                    message: String::new(),
                },
                "provider_rejected",
                false,
            ),
            (
                ProviderError::Malformed(String::new()),
                "provider_malformed_response",
                false,
            ),
        ];
        for (err, code, transient) in cases {
            assert_eq!(err.code(), code);
            assert_eq!(err.is_transient(), transient, "{err:?}");
        }
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("30"), Some(30));
        assert_eq!(parse_retry_after(" 0 "), Some(0));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("1.5"), None);
        assert_eq!(parse_retry_after(""), None);
        assert_eq!(
            parse_retry_after("99999999999999999999999999"),
            Some(u64::MAX)
        );
    }

    #[test]
    fn non_json_error_bodies_fall_back_to_status_text() {
        let err = classify_error(Provider::OpenAi, 502, &[], b"<html>bad gateway</html>");
        assert_eq!(
            err,
            ProviderError::Server {
                status: 502,
                message: "Bad Gateway".into()
            }
        );
        let err = classify_error(Provider::Groq, 418, &[], b"");
        assert_eq!(
            err,
            ProviderError::Rejected {
                status: 418,
                message: "HTTP 418".into()
            }
        );
    }

    #[test]
    fn retry_after_header_is_case_insensitive_and_date_form_is_none() {
        let err = classify_error(Provider::OpenAi, 429, &h("Retry-After", "7"), b"{}");
        assert_eq!(err.retry_after_secs(), Some(7));
        let err = classify_error(
            Provider::OpenAi,
            429,
            &h("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT"),
            b"{}",
        );
        assert_eq!(
            err,
            ProviderError::RateLimited {
                retry_after_secs: None,
                message: "Too Many Requests".into()
            }
        );
    }

    #[test]
    fn ollama_style_string_error() {
        let err = classify_error(
            Provider::OpenAiCompatible,
            404,
            &[],
            br#"{"error":"model \"llama9\" not found, try pulling it first"}"#,
        );
        assert_eq!(
            err,
            ProviderError::Rejected {
                status: 404,
                message: "model \"llama9\" not found, try pulling it first".into()
            }
        );
    }

    #[test]
    fn anthropic_529_is_transient_but_other_providers_529_is_server() {
        let body =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let err = classify_error(Provider::Anthropic, 529, &[], body);
        assert_eq!(
            err,
            ProviderError::RateLimited {
                retry_after_secs: None,
                message: "Overloaded".into()
            }
        );
        assert!(err.is_transient());
        let err = classify_error(Provider::OpenAi, 529, &[], body);
        assert!(matches!(err, ProviderError::Server { status: 529, .. }));
    }

    #[test]
    fn http_408_is_a_timeout() {
        assert_eq!(
            classify_error(Provider::OpenAi, 408, &[], b""),
            ProviderError::Timeout
        );
    }
}
