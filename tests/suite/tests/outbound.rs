//! How Spindle's outbound requests are framed on the wire: every request
//! with a known body (a provider call, an http node, an event delivery)
//! carries `Content-Length` and is not chunked, so servers that refuse
//! chunked requests (`411`) or read only `Content-Length` get the body.

use fake_llm::{ReceivedRequest, Reply};
use serde_json::json;
use spindle_suite::{fake_llm, fake_turn, shared};
use std::time::{Duration, Instant};

/// Asserts `request` came with a `Content-Length` equal to its body's
/// length and without `Transfer-Encoding`.
fn assert_framed_by_length(what: &str, request: &ReceivedRequest) {
    assert!(!request.raw_body.is_empty(), "{what} has a body");
    assert_eq!(
        request.header("transfer-encoding"),
        None,
        "{what} went out chunked: {:?}",
        request.headers
    );
    assert_eq!(
        request.header("content-length"),
        Some(request.raw_body.len().to_string().as_str()),
        "{what}: {:?}",
        request.headers
    );
}

#[test]
fn provider_calls_http_nodes_and_event_deliveries_carry_content_length() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("outbound-framing");
    let events = format!("/events/{}", org.id);
    target.create(
        &org,
        "/api/v1/event-subscriptions",
        &json!({"url": format!("{}{events}", fake_llm().url()), "event_types": ["workflow.completed"]}),
    );
    let agent = target.create_agent(&org);
    // The fake provider stands in for the service the http node posts to.
    let service = format!("{}/v1/chat/completions", fake_llm().url());
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "Framing",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {}},
                {"id": "ask", "type": "agent", "config": {"agent_id": agent, "prompt": "Name a tide"}},
                {"id": "call", "type": "http", "config": {"method": "POST", "url": service,
                    "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "{{ steps.ask.output }}"}]}}},
                {"id": "done", "type": "output", "config": {"value": "{{ steps.call.output.status }}"}}
            ],
            "edges": [
                {"source": "start", "target": "ask"},
                {"source": "ask", "target": "call"},
                {"source": "call", "target": "done"}
            ]
        }),
    );
    fake_llm().push(Reply::text("Spring tide"));
    fake_llm().push(Reply::text("noted"));
    let run = target.finished(&org, &target.start_run(&org, &workflow, json!({})));
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], 200, "{run}");

    let deadline = Instant::now() + Duration::from_secs(20);
    let delivery = loop {
        let tick = target.tick();
        assert_eq!(tick.status, 200, "{}", String::from_utf8_lossy(&tick.body));
        let delivered = fake_llm().received().into_iter().find(|r| r.path == events);
        if let Some(delivery) = delivered {
            break delivery;
        }
        assert!(Instant::now() < deadline, "no event delivery");
        std::thread::sleep(Duration::from_millis(50));
    };
    let chats: Vec<ReceivedRequest> = fake_llm()
        .received()
        .into_iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .collect();
    assert_eq!(chats.len(), 2, "the agent's call and the http node's");
    assert_framed_by_length("the provider call", &chats[0]);
    assert_eq!(chats[1].body["messages"][0]["content"], "Spring tide");
    assert_framed_by_length("the http node's request", &chats[1]);
    assert_framed_by_length("the event delivery", &delivery);
}
