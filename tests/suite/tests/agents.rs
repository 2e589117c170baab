//! Agents over HTTP, against the fake LLM provider speaking each provider's
//! wire format. The fake's script is shared, so these tests take turns.

use fake_llm::{ReceivedRequest, Reply};
use serde_json::{Value, json};
use spindle_suite::{
    Org, Target, configured, fake_llm, fake_turn, find_step, now_ms, provider_key, shared, step,
    suite_variables, timestamp_ms,
};
use std::time::{Duration, Instant};

fn execute(target: &Target, org: &Org, agent: &str, body: Value) -> Value {
    let reply = target.call(
        "POST",
        &format!("/api/v1/agents/{agent}/execute"),
        Some(&org.owner_key),
        Some(&body),
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()
}

fn requests() -> Vec<ReceivedRequest> {
    fake_llm().received()
}

fn scout(provider: &str, model: &str) -> Value {
    json!({
        "name": "Scout",
        "description": "qualifies leads",
        "model_config": {"provider": provider, "model": model, "temperature": 0.2, "max_tokens": 300, "top_p": 0.9},
        "personality": {"traits": ["curious"], "tone": "friendly"},
        "instructions": "Answer briefly."
    })
}

const SYSTEM: &str = "You are Scout: qualifies leads\n\nAnswer briefly.\n\nPersonality:\n- Traits: curious\n- Tone: friendly";

#[test]
fn openai_run_sends_the_exact_request_and_bills_the_usage() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("openai");
    let agent = target.create(&org, "/api/v1/agents", &scout("openai", "gpt-4o-mini"));
    fake_llm().push(Reply::text("Hello there").tokens(1200, 400));
    let execution = execute(
        target,
        &org,
        &agent,
        json!({"task": "Say hi", "context": {"lead": "Ada"}}),
    );
    assert_eq!(execution["status"], "completed");
    assert_eq!(execution["output"], "Hello there");
    assert_eq!(execution["usage"]["input_tokens"], 1200);
    assert_eq!(execution["usage"]["output_tokens"], 400);
    // gpt-4o-mini at $0.15/M input and $0.60/M output, the default 20% markup:
    // 1200 × 0.15 + 400 × 0.60 = 180 + 240 = 420 µ$; × 1.2 → 504.
    assert_eq!(execution["cost"]["base_micros"], 420);
    assert_eq!(execution["cost"]["billed_micros"], 504);
    assert_eq!(execution["cost"]["billed"], "0.000504");
    assert_eq!(execution["cost"]["pricing_missing"], false);
    let sent = requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].path, "/v1/chat/completions");
    assert_eq!(
        sent[0].header("authorization"),
        Some(format!("Bearer {}", provider_key("openai")).as_str())
    );
    assert_eq!(
        sent[0].body,
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": "Say hi\n\nContext:\n{\"lead\":\"Ada\"}"}
            ],
            "temperature": 0.2,
            "max_tokens": 300,
            "top_p": 0.9
        })
    );
}

#[test]
fn anthropic_run_uses_the_messages_api() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("anthropic");
    let agent = target.create(
        &org,
        "/api/v1/agents",
        &scout("anthropic", "claude-sonnet-4"),
    );
    fake_llm().push(Reply::text("Hi from Claude").tokens(50, 7));
    let execution = execute(
        target,
        &org,
        &agent,
        json!({"task": "Say hi", "max_tokens": 100}),
    );
    assert_eq!(execution["output"], "Hi from Claude");
    assert_eq!(execution["usage"]["total_tokens"], 57);
    let sent = &requests()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(
        sent.header("x-api-key"),
        Some(provider_key("anthropic").as_str())
    );
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        sent.body,
        json!({
            "model": "claude-sonnet-4",
            "max_tokens": 100,
            "system": SYSTEM,
            "messages": [{"role": "user", "content": "Say hi"}],
            "temperature": 0.2,
            "top_p": 0.9
        })
    );
}

#[test]
fn gemini_run_uses_generate_content() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("gemini");
    let agent = target.create(&org, "/api/v1/agents", &scout("gemini", "gemini-2.0-flash"));
    fake_llm().push(Reply::text("Hi from Gemini").tokens(40, 4));
    let execution = execute(target, &org, &agent, json!({"task": "Say hi"}));
    assert_eq!(execution["output"], "Hi from Gemini");
    assert_eq!(execution["usage"]["input_tokens"], 40);
    let sent = &requests()[0];
    assert_eq!(sent.path, "/v1beta/models/gemini-2.0-flash:generateContent");
    assert_eq!(
        sent.header("x-goog-api-key"),
        Some(provider_key("gemini").as_str())
    );
    assert_eq!(
        sent.body,
        json!({
            "systemInstruction": {"parts": [{"text": SYSTEM}]},
            "contents": [{"role": "user", "parts": [{"text": "Say hi"}]}],
            "generationConfig": {"temperature": 0.2, "maxOutputTokens": 300, "topP": 0.9}
        })
    );
}

#[test]
fn groq_and_self_hosted_models_speak_the_openai_format() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("compatible");
    let groq = target.create(
        &org,
        "/api/v1/agents",
        &scout("groq", "llama-3.3-70b-versatile"),
    );
    let local = target.create(
        &org,
        "/api/v1/agents",
        &scout("openai_compatible", "llama3.2"),
    );
    execute(target, &org, &groq, json!({"task": "a"}));
    let execution = execute(target, &org, &local, json!({"task": "b"}));
    assert_eq!(execution["status"], "completed");
    assert_eq!(
        execution["cost"]["pricing_missing"], true,
        "a self-hosted model has no price"
    );
    assert_eq!(execution["cost"]["billed_micros"], 0);
    let sent = requests();
    assert_eq!(sent[0].path, "/openai/v1/chat/completions");
    assert_eq!(
        sent[0].header("authorization"),
        Some(format!("Bearer {}", provider_key("groq")).as_str())
    );
    assert_eq!(sent[1].path, "/compat/v1/chat/completions");
    assert_eq!(
        sent[1].header("authorization"),
        None,
        "no key is configured for it"
    );
    assert_eq!(sent[1].body["model"], "llama3.2");
}

