//! Pricing per organisation over HTTP: the effective price table, an
//! organisation's own prices and markup (and that they bill the next call
//! only), roles and validation, and cost estimates compared with real runs.

use fake_llm::Reply;
use serde_json::{Value, json};
use spindle_suite::{Org, Target, fake_llm, fake_turn, shared, step};

const PRICING: &str = "/api/v1/usage/pricing";
const SETTINGS: &str = "/api/v1/usage/settings";
const ESTIMATE: &str = "/api/v1/usage/estimate";
const MINI: &str = "/api/v1/usage/pricing/openai/gpt-4o-mini";

/// The built-in table (`provider`, `model`, input and output µ$ per million
/// tokens, the page the figures were read from): each provider's published
/// price per million tokens on 2026-11-25, written out here so that a wrong
/// figure in the product's table fails.
const BUILT_IN: [(&str, &str, i64, i64, &str); 17] = [
    ("openai", "gpt-4o", 2_500_000, 10_000_000, OPENAI_PAGE),
    ("openai", "gpt-4o-mini", 150_000, 600_000, OPENAI_PAGE),
    ("openai", "gpt-4.1", 2_000_000, 8_000_000, OPENAI_PAGE),
    ("openai", "gpt-4.1-mini", 400_000, 1_600_000, OPENAI_PAGE),
    ("openai", "gpt-4.1-nano", 100_000, 400_000, OPENAI_PAGE),
    ("openai", "o3-mini", 1_100_000, 4_400_000, OPENAI_PAGE),
    (
        "anthropic",
        "claude-sonnet-4",
        3_000_000,
        15_000_000,
        ANTHROPIC_PAGE,
    ),
    (
        "anthropic",
        "claude-opus-4",
        15_000_000,
        75_000_000,
        ANTHROPIC_PAGE,
    ),
    (
        "anthropic",
        "claude-3-7-sonnet",
        3_000_000,
        15_000_000,
        ANTHROPIC_PAGE,
    ),
    (
        "anthropic",
        "claude-3-5-haiku",
        800_000,
        4_000_000,
        ANTHROPIC_PAGE,
    ),
    (
        "anthropic",
        "claude-haiku-4-5",
        1_000_000,
        5_000_000,
        CLAUDE_MODELS_PAGE,
    ),
    ("gemini", "gemini-2.0-flash", 100_000, 400_000, GEMINI_PAGE),
    (
        "gemini",
        "gemini-2.5-flash",
        300_000,
        2_500_000,
        GEMINI_PAGE,
    ),
    (
        "gemini",
        "gemini-2.5-flash-lite",
        100_000,
        400_000,
        GEMINI_PAGE,
    ),
    (
        "gemini",
        "gemini-2.5-pro",
        1_250_000,
        10_000_000,
        GEMINI_PAGE,
    ),
    (
        "groq",
        "llama-3.3-70b-versatile",
        590_000,
        790_000,
        GROQ_PAGE,
    ),
    ("groq", "llama-3.1-8b-instant", 50_000, 80_000, GROQ_PAGE),
];
const OPENAI_PAGE: &str = "https://platform.openai.com/docs/pricing";
const ANTHROPIC_PAGE: &str = "https://docs.anthropic.com/en/docs/about-claude/pricing";
const CLAUDE_MODELS_PAGE: &str = "https://platform.claude.com/docs/en/models/";
const GEMINI_PAGE: &str = "https://ai.google.dev/gemini-api/docs/pricing";
const GROQ_PAGE: &str = "https://groq.com/pricing";

/// What the bill says for a gpt-4o-mini call at its built-in price ($0.15/M
/// input, $0.60/M output, so 0.15 and 0.60 µ$ a token) with `markup` percent,
/// by README's rule: base rounded half up to the µ$, then billed = base ×
/// (100 + markup) / 100 rounded half up. For token counts only the product
/// knows (an estimate's); known counts are worked out by hand in the tests.
fn mini_billed(input: i64, output: i64, markup: i64) -> i64 {
    let base = (input * 150_000 + output * 600_000 + 500_000) / 1_000_000;
    (base * (100 + markup) + 50) / 100
}

