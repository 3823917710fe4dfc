//! Processes as remediation sees them: facts from `/proc`, the workload key of
//! each (the same key discovery reports), the safety rails, the selectors that
//! pick a target (`top_cpu`, `top_rss`, `top_io`, `top_gpu_memory`), and
//! signalling by pidfd.
//!
//! Invariants:
//! - [`rail`] refuses pid 1, the agent, its parent and its children, kernel
//!   threads (`PF_KTHREAD`, or no `/proc/<pid>/exe`), and anything on the
//!   protected list (by `comm`, executable name or full path). A selector skips
//!   what the rails refuse and says which it skipped and why.
//! - `top_cpu` and `top_io` rank by what happened during a short sample
//!   (bounded to [`MAX_SAMPLE`]), never by totals since boot.
//! - A process is identified by pid and start time: [`send`] opens a pidfd and
//!   checks the start time again, so a pid reused since the choice is never
//!   signalled.
//! - Waiting for an exit has a deadline; a zombie counts as exited.

use super::Context;
use rustix::process::Signal;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// `PF_KTHREAD` in `/proc/<pid>/stat`'s flags.
const PF_KTHREAD: u64 = 0x0020_0000;
/// Longest CPU / I/O sample a selector takes.
pub const MAX_SAMPLE: Duration = Duration::from_secs(5);
/// USER_HZ: the unit of `/proc/<pid>/stat` times on every Linux architecture.
const TICKS_PER_S: f64 = 100.0;

/// One process's facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    /// The executable, `" (deleted)"` trimmed; empty when unreadable.
    pub exe: String,
    /// `false` when `/proc/<pid>/exe` does not exist (kernel threads).
    pub has_exe: bool,
    pub state: char,
    pub flags: u64,
    /// utime + stime, in ticks.
    pub cpu_ticks: u64,
    pub start_ticks: u64,
    pub rss_bytes: u64,
}

impl Proc {
    /// `pid 123 (comm, /usr/bin/x)`.
    pub fn shown(&self) -> String {
        if self.exe.is_empty() {
            format!("pid {} ({})", self.pid, self.comm)
        } else {
            format!("pid {} ({}, {})", self.pid, self.comm, self.exe)
        }
    }
}

/// `(comm, state, ppid, flags, utime+stime, starttime)` from `/proc/<pid>/stat`.
fn parse_stat(text: &str) -> Option<(String, char, u32, u64, u64, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let field = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok());
    let state = rest.first()?.chars().next()?;
    let ppid = u32::try_from(field(1)?).ok()?;
    Some((
        comm,
        state,
        ppid,
        field(6)?,
        field(11)? + field(12)?,
        field(19)?,
    ))
}

/// Reads one process; `None` when it is gone or unreadable.
pub fn read(proc_root: &Path, pid: u32) -> Option<Proc> {
    let base = proc_root.join(pid.to_string());
    let stat = std::fs::read_to_string(base.join("stat")).ok()?;
    let (comm, state, ppid, flags, cpu_ticks, start_ticks) = parse_stat(&stat)?;
    let (exe, has_exe) = match std::fs::read_link(base.join("exe")) {
        Ok(p) => (
            p.display()
                .to_string()
                .trim_end_matches(" (deleted)")
                .to_owned(),
            true,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), false),
        Err(_) => (String::new(), true),
    };
    let rss_bytes = std::fs::read_to_string(base.join("status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    Some(Proc {
        pid,
        ppid,
        comm,
        exe,
        has_exe,
        state,
        flags,
        cpu_ticks,
        start_ticks,
        rss_bytes,
    })
}

/// Every pid under `proc_root`.
pub fn pids(proc_root: &Path) -> Vec<u32> {
    std::fs::read_dir(proc_root)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `(read_bytes + write_bytes, rchar + wchar)` from `/proc/<pid>/io`.
pub fn io_bytes(proc_root: &Path, pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("io")).ok()?;
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some((
        get("read_bytes:") + get("write_bytes:"),
        get("rchar:") + get("wchar:"),
    ))
}