#[test]
fn tool_calls_round_trip_and_every_round_counts() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("tools");
    let mut definition = scout("openai", "gpt-4o-mini");
    definition["tools"] = json!(["calculator"]);
    let agent = target.create(&org, "/api/v1/agents", &definition);
    fake_llm().push(Reply::tool_call("calculator", json!({"expression": "6 * 7"})).tokens(100, 20));
    fake_llm().push(Reply::text("The answer is 42").tokens(150, 10));
    let execution = execute(target, &org, &agent, json!({"task": "What is 6 times 7?"}));
    assert_eq!(execution["status"], "completed");
    assert_eq!(execution["output"], "The answer is 42");
    assert_eq!(execution["tool_calls"][0]["name"], "calculator");
    assert_eq!(execution["tool_calls"][0]["result"], "42");
    assert_eq!(execution["usage"]["input_tokens"], 250);
    assert_eq!(execution["usage"]["output_tokens"], 30);
    assert_eq!(execution["usage"]["provider_calls"], 2);
    // Each round is a call priced on its own (gpt-4o-mini, $0.15/M in, $0.60/M
    // out, 20% markup, each amount rounded half up):
    // 100 × 0.15 + 20 × 0.60 = 15 + 12 = 27 µ$, × 1.2 = 32.4 → 32;
    // 150 × 0.15 + 10 × 0.60 = 22.5 + 6 = 28.5 → 29 µ$, × 1.2 = 34.8 → 35.
    assert_eq!(execution["cost"]["base_micros"], 27 + 29);
    assert_eq!(execution["cost"]["billed_micros"], 32 + 35);
    let sent = requests();
    assert_eq!(sent[0].body["tools"][0]["function"]["name"], "calculator");
    let followup = sent[1].body["messages"].as_array().unwrap();
    let call_id = followup[2]["tool_calls"][0]["id"].as_str().unwrap();
    assert_eq!(followup[2]["role"], "assistant");
    assert_eq!(
        followup[3],
        json!({"role": "tool", "tool_call_id": call_id, "content": "42"})
    );
}

#[test]
fn a_tool_the_agent_lacks_is_answered_with_an_error_not_run() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("no-tools");
    let agent = target.create(&org, "/api/v1/agents", &scout("openai", "gpt-4o-mini"));
    fake_llm().push(Reply::tool_call(
        "http_get",
        json!({"url": "http://127.0.0.1:1/secret"}),
    ));
    fake_llm().push(Reply::text("ok"));
    let execution = execute(target, &org, &agent, json!({"task": "fetch"}));
    assert_eq!(execution["status"], "completed");
    let result = execution["tool_calls"][0]["result"].as_str().unwrap();
    assert!(
        result.starts_with("error: tool \"http_get\" is not available"),
        "{result}"
    );
}

#[test]
fn http_get_reaches_allowed_hosts_only() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("http-get");
    let mut definition = scout("openai", "gpt-4o-mini");
    definition["tools"] = json!(["http_get"]);
    let agent = target.create(&org, "/api/v1/agents", &definition);
    // The fake itself is on an allowed host (loopback); example.com is not.
    let allowed = format!("{}/not-a-provider-path", fake_llm().url());
    fake_llm().push(
        Reply::tool_call("http_get", json!({"url": allowed}))
            .and_tool_call("http_get", json!({"url": "http://example.com/"})),
    );
    fake_llm().push(Reply::text("done"));
    let execution = execute(target, &org, &agent, json!({"task": "fetch both"}));
    assert_eq!(execution["status"], "completed", "{execution}");
    let results: Vec<&str> = execution["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["result"].as_str().unwrap())
        .collect();
    assert!(results[0].starts_with("HTTP 404"), "{results:?}");
    assert_eq!(
        results[1],
        "error: http://example.com/ is not an allowed host"
    );
}

