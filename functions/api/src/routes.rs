//! Routes. Each handler turns HTTP into one call on the control plane.
//!
//! | method | path | who |
//! |---|---|---|
//! | GET | `/health`, `/v1/openapi.json` | anyone |
//! | POST | `/v1/enroll` | enrollment token (in the body) |
//! | POST | `/v1/poll` | agent credential |
//! | POST | `/v1/apply`, GET `/v1/desired` | operator / viewer |
//! | GET | `/v1/agents`, `/v1/agents/{id}` | viewer |
//! | POST | `/v1/agents/{id}/revoke` | admin |
//! | GET | `/v1/services`, `/v1/actions?agent_id=` | viewer |
//! | POST, GET | `/v1/enrollment-tokens`; DELETE `/v1/enrollment-tokens/{id}` | admin |
//! | POST, GET | `/v1/api-keys`; DELETE `/v1/api-keys/{id}` | admin |
//! | GET | `/v1/runs`, `/v1/runs/{id}`, `/v1/runs/{id}/evidence`, `/v1/artifacts/{id}`, `/v1/audit`, `/v1/policy` | viewer (`incidents.rs`) |
//! | POST | `/v1/runs/{id}/approve`, `/v1/runs/{id}/reject` | operator |
//! | PUT | `/v1/policy` | admin |
//! | GET | `/v1/status` | admin (`status.rs`): dependencies and queue depths |

use crate::error::ApiError;
use crate::extract::{Bearer, JsonBody, Operator};
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Instant;
use tether_core::port::{
    AgentStore, Clock, CredentialStore, DesiredStore, FleetQuery, KeySource, TelemetrySink,
};
use tether_core::ControlPlane;
use tether_proto::operator::{ApplyRequest, CreateApiKey, CreateEnrollmentToken, Health};
use tether_proto::{EnrollRequest, PollRequest, PROTOCOL_VERSION};
use tracing::{info, Instrument};

/// The storage ports the api needs, as one bound.
pub trait Backend: AgentStore + DesiredStore + CredentialStore + FleetQuery {}
impl<T: AgentStore + DesiredStore + CredentialStore + FleetQuery> Backend for T {}

type Cp<S, K, Q, C> = State<Arc<ControlPlane<S, K, Q, C>>>;
type Res<T> = Result<T, ApiError>;

pub fn router<S: Backend, K: KeySource, Q: TelemetrySink, C: Clock>(
    cp: Arc<ControlPlane<S, K, Q, C>>,
) -> Router {
    router_with(cp, Router::new())
}

/// The router plus `extra` routes (the incident routes), under the same access
/// log and fallbacks.
pub fn router_with<S: Backend, K: KeySource, Q: TelemetrySink, C: Clock>(
    cp: Arc<ControlPlane<S, K, Q, C>>,
    extra: Router,
) -> Router {
    let base: Router = Router::new()
        .route("/health", get(health))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/enroll", post(enroll::<S, K, Q, C>))
        .route("/v1/poll", post(poll::<S, K, Q, C>))
        .route("/v1/apply", post(apply::<S, K, Q, C>))
        .route("/v1/desired", get(desired::<S, K, Q, C>))
        .route("/v1/agents", get(agents::<S, K, Q, C>))
        .route("/v1/agents/{id}", get(agent::<S, K, Q, C>))
        .route("/v1/agents/{id}/revoke", post(revoke_agent::<S, K, Q, C>))
        .route("/v1/services", get(services::<S, K, Q, C>))
        .route("/v1/actions", get(actions::<S, K, Q, C>))
        .route(
            "/v1/enrollment-tokens",
            post(create_token::<S, K, Q, C>).get(list_tokens::<S, K, Q, C>),
        )
        .route(
            "/v1/enrollment-tokens/{id}",
            delete(revoke_token::<S, K, Q, C>),
        )
        .route(
            "/v1/api-keys",
            post(create_key::<S, K, Q, C>).get(list_keys::<S, K, Q, C>),
        )
        .route("/v1/api-keys/{id}", delete(revoke_key::<S, K, Q, C>))
        .with_state(cp);
    base.merge(extra)
        .merge(crate::console::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(access_log))
}

/// One span per request (its `tenant` and `agent` are recorded once a credential
/// is verified), and one line when it ends, with the AWS calls it made.
async fn access_log(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!(
        "request",
        tenant = tracing::field::Empty,
        agent = tracing::field::Empty,
        principal = tracing::field::Empty,
    );
    let started = Instant::now();
    let (resp, calls) = tether_aws::counter::scoped(next.run(req).instrument(span.clone())).await;
    let _e = span.enter();
    let status = resp.status().as_u16();
    let elapsed_ms = started.elapsed().as_millis() as u64;
    info!(
        %method,
        %path,
        status,
        aws_ops = %calls.summary(),
        Requests = 1u64,
        ClientErrors = u64::from((400..500).contains(&status)),
        Errors = u64::from(status >= 500),
        AwsCalls = calls.total(),
        Latency = elapsed_ms,
        emf_metrics = "Requests:Count,ClientErrors:Count,Errors:Count,AwsCalls:Count,Latency:Milliseconds",
        "request"
    );
    resp
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        protocol: PROTOCOL_VERSION,
    })
}

