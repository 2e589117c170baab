//! The fake over real HTTP on loopback, with a plain hyper client.

use std::time::{Duration, Instant};

use bytes::Bytes;
use fake_llm::{Dialect, FakeLlm, Reply};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn send(
    fake: &FakeLlm,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let stream = tokio::net::TcpStream::connect(fake.addr()).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", fake.addr().to_string())
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        text: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

async fn post(fake: &FakeLlm, path: &str, body: &Value) -> Answer {
    send(fake, "POST", path, &[], &body.to_string()).await
}

fn openai_request() -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is two plus two?"}
        ]
    })
}

fn anthropic_request() -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 256,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "What is two plus two?"}]
    })
}

fn gemini_request() -> Value {
    json!({
        "systemInstruction": {"parts": [{"text": "You are terse."}]},
        "contents": [{"role": "user", "parts": [{"text": "What is two plus two?"}]}]
    })
}

const GEMINI_PATH: &str = "/v1beta/models/gemini-2.0-flash:generateContent";

#[tokio::test]
async fn openai_default_reply_and_recording() {
    let fake = FakeLlm::start().await;
    let body = openai_request();
    let answer = send(
        &fake,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-test")],
        &body.to_string(),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let reply = answer.json();
    assert_eq!(reply["object"], "chat.completion");
    assert_eq!(reply["model"], "gpt-4o-mini");
    assert_eq!(reply["choices"][0]["message"]["role"], "assistant");
    assert_eq!(reply["choices"][0]["message"]["content"], "fake reply #1");
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
    // "You are terse." (14) + "What is two plus two?" (21) = 35 chars → 9
    assert_eq!(reply["usage"]["prompt_tokens"], 9);
    assert_eq!(reply["usage"]["completion_tokens"], 3);
    assert_eq!(reply["usage"]["total_tokens"], 12);

    let received = fake.received();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(request.query, None);
    assert_eq!(request.header("Authorization"), Some("Bearer sk-test"));
    assert_eq!(request.body, body);
    assert_eq!(request.dialect, Some(Dialect::OpenAi));
    assert_eq!(request.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(fake.successes(Dialect::OpenAi), 1);
    assert_eq!(fake.successes(Dialect::Anthropic), 0);

    let second = post(&fake, "/openai/v1/chat/completions", &body)
        .await
        .json();
    assert_eq!(second["choices"][0]["message"]["content"], "fake reply #2");
    assert_eq!(
        fake.last_request().unwrap().path,
        "/openai/v1/chat/completions"
    );
}

#[tokio::test]
async fn openai_scripted_tool_call_then_text() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::tool_call("calculator", json!({"expression": "2+2"})));
    fake.push(Reply::text("4").tokens(40, 1));
    let first = post(&fake, "/v1/chat/completions", &openai_request())
        .await
        .json();
    let message = &first["choices"][0]["message"];
    assert_eq!(first["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(message["content"], Value::Null);
    assert_eq!(message["tool_calls"][0]["type"], "function");
    assert_eq!(message["tool_calls"][0]["function"]["name"], "calculator");
    let args: Value = serde_json::from_str(
        message["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(args, json!({"expression": "2+2"}));
    let second = post(&fake, "/v1/chat/completions", &openai_request())
        .await
        .json();
    assert_eq!(second["choices"][0]["message"]["content"], "4");
    assert_eq!(second["usage"]["prompt_tokens"], 40);
    assert_eq!(second["usage"]["completion_tokens"], 1);
    assert_eq!(fake.remaining(), 0);
    assert_eq!(fake.successes(Dialect::OpenAi), 2);
}

#[tokio::test]
async fn anthropic_text_and_tool_use() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::text("Four.").tokens(20, 2));
    fake.push(
        Reply::tool_call("calculator", json!({"expression": "2+2"})).with_text("Let me compute."),
    );
    let headers = [
        ("x-api-key", "sk-ant-test"),
        ("anthropic-version", "2023-06-01"),
    ];
    let body = anthropic_request().to_string();
    let text = send(&fake, "POST", "/v1/messages", &headers, &body).await;
    assert_eq!(text.status, 200);
    assert!(text.header("request-id").is_some());
    let text = text.json();
    assert_eq!(text["type"], "message");
    assert_eq!(text["role"], "assistant");
    assert_eq!(text["model"], "claude-sonnet-4-5");
    assert_eq!(text["content"], json!([{"type": "text", "text": "Four."}]));
    assert_eq!(text["stop_reason"], "end_turn");
    assert_eq!(text["stop_sequence"], Value::Null);
    assert_eq!(text["usage"]["input_tokens"], 20);
    assert_eq!(text["usage"]["output_tokens"], 2);

    let tool = send(&fake, "POST", "/v1/messages", &headers, &body)
        .await
        .json();
    assert_eq!(tool["stop_reason"], "tool_use");
    assert_eq!(
        tool["content"][0],
        json!({"type": "text", "text": "Let me compute."})
    );
    assert_eq!(tool["content"][1]["type"], "tool_use");
    assert_eq!(tool["content"][1]["name"], "calculator");
    assert_eq!(tool["content"][1]["input"], json!({"expression": "2+2"}));
    assert!(
        tool["content"][1]["id"]
            .as_str()
            .unwrap()
            .starts_with("toolu_")
    );

    let request = fake.last_request().unwrap();
    assert_eq!(request.header("x-api-key"), Some("sk-ant-test"));
    assert_eq!(request.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(request.dialect, Some(Dialect::Anthropic));
    assert_eq!(fake.successes(Dialect::Anthropic), 2);
}

#[tokio::test]
async fn gemini_default_and_function_call() {
    let fake = FakeLlm::start().await;
    let path = format!("{GEMINI_PATH}?key=AIza-test");
    let default = post(&fake, &path, &gemini_request()).await.json();
    let candidate = &default["candidates"][0];
    assert_eq!(candidate["content"]["role"], "model");
    assert_eq!(candidate["content"]["parts"][0]["text"], "fake reply #1");
    assert_eq!(candidate["finishReason"], "STOP");
    assert_eq!(default["modelVersion"], "gemini-2.0-flash");
    assert_eq!(default["usageMetadata"]["promptTokenCount"], 9);
    assert_eq!(default["usageMetadata"]["candidatesTokenCount"], 3);
    assert_eq!(default["usageMetadata"]["totalTokenCount"], 12);

    fake.push(Reply::tool_call("lookup", json!({"city": "Oslo"})));
    let call = post(&fake, GEMINI_PATH, &gemini_request()).await.json();
    assert_eq!(
        call["candidates"][0]["content"]["parts"][0]["functionCall"],
        json!({"name": "lookup", "args": {"city": "Oslo"}})
    );

    let received = fake.received();
    assert_eq!(received[0].path, GEMINI_PATH);
    assert_eq!(received[0].query.as_deref(), Some("key=AIza-test"));
    assert_eq!(received[0].model.as_deref(), Some("gemini-2.0-flash"));
    assert_eq!(received[1].query, None);
    assert_eq!(fake.successes(Dialect::Gemini), 2);
}

#[tokio::test]
async fn scripted_errors_in_each_dialect() {
    let fake = FakeLlm::start().await;

    fake.push(Reply::rate_limited(2));
    let answer = post(&fake, "/v1/chat/completions", &openai_request()).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("retry-after"), Some("2"));
    let body = answer.json();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(body["error"]["param"], Value::Null);

    fake.push(Reply::rate_limited(7));
    let answer = post(&fake, "/v1/messages", &anthropic_request()).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("retry-after"), Some("7"));
    let body = answer.json();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");

    fake.push(Reply::rate_limited(5));
    let answer = post(&fake, GEMINI_PATH, &gemini_request()).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("retry-after"), Some("5"));
    let body = answer.json();
    assert_eq!(body["error"]["code"], 429);
    assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(body["error"]["details"][1]["retryDelay"], "5s");

    fake.push(Reply::server_error());
    let answer = post(&fake, "/v1/messages", &anthropic_request()).await;
    assert_eq!(answer.status, 500);
    assert_eq!(answer.header("retry-after"), None);
    assert_eq!(answer.json()["error"]["type"], "api_error");

    fake.push(Reply::error(401, "invalid x-api-key"));
    let answer = post(&fake, "/v1/messages", &anthropic_request()).await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.json()["error"],
        json!({"type": "authentication_error", "message": "invalid x-api-key"})
    );

    fake.push(Reply::error(529, "Overloaded"));
    let answer = post(&fake, "/v1/messages", &anthropic_request()).await;
    assert_eq!(answer.status, 529);
    assert_eq!(answer.json()["error"]["type"], "overloaded_error");

    fake.push(Reply::error(400, "bad"));
    let answer = post(&fake, GEMINI_PATH, &gemini_request()).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["error"]["status"], "INVALID_ARGUMENT");

    assert_eq!(fake.successes(Dialect::OpenAi), 0);
    assert_eq!(fake.successes(Dialect::Anthropic), 0);
    assert_eq!(fake.successes(Dialect::Gemini), 0);
    assert_eq!(fake.received().len(), 7);
    let answered: Vec<usize> = [429, 500, 401, 529, 400, 200]
        .iter()
        .map(|status| fake.answered(*status))
        .collect();
    assert_eq!(answered, [3, 1, 1, 1, 1, 0], "answers counted by status");
}

