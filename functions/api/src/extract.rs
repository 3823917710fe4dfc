//! Extractors: size-capped JSON bodies and bearer credentials.

use crate::error::ApiError;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use tether_core::port::{
    AgentStore, Clock, CredentialStore, DesiredStore, FleetQuery, KeySource, TelemetrySink,
};
use tether_core::tenant::Principal;
use tether_core::ControlPlane;
use tether_proto::MAX_REQUEST_BYTES;

/// A JSON body of at most [`MAX_REQUEST_BYTES`]: 413 `body_too_large` above it,
/// 400 `malformed_json` for bad syntax, 400 `invalid_request` for a wrong shape.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, St: Send + Sync> FromRequest<St> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &St) -> Result<Self, Self::Rejection> {
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request bodies are limited to {MAX_REQUEST_BYTES} bytes"),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        // Far over the cap: answer without reading. Near it: read up to the cap, so
        // the client has finished sending and reads the 413 instead of a reset.
        if declared.is_some_and(|n| n > 4 * MAX_REQUEST_BYTES) {
            return Err(too_large());
        }
        let bytes = axum::body::to_bytes(req.into_body(), MAX_REQUEST_BYTES)
            .await
            .map_err(|_| too_large())?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Data => {
                    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string())
                }
                _ => ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()),
            }
        })
    }
}

/// The bearer token of the `Authorization` header.
#[derive(Debug)]
pub struct Bearer(pub String);

impl<St: Send + Sync> FromRequestParts<St> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &St) -> Result<Self, Self::Rejection> {
        let missing = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "an Authorization: Bearer credential is required",
            )
        };
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(missing)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 8192)
            .ok_or_else(missing)?;
        Ok(Bearer(token.to_owned()))
    }
}

/// A verified operator (API key or operator JWT).
#[derive(Debug)]
pub struct Operator(pub Principal);

impl<S, K, Q, C> FromRequestParts<Arc<ControlPlane<S, K, Q, C>>> for Operator
where
    S: AgentStore + DesiredStore + CredentialStore + FleetQuery,
    K: KeySource,
    Q: TelemetrySink,
    C: Clock,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        cp: &Arc<ControlPlane<S, K, Q, C>>,
    ) -> Result<Self, Self::Rejection> {
        let Bearer(token) = Bearer::from_request_parts(parts, cp).await?;
        Ok(Operator(cp.authenticate_operator(&token).await?))
    }
}
