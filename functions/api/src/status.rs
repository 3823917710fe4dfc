//! `GET /v1/status` (admin): the health of each AWS dependency and the depth of
//! every queue and dead-letter queue (`tether_aws::status`).
//!
//! Invariants: an admin credential of any tenant is required (a provider-wide
//! operator role comes with the provider-admin API); the report holds
//! aggregate counts only, no tenant's data.

use crate::error::ApiError;
use crate::extract::Bearer;
use crate::wiring::Plane;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;
use tether_aws::status::Probe;
use tether_core::port::{Clock, SystemClock};
use tether_core::tenant::Role;
use tether_core::ControlError;
use tether_proto::operator::StatusReport;

#[derive(Debug, Clone)]
pub struct Status {
    pub plane: Arc<Plane>,
    pub probe: Arc<Probe>,
}

pub fn routes(state: Status) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .with_state(state)
}

async fn status(
    State(s): State<Status>,
    Bearer(token): Bearer,
) -> Result<Json<StatusReport>, ApiError> {
    let p = s.plane.authenticate_operator(&token).await?;
    if p.role < Role::Admin {
        return Err(ControlError::Forbidden("the status report needs the admin role").into());
    }
    Ok(Json(s.probe.report(SystemClock.now_ms()).await))
}