/// The workload key discovery gives `p` (`systemd:`, `docker:<id12>`, `k8s:`,
/// `host:<exe>`).
pub fn workload_key(proc_root: &Path, p: &Proc) -> String {
    let base = proc_root.join(p.pid.to_string());
    let place = crate::discovery::placement(
        &std::fs::read_to_string(base.join("cgroup")).unwrap_or_default(),
    );
    let environ: HashMap<String, String> = if place.pod_uid.is_some() {
        std::fs::read(base.join("environ"))
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter_map(|kv| {
                        let s = String::from_utf8_lossy(kv);
                        s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    } else {
        HashMap::new()
    };
    let exe = if p.exe.is_empty() {
        std::fs::read(base.join("cmdline"))
            .ok()
            .and_then(|b| {
                b.split(|c| *c == 0)
                    .next()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
            })
            .unwrap_or_default()
    } else {
        p.exe.clone()
    };
    crate::discovery::workload_key(&place, &environ, &exe)
}

/// Whether `p` belongs to workload `key`: its discovery key, `proc:<comm>`, or
/// `docker:<name>` through `names` (container id → name).
fn belongs(proc_root: &Path, p: &Proc, key: &str, names: &HashMap<String, String>) -> bool {
    if let Some(comm) = key.strip_prefix("proc:") {
        return p.comm == comm;
    }
    let own = workload_key(proc_root, p);
    if own == key {
        return true;
    }
    let Some(want) = key.strip_prefix("docker:") else {
        return false;
    };
    let Some(id12) = own.strip_prefix("docker:") else {
        return false;
    };
    names
        .iter()
        .any(|(id, name)| id.starts_with(id12) && (name == want || id.starts_with(want)))
}

/// A key a process can have: `host:/abs/exe`, `proc:<comm>`, `systemd:<unit>`,
/// `docker:<name or id>`, `k8s:...`.
pub fn is_workload_key(s: &str) -> bool {
    ["host:/", "proc:", "systemd:", "docker:", "k8s:"]
        .iter()
        .any(|p| s.starts_with(p) && s.len() > p.len())
}

/// Every live (non-zombie, non-kernel) process of workload `key`.
pub fn members(ctx: &Context, key: &str) -> Vec<Proc> {
    let names: HashMap<String, String> = if key.starts_with("docker:") {
        crate::docker::list(&ctx.docker_socket)
            .map(|m| m.into_iter().map(|(id, c)| (id, c.name)).collect())
            .unwrap_or_default()
    } else {
        HashMap::new()
    };
    let mut out: Vec<Proc> = pids(&ctx.proc_root)
        .into_iter()
        .filter_map(|pid| read(&ctx.proc_root, pid))
        .filter(|p| p.state != 'Z' && p.flags & PF_KTHREAD == 0 && p.has_exe)
        .filter(|p| belongs(&ctx.proc_root, p, key, &names))
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// Why a process must not be touched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rail {
    #[error("{0} is init (pid 1)")]
    Init(String),
    #[error("{0} is the agent itself")]
    Agent(String),
    #[error("{0} is the agent's parent")]
    AgentParent(String),
    #[error("{0} is a child of the agent")]
    AgentChild(String),
    #[error("{0} is a kernel thread")]
    Kernel(String),
    #[error("{shown} is on the protected list ({entry})")]
    Protected { shown: String, entry: String },
    #[error("{0} has already exited")]
    Exited(String),
}

/// The protected-list entry `p` matches, if any.
pub fn protected_by<'a>(ctx: &'a Context, p: &Proc) -> Option<&'a str> {
    let exe_name = Path::new(&p.exe)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    ctx.protected
        .iter()
        .find(|e| {
            let e = e.as_str();
            !e.is_empty()
                && (e == p.comm
                    || e == exe_name
                    || e == p.exe
                    // comm is cut to 15 bytes: `systemd-journald` shows as `systemd-journal`.
                    || (p.comm.len() == 15 && e.len() > 15 && e.starts_with(&p.comm)))
        })
        .map(String::as_str)
}

