//! The web console in a real browser: headless Chromium (Debian's) driven by
//! playwright-core (`tests/browser/console.mjs`) against the real control plane on
//! the emulator, while this test plays the agent's side of the protocol. Screenshots
//! of each page land in `target/debug/screenshots/`.

use serde_json::json;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tether_e2e::{Emulator, Http, Runner, Stack};
use tether_proto::{services_hash, Service};

const WORKLOAD: &str = "host:/usr/bin/python3";

fn service(instrumented: bool) -> Service {
    Service {
        workload_key: WORKLOAD.into(),
        pid: 4242,
        exe: "/usr/bin/python3".into(),
        runtime: "python".into(),
        llm_providers: vec!["openai".into()],
        instrumented,
        python_sdk: false,
    }
}

/// Polls like an agent until `stop`: acknowledges and completes every action it
/// receives, then reports the workload instrumented.
fn play_agent(http: Http, id: String, credential: String, stop: Arc<AtomicBool>) {
    let mut seq = 0;
    let mut services = vec![service(false)];
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let body = json!({"protocol": 1, "agent_id": id, "seq": seq, "services_hash": services_hash(&services),
            "services": services, "heartbeat": {"agent_version": "0.1.0"}, "capabilities": ["ebpf"]});
        let r = http.post("/v1/poll", Some(&credential), &body);
        assert_eq!(r.status, 200, "{:?}", r.json);
        let actions = r.json["actions"].as_array().cloned().unwrap_or_default();
        if !actions.is_empty() {
            let results: Vec<_> = actions
                .iter()
                .flat_map(|a| {
                    [
                        json!({"action_id": a["id"], "idempotency_key": a["idempotency_key"], "phase": "received"}),
                        json!({"action_id": a["id"], "idempotency_key": a["idempotency_key"], "phase": "final",
                               "status": "succeeded", "exit_code": 0, "message": "probes attached"}),
                    ]
                })
                .collect();
            seq += 1;
            services = vec![service(true)];
            let body = json!({"protocol": 1, "agent_id": id, "seq": seq, "services_hash": services_hash(&services),
                "services": services, "heartbeat": {"agent_version": "0.1.0"}, "results": results});
            assert_eq!(http.post("/v1/poll", Some(&credential), &body).status, 200);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_flips_instrumentation_in_the_console_and_the_agent_gets_it() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: bin/test installs it (npm ci --prefix tests/browser)"
    );
    let emu = Emulator::shared();
    let stack = Stack::create(emu).await;
    let runner = Runner::start(emu, &stack, &[("TETHER_POLL_INTERVAL_MS", "1000")]);
    let (key, token) = runner.bootstrap("console");
    let http = runner.http();
    let enrolled = http.post(
        "/v1/enroll",
        None,
        &json!({"token": token, "hostname": "gpu-node-7"}),
    );
    assert_eq!(enrolled.status, 201);
    let agent_id = enrolled.json["agent_id"]
        .as_str()
        .expect("agent")
        .to_owned();
    let credential = enrolled.json["credential"]
        .as_str()
        .expect("credential")
        .to_owned();

    // A real tether-agent beside the scripted one: the fleet page shows its
    // collectors (no GPU, no cgroup v2 here) as it reports them.
    let data = std::env::temp_dir().join(tether_e2e::unique_name("console-agent"));
    let config = data.with_extension("json");
    std::fs::write(
        &config,
        json!({"server_url": runner.url, "enrollment_token": token, "data_dir": data,
               "telemetry_window_s": 1})
        .to_string(),
    )
    .expect("agent config");
    let mut real = Command::new(tether_e2e::workspace_bin("tether-agent"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tether-agent");
    let real_id = {
        let until = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let agents = http.get("/v1/agents", Some(&key)).json;
            if let Some(id) = agents["agents"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["agent_id"] != agent_id.as_str())
                .and_then(|a| a["agent_id"].as_str())
            {
                break id.to_owned();
            }
            assert!(
                std::time::Instant::now() < until,
                "the real agent never enrolled"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    let stop = Arc::new(AtomicBool::new(false));
    let agent = {
        let (http, id, stop) = (runner.http(), agent_id.clone(), stop.clone());
        std::thread::spawn(move || play_agent(http, id, credential, stop))
    };
    let shots = tether_e2e::bin_dir().join("screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let mut node = Command::new("node")
        .arg(browser_dir.join("console.mjs"))
        .args([
            runner.url.as_str(),
            key.as_str(),
            agent_id.as_str(),
            WORKLOAD,
        ])
        .arg(&shots)
        .arg(&real_id)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node (Node.js) on PATH");
    let status = node.wait().expect("node finished");
    let _ = real.kill();
    let _ = real.wait();
    let (mut out, mut err) = (String::new(), String::new());
    node.stdout.take().map(|mut s| s.read_to_string(&mut out));
    node.stderr.take().map(|mut s| s.read_to_string(&mut err));
    stop.store(true, Ordering::Relaxed);
    agent.join().expect("agent thread");
    assert!(status.success(), "browser test failed:\n{out}\n{err}");
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
    let page = http.get("/console/", None);
    assert_eq!(page.status, 200);
}
