//! The real `tether-agent` against the real control plane on the emulator: enroll,
//! discovery of a real python process holding a connection to a configured LLM
//! endpoint, desired state -> action -> result acknowledged, telemetry through SQS,
//! and an outage survived with nothing lost or duplicated.

use serde_json::{json, Value};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tether_e2e::{unique_name, workspace_bin, Emulator, Runner, Stack};

struct Agent {
    config: std::path::PathBuf,
}

impl Agent {
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let out = Command::new(workspace_bin("tether-agent"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("run tether-agent");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn once(&self, env: &[(&str, &str)]) {
        let (code, out, err) = self.run(&["run", "--once"], env);
        assert_eq!(code, 0, "{out}{err}");
    }

    fn status(&self) -> Value {
        let (code, out, err) = self.run(&["status"], &[]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).expect("status json")
    }
}

/// A real python3 holding a TLS connection (handshake done) to `port`.
fn python_client(port: u16) -> Child {
    Command::new("python3")
        .args([
            "-c",
            &format!(
                "import socket,ssl,time\n\
                 ctx=ssl.create_default_context(); ctx.check_hostname=False; ctx.verify_mode=ssl.CERT_NONE\n\
                 s=ctx.wrap_socket(socket.create_connection(('127.0.0.1',{port})), server_hostname='localhost')\n\
                 time.sleep(600)"
            ),
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("python3")
}

/// A local TLS server standing in for an LLM provider (a throwaway self-signed
/// certificate from the openssl CLI); it holds every connection open. Returns
/// the server process and its port.
fn tls_llm_endpoint(dir: &std::path::Path) -> (Child, u16) {
    std::fs::create_dir_all(dir).expect("dir");
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl CLI");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let port_file = dir.join("port");
    let server = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import socket,ssl,threading\n\
                 ctx=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain({cert:?},{key:?})\n\
                 l=socket.socket(); l.bind(('127.0.0.1',0)); l.listen()\n\
                 open({port_file:?},'w').write(str(l.getsockname()[1]))\n\
                 held=[]\n\
                 while True:\n\
                 \x20 c,_=l.accept()\n\
                 \x20 try: held.append(ctx.wrap_socket(c, server_side=True))\n\
                 \x20 except Exception: pass\n",
                cert = cert.display().to_string(),
                key = key.display().to_string(),
                port_file = port_file.display().to_string(),
            ),
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("python3 TLS server");
    let port = wait_for("the TLS endpoint's port", || {
        std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
    });
    (server, port)
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_enrolls_discovers_acts_and_survives_an_outage() {
    let emu = Emulator::shared();
    let stack = Stack::create(emu).await;
    let mut runner = Runner::start(emu, &stack, &[("TETHER_POLL_INTERVAL_MS", "1000")]);
    let (key, token) = runner.bootstrap("fleet");

    // A local TLS endpoint standing in for an LLM provider.
    let (mut tls_server, llm_port) =
        tls_llm_endpoint(&std::env::temp_dir().join(unique_name("tls-llm")));

    let data = std::env::temp_dir().join(unique_name("agent-data"));
    let config = data.with_extension("json");
    std::fs::write(
        &config,
        json!({
            "server_url": runner.url,
            "enrollment_token": token,
            "data_dir": data,
            "llm_hosts": [format!("openai=127.0.0.1:{llm_port}")],
            "allowed_actions": ["signal_process"],
            "telemetry_window_s": 1,
            "max_backoff_s": 2
        })
        .to_string(),
    )
    .expect("config");
    let agent = Agent { config };

    let (code, out, err) = agent.run(&["enroll"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("enrolled as agt_"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("credential.json"))
        .expect("cred")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (_, again, _) = agent.run(&["enroll"], &[]);
    assert!(again.contains("already enrolled"), "{again}");

    // Discovery: the python process with a connection to the endpoint.
    let mut py = python_client(llm_port);
    let http = runner.http();
    let first = wait_for("python service", || {
        agent.once(&[]);
        let s = http.get("/v1/services", Some(&key));
        s.json["services"]
            .as_array()
            .and_then(|v| v.iter().find(|s| s["pid"] == py.id()).cloned())
    });
    assert_eq!(first["runtime"], "python");
    assert_eq!(first["llm_providers"], json!(["openai"]));
    let workload = first["workload_key"].as_str().expect("key").to_owned();
    assert!(
        workload.starts_with("host:") && workload.contains("python"),
        "{workload}"
    );

    // Restarted process: same workload key, new pid.
    py.kill().expect("kill");
    py.wait().expect("wait");
    let mut py = python_client(llm_port);
    let second = wait_for("restarted python", || {
        agent.once(&[]);
        let s = http.get("/v1/services", Some(&key));
        s.json["services"]
            .as_array()
            .and_then(|v| v.iter().find(|s| s["pid"] == py.id()).cloned())
    });
    assert_eq!(second["workload_key"], workload.as_str());

    // Desired state the agent cannot apply: `instrument` is not on this host's
    // allow-list, so the agent does not report it among its action kinds; the
    // control plane holds the need instead of queueing a sure refusal, and the
    // agent's applied revision lags with the reason.
    let applied = http.post(
        "/v1/apply",
        Some(&key),
        &json!({"workloads": [{"workload_key": workload, "instrumentation": "instrumented"}]}),
    );
    assert_eq!(applied.status, 200);
    let drift = wait_for("the held instrument need on the agent", || {
        agent.once(&[]);
        let a = http.get("/v1/agents", Some(&key));
        a.json["agents"][0]["drift"]
            .as_array()
            .and_then(|v| v.iter().find(|d| d["kind"] == "instrument").cloned())
    });
    assert!(
        drift["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cannot run instrument")),
        "{drift}"
    );
    let me = &http.get("/v1/agents", Some(&key)).json["agents"][0];
    assert!(
        me["applied_revision"].as_u64() < me["desired_revision"].as_u64(),
        "{me}"
    );
    let listed = http.get("/v1/actions", Some(&key)).json;
    assert!(
        listed["actions"]
            .as_array()
            .is_none_or(|v| v.iter().all(|a| a["kind"] != "instrument")),
        "nothing queued for a sure refusal: {listed}"
    );
    let status = agent.status();
    assert_eq!(status["health"], "healthy");
    assert!(status["collectors"]
        .as_array()
        .expect("collectors")
        .iter()
        .any(|c| c["name"] == "gpu"));
    // The control plane shows the same collector states, and the headline numbers.
    let listed = http.get("/v1/agents", Some(&key));
    let me = &listed.json["agents"][0];
    let gpu = me["collectors"]
        .as_array()
        .expect("collectors")
        .iter()
        .find(|c| c["name"] == "gpu")
        .cloned()
        .expect("gpu collector reported");
    assert_eq!(gpu["state"], "unavailable", "no GPU on this machine: {gpu}");
    assert!(
        gpu["reason"]
            .as_str()
            .expect("reason")
            .starts_with("no GPU"),
        "{gpu}"
    );
    assert!(me["vitals"]["mem.used_pct"].as_f64().is_some(), "{me}");

    // Telemetry windows reach the observations queue.
    std::thread::sleep(Duration::from_millis(1100));
    agent.once(&[]);
    let before_outage = stack.receive_observations(1, Duration::from_secs(10)).await;
    assert!(!before_outage.is_empty(), "no telemetry before the outage");

    // Outage: the control plane is down; windows pile up in the spool.
    runner.kill();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1100));
        let (code, _, err) = agent.run(&["run", "--once"], &[]);
        assert_ne!(code, 0, "a poll with the control plane down must fail");
        assert!(err.contains("cannot reach"), "{err}");
    }
    let down = agent.status();
    assert!(
        down["health"]
            .as_str()
            .unwrap_or("")
            .starts_with("unhealthy: cannot reach the control plane since"),
        "{down}"
    );
    let spooled = down["spool_depth"].as_u64().expect("depth");
    assert!(spooled >= 3, "windows spooled during the outage: {spooled}");

    // Back (on a new port): delivered in order, nothing lost, nothing twice.
    runner.restart();
    let url = runner.url.clone();
    agent.once(&[("TETHER_AGENT_SERVER_URL", url.as_str())]);
    let after = agent.status();
    assert_eq!(after["spool_depth"], 0, "{after}");
    let mut msgs = before_outage;
    msgs.extend(stack.receive_observations(1, Duration::from_secs(10)).await);
    let seqs: Vec<u64> = msgs
        .iter()
        .flat_map(|m| m["windows"].as_array().cloned().unwrap_or_default())
        .filter_map(|w| w["seq"].as_u64())
        .collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(seqs, sorted, "in order, no duplicates: {seqs:?}");
    assert_eq!(seqs.first(), Some(&0));
    assert_eq!(
        *seqs.last().expect("last") as usize + 1,
        seqs.len(),
        "no gaps: {seqs:?}"
    );

    py.kill().expect("kill");
    let _ = py.wait();
    let _ = tls_server.kill();
    let _ = tls_server.wait();
    let _ = std::fs::remove_dir_all(&data);
}

/// A server that answers every request with `answer` (raw bytes after accept).
fn bad_server(answer: Vec<u8>) -> u16 {
    use std::io::{Read, Write};
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 65536];
            let _ = c.set_read_timeout(Some(Duration::from_millis(300)));
            let _ = c.read(&mut buf);
            let _ = c.write_all(&answer);
        }
    });
    port
}