/// The OpenAPI 3.1 document of every route (checked against this router and
/// fuzzed with schemathesis in `tests/tests/openapi.rs`).
async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        include_str!("../openapi/openapi.json"),
    )
}

async fn enroll<S: Backend, K: KeySource, Q: TelemetrySink, C: Clock>(
    State(cp): Cp<S, K, Q, C>,
    JsonBody(req): JsonBody<EnrollRequest>,
) -> Res<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(cp.enroll(req).await?)))
}

async fn poll<S: Backend, K: KeySource, Q: TelemetrySink, C: Clock>(
    State(cp): Cp<S, K, Q, C>,
    Bearer(token): Bearer,
    JsonBody(req): JsonBody<PollRequest>,
) -> Res<impl IntoResponse> {
    Ok(Json(cp.poll(&token, req).await?))
}

async fn apply<S: Backend, K: KeySource, Q: TelemetrySink, C: Clock>(
    State(cp): Cp<S, K, Q, C>,
    Operator(p): Operator,
    JsonBody(req): JsonBody<ApplyRequest>,
) -> Res<impl IntoResponse> {
    Ok(Json(cp.apply(&p, req).await?))
}

async fn desired<S: Backend, K: KeySource, Q: TelemetrySink, C: Clock>(
    State(cp): Cp<S, K, Q, C>,
    Operator(p): Operator,
) -> Res<impl IntoResponse> {
    Ok(Json(cp.desired(&p).await?))
}

async fn agents<S: Backend, K: KeySource, Q: TelemetrySink, C: Clock>(
    State(cp): Cp<S, K, Q, C>,
    Operator(p): Operator,
) -> Res<impl IntoResponse> {
    Ok(Json(cp.list_agents(&p).await?))
}

async fn agent<S: Backend, K: KeySource, Q: TelemetrySink, C: Clock>(
    State(cp): Cp<S, K, Q, C>,
    Operator(p): Operator,
    Path(id): Path<String>,
) -> Res<impl IntoResponse> {
    Ok(Json(cp.get_agent(&p, &id).await?))
}

async fn revoke_agent<S: Backend, K: KeySource, Q: TelemetrySink, C: Clock>(
    State(cp): Cp<S, K, Q, C>,
    Operator(p): Operator,
    Path(id): Path<String>,
) -> Res<impl IntoResponse> {
    cp.revoke_agent(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn services<S: Backend, K: KeySource, Q: TelemetrySink, C: Clock>(
    State(cp): Cp<S, K, Q, C>,
    Operator(p): Operator,
) -> Res<impl IntoResponse> {
    Ok(Json(cp.list_services(&p).await?))
}

#[derive(Debug, Deserialize)]
struct ActionFilter {
    agent_id: Option<String>,
}

async fn actions<S: Backend, K: KeySource, Q: TelemetrySink, C: Clock>(
    State(cp): Cp<S, K, Q, C>,
    Operator(p): Operator,
    Query(f): Query<ActionFilter>,
) -> Res<impl IntoResponse> {
    Ok(Json(cp.list_actions(&p, f.agent_id.as_deref()).await?))
}

async fn create_token<S: Backend, K: KeySource, Q: TelemetrySink, C: Clock>(
    State(cp): Cp<S, K, Q, C>,
    Operator(p): Operator,
    JsonBody(req): JsonBody<CreateEnrollmentToken>,
) -> Res<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(cp.create_enrollment_token(&p, req).await?),
    ))
}

async fn list_tokens<S: Backend, K: KeySource, Q: TelemetrySink, C: Clock>(
    State(cp): Cp<S, K, Q, C>,
    Operator(p): Operator,
) -> Res<impl IntoResponse> {
    Ok(Json(cp.list_enrollment_tokens(&p).await?))
}

async fn revoke_token<S: Backend, K: KeySource, Q: TelemetrySink, C: Clock>(
    State(cp): Cp<S, K, Q, C>,
    Operator(p): Operator,
    Path(id): Path<String>,
) -> Res<impl IntoResponse> {
    cp.revoke_enrollment_token(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_key<S: Backend, K: KeySource, Q: TelemetrySink, C: Clock>(
    State(cp): Cp<S, K, Q, C>,
    Operator(p): Operator,
    JsonBody(req): JsonBody<CreateApiKey>,
) -> Res<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(cp.create_api_key(&p, req).await?)))
}

async fn list_keys<S: Backend, K: KeySource, Q: TelemetrySink, C: Clock>(
    State(cp): Cp<S, K, Q, C>,
    Operator(p): Operator,
) -> Res<impl IntoResponse> {
    Ok(Json(cp.list_api_keys(&p).await?))
}

async fn revoke_key<S: Backend, K: KeySource, Q: TelemetrySink, C: Clock>(
    State(cp): Cp<S, K, Q, C>,
    Operator(p): Operator,
    Path(id): Path<String>,
) -> Res<impl IntoResponse> {
    cp.revoke_api_key(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
