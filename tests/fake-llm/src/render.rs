//! Response bodies in each provider's wire format.

use serde_json::{Map, Value, json};

use crate::{Dialect, ToolCall};

/// A successful completion to render.
pub(crate) struct Completion<'a> {
    pub model: &'a str,
    pub seq: u64,
    pub created: u64,
    pub text: Option<&'a str>,
    pub calls: &'a [ToolCall],
    pub truncated: bool,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// The body of a successful completion.
pub(crate) fn completion(dialect: Dialect, c: &Completion<'_>) -> Value {
    match dialect {
        Dialect::OpenAi => openai(c),
        Dialect::Anthropic => anthropic(c),
        Dialect::Gemini => gemini(c),
    }
}

fn openai(c: &Completion<'_>) -> Value {
    let mut message = json!({
        "role": "assistant",
        "content": c.text,
        "refusal": null,
        "annotations": [],
    });
    if !c.calls.is_empty() {
        let calls: Vec<Value> = c
            .calls
            .iter()
            .enumerate()
            .map(|(i, call)| {
                json!({
                    "id": format!("call_fake{}x{}", c.seq, i),
                    "type": "function",
                    "function": {
                        "name": call.name,
                        "arguments": call.arguments.to_string(),
                    },
                })
            })
            .collect();
        message["tool_calls"] = Value::Array(calls);
    }
    let finish = if c.truncated {
        "length"
    } else if c.calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    json!({
        "id": format!("chatcmpl-fake{}", c.seq),
        "object": "chat.completion",
        "created": c.created,
        "model": c.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish,
        }],
        "usage": {
            "prompt_tokens": c.input_tokens,
            "completion_tokens": c.output_tokens,
            "total_tokens": c.input_tokens + c.output_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    })
}

fn anthropic(c: &Completion<'_>) -> Value {
    let mut content = Vec::new();
    if let Some(text) = c.text {
        content.push(json!({"type": "text", "text": text}));
    }
    for (i, call) in c.calls.iter().enumerate() {
        content.push(json!({
            "type": "tool_use",
            "id": format!("toolu_fake{}x{}", c.seq, i),
            "name": call.name,
            "input": call.arguments,
        }));
    }
    let stop = if c.truncated {
        "max_tokens"
    } else if c.calls.is_empty() {
        "end_turn"
    } else {
        "tool_use"
    };
    json!({
        "id": format!("msg_fake{}", c.seq),
        "type": "message",
        "role": "assistant",
        "model": c.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": {
            "input_tokens": c.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": c.output_tokens,
            "service_tier": "standard",
        },
    })
}

fn gemini(c: &Completion<'_>) -> Value {
    let mut parts = Vec::new();
    if let Some(text) = c.text {
        parts.push(json!({"text": text}));
    }
    for call in c.calls {
        parts.push(json!({"functionCall": {"name": call.name, "args": call.arguments}}));
    }
    let finish = if c.truncated { "MAX_TOKENS" } else { "STOP" };
    json!({
        "candidates": [{
            "content": {"parts": parts, "role": "model"},
            "finishReason": finish,
            "index": 0,
        }],
        "usageMetadata": {
            "promptTokenCount": c.input_tokens,
            "candidatesTokenCount": c.output_tokens,
            "totalTokenCount": c.input_tokens + c.output_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": c.input_tokens}],
        },
        "modelVersion": c.model,
        "responseId": format!("fake{}", c.seq),
    })
}

