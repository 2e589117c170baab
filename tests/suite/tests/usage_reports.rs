//! Usage reports over HTTP: the summary by every `group_by`, the records as
//! JSON pages and as a streamed CSV, per-run and per-node workflow costs,
//! and that every total agrees with the records it sums. The records come
//! from scripted provider calls, so each number is known in advance.

use chrono::{DateTime, Datelike, Utc};
use fake_llm::Reply;
use serde_json::{Value, json};
use spindle_suite::{Org, Target, fake_llm, fake_turn, shared};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::Duration;

const OPENAI_MODEL: &str = "gpt-4o-mini";
const ANTHROPIC_MODEL: &str = "claude-sonnet-4";
// The money in these tests is worked out by hand from the built-in table's
// prices (README, "Pricing"): gpt-4o-mini $0.15/M input and $0.60/M output,
// claude-sonnet-4 $3/M and $15/M. $P per million tokens is P µ$ a token; a
// call's base is rounded half up to the µ$, then billed = base × 1.2 (the
// default 20% markup), rounded half up.

/// Micro-dollars as README's dollar string: `504` → `"0.000504"`.
fn dollars(micros: i64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn get(target: &Target, token: &str, path: &str) -> Value {
    let reply = target.call("GET", path, Some(token), None);
    assert_eq!(
        reply.status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()
}

/// `POST /api/v1/agents/:id/execute` with `token`; the agent execution.
fn execute(target: &Target, token: &str, agent: &str) -> Value {
    let reply = target.call(
        "POST",
        &format!("/api/v1/agents/{agent}/execute"),
        Some(token),
        Some(&json!({"task": "go"})),
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()
}

/// Every record matching `query` (no `cursor`/`limit`), page by page.
fn all_records(target: &Target, token: &str, query: &str) -> Vec<Value> {
    let mut records = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/usage/records?{query}&limit=1000");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = get(target, token, &path);
        records.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return records,
        }
    }
}

fn sum(records: &[Value], field: &str) -> i64 {
    records.iter().map(|r| r[field].as_i64().unwrap()).sum()
}

/// The summary's totals fields that must equal the sums of the records.
const SUMMED: [&str; 5] = [
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "base_cost_micros",
    "billed_cost_micros",
];

/// Asserts that a summary's totals are exactly the sums of `records`.
fn assert_totals_are_the_records(totals: &Value, records: &[Value]) {
    assert_eq!(totals["calls"], records.len(), "{totals}");
    let failed = records.iter().filter(|r| r["status"] == "failed").count();
    assert_eq!(totals["failed_calls"], failed, "{totals}");
    for field in SUMMED {
        assert_eq!(totals[field], sum(records, field), "{field}: {totals}");
    }
    assert_eq!(
        totals["billed_cost"],
        dollars(sum(records, "billed_cost_micros"))
    );
}

/// One provider call the fixture makes, and what its record must say.
#[derive(Debug, Clone)]
struct Call {
    provider: &'static str,
    model: &'static str,
    agent: String,
    api_key: String,
    workflow: Option<String>,
    failed: bool,
    input: i64,
    output: i64,
    base: i64,
    billed: i64,
    /// The record's `created_at`, once it is known.
    created_at: String,
}

/// An organisation with known usage: agent calls with scripted token
/// counts by two keys on two providers, a failed call and a workflow run;
/// and a second organisation with usage of its own.
struct Fixture {
    org: Org,
    calls: Vec<Call>,
    agent_runs: Vec<Value>,
    workflow: String,
    run: Value,
    /// Bounds around everything the fixture made.
    from: String,
    to: String,
    other: Org,
    other_records: Vec<Value>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build_fixture)
}

