//! Starter templates used at once: the agents a template needs are created
//! for the roles left unmapped, all in one transaction with the workflow.

use fake_llm::Reply as LlmReply;
use serde_json::{Value, json};
use spindle_suite::{Org, Reply, Target, fake_llm, fake_turn, shared};

fn use_template(target: &Target, org: &Org, id: &str, body: Option<&Value>) -> Reply {
    target.call(
        "POST",
        &format!("/api/v1/templates/{id}/use"),
        Some(&org.owner_key),
        body,
    )
}

fn list(target: &Target, org: &Org, what: &str) -> Value {
    target
        .call(
            "GET",
            &format!("/api/v1/{what}?limit=100"),
            Some(&org.owner_key),
            None,
        )
        .json()
}

fn total(target: &Target, org: &Org, what: &str) -> u64 {
    list(target, org, what)["total"].as_u64().unwrap()
}

/// The agent ids the workflow's agent nodes name, by node id.
fn agent_ids(target: &Target, org: &Org, workflow: &str) -> Vec<(String, String)> {
    let body = target
        .call(
            "GET",
            &format!("/api/v1/workflows/{workflow}"),
            Some(&org.owner_key),
            None,
        )
        .json();
    body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["type"] == "agent")
        .map(|n| {
            let text = |v: &Value| v.as_str().unwrap().to_string();
            (text(&n["id"]), text(&n["config"]["agent_id"]))
        })
        .collect()
}

#[test]
fn using_a_template_without_a_mapping_creates_the_agents_it_needs_and_runs() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("tpl-create-agents");
    let reply = use_template(target, &org, "content-pipeline", None);
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let workflow = reply.json();
    assert_eq!(workflow["name"], "Content marketing pipeline");
    let created = workflow["created_agents"].as_array().unwrap();
    let mut roles: Vec<&str> = created
        .iter()
        .map(|a| a["role"].as_str().unwrap())
        .collect();
    roles.sort_unstable();
    assert_eq!(roles, ["seo", "social", "writer"]);

    let agents = list(target, &org, "agents");
    assert_eq!(agents["total"], 3, "{agents}");
    for made in created {
        let agent = agents["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == made["id"])
            .unwrap_or_else(|| panic!("{made} is in the organisation"));
        assert_eq!(agent["name"], made["role"]);
        assert_eq!(made["name"], made["role"]);
        assert_eq!(
            agent["model_config"],
            json!({"provider": "openai", "model": "gpt-4o-mini"})
        );
        assert!(
            agent["instructions"]
                .as_str()
                .is_some_and(|i| i.len() > 100),
            "a system prompt for the role: {agent}"
        );
    }
    let id = workflow["id"].as_str().unwrap();
    let by_role = |role: &str| {
        created.iter().find(|a| a["role"] == role).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        agent_ids(target, &org, id),
        [
            ("draft".to_string(), by_role("writer")),
            ("seo".to_string(), by_role("seo")),
            ("social".to_string(), by_role("social")),
        ]
    );

    fake_llm().push(LlmReply::text("the draft").tokens(10, 5));
    fake_llm().push(LlmReply::text("the optimised post").tokens(10, 5));
    fake_llm().push(LlmReply::text("the posts").tokens(10, 5));
    let run = target.start_run(&org, id, json!({"topic": "spindles", "keywords": ["wasm"]}));
    let run = target.finished(&org, &run);
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(
        run["output"],
        json!({"article": "the optimised post", "posts": "the posts"})
    );
}

#[test]
fn a_partial_mapping_creates_only_the_missing_agents() {
    let target = shared();
    let org = target.create_org("tpl-partial");
    let scorer = target.create_agent(&org);
    let reply = use_template(
        target,
        &org,
        "lead-scoring",
        Some(&json!({"name": "My leads", "agents": {"scorer": scorer}})),
    );
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let workflow = reply.json();
    assert_eq!(workflow["name"], "My leads");
    let created = workflow["created_agents"].as_array().unwrap();
    assert_eq!(created.len(), 1, "{workflow}");
    assert_eq!(created[0]["role"], "proposer");
    assert_eq!(created[0]["name"], "proposer");
    assert_eq!(total(target, &org, "agents"), 2);
    assert_eq!(
        agent_ids(target, &org, workflow["id"].as_str().unwrap()),
        [
            ("score".to_string(), scorer.clone()),
            (
                "proposal".to_string(),
                created[0]["id"].as_str().unwrap().to_string()
            ),
        ]
    );

    // A full mapping creates none.
    let full = use_template(
        target,
        &org,
        "lead-scoring",
        Some(&json!({"agents": {"scorer": scorer, "proposer": scorer}})),
    );
    assert_eq!(full.status, 201);
    assert_eq!(full.json()["created_agents"], json!([]));
    assert_eq!(total(target, &org, "agents"), 2);
}