fn ok(reply: spindle_suite::Reply, status: u16) -> Value {
    assert_eq!(
        reply.status,
        status,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    if reply.body.is_empty() {
        Value::Null
    } else {
        reply.json()
    }
}

fn pricing(target: &Target, token: &str) -> Value {
    ok(target.call("GET", PRICING, Some(token), None), 200)
}

/// The entry of the effective table for `provider`/`model`.
fn entry(table: &Value, provider: &str, model: &str) -> Value {
    table["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["provider"] == provider && e["model"] == model)
        .cloned()
        .unwrap_or(Value::Null)
}

fn own_entries(table: &Value) -> usize {
    table["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["source"] == "organisation")
        .count()
}

/// Runs the agent directly with the fake answering `input`/`output` tokens.
fn call_agent(target: &Target, org: &Org, agent: &str, input: u64, output: u64) -> Value {
    fake_llm().push(Reply::text("ok").tokens(input, output));
    let execution = ok(
        target.call(
            "POST",
            &format!("/api/v1/agents/{agent}/execute"),
            Some(&org.owner_key),
            Some(&json!({"task": "Say hi"})),
        ),
        200,
    );
    assert_eq!(execution["status"], "completed", "{execution}");
    execution
}

/// The stored usage record of one agent execution.
fn usage_record(target: &Target, org: &Org, agent_execution: &str) -> Value {
    let page = ok(
        target.call(
            "GET",
            "/api/v1/usage/records?limit=1000",
            Some(&org.owner_key),
            None,
        ),
        200,
    );
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["agent_execution_id"] == agent_execution)
        .cloned()
        .unwrap_or_else(|| panic!("no usage record for {agent_execution}: {page}"))
}

/// The stored cost of one agent execution, as the agent's history shows it.
fn stored_execution_cost(target: &Target, org: &Org, agent: &str, id: &str) -> Value {
    let page = ok(
        target.call(
            "GET",
            &format!("/api/v1/agents/{agent}/executions?limit=100"),
            Some(&org.owner_key),
            None,
        ),
        200,
    );
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .map(|e| e["cost"]["billed_micros"].clone())
        .unwrap_or_else(|| panic!("no execution {id}: {page}"))
}

/// The organisation's activity log (its last 200 entries), oldest first.
fn activity(target: &Target, org: &Org) -> Vec<Value> {
    let log = ok(
        target.call(
            "GET",
            "/api/v1/orgs/current/activity?limit=200",
            Some(&org.owner_key),
            None,
        ),
        200,
    );
    let mut entries = log["data"].as_array().unwrap().clone();
    entries.reverse();
    entries
}

fn actions(target: &Target, org: &Org) -> Vec<String> {
    activity(target, org)
        .iter()
        .map(|a| a["action"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The activity entries of `action`, oldest first.
fn activity_of(target: &Target, org: &Org, action: &str) -> Vec<Value> {
    activity(target, org)
        .into_iter()
        .filter(|a| a["action"] == action)
        .collect()
}

#[test]
fn the_table_lists_every_built_in_price_with_its_source_and_date() {
    let target = shared();
    let org = target.create_org("pricing-table");
    let (_, viewer) = target.create_key(&org.owner_key, "viewer");
    let table = pricing(target, &viewer);
    assert_eq!(table["markup_percent"], 20);
    assert_eq!(table["markup_source"], "default");
    assert_eq!(own_entries(&table), 0);
    for (provider, model, input, output, page) in BUILT_IN {
        let shown = entry(&table, provider, model);
        assert_eq!(shown["input_micros_per_million"], input, "{shown}");
        assert_eq!(shown["output_micros_per_million"], output, "{shown}");
        let source = shown["source"].as_str().unwrap_or_default();
        assert!(source.starts_with(page), "{model}: {source}");
        assert_eq!(shown["as_of"], "2026-11-25", "{shown}");
        assert_eq!(shown["updated_at"], Value::Null);
    }
    let gpt4o = entry(&table, "openai", "gpt-4o");
    assert_eq!(gpt4o["input_per_million"], "2.500000");
    assert_eq!(gpt4o["output_per_million"], "10.000000");
    assert_eq!(table["data"].as_array().unwrap().len(), BUILT_IN.len());
}

#[test]
fn an_own_price_bills_the_next_call_and_earlier_records_keep_their_cost() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("pricing-override");
    let agent = target.create_agent(&org);
    let built_in_entry = entry(&pricing(target, &org.owner_key), "openai", "gpt-4o-mini");
    let before = call_agent(target, &org, &agent, 1000, 500);
    // Built-in: 1000 × $0.15/M + 500 × $0.60/M = 150 + 300 = 450 µ$; × 1.2 = 540.
    let built_in_cost = 540;
    assert_eq!(before["cost"]["billed_micros"], built_in_cost);

    let set = ok(
        target.call(
            "PUT",
            MINI,
            Some(&org.owner_key),
            Some(&json!({"input_micros_per_million": 1_000_000, "output_micros_per_million": 4_000_000})),
        ),
        200,
    );
    assert_eq!(set["source"], "organisation");
    assert_eq!(set["input_micros_per_million"], 1_000_000);
    assert_eq!(set["built_in"]["input_micros_per_million"], 150_000);
    let updated_at = set["updated_at"].as_str().unwrap();
    assert!(updated_at.ends_with('Z'), "UTC: {updated_at}");
    assert!(updated_at.starts_with(set["as_of"].as_str().unwrap()));
    let shown = entry(&pricing(target, &org.owner_key), "openai", "gpt-4o-mini");
    assert_eq!(shown["source"], "organisation");
    assert_eq!(shown["output_micros_per_million"], 4_000_000);
    assert_eq!(shown["updated_at"], updated_at);

    let after = call_agent(target, &org, &agent, 1000, 500);
    // Own price: 1000 × $1/M + 500 × $4/M = 1000 + 2000 = 3000 µ$; × 1.2 = 3600.
    let negotiated_cost = 3600;
    assert_eq!(after["cost"]["billed_micros"], negotiated_cost);
    // The earlier call keeps the price it was made at, on its execution and its usage record.
    let before_id = before["id"].as_str().unwrap();
    assert_eq!(
        stored_execution_cost(target, &org, &agent, before_id),
        built_in_cost
    );
    let record = usage_record(target, &org, before_id);
    assert_eq!(record["billed_cost_micros"], built_in_cost);
    assert_eq!(record["base_cost_micros"], 450);
    let record = usage_record(target, &org, after["id"].as_str().unwrap());
    assert_eq!(record["billed_cost_micros"], negotiated_cost);

    // DELETE goes back to the built-in price, for the next call only.
    ok(target.call("DELETE", MINI, Some(&org.owner_key), None), 204);
    let shown = entry(&pricing(target, &org.owner_key), "openai", "gpt-4o-mini");
    assert_eq!(shown, built_in_entry, "the built-in entry as it was");
    assert_eq!(shown["built_in"], Value::Null);
    assert_eq!(shown["input_micros_per_million"], 150_000);
    let restored = call_agent(target, &org, &agent, 1000, 500);
    assert_eq!(restored["cost"]["billed_micros"], built_in_cost);
    assert_eq!(
        stored_execution_cost(target, &org, &agent, after["id"].as_str().unwrap()),
        negotiated_cost
    );
    target
        .call("DELETE", MINI, Some(&org.owner_key), None)
        .assert_error(404, "not_found");
    let log = actions(target, &org);
    assert!(log.contains(&"pricing.price_set".to_string()), "{log:?}");
    assert!(
        log.contains(&"pricing.price_removed".to_string()),
        "{log:?}"
    );
}

#[test]
fn price_changes_are_logged_with_what_they_replaced_and_a_runs_steps_keep_their_cost() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("pricing-history");
    let agent = target.create_agent(&org);
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "One call",
            "nodes": [
                {"id": "start", "type": "trigger"},
                {"id": "ask", "type": "agent", "config": {"agent_id": agent, "prompt": "hi"}}
            ],
            "edges": [{"source": "start", "target": "ask"}]
        }),
    );
    fake_llm().push(Reply::text("ok").tokens(1000, 500));
    let run_id = target.start_run(&org, &workflow, json!({}));
    let run = target.finished(&org, &run_id);
    assert_eq!(run["status"], "completed", "{run}");
    // Built-in gpt-4o-mini: 1000 × $0.15/M + 500 × $0.60/M = 450 µ$; × 1.2 = 540.
    let expected = json!({"base_micros": 450, "billed_micros": 540});
    assert_eq!(step(&run, "ask")["cost"], expected, "{run}");

    let price = |input: i64, output: i64| {
        ok(
            target.call(
                "PUT",
                MINI,
                Some(&org.owner_key),
                Some(&json!({"input_micros_per_million": input, "output_micros_per_million": output})),
            ),
            200,
        )
    };
    let markup = |percent: Value| {
        ok(
            target.call(
                "PUT",
                SETTINGS,
                Some(&org.owner_key),
                Some(&json!({"markup_percent": percent})),
            ),
            200,
        )
    };
    price(1_000_000, 4_000_000);
    price(2_000_000, 8_000_000);
    markup(json!(50));
    markup(json!(0));
    ok(target.call("DELETE", MINI, Some(&org.owner_key), None), 204);

    let set = activity_of(target, &org, "pricing.price_set");
    assert_eq!(set.len(), 2, "{set:?}");
    assert_eq!(
        set[0]["details"]["previous"],
        Value::Null,
        "no own price before"
    );
    assert_eq!(
        set[1]["details"]["previous"],
        json!({"input_micros_per_million": 1_000_000, "output_micros_per_million": 4_000_000})
    );
    assert_eq!(set[1]["details"]["input_micros_per_million"], 2_000_000);
    let removed = activity_of(target, &org, "pricing.price_removed");
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(
        removed[0]["details"]["previous"],
        json!({"input_micros_per_million": 2_000_000, "output_micros_per_million": 8_000_000})
    );
    let markups = activity_of(target, &org, "pricing.markup_set");
    let shown: Vec<(Value, Value)> = markups
        .iter()
        .map(|m| {
            (
                m["details"]["markup_percent"].clone(),
                m["details"]["previous"].clone(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [(json!(50), Value::Null), (json!(0), json!(50))],
        "{markups:?}"
    );

    // The run's steps keep the cost they were billed at.
    let run = target.execution(&org, &run_id);
    assert_eq!(step(&run, "ask")["cost"], expected, "{run}");
    assert_eq!(run["cost"]["billed_micros"], 540, "{run}");
}

#[test]
fn a_self_hosted_model_can_be_given_a_price() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("pricing-self-hosted");
    let agent = target.create(
        &org,
        "/api/v1/agents",
        &json!({"name": "Local", "model_config": {"provider": "openai_compatible", "model": "llama3.2"}}),
    );
    let unpriced = call_agent(target, &org, &agent, 1000, 1000);
    assert_eq!(unpriced["cost"]["pricing_missing"], true);
    let own = json!({"input_micros_per_million": 100_000, "output_micros_per_million": 200_000});
    let set = ok(
        target.call(
            "PUT",
            "/api/v1/usage/pricing/openai_compatible/llama3.2",
            Some(&org.owner_key),
            Some(&own),
        ),
        200,
    );
    assert_eq!(set["built_in"], Value::Null);
    let table = pricing(target, &org.owner_key);
    assert_eq!(
        entry(&table, "openai_compatible", "llama3.2")["source"],
        "organisation"
    );
    let priced = call_agent(target, &org, &agent, 1000, 1000);
    assert_eq!(priced["cost"]["pricing_missing"], false);
    assert_eq!(priced["cost"]["billed_micros"], 360); // (100 + 200) × 1.2
    assert_eq!(unpriced["cost"]["billed_micros"], 0);
}

#[test]
fn a_markup_change_applies_to_the_next_call_only() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("pricing-markup");
    let (_, viewer) = target.create_key(&org.owner_key, "viewer");
    let agent = target.create_agent(&org);
    let settings = ok(target.call("GET", SETTINGS, Some(&viewer), None), 200);
    assert_eq!(
        settings,
        json!({"markup_percent": 20, "markup_source": "default", "default_markup_percent": 20, "updated_at": null})
    );
    // Every call here: 2000 × $0.15/M + 1000 × $0.60/M = 300 + 600 = 900 µ$ base,
    // billed 900 × (100 + markup) / 100.
    let first = call_agent(target, &org, &agent, 2000, 1000);
    assert_eq!(first["cost"]["billed_micros"], 1080, "900 × 1.2");

    let set = ok(
        target.call(
            "PUT",
            SETTINGS,
            Some(&org.owner_key),
            Some(&json!({"markup_percent": 50})),
        ),
        200,
    );
    assert_eq!(set["markup_percent"], 50);
    assert_eq!(set["markup_source"], "organisation");
    assert!(set["updated_at"].as_str().unwrap().ends_with('Z'));
    let seen = ok(target.call("GET", SETTINGS, Some(&viewer), None), 200);
    assert_eq!(seen, set);
    assert_eq!(pricing(target, &viewer)["markup_percent"], 50);

    let second = call_agent(target, &org, &agent, 2000, 1000);
    assert_eq!(second["cost"]["billed_micros"], 1350, "900 × 1.5");
    let first_record = usage_record(target, &org, first["id"].as_str().unwrap());
    assert_eq!(first_record["markup_percent"], 20);
    assert_eq!(first_record["billed_cost_micros"], 1080);
    let second_record = usage_record(target, &org, second["id"].as_str().unwrap());
    assert_eq!(second_record["markup_percent"], 50);

    // Zero is a markup like any other; null goes back to the default.
    ok(
        target.call(
            "PUT",
            SETTINGS,
            Some(&org.owner_key),
            Some(&json!({"markup_percent": 0})),
        ),
        200,
    );
    let free = call_agent(target, &org, &agent, 2000, 1000);
    assert_eq!(free["cost"]["billed_micros"], 900, "the base alone");
    let reset = ok(
        target.call(
            "PUT",
            SETTINGS,
            Some(&org.owner_key),
            Some(&json!({"markup_percent": null})),
        ),
        200,
    );
    assert_eq!(reset["markup_source"], "default");
    assert_eq!(reset["markup_percent"], 20);
    let third = call_agent(target, &org, &agent, 2000, 1000);
    assert_eq!(third["cost"]["billed_micros"], 1080);
    assert_eq!(
        stored_execution_cost(target, &org, &agent, second["id"].as_str().unwrap()),
        1350
    );
    assert!(actions(target, &org).contains(&"pricing.markup_set".to_string()));
}

#[test]
fn viewers_and_members_cannot_change_prices_or_markup() {
    let target = shared();
    let org = target.create_org("pricing-roles");
    let price = json!({"input_micros_per_million": 1, "output_micros_per_million": 2});
    for role in ["viewer", "member"] {
        let (_, key) = target.create_key(&org.owner_key, role);
        target
            .call("PUT", MINI, Some(&key), Some(&price))
            .assert_error(403, "forbidden");
        target
            .call("DELETE", MINI, Some(&key), None)
            .assert_error(403, "forbidden");
        target
            .call(
                "PUT",
                SETTINGS,
                Some(&key),
                Some(&json!({"markup_percent": 0})),
            )
            .assert_error(403, "forbidden");
        assert_eq!(pricing(target, &key)["markup_percent"], 20);
    }
    let table = pricing(target, &org.owner_key);
    assert_eq!(own_entries(&table), 0);
    assert_eq!(table["markup_source"], "default");
    target
        .call("GET", PRICING, None, None)
        .assert_error(401, "unauthenticated");
    let (_, admin) = target.create_key(&org.owner_key, "admin");
    ok(target.call("PUT", MINI, Some(&admin), Some(&price)), 200);
    ok(
        target.call(
            "PUT",
            SETTINGS,
            Some(&admin),
            Some(&json!({"markup_percent": 1000})),
        ),
        200,
    );
}

#[test]
fn invalid_prices_and_settings_are_refused_and_change_nothing() {
    let target = shared();
    let org = target.create_org("pricing-invalid");
    let key = Some(org.owner_key.as_str());
    let table_before = pricing(target, &org.owner_key);
    let settings_before = ok(target.call("GET", SETTINGS, key, None), 200);
    let good = json!({"input_micros_per_million": 1, "output_micros_per_million": 2});
    target
        .call(
            "PUT",
            "/api/v1/usage/pricing/skynet/gpt-4o",
            key,
            Some(&good),
        )
        .assert_error(422, "validation_failed");
    target
        .call(
            "PUT",
            "/api/v1/usage/pricing/openai/gpt%204o",
            key,
            Some(&good),
        )
        .assert_error(422, "validation_failed");
    let refused = [
        (
            json!({"input_micros_per_million": -1, "output_micros_per_million": 2}),
            422,
        ),
        (
            json!({"input_micros_per_million": 1, "output_micros_per_million": 1_000_000_000_001_i64}),
            422,
        ),
        (
            json!({"input_micros_per_million": "1", "output_micros_per_million": 2}),
            400,
        ),
        (
            json!({"input_micros_per_million": 1.5, "output_micros_per_million": 2}),
            400,
        ),
        (json!({"input_micros_per_million": 1}), 400),
        (
            json!({"input_micros_per_million": 1, "output_micros_per_million": 2, "currency": "EUR"}),
            400,
        ),
        (
            json!({"input_per_million_micros": 1, "output_per_million_micros": 2}),
            400,
        ),
        (json!([1, 2]), 400),
    ];
    for (body, status) in refused {
        let reply = target.call("PUT", MINI, key, Some(&body));
        let code = if status == 400 {
            "bad_request"
        } else {
            "validation_failed"
        };
        reply.assert_error(status, code);
    }
    let reply = target.request(
        "PUT",
        MINI,
        &[
            ("authorization", &format!("Bearer {}", org.owner_key)),
            ("content-type", "application/json"),
        ],
        Some(b"{not json"),
    );
    reply.assert_error(400, "bad_request");
    target
        .call("DELETE", "/api/v1/usage/pricing/skynet/gpt-4o", key, None)
        .assert_error(422, "validation_failed");
    for (body, status) in [
        (json!({"markup_percent": 1001}), 422),
        (json!({"markup_percent": -1}), 422),
        (json!({"markup_percent": "20"}), 400),
        (json!({"markup_percent": 12.5}), 400),
        (json!({"markup_percent": 20, "currency": "EUR"}), 400),
        (json!({}), 400),
    ] {
        let code = if status == 400 {
            "bad_request"
        } else {
            "validation_failed"
        };
        target
            .call("PUT", SETTINGS, key, Some(&body))
            .assert_error(status, code);
    }
    let table = pricing(target, &org.owner_key);
    assert_eq!(table, table_before, "nothing was stored");
    assert_eq!(own_entries(&table), 0);
    assert_eq!(table["markup_source"], "default");
    assert_eq!(
        ok(target.call("GET", SETTINGS, key, None), 200),
        settings_before
    );
    assert!(
        !actions(target, &org)
            .iter()
            .any(|a| a.starts_with("pricing.")),
        "no change was logged"
    );
}

#[test]
fn another_organisation_does_not_see_or_pay_an_override() {
    let _turn = fake_turn();
    let target = shared();
    let acme = target.create_org("pricing-acme");
    let other = target.create_org("pricing-other");
    ok(
        target.call(
            "PUT",
            MINI,
            Some(&acme.owner_key),
            Some(&json!({"input_micros_per_million": 9_000_000, "output_micros_per_million": 9_000_000})),
        ),
        200,
    );
    ok(
        target.call(
            "PUT",
            SETTINGS,
            Some(&acme.owner_key),
            Some(&json!({"markup_percent": 300})),
        ),
        200,
    );
    let table = pricing(target, &other.owner_key);
    assert_eq!(own_entries(&table), 0);
    assert_eq!(table["markup_percent"], 20);
    assert_eq!(
        entry(&table, "openai", "gpt-4o-mini")["input_micros_per_million"],
        150_000
    );
    target
        .call("DELETE", MINI, Some(&other.owner_key), None)
        .assert_error(404, "not_found");
    let agent = target.create_agent(&other);
    let execution = call_agent(target, &other, &agent, 1000, 500);
    // The built-in price and markup: 1000 × $0.15/M + 500 × $0.60/M = 450 µ$; × 1.2 = 540.
    assert_eq!(execution["cost"]["billed_micros"], 540);
    assert_eq!(
        entry(&pricing(target, &acme.owner_key), "openai", "gpt-4o-mini")["source"],
        "organisation"
    );
}

// ---- estimates ------------------------------------------------------------

const SYSTEM: &str = "You are Scout: qualifies leads\n\nAnswer briefly.";

fn scout() -> Value {
    json!({
        "name": "Scout",
        "description": "qualifies leads",
        "instructions": "Answer briefly.",
        "model_config": {"provider": "openai", "model": "gpt-4o-mini", "max_tokens": 300}
    })
}

fn two_steps(agent: &str) -> Value {
    json!({
        "nodes": [
            {"id": "start", "type": "trigger", "config": {"inputs": {"topic": {"type": "string", "required": true}}}},
            {"id": "draft", "type": "agent", "config": {"agent_id": agent, "prompt": "Describe {{ trigger.topic }} in one careful line for a reader new to it"}},
            {"id": "review", "type": "agent", "config": {"agent_id": agent, "prompt": "Check this description of {{ trigger.topic }}: {{ steps.draft.output }}", "max_tokens": 100}},
            {"id": "done", "type": "output", "config": {"value": "{{ steps.review.output }}"}}
        ],
        "edges": [
            {"source": "start", "target": "draft"},
            {"source": "draft", "target": "review"},
            {"source": "review", "target": "done"}
        ]
    })
}

/// The documented rule: ceil(chars / 4) of the system prompt and of the
/// rendered prompt, plus 4 tokens for each of the two messages.
fn rule(prompt: &str) -> u64 {
    8 + (SYSTEM.chars().count() as u64).div_ceil(4) + (prompt.chars().count() as u64).div_ceil(4)
}

fn estimate(target: &Target, token: &str, body: Value) -> Value {
    ok(target.call("POST", ESTIMATE, Some(token), Some(&body)), 200)
}

fn node<'a>(estimate: &'a Value, id: &str) -> &'a Value {
    estimate["agent_nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == id)
        .unwrap_or_else(|| panic!("no node {id} in {estimate}"))
}

