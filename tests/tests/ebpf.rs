//! eBPF capture of LLM traffic, end to end, as root on this machine: the real
//! agent instruments real client processes through the control plane, attaches
//! uprobes to their libssl, and exports what it sees as OTLP spans to a local
//! receiver; the same agent without capabilities falls back and says why.
//!
//! The fixtures (`tests/fixtures/`): an HTTPS server speaking the OpenAI chat
//! completions API (plain and streamed) and the Anthropic messages API, trusted
//! through a test CA; the official `openai` Python client; `curl`; and an
//! OTLP/HTTP JSON receiver that appends every export to a file.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tether_e2e::{unique_name, workspace_bin, Emulator, Http, Runner, Stack};

fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn fixture(name: &str) -> PathBuf {
    root_dir().join("tests/fixtures").join(name)
}

/// The venv's python, which has the `openai` package (bin/test installs it).
fn python() -> PathBuf {
    let p = root_dir().join(".tether/venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: bin/test installs tests/requirements.txt into it",
        p.display()
    );
    p
}

fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("");
    assert_eq!(
        uid, "0",
        "the eBPF suite loads and attaches probes: run it as root (see ../shared/MACHINE.md)"
    );
}

fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn port_from(file: &Path) -> u16 {
    wait_for(&format!("port in {}", file.display()), 20, || {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
    })
}

/// A child process killed when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

/// Test CA, two LLM servers (one per provider port) and the OTLP receiver.
struct World {
    dir: PathBuf,
    ca: PathBuf,
    openai_port: u16,
    anthropic_port: u16,
    otlp_port: u16,
    spans_file: PathBuf,
    _procs: Vec<Proc>,
}

fn world() -> World {
    let dir = std::env::temp_dir().join(unique_name("ebpf"));
    std::fs::create_dir_all(&dir).expect("dir");
    let made = Command::new("bash")
        .arg(fixture("make_ca.sh"))
        .arg(&dir)
        .output()
        .expect("make_ca.sh");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let mut procs = Vec::new();
    let mut server = |name: &str, latency: &str| {
        let port_file = dir.join(format!("{name}.port"));
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
        procs.push(Proc(
            Command::new(python())
                .arg(fixture("llm_server.py"))
                .arg("--cert")
                .arg(dir.join("server.pem"))
                .arg("--key")
                .arg(dir.join("server.key"))
                .arg("--port-file")
                .arg(&port_file)
                .args(["--latency-ms", latency])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("llm_server.py"),
        ));
        port_from(&port_file)
    };
    let openai_port = server("openai", "50");
    let anthropic_port = server("anthropic", "30");
    let spans_file = dir.join("spans.jsonl");
    let otlp_port_file = dir.join("otlp.port");
    procs.push(Proc(
        Command::new(python())
            .arg(fixture("otlp_sink.py"))
            .arg("--port-file")
            .arg(&otlp_port_file)
            .arg("--out")
            .arg(&spans_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("otlp_sink.py"),
    ));
    let otlp_port = port_from(&otlp_port_file);
    World {
        ca: dir.join("ca.pem"),
        dir,
        openai_port,
        anthropic_port,
        otlp_port,
        spans_file,
        _procs: procs,
    }
}

/// One exported span, flattened: (resource attributes + span attributes, span).
#[derive(Debug, Clone)]
struct Exported {
    pid: u64,
    attrs: serde_json::Map<String, Value>,
    duration_ms: f64,
    status_code: i64,
}

fn value_of(v: &Value) -> Value {
    if let Some(s) = v.get("stringValue") {
        return s.clone();
    }
    if let Some(i) = v.get("intValue") {
        // OTLP JSON: int64 as a string.
        return i
            .as_str()
            .and_then(|s| s.parse::<i64>().ok())
            .map_or(i.clone(), Value::from);
    }
    v.get("boolValue").cloned().unwrap_or(Value::Null)
}

fn spans(w: &World) -> Vec<Exported> {
    let text = std::fs::read_to_string(&w.spans_file).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(req) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        for rs in req["resourceSpans"].as_array().into_iter().flatten() {
            let mut res = serde_json::Map::new();
            for kv in rs["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
            {
                res.insert(
                    kv["key"].as_str().unwrap_or("").into(),
                    value_of(&kv["value"]),
                );
            }
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    let mut attrs = res.clone();
                    for kv in s["attributes"].as_array().into_iter().flatten() {
                        attrs.insert(
                            kv["key"].as_str().unwrap_or("").into(),
                            value_of(&kv["value"]),
                        );
                    }
                    let ns = |k: &str| {
                        s[k].as_str()
                            .and_then(|v| v.parse::<u64>().ok())
                            .unwrap_or(0)
                    };
                    out.push(Exported {
                        pid: attrs
                            .get("process.pid")
                            .and_then(Value::as_u64)
                            .unwrap_or(0),
                        duration_ms: ns("endTimeUnixNano").saturating_sub(ns("startTimeUnixNano"))
                            as f64
                            / 1e6,
                        status_code: s["status"]["code"].as_i64().unwrap_or(0),
                        attrs,
                    });
                }
            }
        }
    }
    out
}

