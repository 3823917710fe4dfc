//! The web console in a real browser: headless Chromium (Debian's) driven by
//! playwright-core (`tests/browser/console.mjs`) against the real control plane on
//! the emulator, with a real `tether-agent` (as root, with eBPF) beside a real
//! LLM client (the official `openai` package over HTTPS): the operator's toggle
//! becomes an `instrument` action, the agent attaches its probes, and spans of
//! the client's calls reach an OTLP receiver. Screenshots of each page land in
//! `target/debug/screenshots/`.

use serde_json::json;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use tether_e2e::llm::{
    agent_config, openai_client, require_root, service_of, spans, wait_for, world,
};
use tether_e2e::{Emulator, Runner, Stack};

/// `tests/browser`, with playwright-core installed (bin/test does it).
fn browser_dir() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: bin/test installs it (npm ci --prefix tests/browser)"
    );
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_flips_instrumentation_in_the_console_and_the_agent_gets_it() {
    require_root();
    let browser_dir = browser_dir();
    let w = world();
    let emu = Emulator::shared();
    let stack = Stack::create(emu).await;
    let runner = Runner::start(emu, &stack, &[("TETHER_POLL_INTERVAL_MS", "1000")]);
    let (key, token) = runner.bootstrap("console");
    let http = runner.http();

    // A real agent (eBPF on: the test runs as root) and a real LLM client.
    let agent = agent_config(&runner, &token, &w, json!({}));
    agent.enroll();
    let _running = agent.run(&[]);
    let (client, _) = openai_client(&w, "gpt-4o-mini", false, "console");
    let svc = wait_for("the LLM client reported", 60, || {
        service_of(&http, &key, client.pid())
    });
    let workload = svc["workload_key"].as_str().expect("workload").to_owned();
    let agent_id = http.get("/v1/agents", Some(&key)).json["agents"][0]["agent_id"]
        .as_str()
        .expect("agent id")
        .to_owned();

    let shots = tether_e2e::bin_dir().join("screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let mut node = Command::new("node")
        .arg(browser_dir.join("console.mjs"))
        .args([
            runner.url.as_str(),
            key.as_str(),
            agent_id.as_str(),
            workload.as_str(),
        ])
        .arg(&shots)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node (Node.js) on PATH");
    let status = node.wait().expect("node finished");
    let (mut out, mut err) = (String::new(), String::new());
    node.stdout.take().map(|mut s| s.read_to_string(&mut out));
    node.stderr.take().map(|mut s| s.read_to_string(&mut err));
    assert!(
        status.success(),
        "browser test failed:\n{out}\n{err}\nagent log:\n{}",
        agent.log()
    );
    assert!(
        out.contains("TOGGLED") && out.contains("PASSED"),
        "{out}\n{err}"
    );

    for name in [
        "01-signin.png",
        "02-fleet.png",
        "03-services.png",
        "04-actions.png",
    ] {
        let png = std::fs::read(shots.join(name)).unwrap_or_default();
        assert!(
            png.len() > 1000 && png.starts_with(b"\x89PNG"),
            "{name} is not a screenshot"
        );
    }
    // What the browser did is what the control plane recorded.
    let desired = http.get("/v1/desired", Some(&key));
    assert_eq!(
        desired.json["workloads"][0]["instrumentation"],
        "instrumented"
    );
    let actions = http.get("/v1/actions", Some(&key));
    assert_eq!(actions.json["actions"][0]["kind"], "instrument");
    assert_eq!(actions.json["actions"][0]["state"], "succeeded");
    // The toggle reached a real agent: the client's calls are now spans.
    let got = wait_for("spans of the instrumented client", 60, || {
        let s = spans(&w);
        s.iter()
            .any(|x| x.pid == u64::from(client.pid()))
            .then_some(s)
    });
    let span = got
        .iter()
        .find(|x| x.pid == u64::from(client.pid()))
        .expect("span");
    assert_eq!(span.attrs["gen_ai.request.model"], "gpt-4o-mini");
    assert_eq!(span.attrs["tether.workload_key"], workload.as_str());
    let page = http.get("/console/", None);
    assert_eq!(page.status, 200);
}

/// The whole loop with real parts only: a real `openai` client nobody
/// instruments, seen by a real agent, opens an incident; the operator approves
/// its plan in the console; the executor hands `instrument` to the agent, which
/// attaches its probes; the verifier reads the agent's next windows and closes
/// the run as improved, while the client's calls become spans.
#[tokio::test(flavor = "multi_thread")]
async fn a_real_agents_incident_is_approved_in_the_console_and_verified() {
    require_root();
    let browser_dir = browser_dir();
    let w = world();
    let emu = Emulator::shared();
    let stack = Stack::create_with_chain(emu, 3).await;
    let runner = Runner::start(
        emu,
        &stack,
        &[
            ("TETHER_POLL_INTERVAL_MS", "1000"),
            ("TETHER_VERIFY_DELAY_S", "3"),
            ("TETHER_CHECK_ACTIONS_S", "2"),
            ("TETHER_LOCAL_RETRY_S", "1"),
        ],
    );
    let (key, token) = runner.bootstrap("incident-real");
    let http = runner.http();
    let policy = http.put(
        "/v1/policy",
        Some(&key),
        &json!({"settings": {"dry_run": false}}),
    );
    assert_eq!(policy.status, 200, "{:?}", policy.json);

    let (client, _) = openai_client(&w, "gpt-4o-mini", false, "incident");
    let agent = agent_config(&runner, &token, &w, json!({}));
    agent.enroll();
    let _running = agent.run(&[]);
    let svc = wait_for("the LLM client reported", 60, || {
        service_of(&http, &key, client.pid())
    });
    let workload = svc["workload_key"].as_str().expect("workload").to_owned();
    let run = wait_for("an llm_uninstrumented run awaiting approval", 90, || {
        let runs = http.get("/v1/runs", Some(&key)).json;
        runs["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["family"] == "llm_uninstrumented" && r["status"] == "awaiting_approval")
            .cloned()
    });
    let id = run["run_id"].as_str().expect("run id").to_owned();

    let shots = tether_e2e::bin_dir().join("screenshots/incident-real");
    let _ = std::fs::remove_dir_all(&shots);
    let node = Command::new("node")
        .arg(browser_dir.join("incident.mjs"))
        .args([runner.url.as_str(), key.as_str(), id.as_str()])
        .arg(&shots)
        .arg("instrument → require_approval")
        .output()
        .expect("node (Node.js) on PATH");
    let (out, err) = (
        String::from_utf8_lossy(&node.stdout),
        String::from_utf8_lossy(&node.stderr),
    );
    assert!(
        node.status.success() && out.contains("PASSED"),
        "browser test failed:\n{out}\n{err}\nagent log:\n{}",
        agent.log()
    );
    let closed = http.get(&format!("/v1/runs/{id}"), Some(&key)).json;
    assert_eq!(closed["outcome"], "resolved", "{closed}");
    // The plan's action was the real thing: the workload is instrumented and
    // its calls are spans.
    let svc = service_of(&http, &key, client.pid()).expect("service");
    assert_eq!(svc["observed_instrumented"], true, "{svc}");
    wait_for("spans of the client the incident instrumented", 60, || {
        spans(&w)
            .iter()
            .any(|x| {
                x.pid == u64::from(client.pid())
                    && x.attrs["tether.workload_key"] == workload.as_str()
            })
            .then_some(())
    });
}
