//! `GET /openapi.json`: the OpenAPI 3.1 description of the public API.
//!
//! The document is hand-written (`crates/spindle-api/openapi.json`) and
//! compiled in. A test compares its paths and methods with the routes every
//! area's router answers, so a route cannot be added or removed without the
//! document following; Schemathesis (`scripts/schemathesis.sh`) checks the
//! answers against its schemas.

use crate::context::RequestContext;
use spindle_http::{ApiError, ApiRequest, ApiResponse, Params};

/// The OpenAPI 3.1 document, as served.
pub const DOCUMENT: &str = include_str!("../openapi.json");

/// Routes the areas answer that the public document leaves out: the app's
/// own step dispatch and the scheduler's tick (README.md, "Executions").
pub const UNDOCUMENTED_ROUTES: &[(&str, &str)] = &[
    ("POST", "/internal/steps/:id"),
    ("POST", "/internal/tick"),
    ("POST", "/internal/heartbeat"),
];

/// `GET /openapi.json` (no credentials): the document.
pub(crate) fn serve(
    _: &RequestContext,
    _: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    Ok(ApiResponse {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: DOCUMENT.as_bytes().to_vec(),
        stream: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Backends;
    use crate::{accounts, agents, engine, usage, workflows};
    use serde_json::Value as Json;
    use spindle_http::{Method, OutboundError, OutboundRequest, OutboundResponse, Router};
    use spindle_store::{Db, DbError, KvError, KvStore};
    use std::collections::BTreeSet;

    /// A host with no storage, variables or network: serving the document
    /// must need none of them.
    struct Nothing;

    impl Backends for Nothing {
        fn open_db(&self) -> Result<Box<dyn Db>, DbError> {
            Err(DbError::from_message("no database"))
        }
        fn open_kv(&self) -> Result<Box<dyn KvStore>, KvError> {
            Err(KvError("no key-value store".into()))
        }
        fn variable(&self, _: &str) -> Option<String> {
            None
        }
        fn random_bytes(&self, buffer: &mut [u8]) {
            buffer.fill(0);
        }
        fn send(&self, _: &OutboundRequest) -> Result<OutboundResponse, OutboundError> {
            Err(OutboundError::Denied("no network".into()))
        }
        fn sleep_ms(&self, _: u64) {}
    }

    const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options"];

    fn document() -> Json {
        serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
    }

    /// Every `(METHOD, /path/{param})` the routers answer, undocumented ones
    /// left out; each undocumented route must exist.
    fn routed() -> BTreeSet<(String, String)> {
        let routers: [Router<RequestContext>; 5] = [
            accounts::router(),
            agents::router(),
            workflows::router(),
            engine::router(),
            usage::router(),
        ];
        let all: Vec<(String, &str)> = routers
            .iter()
            .flat_map(|router| router.routes().map(|(m, p)| (m.to_string(), p)))
            .collect();
        for (method, pattern) in UNDOCUMENTED_ROUTES {
            assert!(
                all.iter().any(|(m, p)| m == method && p == pattern),
                "{method} {pattern} is listed as undocumented but no router has it"
            );
        }
        all.into_iter()
            .filter(|(m, p)| !UNDOCUMENTED_ROUTES.contains(&(m.as_str(), *p)))
            .map(|(m, p)| (m, openapi_path(p)))
            .collect()
    }

    /// `/api/v1/agents/:id` as OpenAPI writes it: `/api/v1/agents/{id}`.
    fn openapi_path(pattern: &str) -> String {
        pattern
            .split('/')
            .map(|segment| match segment.strip_prefix(':') {
                Some(name) => format!("{{{name}}}"),
                None => segment.to_string(),
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    fn documented(doc: &Json) -> BTreeSet<(String, String)> {
        let paths = doc["paths"].as_object().expect("paths");
        paths
            .iter()
            .flat_map(|(path, item)| {
                let item = item.as_object().expect("a path item object");
                METHODS
                    .iter()
                    .filter(|m| item.contains_key(**m))
                    .map(|m| (m.to_ascii_uppercase(), path.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn the_document_lists_exactly_the_routed_operations() {
        let (routed, documented) = (routed(), documented(&document()));
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from openapi.json: {undocumented:?}"
        );
        assert!(
            unrouted.is_empty(),
            "openapi.json operations no router answers: {unrouted:?}"
        );
    }

    #[test]
    fn the_path_mapping_is_openapi_style() {
        assert_eq!(
            openapi_path("/api/v1/usage/budgets/:scope/:id"),
            "/api/v1/usage/budgets/{scope}/{id}"
        );
        assert_eq!(openapi_path("/healthz"), "/healthz");
    }

    /// Every `$ref` in `value`, for the resolution check.
    fn refs<'a>(value: &'a Json, out: &mut Vec<&'a str>) {
        match value {
            Json::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("$ref", Json::String(target)) => out.push(target),
                        _ => refs(v, out),
                    }
                }
            }
            Json::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn the_document_is_openapi_3_1_and_every_reference_resolves() {
        let doc = document();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for target in found {
            let pointer = target
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{target} is not local"));
            assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
        }
    }

    #[test]
    fn every_operation_declares_its_path_parameters_and_the_error_shape() {
        let doc = document();
        let error = "#/components/schemas/Error";
        for (path, item) in doc["paths"].as_object().unwrap() {
            let names: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            for (method, operation) in item.as_object().unwrap() {
                let declared: BTreeSet<&str> = operation["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "path")
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                assert_eq!(declared, names, "{method} {path}: path parameters");
                for (status, response) in operation["responses"].as_object().unwrap() {
                    let Some(target) = response["$ref"].as_str() else {
                        continue;
                    };
                    let resolved = doc.pointer(target.trim_start_matches('#')).unwrap();
                    let schema = &resolved["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(schema, error, "{method} {path} {status}");
                    assert!(
                        status.starts_with('4') || status.starts_with('5'),
                        "{method} {path}: the error shape under {status}"
                    );
                }
            }
        }
    }

    #[test]
    fn accounts_serves_the_document_without_credentials_or_storage() {
        let ctx = RequestContext::new(Box::new(Nothing));
        let response =
            accounts::router().handle(&ctx, &ApiRequest::new(Method::Get, "/openapi.json"));
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(response.body, DOCUMENT.as_bytes());
    }
}
