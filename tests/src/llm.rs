//! Fixtures for suites that drive real LLM traffic through the real agent: a test
//! CA, HTTPS servers speaking the OpenAI and Anthropic APIs
//! (`tests/fixtures/llm_server.py`), the official `openai` client
//! (`openai_client.py`), an OTLP/HTTP JSON receiver (`otlp_sink.py`), and helpers
//! to run `tether-agent` and read what the control plane and the receiver saw.

use crate::{unique_name, workspace_bin, Http, Runner};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

pub fn fixture(name: &str) -> PathBuf {
    root_dir().join("tests/fixtures").join(name)
}

/// The venv's python, which has the `openai` package (bin/test installs it).
pub fn python() -> PathBuf {
    let p = root_dir().join(".tether/venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: bin/test installs tests/requirements.txt into it",
        p.display()
    );
    p
}

pub fn require_root() {
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

pub fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn port_from(file: &Path) -> u16 {
    wait_for(&format!("port in {}", file.display()), 20, || {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
    })
}

/// A child process killed when the test ends, however it ends.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

/// Test CA, two LLM servers (one per provider port) and the OTLP receiver.
pub struct World {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub openai_port: u16,
    pub anthropic_port: u16,
    pub otlp_port: u16,
    pub spans_file: PathBuf,
    _procs: Vec<Proc>,
}

pub fn world() -> World {
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
pub struct Exported {
    pub pid: u64,
    pub attrs: serde_json::Map<String, Value>,
    pub duration_ms: f64,
    pub status_code: i64,
    /// Span events: (name, the text of their first attribute).
    pub events: Vec<(String, String)>,
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

pub fn spans(w: &World) -> Vec<Exported> {
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
                        events: s["events"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|e| {
                                (
                                    e["name"].as_str().unwrap_or("").to_owned(),
                                    e["attributes"][0]["value"]["stringValue"]
                                        .as_str()
                                        .unwrap_or("")
                                        .to_owned(),
                                )
                            })
                            .collect(),
                        attrs,
                    });
                }
            }
        }
    }
    out
}

/// The official OpenAI client, calling forever; its per-call lines go to a file.
pub fn openai_client(w: &World, model: &str, stream: bool, tag: &str) -> (Proc, PathBuf) {
    let extra: &[&str] = if stream { &["--stream"] } else { &[] };
    openai_client_with(w, model, tag, extra)
}

/// As [`openai_client`], with more `openai_client.py` arguments (`--prompt`).
pub fn openai_client_with(w: &World, model: &str, tag: &str, extra: &[&str]) -> (Proc, PathBuf) {
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
        .args(extra)
        .stdout(std::fs::File::create(&out).expect("out"))
        .stderr(Stdio::null());
    (Proc(c.spawn().expect("openai_client.py")), out)
}

/// The slowest call the client measured itself (ms).
pub fn slowest_call(out: &Path) -> f64 {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["ms"].as_f64())
        .fold(0.0, f64::max)
}

pub struct Agent {
    pub config: PathBuf,
    pub data: PathBuf,
}

pub fn agent_config(runner: &Runner, token: &str, w: &World, extra: Value) -> Agent {
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
    pub fn command(&self, prefix: &[&str]) -> Command {
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

    pub fn enroll(&self) {
        let out = self.command(&[]).arg("enroll").output().expect("enroll");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `tether-agent run`, polling until dropped; stderr kept in the data dir.
    pub fn run(&self, prefix: &[&str]) -> Proc {
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }

    pub fn status(&self) -> Value {
        let out = self.command(&[]).arg("status").output().expect("status");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }
}

pub fn service_of(http: &Http, key: &str, pid: u32) -> Option<Value> {
    http.get("/v1/services", Some(key)).json["services"]
        .as_array()
        .and_then(|v| v.iter().find(|s| s["pid"] == pid).cloned())
}

pub fn apply(http: &Http, key: &str, workload: &str, instrumentation: &str) {
    let r = http.post(
        "/v1/apply",
        Some(key),
        &json!({"workloads": [{"workload_key": workload, "instrumentation": instrumentation}]}),
    );
    assert_eq!(r.status, 200, "{}", r.json);
}

/// The final result of the newest action of `kind` for `workload`, once it has one.
pub fn final_action(http: &Http, key: &str, workload: &str, kind: &str) -> Option<Value> {
    let a = http.get("/v1/actions", Some(key));
    a.json["actions"].as_array().and_then(|v| {
        v.iter()
            .filter(|a| a["kind"] == kind && a["target"] == workload)
            .find(|a| a["result"]["status"].is_string())
            .cloned()
    })
}

pub fn ebpf_collector(status: &Value) -> Value {
    status["collectors"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "ebpf").cloned())
        .unwrap_or(Value::Null)
}
