//! Pure, host-independent LLM provider logic.
//!
//! Request builders and response parsers for each provider's real wire format
//! ([`build_request`], [`parse_response`]), error classification
//! ([`ProviderError`]), prices and cost in integer micro-dollars
//! ([`pricing`]), built-in tools ([`tools`]), token estimates and history
//! trimming ([`memory`]) and retry backoff ([`retry`]).
//!
//! Nothing here does I/O: no HTTP client, no clock, no randomness. The caller
//! sends the [`HttpCall`], hands the answer to [`parse_response`], and passes
//! in the current time or a jitter value where one is needed.
#![deny(missing_docs)]

mod anthropic;
mod error;
mod gemini;
pub mod memory;
mod openai;
pub mod pricing;
pub mod retry;
pub mod tools;

use serde::{Deserialize, Serialize};

pub use error::{ProviderError, parse_retry_after, status_text};
pub use memory::{estimate_tokens, trim_history};
pub use pricing::{Cost, Price, PriceEntry, cost_of, format_micros, price_for, pricing_table};
pub use retry::backoff_delay_ms;

/// An LLM provider Spindle can call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Provider {
    /// OpenAI chat completions.
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic messages.
    #[serde(rename = "anthropic")]
    Anthropic,
    /// Google Gemini `generateContent`.
    #[serde(rename = "gemini")]
    Gemini,
    /// Groq's OpenAI-compatible chat completions.
    #[serde(rename = "groq")]
    Groq,
    /// Any OpenAI-compatible endpoint (Ollama, vLLM, OpenRouter, Together).
    #[serde(rename = "openai_compatible")]
    OpenAiCompatible,
}

impl Provider {
    /// Every provider, in a stable order.
    pub const ALL: [Provider; 5] = [
        Provider::OpenAi,
        Provider::Anthropic,
        Provider::Gemini,
        Provider::Groq,
        Provider::OpenAiCompatible,
    ];

    /// Reads a provider name as stored in agent configs (`"openai"`, `"anthropic"`, …).
    pub fn parse(s: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The provider's stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Gemini => "gemini",
            Provider::Groq => "groq",
            Provider::OpenAiCompatible => "openai_compatible",
        }
    }

    /// The public API base URL; `None` for OpenAI-compatible endpoints, which must be configured.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            Provider::OpenAi => Some("https://api.openai.com/v1"),
            Provider::Anthropic => Some("https://api.anthropic.com/v1"),
            Provider::Gemini => Some("https://generativelanguage.googleapis.com/v1beta"),
            Provider::Groq => Some("https://api.groq.com/openai/v1"),
            Provider::OpenAiCompatible => None,
        }
    }

    /// The Spin variable holding this provider's API key.
    pub fn api_key_variable(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai_api_key",
            Provider::Anthropic => "anthropic_api_key",
            Provider::Gemini => "gemini_api_key",
            Provider::Groq => "groq_api_key",
            Provider::OpenAiCompatible => "openai_compatible_api_key",
        }
    }

    /// The Spin variable that overrides this provider's base URL.
    pub fn base_url_variable(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai_base_url",
            Provider::Anthropic => "anthropic_base_url",
            Provider::Gemini => "gemini_base_url",
            Provider::Groq => "groq_base_url",
            Provider::OpenAiCompatible => "openai_compatible_base_url",
        }
    }

    /// Whether a call needs an API key (not for OpenAI-compatible servers such as Ollama or vLLM).
    pub fn requires_api_key(self) -> bool {
        !matches!(self, Provider::OpenAiCompatible)
    }

    /// Whether the provider speaks OpenAI's chat-completions format.
    pub fn is_openai_format(self) -> bool {
        matches!(
            self,
            Provider::OpenAi | Provider::Groq | Provider::OpenAiCompatible
        )
    }

    /// A human-readable name for messages ("OpenAI", "Anthropic", …).
    pub fn display_name(self) -> &'static str {
        match self {
            Provider::OpenAi => "OpenAI",
            Provider::Anthropic => "Anthropic",
            Provider::Gemini => "Gemini",
            Provider::Groq => "Groq",
            Provider::OpenAiCompatible => "OpenAI-compatible provider",
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The configured base URL (trimmed, without a trailing `/`) or the provider's default.
///
/// `None` when neither exists (an OpenAI-compatible provider with no base URL configured).
pub fn resolve_base_url(provider: Provider, configured: Option<&str>) -> Option<String> {
    let configured = configured.map(str::trim).filter(|s| !s.is_empty());
    configured
        .or(provider.default_base_url())
        .map(|s| s.trim_end_matches('/').to_string())
}

/// Checks that a key is present when the provider needs one; an empty or blank key counts as missing.
pub fn require_api_key(provider: Provider, api_key: Option<&str>) -> Result<(), ProviderError> {
    let present = api_key.is_some_and(|k| !k.trim().is_empty());
    if provider.requires_api_key() && !present {
        return Err(ProviderError::MissingApiKey {
            provider,
            variable: provider.api_key_variable(),
        });
    }
    Ok(())
}

/// One model call, independent of provider.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The provider's model id (`gpt-4o`, `claude-sonnet-4-20250514`, `gemini-2.0-flash`).
    pub model: String,
    /// The system prompt, if any.
    pub system: Option<String>,
    /// The conversation so far, oldest first.
    pub messages: Vec<Message>,
    /// Tools the model may call.
    pub tools: Vec<ToolSpec>,
    /// Sampling temperature; omitted from the request when `None`.
    pub temperature: Option<f64>,
    /// Output token limit; omitted when `None` (Anthropic requires one: 1024 by default).
    pub max_tokens: Option<u32>,
    /// Nucleus sampling; omitted when `None`.
    pub top_p: Option<f64>,
    /// A JSON Schema the answer must follow: asks the model for JSON in the
    /// provider's own way (a response format, a response schema, or the
    /// system prompt where the API has neither).
    pub response_schema: Option<serde_json::Value>,
}

