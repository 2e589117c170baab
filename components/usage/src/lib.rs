//! Spindle's `usage` component: usage reports, pricing, budgets and metrics.
//! A thin adapter; the logic lives in `spindle-api`.

// `http_component` expands to the unsafe ABI glue of the component export.
#![allow(unsafe_code)]

use spin_sdk::http::{IncomingRequest, ResponseOutparam};

#[spin_sdk::http_component]
async fn handle(request: IncomingRequest, out: ResponseOutparam) {
    spindle_spin::serve("usage", &spindle_api::usage_router(), request, out).await
}
