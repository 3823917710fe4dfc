//! The control plane spine end to end: the real `tether-local` binary on the AWS
//! emulator, driven over HTTP as agents and operators drive it.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use tether_e2e::http::Reply;
use tether_e2e::runner::calls_between;
use tether_e2e::{Emulator, Http, Runner, Stack};
use tether_proto::{services_hash, Service};

const KEY: &str = "host:/usr/bin/python3";

struct Fleet {
    stack: Stack,
    runner: Runner,
    api_key: String,
    token: String,
}

/// Settings that make tests deterministic: no cache expiry mid-test, `last_seen`
/// written only when something else is.
const STEADY: &[(&str, &str)] = &[
    ("TETHER_DESIRED_CACHE_TTL_MS", "600000"),
    ("TETHER_LAST_SEEN_WRITE_INTERVAL_MS", "600000"),
    ("TETHER_POLL_INTERVAL_MS", "5000"),
];

async fn fleet(tenant: &str, extra: &[(&str, &str)]) -> Fleet {
    let emu = Emulator::shared();
    let stack = Stack::create(emu).await;
    let mut settings = STEADY.to_vec();
    settings.extend_from_slice(extra);
    let runner = Runner::start(emu, &stack, &settings);
    let (api_key, token) = runner.bootstrap(tenant);
    Fleet {
        stack,
        runner,
        api_key,
        token,
    }
}

fn enroll(http: &Http, token: &str, host: &str) -> (String, String) {
    let r = http.post(
        "/v1/enroll",
        None,
        &json!({"protocol": 1, "token": token, "hostname": host, "agent_version": "0.1.0", "capabilities": ["ebpf", "systemd"]}),
    );
    assert_eq!(r.status, 201, "{:?}", r.json);
    (
        r.json["agent_id"].as_str().expect("agent id").to_owned(),
        r.json["credential"]
            .as_str()
            .expect("credential")
            .to_owned(),
    )
}

/// The same text with its last hex digit changed.
fn tamper_last(s: &str) -> String {
    let (head, last) = s.split_at(s.len() - 1);
    format!("{head}{}", if last == "0" { "1" } else { "0" })
}

fn python(pid: u32, instrumented: bool) -> Service {
    Service {
        workload_key: KEY.into(),
        pid,
        exe: "/usr/bin/python3".into(),
        runtime: "python".into(),
        llm_providers: vec!["openai".into()],
        instrumented,
        python_sdk: false,
        labels: Default::default(),
        llm_content: Default::default(),
    }
}

/// An agent's side of the conversation: its sequence number and what it last reported.
struct Agent {
    id: String,
    credential: String,
    seq: u64,
    services: Vec<Service>,
}

impl Agent {
    fn new(http: &Http, token: &str) -> Self {
        let (id, credential) = enroll(http, token, "host-1");
        Self {
            id,
            credential,
            seq: 0,
            services: vec![],
        }
    }

    fn body(&mut self, send_services: bool, results: Value, telemetry: Value) -> Value {
        self.seq += 1;
        let mut b = json!({
            "protocol": 1,
            "agent_id": self.id,
            "seq": self.seq,
            "capabilities": ["ebpf", "systemd"],
            "services_hash": services_hash(&self.services),
            "heartbeat": {"agent_version": "0.1.0"},
            "results": results,
            "telemetry": telemetry,
        });
        if send_services {
            b["services"] = serde_json::to_value(&self.services).expect("services");
        }
        b
    }

    fn poll(&mut self, http: &Http, send_services: bool, results: Value) -> Reply {
        let body = self.body(send_services, results, json!([]));
        let r = http.post("/v1/poll", Some(&self.credential), &body);
        assert_eq!(r.status, 200, "{:?}", r.json);
        r
    }

    fn report(&mut self, http: &Http, services: Vec<Service>) -> Reply {
        self.services = services;
        self.poll(http, true, json!([]))
    }
}

fn result(action: &Value, phase: &str, status: Option<&str>) -> Value {
    let mut r = json!({
        "action_id": action["id"],
        "idempotency_key": action["idempotency_key"],
        "phase": phase,
    });
    if let Some(s) = status {
        r["status"] = s.into();
        r["exit_code"] = 0.into();
        r["stdout_tail"] = "attached 4 probes".into();
    }
    r
}

fn apply(http: &Http, key: &str, instrumentation: &str) -> Reply {
    http.post(
        "/v1/apply",
        Some(key),
        &json!({"workloads": [{"workload_key": KEY, "instrumentation": instrumentation}]}),
    )
}

