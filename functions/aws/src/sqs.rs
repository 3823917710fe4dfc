//! The observations queue: one SendMessage per poll that carries telemetry.
//!
//! Message body: `{"tenant": ..., "agent_id": ..., "windows": [...]}`; consumers
//! drop duplicates by (agent_id, window seq).

use serde::Serialize;
use tether_core::port::{SinkError, TelemetrySink};
use tether_core::tenant::{AgentId, TenantId};
use tether_proto::TelemetryWindow;

#[derive(Debug, Clone)]
pub struct SqsTelemetrySink {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsTelemetrySink {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: String) -> Self {
        Self { client, queue_url }
    }
}

/// The message the observer consumes.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct ObservationMessage {
    pub tenant: String,
    pub agent_id: String,
    pub windows: Vec<TelemetryWindow>,
}

impl TelemetrySink for SqsTelemetrySink {
    async fn send(
        &self,
        t: &TenantId,
        a: &AgentId,
        windows: &[TelemetryWindow],
    ) -> Result<(), SinkError> {
        let body = serde_json::to_string(&ObservationMessage {
            tenant: t.to_string(),
            agent_id: a.to_string(),
            windows: windows.to_vec(),
        })
        .map_err(|e| SinkError(e.to_string()))?;
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| SinkError(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))?;
        Ok(())
    }
}