/// The billed micro-dollars of one case (`min`, `expected`, `worst_case`)
/// of an estimate's costs: a node's `cost` or the `totals`.
fn charged(costs: &Value, case: &str) -> i64 {
    int(&costs[case]["billed_micros"])
}

fn int(value: &Value) -> i64 {
    value
        .as_i64()
        .unwrap_or_else(|| panic!("not an integer: {value}"))
}

#[test]
fn an_estimate_matches_a_real_run_within_the_documented_margin() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("estimate-run");
    let (_, viewer) = target.create_key(&org.owner_key, "viewer");
    let agent = target.create(&org, "/api/v1/agents", &scout());
    let mut document = two_steps(&agent);
    document["name"] = json!("Two steps");
    let workflow = target.create(&org, "/api/v1/workflows", &document);
    let inputs = json!({"topic": "tidal power"});

    let by_id = estimate(
        target,
        &viewer,
        json!({"workflow_id": workflow, "inputs": inputs}),
    );
    assert_eq!(by_id["workflow"]["id"], workflow.as_str());
    assert_eq!(by_id["node_count"], 4);
    assert_eq!(by_id["markup_percent"], 20);
    assert_eq!(by_id["history"], Value::Null, "no runs yet");
    let draft = node(&by_id, "draft");
    assert_eq!(draft["agent_id"], agent.as_str());
    assert_eq!(draft["provider"], "openai");
    assert_eq!(draft["model"], "gpt-4o-mini");
    let draft_in = rule("Describe tidal power in one careful line for a reader new to it");
    // 8 + ceil(47 / 4) + ceil(63 / 4) = 8 + 12 + 16.
    assert_eq!(draft_in, 36);
    assert_eq!(draft["estimated_input_tokens"], draft_in);
    // The agent's max_tokens, capped at the typical 500 for the expectation.
    assert_eq!(draft["max_output_tokens"], 300);
    assert_eq!(draft["estimated_output_tokens"], 300);
    assert_eq!(draft["output_estimate"], "default");
    // min: 36 × $0.15/M = 5.4 → 5 µ$; × 1.2 = 6.
    assert_eq!(charged(&draft["cost"], "min"), 6);
    // expected and worst case: 36 × 0.15 + 300 × 0.60 = 5.4 + 180 = 185.4 → 185 µ$;
    // × 1.2 = 222.
    assert_eq!(charged(&draft["cost"], "expected"), 222);
    assert_eq!(charged(&draft["cost"], "worst_case"), 222);
    let review = node(&by_id, "review");
    assert_eq!(
        review["max_output_tokens"], 100,
        "the node's max_tokens wins"
    );
    assert_eq!(review["estimated_output_tokens"], 100);
    // Its prompt holds the draft's output, not known before the run, so its
    // input tokens are the estimate's own; the money follows from them.
    let review_in = int(&review["estimated_input_tokens"]);
    assert_eq!(
        charged(&review["cost"], "min"),
        mini_billed(review_in, 0, 20)
    );
    assert_eq!(
        charged(&review["cost"], "expected"),
        mini_billed(review_in, 100, 20)
    );
    assert_eq!(
        charged(&review["cost"], "worst_case"),
        mini_billed(review_in, 100, 20)
    );
    let totals = &by_id["totals"];
    for case in ["min", "expected", "worst_case"] {
        assert_eq!(
            charged(totals, case),
            charged(&draft["cost"], case) + charged(&review["cost"], case),
            "{case}"
        );
    }
    assert!(charged(totals, "min") < charged(totals, "expected"));

    // The same definition posted inline gives the same estimate, without history.
    let inline = estimate(
        target,
        &org.owner_key,
        json!({"definition": two_steps(&agent), "inputs": inputs}),
    );
    assert_eq!(inline["workflow"], Value::Null);
    assert_eq!(inline["agent_nodes"], by_id["agent_nodes"]);
    assert_eq!(inline["totals"], by_id["totals"]);

    // A real run, with token counts derived from the request as a provider would.
    fake_llm().push(Reply::text(
        "Tidal power turns the rise and fall of the sea into electricity",
    ));
    fake_llm().push(Reply::text("Accurate and clear"));
    let id = target.start_run(&org, &workflow, inputs.clone());
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "completed", "{run}");
    let margin = |estimated: i64| (estimated * 25 / 100).max(16);
    let mut margin_tokens = 0;
    for id in ["draft", "review"] {
        let estimated = int(&node(&by_id, id)["estimated_input_tokens"]);
        let real = int(&step(&run, id)["usage"]["input_tokens"]);
        assert!(
            (estimated - real).abs() <= margin(estimated),
            "{id}: estimated {estimated} input tokens, the run used {real}"
        );
        margin_tokens += margin(estimated);
    }
    let real_cost = int(&run["cost"]["billed_micros"]);
    assert!(real_cost > 0);
    assert!(real_cost <= charged(totals, "worst_case"), "{run}");

    // With that run as history, the expectation uses its output tokens and
    // is within the input margin's cost of the real bill.
    let again = estimate(
        target,
        &viewer,
        json!({"workflow_id": workflow, "inputs": inputs}),
    );
    assert_eq!(again["history"]["runs"], 1);
    assert_eq!(again["history"]["mean_micros"], real_cost);
    assert_eq!(again["history"]["p95_micros"], real_cost);
    for id in ["draft", "review"] {
        assert_eq!(node(&again, id)["output_estimate"], "history");
        assert_eq!(
            node(&again, id)["estimated_output_tokens"],
            step(&run, id)["usage"]["output_tokens"]
        );
    }
    let expected = charged(&again["totals"], "expected");
    // The margin's input tokens at 0.15 µ$ a token × 1.2, plus a µ$ of rounding per call.
    let allowance = mini_billed(margin_tokens, 0, 20) + 2;
    assert!(
        (expected - real_cost).abs() <= allowance,
        "expected {expected}, real {real_cost}, allowance {allowance}"
    );
}