#[test]
fn memory_carries_turns_across_calls_and_is_trimmed() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("memory");
    let mut definition = scout("openai", "gpt-4o-mini");
    definition["memory"] =
        json!({"enabled": true, "max_history": 2, "context_window_tokens": 8000});
    let agent = target.create(&org, "/api/v1/agents", &definition);
    for (task, answer) in [
        ("my name is Ada", "Hello Ada"),
        ("I like tea", "Noted"),
        ("who am I?", "Ada"),
    ] {
        fake_llm().push(Reply::text(answer));
        execute(
            target,
            &org,
            &agent,
            json!({"task": task, "conversation_id": "c-1"}),
        );
    }
    let sent = requests();
    let turns = |i: usize| -> Vec<(String, String)> {
        sent[i].body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .skip(1)
            .map(|m| {
                (
                    m["role"].as_str().unwrap().into(),
                    m["content"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let pair = |r: &str, c: &str| (r.to_string(), c.to_string());
    assert_eq!(turns(0), [pair("user", "my name is Ada")]);
    assert_eq!(
        turns(1),
        [
            pair("user", "my name is Ada"),
            pair("assistant", "Hello Ada"),
            pair("user", "I like tea")
        ]
    );
    // max_history 2: only the last exchange is sent.
    assert_eq!(
        turns(2),
        [
            pair("user", "I like tea"),
            pair("assistant", "Noted"),
            pair("user", "who am I?")
        ]
    );
    // Another conversation starts empty.
    fake_llm().push(Reply::text("?"));
    execute(
        target,
        &org,
        &agent,
        json!({"task": "hi", "conversation_id": "c-2"}),
    );
    assert_eq!(requests()[3].body["messages"].as_array().unwrap().len(), 2);
}

#[test]
fn memory_is_trimmed_to_the_context_window() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("window");
    let mut definition = scout("openai", "gpt-4o-mini");
    definition["model_config"]["max_tokens"] = json!(100);
    definition["memory"] =
        json!({"enabled": true, "max_history": 50, "context_window_tokens": 400});
    let agent = target.create(&org, "/api/v1/agents", &definition);
    // About 375 tokens: with the system prompt, the new task and room for a
    // 100-token answer, it no longer fits a 400-token window.
    let long = "word ".repeat(300);
    fake_llm().push(Reply::text("first"));
    execute(
        target,
        &org,
        &agent,
        json!({"task": long, "conversation_id": "w"}),
    );
    fake_llm().push(Reply::text("second"));
    execute(
        target,
        &org,
        &agent,
        json!({"task": "short", "conversation_id": "w"}),
    );
    let messages = requests()[1].body["messages"].as_array().unwrap().clone();
    assert!(
        messages.iter().all(|m| m["content"] != long.as_str()),
        "the long turn no longer fits and is dropped: {messages:?}"
    );
    assert_eq!(messages.last().unwrap()["content"], "short");
}

#[test]
fn rate_limited_then_successful_call_is_billed_once() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("retry");
    let agent = target.create(&org, "/api/v1/agents", &scout("openai", "gpt-4o-mini"));
    fake_llm().push(Reply::rate_limited(1));
    fake_llm().push(Reply::text("made it").tokens(100, 50));
    let execution = execute(target, &org, &agent, json!({"task": "go"}));
    let sent = requests();
    assert!(
        sent[1].received_at >= sent[0].received_at + std::time::Duration::from_secs(1),
        "the retry came no sooner than the 429's Retry-After: 1"
    );
    assert_eq!(execution["status"], "completed");
    assert_eq!(execution["usage"]["provider_calls"], 2);
    assert_eq!(execution["usage"]["input_tokens"], 100);
    // 100 × $0.15/M + 50 × $0.60/M = 15 + 30 = 45 µ$; +20% markup → 54.
    assert_eq!(execution["cost"]["billed_micros"], 54);
    assert_eq!(requests().len(), 2);
    // Billed once: the refused call's record is failed and costs nothing.
    let records = target.usage_records(
        &org,
        &format!("agent_execution_id={}", execution["id"].as_str().unwrap()),
    );
    let billed: Vec<(&Value, &Value)> = records
        .iter()
        .map(|r| (&r["status"], &r["billed_cost_micros"]))
        .collect();
    assert_eq!(
        billed,
        [
            (&json!("failed"), &json!(0)),
            (&json!("succeeded"), &json!(54))
        ],
        "{records:?}"
    );
}

#[test]
fn server_errors_exhaust_the_retries_and_fail_the_execution() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("outage");
    let agent = target.create(
        &org,
        "/api/v1/agents",
        &scout("anthropic", "claude-sonnet-4"),
    );
    for _ in 0..4 {
        fake_llm().push(Reply::server_error());
    }
    let execution = execute(target, &org, &agent, json!({"task": "go"}));
    assert_eq!(execution["status"], "failed");
    assert_eq!(execution["error"]["code"], "provider_unavailable");
    assert_eq!(
        execution["usage"]["provider_calls"], 4,
        "one call and three retries"
    );
    assert_eq!(execution["cost"]["billed_micros"], 0);
    assert!(execution["output"].is_null());
}

#[test]
fn client_errors_fail_at_once_with_the_providers_message() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("rejected");
    let agent = target.create(&org, "/api/v1/agents", &scout("openai", "gpt-4o-mini"));
    fake_llm().push(Reply::error(400, "maximum context length exceeded"));
    let execution = execute(target, &org, &agent, json!({"task": "go"}));
    assert_eq!(execution["status"], "failed");
    assert_eq!(execution["error"]["code"], "provider_rejected");
    assert!(
        execution["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length exceeded"),
        "{execution}"
    );
    assert_eq!(execution["usage"]["provider_calls"], 1, "no retry");
}

#[test]
fn malformed_provider_body_fails_with_a_clear_message() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("malformed");
    let agent = target.create(&org, "/api/v1/agents", &scout("gemini", "gemini-2.0-flash"));
    fake_llm().push(Reply::malformed());
    let execution = execute(target, &org, &agent, json!({"task": "go"}));
    assert_eq!(execution["status"], "failed");
    assert_eq!(execution["error"]["code"], "provider_malformed_response");
    assert!(
        execution["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Gemini returned a body that is not JSON"),
        "{execution}"
    );
}

#[test]
fn missing_api_key_fails_clearly() {
    let _turn = fake_turn();
    let mut variables = suite_variables();
    variables.remove("openai_api_key");
    let target = configured(variables);
    let org = target.create_org("no-key");
    let agent = target.create(&org, "/api/v1/agents", &scout("openai", "gpt-4o-mini"));
    let execution = execute(&target, &org, &agent, json!({"task": "go"}));
    assert_eq!(execution["status"], "failed");
    assert_eq!(execution["error"]["code"], "provider_not_configured");
    assert!(
        execution["error"]["message"]
            .as_str()
            .unwrap()
            .contains("openai_api_key")
    );
    assert!(requests().is_empty(), "nothing was sent");
}

