//! Operator routes of the incident workflow: runs, their artifact chain and
//! evidence, approvals, the audit log and the tenant's policy.
//!
//! Invariants: the tenant comes from the verified operator credential; artifact
//! ids are checked for shape before any storage call and read only under the
//! caller's tenant, so another tenant's artifact is "not found".

use crate::error::ApiError;
use crate::extract::{Bearer, JsonBody};
use crate::wiring::{Chain, Plane};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;
use tether_core::incident::policy::TenantPolicy;
use tether_core::tenant::Principal;
use tether_proto::incident::{AuditList, DecisionRequest, EvidenceList, RunList};

/// What the incident routes need: the control plane (to authenticate) and the chain.
#[derive(Debug, Clone)]
pub struct Incidents {
    pub plane: Arc<Plane>,
    pub chain: Arc<Chain>,
}

struct Op(Principal);

impl FromRequestParts<Incidents> for Op {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &Incidents) -> Result<Self, ApiError> {
        let Bearer(token) = Bearer::from_request_parts(parts, s).await?;
        Ok(Op(s.plane.authenticate_operator(&token).await?))
    }
}

type Res<T> = Result<T, ApiError>;

pub fn routes(state: Incidents) -> Router {
    Router::new()
        .route("/v1/runs", get(list_runs))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/runs/{id}/evidence", get(evidence))
        .route("/v1/runs/{id}/approve", post(approve))
        .route("/v1/runs/{id}/reject", post(reject))
        .route("/v1/artifacts/{id}", get(artifact))
        .route("/v1/audit", get(audit))
        .route("/v1/policy", get(get_policy).put(put_policy))
        .with_state(state)
}

async fn list_runs(State(s): State<Incidents>, Op(p): Op) -> Res<impl IntoResponse> {
    Ok(Json(RunList {
        runs: s.chain.list_runs(&p.tenant).await?,
    }))
}

async fn get_run(
    State(s): State<Incidents>,
    Op(p): Op,
    Path(id): Path<String>,
) -> Res<impl IntoResponse> {
    Ok(Json(s.chain.get_run(&p.tenant, &id).await?))
}

async fn evidence(
    State(s): State<Incidents>,
    Op(p): Op,
    Path(id): Path<String>,
) -> Res<impl IntoResponse> {
    let points = s.chain.evidence(&p.tenant, &id).await?;
    Ok(Json(EvidenceList { run_id: id, points }))
}

async fn approve(
    State(s): State<Incidents>,
    Op(p): Op,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<DecisionRequest>,
) -> Res<impl IntoResponse> {
    Ok(Json(s.chain.decide(&p, &id, true, &b.comment).await?))
}

async fn reject(
    State(s): State<Incidents>,
    Op(p): Op,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<DecisionRequest>,
) -> Res<impl IntoResponse> {
    Ok(Json(s.chain.decide(&p, &id, false, &b.comment).await?))
}

async fn artifact(
    State(s): State<Incidents>,
    Op(p): Op,
    Path(id): Path<String>,
) -> Res<impl IntoResponse> {
    Ok(Json(s.chain.get_artifact(&p.tenant, &id).await?))
}

async fn audit(State(s): State<Incidents>, Op(p): Op) -> Res<impl IntoResponse> {
    Ok(Json(AuditList {
        entries: s.chain.audit_log(&p.tenant).await?,
    }))
}

async fn get_policy(State(s): State<Incidents>, Op(p): Op) -> Res<impl IntoResponse> {
    Ok(Json(s.chain.policy(&p.tenant).await?))
}

async fn put_policy(
    State(s): State<Incidents>,
    Op(p): Op,
    JsonBody(body): JsonBody<TenantPolicy>,
) -> Res<impl IntoResponse> {
    s.chain.set_policy(&p, &body).await?;
    Ok(Json(body))
}