#[test]
fn an_estimate_takes_a_tasks_definition_or_the_document_a_get_returns() {
    let target = shared();
    let org = target.create_org("estimate-forms");
    let agent = target.create(&org, "/api/v1/agents", &scout());
    let tasks = json!({"name": "Two tasks", "tasks": [
        {"agent": agent, "input": "Summarise {{ trigger.text }}"},
        {"agent": agent, "input": "Shorten the summary"}
    ]});
    let workflow = target.create(&org, "/api/v1/workflows", &tasks);
    let document = ok(
        target.call(
            "GET",
            &format!("/api/v1/workflows/{workflow}"),
            Some(&org.owner_key),
            None,
        ),
        200,
    );
    let inputs = json!({"text": "a note of some length"});
    let by_id = estimate(
        target,
        &org.owner_key,
        json!({"workflow_id": workflow, "inputs": inputs}),
    );
    assert_eq!(by_id["agent_nodes"].as_array().unwrap().len(), 2, "{by_id}");
    for definition in [tasks, document] {
        let given = estimate(
            target,
            &org.owner_key,
            json!({"definition": definition, "inputs": inputs}),
        );
        assert_eq!(given["agent_nodes"], by_id["agent_nodes"], "{definition}");
        assert_eq!(given["totals"], by_id["totals"], "{definition}");
    }
}

