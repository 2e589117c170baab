//! Workflow definitions over HTTP: CRUD, versions, validation, bulk delete,
//! templates, export/import, tenancy and limits.

use serde_json::{Value, json};
use spindle_suite::{Org, Reply, Target, now_ms, shared, timestamp_ms};
use std::time::{Duration, Instant};

/// A small valid graph: trigger → agent → condition → (transform | output) → output.
fn graph(agent: &str) -> Value {
    json!({
        "name": "Lead flow",
        "description": "scores leads",
        "variables": {"threshold": 70},
        "nodes": [
            {"id": "start", "type": "trigger", "config": {}},
            {"id": "score", "type": "agent", "config": {"agent_id": agent, "prompt": "Score {{ trigger.lead }}"}},
            {"id": "check", "type": "condition", "config": {"expression": "steps.score.output.score >= variables.threshold"}},
            {"id": "hot", "type": "transform", "config": {"template": {"tier": "hot"}}},
            {"id": "cold", "type": "transform", "config": {"template": {"tier": "cold"}}},
            {"id": "done", "type": "output", "config": {"value": "{{ previous_output }}"}}
        ],
        "edges": [
            {"source": "start", "target": "score"},
            {"source": "score", "target": "check"},
            {"source": "check", "target": "hot", "source_handle": "true"},
            {"source": "check", "target": "cold", "source_handle": "false"},
            {"source": "hot", "target": "done"},
            {"source": "cold", "target": "done"}
        ]
    })
}

fn create(target: &Target, org: &Org, body: &Value) -> Reply {
    target.call(
        "POST",
        "/api/v1/workflows",
        Some(&org.owner_key),
        Some(body),
    )
}

fn count(target: &Target, org: &Org) -> u64 {
    target
        .call("GET", "/api/v1/workflows", Some(&org.owner_key), None)
        .json()["total"]
        .as_u64()
        .unwrap()
}

fn paths(reply: &Reply) -> Vec<String> {
    reply.json()["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn full_crud_cycle_with_versions() {
    let target = shared();
    let org = target.create_org("wf-crud");
    let agent = target.create_agent(&org);
    let reply = create(target, &org, &graph(&agent));
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let created = reply.json();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["version"], 1);
    assert!(
        created["webhook_secret"]
            .as_str()
            .unwrap()
            .starts_with("whsec_")
    );
    let path = format!("/api/v1/workflows/{id}");
    let fetched = target.call("GET", &path, Some(&org.owner_key), None).json();
    assert_eq!(fetched["name"], "Lead flow");
    assert_eq!(fetched["nodes"].as_array().unwrap().len(), 6);
    assert!(
        fetched.get("webhook_secret").is_none(),
        "the secret is shown once"
    );

    let mut changed = graph(&agent);
    changed["variables"]["threshold"] = json!(80);
    let replaced = target.call("PUT", &path, Some(&org.owner_key), Some(&changed));
    assert_eq!(
        replaced.status,
        200,
        "{}",
        String::from_utf8_lossy(&replaced.body)
    );
    assert_eq!(replaced.json()["version"], 2);
    assert_eq!(replaced.json()["variables"]["threshold"], 80);
    let v1 = target
        .call(
            "GET",
            &format!("{path}/versions/1"),
            Some(&org.owner_key),
            None,
        )
        .json();
    assert_eq!(
        v1["variables"]["threshold"], 70,
        "old versions stay readable"
    );
    let versions = target
        .call(
            "GET",
            &format!("{path}/versions"),
            Some(&org.owner_key),
            None,
        )
        .json();
    assert_eq!(versions["current_version"], 2);
    assert_eq!(versions["data"].as_array().unwrap().len(), 2);
    target
        .call(
            "GET",
            &format!("{path}/versions/3"),
            Some(&org.owner_key),
            None,
        )
        .assert_error(404, "not_found");

    let patched = target.call(
        "PATCH",
        &path,
        Some(&org.owner_key),
        Some(&json!({"is_active": false})),
    );
    assert_eq!(patched.json()["is_active"], false);
    assert_eq!(
        patched.json()["version"],
        2,
        "settings do not make a version"
    );

    assert_eq!(
        target
            .call("DELETE", &path, Some(&org.owner_key), None)
            .status,
        204
    );
    target
        .call("GET", &path, Some(&org.owner_key), None)
        .assert_error(404, "not_found");
    assert_eq!(count(target, &org), 0);
}