fn build_fixture() -> Fixture {
    let _turn = fake_turn();
    let target = shared();
    let from = rfc3339(Utc::now() - Duration::from_secs(60));
    let org = target.create_org("usage-reports");
    let keys = get(target, &org.owner_key, "/api/v1/api-keys");
    let owner_id = keys["data"][0]["id"].as_str().unwrap().to_string();
    let (member_id, member) = target.create_key(&org.owner_key, "member");
    let writer = target.create(
        &org,
        "/api/v1/agents",
        &json!({"name": "Writer", "model_config": {"provider": "openai", "model": OPENAI_MODEL}}),
    );
    let critic = target.create(
        &org,
        "/api/v1/agents",
        &json!({"name": "Critic", "model_config": {"provider": "anthropic", "model": ANTHROPIC_MODEL}}),
    );
    let call = |agent: &str, key: &str, (input, output), (base, billed), failed: bool| {
        let (provider, model) = if agent == critic {
            ("anthropic", ANTHROPIC_MODEL)
        } else {
            ("openai", OPENAI_MODEL)
        };
        Call {
            provider,
            model,
            agent: agent.to_string(),
            api_key: key.to_string(),
            workflow: None,
            failed,
            input,
            output,
            base,
            billed,
            created_at: String::new(),
        }
    };
    let mut calls = vec![
        // 1000 × 0.15 + 200 × 0.60 = 150 + 120 = 270 µ$; × 1.2 = 324.
        call(&writer, &owner_id, (1000, 200), (270, 324), false),
        // A refused call is recorded, and costs nothing.
        call(&writer, &owner_id, (0, 0), (0, 0), true),
        // 500 × 0.15 + 100 × 0.60 = 75 + 60 = 135 µ$; × 1.2 = 162.
        call(&writer, &member_id, (500, 100), (135, 162), false),
        // claude-sonnet-4: 300 × 3 + 50 × 15 = 900 + 750 = 1650 µ$; × 1.2 = 1980.
        call(&critic, &member_id, (300, 50), (1650, 1980), false),
    ];
    let mut agent_runs = Vec::new();
    for (i, token) in [&org.owner_key, &org.owner_key, &member, &member]
        .into_iter()
        .enumerate()
    {
        let reply = if calls[i].failed {
            Reply::error(400, "scripted refusal")
        } else {
            Reply::text("ok").tokens(calls[i].input as u64, calls[i].output as u64)
        };
        fake_llm().push(reply);
        let run = execute(target, token, &calls[i].agent);
        let expected = if calls[i].failed {
            "failed"
        } else {
            "completed"
        };
        assert_eq!(run["status"], expected, "{run}");
        agent_runs.push(run);
    }
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "Report",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {}},
                {"id": "draft", "type": "agent", "config": {"agent_id": writer, "prompt": "Draft"}},
                {"id": "done", "type": "output", "config": {"value": "{{ previous_output }}"}}
            ],
            "edges": [{"source": "start", "target": "draft"}, {"source": "draft", "target": "done"}]
        }),
    );
    fake_llm().push(Reply::text("drafted").tokens(200, 40));
    let id = target.start_run(&org, &workflow, json!({}));
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "completed", "{run}");
    // 200 × 0.15 + 40 × 0.60 = 30 + 24 = 54 µ$; × 1.2 = 64.8 → 65.
    let mut in_workflow = call(&writer, &owner_id, (200, 40), (54, 65), false);
    in_workflow.workflow = Some(workflow.clone());
    calls.push(in_workflow);

    let other = target.create_org("usage-reports-other");
    let stranger = target.create_agent(&other);
    fake_llm().push(Reply::text("theirs").tokens(777, 77));
    execute(target, &other.owner_key, &stranger);
    let to = rfc3339(Utc::now() + Duration::from_secs(60));
    let range = format!("from={from}&to={to}");
    let other_records = all_records(target, &other.owner_key, &range);
    assert_eq!(other_records.len(), 1);

    // Each call's record, found by what makes it unique here.
    let records = all_records(target, &org.owner_key, &range);
    assert_eq!(records.len(), calls.len(), "{records:#?}");
    for call in &mut calls {
        let status = if call.failed { "failed" } else { "succeeded" };
        let record = records
            .iter()
            .find(|r| r["status"] == status && r["input_tokens"] == call.input)
            .unwrap_or_else(|| panic!("no record of {call:?} in {records:#?}"));
        call.created_at = record["created_at"].as_str().unwrap().to_string();
    }
    Fixture {
        org,
        calls,
        agent_runs,
        workflow,
        run,
        from,
        to,
        other,
        other_records,
    }
}

impl Fixture {
    fn range(&self) -> String {
        format!("from={}&to={}", self.from, self.to)
    }

    fn summary(&self, query: &str) -> Value {
        get(
            shared(),
            &self.org.owner_key,
            &format!("/api/v1/usage/summary?{}&{query}", self.range()),
        )
    }
}

/// What a call contributes to the group `name`.
fn key_of(call: &Call, name: &str) -> Value {
    let day = || call.created_at[..10].to_string();
    match name {
        "model" => json!(call.model),
        "provider" => json!(call.provider),
        "agent" => json!(call.agent),
        "workflow" => json!(call.workflow),
        "api_key" => json!(call.api_key),
        "day" => json!(day()),
        "month" => json!(call.created_at[..7]),
        "week" => {
            let date = chrono::NaiveDate::parse_from_str(&day(), "%Y-%m-%d").unwrap();
            let week = date.iso_week();
            json!(format!("{:04}-W{:02}", week.year(), week.week()))
        }
        other => panic!("no group {other}"),
    }
}

