//! Google Gemini `generateContent`.
//!
//! `POST {base}/models/{model}:generateContent` with `x-goog-api-key`.

use serde_json::{Map, Value, json};

use crate::{
    ChatRequest, ChatResponse, FinishReason, HttpCall, Message, MessageRole, Provider,
    ProviderError, ToolCall, Usage, parse_json_body, to_body,
};

pub(crate) fn build_request(base: &str, api_key: Option<&str>, request: &ChatRequest) -> HttpCall {
    let mut contents: Vec<Value> = Vec::new();
    // Whether the last content is a user turn made of function responses.
    let mut last_is_responses = false;
    for (i, m) in request.messages.iter().enumerate() {
        match m.role {
            MessageRole::User => {
                contents.push(json!({"role": "user", "parts": [{"text": m.content}]}));
                last_is_responses = false;
            }
            MessageRole::Assistant => {
                let mut parts = Vec::new();
                if !m.content.is_empty() || m.tool_calls.is_empty() {
                    parts.push(json!({"text": m.content}));
                }
                for c in &m.tool_calls {
                    let args = match &c.arguments {
                        Value::Null => Value::Object(Map::new()),
                        other => other.clone(),
                    };
                    parts.push(json!({"functionCall": {"name": c.name, "args": args}}));
                }
                contents.push(json!({"role": "model", "parts": parts}));
                last_is_responses = false;
            }
            MessageRole::Tool => {
                let part = json!({"functionResponse": {
                    "name": tool_name_for(&request.messages[..i], m),
                    "response": function_response_payload(&m.content),
                }});
                // Answers to one turn's calls travel together in one user content.
                match contents.last_mut() {
                    Some(Value::Object(last)) if last_is_responses => {
                        if let Some(Value::Array(parts)) = last.get_mut("parts") {
                            parts.push(part);
                        }
                    }
                    _ => contents.push(json!({"role": "user", "parts": [part]})),
                }
                last_is_responses = true;
            }
        }
    }

    let mut body = Map::new();
    if let Some(system) = &request.system {
        body.insert(
            "systemInstruction".into(),
            json!({"parts": [{"text": system}]}),
        );
    }
    body.insert("contents".into(), Value::Array(contents));
    if !request.tools.is_empty() {
        let declarations: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "description": t.description,
                    "parameters": gemini_schema(&t.parameters),
                })
            })
            .collect();
        body.insert(
            "tools".into(),
            json!([{"functionDeclarations": declarations}]),
        );
    }
    let mut config = Map::new();
    if let Some(t) = request.temperature {
        config.insert("temperature".into(), json!(t));
    }
    if let Some(n) = request.max_tokens {
        config.insert("maxOutputTokens".into(), json!(n));
    }
    if let Some(p) = request.top_p {
        config.insert("topP".into(), json!(p));
    }
    if let Some(schema) = &request.response_schema {
        config.insert("responseMimeType".into(), json!("application/json"));
        config.insert("responseSchema".into(), gemini_schema(schema));
    }
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }

    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    if let Some(key) = api_key {
        headers.push(("x-goog-api-key".to_string(), key.to_string()));
    }
    let model = request
        .model
        .strip_prefix("models/")
        .unwrap_or(&request.model);
    HttpCall {
        method: "POST",
        url: format!("{base}/models/{model}:generateContent"),
        headers,
        body: to_body(&Value::Object(body)),
    }
}

/// The tool's name for a function response: the message's own `tool_name`, else
/// the name of the earlier call with the same id, else `"tool"`.
fn tool_name_for(earlier: &[Message], result: &Message) -> String {
    if let Some(name) = result.tool_name.as_deref().filter(|n| !n.is_empty()) {
        return name.to_string();
    }
    let id = result.tool_call_id.as_deref();
    earlier
        .iter()
        .rev()
        .flat_map(|m| m.tool_calls.iter())
        .find(|c| Some(c.id.as_str()) == id)
        .map(|c| c.name.clone())
        .unwrap_or_else(|| "tool".to_string())
}

/// `functionResponse.response` must be a JSON object: a tool output that is a
/// JSON object is sent as is, anything else as `{"result": <output>}`.
fn function_response_payload(content: &str) -> Value {
    match serde_json::from_str::<Value>(content) {
        Ok(Value::Object(map)) => Value::Object(map),
        Ok(other) => json!({"result": other}),
        Err(_) => json!({"result": content}),
    }
}

