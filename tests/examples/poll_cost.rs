//! The poll's cost, measured: a small fleet polls the real `tether-local` on the
//! emulator; AWS calls per poll come from the runner's SDK call counter, item
//! sizes from a table scan (DynamoDB's size rules), CPU from /proc. Prints a
//! Markdown report with the monthly cost for a fleet, from the price sheet in
//! docs/benchmarks.md.
//!
//! Run: `cargo run --release -p tether-e2e --example poll_cost -- [agents] [fleet]`
//! (defaults 20 agents measured, a fleet of 10,000 priced).

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Instant;
use tether_e2e::runner::calls_between;
use tether_e2e::{Emulator, Http, Runner, Stack};
use tether_proto::{services_hash, Service};

struct Agent {
    id: String,
    cred: String,
    seq: u64,
    services: Vec<Service>,
}

impl Agent {
    fn poll(&mut self, http: &Http, with_services: bool, telemetry: Value) -> Value {
        self.seq += 1;
        let mut body = json!({"protocol": 1, "agent_id": self.id, "seq": self.seq,
            "capabilities": ["ebpf", "systemd"], "services_hash": services_hash(&self.services),
            "heartbeat": {"agent_version": "0.1.0"}, "telemetry": telemetry});
        if with_services {
            body["services"] = serde_json::to_value(&self.services).expect("services");
        }
        let r = http.post("/v1/poll", Some(&self.cred), &body);
        assert_eq!(r.status, 200, "{:?}", r.json);
        r.json
    }
}

