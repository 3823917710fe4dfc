//! The incident chain end to end: a scripted agent (the agent's telemetry
//! generator, over the real poll) drives a host into a fault; the real runner
//! hosts every role as an SQS consumer on the emulator; operators act through
//! the real HTTP routes.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tether_e2e::{Emulator, Http, Runner, Stack};

const SETTINGS: &[(&str, &str)] = &[
    ("TETHER_DESIRED_CACHE_TTL_MS", "600000"),
    ("TETHER_POLL_INTERVAL_MS", "5000"),
    ("TETHER_VERIFY_DELAY_S", "3"),
    ("TETHER_CHECK_ACTIONS_S", "2"),
    ("TETHER_LOCAL_RETRY_S", "1"),
    ("TETHER_MAX_RECEIVES", "3"),
    // These tests drive the chain's mechanics with single windows; the
    // persistence of CPU saturation is the observer's unit tests' business.
    ("TETHER_CPU_PERSIST_MS", "0"),
];

struct World {
    stack: Stack,
    runner: Runner,
    http: Http,
    key: String,
    token: String,
}

async fn world(tenant: &str) -> World {
    world_with(tenant, &[]).await
}

async fn world_with(tenant: &str, extra: &[(&str, &str)]) -> World {
    let emu = Emulator::shared();
    let stack = Stack::create_with_chain(emu, 3).await;
    let mut settings = SETTINGS.to_vec();
    settings.extend_from_slice(extra);
    let runner = Runner::start(emu, &stack, &settings);
    let (key, token) = runner.bootstrap(tenant);
    let http = runner.http();
    World {
        stack,
        runner,
        http,
        key,
        token,
    }
}

/// The agent side: enroll, then polls carrying telemetry windows and results.
struct Agent {
    id: String,
    credential: String,
    seq: u64,
    window: u64,
    /// The action kinds it reports it can run (`None`: an older agent that
    /// does not report them).
    kinds: Option<Vec<&'static str>>,
}

impl Agent {
    fn enroll(http: &Http, token: &str) -> Self {
        let r = http.post(
            "/v1/enroll",
            None,
            &json!({"protocol": 1, "token": token, "hostname": "gpu-7", "agent_version": "0.1.0"}),
        );
        assert_eq!(r.status, 201, "{:?}", r.json);
        Self {
            id: r.json["agent_id"].as_str().expect("id").into(),
            credential: r.json["credential"].as_str().expect("credential").into(),
            seq: 0,
            window: 0,
            kinds: None,
        }
    }

    fn poll(&mut self, http: &Http, telemetry: Vec<Value>, results: Vec<Value>) -> Value {
        self.seq += 1;
        let mut body = json!({
            "protocol": 1, "agent_id": self.id, "seq": self.seq,
            "services_hash": tether_proto::services_hash(&[]),
            "services": [],
            "heartbeat": {"agent_version": "0.1.0"},
            "results": results, "telemetry": telemetry,
        });
        if let Some(k) = &self.kinds {
            body["action_kinds"] = json!(k);
        }
        let r = http.post("/v1/poll", Some(&self.credential), &body);
        assert_eq!(r.status, 200, "{:?}", r.json);
        r.json
    }

    /// Sends one telemetry window with these metrics and events.
    fn window(&mut self, http: &Http, metrics: Value, events: &[&str]) -> Value {
        self.window += 1;
        let end = tether_e2e::now_ms();
        let w = json!({"seq": self.window, "start_ms": end - 30_000, "end_ms": end,
                       "metrics": metrics, "events": events});
        let r = self.poll(http, vec![w], vec![]);
        assert_eq!(
            r["ack"]["telemetry"],
            json!([self.window]),
            "telemetry acknowledged"
        );
        r
    }

