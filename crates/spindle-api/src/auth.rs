//! Authentication for every endpoint: the one path from a request to a
//! [`Caller`], with the per-subject rate limit.

use crate::context::RequestContext;
use crate::now_ms;
use spindle_auth::{AuthError, Role};
use spindle_auth::{
    Caller, Credential, JwtIssuer, JwtVerifier, VerifierKey, hash_api_key, parse_authorization,
};
use spindle_http::{ApiError, ApiRequest};
use spindle_store::{Db, KvStore, Value};

/// Requests per minute per subject when `rate_limit_per_minute` is unset.
pub const DEFAULT_RATE_LIMIT_PER_MINUTE: u32 = 600;
/// The shortest accepted `jwt_secret`: HS256 wants at least the hash's size.
const MIN_JWT_SECRET_BYTES: usize = 32;
/// `last_used_at` is written at most this often per key, to keep reads read-only.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

/// The auth settings, read from Spin variables.
pub struct AuthSettings {
    /// Verifies JWTs with `jwt_secret` and/or `jwt_public_key`.
    pub verifier: JwtVerifier,
    /// Issues tokens in exchange for API keys, when `jwt_secret` is set.
    pub issuer: Option<JwtIssuer>,
    /// `rate_limit_per_minute`: the default per-subject limit.
    pub rate_limit_per_minute: u32,
}

impl AuthSettings {
    /// Reads the settings; a malformed one is 503 `misconfigured`.
    pub fn load(ctx: &RequestContext) -> Result<Self, ApiError> {
        let misconfigured = |name: &str, problem: String| ApiError::misconfigured(name, problem);
        let issuer_claim = ctx.variable("jwt_issuer");
        let audience = ctx.variable("jwt_audience");
        let mut keys = Vec::new();
        let mut issuer = None;
        if let Some(secret) = ctx.variable("jwt_secret") {
            if secret.len() < MIN_JWT_SECRET_BYTES {
                return Err(misconfigured(
                    "jwt_secret",
                    format!("must be at least {MIN_JWT_SECRET_BYTES} bytes"),
                ));
            }
            keys.push(VerifierKey::hs256(secret.as_bytes()));
            issuer = Some(JwtIssuer::new(
                secret.as_bytes(),
                issuer_claim.clone(),
                audience.clone(),
            ));
        }
        if let Some(pem) = ctx.variable("jwt_public_key") {
            keys.push(
                VerifierKey::public_pem(&pem.replace("\\n", "\n"))
                    .map_err(|e| misconfigured("jwt_public_key", e))?,
            );
        }
        let rate_limit_per_minute = match ctx.variable("rate_limit_per_minute") {
            None => DEFAULT_RATE_LIMIT_PER_MINUTE,
            Some(value) => value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                misconfigured(
                    "rate_limit_per_minute",
                    format!("is {value:?}, not a positive integer"),
                )
            })?,
        };
        Ok(Self {
            verifier: JwtVerifier::new(keys, issuer_claim, audience),
            issuer,
            rate_limit_per_minute,
        })
    }
}

/// Who is calling: the request's bearer credential checked against the
/// stored keys or the JWT keys, then counted against the caller's rate limit.
pub fn authenticate(ctx: &RequestContext, request: &ApiRequest) -> Result<Caller, ApiError> {
    let settings = AuthSettings::load(ctx)?;
    let credential = parse_authorization(request.header("authorization"))?;
    let now = now_ms();
    let (caller, limit) = match credential {
        Credential::ApiKey(secret) => {
            let key = find_api_key(ctx.db()?, secret, now)?;
            let limit = key.rate_limit.unwrap_or(settings.rate_limit_per_minute);
            (key.caller, limit)
        }
        Credential::Jwt(token) => {
            let now_secs = u64::try_from(now / 1000).unwrap_or_default();
            let claims = settings.verifier.verify(token, now_secs)?;
            let exists = ctx.db()?.execute(
                "SELECT 1 FROM organizations WHERE id = ?",
                &[Value::from(claims.org_id.as_str())],
            )?;
            if exists.rows.is_empty() {
                return Err(AuthError::InvalidToken("unknown organisation".into()).into());
            }
            let caller = Caller {
                org_id: claims.org_id,
                subject: claims.subject,
                role: claims.role,
                api_key_id: None,
            };
            (caller, settings.rate_limit_per_minute)
        }
    };
    check_rate_limit(ctx.kv()?, &caller.subject, limit, now)?;
    Ok(caller)
}