fn http_answer(body: &[u8]) -> Vec<u8> {
    let mut a = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    a.extend_from_slice(body);
    a
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_survives_malformed_oversized_and_tls_failures_with_backoff() {
    let emu = Emulator::shared();
    let stack = Stack::create(emu).await;
    let runner = Runner::start(emu, &stack, &[("TETHER_POLL_INTERVAL_MS", "1000")]);
    let (_, token) = runner.bootstrap("rough");
    let data = std::env::temp_dir().join(unique_name("agent-rough"));
    let config = data.with_extension("json");
    let write = |url: &str| {
        std::fs::write(
            &config,
            json!({"server_url": url, "enrollment_token": token, "data_dir": data,
                   "telemetry_window_s": 1, "max_backoff_s": 2})
            .to_string(),
        )
        .expect("config")
    };
    write(&runner.url);
    let agent = Agent {
        config: config.clone(),
    };
    agent.once(&[]);

    let garbage = bad_server(http_answer(b"<html>upstream proxy error</html>"));
    let huge = bad_server(http_answer(&vec![b' '; 5 * 1024 * 1024]));
    let not_tls = bad_server(b"this is not TLS\r\n".to_vec());
    for (url, want) in [
        (format!("http://127.0.0.1:{garbage}"), "malformed"),
        (format!("http://127.0.0.1:{huge}"), "over 4194304 bytes"),
        (
            format!("https://127.0.0.1:{not_tls}"),
            "tls handshake failed",
        ),
    ] {
        write(&url);
        let child = Command::new(workspace_bin("tether-agent"))
            .arg("--config")
            .arg(&config)
            .arg("run")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("agent");
        std::thread::sleep(Duration::from_secs(4));
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let out = child.wait_with_output().expect("agent exit");
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(out.status.success(), "clean exit on SIGTERM: {err}");
        let failures: Vec<&str> = err.lines().filter(|l| l.contains("poll failed")).collect();
        assert!(failures.len() >= 2, "{url}: retried with backoff:\n{err}");
        assert!(
            failures
                .iter()
                .all(|l| l.contains(want) && l.contains("retrying in")),
            "{url}: every failure names the cause ({want}):\n{err}"
        );
        let status = agent.status();
        assert!(
            status["health"]
                .as_str()
                .expect("health")
                .starts_with("unhealthy: cannot reach the control plane since"),
            "{status}"
        );
        assert!(
            status["spool_depth"].as_u64().expect("depth") > 0,
            "telemetry kept"
        );
    }
    // Back to the real control plane: healthy again, the spool drains.
    write(&runner.url);
    agent.once(&[]);
    agent.once(&[]);
    let status = agent.status();
    assert_eq!(status["health"], "healthy", "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_any_moment_loses_nothing_acknowledged() {
    let emu = Emulator::shared();
    let stack = Stack::create(emu).await;
    let runner = Runner::start(emu, &stack, &[("TETHER_POLL_INTERVAL_MS", "1000")]);
    let (_, token) = runner.bootstrap("crashy");
    let data = std::env::temp_dir().join(unique_name("agent-crashy"));
    let config = data.with_extension("json");
    std::fs::write(
        &config,
        json!({"server_url": runner.url, "enrollment_token": token, "data_dir": data,
               "telemetry_window_s": 1, "max_backoff_s": 1})
        .to_string(),
    )
    .expect("config");
    let agent = Agent {
        config: config.clone(),
    };
    agent.once(&[]);
    // SIGKILL the running agent at uneven moments: mid-poll, mid-spool-write,
    // mid-sleep. Each restart must reopen the spool and carry on.
    let kills = 8;
    for i in 0..kills {
        let mut child = Command::new(workspace_bin("tether-agent"))
            .arg("--config")
            .arg(&config)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("agent");
        std::thread::sleep(Duration::from_millis(700 + 173 * i));
        child.kill().expect("SIGKILL");
        let out = child.wait_with_output().expect("reaped");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "restart {i}: {err}");
    }
    // A last clean run drains the spool.
    std::thread::sleep(Duration::from_millis(1100));
    agent.once(&[]);
    agent.once(&[]);
    let status = agent.status();
    assert_eq!(status["health"], "healthy", "{status}");
    assert_eq!(
        status["spool_depth"], 0,
        "everything acknowledged: {status}"
    );
    let dropped = status["spool_dropped"].as_u64().expect("dropped");
    let msgs = stack
        .receive_observations(100, Duration::from_secs(8))
        .await;
    let mut seqs: Vec<u64> = msgs
        .iter()
        .flat_map(|m| m["windows"].as_array().cloned().unwrap_or_default())
        .filter_map(|w| w["seq"].as_u64())
        .collect();
    seqs.sort_unstable();
    seqs.dedup(); // a window re-sent after a crash before its ack arrived: consumers drop it by seq
    let max = *seqs.last().expect("windows arrived");
    let missing: Vec<u64> = (0..=max).filter(|s| !seqs.contains(s)).collect();
    assert!(
        missing.len() as u64 <= dropped.min(kills),
        "lost windows {missing:?} beyond the {dropped} torn records the spool reported"
    );
    assert!(
        seqs.len() >= 5,
        "windows kept flowing across {kills} kills: {seqs:?}"
    );
    let _ = std::fs::remove_dir_all(&data);
}

/// A minimal forward proxy: CONNECT tunnels and absolute-form requests, piped to
/// the upstream. Counts the connections it carried.
fn forward_proxy() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpStream;
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let used = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = used.clone();
    std::thread::spawn(move || {
        for client in l.incoming().flatten() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone().expect("clone"));
                let mut head = Vec::new();
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    head.push(line.clone());
                    if line == "\r\n" {
                        break;
                    }
                    line.clear();
                }
                let Some(first) = head.first().cloned() else {
                    return;
                };
                let target = first
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned();
                let connect = first.starts_with("CONNECT ");
                let authority = if connect {
                    target.clone()
                } else {
                    target
                        .trim_start_matches("http://")
                        .split('/')
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                };
                let Ok(mut upstream) = TcpStream::connect(&authority) else {
                    return;
                };
                let mut client_w = client.try_clone().expect("clone");
                if connect {
                    let _ = client_w.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                } else {
                    let path = target
                        .trim_start_matches("http://")
                        .split_once('/')
                        .map(|(_, p)| p)
                        .unwrap_or_default();
                    let _ = upstream
                        .write_all(first.replacen(&target, &format!("/{path}"), 1).as_bytes());
                    for h in &head[1..] {
                        let _ = upstream.write_all(h.as_bytes());
                    }
                }
                let mut up_r = upstream.try_clone().expect("clone");
                let pump = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up_r, &mut client_w);
                });
                let _ = std::io::copy(&mut reader, &mut upstream);
                let _ = pump.join();
            });
        }
    });
    (port, used)
}

