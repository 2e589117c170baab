//! `POST /hooks/:workflow_id`: a signed webhook delivery starts a run whose
//! trigger output is the delivery's JSON body. Deliveries are signed as the
//! Standard Webhooks specification says, or as GitHub signs them, per the
//! workflow's `webhook_scheme`; a delivery id is accepted once.

use super::dispatch::internal_key;
use super::{check_inputs, runner, started};
use crate::auth::record_activity;
use crate::context::RequestContext;
use crate::now_ms;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde_json::{Value as Json, json};
use sha2::Sha256;
use spindle_auth::{Caller, Role, constant_time_eq};
use spindle_definition::Definition;
use spindle_http::{ApiError, ApiRequest, ApiResponse, Params};
use spindle_store::{DbErrorKind, OrgScoped, Value};

/// How far a Standard Webhooks `webhook-timestamp` may be from now, either way.
const TOLERANCE_SECS: i64 = 5 * 60;
/// Longest delivery id kept for replay protection.
const MAX_WEBHOOK_ID_CHARS: usize = 255;

/// What the delivery's URL names: the workflow and how its calls are signed.
struct HookTarget {
    /// The workflow's organisation.
    org_id: String,
    /// Whether the workflow may start runs.
    is_active: bool,
    /// The workflow's webhook secret (`whsec_…`).
    secret: String,
    /// `standard` or `github`.
    scheme: String,
    /// The current version, which the run is pinned to.
    version: i64,
    /// That version's definition.
    definition: Definition,
}

/// `POST /hooks/:workflow_id` (signed delivery, no API key): verifies the
/// signature and the delivery id, then starts a run and answers `202`.
pub(super) fn receive(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let workflow_id = params.get("workflow_id").unwrap_or_default();
    let target = load(ctx, workflow_id)?;
    let webhook_id = match target.scheme.as_str() {
        "github" => verify_github(request, &target.secret)?,
        _ => verify_standard(request, &target.secret, now_ms() / 1000)?,
    };
    if webhook_id.chars().count() > MAX_WEBHOOK_ID_CHARS {
        return Err(ApiError::bad_request(format!(
            "the delivery id is longer than {MAX_WEBHOOK_ID_CHARS} characters"
        )));
    }
    if !target.is_active {
        return Err(ApiError::Conflict(format!(
            "workflow {workflow_id} is not active"
        )));
    }
    let inputs: Json = request.json()?;
    if let Json::Object(fields) = &inputs {
        check_inputs(&target.definition, fields)?;
    }
    internal_key(ctx)?;
    crate::agents::check_call_settings(ctx)?;
    super::heartbeat::kick(ctx);

    let caller = Caller {
        org_id: target.org_id.clone(),
        subject: format!("webhook:{workflow_id}"),
        role: Role::Member,
        api_key_id: None,
    };
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    // The receipt comes first: a delivery id already seen is a replay.
    ctx.db()?
        .execute(
            "INSERT INTO webhook_receipts (org_id, workflow_id, webhook_id, received_at) \
             VALUES (?, ?, ?, ?)",
            &[
                Value::from(caller.org_id.as_str()),
                Value::from(workflow_id),
                Value::from(webhook_id.as_str()),
                Value::Integer(now_ms()),
            ],
        )
        .map_err(|e| match e.kind {
            DbErrorKind::Constraint => {
                ApiError::Conflict(format!("webhook {webhook_id} was already received"))
            }
            _ => e.into(),
        })?;
    let start = runner::RunStart {
        workflow_id,
        version: target.version,
        definition: &target.definition,
        inputs,
        trigger_kind: "webhook",
        idempotency: None,
        reuse: &[],
    };
    let id = match runner::start_run(ctx, &caller, start) {
        Ok(id) => id,
        Err(error) => {
            // Nothing started: release the id so a redelivery can succeed.
            if let Err(cleanup) = org.execute(
                "DELETE FROM webhook_receipts WHERE org_id = ?1 AND workflow_id = ?2 AND webhook_id = ?3",
                &[Value::from(workflow_id), Value::from(webhook_id.as_str())],
            ) {
                eprintln!("spindle: webhook receipt {webhook_id} was not released: {cleanup}");
            }
            return Err(error);
        }
    };
    org.execute(
        "UPDATE webhook_receipts SET execution_id = ?2 WHERE org_id = ?1 AND workflow_id = ?3 \
         AND webhook_id = ?4",
        &[
            Value::from(id.as_str()),
            Value::from(workflow_id),
            Value::from(webhook_id.as_str()),
        ],
    )?;
    record_activity(
        ctx,
        ctx.db()?,
        &caller.org_id,
        &caller.subject,
        "workflow.started",
        ("execution", &id),
        &json!({"workflow_id": workflow_id, "trigger": "webhook", "webhook_id": webhook_id}),
    )?;
    Ok(started(&id, false))
}