/// Gemini accepts an OpenAPI subset: drops `$schema` and `additionalProperties`, which it rejects.
fn gemini_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, value) in map {
                match key.as_str() {
                    "$schema" | "additionalProperties" => {}
                    // Keys under `properties` are property names, not keywords.
                    "properties" => {
                        let props = match value {
                            Value::Object(props) => Value::Object(
                                props
                                    .iter()
                                    .map(|(k, v)| (k.clone(), gemini_schema(v)))
                                    .collect(),
                            ),
                            other => other.clone(),
                        };
                        out.insert(key.clone(), props);
                    }
                    _ => {
                        out.insert(key.clone(), gemini_schema(value));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(gemini_schema).collect()),
        other => other.clone(),
    }
}

pub(crate) fn parse_response(status: u16, body: &[u8]) -> Result<ChatResponse, ProviderError> {
    let json = parse_json_body(Provider::Gemini, body)?;
    let malformed = |what: &str| ProviderError::Malformed(format!("Gemini returned {what}"));

    let candidate = match json
        .get("candidates")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
    {
        Some(c) => c,
        None => {
            // A blocked prompt answers 200 with no candidates and a block reason.
            if let Some(reason) = json
                .get("promptFeedback")
                .and_then(|f| f.get("blockReason"))
                .and_then(Value::as_str)
            {
                return Err(ProviderError::Rejected {
                    status,
                    message: format!("Gemini blocked the prompt ({reason})"),
                });
            }
            return Err(malformed("a response without `candidates`"));
        }
    };

    let finish = candidate.get("finishReason").and_then(Value::as_str);
    let parts = candidate
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array);
    let parts: &[Value] = match (parts, finish) {
        (Some(parts), _) => parts,
        // A candidate stopped for safety or recitation may carry no content.
        (None, Some(_)) => &[],
        (None, None) => return Err(malformed("a candidate without `content.parts`")),
    };

    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for part in parts {
        if let Some(t) = part.get("text").and_then(Value::as_str) {
            // Thought summaries are not part of the answer.
            if part.get("thought").and_then(Value::as_bool) != Some(true) {
                text.push_str(t);
            }
        } else if let Some(call) = part.get("functionCall") {
            let name = call
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| malformed("a functionCall without `name`"))?;
            let id = call
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("call_{}", tool_calls.len()));
            tool_calls.push(ToolCall {
                id,
                name: name.to_string(),
                arguments: call
                    .get("args")
                    .cloned()
                    .unwrap_or_else(|| Value::Object(Map::new())),
            });
        }
    }

    let meta = json
        .get("usageMetadata")
        .filter(|m| m.is_object())
        .ok_or_else(|| malformed("a response without `usageMetadata`"))?;
    // Counts of zero are omitted on the wire; thinking tokens are billed as output.
    let count = |field: &str| meta.get(field).and_then(Value::as_u64).unwrap_or(0);
    let usage = Usage {
        input_tokens: count("promptTokenCount"),
        output_tokens: count("candidatesTokenCount") + count("thoughtsTokenCount"),
    };

    let finish_reason = match finish {
        // Gemini reports STOP for function calls too.
        Some("STOP") | None if !tool_calls.is_empty() => FinishReason::ToolCalls,
        Some("STOP") => FinishReason::Stop,
        Some("MAX_TOKENS") => FinishReason::Length,
        Some(other) => FinishReason::Other(other.to_string()),
        None => FinishReason::Other("none".to_string()),
    };

    Ok(ChatResponse {
        text,
        tool_calls,
        usage,
        finish_reason,
        model: json
            .get("modelVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ToolSpec, build_request, parse_response};

    fn body_json(call: &HttpCall) -> Value {
        serde_json::from_slice(&call.body).unwrap()
    }

    fn weather_tool() -> ToolSpec {
        ToolSpec {
            name: "get_current_weather".into(),
            description: "Current weather".into(),
            parameters: json!({
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": {"location": {"type": "string"}, "additionalProperties": {"type": "string"}},
                "required": ["location"],
                "additionalProperties": false
            }),
        }
    }

    #[test]
    fn builds_the_exact_generate_content_body() {
        let request = ChatRequest {
            model: "gemini-2.0-flash".into(),
            system: Some("You are terse.".into()),
            messages: vec![
                Message::user("Weather in Boston?"),
                Message::assistant("Hi."),
            ],
            tools: vec![weather_tool()],
            temperature: Some(0.1),
            max_tokens: Some(100),
            top_p: Some(0.95),
            response_schema: None,
        };
        let call = build_request(
            Provider::Gemini,
            "https://generativelanguage.googleapis.com/v1beta",
            Some("AIza-test"),
            &request,
        );
        assert_eq!(call.method, "POST");
        assert_eq!(
            call.url,
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent"
        );
        assert_eq!(call.header("x-goog-api-key"), Some("AIza-test"));
        assert_eq!(call.header("authorization"), None);
        assert_eq!(
            body_json(&call),
            json!({
                "systemInstruction": {"parts": [{"text": "You are terse."}]},
                "contents": [
                    {"role": "user", "parts": [{"text": "Weather in Boston?"}]},
                    {"role": "model", "parts": [{"text": "Hi."}]}
                ],
                "tools": [{"functionDeclarations": [{
                    "name": "get_current_weather",
                    "description": "Current weather",
                    "parameters": {
                        "type": "object",
                        "properties": {"location": {"type": "string"}, "additionalProperties": {"type": "string"}},
                        "required": ["location"]
                    }
                }]}],
                "generationConfig": {"temperature": 0.1, "maxOutputTokens": 100, "topP": 0.95}
            })
        );
    }

    #[test]
    fn a_response_schema_asks_for_json_with_a_response_schema() {
        let request = ChatRequest {
            model: "gemini-2.0-flash".into(),
            messages: vec![Message::user("score it")],
            response_schema: Some(
                json!({"type": "object", "properties": {"score": {"type": "number"}}}),
            ),
            ..ChatRequest::default()
        };
        let body = body_json(&build_request(
            Provider::Gemini,
            "https://generativelanguage.googleapis.com/v1beta",
            None,
            &request,
        ));
        assert_eq!(
            body["generationConfig"]["responseMimeType"],
            "application/json"
        );
        assert_eq!(
            body["generationConfig"]["responseSchema"],
            gemini_schema(&json!({"type": "object", "properties": {"score": {"type": "number"}}}))
        );
    }

    #[test]
    fn function_call_round_trip() {
        // The model asks for a tool...
        let first = parse_response(
            Provider::Gemini,
            200,
            &[],
            include_bytes!("../fixtures/gemini_tool_call.json"),
        )
        .unwrap();
        assert_eq!(
            first.tool_calls,
            vec![ToolCall {
                id: "call_0".into(),
                name: "get_current_weather".into(),
                arguments: json!({"location": "Boston, MA"}),
            }]
        );
        assert_eq!(first.finish_reason, FinishReason::ToolCalls);
        assert_eq!(
            first.usage,
            Usage {
                input_tokens: 57,
                output_tokens: 9
            }
        );

        // ...and the next request carries the call and its (name-less) result.
        let mut result = Message::tool_result("call_0", "", r#"{"temperature": 12, "unit": "C"}"#);
        result.tool_name = None;
        let request = ChatRequest {
            model: "models/gemini-2.0-flash".into(),
            messages: vec![
                Message::user("Weather in Boston?"),
                Message::assistant_tool_calls(first.text.clone(), first.tool_calls.clone()),
                result,
                Message::tool_result("call_1", "get_time", "noon"),
            ],
            ..ChatRequest::default()
        };
        let call = build_request(Provider::Gemini, "http://fake", None, &request);
        assert_eq!(
            call.url,
            "http://fake/models/gemini-2.0-flash:generateContent"
        );
        assert_eq!(call.header("x-goog-api-key"), None);
        assert_eq!(
            body_json(&call),
            json!({
                "contents": [
                    {"role": "user", "parts": [{"text": "Weather in Boston?"}]},
                    {"role": "model", "parts": [
                        {"functionCall": {"name": "get_current_weather", "args": {"location": "Boston, MA"}}}
                    ]},
                    {"role": "user", "parts": [
                        {"functionResponse": {"name": "get_current_weather",
                                              "response": {"temperature": 12, "unit": "C"}}},
                        {"functionResponse": {"name": "get_time", "response": {"result": "noon"}}}
                    ]}
                ]
            })
        );
    }

    #[test]
    fn parses_text_fixture() {
        let r = parse_response(
            Provider::Gemini,
            200,
            &[],
            include_bytes!("../fixtures/gemini_text.json"),
        )
        .unwrap();
        assert_eq!(
            r.text,
            "Hey! Ready to assist you. Just let me know what you need.\n"
        );
        assert_eq!(r.finish_reason, FinishReason::Stop);
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 189,
                output_tokens: 16
            }
        );
        assert_eq!(r.model.as_deref(), Some("gemini-2.0-flash"));
    }

    #[test]
    fn thinking_tokens_count_as_output_and_max_tokens_is_length() {
        let r = parse_response(
            Provider::Gemini,
            200,
            &[],
            include_bytes!("../fixtures/gemini_thinking_max_tokens.json"),
        )
        .unwrap();
        assert_eq!(r.finish_reason, FinishReason::Length);
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 12,
                output_tokens: 111
            }
        );
    }

    #[test]
    fn error_fixtures() {
        // No Retry-After header: the RetryInfo detail ("58s") is used.
        let err = parse_response(
            Provider::Gemini,
            429,
            &[],
            include_bytes!("../fixtures/gemini_error.json"),
        )
        .unwrap_err();
        match &err {
            ProviderError::RateLimited {
                retry_after_secs,
                message,
            } => {
                assert_eq!(*retry_after_secs, Some(58));
                assert!(message.starts_with("You exceeded your current quota"));
            }
            other => panic!("expected RateLimited, got {other:?}"),
        }
        // A header wins over the body.
        let headers = vec![("Retry-After".to_string(), "3".to_string())];
        let err = parse_response(
            Provider::Gemini,
            429,
            &headers,
            include_bytes!("../fixtures/gemini_error.json"),
        )
        .unwrap_err();
        assert_eq!(err.retry_after_secs(), Some(3));

        let err = parse_response(
            Provider::Gemini,
            400,
            &[],
            include_bytes!("../fixtures/gemini_invalid_request.json"),
        )
        .unwrap_err();
        assert_eq!(
            err,
            ProviderError::Rejected {
                status: 400,
                message: "* GenerateContentRequest.tools[0].function_declarations[0].parameters.properties: should be non-empty for OBJECT type".into()
            }
        );
        assert!(!err.is_transient());

        let err = parse_response(
            Provider::Gemini,
            503,
            &[],
            br#"{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}"#,
        )
        .unwrap_err();
        assert!(err.is_transient());
        assert_eq!(err.code(), "provider_unavailable");
    }

    #[test]
    fn blocked_prompt_is_rejected() {
        let err = parse_response(
            Provider::Gemini,
            200,
            &[],
            include_bytes!("../fixtures/gemini_blocked_prompt.json"),
        )
        .unwrap_err();
        assert_eq!(
            err,
            ProviderError::Rejected {
                status: 200,
                message: "Gemini blocked the prompt (SAFETY)".into()
            }
        );
    }

    #[test]
    fn malformed_bodies() {
        for body in [
            &b""[..],
            br#"{"usageMetadata":{"promptTokenCount":1}}"#,
            br#"{"candidates":[{"index":0}],"usageMetadata":{}}"#,
            br#"{"candidates":[{"content":{"parts":[{"text":"x"}]},"finishReason":"STOP"}]}"#,
        ] {
            let err = parse_response(Provider::Gemini, 200, &[], body).unwrap_err();
            assert!(
                matches!(&err, ProviderError::Malformed(m) if m.starts_with("Gemini returned")),
                "{err:?}"
            );
        }
    }

    #[test]
    fn safety_stop_without_content_is_an_empty_answer() {
        let body = br#"{"candidates":[{"finishReason":"SAFETY","index":0}],"usageMetadata":{"promptTokenCount":5,"totalTokenCount":5}}"#;
        let r = parse_response(Provider::Gemini, 200, &[], body).unwrap();
        assert_eq!(r.text, "");
        assert_eq!(r.finish_reason, FinishReason::Other("SAFETY".into()));
        assert_eq!(r.usage.output_tokens, 0);
    }
}
