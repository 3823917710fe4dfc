//! Running actions the control plane hands out, governed locally.
//!
//! Invariants:
//! - Only kinds on the local allow-list run; nothing from the server widens it.
//! - Every action's idempotency key is appended to the ledger and fsynced before
//!   the action runs, so a redelivered action is never run twice, even across a
//!   crash (a crash mid-action reports it as failed rather than rerunning it).
//! - An expired action, a dry run, a refused kind and an unknown kind all end with
//!   a `final` result that says why. An action that runs reports `received`,
//!   `started` and `final`; one that does not run reports `received` and `final`.
//! - A redelivered action gets `received` plus the recorded final result again.
//! - `mode: dry_run` changes nothing on the host; it says what it would do.
//! - The kinds that change the host are carried out by [`crate::remedy`] (its
//!   module doc lists their payloads, dry runs, rollbacks and refusals); this
//!   module only dispatches them and turns their outcome into the final result.

use crate::remedy::{self, gpu::GpuControl, Outcome};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};
use tether_proto::{Action, ActionKind, ActionMode, ActionResult, ResultPhase, ResultStatus};

const TAIL: usize = 4096;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn tail(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let start = s.len().saturating_sub(TAIL);
    let mut i = start;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    s[i..].to_owned()
}

/// The ledger of idempotency keys already taken, with the final result of each.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    done: BTreeMap<String, Option<ActionResult>>,
}

#[derive(Debug, thiserror::Error)]
#[error("ledger {path}: {source}")]
pub struct LedgerError {
    path: String,
    source: std::io::Error,
}