#[test]
fn a_refused_use_creates_no_agent_and_no_workflow() {
    let target = shared();
    let org = target.create_org("tpl-refused");
    let mine = target.create_agent(&org);
    let other = target.create_org("tpl-refused-other");
    let theirs = target.create_agent(&other);
    let unknown = "00000000-0000-7000-8000-00000000dead";
    for (body, status, code, path) in [
        (
            json!({"agents": {"scorer": unknown}}),
            422,
            "validation_failed",
            Some("agents.scorer"),
        ),
        (
            json!({"agents": {"scorer": theirs}}),
            422,
            "validation_failed",
            Some("agents.scorer"),
        ),
        (
            json!({"agents": {"scorer": mine, "closer": mine}}),
            422,
            "validation_failed",
            Some("agents.closer"),
        ),
        // Valid roles, so the agents are created, and then the workflow is
        // refused: the agents go with it.
        (
            json!({"name": "x".repeat(300)}),
            422,
            "validation_failed",
            Some("name"),
        ),
        (json!({"agents": "everyone"}), 400, "bad_request", None),
        (json!({"agent": {}}), 400, "bad_request", None),
    ] {
        let reply = use_template(target, &org, "lead-scoring", Some(&body));
        reply.assert_error(status, code);
        if let Some(path) = path {
            let details = reply.json()["error"]["details"].clone();
            assert!(
                details
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|d| d["path"] == path),
                "{body}: {details}"
            );
        }
        assert_eq!(total(target, &org, "agents"), 1, "{body}: no agent added");
        assert_eq!(total(target, &org, "workflows"), 0, "{body}: no workflow");
    }
    assert_eq!(total(target, &other, "agents"), 1);
    use_template(target, &org, "nope", None).assert_error(404, "not_found");
    assert_eq!(total(target, &org, "agents"), 1);
}

#[test]
fn a_template_is_read_with_its_definition_whose_agent_nodes_name_roles() {
    let target = shared();
    let org = target.create_org("tpl-read");
    let (_, viewer) = target.create_key(&org.owner_key, "viewer");
    let get = |path: &str| {
        let reply = target.call("GET", path, Some(&viewer), None);
        assert_eq!(
            reply.status,
            200,
            "GET {path}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        reply.json()
    };
    let template = get("/api/v1/templates/content-pipeline");
    assert_eq!(template["id"], "content-pipeline");
    assert_eq!(template["name"], "Content marketing pipeline");
    let nodes = template["definition"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("a definition with nodes: {template}"));
    let agent_nodes: Vec<(&str, &str)> = nodes
        .iter()
        .filter(|n| n["type"] == "agent")
        .map(|n| {
            (
                n["id"].as_str().unwrap(),
                n["config"]["agent_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        agent_nodes,
        [("draft", "$writer"), ("seo", "$seo"), ("social", "$social")],
        "{template}"
    );
    assert!(template["definition"]["edges"].is_array(), "{template}");

    // Every template: its agent nodes name exactly the roles it lists.
    let listed = get("/api/v1/templates");
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(4), "{listed}");
    for summary in listed["data"].as_array().unwrap() {
        let id = summary["id"].as_str().unwrap();
        let template = get(&format!("/api/v1/templates/{id}"));
        let mut roles: Vec<String> = template["agents"]
            .as_object()
            .unwrap_or_else(|| panic!("{id}: roles in {template}"))
            .keys()
            .map(|role| format!("${role}"))
            .collect();
        roles.sort();
        let mut named: Vec<String> = template["definition"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["type"] == "agent")
            .map(|n| n["config"]["agent_id"].as_str().unwrap().to_string())
            .collect();
        named.sort();
        named.dedup();
        assert_eq!(named, roles, "{id}");
    }
}