/// Who wrote a [`Message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageRole {
    /// The user (or the workflow acting for them).
    User,
    /// The model.
    Assistant,
    /// The result of a tool call.
    Tool,
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: MessageRole,
    /// The text (for a tool result: the tool's output).
    pub content: String,
    /// Tools an assistant turn asked for.
    #[serde(default)]
    pub tool_calls: Vec<ToolCall>,
    /// For a tool result: the id of the call it answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// For a tool result: the tool's name (Gemini needs it).
    #[serde(default)]
    pub tool_name: Option<String>,
}

impl Message {
    /// A user turn.
    pub fn user(content: impl Into<String>) -> Message {
        Message {
            role: MessageRole::User,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            tool_name: None,
        }
    }

    /// An assistant turn with text only.
    pub fn assistant(content: impl Into<String>) -> Message {
        Message::assistant_tool_calls(content, Vec::new())
    }

    /// An assistant turn that asked for tools (its text may be empty).
    pub fn assistant_tool_calls(content: impl Into<String>, tool_calls: Vec<ToolCall>) -> Message {
        Message {
            role: MessageRole::Assistant,
            content: content.into(),
            tool_calls,
            tool_call_id: None,
            tool_name: None,
        }
    }

    /// A tool result answering the call `tool_call_id` of tool `tool_name`.
    pub fn tool_result(
        tool_call_id: impl Into<String>,
        tool_name: impl Into<String>,
        content: impl Into<String>,
    ) -> Message {
        Message {
            role: MessageRole::Tool,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: Some(tool_call_id.into()),
            tool_name: Some(tool_name.into()),
        }
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// The tool's name.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// A JSON schema for its arguments (an object schema).
    pub parameters: serde_json::Value,
}

/// A tool call the model asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id for the call (generated as `call_<n>` for Gemini).
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments, parsed as JSON.
    pub arguments: serde_json::Value,
}

/// An HTTP request ready to send; the caller owns the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    /// The HTTP method (always `POST` for chat calls).
    pub method: &'static str,
    /// The full URL.
    pub url: String,
    /// Headers, lower-case names.
    pub headers: Vec<(String, String)>,
    /// The JSON body.
    pub body: Vec<u8>,
}

impl HttpCall {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }
}

/// Token counts reported by the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens (for Gemini: candidates plus thinking tokens, as both are billed as output).
    pub output_tokens: u64,
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A natural end.
    Stop,
    /// It asked for tools.
    ToolCalls,
    /// It hit the output token limit.
    Length,
    /// Anything else, as the provider named it.
    Other(String),
}