#[test]
fn the_sequential_form_becomes_a_graph() {
    let target = shared();
    let org = target.create_org("wf-tasks");
    let agent = target.create_agent(&org);
    let reply = create(
        target,
        &org,
        &json!({"name": "Pipeline", "tasks": [{"agent": agent, "input": "Draft about {{ trigger.topic }}"}, {"agent": agent}]}),
    );
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = reply.json();
    let types: Vec<&str> = body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["trigger", "agent", "agent", "output"]);
}

#[test]
fn export_then_import_makes_an_identical_copy() {
    let target = shared();
    let org = target.create_org("wf-export");
    let agent = target.create_agent(&org);
    let id = create(target, &org, &graph(&agent)).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let exported = target
        .call(
            "GET",
            &format!("/api/v1/workflows/{id}"),
            Some(&org.owner_key),
            None,
        )
        .json();
    let imported = create(target, &org, &exported);
    assert_eq!(
        imported.status,
        201,
        "{}",
        String::from_utf8_lossy(&imported.body)
    );
    let copy = imported.json();
    assert_ne!(copy["id"], exported["id"]);
    for key in [
        "name",
        "description",
        "is_active",
        "nodes",
        "edges",
        "variables",
    ] {
        assert_eq!(copy[key], exported[key], "{key}");
    }
}

#[test]
fn invalid_definitions_report_every_problem_with_its_path_and_store_nothing() {
    let target = shared();
    let org = target.create_org("wf-invalid");
    let mut body = graph("00000000-0000-7000-8000-00000000dead");
    body["nodes"][3]["type"] = json!("teleport");
    body["edges"]
        .as_array_mut()
        .unwrap()
        .push(json!({"source": "done", "target": "nowhere"}));
    let reply = create(target, &org, &body);
    reply.assert_error(422, "validation_failed");
    let found = paths(&reply);
    assert!(
        found.iter().any(|p| p == "nodes[1].config.agent_id"),
        "unknown agent: {found:?}"
    );
    assert!(
        found.iter().any(|p| p.starts_with("nodes[3]")),
        "unknown type: {found:?}"
    );
    assert!(
        found.iter().any(|p| p.starts_with("edges[6]")),
        "dangling edge: {found:?}"
    );
    assert_eq!(count(target, &org), 0);

    let mut cyclic = graph(&target.create_agent(&org));
    cyclic["edges"]
        .as_array_mut()
        .unwrap()
        .push(json!({"source": "done", "target": "score"}));
    create(target, &org, &cyclic).assert_error(422, "validation_failed");

    for bad in [
        json!({"nodes": []}),
        json!({"name": "x", "nodes": "many"}),
        json!({"name": "x", "surprise": 1}),
    ] {
        let reply = create(target, &org, &bad);
        assert!(matches!(reply.status, 400 | 422), "{bad}: {}", reply.status);
    }
    assert_eq!(count(target, &org), 0);
}

#[test]
fn validate_answers_what_create_would_without_storing() {
    let target = shared();
    let org = target.create_org("wf-validate");
    let agent = target.create_agent(&org);
    let validate = |body: &Value| {
        target.call(
            "POST",
            "/api/v1/workflows/validate",
            Some(&org.owner_key),
            Some(body),
        )
    };
    let ok = validate(&graph(&agent));
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json(), json!({"valid": true}));
    // Problems come in the one error shape, with the details a create gets.
    let mut broken = graph(&agent);
    broken["edges"].as_array_mut().unwrap().remove(3);
    broken["name"] = json!("");
    let bad = validate(&broken);
    bad.assert_error(422, "validation_failed");
    let details = &bad.json()["error"]["details"];
    assert!(details.as_array().unwrap().len() >= 2, "{details}");
    assert!(
        details
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["path"] == "name"),
        "{details}"
    );
    let created = create(target, &org, &broken);
    created.assert_error(422, "validation_failed");
    assert_eq!(&created.json()["error"]["details"], details);
    // A body create refuses as unreadable is refused the same way.
    validate(&json!({"name": "x", "surprise": 1})).assert_error(400, "bad_request");
    assert_eq!(count(target, &org), 0);
}