    /// Polls until `want` actions arrived (the executor queues a run's actions one
    /// by one, so a poll can see some of them); answers each with a final result,
    /// and checks that no answered action is handed out again.
    fn run_actions(&mut self, http: &Http, status: &str, want: usize) -> Vec<Value> {
        let until = Instant::now() + Duration::from_secs(30);
        let mut all: Vec<Value> = Vec::new();
        let mut results: Vec<Value> = Vec::new();
        loop {
            let r = self.poll(http, vec![], std::mem::take(&mut results));
            for a in r["actions"].as_array().into_iter().flatten() {
                assert!(
                    !all.contains(a),
                    "an answered action is handed out again: {a}"
                );
                let st = if a["mode"] == "dry_run" {
                    "dry_run"
                } else {
                    status
                };
                results.push(json!({"action_id": a["id"], "idempotency_key": a["idempotency_key"], "phase": "received"}));
                results.push(json!({"action_id": a["id"], "idempotency_key": a["idempotency_key"], "phase": "final",
                                    "status": st, "exit_code": 0, "message": format!("{} done", a["kind"])}));
                all.push(a.clone());
            }
            if all.len() >= want && results.is_empty() {
                assert_eq!(all.len(), want, "more actions than expected: {all:?}");
                return all;
            }
            assert!(
                Instant::now() < until,
                "{} of {want} actions reached the agent",
                all.len()
            );
            if results.is_empty() {
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
}

fn runs(w: &World) -> Vec<Value> {
    let r = w.http.get("/v1/runs", Some(&w.key));
    assert_eq!(r.status, 200, "{:?}", r.json);
    r.json["runs"].as_array().cloned().unwrap_or_default()
}

/// Waits until the run of `family` reaches `status`.
fn wait_run(w: &World, family: &str, status: &str) -> Value {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(r) = runs(w).into_iter().find(|r| r["family"] == family) {
            if r["status"] == status {
                return r;
            }
            assert!(
                r["status"] != "failed" || status == "failed",
                "run failed: {r}"
            );
            if Instant::now() > until {
                panic!("run {family} is {} not {status}: {r}", r["status"]);
            }
        } else if Instant::now() > until {
            panic!("no run for {family}: {:?}", runs(w));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn artifact(w: &World, id: &str) -> Value {
    let r = w.http.get(&format!("/v1/artifacts/{id}"), Some(&w.key));
    assert_eq!(r.status, 200, "{:?}", r.json);
    r.json
}

fn chain_kinds(run: &Value) -> Vec<String> {
    run["chain"]
        .as_array()
        .expect("chain")
        .iter()
        .map(|l| l["kind"].as_str().expect("kind").to_owned())
        .collect()
}

fn link<'a>(run: &'a Value, kind: &str) -> &'a str {
    run["chain"]
        .as_array()
        .expect("chain")
        .iter()
        .find(|l| l["kind"] == kind)
        .and_then(|l| l["id"].as_str())
        .unwrap_or_else(|| panic!("no {kind} in {run}"))
}

const FULL_CHAIN: [&str; 8] = [
    "observation_summary",
    "anomaly_finding",
    "root_cause_hypothesis",
    "remediation_proposal",
    "execution_plan",
    "execution_result",
    "verification_result",
    "incident_report",
];

fn set_policy(w: &World, settings: Value) {
    let r = w
        .http
        .put("/v1/policy", Some(&w.key), &json!({"settings": settings}));
    assert_eq!(r.status, 200, "{:?}", r.json);
}

fn approve(w: &World, run: &str) -> Value {
    let r = w.http.post(
        &format!("/v1/runs/{run}/approve"),
        Some(&w.key),
        &json!({"comment": "go"}),
    );
    assert_eq!(r.status, 200, "{:?}", r.json);
    r.json
}

/// What an operator reads in CloudWatch: a request's line names its tenant,
/// agent, status and AWS calls; a role message's line names its role, tenant,
/// run, outcome and AWS calls; on Lambda both carry the invocation's request id.
#[tokio::test]
async fn function_logs_carry_request_and_message_fields() {
    let w = world("logs").await;
    let mut agent = Agent::enroll(&w.http, &w.token);
    agent.window(&w.http, json!({"fs.root.used_pct": 97.5}), &[]);
    let run = wait_run(&w, "disk_full", "awaiting_approval");
    let id = run["run_id"].as_str().expect("run id");
    let lambda = w.runner.shape == tether_e2e::Shape::Lambda;

    let api = w.runner.log_lines("api");
    let poll = api
        .iter()
        .find(|l| {
            l["message"] == "request" && l["path"] == "/v1/poll" && l["agent"] == agent.id.as_str()
        })
        .unwrap_or_else(|| panic!("no poll line for {} in {api:?}", agent.id));
    assert_eq!(poll["level"], "INFO");
    assert_eq!(poll["tenant"], "logs");
    assert_eq!(poll["status"], 200);
    assert!(poll["AwsCalls"].as_u64().is_some_and(|n| n >= 2), "{poll}");
    assert!(
        poll["aws_ops"]
            .as_str()
            .is_some_and(|o| o.contains("dynamodb:Query=") && o.contains("sqs:SendMessage=1")),
        "{poll}"
    );
    assert!(
        poll["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{poll}"
    );
    if lambda {
        assert!(
            poll["requestId"].as_str().is_some_and(|r| r.len() == 36),
            "{poll}"
        );
        assert_eq!(poll["function"], "api");
    }
    // Metrics in CloudWatch's Embedded Metric Format, on the same line.
    assert_eq!(poll["Requests"], 1);
    assert_eq!(poll["Errors"], 0);
    assert_eq!(
        poll["_aws"]["CloudWatchMetrics"][0]["Namespace"], "Tether",
        "{poll}"
    );

    let planner = w.runner.log_lines("planner");
    let handled = planner
        .iter()
        .find(|l| l["message"] == "message handled" && l["role"] == "planner" && l["run"] == id)
        .unwrap_or_else(|| panic!("no planner line for {id}"));
    assert_eq!(handled["tenant"], "logs");
    assert_eq!(handled["outcome"], "ok");
    assert_eq!(handled["receive_count"], 1);
    assert!(
        handled["AwsCalls"].as_u64().is_some_and(|n| n >= 3),
        "{handled}"
    );
    assert!(handled["message_id"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    if lambda {
        assert!(
            handled["requestId"].as_str().is_some_and(|r| !r.is_empty()),
            "{handled}"
        );
        assert_eq!(handled["function"], "planner");
    }
    assert_eq!(handled["Messages"], 1);
    let metrics: Vec<&str> = handled["_aws"]["CloudWatchMetrics"][0]["Metrics"]
        .as_array()
        .map(|m| m.iter().filter_map(|x| x["Name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(metrics, vec!["Messages", "AwsCalls", "RoleLatency"]);
}

#[tokio::test]
async fn a_filling_disk_goes_through_the_whole_chain_once() {
    let w = world("acme").await;
    // The tenant lets approved destructive steps run (rotate_logs cuts data).
    set_policy(&w, json!({"dry_run": false, "allow_destructive": true}));
    let mut agent = Agent::enroll(&w.http, &w.token);
    // A host without journald: the agent cannot vacuum the journal.
    agent.kinds = Some(vec!["collect_evidence", "rotate_logs", "signal_process"]);
    agent.window(
        &w.http,
        json!({"fs.root.used_pct": 61.0, "cpu.busy_pct": 12.0}),
        &[],
    );
    agent.window(
        &w.http,
        json!({"fs.root.used_pct": 97.5, "cpu.busy_pct": 12.0}),
        &[],
    );
    // Still full: the same episode, no second run.
    agent.window(&w.http, json!({"fs.root.used_pct": 98.0}), &[]);

    let run = wait_run(&w, "disk_full", "awaiting_approval");
    let id = run["run_id"].as_str().expect("run id").to_owned();
    assert_eq!(chain_kinds(&run), FULL_CHAIN[..5].to_vec());
    let hyp = artifact(&w, link(&run, "root_cause_hypothesis"));
    assert_eq!(hyp["body"]["hypotheses"][0]["rule"], "disk_full");
    assert_eq!(hyp["schema_version"], 1);
    assert_eq!(hyp["producer"], "analyzer");
    let plan = artifact(&w, link(&run, "execution_plan"));
    let decisions = plan["body"]["decisions"].as_array().expect("decisions");
    let verdicts: Vec<(&str, &str)> = decisions
        .iter()
        .map(|d| {
            (
                d["action"].as_str().expect("a"),
                d["verdict"].as_str().expect("v"),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        vec![
            ("collect_evidence", "require_approval"),
            ("rotate_logs", "require_approval"),
        ],
        "the policy stops at approval; only what the agent can run is planned"
    );
    let proposal = artifact(&w, link(&run, "remediation_proposal"));
    assert_eq!(
        proposal["body"]["unavailable"][0]["action"], "vacuum_journal",
        "the plan names the step the agent cannot run: {proposal}"
    );
    assert!(proposal["body"]["unavailable"][0]["reason"]
        .as_str()
        .expect("reason")
        .contains("cannot run vacuum_journal"));

    // Nothing reaches the agent before approval.
    let before = agent.poll(&w.http, vec![], vec![]);
    assert_eq!(before["actions"], json!([]));

    // A viewer may not approve; another tenant cannot even see the run.
    let viewer = w
        .http
        .post("/v1/api-keys", Some(&w.key), &json!({"role": "viewer"}));
    let viewer_key = viewer.json["key"].as_str().expect("viewer key").to_owned();
    let denied = w.http.post(
        &format!("/v1/runs/{id}/approve"),
        Some(&viewer_key),
        &json!({}),
    );
    assert_eq!((denied.status, denied.code()), (403, "forbidden"));
    let (other_key, _) = w.runner.bootstrap("globex");
    let hidden = w.http.get(&format!("/v1/runs/{id}"), Some(&other_key));
    assert_eq!((hidden.status, hidden.code()), (404, "not_found"));
    let hidden = w.http.get(
        &format!("/v1/artifacts/{}", link(&run, "execution_plan")),
        Some(&other_key),
    );
    assert_eq!((hidden.status, hidden.code()), (404, "not_found"));
    assert_eq!(
        w.http.get("/v1/runs", Some(&other_key)).json["runs"],
        json!([])
    );

    approve(&w, &id);
    let again = w
        .http
        .post(&format!("/v1/runs/{id}/approve"), Some(&w.key), &json!({}));
    assert_eq!((again.status, again.code()), (409, "conflict"));

    let actions = agent.run_actions(&w.http, "succeeded", 2);
    let kinds: Vec<&str> = actions
        .iter()
        .map(|a| a["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, vec!["collect_evidence", "rotate_logs"]);
    // collect_evidence carries a presigned PUT for its bundle, under the tenant.
    let upload = &actions[0]["payload"]["upload"];
    let key = upload["key"].as_str().expect("evidence key");
    assert!(key.starts_with(&format!("T/acme/evidence/{id}/")), "{key}");
    let agent_http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let put = agent_http
        .put(upload["url"].as_str().expect("url"))
        .header("Content-Type", "application/json")
        .send(&br#"{"what":"disk_usage","snapshot":{"text":"/ 97.5"}}"#[..])
        .expect("upload");
    assert_eq!(put.status().as_u16(), 200, "the presigned PUT is accepted");
    let s3 = w.stack.s3();
    let stored = s3
        .get_object()
        .bucket(&w.stack.bucket)
        .key(key)
        .send()
        .await
        .expect("stored bundle");
    let bytes = stored.body.collect().await.expect("body").into_bytes();
    assert!(String::from_utf8_lossy(&bytes).contains("/ 97.5"));
    assert!(actions.iter().all(|a| a["mode"] == "execute"));
    assert!(actions.iter().all(|a| a["idempotency_key"]
        .as_str()
        .expect("key")
        .starts_with(&format!("inc:{id}:"))));

    // The verifier waits for fresh evidence: the disk is better now.
    let until = Instant::now() + Duration::from_secs(20);
    while w.http.get(&format!("/v1/runs/{id}"), Some(&w.key)).json["status"] == "executing" {
        assert!(Instant::now() < until, "execution result never recorded");
        std::thread::sleep(Duration::from_millis(300));
    }
    agent.window(&w.http, json!({"fs.root.used_pct": 62.0}), &[]);
    let closed = wait_run(&w, "disk_full", "closed");
    assert_eq!(closed["outcome"], "resolved");
    assert_eq!(
        chain_kinds(&closed),
        FULL_CHAIN.to_vec(),
        "every artifact, in order"
    );
    let verification = artifact(&w, link(&closed, "verification_result"));
    assert_eq!(
        verification["body"]["verdict"], "improved",
        "{verification}"
    );
    assert_eq!(verification["body"]["after"], 62.0);
    let report = artifact(&w, link(&closed, "incident_report"));
    let listed: Vec<&str> = report["body"]["chain"]
        .as_array()
        .expect("chain")
        .iter()
        .map(|c| c["kind"].as_str().expect("k"))
        .collect();
    assert_eq!(listed, FULL_CHAIN[..7].to_vec());
    let evidence = w.http.get(&format!("/v1/runs/{id}/evidence"), Some(&w.key));
    let values: Vec<f64> = evidence.json["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p["metrics"]["fs.root.used_pct"].as_f64().expect("v"))
        .collect();
    assert_eq!(
        values,
        vec![97.5, 98.0, 62.0],
        "before and after, for the charts"
    );
    let audit = w.http.get("/v1/audit", Some(&w.key));
    let entries: Vec<&str> = audit.json["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["action"].as_str().expect("a"))
        .collect();
    assert!(
        entries.contains(&"plan_approved") && entries.contains(&"approval_requested"),
        "{entries:?}"
    );

    // Duplicate delivery at every stage changes nothing.
    let sqs = w.stack.sqs();
    let msg = |t: &str, extra: Value| {
        let mut m = json!({"type": t, "tenant": "acme", "run_id": id});
        for (k, v) in extra.as_object().expect("object") {
            m[k] = v.clone();
        }
        m.to_string()
    };
    let q = |name: &str| w.stack.stage_queues[name].0.clone();
    let sends = [
        (
            q("analyzer"),
            msg(
                "artifact",
                json!({"artifact_id": link(&closed, "observation_summary")}),
            ),
        ),
        (
            q("planner"),
            msg(
                "artifact",
                json!({"artifact_id": link(&closed, "root_cause_hypothesis")}),
            ),
        ),
        (
            q("policy-gate"),
            msg(
                "artifact",
                json!({"artifact_id": link(&closed, "remediation_proposal")}),
            ),
        ),
        (q("executor"), msg("approved", json!({}))),
        (q("executor"), msg("actions_changed", json!({}))),
        (q("verifier"), msg("verify", json!({"attempt": 0}))),
        (
            q("memory"),
            msg(
                "artifact",
                json!({"artifact_id": link(&closed, "verification_result")}),
            ),
        ),
    ];
    for (url, body) in sends {
        sqs.send_message()
            .queue_url(url)
            .message_body(body)
            .send()
            .await
            .expect("send");
    }
    std::thread::sleep(Duration::from_secs(6));
    let after = w.http.get(&format!("/v1/runs/{id}"), Some(&w.key)).json;
    assert_eq!(after["chain"], closed["chain"], "no second artifact");
    assert_eq!(after["status"], "closed");
    let poll = agent.poll(&w.http, vec![], vec![]);
    assert_eq!(poll["actions"], json!([]), "no second action");
    let listed = w.http.get("/v1/actions", Some(&w.key)).json;
    assert_eq!(listed["actions"].as_array().map(Vec::len), Some(2));
    assert_eq!(runs(&w).len(), 1, "one run for one episode");

    // A later episode with the same fingerprint sees what was tried and how it went.
    agent.window(&w.http, json!({"fs.root.used_pct": 55.0}), &[]);
    agent.window(&w.http, json!({"fs.root.used_pct": 96.0}), &[]);
    let second = wait_run(&w, "disk_full", "awaiting_approval");
    assert_ne!(second["run_id"], closed["run_id"]);
    assert_eq!(second["fingerprint"], closed["fingerprint"]);
    let hyp = artifact(&w, link(&second, "root_cause_hypothesis"));
    let prior = hyp["body"]["prior"].as_array().expect("prior");
    let tried: Vec<(&str, &str)> = prior
        .iter()
        .map(|p| {
            (
                p["action"].as_str().expect("a"),
                p["verdict"].as_str().expect("v"),
            )
        })
        .collect();
    assert_eq!(
        tried,
        vec![
            ("collect_evidence", "improved"),
            ("rotate_logs", "improved")
        ]
    );
    assert!(prior.iter().all(|p| p["run_id"] == closed["run_id"]));
}

#[tokio::test]
async fn memory_pressure_under_the_default_policy_dry_runs_and_says_nothing_changed() {
    let w = world("acme").await;
    let mut agent = Agent::enroll(&w.http, &w.token);
    agent.window(&w.http, json!({"mem.used_pct": 96.0}), &[]);
    let run = wait_run(&w, "memory_pressure", "awaiting_approval");
    let id = run["run_id"].as_str().expect("id").to_owned();
    let plan = artifact(&w, link(&run, "execution_plan"));
    assert_eq!(plan["body"]["decisions"][1]["action"], "signal_process");
    assert_eq!(
        plan["body"]["decisions"][1]["verdict"], "block",
        "impactful: blocked by default"
    );
    approve(&w, &id);
    let actions = agent.run_actions(&w.http, "succeeded", 1);
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0]["mode"], "dry_run", "dry-run is the default");
    wait_run(&w, "memory_pressure", "verifying");
    agent.window(&w.http, json!({"mem.used_pct": 96.5}), &[]);
    let closed = wait_run(&w, "memory_pressure", "closed");
    let v = artifact(&w, link(&closed, "verification_result"));
    assert_eq!(v["body"]["verdict"], "unchanged", "{v}");
    assert!(v["body"]["why"]
        .as_str()
        .expect("why")
        .contains("no action changed the host"));
    let result = artifact(&w, link(&closed, "execution_result"));
    let states: Vec<&str> = result["body"]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["state"].as_str().expect("s"))
        .collect();
    assert_eq!(states, vec!["dry_run", "skipped"]);
}

/// One scenario through the whole chain: fault -> top hypothesis -> proposal ->
/// the default policy stops at approval -> approved -> the actions reach the agent
/// once -> recovery telemetry -> the verifier's verdict -> a report of every artifact.
#[allow(clippy::too_many_arguments, reason = "one argument per scenario fact")]
async fn scenario(
    w: &World,
    agent: &mut Agent,
    fault: Value,
    events: &[&str],
    family: &str,
    rule: &str,
    actions: &[&str],
    recovered: Value,
    verdict: &str,
) {
    agent.window(&w.http, fault, events);
    let run = wait_run(w, family, "awaiting_approval");
    let id = run["run_id"].as_str().expect("id").to_owned();
    let hyp = artifact(w, link(&run, "root_cause_hypothesis"));
    assert_eq!(hyp["body"]["hypotheses"][0]["rule"], rule, "{family}");
    assert_eq!(
        agent.poll(&w.http, vec![], vec![])["actions"],
        json!([]),
        "{family}: nothing before approval"
    );
    approve(w, &id);
    let got = agent.run_actions(&w.http, "succeeded", actions.len());
    let kinds: Vec<&str> = got
        .iter()
        .map(|a| a["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, actions, "{family}");
    wait_run(w, family, "verifying");
    agent.window(&w.http, recovered, &[]);
    let closed = wait_run(w, family, "closed");
    let v = artifact(w, link(&closed, "verification_result"));
    assert_eq!(v["body"]["verdict"], verdict, "{family}: {v}");
    let outcome = if verdict == "improved" {
        "resolved"
    } else {
        verdict
    };
    assert_eq!(closed["outcome"], outcome);
    assert_eq!(chain_kinds(&closed), FULL_CHAIN.to_vec(), "{family}");
}

#[tokio::test]
async fn gpu_xid_llm_429_and_crash_loop_scenarios_and_rejected_and_expired_plans() {
    let w = world("acme").await;
    set_policy(&w, json!({"dry_run": false, "approval_ttl_s": 600}));
    let mut agent = Agent::enroll(&w.http, &w.token);

    // A fake GPU XID report: the destructive reset is blocked; evidence is
    // collected. The errors stop, but no step changed the host: not credited.
    scenario(
        &w,
        &mut agent,
        json!({"gpu.xid_errors": 2.0}),
        &["gpu_xid"],
        "gpu_xid",
        "gpu_xid",
        &["collect_evidence"],
        json!({"gpu.xid_errors": 0.0}),
        "inconclusive",
    )
    .await;
    let gpu = runs(&w)
        .into_iter()
        .find(|r| r["family"] == "gpu_xid")
        .expect("gpu run");
    let plan = artifact(&w, link(&gpu, "execution_plan"));
    assert_eq!(plan["body"]["decisions"][1]["action"], "reset_gpu");
    assert_eq!(plan["body"]["decisions"][1]["verdict"], "block");

    // An LLM endpoint answering 429s: evidence only (the agent has no client
    // rate limit it could apply and undo), so the recovery is not credited.
    scenario(
        &w,
        &mut agent,
        json!({"llm.errors_429": 40.0, "llm.calls": 50.0}),
        &[],
        "llm_errors",
        "llm_error_storm",
        &["collect_evidence"],
        json!({"llm.errors_429": 0.0, "llm.calls": 48.0}),
        "inconclusive",
    )
    .await;

    // A crash-looping unit: its journal is collected; stopping it is impactful, so blocked.
    scenario(
        &w,
        &mut agent,
        json!({"svc.restarts.systemd:chat.service": 6.0}),
        &[],
        "crash_loop",
        "crash_loop",
        &["collect_evidence"],
        json!({"svc.restarts.systemd:chat.service": 0.0}),
        "inconclusive",
    )
    .await;
    let cl = runs(&w)
        .into_iter()
        .find(|r| r["family"] == "crash_loop")
        .expect("crash run");
    let hyp = artifact(&w, link(&cl, "root_cause_hypothesis"));
    assert_eq!(
        hyp["body"]["hypotheses"][0]["subject"],
        "systemd:chat.service"
    );

    // A rejected plan closes with a report and nothing reaches the agent.
    agent.window(&w.http, json!({"cpu.busy_pct": 99.0}), &[]);
    let cpu = wait_run(&w, "cpu_saturation", "awaiting_approval");
    let cpu_id = cpu["run_id"].as_str().expect("id");
    let r = w.http.post(
        &format!("/v1/runs/{cpu_id}/reject"),
        Some(&w.key),
        &json!({"comment": "batch job, expected"}),
    );
    assert_eq!(r.status, 200, "{:?}", r.json);
    let closed = wait_run(&w, "cpu_saturation", "closed");
    assert_eq!(closed["outcome"], "rejected");
    assert_eq!(closed["approval"]["decision"], "rejected");
    assert_eq!(
        chain_kinds(&closed).last().map(String::as_str),
        Some("incident_report")
    );

    // A plan nobody approves in time: the run expires.
    set_policy(&w, json!({"approval_ttl_s": 2}));
    agent.window(&w.http, json!({"psi.io.full_avg10": 60.0}), &[]);
    let io = wait_run(&w, "io_stall", "closed");
    assert_eq!(io["outcome"], "expired");
    assert_eq!(agent.poll(&w.http, vec![], vec![])["actions"], json!([]));
    let audit = w.http.get("/v1/audit", Some(&w.key)).json;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["action"].as_str().expect("a"))
        .collect();
    for want in [
        "approval_expired",
        "plan_rejected",
        "plan_approved",
        "policy_set",
    ] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
}

#[tokio::test]
async fn a_poison_message_ends_in_the_dlq_and_fails_its_run() {
    let w = world("acme").await;
    let mut agent = Agent::enroll(&w.http, &w.token);
    agent.window(&w.http, json!({"cpu.busy_pct": 99.0}), &[]);
    let run = wait_run(&w, "cpu_saturation", "awaiting_approval");
    let id = run["run_id"].as_str().expect("id");
    let forged = format!("art_{}", "0".repeat(64));
    let sqs = w.stack.sqs();
    let (url, dlq) = w.stack.stage_queues["executor"].clone();
    // One batch: three good messages (an executor check of a run that awaits
    // approval: handled, nothing to do) around one poison message (an artifact
    // that is not part of the run).
    let good = json!({"type": "actions_changed", "tenant": "acme", "run_id": id}).to_string();
    let poison = json!({"type": "artifact", "tenant": "acme", "run_id": id, "artifact_id": forged})
        .to_string();
    let entry = |i: usize, body: &str| {
        aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
            .id(format!("m{i}"))
            .message_body(body)
            .build()
            .expect("entry")
    };
    let sent = sqs
        .send_message_batch()
        .queue_url(url)
        .entries(entry(0, &good))
        .entries(entry(1, &poison))
        .entries(entry(2, &good))
        .entries(entry(3, &good))
        .send()
        .await
        .expect("send batch");
    let ids: Vec<String> = sent
        .successful()
        .iter()
        .map(|e| e.message_id().to_owned())
        .collect();
    assert_eq!(ids.len(), 4);
    let failed = wait_run(&w, "cpu_saturation", "failed");
    let reason = failed["failure"]["reason"].as_str().expect("reason");
    assert!(
        reason.contains("executor gave up after 3 tries") && reason.contains("cannot handle"),
        "{reason}"
    );
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let got = sqs
            .receive_message()
            .queue_url(&dlq)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        if let Some(m) = got.messages().first() {
            assert!(m.body().unwrap_or_default().contains(&forged));
            assert_eq!(m.message_id(), Some(ids[1].as_str()));
            break;
        }
        assert!(
            Instant::now() < until,
            "the poison message never reached the DLQ"
        );
    }
    // Each good message was handled exactly once, on its first delivery; the
    // poison one failed on each of its three.
    let lines = w.runner.log_lines("executor");
    let of = |id: &str| -> Vec<(String, u64)> {
        let mut seen: Vec<(String, u64)> = lines
            .iter()
            .filter(|l| l["message_id"] == id && l["outcome"].is_string())
            .map(|l| {
                (
                    l["outcome"].as_str().unwrap_or_default().to_owned(),
                    l["receive_count"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        // Two instances write two files: order by delivery.
        seen.sort_by_key(|(_, n)| *n);
        seen
    };
    for good in [&ids[0], &ids[2], &ids[3]] {
        assert_eq!(of(good), vec![("ok".to_owned(), 1)], "good message {good}");
    }
    assert_eq!(
        of(&ids[1]),
        vec![
            ("failed".to_owned(), 1),
            ("failed".to_owned(), 2),
            ("failed".to_owned(), 3)
        ]
    );
}

#[tokio::test]
async fn a_runner_killed_mid_chain_resumes_on_redelivery_without_duplicates() {
    let mut w = world("acme").await;
    set_policy(&w, json!({"dry_run": false, "require_approval": false}));
    let mut agent = Agent::enroll(&w.http, &w.token);
    agent.window(&w.http, json!({"psi.io.full_avg10": 55.0}), &[]);
    // Kill the runner while the chain is in flight, then restart it.
    std::thread::sleep(Duration::from_millis(400));
    w.runner.kill();
    w.runner.restart();
    w.http = w.runner.http();
    // The killed runner's consumers may have had a long poll (1 s) open: SQS can
    // hand a new message to it, and then that message stays invisible for the
    // queue's visibility timeout (at-least-once delivery, redelivered later).
    // Telemetry sent after that window reaches the new runner at once.
    std::thread::sleep(Duration::from_millis(1500));
    let actions = agent.run_actions(&w.http, "succeeded", 1);
    assert_eq!(
        actions.len(),
        1,
        "one action despite the crash: {actions:?}"
    );
    wait_run(&w, "io_stall", "verifying");
    agent.window(&w.http, json!({"psi.io.full_avg10": 3.0}), &[]);
    let closed = wait_run(&w, "io_stall", "closed");
    let verification = artifact(&w, link(&closed, "verification_result"));
    // Only evidence ran: the stall cleared, credited to no action.
    assert_eq!(closed["outcome"], "inconclusive", "{verification}");
    assert_eq!(chain_kinds(&closed), FULL_CHAIN.to_vec());
    assert_eq!(runs(&w).len(), 1);
    let listed = w.http.get("/v1/actions", Some(&w.key)).json;
    assert_eq!(listed["actions"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn bad_input_on_incident_routes_gets_a_stable_error_and_changes_nothing() {
    let w = world("acme").await;
    let mut agent = Agent::enroll(&w.http, &w.token);
    agent.window(&w.http, json!({"cpu.busy_pct": 99.0}), &[]);
    let run = wait_run(&w, "cpu_saturation", "awaiting_approval");
    let id = run["run_id"].as_str().expect("id").to_owned();
    let approve_path = format!("/v1/runs/{id}/approve");
    let operator = w
        .http
        .post("/v1/api-keys", Some(&w.key), &json!({"role": "operator"}));
    let operator_key = operator.json["key"].as_str().expect("key").to_owned();
    let before = w.stack.table_snapshot().await;

    let (head, last) = w.key.split_at(w.key.len() - 1);
    let forged = format!("{head}{}", if last == "0" { "1" } else { "0" });
    let cases: Vec<(&str, tether_e2e::http::Reply, u16, &str)> = vec![
        (
            "no credential",
            w.http.get("/v1/runs", None),
            401,
            "unauthenticated",
        ),
        (
            "forged key",
            w.http.get("/v1/runs", Some(&forged)),
            401,
            "invalid_credential",
        ),
        (
            "agent credential",
            w.http.get("/v1/runs", Some(&agent.credential)),
            401,
            "unauthenticated",
        ),
        (
            "malformed json",
            w.http
                .post_raw(&approve_path, Some(&w.key), b"{\"comment\":"),
            400,
            "malformed_json",
        ),
        (
            "unknown field",
            w.http
                .post(&approve_path, Some(&w.key), &json!({"approve": true})),
            400,
            "invalid_request",
        ),
        (
            "oversized",
            w.http.post_raw(
                &approve_path,
                Some(&w.key),
                format!(
                    "{{\"comment\":\"{}\"}}",
                    "x".repeat(tether_proto::MAX_REQUEST_BYTES)
                )
                .as_bytes(),
            ),
            413,
            "body_too_large",
        ),
        (
            "long comment",
            w.http.post(
                &approve_path,
                Some(&w.key),
                &json!({"comment": "x".repeat(1001)}),
            ),
            400,
            "invalid_request",
        ),
        (
            "unknown run",
            w.http.post(
                "/v1/runs/run_000000000000000000000000/approve",
                Some(&w.key),
                &json!({}),
            ),
            404,
            "not_found",
        ),
        (
            "bad artifact id",
            w.http.get("/v1/artifacts/../../etc", Some(&w.key)),
            404,
            "not_found",
        ),
        (
            "artifact id shape",
            w.http.get("/v1/artifacts/art_xyz", Some(&w.key)),
            400,
            "invalid_request",
        ),
        (
            "policy by an operator",
            w.http.put(
                "/v1/policy",
                Some(&operator_key),
                &json!({"settings": {"dry_run": false}}),
            ),
            403,
            "forbidden",
        ),
        (
            "policy that does not compile",
            w.http.put(
                "/v1/policy",
                Some(&w.key),
                &json!({"rego": "package tether.gate\ndecision := {"}),
            ),
            400,
            "invalid_request",
        ),
        (
            "policy without a decision",
            w.http.put(
                "/v1/policy",
                Some(&w.key),
                &json!({"rego": "package other\nx := 1"}),
            ),
            400,
            "invalid_request",
        ),
        (
            "policy of the wrong type",
            w.http.put(
                "/v1/policy",
                Some(&w.key),
                &json!({"settings": {"dry_run": "no"}}),
            ),
            400,
            "invalid_request",
        ),
    ];
    for (what, r, status, code) in cases {
        assert_eq!((r.status, r.code()), (status, code), "{what}: {:?}", r.json);
        assert!(
            !r.json["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{what}"
        );
    }
    assert_eq!(
        w.stack.table_snapshot().await,
        before,
        "bad input changed state"
    );
    let policy = w.http.get("/v1/policy", Some(&w.key)).json;
    assert_eq!(policy["rego"], Value::Null, "still the default policy");
    let still = w.http.get(&format!("/v1/runs/{id}"), Some(&w.key)).json;
    assert_eq!(still["status"], "awaiting_approval");
}

fn tetherctl(w: &World, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(tether_e2e::workspace_bin("tetherctl"))
        .args(["--url", &w.runner.url, "--token", &w.key])
        .args(args)
        .env("HOME", std::env::temp_dir())
        .output()
        .expect("run tetherctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn tetherctl_lists_shows_the_timeline_and_approves() {
    let w = world("acme").await;
    set_policy(&w, json!({"dry_run": false}));
    let mut agent = Agent::enroll(&w.http, &w.token);
    agent.window(&w.http, json!({"gpu.0.temp_c": 93.0}), &[]);
    let run = wait_run(&w, "gpu_thermal", "awaiting_approval");
    let id = run["run_id"].as_str().expect("id");

    let (code, out, err) = tetherctl(&w, &["-o", "json", "runs"]);
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(listed["runs"][0]["run_id"], id);

    let (code, out, err) = tetherctl(&w, &["runs", "show", id]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "observation_summary",
        "gpu_thermal gpu.0.temp_c = 93",
        "GPU thermal throttling",
        "set_gpu_power_limit [reversible]",
        "set_gpu_power_limit -> require_approval (execute)",
        "awaiting approval: tetherctl runs approve",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let (code, out, err) = tetherctl(&w, &["runs", "approve", id, "--comment", "cap it"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("plan approved by key:"), "{out}");
    let (code, _, err) = tetherctl(&w, &["runs", "approve", id]);
    assert_eq!(code, 1, "a second approval is an API error: {err}");
    assert!(err.contains("conflict"), "{err}");
    let (code, _, err) = tetherctl(&w, &["runs", "show", "run_000000000000000000000000"]);
    assert_eq!(code, 4, "{err}");
    let (code, out, err) = tetherctl(&w, &["audit"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("plan_approved") && out.contains("cap it"),
        "{out}"
    );
    // The action made it worse: the verifier queues the rollback step.
    agent.run_actions(&w.http, "succeeded", 2);
    wait_run(&w, "gpu_thermal", "verifying");
    agent.window(&w.http, json!({"gpu.0.temp_c": 99.0}), &[]);
    let closed = wait_run(&w, "gpu_thermal", "closed");
    assert_eq!(closed["outcome"], "worse");
    let v = artifact(&w, link(&closed, "verification_result"));
    assert_eq!(v["body"]["verdict"], "worse", "{v}");
    assert!(
        v["body"]["rollback"]
            .as_str()
            .expect("rollback")
            .contains("restore_gpu_power_limit"),
        "{v}"
    );
    let rollback = agent.run_actions(&w.http, "succeeded", 1);
    assert_eq!(rollback[0]["kind"], "restore_gpu_power_limit");
    assert_eq!(rollback[0]["payload"], json!({"gpu": "gpu0"}));
    assert!(rollback[0]["idempotency_key"]
        .as_str()
        .expect("key")
        .ends_with(":102"));
    let (code, out, _) = tetherctl(&w, &["runs", "show", id]);
    assert_eq!(code, 0);
    assert!(
        out.contains("worse: gpu.0.temp_c rose from 93.0 to 99.0"),
        "{out}"
    );
}

#[tokio::test]
async fn the_console_shows_the_chain_and_approves_in_a_real_browser() {
    use std::io::{BufRead, BufReader, Read};
    let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: bin/test installs it (npm ci --prefix tests/browser)"
    );
    let w = world("acme").await;
    set_policy(&w, json!({"dry_run": false, "allow_destructive": true}));
    let mut agent = Agent::enroll(&w.http, &w.token);
    agent.kinds = Some(vec!["collect_evidence", "rotate_logs"]);
    agent.window(&w.http, json!({"fs.var.used_pct": 70.0}), &[]);
    agent.window(&w.http, json!({"fs.var.used_pct": 96.0}), &[]);
    let run = wait_run(&w, "disk_full", "awaiting_approval");
    let id = run["run_id"].as_str().expect("id").to_owned();
    let shots = tether_e2e::bin_dir().join("screenshots/incident");
    let _ = std::fs::remove_dir_all(&shots);
    let mut node = std::process::Command::new("node")
        .arg(browser_dir.join("incident.mjs"))
        .args([w.runner.url.as_str(), w.key.as_str(), id.as_str()])
        .arg(&shots)
        .arg("rotate_logs → require_approval")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node (Node.js) on PATH");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let mut out = String::new();
    for line in lines.by_ref().map_while(Result::ok) {
        out.push_str(&line);
        out.push('\n');
        if line == "APPROVED" {
            break;
        }
    }
    if out.contains("APPROVED") {
        // The agent's side: run what the approval queued, then report a fuller disk.
        let actions = agent.run_actions(&w.http, "succeeded", 2);
        assert_eq!(actions.len(), 2, "{actions:?}");
        wait_run(&w, "disk_full", "verifying");
        agent.window(&w.http, json!({"fs.var.used_pct": 55.0}), &[]);
    }
    for line in lines.map_while(Result::ok) {
        out.push_str(&line);
        out.push('\n');
    }
    let status = node.wait().expect("node finished");
    let mut err = String::new();
    node.stderr.take().map(|mut s| s.read_to_string(&mut err));
    assert!(
        status.success() && out.contains("PASSED"),
        "browser test failed:\n{out}\n{err}"
    );
    for name in [
        "05-incidents.png",
        "06-incident-awaiting.png",
        "07-incident-closed.png",
        "08-audit.png",
    ] {
        let png = std::fs::read(shots.join(name)).unwrap_or_default();
        assert!(
            png.len() > 1000 && png.starts_with(b"\x89PNG"),
            "{name} is not a screenshot"
        );
    }
    let closed = wait_run(&w, "disk_full", "closed");
    assert_eq!(closed["approval"]["comment"], "approved from the console");
    assert_eq!(closed["outcome"], "resolved");
}

/// A stand-in OpenAI-compatible endpoint: answers every chat completion with a
/// fixed sentence (or a 500) and keeps the request bodies it saw.
fn llm_endpoint(fail: bool) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut len = 0usize;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 2 {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            keep.lock()
                .expect("lock")
                .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            let (status, answer) = if fail {
                (
                    "500 Internal Server Error",
                    json!({"error": {"message": "overloaded"}}),
                )
            } else {
                (
                    "200 OK",
                    json!({"id": "chatcmpl-1", "object": "chat.completion", "model": "test-model",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "The root filesystem is filling up; check the largest log directories first."}}],
                    "usage": {"prompt_tokens": 60, "completion_tokens": 14, "total_tokens": 74}}),
                )
            };
            let text = answer.to_string();
            let mut s = stream;
            let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}", text.len());
        }
    });
    (url, seen)
}

#[tokio::test]
async fn an_optional_llm_rewords_the_hypothesis_but_never_decides() {
    for fail in [false, true] {
        let (url, seen) = llm_endpoint(fail);
        let w = world_with(
            "acme",
            &[
                ("TETHER_LLM_URL", url.as_str()),
                ("TETHER_LLM_MODEL", "test-model"),
            ],
        )
        .await;
        let mut agent = Agent::enroll(&w.http, &w.token);
        agent.window(&w.http, json!({"fs.root.used_pct": 99.0}), &[]);
        let run = wait_run(&w, "disk_full", "awaiting_approval");
        let hyp = artifact(&w, link(&run, "root_cause_hypothesis"));
        assert_eq!(
            hyp["body"]["hypotheses"][0]["rule"], "disk_full",
            "ranking is the catalog's"
        );
        let requests = seen.lock().expect("lock").clone();
        assert_eq!(requests.len(), 1, "one call per run");
        assert_eq!(requests[0]["model"], "test-model");
        let prompt = requests[0]["messages"][0]["content"]
            .as_str()
            .expect("prompt");
        assert!(
            prompt.contains("Filesystem nearly full") && prompt.contains("fs.root.used_pct = 99.0"),
            "{prompt}"
        );
        if fail {
            assert_eq!(
                hyp["body"]["enrichment"],
                Value::Null,
                "a failing LLM only leaves the wording out"
            );
        } else {
            assert_eq!(
                hyp["body"]["enrichment"],
                "The root filesystem is filling up; check the largest log directories first."
            );
        }
        let plan = artifact(&w, link(&run, "execution_plan"));
        assert_eq!(
            plan["body"]["decisions"][2]["verdict"], "block",
            "policy is unchanged by the wording"
        );
    }
}

/// `GET /v1/status`: every dependency checked, every queue's depth and its
/// dead-letter queue's; a message in a DLQ makes the report `degraded`. Admin
/// only; bad credentials change nothing.
#[tokio::test]
async fn status_reports_dependencies_and_queue_depths_to_admins_only() {
    let w = world("ops").await;
    let r = w.http.get("/v1/status", Some(&w.key));
    assert_eq!(r.status, 200, "{:?}", r.json);
    let report: tether_proto::operator::StatusReport =
        serde_json::from_value(r.json.clone()).expect("status report");
    assert_eq!(report.status, "ok", "{:?}", r.json);
    let deps: Vec<(&str, bool)> = report
        .dependencies
        .iter()
        .map(|d| (d.name.as_str(), d.ok))
        .collect();
    assert_eq!(
        deps,
        vec![
            ("dynamodb", true),
            ("secretsmanager", true),
            ("sqs", true),
            ("cloudwatch", true)
        ]
    );
    let names: Vec<&str> = report.queues.iter().map(|q| q.name.as_str()).collect();
    for q in std::iter::once("observations").chain(tether_e2e::stack::STAGE_QUEUES) {
        assert!(names.contains(&q), "{q} missing from {names:?}");
    }
    // No CloudWatch datapoint (the emulator publishes no SQS metrics): the age is
    // unknown, not zero.
    assert!(
        report.queues.iter().all(|q| q.oldest_age_s.is_none()),
        "{:?}",
        r.json
    );

    // The datapoint SQS would publish for the analyzer queue: AWS/SQS
    // ApproximateAgeOfOldestMessage by QueueName. Put here because only AWS
    // publishes it; the route must find it under the queue's SQS name.
    let (analyzer_url, _) = w.stack.stage_queues["analyzer"].clone();
    let sqs_name = analyzer_url
        .rsplit('/')
        .next()
        .expect("queue name")
        .to_owned();
    w.stack
        .cloudwatch()
        .put_metric_data()
        .namespace("AWS/SQS")
        .metric_data(
            aws_sdk_cloudwatch::types::MetricDatum::builder()
                .metric_name("ApproximateAgeOfOldestMessage")
                .dimensions(
                    aws_sdk_cloudwatch::types::Dimension::builder()
                        .name("QueueName")
                        .value(sqs_name)
                        .build(),
                )
                .value(417.0)
                .unit(aws_sdk_cloudwatch::types::StandardUnit::Seconds)
                .timestamp(aws_smithy_types::DateTime::from_millis(
                    tether_e2e::now_ms() as i64 - 30_000,
                ))
                .build(),
        )
        .send()
        .await
        .expect("put metric");
    let r = w.http.get("/v1/status", Some(&w.key));
    let report: tether_proto::operator::StatusReport =
        serde_json::from_value(r.json.clone()).expect("status report");
    let ages: Vec<(&str, Option<u64>)> = report
        .queues
        .iter()
        .map(|q| (q.name.as_str(), q.oldest_age_s))
        .filter(|(_, a)| a.is_some())
        .collect();
    assert_eq!(ages, vec![("analyzer", Some(417))], "{:?}", r.json);

    // A dead-lettered message: the executor's DLQ holds it.
    let sqs = w.stack.sqs();
    let (_, dlq) = w.stack.stage_queues["executor"].clone();
    sqs.send_message()
        .queue_url(dlq)
        .message_body("{}")
        .send()
        .await
        .expect("send");
    let r = w.http.get("/v1/status", Some(&w.key));
    assert_eq!(r.status, 200);
    assert_eq!(r.json["status"], "degraded");
    let executor = r.json["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["name"] == "executor"))
        .cloned()
        .expect("executor queue");
    assert_eq!(executor["dlq_visible"], 1, "{executor}");

    // A viewer is refused; so are a missing and a forged credential.
    let viewer = w.http.post(
        "/v1/api-keys",
        Some(&w.key),
        &json!({"role": "viewer", "description": "read-only"}),
    );
    assert_eq!(viewer.status, 201, "{:?}", viewer.json);
    let viewer_key = viewer.json["key"].as_str().expect("key").to_owned();
    let r = w.http.get("/v1/status", Some(&viewer_key));
    assert_eq!(
        (r.status, r.json["error"]["code"].clone()),
        (403, json!("forbidden"))
    );
    let r = w.http.get("/v1/status", None);
    assert_eq!(r.status, 401);
    let last = if w.key.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &w.key[..w.key.len() - 1]);
    let r = w.http.get("/v1/status", Some(&forged));
    assert_eq!(r.status, 401);
}
