//! `GET /openapi.json`: the OpenAPI 3.1 document is served without
//! credentials, and every operation it lists is routed by the running app
//! (through `spin.toml` to the component that answers it).

use serde_json::Value;
use spindle_suite::shared;

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
