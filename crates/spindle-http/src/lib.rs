//! Host-independent HTTP shapes for Spindle.
//!
//! Components turn Spin's request into an [`ApiRequest`], hand it to a
//! [`Router`], and write the [`ApiResponse`] back. Every failure is an
//! [`ApiError`], which becomes the documented JSON error shape in exactly one
//! place ([`ApiError::into_response`]).
#![deny(missing_docs)]

mod error;
mod message;
mod outbound;
mod router;

pub use error::{ApiError, ErrorDetail};
pub use message::{
    ApiRequest, ApiResponse, BodyStream, ChunkSink, MAX_BODY_BYTES, Method, from_json,
};
pub use outbound::{OutboundError, OutboundRequest, OutboundResponse};
pub use router::{Params, Router};