fn actions_of(http: &Http, key: &str) -> Vec<Value> {
    let r = http.get("/v1/actions", Some(key));
    assert_eq!(r.status, 200, "{:?}", r.json);
    r.json["actions"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn desired_state_becomes_one_action_whose_result_is_recorded_and_never_redelivered() {
    let f = fleet("acme", &[]).await;
    let http = f.runner.http();
    let mut agent = Agent::new(&http, &f.token);

    let first = agent.report(&http, vec![python(100, false)]);
    assert_eq!(first.json["actions"], json!([]), "nothing desired yet");
    assert_eq!(first.json["next_poll_after_ms"], 5000);

    let applied = apply(&http, &f.api_key, "instrumented");
    assert_eq!(applied.status, 200, "{:?}", applied.json);
    assert_eq!(applied.json["changed"], json!([KEY]));
    let again = apply(&http, &f.api_key, "instrumented");
    assert_eq!(again.json["changed"], json!([]), "apply is idempotent");
    assert_eq!(again.json["revision"], applied.json["revision"]);

    // The action is handed out on every poll until acknowledged...
    let p1 = agent.poll(&http, false, json!([]));
    let actions = p1.json["actions"].as_array().expect("actions").clone();
    assert_eq!(actions.len(), 1, "{:?}", p1.json);
    let action = actions[0].clone();
    assert_eq!(action["kind"], "instrument");
    assert_eq!(action["target"], KEY);
    assert_eq!(action["requires_capability"], "ebpf");
    assert_eq!(action["mode"], "execute");
    let p2 = agent.poll(&http, false, json!([]));
    assert_eq!(
        p2.json["actions"],
        json!([action.clone()]),
        "same action, not a second one"
    );
    assert_eq!(actions_of(&http, &f.api_key)[0]["state"], "queued");

    // ...and no more once the agent acknowledges receipt.
    let p3 = agent.poll(&http, false, json!([result(&action, "received", None)]));
    assert_eq!(p3.json["actions"], json!([]));
    assert_eq!(
        p3.json["ack"]["results"],
        json!([{"action_id": action["id"], "phase": "received"}])
    );
    assert_eq!(actions_of(&http, &f.api_key)[0]["state"], "delivered");

    let p4 = agent.poll(
        &http,
        false,
        json!([
            result(&action, "started", None),
            result(&action, "final", Some("succeeded"))
        ]),
    );
    assert_eq!(p4.json["actions"], json!([]));
    assert_eq!(p4.json["ack"]["results"].as_array().map(Vec::len), Some(2));
    let listed = actions_of(&http, &f.api_key);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["state"], "succeeded");
    assert_eq!(listed[0]["result"]["stdout_tail"], "attached 4 probes");
    assert_eq!(listed[0]["agent_id"], agent.id.as_str());

    // A replayed final result is acknowledged and changes nothing.
    let before = f.stack.table_snapshot().await;
    let replay = agent.poll(
        &http,
        false,
        json!([result(&action, "final", Some("succeeded"))]),
    );
    assert_eq!(replay.json["ack"]["results"][0]["phase"], "final");
    assert_eq!(replay.json["actions"], json!([]));
    assert_eq!(f.stack.table_snapshot().await, before);

    // The agent reports the new observed state: in sync, nothing queued.
    agent.report(&http, vec![python(100, true)]);
    assert_eq!(
        agent.poll(&http, false, json!([])).json["actions"],
        json!([])
    );
    let svcs = http.get("/v1/services", Some(&f.api_key));
    assert_eq!(svcs.json["services"][0]["in_sync"], true, "{:?}", svcs.json);
    assert_eq!(
        svcs.json["services"][0]["desired"]["instrumentation"],
        "instrumented"
    );

    // The workload restarts (same key, new pid, not instrumented): re-instrumented.
    let restarted = agent.report(&http, vec![python(200, false)]);
    let acts = restarted.json["actions"].as_array().expect("actions");
    assert_eq!(acts.len(), 1, "{:?}", restarted.json);
    assert_eq!(acts[0]["kind"], "instrument");
    assert_ne!(acts[0]["id"], action["id"]);
    assert_eq!(acts[0]["payload"]["pid"], 200);

    // Desired none + observed instrumented -> uninstrument.
    let done = result(&acts[0], "final", Some("succeeded"));
    agent.poll(&http, false, json!([done]));
    agent.report(&http, vec![python(200, true)]);
    apply(&http, &f.api_key, "none");
    let un = agent.poll(&http, false, json!([]));
    assert_eq!(
        un.json["actions"][0]["kind"], "uninstrument",
        "{:?}",
        un.json
    );

    let agents = http.get("/v1/agents", Some(&f.api_key));
    assert_eq!(agents.json["agents"][0]["liveness"], "active");
    assert_eq!(agents.json["agents"][0]["agent_id"], agent.id.as_str());
}

#[tokio::test]
async fn failing_action_is_retried_within_its_budget_not_on_every_poll() {
    let f = fleet("retry", &[("TETHER_MAX_ATTEMPTS", "2")]).await;
    let http = f.runner.http();
    let mut agent = Agent::new(&http, &f.token);
    agent.report(&http, vec![python(7, false)]);
    apply(&http, &f.api_key, "instrumented");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let p = agent.poll(&http, false, json!([]));
        let a = p.json["actions"][0].clone();
        assert_eq!(a["kind"], "instrument", "{:?}", p.json);
        ids.push(a["id"].clone());
        agent.poll(&http, false, json!([result(&a, "final", Some("failed"))]));
    }
    assert_ne!(ids[0], ids[1]);
    for _ in 0..3 {
        assert_eq!(
            agent.poll(&http, false, json!([])).json["actions"],
            json!([]),
            "budget spent"
        );
    }
    let states: Vec<Value> = actions_of(&http, &f.api_key)
        .iter()
        .map(|a| a["state"].clone())
        .collect();
    assert_eq!(states, vec![json!("failed"), json!("failed")]);
}

