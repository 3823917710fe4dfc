//! Remediation: the action kinds that change the host (logs, the journal,
//! services, processes, cgroup limits, GPUs), each with a dry run, a refusal and,
//! where one exists, a rollback. `actions` stays the dispatcher (ledger,
//! allow-list, expiry); it hands each kind to the function here that owns it.
//!
//! Invariants:
//! - A payload is parsed strictly (an unknown field is an error, reported
//!   `failed` before anything is touched) and the host is checked before it is
//!   changed: what this host cannot do (no systemd, no journald, no Docker
//!   socket, no NVML, no controller, no privilege, a path outside the allowed
//!   directories) ends `refused` with that reason, in dry runs too.
//! - A dry run reads and never writes; its message names every change the real
//!   run would make, with the values it would replace.
//! - Before a reversible change the previous state is recorded under
//!   `<data_dir>/rollback/` ([`rollback::Records`]); the first record of a
//!   subject is kept until it is rolled back, so a rollback restores the state
//!   from before Tether touched it. The result's stdout carries the same as JSON:
//!   `{"rollback": {"action", "payload"} | null, "previous": ...}`.
//! - Nothing here signals or stops pid 1, the agent, its parent or its children,
//!   a kernel thread or a protected process ([`process::rail`]).
//! - Bounded: every wait has a deadline, every directory walk a depth and entry
//!   limit, every read a size limit; nothing on the action path panics.
//! - Every message says what was done (or would be, or why not).

pub mod cgroup;
pub mod gpu;
pub mod logs;
pub mod process;
pub mod rollback;
pub mod service;
pub mod signal;

#[cfg(test)]
pub(crate) mod fixture;
#[cfg(test)]
mod kernel_tests;

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tether_proto::{Action, ActionKind, ActionMode, ResultStatus};

/// What remediation may touch on this host, and where it looks.
#[derive(Debug, Clone)]
pub struct Context {
    /// `/proc` (tests may point elsewhere).
    pub proc_root: PathBuf,
    /// The agent's data directory: rollback records go to `rollback/` inside it.
    pub data_dir: PathBuf,
    /// Config `log_dirs`: the only directories `rotate_logs` touches.
    pub log_dirs: Vec<PathBuf>,
    /// Config `protected_processes`.
    pub protected: Vec<String>,
    /// Config `docker_socket`.
    pub docker_socket: PathBuf,
    /// Exists when systemd is the init system (`/run/systemd/system`).
    pub systemd_marker: PathBuf,
    /// journald's socket (`/run/systemd/journal/socket`): journald runs.
    pub journald_socket: PathBuf,
    /// `journalctl --directory`; `None` is the system journal.
    pub journal_dir: Option<PathBuf>,
    /// The agent's pid: it, its parent and its children are never signalled.
    pub agent_pid: u32,
}

impl Context {
    /// The production context: the real `/proc`, systemd and journald paths.
    pub fn new(
        data_dir: &Path,
        log_dirs: &[PathBuf],
        protected: &[String],
        docker_socket: &Path,
    ) -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            data_dir: data_dir.to_path_buf(),
            log_dirs: log_dirs.to_vec(),
            protected: protected.to_vec(),
            docker_socket: docker_socket.to_path_buf(),
            systemd_marker: PathBuf::from("/run/systemd/system"),
            journald_socket: PathBuf::from("/run/systemd/journal/socket"),
            journal_dir: None,
            agent_pid: std::process::id(),
        }
    }

    pub fn records(&self) -> rollback::Records {
        rollback::Records::new(&self.data_dir)
    }

    /// `Err(refusal)` unless systemd is the init system.
    pub fn need_systemd(&self) -> Result<(), Outcome> {
        if self.systemd_marker.is_dir() {
            Ok(())
        } else {
            Err(Outcome::refused(format!(
                "no systemd: {} is absent, so systemd is not the init system here",
                self.systemd_marker.display()
            )))
        }
    }

    /// `Err(refusal)` unless the Docker Engine socket exists.
    pub fn need_docker(&self) -> Result<(), Outcome> {
        use std::os::unix::fs::FileTypeExt;
        match std::fs::metadata(&self.docker_socket) {
            Ok(m) if m.file_type().is_socket() => Ok(()),
            Ok(_) => Err(Outcome::refused(format!(
                "no Docker socket: {} is not a socket",
                self.docker_socket.display()
            ))),
            Err(e) => Err(Outcome::refused(format!(
                "no Docker socket: {}: {e}",
                self.docker_socket.display()
            ))),
        }
    }
}

