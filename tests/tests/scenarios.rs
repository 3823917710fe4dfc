//! Real faults on this machine, diagnosed from the real agent's own telemetry
//! and fixed by the real agent (issue 12): the run opens from the agent's
//! windows, the top hypothesis names the fault, the plan holds only steps the
//! agent says it can run, the tenant's policy asks for approval, the approved
//! action changes the host, the fault clears, and the verifier's verdict comes
//! from the agent's windows after the action. No scripted agent anywhere.
//!
//! Needs root (tmpfs mounts, the agent's eBPF and remediation), as the eBPF and
//! console suites do.

use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tether_e2e::llm::{agent_config, require_root, wait_for, world, Proc};
use tether_e2e::replay::{load, replay, save, Scenario};
use tether_e2e::{unique_name, Emulator, Runner, Stack};

/// One scenario at a time: they share this host, and one's fault (a full
/// filesystem, a busy CPU) is in the other's telemetry.
static HOST: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where the telemetry of a scenario is recorded (tether-local's observer
/// consumer appends every observation message to it).
fn recording(name: &str) -> PathBuf {
    std::env::temp_dir()
        .join(unique_name(name))
        .with_extension("jsonl")
}

/// The scenario's recording replayed offline must reach what the live run
/// reached; with `TETHER_RECORD_CORPUS` set it also joins `tests/corpus/`.
async fn replays_as_recorded(s: &Scenario, file: &Path) {
    let messages = load(file);
    assert!(
        !messages.is_empty(),
        "nothing recorded in {}",
        file.display()
    );
    let out = replay(s, &messages).await.expect("replay");
    assert!(
        s.fault.iter().all(|f| out.families.contains(f)),
        "{}: replay opened {:?}",
        s.name,
        out.families
    );
    assert_eq!(
        out.top1, s.hypothesis,
        "{}: top-1 hypothesis in replay",
        s.name
    );
    assert_eq!(out.verdict, s.verdict, "{}: verdict in replay", s.name);
    assert_eq!(out.unapproved_impactful, 0);
    if std::env::var_os("TETHER_RECORD_CORPUS").is_some() {
        save(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"),
            s,
            file,
        );
    }
}

/// A tmpfs of `size_mib`, unmounted (lazily) when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(size_mib: u32) -> Self {
        let path = PathBuf::from("/mnt").join(unique_name("tether-scn"));
        std::fs::create_dir_all(&path).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { path }
    }

    /// The filesystem as the agent's telemetry names it (`fs.<name>.used_pct`).
    fn telemetry_name(&self) -> String {
        self.path
            .display()
            .to_string()
            .trim_matches('/')
            .replace(['/', '.', ' '], "_")
    }

    fn used_pct(&self) -> f64 {
        let out = Command::new("df")
            .args(["-P"])
            .arg(&self.path)
            .output()
            .expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(4))
            .and_then(|c| c.trim_end_matches('%').parse().ok())
            .expect("df capacity")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Appends `mib` MiB of log lines to `file`.
fn prefill(file: &Path, mib: usize) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .expect("log");
    let line = format!(
        "{:<99}\n",
        "2026-12-06T10:00:00Z GET /v1/chat 200 request served"
    );
    let block = line.repeat(10_486); // ~1 MiB
    for _ in 0..mib {
        f.write_all(block.as_bytes()).expect("fill");
    }
}

/// One scenario's live system: the stack, the control plane recording its
/// observations, a tenant with its policy, and the real agent running with
/// `allowed` actions (plus `agent_extra` config). `name` names the scenario in
/// the corpus.
struct Live {
    http: tether_e2e::Http,
    key: String,
    agent: tether_e2e::llm::Agent,
    record: PathBuf,
    policy: Option<Value>,
    _running: Proc,
    _runner: Runner,
    _stack: Stack,
    _world: tether_e2e::llm::World,
}

