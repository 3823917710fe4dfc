//! The incident chain's ports: every DynamoDB port on the table,
//! [`S3Artifacts`] in the bucket and [`SqsStageQueues`] between the roles.
//!
//! Item layout (beyond `pk`/`sk`, keys from `tether_core::key`):
//! - run manifest (`T#t#RUN#<run>` / `manifest`): `version`, `status`, `gsi1pk`
//!   (`T#t#RUNS`) / `gsi1sk` (created time + run), `body`.
//! - evidence (`T#t#RUN#<run>` / `ev#<seq>`): `body`, `ttl`.
//! - incident markers (agent partition / `3#incidents`): `version`, `body`.
//! - policy, rate counters (`count`, `ttl`), memory records, audit entries (`ttl`).
//!
//! Invariants: creates are conditional on absence; manifest and marker updates on
//! `version`; artifact objects are written under their sha256 and checked on read.

use crate::dynamo::{
    action_entry_from, body, epoch_s, get_n, key_map, keyed, map_err, n, outbox_item, s, to_body,
    DynamoStore, Item,
};
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use std::collections::BTreeMap;
use tether_core::incident::artifact::{Addressed, Artifact, Stage};
use tether_core::incident::policy::TenantPolicy;
use tether_core::incident::port::{
    AgentKinds, ArtifactStore, AuditReads, AuditTrail, CountExecution, EvidenceLog, EvidenceReads,
    EvidenceUploads, ExecutionCount, HostMarkers, Outbox, PolicyAdmin, PolicySource, PriorAttempts,
    Remember, RunIndex, Runs, StageQueue,
};
use tether_core::incident::run::{
    AuditEntry, EvidencePoint, Markers, PriorRecord, RunManifest, StageMessage,
};
use tether_core::key;
use tether_core::model::{DoneItem, OutboxItem};
use tether_core::port::{ActionEntry, StoreError};
use tether_core::tenant::{AgentId, TenantId};

/// How long an agent's markers and observer state outlive its last telemetry.
const MARKERS_RETENTION_S: u64 = 30 * 24 * 3600;
/// Evidence and audit entries live this long.
const EVIDENCE_RETENTION_S: u64 = 30 * 24 * 3600;
const AUDIT_RETENTION_S: u64 = 400 * 24 * 3600;
/// Prior attempts read per fingerprint (newest first).
const MEMORY_LIMIT: i32 = 20;

fn created(r: Result<(), StoreError>) -> Result<bool, StoreError> {
    match r {
        Ok(()) => Ok(true),
        Err(StoreError::Conflict) => Ok(false),
        Err(e) => Err(e),
    }
}

impl DynamoStore {
    async fn put_item(&self, item: Item, only_new: bool) -> Result<(), StoreError> {
        let mut p = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item));
        if only_new {
            p = p.condition_expression("attribute_not_exists(pk)");
        }
        p.send().await.map_err(map_err)?;
        Ok(())
    }

    /// Puts `item` (with `version` = `expected + 1`) if the stored version is
    /// `expected` (0: no item yet).
    async fn put_versioned(&self, mut item: Item, expected: u64) -> Result<(), StoreError> {
        item.insert("version".into(), n(expected + 1));
        let mut p = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item));
        p = if expected == 0 {
            p.condition_expression("attribute_not_exists(pk)")
        } else {
            p.condition_expression("version = :v")
                .expression_attribute_values(":v", n(expected))
        };
        p.send().await.map_err(map_err)?;
        Ok(())
    }

    async fn query_prefix(
        &self,
        pk: &str,
        prefix: &str,
        forward: bool,
        limit: Option<i32>,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .expression_attribute_values(":p", s(pk));
            q = if prefix.is_empty() {
                q.key_condition_expression("pk = :p")
            } else {
                q.key_condition_expression("pk = :p AND begins_with(sk, :s)")
                    .expression_attribute_values(":s", s(prefix))
            };
            let out = q
                .scan_index_forward(forward)
                .set_limit(limit)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(map_err)?;
            items.extend(out.items.unwrap_or_default());
            if limit.is_some() || items.len() >= 10_000 {
                break;
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(items)
    }
}