/// How one remediation ended; `actions` turns it into the final result.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: ResultStatus,
    pub message: String,
    /// Machine-readable detail: the rollback record, what was chosen.
    pub stdout: String,
    pub stderr: String,
    pub exit_code: Option<i32>,
    /// Whether the host was acted on (a `started` phase is reported).
    pub ran: bool,
}

impl Outcome {
    fn new(status: ResultStatus, message: String, ran: bool) -> Self {
        Self {
            status,
            message,
            stdout: String::new(),
            stderr: String::new(),
            exit_code: None,
            ran,
        }
    }

    /// The host cannot (or must not) do it; nothing was touched.
    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(ResultStatus::Refused, message.into(), false)
    }

    /// Failed before touching the host: a malformed payload, or nothing to act
    /// on (no such pid, no process of the workload).
    pub fn not_run(message: impl Into<String>) -> Self {
        Self::new(ResultStatus::Failed, message.into(), false)
    }

    pub fn dry(message: impl Into<String>) -> Self {
        Self::new(ResultStatus::DryRun, message.into(), false)
    }

    pub fn succeeded(message: impl Into<String>) -> Self {
        Self::new(ResultStatus::Succeeded, message.into(), true)
    }

    /// It ran and did not achieve its effect.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(ResultStatus::Failed, message.into(), true)
    }

    pub fn with_stdout(mut self, stdout: impl Into<String>) -> Self {
        self.stdout = stdout.into();
        self
    }
}

/// The action's payload as `T`; `null` reads as `{}`. Unknown fields are errors.
pub fn payload<T: DeserializeOwned>(a: &Action) -> Result<T, Outcome> {
    let v = if a.payload.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        a.payload.clone()
    };
    serde_json::from_value(v).map_err(|e| Outcome::not_run(format!("payload: {e}")))
}

pub fn is_dry(a: &Action) -> bool {
    a.mode == ActionMode::DryRun
}

/// The rollback document a result's stdout carries.
pub fn rollback_json(
    rollback: Option<(&str, serde_json::Value)>,
    previous: serde_json::Value,
) -> String {
    let rb = rollback.map_or(
        serde_json::Value::Null,
        |(action, payload)| serde_json::json!({ "action": action, "payload": payload }),
    );
    serde_json::json!({ "rollback": rb, "previous": previous }).to_string()
}

/// Runs `cmd` with its output captured, killing it at `limit`.
pub fn bounded(mut cmd: Command, limit: Duration) -> Result<Output, String> {
    let shown = format!("{cmd:?}").replace('"', "");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start {shown}: {e}"))?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{shown} did not finish within {limit:?}; killed"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("{shown}: {e}")),
        }
    }
    child
        .wait_with_output()
        .map_err(|e| format!("{shown}: {e}"))
}

/// `name` found on `PATH` (or the usual system directories).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// What the host offers remediation; probed, never configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offers {
    pub systemd: bool,
    pub journald: bool,
    pub docker: bool,
    pub nvml: bool,
    /// A cpu or memory cgroup controller (v1 or v2) the agent can write.
    pub cgroup_limits: bool,
    pub ebpf: bool,
    /// `log_dirs` names at least one existing directory.
    pub log_dirs: bool,
}

impl Offers {
    /// Probes the host. `ebpf`: whether the agent's instrumentation loaded.
    pub fn probe(ctx: &Context, ebpf: bool) -> Self {
        Self {
            systemd: ctx.need_systemd().is_ok(),
            journald: logs::journald(ctx).is_ok(),
            docker: ctx.need_docker().is_ok(),
            nvml: gpu::NvmlGpus::open()
                .and_then(|g| {
                    use gpu::GpuControl;
                    g.count()
                })
                .is_ok_and(|n| n > 0),
            cgroup_limits: cgroup::writable_controller(&ctx.proc_root),
            ebpf,
            log_dirs: ctx.log_dirs.iter().any(|d| d.is_dir()),
        }
    }
}

/// What a kind needs of the host.
type Needs = fn(&Offers) -> bool;