/// An active API key and what it grants.
pub struct ApiKeyMatch {
    /// The caller the key stands for.
    pub caller: Caller,
    /// Its own requests-per-minute limit, if it has one.
    pub rate_limit: Option<u32>,
}

/// Finds the active key whose hash matches `secret`. Unknown, revoked and
/// expired keys fail alike, so a caller learns nothing about keys it lacks.
pub fn find_api_key(db: &dyn Db, secret: &str, now: i64) -> Result<ApiKeyMatch, ApiError> {
    // Lookup by hash is the one query not scoped by organisation: the key
    // is what tells us the organisation.
    let rows = db.execute(
        "SELECT id, org_id, role, rate_limit_per_minute, last_used_at FROM api_keys \
         WHERE key_hash = ? AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)",
        &[Value::Text(hash_api_key(secret)), Value::Integer(now)],
    )?;
    let row = rows.rows.first().ok_or(AuthError::InvalidApiKey)?;
    let text = |i: usize| row[i].as_str().unwrap_or_default().to_string();
    let id = text(0);
    let role: Role = text(2).parse().map_err(|e: String| ApiError::Internal(e))?;
    let last_used = row[4].as_i64().unwrap_or(0);
    if now - last_used >= LAST_USED_RESOLUTION_MS {
        db.execute(
            "UPDATE api_keys SET last_used_at = ? WHERE id = ?",
            &[Value::Integer(now), Value::from(id.as_str())],
        )?;
    }
    Ok(ApiKeyMatch {
        caller: Caller {
            org_id: text(1),
            subject: format!("key:{id}"),
            role,
            api_key_id: Some(id),
        },
        rate_limit: row[3].as_i64().and_then(|n| u32::try_from(n).ok()),
    })
}

/// A fixed one-minute window per subject, counted in the key-value store.
/// Spin 2's store has no compare-and-swap, so concurrent requests can each
/// read the same count: the limit is approximate under bursts, by design
/// (budgets, which must hold exactly, live in SQLite).
fn check_rate_limit(kv: &dyn KvStore, subject: &str, limit: u32, now: i64) -> Result<(), ApiError> {
    let window = now / 60_000;
    let key = format!("ratelimit:{subject}");
    // One key per subject holding "window:count", overwritten each window,
    // so the store does not grow with time.
    let count = kv
        .get(&key)?
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| {
            let (w, c) = v.split_once(':')?;
            (w.parse::<i64>().ok()? == window).then(|| c.parse::<u32>().ok())?
        })
        .unwrap_or(0);
    if count >= limit {
        let retry_after_secs =
            u64::try_from(((window + 1) * 60_000 - now + 999) / 1000).unwrap_or(1);
        return Err(ApiError::RateLimited {
            message: format!("rate limit of {limit} requests per minute reached"),
            retry_after_secs,
        });
    }
    kv.set(&key, format!("{window}:{}", count + 1).as_bytes())?;
    Ok(())
}