fn manifest_item(t: &TenantId, m: &RunManifest) -> Result<Item, StoreError> {
    let mut item = keyed(&key::run(t, &m.run_id));
    item.insert("status".into(), s(m.status.as_str()));
    item.insert("gsi1pk".into(), s(key::index::runs(t)));
    item.insert(
        "gsi1sk".into(),
        s(format!("{:015}#{}", m.created_at_ms, m.run_id)),
    );
    item.insert("body".into(), to_body(m)?);
    Ok(item)
}

fn manifest_from(item: &Item) -> Result<RunManifest, StoreError> {
    let mut m: RunManifest = body(item)?;
    m.version = get_n(item, "version")?;
    Ok(m)
}

impl Runs for DynamoStore {
    async fn load_run(
        &self,
        t: &TenantId,
        run_id: &str,
    ) -> Result<Option<RunManifest>, StoreError> {
        self.get(&key::run(t, run_id))
            .await?
            .map(|i| manifest_from(&i))
            .transpose()
    }

    async fn create_run(&self, t: &TenantId, m: &RunManifest) -> Result<bool, StoreError> {
        created(self.put_versioned(manifest_item(t, m)?, 0).await)
    }

    async fn update_run(&self, t: &TenantId, m: &RunManifest) -> Result<(), StoreError> {
        if m.version == 0 {
            return Err(StoreError::Conflict);
        }
        self.put_versioned(manifest_item(t, m)?, m.version).await
    }
}

impl RunIndex for DynamoStore {
    async fn list_runs(&self, t: &TenantId) -> Result<Vec<RunManifest>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name("gsi1")
            .key_condition_expression("gsi1pk = :p")
            .expression_attribute_values(":p", s(key::index::runs(t)))
            .scan_index_forward(false)
            .limit(200)
            .send()
            .await
            .map_err(map_err)?;
        out.items
            .unwrap_or_default()
            .iter()
            .map(manifest_from)
            .collect()
    }
}

impl HostMarkers for DynamoStore {
    async fn load_markers(&self, t: &TenantId, a: &AgentId) -> Result<Markers, StoreError> {
        match self.get(&key::incident_markers(t, a)).await? {
            None => Ok(Markers::default()),
            Some(i) => {
                let mut m: Markers = body(&i)?;
                m.version = get_n(&i, "version")?;
                Ok(m)
            }
        }
    }

    async fn save_markers(&self, t: &TenantId, a: &AgentId, m: &Markers) -> Result<(), StoreError> {
        let mut item = keyed(&key::incident_markers(t, a));
        item.insert("body".into(), to_body(m)?);
        // The host's observer state goes with its markers: a host silent this
        // long starts afresh (DynamoDB's TTL deletes the item).
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        item.insert("ttl".into(), n(now_s + MARKERS_RETENTION_S));
        self.put_versioned(item, m.version).await
    }
}

impl EvidenceLog for DynamoStore {
    async fn put_evidence(
        &self,
        t: &TenantId,
        run_id: &str,
        p: &EvidencePoint,
    ) -> Result<(), StoreError> {
        let mut item = keyed(&key::evidence(t, run_id, p.seq));
        item.insert("ttl".into(), n(epoch_s(p.end_ms) + EVIDENCE_RETENTION_S));
        item.insert("body".into(), to_body(p)?);
        // Same window, same values: a redelivery rewrites identical content.
        self.put_item(item, false).await
    }
}

impl EvidenceReads for DynamoStore {
    async fn evidence(&self, t: &TenantId, run_id: &str) -> Result<Vec<EvidencePoint>, StoreError> {
        self.query_prefix(
            &key::run_partition(t, run_id),
            key::EVIDENCE_PREFIX,
            true,
            None,
        )
        .await?
        .iter()
        .map(body)
        .collect()
    }
}