/// `[calls, failed_calls, input, output, total, base, billed]` per key, from the calls.
fn expected_groups(calls: &[Call], names: &[&str]) -> BTreeMap<String, [i64; 7]> {
    let mut groups: BTreeMap<String, [i64; 7]> = BTreeMap::new();
    for call in calls {
        let key: Vec<Value> = names.iter().map(|n| key_of(call, n)).collect();
        let sums = groups.entry(Value::from(key).to_string()).or_default();
        let add = [
            1,
            i64::from(call.failed),
            call.input,
            call.output,
            call.input + call.output,
            call.base,
            call.billed,
        ];
        for (sum, value) in sums.iter_mut().zip(add) {
            *sum += value;
        }
    }
    groups
}

/// The same from the summary's `groups`.
fn reported_groups(summary: &Value, names: &[&str]) -> BTreeMap<String, [i64; 7]> {
    let fields = [
        "calls",
        "failed_calls",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "base_cost_micros",
        "billed_cost_micros",
    ];
    summary["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|group| {
            assert_eq!(
                group["billed_cost"],
                dollars(group["billed_cost_micros"].as_i64().unwrap())
            );
            assert_eq!(
                group["base_cost"],
                dollars(group["base_cost_micros"].as_i64().unwrap())
            );
            let key: Vec<Value> = names.iter().map(|n| group["key"][n].clone()).collect();
            assert_eq!(group["key"].as_object().unwrap().len(), names.len());
            let sums = fields.map(|f| group[f].as_i64().unwrap());
            (Value::from(key).to_string(), sums)
        })
        .collect()
}