/// `Ok` when `p` may be signalled.
pub fn rail(ctx: &Context, p: &Proc) -> Result<(), Rail> {
    let shown = p.shown();
    if p.pid == 1 {
        return Err(Rail::Init(shown));
    }
    if p.pid == ctx.agent_pid {
        return Err(Rail::Agent(shown));
    }
    if p.ppid == ctx.agent_pid {
        return Err(Rail::AgentChild(shown));
    }
    if read(&ctx.proc_root, ctx.agent_pid).is_some_and(|me| me.ppid == p.pid) {
        return Err(Rail::AgentParent(shown));
    }
    if p.flags & PF_KTHREAD != 0 || !p.has_exe || p.pid == 2 {
        return Err(Rail::Kernel(shown));
    }
    if p.state == 'Z' || p.state == 'X' {
        return Err(Rail::Exited(shown));
    }
    if let Some(entry) = protected_by(ctx, p) {
        return Err(Rail::Protected {
            shown,
            entry: entry.to_owned(),
        });
    }
    Ok(())
}

/// A selector: which resource the target is the top consumer of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector {
    Cpu,
    Rss,
    Io,
    GpuMemory,
}

impl Selector {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "top_cpu" => Self::Cpu,
            "top_rss" | "top_memory" => Self::Rss,
            "top_io" => Self::Io,
            "top_gpu_memory" => Self::GpuMemory,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "top_cpu",
            Self::Rss => "top_rss",
            Self::Io => "top_io",
            Self::GpuMemory => "top_gpu_memory",
        }
    }
}

/// The process a selector chose, and the account of the choice.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub proc: Proc,
    /// `top_cpu over 1000 ms on the host: chose pid 7 (...) at 98.0 % CPU; skipped ...`
    pub why: String,
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// Picks the top consumer among the host's processes (or `scope`'s members),
/// skipping what the rails refuse. `gpu_procs` answers `top_gpu_memory`:
/// (pid, bytes) of every process on every GPU, or why there is none.
pub fn select(
    ctx: &Context,
    sel: Selector,
    scope: Option<&str>,
    sample: Duration,
    gpu_procs: &dyn Fn() -> Result<Vec<(u32, u64)>, String>,
) -> Result<Choice, String> {
    let sample = sample.min(MAX_SAMPLE);
    let candidates: Vec<Proc> = match scope {
        Some(key) => members(ctx, key),
        None => pids(&ctx.proc_root)
            .into_iter()
            .filter_map(|pid| read(&ctx.proc_root, pid))
            .filter(|p| p.state != 'Z')
            .collect(),
    };
    let where_ = scope.map_or_else(|| "on the host".to_owned(), |k| format!("within {k}"));
    if candidates.is_empty() {
        return Err(format!(
            "{} {where_}: no process to choose from",
            sel.name()
        ));
    }
    // (score, shown value) per pid.
    let mut ranked: Vec<(Proc, f64, String)> = match sel {
        Selector::Rss => candidates
            .into_iter()
            .map(|p| {
                let v = p.rss_bytes as f64;
                let s = format!("{} RSS", mib(p.rss_bytes));
                (p, v, s)
            })
            .collect(),
        Selector::Cpu => {
            let before: HashMap<u32, u64> =
                candidates.iter().map(|p| (p.pid, p.cpu_ticks)).collect();
            std::thread::sleep(sample);
            let secs = sample.as_secs_f64().max(0.001);
            candidates
                .iter()
                .filter_map(|p| {
                    let now = read(&ctx.proc_root, p.pid)?;
                    (now.start_ticks == p.start_ticks).then_some(now)
                })
                .map(|now| {
                    let d = now
                        .cpu_ticks
                        .saturating_sub(before.get(&now.pid).copied().unwrap_or(now.cpu_ticks));
                    let pct = d as f64 / TICKS_PER_S / secs * 100.0;
                    (now, pct, format!("{pct:.1} % CPU"))
                })
                .collect()
        }
        Selector::Io => {
            let before: HashMap<u32, (u64, u64)> = candidates
                .iter()
                .filter_map(|p| Some((p.pid, io_bytes(&ctx.proc_root, p.pid)?)))
                .collect();
            std::thread::sleep(sample);
            candidates
                .into_iter()
                .filter_map(|p| {
                    let (s0, c0) = *before.get(&p.pid)?;
                    let (s1, c1) = io_bytes(&ctx.proc_root, p.pid)?;
                    let (ds, dc) = (s1.saturating_sub(s0), c1.saturating_sub(c0));
                    // Storage bytes rank first; bytes through read/write break ties.
                    let score = ds as f64 * 1e6 + dc as f64 / 1e9;
                    Some((
                        p,
                        score,
                        format!("{} storage I/O, {} read+written", mib(ds), mib(dc)),
                    ))
                })
                .collect()
        }
        Selector::GpuMemory => {
            let on_gpu = gpu_procs()?;
            let mut by_pid: HashMap<u32, u64> = HashMap::new();
            for (pid, bytes) in on_gpu {
                *by_pid.entry(pid).or_default() += bytes;
            }
            candidates
                .into_iter()
                .filter_map(|p| {
                    let b = *by_pid.get(&p.pid)?;
                    Some((p, b as f64, format!("{} GPU memory", mib(b))))
                })
                .collect()
        }
    };
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.pid.cmp(&b.0.pid)));
    let head = match sel {
        Selector::Cpu | Selector::Io => {
            format!("{} over {} ms {where_}", sel.name(), sample.as_millis())
        }
        _ => format!("{} {where_}", sel.name()),
    };
    let mut skipped = Vec::new();
    for (p, _, shown) in &ranked {
        match rail(ctx, p) {
            Ok(()) => {
                let mut why = format!("{head}: chose {} at {shown}", p.shown());
                if !skipped.is_empty() {
                    why.push_str(&format!("; skipped {}", skipped.join("; ")));
                }
                return Ok(Choice {
                    proc: p.clone(),
                    why,
                });
            }
            // Kernel threads and zombies are not candidates; say nothing of them.
            Err(Rail::Kernel(_) | Rail::Exited(_)) => {}
            Err(r) => {
                if skipped.len() < 5 {
                    skipped.push(format!("{r} (at {shown})"));
                }
            }
        }
    }
    if ranked.is_empty() && sel == Selector::GpuMemory {
        return Err(format!("{head}: no process {where_} uses a GPU"));
    }
    Err(format!(
        "{head}: every candidate is refused by the safety rails{}",
        if skipped.is_empty() {
            String::new()
        } else {
            format!(": {}", skipped.join("; "))
        }
    ))
}