impl Live {
    async fn start(
        name: &str,
        env: &[(&str, &str)],
        policy: Option<Value>,
        allowed: &[&str],
        agent_extra: Value,
    ) -> Self {
        let world = world();
        let emu = Emulator::shared();
        let stack = Stack::create_with_chain(emu, 3).await;
        let record = recording(name);
        let mut all = vec![
            (
                "TETHER_LOCAL_RECORD_OBSERVATIONS",
                record.to_str().expect("path"),
            ),
            ("TETHER_POLL_INTERVAL_MS", "1000"),
            ("TETHER_VERIFY_DELAY_S", "3"),
            ("TETHER_CHECK_ACTIONS_S", "2"),
            ("TETHER_LOCAL_RETRY_S", "1"),
        ];
        // Later entries win: a scenario's own settings override these.
        all.retain(|(k, _)| !env.iter().any(|(e, _)| e == k));
        all.extend_from_slice(env);
        let runner = Runner::start(emu, &stack, &all);
        // Tenant ids take '-', not '_'.
        let (key, token) = runner.bootstrap(&format!("scenario-{}", name.replace('_', "-")));
        let http = runner.http();
        if let Some(p) = &policy {
            let r = http.put("/v1/policy", Some(&key), p);
            assert_eq!(r.status, 200, "{:?}", r.json);
        }
        let mut config = json!({ "allowed_actions": allowed });
        if let (Some(c), Some(e)) = (config.as_object_mut(), agent_extra.as_object()) {
            c.extend(e.clone());
        }
        let agent = agent_config(&runner, &token, &world, config);
        agent.enroll();
        let running = agent.run(&[]);
        Self {
            http,
            key,
            agent,
            record,
            policy,
            _running: running,
            _runner: runner,
            _stack: stack,
            _world: world,
        }
    }

    fn runs(&self) -> Vec<Value> {
        runs(&self.http, &self.key)
    }

    fn artifact(&self, run: &Value, kind: &str) -> Value {
        artifact(&self.http, &self.key, run, kind)
    }

    /// The run of `family` once it awaits approval.
    fn awaiting(&self, family: &str, secs: u64) -> Value {
        wait_for(&format!("a {family} run awaiting approval"), secs, || {
            self.runs()
                .into_iter()
                .find(|r| r["family"] == family && r["status"] == "awaiting_approval")
        })
    }

    /// Approves `run` and waits for it to close; the run as closed.
    fn approve_and_close(&self, run: &Value, secs: u64) -> Value {
        let id = run["run_id"].as_str().expect("run id");
        let approved = self.http.post(
            &format!("/v1/runs/{id}/approve"),
            Some(&self.key),
            &json!({"comment": "approved by the scenario"}),
        );
        assert_eq!(approved.status, 200, "{:?}", approved.json);
        let closed = wait_for("the run closed", secs, || {
            let r = self
                .http
                .get(&format!("/v1/runs/{id}"), Some(&self.key))
                .json;
            (r["status"] == "closed").then_some(r)
        });
        assert_eq!(
            closed["outcome"],
            "resolved",
            "{closed}\nagent log:\n{}",
            self.agent.log()
        );
        closed
    }