#[tokio::test]
async fn malformed_and_wrong_shape_bodies() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::malformed());
    fake.push(Reply::wrong_shape());
    fake.push(Reply::raw(502, "<html>Bad Gateway</html>"));
    let malformed = post(&fake, "/v1/chat/completions", &openai_request()).await;
    assert_eq!(malformed.status, 200);
    assert!(serde_json::from_str::<Value>(&malformed.text).is_err());
    let wrong = post(&fake, "/v1/chat/completions", &openai_request()).await;
    assert_eq!(wrong.status, 200);
    assert!(wrong.json().get("choices").is_none());
    let raw = post(&fake, "/v1/chat/completions", &openai_request()).await;
    assert_eq!(raw.status, 502);
    assert_eq!(raw.text, "<html>Bad Gateway</html>");
    assert_eq!(fake.successes(Dialect::OpenAi), 0);
    assert_eq!(
        fake.answered(200),
        2,
        "a broken 200 is answered, not a success"
    );
    assert_eq!(fake.answered(502), 1);
}

#[tokio::test]
async fn a_request_is_stamped_when_it_arrives_not_when_it_is_answered() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::text("late").after(Duration::from_millis(150)));
    fake.push(Reply::text("prompt"));
    let sent = Instant::now();
    post(&fake, "/v1/chat/completions", &openai_request()).await;
    let answered = Instant::now();
    post(&fake, "/v1/chat/completions", &openai_request()).await;
    let received = fake.received();
    assert!(sent <= received[0].received_at, "{received:?}");
    assert!(
        received[0].received_at + Duration::from_millis(150) <= answered,
        "stamped before the reply's latency: {received:?}"
    );
    assert!(answered <= received[1].received_at, "{received:?}");
    fake.clear();
    assert_eq!(fake.answered(200), 0, "clear forgets the answers");
}

