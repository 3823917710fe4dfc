//! Runs: the manifest that lists a run's chain and the messages between roles.
//! The ports the roles use are in [`super::port`].
//!
//! Invariants:
//! - A run id is derived from (tenant, agent, signal family, window seq), so the
//!   observer opening "the same" run twice opens one run.
//! - The manifest is changed only by read-modify-write conditional on its
//!   `version`; a chain entry is appended once (by artifact id), so redelivery
//!   never lists an artifact twice.
//! - Outbox actions of a run have ids and idempotency keys derived from run and
//!   step (`inc:<run>:<step>`): creating one twice creates it once.

use super::artifact::Verdict;
use crate::tenant::TenantId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

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

pub use tether_proto::incident::{
    ApprovalRecord, AuditEntry, ChainLink, EvidencePoint, Failure, RunAction, RunManifest,
    RunStatus,
};

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

/// The analyzer's, planner's, gate's and memory's input: the previous role's
/// artifact (`{"type":"artifact", ...}` on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactInput {
    pub tenant: TenantId,
    pub run_id: String,
    pub artifact_id: String,
}

/// The executor's inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutorInput {
    Approved { tenant: TenantId, run_id: String },
    ApprovalDeadline { tenant: TenantId, run_id: String },
    ActionsChanged { tenant: TenantId, run_id: String },
}

/// The verifier's input (`{"type":"verify", ...}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyInput {
    pub tenant: TenantId,
    pub run_id: String,
    pub attempt: u32,
}

impl TryFrom<StageMessage> for ArtifactInput {
    type Error = StageMessage;
    fn try_from(m: StageMessage) -> Result<Self, StageMessage> {
        match m {
            StageMessage::Artifact {
                tenant,
                run_id,
                artifact_id,
            } => Ok(Self {
                tenant,
                run_id,
                artifact_id,
            }),
            other => Err(other),
        }
    }
}

impl TryFrom<StageMessage> for ExecutorInput {
    type Error = StageMessage;
    fn try_from(m: StageMessage) -> Result<Self, StageMessage> {
        match m {
            StageMessage::Approved { tenant, run_id } => Ok(Self::Approved { tenant, run_id }),
            StageMessage::ApprovalDeadline { tenant, run_id } => {
                Ok(Self::ApprovalDeadline { tenant, run_id })
            }
            StageMessage::ActionsChanged { tenant, run_id } => {
                Ok(Self::ActionsChanged { tenant, run_id })
            }
            other => Err(other),
        }
    }
}

impl TryFrom<StageMessage> for VerifyInput {
    type Error = StageMessage;
    fn try_from(m: StageMessage) -> Result<Self, StageMessage> {
        match m {
            StageMessage::Verify {
                tenant,
                run_id,
                attempt,
            } => Ok(Self {
                tenant,
                run_id,
                attempt,
            }),
            other => Err(other),
        }
    }
}

impl From<ArtifactInput> for StageMessage {
    fn from(m: ArtifactInput) -> Self {
        Self::Artifact {
            tenant: m.tenant,
            run_id: m.run_id,
            artifact_id: m.artifact_id,
        }
    }
}

impl From<ExecutorInput> for StageMessage {
    fn from(m: ExecutorInput) -> Self {
        match m {
            ExecutorInput::Approved { tenant, run_id } => Self::Approved { tenant, run_id },
            ExecutorInput::ApprovalDeadline { tenant, run_id } => {
                Self::ApprovalDeadline { tenant, run_id }
            }
            ExecutorInput::ActionsChanged { tenant, run_id } => {
                Self::ActionsChanged { tenant, run_id }
            }
        }
    }
}

impl From<VerifyInput> for StageMessage {
    fn from(m: VerifyInput) -> Self {
        Self::Verify {
            tenant: m.tenant,
            run_id: m.run_id,
            attempt: m.attempt,
        }
    }
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

/// What a past run with the same fingerprint tried, and how it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriorRecord {
    pub run_id: String,
    pub at_ms: u64,
    pub actions: Vec<String>,
    pub verdict: Verdict,
}
