//! CPU per role handler for a batch of 10 messages, excluding AWS calls: the
//! handlers of `tether_core::incident::roles::Chain` run over in-memory ports (the
//! only fakes here: they stand in for DynamoDB, S3 and SQS so that what is
//! measured is the role's own work). Also: the observer's memory stays bounded
//! by its window size whatever the fleet size.
//!
//! Run: `cargo run --release -p tether-e2e --example role_cpu -- [batches]`
//! (default 200 batches of 10 per role). CPU comes from /proc/thread-self/schedstat
//! (nanoseconds; the runtime is single-threaded).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use tether_core::incident::artifact::{Artifact, Stage};
use tether_core::incident::policy::TenantPolicy;
use tether_core::incident::roles::{Chain, ChainConfig, ObservationMessage};
use tether_core::incident::run::{
    ArtifactStore, AuditEntry, EvidencePoint, IncidentStore, Markers, PriorRecord, RunManifest,
    RunStatus, StageMessage, StageQueue,
};
use tether_core::model::{DoneItem, FinalState, OutboxItem};
use tether_core::port::{Clock, StoreError};
use tether_core::tenant::{AgentId, TenantId};
use tether_proto::TelemetryWindow;

#[derive(Default)]
struct Mem {
    runs: Mutex<HashMap<String, RunManifest>>,
    markers: Mutex<HashMap<String, Markers>>,
    evidence: Mutex<HashMap<String, Vec<EvidencePoint>>>,
    outbox: Mutex<HashMap<String, OutboxItem>>,
    artifacts: Mutex<HashMap<String, Vec<u8>>>,
    sent: Mutex<Vec<(Stage, StageMessage)>>,
}

type R<T> = Result<T, StoreError>;

impl IncidentStore for &'static Mem {
    async fn load_run(&self, _: &TenantId, id: &str) -> R<Option<RunManifest>> {
        Ok(self.runs.lock().expect("lock").get(id).cloned())
    }
    async fn create_run(&self, _: &TenantId, m: &RunManifest) -> R<bool> {
        let mut runs = self.runs.lock().expect("lock");
        if runs.contains_key(&m.run_id) {
            return Ok(false);
        }
        let mut m = m.clone();
        m.version = 1;
        runs.insert(m.run_id.clone(), m);
        Ok(true)
    }
    async fn update_run(&self, _: &TenantId, m: &RunManifest) -> R<()> {
        let mut m = m.clone();
        m.version += 1;
        self.runs.lock().expect("lock").insert(m.run_id.clone(), m);
        Ok(())
    }
    async fn list_runs(&self, _: &TenantId) -> R<Vec<RunManifest>> {
        Ok(self.runs.lock().expect("lock").values().cloned().collect())
    }
    async fn load_markers(&self, _: &TenantId, a: &AgentId) -> R<Markers> {
        Ok(self
            .markers
            .lock()
            .expect("lock")
            .get(a.as_str())
            .cloned()
            .unwrap_or_default())
    }
    async fn save_markers(&self, _: &TenantId, a: &AgentId, m: &Markers) -> R<()> {
        let mut m = m.clone();
        m.version += 1;
        self.markers.lock().expect("lock").insert(a.to_string(), m);
        Ok(())
    }
    async fn put_evidence(&self, _: &TenantId, run: &str, p: &EvidencePoint) -> R<()> {
        self.evidence
            .lock()
            .expect("lock")
            .entry(run.into())
            .or_default()
            .push(p.clone());
        Ok(())
    }
    async fn evidence(&self, _: &TenantId, run: &str) -> R<Vec<EvidencePoint>> {
        Ok(self
            .evidence
            .lock()
            .expect("lock")
            .get(run)
            .cloned()
            .unwrap_or_default())
    }
    async fn load_policy(&self, _: &TenantId) -> R<TenantPolicy> {
        Ok(TenantPolicy::default())
    }
    async fn put_policy(&self, _: &TenantId, _: &TenantPolicy) -> R<()> {
        Ok(())
    }
    async fn executions_this_hour(&self, _: &TenantId, _: u64, _: u32) -> R<u32> {
        Ok(0)
    }
    async fn prior_attempts(&self, _: &TenantId, _: &str) -> R<Vec<PriorRecord>> {
        Ok(vec![])
    }
    async fn remember(&self, _: &TenantId, _: &str, _: &PriorRecord) -> R<()> {
        Ok(())
    }
    async fn audit(&self, _: &TenantId, _: &AuditEntry) -> R<()> {
        Ok(())
    }
    async fn list_audit(&self, _: &TenantId) -> R<Vec<AuditEntry>> {
        Ok(vec![])
    }
    async fn enqueue_action(&self, _: &TenantId, _: &AgentId, item: &OutboxItem) -> R<bool> {
        Ok(self
            .outbox
            .lock()
            .expect("lock")
            .insert(item.action.id.clone(), item.clone())
            .is_none())
    }
    async fn finished_action(&self, _: &TenantId, _: &AgentId, id: &str) -> R<Option<DoneItem>> {
        Ok(self.outbox.lock().expect("lock").get(id).map(|i| DoneItem {
            item: i.clone(),
            state: FinalState::Succeeded,
            result: None,
            finished_at_ms: i.created_at_ms + 1000,
        }))
    }
}

