//! The control plane's own health for `GET /v1/status`: one cheap call per
//! dependency and the depth of every queue and dead-letter queue.
//!
//! Invariants:
//! - Read-only, and touching no tenant's data: `DescribeTable`,
//!   `DescribeSecret` (never the key material), `GetQueueAttributes`.
//! - Bounded: each call has its own timeout, so a stalled dependency is reported
//!   as failed instead of holding the request.
//! - A queue's dead-letter queue is found from its `RedrivePolicy`, not from a
//!   naming convention.

use aws_sdk_sqs::types::QueueAttributeName as Q;
use std::time::{Duration, Instant};
use tether_proto::operator::{DependencyStatus, QueueStatus, StatusReport};

/// How long one check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The clients and names the checks need, built once.
#[derive(Debug, Clone)]
pub struct Probe {
    dynamodb: aws_sdk_dynamodb::Client,
    secrets: aws_sdk_secretsmanager::Client,
    sqs: aws_sdk_sqs::Client,
    table: String,
    secret_id: String,
    /// (name, url) of each work queue.
    queues: Vec<(String, String)>,
}

impl Probe {
    pub fn new(clients: &crate::Clients, config: &crate::Config) -> Self {
        let queues = config
            .stage_queue_urls
            .iter()
            .map(|(stage, url)| (stage.queue().to_owned(), url.clone()))
            .collect();
        Self {
            dynamodb: clients.dynamodb.clone(),
            secrets: clients.secrets.clone(),
            sqs: clients.sqs.clone(),
            table: config.table.clone(),
            secret_id: config.signing_secret_id.clone(),
            queues,
        }
    }

    pub async fn report(&self, now_ms: u64) -> StatusReport {
        let (ddb, secrets, (sqs, queues)) =
            tokio::join!(self.check_table(), self.check_secret(), self.check_queues());
        let dependencies = vec![ddb, secrets, sqs];
        let healthy =
            dependencies.iter().all(|d| d.ok) && queues.iter().all(|q| q.dlq_visible == 0);
        StatusReport {
            status: if healthy { "ok" } else { "degraded" }.to_owned(),
            checked_at_ms: now_ms,
            dependencies,
            queues,
        }
    }

    async fn check_table(&self) -> DependencyStatus {
        timed("dynamodb", async {
            self.dynamodb
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())
        })
        .await
    }

    async fn check_secret(&self) -> DependencyStatus {
        timed("secretsmanager", async {
            self.secrets
                .describe_secret()
                .secret_id(&self.secret_id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string())
        })
        .await
    }

    async fn check_queues(&self) -> (DependencyStatus, Vec<QueueStatus>) {
        let started = Instant::now();
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for (name, url) in &self.queues {
            match self.queue(name, url).await {
                Ok(q) => out.push(q),
                Err(e) => errors.push(format!("{name}: {e}")),
            }
        }
        let dep = DependencyStatus {
            name: "sqs".into(),
            ok: errors.is_empty(),
            latency_ms: started.elapsed().as_millis() as u64,
            error: errors.join("; "),
        };
        (dep, out)
    }

    async fn queue(&self, name: &str, url: &str) -> Result<QueueStatus, String> {
        let attrs = self.attributes(url).await?;
        let count = |a: &std::collections::HashMap<Q, String>, k: Q| {
            a.get(&k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        };
        let dlq_url = attrs
            .get(&Q::RedrivePolicy)
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
            .and_then(|p| p["deadLetterTargetArn"].as_str().map(str::to_owned))
            .and_then(|arn| arn.rsplit(':').next().map(str::to_owned))
            .and_then(|dlq| {
                url.rsplit_once('/')
                    .map(|(base, _)| format!("{base}/{dlq}"))
            });
        let dlq_visible = match dlq_url {
            Some(d) => count(&self.attributes(&d).await?, Q::ApproximateNumberOfMessages),
            None => 0,
        };
        Ok(QueueStatus {
            name: name.to_owned(),
            visible: count(&attrs, Q::ApproximateNumberOfMessages),
            in_flight: count(&attrs, Q::ApproximateNumberOfMessagesNotVisible),
            delayed: count(&attrs, Q::ApproximateNumberOfMessagesDelayed),
            dlq_visible,
        })
    }

    async fn attributes(&self, url: &str) -> Result<std::collections::HashMap<Q, String>, String> {
        bounded(async {
            self.sqs
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(Q::ApproximateNumberOfMessages)
                .attribute_names(Q::ApproximateNumberOfMessagesNotVisible)
                .attribute_names(Q::ApproximateNumberOfMessagesDelayed)
                .attribute_names(Q::RedrivePolicy)
                .send()
                .await
                .map(|o| o.attributes.unwrap_or_default())
                .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())
        })
        .await
    }
}

async fn timed(
    name: &str,
    check: impl std::future::Future<Output = Result<(), String>>,
) -> DependencyStatus {
    let started = Instant::now();
    let result = bounded(check).await;
    DependencyStatus {
        name: name.to_owned(),
        ok: result.is_ok(),
        latency_ms: started.elapsed().as_millis() as u64,
        error: result.err().unwrap_or_default(),
    }
}

/// One check, given at most [`CHECK_TIMEOUT`].
async fn bounded<T>(
    check: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(CHECK_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())))
}
