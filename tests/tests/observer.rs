//! The observer is stateless: its windows and its (agent, seq) answers live in
//! DynamoDB with the host's markers, so a rule that needs history (a trend, a
//! signal that must persist) fires the same way when every window lands on a
//! fresh instance, and two instances working
//! the same host at once open each run once.
//!
//! Each "instance" here is its own `Chain` over its own SDK clients: exactly
//! what two Lambda instances share, which is nothing but the AWS services.

use std::collections::BTreeMap;
use tether_aws::{Clients, Config, DynamoStore, S3Artifacts, SqsStageQueues};
use tether_core::incident::roles::{Chain, ObservationMessage};
use tether_core::port::SystemClock;
use tether_core::tenant::{AgentId, TenantId};
use tether_e2e::{Emulator, Stack};
use tether_proto::TelemetryWindow;

type Deployed = Chain<DynamoStore, S3Artifacts, SqsStageQueues, SystemClock>;

/// A fresh observer instance: new clients, new memory.
async fn instance(stack: &Stack) -> Deployed {
    let mut env = stack.env();
    env.extend(Emulator::shared().env());
    let config = Config::from_strings(&env).expect("config");
    let clients = Clients::from_sdk_config(&stack.sdk);
    Chain::new(
        DynamoStore::new(clients.dynamodb.clone(), config.table.clone()),
        S3Artifacts::new(clients.s3.clone(), config.bucket.clone()),
        SqsStageQueues::new(clients.sqs.clone(), config.stage_queue_urls.clone()),
        SystemClock,
        config.chain.clone(),
    )
}

/// Six quiet windows (the LLM latency baseline), a p95 three times the baseline
/// (a trend break: fires only with that history), then CPU saturated from window
/// 8 on: saturation must hold for five minutes before it opens a run, so it
/// fires only with the stored start of the streak, at window 17, once.
fn windows() -> Vec<TelemetryWindow> {
    let now = tether_e2e::now_ms() - 30 * 30_000;
    (1..=20u64)
        .map(|seq| {
            let mut metrics = BTreeMap::new();
            let p95 = if seq == 7 { 2400.0 } else { 300.0 };
            metrics.insert("llm.p95_ms".to_owned(), p95);
            metrics.insert(
                "cpu.busy_pct".to_owned(),
                if seq >= 8 { 99.0 } else { 20.0 },
            );
            metrics.insert(
                "psi.cpu.some_avg10".to_owned(),
                if seq >= 8 { 60.0 } else { 1.0 },
            );
            TelemetryWindow {
                seq,
                start_ms: now + (seq - 1) * 30_000,
                end_ms: now + seq * 30_000,
                metrics,
                events: vec![],
            }
        })
        .collect()
}

fn message(t: &TenantId, a: &AgentId, w: TelemetryWindow) -> ObservationMessage {
    ObservationMessage {
        tenant: t.to_string(),
        agent_id: a.to_string(),
        windows: vec![w],
    }
}

async fn families_opened(chain: &Deployed, t: &TenantId) -> Vec<String> {
    let mut runs: Vec<String> = chain
        .list_runs(t)
        .await
        .expect("runs")
        .into_iter()
        .map(|r| r.family)
        .collect();
    runs.sort();
    runs
}

#[tokio::test]
async fn a_fresh_instance_per_window_opens_what_one_warm_instance_would() {
    let stack = Stack::create_with_chain(Emulator::shared(), 5).await;
    let t = TenantId::parse("stateless").expect("tenant");
    let a = AgentId::generate();
    let mut opened = Vec::new();
    for w in windows() {
        // A cold start for every window: nothing survives in memory.
        let chain = instance(&stack).await;
        opened.extend(chain.observe(&message(&t, &a, w)).await.expect("observe"));
    }
    let chain = instance(&stack).await;
    assert_eq!(
        families_opened(&chain, &t).await,
        vec!["cpu_saturation".to_owned(), "llm_latency".to_owned()],
        "the trend rule fired from stored history, the persistent one from the stored start of its streak, once"
    );
    assert_eq!(opened.len(), 2, "{opened:?}");

    // Redelivery of every window to yet another instance opens nothing new.
    let again = instance(&stack).await;
    let mut reopened = Vec::new();
    for w in windows() {
        reopened.extend(again.observe(&message(&t, &a, w)).await.expect("observe"));
    }
    assert_eq!(
        reopened,
        Vec::<String>::new(),
        "redelivered windows open no run"
    );
    assert_eq!(families_opened(&again, &t).await.len(), 2);
}

#[tokio::test]
async fn two_concurrent_instances_open_each_run_once() {
    let stack = Stack::create_with_chain(Emulator::shared(), 5).await;
    let t = TenantId::parse("concurrent").expect("tenant");
    let a = AgentId::generate();
    let (one, two) = (instance(&stack).await, instance(&stack).await);
    let mut opened = Vec::new();
    for w in windows() {
        // Both instances get the same window at once (an at-least-once
        // redelivery racing the first delivery).
        let (m1, m2) = (message(&t, &a, w.clone()), message(&t, &a, w));
        let (x, y) = tokio::join!(one.observe(&m1), two.observe(&m2));
        let (x, y) = (x.expect("instance one"), y.expect("instance two"));
        // The loser of the race re-reads the winner's state: it may finish
        // opening the same run (idempotently), never a different one.
        for run in x.iter().chain(&y) {
            if !opened.contains(run) {
                opened.push(run.clone());
            }
        }
    }
    assert_eq!(
        families_opened(&one, &t).await,
        vec!["cpu_saturation".to_owned(), "llm_latency".to_owned()]
    );
    assert_eq!(opened.len(), 2, "{opened:?}");
}