/// The signals an action may send.
pub fn signal_of(name: &str) -> Option<(Signal, &'static str)> {
    Some(match name.trim_start_matches("SIG") {
        "TERM" => (Signal::TERM, "SIGTERM"),
        "INT" => (Signal::INT, "SIGINT"),
        "HUP" => (Signal::HUP, "SIGHUP"),
        "QUIT" => (Signal::QUIT, "SIGQUIT"),
        "KILL" => (Signal::KILL, "SIGKILL"),
        "USR1" => (Signal::USR1, "SIGUSR1"),
        "USR2" => (Signal::USR2, "SIGUSR2"),
        "STOP" => (Signal::STOP, "SIGSTOP"),
        "CONT" => (Signal::CONT, "SIGCONT"),
        _ => return None,
    })
}

/// Why a signal could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0} has exited")]
    Gone(String),
    #[error("{0} was replaced by another process (pid reused) before the signal")]
    Reused(String),
    #[error("no privilege to signal {0}: {1}")]
    Privilege(String, rustix::io::Errno),
    #[error("signalling {0}: {1}")]
    Other(String, rustix::io::Errno),
}

/// Sends `sig` to `p` through a pidfd, after checking it is still the same
/// process (same start time).
pub fn send(proc_root: &Path, p: &Proc, sig: Signal) -> Result<(), SendError> {
    use rustix::io::Errno;
    let shown = p.shown();
    let pid = i32::try_from(p.pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| SendError::Gone(shown.clone()))?;
    let classify = |e: Errno| match e {
        Errno::SRCH => SendError::Gone(shown.clone()),
        Errno::PERM | Errno::ACCESS => SendError::Privilege(shown.clone(), e),
        e => SendError::Other(shown.clone(), e),
    };
    let same = || read(proc_root, p.pid).is_some_and(|now| now.start_ticks == p.start_ticks);
    match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => {
            // The pidfd pins this pid: if the start time matches now, the signal
            // reaches the process we chose.
            if !same() {
                return Err(SendError::Reused(shown));
            }
            rustix::process::pidfd_send_signal(&fd, sig).map_err(classify)
        }
        Err(Errno::NOSYS) => {
            if !same() {
                return Err(SendError::Reused(shown));
            }
            rustix::process::kill_process(pid, sig).map_err(classify)
        }
        Err(e) => Err(classify(e)),
    }
}