#[test]
fn the_summary_groups_by_each_dimension_and_period_with_exact_numbers() {
    let fx = fixture();
    // The numbers the calls were scripted with, written out once.
    let by_model = fx.summary("group_by=model");
    let groups = by_model["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{by_model}");
    // Sorted by key: claude before gpt.
    assert_eq!(groups[0]["key"], json!({"model": ANTHROPIC_MODEL}));
    assert_eq!(groups[0]["calls"], 1);
    assert_eq!(groups[0]["input_tokens"], 300);
    assert_eq!(groups[0]["output_tokens"], 50);
    assert_eq!(groups[0]["base_cost_micros"], 1650);
    assert_eq!(groups[0]["billed_cost_micros"], 1980);
    assert_eq!(groups[1]["key"], json!({"model": OPENAI_MODEL}));
    assert_eq!(groups[1]["calls"], 4);
    assert_eq!(groups[1]["failed_calls"], 1);
    assert_eq!(groups[1]["input_tokens"], 1700);
    assert_eq!(groups[1]["output_tokens"], 340);
    assert_eq!(groups[1]["total_tokens"], 2040);
    assert_eq!(groups[1]["base_cost_micros"], 270 + 135 + 54);
    assert_eq!(groups[1]["billed_cost_micros"], 324 + 162 + 65);
    let totals = &by_model["totals"];
    assert_eq!(totals["calls"], 5);
    assert_eq!(totals["failed_calls"], 1);
    // 324 + 162 + 1980 + 65 = 2531 µ$.
    assert_eq!(totals["base_cost_micros"], 2109);
    assert_eq!(totals["billed_cost_micros"], 2531);
    assert_eq!(totals["billed_cost"], "0.002531");
    assert_eq!(by_model["group_by"], json!(["model"]));
    assert_eq!(by_model["from"], fx.from);
    assert_eq!(by_model["to"], fx.to);

    let api_keys = fx.summary("group_by=api_key");
    let per_key: Vec<i64> = api_keys["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["calls"].as_i64().unwrap())
        .collect();
    assert_eq!(
        per_key.iter().sum::<i64>(),
        5,
        "the owner's three calls (one in the run it started), the member's two"
    );
    let workflows = fx.summary("group_by=workflow");
    let direct = workflows["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["key"]["workflow"].is_null())
        .expect("calls outside any workflow have a null key");
    assert_eq!(direct["calls"], 4);

    for group_by in [
        "model",
        "provider",
        "agent",
        "workflow",
        "api_key",
        "day",
        "week",
        "month",
        "model,day",
        "day,agent,provider",
    ] {
        let names: Vec<&str> = group_by.split(',').collect();
        let summary = fx.summary(&format!("group_by={group_by}"));
        assert_eq!(summary["group_by"], json!(names));
        assert_eq!(
            reported_groups(&summary, &names),
            expected_groups(&fx.calls, &names),
            "group_by={group_by}: {summary}"
        );
        assert_eq!(&summary["totals"], totals, "group_by={group_by}");
        let keys: Vec<String> = summary["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["key"].to_string())
            .collect();
        assert_eq!(
            keys.iter().collect::<BTreeSet<_>>().len(),
            keys.len(),
            "each key once"
        );
    }
    // No group_by: one group of everything.
    let all = fx.summary("");
    assert_eq!(all["groups"].as_array().unwrap().len(), 1);
    assert_eq!(all["groups"][0]["key"], json!({}));
    assert_eq!(all["groups"][0]["calls"], 5);
}

#[test]
fn the_summary_of_a_range_equals_the_sum_of_its_records() {
    let fx = fixture();
    let target = shared();
    let token = &fx.org.owner_key;
    let whole = all_records(target, token, &fx.range());
    assert_totals_are_the_records(&fx.summary("")["totals"], &whole);
    // Split at a record's own time: that record falls in the second half,
    // as [from, to) says, and the halves add up to the whole.
    let mut times: Vec<&str> = fx.calls.iter().map(|c| c.created_at.as_str()).collect();
    times.sort();
    let middle = times[times.len() / 2];
    let mut counted = 0;
    for (from, to) in [(fx.from.as_str(), middle), (middle, fx.to.as_str())] {
        let range = format!("from={from}&to={to}");
        let records = all_records(target, token, &range);
        assert!(records.iter().all(|r| {
            let at = r["created_at"].as_str().unwrap();
            from <= at && at < to
        }));
        let summary = get(target, token, &format!("/api/v1/usage/summary?{range}"));
        assert_totals_are_the_records(&summary["totals"], &records);
        counted += records.len();
    }
    assert_eq!(counted, whole.len());
    assert!(
        all_records(target, token, &format!("from={middle}&to={}", fx.to))
            .iter()
            .any(|r| r["created_at"] == middle)
    );
    // Filters narrow the summary and the records alike.
    for filter in [
        format!("agent_id={}", fx.calls[0].agent),
        format!("workflow_id={}", fx.workflow),
        "provider=anthropic".to_string(),
        format!("model={OPENAI_MODEL}"),
        "status=failed".to_string(),
    ] {
        let query = format!("{}&{filter}", fx.range());
        let records = all_records(target, token, &query);
        assert!(!records.is_empty(), "{filter}");
        let summary = get(target, token, &format!("/api/v1/usage/summary?{query}"));
        assert_totals_are_the_records(&summary["totals"], &records);
    }
}

#[test]
fn an_executions_cost_equals_the_sum_of_its_usage_records() {
    let fx = fixture();
    let target = shared();
    let token = &fx.org.owner_key;
    let run_id = fx.run["id"].as_str().unwrap();
    let records = all_records(
        target,
        token,
        &format!("{}&execution_id={run_id}", fx.range()),
    );
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["workflow_id"], fx.workflow.as_str());
    let shown = target.execution(&fx.org, run_id);
    assert_eq!(
        shown["cost"]["billed_micros"],
        sum(&records, "billed_cost_micros")
    );
    assert_eq!(
        shown["cost"]["base_micros"],
        sum(&records, "base_cost_micros")
    );
    assert_eq!(
        shown["usage"]["input_tokens"],
        sum(&records, "input_tokens")
    );
    assert_eq!(
        shown["usage"]["output_tokens"],
        sum(&records, "output_tokens")
    );
    for run in &fx.agent_runs {
        let id = run["id"].as_str().unwrap();
        let records = all_records(
            target,
            token,
            &format!("{}&agent_execution_id={id}", fx.range()),
        );
        assert_eq!(records.len(), 1, "one provider call per run here");
        assert_eq!(
            run["cost"]["billed_micros"],
            sum(&records, "billed_cost_micros")
        );
        assert_eq!(
            run["cost"]["base_micros"],
            sum(&records, "base_cost_micros")
        );
        assert_eq!(run["usage"]["input_tokens"], sum(&records, "input_tokens"));
    }
}

/// Splits RFC 4180 CSV into rows of fields (quoted fields may hold commas,
/// doubled quotes and line breaks).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let (mut row, mut field) = (Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => assert_eq!(chars.next(), Some('\n'), "CRLF line ends"),
            (false, '\n') => panic!("a bare LF ends a line"),
            (false, c) => field.push(c),
        }
        if !quoted && c == '\r' {
            row.push(std::mem::take(&mut field));
            rows.push(std::mem::take(&mut row));
        }
    }
    assert!(
        row.is_empty() && field.is_empty(),
        "the last line ends with CRLF"
    );
    rows
}