/// Every kind this agent version implements, with what the host must offer.
const KINDS: &[(&str, Needs)] = &[
    (ActionKind::COLLECT_EVIDENCE, |_| true),
    (ActionKind::INSTRUMENT, |o| o.ebpf),
    (ActionKind::UNINSTRUMENT, |o| o.ebpf),
    (ActionKind::ENABLE_PYTHON_SDK, |o| o.systemd),
    (ActionKind::DISABLE_PYTHON_SDK, |o| o.systemd),
    // A plain process can always be signalled and stopped.
    (ActionKind::SIGNAL_PROCESS, |_| true),
    (ActionKind::STOP_SERVICE, |_| true),
    // Starting or restarting needs a supervisor: systemd or Docker.
    (ActionKind::START_SERVICE, |o| o.systemd || o.docker),
    (ActionKind::RESTART_SERVICE, |o| o.systemd || o.docker),
    (ActionKind::ROTATE_LOGS, |o| o.log_dirs),
    (ActionKind::VACUUM_JOURNAL, |o| o.journald),
    (ActionKind::LIMIT_WORKLOAD, |o| o.cgroup_limits),
    (ActionKind::RESTORE_WORKLOAD_LIMIT, |o| o.cgroup_limits),
    (ActionKind::SET_GPU_POWER_LIMIT, |o| o.nvml),
    (ActionKind::RESTORE_GPU_POWER_LIMIT, |o| o.nvml),
    (ActionKind::RESET_GPU, |o| o.nvml),
];

/// The kinds this agent implements, whatever the host.
pub fn implemented() -> Vec<&'static str> {
    KINDS.iter().map(|(k, _)| *k).collect()
}

/// The kinds this agent can run here: the local allow-list ∩ what this agent
/// implements ∩ what the host offers, sorted.
pub fn runnable_kinds(allowed: &[String], offers: &Offers) -> Vec<String> {
    let mut out: Vec<String> = KINDS
        .iter()
        .filter(|(k, can)| allowed.iter().any(|a| a == k) && can(offers))
        .map(|(k, _)| (*k).to_owned())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runnable_kinds_is_allow_list_and_implemented_and_offered() {
        let allowed: Vec<String> = [
            "signal_process",
            "stop_service",
            "start_service",
            "vacuum_journal",
            "rotate_logs",
            "limit_workload",
            "set_gpu_power_limit",
            "instrument",
            "rate_limit_workload",
            "drain_gpu",
        ]
        .map(String::from)
        .to_vec();
        let bare = Offers::default();
        assert_eq!(
            runnable_kinds(&allowed, &bare),
            vec!["signal_process", "stop_service"],
            "a bare host still signals and stops plain processes; unknown kinds never appear"
        );
        let rich = Offers {
            systemd: true,
            journald: true,
            docker: false,
            nvml: true,
            cgroup_limits: true,
            ebpf: true,
            log_dirs: true,
        };
        assert_eq!(
            runnable_kinds(&allowed, &rich),
            vec![
                "instrument",
                "limit_workload",
                "rotate_logs",
                "set_gpu_power_limit",
                "signal_process",
                "start_service",
                "stop_service",
                "vacuum_journal",
            ]
        );
        let docker_only = Offers {
            docker: true,
            ..Offers::default()
        };
        assert!(runnable_kinds(&allowed, &docker_only).contains(&"start_service".to_owned()));
        assert!(
            runnable_kinds(&[], &rich).is_empty(),
            "nothing beyond the allow-list"
        );
        assert!(!implemented().contains(&"rate_limit_workload"));
    }

    /// This machine, probed for real: no systemd, no journald socket, no Docker,
    /// no NVML; v1 cpu and memory controllers mounted and writable as root.
    #[test]
    fn probing_this_host() {
        let ctx = Context::new(
            Path::new("/nonexistent/data"),
            &[std::env::temp_dir()],
            &[],
            Path::new("/var/run/docker.sock"),
        );
        let o = Offers::probe(&ctx, false);
        assert_eq!(o.systemd, Path::new("/run/systemd/system").is_dir());
        assert_eq!(o.docker, Path::new("/var/run/docker.sock").exists());
        assert_eq!(o.nvml, Path::new("/dev/nvidia0").exists());
        assert!(o.log_dirs);
        assert!(!o.ebpf);
        assert_eq!(
            o.cgroup_limits,
            cgroup::writable_controller(Path::new("/proc"))
        );
    }
}