/// The live workflow with this id and its current definition; 404 otherwise.
fn load(ctx: &RequestContext, workflow_id: &str) -> Result<HookTarget, ApiError> {
    // The one lookup not scoped by organisation: a webhook URL names only the
    // workflow, and its organisation is learnt here. Nothing is returned or
    // done for it until the delivery's signature proves the sender knows the
    // workflow's secret.
    let row = ctx
        .db()?
        .execute(
            "SELECT w.org_id, w.is_active, w.webhook_secret, w.webhook_scheme, w.current_version, \
             v.definition FROM workflows w JOIN workflow_versions v \
             ON v.workflow_id = w.id AND v.version = w.current_version \
             WHERE w.id = ? AND w.deleted_at IS NULL",
            &[Value::from(workflow_id)],
        )?
        .into_first()
        .ok_or_else(|| ApiError::NotFound(format!("workflow {workflow_id} not found")))?;
    let text = |i: usize| row[i].as_str().unwrap_or_default().to_string();
    let definition = serde_json::from_str(row[5].as_str().unwrap_or_default())
        .map_err(|e| ApiError::Internal(format!("stored definition is unreadable: {e}")))?;
    Ok(HookTarget {
        org_id: text(0),
        is_active: row[1].as_i64() == Some(1),
        secret: text(2),
        scheme: text(3),
        version: row[4].as_i64().unwrap_or(1),
        definition,
    })
}

/// HMAC-SHA256 of `parts`, concatenated, under `key`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// The Standard Webhooks signature (the base64 after `v1,`) of a message:
/// HMAC-SHA256 of `{id}.{timestamp}.{body}` keyed by the base64-decoded part
/// of `secret` after `whsec_`. Verifies inbound deliveries and signs events.
pub(super) fn standard_signature(
    secret: &str,
    id: &str,
    timestamp: &str,
    body: &[u8],
) -> Result<String, ApiError> {
    let key = BASE64
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|e| ApiError::Internal(format!("stored webhook secret is unreadable: {e}")))?;
    Ok(BASE64.encode(hmac_sha256(
        &key,
        &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    )))
}

/// A header's value, or 401 naming it.
fn required<'a>(request: &'a ApiRequest, name: &str) -> Result<&'a str, ApiError> {
    request
        .header(name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::Unauthenticated(format!("the {name} header is missing")))
}

/// Standard Webhooks: `webhook-signature` holds space-separated `v1,<base64>`
/// entries over `{webhook-id}.{webhook-timestamp}.{body}`, keyed by the
/// base64 after `whsec_`; one match within the time window is enough.
/// Returns the `webhook-id`.
fn verify_standard(request: &ApiRequest, secret: &str, now_secs: i64) -> Result<String, ApiError> {
    let id = required(request, "webhook-id")?;
    let timestamp = required(request, "webhook-timestamp")?;
    let signatures = required(request, "webhook-signature")?;
    let sent: i64 = timestamp
        .parse()
        .map_err(|_| ApiError::Unauthenticated("webhook-timestamp is not Unix seconds".into()))?;
    if (now_secs - sent).abs() > TOLERANCE_SECS {
        return Err(ApiError::Unauthenticated(
            "webhook-timestamp is more than 5 minutes from now".into(),
        ));
    }
    let expected = standard_signature(secret, id, timestamp, &request.body)?;
    let matches = signatures
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .any(|(_, signature)| constant_time_eq(signature.as_bytes(), expected.as_bytes()));
    if matches {
        Ok(id.to_string())
    } else {
        Err(ApiError::Unauthenticated(
            "no webhook-signature matches".into(),
        ))
    }
}

/// GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`, keyed
/// by the secret's bytes. Returns the `X-GitHub-Delivery` id.
fn verify_github(request: &ApiRequest, secret: &str) -> Result<String, ApiError> {
    let delivery = required(request, "x-github-delivery")?;
    let given = required(request, "x-hub-signature-256")?;
    let given = given.strip_prefix("sha256=").ok_or_else(|| {
        ApiError::Unauthenticated("X-Hub-Signature-256 must start with sha256=".into())
    })?;
    let expected: String = hmac_sha256(secret.as_bytes(), &[&request.body])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if constant_time_eq(given.to_ascii_lowercase().as_bytes(), expected.as_bytes()) {
        Ok(delivery.to_string())
    } else {
        Err(ApiError::Unauthenticated(
            "X-Hub-Signature-256 does not match".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spindle_http::Method;

    /// The Standard Webhooks specification's own test vector.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1614265330;
    const BODY: &str = r#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn delivery(headers: &[(&str, &str)]) -> ApiRequest {
        let mut request = ApiRequest::new(Method::Post, "/hooks/w");
        request.headers = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        request.body = BODY.as_bytes().to_vec();
        request
    }

    #[test]
    fn the_specification_vector_verifies() {
        let ts = TIMESTAMP.to_string();
        let request = delivery(&[
            ("webhook-id", ID),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &format!("v1,bogus {SIGNATURE}")),
        ]);
        assert_eq!(
            verify_standard(&request, SECRET, TIMESTAMP + 10).unwrap(),
            ID
        );
        let late = verify_standard(&request, SECRET, TIMESTAMP + TOLERANCE_SECS + 1);
        assert!(matches!(late, Err(ApiError::Unauthenticated(_))));
        let early = verify_standard(&request, SECRET, TIMESTAMP - TOLERANCE_SECS - 1);
        assert!(matches!(early, Err(ApiError::Unauthenticated(_))));
    }

    #[test]
    fn the_shared_signer_reproduces_the_specification_vector() {
        let signature =
            standard_signature(SECRET, ID, &TIMESTAMP.to_string(), BODY.as_bytes()).unwrap();
        assert_eq!(format!("v1,{signature}"), SIGNATURE);
    }

    #[test]
    fn a_wrong_or_missing_signature_is_refused() {
        let ts = TIMESTAMP.to_string();
        let wrong = delivery(&[
            ("webhook-id", "msg_other"),
            ("webhook-timestamp", &ts),
            ("webhook-signature", SIGNATURE),
        ]);
        assert!(matches!(
            verify_standard(&wrong, SECRET, TIMESTAMP),
            Err(ApiError::Unauthenticated(_))
        ));
        let missing = delivery(&[("webhook-id", ID), ("webhook-timestamp", &ts)]);
        assert!(matches!(
            verify_standard(&missing, SECRET, TIMESTAMP),
            Err(ApiError::Unauthenticated(_))
        ));
    }

    #[test]
    fn github_signatures_are_hex_over_the_body() {
        let secret = "It's a Secret to Everybody";
        let mut request = delivery(&[("x-github-delivery", "d-1")]);
        request.body = b"Hello, World!".to_vec();
        // GitHub's documented example for this secret and payload.
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        request
            .headers
            .push(("X-Hub-Signature-256".into(), good.into()));
        assert_eq!(verify_github(&request, secret).unwrap(), "d-1");
        request.headers.pop();
        request
            .headers
            .push(("X-Hub-Signature-256".into(), good.replace("757", "758")));
        assert!(matches!(
            verify_github(&request, secret),
            Err(ApiError::Unauthenticated(_))
        ));
    }
}