impl PolicySource for DynamoStore {
    async fn load_policy(&self, t: &TenantId) -> Result<TenantPolicy, StoreError> {
        match self.get(&key::policy(t)).await? {
            None => Ok(TenantPolicy::default()),
            Some(i) => body(&i),
        }
    }
}

impl PolicyAdmin for DynamoStore {
    async fn put_policy(&self, t: &TenantId, p: &TenantPolicy) -> Result<(), StoreError> {
        let mut item = keyed(&key::policy(t));
        item.insert("body".into(), to_body(p)?);
        self.put_item(item, false).await
    }
}

impl ExecutionCount for DynamoStore {
    async fn executions_this_hour(&self, t: &TenantId, now_ms: u64) -> Result<u32, StoreError> {
        match self.get(&key::rate(t, now_ms / 3_600_000)).await? {
            None => Ok(0),
            Some(i) => Ok(get_n(&i, "count")? as u32),
        }
    }
}

impl CountExecution for DynamoStore {
    async fn count_execution(&self, t: &TenantId, now_ms: u64) -> Result<u32, StoreError> {
        let hour = now_ms / 3_600_000;
        let k = key::rate(t, hour);
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_map(&k)))
            .update_expression("ADD #c :a SET #ttl = :ttl")
            .expression_attribute_names("#c", "count")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":a", n(1))
            .expression_attribute_values(":ttl", n((hour + 2) * 3600))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(map_err)?;
        let count = out
            .attributes
            .as_ref()
            .and_then(|a| a.get("count"))
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(1);
        Ok(count)
    }
}

impl PriorAttempts for DynamoStore {
    async fn prior_attempts(
        &self,
        t: &TenantId,
        fingerprint: &str,
    ) -> Result<Vec<PriorRecord>, StoreError> {
        self.query_prefix(
            &key::memory_partition(t),
            &format!("{fingerprint}#"),
            false,
            Some(MEMORY_LIMIT),
        )
        .await?
        .iter()
        .map(body)
        .collect()
    }
}

impl Remember for DynamoStore {
    async fn remember(
        &self,
        t: &TenantId,
        fingerprint: &str,
        r: &PriorRecord,
    ) -> Result<(), StoreError> {
        let mut item = keyed(&key::memory(t, fingerprint, r.at_ms, &r.run_id));
        item.insert("body".into(), to_body(r)?);
        self.put_item(item, false).await
    }
}

impl AuditTrail for DynamoStore {
    async fn audit(&self, t: &TenantId, e: &AuditEntry) -> Result<(), StoreError> {
        let mut item = keyed(&key::audit(t, e.at_ms, &e.run_id, &e.action));
        item.insert("ttl".into(), n(epoch_s(e.at_ms) + AUDIT_RETENTION_S));
        item.insert("body".into(), to_body(e)?);
        self.put_item(item, false).await
    }
}

impl AuditReads for DynamoStore {
    async fn list_audit(&self, t: &TenantId) -> Result<Vec<AuditEntry>, StoreError> {
        self.query_prefix(&key::audit_partition(t), "", false, Some(500))
            .await?
            .iter()
            .map(body)
            .collect()
    }
}

impl Outbox for DynamoStore {
    async fn enqueue_action(
        &self,
        t: &TenantId,
        a: &AgentId,
        item: &OutboxItem,
    ) -> Result<bool, StoreError> {
        // Absent from the outbox *and* from history: a finished action is never re-created.
        if self.get(&key::done(t, a, &item.action.id)).await?.is_some() {
            return Ok(false);
        }
        created(self.put_item(outbox_item(t, a, item)?, true).await)
    }

    async fn finished_action(
        &self,
        t: &TenantId,
        a: &AgentId,
        action_id: &str,
    ) -> Result<Option<DoneItem>, StoreError> {
        match self.get(&key::done(t, a, action_id)).await? {
            None => Ok(None),
            Some(i) => match action_entry_from(&i)? {
                ActionEntry::Done(_, d) => Ok(Some(d)),
                ActionEntry::Live(..) => Ok(None),
            },
        }
    }
}

