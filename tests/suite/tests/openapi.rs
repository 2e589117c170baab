//! `GET /openapi.json`: the OpenAPI 3.1 document is served without
//! credentials, and every operation it lists is routed by the running app
//! (through `spin.toml` to the component that answers it).

use serde_json::{Value, json};
use spindle_suite::{METRICS_TOKEN, shared};

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch"];

fn document() -> Value {
    let reply = shared().get("/openapi.json");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("spindle-component"), Some("accounts"));
    reply.json()
}

#[test]
fn the_document_is_served_without_credentials_as_openapi_3_1() {
    let doc = document();
    let version = doc["openapi"].as_str().expect("an `openapi` version");
    assert!(version.starts_with("3.1."), "{version}");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(doc["info"]["title"].is_string());
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() > 40, "{} paths", paths.len());
    for (path, item) in paths {
        assert!(path.starts_with('/'), "{path}");
        assert!(!path.starts_with("/internal/"), "{path} is internal");
        for (method, operation) in item.as_object().unwrap() {
            assert!(METHODS.contains(&method.as_str()), "{method} {path}");
            let responses = operation["responses"].as_object().expect("responses");
            assert!(!responses.is_empty(), "{method} {path}");
        }
    }
    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("security schemes");
    assert_eq!(schemes["bearerAuth"]["scheme"], "bearer");
    let error = &doc["components"]["schemas"]["Error"];
    assert_eq!(error["required"], serde_json::json!(["error"]));
}

#[test]
fn every_documented_operation_is_routed_by_the_app() {
    let target = shared();
    let org = target.create_org("OpenAPI routes");
    let doc = document();
    // A well-formed id nothing has: each call answers from its handler
    // (401, 400, 404, 422, …), never the router's 404 or 405.
    let unknown = "00000000-0000-7000-8000-000000000000";
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete: String = path
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    match segment {
                        "{scope}" => "org",
                        "{provider}" => "openai",
                        "{version}" => "1",
                        _ => unknown,
                    }
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().unwrap().keys() {
            let method = method.to_ascii_uppercase();
            let reply = target.call(&method, &concrete, Some(&org.owner_key), None);
            let body = String::from_utf8_lossy(&reply.body);
            assert_ne!(reply.status, 405, "{method} {concrete}: {body}");
            assert!(
                !(reply.status == 404 && body.contains("no route for")),
                "{method} {concrete} is documented but not routed: {body}"
            );
            assert!(reply.status < 500, "{method} {concrete}: {body}");
        }
    }
}

/// The operations of `doc` as (method, path) pairs, methods upper-case.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            if METHODS.contains(&method.as_str()) {
                operations.push((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    operations
}

/// A random version-4 UUID (from the standard library's per-process random
/// hasher keys): an id nothing in any app has.
fn random_uuid() -> String {
    use std::hash::{BuildHasher, Hasher};
    let word = || {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos());
        hasher.finish()
    };
    let (high, low) = (word(), word());
    let high = (high & !0xf000) | 0x4000; // version 4
    let low = (low & !(0b11 << 62)) | (0b10 << 62); // the RFC 4122 variant
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xffff,
        low >> 48,
        low & 0xffff_ffff_ffff
    )
}