#[test]
fn an_estimate_reports_the_history_mean_and_p95() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("estimate-history");
    let agent = target.create(&org, "/api/v1/agents", &scout());
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({"name": "One step", "tasks": [{"agent": agent, "input": "Summarise {{ trigger.text }}"}]}),
    );
    // (input, output, billed µ$) of each run, at $0.15/M and $0.60/M, × 1.2:
    let runs = [
        // 100 × 0.15 + 10 × 0.60 = 15 + 6 = 21 µ$; × 1.2 = 25.2 → 25.
        (100, 10, 25),
        // 1000 × 0.15 + 100 × 0.60 = 150 + 60 = 210 µ$; × 1.2 = 252.
        (1000, 100, 252),
        // 300 × 0.15 + 40 × 0.60 = 45 + 24 = 69 µ$; × 1.2 = 82.8 → 83.
        (300, 40, 83),
    ];
    for (input, output, billed) in runs {
        fake_llm().push(Reply::text("done").tokens(input, output));
        let id = target.start_run(&org, &workflow, json!({"text": "a note"}));
        let run = target.finished(&org, &id);
        assert_eq!(run["status"], "completed", "{run}");
        assert_eq!(int(&run["cost"]["billed_micros"]), billed);
    }
    let result = estimate(
        target,
        &org.owner_key,
        json!({"workflow_id": workflow, "inputs": {"text": "a note"}}),
    );
    let history = &result["history"];
    assert_eq!(history["runs"], 3);
    // (25 + 252 + 83) / 3 = 360 / 3.
    assert_eq!(history["mean_micros"], 120);
    assert_eq!(history["mean"], "0.000120");
    assert_eq!(
        history["p95_micros"], 252,
        "the nearest-rank p95 of three runs is the dearest"
    );
    let agent_nodes = result["agent_nodes"].as_array().unwrap();
    assert_eq!(agent_nodes.len(), 1);
    // Mean output of the node: (10 + 100 + 40) / 3 = 50.
    assert_eq!(agent_nodes[0]["estimated_output_tokens"], 50);
    assert_eq!(agent_nodes[0]["output_estimate"], "history");
}

