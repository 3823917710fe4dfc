//! Builds the production control plane from configuration: SDK clients once, the
//! adapters over them, the domain service over the adapters.

use std::sync::Arc;
use tether_aws::{CallCounter, Clients, Config, DynamoStore, SecretsManagerKeys, SqsTelemetrySink};
use tether_core::port::SystemClock;
use tether_core::ControlPlane;

/// The control plane as deployed: DynamoDB, Secrets Manager, SQS, the system clock.
pub type Plane = ControlPlane<DynamoStore, SecretsManagerKeys, SqsTelemetrySink, SystemClock>;

/// Wires the control plane; returns it with the counter of AWS calls it makes.
pub fn build(config: &Config, clients: &Clients) -> (Arc<Plane>, Arc<CallCounter>) {
    let store = DynamoStore::new(clients.dynamodb.clone(), config.table.clone());
    let keys = SecretsManagerKeys::new(clients.secrets.clone(), config.signing_secret_id.clone());
    let sink = SqsTelemetrySink::new(clients.sqs.clone(), config.observations_queue_url.clone());
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