#[test]
fn records_as_csv_have_a_header_and_one_row_per_record() {
    let fx = fixture();
    let target = shared();
    let authorization = format!("Bearer {}", fx.org.owner_key);
    let reply = target.request(
        "GET",
        &format!("/api/v1/usage/records?{}", fx.range()),
        &[("authorization", &authorization), ("accept", "text/csv")],
        None,
    );
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("text/csv; charset=utf-8")
    );
    let rows = parse_csv(std::str::from_utf8(&reply.body).unwrap());
    let records = all_records(target, &fx.org.owner_key, &fx.range());
    let header = &rows[0];
    assert_eq!(
        header[..6],
        [
            "id",
            "created_at",
            "provider",
            "model",
            "status",
            "error_code"
        ]
    );
    assert!(header.contains(&"billed_cost_micros".to_string()));
    assert!(header.contains(&"billed_cost".to_string()));
    assert_eq!(rows.len(), records.len() + 1);
    // Each row is the JSON record, field by field and in the same order.
    for (row, record) in rows[1..].iter().zip(&records) {
        assert_eq!(row.len(), header.len());
        for (name, value) in header.iter().zip(row) {
            let expected = match &record[name] {
                Value::Null => String::new(),
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            assert_eq!(value, &expected, "{name} of {record}");
        }
    }
    let failed: Vec<&Vec<String>> = rows[1..].iter().filter(|r| r[4] == "failed").collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0][5], "provider_rejected");
    // Filters apply to the export too.
    let reply = target.request(
        "GET",
        &format!("/api/v1/usage/records?{}&provider=anthropic", fx.range()),
        &[("authorization", &authorization), ("accept", "text/csv")],
        None,
    );
    let rows = parse_csv(std::str::from_utf8(&reply.body).unwrap());
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1][3], ANTHROPIC_MODEL);
    // After a page's cursor, the export holds every later record; `limit`
    // does not apply to it.
    let first = get(
        target,
        &fx.org.owner_key,
        &format!("/api/v1/usage/records?{}&limit=2", fx.range()),
    );
    let cursor = first["next_cursor"].as_str().expect("more than one page");
    let reply = target.request(
        "GET",
        &format!(
            "/api/v1/usage/records?{}&limit=1&cursor={cursor}",
            fx.range()
        ),
        &[("authorization", &authorization), ("accept", "text/csv")],
        None,
    );
    assert_eq!(reply.status, 200);
    let rows = parse_csv(std::str::from_utf8(&reply.body).unwrap());
    let ids: Vec<&str> = rows[1..].iter().map(|r| r[0].as_str()).collect();
    let later: Vec<&str> = records[2..]
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, later);
}

#[test]
fn cursor_pagination_visits_every_record_once_in_order() {
    let fx = fixture();
    let target = shared();
    let token = &fx.org.owner_key;
    let all = all_records(target, token, &fx.range());
    let mut seen = Vec::new();
    let mut path = format!("/api/v1/usage/records?{}&limit=2", fx.range());
    let mut pages = 0;
    loop {
        let page = get(target, token, &path);
        assert_eq!(page["limit"], 2);
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 2 && !data.is_empty());
        seen.extend(data.iter().map(|r| r["id"].as_str().unwrap().to_string()));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                path = format!(
                    "/api/v1/usage/records?{}&limit=2&cursor={cursor}",
                    fx.range()
                )
            }
            None => break,
        }
    }
    assert_eq!(pages, all.len().div_ceil(2));
    let expected: Vec<&str> = all.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(seen, expected);
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), seen.len());
    let times: Vec<(&str, &str)> = all
        .iter()
        .map(|r| (r["created_at"].as_str().unwrap(), r["id"].as_str().unwrap()))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "ordered by (created_at, id)"
    );
    for bad in ["cursor=not-a-cursor", "limit=0", "limit=1001", "status=ok"] {
        let reply = target.call(
            "GET",
            &format!("/api/v1/usage/records?{bad}"),
            Some(token),
            None,
        );
        reply.assert_error(400, "bad_request");
    }
}

#[test]
fn another_organisations_usage_never_appears() {
    let fx = fixture();
    let target = shared();
    let ours = all_records(target, &fx.org.owner_key, &fx.range());
    let theirs = &fx.other_records[0];
    assert_eq!(theirs["input_tokens"], 777);
    assert!(ours.iter().all(|r| r["id"] != theirs["id"]));
    assert!(ours.iter().all(|r| r["input_tokens"] != 777));
    assert_eq!(fx.summary("")["totals"]["calls"], 5);
    // Their view: only their own call, whatever they filter on.
    let token = &fx.other.owner_key;
    let summary = get(
        target,
        token,
        &format!("/api/v1/usage/summary?{}&group_by=agent", fx.range()),
    );
    assert_eq!(summary["totals"]["calls"], 1);
    assert_eq!(summary["totals"]["input_tokens"], 777);
    let run = fx.run["id"].as_str().unwrap();
    for filter in [
        format!("execution_id={run}"),
        format!("workflow_id={}", fx.workflow),
        format!("agent_id={}", fx.calls[0].agent),
    ] {
        let query = format!("{}&{filter}", fx.range());
        assert!(all_records(target, token, &query).is_empty(), "{filter}");
        let summary = get(target, token, &format!("/api/v1/usage/summary?{query}"));
        assert_eq!(summary["totals"]["calls"], 0);
        assert_eq!(summary["groups"], json!([]));
    }
    let authorization = format!("Bearer {token}");
    let csv = target.request(
        "GET",
        &format!("/api/v1/usage/records?{}", fx.range()),
        &[("authorization", &authorization), ("accept", "text/csv")],
        None,
    );
    assert_eq!(parse_csv(std::str::from_utf8(&csv.body).unwrap()).len(), 2);
    target
        .call(
            "GET",
            &format!("/api/v1/usage/workflows/{}/costs", fx.workflow),
            Some(token),
            None,
        )
        .assert_error(404, "not_found");
}

