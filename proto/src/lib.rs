//! Tether wire contract v1: the JSON bodies exchanged between edge agents, operators
//! and the `api` function.
//!
//! Invariants:
//! - This crate depends on serde alone: no tokio, no AWS, no HTTP. Agents and
//!   functions share it, so a change here is a protocol change.
//! - Forward compatibility: unknown fields are ignored on read (no
//!   `deny_unknown_fields`), every field added within v1 is optional with a default,
//!   and unknown enum values decode to an explicit `Unknown` variant rather than
//!   failing. A peer that speaks a newer major version is refused with
//!   `unsupported_protocol` and the list of versions this side speaks.
//! - Timestamps are milliseconds since the Unix epoch (UTC), named `*_ms`.
//!
//! `docs/protocol.md` documents every message with an example.

pub mod incident;
pub mod operator;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The protocol major version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest request body the `api` function accepts, in bytes (answered with 413).
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// Most action results one poll may carry; the agent sends the rest next time.
pub const MAX_RESULTS_PER_POLL: usize = 32;

/// Most telemetry windows one poll may carry.
pub const MAX_TELEMETRY_PER_POLL: usize = 64;

/// Most services one poll may report.
pub const MAX_SERVICES_PER_POLL: usize = 512;

fn default_protocol() -> u32 {
    PROTOCOL_VERSION
}

/// `POST /v1/enroll`: an enrollment token becomes an agent identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollRequest {
    #[serde(default = "default_protocol")]
    pub protocol: u32,
    /// The enrollment token an operator created (`tet_enr.<tenant>.<id>.<secret>`).
    pub token: String,
    pub hostname: String,
    #[serde(default)]
    pub agent_version: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub protocol: u32,
    pub agent_id: String,
    /// Bearer credential for `/v1/poll` (a JWT). Keep it secret (mode 0600).
    pub credential: String,
    pub credential_expires_at_ms: u64,
    pub next_poll_after_ms: u64,
}

/// `POST /v1/poll`: one request, one response.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PollRequest {
    #[serde(default = "default_protocol")]
    pub protocol: u32,
    /// Must equal the credential's subject.
    pub agent_id: String,
    /// Per-agent poll sequence number, increasing by one per poll attempt.
    pub seq: u64,
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// The action kinds this agent can run on this host now: its local
    /// allow-list ∩ the kinds it implements ∩ what the host offers (systemd,
    /// journald, a Docker socket, NVML, writable cgroup controllers, eBPF).
    /// Sent on every poll; `None` from agents that predate it (the server then
    /// assumes nothing about them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_kinds: Option<Vec<String>>,
    /// Hash of the host inventory; `inventory` travels only when it changed or when
    /// the server asked for it.
    #[serde(default)]
    pub inventory_hash: String,
    #[serde(default)]
    pub inventory: Option<Inventory>,
    /// Hash of the service list (see [`services_hash`]); `services` travels only when
    /// it changed or when the server asked for it.
    #[serde(default)]
    pub services_hash: String,
    #[serde(default)]
    pub services: Option<Vec<Service>>,
    /// The desired-state revision the agent last applied. Drift after a host restore
    /// shows as a revision behind the tenant's.
    #[serde(default)]
    pub applied_revision: u64,
    #[serde(default)]
    pub heartbeat: Heartbeat,
    #[serde(default)]
    pub results: Vec<ActionResult>,
    #[serde(default)]
    pub telemetry: Vec<TelemetryWindow>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Inventory {
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub kernel: String,
    #[serde(default)]
    pub arch: String,
    #[serde(default)]
    pub cpus: u32,
    #[serde(default)]
    pub memory_bytes: u64,
    #[serde(default)]
    pub gpus: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A light heartbeat: a few numbers, never a body that grows.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    #[serde(default)]
    pub agent_version: String,
    #[serde(default)]
    pub uptime_s: u64,
    #[serde(default)]
    pub spool_depth: u64,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Each collector's state (`ok`, `unavailable`) and why: sent every poll,
    /// stored only when it changes. At most [`MAX_COLLECTORS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collectors: Vec<CollectorState>,
    /// A few headline numbers for the fleet view (`cpu.busy_pct`, `mem.used_pct`,
    /// `fs.max_used_pct`, `gpu.count`, `gpu.max_temp_c`, …): stored only when the
    /// agent record is written anyway. At most [`MAX_VITALS`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vitals: BTreeMap<String, f64>,
}

pub const MAX_COLLECTORS: usize = 32;
pub const MAX_VITALS: usize = 16;

/// One collector's state as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CollectorState {
    pub name: String,
    /// `ok` or `unavailable`.
    pub state: String,
    #[serde(default)]
    pub reason: String,
}