/// The body of an error reply with `status` in `dialect`.
pub(crate) fn error(
    dialect: Dialect,
    status: u16,
    message: Option<&str>,
    retry_after: Option<u64>,
    seq: u64,
) -> Value {
    match dialect {
        Dialect::OpenAi => {
            let (kind, code, default) = match status {
                401 => (
                    "invalid_request_error",
                    Some("invalid_api_key"),
                    "Incorrect API key provided.",
                ),
                404 => (
                    "invalid_request_error",
                    Some("model_not_found"),
                    "The model does not exist or you do not have access to it.",
                ),
                429 => (
                    "requests",
                    Some("rate_limit_exceeded"),
                    "Rate limit reached for requests per min (RPM). Please try again later.",
                ),
                s if s >= 500 => (
                    "server_error",
                    None,
                    "The server had an error while processing your request. Sorry about that!",
                ),
                _ => ("invalid_request_error", None, "Invalid request."),
            };
            json!({"error": {
                "message": message.unwrap_or(default),
                "type": kind,
                "param": null,
                "code": code,
            }})
        }
        Dialect::Anthropic => {
            let (kind, default) = match status {
                401 => ("authentication_error", "invalid x-api-key"),
                403 => (
                    "permission_error",
                    "Your API key does not have permission to use the specified resource.",
                ),
                404 => (
                    "not_found_error",
                    "The requested resource could not be found.",
                ),
                413 => (
                    "request_too_large",
                    "Request exceeds the maximum allowed size.",
                ),
                429 => (
                    "rate_limit_error",
                    "This request would exceed the rate limit for your organization.",
                ),
                529 => ("overloaded_error", "Overloaded"),
                s if s >= 500 => ("api_error", "Internal server error"),
                _ => ("invalid_request_error", "Invalid request."),
            };
            json!({
                "type": "error",
                "error": {"type": kind, "message": message.unwrap_or(default)},
                "request_id": format!("req_fake{seq}"),
            })
        }
        Dialect::Gemini => {
            let (kind, default) = match status {
                401 => (
                    "UNAUTHENTICATED",
                    "Request had invalid authentication credentials.",
                ),
                403 => ("PERMISSION_DENIED", "The caller does not have permission."),
                404 => ("NOT_FOUND", "Requested entity was not found."),
                429 => (
                    "RESOURCE_EXHAUSTED",
                    "You exceeded your current quota, please check your plan and billing details.",
                ),
                503 => (
                    "UNAVAILABLE",
                    "The model is overloaded. Please try again later.",
                ),
                504 => (
                    "DEADLINE_EXCEEDED",
                    "Deadline expired before operation could complete.",
                ),
                s if s >= 500 => (
                    "INTERNAL",
                    "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
                ),
                _ => ("INVALID_ARGUMENT", "Request contains an invalid argument."),
            };
            let mut error = Map::new();
            error.insert("code".into(), json!(status));
            error.insert("message".into(), json!(message.unwrap_or(default)));
            error.insert("status".into(), json!(kind));
            if status == 429 {
                let mut details = vec![json!({
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [{
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                    }],
                })];
                if let Some(secs) = retry_after {
                    details.push(json!({
                        "@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": format!("{secs}s"),
                    }));
                }
                error.insert("details".into(), Value::Array(details));
            }
            json!({"error": error})
        }
    }
}

/// Input tokens estimated from a request body: characters / 4, at least 1.
pub(crate) fn input_tokens(dialect: Dialect, body: &Value) -> u64 {
    let keys: &[&str] = match dialect {
        Dialect::OpenAi => &["messages"],
        Dialect::Anthropic => &["system", "messages"],
        Dialect::Gemini => &["systemInstruction", "contents"],
    };
    let chars: usize = keys
        .iter()
        .filter_map(|k| body.get(*k))
        .map(string_chars)
        .sum();
    (chars as u64).div_ceil(4).max(1)
}

fn string_chars(value: &Value) -> usize {
    match value {
        Value::String(s) => s.chars().count(),
        Value::Array(items) => items.iter().map(string_chars).sum(),
        Value::Object(map) => map
            .iter()
            .filter(|(k, _)| k.as_str() != "role" && k.as_str() != "type")
            .map(|(_, v)| string_chars(v))
            .sum(),
        _ => 0,
    }
}

/// Output tokens estimated from a reply: words of the text, plus per call
/// (name + JSON arguments) / 4; at least 1.
pub(crate) fn output_tokens(text: Option<&str>, calls: &[ToolCall]) -> u64 {
    let words = text.map_or(0, |t| t.split_whitespace().count() as u64);
    let calls: u64 = calls
        .iter()
        .map(|c| ((c.name.len() + c.arguments.to_string().len()) as u64).div_ceil(4))
        .sum();
    (words + calls).max(1)
}
