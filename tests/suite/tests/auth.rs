//! Organisations, API keys, JWTs, roles, tenancy and rate limits, over HTTP.

use jwt_simple::prelude::*;
use serde_json::{Value, json};
use spindle_suite::{
    ADMIN_KEY, JWT_AUDIENCE, JWT_ISSUER, JWT_SECRET, Reply, Target, configured, fixture, now_ms,
    shared, suite_variables, timestamp_ms,
};
use std::collections::HashMap;

fn current_org(target: &Target, token: &str) -> Reply {
    target.call("GET", "/api/v1/orgs/current", Some(token), None)
}

fn keys(target: &Target, token: &str) -> Vec<Value> {
    let reply = target.call("GET", "/api/v1/api-keys", Some(token), None);
    assert_eq!(reply.status, 200);
    reply.json()["data"].as_array().unwrap().clone()
}

fn activity(target: &Target, token: &str) -> Vec<Value> {
    let reply = target.call("GET", "/api/v1/orgs/current/activity", Some(token), None);
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()["data"].as_array().unwrap().clone()
}

#[derive(Serialize, Deserialize)]
struct OrgClaims {
    org: String,
    role: String,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims as an identity provider would issue them, valid from `nbf` to `exp`.
fn claims(org: &str, role: &str, nbf: u64, exp: u64) -> JWTClaims<OrgClaims> {
    Claims::with_custom_claims(
        OrgClaims {
            org: org.into(),
            role: role.into(),
        },
        Duration::from_secs(60),
    )
    .with_subject("user-1")
    .with_issuer(JWT_ISSUER)
    .with_audience(JWT_AUDIENCE)
    .invalid_before(UnixTimeStamp::from_secs(nbf))
    .expires_at(UnixTimeStamp::from_secs(exp))
}

trait ExpiresAt {
    fn expires_at(self, at: UnixTimeStamp) -> Self;
}

impl ExpiresAt for JWTClaims<OrgClaims> {
    fn expires_at(mut self, at: UnixTimeStamp) -> Self {
        self.expires_at = Some(at);
        self.issued_at = self.invalid_before;
        self
    }
}

fn hs256(claims: JWTClaims<OrgClaims>) -> String {
    HS256Key::from_bytes(JWT_SECRET.as_bytes())
        .authenticate(claims)
        .unwrap()
}

fn valid_claims(org: &str, role: &str) -> JWTClaims<OrgClaims> {
    claims(org, role, now() - 10, now() + 600)
}

// --- organisations ---------------------------------------------------------

#[test]
fn platform_admin_creates_an_org_with_an_owner_key_shown_once() {
    let target = shared();
    let reply = target.call(
        "POST",
        "/api/v1/orgs",
        Some(ADMIN_KEY),
        Some(&json!({"name": "  Acme  "})),
    );
    assert_eq!(reply.status, 201);
    let body = reply.json();
    assert_eq!(body["organization"]["name"], "Acme");
    let secret = body["api_key"]["secret"].as_str().unwrap();
    assert!(secret.starts_with("sk_") && secret.len() >= 40, "{secret}");
    assert_eq!(body["api_key"]["role"], "owner");
    let org = current_org(target, secret).json();
    assert_eq!(org["id"], body["organization"]["id"]);
    assert_eq!(org["name"], "Acme");
    let log = activity(target, secret);
    let actions: Vec<&str> = log.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"org.created"), "{actions:?}");
    assert!(actions.contains(&"api_key.created"), "{actions:?}");
}

#[test]
fn org_creation_needs_the_platform_admin_key() {
    let target = shared();
    let org = target.create_org("tenant");
    for token in [None, Some("wrong-admin-key"), Some(org.owner_key.as_str())] {
        let reply = target.call("POST", "/api/v1/orgs", token, Some(&json!({"name": "x"})));
        reply.assert_error(401, "unauthenticated");
    }
}

#[test]
fn bad_org_bodies_are_refused_with_their_problem() {
    let target = shared();
    let post = |body: &[u8]| {
        target.request(
            "POST",
            "/api/v1/orgs",
            &[("authorization", &format!("Bearer {ADMIN_KEY}"))],
            Some(body),
        )
    };
    post(b"{\"name\": ").assert_error(400, "bad_request");
    post(b"{\"name\": 7}").assert_error(400, "bad_request");
    post(b"{\"name\": \"x\", \"plan\": \"gold\"}").assert_error(400, "bad_request");
    post(b"").assert_error(400, "bad_request");
    let reply = post(b"{\"name\": \"   \"}");
    reply.assert_error(422, "validation_failed");
    assert_eq!(reply.json()["error"]["details"][0]["path"], "name");
}

