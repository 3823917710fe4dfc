//! Adapters: the domain's ports over DynamoDB, SQS and Secrets Manager, and the
//! typed configuration every function parses once at cold start.
//!
//! Invariants:
//! - SDK clients are built once, from the standard AWS configuration chain, so the
//!   endpoint comes from `AWS_ENDPOINT_URL` (LocalStack, moto) or from AWS itself;
//!   nothing here names an emulator.
//! - Every client carries the [`counter::CallCounter`] interceptor, which counts each
//!   HTTP attempt per service and operation: the cost budget is measured, not assumed.
//! - DynamoDB item shapes are private to [`dynamo`]; keys come only from
//!   `tether_core::key`.

pub mod config;
pub mod counter;
pub mod dynamo;
pub mod incident;
pub mod logging;
pub mod secrets;
pub mod sqs;
pub mod status;

pub use config::{Config, ConfigError, EnvStrings, LlmConfig, Strings};
pub use counter::CallCounter;
pub use dynamo::DynamoStore;
pub use incident::{S3Artifacts, SqsStageQueues};
pub use secrets::SecretsManagerKeys;
pub use sqs::SqsTelemetrySink;

use std::sync::Arc;

/// The SDK clients one function needs, built once and sharing one call counter.
#[derive(Debug, Clone)]
pub struct Clients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub calls: Arc<CallCounter>,
    /// What the clients were built from (for clients only one function needs).
    pub sdk: aws_config::SdkConfig,
}

impl Clients {
    /// Loads the standard AWS configuration (environment, profile, IMDS/Lambda role).
    pub async fn from_env() -> Self {
        let sdk = aws_config::load_from_env().await;
        Self::from_sdk_config(&sdk)
    }

    pub fn from_sdk_config(sdk: &aws_config::SdkConfig) -> Self {
        let calls = Arc::new(CallCounter::default());
        let counting = counter::CountingInterceptor::new(calls.clone());
        let dynamodb = aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(sdk)
                .interceptor(counting.clone())
                .build(),
        );
        let sqs = aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::config::Builder::from(sdk)
                .interceptor(counting.clone())
                .build(),
        );
        // Emulators serve S3 path-style; AWS accepts it too.
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(sdk)
                .force_path_style(true)
                .interceptor(counting.clone())
                .build(),
        );
        let secrets = aws_sdk_secretsmanager::Client::from_conf(
            aws_sdk_secretsmanager::config::Builder::from(sdk)
                .interceptor(counting)
                .build(),
        );
        Self {
            dynamodb,
            sqs,
            s3,
            secrets,
            calls,
            sdk: sdk.clone(),
        }
    }
}
