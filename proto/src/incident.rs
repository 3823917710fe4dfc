//! The incident workflow's public data: the artifact each role leaves behind, the
//! run manifest that lists them, evidence points and audit entries, as the
//! functions store them and as the operator routes (`/v1/runs`, `/v1/artifacts`,
//! `/v1/audit`) return them. `docs/artifacts.md` describes the schema.
//!
//! Invariants:
//! - `schema_version` is bumped on any incompatible change to [`Artifact`];
//!   readers reject a version they do not know rather than guess.
//! - Raw telemetry never goes in: signals are named values, evidence is a
//!   reference plus at most [`MAX_EXCERPTS`] excerpts of at most
//!   [`MAX_EXCERPT_LEN`] bytes ([`EvidenceRef::new`] enforces both).
//! - Content addressing (ids, digests) is the control plane's (`tether-core`):
//!   this crate stays serde only.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const SCHEMA_VERSION: u32 = 1;
pub const MAX_EXCERPTS: usize = 3;
pub const MAX_EXCERPT_LEN: usize = 200;

/// The roles of the chain, each its own function on its own queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Observer,
    Analyzer,
    Planner,
    PolicyGate,
    Executor,
    Verifier,
    Memory,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Observer,
        Stage::Analyzer,
        Stage::Planner,
        Stage::PolicyGate,
        Stage::Executor,
        Stage::Verifier,
        Stage::Memory,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Observer => "observer",
            Self::Analyzer => "analyzer",
            Self::Planner => "planner",
            Self::PolicyGate => "policy_gate",
            Self::Executor => "executor",
            Self::Verifier => "verifier",
            Self::Memory => "memory",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The role's function, as `infra/` names it (`var.functions`).
    pub fn function(self) -> &'static str {
        match self {
            Self::PolicyGate => "policy-gate",
            other => other.as_str(),
        }
    }

    /// The role's input queue, as `infra/` names it (`var.queues`).
    pub fn queue(self) -> &'static str {
        match self {
            Self::Observer => "observations",
            other => other.function(),
        }
    }

    /// The queues this role's function may send to: its IAM grant
    /// (`infra/iam.tf`, `role_access.<function>.sends`), which a test compares.
    pub fn sends_to(self) -> &'static [Stage] {
        match self {
            Self::Observer => &[Self::Analyzer],
            Self::Analyzer => &[Self::Planner],
            Self::Planner => &[Self::PolicyGate],
            Self::PolicyGate => &[Self::Executor, Self::Memory],
            Self::Executor => &[Self::Executor, Self::Verifier, Self::Memory],
            Self::Verifier => &[Self::Verifier, Self::Memory],
            Self::Memory => &[],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    ObservationSummary,
    AnomalyFinding,
    RootCauseHypothesis,
    RemediationProposal,
    ExecutionPlan,
    ExecutionResult,
    VerificationResult,
    IncidentReport,
}

impl ArtifactKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ObservationSummary => "observation_summary",
            Self::AnomalyFinding => "anomaly_finding",
            Self::RootCauseHypothesis => "root_cause_hypothesis",
            Self::RemediationProposal => "remediation_proposal",
            Self::ExecutionPlan => "execution_plan",
            Self::ExecutionResult => "execution_result",
            Self::VerificationResult => "verification_result",
            Self::IncidentReport => "incident_report",
        }
    }
}

/// A pointer to evidence, with a few short excerpts an operator can read in place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidenceRef {
    /// `window:<agent>:<seq>`, `action:<id>`, `artifact:<id>`.
    pub id: String,
    #[serde(default)]
    pub excerpts: Vec<String>,
}

impl EvidenceRef {
    pub fn new(id: impl Into<String>, excerpts: impl IntoIterator<Item = String>) -> Self {
        Self {
            id: id.into(),
            excerpts: excerpts
                .into_iter()
                .take(MAX_EXCERPTS)
                .map(|mut e| {
                    if e.len() > MAX_EXCERPT_LEN {
                        let mut cut = MAX_EXCERPT_LEN;
                        while !e.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        e.truncate(cut);
                    }
                    e
                })
                .collect(),
        }
    }
}

/// A named value crossing (or trending past) a threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// The family: `cpu_saturation`, `memory_pressure`, `oom_kill`, `disk_full`,
    /// `io_stall`, `crash_loop`, `gpu_xid`, `gpu_ecc`, `gpu_memory`, `gpu_thermal`,
    /// `llm_errors`, `llm_latency`, `llm_uninstrumented`.
    pub family: String,
    /// The metric it was read from, e.g. `fs.root.used_pct`.
    pub metric: String,
    pub value: f64,
    pub threshold: f64,
    /// Mean of the same metric over the host's recent windows, when known.
    pub baseline: Option<f64>,
    /// Extra context: the mount, the workload key, the pid.
    #[serde(default)]
    pub subject: String,
}

