//! JWTs: verified with HS256 (the `jwt_secret`) or with a public key
//! (EdDSA or RS256) of an external identity provider; issued with HS256.

use crate::error::AuthError;
use crate::role::Role;
use jwt_simple::prelude::*;
use std::collections::HashSet;

/// Allowed difference between our clock and the issuer's, for `exp` and `nbf`.
const CLOCK_SKEW_SECS: u64 = 60;

/// Spindle's claims beyond the registered ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct OrgClaims {
    org: String,
    role: Role,
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// `sub`: who.
    pub subject: String,
    /// `org`: the organisation id.
    pub org_id: String,
    /// `role`.
    pub role: Role,
}

/// A key that verifies tokens.
pub enum VerifierKey {
    /// HMAC-SHA256 with a shared secret.
    Hs256(HS256Key),
    /// Ed25519 public key (PEM).
    EdDsa(Ed25519PublicKey),
    /// RSA public key (PEM), RS256.
    Rs256(Box<RS256PublicKey>),
}

impl VerifierKey {
    /// An HS256 key from the shared secret.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::Hs256(HS256Key::from_bytes(secret))
    }

    /// A public key from PEM: Ed25519 if it parses as one, else RSA.
    pub fn public_pem(pem: &str) -> Result<Self, String> {
        if let Ok(key) = Ed25519PublicKey::from_pem(pem) {
            return Ok(Self::EdDsa(key));
        }
        RS256PublicKey::from_pem(pem)
            .map(|key| Self::Rs256(Box::new(key)))
            .map_err(|e| format!("public key is neither Ed25519 nor RSA PEM: {e}"))
    }

    fn algorithm(&self) -> &'static str {
        match self {
            Self::Hs256(_) => "HS256",
            Self::EdDsa(_) => "EdDSA",
            Self::Rs256(_) => "RS256",
        }
    }
}

/// Verifies bearer JWTs against the configured keys and claims.
pub struct JwtVerifier {
    keys: Vec<VerifierKey>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl JwtVerifier {
    /// A verifier accepting tokens signed by any of `keys` (one per algorithm),
    /// requiring `iss` and `aud` to match when they are given.
    pub fn new(keys: Vec<VerifierKey>, issuer: Option<String>, audience: Option<String>) -> Self {
        Self {
            keys,
            issuer,
            audience,
        }
    }

    /// Checks `token` at `now` (Unix seconds): signature with the key of the
    /// header's algorithm (so `alg: none` or a swapped algorithm fails),
    /// `exp` present and not passed, `nbf` reached, issuer and audience.
    pub fn verify(&self, token: &str, now_secs: u64) -> Result<TokenClaims, AuthError> {
        if self.keys.is_empty() {
            return Err(AuthError::TokensDisabled);
        }
        let invalid = |e: jwt_simple::Error| AuthError::InvalidToken(e.to_string());
        let metadata = Token::decode_metadata(token).map_err(invalid)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.algorithm() == metadata.algorithm())
            .ok_or_else(|| {
                AuthError::InvalidToken(format!(
                    "algorithm {:?} is not accepted",
                    metadata.algorithm()
                ))
            })?;
        let options = VerificationOptions {
            allowed_issuers: self.issuer.clone().map(|i| HashSet::from([i])),
            allowed_audiences: self.audience.clone().map(|a| HashSet::from([a])),
            time_tolerance: Some(Duration::from_secs(CLOCK_SKEW_SECS)),
            // Our own clock, not the library's: the same on every host and in tests.
            // (`accept_future` stays false: that is what makes `nbf` and `iat` count.)
            artificial_time: Some(UnixTimeStamp::from_secs(now_secs)),
            ..VerificationOptions::default()
        };
        let claims = match key {
            VerifierKey::Hs256(k) => k.verify_token::<OrgClaims>(token, Some(options)),
            VerifierKey::EdDsa(k) => k.verify_token::<OrgClaims>(token, Some(options)),
            VerifierKey::Rs256(k) => k.verify_token::<OrgClaims>(token, Some(options)),
        }
        .map_err(invalid)?;
        if claims.expires_at.is_none() {
            return Err(AuthError::InvalidToken("token has no exp claim".into()));
        }
        let subject = claims
            .subject
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthError::InvalidToken("token has no sub claim".into()))?;
        Ok(TokenClaims {
            subject,
            org_id: claims.custom.org,
            role: claims.custom.role,
        })
    }
}