    /// The recording must replay to what the live run reached (see
    /// [`replays_as_recorded`]); `closed` gives when the fix finished.
    async fn replays(
        &self,
        name: &str,
        fault: &str,
        closed: Option<&Value>,
        cpu_persist_ms: Option<u64>,
    ) {
        let fixed_at_ms = closed.map(|c| {
            c["actions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["action"] != "collect_evidence")
                .filter_map(|a| a["finished_at_ms"].as_u64())
                .max()
                .expect("a finished host-changing step")
        });
        let faulty = closed.is_some();
        replays_as_recorded(
            &Scenario {
                name: name.into(),
                file: format!("{name}.jsonl"),
                fault: faulty.then(|| fault.to_owned()),
                hypothesis: faulty.then(|| fault.to_owned()),
                verdict: faulty.then(|| "improved".to_owned()),
                fixed_at_ms,
                policy: self.policy.clone(),
                cpu_persist_ms,
            },
            &self.record,
        )
        .await;
    }
}

fn runs(http: &tether_e2e::Http, key: &str) -> Vec<Value> {
    http.get("/v1/runs", Some(key)).json["runs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn artifact(http: &tether_e2e::Http, key: &str, run: &Value, kind: &str) -> Value {
    let id = run["chain"]
        .as_array()
        .and_then(|c| c.iter().find(|l| l["kind"] == kind))
        .and_then(|l| l["id"].as_str())
        .unwrap_or_else(|| panic!("run has no {kind}: {run}"))
        .to_owned();
    http.get(&format!("/v1/artifacts/{id}"), Some(key)).json
}
#[tokio::test(flavor = "multi_thread")]
async fn a_filling_disk_is_diagnosed_fixed_by_the_agent_and_verified() {
    require_root();
    let _host = HOST.lock().await;
    let fs = Tmpfs::mount(256);
    let logs = fs.path.join("app");
    std::fs::create_dir_all(&logs).expect("log dir");
    let log = logs.join("app.log");
    // A service that keeps appending to its log through one descriptor.
    let writer = Proc(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec >>{}; while :; do echo \"$(date +%s%N) request served\"; sleep 0.05; done",
                log.display()
            ))
            .stdout(Stdio::null())
            .spawn()
            .expect("writer"),
    );
    // The tenant lets destructive steps run once approved (rotate_logs cuts data).
    let live = Live::start(
        "disk_full",
        &[],
        Some(json!({"settings": {"dry_run": false, "allow_destructive": true}})),
        &[
            "collect_evidence",
            "rotate_logs",
            "vacuum_journal",
            "signal_process",
        ],
        json!({ "log_dirs": [logs] }),
    )
    .await;
    let metric = format!("fs.{}.used_pct", fs.telemetry_name());
    // A few normal windows first, then the disk fills.
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(
        live.runs().is_empty(),
        "no run before the fault: {:?}",
        live.runs()
    );
    prefill(&log, 240);
    let filled = fs.used_pct();
    assert!(filled >= 93.0, "the tmpfs is {filled} % full");

    let run = live.awaiting("disk_full", 90);
    let obs = live.artifact(&run, "observation_summary");
    assert_eq!(
        obs["body"]["signals"][0]["metric"],
        metric.as_str(),
        "{obs}"
    );
    let hyp = live.artifact(&run, "root_cause_hypothesis");
    assert_eq!(hyp["body"]["hypotheses"][0]["rule"], "disk_full", "{hyp}");
    let proposal = live.artifact(&run, "remediation_proposal");
    let steps: Vec<&str> = proposal["body"]["proposals"]
        .as_array()
        .expect("proposals")
        .iter()
        .filter_map(|p| p["action"].as_str())
        .collect();
    assert!(steps.contains(&"rotate_logs"), "{proposal}");
    assert!(
        !steps.contains(&"vacuum_journal"),
        "no journald here: the agent does not offer vacuum_journal, so it is not planned: {proposal}"
    );
    let plan = live.artifact(&run, "execution_plan");
    assert_eq!(plan["body"]["outcome"], "awaiting_approval", "{plan}");

    let closed = live.approve_and_close(&run, 120);
    let verification = live.artifact(&closed, "verification_result");
    assert_eq!(
        verification["body"]["verdict"], "improved",
        "{verification}"
    );
    assert_eq!(verification["body"]["metric"], metric.as_str());
    let after = verification["body"]["after"].as_f64().expect("after");
    assert!(after < 20.0, "the agent's window after the fix: {after} %");

    // The real effect: the log was cut to its tail in place, and the service
    // still writes to it.
    let size = std::fs::metadata(&log).expect("log").len();
    assert!(size <= 17 * 1024 * 1024, "log is {size} bytes");
    assert!(fs.used_pct() < 20.0, "df says {} %", fs.used_pct());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        std::fs::metadata(&log).expect("log").len() > size,
        "the writer keeps appending to the same file"
    );
    drop(writer);
    live.replays("disk_full", "disk_full", Some(&closed), None)
        .await;
}

