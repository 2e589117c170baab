//! The usage area (`/api/v1/usage/...`, `/metrics`): reports, pricing,
//! budgets, provider limits and metrics.

pub(crate) mod admission;
pub(crate) mod budgets;
mod estimate;
pub(crate) mod metrics;
pub(crate) mod pricing;
mod reports;

use crate::context::RequestContext;
use spindle_http::{Method, Router};

/// The usage component's routes.
pub fn router() -> Router<RequestContext> {
    Router::new()
        .route(Method::Get, "/api/v1/usage/budgets", budgets::list)
        .route(
            Method::Get,
            "/api/v1/usage/budgets/:scope/:id",
            budgets::get,
        )
        .route(
            Method::Put,
            "/api/v1/usage/budgets/:scope/:id",
            budgets::put,
        )
        .route(
            Method::Delete,
            "/api/v1/usage/budgets/:scope/:id",
            budgets::delete,
        )
        .route(Method::Get, "/api/v1/usage/pricing", pricing::get_pricing)
        .route(
            Method::Put,
            "/api/v1/usage/pricing/:provider/:model",
            pricing::put_price,
        )
        .route(
            Method::Delete,
            "/api/v1/usage/pricing/:provider/:model",
            pricing::delete_price,
        )
        .route(Method::Get, "/api/v1/usage/settings", pricing::get_settings)
        .route(Method::Put, "/api/v1/usage/settings", pricing::put_settings)
        .route(Method::Post, "/api/v1/usage/estimate", estimate::estimate)
        .route(Method::Get, "/metrics", metrics::scrape)
        .route(Method::Get, "/api/v1/usage/limits", admission::list)
        .route(
            Method::Put,
            "/api/v1/usage/limits/:provider",
            admission::put,
        )
        .route(
            Method::Delete,
            "/api/v1/usage/limits/:provider",
            admission::delete,
        )
        .route(Method::Get, "/api/v1/usage/summary", reports::summary)
        .route(Method::Get, "/api/v1/usage/records", reports::records)
        .route(
            Method::Get,
            "/api/v1/usage/workflows/:id/costs",
            reports::workflow_costs,
        )
}
