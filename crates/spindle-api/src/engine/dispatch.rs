//! Internal dispatch: signed tokens for `/internal/*` and the self request
//! that hands a step to an invocation of its own.

use crate::context::RequestContext;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use spindle_auth::constant_time_eq;
use spindle_http::{ApiError, ApiRequest, OutboundRequest};

/// Header carrying the dispatch token.
pub const TOKEN_HEADER: &str = "x-spindle-dispatch";
/// Header carrying the hop count: Spin has no loop guard of its own.
pub const HOP_HEADER: &str = "x-spindle-hop";
/// Most chained self requests one run may make.
pub const MAX_HOPS: u64 = 100_000;
/// How long a dispatch token is valid.
const TOKEN_TTL_MS: i64 = 5 * 60_000;

/// The `internal_key` variable that signs dispatch; runs cannot start or
/// move without it (503 `misconfigured`).
pub fn internal_key(ctx: &RequestContext) -> Result<String, ApiError> {
    ctx.required_secret("internal_key")
}

fn signature(key: &str, subject: &str, expires: i64) -> String {
    // HMAC accepts keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(format!("{subject}.{expires}").as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A token allowing one internal call about `subject` (a step id, `tick`) until `now + TTL`.
pub fn sign(key: &str, subject: &str, now: i64) -> String {
    let expires = now + TOKEN_TTL_MS;
    format!("{expires}.{}", signature(key, subject, expires))
}

/// Checks an internal request's token for `subject` and its hop count. A
/// request from loopback proves nothing (self requests come from there), so
/// only the signature counts. Refusals are 403 and nothing runs.
pub fn verify(
    ctx: &RequestContext,
    request: &ApiRequest,
    subject: &str,
    now: i64,
) -> Result<u64, ApiError> {
    let key = internal_key(ctx)?;
    let refused = |why: &str| ApiError::Forbidden(format!("internal endpoint: {why}"));
    let token = request
        .header(TOKEN_HEADER)
        .ok_or_else(|| refused("no dispatch token"))?;
    let (expires, given) = token
        .split_once('.')
        .ok_or_else(|| refused("malformed dispatch token"))?;
    let expires: i64 = expires
        .parse()
        .map_err(|_| refused("malformed dispatch token"))?;
    if !constant_time_eq(
        given.as_bytes(),
        signature(&key, subject, expires).as_bytes(),
    ) {
        return Err(refused("bad dispatch token"));
    }
    if expires < now {
        return Err(refused("expired dispatch token"));
    }
    let hops: u64 = request
        .header(HOP_HEADER)
        .and_then(|h| h.parse().ok())
        .unwrap_or(0);
    if hops > MAX_HOPS {
        return Err(refused("too many hops"));
    }
    Ok(hops)
}

/// Hands step `step_id` to a new invocation with a self request. The
/// invocation answers as soon as it has claimed the step, so this waits
/// only for that. A failed dispatch is left to the tick, which re-sends
/// queued steps.
pub fn dispatch_step(
    ctx: &RequestContext,
    step_id: &str,
    hops: u64,
    now: i64,
) -> Result<(), String> {
    dispatch(
        ctx,
        &format!("/internal/steps/{step_id}"),
        step_id,
        hops,
        &[],
        now,
    )
}

/// Sends `POST path` to the app itself, signed for `subject`, with the hop
/// count `hops + 1` and `headers`; `Ok` once it answered below 300.
pub fn dispatch(
    ctx: &RequestContext,
    path: &str,
    subject: &str,
    hops: u64,
    headers: &[(&str, &str)],
    now: i64,
) -> Result<(), String> {
    let key = internal_key(ctx).map_err(|e| e.to_string())?;
    let mut all = vec![
        (TOKEN_HEADER.to_string(), sign(&key, subject, now)),
        (HOP_HEADER.to_string(), (hops + 1).to_string()),
    ];
    all.extend(headers.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    let request = OutboundRequest {
        method: "POST".into(),
        // `self.alt` (or a URL without a host) reaches this app's router; it
        // needs "http://self" in allowed_outbound_hosts. `http://self/…` is refused by Spin.
        url: format!("http://self.alt{path}"),
        headers: all,
        body: Vec::new(),
        timeout_ms: 10_000,
        max_response_bytes: 64 * 1024,
    };
    match ctx.send(&request) {
        Ok(reply) if reply.status < 300 => Ok(()),
        Ok(reply) => Err(format!(
            "dispatch answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        )),
        Err(error) => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An internal key of the length Spindle accepts.
    const KEY: &str = "unit-test-internal-key-of-32-characters";

    #[test]
    fn a_token_is_bound_to_its_subject_and_key() {
        let token = sign(KEY, "step-1", 1_000);
        let (expires, mac) = token.split_once('.').unwrap();
        let expires: i64 = expires.parse().unwrap();
        assert_eq!(mac, signature(KEY, "step-1", expires));
        assert_ne!(mac, signature(KEY, "step-2", expires));
        assert_ne!(mac, signature("other", "step-1", expires));
        assert_eq!(expires, 1_000 + TOKEN_TTL_MS);
    }

    fn context() -> RequestContext {
        RequestContext::new(Box::new(
            crate::test_backends::TestBackends::memory().variable("internal_key", KEY),
        ))
    }

    fn request(token: &str, hops: Option<u64>) -> ApiRequest {
        let mut request = ApiRequest::new(spindle_http::Method::Post, "/internal/steps/step-1");
        request.headers.push((TOKEN_HEADER.into(), token.into()));
        if let Some(hops) = hops {
            request.headers.push((HOP_HEADER.into(), hops.to_string()));
        }
        request
    }

    fn refusal(result: Result<u64, ApiError>) -> String {
        match result {
            Err(ApiError::Forbidden(why)) => why,
            other => panic!("expected a 403, got {other:?}"),
        }
    }

    #[test]
    fn a_well_signed_token_is_refused_once_it_has_expired() {
        let ctx = context();
        let token = sign(KEY, "step-1", 1_000);
        let last_valid = 1_000 + TOKEN_TTL_MS;
        assert_eq!(
            verify(&ctx, &request(&token, None), "step-1", last_valid),
            Ok(0)
        );
        let why = refusal(verify(
            &ctx,
            &request(&token, None),
            "step-1",
            last_valid + 1,
        ));
        assert!(why.contains("expired"), "{why}");
    }

    #[test]
    fn a_chain_past_the_hop_limit_is_refused() {
        let ctx = context();
        let token = sign(KEY, "step-1", 1_000);
        let at_limit = verify(&ctx, &request(&token, Some(MAX_HOPS)), "step-1", 1_000);
        assert_eq!(at_limit, Ok(MAX_HOPS));
        let why = refusal(verify(
            &ctx,
            &request(&token, Some(MAX_HOPS + 1)),
            "step-1",
            1_000,
        ));
        assert!(why.contains("too many hops"), "{why}");
    }

    #[test]
    fn a_token_for_another_step_or_key_is_refused() {
        let ctx = context();
        let other_step = sign(KEY, "step-2", 1_000);
        let why = refusal(verify(&ctx, &request(&other_step, None), "step-1", 1_000));
        assert!(why.contains("bad dispatch token"), "{why}");
        let other_key = sign("not-the-key", "step-1", 1_000);
        refusal(verify(&ctx, &request(&other_key, None), "step-1", 1_000));
    }
}