/// Minutes of a healthy host, a routine CPU burst (a minute with both cores
/// busy, as a build does) included, open no run.
#[tokio::test(flavor = "multi_thread")]
async fn quiet_minutes_with_a_routine_burst_open_no_run() {
    require_root();
    let _host = HOST.lock().await;
    let live = Live::start(
        "no_fault",
        &[],
        None,
        &["collect_evidence", "signal_process"],
        json!({}),
    )
    .await;
    let quiet = std::time::Duration::from_secs(45);
    std::thread::sleep(quiet);
    // A build's worth of CPU: every core busy for a minute.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let burst: Vec<Proc> = (0..cores)
        .map(|_| {
            Proc(
                Command::new("timeout")
                    .args(["60", "sh", "-c", "while :; do :; done"])
                    .spawn()
                    .expect("burst"),
            )
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_secs(62));
    drop(burst);
    std::thread::sleep(quiet);
    let opened = live.runs();
    assert!(
        opened.is_empty(),
        "runs opened on a healthy host: {:?}",
        opened
            .iter()
            .map(|r| (r["family"].clone(), r["title"].clone()))
            .collect::<Vec<_>>()
    );
    live.replays("no_fault", "", None, None).await;
}

/// A `cpu` cgroup of its own, removed with its processes when dropped: on the
/// v1 `cpu` hierarchy where it is mounted (this host, a v1/v2 hybrid), else in
/// the unified hierarchy with the cpu controller enabled.
struct CpuCgroup {
    dir: PathBuf,
    v2: bool,
}

impl CpuCgroup {
    fn create() -> Self {
        let root = Path::new("/sys/fs/cgroup");
        let v1 = root.join("cpu");
        let v2 = !v1.join("cpu.cfs_quota_us").exists()
            && std::fs::read_to_string(root.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|x| x == "cpu"));
        let dir = if v2 { root } else { v1.as_path() }.join(unique_name("tether-scn"));
        if v2 {
            // Children of the root get the cpu controller only when it is enabled.
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+cpu");
        }
        std::fs::create_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the scenario needs root and a cpu controller, v1 or v2)",
                dir.display()
            )
        });
        Self { dir, v2 }
    }

    fn join(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("join cgroup");
    }

    /// The CPU quota per period in microseconds; -1 when unlimited.
    fn quota_us(&self) -> i64 {
        let file = if self.v2 {
            "cpu.max"
        } else {
            "cpu.cfs_quota_us"
        };
        let text = std::fs::read_to_string(self.dir.join(file)).expect("quota");
        match text.split_whitespace().next() {
            Some("max") => -1,
            Some(v) => v.parse().expect("number"),
            None => panic!("{file}: empty"),
        }
    }
}