#[tokio::test(flavor = "multi_thread")]
async fn polls_go_through_https_proxy_unless_no_proxy_says_otherwise() {
    let emu = Emulator::shared();
    let stack = Stack::create(emu).await;
    let runner = Runner::start(emu, &stack, &[("TETHER_POLL_INTERVAL_MS", "1000")]);
    let (_, token) = runner.bootstrap("proxied");
    let (proxy_port, used) = forward_proxy();
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let data = std::env::temp_dir().join(unique_name("agent-proxied"));
    let config = data.with_extension("json");
    std::fs::write(
        &config,
        json!({"server_url": runner.url, "enrollment_token": token, "data_dir": data}).to_string(),
    )
    .expect("config");
    let agent = Agent { config };
    let through = [
        ("HTTPS_PROXY", proxy.as_str()),
        ("HTTP_PROXY", proxy.as_str()),
        ("ALL_PROXY", proxy.as_str()),
    ];
    agent.once(&through);
    agent.once(&through);
    let carried = used.load(std::sync::atomic::Ordering::SeqCst);
    assert!(carried >= 1, "enroll and polls went through the proxy");
    assert_eq!(agent.status()["health"], "healthy");
    // NO_PROXY for the control plane's host: straight there.
    let mut bypass = through.to_vec();
    bypass.push(("NO_PROXY", "127.0.0.1"));
    agent.once(&bypass);
    assert_eq!(
        used.load(std::sync::atomic::Ordering::SeqCst),
        carried,
        "NO_PROXY bypasses the proxy"
    );
    // A proxy that is down: the poll fails with a clear cause, nothing is lost.
    let dead = "http://127.0.0.1:9";
    let (code, _, err) = agent.run(
        &["run", "--once"],
        &[
            ("HTTPS_PROXY", dead),
            ("HTTP_PROXY", dead),
            ("ALL_PROXY", dead),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("cannot reach"), "{err}");
    let _ = std::fs::remove_dir_all(&data);
}
