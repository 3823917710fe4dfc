//! `stop_service`, `start_service`, `restart_service` by workload key:
//! `systemd:<unit>` through systemctl, `docker:<name or id>` through the Engine
//! API, and plain processes (`host:<exe>`, `proc:<comm>`) by signal.
//!
//! Payload (unknown fields are an error): `workload` (default: the action's
//! target); `restart_service` also takes the older `unit` (a `.service` name),
//! or `select` (`top_rss`, `top_cpu`, `top_io`; with `within`, `sample_ms`) to
//! restart the workload of the process a selector picks. `timeout_s` (default
//! 10, at most 120) bounds a stop; `kill: true` lets a plain-process stop send
//! SIGKILL to what outlives SIGTERM.
//!
//! Invariants:
//! - systemd is used only where it is the init system, Docker only where its
//!   socket exists; otherwise the kind is refused with that reason.
//! - A plain process has no supervisor the agent could start it again with:
//!   `stop_service` signals it (every member passes the safety rails, SIGKILL
//!   only on `kill: true`), `start_service` and `restart_service` refuse it.
//! - `stop_service` records the state it replaced (systemd `ActiveState`, Docker
//!   `State.Status`) before stopping; `start_service` is its rollback.
//! - Every wait is bounded (`timeout_s`; systemctl is killed past it).

use super::process::{self, Proc, Selector};
use super::{bounded, is_dry, payload, rollback_json, Context, Outcome};
use crate::docker::{self, Verb};
use std::process::Command;
use std::time::Duration;
use tether_proto::{Action, ActionKind};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    workload: Option<String>,
    unit: Option<String>,
    select: Option<String>,
    within: Option<String>,
    sample_ms: Option<u64>,
    timeout_s: Option<u64>,
    kill: Option<bool>,
}

/// A workload as a service manager sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    Systemd(String),
    Docker(String),
    /// A plain process key: `host:<exe>` or `proc:<comm>`.
    Process(String),
}

/// A systemd unit name we are willing to pass to systemctl.
pub fn unit_name(s: &str) -> Option<&str> {
    let ok = s.ends_with(".service")
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@:\\".contains(&b));
    ok.then_some(s)
}

/// Parses a workload key; `Err` is the reason it cannot be a service here.
pub fn parse_key(key: &str) -> Result<Workload, Outcome> {
    if let Some(unit) = key.strip_prefix("systemd:") {
        return unit_name(unit)
            .map(|u| Workload::Systemd(u.to_owned()))
            .ok_or_else(|| {
                Outcome::not_run(format!("{key}: not a systemd unit ending in .service"))
            });
    }
    if let Some(name) = key.strip_prefix("docker:") {
        return docker::container_name(name)
            .map(|n| Workload::Docker(n.to_owned()))
            .ok_or_else(|| Outcome::not_run(format!("{key}: not a Docker container name or id")));
    }
    if key.starts_with("k8s:") {
        return Err(Outcome::refused(format!(
            "{key} is a Kubernetes workload: its controller owns its lifecycle; the agent does not stop or start pods"
        )));
    }
    if process::is_workload_key(key) {
        return Ok(Workload::Process(key.to_owned()));
    }
    Err(Outcome::not_run(format!(
        "{key:?} is not a workload key (systemd:<unit>, docker:<name>, host:<exe>, proc:<comm>)"
    )))
}

fn systemctl(args: &[&str]) -> Command {
    let mut c = Command::new("systemctl");
    c.args(args);
    c
}