#[tokio::test]
async fn hang_lasts_until_the_client_gives_up() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::hang());
    let started = Instant::now();
    let attempt = tokio::time::timeout(
        Duration::from_millis(300),
        post(&fake, "/v1/chat/completions", &openai_request()),
    )
    .await;
    assert!(attempt.is_err(), "a hanging reply must not answer");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The fake still answers the next request.
    let next = post(&fake, "/v1/chat/completions", &openai_request()).await;
    assert_eq!(next.status, 200);
    assert_eq!(fake.received().len(), 2);
}

#[tokio::test]
async fn latency_global_and_per_reply() {
    let fake = FakeLlm::start().await;
    fake.set_latency(Duration::from_millis(100));
    let started = Instant::now();
    assert_eq!(
        post(&fake, "/v1/messages", &anthropic_request())
            .await
            .status,
        200
    );
    assert!(started.elapsed() >= Duration::from_millis(100));

    fake.set_latency(Duration::ZERO);
    fake.push(Reply::rate_limited(1).after(Duration::from_millis(150)));
    let started = Instant::now();
    assert_eq!(
        post(&fake, "/v1/messages", &anthropic_request())
            .await
            .status,
        429
    );
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn per_dialect_and_per_model_queues() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::text("shared"));
    fake.push_for(Dialect::Gemini, Reply::text("for gemini"));
    fake.push_for_model("claude-sonnet-4-5", Reply::text("for claude"));
    assert_eq!(fake.remaining(), 3);

    let gemini = post(&fake, GEMINI_PATH, &gemini_request()).await.json();
    assert_eq!(
        gemini["candidates"][0]["content"]["parts"][0]["text"],
        "for gemini"
    );
    let claude = post(&fake, "/v1/messages", &anthropic_request())
        .await
        .json();
    assert_eq!(claude["content"][0]["text"], "for claude");
    let openai = post(&fake, "/v1/chat/completions", &openai_request())
        .await
        .json();
    assert_eq!(openai["choices"][0]["message"]["content"], "shared");
    let default = post(&fake, "/v1/chat/completions", &openai_request())
        .await
        .json();
    assert_eq!(default["choices"][0]["message"]["content"], "fake reply #4");
    assert_eq!(fake.remaining(), 0);
}