fn services(n: usize, pid_base: u32) -> Vec<Service> {
    (0..n)
        .map(|i| Service {
            workload_key: format!("k8s:prod:deployment:chat-{i}:app"),
            pid: pid_base + i as u32,
            exe: "/usr/local/bin/python3.12".into(),
            runtime: "python".into(),
            llm_providers: vec!["openai".into(), "anthropic".into()],
            instrumented: i == 0,
            python_sdk: false,
            labels: Default::default(),
            llm_content: Default::default(),
        })
        .collect()
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

/// DynamoDB item size: attribute names plus values (S: bytes, N: ~digits/2+1, BOOL: 1).
fn item_size(
    item: &std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>,
) -> usize {
    use aws_sdk_dynamodb::types::AttributeValue as A;
    item.iter()
        .map(|(k, v)| {
            k.len()
                + match v {
                    A::S(s) => s.len(),
                    A::N(n) => n.len() / 2 + 1,
                    A::Bool(_) => 1,
                    _ => 8,
                }
        })
        .sum()
}

struct Phase {
    name: &'static str,
    polls: u64,
    calls: BTreeMap<String, u64>,
    wall_ms: f64,
    cpu_ms: f64,
}

fn per_poll(p: &Phase, op: &str) -> f64 {
    p.calls.get(op).copied().unwrap_or(0) as f64 / p.polls as f64
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n_agents = args.first().copied().unwrap_or(20);
    let fleet = args.get(1).copied().unwrap_or(10_000) as f64;
    let emu = Emulator::shared();
    let stack = Stack::create(emu).await;
    let runner = Runner::start(
        emu,
        &stack,
        &[
            ("TETHER_POLL_INTERVAL_MS", "30000"),
            ("TETHER_DESIRED_CACHE_TTL_MS", "30000"),
        ],
    );
    let http = runner.http();
    let pid = runner.pid().expect("runner pid");
    let tick_ms = 1000.0 / 100.0; // USER_HZ
    let (key, token) = runner.bootstrap("bench");
    let mut agents: Vec<Agent> = (0..n_agents)
        .map(|i| {
            let r = http.post(
                "/v1/enroll",
                None,
                &json!({"token": token, "hostname": format!("node-{i}")}),
            );
            assert_eq!(r.status, 201, "{:?}", r.json);
            Agent {
                id: r.json["agent_id"].as_str().expect("id").into(),
                cred: r.json["credential"].as_str().expect("cred").into(),
                seq: 0,
                services: services(5, 1000 * (i as u32 + 1)),
            }
        })
        .collect();
    let apply = json!({"workloads": [{"workload_key": "k8s:prod:deployment:chat-0:app", "instrumentation": "instrumented"}]});
    assert_eq!(http.post("/v1/apply", Some(&key), &apply).status, 200);
    for a in &mut agents {
        a.poll(&http, true, json!([]));
        a.poll(&http, false, json!([]));
    }
    let mut phases = Vec::new();
    let mut measure = |name: &'static str, rounds: usize, f: &mut dyn FnMut(&mut Agent, usize)| {
        let before = runner.aws_calls();
        let cpu0 = cpu_ticks(pid);
        let t0 = Instant::now();
        for r in 0..rounds {
            for a in agents.iter_mut() {
                f(a, r);
            }
        }
        let polls = (rounds * agents.len()) as u64;
        phases.push(Phase {
            name,
            polls,
            calls: calls_between(&before, &runner.aws_calls()),
            wall_ms: t0.elapsed().as_secs_f64() * 1000.0 / polls as f64,
            cpu_ms: (cpu_ticks(pid) - cpu0) as f64 * tick_ms / polls as f64,
        });
    };
    measure("steady (nothing changed)", 10, &mut |a, _| {
        a.poll(&http, false, json!([]));
    });
    measure("with telemetry (one 30 s window)", 5, &mut |a, r| {
        let w = json!([{"seq": r as u64 + 1, "start_ms": 0, "end_ms": 30000,
            "metrics": {"cpu.busy_pct": 40.0, "mem.used_bytes": 8.0e9, "psi.cpu.some_avg10": 0.5, "gpu.0.util_pct": 93.0},
            "events": []}]);
        a.poll(&http, false, w);
    });
    measure("with changes (a service restarted)", 3, &mut |a, r| {
        a.services[1].pid += 1 + r as u32;
        a.poll(&http, true, json!([]));
    });

    // Sizes of what the poll reads and writes.
    let ddb = aws_sdk_dynamodb::Client::new(&stack.sdk);
    let scan = ddb
        .scan()
        .table_name(&stack.table)
        .send()
        .await
        .expect("scan");
    let mut partition_bytes: BTreeMap<String, usize> = BTreeMap::new();
    let mut agent_item = Vec::new();
    for item in scan.items() {
        let pk = item
            .get("pk")
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default();
        let sk = item
            .get("sk")
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default();
        if pk.contains("#A#") && sk.as_str() <= "2#~" {
            *partition_bytes.entry(pk).or_default() += item_size(item);
            if sk == "0#agent" {
                agent_item.push(item_size(item));
            }
        }
    }
    let read_bytes =
        partition_bytes.values().sum::<usize>() as f64 / partition_bytes.len().max(1) as f64;
    let agent_bytes = agent_item.iter().sum::<usize>() as f64 / agent_item.len().max(1) as f64;
    let rcu = (read_bytes / 4096.0).ceil().max(1.0); // strongly consistent
    let agent_wcu = (agent_bytes / 1024.0).ceil().max(1.0);

    println!("## Poll cost, measured ({n_agents} agents, 5 services each, tether-local on moto)\n");
    println!("| poll | polls | DynamoDB Query | TransactWriteItems | SQS SendMessage | other calls | wall ms/poll (local) | runner CPU ms/poll |");
    println!("|---|---|---|---|---|---|---|---|");
    for p in &phases {
        let other: u64 = p
            .calls
            .iter()
            .filter(|(k, _)| {
                ![
                    "dynamodb:Query",
                    "dynamodb:TransactWriteItems",
                    "sqs:SendMessage",
                ]
                .contains(&k.as_str())
            })
            .map(|(_, v)| v)
            .sum();
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {} | {:.1} | {:.2} |",
            p.name,
            p.polls,
            per_poll(p, "dynamodb:Query"),
            per_poll(p, "dynamodb:TransactWriteItems"),
            per_poll(p, "sqs:SendMessage"),
            other,
            p.wall_ms,
            p.cpu_ms
        );
    }
    println!("\nPoll read (agent record + live outbox + services): {read_bytes:.0} bytes -> {rcu} RCU (strongly consistent).");
    println!("Agent record: {agent_bytes:.0} bytes -> {agent_wcu} WCU per write, doubled by its index entry.");

    // Monthly cost for the fleet at 30 s polls (prices: docs/benchmarks.md).
    let polls_month = fleet * (30.0 * 24.0 * 3600.0 / 30.0);
    let last_seen_writes = fleet * (30.0 * 24.0 * 3600.0 / 120.0);
    let lambda_req = polls_month * 0.20 / 1e6;
    let ddb_read = polls_month * rcu * 0.125 / 1e6;
    let ddb_write = last_seen_writes * agent_wcu * 2.0 * 0.625 / 1e6;
    let sqs = polls_month * 0.40 / 1e6;
    // Billed duration: the measured CPU plus one in-region DynamoDB round trip (~5 ms),
    // at 256 MB on arm64 ($0.0000133334 per GB-s).
    let steady_cpu = phases.first().map(|p| p.cpu_ms).unwrap_or(0.0);
    let lambda_gbs = polls_month * ((steady_cpu + 5.0) / 1000.0) * 0.25 * 0.0000133334;
    println!(
        "\n## Monthly cost, {fleet:.0} agents polling every 30 s ({:.0} M polls)\n",
        polls_month / 1e6
    );
    println!("| item | USD / month |\n|---|---|");
    println!("| Lambda requests ($0.20 / M) | {lambda_req:.2} |");
    println!(
        "| Lambda duration (256 MB arm64, {:.1} ms billed) | {lambda_gbs:.2} |",
        steady_cpu + 5.0
    );
    println!("| DynamoDB reads ({rcu} RCU per poll) | {ddb_read:.2} |");
    println!("| DynamoDB writes (`last_seen` every 120 s) | {ddb_write:.2} |");
    println!(
        "| **steady state total** | **{:.2}** |",
        lambda_req + lambda_gbs + ddb_read + ddb_write
    );
    println!("| SQS, if every poll carries telemetry ($0.40 / M) | {sqs:.2} |");
}