#[test]
fn an_estimate_counts_loops_tools_and_the_organisations_prices() {
    let target = shared();
    let org = target.create_org("estimate-loops");
    let mut with_tools = scout();
    with_tools["tools"] = json!(["calculator"]);
    let agent = target.create(&org, "/api/v1/agents", &with_tools);
    let local = target.create(
        &org,
        "/api/v1/agents",
        &json!({"name": "Local", "model_config": {"provider": "openai_compatible", "model": "llama3.2"}}),
    );
    let definition = json!({
        "nodes": [
            {"id": "start", "type": "trigger", "config": {}},
            {"id": "each", "type": "loop", "config": {"mode": "for_each", "items": "trigger.leads", "max_iterations": 5,
                "body": {"nodes": [{"id": "score", "type": "agent", "config": {"agent_id": agent, "prompt": "Score {{ item }}", "max_tokens": 50}}], "edges": []}}},
            {"id": "local", "type": "agent", "config": {"agent_id": local, "prompt": "Summarise"}}
        ],
        "edges": [{"source": "start", "target": "each"}, {"source": "each", "target": "local"}]
    });
    let body = json!({"definition": definition, "inputs": {"leads": ["ada", "grace", "linus"]}});
    let result = estimate(target, &org.owner_key, body.clone());
    assert_eq!(result["node_count"], 4);
    let score = node(&result, "score");
    assert_eq!(score["loops"], json!(["each"]));
    assert_eq!(score["runs"], json!({"expected": 3, "max": 5}));
    assert_eq!(score["model_turns"], json!({"expected": 1, "max": 5}));
    let input = int(&score["estimated_input_tokens"]);
    assert!(
        input > rule("Score ada") as i64,
        "tool definitions count as input"
    );
    assert_eq!(score["estimated_output_tokens"], 50);
    assert_eq!(
        charged(&score["cost"], "expected"),
        3 * mini_billed(input, 50, 20),
        "each iteration is a call of its own"
    );
    // Worst case: 5 iterations × 5 turns, each turn reading the earlier answers.
    let worst_input = 5 * (5 * input + 50 * 10);
    assert_eq!(
        score["worst_case_tokens"],
        json!({"input": worst_input, "output": 5 * 250})
    );
    let worst_turns: i64 = (0..5)
        .map(|turn| mini_billed(input + turn * 50, 50, 20))
        .sum();
    assert_eq!(charged(&score["cost"], "worst_case"), 5 * worst_turns);
    let unpriced = node(&result, "local");
    assert_eq!(unpriced["pricing_missing"], true);
    assert_eq!(charged(&unpriced["cost"], "expected"), 0);
    assert_eq!(result["totals"]["pricing_missing"], true);
    assert_eq!(
        unpriced["max_output_tokens"], 1024,
        "the default max_tokens"
    );
    let assumptions = result["assumptions"].to_string();
    assert!(
        assumptions.contains("loop each: expected 3 iteration"),
        "{assumptions}"
    );
    assert!(assumptions.contains("max_iterations, 5"), "{assumptions}");
    assert!(
        assumptions.contains("node score has tools"),
        "{assumptions}"
    );
    assert!(assumptions.contains("has no price"), "{assumptions}");

    // The organisation's own prices and markup are what the estimate uses.
    ok(
        target.call(
            "PUT",
            "/api/v1/usage/pricing/openai_compatible/llama3.2",
            Some(&org.owner_key),
            Some(&json!({"input_micros_per_million": 1_000_000, "output_micros_per_million": 1_000_000})),
        ),
        200,
    );
    ok(
        target.call(
            "PUT",
            SETTINGS,
            Some(&org.owner_key),
            Some(&json!({"markup_percent": 0})),
        ),
        200,
    );
    let priced = estimate(target, &org.owner_key, body);
    let local_node = node(&priced, "local");
    assert_eq!(local_node["pricing_missing"], false);
    assert_eq!(local_node["price"]["source"], "organisation");
    let local_in = int(&local_node["estimated_input_tokens"]);
    // $1/M is 1 µ$ a token, with no markup: input tokens plus 500 expected output tokens.
    assert_eq!(charged(&local_node["cost"], "expected"), local_in + 500);
    assert_eq!(priced["totals"]["pricing_missing"], false);
    assert_eq!(priced["markup_percent"], 0);
    assert_eq!(
        charged(&node(&priced, "score")["cost"], "expected"),
        3 * mini_billed(input, 50, 0)
    );
}

