//! The organisation's activity log over HTTP (`GET
//! /api/v1/orgs/current/activity`): its order, its pages, who may read it,
//! whose entries it holds, and which agent runs are in it.

use fake_llm::Reply;
use serde_json::{Value, json};
use spindle_suite::{
    Org, Reply as Answer, Target, fake_llm, fake_turn, now_ms, shared, timestamp_ms,
};
use std::time::{Duration, Instant};

const ACTIVITY: &str = "/api/v1/orgs/current/activity";

/// `GET /api/v1/orgs/current/activity{query}` with `token`.
fn activity_page(target: &Target, token: &str, query: &str) -> Answer {
    target.call("GET", &format!("{ACTIVITY}{query}"), Some(token), None)
}

/// The whole log of `token`'s organisation in one page of the largest size,
/// which must then be the last page.
fn whole_log(target: &Target, token: &str) -> Vec<Value> {
    let reply = activity_page(target, token, "?limit=200");
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let page = reply.json();
    assert!(
        page["next_before"].is_null(),
        "fewer than 200 entries fit one page: {page}"
    );
    page["data"].as_array().expect("data").clone()
}

fn ids(entries: &[Value]) -> Vec<&str> {
    entries.iter().map(|e| e["id"].as_str().unwrap()).collect()
}

/// `(action, resource_id)` of each entry, in the order listed.
fn actions(entries: &[Value]) -> Vec<(&str, &str)> {
    entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["resource_id"].as_str().unwrap_or(""),
            )
        })
        .collect()
}

/// Returns once this machine's clock, the one the app stamps entries with,
/// has moved past the millisecond it reads now (at most a millisecond of
/// polling). Called after an answer, it makes the next entry strictly newer
/// than every entry before it, so the expected order never hinges on two
/// requests landing in the same millisecond, where "newest first" cannot
/// tell them apart.
fn past_this_millisecond() {
    let now = now_ms();
    let deadline = Instant::now() + Duration::from_secs(1);
    while now_ms() <= now {
        assert!(Instant::now() < deadline, "the clock did not move");
        std::hint::spin_loop();
    }
}

/// Makes `count` keys of `role`, each in a millisecond of its own; returns
/// their ids in the order they were made.
fn make_keys(target: &Target, org: &Org, role: &str, count: usize) -> Vec<String> {
    past_this_millisecond();
    (0..count)
        .map(|_| {
            let (id, _) = target.create_key(&org.owner_key, role);
            past_this_millisecond();
            id
        })
        .collect()
}

#[test]
fn the_activity_log_lists_newest_first_and_pages_with_next_before_without_gaps_or_repeats() {
    let target = shared();
    let org = target.create_org("activity-pages");
    let made = make_keys(target, &org, "viewer", 3);

    let entries = whole_log(target, &org.owner_key);
    // Creating the organisation logged two entries (the organisation and its
    // owner key, in one request); the three keys made after come first, the
    // last made first.
    assert_eq!(entries.len(), 5, "{entries:#?}");
    let listed = actions(&entries);
    assert_eq!(
        listed[..3],
        [
            ("api_key.created", made[2].as_str()),
            ("api_key.created", made[1].as_str()),
            ("api_key.created", made[0].as_str()),
        ],
        "{entries:#?}"
    );
    let mut first_two: Vec<&str> = listed[3..].iter().map(|(action, _)| *action).collect();
    first_two.sort_unstable();
    assert_eq!(
        first_two,
        ["api_key.created", "org.created"],
        "{entries:#?}"
    );
    let org_created = entries
        .iter()
        .find(|e| e["action"] == "org.created")
        .unwrap();
    assert_eq!(org_created["resource_id"], org.id.as_str());
    let times: Vec<i64> = entries
        .iter()
        .map(|e| timestamp_ms(&e["created_at"]))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );

    // One entry a page, each next page `before` the last one's `next_before`,
    // until `next_before` is null: exactly the whole log, in its order.
    let mut paged: Vec<Value> = Vec::new();
    let mut before: Option<String> = None;
    for _ in 0..=entries.len() + 1 {
        let query = match &before {
            Some(id) => format!("?limit=1&before={id}"),
            None => "?limit=1".to_string(),
        };
        let reply = activity_page(target, &org.owner_key, &query);
        assert_eq!(reply.status, 200, "{query}: {}", reply.json());
        let page = reply.json();
        let data = page["data"].as_array().expect("data");
        assert!(data.len() <= 1, "limit=1 gives at most one entry: {page}");
        paged.extend(data.iter().cloned());
        match page["next_before"].as_str() {
            Some(next) => {
                assert_eq!(
                    data.last().map(|e| &e["id"]),
                    Some(&json!(next)),
                    "next_before is the last entry of a page that has one: {page}"
                );
                before = Some(next.to_string());
            }
            None => {
                before = None;
                break;
            }
        }
    }
    assert!(before.is_none(), "next_before never became null");
    assert_eq!(ids(&paged), ids(&entries), "no gap, no repeat, same order");
}

#[test]
fn a_page_without_a_limit_holds_fifty_entries() {
    let target = shared();
    let org = target.create_org("activity-default-page");
    // 2 entries from creating the organisation + 49 keys = 51: one more than a default page.
    make_keys(target, &org, "viewer", 49);
    let entries = whole_log(target, &org.owner_key);
    assert_eq!(entries.len(), 51);

    let first = activity_page(target, &org.owner_key, "").json();
    let data = first["data"].as_array().expect("data");
    assert_eq!(ids(data), ids(&entries[..50]));
    assert_eq!(first["next_before"], entries[49]["id"], "{first}");
    let rest = activity_page(
        target,
        &org.owner_key,
        &format!("?before={}", first["next_before"].as_str().unwrap()),
    )
    .json();
    assert_eq!(ids(rest["data"].as_array().unwrap()), ids(&entries[50..]));
    assert!(rest["next_before"].is_null(), "{rest}");
}

