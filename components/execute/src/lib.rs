//! Spindle's `execute` component: starting and steering executions, webhooks and internal step dispatch.
//! A thin adapter; the logic lives in `spindle-api`.

// `http_component` expands to the unsafe ABI glue of the component export.
#![allow(unsafe_code)]

use spin_sdk::http::{IncomingRequest, ResponseOutparam};

#[spin_sdk::http_component]
async fn handle(request: IncomingRequest, out: ResponseOutparam) {
    spindle_spin::serve("execute", &spindle_api::engine::router(), request, out).await
}
