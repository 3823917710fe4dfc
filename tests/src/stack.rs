//! Per-test AWS resources on the emulator, with the same shapes `infra/` declares
//! (the infra suite checks the Terraform side against the same names): one table
//! with `pk`/`sk` and the `gsi1` index, the observations queue with its DLQ, the
//! payload bucket, and the signing-key secret with a first key.

use crate::emulator::{unique_name, Emulator};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType,
};
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct Stack {
    pub table: String,
    pub queue_url: String,
    pub dlq_url: String,
    pub bucket: String,
    pub secret_id: String,
    /// The emulator's configuration (DynamoDB's endpoint); SQS, S3 and Secrets
    /// Manager clients come from [`Stack::sqs`], [`Stack::s3`], [`Stack::secrets`],
    /// which honour a lane's per-service endpoints.
    pub sdk: aws_config::SdkConfig,
    sqs_sdk: aws_config::SdkConfig,
    s3_sdk: aws_config::SdkConfig,
    secrets_sdk: aws_config::SdkConfig,
    /// The incident roles' queues (name -> (url, dlq url)), when created with
    /// [`Stack::create_with_chain`].
    pub stage_queues: BTreeMap<String, (String, String)>,
}

/// The incident chain's queues besides `observations`, as `infra/` names them.
pub const STAGE_QUEUES: [&str; 6] = [
    "analyzer",
    "planner",
    "policy-gate",
    "executor",
    "verifier",
    "memory",
];

fn attr(name: &str) -> AttributeDefinition {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .expect("attribute")
}

fn key(name: &str, t: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(t)
        .build()
        .expect("key")
}

