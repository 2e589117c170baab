//! Spindle's API areas, one module per component, as host-independent
//! routers. A component opens nothing itself: it hands a [`Backends`] to
//! [`RequestContext`] and lets the area's router answer.
#![deny(missing_docs)]

pub mod accounts;
pub mod agents;
pub mod auth;
mod context;
pub mod engine;
mod listing;
pub mod openapi;
#[cfg(test)]
mod test_backends;
pub mod usage;
pub mod workflows;

pub use context::{Backends, RequestContext};

use spindle_http::Router;
pub use spindle_store::now_ms;

/// `/api/v1/usage/...` and `/metrics`.
pub fn usage_router() -> Router<RequestContext> {
    usage::router()
}

/// The first row of a scoped query, or a 404 naming what was not found.
pub(crate) fn fetch_one(
    org: &spindle_store::OrgScoped,
    sql: &str,
    params: &[spindle_store::Value],
    what: impl FnOnce() -> String,
) -> Result<Vec<spindle_store::Value>, spindle_http::ApiError> {
    org.execute(sql, params)?
        .into_first()
        .ok_or_else(|| spindle_http::ApiError::NotFound(format!("{} not found", what())))
}

/// A TEXT column holding JSON, parsed; `None` for NULL or unreadable text.
pub(crate) fn json_column(value: &spindle_store::Value) -> Option<serde_json::Value> {
    value
        .as_str()
        .and_then(|text| serde_json::from_str(text).ok())
}

/// A stored time as the API shows it: RFC 3339 UTC with milliseconds.
pub fn timestamp(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
