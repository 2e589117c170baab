//! Who is calling, and what may they do.
//!
//! A request's `Authorization: Bearer …` carries either an API key (`sk_…`,
//! stored only as its SHA-256 hash) or a JWT. Either way the result is a
//! [`Caller`]: an organisation, a subject and a [`Role`]. Handlers state the
//! role they need with [`Caller::require`].
#![deny(missing_docs)]

mod error;
mod jwt;
mod keys;
mod role;

pub use error::AuthError;
pub use jwt::{JwtIssuer, JwtVerifier, TokenClaims, VerifierKey};
pub use keys::{KEY_ENTROPY_BYTES, NewApiKey, constant_time_eq, generate_api_key, hash_api_key};
pub use role::Role;

/// Which credential a request presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// An API key (`sk_…`).
    ApiKey(&'a str),
    /// Anything else after `Bearer`: read as a JWT.
    Jwt(&'a str),
}

/// Reads the `Authorization` header: `Bearer <api key or JWT>`.
pub fn parse_authorization(header: Option<&str>) -> Result<Credential<'_>, AuthError> {
    let header = header.ok_or(AuthError::MissingCredentials)?;
    let (scheme, token) = header
        .trim()
        .split_once(' ')
        .ok_or(AuthError::MalformedAuthorization)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(AuthError::MalformedAuthorization);
    }
    Ok(if token.starts_with(keys::KEY_PREFIX) {
        Credential::ApiKey(token)
    } else {
        Credential::Jwt(token)
    })
}

/// An authenticated caller: every store query is scoped by its `org_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The organisation acted for.
    pub org_id: String,
    /// Who: `key:<api key id>` for API keys, the JWT's `sub` otherwise.
    pub subject: String,
    /// What they may do.
    pub role: Role,
    /// The API key used, if one was.
    pub api_key_id: Option<String>,
}

impl Caller {
    /// `Ok` when the caller's role is at least `needed`, else [`AuthError::RoleTooLow`].
    pub fn require(&self, needed: Role) -> Result<(), AuthError> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(AuthError::RoleTooLow {
                needed,
                have: self.role,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_api_keys_and_jwts_are_told_apart() {
        assert_eq!(
            parse_authorization(Some("Bearer sk_abc")),
            Ok(Credential::ApiKey("sk_abc"))
        );
        assert_eq!(
            parse_authorization(Some("bearer eyJ.x.y")),
            Ok(Credential::Jwt("eyJ.x.y"))
        );
    }

    #[test]
    fn missing_and_malformed_headers_are_refused() {
        assert_eq!(
            parse_authorization(None),
            Err(AuthError::MissingCredentials)
        );
        for header in ["", "Bearer", "Bearer ", "Basic abc", "sk_abc", "Bearer a b"] {
            assert_eq!(
                parse_authorization(Some(header)),
                Err(AuthError::MalformedAuthorization),
                "{header:?}"
            );
        }
    }

    #[test]
    fn roles_are_ordered_viewer_to_owner() {
        let caller = Caller {
            org_id: "o".into(),
            subject: "s".into(),
            role: Role::Admin,
            api_key_id: None,
        };
        assert!(caller.require(Role::Member).is_ok());
        assert!(caller.require(Role::Admin).is_ok());
        assert_eq!(
            caller.require(Role::Owner),
            Err(AuthError::RoleTooLow {
                needed: Role::Owner,
                have: Role::Admin
            })
        );
    }
}
