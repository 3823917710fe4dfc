//! Running actions the control plane hands out, governed locally.
//!
//! Invariants:
//! - Only kinds on the local allow-list run; nothing from the server widens it.
//! - Every action's idempotency key is appended to the ledger and fsynced before
//!   the action runs, so a redelivered action is never run twice, even across a
//!   crash (a crash mid-action reports it as failed rather than rerunning it).
//! - An expired action, a dry run, a refused kind and an unknown kind all end with
//!   a `final` result that says why.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};
use tether_proto::{Action, ActionMode, ActionResult, ResultPhase, ResultStatus};

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

/// Runs (or refuses) one action; returns the results to report, in phase order.
pub fn handle(
    a: &Action,
    allowed: &[String],
    ledger: &mut Ledger,
) -> Result<Vec<ActionResult>, LedgerError> {
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
    } else {
        execute(a)
    };
    ledger.append(&format!(
        "final {}",
        serde_json::to_string(&fin).unwrap_or_default()
    ))?;
    ledger
        .done
        .insert(a.idempotency_key.clone(), Some(fin.clone()));
    Ok(vec![received, fin])
}

fn run(a: &Action, mut cmd: Command) -> ActionResult {
    let started = now_ms();
    let mut r = result(a, ResultPhase::Final, Some(ResultStatus::Failed), "");
    r.started_at_ms = Some(started);
    match cmd.output() {
        Ok(out) => {
            r.exit_code = out.status.code();
            r.stdout_tail = tail(&out.stdout);
            r.stderr_tail = tail(&out.stderr);
            if out.status.success() {
                r.status = Some(ResultStatus::Succeeded);
            } else {
                r.message = format!("exited with {}", out.status);
            }
        }
        Err(e) => r.message = format!("could not start: {e}"),
    }
    r.finished_at_ms = Some(now_ms());
    r
}

fn execute(a: &Action) -> ActionResult {
    let dry = a.mode == ActionMode::DryRun;
    let p = &a.payload;
    match a.kind.as_str() {
        "signal_process" => {
            let (Some(pid), sig) = (p["pid"].as_u64(), p["signal"].as_str().unwrap_or("TERM")) else {
                return result(a, ResultPhase::Final, Some(ResultStatus::Failed), "payload needs pid");
            };
            if !sig.chars().all(|c| c.is_ascii_alphanumeric()) {
                return result(a, ResultPhase::Final, Some(ResultStatus::Failed), "bad signal name");
            }
            if dry {
                return result(a, ResultPhase::Final, Some(ResultStatus::DryRun), &format!("would send SIG{sig} to {pid}"));
            }
            let mut c = Command::new("kill");
            c.arg(format!("-{sig}")).arg(pid.to_string());
            run(a, c)
        }
        "restart_service" => {
            let Some(unit) = p["unit"].as_str().filter(|u| u.ends_with(".service") && !u.contains('/')) else {
                return result(a, ResultPhase::Final, Some(ResultStatus::Failed), "payload needs a unit ending in .service");
            };
            if dry {
                return result(a, ResultPhase::Final, Some(ResultStatus::DryRun), &format!("would run systemctl restart {unit}"));
            }
            let mut c = Command::new("systemctl");
            c.args(["restart", unit]);
            run(a, c)
        }
        "instrument" | "uninstrument" => result(
            a,
            ResultPhase::Final,
            Some(ResultStatus::Refused),
            "unsupported on this host: eBPF instrumentation is not implemented in this agent version",
        ),
        other => result(
            a,
            ResultPhase::Final,
            Some(ResultStatus::Refused),
            &format!("unsupported action kind {other} in this agent version"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::ActionKind;

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

    fn ledger() -> (PathBuf, Ledger) {
        let p = std::env::temp_dir().join(format!(
            "ledger-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let l = Ledger::open(&p).expect("ledger");
        (p, l)
    }

    #[test]
    fn a_redelivered_action_runs_once_even_after_a_restart() {
        let (path, mut l) = ledger();
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let a = action(
            "signal_process",
            "k1",
            serde_json::json!({"pid": child.id(), "signal": "TERM"}),
        );
        let allowed = vec!["signal_process".to_owned()];
        let first = handle(&a, &allowed, &mut l).expect("handle");
        assert_eq!(
            first[1].status,
            Some(ResultStatus::Succeeded),
            "{:?}",
            first[1]
        );
        let status = child.wait().expect("wait");
        assert!(!status.success(), "the child was signalled");
        // Same action again, from a reopened ledger: not run, same result.
        let mut reopened = Ledger::open(&path).expect("reopen");
        let again = handle(&a, &allowed, &mut reopened).expect("handle");
        assert_eq!(again[1], first[1]);
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
            &[],
            &mut l,
        )
        .expect("handle");
        assert_eq!(off[1].status, Some(ResultStatus::Refused));
        assert!(off[1].message.contains("allow-list"), "{}", off[1].message);
        let mut old = action("signal_process", "k3", serde_json::json!({"pid": 1}));
        old.expires_at_ms = 1;
        let exp = handle(&old, &["signal_process".into()], &mut l).expect("handle");
        assert!(exp[1].message.contains("expired"));
        let inst = handle(
            &action("instrument", "k4", serde_json::Value::Null),
            &["instrument".into()],
            &mut l,
        )
        .expect("handle");
        assert_eq!(inst[1].status, Some(ResultStatus::Refused));
        assert!(inst[1].message.starts_with("unsupported on this host"));
        let mut dry = action(
            "restart_service",
            "k5",
            serde_json::json!({"unit": "chat.service"}),
        );
        dry.mode = ActionMode::DryRun;
        let d = handle(&dry, &["restart_service".into()], &mut l).expect("handle");
        assert_eq!(d[1].status, Some(ResultStatus::DryRun));
        assert_eq!(d[1].message, "would run systemctl restart chat.service");
    }
}