#[test]
fn bad_ranges_and_unknown_groups_are_400_and_change_nothing() {
    let fx = fixture();
    let target = shared();
    let token = &fx.org.owner_key;
    let before = fx.summary("group_by=model");
    let cases = [
        ("from=2026-01-02&to=2026-01-02", "query.to"),
        ("from=2026-01-03&to=2026-01-02", "query.to"),
        (
            "from=2026-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            "query.to",
        ),
        ("from=2024-01-01&to=2025-02-05", "query.from"),
        ("from=yesterday", "query.from"),
        ("to=2026-02-30", "query.to"),
        ("from=2026-01-01T25:00:00Z", "query.from"),
    ];
    let costs = format!("/api/v1/usage/workflows/{}/costs", fx.workflow);
    for path in ["/api/v1/usage/summary", "/api/v1/usage/records", &costs] {
        for (query, field) in cases {
            let reply = target.call("GET", &format!("{path}?{query}"), Some(token), None);
            reply.assert_error(400, "bad_request");
            let details = reply.json()["error"]["details"].clone();
            assert_eq!(details[0]["path"], field, "{path}?{query}: {details}");
        }
    }
    // The longest range is fine: 400 days.
    get(
        target,
        token,
        "/api/v1/usage/summary?from=2024-01-01&to=2025-02-04",
    );
    for (group_by, named) in [
        ("colour", "colour"),
        ("model,hour", "hour"),
        ("day,week", "week"),
        ("model,model", "model"),
    ] {
        let reply = target.call(
            "GET",
            &format!("/api/v1/usage/summary?group_by={group_by}"),
            Some(token),
            None,
        );
        reply.assert_error(400, "bad_request");
        let body = reply.json();
        assert_eq!(body["error"]["details"][0]["path"], "query.group_by");
        let problem = body["error"]["details"][0]["problem"].as_str().unwrap();
        assert!(problem.contains(named), "{group_by}: {problem}");
    }
    assert_eq!(fx.summary("group_by=model"), before);
    assert_eq!(all_records(target, token, &fx.range()).len(), 5);
}

#[test]
fn a_viewer_reads_reports_and_no_credential_reads_nothing() {
    let fx = fixture();
    let target = shared();
    let (_, viewer) = target.create_key(&fx.org.owner_key, "viewer");
    let summary = get(
        target,
        &viewer,
        &format!("/api/v1/usage/summary?{}", fx.range()),
    );
    assert_eq!(summary["totals"]["calls"], 5);
    assert_eq!(all_records(target, &viewer, &fx.range()).len(), 5);
    get(
        target,
        &viewer,
        &format!("/api/v1/usage/workflows/{}/costs", fx.workflow),
    );
    for path in [
        "/api/v1/usage/summary".to_string(),
        "/api/v1/usage/records".to_string(),
        format!("/api/v1/usage/workflows/{}/costs", fx.workflow),
    ] {
        target
            .call("GET", &path, None, None)
            .assert_error(401, "unauthenticated");
    }
}

/// Nearest rank: the value at rank ceil(p/100 × n) of the sorted values.
fn nearest_rank(sorted: &[i64], p: usize) -> i64 {
    sorted[(sorted.len() * p).div_ceil(100).max(1) - 1]
}

fn mean(values: &[i64]) -> i64 {
    let n = values.len() as i64;
    (2 * values.iter().sum::<i64>() + n).div_euclid(2 * n)
}

fn assert_stats(stats: &Value, values: &[i64]) {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    assert_eq!(stats["total_micros"], sorted.iter().sum::<i64>(), "{stats}");
    assert_eq!(stats["mean_micros"], mean(&sorted), "{stats}");
    assert_eq!(stats["p50_micros"], nearest_rank(&sorted, 50), "{stats}");
    assert_eq!(stats["p95_micros"], nearest_rank(&sorted, 95), "{stats}");
    assert_eq!(stats["max_micros"], *sorted.last().unwrap(), "{stats}");
    assert_eq!(stats["mean"], dollars(mean(&sorted)));
}