/// A service the agent discovered, keyed by a workload key that survives restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// `k8s:<ns>:<kind>:<name>:<container>`, `docker:<name>`, `systemd:<unit>` or
    /// `host:<exe>`.
    pub workload_key: String,
    pub pid: u32,
    #[serde(default)]
    pub exe: String,
    #[serde(default)]
    pub runtime: String,
    /// LLM providers this process holds connections to (`openai`, `anthropic`, ...).
    #[serde(default)]
    pub llm_providers: Vec<String>,
    /// Observed: eBPF instrumentation is attached to this process.
    #[serde(default)]
    pub instrumented: bool,
    /// Observed: the Python SDK is enabled for this service.
    #[serde(default)]
    pub python_sdk: bool,
    /// Labels of the service's container, from the Docker socket when present
    /// (at most [`MAX_SERVICE_LABELS`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Observed, while instrumented: `redacted` when the agent exports the
    /// workload's prompt and completion text (redacted); empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub llm_content: String,
}

/// Container labels a service carries at most.
pub const MAX_SERVICE_LABELS: usize = 32;

/// Hash of a service list, order-independent: the agent and the server compute it
/// the same way, so an unchanged list is recognised without its body.
pub fn services_hash(services: &[Service]) -> String {
    let mut lines: Vec<String> = services
        .iter()
        .map(|s| {
            let mut providers = s.llm_providers.clone();
            providers.sort();
            let mut line = format!(
                "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
                s.workload_key,
                s.pid,
                s.exe,
                s.runtime,
                providers.join(","),
                s.instrumented,
                s.python_sdk
            );
            // Labels only when present, so the hash of a label-less list is
            // what it always was.
            for (k, v) in &s.labels {
                line.push_str(&format!("\u{1f}{k}={v}"));
            }
            if !s.llm_content.is_empty() {
                line.push_str(&format!("\u{1f}content={}", s.llm_content));
            }
            line
        })
        .collect();
    lines.sort();
    fnv1a_hex(lines.join("\u{1e}").as_bytes())
}

/// 64-bit FNV-1a, hex. A change detector, not a security boundary: the body is
/// authenticated by the credential, and a collision only delays one update until the
/// next change or the server's periodic full-resend request.
fn fnv1a_hex(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// What the agent reports about an action it was handed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionResult {
    pub action_id: String,
    pub idempotency_key: String,
    pub phase: ResultPhase,
    /// Set with phase `final`.
    #[serde(default)]
    pub status: Option<ResultStatus>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub stdout_tail: String,
    #[serde(default)]
    pub stderr_tail: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub started_at_ms: Option<u64>,
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
    #[serde(default)]
    pub evidence_refs: Vec<String>,
}

/// `received` acknowledges delivery; `started` and `final` follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultPhase {
    Received,
    Started,
    Final,
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultStatus {
    Succeeded,
    Failed,
    /// Refused by the agent's local allow-list or unsupported on this host.
    Refused,
    /// A dry run: nothing was changed; `message` says what would have been.
    DryRun,
    #[serde(other)]
    Unknown,
}