impl Stack {
    pub async fn create(emu: &Emulator) -> Self {
        let sdk = emu.sdk_config().await;
        let name = unique_name("t");
        let ddb = aws_sdk_dynamodb::Client::new(&sdk);
        let table = format!("{name}-main");
        ddb.create_table()
            .table_name(&table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pk"))
            .attribute_definitions(attr("sk"))
            .attribute_definitions(attr("gsi1pk"))
            .attribute_definitions(attr("gsi1sk"))
            .key_schema(key("pk", KeyType::Hash))
            .key_schema(key("sk", KeyType::Range))
            .global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name("gsi1")
                    .key_schema(key("gsi1pk", KeyType::Hash))
                    .key_schema(key("gsi1sk", KeyType::Range))
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::All)
                            .build(),
                    )
                    .build()
                    .expect("gsi"),
            )
            .send()
            .await
            .expect("create table");
        let sqs_sdk = emu.sdk_config_for("sqs").await;
        let s3_sdk = emu.sdk_config_for("s3").await;
        let secrets_sdk = emu.sdk_config_for("secretsmanager").await;
        let sqs = aws_sdk_sqs::Client::new(&sqs_sdk);
        let dlq_url = sqs
            .create_queue()
            .queue_name(format!("{name}-observations-dlq"))
            .send()
            .await
            .expect("create dlq")
            .queue_url
            .expect("dlq url");
        let queue_url = sqs
            .create_queue()
            .queue_name(format!("{name}-observations"))
            .send()
            .await
            .expect("create queue")
            .queue_url
            .expect("queue url");
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&s3_sdk)
                .force_path_style(true)
                .build(),
        );
        let bucket = format!("{name}-artifacts");
        s3.create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .expect("create bucket");
        let secrets = aws_sdk_secretsmanager::Client::new(&secrets_sdk);
        let secret_id = format!("{name}/signing-keys");
        secrets
            .create_secret()
            .name(&secret_id)
            .send()
            .await
            .expect("create secret");
        let stack = Self {
            table,
            queue_url,
            dlq_url,
            bucket,
            secret_id,
            sdk,
            sqs_sdk,
            s3_sdk,
            secrets_sdk,
            stage_queues: BTreeMap::new(),
        };
        stack.rotate_keys().await;
        stack
    }

    /// A stack with the incident chain's queues too: each with a DLQ and a redrive
    /// policy of `max_receives` tries, like `infra/` (whose default is 5).
    pub async fn create_with_chain(emu: &Emulator, max_receives: u32) -> Self {
        let mut stack = Self::create(emu).await;
        let sqs = stack.sqs();
        let name = unique_name("q");
        for q in STAGE_QUEUES {
            let dlq = sqs
                .create_queue()
                .queue_name(format!("{name}-{q}-dlq"))
                .send()
                .await
                .expect("create dlq")
                .queue_url
                .expect("dlq url");
            let dlq_arn = sqs
                .get_queue_attributes()
                .queue_url(&dlq)
                .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                .send()
                .await
                .expect("dlq attributes")
                .attributes
                .and_then(|a| {
                    a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                        .cloned()
                })
                .expect("dlq arn");
            let url = sqs
                .create_queue()
                .queue_name(format!("{name}-{q}"))
                // Short, so a failed message (and a killed runner's) comes back soon.
                .attributes(
                    aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
                    "5",
                )
                .attributes(
                    aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
                    serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives})
                        .to_string(),
                )
                .send()
                .await
                .expect("create queue")
                .queue_url
                .expect("queue url");
            stack.stage_queues.insert(q.to_owned(), (url, dlq));
        }
        stack
    }

    /// An SQS client on the endpoint that serves SQS.
    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sqs_sdk)
    }

    /// An S3 client (path-style) on the endpoint that serves S3.
    pub fn s3(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&self.s3_sdk)
                .force_path_style(true)
                .build(),
        )
    }

    /// A CloudWatch client on the shared endpoint (the emulator).
    pub fn cloudwatch(&self) -> aws_sdk_cloudwatch::Client {
        aws_sdk_cloudwatch::Client::new(&self.sdk)
    }

    /// A Secrets Manager client on the endpoint that serves it.
    pub fn secrets(&self) -> aws_sdk_secretsmanager::Client {
        aws_sdk_secretsmanager::Client::new(&self.secrets_sdk)
    }

    pub async fn rotate_keys(&self) -> String {
        tether_aws::SecretsManagerKeys::new(self.secrets(), self.secret_id.clone())
            .rotate(crate::now_ms())
            .await
            .expect("rotate keys")
    }

    /// The key ring as stored, for tests that forge or age credentials.
    pub async fn key_ring(&self) -> tether_core::credential::KeyRing {
        let out = self
            .secrets()
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
            .expect("get secret");
        serde_json::from_str(out.secret_string().expect("secret string")).expect("key ring")
    }

    /// The `TETHER_*` variables pointing a runner at this stack.
    pub fn env(&self) -> BTreeMap<String, String> {
        [
            ("TETHER_TABLE", self.table.as_str()),
            ("TETHER_BUCKET", self.bucket.as_str()),
            ("TETHER_QUEUE_URL_OBSERVATIONS", self.queue_url.as_str()),
            ("TETHER_SIGNING_SECRET_ID", self.secret_id.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .chain(self.stage_queues.iter().map(|(q, (url, _))| {
            (
                format!("TETHER_QUEUE_URL_{}", q.to_uppercase().replace('-', "_")),
                url.clone(),
            )
        }))
        .collect()
    }

    /// Every item of the table, sorted, as comparable text: "changes nothing"
    /// is asserted by comparing two of these.
    pub async fn table_snapshot(&self) -> Vec<String> {
        let ddb = aws_sdk_dynamodb::Client::new(&self.sdk);
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = ddb
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .expect("scan");
            for item in page.items() {
                let mut fields: Vec<String> =
                    item.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
                fields.sort();
                out.push(fields.join(" "));
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        out.sort();
        out
    }

    /// Drains the observations queue (long-polls until `want` messages or the deadline).
    pub async fn receive_observations(
        &self,
        want: usize,
        deadline: std::time::Duration,
    ) -> Vec<serde_json::Value> {
        let sqs = self.sqs();
        let until = std::time::Instant::now() + deadline;
        let mut got = Vec::new();
        while got.len() < want && std::time::Instant::now() < until {
            let out = sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .expect("receive");
            for m in out.messages() {
                got.push(serde_json::from_str(m.body().unwrap_or("null")).expect("json body"));
                if let Some(h) = m.receipt_handle() {
                    sqs.delete_message()
                        .queue_url(&self.queue_url)
                        .receipt_handle(h)
                        .send()
                        .await
                        .expect("delete");
                }
            }
        }
        got
    }
}
