//! Operator-facing bodies: desired state, fleet listings, credentials.
//!
//! The same forward-compatibility rules as the agent contract hold: unknown fields
//! are ignored, new fields are optional.

use serde::{Deserialize, Serialize};

/// Desired instrumentation of one workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Instrumentation {
    Instrumented,
    None,
}

/// Desired Python SDK state of one workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PythonSdk {
    Enabled,
    Disabled,
}

/// Whether the prompt and completion text of an instrumented workload's LLM
/// calls may leave the host: never (`none`, the default), or with secrets and
/// personal data redacted by the agent first (`redacted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LlmContent {
    #[default]
    None,
    Redacted,
}

impl LlmContent {
    pub fn as_str(self) -> &'static str {
        match self {
            LlmContent::None => "none",
            LlmContent::Redacted => "redacted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredWorkload {
    pub workload_key: String,
    pub instrumentation: Instrumentation,
    #[serde(default = "default_sdk")]
    pub python_sdk: PythonSdk,
    /// The tenant's say on LLM content for this workload (only meaningful when
    /// instrumented).
    #[serde(default)]
    pub llm_content: LlmContent,
}

fn default_sdk() -> PythonSdk {
    PythonSdk::Disabled
}

/// `POST /v1/apply`: declare the desired state of the named workloads. Idempotent:
/// applying the same document twice changes nothing the second time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyRequest {
    pub workloads: Vec<DesiredWorkload>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyResponse {
    /// The tenant's desired-state revision after the apply.
    pub revision: u64,
    /// Workload keys whose desired state changed.
    pub changed: Vec<String>,
    pub unchanged: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredList {
    pub revision: u64,
    pub workloads: Vec<DesiredWorkload>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    Active,
    Stale,
    Offline,
    Revoked,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSummary {
    pub agent_id: String,
    pub hostname: String,
    pub agent_version: String,
    pub liveness: Liveness,
    pub last_seen_ms: u64,
    pub poll_interval_ms: u64,
    pub enrolled_at_ms: u64,
    /// The desired revision the control plane judges this agent to have fully
    /// applied: every action reconciliation needed for it succeeded (the agent's
    /// own claim is not taken).
    pub applied_revision: u64,
    /// The tenant's desired revision now; `applied_revision` lags when lower.
    #[serde(default)]
    pub desired_revision: u64,
    /// Why `applied_revision` lags `desired_revision`: one entry per unmet need
    /// (pending, failed, refused, held), empty when it does not lag.
    #[serde(default)]
    pub drift: Vec<Drift>,
    pub spool_depth: u64,
    pub last_error: Option<String>,
    pub capabilities: Vec<String>,
    /// The action kinds the agent reports it can run on its host; absent for an
    /// agent that does not report them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_kinds: Option<Vec<String>>,
    pub revoked: bool,
    #[serde(default)]
    pub collectors: Vec<crate::CollectorState>,
    #[serde(default)]
    pub vitals: std::collections::BTreeMap<String, f64>,
}

/// One reason an agent's applied revision lags: a desired-state need of one
/// workload that has not succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    pub workload_key: String,
    /// The action kind the need calls for (`instrument`, …); empty for a reason
    /// that is not about one action.
    #[serde(default)]
    pub kind: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentList {
    pub agents: Vec<AgentSummary>,
}

/// A service as observed by one agent, beside its desired state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub agent_id: String,
    pub workload_key: String,
    pub pid: u32,
    pub exe: String,
    pub runtime: String,
    pub llm_providers: Vec<String>,
    pub observed_instrumented: bool,
    pub observed_python_sdk: bool,
    /// The container's labels, as the agent read them (Docker).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    pub desired: Option<DesiredWorkload>,
    /// True when observed and desired agree (or nothing is desired).
    pub in_sync: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceList {
    pub services: Vec<ServiceStatus>,
}

/// An action as the operator sees it: where it stands, and its result when final.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionStatus {
    pub action_id: String,
    pub agent_id: String,
    pub kind: String,
    pub target: String,
    /// `queued`, `delivered`, `started`, `succeeded`, `failed`, `refused`, `dry_run`,
    /// `expired`.
    pub state: String,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub expires_at_ms: u64,
    pub attempt: u32,
    pub result: Option<crate::ActionResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionList {
    pub actions: Vec<ActionStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateEnrollmentToken {
    /// Lifetime in seconds (default 24 h, at most 30 days).
    #[serde(default)]
    pub ttl_s: Option<u64>,
    /// How many agents may enroll with it (default 1, at most 10,000).
    #[serde(default)]
    pub max_uses: Option<u32>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollmentTokenInfo {
    pub id: String,
    pub description: String,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub max_uses: u32,
    pub uses: u32,
    pub revoked: bool,
    /// The token itself, shown once at creation and never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollmentTokenList {
    pub tokens: Vec<EnrollmentTokenInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateApiKey {
    pub role: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyInfo {
    pub id: String,
    pub role: String,
    pub description: String,
    pub created_at_ms: u64,
    pub revoked: bool,
    /// The key itself, shown once at creation and never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyList {
    pub keys: Vec<ApiKeyInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub protocol: u32,
}

/// `GET /v1/status` (admin): the control plane's own health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// `ok`, or `degraded` when a dependency failed its check or a dead-letter
    /// queue holds messages.
    pub status: String,
    pub checked_at_ms: u64,
    pub dependencies: Vec<DependencyStatus>,
    pub queues: Vec<QueueStatus>,
}

/// One AWS dependency, checked with one cheap call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DependencyStatus {
    /// `dynamodb`, `secretsmanager`, `sqs`.
    pub name: String,
    pub ok: bool,
    pub latency_ms: u64,
    /// Why the check failed; empty when it passed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// One work queue and its dead-letter queue (SQS's approximate counts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueStatus {
    /// `observations`, `analyzer`, ... as `infra/` names them.
    pub name: String,
    /// Waiting to be received.
    pub visible: u64,
    /// Received, not yet deleted (being handled, or failed and waiting for the
    /// visibility timeout).
    pub in_flight: u64,
    /// Sent with a delay not yet over (the chain's timed re-checks).
    pub delayed: u64,
    /// Messages in the dead-letter queue (each a message that failed every try).
    pub dlq_visible: u64,
    /// Age in seconds of the queue's oldest message: CloudWatch's latest
    /// `ApproximateAgeOfOldestMessage` within the last 10 minutes. `null` when
    /// CloudWatch holds no datapoint (a queue idle for hours, an emulator that
    /// publishes no SQS metrics) or did not answer: unknown, never zero.
    #[serde(default)]
    pub oldest_age_s: Option<u64>,
}