impl AgentKinds for DynamoStore {
    async fn agent_kinds(
        &self,
        t: &TenantId,
        a: &AgentId,
    ) -> Result<Option<Vec<String>>, StoreError> {
        match self.get(&key::agent(t, a)).await? {
            None => Ok(None),
            Some(i) => Ok(crate::dynamo::agent_from(&i)?.action_kinds),
        }
    }
}

/// Artifacts in S3, under `T/<tenant>/artifacts/<sha256>.json`.
#[derive(Debug, Clone)]
pub struct S3Artifacts {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3Artifacts {
    pub fn new(client: aws_sdk_s3::Client, bucket: String) -> Self {
        Self { client, bucket }
    }
}

impl ArtifactStore for S3Artifacts {
    async fn put(&self, t: &TenantId, a: &Artifact) -> Result<String, StoreError> {
        let bytes = a.to_bytes();
        let id = Artifact::id_of(&bytes);
        let digest = Artifact::digest_of(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key::object::artifact(t, digest))
            .content_type("application/json")
            .body(bytes.into())
            .send()
            .await
            .map_err(|e| {
                StoreError::Unavailable(aws_sdk_s3::error::DisplayErrorContext(e).to_string())
            })?;
        Ok(id)
    }

    async fn get(&self, t: &TenantId, id: &str) -> Result<Option<Artifact>, StoreError> {
        let digest = Artifact::digest_of(id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key::object::artifact(t, digest))
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) if e.code() == Some("NoSuchKey") => return Ok(None),
            Err(e) => {
                return Err(StoreError::Unavailable(
                    aws_sdk_s3::error::DisplayErrorContext(e).to_string(),
                ))
            }
        };
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
            .into_bytes();
        Artifact::from_bytes(id, &bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    }
}

impl EvidenceUploads for S3Artifacts {
    async fn evidence_upload(
        &self,
        t: &TenantId,
        run_id: &str,
        action_id: &str,
        ttl_s: u64,
    ) -> Result<(String, String), StoreError> {
        let key = key::object::evidence(t, run_id, action_id);
        let url = self.presign_put(&key, ttl_s).await?;
        Ok((key, url))
    }
}

impl S3Artifacts {
    async fn presign_put(&self, key: &str, ttl_s: u64) -> Result<String, StoreError> {
        let cfg = aws_sdk_s3::presigning::PresigningConfig::expires_in(
            std::time::Duration::from_secs(ttl_s.clamp(60, 7 * 24 * 3600)),
        )
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .presigned(cfg)
            .await
            .map_err(|e| {
                StoreError::Unavailable(aws_sdk_s3::error::DisplayErrorContext(e).to_string())
            })?;
        Ok(req.uri().to_owned())
    }
}

/// One SQS queue per role, by URL.
#[derive(Debug, Clone)]
pub struct SqsStageQueues {
    client: aws_sdk_sqs::Client,
    urls: BTreeMap<Stage, String>,
}

impl SqsStageQueues {
    pub fn new(client: aws_sdk_sqs::Client, urls: BTreeMap<Stage, String>) -> Self {
        Self { client, urls }
    }
}

impl StageQueue for SqsStageQueues {
    async fn send(&self, to: Stage, msg: &StageMessage, delay_s: u32) -> Result<(), StoreError> {
        let url = self.urls.get(&to).ok_or_else(|| {
            StoreError::Unavailable(format!("no queue configured for the {}", to.as_str()))
        })?;
        let body = serde_json::to_string(msg).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.client
            .send_message()
            .queue_url(url)
            .message_body(body)
            .delay_seconds(delay_s.min(900) as i32)
            .send()
            .await
            .map_err(|e| {
                StoreError::Unavailable(aws_sdk_sqs::error::DisplayErrorContext(e).to_string())
            })?;
        Ok(())
    }
}