/// Whether `p` has exited (gone, zombie, or its pid now names another process).
pub fn exited(proc_root: &Path, p: &Proc) -> bool {
    match read(proc_root, p.pid) {
        None => true,
        Some(now) => now.start_ticks != p.start_ticks || now.state == 'Z' || now.state == 'X',
    }
}

/// Waits until every one of `procs` has exited or `limit` passes; returns those
/// still running.
pub fn wait_exit<'a>(proc_root: &Path, procs: &'a [Proc], limit: Duration) -> Vec<&'a Proc> {
    let deadline = Instant::now() + limit;
    loop {
        let alive: Vec<&Proc> = procs.iter().filter(|p| !exited(proc_root, p)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_names() {
        let line = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 10 0 0 0 250 50 0 0 20 0 1 0 987654 1000 50 0 0";
        let (comm, state, ppid, flags, cpu, start) = parse_stat(line).expect("parses");
        assert_eq!(comm, "a) b (c)");
        assert_eq!(
            (state, ppid, flags, cpu, start),
            ('S', 1, 4_194_560, 300, 987_654)
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn the_real_pid_1_self_and_kthreadd_are_refused() {
        let ctx = Context::new(Path::new("/tmp"), &[], &[], Path::new("/nonexistent"));
        let init = read(Path::new("/proc"), 1).expect("pid 1");
        assert!(matches!(rail(&ctx, &init), Err(Rail::Init(_))));
        let me = read(Path::new("/proc"), std::process::id()).expect("self");
        assert!(matches!(rail(&ctx, &me), Err(Rail::Agent(_))));
        let parent = read(Path::new("/proc"), me.ppid).expect("parent");
        if parent.pid != 1 {
            assert!(matches!(rail(&ctx, &parent), Err(Rail::AgentParent(_))));
        }
        // kthreadd is pid 2 when the kernel's threads are visible here.
        if let Some(k) = read(Path::new("/proc"), 2).filter(|k| k.comm == "kthreadd") {
            assert!(k.flags & PF_KTHREAD != 0 && !k.has_exe);
            assert!(matches!(rail(&ctx, &k), Err(Rail::Kernel(_))));
        }
    }

    #[test]
    fn protected_entries_match_comm_exe_name_or_path() {
        let ctx = Context {
            protected: vec![
                "sshd".into(),
                "/opt/db/bin/postgres".into(),
                "systemd-journald".into(),
            ],
            ..Context::new(Path::new("/tmp"), &[], &[], Path::new("/nonexistent"))
        };
        let p = |comm: &str, exe: &str| Proc {
            pid: 4000,
            ppid: 3000,
            comm: comm.into(),
            exe: exe.into(),
            has_exe: true,
            state: 'S',
            flags: 0,
            cpu_ticks: 0,
            start_ticks: 1,
            rss_bytes: 0,
        };
        assert_eq!(
            protected_by(&ctx, &p("sshd", "/usr/sbin/sshd")),
            Some("sshd")
        );
        assert_eq!(
            protected_by(&ctx, &p("postgres", "/opt/db/bin/postgres")),
            Some("/opt/db/bin/postgres")
        );
        assert_eq!(
            protected_by(&ctx, &p("postgres", "/usr/bin/postgres")),
            None
        );
        assert_eq!(
            protected_by(&ctx, &p("systemd-journal", "/lib/systemd/systemd-journald")),
            Some("systemd-journald")
        );
        assert_eq!(protected_by(&ctx, &p("python3", "/usr/bin/python3")), None);
        let err = rail(&ctx, &p("sshd", "/usr/sbin/sshd")).expect_err("protected");
        assert_eq!(
            err.to_string(),
            "pid 4000 (sshd, /usr/sbin/sshd) is on the protected list (sshd)"
        );
        assert_eq!(signal_of("SIGTERM").map(|s| s.1), Some("SIGTERM"));
        assert_eq!(signal_of("KILL").map(|s| s.1), Some("SIGKILL"));
        assert!(signal_of("SEGV").is_none() && signal_of("9").is_none());
        assert!(is_workload_key("host:/usr/bin/x") && is_workload_key("proc:yes"));
        assert!(!is_workload_key("host") && !is_workload_key("host:") && !is_workload_key("/var"));
    }
}