/// A parsed model answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The text, text blocks joined (empty when the model only called tools).
    pub text: String,
    /// Tools it asked for.
    pub tool_calls: Vec<ToolCall>,
    /// Token usage.
    pub usage: Usage,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// The model that answered, as the provider reported it.
    pub model: Option<String>,
}

/// Builds the HTTP call for one chat request in the provider's wire format.
///
/// `base_url` is used as given (a trailing `/` is ignored); the auth header is
/// omitted when `api_key` is `None`. Check keys first with [`require_api_key`].
pub fn build_request(
    provider: Provider,
    base_url: &str,
    api_key: Option<&str>,
    request: &ChatRequest,
) -> HttpCall {
    let base = base_url.trim_end_matches('/');
    match provider {
        Provider::OpenAi | Provider::Groq | Provider::OpenAiCompatible => {
            openai::build_request(provider, base, api_key, request)
        }
        Provider::Anthropic => anthropic::build_request(base, api_key, request),
        Provider::Gemini => gemini::build_request(base, api_key, request),
    }
}

/// Parses a provider's HTTP answer: a [`ChatResponse`] on 2xx, a classified [`ProviderError`] otherwise.
pub fn parse_response(
    provider: Provider,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<ChatResponse, ProviderError> {
    if !(200..300).contains(&status) {
        return Err(error::classify_error(provider, status, headers, body));
    }
    match provider {
        Provider::OpenAi | Provider::Groq | Provider::OpenAiCompatible => {
            openai::parse_response(provider, status, body)
        }
        Provider::Anthropic => anthropic::parse_response(body),
        Provider::Gemini => gemini::parse_response(status, body),
    }
}

/// The first header with this name (case-insensitive).
pub fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Serialises a JSON value to bytes (infallible for `Value`).
fn to_body(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Reads a 2xx body as JSON or fails with a clear `Malformed` message.
fn parse_json_body(provider: Provider, body: &[u8]) -> Result<serde_json::Value, ProviderError> {
    serde_json::from_slice(body).map_err(|e| {
        ProviderError::Malformed(format!(
            "{} returned a body that is not JSON ({e})",
            provider.display_name()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_names_round_trip() {
        for p in Provider::ALL {
            assert_eq!(Provider::parse(p.as_str()), Some(p));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
        }
        assert_eq!(Provider::parse("OpenAI"), None);
        assert_eq!(Provider::parse(""), None);
    }

    #[test]
    fn provider_configuration() {
        assert_eq!(
            Provider::Groq.default_base_url(),
            Some("https://api.groq.com/openai/v1")
        );
        assert_eq!(Provider::OpenAiCompatible.default_base_url(), None);
        assert_eq!(Provider::Gemini.api_key_variable(), "gemini_api_key");
        assert_eq!(
            Provider::OpenAiCompatible.base_url_variable(),
            "openai_compatible_base_url"
        );
        assert!(Provider::Anthropic.requires_api_key());
        assert!(!Provider::OpenAiCompatible.requires_api_key());
    }

    #[test]
    fn base_url_resolution() {
        assert_eq!(
            resolve_base_url(Provider::OpenAi, None).as_deref(),
            Some("https://api.openai.com/v1")
        );
        assert_eq!(
            resolve_base_url(Provider::OpenAi, Some("http://127.0.0.1:9999/v1/ ")).as_deref(),
            Some("http://127.0.0.1:9999/v1")
        );
        assert_eq!(resolve_base_url(Provider::OpenAiCompatible, Some("")), None);
    }

    #[test]
    fn api_key_requirement() {
        let err = require_api_key(Provider::Anthropic, Some("  ")).unwrap_err();
        assert_eq!(
            err,
            ProviderError::MissingApiKey {
                provider: Provider::Anthropic,
                variable: "anthropic_api_key"
            }
        );
        assert_eq!(err.code(), "provider_not_configured");
        assert!(!err.is_transient());
        assert!(require_api_key(Provider::Anthropic, Some("sk-ant")).is_ok());
        assert!(require_api_key(Provider::OpenAiCompatible, None).is_ok());
    }
}