#[test]
fn estimate_requests_are_checked() {
    let target = shared();
    let org = target.create_org("estimate-invalid");
    let other = target.create_org("estimate-stranger");
    let agent = target.create(&org, "/api/v1/agents", &scout());
    let theirs = target.create_agent(&other);
    let mut document = two_steps(&theirs);
    document["name"] = json!("Theirs");
    let foreign = target.create(&other, "/api/v1/workflows", &document);
    let key = Some(org.owner_key.as_str());
    let post = |body: Value| target.call("POST", ESTIMATE, key, Some(&body));
    post(json!({})).assert_error(422, "validation_failed");
    post(json!({"workflow_id": "x", "definition": two_steps(&agent)}))
        .assert_error(422, "validation_failed");
    post(json!({"workflow_id": 7})).assert_error(400, "bad_request");
    post(json!({"definition": "nodes"})).assert_error(400, "bad_request");
    post(json!({"definition": two_steps(&agent), "inputs": [1]})).assert_error(400, "bad_request");
    post(json!({"definition": two_steps(&agent), "budget": 5})).assert_error(400, "bad_request");
    post(json!({"workflow_id": "00000000-0000-0000-0000-000000000000"}))
        .assert_error(404, "not_found");
    post(json!({"workflow_id": foreign})).assert_error(404, "not_found");
    let reply = post(json!({"definition": two_steps(&theirs)}));
    reply.assert_error(422, "validation_failed");
    assert!(
        reply.json()["error"]["details"]
            .to_string()
            .contains("definition.nodes[1].config.agent_id"),
        "{}",
        reply.json()
    );
    target
        .call(
            "POST",
            ESTIMATE,
            None,
            Some(&json!({"definition": two_steps(&agent)})),
        )
        .assert_error(401, "unauthenticated");
    let (_, member) = target.create_key(&org.owner_key, "member");
    estimate(target, &member, json!({"definition": two_steps(&agent)}));
}

