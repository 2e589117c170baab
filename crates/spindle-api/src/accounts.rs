//! The accounts area: health now; organisations, API keys and tokens next.

use crate::context::RequestContext;
use spindle_http::{ApiError, ApiRequest, ApiResponse, Method, Params, Router};
use spindle_store::Value;
use serde_json::json;

/// The accounts component's routes. Its catch-all `/...` also lands here, so
/// anything no component knows answers the JSON 404 from this router.
pub fn router() -> Router<RequestContext> {
    Router::new().route(Method::Get, "/healthz", healthz)
}

/// `GET /healthz`: 200 when SQLite and the key-value store both answer, with
/// the schema level; 503 naming the failing check otherwise.
fn healthz(
    ctx: &RequestContext,
    _request: &ApiRequest,
    _params: &Params,
) -> Result<ApiResponse, ApiError> {
    let schema = ctx.db().and_then(|db| {
        let rows = db.execute("SELECT MAX(version) FROM schema_migrations", &[])?;
        Ok(rows.scalar().and_then(Value::as_i64).unwrap_or(0))
    });
    // A read proves the store answers without writing on every probe.
    let kv = ctx.kv().and_then(|kv| Ok(kv.exists("healthz")?));
    let check = |result: Result<(), &ApiError>| match result {
        Ok(()) => "ok".to_string(),
        Err(error) => format!("error: {error}"),
    };
    let checks = json!({
        "sqlite": check(schema.as_ref().map(|_| ())),
        "key_value": check(kv.as_ref().map(|_| ())),
    });
    let healthy = schema.is_ok() && kv.is_ok();
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "version": env!("CARGO_PKG_VERSION"),
        "schema": schema.ok(),
        "checks": checks,
    });
    Ok(ApiResponse::json(if healthy { 200 } else { 503 }, &body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Backends;
    use spindle_store::{Db, DbError, KvError, KvStore, MemoryKv, RusqliteDb, migrations};

    struct Native;

    impl Backends for Native {
        fn open_db(&self) -> Result<Box<dyn Db>, DbError> {
            Ok(Box::new(RusqliteDb::memory()))
        }
        fn open_kv(&self) -> Result<Box<dyn KvStore>, KvError> {
            Ok(Box::new(MemoryKv::default()))
        }
    }

    struct NoKv;

    impl Backends for NoKv {
        fn open_db(&self) -> Result<Box<dyn Db>, DbError> {
            Ok(Box::new(RusqliteDb::memory()))
        }
        fn open_kv(&self) -> Result<Box<dyn KvStore>, KvError> {
            Err(KvError("no such store".into()))
        }
    }

    fn get(backends: Box<dyn Backends>, path: &str) -> (u16, serde_json::Value) {
        let response = router().handle(
            &RequestContext::new(backends),
            &ApiRequest::new(Method::Get, path),
        );
        (
            response.status,
            serde_json::from_slice(&response.body).unwrap(),
        )
    }

    #[test]
    fn healthz_reports_the_schema_level_after_migrating() {
        let (status, body) = get(Box::new(Native), "/healthz");
        assert_eq!(status, 200);
        assert_eq!(body["status"], "ok");
        assert_eq!(body["schema"], migrations::latest_version());
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn healthz_is_503_naming_the_failing_store() {
        let (status, body) = get(Box::new(NoKv), "/healthz");
        assert_eq!(status, 503);
        assert_eq!(body["status"], "unavailable");
        assert_eq!(body["checks"]["sqlite"], "ok");
        assert!(
            body["checks"]["key_value"]
                .as_str()
                .unwrap()
                .contains("no such store")
        );
    }

    #[test]
    fn unknown_route_is_json_404() {
        let (status, body) = get(Box::new(Native), "/nowhere");
        assert_eq!(status, 404);
        assert_eq!(body["error"]["code"], "not_found");
    }
}
