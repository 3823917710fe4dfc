//! The incident chain's ports: small traits, one per kind of storage call, so
//! that each role's handler is bounded by exactly the ports its IAM role grants
//! (`infra/iam.tf`, `local.role_access`). A role that needs a call its grant does
//! not allow does not compile, rather than failing with AccessDenied in AWS.
//!
//! | port | DynamoDB / S3 call | roles |
//! |---|---|---|
//! | [`Runs`] | GetItem, conditional PutItem | every role, approvals |
//! | [`RunIndex`] | Query | api (operator reads) |
//! | [`HostMarkers`] | GetItem, conditional PutItem | observer, memory |
//! | [`EvidenceLog`] | PutItem | observer |
//! | [`EvidenceReads`] | Query | verifier, api |
//! | [`PolicySource`] / [`PolicyAdmin`] | GetItem / PutItem | gate, api / api |
//! | [`ExecutionCount`] / [`CountExecution`] | GetItem / UpdateItem | gate / executor |
//! | [`PriorAttempts`] / [`Remember`] | Query / PutItem | analyzer / memory |
//! | [`AuditTrail`] / [`AuditReads`] | PutItem / Query | every role, api / api |
//! | [`Outbox`] | conditional PutItem, GetItem | executor, verifier |
//! | [`AgentKinds`] | GetItem (the agent's record) | planner, executor |
//! | [`ArtifactStore`] | S3 GetObject, PutObject | every role, api |
//! | [`EvidenceUploads`] | presigned S3 PutObject | executor |
//! | [`StageQueue`] | SQS SendMessage to [`Stage::sends_to`] | every role |
//!
//! [`IncidentStore`] is every DynamoDB port at once (what an adapter implements and
//! what the dispatcher, which serves every role in one process, needs).
//!
//! Invariants every implementation keeps: creates are conditional on absence,
//! updates on the version read; nothing here takes a key string.

use super::artifact::{Artifact, Stage};
use super::policy::TenantPolicy;
use super::run::{AuditEntry, EvidencePoint, Markers, PriorRecord, RunManifest, StageMessage};
use crate::model::{DoneItem, OutboxItem};
use crate::port::StoreError;
use crate::tenant::{AgentId, TenantId};
use std::future::Future;

/// Run manifests: read, create, conditional update.
pub trait Runs: Send + Sync + 'static {
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
}

/// The tenant's runs, for operators.
pub trait RunIndex: Send + Sync + 'static {
    fn list_runs(
        &self,
        t: &TenantId,
    ) -> impl Future<Output = Result<Vec<RunManifest>, StoreError>> + Send;
}

/// The per-host item: the observer's windows, dedupe and suppression markers.
pub trait HostMarkers: Send + Sync + 'static {
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
}

/// Records a run's evidence points (the observer, window by window).
pub trait EvidenceLog: Send + Sync + 'static {
    fn put_evidence(
        &self,
        t: &TenantId,
        run_id: &str,
        p: &EvidencePoint,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A run's evidence points, in order.
pub trait EvidenceReads: Send + Sync + 'static {
    fn evidence(
        &self,
        t: &TenantId,
        run_id: &str,
    ) -> impl Future<Output = Result<Vec<EvidencePoint>, StoreError>> + Send;
}

/// The tenant's incident policy (the default when none is stored).
pub trait PolicySource: Send + Sync + 'static {
    fn load_policy(
        &self,
        t: &TenantId,
    ) -> impl Future<Output = Result<TenantPolicy, StoreError>> + Send;
}

pub trait PolicyAdmin: Send + Sync + 'static {
    fn put_policy(
        &self,
        t: &TenantId,
        p: &TenantPolicy,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Actions executed in the hour of `now_ms` (the policy's rate limit).
pub trait ExecutionCount: Send + Sync + 'static {
    fn executions_this_hour(
        &self,
        t: &TenantId,
        now_ms: u64,
    ) -> impl Future<Output = Result<u32, StoreError>> + Send;
}

/// Counts one executed action in the hour of `now_ms`; returns the new count.
pub trait CountExecution: Send + Sync + 'static {
    fn count_execution(
        &self,
        t: &TenantId,
        now_ms: u64,
    ) -> impl Future<Output = Result<u32, StoreError>> + Send;
}

/// What earlier runs with the same fingerprint tried.
pub trait PriorAttempts: Send + Sync + 'static {
    fn prior_attempts(
        &self,
        t: &TenantId,
        fingerprint: &str,
    ) -> impl Future<Output = Result<Vec<PriorRecord>, StoreError>> + Send;
}

pub trait Remember: Send + Sync + 'static {
    /// Records a run's attempts under its fingerprint (idempotent by run id).
    fn remember(
        &self,
        t: &TenantId,
        fingerprint: &str,
        r: &PriorRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

pub trait AuditTrail: Send + Sync + 'static {
    fn audit(
        &self,
        t: &TenantId,
        e: &AuditEntry,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

pub trait AuditReads: Send + Sync + 'static {
    fn list_audit(
        &self,
        t: &TenantId,
    ) -> impl Future<Output = Result<Vec<AuditEntry>, StoreError>> + Send;
}

/// Incident actions in agents' outboxes.
pub trait Outbox: Send + Sync + 'static {
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

/// What the subject's agent can run: the action kinds it last reported (its
/// allow-list ∩ what it implements ∩ what its host offers), from its record.
pub trait AgentKinds: Send + Sync + 'static {
    /// `None` when the agent does not report its kinds (an older agent) or has
    /// no record.
    fn agent_kinds(
        &self,
        t: &TenantId,
        a: &AgentId,
    ) -> impl Future<Output = Result<Option<Vec<String>>, StoreError>> + Send;
}

/// Every DynamoDB port: what an adapter implements.
pub trait IncidentStore:
    Runs
    + RunIndex
    + HostMarkers
    + EvidenceLog
    + EvidenceReads
    + PolicySource
    + PolicyAdmin
    + ExecutionCount
    + CountExecution
    + PriorAttempts
    + Remember
    + AuditTrail
    + AuditReads
    + Outbox
    + AgentKinds
{
}

impl<T> IncidentStore for T where
    T: Runs
        + RunIndex
        + HostMarkers
        + EvidenceLog
        + EvidenceReads
        + PolicySource
        + PolicyAdmin
        + ExecutionCount
        + CountExecution
        + PriorAttempts
        + Remember
        + AuditTrail
        + AuditReads
        + Outbox
        + AgentKinds
{
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
}

/// Where agents upload `collect_evidence` bundles.
pub trait EvidenceUploads: Send + Sync + 'static {
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

/// SQS: one queue per role. A role sends only to [`Stage::sends_to`].
pub trait StageQueue: Send + Sync + 'static {
    fn send(
        &self,
        to: Stage,
        msg: &StageMessage,
        delay_s: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}
