//! Spindle's API areas, one module per component, as host-independent
//! routers. A component opens nothing itself: it hands a [`Backends`] to
//! [`RequestContext`] and lets the area's router answer.
#![deny(missing_docs)]

pub mod accounts;
pub mod agents;
pub mod auth;
mod context;

pub use context::{Backends, RequestContext};

use spindle_http::Router;
pub use spindle_store::now_ms;

/// `/api/v1/workflows/...` and `/api/v1/templates/...`; its routes arrive with the workflow-definitions issue.
pub fn workflows_router() -> Router<RequestContext> {
    Router::new()
}

/// Execution, webhooks and internal dispatch; its routes arrive with the engine issue.
pub fn execute_router() -> Router<RequestContext> {
    Router::new()
}

/// `/api/v1/usage/...` and `/metrics`; its routes arrive with the usage issue.
pub fn usage_router() -> Router<RequestContext> {
    Router::new()
}

/// A stored time as the API shows it: RFC 3339 UTC with milliseconds.
pub fn timestamp(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