#[test]
fn a_definition_over_one_mebibyte_is_413() {
    let target = shared();
    let org = target.create_org("wf-size");
    let agent = target.create_agent(&org);
    let mut body = graph(&agent);
    body["variables"]["padding"] = json!("x".repeat(1024 * 1024 + 1));
    create(target, &org, &body).assert_error(413, "payload_too_large");
    assert_eq!(count(target, &org), 0);
}

#[test]
fn bulk_delete_is_all_or_nothing_within_the_organisation() {
    let target = shared();
    let ours = target.create_org("wf-bulk-ours");
    let theirs = target.create_org("wf-bulk-theirs");
    let agent = target.create_agent(&ours);
    let mine: Vec<String> = (0..2)
        .map(|_| {
            create(target, &ours, &graph(&agent)).json()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let their_agent = target.create_agent(&theirs);
    let foreign = create(target, &theirs, &graph(&their_agent)).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let reply = target.call(
        "POST",
        "/api/v1/workflows/bulk-delete",
        Some(&ours.owner_key),
        Some(&json!({"ids": [mine[0], foreign, mine[1]]})),
    );
    reply.assert_error(404, "not_found");
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains(&foreign),
        "names the foreign id: {message}"
    );
    assert!(
        mine.iter().all(|id| !message.contains(id.as_str())),
        "names only what is not ours: {message}"
    );
    assert_eq!(count(target, &ours), 2, "nothing was deleted");
    assert_eq!(count(target, &theirs), 1);
    // An id nothing has is named the same way.
    let unknown = "00000000-0000-7000-8000-00000000b1d0";
    let reply = target.call(
        "POST",
        "/api/v1/workflows/bulk-delete",
        Some(&ours.owner_key),
        Some(&json!({"ids": [mine[0], unknown]})),
    );
    reply.assert_error(404, "not_found");
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains(unknown), "names the unknown id: {message}");
    assert_eq!(count(target, &ours), 2, "nothing was deleted");
    // 100 ids are taken (and checked: the unknown ones are named); 101 are
    // refused before any is looked at. Neither deletes anything.
    let unknowns = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| format!("00000000-0000-7000-8000-{i:012x}"))
            .collect()
    };
    let mut hundred = mine.clone();
    hundred.extend(unknowns(98));
    let reply = target.call(
        "POST",
        "/api/v1/workflows/bulk-delete",
        Some(&ours.owner_key),
        Some(&json!({"ids": hundred})),
    );
    reply.assert_error(404, "not_found");
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&hundred[99]),
        "{}",
        reply.json()
    );
    let mut hundred_and_one = mine.clone();
    hundred_and_one.extend(unknowns(99));
    let reply = target.call(
        "POST",
        "/api/v1/workflows/bulk-delete",
        Some(&ours.owner_key),
        Some(&json!({"ids": hundred_and_one})),
    );
    reply.assert_error(422, "validation_failed");
    assert_eq!(paths(&reply), ["ids"]);
    assert_eq!(count(target, &ours), 2, "nothing was deleted");
    assert_eq!(count(target, &theirs), 1);
    let reply = target.call(
        "POST",
        "/api/v1/workflows/bulk-delete",
        Some(&ours.owner_key),
        Some(&json!({"ids": mine})),
    );
    assert_eq!(reply.json(), json!({"deleted": 2}));
    assert_eq!(count(target, &ours), 0);
    for bad in [json!({"ids": []}), json!({"ids": "x"}), json!({})] {
        let reply = target.call(
            "POST",
            "/api/v1/workflows/bulk-delete",
            Some(&ours.owner_key),
            Some(&bad),
        );
        assert!(matches!(reply.status, 400 | 422), "{bad}");
    }
}

