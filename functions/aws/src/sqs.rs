//! The observations queue: one SendMessage per poll that carries telemetry.
//!
//! Message body: `{"tenant": ..., "agent_id": ..., "windows": [...]}`; consumers
//! drop duplicates by (agent_id, window seq). A poll that finished incident
//! actions also sends one `actions_changed` notice per run to the executor queue.

pub use tether_core::incident::roles::ObservationMessage;
use tether_core::incident::run::StageMessage;
use tether_core::port::{SinkError, TelemetrySink};
use tether_core::tenant::{AgentId, TenantId};
use tether_proto::TelemetryWindow;

#[derive(Debug, Clone)]
pub struct SqsTelemetrySink {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    executor_queue_url: Option<String>,
}

impl SqsTelemetrySink {
    pub fn new(
        client: aws_sdk_sqs::Client,
        queue_url: String,
        executor_queue_url: Option<String>,
    ) -> Self {
        Self {
            client,
            queue_url,
            executor_queue_url,
        }
    }
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

    async fn incident_actions_finished(
        &self,
        t: &TenantId,
        runs: &[String],
    ) -> Result<(), SinkError> {
        let Some(url) = &self.executor_queue_url else {
            return Err(SinkError("no executor queue configured".into()));
        };
        for run in runs {
            let body = serde_json::to_string(&StageMessage::ActionsChanged {
                tenant: t.clone(),
                run_id: run.clone(),
            })
            .map_err(|e| SinkError(e.to_string()))?;
            self.client
                .send_message()
                .queue_url(url)
                .message_body(body)
                .send()
                .await
                .map_err(|e| SinkError(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))?;
        }
        Ok(())
    }
}

/// One receive for a queue's consumer (the local runner's, or the event source
/// mapping `tether-local lambda` plays): up to 10 messages with every system
/// attribute (`ApproximateReceiveCount` above all), long-polling `wait_s`. An
/// error is logged and answered with no messages after a second's pause, so an
/// unreachable queue never spins a consumer.
pub async fn receive_batch(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    wait_s: i32,
) -> Vec<aws_sdk_sqs::types::Message> {
    let out = client
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(10)
        .wait_time_seconds(wait_s)
        .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
        .send()
        .await;
    match out {
        Ok(o) => o.messages.unwrap_or_default(),
        Err(e) => {
            tracing::warn!(queue = queue_url, error = %aws_sdk_sqs::error::DisplayErrorContext(e), "receive failed");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            Vec::new()
        }
    }
}

/// Deletes handled messages by their receipt handles (at most 10, one batch). A
/// failure is logged and nothing more: those messages come back after the
/// visibility timeout, and every consumer is idempotent.
pub async fn delete_handled(client: &aws_sdk_sqs::Client, queue_url: &str, handles: Vec<String>) {
    let entries: Vec<_> = handles
        .into_iter()
        .enumerate()
        .filter_map(|(i, h)| {
            aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(h)
                .build()
                .ok()
        })
        .collect();
    if entries.is_empty() {
        return;
    }
    if let Err(e) = client
        .delete_message_batch()
        .queue_url(queue_url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        tracing::warn!(queue = queue_url, error = %aws_sdk_sqs::error::DisplayErrorContext(e), "delete failed; the messages will be redelivered");
    }
}