#[tokio::test]
async fn steady_poll_costs_one_read_and_no_write_telemetry_one_send() {
    let f = fleet("cost", &[]).await;
    let http = f.runner.http();
    let mut agent = Agent::new(&http, &f.token);
    agent.report(&http, vec![python(100, true)]);
    agent.poll(&http, false, json!([])); // warm: key ring and desired state cached

    let before_table = f.stack.table_snapshot().await;
    let before = f.runner.aws_calls();
    let steady = agent.poll(&http, false, json!([]));
    let cost = calls_between(&before, &f.runner.aws_calls());
    assert_eq!(
        cost,
        BTreeMap::from([("dynamodb:Query".to_owned(), 1)]),
        "steady poll"
    );
    assert_eq!(steady.json["actions"], json!([]));
    assert_eq!(
        f.stack.table_snapshot().await,
        before_table,
        "steady poll writes nothing"
    );

    // Same hash with the body along: short-circuited, still one read.
    let before = f.runner.aws_calls();
    agent.poll(&http, true, json!([]));
    assert_eq!(
        calls_between(&before, &f.runner.aws_calls()),
        BTreeMap::from([("dynamodb:Query".to_owned(), 1)])
    );

    // Telemetry adds one SQS call and is acknowledged by seq.
    let windows = json!([
        {"seq": 41, "start_ms": 1, "end_ms": 30001, "metrics": {"cpu.busy_pct": 97.5}, "events": []},
        {"seq": 42, "start_ms": 30001, "end_ms": 60001, "metrics": {"cpu.busy_pct": 98.0}, "events": ["oom_kill"]}
    ]);
    let body = agent.body(false, json!([]), windows);
    let before = f.runner.aws_calls();
    let r = http.post("/v1/poll", Some(&agent.credential), &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.json["ack"]["telemetry"], json!([41, 42]));
    assert_eq!(
        calls_between(&before, &f.runner.aws_calls()),
        BTreeMap::from([
            ("dynamodb:Query".to_owned(), 1),
            ("sqs:SendMessage".to_owned(), 1)
        ])
    );
    let msgs = f
        .stack
        .receive_observations(1, std::time::Duration::from_secs(10))
        .await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["tenant"], "cost");
    assert_eq!(msgs[0]["agent_id"], agent.id.as_str());
    assert_eq!(msgs[0]["windows"][1]["events"], json!(["oom_kill"]));

    // A poll with changes: new services, a reconcile, an action queued.
    apply(&http, &f.api_key, "instrumented");
    let before = f.runner.aws_calls();
    let changed = agent.report(&http, vec![python(300, false)]);
    assert_eq!(changed.json["actions"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        calls_between(&before, &f.runner.aws_calls()),
        BTreeMap::from([
            ("dynamodb:Query".to_owned(), 1),
            ("dynamodb:TransactWriteItems".to_owned(), 1)
        ]),
        "a poll with changes is one read and one transaction"
    );
}

#[tokio::test]
async fn unchanged_hash_without_body_is_not_guessed_and_missing_body_is_requested() {
    let f = fleet("hash", &[]).await;
    let http = f.runner.http();
    let mut agent = Agent::new(&http, &f.token);
    agent.services = vec![python(5, false)];
    let r = agent.poll(&http, false, json!([]));
    assert_eq!(r.json["send_full_services"], true);
    let r = agent.poll(&http, true, json!([]));
    assert_eq!(r.json["send_full_services"], false);
    let svcs = http.get("/v1/services", Some(&f.api_key));
    assert_eq!(svcs.json["services"][0]["pid"], 5);
}

