//! `signal_process`: one signal to a process the payload names (`pid`), the
//! agent chooses (`select`), or to every process of a workload (`workload`).
//!
//! Payload (unknown fields are an error):
//! - `pid`: a pid; or `select`: `top_cpu` | `top_rss` | `top_io` |
//!   `top_gpu_memory`, scoped to `within` (a workload key; default the action's
//!   target when that is a workload key, else the whole host), sampled over
//!   `sample_ms` (default 1000, at most 5000); or `workload`: a workload key.
//!   With none of them, a workload-key target is the workload.
//! - `signal`: `TERM` (default), `INT`, `HUP`, `QUIT`, `KILL`, `USR1`, `USR2`,
//!   `STOP`, `CONT`.
//! - `wait_s`: after `TERM`/`INT`/`QUIT`/`KILL`, how long to wait for the exit
//!   before reporting (default 5, at most 60). Not waiting out is not a failure:
//!   the signal was delivered, and the message says the process still runs.
//!
//! Invariants: every target passes [`process::rail`] (a workload with one
//! protected member is refused whole); no rollback exists (a signal cannot be
//! taken back), so the result's stdout says `"rollback": null`.

use super::process::{self, Proc, Selector};
use super::{is_dry, payload, rollback_json, Context, Outcome};
use std::time::Duration;
use tether_proto::Action;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    pid: Option<u64>,
    select: Option<String>,
    within: Option<String>,
    workload: Option<String>,
    signal: Option<String>,
    sample_ms: Option<u64>,
    wait_s: Option<u64>,
}

/// What to signal, and how it was chosen.
enum Targets {
    One(Proc, String),
    Workload(String, Vec<Proc>),
}

pub fn run(
    a: &Action,
    ctx: &Context,
    gpu_procs: &dyn Fn() -> Result<Vec<(u32, u64)>, String>,
) -> Outcome {
    let p: Payload = match payload(a) {
        Ok(p) => p,
        Err(o) => return o,
    };
    let sig_name = p.signal.as_deref().unwrap_or("TERM");
    let Some((sig, sig_shown)) = process::signal_of(sig_name) else {
        return Outcome::not_run(format!(
            "payload: signal {sig_name:?} is not one of TERM, INT, HUP, QUIT, KILL, USR1, USR2, STOP, CONT"
        ));
    };
    let wait = Duration::from_secs(p.wait_s.unwrap_or(5).min(60));
    let sample = Duration::from_millis(p.sample_ms.unwrap_or(1000).clamp(100, 5000));
    let target_key = process::is_workload_key(&a.target).then_some(a.target.as_str());
    let targets = if let Some(pid) = p.pid {
        let Some(pid) = u32::try_from(pid).ok().filter(|p| *p > 0) else {
            return Outcome::not_run(format!("payload: pid {pid} is not a process id"));
        };
        match process::read(&ctx.proc_root, pid) {
            Some(proc_) => Targets::One(proc_, format!("pid {pid} named by the payload")),
            None => return Outcome::not_run(format!("pid {pid} does not exist")),
        }
    } else if let Some(sel) = &p.select {
        let Some(sel) = Selector::parse(sel) else {
            return Outcome::not_run(format!(
                "payload: select {sel:?} is not top_cpu, top_rss, top_io or top_gpu_memory"
            ));
        };
        let scope = p.within.as_deref().or(target_key);
        if let Some(s) = scope.filter(|s| !process::is_workload_key(s)) {
            return Outcome::not_run(format!("payload: within {s:?} is not a workload key"));
        }
        match process::select(ctx, sel, scope, sample, gpu_procs) {
            Ok(c) => Targets::One(c.proc, c.why),
            Err(why) => return Outcome::refused(why),
        }
    } else if let Some(key) = p.workload.as_deref().or(target_key) {
        if !process::is_workload_key(key) {
            return Outcome::not_run(format!("payload: workload {key:?} is not a workload key"));
        }
        let members = process::members(ctx, key);
        if members.is_empty() {
            return Outcome::not_run(format!("no process of {key} runs here"));
        }
        Targets::Workload(key.to_owned(), members)
    } else {
        return Outcome::not_run(
            "payload needs pid, select or workload (or a workload-key target)",
        );
    };
    let (procs, how) = match targets {
        Targets::One(p, how) => (vec![p], how),
        Targets::Workload(key, ps) => {
            let n = ps.len();
            (ps, format!("the {n} process(es) of {key}"))
        }
    };
    for t in &procs {
        if let Err(r) = process::rail(ctx, t) {
            return Outcome::refused(format!("refusing to signal: {r}"));
        }
    }
    let shown: Vec<String> = procs.iter().map(Proc::shown).collect();
    let detail = serde_json::json!({
        "signal": sig_shown,
        "chosen": how,
        "pids": procs.iter().map(|p| serde_json::json!({
            "pid": p.pid, "comm": p.comm, "exe": p.exe, "start_ticks": p.start_ticks,
        })).collect::<Vec<_>>(),
    });
    if is_dry(a) {
        return Outcome::dry(format!(
            "would send {sig_shown} to {} ({how})",
            shown.join(", ")
        ))
        .with_stdout(detail.to_string());
    }
    let mut sent = Vec::new();
    let mut errors = Vec::new();
    for t in &procs {
        match process::send(&ctx.proc_root, t, sig) {
            Ok(()) => sent.push(t.clone()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let waits = matches!(sig_shown, "SIGTERM" | "SIGINT" | "SIGQUIT" | "SIGKILL");
    let alive: Vec<String> = if waits && !wait.is_zero() {
        process::wait_exit(&ctx.proc_root, &sent, wait)
            .into_iter()
            .map(Proc::shown)
            .collect()
    } else {
        vec![]
    };
    let mut msg = format!(
        "sent {sig_shown} to {} ({how})",
        sent.iter().map(Proc::shown).collect::<Vec<_>>().join(", ")
    );
    if waits && !wait.is_zero() && !sent.is_empty() {
        if alive.is_empty() {
            msg.push_str("; it exited");
        } else {
            msg.push_str(&format!(
                "; still running after {} s: {}",
                wait.as_secs(),
                alive.join(", ")
            ));
        }
    }
    let out = rollback_json(None, detail);
    if sent.is_empty() {
        return Outcome::failed(format!(
            "sent {sig_shown} to nothing: {}",
            errors.join("; ")
        ))
        .with_stdout(out);
    }
    if !errors.is_empty() {
        msg.push_str(&format!("; not sent: {}", errors.join("; ")));
        return Outcome::failed(msg).with_stdout(out);
    }
    Outcome::succeeded(msg).with_stdout(out)
}
