//! The black-box HTTP suite: runs against the test host, or a real
//! `spin up` when `SPINDLE_URL` is set.

use serde_json::Value;
use spindle_store::migrations::latest_version;
use spindle_suite::{fresh, shared};

#[test]
fn healthz_answers_ok_with_version_and_schema_level() {
    let reply = shared().get("/healthz");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["schema"], latest_version());
    assert_eq!(body["checks"]["sqlite"], "ok");
    assert_eq!(body["checks"]["key_value"], "ok");
}

#[test]
fn concurrent_first_requests_all_see_the_migrated_schema() {
    // A fresh app: every one of these races to apply the migrations.
    let target = fresh();
    let schemas: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..12)
            .map(|_| scope.spawn(|| target.get("/healthz")))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let reply = h.join().unwrap();
                assert_eq!(
                    reply.status,
                    200,
                    "{}",
                    String::from_utf8_lossy(&reply.body)
                );
                reply.json()["schema"].clone()
            })
            .collect()
    });
    assert!(
        schemas.iter().all(|s| *s == latest_version()),
        "{schemas:?}"
    );
}

#[test]
fn every_route_reaches_its_component() {
    // (path, component that must answer), from DESIGN.md's route table.
    let table = [
        ("/healthz", "accounts"),
        ("/api/v1/orgs/current", "accounts"),
        ("/api/v1/api-keys", "accounts"),
        ("/api/v1/auth/token", "accounts"),
        ("/not/a/route", "accounts"),
        ("/api/v1/workflows", "workflows"),
        ("/api/v1/workflows/abc", "workflows"),
        ("/api/v1/workflows/abc/versions/2", "workflows"),
        ("/api/v1/workflows/abc/execute/more", "workflows"),
        ("/api/v1/templates", "workflows"),
        ("/api/v1/agents", "agents"),
        ("/api/v1/agents/abc/executions", "agents"),
        ("/api/v1/workflows/abc/execute", "execute"),
        ("/api/v1/executions/abc", "execute"),
        ("/api/v1/event-subscriptions", "execute"),
        ("/hooks/abc", "execute"),
        ("/internal/tick", "execute"),
        ("/api/v1/usage/summary", "usage"),
        ("/metrics", "usage"),
    ];
    for (path, component) in table {
        let reply = shared().get(path);
        assert_eq!(
            reply.header("spindle-component"),
            Some(component),
            "GET {path} reached the wrong component"
        );
    }
}

#[test]
fn every_response_of_every_method_names_its_component() {
    let target = shared();
    let org = target.create_org("component-header");
    let owner = format!("Bearer {}", org.owner_key);
    // One route or more per component, the unknown route the router answers,
    // and routes whose requests fail in each way the API refuses them.
    let routes = [
        ("/healthz", "accounts"),
        ("/openapi.json", "accounts"),
        ("/api/v1/orgs", "accounts"),
        ("/api/v1/api-keys", "accounts"),
        ("/api/v1/auth/token", "accounts"),
        ("/no/such/route", "accounts"),
        ("/api/v1/workflows", "workflows"),
        (
            "/api/v1/workflows/00000000-0000-4000-8000-000000000000",
            "workflows",
        ),
        ("/api/v1/templates", "workflows"),
        ("/api/v1/agents", "agents"),
        (
            "/api/v1/workflows/00000000-0000-4000-8000-000000000000/execute",
            "execute",
        ),
        ("/api/v1/executions", "execute"),
        ("/hooks/00000000-0000-4000-8000-000000000000", "execute"),
        ("/internal/tick", "execute"),
        ("/api/v1/usage/summary", "usage"),
        ("/metrics", "usage"),
    ];
    let methods = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "BREW",
    ];
    let mut statuses = std::collections::BTreeSet::new();
    for (path, component) in routes {
        for method in methods {
            for authorization in [None, Some(owner.as_str()), Some("Bearer sk_forged")] {
                let mut headers = vec![("content-type", "application/json")];
                if let Some(authorization) = authorization {
                    headers.push(("authorization", authorization));
                }
                let body = (!matches!(method, "GET" | "HEAD")).then_some(&b"{not json"[..]);
                let reply = target.request(method, path, &headers, body);
                assert_eq!(
                    reply.header("spindle-component"),
                    Some(component),
                    "{method} {path} ({authorization:?}) answered {} without it",
                    reply.status
                );
                statuses.insert(reply.status);
            }
        }
    }
    // The sweep met answers of every kind, not only one.
    for status in [200, 400, 401, 404, 405] {
        assert!(statuses.contains(&status), "no {status} among {statuses:?}");
    }
    // A body refused unread, before any handler runs, carries it too.
    let reply = target.raw_exchange(
        "POST /api/v1/workflows HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: 3145728",
        b"",
    );
    assert_eq!(reply.status, 413);
    assert_eq!(reply.header("spindle-component"), Some("workflows"));
}

#[test]
fn unknown_routes_answer_json_404() {
    for path in [
        "/nowhere",
        "/api/v2/workflows",
        "/api/v1/workflows/abc/no/such/route",
        "/api/v1/agents/abc/no/such/route",
        "/api/v1/executions/abc/no/such/route",
        "/api/v1/usage/nothing-here",
    ] {
        shared().get(path).assert_error(404, "not_found");
    }
}

#[test]
fn wrong_method_answers_405_with_allow() {
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let reply = shared().request(method, "/healthz", &[], None);
        reply.assert_error(405, "method_not_allowed");
        assert_eq!(reply.header("allow"), Some("GET"));
    }
}

#[test]
fn non_standard_method_answers_405() {
    let reply = shared().request("BREW", "/healthz", &[], None);
    reply.assert_error(405, "method_not_allowed");
}

#[test]
fn oversized_body_answers_413_unread() {
    // The declared length alone is refused: the body is never sent.
    let reply = shared().raw_exchange(
        "POST /api/v1/workflows HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: 3145728",
        b"",
    );
    reply.assert_error(413, "payload_too_large");
}

#[test]
fn oversized_chunked_body_answers_413() {
    // No length up front: the API stops reading once the limit is passed.
    let mut chunk = format!("{:x}\r\n", 2 * 1024 * 1024 + 1).into_bytes();
    // The chunk is left unterminated: the server has read all we sent when it answers.
    chunk.extend(vec![b' '; 2 * 1024 * 1024 + 1]);
    let reply = shared().raw_exchange(
        "POST /api/v1/agents HTTP/1.1\r\ncontent-type: application/json\r\ntransfer-encoding: chunked",
        &chunk,
    );
    reply.assert_error(413, "payload_too_large");
}
