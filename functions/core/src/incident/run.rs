//! Runs: the manifest that lists a run's chain, the messages between roles, and
//! the ports the roles use.
//!
//! Invariants:
//! - A run id is derived from (tenant, agent, signal family, window seq), so the
//!   observer opening "the same" run twice opens one run.
//! - The manifest is changed only by read-modify-write conditional on its
//!   `version`; a chain entry is appended once (by artifact id), so redelivery
//!   never lists an artifact twice.
//! - Outbox actions of a run have ids and idempotency keys derived from run and
//!   step (`inc:<run>:<step>`): creating one twice creates it once.

use super::artifact::{Artifact, ArtifactKind, Stage, Verdict};
use super::policy::TenantPolicy;
use crate::model::{DoneItem, OutboxItem};
use crate::port::StoreError;
use crate::tenant::{AgentId, TenantId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::future::Future;

/// Idempotency keys of incident actions start with this.
pub const ACTION_KEY_PREFIX: &str = "inc:";

pub fn run_id(t: &TenantId, agent: &str, family: &str, window_seq: u64) -> String {
    let d = Sha256::digest(format!("{}|{agent}|{family}|{window_seq}", t.as_str()).as_bytes());
    format!("run_{}", &hex::encode(d)[..24])
}

/// `act_` + 20 hex of the run + 4 hex of the step: a run's actions sort (and so
/// reach the agent) in step order.
pub fn action_id(run_id: &str, step: u32) -> String {
    let d = Sha256::digest(run_id.as_bytes());
    format!("act_{}{:04x}", &hex::encode(d)[..20], step.min(0xffff))
}

pub fn idempotency_key(run_id: &str, step: u32) -> String {
    format!("{ACTION_KEY_PREFIX}{run_id}:{step}")
}

/// The run an incident action belongs to, from its idempotency key.
pub fn run_of_key(key: &str) -> Option<&str> {
    key.strip_prefix(ACTION_KEY_PREFIX)?.split(':').next()
}

pub fn fingerprint(family: &str, rule: &str, subject: &str) -> String {
    let d = Sha256::digest(format!("{family}|{rule}|{subject}").as_bytes());
    format!("fp_{}", &hex::encode(d)[..16])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Moving through observer, analyzer, planner, policy gate.
    Open,
    AwaitingApproval,
    Executing,
    Verifying,
    /// Closed with a report: the outcome says how.
    Closed,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::AwaitingApproval => "awaiting_approval",
            Self::Executing => "executing",
            Self::Verifying => "verifying",
            Self::Closed => "closed",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainLink {
    pub stage: Stage,
    pub kind: ArtifactKind,
    pub id: String,
    pub status: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// `approved` or `rejected`.
    pub decision: String,
    pub by: String,
    pub at_ms: u64,
    #[serde(default)]
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAction {
    pub step: u32,
    pub action: String,
    pub action_id: String,
    pub agent_id: String,
    pub idempotency_key: String,
    pub mode: String,
    /// `queued` until the agent's final result; then the outbox's final state.
    pub state: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub finished_at_ms: u64,
    #[serde(default)]
    pub rollback: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub stage: Stage,
    pub reason: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    pub run_id: String,
    pub incident_id: String,
    pub agent_id: String,
    pub family: String,
    pub title: String,
    pub status: RunStatus,
    /// `resolved`, `unchanged`, `worse`, `inconclusive`, `blocked`, `rejected`,
    /// `expired` once closed.
    #[serde(default)]
    pub outcome: String,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub chain: Vec<ChainLink>,
    #[serde(default)]
    pub approval: Option<ApprovalRecord>,
    #[serde(default)]
    pub approval_expires_at_ms: Option<u64>,
    #[serde(default)]
    pub actions: Vec<RunAction>,
    #[serde(default)]
    pub failure: Option<Failure>,
    #[serde(default)]
    pub fingerprint: String,
    /// Storage version; the store bumps it on every update.
    #[serde(default)]
    pub version: u64,
}

impl RunManifest {
    pub fn link(&self, kind: ArtifactKind) -> Option<&ChainLink> {
        self.chain.iter().find(|l| l.kind == kind)
    }

    /// Appends a link unless that artifact is already listed. True if appended.
    pub fn append(&mut self, stage: Stage, a: &Artifact, id: &str) -> bool {
        if self.chain.iter().any(|l| l.id == id) {
            return false;
        }
        self.chain.push(ChainLink {
            stage,
            kind: a.kind(),
            id: id.to_owned(),
            status: a.status.clone(),
            at_ms: a.created_at_ms,
        });
        true
    }
}

/// What an agent's incident marker holds per signal family: the run that owns
/// the family on that agent, until when new runs are suppressed, and until when
/// the observer records evidence for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerEntry {
    pub run_id: String,
    pub suppress_until_ms: u64,
    pub collect_until_ms: u64,
    /// Metrics to record as evidence.
    pub metrics: Vec<String>,
}

/// One item per agent: the runs that own its signal families, and the
/// observer's memory of the host (its windows and the answers it gave), so that
/// one read and one conditional write per message keep the observer stateless.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Markers {
    pub families: BTreeMap<String, MarkerEntry>,
    #[serde(default)]
    pub host: super::observe::HostState,
    #[serde(default)]
    pub version: u64,
}

/// One window's values of a run's metrics, recorded by the observer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidencePoint {
    pub seq: u64,
    pub end_ms: u64,
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: u64,
    pub actor: String,
    pub action: String,
    /// Empty for entries about no run (a policy change); then left out of JSON.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub run_id: String,
    #[serde(default)]
    pub detail: String,
}