/// The typed body of each artifact kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    ObservationSummary {
        agent_id: String,
        window_seq: u64,
        window_start_ms: u64,
        window_end_ms: u64,
        signals: Vec<Signal>,
        /// The relevant metrics of the host's recent windows (oldest first), for
        /// before / after comparisons: metric -> values.
        history: BTreeMap<String, Vec<f64>>,
    },
    AnomalyFinding {
        agent_id: String,
        anomalies: Vec<Anomaly>,
    },
    RootCauseHypothesis {
        hypotheses: Vec<Hypothesis>,
        /// What earlier runs with the same fingerprint tried, and how it went.
        prior: Vec<PriorAttempt>,
        /// Optional wording from an LLM; never used for ranking or decisions.
        enrichment: Option<String>,
    },
    RemediationProposal {
        hypothesis: String,
        proposals: Vec<Proposal>,
        /// Runbook steps left out because the subject's agent cannot run them on
        /// its host (they rank above what was proposed, or there is no other way).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unavailable: Vec<Unavailable>,
        /// Set when the agent did not report the action kinds it can run (an
        /// older agent): the steps were proposed without that check.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    ExecutionPlan {
        decisions: Vec<Decision>,
        /// `awaiting_approval`, `approved`, `dry_run_only`, `blocked`.
        outcome: String,
        approval_expires_at_ms: Option<u64>,
        policy: String,
    },
    ExecutionResult {
        approved_by: Option<String>,
        steps: Vec<StepResult>,
    },
    VerificationResult {
        verdict: Verdict,
        why: String,
        metric: String,
        before: Option<f64>,
        after: Option<f64>,
        rollback: Option<String>,
    },
    IncidentReport {
        fingerprint: String,
        title: String,
        outcome: String,
        chain: Vec<ChainEntry>,
    },
}

impl Body {
    pub fn kind(&self) -> ArtifactKind {
        match self {
            Self::ObservationSummary { .. } => ArtifactKind::ObservationSummary,
            Self::AnomalyFinding { .. } => ArtifactKind::AnomalyFinding,
            Self::RootCauseHypothesis { .. } => ArtifactKind::RootCauseHypothesis,
            Self::RemediationProposal { .. } => ArtifactKind::RemediationProposal,
            Self::ExecutionPlan { .. } => ArtifactKind::ExecutionPlan,
            Self::ExecutionResult { .. } => ArtifactKind::ExecutionResult,
            Self::VerificationResult { .. } => ArtifactKind::VerificationResult,
            Self::IncidentReport { .. } => ArtifactKind::IncidentReport,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub family: String,
    pub metric: String,
    pub subject: String,
    pub value: f64,
    pub threshold: f64,
    /// `warning` or `critical`.
    pub severity: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hypothesis {
    /// The catalog rule, e.g. `disk_full`.
    pub rule: String,
    pub title: String,
    /// 0..=100, from the rule catalog; higher ranks first.
    pub score: u32,
    pub explanation: String,
    pub subject: String,
    pub evidence: Vec<EvidenceRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriorAttempt {
    pub run_id: String,
    pub action: String,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Safety {
    ReadOnly,
    Reversible,
    Impactful,
    Destructive,
}

impl Safety {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadOnly => "read_only",
            Self::Reversible => "reversible",
            Self::Impactful => "impactful",
            Self::Destructive => "destructive",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub step: u32,
    pub runbook: String,
    pub action: String,
    pub agent_id: String,
    pub target: String,
    pub payload: serde_json::Value,
    /// What the action can affect, in words (`one process`, `one host`).
    pub blast_radius: String,
    pub safety: Safety,
    pub rollback: Option<RollbackStep>,
    pub rationale: String,
}

/// A runbook step the planner left out, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unavailable {
    pub runbook: String,
    pub action: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackStep {
    pub action: String,
    pub payload: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Improved,
    Unchanged,
    Worse,
    Inconclusive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Improved => "improved",
            Self::Unchanged => "unchanged",
            Self::Worse => "worse",
            Self::Inconclusive => "inconclusive",
        }
    }
}

/// What the policy gate decided for one proposal step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub step: u32,
    pub action: String,
    /// `execute`, `dry_run`, `require_approval` (then execute or dry-run after it,
    /// per `mode`) or `block`.
    pub verdict: String,
    /// `execute` or `dry_run`: how it runs once allowed.
    pub mode: String,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    pub step: u32,
    pub action: String,
    pub action_id: String,
    pub idempotency_key: String,
    /// The outbox's final state: `succeeded`, `failed`, `refused`, `dry_run`,
    /// `expired`; `skipped` for a blocked step.
    pub state: String,
    pub message: String,
    pub finished_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainEntry {
    pub kind: ArtifactKind,
    pub id: String,
    pub status: String,
}

/// The envelope every artifact shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub schema_version: u32,
    pub producer: Stage,
    pub consumer: Option<Stage>,
    /// The tenant the artifact belongs to (checked against the reader's).
    pub tenant: String,
    pub run_id: String,
    pub incident_id: String,
    pub correlation_id: String,
    pub created_at_ms: u64,
    pub status: String,
    pub inputs: Vec<String>,
    pub evidence: Vec<EvidenceRef>,
    /// True when produced by replaying a recorded run rather than live input.
    pub replay: bool,
    pub body: Body,
}

impl Artifact {
    pub fn kind(&self) -> ArtifactKind {
        self.body.kind()
    }
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

/// One window's values of a run's metrics, recorded by the observer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidencePoint {
    pub seq: u64,
    /// The window's start (0 in points stored before it was recorded).
    #[serde(default)]
    pub start_ms: u64,
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

/// `GET /v1/runs`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunList {
    pub runs: Vec<RunManifest>,
}

/// `GET /v1/runs/{id}/evidence`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidenceList {
    pub run_id: String,
    pub points: Vec<EvidencePoint>,
}

/// `GET /v1/audit`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditList {
    pub entries: Vec<AuditEntry>,
}

/// `POST /v1/runs/{id}/approve` and `/reject` (a misspelt field is refused, not
/// ignored: a comment must not vanish silently).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    #[serde(default)]
    pub comment: String,
}
