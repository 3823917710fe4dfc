//! Maps domain errors to HTTP responses in the one error shape.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tether_core::ControlError;
use tether_proto::{ErrorBody, ErrorDetail};
use tracing::error;

/// An error on its way out: status, stable code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let status = match &e {
            ControlError::Unauthenticated(_)
            | ControlError::CredentialExpired
            | ControlError::InvalidCredential
            | ControlError::AgentRevoked
            | ControlError::InvalidEnrollmentToken => StatusCode::UNAUTHORIZED,
            ControlError::Forbidden(_) | ControlError::AgentMismatch => StatusCode::FORBIDDEN,
            ControlError::UnsupportedProtocol(_) | ControlError::Invalid(_) => {
                StatusCode::BAD_REQUEST
            }
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::Busy | ControlError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ControlError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = match &e {
            // Internal details go to the log, not to the caller.
            ControlError::Internal(detail) => {
                error!(error = %detail, "internal error");
                e.to_string()
            }
            ControlError::Unavailable(detail) => {
                error!(error = %detail, "dependency unavailable");
                "a dependency is unavailable; retry later".to_owned()
            }
            _ => e.to_string(),
        };
        Self {
            status,
            code: e.code(),
            message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        resp
    }
}