/// The official OpenAI client, calling forever; its per-call lines go to a file.
fn openai_client(w: &World, model: &str, stream: bool, tag: &str) -> (Proc, PathBuf) {
    let out = w.dir.join(format!("client-{tag}.jsonl"));
    let mut c = Command::new(python());
    c.arg(fixture("openai_client.py"))
        .args([
            "--base-url",
            &format!("https://127.0.0.1:{}/v1", w.openai_port),
        ])
        .arg("--ca")
        .arg(&w.ca)
        .args(["--model", model, "--forever", "--interval-ms", "150"])
        .stdout(std::fs::File::create(&out).expect("out"))
        .stderr(Stdio::null());
    if stream {
        c.arg("--stream");
    }
    (Proc(c.spawn().expect("openai_client.py")), out)
}

/// The slowest call the client measured itself (ms).
fn slowest_call(out: &Path) -> f64 {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["ms"].as_f64())
        .fold(0.0, f64::max)
}

struct Agent {
    config: PathBuf,
    data: PathBuf,
}

fn agent_config(runner: &Runner, token: &str, w: &World, extra: Value) -> Agent {
    let data = std::env::temp_dir().join(unique_name("ebpf-agent"));
    let config = data.with_extension("json");
    let mut c = json!({
        "server_url": runner.url,
        "enrollment_token": token,
        "data_dir": data,
        "llm_hosts": [
            format!("openai=127.0.0.1:{}", w.openai_port),
            format!("anthropic=127.0.0.1:{}", w.anthropic_port)
        ],
        "allowed_actions": ["instrument", "uninstrument"],
        "otlp_endpoint": format!("http://127.0.0.1:{}", w.otlp_port),
        "telemetry_window_s": 1,
        "max_backoff_s": 2
    });
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    std::fs::write(&config, c.to_string()).expect("config");
    Agent { config, data }
}

impl Agent {
    fn command(&self, prefix: &[&str]) -> Command {
        let mut c = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(workspace_bin("tether-agent"));
                c
            }
            None => Command::new(workspace_bin("tether-agent")),
        };
        c.arg("--config").arg(&self.config);
        c
    }

    fn enroll(&self) {
        let out = self.command(&[]).arg("enroll").output().expect("enroll");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `tether-agent run`, polling until dropped; stderr kept in the data dir.
    fn run(&self, prefix: &[&str]) -> Proc {
        let log = std::fs::File::create(self.data.with_extension("log")).expect("log");
        Proc(
            self.command(prefix)
                .arg("run")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("tether-agent run"),
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }

    fn status(&self) -> Value {
        let out = self.command(&[]).arg("status").output().expect("status");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }
}

fn service_of(http: &Http, key: &str, pid: u32) -> Option<Value> {
    http.get("/v1/services", Some(key)).json["services"]
        .as_array()
        .and_then(|v| v.iter().find(|s| s["pid"] == pid).cloned())
}

fn apply(http: &Http, key: &str, workload: &str, instrumentation: &str) {
    let r = http.post(
        "/v1/apply",
        Some(key),
        &json!({"workloads": [{"workload_key": workload, "instrumentation": instrumentation}]}),
    );
    assert_eq!(r.status, 200, "{}", r.json);
}

/// The final result of the newest action of `kind` for `workload`, once it has one.
fn final_action(http: &Http, key: &str, workload: &str, kind: &str) -> Option<Value> {
    let a = http.get("/v1/actions", Some(key));
    a.json["actions"].as_array().and_then(|v| {
        v.iter()
            .filter(|a| a["kind"] == kind && a["target"] == workload)
            .find(|a| a["result"]["status"].is_string())
            .cloned()
    })
}

fn ebpf_collector(status: &Value) -> Value {
    status["collectors"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "ebpf").cloned())
        .unwrap_or(Value::Null)
}

