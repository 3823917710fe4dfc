//! The artifact contract: what each role of the incident chain leaves behind.
//!
//! Invariants:
//! - An artifact is content-addressed: its id is `art_` + the sha256 of its canonical
//!   JSON (serde_json with sorted maps, as produced by [`Artifact::to_bytes`]). Its
//!   storage key is built from the tenant and that digest, and the digest is
//!   checked on every read ([`Artifact::from_bytes`]).
//! - An artifact is a pure function of its inputs: timestamps come from the inputs
//!   (the window, the approval, the agent's result), never from the clock of the
//!   role that computes it. A redelivered message therefore produces the same
//!   bytes, the same id and the same key: writing it again is a no-op.
//! - Raw telemetry never goes in: signals are named values, evidence is a reference
//!   plus at most [`MAX_EXCERPTS`] short excerpts of at most [`MAX_EXCERPT_LEN`] bytes.
//! - `schema_version` is bumped on any incompatible change; readers reject a
//!   version they do not know rather than guess.

use crate::tenant::TenantId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
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
    pub tenant: TenantId,
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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact bytes do not match their address (want {want}, got {got})")]
    Digest { want: String, got: String },
    #[error("artifact does not parse: {0}")]
    Malformed(String),
    #[error("artifact schema version {0} is not supported (this build reads {SCHEMA_VERSION})")]
    Version(u32),
    #[error("artifact id {0:?} is not of the form art_<64 hex>")]
    BadId(String),
}

impl Artifact {
    pub fn kind(&self) -> ArtifactKind {
        self.body.kind()
    }

    /// Canonical bytes: struct fields in declaration order, maps sorted.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain data with sorted maps cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The content address of `bytes`.
    pub fn id_of(bytes: &[u8]) -> String {
        format!("art_{}", hex::encode(Sha256::digest(bytes)))
    }

    pub fn id(&self) -> String {
        Self::id_of(&self.to_bytes())
    }

    /// The digest part of an id, checked.
    pub fn digest_of(id: &str) -> Result<&str, ArtifactError> {
        id.strip_prefix("art_")
            .filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| ArtifactError::BadId(id.to_owned()))
    }

    /// Parses bytes read from storage under `id`, checking the digest first.
    pub fn from_bytes(id: &str, bytes: &[u8]) -> Result<Self, ArtifactError> {
        Self::digest_of(id)?;
        let got = Self::id_of(bytes);
        if got != id {
            return Err(ArtifactError::Digest {
                want: id.to_owned(),
                got,
            });
        }
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| ArtifactError::Malformed(e.to_string()))?;
        let version = v["schema_version"].as_u64().unwrap_or(0) as u32;
        if version != SCHEMA_VERSION {
            return Err(ArtifactError::Version(version));
        }
        serde_json::from_value(v).map_err(|e| ArtifactError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_name_the_functions_and_queues_infra_declares() {
        let names: Vec<(&str, &str)> = Stage::ALL
            .into_iter()
            .map(|s| (s.function(), s.queue()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("observer", "observations"),
                ("analyzer", "analyzer"),
                ("planner", "planner"),
                ("policy-gate", "policy-gate"),
                ("executor", "executor"),
                ("verifier", "verifier"),
                ("memory", "memory"),
            ]
        );
    }

    fn sample() -> Artifact {
        Artifact {
            schema_version: SCHEMA_VERSION,
            producer: Stage::Observer,
            consumer: Some(Stage::Analyzer),
            tenant: TenantId::parse("acme").expect("tenant"),
            run_id: "run_1".into(),
            incident_id: "inc_1".into(),
            correlation_id: "cor_1".into(),
            created_at_ms: 1,
            status: "open".into(),
            inputs: vec![],
            evidence: vec![EvidenceRef::new("window:a:1", ["x".repeat(500)])],
            replay: false,
            body: Body::AnomalyFinding {
                agent_id: "a".into(),
                anomalies: vec![],
            },
        }
    }

    #[test]
    fn the_address_is_the_content_and_is_checked_on_read() {
        let a = sample();
        let bytes = a.to_bytes();
        let id = a.id();
        assert_eq!(id, sample().id(), "same content, same id");
        assert_eq!(Artifact::from_bytes(&id, &bytes), Ok(a.clone()));
        let mut tampered = bytes.clone();
        let last = tampered.len() - 2;
        tampered[last] = b' ';
        assert!(matches!(
            Artifact::from_bytes(&id, &tampered),
            Err(ArtifactError::Digest { .. })
        ));
        assert!(matches!(
            Artifact::from_bytes("art_../x", &bytes),
            Err(ArtifactError::BadId(_))
        ));
        let mut b = a;
        b.created_at_ms = 2;
        assert_ne!(b.id(), id, "any change moves the address");
    }

    #[test]
    fn excerpts_are_bounded_and_unknown_versions_rejected() {
        let a = sample();
        assert_eq!(a.evidence[0].excerpts[0].len(), MAX_EXCERPT_LEN);
        let many = EvidenceRef::new("x", (0..10).map(|i| i.to_string()));
        assert_eq!(many.excerpts.len(), MAX_EXCERPTS);
        let mut v: serde_json::Value = serde_json::from_slice(&a.to_bytes()).expect("json");
        v["schema_version"] = 2.into();
        let bytes = serde_json::to_vec(&v).expect("json");
        let id = Artifact::id_of(&bytes);
        assert_eq!(
            Artifact::from_bytes(&id, &bytes),
            Err(ArtifactError::Version(2))
        );
    }
}