/// One case of an estimate's costs as `(base, markup, billed)`, checking
/// that it adds up and that its dollar strings say the same.
fn amounts(costs: &Value, case: &str) -> (i64, i64, i64) {
    let amounts = &costs[case];
    let (base, markup, billed) = (
        int(&amounts["base_micros"]),
        int(&amounts["markup_micros"]),
        int(&amounts["billed_micros"]),
    );
    assert_eq!(base + markup, billed, "{case}: {amounts}");
    for (field, micros) in [("base", base), ("markup", markup), ("billed", billed)] {
        assert_eq!(
            amounts[field],
            format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000),
            "{case}.{field}"
        );
    }
    (base, markup, billed)
}

#[test]
fn an_estimate_shows_base_markup_and_billed_and_the_bill_of_a_run_is_its_expectation() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("estimate-billed");
    // $1 per million input tokens and $1.50 per million output tokens: 9
    // output tokens cost 13.5 micro-dollars, so every call is rounded.
    ok(
        target.call(
            "PUT",
            MINI,
            Some(&org.owner_key),
            Some(&json!({"input_micros_per_million": 1_000_000, "output_micros_per_million": 1_500_000})),
        ),
        200,
    );
    ok(
        target.call(
            "PUT",
            SETTINGS,
            Some(&org.owner_key),
            Some(&json!({"markup_percent": 15})),
        ),
        200,
    );
    let agent = target.create(&org, "/api/v1/agents", &scout());
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({"name": "Billed", "nodes": [
            {"id": "start", "type": "trigger"},
            {"id": "draft", "type": "agent", "config": {"agent_id": agent, "prompt": "Describe {{ trigger.topic }}"}},
            {"id": "each", "type": "loop", "config": {"items": "trigger.leads", "mode": "for_each", "max_iterations": 3,
                "body": {"nodes": [{"id": "score", "type": "agent", "config": {"agent_id": agent, "prompt": "Score {{ item }}", "max_tokens": 9}}], "edges": []}}}
        ], "edges": [{"source": "start", "target": "draft"}, {"source": "draft", "target": "each"}]}),
    );
    let inputs = json!({"topic": "tides", "leads": ["ada", "bob", "cyd"]});
    let estimated = estimate(
        target,
        &org.owner_key,
        json!({"workflow_id": workflow, "inputs": inputs}),
    );
    assert_eq!(estimated["markup_percent"], 15);
    let draft = node(&estimated, "draft");
    let score = node(&estimated, "score");
    // 8 + ceil(47 / 4) + ceil(14 / 4) = 8 + 12 + 4 and 8 + 12 + ceil(9 / 4) = 8 + 12 + 3.
    let (draft_in, score_in) = (rule("Describe tides"), rule("Score ada"));
    assert_eq!((draft_in, score_in), (24, 23));
    assert_eq!(draft["estimated_input_tokens"], draft_in);
    assert_eq!(score["estimated_input_tokens"], score_in);
    assert_eq!(draft["estimated_output_tokens"], 300);
    assert_eq!(score["estimated_output_tokens"], 9);
    // Per node: each provider call priced as the bill prices it, then added up;
    // (base, markup, billed) µ$, billed = base × 1.15 rounded half up.
    // draft, min: 24 × $1/M = 24 µ$; × 1.15 = 27.6 → 28.
    assert_eq!(amounts(&draft["cost"], "min"), (24, 4, 28));
    // draft, expected = worst case: 24 + 300 × $1.50/M = 24 + 450 = 474 µ$;
    // × 1.15 = 545.1 → 545.
    assert_eq!(amounts(&draft["cost"], "expected"), (474, 71, 545));
    assert_eq!(amounts(&draft["cost"], "worst_case"), (474, 71, 545));
    // score, min: 23 µ$ a call; × 1.15 = 26.45 → 26; three calls.
    assert_eq!(amounts(&score["cost"], "min"), (3 * 23, 3 * 3, 3 * 26));
    // score, expected = worst case: 23 + 9 × 1.5 = 36.5 → 37 µ$ a call;
    // × 1.15 = 42.55 → 43; three calls, each rounded on its own (not 3 × 36.5 = 109.5).
    assert_eq!(
        amounts(&score["cost"], "expected"),
        (3 * 37, 3 * 6, 3 * 43),
        "three calls of their own, each rounded"
    );
    assert_eq!(
        amounts(&score["cost"], "worst_case"),
        (3 * 37, 3 * 6, 3 * 43)
    );
    // Totals: each amount of each case is the sum over the nodes.
    let totals = &estimated["totals"];
    assert_eq!(totals["pricing_missing"], false);
    for case in ["min", "expected", "worst_case"] {
        let (d, s) = (amounts(&draft["cost"], case), amounts(&score["cost"], case));
        assert_eq!(
            amounts(totals, case),
            (d.0 + s.0, d.1 + s.1, d.2 + s.2),
            "{case}"
        );
    }

    // A run whose calls use exactly the estimated tokens is billed exactly
    // the expectation: base, markup and billed, per node and in total.
    fake_llm().push(Reply::text("Tides are the sea rising and falling").tokens(draft_in, 300));
    for _ in 0..3 {
        fake_llm().push(Reply::text("7").tokens(score_in, 9));
    }
    let id = target.start_run(&org, &workflow, inputs);
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "completed", "{run}");
    let (base, _, billed) = amounts(totals, "expected");
    assert_eq!(int(&run["cost"]["base_micros"]), base, "{run}");
    assert_eq!(int(&run["cost"]["billed_micros"]), billed, "{run}");
    let steps = run["steps"].as_array().unwrap();
    let score_steps: Vec<&Value> = steps.iter().filter(|s| s["node_id"] == "score").collect();
    assert_eq!(score_steps.len(), 3);
    let (score_base, _, score_billed) = amounts(&score["cost"], "expected");
    assert_eq!(
        score_steps
            .iter()
            .map(|s| int(&s["cost"]["base_micros"]))
            .sum::<i64>(),
        score_base
    );
    assert_eq!(
        score_steps
            .iter()
            .map(|s| int(&s["cost"]["billed_micros"]))
            .sum::<i64>(),
        score_billed
    );
    let summary = ok(
        target.call("GET", "/api/v1/usage/summary", Some(&org.owner_key), None),
        200,
    );
    assert_eq!(int(&summary["totals"]["base_cost_micros"]), base);
    assert_eq!(int(&summary["totals"]["billed_cost_micros"]), billed);
}
