//! OpenAI chat completions (also Groq and OpenAI-compatible servers).
//!
//! `POST {base}/chat/completions` with `authorization: Bearer <key>`.

use serde_json::{Map, Value, json};

use crate::{
    ChatRequest, ChatResponse, FinishReason, HttpCall, MessageRole, Provider, ProviderError,
    ToolCall, Usage, parse_json_body, to_body,
};

/// OpenAI's reasoning models (o1, o3, o4-mini, …) refuse `max_tokens` and want
/// `max_completion_tokens` instead.
fn is_openai_reasoning_model(model: &str) -> bool {
    let mut chars = model.chars();
    chars.next() == Some('o') && chars.next().is_some_and(|c| c.is_ascii_digit())
}

pub(crate) fn build_request(
    provider: Provider,
    base: &str,
    api_key: Option<&str>,
    request: &ChatRequest,
) -> HttpCall {
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    if let Some(system) = &request.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    for m in &request.messages {
        messages.push(match m.role {
            MessageRole::User => json!({"role": "user", "content": m.content}),
            MessageRole::Assistant if m.tool_calls.is_empty() => {
                json!({"role": "assistant", "content": m.content})
            }
            MessageRole::Assistant => {
                let calls: Vec<Value> = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        json!({
                            "id": c.id,
                            "type": "function",
                            "function": {
                                "name": c.name,
                                "arguments": arguments_string(&c.arguments),
                            }
                        })
                    })
                    .collect();
                // OpenAI wants `content: null` rather than "" on a pure tool-call turn.
                let content = if m.content.is_empty() {
                    Value::Null
                } else {
                    Value::String(m.content.clone())
                };
                json!({"role": "assistant", "content": content, "tool_calls": calls})
            }
            MessageRole::Tool => json!({
                "role": "tool",
                "tool_call_id": m.tool_call_id.clone().unwrap_or_default(),
                "content": m.content,
            }),
        });
    }

    let mut body = Map::new();
    body.insert("model".into(), json!(request.model));
    body.insert("messages".into(), Value::Array(messages));
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    }
                })
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(t) = request.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(n) = request.max_tokens {
        let key = if provider == Provider::OpenAi && is_openai_reasoning_model(&request.model) {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        body.insert(key.into(), json!(n));
    }
    if let Some(p) = request.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if let Some(schema) = &request.response_schema {
        body.insert(
            "response_format".into(),
            json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}),
        );
    }

    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    if let Some(key) = api_key {
        headers.push(("authorization".to_string(), format!("Bearer {key}")));
    }
    HttpCall {
        method: "POST",
        url: format!("{base}/chat/completions"),
        headers,
        body: to_body(&Value::Object(body)),
    }
}

/// Tool-call arguments travel as a JSON string.
fn arguments_string(arguments: &Value) -> String {
    match arguments {
        Value::Null => "{}".to_string(),
        other => other.to_string(),
    }
}

