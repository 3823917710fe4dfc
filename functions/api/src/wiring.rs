//! Builds the production control plane from configuration: SDK clients once, the
//! adapters over them, the domain services over the adapters.

use crate::incidents::Incidents;
use crate::status::Status;
use std::sync::Arc;
use tether_aws::status::Probe;
use tether_aws::{CallCounter, Clients, Config, DynamoStore, SecretsManagerKeys, SqsTelemetrySink};
use tether_core::incident::artifact::Stage;
use tether_core::port::SystemClock;
use tether_core::ControlPlane;

/// The control plane as deployed: DynamoDB, Secrets Manager, SQS, the system clock.
pub type Plane = ControlPlane<DynamoStore, SecretsManagerKeys, SqsTelemetrySink, SystemClock>;

pub use tether_roles::{build_chain, Chain};

/// Wires the control plane; returns it with the counter of AWS calls it makes.
pub fn build(config: &Config, clients: &Clients) -> (Arc<Plane>, Arc<CallCounter>) {
    let store = DynamoStore::new(clients.dynamodb.clone(), config.table.clone());
    let keys = SecretsManagerKeys::new(clients.secrets.clone(), config.signing_secret_id.clone());
    let sink = SqsTelemetrySink::new(
        clients.sqs.clone(),
        config.observations_queue_url.clone(),
        config.stage_queue_urls.get(&Stage::Executor).cloned(),
    );
    let plane = ControlPlane::new(
        store,
        keys,
        sink,
        SystemClock,
        config.settings.clone(),
        config.operator_jwt.clone(),
    );
    (Arc::new(plane), clients.calls.clone())
}

/// The api's whole router: agent, operator, incident and status routes, and the
/// console.
pub fn app(plane: Arc<Plane>, chain: Arc<Chain>, probe: Arc<Probe>) -> axum::Router {
    crate::routes::router_with(
        plane.clone(),
        crate::incidents::routes(Incidents {
            plane: plane.clone(),
            chain,
        })
        .merge(crate::status::routes(Status { plane, probe })),
    )
}