/// `null` is a group key like any other: a call made with a token has no API key.
#[test]
fn a_call_made_with_a_token_is_grouped_under_a_null_api_key() {
    let _turn = fake_turn();
    let target = shared();
    let from = rfc3339(Utc::now() - Duration::from_secs(60));
    let org = target.create_org("usage-token");
    let agent = target.create_agent(&org);
    let minted = target.call("POST", "/api/v1/auth/token", Some(&org.owner_key), None);
    assert_eq!(
        minted.status,
        200,
        "{}",
        String::from_utf8_lossy(&minted.body)
    );
    let token = minted.json()["access_token"].as_str().unwrap().to_string();
    // 100 × 0.15 + 10 × 0.60 = 21 µ$ → 25.2 → 25 billed, with the key;
    // 1000 × 0.15 + 100 × 0.60 = 210 µ$ → 252 billed, with the token.
    fake_llm().push(Reply::text("keyed").tokens(100, 10));
    execute(target, &org.owner_key, &agent);
    fake_llm().push(Reply::text("token").tokens(1000, 100));
    execute(target, &token, &agent);
    let to = rfc3339(Utc::now() + Duration::from_secs(60));
    let summary = get(
        target,
        &org.owner_key,
        &format!("/api/v1/usage/summary?from={from}&to={to}&group_by=api_key"),
    );
    let groups: Vec<(Value, i64, i64)> = summary["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["key"]["api_key"].clone(),
                g["calls"].as_i64().unwrap(),
                g["billed_cost_micros"].as_i64().unwrap(),
            )
        })
        .collect();
    let keyed = groups
        .iter()
        .find(|(key, ..)| key.is_string())
        .unwrap_or_else(|| panic!("no keyed group: {summary}"));
    assert_eq!((keyed.1, keyed.2), (1, 25), "{summary}");
    assert!(
        groups.contains(&(Value::Null, 1, 252)),
        "the token's call under null: {summary}"
    );
    assert_eq!(groups.len(), 2, "{summary}");
}

/// A node's cost in a run is the sum of its steps there: every iteration of
/// a loop's body.
#[test]
fn a_loop_bodys_node_costs_the_sum_of_its_iterations() {
    let _turn = fake_turn();
    let target = shared();
    let from = rfc3339(Utc::now() - Duration::from_secs(60));
    let org = target.create_org("usage-loop-costs");
    let agent = target.create_agent(&org);
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "Per item",
            "nodes": [
                {"id": "start", "type": "trigger"},
                {"id": "each", "type": "loop", "config": {"items": "trigger.items", "body": {"nodes": [
                    {"id": "ask", "type": "agent", "config": {"agent_id": agent, "prompt": "{{ item }}"}}
                ], "edges": []}}}
            ],
            "edges": [{"source": "start", "target": "each"}]
        }),
    );
    // Billed 25, 252 and 83 µ$ (100/10, 1000/100, 300/40 tokens at
    // $0.15/M and $0.60/M, × 1.2, half up).
    for (input, output) in [(100, 10), (1000, 100), (300, 40)] {
        fake_llm().push(Reply::text("ok").tokens(input, output));
    }
    let id = target.start_run(&org, &workflow, json!({"items": ["a", "b", "c"]}));
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "completed", "{run}");
    let to = rfc3339(Utc::now() + Duration::from_secs(60));
    let costs = get(
        target,
        &org.owner_key,
        &format!("/api/v1/usage/workflows/{workflow}/costs?from={from}&to={to}"),
    );
    let ask = costs["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == "ask")
        .unwrap_or_else(|| panic!("no node ask in {costs}"));
    assert_eq!(ask["runs"], 1, "{costs}");
    assert_eq!(ask["cost"]["total_micros"], 25 + 252 + 83, "{costs}");
    assert_eq!(ask["input_tokens"], 1400);
    assert_eq!(costs["runs"]["cost"]["total_micros"], 360);
}

