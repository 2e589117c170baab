//! The API's error type and its JSON shape.

use crate::message::{ApiResponse, Method};
use serde::Serialize;
use serde_json::json;

/// One problem found in a request, located by a path into its body
/// (`nodes[2].config.agent_id`) or naming a header or query parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorDetail {
    /// Where the problem is.
    pub path: String,
    /// What is wrong there.
    pub problem: String,
}

impl ErrorDetail {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            problem: problem.into(),
        }
    }
}

/// Everything an API call can fail with. Each variant has a stable
/// machine-readable [`code`](ApiError::code) and an HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON, or not of the expected shape (400).
    #[error("{message}")]
    BadRequest {
        /// What could not be read.
        message: String,
        /// Where, when known.
        details: Vec<ErrorDetail>,
    },
    /// No credentials, or credentials that prove nothing (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's role is too low for this action (403).
    #[error("{0}")]
    Forbidden(String),
    /// The endpoint is switched off by configuration (403).
    #[error("{0}")]
    Disabled(String),
    /// No such route or resource, or one that belongs to another organisation (404).
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not for this method (405).
    #[error("method {method} is not allowed here")]
    MethodNotAllowed {
        /// The method the caller used.
        method: Method,
        /// The methods the route accepts.
        allowed: Vec<Method>,
    },
    /// The request conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than the API accepts (413).
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body is well-formed but describes something invalid (422).
    #[error("{message}")]
    Validation {
        /// A summary.
        message: String,
        /// Every problem found, with its path.
        details: Vec<ErrorDetail>,
    },
    /// A rate or budget limit was reached (429).
    #[error("{message}")]
    RateLimited {
        /// What limit was reached.
        message: String,
        /// Seconds until a retry may succeed.
        retry_after_secs: u64,
    },
    /// A call could pass a `block` budget's limit, so it was not made (429
    /// `budget_exceeded`); not transient: it passes only once spend frees up.
    #[error("{0}")]
    BudgetExceeded(String),
    /// A dependency (storage, a provider) is unavailable for now (503).
    #[error("{0}")]
    Unavailable(String),
    /// A Spin variable the request needs is missing or unusable (503
    /// `misconfigured`): the operator must fix the app's settings.
    #[error("Spindle is misconfigured: the variable {variable} {problem}")]
    Misconfigured {
        /// The variable's name (`admin_key`), as in `spin.toml`.
        variable: String,
        /// What is wrong with it (`is not set`).
        problem: String,
    },
    /// A fault in Spindle itself (500).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A 503 `misconfigured` naming the Spin variable at fault.
    pub fn misconfigured(variable: &str, problem: impl Into<String>) -> Self {
        Self::Misconfigured {
            variable: variable.to_string(),
            problem: problem.into(),
        }
    }

    /// A 400 for a body or parameter that cannot be read.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "bad_request",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::Disabled(_) => "feature_disabled",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::Validation { .. } => "validation_failed",
            Self::RateLimited { .. } => "rate_limited",
            Self::BudgetExceeded(_) => "budget_exceeded",
            Self::Unavailable(_) => "unavailable",
            Self::Misconfigured { .. } => "misconfigured",
            Self::Internal(_) => "internal",
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest { .. } => 400,
            Self::Unauthenticated(_) => 401,
            Self::Forbidden(_) | Self::Disabled(_) => 403,
            Self::NotFound(_) => 404,
            Self::MethodNotAllowed { .. } => 405,
            Self::Conflict(_) => 409,
            Self::PayloadTooLarge { .. } => 413,
            Self::Validation { .. } => 422,
            Self::RateLimited { .. } | Self::BudgetExceeded(_) => 429,
            Self::Unavailable(_) | Self::Misconfigured { .. } => 503,
            Self::Internal(_) => 500,
        }
    }

    /// Whether the same request may succeed later without change; drives retries.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::Unavailable(_))
    }

    /// The JSON response for this error: the one place errors become HTTP.
    pub fn into_response(self) -> ApiResponse {
        let mut error = json!({ "code": self.code(), "message": self.to_string() });
        match &self {
            Self::BadRequest { details, .. } | Self::Validation { details, .. }
                if !details.is_empty() =>
            {
                error["details"] = json!(details);
            }
            Self::Misconfigured { variable, problem } => {
                error["details"] =
                    json!([ErrorDetail::new(format!("variables.{variable}"), problem)]);
            }
            _ => {}
        }
        let mut response = ApiResponse::json(self.status(), &json!({ "error": error }));
        match self {
            Self::MethodNotAllowed { allowed, .. } => {
                let allow: Vec<&str> = allowed.iter().map(Method::as_str).collect();
                response.set_header("allow", allow.join(", "));
            }
            Self::RateLimited {
                retry_after_secs, ..
            } => response.set_header("retry-after", retry_after_secs.to_string()),
            Self::Unauthenticated(_) => response.set_header("www-authenticate", "Bearer"),
            _ => {}
        }
        response
    }
}

