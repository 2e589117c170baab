//! Anthropic messages API.
//!
//! `POST {base}/messages` with `x-api-key` and `anthropic-version: 2023-06-01`.

use serde_json::{Map, Value, json};

use crate::{
    ChatRequest, ChatResponse, FinishReason, HttpCall, MessageRole, Provider, ProviderError,
    ToolCall, Usage, parse_json_body, to_body,
};

/// The API version header value this crate speaks.
pub(crate) const ANTHROPIC_VERSION: &str = "2023-06-01";

/// `max_tokens` is required by Anthropic; this is sent when the request has none.
pub(crate) const DEFAULT_MAX_TOKENS: u32 = 1024;

/// One message being assembled: role plus content blocks.
struct Turn {
    role: &'static str,
    blocks: Vec<Value>,
    /// Whether the turn holds tool results (later user text and results merge into it).
    has_tool_results: bool,
}

pub(crate) fn build_request(base: &str, api_key: Option<&str>, request: &ChatRequest) -> HttpCall {
    let mut turns: Vec<Turn> = Vec::new();
    for m in &request.messages {
        match m.role {
            MessageRole::User => {
                let block = json!({"type": "text", "text": m.content});
                match turns.last_mut() {
                    // Text after tool results goes in the same user message, after them.
                    Some(last) if last.has_tool_results => last.blocks.push(block),
                    _ => turns.push(Turn {
                        role: "user",
                        blocks: vec![block],
                        has_tool_results: false,
                    }),
                }
            }
            MessageRole::Assistant => {
                let mut blocks = Vec::new();
                // Anthropic rejects empty text blocks.
                if !m.content.is_empty() {
                    blocks.push(json!({"type": "text", "text": m.content}));
                }
                for c in &m.tool_calls {
                    let input = match &c.arguments {
                        Value::Null => Value::Object(Map::new()),
                        other => other.clone(),
                    };
                    blocks.push(
                        json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input}),
                    );
                }
                turns.push(Turn {
                    role: "assistant",
                    blocks,
                    has_tool_results: false,
                });
            }
            MessageRole::Tool => {
                let block = json!({
                    "type": "tool_result",
                    "tool_use_id": m.tool_call_id.clone().unwrap_or_default(),
                    "content": m.content,
                });
                match turns.last_mut() {
                    Some(last) if last.has_tool_results => last.blocks.push(block),
                    _ => turns.push(Turn {
                        role: "user",
                        blocks: vec![block],
                        has_tool_results: true,
                    }),
                }
            }
        }
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|turn| {
            // A single plain text block is sent in the short string form.
            let content = match turn.blocks.as_slice() {
                [only] if only["type"] == "text" => only["text"].clone(),
                _ => Value::Array(turn.blocks),
            };
            json!({"role": turn.role, "content": content})
        })
        .collect();

    let mut body = Map::new();
    body.insert("model".into(), json!(request.model));
    body.insert(
        "max_tokens".into(),
        json!(request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    // The Messages API has no response format: the schema goes in the system prompt.
    let schema_rule = request.response_schema.as_ref().map(|schema| {
        format!("Answer with only a JSON value, no prose, that follows this JSON Schema: {schema}")
    });
    match (&request.system, schema_rule) {
        (Some(system), Some(rule)) => {
            body.insert("system".into(), json!(format!("{system}\n\n{rule}")));
        }
        (Some(system), None) => {
            body.insert("system".into(), json!(system));
        }
        (None, Some(rule)) => {
            body.insert("system".into(), json!(rule));
        }
        (None, None) => {}
    }
    body.insert("messages".into(), Value::Array(messages));
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(t) = request.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = request.top_p {
        body.insert("top_p".into(), json!(p));
    }

    let mut headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        (
            "anthropic-version".to_string(),
            ANTHROPIC_VERSION.to_string(),
        ),
    ];
    if let Some(key) = api_key {
        headers.push(("x-api-key".to_string(), key.to_string()));
    }
    HttpCall {
        method: "POST",
        url: format!("{base}/messages"),
        headers,
        body: to_body(&Value::Object(body)),
    }
}

