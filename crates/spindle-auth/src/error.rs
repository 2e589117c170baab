//! Why a caller was refused.

use crate::role::Role;
use thiserror::Error;

/// Authentication and authorisation failures. None is transient: the same
/// credentials fail the same way until something changes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("missing credentials: send Authorization: Bearer <api key or token>")]
    MissingCredentials,
    /// An `Authorization` header that is not `Bearer <token>`.
    #[error("malformed Authorization header: expected Bearer <api key or token>")]
    MalformedAuthorization,
    /// An API key that is unknown, revoked or expired. One message for all,
    /// so a caller learns nothing about keys it does not hold.
    #[error("invalid API key")]
    InvalidApiKey,
    /// A JWT that fails verification: signature, algorithm, time or claims.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// JWTs are not accepted because no verification key is configured.
    #[error("tokens are not accepted: no JWT key is configured")]
    TokensDisabled,
    /// The caller is authenticated but its role is below what the action needs.
    #[error("this needs the {needed} role; the caller is {have}")]
    RoleTooLow {
        /// The role the action needs.
        needed: Role,
        /// The caller's role.
        have: Role,
    },
}

impl AuthError {
    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::RoleTooLow { .. } => "forbidden",
            _ => "unauthenticated",
        }
    }

    /// Always false: retrying with the same credentials cannot succeed.
    pub fn is_transient(&self) -> bool {
        false
    }
}