/// Asserts a 503 `misconfigured` whose message and details name `variable`.
fn assert_misconfigured(reply: &Reply, variable: &str) {
    reply.assert_error(503, "misconfigured");
    let error = &reply.json()["error"];
    assert!(
        error["message"].as_str().unwrap().contains(variable),
        "{error}"
    );
    assert_eq!(
        error["details"][0]["path"],
        format!("variables.{variable}"),
        "{error}"
    );
}

#[test]
fn a_missing_or_short_admin_key_is_misconfigured_not_forbidden() {
    for admin_key in [None, Some("short-admin-key")] {
        let mut variables = suite_variables();
        match admin_key {
            None => variables.remove("admin_key"),
            Some(key) => variables.insert("admin_key".into(), key.into()),
        };
        let target = configured(variables);
        for presented in [ADMIN_KEY, admin_key.unwrap_or("anything")] {
            let reply = target.call(
                "POST",
                "/api/v1/orgs",
                Some(presented),
                Some(&json!({"name": "x"})),
            );
            assert_misconfigured(&reply, "admin_key");
        }
    }
}

// --- credentials that prove nothing ----------------------------------------

#[test]
fn requests_without_valid_credentials_are_401_and_store_nothing() {
    let target = shared();
    let org = target.create_org("victim");
    let before = keys(target, &org.owner_key).len();
    let expired = hs256(claims(&org.id, "owner", now() - 1000, now() - 400));
    let not_yet = hs256(claims(&org.id, "owner", now() + 400, now() + 1000));
    let wrong_signature = HS256Key::from_bytes(b"another-secret-of-at-least-32-bytes")
        .authenticate(valid_claims(&org.id, "owner"))
        .unwrap();
    let no_such_org = hs256(valid_claims(
        "00000000-0000-7000-8000-000000000000",
        "owner",
    ));
    let wrong_issuer = hs256(valid_claims(&org.id, "owner").with_issuer("evil"));
    let wrong_audience = hs256(valid_claims(&org.id, "owner").with_audience("elsewhere"));
    let header =
        Base64UrlSafeNoPadding::encode_to_string(br#"{"alg":"none","typ":"JWT"}"#).unwrap();
    let payload = Base64UrlSafeNoPadding::encode_to_string(
        serde_json::to_vec(&valid_claims(&org.id, "owner")).unwrap(),
    )
    .unwrap();
    let alg_none = format!("{header}.{payload}.");
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no header", None),
        ("basic scheme", Some(format!("Basic {}", org.owner_key))),
        ("bare token", Some(org.owner_key.clone())),
        ("empty bearer", Some("Bearer ".into())),
        ("unknown key", Some(format!("Bearer sk_{}", "x".repeat(43)))),
        ("expired jwt", Some(format!("Bearer {expired}"))),
        ("not-yet-valid jwt", Some(format!("Bearer {not_yet}"))),
        ("wrong signature", Some(format!("Bearer {wrong_signature}"))),
        ("alg none", Some(format!("Bearer {alg_none}"))),
        (
            "unknown organisation",
            Some(format!("Bearer {no_such_org}")),
        ),
        ("wrong issuer", Some(format!("Bearer {wrong_issuer}"))),
        ("wrong audience", Some(format!("Bearer {wrong_audience}"))),
        ("garbage", Some("Bearer not.a.jwt".into())),
    ];
    for (case, authorization) in cases {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(authorization) = &authorization {
            headers.push(("authorization", authorization));
        }
        let reply = target.request(
            "POST",
            "/api/v1/api-keys",
            &headers,
            Some(br#"{"name": "sneaky", "role": "owner"}"#),
        );
        assert_eq!(
            reply.status,
            401,
            "{case}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.json()["error"]["code"], "unauthenticated", "{case}");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{case}");
    }
    assert_eq!(
        keys(target, &org.owner_key).len(),
        before,
        "nothing was stored"
    );
}

#[test]
fn revoked_key_is_refused_on_next_request() {
    let target = shared();
    let org = target.create_org("revoker");
    let (id, secret) = target.create_key(&org.owner_key, "member");
    assert_eq!(current_org(target, &secret).status, 200);
    let reply = target.call(
        "DELETE",
        &format!("/api/v1/api-keys/{id}"),
        Some(&org.owner_key),
        None,
    );
    assert_eq!(reply.status, 200);
    assert!(reply.json()["revoked_at"].is_string());
    current_org(target, &secret).assert_error(401, "unauthenticated");
    let again = target.call(
        "DELETE",
        &format!("/api/v1/api-keys/{id}"),
        Some(&org.owner_key),
        None,
    );
    again.assert_error(409, "conflict");
    let actions: Vec<String> = activity(target, &org.owner_key)
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| *a == "api_key.revoked").count(),
        1
    );
}