#[test]
fn a_limit_outside_one_to_two_hundred_is_refused() {
    let target = shared();
    let org = target.create_org("activity-limits");
    for limit in ["0", "201", "-1", "ten", "1.5"] {
        let reply = activity_page(target, &org.owner_key, &format!("?limit={limit}"));
        reply.assert_error(400, "bad_request");
    }
    // Both ends of the range are pages: of the organisation's two entries,
    // one fits a page of 1 and both a page of 200.
    for (limit, listed) in [(1, 1), (200, 2)] {
        let reply = activity_page(target, &org.owner_key, &format!("?limit={limit}"));
        assert_eq!(reply.status, 200, "limit={limit}: {}", reply.json());
        assert_eq!(reply.json()["data"].as_array().unwrap().len(), listed);
    }
}

#[test]
fn only_admins_and_owners_read_the_activity_log() {
    let target = shared();
    let org = target.create_org("activity-roles");
    let (_, viewer) = target.create_key(&org.owner_key, "viewer");
    let (_, member) = target.create_key(&org.owner_key, "member");
    let (_, admin) = target.create_key(&org.owner_key, "admin");
    for key in [&viewer, &member] {
        activity_page(target, key, "").assert_error(403, "forbidden");
    }
    let owners = whole_log(target, &org.owner_key);
    assert_eq!(owners.len(), 5, "the org's two entries and three keys");
    assert_eq!(ids(&whole_log(target, &admin)), ids(&owners));
}

#[test]
fn another_organisation_never_sees_these_entries() {
    let target = shared();
    let first = target.create_org("activity-mine");
    make_keys(target, &first, "member", 2);
    let second = target.create_org("activity-theirs");
    make_keys(target, &second, "member", 1);

    let mine = whole_log(target, &first.owner_key);
    let theirs = whole_log(target, &second.owner_key);
    assert_eq!((mine.len(), theirs.len()), (4, 3));
    assert!(
        ids(&theirs).iter().all(|id| !ids(&mine).contains(id)),
        "{mine:#?} {theirs:#?}"
    );
    let org_of = |entries: &[Value]| {
        entries
            .iter()
            .find(|e| e["action"] == "org.created")
            .map(|e| e["resource_id"].clone())
    };
    assert_eq!(org_of(&mine), Some(json!(first.id)));
    assert_eq!(org_of(&theirs), Some(json!(second.id)));
    // Paging from one of the first organisation's entries shows the second
    // nothing of the first's: every entry older than it is the first's.
    let cursor = mine[0]["id"].as_str().unwrap();
    let page = activity_page(
        target,
        &second.owner_key,
        &format!("?limit=200&before={cursor}"),
    )
    .json();
    assert!(
        ids(page["data"].as_array().unwrap())
            .iter()
            .all(|id| ids(&theirs).contains(id)),
        "{page}"
    );
}

fn agent_executed(entries: &[Value]) -> Vec<&Value> {
    entries
        .iter()
        .filter(|e| e["action"] == "agent.executed")
        .collect()
}

#[test]
fn a_direct_agent_run_adds_one_agent_executed_entry_naming_its_execution() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("activity-direct-run");
    let agent = target.create_agent(&org);
    fake_llm().push(Reply::text("done"));
    // So that the run's entry is strictly newer than the agent's creation.
    past_this_millisecond();
    let reply = target.call(
        "POST",
        &format!("/api/v1/agents/{agent}/execute"),
        Some(&org.owner_key),
        Some(&json!({"task": "go"})),
    );
    assert_eq!(reply.status, 200, "{}", reply.json());
    let execution = reply.json();
    assert_eq!(execution["status"], "completed", "{execution}");

    let entries = whole_log(target, &org.owner_key);
    let runs = agent_executed(&entries);
    assert_eq!(runs.len(), 1, "{entries:#?}");
    assert_eq!(runs[0]["resource_id"], execution["id"], "{:#?}", runs[0]);
    // The run is the newest thing the organisation did.
    assert_eq!(entries[0]["id"], runs[0]["id"]);
}

#[test]
fn a_workflows_agent_step_adds_no_agent_executed_entry_and_is_in_its_runs_logs() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("activity-workflow-run");
    let agent = target.create_agent(&org);
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({"name": "One agent", "nodes": [
            {"id": "start", "type": "trigger"},
            {"id": "draft", "type": "agent", "config": {"agent_id": agent, "prompt": "Write"}},
            {"id": "done", "type": "output", "config": {"value": "{{ previous_output }}"}}
        ], "edges": [
            {"source": "start", "target": "draft"},
            {"source": "draft", "target": "done"}
        ]}),
    );
    fake_llm().push(Reply::text("drafted"));
    let id = target.start_run(&org, &workflow, json!({}));
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "completed", "{run}");
    // The agent really ran, in the step.
    assert_eq!(run["output"], "drafted", "{run}");
    assert_eq!(fake_llm().received().len(), 1);

    let entries = whole_log(target, &org.owner_key);
    assert!(agent_executed(&entries).is_empty(), "{entries:#?}");
    // It is in the run's logs instead.
    let logs = target
        .call(
            "GET",
            &format!("/api/v1/executions/{id}/logs?limit=1000"),
            Some(&org.owner_key),
            None,
        )
        .json();
    assert!(
        logs["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "step.completed" && e["node_id"] == "draft"),
        "{logs}"
    );
}
