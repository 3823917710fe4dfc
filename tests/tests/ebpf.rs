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
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tether_e2e::llm::{
    agent_config, apply, ebpf_collector, final_action, fixture, openai_client, python,
    require_root, service_of, slowest_call, spans, wait_for, world, Agent, Exported, Proc, World,
};
use tether_e2e::{Emulator, Http, Runner, Stack};

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

/// Declares `workload` instrumented and waits for the agent's `instrument`
/// result, which must have succeeded; returns the action.
fn instrument(http: &Http, key: &str, workload: &str, agent: &Agent) -> Value {
    apply(http, key, workload, "instrumented");
    let done = wait_for("instrument result", 60, || {
        final_action(http, key, workload, "instrument")
    });
    assert_eq!(
        done["result"]["status"],
        "succeeded",
        "{done}\n{}",
        agent.log()
    );
    done
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
    let done = instrument(http, &key, &workload, agent);
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
    instrument(http, &key, &workload, agent);
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
    // The agent does not offer `instrument` without eBPF (its action kinds leave
    // it out), so the control plane holds the need instead of queueing a sure
    // refusal, and the agent's drift says why.
    apply(http, &key, &workload, "instrumented");
    let drift = wait_for("the held instrument need", 60, || {
        http.get("/v1/agents", Some(&key)).json["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| a["drift"].as_array().cloned().unwrap_or_default())
            .find(|d| d["kind"] == "instrument" && d["workload_key"] == workload.as_str())
    });
    assert!(
        drift["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cannot run instrument")),
        "{drift}"
    );
    assert!(
        final_action(http, &key, &workload, "instrument").is_none(),
        "nothing queued for a sure refusal"
    );
    let st = agent.status();
    assert_eq!(st["instrumentation"]["state"], "unavailable", "{st}");
    assert_eq!(st["health"], "healthy", "the agent keeps running: {st}");
    assert!(spans(w).is_empty());
    let _ = std::fs::remove_dir_all(&w.dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn content_leaves_the_host_only_redacted_and_only_when_the_tenant_says_so() {
    let f = fleet("content").await;
    let (w, http, agent, key) = (&f.w, &f.http, &f.agent, f.key.clone());
    let _agent = agent.run(&[]);
    let prompt = "say hi to jane.doe@example.com with key sk-proj-0123456789abcdef";
    let (client, _) =
        tether_e2e::llm::openai_client_with(w, "gpt-4o-mini", "content", &["--prompt", prompt]);
    let svc = wait_for("the client discovered", 60, || {
        service_of(http, &key, client.pid())
    });
    let workload = svc["workload_key"].as_str().expect("key").to_owned();
    let r = http.post(
        "/v1/apply",
        Some(&key),
        &json!({"workloads": [{"workload_key": workload, "instrumentation": "instrumented", "llm_content": "redacted"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.json);
    let with = wait_for("spans with content", 60, || {
        spans(w)
            .into_iter()
            .find(|x| x.pid == u64::from(client.pid()) && !x.events.is_empty())
    });
    assert_eq!(
        with.events,
        vec![
            (
                "gen_ai.content.prompt".to_owned(),
                "user: say hi to [REDACTED] with key [REDACTED]".to_owned()
            ),
            (
                "gen_ai.content.completion".to_owned(),
                "hello from the fixture".to_owned()
            ),
        ]
    );
    let text = std::fs::read_to_string(&w.spans_file).expect("spans");
    assert!(
        !text.contains("jane.doe") && !text.contains("sk-proj"),
        "nothing unredacted leaves the host"
    );
    wait_for(
        "the service reported with its content mode, in sync",
        30,
        || {
            service_of(http, &key, client.pid())
                .filter(|s| s["in_sync"] == true && s["desired"]["llm_content"] == "redacted")
        },
    );

    // The tenant takes it back: instrument again, without content.
    apply(http, &key, &workload, "instrumented");
    wait_for("the content mode back to none", 60, || {
        let a = http.get("/v1/actions", Some(&key)).json;
        a["actions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| {
                a["kind"] == "instrument"
                    && a["result"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("no prompt or completion text leaves the host"))
            })
            .cloned()
    });
    std::thread::sleep(Duration::from_millis(1500));
    let seen = spans(w).len();
    let later = wait_for("new spans after the change", 60, || {
        let s = spans(w);
        (s.len() > seen + 2).then_some(s)
    });
    assert!(
        later[seen..].iter().all(|x| x.events.is_empty()),
        "no content once the policy says none"
    );
}