#[test]
fn expired_key_is_refused() {
    let target = shared();
    let org = target.create_org("expiry");
    let reply = target.call(
        "POST",
        "/api/v1/api-keys",
        Some(&org.owner_key),
        Some(&json!({"name": "past", "expires_at": "2020-01-01T00:00:00Z"})),
    );
    reply.assert_error(422, "validation_failed");
    assert_eq!(reply.json()["error"]["details"][0]["path"], "expires_at");
}

/// An RFC 3339 UTC timestamp with milliseconds, as the API writes them.
fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[test]
fn a_key_past_its_expires_at_is_refused_on_its_next_request() {
    let target = shared();
    let org = target.create_org("expiring");
    // Far enough ahead to be in the future when the app checks it on a
    // loaded machine, near enough for the test to wait it out.
    let expires_at = now_ms() + 3_000;
    let reply = target.call(
        "POST",
        "/api/v1/api-keys",
        Some(&org.owner_key),
        Some(
            &json!({"name": "short-lived", "role": "member", "expires_at": rfc3339_ms(expires_at)}),
        ),
    );
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let created = reply.json();
    assert_eq!(created["expires_at"], rfc3339_ms(expires_at));
    let secret = created["secret"].as_str().unwrap().to_string();
    let before = current_org(target, &secret);
    assert!(
        now_ms() < expires_at,
        "the machine took the key's whole life to answer: nothing was tested"
    );
    assert_eq!(before.status, 200, "a key is good until its expires_at");

    // The event this test is about is the clock passing `expires_at`.
    while now_ms() <= expires_at {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let listed_before = keys(target, &org.owner_key);
    current_org(target, &secret).assert_error(401, "unauthenticated");
    target
        .call("GET", "/api/v1/workflows", Some(&secret), None)
        .assert_error(401, "unauthenticated");
    target
        .call("POST", "/api/v1/auth/token", Some(&secret), None)
        .assert_error(401, "unauthenticated");
    // Refused requests change nothing: the key is listed as it was, expiry
    // and all (an expired key is not revoked).
    let listed_after = keys(target, &org.owner_key);
    assert_eq!(listed_after, listed_before);
    let key = listed_after
        .iter()
        .find(|k| k["id"] == created["id"])
        .expect("the expired key is still listed");
    assert_eq!(key["expires_at"], rfc3339_ms(expires_at));
    assert_eq!(key["revoked_at"], Value::Null);
}

#[test]
fn a_token_minted_from_a_revoked_key_stays_valid_until_its_own_expiry() {
    let target = shared();
    let org = target.create_org("revoked-token");
    let (id, member) = target.create_key(&org.owner_key, "member");
    let minted = target.call(
        "POST",
        "/api/v1/auth/token",
        Some(&member),
        Some(&json!({"ttl_seconds": 3600})),
    );
    assert_eq!(minted.status, 200);
    assert_eq!(minted.json()["expires_in"], 3600);
    let token = minted.json()["access_token"].as_str().unwrap().to_string();
    // The token says when it ends: an hour from now, the longest allowed.
    let issued = HS256Key::from_bytes(JWT_SECRET.as_bytes())
        .verify_token::<OrgClaims>(&token, None)
        .expect("a token signed with the jwt_secret");
    let exp = issued.expires_at.expect("an exp claim").as_secs();
    assert!(
        (now().saturating_sub(60) + 3600..=now() + 3600).contains(&exp),
        "exp {exp} is an hour after issue"
    );
    assert_eq!(issued.custom.org, org.id);
    assert_eq!(issued.custom.role, "member");
    target
        .call(
            "POST",
            "/api/v1/auth/token",
            Some(&member),
            Some(&json!({"ttl_seconds": 3601})),
        )
        .assert_error(422, "validation_failed");

    let revoked = target.call(
        "DELETE",
        &format!("/api/v1/api-keys/{id}"),
        Some(&org.owner_key),
        None,
    );
    assert_eq!(revoked.status, 200);
    current_org(target, &member).assert_error(401, "unauthenticated");
    // As README says: the token obtained with the key goes on working, with
    // the key's role and no more, until it expires.
    assert_eq!(current_org(target, &token).json()["id"], org.id);
    assert_eq!(
        target
            .call("GET", "/api/v1/workflows", Some(&token), None)
            .status,
        200
    );
    target
        .call(
            "POST",
            "/api/v1/api-keys",
            Some(&token),
            Some(&json!({"name": "x"})),
        )
        .assert_error(403, "forbidden");
}

#[test]
fn last_used_at_is_written_on_first_use_and_not_again_within_the_minute() {
    let target = shared();
    let org = target.create_org("last-used");
    let (id, secret) = target.create_key(&org.owner_key, "member");
    let last_used = || {
        keys(target, &org.owner_key)
            .into_iter()
            .find(|k| k["id"] == id.as_str())
            .expect("the key is listed")["last_used_at"]
            .clone()
    };
    assert_eq!(last_used(), Value::Null, "a new key was never used");
    let before = now_ms();
    assert_eq!(current_org(target, &secret).status, 200);
    let after = now_ms();
    let first = last_used();
    let at = timestamp_ms(&first);
    assert!((before..=after).contains(&at), "{first} is the first use");
    // Two more uses: whatever minute boundary they cross, the value stays
    // unless a whole minute has passed since the first use (the unit test
    // `last_used_at_moves_at_most_once_a_minute` shows the minute itself).
    for _ in 0..2 {
        assert_eq!(current_org(target, &secret).status, 200);
    }
    if now_ms() - at < 60_000 {
        assert_eq!(last_used(), first, "no write within the minute");
    }
}

// --- roles -------------------------------------------------------------------

#[test]
fn roles_limit_what_keys_can_do() {
    let target = shared();
    let org = target.create_org("roles");
    let (_, admin) = target.create_key(&org.owner_key, "admin");
    let (_, viewer) = target.create_key(&org.owner_key, "viewer");
    let before = keys(target, &org.owner_key).len();
    let create = |token: &str, role: &str| {
        target.call(
            "POST",
            "/api/v1/api-keys",
            Some(token),
            Some(&json!({"name": "x", "role": role})),
        )
    };
    create(&viewer, "viewer").assert_error(403, "forbidden");
    create(&admin, "owner").assert_error(403, "forbidden");
    target
        .call("GET", "/api/v1/api-keys", Some(&viewer), None)
        .assert_error(403, "forbidden");
    assert_eq!(
        keys(target, &org.owner_key).len(),
        before,
        "nothing was stored"
    );
    assert_eq!(
        create(&admin, "admin").status,
        201,
        "an admin may create its own role"
    );
    assert_eq!(
        current_org(target, &viewer).status,
        200,
        "a viewer may read"
    );
}

#[test]
fn an_admin_cannot_revoke_an_owner_key() {
    let target = shared();
    let org = target.create_org("coup");
    let (_, admin) = target.create_key(&org.owner_key, "admin");
    let owner_id = keys(target, &org.owner_key)
        .iter()
        .find(|k| k["role"] == "owner")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let reply = target.call(
        "DELETE",
        &format!("/api/v1/api-keys/{owner_id}"),
        Some(&admin),
        None,
    );
    reply.assert_error(403, "forbidden");
    assert_eq!(current_org(target, &org.owner_key).status, 200);
}

#[test]
fn invalid_key_requests_name_each_problem() {
    let target = shared();
    let org = target.create_org("validation");
    let reply = target.call(
        "POST",
        "/api/v1/api-keys",
        Some(&org.owner_key),
        Some(&json!({"name": "", "role": "root", "rate_limit_per_minute": 0})),
    );
    reply.assert_error(422, "validation_failed");
    let paths: Vec<String> = reply.json()["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(paths, ["name", "role", "rate_limit_per_minute"]);
}

// --- tenancy -----------------------------------------------------------------

#[test]
fn another_organisations_key_ids_answer_404_on_every_method() {
    let target = shared();
    let ours = target.create_org("ours");
    let theirs = target.create_org("theirs");
    let (their_key_id, their_secret) = target.create_key(&theirs.owner_key, "member");
    for method in ["GET", "DELETE"] {
        let reply = target.call(
            method,
            &format!("/api/v1/api-keys/{their_key_id}"),
            Some(&ours.owner_key),
            None,
        );
        reply.assert_error(404, "not_found");
    }
    // Another organisation's key looks exactly like a missing one.
    let missing_id = "00000000-0000-7000-8000-000000000000";
    let get = |id: &str| {
        target.call(
            "GET",
            &format!("/api/v1/api-keys/{id}"),
            Some(&ours.owner_key),
            None,
        )
    };
    let (theirs_reply, missing_reply) = (get(&their_key_id), get(missing_id));
    assert_eq!(theirs_reply.status, missing_reply.status);
    assert_eq!(
        theirs_reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .replace(&their_key_id, missing_id),
        missing_reply.json()["error"]["message"].as_str().unwrap()
    );
    assert_eq!(
        current_org(target, &their_secret).status,
        200,
        "their key still works"
    );
    let listed = keys(target, &ours.owner_key);
    assert!(listed.iter().all(|k| k["id"] != their_key_id.as_str()));
    assert_eq!(current_org(target, &ours.owner_key).json()["id"], ours.id);
}

#[test]
fn secrets_never_appear_after_creation() {
    let target = shared();
    let org = target.create_org("secrets");
    let (id, secret) = target.create_key(&org.owner_key, "member");
    for path in [
        "/api/v1/api-keys".to_string(),
        format!("/api/v1/api-keys/{id}"),
    ] {
        let reply = target.call("GET", &path, Some(&org.owner_key), None);
        let raw = String::from_utf8_lossy(&reply.body);
        assert!(!raw.contains(&secret), "{path} shows a secret");
        assert!(
            !raw.contains(&org.owner_key),
            "{path} shows the owner secret"
        );
        assert!(
            !raw.contains("key_hash") && !raw.contains("\"secret\""),
            "{path}: {raw}"
        );
        assert!(
            raw.contains(&secret[..11]),
            "{path} shows the visible prefix"
        );
    }
}

// --- JWTs --------------------------------------------------------------------

#[test]
fn an_api_key_is_exchanged_for_a_short_lived_token() {
    let target = shared();
    let org = target.create_org("tokens");
    let (_, member) = target.create_key(&org.owner_key, "member");
    let reply = target.call(
        "POST",
        "/api/v1/auth/token",
        Some(&member),
        Some(&json!({"ttl_seconds": 120})),
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = reply.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 120);
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(current_org(target, token).json()["id"], org.id);
    // The token carries the key's role, not more.
    let create = target.call(
        "POST",
        "/api/v1/api-keys",
        Some(token),
        Some(&json!({"name": "x"})),
    );
    create.assert_error(403, "forbidden");
    // A token cannot be exchanged for another.
    let again = target.call("POST", "/api/v1/auth/token", Some(token), None);
    again.assert_error(401, "unauthenticated");
    let too_long = target.call(
        "POST",
        "/api/v1/auth/token",
        Some(&member),
        Some(&json!({"ttl_seconds": 86400})),
    );
    too_long.assert_error(422, "validation_failed");
}

#[test]
fn tokens_of_an_external_identity_provider_are_accepted() {
    let target = shared();
    let org = target.create_org("sso");
    let pair = Ed25519KeyPair::from_pem(&fixture("jwt-ed25519.pem")).unwrap();
    let token = pair.sign(valid_claims(&org.id, "viewer")).unwrap();
    let reply = current_org(target, &token);
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json()["id"], org.id);
    // Signed by a key nobody configured: refused.
    let stranger = Ed25519KeyPair::generate()
        .sign(valid_claims(&org.id, "viewer"))
        .unwrap();
    current_org(target, &stranger).assert_error(401, "unauthenticated");
}

/// README ("Configuration"): `\n` escapes are accepted for one-line values,
/// so a PEM key fits a one-line variable; a value that is no PEM key is `503
/// misconfigured` on the requests that need it.
#[test]
fn a_public_key_on_one_line_with_escaped_newlines_is_read_and_a_non_pem_one_is_misconfigured() {
    let pair = Ed25519KeyPair::from_pem(&fixture("jwt-ed25519.pem")).unwrap();
    let pem = fixture("jwt-ed25519.pub.pem");
    let one_line = pem.trim_end().replace('\n', "\\n");
    assert!(!one_line.contains('\n'), "{one_line}");
    for (value, works) in [(one_line, true), ("not a public key".to_string(), false)] {
        let mut variables = suite_variables();
        variables.insert("jwt_public_key".into(), value);
        let target = configured(variables);
        let org = target.create_org("sso-one-line");
        let token = pair.sign(valid_claims(&org.id, "viewer")).unwrap();
        let reply = current_org(&target, &token);
        if works {
            assert_eq!(
                reply.status,
                200,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
            assert_eq!(reply.json()["id"], org.id);
        } else {
            assert_misconfigured(&reply, "jwt_public_key");
        }
    }
}

#[test]
fn hs256_tokens_signed_with_the_jwt_secret_are_accepted() {
    let target = shared();
    let org = target.create_org("hs256");
    let token = hs256(valid_claims(&org.id, "admin"));
    assert_eq!(current_org(target, &token).json()["id"], org.id);
    assert_eq!(
        keys(target, &token).len(),
        1,
        "an admin token lists the keys"
    );
}

// --- rate limits ---------------------------------------------------------------

#[test]
fn the_request_after_a_keys_limit_is_429_with_retry_after() {
    let target = shared();
    let org = target.create_org("limits");
    let reply = target.call(
        "POST",
        "/api/v1/api-keys",
        Some(&org.owner_key),
        Some(&json!({"name": "slow", "role": "viewer", "rate_limit_per_minute": 3})),
    );
    let secret = reply.json()["secret"].as_str().unwrap().to_string();
    // The window is a wall-clock minute: if it turns mid-way, try once more.
    for attempt in 0..2 {
        let statuses: Vec<Reply> = (0..4).map(|_| current_org(target, &secret)).collect();
        let codes: Vec<u16> = statuses.iter().map(|r| r.status).collect();
        if codes == [200, 200, 200, 429] || attempt == 1 {
            assert_eq!(codes[3], 429, "{codes:?}");
            let limited = &statuses[3];
            limited.assert_error(429, "rate_limited");
            let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
            assert!((1..=60).contains(&retry), "{retry}");
            break;
        }
    }
    // Other keys of the same organisation are counted apart.
    assert_eq!(current_org(target, &org.owner_key).status, 200);
}

#[test]
fn misconfigured_settings_are_a_clear_fault_not_a_panic() {
    let mut variables: HashMap<String, String> = suite_variables();
    variables.insert("jwt_secret".into(), "too-short".into());
    let target = configured(variables);
    let reply = target.call("GET", "/api/v1/orgs/current", Some("sk_whatever"), None);
    assert_misconfigured(&reply, "jwt_secret");
}

// --- listings and the shapes README shows ----------------------------------------

/// The key names of a JSON object, sorted; panics, showing it, when `value`
/// is not an object.
fn key_set(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

/// `names`, sorted, as owned strings.
fn sorted(names: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    names.sort();
    names
}

/// The fields of an API key as README shows it, without its secret.
const KEY_FIELDS: &[&str] = &[
    "id",
    "name",
    "role",
    "prefix",
    "rate_limit_per_minute",
    "created_by",
    "created_at",
    "last_used_at",
    "expires_at",
    "revoked_at",
];

/// Creates a key of `role` named `name` with `token`; waits until this
/// machine's clock has passed its `created_at` first, so that a key created
/// next is newer by the clock and not only by its id. Returns the 201 body.
fn create_key_after(target: &Target, token: &str, name: &str, role: &str) -> Value {
    let reply = target.call(
        "POST",
        "/api/v1/api-keys",
        Some(token),
        Some(&json!({"name": name, "role": role})),
    );
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let key = reply.json();
    let created = timestamp_ms(&key["created_at"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while now_ms() <= created {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock never passed {created}"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    key
}

#[test]
fn revoked_keys_are_listed_with_their_revocation_newest_first() {
    let target = shared();
    let org = target.create_org("key-listing");
    let owner_id = keys(target, &org.owner_key)[0]["id"].clone();
    // The owner key's created_at is in the past too before the next ones.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while now_ms() <= timestamp_ms(&keys(target, &org.owner_key)[0]["created_at"]) {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let first = create_key_after(target, &org.owner_key, "first", "member");
    let second = create_key_after(target, &org.owner_key, "second", "viewer");
    let revoked = target.call(
        "DELETE",
        &format!("/api/v1/api-keys/{}", first["id"].as_str().unwrap()),
        Some(&org.owner_key),
        None,
    );
    assert_eq!(revoked.status, 200);
    let revoked_at = revoked.json()["revoked_at"].clone();
    assert!(revoked_at.is_string(), "{}", revoked.json());

    let reply = target.call("GET", "/api/v1/api-keys", Some(&org.owner_key), None);
    assert_eq!(reply.status, 200);
    let raw = String::from_utf8_lossy(&reply.body).into_owned();
    let body = reply.json();
    assert_eq!(key_set(&body), sorted(&["data", "total"]), "{body}");
    assert_eq!(body["total"], 3);
    let listed = body["data"].as_array().unwrap();
    let ids: Vec<&Value> = listed.iter().map(|k| &k["id"]).collect();
    assert_eq!(
        ids,
        [&second["id"], &first["id"], &owner_id],
        "newest first, the revoked key included: {body}"
    );
    let created: Vec<i64> = listed
        .iter()
        .map(|k| timestamp_ms(&k["created_at"]))
        .collect();
    assert!(created.windows(2).all(|w| w[0] > w[1]), "{created:?}");
    let revocations: Vec<&Value> = listed.iter().map(|k| &k["revoked_at"]).collect();
    assert_eq!(revocations, [&Value::Null, &revoked_at, &Value::Null]);
    assert_eq!(listed[1]["name"], "first");
    assert_eq!(listed[1]["role"], "member");
    // Never a secret: no key carries one, and neither secret is anywhere.
    for key in listed {
        assert_eq!(key_set(key), sorted(KEY_FIELDS), "{key}");
    }
    for secret in [&first["secret"], &second["secret"]] {
        let secret = secret.as_str().unwrap();
        assert!(secret.starts_with("sk_"), "{secret}");
        assert!(!raw.contains(secret), "the list shows {secret}");
    }
    assert!(
        !raw.contains(&org.owner_key),
        "the list shows the owner's secret"
    );
}

#[test]
fn a_token_lives_900_seconds_by_default_and_60_to_3600_when_asked() {
    let target = shared();
    let org = target.create_org("token-ttl");
    let (_, member) = target.create_key(&org.owner_key, "member");
    let exp_of = |token: &str| {
        HS256Key::from_bytes(JWT_SECRET.as_bytes())
            .verify_token::<OrgClaims>(token, None)
            .expect("a token signed with the jwt_secret")
            .expires_at
            .expect("an exp claim")
            .as_secs()
    };
    // No body at all, and an empty object: the default.
    for body in [None, Some(json!({}))] {
        let before = now();
        let reply = target.call("POST", "/api/v1/auth/token", Some(&member), body.as_ref());
        let after = now();
        assert_eq!(
            reply.status,
            200,
            "{body:?}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let minted = reply.json();
        assert_eq!(minted["expires_in"], 900, "{body:?}: {minted}");
        let exp = exp_of(minted["access_token"].as_str().unwrap());
        assert!(
            (before + 900..=after + 900).contains(&exp),
            "{body:?}: exp {exp} is 900 s after issue ({before}..={after})"
        );
    }
    // The bounds are in; one past either is refused, naming the field.
    for ttl in [60, 3600] {
        let reply = target.call(
            "POST",
            "/api/v1/auth/token",
            Some(&member),
            Some(&json!({"ttl_seconds": ttl})),
        );
        assert_eq!(reply.status, 200, "{ttl}");
        assert_eq!(reply.json()["expires_in"], ttl);
    }
    for ttl in [0, 59, 3601] {
        let reply = target.call(
            "POST",
            "/api/v1/auth/token",
            Some(&member),
            Some(&json!({"ttl_seconds": ttl})),
        );
        reply.assert_error(422, "validation_failed");
        assert_eq!(
            reply.json()["error"]["details"][0]["path"],
            "ttl_seconds",
            "{ttl}"
        );
    }
}

#[test]
fn token_exchange_without_a_jwt_secret_is_403_feature_disabled() {
    let mut variables = suite_variables();
    variables.remove("jwt_secret");
    let target = configured(variables);
    let org = target.create_org("no-jwt-secret");
    let before = activity(&target, &org.owner_key);
    for body in [None, Some(json!({"ttl_seconds": 600}))] {
        let reply = target.call(
            "POST",
            "/api/v1/auth/token",
            Some(&org.owner_key),
            body.as_ref(),
        );
        reply.assert_error(403, "feature_disabled");
    }
    // The key itself still works, and nothing was recorded.
    assert_eq!(current_org(&target, &org.owner_key).status, 200);
    assert_eq!(activity(&target, &org.owner_key), before);
}

#[test]
fn org_key_and_token_responses_have_exactly_the_fields_readme_shows() {
    let target = shared();
    let reply = target.call(
        "POST",
        "/api/v1/orgs",
        Some(ADMIN_KEY),
        Some(&json!({"name": "Acme shapes", "owner_key_name": "ops"})),
    );
    assert_eq!(reply.status, 201);
    let created = reply.json();
    assert_eq!(
        key_set(&created),
        sorted(&["organization", "api_key"]),
        "{created}"
    );
    let organization = &created["organization"];
    assert_eq!(
        key_set(organization),
        sorted(&["id", "name", "created_at"]),
        "{organization}"
    );
    // README: {"id", "name", "role": "owner", "prefix", "secret": "sk_…", …},
    // the "…" being the rest of an API key.
    let owner_key = &created["api_key"];
    let mut with_secret = KEY_FIELDS.to_vec();
    with_secret.push("secret");
    assert_eq!(key_set(owner_key), sorted(&with_secret), "{owner_key}");
    assert_eq!(owner_key["role"], "owner");
    assert_eq!(owner_key["name"], "ops");
    let secret = owner_key["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("sk_"), "{secret}");
    assert_eq!(owner_key["prefix"], secret[..11], "{owner_key}");

    let current = current_org(target, &secret).json();
    assert_eq!(key_set(&current), sorted(&["id", "name", "created_at"]));
    assert_eq!(&current, organization);

    let page = target
        .call(
            "GET",
            "/api/v1/orgs/current/activity?limit=10",
            Some(&secret),
            None,
        )
        .json();
    assert_eq!(key_set(&page), sorted(&["data", "next_before"]), "{page}");
    let entries = page["data"].as_array().unwrap();
    assert!(!entries.is_empty(), "{page}");
    for entry in entries {
        assert_eq!(
            key_set(entry),
            sorted(&[
                "id",
                "actor",
                "action",
                "resource_type",
                "resource_id",
                "details",
                "created_at"
            ]),
            "{entry}"
        );
    }

    let reply = target.call(
        "POST",
        "/api/v1/api-keys",
        Some(&secret),
        Some(&json!({"name": "ci", "role": "member", "expires_at": "2099-01-01T00:00:00Z", "rate_limit_per_minute": 120})),
    );
    assert_eq!(reply.status, 201);
    let key = reply.json();
    assert_eq!(key_set(&key), sorted(&with_secret), "{key}");
    let id = key["id"].as_str().unwrap();
    let one = target
        .call(
            "GET",
            &format!("/api/v1/api-keys/{id}"),
            Some(&secret),
            None,
        )
        .json();
    assert_eq!(key_set(&one), sorted(KEY_FIELDS), "{one}");
    let revoked = target
        .call(
            "DELETE",
            &format!("/api/v1/api-keys/{id}"),
            Some(&secret),
            None,
        )
        .json();
    assert_eq!(key_set(&revoked), sorted(KEY_FIELDS), "{revoked}");
    assert!(revoked["revoked_at"].is_string(), "{revoked}");

    let token = target
        .call(
            "POST",
            "/api/v1/auth/token",
            Some(&secret),
            Some(&json!({"ttl_seconds": 600})),
        )
        .json();
    assert_eq!(
        key_set(&token),
        sorted(&["access_token", "token_type", "expires_in"]),
        "{token}"
    );
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["expires_in"], 600);
    assert!(
        token["access_token"].as_str().unwrap().starts_with("eyJ"),
        "{token}"
    );
}