impl Ledger {
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let err = |source| LedgerError {
            path: path.display().to_string(),
            source,
        };
        let mut done = BTreeMap::new();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for line in text.lines() {
                    // "taken <key>" then "final <json result>": a torn last line is ignored.
                    if let Some(key) = line.strip_prefix("taken ") {
                        done.entry(key.to_owned()).or_insert(None);
                    } else if let Some(json) = line.strip_prefix("final ") {
                        if let Ok(r) = serde_json::from_str::<ActionResult>(json) {
                            done.insert(r.idempotency_key.clone(), Some(r));
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        Ok(Self {
            path: path.to_path_buf(),
            done,
        })
    }

    fn append(&self, line: &str) -> Result<(), LedgerError> {
        let err = |source| LedgerError {
            path: self.path.display().to_string(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(err)?;
        f.write_all(format!("{line}\n").as_bytes()).map_err(err)?;
        f.sync_data().map_err(err)
    }

    pub fn seen(&self, key: &str) -> Option<&Option<ActionResult>> {
        self.done.get(key)
    }
}

fn result(
    a: &Action,
    phase: ResultPhase,
    status: Option<ResultStatus>,
    message: &str,
) -> ActionResult {
    ActionResult {
        action_id: a.id.clone(),
        idempotency_key: a.idempotency_key.clone(),
        phase,
        status,
        exit_code: None,
        stdout_tail: String::new(),
        stderr_tail: String::new(),
        message: message.to_owned(),
        started_at_ms: None,
        finished_at_ms: None,
        evidence_refs: vec![],
    }
}

/// What actions may touch on this host.
#[derive(Debug, Clone)]
pub struct Host {
    /// The local allow-list (config `allowed_actions`).
    pub allowed: Vec<String>,
    /// Where systemd unit drop-ins go (`/etc/systemd/system`).
    pub systemd_dir: PathBuf,
    /// Put on `PYTHONPATH` by `enable_python_sdk`.
    pub python_sdk_path: String,
    pub otlp_endpoint: String,
    /// What remediation may touch (log dirs, protected processes, sockets).
    pub remedy: remedy::Context,
}

/// Runs `instrument` / `uninstrument`: the agent's instrumentation owns the
/// probes, so these kinds are handed to it (after the ledger and allow-list).
pub trait Instrument {
    fn act(&mut self, a: &Action) -> (ResultStatus, String);
    /// `collect_evidence` of `llm_calls`: what the capture saw, or why there
    /// is no capture.
    fn llm_evidence(&self) -> Result<String, String>;
}

/// Runs (or refuses) one action; returns the results to report, in phase order.
pub fn handle(
    a: &Action,
    host: &Host,
    ledger: &mut Ledger,
    inst: &mut dyn Instrument,
) -> Result<Vec<ActionResult>, LedgerError> {
    let allowed = &host.allowed;
    if let Some(prior) = ledger.seen(&a.idempotency_key) {
        // Redelivered: never run again; report what we know.
        let mut again = vec![result(a, ResultPhase::Received, None, "")];
        again.push(prior.clone().unwrap_or_else(|| {
            result(
                a,
                ResultPhase::Final,
                Some(ResultStatus::Failed),
                "interrupted: the agent stopped while this action ran; not run again",
            )
        }));
        return Ok(again);
    }
    ledger.append(&format!("taken {}", a.idempotency_key))?;
    ledger.done.insert(a.idempotency_key.clone(), None);
    let received = result(a, ResultPhase::Received, None, "");
    let kind = a.kind.as_str();
    let fin = if a.expires_at_ms <= now_ms() {
        result(
            a,
            ResultPhase::Final,
            Some(ResultStatus::Refused),
            "expired before it could run",
        )
    } else if !allowed.iter().any(|k| k == kind) {
        result(
            a,
            ResultPhase::Final,
            Some(ResultStatus::Refused),
            &format!("action kind {kind} is not on this host's allow-list"),
        )
    } else if kind == ActionKind::INSTRUMENT || kind == ActionKind::UNINSTRUMENT {
        let started = now_ms();
        let (status, message) = inst.act(a);
        let mut r = result(a, ResultPhase::Final, Some(status), &message);
        if matches!(status, ResultStatus::Succeeded | ResultStatus::Failed) {
            r.started_at_ms = Some(started);
            r.finished_at_ms = Some(now_ms());
        }
        r
    } else {
        execute(a, host, inst)
    };
    ledger.append(&format!(
        "final {}",
        serde_json::to_string(&fin).unwrap_or_default()
    ))?;
    ledger
        .done
        .insert(a.idempotency_key.clone(), Some(fin.clone()));
    let mut out = vec![received];
    if let Some(started_at) = fin.started_at_ms {
        let mut started = result(a, ResultPhase::Started, None, "");
        started.started_at_ms = Some(started_at);
        out.push(started);
    }
    out.push(fin);
    Ok(out)
}

/// Runs `steps` in order, stopping at the first failure; the result carries the
/// last step's exit code and the combined output tails.
fn run(a: &Action, steps: Vec<Command>) -> ActionResult {
    let started = now_ms();
    let mut r = result(a, ResultPhase::Final, Some(ResultStatus::Succeeded), "");
    r.started_at_ms = Some(started);
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    for mut cmd in steps {
        let shown = format!("{:?}", cmd).replace('"', "");
        match cmd.output() {
            Ok(out) => {
                stdout.extend_from_slice(&out.stdout);
                stderr.extend_from_slice(&out.stderr);
                r.exit_code = out.status.code();
                if !out.status.success() {
                    r.status = Some(ResultStatus::Failed);
                    r.message = format!("{shown} exited with {}", out.status);
                    break;
                }
            }
            Err(e) => {
                r.status = Some(ResultStatus::Failed);
                r.message = format!("could not start {shown}: {e}");
                break;
            }
        }
    }
    r.stdout_tail = tail(&stdout);
    r.stderr_tail = tail(&stderr);
    r.finished_at_ms = Some(now_ms());
    r
}

fn finished(a: &Action, status: ResultStatus, message: &str) -> ActionResult {
    result(a, ResultPhase::Final, Some(status), message)
}

use remedy::service::unit_name;

/// The final result of a remediation's outcome; a remediation that acted on
/// the host gets its start and finish times (and so a `started` phase).
fn from_outcome(a: &Action, started: u64, o: Outcome) -> ActionResult {
    let mut r = finished(a, o.status, &o.message);
    r.stdout_tail = tail(o.stdout.as_bytes());
    r.stderr_tail = tail(o.stderr.as_bytes());
    r.exit_code = o.exit_code;
    if o.ran {
        r.started_at_ms = Some(started);
        r.finished_at_ms = Some(now_ms());
    }
    r
}

/// Runs a GPU remediation on NVML, or refuses it with NVML's error.
fn with_nvml(
    a: &Action,
    host: &Host,
    f: fn(&Action, &remedy::Context, &mut dyn GpuControl) -> Outcome,
) -> Outcome {
    match remedy::gpu::NvmlGpus::open() {
        Ok(mut g) => f(a, &host.remedy, &mut g),
        Err(e) => Outcome::refused(e.to_string()),
    }
}

/// `top_gpu_memory` candidates from NVML.
fn nvml_processes() -> Result<Vec<(u32, u64)>, String> {
    let g = remedy::gpu::NvmlGpus::open().map_err(|e| e.to_string())?;
    remedy::gpu::all_processes(&g)
}

/// The unit of an action: `payload.unit`, else the `systemd:<unit>` target.
fn unit_of(a: &Action) -> Option<&str> {
    a.payload["unit"]
        .as_str()
        .or_else(|| a.target.strip_prefix("systemd:"))
        .and_then(unit_name)
}

/// The drop-in text that turns the Python SDK on for `unit`.
pub fn python_sdk_dropin_text(unit: &str, host: &Host) -> String {
    let service = unit.trim_end_matches(".service");
    format!(
        "# Written by tether-agent (enable_python_sdk); disable_python_sdk removes it.\n\
         [Service]\n\
         Environment=\"PYTHONPATH={}\"\n\
         Environment=\"OTEL_SERVICE_NAME={service}\"\n\
         Environment=\"OTEL_EXPORTER_OTLP_ENDPOINT={}\"\n\
         Environment=\"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf\"\n\
         Environment=\"OTEL_TRACES_EXPORTER=otlp\"\n",
        host.python_sdk_path, host.otlp_endpoint
    )
}

fn systemctl(args: &[&str]) -> Command {
    let mut c = Command::new("systemctl");
    c.args(args);
    c
}

fn python_sdk(a: &Action, host: &Host, enable: bool) -> ActionResult {
    let Some(unit) = unit_of(a) else {
        return finished(
            a,
            ResultStatus::Refused,
            "the python SDK is switched through a systemd unit: target systemd:<unit>.service or payload.unit",
        );
    };
    let path = crate::discovery::python_sdk_dropin(&host.systemd_dir, unit);
    let text = python_sdk_dropin_text(unit, host);
    if a.mode == ActionMode::DryRun {
        return if enable {
            finished(
                a,
                ResultStatus::DryRun,
                &format!("would write {} and restart {unit}:\n{text}", path.display()),
            )
        } else {
            finished(
                a,
                ResultStatus::DryRun,
                &format!("would remove {} and restart {unit}", path.display()),
            )
        };
    }
    let started = now_ms();
    let changed = if enable {
        path.parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, &text))
    } else {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    };
    if let Err(e) = changed {
        let mut r = finished(a, ResultStatus::Failed, &format!("{}: {e}", path.display()));
        r.started_at_ms = Some(started);
        r.finished_at_ms = Some(now_ms());
        return r;
    }
    let mut r = run(
        a,
        vec![systemctl(&["daemon-reload"]), systemctl(&["restart", unit])],
    );
    r.started_at_ms = Some(started);
    if r.status == Some(ResultStatus::Succeeded) {
        r.message = format!(
            "{} {}; restarted {unit}",
            if enable { "wrote" } else { "removed" },
            path.display()
        );
    }
    r
}

fn execute(a: &Action, host: &Host, inst: &dyn Instrument) -> ActionResult {
    let dry = a.mode == ActionMode::DryRun;
    let p = &a.payload;
    match a.kind.as_str() {
        ActionKind::SIGNAL_PROCESS => from_outcome(
            a,
            now_ms(),
            remedy::signal::run(a, &host.remedy, &nvml_processes),
        ),
        ActionKind::RESTART_SERVICE => from_outcome(
            a,
            now_ms(),
            remedy::service::restart(a, &host.remedy, &nvml_processes),
        ),
        ActionKind::STOP_SERVICE => {
            from_outcome(a, now_ms(), remedy::service::stop(a, &host.remedy))
        }
        ActionKind::START_SERVICE => {
            from_outcome(a, now_ms(), remedy::service::start(a, &host.remedy))
        }
        ActionKind::ROTATE_LOGS => from_outcome(a, now_ms(), remedy::logs::rotate(a, &host.remedy)),
        ActionKind::VACUUM_JOURNAL => {
            from_outcome(a, now_ms(), remedy::logs::vacuum(a, &host.remedy))
        }
        ActionKind::LIMIT_WORKLOAD => {
            from_outcome(a, now_ms(), remedy::cgroup::limit(a, &host.remedy))
        }
        ActionKind::RESTORE_WORKLOAD_LIMIT => {
            from_outcome(a, now_ms(), remedy::cgroup::restore(a, &host.remedy))
        }
        ActionKind::SET_GPU_POWER_LIMIT => from_outcome(
            a,
            now_ms(),
            with_nvml(a, host, remedy::gpu::set_power_limit),
        ),
        ActionKind::RESTORE_GPU_POWER_LIMIT => from_outcome(
            a,
            now_ms(),
            with_nvml(a, host, remedy::gpu::restore_power_limit),
        ),
        ActionKind::RESET_GPU => from_outcome(a, now_ms(), with_nvml(a, host, remedy::gpu::reset)),
        "collect_evidence" => {
            let what = p["what"].as_str().unwrap_or("");
            if dry {
                return finished(
                    a,
                    ResultStatus::DryRun,
                    &format!("would collect {what} (read-only)"),
                );
            }
            let started = now_ms();
            let unit = unit_of(a);
            let collected = if what == "llm_calls" {
                inst.llm_evidence()
            } else {
                crate::evidence::collect(what, unit, Path::new("/proc"))
            };
            let mut r = match collected {
                Ok(text) => {
                    let mut r = finished(a, ResultStatus::Succeeded, &format!("collected {what}"));
                    r.stdout_tail = text;
                    r
                }
                Err(why) => finished(a, ResultStatus::Failed, &why),
            };
            // The bundle goes to the presigned URL the server handed out, if any.
            if let (Some(url), Some(key)) =
                (p["upload"]["url"].as_str(), p["upload"]["key"].as_str())
            {
                let bundle = crate::evidence::bundle(what, unit, Path::new("/proc"));
                match crate::evidence::upload(url, &bundle) {
                    Ok(()) => r.evidence_refs.push(key.to_owned()),
                    Err(why) => {
                        r.message = format!("{}; {why}", r.message);
                        r.status = Some(ResultStatus::Failed);
                    }
                }
            }
            r.started_at_ms = Some(started);
            r.finished_at_ms = Some(now_ms());
            r
        }
        ActionKind::ENABLE_PYTHON_SDK => python_sdk(a, host, true),
        ActionKind::DISABLE_PYTHON_SDK => python_sdk(a, host, false),
        other => finished(
            a,
            ResultStatus::Refused,
            &format!("unknown action kind {other}: not supported by this agent version"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(kind: &str, key: &str, payload: serde_json::Value) -> Action {
        Action {
            id: format!("act_{key}"),
            kind: ActionKind::new(kind),
            target: "host:/bin/sleep".into(),
            payload,
            idempotency_key: key.into(),
            not_before_ms: 0,
            expires_at_ms: now_ms() + 60_000,
            mode: ActionMode::Execute,
            requires_capability: String::new(),
        }
    }

    fn scratch(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ))
    }

    fn ledger() -> (PathBuf, Ledger) {
        let p = scratch("ledger");
        let l = Ledger::open(&p).expect("ledger");
        (p, l)
    }

    /// Instrumentation as on a host without eBPF.
    struct NoProbes;

    impl Instrument for NoProbes {
        fn act(&mut self, _: &Action) -> (ResultStatus, String) {
            (
                ResultStatus::Refused,
                "instrumentation unavailable: no eBPF here".into(),
            )
        }

        fn llm_evidence(&self) -> Result<String, String> {
            Err("instrumentation unavailable: no eBPF here".into())
        }
    }

    /// A host whose systemd is present (its marker is a directory that exists),
    /// so the systemd kinds get as far as systemctl.
    fn host(allowed: &[&str]) -> Host {
        let data = scratch("data");
        Host {
            allowed: allowed.iter().map(|s| s.to_string()).collect(),
            systemd_dir: scratch("systemd"),
            python_sdk_path: "/opt/tether/python-sdk".into(),
            otlp_endpoint: "http://127.0.0.1:4318".into(),
            remedy: remedy::Context {
                systemd_marker: std::env::temp_dir(),
                ..remedy::Context::new(
                    &data,
                    &[],
                    &crate::config::DEFAULT_PROTECTED
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>(),
                    &data.join("no-docker.sock"),
                )
            },
        }
    }

    /// A `sleep` that is not the agent's child (the rails refuse children).
    fn orphan_sleep() -> (u32, u64) {
        let out = Command::new("/bin/sh")
            .args(["-c", "sleep 30 >/dev/null 2>&1 </dev/null & echo $!"])
            .output()
            .expect("spawn");
        let pid: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("pid");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if let Some(p) =
                remedy::process::read(Path::new("/proc"), pid).filter(|p| p.exe.ends_with("/sleep"))
            {
                return (pid, p.start_ticks);
            }
            assert!(std::time::Instant::now() < deadline, "sleep never started");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    fn phases(rs: &[ActionResult]) -> Vec<ResultPhase> {
        rs.iter().map(|r| r.phase).collect()
    }

    #[test]
    fn a_redelivered_action_runs_once_even_after_a_restart() {
        let (path, mut l) = ledger();
        let (pid, start) = orphan_sleep();
        let a = action(
            "signal_process",
            "k1",
            serde_json::json!({"pid": pid, "signal": "TERM"}),
        );
        let h = host(&["signal_process"]);
        let first = handle(&a, &h, &mut l, &mut NoProbes).expect("handle");
        assert_eq!(
            phases(&first),
            vec![
                ResultPhase::Received,
                ResultPhase::Started,
                ResultPhase::Final
            ]
        );
        let fin = &first[2];
        assert_eq!(fin.status, Some(ResultStatus::Succeeded), "{fin:?}");
        assert!(
            fin.message
                .starts_with(&format!("sent SIGTERM to pid {pid} (sleep, "))
                && fin.message.ends_with(
                    "(pid {pid} named by the payload); it exited"
                        .replace("{pid}", &pid.to_string())
                        .as_str()
                ),
            "{}",
            fin.message
        );
        assert!(fin.started_at_ms <= fin.finished_at_ms);
        assert!(
            remedy::process::read(Path::new("/proc"), pid)
                .is_none_or(|p| p.start_ticks != start || p.state == 'Z'),
            "the sleep got SIGTERM and exited"
        );
        // A second child: if the redelivery ran the action again it would signal
        // this pid's predecessor, so watch the ledger file instead: no new key.
        let before = std::fs::read_to_string(&path).expect("ledger text");
        let mut reopened = Ledger::open(&path).expect("reopen");
        let again = handle(&a, &h, &mut reopened, &mut NoProbes).expect("handle");
        assert_eq!(
            phases(&again),
            vec![ResultPhase::Received, ResultPhase::Final]
        );
        assert_eq!(&again[1], fin, "the recorded result, re-reported");
        assert_eq!(
            std::fs::read_to_string(&path).expect("ledger text"),
            before,
            "a redelivery writes nothing and runs nothing"
        );
        assert_eq!(
            before.lines().filter(|l| l.starts_with("taken ")).count(),
            1
        );
    }

    #[test]
    fn a_crash_mid_action_is_reported_failed_not_rerun() {
        let (path, _) = ledger();
        std::fs::write(&path, "taken k9\nfinal {torn").expect("write");
        let mut l = Ledger::open(&path).expect("open");
        let a = action("signal_process", "k9", serde_json::json!({"pid": 999_999}));
        let r = handle(&a, &host(&["signal_process"]), &mut l, &mut NoProbes).expect("handle");
        assert_eq!(r[1].status, Some(ResultStatus::Failed));
        assert!(r[1].message.starts_with("interrupted"), "{}", r[1].message);
    }

    #[test]
    fn kinds_off_the_allow_list_expired_and_unknown_are_refused() {
        let (_, mut l) = ledger();
        let off = handle(
            &action(
                "restart_service",
                "k2",
                serde_json::json!({"unit": "x.service"}),
            ),
            &host(&[]),
            &mut l,
            &mut NoProbes,
        )
        .expect("handle");
        assert_eq!(
            phases(&off),
            vec![ResultPhase::Received, ResultPhase::Final]
        );
        assert_eq!(off[1].status, Some(ResultStatus::Refused));
        assert_eq!(
            off[1].message,
            "action kind restart_service is not on this host's allow-list"
        );
        let mut old = action("signal_process", "k3", serde_json::json!({"pid": 1}));
        old.expires_at_ms = 1;
        let exp = handle(&old, &host(&["signal_process"]), &mut l, &mut NoProbes).expect("handle");
        assert_eq!(exp[1].status, Some(ResultStatus::Refused));
        assert!(exp[1].message.starts_with("expired"), "{}", exp[1].message);
        let inst = handle(
            &action("instrument", "k4", serde_json::Value::Null),
            &host(&["instrument"]),
            &mut l,
            &mut NoProbes,
        )
        .expect("handle");
        assert_eq!(inst[1].status, Some(ResultStatus::Refused));
        assert_eq!(inst[1].message, "instrumentation unavailable: no eBPF here");
        let refused = handle(
            &action("instrument", "k4b", serde_json::Value::Null),
            &host(&["signal_process"]),
            &mut l,
            &mut NoProbes,
        )
        .expect("handle");
        assert!(
            refused[1].message.contains("not on this host's allow-list"),
            "{}",
            refused[1].message
        );
        let unknown = handle(
            &action("drain_gpu", "k6", serde_json::Value::Null),
            &host(&["drain_gpu"]),
            &mut l,
            &mut NoProbes,
        )
        .expect("handle");
        assert_eq!(unknown[1].status, Some(ResultStatus::Refused));
        assert!(
            unknown[1].message.contains("drain_gpu"),
            "{}",
            unknown[1].message
        );
        let mut dry = action(
            "restart_service",
            "k5",
            serde_json::json!({"unit": "chat.service"}),
        );
        dry.mode = ActionMode::DryRun;
        let d = handle(&dry, &host(&["restart_service"]), &mut l, &mut NoProbes).expect("handle");
        assert_eq!(d[1].status, Some(ResultStatus::DryRun));
        assert_eq!(d[1].message, "would run systemctl restart chat.service");
        let evil = handle(
            &action(
                "restart_service",
                "k7",
                serde_json::json!({"unit": "a.service; rm -rf /"}),
            ),
            &host(&["restart_service"]),
            &mut l,
            &mut NoProbes,
        )
        .expect("handle");
        assert_eq!(evil[1].status, Some(ResultStatus::Failed));
    }

    #[test]
    fn python_sdk_dry_run_shows_the_drop_in_and_changes_nothing() {
        let (_, mut l) = ledger();
        let h = host(&["enable_python_sdk", "disable_python_sdk"]);
        let mut a = action(ActionKind::ENABLE_PYTHON_SDK, "p1", serde_json::Value::Null);
        a.target = "systemd:chat-api.service".into();
        a.mode = ActionMode::DryRun;
        let r = handle(&a, &h, &mut l, &mut NoProbes).expect("handle");
        assert_eq!(r[1].status, Some(ResultStatus::DryRun));
        let dropin = h
            .systemd_dir
            .join("chat-api.service.d/50-tether-python-sdk.conf");
        assert!(
            r[1].message.contains(&dropin.display().to_string()),
            "{}",
            r[1].message
        );
        assert!(r[1]
            .message
            .contains("Environment=\"PYTHONPATH=/opt/tether/python-sdk\""));
        assert!(r[1]
            .message
            .contains("Environment=\"OTEL_SERVICE_NAME=chat-api\""));
        assert!(!h.systemd_dir.exists(), "a dry run writes nothing");

        // Execute: the drop-in is written before systemctl runs (there is no
        // systemd here, so the restart itself fails and says so).
        let mut x = a.clone();
        x.mode = ActionMode::Execute;
        x.idempotency_key = "p2".into();
        let r = handle(&x, &h, &mut l, &mut NoProbes).expect("handle");
        assert_eq!(
            std::fs::read_to_string(&dropin).expect("drop-in"),
            python_sdk_dropin_text("chat-api.service", &h)
        );
        assert!(r.last().and_then(|f| f.status).is_some());
        let mut off = x.clone();
        off.kind = ActionKind::new(ActionKind::DISABLE_PYTHON_SDK);
        off.idempotency_key = "p3".into();
        handle(&off, &h, &mut l, &mut NoProbes).expect("handle");
        assert!(!dropin.exists(), "disable removes the drop-in");

        let mut host_target = a.clone();
        host_target.target = "host:/usr/bin/python3".into();
        host_target.idempotency_key = "p4".into();
        let r = handle(&host_target, &h, &mut l, &mut NoProbes).expect("handle");
        assert_eq!(r[1].status, Some(ResultStatus::Refused));
    }

    #[test]
    fn remediation_kinds_are_dispatched_with_their_phases() {
        let (_, mut l) = ledger();
        let kinds = [
            "stop_service",
            "rotate_logs",
            "set_gpu_power_limit",
            "reset_gpu",
            "rate_limit_workload",
        ];
        let h = host(&kinds);
        // A real stop: received, started, final, and the message says what ran.
        let (pid, _) = orphan_sleep();
        let mut stop = action("stop_service", "r1", serde_json::json!({"timeout_s": 5}));
        stop.target = format!("proc:sleep-{}", rand::random::<u32>());
        let none = handle(&stop, &h, &mut l, &mut NoProbes).expect("handle");
        assert_eq!(none[1].status, Some(ResultStatus::Failed));
        assert!(
            none[1].message.starts_with("no process of proc:sleep-"),
            "{}",
            none[1].message
        );
        let mut one = action("stop_service", "r2", serde_json::json!({"timeout_s": 5}));
        one.target = format!(
            "host:{}",
            remedy::process::read(Path::new("/proc"), pid)
                .expect("sleep")
                .exe
        );
        // Every sleep on the host shares that key: stop only in dry-run mode.
        one.mode = ActionMode::DryRun;
        let d = handle(&one, &h, &mut l, &mut NoProbes).expect("handle");
        assert_eq!(phases(&d), vec![ResultPhase::Received, ResultPhase::Final]);
        assert_eq!(d[1].status, Some(ResultStatus::DryRun), "{:?}", d[1]);
        assert!(
            d[1].message.contains(&format!("pid {pid} (sleep")),
            "{}",
            d[1].message
        );
        let signal = action("signal_process", "r3", serde_json::json!({"pid": pid}));
        let s = handle(&signal, &host(&["signal_process"]), &mut l, &mut NoProbes).expect("handle");
        assert_eq!(
            phases(&s),
            vec![
                ResultPhase::Received,
                ResultPhase::Started,
                ResultPhase::Final
            ]
        );
        assert!(
            s[2].stdout_tail.contains("\"rollback\":null"),
            "{}",
            s[2].stdout_tail
        );

        let logs = handle(
            &action(
                "rotate_logs",
                "r4",
                serde_json::json!({"path": "/var/log/syslog"}),
            ),
            &h,
            &mut l,
            &mut NoProbes,
        )
        .expect("handle");
        assert_eq!(
            phases(&logs),
            vec![ResultPhase::Received, ResultPhase::Final]
        );
        assert_eq!(logs[1].status, Some(ResultStatus::Refused));
        assert!(
            logs[1].message.starts_with("no log_dirs"),
            "{}",
            logs[1].message
        );

        // The real NVML path: this machine has no GPU, so NVML's error.
        if !Path::new("/dev/nvidia0").exists() {
            for (key, kind) in [("r5", "set_gpu_power_limit"), ("r6", "reset_gpu")] {
                let g = handle(
                    &action(kind, key, serde_json::json!({"gpu": "0", "watts_pct": 80})),
                    &h,
                    &mut l,
                    &mut NoProbes,
                )
                .expect("handle");
                assert_eq!(g[1].status, Some(ResultStatus::Refused), "{:?}", g[1]);
                assert!(g[1].message.starts_with("no NVML: "), "{}", g[1].message);
            }
        }
        let rl = handle(
            &action(
                "rate_limit_workload",
                "r7",
                serde_json::json!({"max_rps": 5}),
            ),
            &h,
            &mut l,
            &mut NoProbes,
        )
        .expect("handle");
        assert_eq!(rl[1].status, Some(ResultStatus::Refused));
        assert!(rl[1]
            .message
            .starts_with("unknown action kind rate_limit_workload"));
    }
}
