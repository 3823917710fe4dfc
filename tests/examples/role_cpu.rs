//! CPU per role handler for a batch of 10 messages, excluding AWS calls: the
//! handlers of `tether_core::incident::roles::Chain` run over in-memory ports (the
//! only fakes here: they stand in for DynamoDB, S3 and SQS so that what is
//! measured is the role's own work: `tether_core::incident::fake`). Also: the
//! host state the observer stores stays bounded by its window history.
//!
//! Run: `cargo run --release -p tether-e2e --example role_cpu -- [batches]`
//! (default 200 batches of 10 per role). CPU comes from /proc/thread-self/schedstat
//! (nanoseconds; the runtime is single-threaded).

use std::collections::BTreeMap;
use tether_core::incident::artifact::Stage;
use tether_core::incident::fake::{ManualClock, MemArtifacts, MemQueue, MemStore};
use tether_core::incident::port::{EvidenceLog, StageQueue};
use tether_core::incident::roles::{Chain, ChainConfig, ObservationMessage};
use tether_core::incident::run::{EvidencePoint, RunStatus, StageMessage};
use tether_core::model::FinalState;
use tether_core::tenant::{AgentId, Principal, Role, TenantId};
use tether_proto::TelemetryWindow;

type Fake = Chain<MemStore, MemArtifacts, MemQueue, ManualClock>;

fn chain(cfg: ChainConfig) -> (Fake, MemStore, MemQueue) {
    let (store, queue) = (MemStore::default(), MemQueue::default());
    let chain = Chain::new(
        store.clone(),
        MemArtifacts::default(),
        queue.clone(),
        ManualClock::at(1_800_000_000_000),
        cfg,
    );
    (chain, store, queue)
}

/// What `queue` holds for `stage`, as SQS bodies.
fn inbox(queue: &MemQueue, stage: Stage) -> Vec<String> {
    queue
        .take()
        .into_iter()
        .filter(|s| s.to == stage)
        .map(|s| serde_json::to_string(&s.msg).expect("json"))
        .collect()
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
        let (chain, store, queue) = chain(ChainConfig {
            verify_delay_s: 0,
            ..ChainConfig::default()
        });
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
            let inbox = inbox(&queue, stage);
            assert_eq!(inbox.len(), 10, "{stage:?}");
            let c0 = cpu_ns();
            for m in &inbox {
                chain.handle(stage, m).await.expect("role");
            }
            *ticks.entry(stage.as_str()).or_default() += cpu_ns() - c0;
        }
        // Approve every plan as an operator would (not timed), then executor,
        // verifier, memory.
        queue.take();
        let operator = Principal {
            tenant: t.clone(),
            role: Role::Operator,
            subject: "key:bench".into(),
        };
        let runs: Vec<String> = store.runs().into_iter().map(|m| m.run_id).collect();
        for r in &runs {
            chain.decide(&operator, r, true, "").await.expect("approve");
        }
        queue.take();
        let approved: Vec<String> = runs
            .iter()
            .map(|r| {
                serde_json::to_string(&StageMessage::Approved {
                    tenant: t.clone(),
                    run_id: r.clone(),
                })
                .expect("json")
            })
            .collect();
        let changed: Vec<String> = runs
            .iter()
            .map(|r| {
                serde_json::to_string(&StageMessage::ActionsChanged {
                    tenant: t.clone(),
                    run_id: r.clone(),
                })
                .expect("json")
            })
            .collect();
        let c0 = cpu_ns();
        for m in &approved {
            chain.handle(Stage::Executor, m).await.expect("executor");
        }
        *ticks.entry("executor").or_default() += cpu_ns() - c0;
        // The agents finish each queued step (as their polls would record it),
        // and the executor queues the next until the plan is done.
        let mut verify = vec![];
        while !store.outbox(&t).is_empty() {
            for (agent, item) in store.outbox(&t) {
                let a = AgentId::parse(&agent).expect("agent");
                store.finish(&t, &a, &item.action.id, FinalState::Succeeded, 0);
            }
            let c0 = cpu_ns();
            for m in &changed {
                chain.handle(Stage::Executor, m).await.expect("executor");
            }
            *ticks.entry("executor").or_default() += cpu_ns() - c0;
            verify.extend(
                queue
                    .take()
                    .into_iter()
                    .filter(|s| s.to == Stage::Verifier)
                    .map(|s| s.msg),
            );
        }
        for m in verify {
            queue.send(Stage::Verifier, &m, 0).await.expect("requeue");
        }
        // Fresh evidence after the actions, as the observer would record it.
        for run in &runs {
            store
                .put_evidence(
                    &t,
                    run,
                    &EvidencePoint {
                        seq: 1_000_000 + b,
                        start_ms: 1_800_000_070_000,
                        end_ms: 1_800_000_100_000,
                        metrics: BTreeMap::from([("fs.root.used_pct".to_owned(), 60.0)]),
                    },
                )
                .await
                .expect("evidence");
        }
        for stage in [Stage::Verifier, Stage::Memory] {
            let inbox = inbox(&queue, stage);
            assert_eq!(inbox.len(), 10, "{stage:?}");
            let c0 = cpu_ns();
            for m in &inbox {
                chain.handle(stage, m).await.expect("role");
            }
            *ticks.entry(stage.as_str()).or_default() += cpu_ns() - c0;
        }
        total_runs += store
            .runs()
            .iter()
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

    // Memory: the observer holds no host between messages; each host's state
    // is one stored item, bounded by the window history whatever its age.
    let (chain, store, _queue) = chain(ChainConfig {
        history: 10,
        ..ChainConfig::default()
    });
    let agent = AgentId::generate();
    let mut seq = 0;
    for upto in [10u64, 100, 1_000] {
        while seq < upto {
            let msg = ObservationMessage {
                tenant: t.to_string(),
                agent_id: agent.to_string(),
                windows: vec![window(
                    seq,
                    &[
                        ("cpu.busy_pct", 10.0),
                        ("mem.used_pct", 30.0),
                        ("fs.root.used_pct", 40.0 + (seq % 7) as f64),
                    ],
                )],
            };
            chain.observe(&msg).await.expect("observe");
            seq += 1;
        }
        let item = store.markers_of(&t, &agent).expect("stored host state");
        println!(
            "after {upto} windows of one host: its stored state is {} bytes",
            serde_json::to_vec(&item).expect("json").len()
        );
    }
}