// Domain errors become API errors here, and only here.

impl From<spindle_store::DbError> for ApiError {
    fn from(error: spindle_store::DbError) -> Self {
        use spindle_store::DbErrorKind;
        match error.kind {
            DbErrorKind::Busy => Self::Unavailable("the database is busy; try again".into()),
            DbErrorKind::Constraint => Self::Conflict(error.message),
            DbErrorKind::Other => Self::Internal(error.to_string()),
        }
    }
}

impl From<spindle_auth::AuthError> for ApiError {
    fn from(error: spindle_auth::AuthError) -> Self {
        match error {
            spindle_auth::AuthError::RoleTooLow { .. } => Self::Forbidden(error.to_string()),
            _ => Self::Unauthenticated(error.to_string()),
        }
    }
}

impl From<spindle_store::KvError> for ApiError {
    fn from(error: spindle_store::KvError) -> Self {
        Self::Unavailable(error.to_string())
    }
}

impl From<spindle_store::MigrationError> for ApiError {
    fn from(error: spindle_store::MigrationError) -> Self {
        if error.is_transient() {
            Self::Unavailable(format!("schema migration is busy; try again ({error})"))
        } else {
            Self::Internal(format!("schema migration failed: {error}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn body(response: &ApiResponse) -> Value {
        serde_json::from_slice(&response.body).unwrap()
    }

    #[test]
    fn validation_error_lists_every_detail_with_its_path() {
        let response = ApiError::Validation {
            message: "definition is invalid".into(),
            details: vec![ErrorDetail::new(
                "nodes[2].config.agent_id",
                "unknown agent",
            )],
        }
        .into_response();
        assert_eq!(response.status, 422);
        assert_eq!(
            body(&response),
            json!({"error": {"code": "validation_failed", "message": "definition is invalid",
                "details": [{"path": "nodes[2].config.agent_id", "problem": "unknown agent"}]}})
        );
    }

    #[test]
    fn method_not_allowed_names_the_allowed_methods() {
        let response = ApiError::MethodNotAllowed {
            method: Method::Post,
            allowed: vec![Method::Get, Method::Head],
        }
        .into_response();
        assert_eq!(response.status, 405);
        assert_eq!(response.header("allow"), Some("GET, HEAD"));
        assert_eq!(body(&response)["error"]["code"], "method_not_allowed");
    }

    #[test]
    fn rate_limit_carries_retry_after_and_is_transient() {
        let error = ApiError::RateLimited {
            message: "slow down".into(),
            retry_after_secs: 7,
        };
        assert!(error.is_transient());
        assert_eq!(error.into_response().header("retry-after"), Some("7"));
    }

    #[test]
    fn budget_exceeded_is_a_429_that_is_not_transient() {
        let error = ApiError::BudgetExceeded("the budget is spent".into());
        assert!(!error.is_transient());
        let response = error.into_response();
        assert_eq!(response.status, 429);
        assert_eq!(
            body(&response),
            json!({"error": {"code": "budget_exceeded", "message": "the budget is spent"}})
        );
    }

    #[test]
    fn client_errors_are_not_transient() {
        for error in [
            ApiError::bad_request("x"),
            ApiError::NotFound("x".into()),
            ApiError::Forbidden("x".into()),
            ApiError::PayloadTooLarge { limit: 1 },
        ] {
            assert!(!error.is_transient(), "{error:?}");
        }
    }

    #[test]
    fn locked_database_is_a_transient_503() {
        let error = ApiError::from(spindle_store::DbError::from_message("database is locked"));
        assert_eq!(error.status(), 503);
        assert!(error.is_transient());
    }

    #[test]
    fn errors_without_details_have_no_details_key() {
        let response = ApiError::NotFound("no route".into()).into_response();
        assert_eq!(
            body(&response),
            json!({"error": {"code": "not_found", "message": "no route"}})
        );
        assert_eq!(response.header("content-type"), Some("application/json"));
    }
}