/// Issues Spindle's own short-lived HS256 tokens.
pub struct JwtIssuer {
    key: HS256Key,
    issuer: Option<String>,
    audience: Option<String>,
}

impl JwtIssuer {
    /// An issuer signing with `secret`, stamping `iss`/`aud` when given.
    pub fn new(secret: &[u8], issuer: Option<String>, audience: Option<String>) -> Self {
        Self {
            key: HS256Key::from_bytes(secret),
            issuer,
            audience,
        }
    }

    /// A token for `claims`, valid from `now_secs` for `ttl_secs`.
    pub fn issue(
        &self,
        claims: &TokenClaims,
        now_secs: u64,
        ttl_secs: u64,
    ) -> Result<String, String> {
        let now = UnixTimeStamp::from_secs(now_secs);
        let mut jwt = JWTClaims {
            issued_at: Some(now),
            expires_at: Some(now + Duration::from_secs(ttl_secs)),
            invalid_before: Some(now),
            issuer: self.issuer.clone(),
            subject: Some(claims.subject.clone()),
            audiences: None,
            jwt_id: None,
            nonce: None,
            custom: OrgClaims {
                org: claims.org_id.clone(),
                role: claims.role,
            },
        };
        if let Some(audience) = &self.audience {
            jwt = jwt.with_audience(audience);
        }
        self.key.authenticate(jwt).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_790_000_000;
    const SECRET: &[u8] = b"a-test-secret-of-32-bytes-or-more";

    fn claims() -> TokenClaims {
        TokenClaims {
            subject: "user-1".into(),
            org_id: "org-1".into(),
            role: Role::Member,
        }
    }

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(vec![VerifierKey::hs256(SECRET)], None, None)
    }

    fn issued(ttl: u64) -> String {
        JwtIssuer::new(SECRET, None, None)
            .issue(&claims(), NOW, ttl)
            .unwrap()
    }

    /// Claims for `org`/`role`, valid for ten minutes from `NOW`.
    fn external_claims(org: &str, role: Role) -> JWTClaims<OrgClaims> {
        let jwt = Claims::with_custom_claims(
            OrgClaims {
                org: org.into(),
                role,
            },
            Duration::from_secs(600),
        )
        .with_subject("external-user");
        JWTClaims {
            issued_at: Some(UnixTimeStamp::from_secs(NOW)),
            invalid_before: Some(UnixTimeStamp::from_secs(NOW)),
            expires_at: Some(UnixTimeStamp::from_secs(NOW + 600)),
            ..jwt
        }
    }

    fn b64(bytes: &[u8]) -> String {
        Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap()
    }

    #[test]
    fn issued_token_verifies_to_its_claims() {
        assert_eq!(verifier().verify(&issued(600), NOW + 10), Ok(claims()));
    }

    #[test]
    fn wrong_signature_is_refused() {
        let other = JwtIssuer::new(b"another-secret-of-32-bytes-or-more", None, None)
            .issue(&claims(), NOW, 600)
            .unwrap();
        assert!(matches!(
            verifier().verify(&other, NOW),
            Err(AuthError::InvalidToken(_))
        ));
    }

    #[test]
    fn expired_token_is_refused_after_the_skew() {
        let token = issued(600);
        assert!(
            verifier()
                .verify(&token, NOW + 600 + CLOCK_SKEW_SECS - 1)
                .is_ok()
        );
        assert!(
            verifier()
                .verify(&token, NOW + 600 + CLOCK_SKEW_SECS + 1)
                .is_err()
        );
    }

