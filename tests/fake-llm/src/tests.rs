//! Unit tests: the rendered bodies have the providers' shapes.

use serde_json::{Value, json};

use crate::render::{self, Completion};
use crate::{Dialect, Reply, State, ToolCall};

/// The shape of a JSON value: objects keep their keys, arrays their length,
/// and every leaf becomes the name of its type.
fn shape(value: &Value) -> Value {
    match value {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
        Value::Array(items) => Value::Array(items.iter().map(shape).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
        }
    }
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn assert_same_shape(rendered: &Value, fixture_name: &str) {
    let expected = fixture(fixture_name);
    assert_eq!(
        shape(rendered),
        shape(&expected),
        "{fixture_name}: rendered {rendered:#}"
    );
}

fn completion<'a>(text: Option<&'a str>, calls: &'a [ToolCall]) -> Completion<'a> {
    Completion {
        model: "some-model",
        seq: 7,
        created: 1_700_000_000,
        text,
        calls,
        truncated: false,
        input_tokens: 12,
        output_tokens: 5,
    }
}

fn weather_call() -> Vec<ToolCall> {
    vec![ToolCall {
        name: "get_weather".into(),
        arguments: json!({"location": "Paris"}),
    }]
}

#[test]
fn text_replies_match_the_recorded_shapes() {
    let c = completion(Some("hello there"), &[]);
    assert_same_shape(&render::completion(Dialect::OpenAi, &c), "openai_text");
    assert_same_shape(
        &render::completion(Dialect::Anthropic, &c),
        "anthropic_text",
    );
    assert_same_shape(&render::completion(Dialect::Gemini, &c), "gemini_text");
}

/// The (name, arguments) of the first tool call in a recorded response.
fn recorded_call(dialect: Dialect, recorded: &Value) -> ToolCall {
    let (name, arguments) = match dialect {
        Dialect::OpenAi => {
            let f = &recorded["choices"][0]["message"]["tool_calls"][0]["function"];
            let args = serde_json::from_str(f["arguments"].as_str().unwrap()).unwrap();
            (&f["name"], args)
        }
        Dialect::Anthropic => {
            let block = &recorded["content"][0];
            (&block["name"], block["input"].clone())
        }
        Dialect::Gemini => {
            let call = &recorded["candidates"][0]["content"]["parts"][0]["functionCall"];
            (&call["name"], call["args"].clone())
        }
    };
    ToolCall {
        name: name.as_str().unwrap().to_owned(),
        arguments,
    }
}

#[test]
fn tool_call_replies_match_the_recorded_shapes() {
    // The arguments are the caller's data, so render the recorded ones.
    for (dialect, name) in [
        (Dialect::OpenAi, "openai_tool_call"),
        (Dialect::Anthropic, "anthropic_tool_call"),
        (Dialect::Gemini, "gemini_tool_call"),
    ] {
        let calls = [recorded_call(dialect, &fixture(name))];
        let rendered = render::completion(dialect, &completion(None, &calls));
        assert_same_shape(&rendered, name);
        assert_eq!(recorded_call(dialect, &rendered), calls[0]);
    }
}

#[test]
fn tool_call_arguments_are_a_string_only_for_openai() {
    let calls = weather_call();
    let c = completion(None, &calls);
    let openai = render::completion(Dialect::OpenAi, &c);
    let args = openai["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(args).unwrap(),
        json!({"location": "Paris"})
    );
    assert_eq!(openai["choices"][0]["finish_reason"], "tool_calls");
    let anthropic = render::completion(Dialect::Anthropic, &c);
    assert_eq!(
        anthropic["content"][0]["input"],
        json!({"location": "Paris"})
    );
    assert_eq!(anthropic["stop_reason"], "tool_use");
    let gemini = render::completion(Dialect::Gemini, &c);
    assert_eq!(
        gemini["candidates"][0]["content"]["parts"][0]["functionCall"]["args"],
        json!({"location": "Paris"})
    );
    assert_eq!(gemini["candidates"][0]["finishReason"], "STOP");
}

#[test]
fn rate_limit_errors_match_the_recorded_shapes() {
    for (dialect, name) in [
        (Dialect::OpenAi, "openai_error"),
        (Dialect::Anthropic, "anthropic_error"),
        (Dialect::Gemini, "gemini_error"),
    ] {
        assert_same_shape(&render::error(dialect, 429, None, Some(3), 1), name);
    }
}

#[test]
fn error_types_follow_the_status() {
    let anthropic =
        |s| render::error(Dialect::Anthropic, s, None, None, 1)["error"]["type"].clone();
    assert_eq!(anthropic(400), "invalid_request_error");
    assert_eq!(anthropic(429), "rate_limit_error");
    assert_eq!(anthropic(500), "api_error");
    assert_eq!(anthropic(529), "overloaded_error");
    let gemini = |s| render::error(Dialect::Gemini, s, None, None, 1)["error"]["status"].clone();
    assert_eq!(gemini(400), "INVALID_ARGUMENT");
    assert_eq!(gemini(429), "RESOURCE_EXHAUSTED");
    assert_eq!(gemini(500), "INTERNAL");
    assert_eq!(gemini(503), "UNAVAILABLE");
    let openai = render::error(Dialect::OpenAi, 500, Some("boom"), None, 1);
    assert_eq!(openai["error"]["type"], "server_error");
    assert_eq!(openai["error"]["message"], "boom");
    assert_eq!(openai["error"]["code"], Value::Null);
}

#[test]
fn truncated_replies_report_the_token_limit() {
    let mut c = completion(Some("cut"), &[]);
    c.truncated = true;
    assert_eq!(
        render::completion(Dialect::OpenAi, &c)["choices"][0]["finish_reason"],
        "length"
    );
    assert_eq!(
        render::completion(Dialect::Anthropic, &c)["stop_reason"],
        "max_tokens"
    );
    assert_eq!(
        render::completion(Dialect::Gemini, &c)["candidates"][0]["finishReason"],
        "MAX_TOKENS"
    );
}

#[test]
fn paths_select_the_dialect() {
    let d = |p: &str| Dialect::from_path(p);
    assert_eq!(d("/v1/chat/completions"), Some((Dialect::OpenAi, None)));
    assert_eq!(
        d("/openai/v1/chat/completions"),
        Some((Dialect::OpenAi, None))
    );
    assert_eq!(
        d("/v1beta/openai/chat/completions"),
        Some((Dialect::OpenAi, None))
    );
    assert_eq!(d("/v1/messages"), Some((Dialect::Anthropic, None)));
    assert_eq!(
        d("/v1beta/models/gemini-2.0-flash:generateContent"),
        Some((Dialect::Gemini, Some("gemini-2.0-flash".into())))
    );
    assert_eq!(d("/v1beta/models/:generateContent"), None);
    assert_eq!(d("/v1beta/models/x:streamGenerateContent"), None);
    assert_eq!(d("/v1/embeddings"), None);
}

#[test]
fn tokens_are_estimated_from_the_conversation() {
    let openai = json!({"model": "m", "messages": [
        {"role": "system", "content": "abcd"},
        {"role": "user", "content": [{"type": "text", "text": "efghi"}]},
    ]});
    assert_eq!(render::input_tokens(Dialect::OpenAi, &openai), 3); // 9 chars
    let anthropic = json!({"system": "abcdefgh", "messages": [{"role": "user", "content": "x"}]});
    assert_eq!(render::input_tokens(Dialect::Anthropic, &anthropic), 3);
    let gemini = json!({"contents": [{"role": "user", "parts": [{"text": "abcd"}]}]});
    assert_eq!(render::input_tokens(Dialect::Gemini, &gemini), 1);
    assert_eq!(render::input_tokens(Dialect::Gemini, &json!({})), 1);

    assert_eq!(render::output_tokens(Some("fake reply #3"), &[]), 3);
    assert_eq!(render::output_tokens(None, &[]), 1);
    // "get_weather" (11) + {"location":"Paris"} (20) = 31 chars → 8
    assert_eq!(render::output_tokens(None, &weather_call()), 8);
}

#[test]
fn the_most_specific_queue_answers_first() {
    let mut state = State::default();
    state.queue.push_back(Reply::text("any"));
    state
        .by_dialect
        .entry(Dialect::Gemini)
        .or_default()
        .push_back(Reply::text("gemini"));
    state
        .by_model
        .entry("m".into())
        .or_default()
        .push_back(Reply::text("model m"));
    assert_eq!(
        state.next_reply(Dialect::Gemini, Some("m")),
        Some(Reply::text("model m"))
    );
    assert_eq!(
        state.next_reply(Dialect::Gemini, Some("m")),
        Some(Reply::text("gemini"))
    );
    assert_eq!(
        state.next_reply(Dialect::Gemini, Some("m")),
        Some(Reply::text("any"))
    );
    assert_eq!(state.next_reply(Dialect::Gemini, Some("m")), None);
}

#[test]
fn builders_compose() {
    let reply = Reply::tool_call("a", json!({}))
        .and_tool_call("b", json!({"x": 1}))
        .with_text("thinking")
        .tokens(3, 4)
        .after(std::time::Duration::from_millis(5));
    assert!(reply.is_success());
    assert_eq!(reply.tokens, Some((3, 4)));
    let crate::ReplyKind::Completion { text, calls } = &reply.kind else {
        panic!("not a completion");
    };
    assert_eq!(text.as_deref(), Some("thinking"));
    assert_eq!(calls.len(), 2);
    assert_eq!(Reply::rate_limited(2).retry_after, Some(2));
    assert!(!Reply::server_error().is_success());
}