impl ArtifactStore for &'static Mem {
    async fn put(&self, _: &TenantId, a: &Artifact) -> R<String> {
        let bytes = a.to_bytes();
        let id = Artifact::id_of(&bytes);
        self.artifacts
            .lock()
            .expect("lock")
            .insert(id.clone(), bytes);
        Ok(id)
    }
    async fn evidence_upload(
        &self,
        _: &TenantId,
        run: &str,
        action: &str,
        _: u64,
    ) -> R<(String, String)> {
        let key = format!("T/bench/evidence/{run}/{action}.json");
        Ok((key.clone(), format!("http://127.0.0.1:9/{key}")))
    }
    async fn get(&self, _: &TenantId, id: &str) -> R<Option<Artifact>> {
        let bytes = self.artifacts.lock().expect("lock").get(id).cloned();
        bytes
            .map(|b| Artifact::from_bytes(id, &b).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }
}

impl StageQueue for &'static Mem {
    async fn send(&self, to: Stage, msg: &StageMessage, _: u32) -> R<()> {
        self.sent.lock().expect("lock").push((to, msg.clone()));
        Ok(())
    }
}

struct Fixed;
impl Clock for Fixed {
    fn now_ms(&self) -> u64 {
        1_800_000_000_000
    }
}

/// CPU time of this thread in nanoseconds (the runtime is single-threaded).
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn window(seq: u64, metrics: &[(&str, f64)]) -> TelemetryWindow {
    TelemetryWindow {
        seq,
        start_ms: 1_799_999_970_000 + seq,
        end_ms: 1_800_000_000_000 + seq,
        metrics: metrics.iter().map(|(k, v)| ((*k).into(), *v)).collect(),
        events: vec![],
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let batches: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let t = TenantId::parse("bench").expect("tenant");
    let mut per_role: BTreeMap<&str, f64> = BTreeMap::new();
    let mut total_runs = 0;
    let started = cpu_ns();
    let mut ticks: BTreeMap<&str, u64> = BTreeMap::new();
    for b in 0..batches {
        let mem: &'static Mem = Box::leak(Box::new(Mem::default()));
        let chain = Chain::new(
            mem,
            mem,
            mem,
            Fixed,
            ChainConfig {
                verify_delay_s: 0,
                ..ChainConfig::default()
            },
        );
        // Observer: 10 observation messages (one per host), each host crossing a threshold.
        let agents: Vec<AgentId> = (0..10).map(|_| AgentId::generate()).collect();
        let msgs: Vec<String> = agents
            .iter()
            .map(|a| {
                serde_json::to_string(&ObservationMessage {
                    tenant: t.to_string(),
                    agent_id: a.to_string(),
                    windows: vec![
                        window(
                            b * 2,
                            &[
                                ("fs.root.used_pct", 50.0),
                                ("cpu.busy_pct", 20.0),
                                ("mem.used_pct", 40.0),
                            ],
                        ),
                        window(
                            b * 2 + 1,
                            &[
                                ("fs.root.used_pct", 97.0),
                                ("cpu.busy_pct", 20.0),
                                ("mem.used_pct", 40.0),
                            ],
                        ),
                    ],
                })
                .expect("json")
            })
            .collect();
        let c0 = cpu_ns();
        for m in &msgs {
            chain.handle(Stage::Observer, m).await.expect("observer");
        }
        *ticks.entry("observer").or_default() += cpu_ns() - c0;
        // Each later role consumes the 10 messages the previous one sent.
        for stage in [Stage::Analyzer, Stage::Planner, Stage::PolicyGate] {
            let inbox: Vec<String> = std::mem::take(&mut *mem.sent.lock().expect("lock"))
                .into_iter()
                .filter(|(to, _)| *to == stage)
                .map(|(_, m)| serde_json::to_string(&m).expect("json"))
                .collect();
            assert_eq!(inbox.len(), 10, "{stage:?}");
            let c0 = cpu_ns();
            for m in &inbox {
                chain.handle(stage, m).await.expect("role");
            }
            *ticks.entry(stage.as_str()).or_default() += cpu_ns() - c0;
        }
        // Approve every plan as an operator would, then executor, verifier, memory.
        mem.sent.lock().expect("lock").clear();
        for m in mem.runs.lock().expect("lock").values_mut() {
            m.status = RunStatus::Executing;
            m.approval = Some(tether_core::incident::run::ApprovalRecord {
                decision: "approved".into(),
                by: "bench".into(),
                at_ms: 1_800_000_001_000,
                comment: String::new(),
            });
        }
        let approved: Vec<String> = mem
            .runs
            .lock()
            .expect("lock")
            .keys()
            .map(|r| {
                serde_json::to_string(&StageMessage::Approved {
                    tenant: t.clone(),
                    run_id: r.clone(),
                })
                .expect("json")
            })
            .collect();
        let changed: Vec<String> = mem
            .runs
            .lock()
            .expect("lock")
            .keys()
            .map(|r| {
                serde_json::to_string(&StageMessage::ActionsChanged {
                    tenant: t.clone(),
                    run_id: r.clone(),
                })
                .expect("json")
            })
            .collect();
        let c0 = cpu_ns();
        for m in approved.iter().chain(&changed) {
            chain.handle(Stage::Executor, m).await.expect("executor");
        }
        *ticks.entry("executor").or_default() += cpu_ns() - c0;
        // Fresh evidence after the actions, as the observer would record it.
        for run in mem.runs.lock().expect("lock").keys() {
            mem.evidence
                .lock()
                .expect("lock")
                .entry(run.clone())
                .or_default()
                .push(EvidencePoint {
                    seq: 1_000_000 + b,
                    end_ms: 1_800_000_100_000,
                    metrics: BTreeMap::from([("fs.root.used_pct".to_owned(), 60.0)]),
                });
        }
        for stage in [Stage::Verifier, Stage::Memory] {
            let inbox: Vec<String> = std::mem::take(&mut *mem.sent.lock().expect("lock"))
                .into_iter()
                .filter(|(to, _)| *to == stage)
                .map(|(_, m)| serde_json::to_string(&m).expect("json"))
                .collect();
            assert_eq!(inbox.len(), 10, "{stage:?}");
            let c0 = cpu_ns();
            for m in &inbox {
                chain.handle(stage, m).await.expect("role");
            }
            *ticks.entry(stage.as_str()).or_default() += cpu_ns() - c0;
        }
        total_runs += mem
            .runs
            .lock()
            .expect("lock")
            .values()
            .filter(|m| m.status == RunStatus::Closed)
            .count();
    }
    for (role, t) in &ticks {
        per_role.insert(role, *t as f64 / 1e6 / batches as f64);
    }
    println!("| role | CPU ms per batch of 10 (mean over {batches} batches) |");
    println!("|---|---|");
    for (role, ms) in &per_role {
        println!("| {role} | {ms:.2} |");
    }
    println!();
    println!(
        "runs closed: {total_runs} of {} (every batch goes through the whole chain)",
        batches * 10
    );
    println!("total CPU: {:.2} s", (cpu_ns() - started) as f64 / 1e9);

    // Memory: the observer keeps no host in memory (its state is stored per
    // host), so RSS stays flat however many hosts report.
    let mem: &'static Mem = Box::leak(Box::new(Mem::default()));
    let cfg = ChainConfig {
        history: 10,
        ..ChainConfig::default()
    };
    let chain = Chain::new(mem, mem, mem, Fixed, cfg);
    let rss = || {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    };
    for round in [10_000u64, 100_000] {
        for i in 0..round {
            let msg = ObservationMessage {
                tenant: t.to_string(),
                agent_id: AgentId::generate().to_string(),
                windows: vec![window(
                    i,
                    &[
                        ("cpu.busy_pct", 10.0),
                        ("mem.used_pct", 30.0),
                        ("fs.root.used_pct", 40.0),
                    ],
                )],
            };
            chain.observe(&msg).await.expect("observe");
        }
        println!("after {round} distinct hosts: RSS {}", rss());
    }
}