pub(crate) fn parse_response(body: &[u8]) -> Result<ChatResponse, ProviderError> {
    let json = parse_json_body(Provider::Anthropic, body)?;
    let malformed = |what: &str| ProviderError::Malformed(format!("Anthropic returned {what}"));

    let content = json
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("a response without a `content` array"))?;
    let mut texts = Vec::new();
    let mut tool_calls = Vec::new();
    for block in content {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = block
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| malformed("a text block without `text`"))?;
                texts.push(text);
            }
            Some("tool_use") => {
                let id = block.get("id").and_then(Value::as_str);
                let name = block.get("name").and_then(Value::as_str);
                let (Some(id), Some(name)) = (id, name) else {
                    return Err(malformed("a tool_use block without `id` or `name`"));
                };
                tool_calls.push(ToolCall {
                    id: id.to_string(),
                    name: name.to_string(),
                    arguments: block
                        .get("input")
                        .cloned()
                        .unwrap_or_else(|| Value::Object(Map::new())),
                });
            }
            // thinking, redacted_thinking, server tool blocks: not part of the answer text.
            Some(_) => {}
            None => return Err(malformed("a content block without a `type`")),
        }
    }

    let usage = json
        .get("usage")
        .ok_or_else(|| malformed("a response without `usage`"))?;
    let usage = Usage {
        input_tokens: usage
            .get("input_tokens")
            .and_then(Value::as_u64)
            .ok_or_else(|| malformed("`usage` without `input_tokens`"))?,
        output_tokens: usage
            .get("output_tokens")
            .and_then(Value::as_u64)
            .ok_or_else(|| malformed("`usage` without `output_tokens`"))?,
    };

    let finish_reason = match json.get("stop_reason").and_then(Value::as_str) {
        Some("end_turn") | Some("stop_sequence") => FinishReason::Stop,
        Some("tool_use") => FinishReason::ToolCalls,
        Some("max_tokens") => FinishReason::Length,
        Some(other) => FinishReason::Other(other.to_string()),
        None if !tool_calls.is_empty() => FinishReason::ToolCalls,
        None => FinishReason::Other("none".to_string()),
    };

    Ok(ChatResponse {
        text: texts.join(""),
        tool_calls,
        usage,
        finish_reason,
        model: json
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Message, ToolSpec, build_request, parse_response};

    fn body_json(call: &HttpCall) -> Value {
        serde_json::from_slice(&call.body).unwrap()
    }

    fn weather_call(id: &str, city: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: "get_weather".into(),
            arguments: json!({"city": city}),
        }
    }

    #[test]
    fn builds_the_exact_messages_body() {
        let request = ChatRequest {
            model: "claude-sonnet-4-20250514".into(),
            system: Some("You are terse.".into()),
            messages: vec![
                Message::user("Weather in Paris?"),
                Message::assistant_tool_calls("Checking.", vec![weather_call("toolu_1", "Paris")]),
                Message::tool_result("toolu_1", "get_weather", "18C"),
                Message::assistant("18C."),
            ],
            tools: vec![ToolSpec {
                name: "get_weather".into(),
                description: "Current weather".into(),
                parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
            }],
            temperature: Some(0.5),
            max_tokens: None,
            top_p: Some(0.8),
            response_schema: None,
        };
        let call = build_request(
            Provider::Anthropic,
            "https://api.anthropic.com/v1",
            Some("sk-ant-test"),
            &request,
        );
        assert_eq!(call.method, "POST");
        assert_eq!(call.url, "https://api.anthropic.com/v1/messages");
        assert_eq!(call.header("x-api-key"), Some("sk-ant-test"));
        assert_eq!(call.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(call.header("content-type"), Some("application/json"));
        assert_eq!(call.header("authorization"), None);
        assert_eq!(
            body_json(&call),
            json!({
                "model": "claude-sonnet-4-20250514",
                "max_tokens": 1024,
                "system": "You are terse.",
                "messages": [
                    {"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}
                    ]},
                    {"role": "assistant", "content": "18C."}
                ],
                "tools": [{"name": "get_weather", "description": "Current weather",
                           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
                "temperature": 0.5,
                "top_p": 0.8
            })
        );
    }

    #[test]
    fn a_response_schema_is_asked_for_in_the_system_prompt() {
        let request = |system: Option<&str>| ChatRequest {
            model: "claude-sonnet-4".into(),
            system: system.map(String::from),
            messages: vec![Message::user("score it")],
            response_schema: Some(json!({"type": "object"})),
            ..ChatRequest::default()
        };
        let rule = r#"Answer with only a JSON value, no prose, that follows this JSON Schema: {"type":"object"}"#;
        let with = body_json(&build_request(
            Provider::Anthropic,
            "https://api.anthropic.com/v1",
            None,
            &request(Some("You score.")),
        ));
        assert_eq!(with["system"], format!("You score.\n\n{rule}"));
        let without = body_json(&build_request(
            Provider::Anthropic,
            "https://api.anthropic.com/v1",
            None,
            &request(None),
        ));
        assert_eq!(without["system"], rule);
    }

    #[test]
    fn consecutive_tool_results_merge_into_one_user_message() {
        let request = ChatRequest {
            model: "claude-3-5-haiku-20241022".into(),
            messages: vec![
                Message::user("Paris and Rome?"),
                Message::assistant_tool_calls(
                    "",
                    vec![
                        weather_call("toolu_a", "Paris"),
                        weather_call("toolu_b", "Rome"),
                    ],
                ),
                Message::tool_result("toolu_a", "get_weather", "18C"),
                Message::tool_result("toolu_b", "get_weather", "25C"),
                Message::user("Which is warmer?"),
            ],
            max_tokens: Some(50),
            ..ChatRequest::default()
        };
        let body = body_json(&build_request(Provider::Anthropic, "b", None, &request));
        assert_eq!(
            body,
            json!({
                "model": "claude-3-5-haiku-20241022",
                "max_tokens": 50,
                "messages": [
                    {"role": "user", "content": "Paris and Rome?"},
                    {"role": "assistant", "content": [
                        {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Paris"}},
                        {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {"city": "Rome"}}
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_a", "content": "18C"},
                        {"type": "tool_result", "tool_use_id": "toolu_b", "content": "25C"},
                        {"type": "text", "text": "Which is warmer?"}
                    ]}
                ]
            })
        );
    }

    #[test]
    fn parses_text_fixture() {
        let r = parse_response(
            Provider::Anthropic,
            200,
            &[],
            include_bytes!("../fixtures/anthropic_text.json"),
        )
        .unwrap();
        assert_eq!(
            r.text,
            "The weather in San Francisco, CA is currently 68°F and sunny."
        );
        assert!(r.tool_calls.is_empty());
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 772,
                output_tokens: 26
            }
        );
        assert_eq!(r.finish_reason, FinishReason::Stop);
        assert_eq!(r.model.as_deref(), Some("claude-haiku-4-5-20251001"));
    }

    #[test]
    fn parses_tool_call_fixtures() {
        let r = parse_response(
            Provider::Anthropic,
            200,
            &[],
            include_bytes!("../fixtures/anthropic_tool_call.json"),
        )
        .unwrap();
        assert_eq!(r.text, "");
        assert_eq!(
            r.tool_calls,
            vec![ToolCall {
                id: "toolu_01DGiQScbZKPwUBYN79rFUb8".into(),
                name: "get_weather".into(),
                arguments: json!({"location": "San Francisco, CA", "units": "f"}),
            }]
        );
        assert_eq!(r.finish_reason, FinishReason::ToolCalls);
        assert_eq!(r.usage.output_tokens, 74);

        let r = parse_response(
            Provider::Anthropic,
            200,
            &[],
            include_bytes!("../fixtures/anthropic_text_and_tool_call.json"),
        )
        .unwrap();
        assert_eq!(r.text, "I'll check the current weather in Paris for you.");
        assert_eq!(r.tool_calls.len(), 1);
        assert_eq!(
            r.tool_calls[0].arguments,
            json!({"location": "Paris, France"})
        );
    }

    #[test]
    fn error_fixtures() {
        let headers = vec![("retry-after".to_string(), "12".to_string())];
        let err = parse_response(
            Provider::Anthropic,
            429,
            &headers,
            include_bytes!("../fixtures/anthropic_error.json"),
        )
        .unwrap_err();
        assert_eq!(
            err,
            ProviderError::RateLimited {
                retry_after_secs: Some(12),
                message: "This request would exceed the rate limit for your organization of 50 requests per minute.".into()
            }
        );

        let err = parse_response(
            Provider::Anthropic,
            529,
            &[],
            include_bytes!("../fixtures/anthropic_overloaded.json"),
        )
        .unwrap_err();
        assert!(err.is_transient());
        assert_eq!(err.code(), "provider_rate_limited");

        let err = parse_response(
            Provider::Anthropic,
            400,
            &[],
            include_bytes!("../fixtures/anthropic_invalid_request.json"),
        )
        .unwrap_err();
        match &err {
            ProviderError::Rejected { status, message } => {
                assert_eq!(*status, 400);
                assert!(message.starts_with("messages.1.content.0: unexpected `tool_use_id`"));
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        assert!(!err.is_transient());

        let err = parse_response(
            Provider::Anthropic,
            500,
            &[],
            br#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#,
        )
        .unwrap_err();
        assert_eq!(
            err,
            ProviderError::Server {
                status: 500,
                message: "Internal server error".into()
            }
        );
    }

    #[test]
    fn malformed_bodies() {
        for body in [
            &b"<html>"[..],
            br#"{"type":"message","usage":{"input_tokens":1,"output_tokens":1}}"#,
            br#"{"content":[{"type":"text","text":"hi"}]}"#,
            br#"{"content":[{"text":"hi"}],"usage":{"input_tokens":1,"output_tokens":1}}"#,
        ] {
            let err = parse_response(Provider::Anthropic, 200, &[], body).unwrap_err();
            assert!(
                matches!(&err, ProviderError::Malformed(m) if m.starts_with("Anthropic returned")),
                "{err:?}"
            );
        }
    }
}