/// A compact telemetry summary over a window (say 30 s), never raw samples.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TelemetryWindow {
    /// The agent's spool sequence number for this record; the server acknowledges by
    /// it and downstream consumers drop duplicates by (agent, seq).
    pub seq: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    /// Named gauges and counters over the window (`cpu.busy_pct`, `mem.used_bytes`, ...).
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Notable events in the window (`oom_kill`, `gpu_xid`, ...), short strings.
    #[serde(default)]
    pub events: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PollResponse {
    pub protocol: u32,
    /// Actions not yet acknowledged by the agent. Repeated on every poll until the
    /// agent reports at least `received` for them.
    #[serde(default)]
    pub actions: Vec<Action>,
    pub next_poll_after_ms: u64,
    #[serde(default)]
    pub ack: Ack,
    #[serde(default)]
    pub send_full_inventory: bool,
    #[serde(default)]
    pub send_full_services: bool,
    /// The tenant's desired-state revision the server reconciled against.
    #[serde(default)]
    pub desired_revision: u64,
    /// A fresh credential when the current one nears expiry; the agent replaces its
    /// stored one.
    #[serde(default)]
    pub renewed_credential: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Ack {
    /// The poll's `seq`, echoed.
    pub seq: u64,
    /// Results the server has recorded (durably, or already had).
    #[serde(default)]
    pub results: Vec<ResultAck>,
    /// Telemetry windows (by their `seq`) handed to the observations queue.
    #[serde(default)]
    pub telemetry: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultAck {
    pub action_id: String,
    pub phase: ResultPhase,
}

/// An action for the agent to run, if its local allow-list permits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    pub id: String,
    pub kind: ActionKind,
    /// The workload key the action targets.
    pub target: String,
    #[serde(default)]
    pub payload: serde_json::Value,
    /// The agent records this key before running, so a redelivery never runs twice.
    pub idempotency_key: String,
    #[serde(default)]
    pub not_before_ms: u64,
    pub expires_at_ms: u64,
    pub mode: ActionMode,
    /// The agent capability the action needs (`ebpf`, `systemd`, ...).
    #[serde(default)]
    pub requires_capability: String,
}

/// Action kinds are open-ended strings on the wire, so an older agent sees a newer
/// kind as a value it can refuse, not as a decode failure.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ActionKind(pub String);

impl ActionKind {
    pub const INSTRUMENT: &'static str = "instrument";
    pub const UNINSTRUMENT: &'static str = "uninstrument";
    pub const ENABLE_PYTHON_SDK: &'static str = "enable_python_sdk";
    pub const DISABLE_PYTHON_SDK: &'static str = "disable_python_sdk";
    pub const COLLECT_EVIDENCE: &'static str = "collect_evidence";
    pub const SIGNAL_PROCESS: &'static str = "signal_process";
    pub const STOP_SERVICE: &'static str = "stop_service";
    pub const START_SERVICE: &'static str = "start_service";
    pub const RESTART_SERVICE: &'static str = "restart_service";
    pub const ROTATE_LOGS: &'static str = "rotate_logs";
    pub const VACUUM_JOURNAL: &'static str = "vacuum_journal";
    pub const LIMIT_WORKLOAD: &'static str = "limit_workload";
    pub const RESTORE_WORKLOAD_LIMIT: &'static str = "restore_workload_limit";
    pub const SET_GPU_POWER_LIMIT: &'static str = "set_gpu_power_limit";
    pub const RESTORE_GPU_POWER_LIMIT: &'static str = "restore_gpu_power_limit";
    pub const RESET_GPU: &'static str = "reset_gpu";

    pub fn new(kind: &str) -> Self {
        Self(kind.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ActionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionMode {
    DryRun,
    Execute,
    #[serde(other)]
    Unknown,
}

/// The one error shape every route answers with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, machine-readable code (`malformed_json`, `body_too_large`, ...).
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(key: &str, pid: u32) -> Service {
        Service {
            workload_key: key.into(),
            pid,
            exe: "/usr/bin/python3".into(),
            runtime: "python".into(),
            llm_providers: vec!["openai".into(), "anthropic".into()],
            instrumented: false,
            python_sdk: false,
            labels: Default::default(),
            llm_content: Default::default(),
        }
    }

    #[test]
    fn services_hash_ignores_order_but_sees_every_field() {
        let a = vec![svc("host:/a", 1), svc("host:/b", 2)];
        let b = vec![svc("host:/b", 2), svc("host:/a", 1)];
        assert_eq!(services_hash(&a), services_hash(&b));
        let mut c = a.clone();
        c[0].pid = 7;
        assert_ne!(services_hash(&a), services_hash(&c));
        let mut d = a.clone();
        d[1].instrumented = true;
        assert_ne!(services_hash(&a), services_hash(&d));
        let mut e = a.clone();
        e[0].llm_providers.reverse();
        assert_eq!(services_hash(&a), services_hash(&e));
        assert_eq!(services_hash(&[]).len(), 16);
    }

    #[test]
    fn unknown_fields_and_enum_values_are_tolerated() {
        let body = r#"{"agent_id":"agt_1","seq":3,"future_field":{"x":1},
            "results":[{"action_id":"a","idempotency_key":"k","phase":"paused","status":"weird"}]}"#;
        let req: PollRequest = serde_json::from_str(body).expect("decodes");
        assert_eq!(req.protocol, PROTOCOL_VERSION);
        assert_eq!(req.seq, 3);
        assert_eq!(req.results[0].phase, ResultPhase::Unknown);
        assert_eq!(req.results[0].status, Some(ResultStatus::Unknown));
        let mode: ActionMode = serde_json::from_str("\"rehearse\"").expect("decodes");
        assert_eq!(mode, ActionMode::Unknown);
    }

    #[test]
    fn action_kind_is_a_plain_string_on_the_wire() {
        let kind = ActionKind::new(ActionKind::INSTRUMENT);
        assert_eq!(
            serde_json::to_string(&kind).expect("encodes"),
            "\"instrument\""
        );
        let later: ActionKind = serde_json::from_str("\"drain_gpu\"").expect("decodes");
        assert_eq!(later.as_str(), "drain_gpu");
    }
}