/// Messages between roles (SQS bodies). The observer consumes the api's
/// observation messages instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StageMessage {
    /// The next role's input is this artifact.
    Artifact {
        tenant: TenantId,
        run_id: String,
        artifact_id: String,
    },
    /// An operator approved the plan (executor).
    Approved { tenant: TenantId, run_id: String },
    /// Check whether a plan's approval has expired (executor; delayed).
    ApprovalDeadline { tenant: TenantId, run_id: String },
    /// An agent finished an action of the run (executor; from the poll), or a
    /// periodic check for results (executor; delayed).
    ActionsChanged { tenant: TenantId, run_id: String },
    /// Compare evidence now (verifier; delayed). `attempt` counts re-checks.
    Verify {
        tenant: TenantId,
        run_id: String,
        attempt: u32,
    },
}

impl StageMessage {
    pub fn tenant(&self) -> &TenantId {
        match self {
            Self::Artifact { tenant, .. }
            | Self::Approved { tenant, .. }
            | Self::ApprovalDeadline { tenant, .. }
            | Self::ActionsChanged { tenant, .. }
            | Self::Verify { tenant, .. } => tenant,
        }
    }

    pub fn run_id(&self) -> &str {
        match self {
            Self::Artifact { run_id, .. }
            | Self::Approved { run_id, .. }
            | Self::ApprovalDeadline { run_id, .. }
            | Self::ActionsChanged { run_id, .. }
            | Self::Verify { run_id, .. } => run_id,
        }
    }
}

/// S3: artifact payloads, content-addressed under the tenant.
pub trait ArtifactStore: Send + Sync + 'static {
    /// Stores the artifact; returns its id. Storing the same artifact again is a no-op.
    fn put(
        &self,
        t: &TenantId,
        a: &Artifact,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;
    /// Reads and checks it; `Corrupt` when the bytes do not match the id.
    fn get(
        &self,
        t: &TenantId,
        id: &str,
    ) -> impl Future<Output = Result<Option<Artifact>, StoreError>> + Send;

    /// A presigned PUT URL an agent uploads an evidence bundle to, valid for
    /// `ttl_s`, for the object `T/<tenant>/evidence/<run>/<action>.json`.
    /// Returns (object key, URL).
    fn evidence_upload(
        &self,
        t: &TenantId,
        run_id: &str,
        action_id: &str,
        ttl_s: u64,
    ) -> impl Future<Output = Result<(String, String), StoreError>> + Send;
}

/// SQS: one queue per role.
pub trait StageQueue: Send + Sync + 'static {
    fn send(
        &self,
        to: Stage,
        msg: &StageMessage,
        delay_s: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// DynamoDB: manifests, markers, evidence, policy, memory, audit, outbox writes.
pub trait IncidentStore: Send + Sync + 'static {
    fn load_run(
        &self,
        t: &TenantId,
        run_id: &str,
    ) -> impl Future<Output = Result<Option<RunManifest>, StoreError>> + Send;
    /// Creates the manifest (version 0 → 1); `Ok(false)` when it already exists.
    fn create_run(
        &self,
        t: &TenantId,
        m: &RunManifest,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Writes `m` if the stored version is still `m.version`; stores `m.version + 1`.
    fn update_run(
        &self,
        t: &TenantId,
        m: &RunManifest,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn list_runs(
        &self,
        t: &TenantId,
    ) -> impl Future<Output = Result<Vec<RunManifest>, StoreError>> + Send;

    fn load_markers(
        &self,
        t: &TenantId,
        a: &AgentId,
    ) -> impl Future<Output = Result<Markers, StoreError>> + Send;
    /// Writes the markers if their stored version is still `m.version`.
    fn save_markers(
        &self,
        t: &TenantId,
        a: &AgentId,
        m: &Markers,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn put_evidence(
        &self,
        t: &TenantId,
        run_id: &str,
        p: &EvidencePoint,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn evidence(
        &self,
        t: &TenantId,
        run_id: &str,
    ) -> impl Future<Output = Result<Vec<EvidencePoint>, StoreError>> + Send;

    fn load_policy(
        &self,
        t: &TenantId,
    ) -> impl Future<Output = Result<TenantPolicy, StoreError>> + Send;
    fn put_policy(
        &self,
        t: &TenantId,
        p: &TenantPolicy,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Actions executed this hour (the policy's rate limit); `add` adds to it.
    fn executions_this_hour(
        &self,
        t: &TenantId,
        now_ms: u64,
        add: u32,
    ) -> impl Future<Output = Result<u32, StoreError>> + Send;

    fn prior_attempts(
        &self,
        t: &TenantId,
        fingerprint: &str,
    ) -> impl Future<Output = Result<Vec<PriorRecord>, StoreError>> + Send;
    /// Records a run's attempts under its fingerprint (idempotent by run id).
    fn remember(
        &self,
        t: &TenantId,
        fingerprint: &str,
        r: &PriorRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn audit(
        &self,
        t: &TenantId,
        e: &AuditEntry,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn list_audit(
        &self,
        t: &TenantId,
    ) -> impl Future<Output = Result<Vec<AuditEntry>, StoreError>> + Send;

    /// Creates an outbox action for the agent unless one with that id exists
    /// (`Ok(false)` then).
    fn enqueue_action(
        &self,
        t: &TenantId,
        a: &AgentId,
        item: &OutboxItem,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The finished action, once the agent's final result is recorded.
    fn finished_action(
        &self,
        t: &TenantId,
        a: &AgentId,
        action_id: &str,
    ) -> impl Future<Output = Result<Option<DoneItem>, StoreError>> + Send;
}

/// What a past run with the same fingerprint tried, and how it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriorRecord {
    pub run_id: String,
    pub at_ms: u64,
    pub actions: Vec<String>,
    pub verdict: Verdict,
}
