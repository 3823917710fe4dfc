//! Domain records: what the control plane knows about agents, actions, services,
//! desired state and credentials. Storage shapes are private to adapters, which
//! convert to and from these.

use crate::tenant::{AgentId, Role};
use std::collections::BTreeMap;
use tether_proto::operator::{DesiredWorkload, Instrumentation, PythonSdk};
use tether_proto::{Action, ActionResult, Inventory, ResultStatus, Service};

/// The agent's record, read by every poll and rewritten only when something changed
/// (optimistic lock on `version`).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    pub agent_id: AgentId,
    pub hostname: String,
    pub agent_version: String,
    pub enrolled_at_ms: u64,
    /// Written at most every `last_seen_write_interval`, and with every other write.
    pub last_seen_ms: u64,
    pub poll_interval_ms: u64,
    pub revoked: bool,
    /// Bumped on revocation; credentials carry it, so old ones stop working.
    pub credential_gen: u32,
    pub capabilities: Vec<String>,
    /// The action kinds the agent last reported it can run on its host (its
    /// allow-list ∩ what it implements ∩ what the host offers); `None` for an
    /// agent that does not report them. Written only when it changes.
    pub action_kinds: Option<Vec<String>>,
    pub inventory_hash: String,
    pub inventory: Option<Inventory>,
    pub services_hash: String,
    /// Tenant desired revision last reconciled against this agent's services.
    pub reconciled_revision: u64,
    /// The desired revision this agent has fully applied, as the server judges
    /// it ([`crate::reconcile::judge`]): it advances to the tenant's revision
    /// only when no need of that revision is pending, failed, refused or held.
    pub applied_revision: u64,
    /// Why `applied_revision` lags (empty when it does not); bounded.
    pub drift: Vec<tether_proto::operator::Drift>,
    pub spool_depth: u64,
    pub last_error: Option<String>,
    /// Retry budget per (workload, kind): see [`crate::reconcile`].
    pub attempts: BTreeMap<String, Attempt>,
    /// Set when a reconcile planned more than one poll may queue: the next poll
    /// reconciles again even if nothing else moved.
    pub reconcile_pending: bool,
    /// Collector states the agent last reported (written when they change).
    pub collectors: Vec<tether_proto::CollectorState>,
    /// Headline numbers from the agent's last written heartbeat.
    pub vitals: BTreeMap<String, f64>,
    /// Optimistic-lock version; 0 means "not yet stored".
    pub version: u64,
}

impl AgentRecord {
    pub fn new(
        agent_id: AgentId,
        hostname: String,
        agent_version: String,
        now_ms: u64,
        poll_interval_ms: u64,
    ) -> Self {
        Self {
            agent_id,
            hostname,
            agent_version,
            enrolled_at_ms: now_ms,
            last_seen_ms: now_ms,
            poll_interval_ms,
            revoked: false,
            credential_gen: 1,
            capabilities: Vec::new(),
            action_kinds: None,
            inventory_hash: String::new(),
            inventory: None,
            services_hash: String::new(),
            reconciled_revision: 0,
            applied_revision: 0,
            drift: Vec::new(),
            spool_depth: 0,
            last_error: None,
            attempts: BTreeMap::new(),
            reconcile_pending: false,
            collectors: Vec::new(),
            vitals: BTreeMap::new(),
            version: 0,
        }
    }
}

/// Attempts at one (workload, kind) for one process and desired revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub pid: u32,
    pub revision: u64,
    pub count: u32,
    /// Set when the agent refused: retrying cannot help.
    pub exhausted: bool,
    /// Set when an attempt succeeded: the services hash at that moment. The need is
    /// not planned again until the agent reports a different service list, so a
    /// success is never answered with a duplicate before the new state is observed.
    pub succeeded_at_hash: Option<String>,
}

/// Where a live (unfinished) action stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveState {
    /// In the outbox, handed out on every poll until the agent acknowledges it.
    Queued,
    /// The agent acknowledged receipt (`received`).
    Delivered,
    Started,
}

impl LiveState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Delivered => "delivered",
            Self::Started => "started",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "queued" => Some(Self::Queued),
            "delivered" => Some(Self::Delivered),
            "started" => Some(Self::Started),
            _ => None,
        }
    }
}

/// How an action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalState {
    Succeeded,
    Failed,
    Refused,
    DryRun,
    /// Expired before the agent acknowledged it.
    Expired,
}

impl FinalState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Refused => "refused",
            Self::DryRun => "dry_run",
            Self::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "succeeded" => Some(Self::Succeeded),
            "failed" => Some(Self::Failed),
            "refused" => Some(Self::Refused),
            "dry_run" => Some(Self::DryRun),
            "expired" => Some(Self::Expired),
            _ => None,
        }
    }

    pub fn from_status(status: Option<ResultStatus>) -> Self {
        match status {
            Some(ResultStatus::Succeeded) => Self::Succeeded,
            Some(ResultStatus::Refused) => Self::Refused,
            Some(ResultStatus::DryRun) => Self::DryRun,
            Some(ResultStatus::Failed) | Some(ResultStatus::Unknown) | None => Self::Failed,
        }
    }
}

/// An action in an agent's outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxItem {
    pub action: Action,
    pub state: LiveState,
    /// Which attempt at (workload, kind) this is, from 1.
    pub attempt: u32,
    /// The process the action was planned for.
    pub pid: u32,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Latest non-final result the agent sent (`started` carries timings).
    pub last_result: Option<ActionResult>,
}

/// A finished action, kept (with a TTL) for the operator's history.
#[derive(Debug, Clone, PartialEq)]
pub struct DoneItem {
    pub item: OutboxItem,
    pub state: FinalState,
    pub result: Option<ActionResult>,
    pub finished_at_ms: u64,
}

/// The agent's last reported service list.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicesRecord {
    pub hash: String,
    pub services: Vec<Service>,
    pub updated_at_ms: u64,
}

/// Everything the poll needs, as one Query returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentView {
    pub agent: AgentRecord,
    pub outbox: Vec<OutboxItem>,
    pub services: Option<ServicesRecord>,
}

/// A desired workload with the revision at which it last changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredEntry {
    pub workload: DesiredWorkload,
    pub changed_at_revision: u64,
}

/// A tenant's desired state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DesiredSet {
    pub revision: u64,
    pub workloads: BTreeMap<String, DesiredEntry>,
}

impl DesiredSet {
    pub fn get(&self, workload_key: &str) -> Option<&DesiredEntry> {
        self.workloads.get(workload_key)
    }

    pub fn wants_instrumented(&self, workload_key: &str) -> Option<bool> {
        self.get(workload_key)
            .map(|e| e.workload.instrumentation == Instrumentation::Instrumented)
    }

    /// The LLM content mode asked for, for a workload desired instrumented.
    pub fn wants_llm_content(
        &self,
        workload_key: &str,
    ) -> Option<tether_proto::operator::LlmContent> {
        self.get(workload_key)
            .filter(|e| e.workload.instrumentation == Instrumentation::Instrumented)
            .map(|e| e.workload.llm_content)
    }

    pub fn wants_python_sdk(&self, workload_key: &str) -> Option<bool> {
        self.get(workload_key)
            .map(|e| e.workload.python_sdk == PythonSdk::Enabled)
    }
}

/// A stored enrollment token: only the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentTokenRecord {
    pub id: String,
    pub secret_hash: String,
    pub description: String,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub max_uses: u32,
    pub uses: u32,
    pub revoked: bool,
}

/// A stored API key: only the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub secret_hash: String,
    pub role: Role,
    pub description: String,
    pub created_at_ms: u64,
    pub revoked: bool,
}