pub(crate) fn parse_response(
    provider: Provider,
    status: u16,
    body: &[u8],
) -> Result<ChatResponse, ProviderError> {
    let name = provider.display_name();
    let json = parse_json_body(provider, body)?;
    let malformed = |what: &str| ProviderError::Malformed(format!("{name} returned {what}"));

    let choice = json
        .get("choices")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("a response without a `choices` array"))?
        .first()
        .ok_or_else(|| malformed("an empty `choices` array"))?;
    let message = choice
        .get("message")
        .filter(|m| m.is_object())
        .ok_or_else(|| malformed("a choice without a `message` object"))?;
    let text = match message.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(malformed("a `message.content` that is not a string")),
    };

    let mut tool_calls = Vec::new();
    if let Some(calls) = message.get("tool_calls").filter(|v| !v.is_null()) {
        let calls = calls
            .as_array()
            .ok_or_else(|| malformed("`tool_calls` that is not an array"))?;
        for call in calls {
            tool_calls.push(parse_tool_call(call).map_err(|what| malformed(&what))?);
        }
    }

    let usage = match json.get("usage").filter(|u| !u.is_null()) {
        Some(u) => Usage {
            input_tokens: u
                .get("prompt_tokens")
                .and_then(Value::as_u64)
                .ok_or_else(|| malformed("`usage` without `prompt_tokens`"))?,
            output_tokens: u
                .get("completion_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        },
        // Some self-hosted servers omit usage; the hosted ones bill by it, so require it there.
        None if provider == Provider::OpenAiCompatible => Usage::default(),
        None => return Err(malformed("a response without `usage`")),
    };

    let finish_reason = match choice.get("finish_reason").and_then(Value::as_str) {
        Some("stop") => FinishReason::Stop,
        Some("tool_calls") | Some("function_call") => FinishReason::ToolCalls,
        Some("length") => FinishReason::Length,
        Some(other) => FinishReason::Other(other.to_string()),
        None if !tool_calls.is_empty() => FinishReason::ToolCalls,
        None => FinishReason::Other(format!("none (HTTP {status})")),
    };

    Ok(ChatResponse {
        text,
        tool_calls,
        usage,
        finish_reason,
        model: json
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

fn parse_tool_call(call: &Value) -> Result<ToolCall, String> {
    let id = call
        .get("id")
        .and_then(Value::as_str)
        .ok_or("a tool call without an `id`")?;
    let function = call
        .get("function")
        .ok_or("a tool call without a `function`")?;
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or("a tool call without a function `name`")?;
    let arguments = match function.get("arguments") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::String(s)) if s.trim().is_empty() => Value::Object(Map::new()),
        Some(Value::String(s)) => serde_json::from_str(s).map_err(|e| {
            format!("tool call `{name}` with arguments that are not valid JSON ({e})")
        })?,
        // Some OpenAI-compatible servers send the arguments as an object already.
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return Err(format!("tool call `{name}` with non-string arguments")),
    };
    Ok(ToolCall {
        id: id.to_string(),
        name: name.to_string(),
        arguments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Message, ToolSpec, build_request, parse_response};

    fn sample_request() -> ChatRequest {
        ChatRequest {
            model: "gpt-4o".into(),
            system: Some("You are terse.".into()),
            messages: vec![
                Message::user("Weather in Paris?"),
                Message::assistant_tool_calls(
                    "",
                    vec![ToolCall {
                        id: "call_1".into(),
                        name: "get_weather".into(),
                        arguments: json!({"city": "Paris"}),
                    }],
                ),
                Message::tool_result("call_1", "get_weather", "18C, cloudy"),
                Message::assistant("It is 18C and cloudy."),
                Message::user("Thanks"),
            ],
            tools: vec![ToolSpec {
                name: "get_weather".into(),
                description: "Current weather".into(),
                parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
            }],
            temperature: Some(0.2),
            max_tokens: Some(256),
            top_p: Some(0.9),
            response_schema: None,
        }
    }

    fn body_json(call: &HttpCall) -> Value {
        serde_json::from_slice(&call.body).unwrap()
    }

    #[test]
    fn builds_the_exact_chat_completions_body() {
        let call = build_request(
            Provider::OpenAi,
            "https://api.openai.com/v1/",
            Some("sk-test"),
            &sample_request(),
        );
        assert_eq!(call.method, "POST");
        assert_eq!(call.url, "https://api.openai.com/v1/chat/completions");
        assert_eq!(call.header("Authorization"), Some("Bearer sk-test"));
        assert_eq!(call.header("content-type"), Some("application/json"));
        assert_eq!(
            body_json(&call),
            json!({
                "model": "gpt-4o",
                "messages": [
                    {"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "18C, cloudy"},
                    {"role": "assistant", "content": "It is 18C and cloudy."},
                    {"role": "user", "content": "Thanks"}
                ],
                "tools": [{"type": "function", "function": {
                    "name": "get_weather", "description": "Current weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
                }}],
                "temperature": 0.2,
                "max_tokens": 256,
                "top_p": 0.9
            })
        );
    }

    #[test]
    fn omits_optional_fields_and_auth_without_key() {
        let request = ChatRequest {
            model: "llama3.2".into(),
            messages: vec![Message::user("hi")],
            ..ChatRequest::default()
        };
        let call = build_request(
            Provider::OpenAiCompatible,
            "http://localhost:11434/v1",
            None,
            &request,
        );
        assert_eq!(call.url, "http://localhost:11434/v1/chat/completions");
        assert_eq!(call.header("authorization"), None);
        assert_eq!(
            body_json(&call),
            json!({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]})
        );
    }

    #[test]
    fn a_response_schema_becomes_a_json_schema_response_format() {
        let schema = json!({"type": "object", "properties": {"score": {"type": "number"}}});
        let request = ChatRequest {
            model: "gpt-4o-mini".into(),
            messages: vec![Message::user("score it")],
            response_schema: Some(schema.clone()),
            ..ChatRequest::default()
        };
        let call = build_request(
            Provider::OpenAi,
            "https://api.openai.com/v1",
            None,
            &request,
        );
        assert_eq!(
            body_json(&call)["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}})
        );
    }

    #[test]
    fn groq_uses_the_same_format() {
        let call = build_request(
            Provider::Groq,
            "https://api.groq.com/openai/v1",
            Some("gsk_x"),
            &sample_request(),
        );
        assert_eq!(call.url, "https://api.groq.com/openai/v1/chat/completions");
        assert_eq!(call.header("authorization"), Some("Bearer gsk_x"));
        assert_eq!(body_json(&call)["max_tokens"], json!(256));
    }

    #[test]
    fn reasoning_models_get_max_completion_tokens() {
        let mut request = sample_request();
        request.model = "o3-mini".into();
        let body = body_json(&build_request(Provider::OpenAi, "b", Some("k"), &request));
        assert_eq!(body["max_completion_tokens"], json!(256));
        assert!(body.get("max_tokens").is_none());
        assert!(!is_openai_reasoning_model("gpt-4o"));
        assert!(is_openai_reasoning_model("o1"));
    }

    #[test]
    fn parses_text_fixture() {
        let r = parse_response(
            Provider::OpenAi,
            200,
            &[],
            include_bytes!("../fixtures/openai_text.json"),
        )
        .unwrap();
        assert_eq!(r.text, "Hello! How can I assist you today?");
        assert!(r.tool_calls.is_empty());
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 19,
                output_tokens: 10
            }
        );
        assert_eq!(r.finish_reason, FinishReason::Stop);
        assert_eq!(r.model.as_deref(), Some("gpt-4.1-2025-04-14"));
    }

    #[test]
    fn parses_tool_call_fixture() {
        let r = parse_response(
            Provider::OpenAi,
            200,
            &[],
            include_bytes!("../fixtures/openai_tool_call.json"),
        )
        .unwrap();
        assert_eq!(r.text, "");
        assert_eq!(
            r.tool_calls,
            vec![ToolCall {
                id: "call_qOfTGgDrItLORNfC6VwUbyLL".into(),
                name: "get_weather".into(),
                arguments: json!({"location": "Shanghai"}),
            }]
        );
        assert_eq!(r.finish_reason, FinishReason::ToolCalls);
        assert_eq!(r.usage.input_tokens, 91);
        assert_eq!(r.usage.output_tokens, 14);
    }

    #[test]
    fn rate_limit_fixture_with_retry_after() {
        let headers = vec![("retry-after".to_string(), "20".to_string())];
        let err = parse_response(
            Provider::OpenAi,
            429,
            &headers,
            include_bytes!("../fixtures/openai_error.json"),
        )
        .unwrap_err();
        match &err {
            ProviderError::RateLimited {
                retry_after_secs,
                message,
            } => {
                assert_eq!(*retry_after_secs, Some(20));
                assert!(message.starts_with("Rate limit reached for gpt-4o"));
            }
            other => panic!("expected RateLimited, got {other:?}"),
        }
        assert!(err.is_transient());
    }

    #[test]
    fn bad_request_is_rejected_with_the_provider_message() {
        let err = parse_response(
            Provider::OpenAi,
            400,
            &[],
            include_bytes!("../fixtures/openai_invalid_request.json"),
        )
        .unwrap_err();
        assert_eq!(
            err,
            ProviderError::Rejected {
                status: 400,
                message: "Invalid value: 'tool'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'.".into()
            }
        );
        assert!(!err.is_transient());
    }

    #[test]
    fn server_error_is_transient() {
        let body = br#"{"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}"#;
        let err = parse_response(Provider::Groq, 500, &[], body).unwrap_err();
        assert_eq!(
            err,
            ProviderError::Server {
                status: 500,
                message: "The server had an error while processing your request.".into()
            }
        );
        assert!(err.is_transient());
    }

    #[test]
    fn malformed_bodies() {
        for body in [
            &b"not json"[..],
            br#"{"object":"chat.completion"}"#,
            br#"{"choices":[]}"#,
            br#"{"choices":[{"index":0}]}"#,
            br#"{"choices":[{"message":{"content":null}}]}"#,
            br#"{"choices":[{"message":{"content":"x","tool_calls":[{"id":"c","function":{"name":"f","arguments":"{not json"}}]}}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
        ] {
            let err = parse_response(Provider::OpenAi, 200, &[], body).unwrap_err();
            assert!(
                matches!(&err, ProviderError::Malformed(m) if m.starts_with("OpenAI returned")),
                "{err:?}"
            );
            assert!(!err.is_transient());
        }
    }

    #[test]
    fn compatible_servers_may_omit_usage_and_send_object_arguments() {
        let body = br#"{"model":"llama3.2","choices":[{"message":{"role":"assistant","content":"","tool_calls":[{"id":"call_a","type":"function","function":{"name":"calculator","arguments":{"expression":"1+1"}}}]},"finish_reason":"tool_calls"}]}"#;
        let r = parse_response(Provider::OpenAiCompatible, 200, &[], body).unwrap();
        assert_eq!(r.usage, Usage::default());
        assert_eq!(r.tool_calls[0].arguments, json!({"expression": "1+1"}));
    }
}
