//! Ports: what the domain needs from storage, queues and secrets. Adapters
//! (`tether-aws`) implement them over DynamoDB, SQS and Secrets Manager.
//!
//! Invariants every implementation keeps:
//! - `load_view` is one read (one DynamoDB Query); `commit_poll` is one atomic
//!   write (one TransactWriteItems) that fails with [`StoreError::Conflict`] when any
//!   of its conditions no longer holds, and then writes nothing.
//! - Every create is conditional on absence; every outbox state change is
//!   conditional on the state it was planned from.
//! - Nothing here takes a key string: adapters build keys with [`crate::key`] from a
//!   [`TenantId`].

use crate::credential::KeyRing;
use crate::model::{
    AgentRecord, AgentView, ApiKeyRecord, DesiredSet, DoneItem, EnrollmentTokenRecord, LiveState,
    OutboxItem, ServicesRecord,
};
use crate::tenant::{AgentId, TenantId};
use std::future::Future;
use tether_proto::operator::DesiredWorkload;
use tether_proto::TelemetryWindow;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A condition failed: someone else changed the item first.
    #[error("conflicting concurrent change")]
    Conflict,
    /// The backend asked us to slow down.
    #[error("storage is throttling requests")]
    Throttled,
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A stored item does not parse: never silently skipped.
    #[error("stored item is corrupt: {0}")]
    Corrupt(String),
}

/// One atomic poll write, planned by [`crate::poll::plan_poll`].
#[derive(Debug, Clone, PartialEq)]
pub struct PollCommit {
    /// The agent record to store, written only if the stored version is still
    /// `expected_version` (0: must not exist).
    pub agent: AgentRecord,
    pub expected_version: u64,
    pub services: Option<ServicesRecord>,
    pub enqueue: Vec<OutboxItem>,
    pub transitions: Vec<Transition>,
}

impl PollCommit {
    /// Items the transaction touches (DynamoDB allows 100).
    pub fn item_count(&self) -> usize {
        1 + usize::from(self.services.is_some())
            + self.enqueue.len()
            + self
                .transitions
                .iter()
                .map(|t| match t {
                    Transition::Advance { .. } => 1,
                    Transition::Finish { .. } => 2,
                })
                .sum::<usize>()
    }
}

#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "a few per poll, never stored in bulk"
)]
pub enum Transition {
    /// A live item moves to a later live state (its `state` field holds the new one).
    Advance { item: OutboxItem, from: LiveState },
    /// A live item leaves the outbox and becomes history.
    Finish { done: DoneItem, from: LiveState },
}

/// An action as listed for operators: live or finished.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant, reason = "operator listings only")]
pub enum ActionEntry {
    Live(AgentId, OutboxItem),
    Done(AgentId, DoneItem),
}

pub trait AgentStore: Send + Sync + 'static {
    /// The agent record, its live outbox and its service list, in one read.
    fn load_view(
        &self,
        t: &TenantId,
        a: &AgentId,
    ) -> impl Future<Output = Result<Option<AgentView>, StoreError>> + Send;

    fn commit_poll(
        &self,
        t: &TenantId,
        c: &PollCommit,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Uses one enrollment token (only while it is unrevoked, unexpired and under its
    /// use limit at `now_ms`) and creates the agent, atomically.
    fn enroll(
        &self,
        t: &TenantId,
        token_id: &str,
        agent: &AgentRecord,
        now_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Marks the agent revoked and bumps its credential generation. `Ok(false)` when
    /// no such agent exists.
    fn revoke_agent(
        &self,
        t: &TenantId,
        a: &AgentId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

pub trait DesiredStore: Send + Sync + 'static {
    fn load_desired(
        &self,
        t: &TenantId,
    ) -> impl Future<Output = Result<DesiredSet, StoreError>> + Send;

    /// Writes the changed workloads at `new_revision` if the stored revision is still
    /// `expected_revision`.
    fn apply_desired(
        &self,
        t: &TenantId,
        changed: &[DesiredWorkload],
        expected_revision: u64,
        new_revision: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

pub trait CredentialStore: Send + Sync + 'static {
    fn put_enrollment_token(
        &self,
        t: &TenantId,
        rec: &EnrollmentTokenRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn get_enrollment_token(
        &self,
        t: &TenantId,
        id: &str,
    ) -> impl Future<Output = Result<Option<EnrollmentTokenRecord>, StoreError>> + Send;
    fn list_enrollment_tokens(
        &self,
        t: &TenantId,
    ) -> impl Future<Output = Result<Vec<EnrollmentTokenRecord>, StoreError>> + Send;
    fn revoke_enrollment_token(
        &self,
        t: &TenantId,
        id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    fn put_api_key(
        &self,
        t: &TenantId,
        rec: &ApiKeyRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn get_api_key(
        &self,
        t: &TenantId,
        id: &str,
    ) -> impl Future<Output = Result<Option<ApiKeyRecord>, StoreError>> + Send;
    fn list_api_keys(
        &self,
        t: &TenantId,
    ) -> impl Future<Output = Result<Vec<ApiKeyRecord>, StoreError>> + Send;
    fn revoke_api_key(
        &self,
        t: &TenantId,
        id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// Tenant-wide listings for operators (index queries; never on the poll path).
pub trait FleetQuery: Send + Sync + 'static {
    fn list_agents(
        &self,
        t: &TenantId,
    ) -> impl Future<Output = Result<Vec<AgentRecord>, StoreError>> + Send;
    fn list_services(
        &self,
        t: &TenantId,
    ) -> impl Future<Output = Result<Vec<(AgentId, ServicesRecord)>, StoreError>> + Send;
    fn list_actions(
        &self,
        t: &TenantId,
    ) -> impl Future<Output = Result<Vec<ActionEntry>, StoreError>> + Send;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("telemetry queue unavailable: {0}")]
pub struct SinkError(pub String);

/// The queues the poll hands work to: telemetry windows to the observations
/// queue (one call per poll at most) and, only on a poll that finished incident
/// actions, a notice to the executor.
pub trait TelemetrySink: Send + Sync + 'static {
    fn send(
        &self,
        t: &TenantId,
        a: &AgentId,
        windows: &[TelemetryWindow],
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Incident runs whose actions this poll finished.
    fn incident_actions_finished(
        &self,
        t: &TenantId,
        runs: &[String],
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        let _ = (t, runs);
        async { Ok(()) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySourceError {
    #[error("signing keys unavailable: {0}")]
    Unavailable(String),
    #[error("signing key ring is malformed: {0}")]
    Malformed(String),
}

/// Where the agent-credential key ring lives (Secrets Manager).
pub trait KeySource: Send + Sync + 'static {
    fn load(&self) -> impl Future<Output = Result<KeyRing, KeySourceError>> + Send;
}

/// Wall-clock time, injected so tests control it.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}