#[test]
fn another_organisations_workflow_answers_404_everywhere() {
    let target = shared();
    let ours = target.create_org("wf-tenancy-ours");
    let theirs = target.create_org("wf-tenancy-theirs");
    let agent = target.create_agent(&theirs);
    let id = create(target, &theirs, &graph(&agent)).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let cases = [
        ("GET", format!("/api/v1/workflows/{id}"), None),
        (
            "PUT",
            format!("/api/v1/workflows/{id}"),
            Some(graph(&agent)),
        ),
        (
            "PATCH",
            format!("/api/v1/workflows/{id}"),
            Some(json!({"name": "mine"})),
        ),
        ("DELETE", format!("/api/v1/workflows/{id}"), None),
        ("GET", format!("/api/v1/workflows/{id}/versions"), None),
        ("GET", format!("/api/v1/workflows/{id}/versions/1"), None),
        (
            "POST",
            format!("/api/v1/workflows/{id}/webhook-secret"),
            None,
        ),
    ];
    for (method, path, body) in cases {
        target
            .call(method, &path, Some(&ours.owner_key), body.as_ref())
            .assert_error(404, "not_found");
    }
    // Their agent is unknown to us as well.
    let reply = create(target, &ours, &graph(&agent));
    reply.assert_error(422, "validation_failed");
    assert_eq!(
        target
            .call(
                "GET",
                &format!("/api/v1/workflows/{id}"),
                Some(&theirs.owner_key),
                None
            )
            .json()["version"],
        1
    );
}

#[test]
fn webhook_secret_rotation_shows_the_new_secret_once() {
    let target = shared();
    let org = target.create_org("wf-secret");
    let agent = target.create_agent(&org);
    let created = create(target, &org, &graph(&agent)).json();
    let id = created["id"].as_str().unwrap();
    let (_, member) = target.create_key(&org.owner_key, "member");
    let path = format!("/api/v1/workflows/{id}/webhook-secret");
    target
        .call("POST", &path, Some(&member), None)
        .assert_error(403, "forbidden");
    let rotated = target
        .call("POST", &path, Some(&org.owner_key), None)
        .json();
    let secret = rotated["webhook_secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"));
    assert_ne!(secret, created["webhook_secret"].as_str().unwrap());
    let raw = target.call(
        "GET",
        &format!("/api/v1/workflows/{id}"),
        Some(&org.owner_key),
        None,
    );
    assert!(!String::from_utf8_lossy(&raw.body).contains(secret));
}

#[test]
fn lists_search_filter_and_page() {
    let target = shared();
    let org = target.create_org("wf-list");
    let agent = target.create_agent(&org);
    for name in ["Alpha", "Beta", "Gamma"] {
        let mut body = graph(&agent);
        body["name"] = json!(name);
        body["is_active"] = json!(name != "Beta");
        create(target, &org, &body);
    }
    let names = |query: &str| -> (u64, Vec<String>) {
        let body = target
            .call(
                "GET",
                &format!("/api/v1/workflows{query}"),
                Some(&org.owner_key),
                None,
            )
            .json();
        let names = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].as_str().unwrap().to_string())
            .collect();
        (body["total"].as_u64().unwrap(), names)
    };
    assert_eq!(
        names("?sort_by=name&sort_order=asc&limit=2"),
        (3, vec!["Alpha".into(), "Beta".into()])
    );
    // The next page holds the rest, and the one after it nothing.
    assert_eq!(
        names("?sort_by=name&sort_order=asc&limit=2&offset=2"),
        (3, vec!["Gamma".into()])
    );
    assert_eq!(
        names("?sort_by=name&sort_order=asc&limit=2&offset=4"),
        (3, vec![])
    );
    assert_eq!(names("?is_active=false"), (1, vec!["Beta".into()]));
    assert_eq!(names("?search=amm"), (1, vec!["Gamma".into()]));
    target
        .call(
            "GET",
            "/api/v1/workflows?is_active=maybe",
            Some(&org.owner_key),
            None,
        )
        .assert_error(400, "bad_request");
}