/// Writes one activity record: who did what to which resource.
pub fn record_activity(
    ctx: &RequestContext,
    db: &dyn Db,
    org_id: &str,
    actor: &str,
    action: &str,
    resource: (&str, &str),
    details: &serde_json::Value,
) -> Result<(), ApiError> {
    db.execute(
        "INSERT INTO activity_log (id, org_id, actor, action, resource_type, resource_id, details, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        &[
            Value::Text(ctx.new_id()),
            Value::from(org_id),
            Value::from(actor),
            Value::from(action),
            Value::from(resource.0),
            Value::from(resource.1),
            Value::Text(details.to_string()),
            Value::Integer(now_ms()),
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backends::TestBackends;
    use spindle_store::MemoryKv;

    const SECRET: &str = "sk_unitTestSecretOfFortyThreeBase62Characters00";

    /// A context on fresh SQLite holding one member key, expiring at `expires_at`.
    fn one_key(expires_at: Option<i64>) -> RequestContext {
        let ctx = RequestContext::new(Box::new(TestBackends::memory()));
        let db = ctx.db().unwrap();
        db.execute(
            "INSERT INTO organizations (id, name, created_at, updated_at) VALUES ('o1', 'one', 0, 0)",
            &[],
        )
        .unwrap();
        db.execute(
            "INSERT INTO api_keys (id, org_id, name, role, prefix, key_hash, created_at, expires_at) \
             VALUES ('k1', 'o1', 'ci', 'member', 'sk_unitTest', ?, 0, ?)",
            &[Value::Text(hash_api_key(SECRET)), Value::from(expires_at)],
        )
        .unwrap();
        ctx
    }

    fn last_used_at(ctx: &RequestContext) -> Option<i64> {
        let rows = ctx
            .db()
            .unwrap()
            .execute("SELECT last_used_at FROM api_keys WHERE id = 'k1'", &[])
            .unwrap();
        rows.rows[0][0].as_i64()
    }

    #[test]
    fn last_used_at_moves_at_most_once_a_minute() {
        let ctx = one_key(None);
        let db = ctx.db().unwrap();
        let first = 1_800_000_000_000;
        assert_eq!(last_used_at(&ctx), None);
        find_api_key(db, SECRET, first).unwrap();
        assert_eq!(last_used_at(&ctx), Some(first), "the first use is written");
        find_api_key(db, SECRET, first + 1).unwrap();
        find_api_key(db, SECRET, first + 59_999).unwrap();
        assert_eq!(
            last_used_at(&ctx),
            Some(first),
            "uses within the minute write nothing"
        );
        find_api_key(db, SECRET, first + 60_000).unwrap();
        assert_eq!(
            last_used_at(&ctx),
            Some(first + 60_000),
            "a minute on, it moves"
        );
    }

    #[test]
    fn a_key_is_refused_from_the_millisecond_it_expires() {
        let expires_at = 1_800_000_000_000;
        let ctx = one_key(Some(expires_at));
        let db = ctx.db().unwrap();
        let found = find_api_key(db, SECRET, expires_at - 1).unwrap();
        assert_eq!(found.caller.org_id, "o1");
        assert_eq!(found.caller.role, Role::Member);
        for at in [expires_at, expires_at + 1] {
            assert!(matches!(
                find_api_key(db, SECRET, at),
                Err(ApiError::Unauthenticated(_))
            ));
        }
        assert_eq!(
            last_used_at(&ctx),
            Some(expires_at - 1),
            "a refused use is not recorded"
        );
    }

    #[test]
    fn the_request_after_the_limit_is_429_until_the_window_ends() {
        let kv = MemoryKv::default();
        let now = 10 * 60_000 + 15_000;
        for _ in 0..3 {
            check_rate_limit(&kv, "key:a", 3, now).unwrap();
        }
        let error = check_rate_limit(&kv, "key:a", 3, now).unwrap_err();
        assert_eq!(
            error,
            ApiError::RateLimited {
                message: "rate limit of 3 requests per minute reached".into(),
                retry_after_secs: 45
            }
        );
        check_rate_limit(&kv, "key:b", 3, now).expect("other subjects are counted apart");
        check_rate_limit(&kv, "key:a", 3, now + 45_000).expect("a new window starts at zero");
    }
}