/// `systemctl is-active <unit>`: `active`, `inactive`, `failed`, ...
fn active_state(unit: &str) -> Result<String, String> {
    let out = bounded(systemctl(&["is-active", unit]), Duration::from_secs(10))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Refuses a systemd or Docker workload one of whose processes the rails
/// protect (the agent's own unit, sshd, ...).
fn guard(ctx: &Context, verb: &str, key: &str) -> Result<(), Outcome> {
    for m in process::members(ctx, key) {
        if let Err(r) = process::rail(ctx, &m) {
            return Err(Outcome::refused(format!("refusing to {verb} {key}: {r}")));
        }
    }
    Ok(())
}

fn record_subject(key: &str) -> String {
    format!("service:{key}")
}

/// Runs a systemctl verb, bounded; the outcome says what it did.
fn systemctl_verb(verb: &str, unit: &str, limit: Duration, done: String) -> Outcome {
    match bounded(systemctl(&[verb, unit]), limit) {
        Ok(out) => {
            let mut o = if out.status.success() {
                Outcome::succeeded(done)
            } else {
                Outcome::failed(format!(
                    "systemctl {verb} {unit} exited with {}",
                    out.status
                ))
            };
            o.exit_code = out.status.code();
            o.stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            o.stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            o
        }
        Err(e) => Outcome::failed(e),
    }
}

fn workload_of(a: &Action, p: &Payload) -> Result<String, Outcome> {
    if let Some(u) = &p.unit {
        return unit_name(u)
            .map(|u| format!("systemd:{u}"))
            .ok_or_else(|| Outcome::not_run("payload needs a unit ending in .service"));
    }
    p.workload
        .clone()
        .or_else(|| process::is_workload_key(&a.target).then(|| a.target.clone()))
        .ok_or_else(|| Outcome::not_run("payload needs a workload key (or a workload-key target)"))
}

pub fn stop(a: &Action, ctx: &Context) -> Outcome {
    let p: Payload = match payload(a) {
        Ok(p) => p,
        Err(o) => return o,
    };
    if p.select.is_some() || p.unit.is_some() {
        return Outcome::not_run("payload: stop_service takes a workload, not select or unit");
    }
    let key = match workload_of(a, &p) {
        Ok(k) => k,
        Err(o) => return o,
    };
    let timeout = Duration::from_secs(p.timeout_s.unwrap_or(10).min(120));
    let rollback = Some((
        ActionKind::START_SERVICE,
        serde_json::json!({ "workload": key }),
    ));
    match parse_key(&key) {
        Err(o) => o,
        Ok(Workload::Systemd(unit)) => {
            if let Err(o) = ctx.need_systemd().and_then(|()| guard(ctx, "stop", &key)) {
                return o;
            }
            let was = match active_state(&unit) {
                Ok(s) => s,
                Err(e) => return Outcome::not_run(e),
            };
            if is_dry(a) {
                return Outcome::dry(format!("would run systemctl stop {unit} (now {was})"));
            }
            let previous = serde_json::json!({ "workload": key, "active_state": was });
            if let Err(e) = ctx
                .records()
                .keep_first(&record_subject(&key), previous.clone())
            {
                return Outcome::not_run(format!("not stopped: {e}"));
            }
            let mut o = systemctl_verb(
                "stop",
                &unit,
                timeout + Duration::from_secs(5),
                format!("stopped {unit} (was {was}); start_service undoes it"),
            );
            o.stdout = rollback_json(rollback, previous);
            o
        }
        Ok(Workload::Docker(name)) => {
            if let Err(o) = ctx.need_docker().and_then(|()| guard(ctx, "stop", &key)) {
                return o;
            }
            let was = match docker::state(&ctx.docker_socket, &name) {
                Ok(s) => s,
                Err(e) => return Outcome::not_run(e.to_string()),
            };
            let path = docker::control_path(&name, Verb::Stop, timeout.as_secs());
            if is_dry(a) {
                return Outcome::dry(format!(
                    "would POST {path} to the Docker engine (container {name} is {was} now)"
                ));
            }
            let previous = serde_json::json!({ "workload": key, "state": was });
            if let Err(e) = ctx
                .records()
                .keep_first(&record_subject(&key), previous.clone())
            {
                return Outcome::not_run(format!("not stopped: {e}"));
            }
            let out = rollback_json(rollback, previous);
            match docker::control(&ctx.docker_socket, &name, Verb::Stop, timeout.as_secs()) {
                Ok(true) => Outcome::succeeded(format!(
                    "stopped container {name} (POST {path}; was {was}); start_service undoes it"
                ))
                .with_stdout(out),
                Ok(false) => Outcome::succeeded(format!("container {name} was already stopped"))
                    .with_stdout(out),
                Err(e) => Outcome::failed(e.to_string()).with_stdout(out),
            }
        }
        Ok(Workload::Process(key)) => stop_processes(a, ctx, &key, timeout, p.kill == Some(true)),
    }
}

fn stop_processes(a: &Action, ctx: &Context, key: &str, timeout: Duration, kill: bool) -> Outcome {
    let members = process::members(ctx, key);
    if members.is_empty() {
        return Outcome::not_run(format!("no process of {key} runs here"));
    }
    for m in &members {
        if let Err(r) = process::rail(ctx, m) {
            return Outcome::refused(format!("refusing to stop {key}: {r}"));
        }
    }
    let shown: Vec<String> = members.iter().map(Proc::shown).collect();
    let cmdlines: Vec<serde_json::Value> = members
        .iter()
        .map(|m| {
            let argv: Vec<String> = std::fs::read(ctx.proc_root.join(m.pid.to_string()).join("cmdline"))
                .map(|b| {
                    b.split(|c| *c == 0)
                        .filter(|s| !s.is_empty())
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect()
                })
                .unwrap_or_default();
            serde_json::json!({ "pid": m.pid, "exe": m.exe, "argv": crate::discovery::redact(&argv) })
        })
        .collect();
    let then = if kill {
        ", then SIGKILL to what remains"
    } else {
        ""
    };
    if is_dry(a) {
        return Outcome::dry(format!(
            "would send SIGTERM to {} and wait up to {} s for them to exit{then}",
            shown.join(", "),
            timeout.as_secs()
        ));
    }
    // No supervisor: nothing can start it again, so there is no rollback.
    let out = rollback_json(
        None,
        serde_json::json!({ "workload": key, "stopped": cmdlines }),
    );
    let mut errors = Vec::new();
    for m in &members {
        if let Err(e) = process::send(&ctx.proc_root, m, rustix::process::Signal::TERM) {
            if !matches!(e, process::SendError::Gone(_)) {
                errors.push(e.to_string());
            }
        }
    }
    let mut alive: Vec<Proc> = process::wait_exit(&ctx.proc_root, &members, timeout)
        .into_iter()
        .cloned()
        .collect();
    let mut msg = format!("sent SIGTERM to {}", shown.join(", "));
    if !alive.is_empty() && kill {
        for m in &alive {
            if let Err(e) = process::send(&ctx.proc_root, m, rustix::process::Signal::KILL) {
                if !matches!(e, process::SendError::Gone(_)) {
                    errors.push(e.to_string());
                }
            }
        }
        msg.push_str(&format!(
            "; SIGKILL to {} still running after {} s",
            alive.iter().map(Proc::shown).collect::<Vec<_>>().join(", "),
            timeout.as_secs()
        ));
        alive = process::wait_exit(&ctx.proc_root, &alive, Duration::from_secs(5))
            .into_iter()
            .cloned()
            .collect();
    }
    if !errors.is_empty() {
        msg.push_str(&format!("; {}", errors.join("; ")));
    }
    if alive.is_empty() {
        Outcome::succeeded(format!(
            "stopped {key}: {msg}; all exited (a plain process: start_service cannot start it again)"
        ))
        .with_stdout(out)
    } else {
        Outcome::failed(format!(
            "{key} not stopped: {msg}; still running after {} s: {}{}",
            timeout.as_secs(),
            alive.iter().map(Proc::shown).collect::<Vec<_>>().join(", "),
            if kill {
                ""
            } else {
                " (payload kill: true sends SIGKILL)"
            }
        ))
        .with_stdout(out)
    }
}

pub fn start(a: &Action, ctx: &Context) -> Outcome {
    let p: Payload = match payload(a) {
        Ok(p) => p,
        Err(o) => return o,
    };
    if p.select.is_some() || p.kill.is_some() {
        return Outcome::not_run("payload: start_service takes a workload, not select or kill");
    }
    let key = match workload_of(a, &p) {
        Ok(k) => k,
        Err(o) => return o,
    };
    let subject = record_subject(&key);
    let recorded = ctx.records().load(&subject).ok().flatten();
    let before = recorded
        .as_ref()
        .and_then(|r| r["active_state"].as_str().or(r["state"].as_str()))
        .map(|s| format!("; before the stop it was {s}"))
        .unwrap_or_default();
    let outcome = match parse_key(&key) {
        Err(o) => return o,
        Ok(Workload::Systemd(unit)) => {
            if let Err(o) = ctx.need_systemd() {
                return o;
            }
            if is_dry(a) {
                let now = active_state(&unit).unwrap_or_else(|e| e);
                return Outcome::dry(format!("would run systemctl start {unit} (now {now}){before}"));
            }
            systemctl_verb(
                "start",
                &unit,
                Duration::from_secs(120),
                format!("started {unit}{before}"),
            )
        }
        Ok(Workload::Docker(name)) => {
            if let Err(o) = ctx.need_docker() {
                return o;
            }
            let path = docker::control_path(&name, Verb::Start, 0);
            if is_dry(a) {
                let now = docker::state(&ctx.docker_socket, &name)
                    .unwrap_or_else(|e| e.to_string());
                return Outcome::dry(format!(
                    "would POST {path} to the Docker engine (container {name} is {now} now){before}"
                ));
            }
            match docker::control(&ctx.docker_socket, &name, Verb::Start, 0) {
                Ok(true) => Outcome::succeeded(format!("started container {name} (POST {path}){before}")),
                Ok(false) => Outcome::succeeded(format!("container {name} was already running")),
                Err(e) => Outcome::failed(e.to_string()),
            }
        }
        Ok(Workload::Process(key)) => {
            return Outcome::refused(format!(
                "{key} is a plain process: the agent has no supervisor to start it with (the stop_service result lists its command line)"
            ))
        }
    };
    if outcome.status == tether_proto::ResultStatus::Succeeded {
        if let Err(e) = ctx.records().remove(&subject) {
            let mut o = outcome;
            o.message.push_str(&format!("; {e}"));
            return o;
        }
    }
    outcome
}

pub fn restart(
    a: &Action,
    ctx: &Context,
    gpu_procs: &dyn Fn() -> Result<Vec<(u32, u64)>, String>,
) -> Outcome {
    let p: Payload = match payload(a) {
        Ok(p) => p,
        Err(o) => return o,
    };
    let timeout = Duration::from_secs(p.timeout_s.unwrap_or(10).min(120));
    let (key, why) = if let Some(sel) = &p.select {
        let Some(sel) = Selector::parse(sel) else {
            return Outcome::not_run(format!(
                "payload: select {sel:?} is not top_rss, top_cpu, top_io or top_gpu_memory"
            ));
        };
        let scope = p
            .within
            .as_deref()
            .or_else(|| process::is_workload_key(&a.target).then_some(a.target.as_str()));
        let sample = Duration::from_millis(p.sample_ms.unwrap_or(1000).clamp(100, 5000));
        match process::select(ctx, sel, scope, sample, gpu_procs) {
            Ok(c) => (
                process::workload_key(&ctx.proc_root, &c.proc),
                format!(" ({})", c.why),
            ),
            Err(why) => return Outcome::refused(why),
        }
    } else {
        match workload_of(a, &p) {
            Ok(k) => (k, String::new()),
            Err(o) => return o,
        }
    };
    match parse_key(&key) {
        Err(o) => o,
        Ok(Workload::Systemd(unit)) => {
            if let Err(o) = ctx.need_systemd().and_then(|()| guard(ctx, "restart", &key)) {
                return o;
            }
            if is_dry(a) {
                return Outcome::dry(format!("would run systemctl restart {unit}{why}"));
            }
            systemctl_verb(
                "restart",
                &unit,
                timeout + Duration::from_secs(120),
                format!("restarted {unit}{why}"),
            )
        }
        Ok(Workload::Docker(name)) => {
            if let Err(o) = ctx.need_docker().and_then(|()| guard(ctx, "restart", &key)) {
                return o;
            }
            let path = docker::control_path(&name, Verb::Restart, timeout.as_secs());
            if is_dry(a) {
                return Outcome::dry(format!("would POST {path} to the Docker engine{why}"));
            }
            match docker::control(&ctx.docker_socket, &name, Verb::Restart, timeout.as_secs()) {
                Ok(_) => Outcome::succeeded(format!("restarted container {name} (POST {path}){why}")),
                Err(e) => Outcome::failed(e.to_string()),
            }
        }
        Ok(Workload::Process(key)) => Outcome::refused(format!(
            "{key} is a plain process{why}: with no supervisor to start it again a restart would only stop it; use stop_service or signal_process"
        )),
    }
}