impl Drop for CpuCgroup {
    fn drop(&mut self) {
        if let Ok(pids) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in pids.lines() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A noisy neighbour: a workload of its own (its own executable, its own
/// cgroup) takes every core. The agent names it in its telemetry; the run opens
/// once saturation has held (15 s here instead of 5 minutes) with tasks waiting
/// for CPU; the plan caps that workload, not a bystander; the agent writes the
/// cgroup's quota; the host recovers and the verifier says so.
#[tokio::test(flavor = "multi_thread")]
async fn a_noisy_neighbour_is_capped_in_its_cgroup_and_verified() {
    require_root();
    let _host = HOST.lock().await;
    let persist_ms = 15_000u64;
    let live = Live::start(
        "cpu_noisy_neighbour",
        &[("TETHER_CPU_PERSIST_MS", "15000")],
        Some(json!({"settings": {"dry_run": false}})),
        &[
            "collect_evidence",
            "limit_workload",
            "restore_workload_limit",
            "signal_process",
        ],
        json!({}),
    )
    .await;
    let bin = std::env::temp_dir().join(unique_name("noisy"));
    std::fs::create_dir_all(&bin).expect("dir");
    let cruncher = bin.join("cruncher");
    std::fs::copy("/usr/bin/yes", &cruncher).expect("copy yes");
    let workload = format!("host:{}", cruncher.display());
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(live.runs().is_empty(), "no run before the fault");

    let cg = CpuCgroup::create();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let _crunchers: Vec<Proc> = (0..=cores)
        .map(|_| {
            let p = Proc(
                Command::new(&cruncher)
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("cruncher"),
            );
            cg.join(p.pid());
            p
        })
        .collect();

    let run = live.awaiting("cpu_saturation", 120);
    let obs = live.artifact(&run, "observation_summary");
    assert_eq!(
        obs["body"]["signals"][0]["subject"],
        workload.as_str(),
        "the culprit, not the host: {obs}"
    );
    let hyp = live.artifact(&run, "root_cause_hypothesis");
    assert_eq!(
        hyp["body"]["hypotheses"][0]["rule"], "cpu_saturation",
        "{hyp}"
    );
    let proposal = live.artifact(&run, "remediation_proposal");
    let cap = proposal["body"]["proposals"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["action"] == "limit_workload"))
        .cloned()
        .unwrap_or_else(|| panic!("no limit_workload step: {proposal}"));
    assert_eq!(cap["payload"]["workload"], workload.as_str(), "{cap}");
    assert_eq!(cap["safety"], "reversible");
    assert_eq!(cg.quota_us(), -1, "nothing changes before approval");

    let closed = live.approve_and_close(&run, 120);
    // The real effect: the workload's cgroup is capped at half a core.
    assert_eq!(cg.quota_us(), 50_000, "cpu.cfs_quota_us");
    let verification = live.artifact(&closed, "verification_result");
    assert_eq!(
        verification["body"]["verdict"], "improved",
        "{verification}"
    );
    assert_eq!(verification["body"]["metric"], "cpu.busy_pct");
    live.replays(
        "cpu_noisy_neighbour",
        "cpu_saturation",
        Some(&closed),
        Some(persist_ms),
    )
    .await;
    let _ = std::fs::remove_dir_all(&bin);
}

/// An I/O stall: a workload writes with O_DSYNC as fast as the disk lets it, so
/// other tasks wait on I/O (PSI `io.full` well over 25 % on this host's virtual
/// disk). The run opens from the agent's PSI, the plan stops the process doing
/// the most I/O (impactful: the tenant allows it, with approval), the agent
/// measures and signals the writer, and the stall clears.
#[tokio::test(flavor = "multi_thread")]
async fn an_fsync_heavy_writer_stalls_io_and_is_stopped_after_approval() {
    require_root();
    let _host = HOST.lock().await;
    let live = Live::start(
        "io_stall",
        // PSI's avg10 decays over about ten seconds after the writer stops.
        &[("TETHER_VERIFY_DELAY_S", "15")],
        Some(json!({"settings": {"dry_run": false, "allow_impactful": true}})),
        &["collect_evidence", "signal_process"],
        json!({}),
    )
    .await;
    let bin = std::env::temp_dir().join(unique_name("flusher"));
    std::fs::create_dir_all(&bin).expect("dir");
    let flusher = bin.join("flusher");
    std::fs::copy("/usr/bin/dd", &flusher).expect("copy dd");
    let target = PathBuf::from("/var/tmp").join(unique_name("tether-io"));
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(live.runs().is_empty(), "no run before the fault");

    let writer = Proc(
        Command::new(&flusher)
            .arg("if=/dev/zero")
            .arg(format!("of={}", target.display()))
            .args(["bs=4k", "count=100000000", "oflag=dsync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("flusher"),
    );
    let run = live.awaiting("io_stall", 120);
    let hyp = live.artifact(&run, "root_cause_hypothesis");
    assert_eq!(hyp["body"]["hypotheses"][0]["rule"], "io_stall", "{hyp}");
    let proposal = live.artifact(&run, "remediation_proposal");
    assert!(
        proposal["body"]["proposals"].as_array().is_some_and(|p| p
            .iter()
            .any(|p| p["action"] == "signal_process" && p["payload"]["select"] == "top_io")),
        "{proposal}"
    );
    let closed = live.approve_and_close(&run, 150);
    let _ = std::fs::remove_file(&target);
    // The agent chose the writer, by its I/O, and stopped it.
    let signalled = closed["actions"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["action"] == "signal_process"))
        .cloned()
        .expect("the signal step");
    assert_eq!(signalled["state"], "succeeded", "{signalled}");
    assert!(
        signalled["message"]
            .as_str()
            .is_some_and(|m| m.contains(&writer.pid().to_string())),
        "the writer's pid is named: {signalled}"
    );
    let verification = live.artifact(&closed, "verification_result");
    assert_eq!(
        verification["body"]["verdict"], "improved",
        "{verification}"
    );
    live.replays("io_stall", "io_stall", Some(&closed), None)
        .await;
    drop(writer);
    let _ = std::fs::remove_dir_all(&bin);
}
