//! The control plane's own health for `GET /v1/status`: one cheap call per
//! dependency, the depth of every queue and dead-letter queue, and the age of
//! each queue's oldest message.
//!
//! Invariants:
//! - Read-only, and touching no tenant's data: `DescribeTable`,
//!   `DescribeSecret` (never the key material), `GetQueueAttributes`, and one
//!   CloudWatch `GetMetricData` for every queue's `ApproximateAgeOfOldestMessage`
//!   (SQS publishes the age only there; receiving a message to look at it would
//!   count as a delivery attempt).
//! - An age CloudWatch does not hold (no datapoint in the last
//!   [`AGE_LOOKBACK_S`], or CloudWatch unreachable) is reported as unknown, never
//!   as zero.
//! - Bounded: each call has its own timeout, so a stalled dependency is reported
//!   as failed instead of holding the request.
//! - A queue's dead-letter queue is found from its `RedrivePolicy`, not from a
//!   naming convention.

use aws_sdk_sqs::types::QueueAttributeName as Q;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tether_proto::operator::{DependencyStatus, QueueStatus, StatusReport};

/// How long one check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How far back the newest age datapoint may be (SQS publishes one a minute).
pub const AGE_LOOKBACK_S: u64 = 600;

/// The clients and names the checks need, built once.
#[derive(Debug, Clone)]
pub struct Probe {
    dynamodb: aws_sdk_dynamodb::Client,
    secrets: aws_sdk_secretsmanager::Client,
    sqs: aws_sdk_sqs::Client,
    cloudwatch: aws_sdk_cloudwatch::Client,
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
            cloudwatch: aws_sdk_cloudwatch::Client::new(&clients.sdk),
            table: config.table.clone(),
            secret_id: config.signing_secret_id.clone(),
            queues,
        }
    }

    pub async fn report(&self, now_ms: u64) -> StatusReport {
        let (ddb, secrets, (sqs, mut queues), (cloudwatch, ages)) = tokio::join!(
            self.check_table(),
            self.check_secret(),
            self.check_queues(),
            self.oldest_ages(now_ms)
        );
        for q in &mut queues {
            q.oldest_age_s = ages.get(&q.name).copied();
        }
        let dependencies = vec![ddb, secrets, sqs, cloudwatch];
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

    /// Each queue's latest `ApproximateAgeOfOldestMessage` (seconds), by name,
    /// in one `GetMetricData` call. Queues without a datapoint are absent.
    async fn oldest_ages(&self, now_ms: u64) -> (DependencyStatus, HashMap<String, u64>) {
        use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
        use aws_smithy_types::DateTime;
        let started = Instant::now();
        let mut ids = HashMap::new();
        let mut queries = Vec::new();
        for (i, (name, url)) in self.queues.iter().enumerate() {
            // CloudWatch names the queue by its SQS name, the URL's last segment.
            let Some(sqs_name) = url.rsplit('/').next() else {
                continue;
            };
            let id = format!("q{i}");
            ids.insert(id.clone(), name.clone());
            let metric = Metric::builder()
                .namespace("AWS/SQS")
                .metric_name("ApproximateAgeOfOldestMessage")
                .dimensions(
                    Dimension::builder()
                        .name("QueueName")
                        .value(sqs_name)
                        .build(),
                )
                .build();
            queries.push(
                MetricDataQuery::builder()
                    .id(id)
                    .metric_stat(
                        MetricStat::builder()
                            .metric(metric)
                            .period(60)
                            .stat("Maximum")
                            .build(),
                    )
                    .return_data(true)
                    .build(),
            );
        }
        let end_s = (now_ms / 1000) as i64;
        let result = bounded(async {
            self.cloudwatch
                .get_metric_data()
                .set_metric_data_queries(Some(queries))
                .start_time(DateTime::from_secs(end_s - AGE_LOOKBACK_S as i64))
                .end_time(DateTime::from_secs(end_s + 60))
                .send()
                .await
                .map_err(|e| aws_sdk_cloudwatch::error::DisplayErrorContext(e).to_string())
        })
        .await;
        let mut ages = HashMap::new();
        if let Ok(out) = &result {
            for r in out.metric_data_results() {
                let Some(name) = r.id().and_then(|id| ids.get(id)) else {
                    continue;
                };
                // Newest datapoint first.
                let newest = r
                    .timestamps()
                    .iter()
                    .zip(r.values())
                    .max_by_key(|(t, _)| t.secs())
                    .map(|(_, v)| *v);
                if let Some(v) = newest.filter(|v| v.is_finite() && *v >= 0.0) {
                    ages.insert(name.clone(), v as u64);
                }
            }
        }
        let dep = DependencyStatus {
            name: "cloudwatch".into(),
            ok: result.is_ok(),
            latency_ms: started.elapsed().as_millis() as u64,
            error: result.err().unwrap_or_default(),
        };
        (dep, ages)
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
            oldest_age_s: None,
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