/// One tenant's control plane on the emulator, the fixtures, and an enrolled
/// agent configuration (not yet running).
struct Fleet {
    w: World,
    key: String,
    http: Http,
    agent: Agent,
    stack: Stack,
    // Serves until the test ends.
    _runner: Runner,
}

async fn fleet(tenant: &str) -> Fleet {
    require_root();
    let w = world();
    let emu = Emulator::shared();
    let stack = Stack::create(emu).await;
    let runner = Runner::start(emu, &stack, &[("TETHER_POLL_INTERVAL_MS", "1000")]);
    let (key, token) = runner.bootstrap(tenant);
    let agent = agent_config(&runner, &token, &w, json!({}));
    agent.enroll();
    Fleet {
        w,
        key,
        http: runner.http(),
        agent,
        stack,
        _runner: runner,
    }
}

/// The `ebpf` collector as the control plane shows it for the tenant's agent.
fn reported_ebpf(http: &Http, key: &str) -> Value {
    wait_for("the ebpf collector reported", 30, || {
        let agents = http.get("/v1/agents", Some(key));
        let c = ebpf_collector(&agents.json["agents"][0]);
        (!c.is_null()).then_some(c)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_client_is_instrumented_through_the_control_plane_and_exported_as_genai_spans() {
    let f = fleet("llm-fleet").await;
    let (w, http, agent, key) = (&f.w, &f.http, &f.agent, f.key.clone());
    let _agent = agent.run(&[]);

    // Two processes of one workload: plain calls, and calls the server rate-limits.
    let (plain, plain_out) = openai_client(w, "gpt-4o-mini", false, "plain");
    let (limited, _) = openai_client(w, "rate-limited", false, "limited");
    let svc = wait_for("the openai client discovered", 60, || {
        service_of(http, &key, plain.pid())
    });
    assert_eq!(svc["runtime"], "python");
    assert_eq!(svc["observed_instrumented"], false);
    let workload = svc["workload_key"].as_str().expect("key").to_owned();
    let collector = reported_ebpf(http, &key);
    assert_eq!(collector["state"], "ok", "{collector}\n{}", agent.log());
    assert!(spans(w).is_empty(), "nothing is captured before instrument");

    // Instrument through desired state: the control plane plans `instrument`,
    // the agent attaches to both processes' libssl.
    apply(http, &key, &workload, "instrumented");
    let done = wait_for("instrument result", 60, || {
        final_action(http, &key, &workload, "instrument")
    });
    assert_eq!(
        done["result"]["status"],
        "succeeded",
        "{done}\n{}",
        agent.log()
    );
    let message = done["result"]["message"].as_str().unwrap_or("");
    assert!(message.contains("libssl"), "{message}");
    wait_for("the service reported instrumented", 30, || {
        service_of(http, &key, plain.pid()).filter(|s| s["observed_instrumented"] == true)
    });

    // Spans: model, tokens, status, and a latency within the real one.
    let got = wait_for("spans of both processes", 60, || {
        let s = spans(w);
        let ok = s.iter().any(|x| x.pid == u64::from(plain.pid()));
        let limited = s.iter().any(|x| x.pid == u64::from(limited.pid()));
        (ok && limited).then_some(s)
    });
    let ok: Vec<&Exported> = got
        .iter()
        .filter(|x| x.pid == u64::from(plain.pid()))
        .collect();
    let slowest = slowest_call(&plain_out);
    for s in &ok {
        assert_eq!(s.attrs["gen_ai.system"], "openai", "{s:?}");
        assert_eq!(s.attrs["gen_ai.operation.name"], "chat");
        assert_eq!(s.attrs["gen_ai.request.model"], "gpt-4o-mini");
        assert_eq!(s.attrs["gen_ai.response.model"], "gpt-4o-mini");
        assert_eq!(s.attrs["gen_ai.usage.input_tokens"], 11);
        assert_eq!(s.attrs["gen_ai.usage.output_tokens"], 7);
        assert_eq!(s.attrs["http.response.status_code"], 200);
        assert_eq!(s.attrs["gen_ai.request.stream"], false);
        assert_eq!(s.attrs["tether.workload_key"], workload.as_str());
        assert_eq!(s.status_code, 0, "unset on success");
        assert!(s.duration_ms >= 50.0, "at least the server's 50 ms: {s:?}");
        assert!(
            s.duration_ms <= slowest,
            "within what the client measured ({slowest} ms): {s:?}"
        );
    }
    let err = got
        .iter()
        .find(|x| x.pid == u64::from(limited.pid()))
        .expect("a rate-limited span");
    assert_eq!(err.attrs["http.response.status_code"], 429);
    assert_eq!(err.attrs["error.type"], "rate_limit_error");
    assert_eq!(err.status_code, 2, "STATUS_CODE_ERROR");
    let text = std::fs::read_to_string(&w.spans_file).expect("spans");
    assert!(
        !text.contains("say hi") && !text.contains("hello from the fixture"),
        "prompt and completion text never leave the host"
    );

    // Summaries travel in the poll's telemetry: the incident rules' inputs.
    let windows = wait_for("a window with LLM summaries", 60, || {
        let msgs = block_on(f.stack.receive_observations(1, Duration::from_secs(2)));
        let with: Vec<Value> = msgs
            .iter()
            .flat_map(|m| m["windows"].as_array().cloned().unwrap_or_default())
            .filter(|w| w["metrics"]["llm.calls"].as_f64().unwrap_or(0.0) > 0.0)
            .collect();
        (!with.is_empty()).then_some(with)
    });
    let m = &windows[0]["metrics"];
    assert!(m["llm.p95_ms"].as_f64().unwrap_or(0.0) >= 50.0, "{m}");
    assert!(m["llm.tokens_in"].as_f64().unwrap_or(0.0) >= 11.0, "{m}");
    let by = format!("llm.by.{workload}|gpt-4o-mini.calls");
    assert!(m[by.as_str()].as_f64().unwrap_or(0.0) >= 1.0, "{by} in {m}");

    // Restart the client (a new pid of the same workload), streaming this time:
    // re-instrumented without a new operator step.
    drop(plain);
    drop(limited);
    let (streamer, stream_out) = openai_client(w, "gpt-4o", true, "stream");
    wait_for("the restarted client instrumented", 60, || {
        service_of(http, &key, streamer.pid()).filter(|s| s["observed_instrumented"] == true)
    });
    let streamed = wait_for("streamed spans of the restarted client", 60, || {
        let s: Vec<Exported> = spans(w)
            .into_iter()
            .filter(|x| x.pid == u64::from(streamer.pid()))
            .collect();
        (!s.is_empty()).then_some(s)
    });
    let slowest = slowest_call(&stream_out);
    for s in &streamed {
        assert_eq!(s.attrs["gen_ai.request.model"], "gpt-4o", "{s:?}");
        assert_eq!(s.attrs["gen_ai.request.stream"], true);
        assert_eq!(
            s.attrs["gen_ai.usage.input_tokens"], 11,
            "usage from the last event"
        );
        assert_eq!(s.attrs["gen_ai.usage.output_tokens"], 7);
        assert!(
            s.duration_ms >= 50.0 && s.duration_ms <= slowest,
            "{s:?} vs {slowest}"
        );
    }

    // Uninstrument: capture stops while the client keeps calling.
    apply(http, &key, &workload, "none");
    let un = wait_for("uninstrument result", 60, || {
        final_action(http, &key, &workload, "uninstrument")
    });
    assert_eq!(un["result"]["status"], "succeeded", "{un}");
    std::thread::sleep(Duration::from_millis(1500)); // spans in flight are exported
    let before = spans(w).len();
    let calls_before = calls_made(&stream_out);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        calls_made(&stream_out) > calls_before + 3,
        "the client kept calling"
    );
    assert_eq!(spans(w).len(), before, "no capture after uninstrument");
    let st = agent.status();
    assert_eq!(
        st["instrumentation"]["instrumented_pids"],
        json!([]),
        "{st}"
    );
    let _ = std::fs::remove_dir_all(&w.dir);
}

fn calls_made(out: &Path) -> usize {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .count()
}

/// Runs a future to completion from synchronous test code inside the runtime.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_against_an_anthropic_endpoint_is_captured() {
    let f = fleet("curl-fleet").await;
    let (w, http, agent, key) = (&f.w, &f.http, &f.agent, f.key.clone());
    let _agent = agent.run(&[]);

    // One curl process, many transfers on one keep-alive connection (4 per second).
    let url = format!("https://localhost:{}/v1/messages", w.anthropic_port);
    let body = r#"{"model":"claude-3-5-haiku-latest","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut c = Command::new("curl");
    c.args(["-sS", "--http1.1", "--rate", "4/s", "--cacert"])
        .arg(&w.ca)
        .args([
            "-H",
            "content-type: application/json",
            "-H",
            "x-api-key: test-not-a-secret",
            "-H",
            "anthropic-version: 2023-06-01",
            "-d",
            body,
        ]);
    for _ in 0..240 {
        c.arg(&url);
    }
    let curl = Proc(
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("curl"),
    );
    let svc = wait_for("curl discovered", 60, || service_of(http, &key, curl.pid()));
    let workload = svc["workload_key"].as_str().expect("key").to_owned();
    assert!(workload.ends_with("/curl"), "{workload}");
    apply(http, &key, &workload, "instrumented");
    let done = wait_for("instrument result", 60, || {
        final_action(http, &key, &workload, "instrument")
    });
    assert_eq!(
        done["result"]["status"],
        "succeeded",
        "{done}\n{}",
        agent.log()
    );
    let got = wait_for("anthropic spans", 60, || {
        let s: Vec<Exported> = spans(w)
            .into_iter()
            .filter(|x| x.pid == u64::from(curl.pid()))
            .collect();
        (s.len() >= 2).then_some(s)
    });
    for s in &got {
        assert_eq!(s.attrs["gen_ai.system"], "anthropic", "{s:?}");
        assert_eq!(s.attrs["gen_ai.request.model"], "claude-3-5-haiku-latest");
        assert_eq!(s.attrs["gen_ai.usage.input_tokens"], 13);
        assert_eq!(s.attrs["gen_ai.usage.output_tokens"], 5);
        assert_eq!(s.attrs["http.response.status_code"], 200);
        assert!(s.duration_ms >= 30.0 && s.duration_ms < 5000.0, "{s:?}");
        assert_eq!(s.attrs["service.name"], "curl");
    }
    let _ = std::fs::remove_dir_all(&w.dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_capabilities_the_agent_falls_back_and_says_why() {
    let f = fleet("no-caps").await;
    let (w, http, agent, key) = (&f.w, &f.http, &f.agent, f.key.clone());
    // Root's uid, no capabilities at all: as in a container without CAP_BPF.
    let drop_caps = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"];
    let _agent = agent.run(&drop_caps);
    // The workload runs without capabilities too (a process with more
    // capabilities than the agent hides its sockets from it).
    let client = Proc(
        Command::new("setpriv")
            .args(["--inh-caps=-all", "--bounding-set=-all", "--"])
            .arg(python())
            .arg(fixture("openai_client.py"))
            .args([
                "--base-url",
                &format!("https://127.0.0.1:{}/v1", w.openai_port),
            ])
            .arg("--ca")
            .arg(&w.ca)
            .args([
                "--model",
                "gpt-4o-mini",
                "--forever",
                "--interval-ms",
                "150",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("client"),
    );
    // Discovery still works, by /proc scanning.
    let svc = wait_for("the client discovered without eBPF", 60, || {
        service_of(http, &key, client.pid())
    });
    let workload = svc["workload_key"].as_str().expect("key").to_owned();
    let reason = "instrumentation unavailable: missing CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)";
    // The control plane shows the state per agent, with the precise reason.
    let collector = reported_ebpf(http, &key);
    assert_eq!(collector["state"], "unavailable", "{collector}");
    assert!(
        collector["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with(reason),
        "{collector}"
    );
    assert!(
        agent
            .log()
            .contains("eBPF instrumentation unavailable: missing CAP_BPF"),
        "{}",
        agent.log()
    );
    // The instrument action is refused with the same reason.
    apply(http, &key, &workload, "instrumented");
    let refused = wait_for("refused instrument", 60, || {
        final_action(http, &key, &workload, "instrument")
    });
    assert_eq!(refused["result"]["status"], "refused", "{refused}");
    assert_eq!(refused["result"]["message"], reason);
    let st = agent.status();
    assert_eq!(st["instrumentation"]["state"], "unavailable", "{st}");
    assert_eq!(st["health"], "healthy", "the agent keeps running: {st}");
    assert!(spans(w).is_empty());
    let _ = std::fs::remove_dir_all(&w.dir);
}