    #[test]
    fn not_yet_valid_token_is_refused() {
        let token = issued(600);
        assert!(
            verifier()
                .verify(&token, NOW - CLOCK_SKEW_SECS - 5)
                .is_err()
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64(format!(
            r#"{{"sub":"x","org":"org-1","role":"owner","exp":{}}}"#,
            NOW + 600
        )
        .as_bytes());
        for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
            assert!(
                matches!(
                    verifier().verify(&token, NOW),
                    Err(AuthError::InvalidToken(_))
                ),
                "{token}"
            );
        }
    }

    #[test]
    fn token_without_exp_is_refused() {
        let key = HS256Key::from_bytes(SECRET);
        let jwt = Claims::with_custom_claims(
            OrgClaims {
                org: "org-1".into(),
                role: Role::Owner,
            },
            Duration::from_secs(600),
        )
        .with_subject("x");
        let jwt = JWTClaims {
            expires_at: None,
            issued_at: Some(UnixTimeStamp::from_secs(NOW)),
            invalid_before: None,
            ..jwt
        };
        let token = key.authenticate(jwt).unwrap();
        assert_eq!(
            verifier().verify(&token, NOW),
            Err(AuthError::InvalidToken("token has no exp claim".into()))
        );
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let strict = JwtVerifier::new(
            vec![VerifierKey::hs256(SECRET)],
            Some("spindle".into()),
            Some("api".into()),
        );
        let right = JwtIssuer::new(SECRET, Some("spindle".into()), Some("api".into()))
            .issue(&claims(), NOW, 600)
            .unwrap();
        assert!(strict.verify(&right, NOW).is_ok());
        for (issuer, audience) in [("evil", "api"), ("spindle", "other")] {
            let wrong = JwtIssuer::new(SECRET, Some(issuer.into()), Some(audience.into()))
                .issue(&claims(), NOW, 600)
                .unwrap();
            assert!(strict.verify(&wrong, NOW).is_err(), "{issuer} {audience}");
        }
        assert!(
            strict.verify(&issued(600), NOW).is_err(),
            "no iss/aud at all"
        );
    }

    #[test]
    fn eddsa_tokens_of_an_external_provider_verify_with_its_public_key() {
        let pair = Ed25519KeyPair::generate();
        let public = VerifierKey::public_pem(&pair.public_key().to_pem()).unwrap();
        let verifier = JwtVerifier::new(vec![VerifierKey::hs256(SECRET), public], None, None);
        let jwt = external_claims("org-9", Role::Viewer);
        let token = pair.sign(jwt).unwrap();
        let verified = verifier.verify(&token, NOW).unwrap();
        assert_eq!(verified.org_id, "org-9");
        // An HS256 token signed with the public key's bytes (algorithm confusion) fails.
        let confused = HS256Key::from_bytes(&pair.public_key().to_bytes())
            .authenticate(Claims::create(Duration::from_secs(60)))
            .unwrap();
        assert!(verifier.verify(&confused, NOW).is_err());
    }

    #[test]
    fn rs256_tokens_verify_with_an_rsa_public_key() {
        let pair = RS256KeyPair::from_pem(include_str!("../fixtures/rs256.pem")).unwrap();
        let public = VerifierKey::public_pem(include_str!("../fixtures/rs256.pub.pem")).unwrap();
        assert!(matches!(public, VerifierKey::Rs256(_)));
        let verifier = JwtVerifier::new(vec![public], None, None);
        let jwt = external_claims("org-r", Role::Admin);
        let verified = verifier.verify(&pair.sign(jwt).unwrap(), NOW).unwrap();
        assert_eq!(
            (verified.org_id.as_str(), verified.role),
            ("org-r", Role::Admin)
        );
    }

    #[test]
    fn no_keys_means_tokens_are_disabled() {
        let none = JwtVerifier::new(Vec::new(), None, None);
        assert_eq!(
            none.verify(&issued(600), NOW),
            Err(AuthError::TokensDisabled)
        );
    }
}