#[tokio::test]
async fn runner_restarted_mid_flow_loses_nothing() {
    let mut f = fleet("restart", &[]).await;
    let mut agent = Agent::new(&f.runner.http(), &f.token);
    agent.report(&f.runner.http(), vec![python(9, false)]);
    apply(&f.runner.http(), &f.api_key, "instrumented");
    let queued = agent.poll(&f.runner.http(), false, json!([])).json["actions"][0].clone();
    assert_eq!(queued["kind"], "instrument");

    f.runner.restart(); // SIGKILL, then a fresh process
    let http = f.runner.http();
    let after = agent.poll(&http, false, json!([]));
    assert_eq!(
        after.json["actions"],
        json!([queued.clone()]),
        "queued action survived the crash"
    );

    agent.poll(&http, false, json!([result(&queued, "received", None)]));
    f.runner.restart();
    let http = f.runner.http();
    assert_eq!(
        agent.poll(&http, false, json!([])).json["actions"],
        json!([]),
        "delivered stays delivered"
    );
    agent.poll(
        &http,
        false,
        json!([result(&queued, "final", Some("succeeded"))]),
    );
    f.runner.restart();
    let http = f.runner.http();
    assert_eq!(
        agent.poll(&http, false, json!([])).json["actions"],
        json!([])
    );
    let listed = actions_of(&http, &f.api_key);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["state"], "succeeded");
    // The credential issued before the crashes still works, and the agent is listed.
    assert_eq!(
        http.get("/v1/agents", Some(&f.api_key)).json["agents"][0]["agent_id"],
        agent.id.as_str()
    );
}

#[tokio::test]
async fn enrollment_tokens_expire_run_out_and_revoke() {
    let f = fleet("tokens", &[]).await;
    let http = f.runner.http();
    let made = http.post(
        "/v1/enrollment-tokens",
        Some(&f.api_key),
        &json!({"max_uses": 1, "ttl_s": 3600}),
    );
    assert_eq!(made.status, 201, "{:?}", made.json);
    let token = made.json["token"].as_str().expect("token").to_owned();
    enroll(&http, &token, "a");
    let second = http.post(
        "/v1/enroll",
        None,
        &json!({"token": token, "hostname": "b"}),
    );
    assert_eq!(
        (second.status, second.code()),
        (401, "invalid_enrollment_token"),
        "used up"
    );

    let made = http.post(
        "/v1/enrollment-tokens",
        Some(&f.api_key),
        &json!({"max_uses": 5}),
    );
    let id = made.json["id"].as_str().expect("id").to_owned();
    let token = made.json["token"].as_str().expect("token").to_owned();
    assert_eq!(
        http.delete(&format!("/v1/enrollment-tokens/{id}"), Some(&f.api_key))
            .status,
        204
    );
    let revoked = http.post(
        "/v1/enroll",
        None,
        &json!({"token": token, "hostname": "c"}),
    );
    assert_eq!(
        (revoked.status, revoked.code()),
        (401, "invalid_enrollment_token")
    );
    let listed = http.get("/v1/enrollment-tokens", Some(&f.api_key));
    let tokens = listed.json["tokens"].as_array().expect("tokens");
    assert!(
        tokens.iter().all(|t| t.get("token").is_none()),
        "secrets are never listed"
    );
    assert!(tokens
        .iter()
        .any(|t| t["id"] == id.as_str() && t["revoked"] == true));

    // A token whose secret part is altered is refused.
    let forged = tamper_last(&f.token);
    let r = http.post(
        "/v1/enroll",
        None,
        &json!({"token": forged, "hostname": "d"}),
    );
    assert_eq!((r.status, r.code()), (401, "invalid_enrollment_token"));

    // API keys: a viewer reads but cannot apply or manage credentials.
    let viewer = http.post("/v1/api-keys", Some(&f.api_key), &json!({"role": "viewer"}));
    assert_eq!(viewer.status, 201);
    let vkey = viewer.json["key"].as_str().expect("key").to_owned();
    assert_eq!(http.get("/v1/agents", Some(&vkey)).status, 200);
    assert_eq!(apply(&http, &vkey, "instrumented").code(), "forbidden");
    assert_eq!(http.get("/v1/api-keys", Some(&vkey)).status, 403);
    let vid = viewer.json["id"].as_str().expect("id");
    assert_eq!(
        http.delete(&format!("/v1/api-keys/{vid}"), Some(&f.api_key))
            .status,
        204
    );
    assert_eq!(
        http.get("/v1/agents", Some(&vkey)).code(),
        "invalid_credential"
    );
}

#[tokio::test]
async fn health_answers_without_credentials() {
    let f = fleet("health", &[]).await;
    let r = f.runner.http().get("/health", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json["status"], "ok");
    assert_eq!(r.json["protocol"], 1);
}
