//! The control plane's error, with the stable codes clients see. Mapping to HTTP
//! statuses happens at the edge (`tether-api`).

use crate::credential::CredentialError;
use crate::port::{KeySourceError, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("credential has expired")]
    CredentialExpired,
    #[error("credential is not valid")]
    InvalidCredential,
    #[error("this agent's credential has been revoked")]
    AgentRevoked,
    #[error("the enrollment token is not valid, expired, revoked or used up")]
    InvalidEnrollmentToken,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("agent_id does not match the credential")]
    AgentMismatch,
    #[error("protocol version {0} is not supported; this server speaks 1")]
    UnsupportedProtocol(u32),
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("too many concurrent changes; retry")]
    Busy,
    /// The request is valid but the resource is not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
    #[error("a dependency is unavailable: {0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl ControlError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "unauthenticated",
            Self::CredentialExpired => "credential_expired",
            Self::InvalidCredential => "invalid_credential",
            Self::AgentRevoked => "agent_revoked",
            Self::InvalidEnrollmentToken => "invalid_enrollment_token",
            Self::Forbidden(_) => "forbidden",
            Self::AgentMismatch => "agent_mismatch",
            Self::UnsupportedProtocol(_) => "unsupported_protocol",
            Self::Invalid(_) => "invalid_request",
            Self::NotFound(_) => "not_found",
            Self::Busy => "busy",
            Self::Conflict(_) => "conflict",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Self::Busy,
            StoreError::Throttled => Self::Busy,
            StoreError::Unavailable(m) => Self::Unavailable(m),
            StoreError::Corrupt(m) => Self::Internal(m),
        }
    }
}

impl From<KeySourceError> for ControlError {
    fn from(e: KeySourceError) -> Self {
        match e {
            KeySourceError::Unavailable(m) => Self::Unavailable(m),
            KeySourceError::Malformed(m) => Self::Internal(m),
        }
    }
}

impl From<CredentialError> for ControlError {
    fn from(e: CredentialError) -> Self {
        match e {
            CredentialError::Expired => Self::CredentialExpired,
            CredentialError::NoSigningKey => Self::Unavailable("no signing key configured".into()),
            CredentialError::Malformed
            | CredentialError::Invalid(_)
            | CredentialError::UnknownKey => Self::InvalidCredential,
        }
    }
}
