//! The usage area (`/api/v1/usage/...`, `/metrics`): reports, pricing,
//! budgets, provider limits and metrics.

use crate::context::RequestContext;
use spindle_http::Router;

/// The usage component's routes.
pub fn router() -> Router<RequestContext> {
    Router::new()
}