#[test]
fn templates_are_listed_and_usable() {
    let target = shared();
    let org = target.create_org("wf-templates");
    let list = target
        .call("GET", "/api/v1/templates", Some(&org.owner_key), None)
        .json();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    for expected in [
        "content-pipeline",
        "lead-scoring",
        "it-incident-triage",
        "contract-review",
    ] {
        assert!(ids.contains(&expected), "{expected} in {ids:?}");
    }
    for template in list["data"].as_array().unwrap() {
        let id = template["id"].as_str().unwrap();
        let roles: Vec<String> = template["agents"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let agent = target.create_agent(&org);
        let mapping: serde_json::Map<String, Value> =
            roles.iter().map(|r| (r.clone(), json!(agent))).collect();
        let reply = target.call(
            "POST",
            &format!("/api/v1/templates/{id}/use"),
            Some(&org.owner_key),
            Some(&json!({"agents": mapping})),
        );
        assert_eq!(
            reply.status,
            201,
            "{id}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.json()["name"], template["name"]);
    }
    // Unmapped roles get agents of their own (tests/suite/tests/templates.rs).
    let unmapped = target.call(
        "POST",
        "/api/v1/templates/lead-scoring/use",
        Some(&org.owner_key),
        Some(&json!({})),
    );
    assert_eq!(unmapped.status, 201);
    assert_eq!(
        unmapped.json()["created_agents"].as_array().map(Vec::len),
        Some(2)
    );
    target
        .call("GET", "/api/v1/templates/nope", Some(&org.owner_key), None)
        .assert_error(404, "not_found");
}

// --- listing order, settings patches, deletion, validation, bulk delete ----------

/// Waits until this machine's clock has passed `at` (an API timestamp), so
/// that what is made or changed next is newer by the clock, not only by id.
fn after(at: &Value) {
    let at = timestamp_ms(at);
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

/// The ids in `body["data"]`.
fn ids(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data in {body}"))
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_string())
        .collect()
}

/// A trigger → output workflow named `name`: runs without a provider.
fn echo(name: &str) -> Value {
    json!({"name": name, "nodes": [
        {"id": "start", "type": "trigger", "config": {}},
        {"id": "done", "type": "output", "config": {"value": "hi"}}
    ], "edges": [{"source": "start", "target": "done"}]})
}

#[test]
fn workflow_lists_are_newest_first_echo_the_page_and_sort_by_updated_at() {
    let target = shared();
    let org = target.create_org("wf-list-order");
    let mut created = Vec::new();
    for name in ["First", "Second", "Third"] {
        let reply = create(target, &org, &echo(name));
        assert_eq!(reply.status, 201);
        let workflow = reply.json();
        after(&workflow["created_at"]);
        created.push(workflow["id"].as_str().unwrap().to_string());
    }
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    let listed = get(target, &org, "/api/v1/workflows");
    let mut fields: Vec<&String> = listed.as_object().unwrap().keys().collect();
    fields.sort();
    assert_eq!(fields, ["data", "limit", "offset", "total"], "{listed}");
    assert_eq!(
        (&listed["total"], &listed["limit"], &listed["offset"]),
        (&json!(3), &json!(20), &json!(0))
    );
    assert_eq!(ids(&listed), newest_first, "created_at, newest first");
    let page = get(target, &org, "/api/v1/workflows?limit=1&offset=1");
    assert_eq!(
        (&page["total"], &page["limit"], &page["offset"]),
        (&json!(3), &json!(1), &json!(1))
    );
    assert_eq!(
        ids(&page),
        [newest_first[1].clone()],
        "offset 1 skips the newest"
    );
    let rest = get(target, &org, "/api/v1/workflows?offset=1");
    assert_eq!(ids(&rest), newest_first[1..]);
    assert_eq!(
        ids(&get(target, &org, "/api/v1/workflows?sort_order=asc")),
        created
    );

    // Changing the oldest makes it the most recently updated.
    let patched = target.call(
        "PATCH",
        &format!("/api/v1/workflows/{}", created[0]),
        Some(&org.owner_key),
        Some(&json!({"description": "touched"})),
    );
    assert_eq!(patched.status, 200);
    let by_update = get(target, &org, "/api/v1/workflows?sort_by=updated_at");
    assert_eq!(
        ids(&by_update),
        [created[0].clone(), created[2].clone(), created[1].clone()],
        "{by_update}"
    );
    let by_update_asc = get(
        target,
        &org,
        "/api/v1/workflows?sort_by=updated_at&sort_order=asc",
    );
    assert_eq!(
        ids(&by_update_asc),
        [created[1].clone(), created[2].clone(), created[0].clone()]
    );
    // Creation order is unmoved by the patch.
    assert_eq!(
        ids(&get(target, &org, "/api/v1/workflows?sort_by=created_at")),
        newest_first
    );
    target
        .call(
            "GET",
            "/api/v1/workflows?sort_by=execution_count",
            Some(&org.owner_key),
            None,
        )
        .assert_error(400, "bad_request");
}

#[test]
fn patch_changes_only_the_settings_and_makes_no_version() {
    let target = shared();
    let org = target.create_org("wf-patch");
    let agent = target.create_agent(&org);
    let id = create(target, &org, &graph(&agent)).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/api/v1/workflows/{id}");
    let read = || get(target, &org, &path);
    let versions = || get(target, &org, &format!("{path}/versions"));
    let patch = |body: &Value| target.call("PATCH", &path, Some(&org.owner_key), Some(body));
    let (before, versions_before) = (read(), versions());
    assert_eq!(before["webhook_scheme"], "standard", "{before}");

    // The definition is not a setting: a patch naming it is refused whole,
    // naming the field, even beside a setting that alone would be fine
    // (its status: `a_patch_naming_the_definition_is_400_like_any_field_the_body_does_not_take`).
    for (body, fields) in [
        (json!({"nodes": []}), vec!["nodes"]),
        (
            json!({"name": "Renamed", "nodes": before["nodes"]}),
            vec!["nodes"],
        ),
        (
            json!({"edges": [], "variables": {}}),
            vec!["edges", "variables"],
        ),
    ] {
        let reply = patch(&body);
        assert!(
            reply.status >= 400,
            "{body}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let mut named = paths(&reply);
        named.sort();
        assert_eq!(named, fields, "{body}");
        assert_eq!(read(), before, "{body}: nothing changed");
    }
    for body in [
        json!({"webhook_scheme": "x"}),
        json!({"webhook_scheme": null}),
        json!({"name": "Renamed", "webhook_scheme": "GitHub"}),
    ] {
        let reply = patch(&body);
        reply.assert_error(422, "validation_failed");
        let problems = paths(&reply);
        assert_eq!(problems, ["webhook_scheme"], "{body}");
        assert_eq!(read(), before, "{body}: nothing changed");
    }
    assert_eq!(versions(), versions_before);

    let reply = patch(&json!({
        "name": "Renamed", "description": "new words", "is_active": false, "webhook_scheme": "github"
    }));
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let after_patch = read();
    assert_eq!(reply.json(), after_patch);
    assert_eq!(after_patch["name"], "Renamed");
    assert_eq!(after_patch["description"], "new words");
    assert_eq!(after_patch["is_active"], false);
    assert_eq!(after_patch["webhook_scheme"], "github");
    assert_eq!(after_patch["version"], 1, "no new version");
    for key in ["nodes", "edges", "variables", "id", "created_at"] {
        assert_eq!(after_patch[key], before[key], "{key}");
    }
    let versions_after = versions();
    assert_eq!(versions_after, versions_before, "still one version");
    assert_eq!(versions_after["current_version"], 1);
    assert_eq!(versions_after["data"].as_array().unwrap().len(), 1);
    // And back: `standard` is the other scheme a patch takes.
    let reply = patch(&json!({"webhook_scheme": "standard"}));
    assert_eq!(reply.status, 200);
    assert_eq!(read()["webhook_scheme"], "standard");
}

/// README's error table: a body "not of the expected shape" is `400
/// bad_request` with details at the offending field, as an unknown field is
/// for every other body (a new workflow, an agent's patch); `nodes` is not a
/// field a settings patch takes.
#[test]
fn a_patch_naming_the_definition_is_400_like_any_field_the_body_does_not_take() {
    let target = shared();
    let org = target.create_org("wf-patch-shape");
    let id = target.create(&org, "/api/v1/workflows", &echo("Shape"));
    let path = format!("/api/v1/workflows/{id}");
    let before = get(target, &org, &path);
    // The same field refused by a create, for comparison.
    let mut unknown = echo("Shape");
    unknown["surprise"] = json!(1);
    create(target, &org, &unknown).assert_error(400, "bad_request");
    for body in [json!({"nodes": []}), json!({"surprise": 1})] {
        let reply = target.call("PATCH", &path, Some(&org.owner_key), Some(&body));
        reply.assert_error(400, "bad_request");
        assert_eq!(paths(&reply).len(), 1, "{body}");
        assert_eq!(get(target, &org, &path), before, "{body}: nothing changed");
    }
}

#[test]
fn a_deleted_workflows_runs_stay_readable_and_listed() {
    let target = shared();
    let org = target.create_org("wf-delete-runs");
    let workflow = target.create(&org, "/api/v1/workflows", &echo("Soon gone"));
    let run_id = target.start_run(&org, &workflow, json!({}));
    let run = target.finished(&org, &run_id);
    assert_eq!(run["status"], "completed", "{run}");
    let listed_before = get(target, &org, "/api/v1/executions");
    assert_eq!(ids(&listed_before), [run_id.as_str()]);

    let path = format!("/api/v1/workflows/{workflow}");
    let deleted = target.call("DELETE", &path, Some(&org.owner_key), None);
    assert_eq!(deleted.status, 204);
    assert!(deleted.body.is_empty());
    target
        .call("GET", &path, Some(&org.owner_key), None)
        .assert_error(404, "not_found");
    assert_eq!(count(target, &org), 0);

    let reply = target.call(
        "GET",
        &format!("/api/v1/executions/{run_id}"),
        Some(&org.owner_key),
        None,
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json(), run, "the run is as it was");
    assert_eq!(get(target, &org, "/api/v1/executions"), listed_before);
    let of_workflow = get(
        target,
        &org,
        &format!("/api/v1/executions?workflow_id={workflow}"),
    );
    assert_eq!(ids(&of_workflow), [run_id.as_str()]);
    let logs = get(target, &org, &format!("/api/v1/executions/{run_id}/logs"));
    assert!(
        !logs["data"].as_array().unwrap().is_empty(),
        "its logs stay: {logs}"
    );
}

#[test]
fn a_viewer_validates_and_a_body_over_2_mib_is_413() {
    let target = shared();
    let org = target.create_org("wf-validate-viewer");
    let agent = target.create_agent(&org);
    let (_, viewer) = target.create_key(&org.owner_key, "viewer");
    let validate = |body: &Value| {
        target.call(
            "POST",
            "/api/v1/workflows/validate",
            Some(&viewer),
            Some(body),
        )
    };
    let ok = validate(&graph(&agent));
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    assert_eq!(ok.json(), json!({"valid": true}));
    // A viewer may check, not store.
    target
        .call(
            "POST",
            "/api/v1/workflows",
            Some(&viewer),
            Some(&graph(&agent)),
        )
        .assert_error(403, "forbidden");
    // Over the API's 2 MiB body limit: refused on its declared length, unread.
    let head = format!(
        "POST /api/v1/workflows/validate HTTP/1.1\r\nauthorization: Bearer {viewer}\r\n\
         content-type: application/json\r\ncontent-length: {}",
        2 * 1024 * 1024 + 1
    );
    target
        .raw_exchange(&head, b"")
        .assert_error(413, "payload_too_large");
    // Under it, but a definition over 1 MiB: what a create answers.
    let mut big = graph(&agent);
    big["variables"]["padding"] = json!("x".repeat(1024 * 1024 + 1));
    validate(&big).assert_error(413, "payload_too_large");
    assert_eq!(count(target, &org), 0);
}
