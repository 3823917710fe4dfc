//! Wiring of the incident roles, shared by the seven role functions and the
//! local runner. The handlers themselves live in `tether_core::incident::roles`.
//!
//! Invariants:
//! - A message is deleted (locally) or left out of the batch failures (on Lambda)
//!   only after its handler succeeded; a failed one comes back after the queue's
//!   visibility timeout (locally: after `retry_after`), and after the redrive
//!   policy's `maxReceiveCount` tries it is in the dead-letter queue, its run
//!   marked failed with the reason by the last try.
//! - Each function's `main` only calls [`lambda_main`] with its role.
//! - Both event sources (Lambda's SQS event, the local consumer) go through the
//!   one [`deliver`] function, so what is tested locally is what Lambda runs.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use aws_sdk_sqs::types::MessageSystemAttributeName;
use lambda_runtime::{service_fn, LambdaEvent};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tether_aws::logging::{self, ErrorChain, Output};
use tether_aws::{
    Clients, Config, DynamoStore, EnvStrings, LlmConfig, S3Artifacts, SqsStageQueues,
};
use tether_core::incident::artifact::Stage;
use tether_core::incident::roles::Enrich;
use tether_core::port::SystemClock;
use tracing::Instrument;

/// The incident chain as deployed: DynamoDB, S3, SQS, the system clock.
pub type Chain =
    tether_core::incident::roles::Chain<DynamoStore, S3Artifacts, SqsStageQueues, SystemClock>;

/// Wires the chain from configuration and clients built once.
pub fn build_chain(config: &Config, clients: &Clients) -> Arc<Chain> {
    let chain = Chain::new(
        DynamoStore::new(clients.dynamodb.clone(), config.table.clone()),
        S3Artifacts::new(clients.s3.clone(), config.bucket.clone()),
        SqsStageQueues::new(clients.sqs.clone(), config.stage_queue_urls.clone()),
        SystemClock,
        config.chain.clone(),
    );
    Arc::new(match &config.llm {
        Some(llm) => chain.with_enricher(Arc::new(OpenAiCompatible::new(llm.clone()))),
        None => chain,
    })
}

/// Hypothesis wording from any OpenAI-compatible chat completions endpoint.
#[derive(Debug)]
pub struct OpenAiCompatible {
    cfg: LlmConfig,
    agent: ureq::Agent,
}

impl OpenAiCompatible {
    pub fn new(cfg: LlmConfig) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(cfg.timeout_ms)))
            .http_status_as_error(false)
            .build()
            .into();
        Self { cfg, agent }
    }

    fn call(&self, prompt: &str) -> Result<String, String> {
        let mut req = self
            .agent
            .post(format!("{}/chat/completions", self.cfg.url))
            .header("Content-Type", "application/json");
        if let Some(k) = &self.cfg.api_key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let body = serde_json::json!({
            "model": self.cfg.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 200,
            "temperature": 0,
        });
        let mut resp = req
            .send(body.to_string().as_bytes())
            .map_err(|e| format!("LLM endpoint unreachable: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(256 * 1024)
            .read_to_string()
            .map_err(|e| format!("LLM response unreadable: {e}"))?;
        if status != 200 {
            return Err(format!("LLM endpoint answered {status}"));
        }
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("LLM response is not JSON: {e}"))?;
        v["choices"][0]["message"]["content"]
            .as_str()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| "LLM response has no choices[0].message.content".to_owned())
    }
}

impl Enrich for OpenAiCompatible {
    fn enrich(
        &self,
        prompt: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + '_>>
    {
        Box::pin(async move {
            let this = Self {
                cfg: self.cfg.clone(),
                agent: self.agent.clone(),
            };
            tokio::task::spawn_blocking(move || this.call(&prompt))
                .await
                .map_err(|e| format!("enrichment task failed: {e}"))?
        })
    }
}

/// One queued message, as both event sources see it.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub message_id: &'a str,
    pub body: &'a str,
    /// `ApproximateReceiveCount`: 1 on the first try.
    pub receive_count: u32,
}