/// `path` with each `{parameter}` replaced by `value`.
fn fill(path: &str, value: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                value
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn admin_and_metrics_schemes_guard_their_operations_and_hooks_declare_signature_headers() {
    let doc = document();
    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("security schemes");
    for name in ["adminKey", "metricsToken"] {
        let scheme = &schemes[name];
        assert_eq!(scheme["type"], "http", "{name}: {scheme}");
        assert_eq!(scheme["scheme"], "bearer", "{name}: {scheme}");
    }
    let security = |method: &str, path: &str| doc["paths"][path][method]["security"].clone();
    assert_eq!(
        security("post", "/api/v1/orgs"),
        json!([{"adminKey": []}]),
        "POST /api/v1/orgs takes the platform admin key"
    );
    assert_eq!(
        security("get", "/metrics"),
        json!([{"metricsToken": []}]),
        "GET /metrics takes the metrics token"
    );
    // No other operation takes either of them.
    for (method, path) in operations(&doc) {
        if (method.as_str(), path.as_str()) == ("POST", "/api/v1/orgs")
            || (method.as_str(), path.as_str()) == ("GET", "/metrics")
        {
            continue;
        }
        let text = doc["paths"][&path][method.to_ascii_lowercase()]["security"].to_string();
        assert!(
            !text.contains("adminKey") && !text.contains("metricsToken"),
            "{method} {path}: {text}"
        );
    }

    // `/metrics` answers text/plain, in the document and when scraped.
    let ok = &doc["paths"]["/metrics"]["get"]["responses"]["200"];
    let types: Vec<&String> = ok["content"].as_object().expect("content").keys().collect();
    assert_eq!(types, ["text/plain"], "{ok}");
    let authorization = format!("Bearer {METRICS_TOKEN}");
    let scrape = shared().request(
        "GET",
        "/metrics",
        &[("authorization", &authorization)],
        None,
    );
    assert_eq!(
        scrape.status,
        200,
        "{}",
        String::from_utf8_lossy(&scrape.body)
    );
    let served = scrape.header("content-type").expect("a content type");
    assert_eq!(
        served.split(';').next().map(str::trim),
        Some("text/plain"),
        "{served}"
    );
    let text = String::from_utf8(scrape.body).expect("UTF-8");
    assert!(
        text.lines().any(|l| l.starts_with("# TYPE spindle_")),
        "the Prometheus text format: {text}"
    );

    // `/hooks/{workflow_id}` is signed, either way, in headers it names.
    let hook = &doc["paths"]["/hooks/{workflow_id}"]["post"];
    let alternatives = hook["security"].as_array().expect("hook security");
    let mut signature_headers: Vec<String> = alternatives
        .iter()
        .flat_map(|requirement| requirement.as_object().unwrap().keys())
        .map(|name| {
            let scheme = &schemes[name];
            assert_eq!(scheme["type"], "apiKey", "{name}: {scheme}");
            assert_eq!(scheme["in"], "header", "{name}: {scheme}");
            scheme["name"].as_str().unwrap().to_ascii_lowercase()
        })
        .collect();
    signature_headers.sort();
    assert_eq!(
        signature_headers,
        ["webhook-signature", "x-hub-signature-256"],
        "one alternative each: {alternatives:?}"
    );
    let mut headers: Vec<String> = hook["parameters"]
        .as_array()
        .expect("hook parameters")
        .iter()
        .filter(|p| p["in"] == "header")
        .map(|p| p["name"].as_str().unwrap().to_ascii_lowercase())
        .collect();
    headers.sort();
    assert_eq!(
        headers,
        ["webhook-id", "webhook-timestamp", "x-github-delivery"],
        "the headers that go with the signatures"
    );
}

#[test]
fn every_operation_but_health_and_the_document_answers_401_without_credentials() {
    let target = shared();
    let doc = document();
    let operations = operations(&doc);
    // Nothing is left out by a document that lost its operations.
    assert!(operations.len() > 60, "{} operations", operations.len());
    let id = random_uuid();
    let open = [("GET", "/healthz"), ("GET", "/openapi.json")];
    for (method, path) in &operations {
        let concrete = fill(path, &id);
        let reply = target.call(method, &concrete, None, None);
        let body = String::from_utf8_lossy(&reply.body).into_owned();
        if open.contains(&(method.as_str(), path.as_str())) {
            assert_eq!(reply.status, 200, "{method} {concrete} is open: {body}");
            continue;
        }
        if path == "/hooks/{workflow_id}" {
            // Signed instead of a bearer credential: the signature needs the
            // workflow's secret, so an unknown workflow is 404 (checked
            // below with one that exists).
            assert_eq!(reply.status, 404, "{method} {concrete}: {body}");
            reply.assert_error(404, "not_found");
            continue;
        }
        // Everything else, POST /api/v1/orgs (the admin key) and /metrics
        // (the metrics token) included, refuses a call without a bearer.
        assert_eq!(reply.status, 401, "{method} {concrete}: {body}");
        reply.assert_error(401, "unauthenticated");
    }

    // An unsigned delivery to a workflow that exists is refused as well.
    let org = target.create_org("OpenAPI unauthenticated");
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({"name": "Hooked", "nodes": [
            {"id": "start", "type": "trigger", "config": {}},
            {"id": "done", "type": "output", "config": {"value": "hi"}}
        ], "edges": [{"source": "start", "target": "done"}]}),
    );
    target
        .call(
            "POST",
            &format!("/hooks/{workflow}"),
            None,
            Some(&json!({"unsigned": true})),
        )
        .assert_error(401, "unauthenticated");
    let runs = target
        .call("GET", "/api/v1/executions", Some(&org.owner_key), None)
        .json();
    assert_eq!(
        runs["total"], 0,
        "no call without credentials started a run: {runs}"
    );
}