#[test]
fn workflow_costs_give_per_run_and_per_node_statistics() {
    let _turn = fake_turn();
    let target = shared();
    let from = rfc3339(Utc::now() - Duration::from_secs(60));
    let org = target.create_org("workflow-costs");
    let writer = target.create_agent(&org);
    let critic = target.create(
        &org,
        "/api/v1/agents",
        &json!({"name": "Critic", "model_config": {"provider": "anthropic", "model": ANTHROPIC_MODEL}}),
    );
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "Draft and review",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {}},
                {"id": "draft", "type": "agent", "config": {"agent_id": writer, "prompt": "Draft"}},
                {"id": "review", "type": "agent", "config": {"agent_id": critic, "prompt": "Review {{ steps.draft.output }}"}},
                {"id": "done", "type": "output", "config": {"value": "{{ previous_output }}"}}
            ],
            "edges": [
                {"source": "start", "target": "draft"},
                {"source": "draft", "target": "review"},
                {"source": "review", "target": "done"}
            ]
        }),
    );
    // Three runs with different token counts, then one whose draft fails.
    // Each is (draft tokens, draft billed µ$, review tokens, review billed µ$).
    let scripted = [
        // 100 × 0.15 + 10 × 0.60 = 21 µ$ → 25.2 → 25; 200 × 3 + 20 × 15 = 900 → 1080.
        ((100, 10), 25, (200, 20), 1080),
        // 400 × 0.15 + 40 × 0.60 = 84 µ$ → 100.8 → 101; 100 × 3 + 10 × 15 = 450 → 540.
        ((400, 40), 101, (100, 10), 540),
        // 1000 × 0.15 + 100 × 0.60 = 210 µ$ → 252; 50 × 3 + 5 × 15 = 225 → 270.
        ((1000, 100), 252, (50, 5), 270),
    ];
    let (mut drafts, mut reviews, mut runs) = (Vec::new(), Vec::new(), Vec::new());
    let mut run_ids = Vec::new();
    for ((draft_in, draft_out), draft, (review_in, review_out), review) in scripted {
        fake_llm().push_for_model(
            OPENAI_MODEL,
            Reply::text("draft").tokens(draft_in, draft_out),
        );
        fake_llm().push_for_model(
            ANTHROPIC_MODEL,
            Reply::text("fine").tokens(review_in, review_out),
        );
        let id = target.start_run(&org, &workflow, json!({}));
        let run = target.finished(&org, &id);
        assert_eq!(run["status"], "completed", "{run}");
        assert_eq!(run["cost"]["billed_micros"], draft + review);
        drafts.push(draft);
        reviews.push(review);
        runs.push(draft + review);
        run_ids.push(id);
    }
    fake_llm().push_for_model(OPENAI_MODEL, Reply::error(400, "scripted refusal"));
    let id = target.start_run(&org, &workflow, json!({}));
    assert_eq!(target.finished(&org, &id)["status"], "failed");
    drafts.push(0);
    runs.push(0);
    run_ids.push(id);
    let to = rfc3339(Utc::now() + Duration::from_secs(60));

    let costs = get(
        target,
        &org.owner_key,
        &format!("/api/v1/usage/workflows/{workflow}/costs?from={from}&to={to}"),
    );
    assert_eq!(costs["workflow_id"], workflow.as_str());
    assert_eq!(costs["runs"]["count"], 4);
    assert_eq!(
        costs["runs"]["by_status"],
        json!({"completed": 3, "failed": 1, "cancelled": 0})
    );
    assert_stats(&costs["runs"]["cost"], &runs);
    assert_eq!(
        costs["runs"]["input_tokens"],
        100 + 200 + 400 + 100 + 1000 + 50
    );
    assert_eq!(costs["runs"]["output_tokens"], 10 + 20 + 40 + 10 + 100 + 5);
    let node = |id: &str| {
        costs["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == id)
            .unwrap_or_else(|| panic!("no node {id} in {costs}"))
            .clone()
    };
    let draft = node("draft");
    assert_eq!(draft["runs"], 4, "the failed draft ran too");
    assert_stats(&draft["cost"], &drafts);
    assert_eq!(draft["input_tokens"], 1500);
    let review = node("review");
    assert_eq!(review["runs"], 3, "review never ran in the failed run");
    assert_stats(&review["cost"], &reviews);
    assert_eq!(review["output_tokens"], 35);
    // The most expensive node comes first.
    let totals: Vec<i64> = costs["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["cost"]["total_micros"].as_i64().unwrap())
        .collect();
    assert!(totals.windows(2).all(|w| w[0] >= w[1]), "{totals:?}");
    // The nodes add up to the runs, and each run to its usage records.
    assert_eq!(totals.iter().sum::<i64>(), runs.iter().sum::<i64>());
    for (id, billed) in run_ids.iter().zip(&runs) {
        let records = all_records(
            target,
            &org.owner_key,
            &format!("from={from}&to={to}&execution_id={id}"),
        );
        assert_eq!(sum(&records, "billed_cost_micros"), *billed);
    }
    // A range before the runs holds none of them.
    let empty = get(
        target,
        &org.owner_key,
        &format!("/api/v1/usage/workflows/{workflow}/costs?to={from}"),
    );
    assert_eq!(empty["runs"]["count"], 0);
    assert_eq!(empty["runs"]["cost"]["max_micros"], 0);
    assert_eq!(empty["nodes"], json!([]));
    // A deleted workflow's costs stay readable, unchanged.
    let path = format!("/api/v1/usage/workflows/{workflow}/costs?from={from}&to={to}");
    let deleted = target.call(
        "DELETE",
        &format!("/api/v1/workflows/{workflow}"),
        Some(&org.owner_key),
        None,
    );
    assert_eq!(deleted.status, 204);
    assert_eq!(get(target, &org.owner_key, &path), costs);
    // Unknown ids are 404.
    target
        .call(
            "GET",
            "/api/v1/usage/workflows/no-such-workflow/costs",
            Some(&org.owner_key),
            None,
        )
        .assert_error(404, "not_found");
}
