//! Spindle's `accounts` component: organisations, API keys, auth and health, and the JSON 404 for every route no other component claims.
//! A thin adapter; the logic lives in `spindle-api`.

// `http_component` expands to the unsafe ABI glue of the component export.
#![allow(unsafe_code)]

use spin_sdk::http::{IncomingRequest, ResponseOutparam};

#[spin_sdk::http_component]
async fn handle(request: IncomingRequest, out: ResponseOutparam) {
    spindle_spin::serve("accounts", &spindle_api::accounts::router(), request, out).await
}