#[test]
fn metrics_follow_successes_and_failures() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("metrics");
    let agent = target.create(&org, "/api/v1/agents", &scout("openai", "gpt-4o-mini"));
    fake_llm().push(Reply::text("a").tokens(10, 10));
    fake_llm().push(Reply::error(400, "no"));
    fake_llm().push(Reply::text("b").tokens(30, 10));
    for _ in 0..3 {
        execute(target, &org, &agent, json!({"task": "go"}));
    }
    let detail = target
        .call(
            "GET",
            &format!("/api/v1/agents/{agent}"),
            Some(&org.owner_key),
            None,
        )
        .json();
    let metrics = &detail["metrics"];
    assert_eq!(metrics["execution_count"], 3);
    assert!((metrics["success_rate"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(metrics["avg_tokens"], 20);
    assert!(metrics["last_executed_at"].is_string());
    assert_eq!(detail["recent_executions"].as_array().unwrap().len(), 3);
    let failed = target
        .call(
            "GET",
            &format!("/api/v1/agents/{agent}/executions?status=failed"),
            Some(&org.owner_key),
            None,
        )
        .json();
    assert_eq!(failed["total"], 1);
    assert_eq!(failed["data"][0]["error"]["code"], "provider_rejected");
}

// --- the definition API ----------------------------------------------------------

fn count_agents(target: &Target, org: &Org) -> u64 {
    target
        .call("GET", "/api/v1/agents", Some(&org.owner_key), None)
        .json()["total"]
        .as_u64()
        .unwrap()
}

#[test]
fn invalid_definitions_name_every_problem_and_store_nothing() {
    let target = shared();
    let org = target.create_org("invalid-agents");
    let reply = target.call(
        "POST",
        "/api/v1/agents",
        Some(&org.owner_key),
        Some(&json!({
            "name": "x",
            "model_config": {"provider": "skynet", "model": "m", "temperature": 9},
            "tools": ["teleport"]
        })),
    );
    reply.assert_error(422, "validation_failed");
    let paths: Vec<String> = reply.json()["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "model_config.provider",
            "model_config.temperature",
            "tools[0]"
        ]
    );
    for body in [
        &b"{\"name\":"[..],
        b"[]",
        b"{\"name\": 5}",
        b"{\"name\": \"x\"}",
    ] {
        let reply = target.request(
            "POST",
            "/api/v1/agents",
            &[("authorization", &format!("Bearer {}", org.owner_key))],
            Some(body),
        );
        reply.assert_error(400, "bad_request");
    }
    assert_eq!(count_agents(target, &org), 0);
}

#[test]
fn a_body_of_the_wrong_shape_is_400_at_the_path_of_the_offending_field() {
    let target = shared();
    let org = target.create_org("agents-wrong-shape");
    let model = json!({"provider": "openai", "model": "gpt-4o-mini"});
    let with = |field: &str, value: Value| {
        let mut body = json!({"name": "Scout", "model_config": model});
        body[field] = value;
        body
    };
    let with_model = |field: &str, value: Value| {
        let mut config = model.clone();
        config[field] = value;
        json!({"name": "Scout", "model_config": config})
    };
    for (body, path) in [
        (json!({"model_config": model}), "name"),
        (json!({"name": "Scout"}), "model_config"),
        (
            json!({"name": "Scout", "model_config": {"provider": "openai"}}),
            "model_config.model",
        ),
        (with("name", json!(5)), "name"),
        (with("model_config", json!("gpt-4o")), "model_config"),
        (
            with_model("temperature", json!("hot")),
            "model_config.temperature",
        ),
        (
            with_model("max_tokens", json!(-1)),
            "model_config.max_tokens",
        ),
        (with("tools", json!("calculator")), "tools"),
        (with("tools", json!(["calculator", 7])), "tools[1]"),
        (
            with("memory", json!({"max_history": "all"})),
            "memory.max_history",
        ),
        (with("colour", json!("red")), "colour"),
    ] {
        let reply = target.call("POST", "/api/v1/agents", Some(&org.owner_key), Some(&body));
        reply.assert_error(400, "bad_request");
        let details = &reply.json()["error"]["details"];
        assert_eq!(details[0]["path"], path, "{body}: {details}");
        assert!(
            details[0]["problem"]
                .as_str()
                .is_some_and(|p| !p.is_empty()),
            "{details}"
        );
    }
    // A patch is read the same way.
    let agent = target.create_agent(&org);
    let reply = target.call(
        "PATCH",
        &format!("/api/v1/agents/{agent}"),
        Some(&org.owner_key),
        Some(&json!({"model_config": {"temperature": "hot"}})),
    );
    reply.assert_error(400, "bad_request");
    assert_eq!(
        reply.json()["error"]["details"][0]["path"],
        "model_config.temperature"
    );
    // So is every other body: a run of the agent, a new API key.
    for (path, body, field) in [
        (format!("/api/v1/agents/{agent}/execute"), json!({}), "task"),
        (
            format!("/api/v1/agents/{agent}/execute"),
            json!({"task": "hi", "max_tokens": "many"}),
            "max_tokens",
        ),
        (
            "/api/v1/api-keys".to_string(),
            json!({"name": "ci", "rate_limit_per_minute": "fast"}),
            "rate_limit_per_minute",
        ),
    ] {
        let reply = target.call("POST", &path, Some(&org.owner_key), Some(&body));
        reply.assert_error(400, "bad_request");
        assert_eq!(
            reply.json()["error"]["details"][0]["path"],
            field,
            "{path} {body}"
        );
    }
    // Malformed JSON still says where the parser stopped.
    let reply = target.request(
        "POST",
        "/api/v1/agents",
        &[("authorization", &format!("Bearer {}", org.owner_key))],
        Some(b"{\"name\": "),
    );
    reply.assert_error(400, "bad_request");
    let error = &reply.json()["error"];
    assert_eq!(error["message"], "request body is malformed JSON");
    assert!(
        error["details"][0]["path"]
            .as_str()
            .unwrap()
            .starts_with("body:1:"),
        "{error}"
    );
    assert_eq!(count_agents(target, &org), 1);
}

#[test]
fn agents_are_listed_filtered_sorted_and_paged() {
    let target = shared();
    let org = target.create_org("listing");
    for (name, provider) in [
        ("Alpha", "openai"),
        ("Beta", "anthropic"),
        ("Gamma", "openai"),
    ] {
        let mut definition = scout(provider, "m");
        definition["name"] = json!(name);
        definition["description"] = json!(format!("{name} does things"));
        target.create(&org, "/api/v1/agents", &definition);
    }
    let list = |query: &str| {
        let reply = target.call(
            "GET",
            &format!("/api/v1/agents{query}"),
            Some(&org.owner_key),
            None,
        );
        assert_eq!(
            reply.status,
            200,
            "{query}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let body = reply.json();
        let names: Vec<String> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_string())
            .collect();
        (body["total"].as_u64().unwrap(), names)
    };
    assert_eq!(
        list("?sort_by=name&sort_order=asc"),
        (3, vec!["Alpha".into(), "Beta".into(), "Gamma".into()])
    );
    assert_eq!(
        list("?provider=openai&sort_by=name&sort_order=desc"),
        (2, vec!["Gamma".into(), "Alpha".into()])
    );
    assert_eq!(list("?search=bet"), (1, vec!["Beta".into()]));
    // Pages of one, page after page: each agent once, then an empty page.
    let page = |offset: u32| {
        list(&format!(
            "?search=does%20things&limit=1&offset={offset}&sort_by=name&sort_order=asc"
        ))
    };
    assert_eq!(page(0), (3, vec!["Alpha".into()]));
    assert_eq!(page(1), (3, vec!["Beta".into()]));
    assert_eq!(page(2), (3, vec!["Gamma".into()]));
    assert_eq!(page(3), (3, vec![]));
    assert_eq!(
        list("?search=100%25").0,
        0,
        "a literal % matches nothing here"
    );
    for bad in [
        "?limit=0",
        "?limit=abc",
        "?sort_by=secret",
        "?sort_order=up",
        "?offset=-1",
    ] {
        target
            .call(
                "GET",
                &format!("/api/v1/agents{bad}"),
                Some(&org.owner_key),
                None,
            )
            .assert_error(400, "bad_request");
    }
}

#[test]
fn patch_changes_only_what_it_names_and_is_validated() {
    let target = shared();
    let org = target.create_org("patching");
    let agent = target.create(&org, "/api/v1/agents", &scout("openai", "gpt-4o-mini"));
    let path = format!("/api/v1/agents/{agent}");
    let patch = |body: Value| target.call("PATCH", &path, Some(&org.owner_key), Some(&body));
    let reply = patch(
        json!({"model_config": {"temperature": 1.5}, "tools": ["calculator"], "status": "OFFLINE"}),
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let updated = reply.json();
    assert_eq!(updated["model_config"]["temperature"], 1.5);
    assert_eq!(
        updated["model_config"]["model"], "gpt-4o-mini",
        "untouched fields stay"
    );
    assert_eq!(updated["tools"], json!(["calculator"]));
    assert_eq!(updated["status"], "OFFLINE");
    let before = target.call("GET", &path, Some(&org.owner_key), None).json();
    patch(json!({"model_config": {"provider": "nope"}})).assert_error(422, "validation_failed");
    patch(json!({"surprise": true})).assert_error(400, "bad_request");
    patch(json!([1, 2])).assert_error(400, "bad_request");
    let after = target.call("GET", &path, Some(&org.owner_key), None).json();
    assert_eq!(before, after, "rejected patches change nothing");
}

#[test]
fn deleted_agents_are_gone_from_the_api() {
    let target = shared();
    let org = target.create_org("deleting");
    let agent = target.create(&org, "/api/v1/agents", &scout("openai", "gpt-4o-mini"));
    let path = format!("/api/v1/agents/{agent}");
    assert_eq!(
        target
            .call("DELETE", &path, Some(&org.owner_key), None)
            .status,
        204
    );
    target
        .call("GET", &path, Some(&org.owner_key), None)
        .assert_error(404, "not_found");
    target
        .call("DELETE", &path, Some(&org.owner_key), None)
        .assert_error(404, "not_found");
    assert_eq!(count_agents(target, &org), 0);
}

#[test]
fn another_organisations_agent_answers_404_everywhere() {
    let target = shared();
    let ours = target.create_org("ours-agents");
    let theirs = target.create_org("theirs-agents");
    let agent = target.create(&theirs, "/api/v1/agents", &scout("openai", "gpt-4o-mini"));
    let cases = [
        ("GET", format!("/api/v1/agents/{agent}"), None),
        (
            "PATCH",
            format!("/api/v1/agents/{agent}"),
            Some(json!({"name": "mine"})),
        ),
        ("DELETE", format!("/api/v1/agents/{agent}"), None),
        (
            "POST",
            format!("/api/v1/agents/{agent}/execute"),
            Some(json!({"task": "x"})),
        ),
        ("GET", format!("/api/v1/agents/{agent}/executions"), None),
    ];
    for (method, path, body) in cases {
        let reply = target.call(method, &path, Some(&ours.owner_key), body.as_ref());
        reply.assert_error(404, "not_found");
    }
    assert_eq!(count_agents(target, &ours), 0);
    let theirs_view = target.call(
        "GET",
        &format!("/api/v1/agents/{agent}"),
        Some(&theirs.owner_key),
        None,
    );
    assert_eq!(theirs_view.json()["name"], "Scout", "untouched");
}

#[test]
fn viewers_read_but_cannot_define_or_run_agents() {
    let target = shared();
    let org = target.create_org("viewer-agents");
    let agent = target.create(&org, "/api/v1/agents", &scout("openai", "gpt-4o-mini"));
    let (_, viewer) = target.create_key(&org.owner_key, "viewer");
    assert_eq!(
        target
            .call("GET", "/api/v1/agents", Some(&viewer), None)
            .status,
        200
    );
    let create = target.call(
        "POST",
        "/api/v1/agents",
        Some(&viewer),
        Some(&scout("openai", "m")),
    );
    create.assert_error(403, "forbidden");
    let run = target.call(
        "POST",
        &format!("/api/v1/agents/{agent}/execute"),
        Some(&viewer),
        Some(&json!({"task": "x"})),
    );
    run.assert_error(403, "forbidden");
    target
        .call("GET", "/api/v1/agents", None, None)
        .assert_error(401, "unauthenticated");
}

#[test]
fn invalid_execution_requests_are_refused_before_any_call() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("bad-runs");
    let agent = target.create(&org, "/api/v1/agents", &scout("openai", "gpt-4o-mini"));
    let path = format!("/api/v1/agents/{agent}/execute");
    let run = |body: Value| target.call("POST", &path, Some(&org.owner_key), Some(&body));
    run(json!({"task": ""})).assert_error(422, "validation_failed");
    run(json!({"task": "x", "max_tokens": 0})).assert_error(422, "validation_failed");
    run(json!({"task": "x", "context": "not an object"})).assert_error(400, "bad_request");
    run(json!({"prompt": "x"})).assert_error(400, "bad_request");
    assert!(requests().is_empty());
    let runs = target.call(
        "GET",
        &format!("/api/v1/agents/{agent}/executions"),
        Some(&org.owner_key),
        None,
    );
    assert_eq!(runs.json()["total"], 0);
}

// --- listings, recent executions, deletion -------------------------------------

/// Waits until this machine's clock has passed `created_at` (an API
/// timestamp), so that what is made next is newer by the clock and not only
/// by its id.
fn after(created_at: &Value) {
    let at = timestamp_ms(created_at);
    let deadline = Instant::now() + Duration::from_secs(5);
    while now_ms() <= at {
        assert!(Instant::now() < deadline, "the clock never passed {at}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `GET path` as the org's owner; panics unless 200.
fn get(target: &Target, org: &Org, path: &str) -> Value {
    let reply = target.call("GET", path, Some(&org.owner_key), None);
    assert_eq!(
        reply.status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()
}

/// The `field` of each element of `body["data"]`.
fn column(body: &Value, field: &str) -> Vec<Value> {
    body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data in {body}"))
        .iter()
        .map(|item| item[field].clone())
        .collect()
}

#[test]
fn agent_lists_default_to_20_newest_first_cap_limit_at_100_and_echo_the_page() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("agents-page-size");
    // 21 agents, each newer than the last; three of them OFFLINE.
    let mut created = Vec::new();
    for i in 0..21 {
        let mut definition = scout("openai", "gpt-4o-mini");
        definition["name"] = json!(format!("Agent {i:02}"));
        if [3, 8, 15].contains(&i) {
            definition["status"] = json!("OFFLINE");
        }
        let reply = target.call(
            "POST",
            "/api/v1/agents",
            Some(&org.owner_key),
            Some(&definition),
        );
        assert_eq!(reply.status, 201);
        let agent = reply.json();
        after(&agent["created_at"]);
        created.push(agent["id"].clone());
    }
    let newest_first: Vec<Value> = created.iter().rev().cloned().collect();

    let default = get(target, &org, "/api/v1/agents");
    let mut fields: Vec<&String> = default.as_object().unwrap().keys().collect();
    fields.sort();
    assert_eq!(fields, ["data", "limit", "offset", "total"], "{default}");
    assert_eq!(default["total"], 21);
    assert_eq!(default["limit"], 20);
    assert_eq!(default["offset"], 0);
    assert_eq!(
        column(&default, "id"),
        newest_first[..20],
        "created_at, newest first: the oldest is on the next page"
    );
    let page = get(target, &org, "/api/v1/agents?limit=5&offset=3");
    assert_eq!((&page["limit"], &page["offset"]), (&json!(5), &json!(3)));
    assert_eq!(page["total"], 21);
    assert_eq!(column(&page, "id"), newest_first[3..8]);
    let oldest_first = get(target, &org, "/api/v1/agents?sort_order=asc&limit=100");
    assert_eq!(oldest_first["limit"], 100);
    assert_eq!(column(&oldest_first, "id"), created);
    for bad in ["?limit=101", "?limit=0"] {
        let reply = target.call(
            "GET",
            &format!("/api/v1/agents{bad}"),
            Some(&org.owner_key),
            None,
        );
        reply.assert_error(400, "bad_request");
        let path = reply.json()["error"]["details"][0]["path"].clone();
        assert!(
            path.as_str().is_some_and(|p| p.ends_with("limit")),
            "{bad}: the problem names limit, at {path}"
        );
    }

    // `status=` keeps only the agents of that status.
    let offline = get(target, &org, "/api/v1/agents?status=OFFLINE&sort_order=asc");
    assert_eq!(offline["total"], 3);
    assert_eq!(
        column(&offline, "id"),
        [&created[3], &created[8], &created[15]].map(Clone::clone)
    );
    assert!(
        column(&offline, "status").iter().all(|s| s == "OFFLINE"),
        "{offline}"
    );
    assert_eq!(get(target, &org, "/api/v1/agents?status=IDLE")["total"], 18);

    // `sort_by=execution_count`: agent 05 ran twice, agent 10 once, the rest never.
    for (index, runs) in [(5, 2), (10, 1)] {
        for _ in 0..runs {
            execute(
                target,
                &org,
                created[index].as_str().unwrap(),
                json!({"task": "go"}),
            );
        }
    }
    let busiest = get(
        target,
        &org,
        "/api/v1/agents?sort_by=execution_count&limit=100",
    );
    let ids = column(&busiest, "id");
    assert_eq!(ids[..2], [created[5].clone(), created[10].clone()]);
    let counts: Vec<u64> = busiest["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["metrics"]["execution_count"].as_u64().unwrap())
        .collect();
    let mut expected = vec![2, 1];
    expected.extend([0; 19]);
    assert_eq!(counts, expected, "{busiest}");
    let idlest = get(
        target,
        &org,
        "/api/v1/agents?sort_by=execution_count&sort_order=asc&limit=100",
    );
    assert_eq!(
        column(&idlest, "id")[19..],
        [created[10].clone(), created[5].clone()]
    );
}

#[test]
fn an_agent_shows_its_10_most_recent_executions_newest_first() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("recent-executions");
    let agent = target.create(&org, "/api/v1/agents", &scout("openai", "gpt-4o-mini"));
    let mut runs = Vec::new();
    for i in 0..11 {
        fake_llm().push(Reply::text(format!("answer {i}")));
        let execution = execute(target, &org, &agent, json!({"task": format!("task {i}")}));
        assert_eq!(execution["status"], "completed", "{execution}");
        after(&execution["created_at"]);
        runs.push(execution["id"].clone());
    }
    let detail = get(target, &org, &format!("/api/v1/agents/{agent}"));
    assert_eq!(detail["metrics"]["execution_count"], 11);
    let recent: Vec<Value> = detail["recent_executions"]
        .as_array()
        .expect("recent_executions")
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    let expected: Vec<Value> = runs[1..].iter().rev().cloned().collect();
    assert_eq!(recent, expected, "the ten newest, newest first");
    let outputs: Vec<&Value> = detail["recent_executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["output"])
        .collect();
    assert_eq!(outputs[0], "answer 10");
    assert_eq!(outputs[9], "answer 1");
}

#[test]
fn agent_executions_are_listed_newest_first_paged_and_filtered_by_status() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("agent-executions");
    let agent = target.create(&org, "/api/v1/agents", &scout("openai", "gpt-4o-mini"));
    fake_llm().push(Reply::text("one"));
    fake_llm().push(Reply::error(400, "refused"));
    fake_llm().push(Reply::text("three"));
    let mut runs = Vec::new();
    for i in 0..3 {
        let execution = execute(target, &org, &agent, json!({"task": format!("task {i}")}));
        after(&execution["created_at"]);
        runs.push(execution);
    }
    let statuses: Vec<&Value> = runs.iter().map(|r| &r["status"]).collect();
    assert_eq!(statuses, ["completed", "failed", "completed"]);
    let id = |i: usize| runs[i]["id"].clone();
    let path = format!("/api/v1/agents/{agent}/executions");
    let all = get(target, &org, &path);
    assert_eq!(all["total"], 3);
    assert_eq!(column(&all, "id"), [id(2), id(1), id(0)], "newest first");
    let skipped = get(target, &org, &format!("{path}?offset=1"));
    assert_eq!(skipped["total"], 3);
    assert_eq!(
        column(&skipped, "id"),
        [id(1), id(0)],
        "offset 1 skips the newest"
    );
    let newest = get(target, &org, &format!("{path}?limit=1"));
    assert_eq!(column(&newest, "id"), [id(2)]);
    let second = get(target, &org, &format!("{path}?limit=1&offset=1"));
    assert_eq!(column(&second, "id"), [id(1)]);
    let failed = get(target, &org, &format!("{path}?status=failed"));
    assert_eq!(failed["total"], 1);
    assert_eq!(column(&failed, "id"), [id(1)]);
    let completed = get(target, &org, &format!("{path}?status=completed"));
    assert_eq!(completed["total"], 2);
    assert_eq!(column(&completed, "id"), [id(2), id(0)]);
    let later = get(target, &org, &format!("{path}?status=completed&offset=1"));
    assert_eq!(column(&later, "id"), [id(0)]);
}

#[test]
fn a_deleted_agents_executions_and_usage_stay() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("deleted-agent-usage");
    let agent = target.create(&org, "/api/v1/agents", &scout("openai", "gpt-4o-mini"));
    let other = target.create(&org, "/api/v1/agents", &scout("openai", "gpt-4o-mini"));
    fake_llm().push(Reply::text("kept").tokens(1200, 400));
    fake_llm().push(Reply::text("also kept").tokens(100, 50));
    fake_llm().push(Reply::text("the other").tokens(10, 10));
    let first = execute(target, &org, &agent, json!({"task": "a"}));
    let second = execute(target, &org, &agent, json!({"task": "b"}));
    execute(target, &org, &other, json!({"task": "c"}));

    let records = target.usage_records(&org, &format!("agent_id={agent}"));
    let executions: Vec<&Value> = records.iter().map(|r| &r["agent_execution_id"]).collect();
    assert_eq!(executions, [&first["id"], &second["id"]], "{records:?}");
    // 1200 × $0.15/M + 400 × $0.60/M = 420 µ$, × 1.2 = 504; 100 × 0.15 + 50 × 0.60
    // = 45 µ$, × 1.2 = 54.
    let billed: Vec<&Value> = records.iter().map(|r| &r["billed_cost_micros"]).collect();
    assert_eq!(billed, [&json!(504), &json!(54)]);
    let summary_path = format!("/api/v1/usage/summary?agent_id={agent}");
    let summary = get(target, &org, &summary_path);
    assert_eq!(summary["totals"]["calls"], 2, "{summary}");
    assert_eq!(
        summary["totals"]["billed_cost_micros"],
        504 + 54,
        "{summary}"
    );
    let by_agent = get(target, &org, "/api/v1/usage/summary?group_by=agent");

    let path = format!("/api/v1/agents/{agent}");
    let deleted = target.call("DELETE", &path, Some(&org.owner_key), None);
    assert_eq!(deleted.status, 204);
    assert!(deleted.body.is_empty());
    target
        .call("GET", &path, Some(&org.owner_key), None)
        .assert_error(404, "not_found");
    let listed = get(target, &org, "/api/v1/agents");
    assert_eq!(column(&listed, "id"), [json!(other)]);

    // Its executions are still the records' executions, billed as before.
    assert_eq!(
        target.usage_records(&org, &format!("agent_id={agent}")),
        records
    );
    for execution in [&first, &second] {
        let id = execution["id"].as_str().unwrap();
        let of_execution = target.usage_records(&org, &format!("agent_execution_id={id}"));
        assert_eq!(of_execution.len(), 1, "{id}: {of_execution:?}");
        assert_eq!(of_execution[0]["agent_id"], json!(agent));
    }
    // The same figures (the default range, ending now, has moved on).
    let counted = |summary: &Value| (summary["totals"].clone(), summary["groups"].clone());
    assert_eq!(
        counted(&get(target, &org, &summary_path)),
        counted(&summary)
    );
    let by_agent_after = get(target, &org, "/api/v1/usage/summary?group_by=agent");
    assert_eq!(
        counted(&by_agent_after),
        counted(&by_agent),
        "the summary by agent still counts the deleted agent's calls"
    );
    let groups = by_agent_after["groups"].as_array().unwrap();
    let of_deleted = groups
        .iter()
        .find(|g| g["key"]["agent"] == json!(agent))
        .unwrap_or_else(|| panic!("a group for the deleted agent: {by_agent_after}"));
    assert_eq!(of_deleted["calls"], 2);
    assert_eq!(of_deleted["billed_cost_micros"], 504 + 54);
}

#[test]
fn a_model_asking_for_tools_turn_after_turn_fails_after_exactly_5_calls() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("tool-rounds");
    let mut definition = scout("openai", "gpt-4o-mini");
    definition["tools"] = json!(["calculator"]);
    let agent = target.create(&org, "/api/v1/agents", &definition);
    // More tool calls than the limit, so a sixth turn would get one too.
    for i in 0..7 {
        fake_llm().push(
            Reply::tool_call("calculator", json!({"expression": format!("{i} + 1")})).tokens(10, 5),
        );
    }
    let execution = execute(target, &org, &agent, json!({"task": "loop forever"}));
    assert_eq!(execution["status"], "failed", "{execution}");
    assert_eq!(
        execution["error"]["code"], "tool_round_limit",
        "{execution}"
    );
    assert!(execution["output"].is_null(), "{execution}");
    assert_eq!(requests().len(), 5, "five model turns, no sixth");
    assert_eq!(fake_llm().remaining(), 2);
    assert_eq!(execution["usage"]["provider_calls"], 5);
    assert_eq!(execution["usage"]["input_tokens"], 5 * 10);
    assert_eq!(execution["usage"]["output_tokens"], 5 * 5);
    // Each turn's tool call was run and answered, turns 1 to 5.
    let rounds: Vec<&Value> = execution["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["round"])
        .collect();
    assert_eq!(
        rounds,
        [1, 2, 3, 4, 5].map(|r| json!(r)).iter().collect::<Vec<_>>()
    );
    let results: Vec<&Value> = execution["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["result"])
        .collect();
    assert_eq!(results, ["1", "2", "3", "4", "5"]);
    // The fifth request carries the four earlier turns and their results.
    let last = &requests()[4].body["messages"];
    let tool_results = last
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .count();
    assert_eq!(tool_results, 4, "{last}");
    let records = target.usage_records(
        &org,
        &format!("agent_execution_id={}", execution["id"].as_str().unwrap()),
    );
    assert_eq!(
        records.len(),
        5,
        "one record per provider call: {records:?}"
    );
}

#[test]
fn a_structured_agent_node_whose_answer_is_not_json_fails_with_invalid_structured_output() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("structured-not-json");
    let agent = target.create(&org, "/api/v1/agents", &scout("openai", "gpt-4o-mini"));
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({"name": "Score", "nodes": [
            {"id": "start", "type": "trigger", "config": {}},
            {"id": "score", "type": "agent", "config": {"agent_id": agent, "prompt": "Score it",
                "output_schema": {"type": "object", "properties": {"score": {"type": "number"}}}}},
            {"id": "done", "type": "output", "config": {"value": "{{ steps.score.output }}"}}
        ], "edges": [
            {"source": "start", "target": "score"},
            {"source": "score", "target": "done"}
        ]}),
    );
    // The same node parses JSON, also in a Markdown fence: the control.
    fake_llm().push(Reply::text("```json\n{\"score\": 7}\n```"));
    let id = target.start_run(&org, &workflow, json!({}));
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], json!({"score": 7}));

    fake_llm().push(Reply::text("Sure! It scores 7 out of 10."));
    let id = target.start_run(&org, &workflow, json!({}));
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "failed", "{run}");
    let score = step(&run, "score");
    assert_eq!(score["status"], "failed", "{score}");
    assert_eq!(
        score["error"]["code"], "invalid_structured_output",
        "{score}"
    );
    assert_eq!(run["failed_node"], "score", "{run}");
    assert_eq!(run["error"]["code"], "invalid_structured_output", "{run}");
    assert!(
        find_step(&run, "done").is_none_or(|done| done["status"] != "completed"),
        "nothing runs after the failed node: {run}"
    );
    // The call itself was made and answered: the answer, not the provider, failed.
    assert_eq!(requests().len(), 2);
}