#[tokio::test]
async fn posts_under_events_are_recorded_webhooks_answered_from_the_queue() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::error(500, "down"));
    fake.push(Reply::raw(202, "{\"ok\":true}"));
    let signed = [("webhook-id", "msg_1")];
    let first = send(&fake, "POST", "/events/a", &signed, "{\"type\":\"x\"}").await;
    assert_eq!(first.status, 500);
    assert_eq!(first.json()["error"], "down");
    let second = send(&fake, "POST", "/events/a", &[], "not json").await;
    assert_eq!(second.status, 202);
    assert_eq!(second.json(), json!({"ok": true}));
    let third = send(&fake, "POST", "/events/b/c", &[], "{}").await;
    assert_eq!(third.status, 200);
    assert_eq!(third.json(), json!({}));
    // Only POSTs under /events/ are deliveries.
    assert_eq!(send(&fake, "GET", "/events/a", &[], "").await.status, 404);
    assert_eq!(post(&fake, "/events", &json!({})).await.status, 404);

    let received = fake.received();
    assert_eq!(received.len(), 5);
    assert_eq!(received[0].path, "/events/a");
    assert_eq!(received[0].header("webhook-id"), Some("msg_1"));
    assert_eq!(received[0].body, json!({"type": "x"}));
    assert_eq!(received[1].raw_body, "not json");
    assert_eq!(received[0].dialect, None);
    assert_eq!(fake.remaining(), 0);
}

#[tokio::test]
async fn unknown_paths_and_bad_bodies_do_not_consume_the_script() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::text("kept"));

    let missing = post(&fake, "/v1/embeddings", &json!({"input": "x"})).await;
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"]["message"].is_string());
    let get = send(&fake, "GET", "/v1/chat/completions", &[], "").await;
    assert_eq!(get.status, 404);
    let bad = send(&fake, "POST", "/v1/messages", &[], "{not json").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["type"], "invalid_request_error");
    assert_eq!(fake.remaining(), 1);

    let received = fake.received();
    assert_eq!(received.len(), 3);
    assert_eq!(received[0].dialect, None);
    assert_eq!(received[2].body, Value::Null);
    assert_eq!(received[2].raw_body, "{not json");

    let kept = post(&fake, "/v1/chat/completions", &openai_request())
        .await
        .json();
    assert_eq!(kept["choices"][0]["message"]["content"], "kept");

    fake.push(Reply::text("dropped"));
    fake.clear();
    assert!(fake.received().is_empty());
    assert_eq!(fake.remaining(), 0);
    assert_eq!(fake.successes(Dialect::OpenAi), 0);
    let fresh = post(&fake, "/v1/chat/completions", &openai_request())
        .await
        .json();
    assert_eq!(fresh["choices"][0]["message"]["content"], "fake reply #1");
}

#[tokio::test]
async fn a_held_answer_is_sent_on_release_and_the_request_seen_before() {
    let fake = FakeLlm::start().await;
    fake.hold();
    fake.push(Reply::text("held"));
    let call = {
        let fake = fake.clone();
        tokio::spawn(async move { post(&fake, "/v1/chat/completions", &openai_request()).await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.received().is_empty() {
        assert!(Instant::now() < deadline, "the request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!call.is_finished(), "answered while held");
    assert_eq!(fake.answered(200), 0);
    fake.release();
    let answer = call.await.unwrap();
    assert_eq!(answer.json()["choices"][0]["message"]["content"], "held");
    // Cleared, the fake holds nothing.
    fake.hold();
    fake.clear();
    assert_eq!(
        post(&fake, "/v1/chat/completions", &openai_request())
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn concurrent_requests_are_all_answered() {
    let fake = FakeLlm::start().await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let fake = fake.clone();
        tasks.push(tokio::spawn(async move {
            post(&fake, "/v1/chat/completions", &openai_request())
                .await
                .status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert_eq!(fake.successes(Dialect::OpenAi), 20);
}

#[test]
fn works_without_an_async_runtime() {
    let fake = FakeLlm::start_blocking("127.0.0.1:0".parse().unwrap()).unwrap();
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(fake.addr()).unwrap();
    let body = openai_request().to_string();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("fake reply #1"));
}