/// The one delivery function of the incident roles, shared by the Lambda SQS
/// handler and the local consumer: handles `batch` in order and returns the ids
/// of the messages that failed (to be redelivered after the visibility timeout,
/// and on the last try marked failed by the chain). Each message runs in its own
/// span (role, message id, tenant, agent or run) and ends in one log line with
/// its outcome and the AWS calls it made.
pub async fn deliver(chain: &Chain, stage: Stage, batch: &[Delivery<'_>]) -> Vec<String> {
    let mut failed = Vec::new();
    for d in batch {
        let head: serde_json::Value = serde_json::from_str(d.body).unwrap_or_default();
        let field = |k: &str| {
            head.get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        let span = tracing::info_span!(
            "message",
            role = stage.as_str(),
            message_id = d.message_id,
            tenant = field("tenant"),
            agent = field("agent_id"),
            run = field("run_id"),
        );
        let started = std::time::Instant::now();
        let (result, calls) = tether_aws::counter::scoped(
            chain
                .handle_delivery(stage, d.body, d.receive_count)
                .instrument(span.clone()),
        )
        .await;
        let _e = span.enter();
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(()) => tracing::info!(
                receive_count = d.receive_count,
                aws_ops = %calls.summary(),
                outcome = "ok",
                Messages = 1u64,
                AwsCalls = calls.total(),
                RoleLatency = elapsed_ms,
                emf_metrics = "Messages:Count,AwsCalls:Count,RoleLatency:Milliseconds",
                "message handled"
            ),
            Err(e) => {
                // The last try: the queue's redrive policy moves it to the DLQ.
                let to_dlq = d.receive_count >= chain.config().max_receives;
                tracing::warn!(
                    receive_count = d.receive_count,
                    aws_ops = %calls.summary(),
                    outcome = "failed",
                    error = %ErrorChain(&e),
                    Messages = 1u64,
                    Failures = 1u64,
                    DlqArrivals = u64::from(to_dlq),
                    AwsCalls = calls.total(),
                    RoleLatency = elapsed_ms,
                    emf_metrics = "Messages:Count,Failures:Count,DlqArrivals:Count,AwsCalls:Count,RoleLatency:Milliseconds",
                    "message failed"
                );
                failed.push(d.message_id.to_owned());
            }
        }
    }
    failed
}

fn receive_count(attrs: &std::collections::HashMap<String, String>) -> u32 {
    attrs
        .get("ApproximateReceiveCount")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// One Lambda invocation: every record handled, failures reported per item.
pub async fn handle_event(chain: &Chain, stage: Stage, event: SqsEvent) -> SqsBatchResponse {
    let batch: Vec<Delivery<'_>> = event
        .records
        .iter()
        .map(|r| Delivery {
            message_id: r.message_id.as_deref().unwrap_or_default(),
            body: r.body.as_deref().unwrap_or_default(),
            receive_count: receive_count(&r.attributes),
        })
        .collect();
    let failures = deliver(chain, stage, &batch)
        .await
        .into_iter()
        .map(|id| {
            let mut f = BatchItemFailure::default();
            f.item_identifier = id;
            f
        })
        .collect();
    let mut r = SqsBatchResponse::default();
    r.batch_item_failures = failures;
    r
}

/// A role function's whole `main`: logging, config, clients, the SQS handler.
pub async fn lambda_main(stage: Stage) -> Result<(), lambda_runtime::Error> {
    logging::init(&EnvStrings, Output::Stdout, stage.function());
    let config = Config::from_strings(&EnvStrings)
        .inspect_err(|e| tracing::error!(error = %ErrorChain(e), "invalid configuration"))?;
    let clients = Clients::from_env().await;
    let chain = build_chain(&config, &clients);
    tracing::info!(function = stage.as_str(), "initialised");
    lambda_runtime::run(service_fn(move |e: LambdaEvent<SqsEvent>| {
        let chain = chain.clone();
        async move { Ok::<_, lambda_runtime::Error>(handle_event(&chain, stage, e.payload).await) }
    }))
    .await
}

/// The local runner's consumer for one role: long-polls its queue until `stop`.
#[derive(Debug, Clone)]
pub struct Consumer {
    pub stage: Stage,
    pub queue_url: String,
    /// Long-poll wait per receive.
    pub wait: Duration,
    /// How soon a failed message is visible again (Lambda: the queue's visibility
    /// timeout).
    pub retry_after: Duration,
    /// Appends every message body received to this file, one per line (the
    /// observer's: the telemetry corpus `tests/corpus/` replays). Dev loop only.
    pub record: Option<std::path::PathBuf>,
}

impl Consumer {
    pub async fn run(self, chain: Arc<Chain>, sqs: aws_sdk_sqs::Client, stop: Arc<AtomicBool>) {
        tracing::info!(role = self.stage.as_str(), queue = %self.queue_url, "consumer started");
        while !stop.load(Ordering::Relaxed) {
            let messages =
                tether_aws::sqs::receive_batch(&sqs, &self.queue_url, self.wait.as_secs() as i32)
                    .await;
            let batch: Vec<Delivery<'_>> = messages
                .iter()
                .map(|m| Delivery {
                    message_id: m.message_id.as_deref().unwrap_or_default(),
                    body: m.body.as_deref().unwrap_or_default(),
                    receive_count: m
                        .attributes
                        .as_ref()
                        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(1),
                })
                .collect();
            if let Some(path) = &self.record {
                record(path, &batch);
            }
            let failed = deliver(&chain, self.stage, &batch).await;
            let mut done = Vec::new();
            for m in &messages {
                let Some(handle) = m.receipt_handle.clone() else {
                    continue;
                };
                if failed
                    .iter()
                    .any(|f| Some(f.as_str()) == m.message_id.as_deref())
                {
                    let _ = sqs
                        .change_message_visibility()
                        .queue_url(&self.queue_url)
                        .receipt_handle(handle)
                        .visibility_timeout(self.retry_after.as_secs() as i32)
                        .send()
                        .await;
                } else {
                    done.push(handle);
                }
            }
            tether_aws::sqs::delete_handled(&sqs, &self.queue_url, done).await;
        }
        tracing::info!(role = self.stage.as_str(), "consumer stopped");
    }
}

/// Appends each body to `path`; a failure is logged, never fatal.
fn record(path: &std::path::Path, batch: &[Delivery<'_>]) {
    use std::io::Write;
    let r = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| {
            batch
                .iter()
                .try_for_each(|d| writeln!(f, "{}", d.body.replace('\n', " ")))
        });
    if let Err(error) = r {
        tracing::warn!(path = %path.display(), %error, "could not record messages");
    }
}
