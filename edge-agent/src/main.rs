//! `tether-agent`: enroll, run, status. Synchronous, outbound-only.

mod actions;
mod agent;
mod backoff;
mod capture;
mod clock;
mod config;
mod discovery;
mod docker;
mod ebpf;
mod evidence;
mod gpu;
mod instrument;
mod llmstats;
mod otlp;
mod redact;
mod remedy;
mod spool;
mod state;
mod telemetry;
mod transport;

use agent::{Agent, AgentError};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

const USAGE: &str = "usage: tether-agent [--config FILE] enroll [--force] | run [--once] | status | scan | kinds | capture --pid PID [--pid PID ...] [--seconds N]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config_path = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/tether/agent.json"));
    let rest: Vec<&str> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| *a != "--config" && (*i == 0 || args[i - 1] != "--config"))
        .map(|(_, a)| a.as_str())
        .collect();
    let cfg = match config::Config::load(&config_path, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tether-agent: configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match rest.first().copied() {
        Some("enroll") => enroll(&cfg, rest.contains(&"--force")),
        Some("run") => run(cfg, rest.contains(&"--once")),
        Some("status") => status(&cfg),
        Some("scan") => {
            // Offline matchers only: a one-shot scan does not wait for DNS.
            let eps = discovery::Resolver::fixed(&cfg.llm_hosts).endpoints();
            let opts = discovery::ScanOptions {
                all_python: cfg.report_all_python,
                systemd_dir: PathBuf::from("/etc/systemd/system"),
                connects: Default::default(),
                containers: {
                    let mut d = docker::Docker::new(PathBuf::from(&cfg.docker_socket));
                    d.refresh(true);
                    d.containers().clone()
                },
            };
            let t = std::time::Instant::now();
            let s = discovery::scan(std::path::Path::new("/proc"), &eps, &opts);
            println!(
                "{}",
                serde_json::json!({"processes": s.processes, "skipped": s.skipped,
                    "scan_ms": t.elapsed().as_secs_f64() * 1000.0, "services": s.services})
            );
            Ok(())
        }
        Some("kinds") => {
            // What `runnable_kinds` would advertise here, and why.
            let ctx = remedy::Context::new(
                &cfg.data_dir,
                &cfg.log_dirs,
                &cfg.protected_processes,
                std::path::Path::new(&cfg.docker_socket),
            );
            let offers = remedy::Offers::probe(&ctx, cfg.ebpf && ebpf::preflight().is_ok());
            println!(
                "{}",
                serde_json::json!({
                    "runnable": remedy::runnable_kinds(&cfg.allowed_actions, &offers),
                    "implemented": remedy::implemented(),
                    "offers": format!("{offers:?}"),
                })
            );
            Ok(())
        }
        Some("capture") => capture(&cfg, &rest[1..]),
        _ => Err(AgentError::Local(USAGE.into())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `capture`: instruments the given processes directly (no control plane),
/// until they exit, `--seconds` pass or SIGINT; exports spans to the configured
/// `otlp_endpoint` and prints one JSON report: calls, summaries, the agent's CPU
/// and memory, and its eBPF maps' kernel memory. For debugging a host and for
/// `bin/bench-ebpf`.
fn capture(cfg: &config::Config, args: &[&str]) -> Result<(), AgentError> {
    let usage = || AgentError::Local(USAGE.into());
    let mut pids = Vec::new();
    let mut seconds = u64::MAX;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().ok_or_else(usage)?;
        match *a {
            "--pid" => pids.push(v.parse::<u32>().map_err(|_| usage())?),
            "--seconds" => seconds = v.parse().map_err(|_| usage())?,
            _ => return Err(usage()),
        }
    }
    if pids.is_empty() {
        return Err(usage());
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| AgentError::Local(e.to_string()))?;
    }
    let scratch = std::env::temp_dir().join(format!("tether-capture-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| AgentError::Local(e.to_string()))?;
    let mut inst = instrument::Instrumenter::start(
        cfg.ebpf,
        &scratch,
        &cfg.otlp_endpoint,
        agent::inventory(cfg, vec![]).hostname,
    );
    let _ = std::fs::remove_dir_all(&scratch);
    inst.available()
        .map_err(|why| AgentError::Local(format!("instrumentation unavailable: {why}")))?;
    for pid in &pids {
        let how = inst.attach_pid(*pid).map_err(AgentError::Local)?;
        eprintln!("tether-agent: capturing {how}");
    }
    // The whole agent's CPU time (every thread), in ms.
    let cpu = || {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 / 1e6
    };
    let cpu0 = cpu();
    let started = std::time::Instant::now();
    let alive = |p: &u32| std::path::Path::new(&format!("/proc/{p}")).exists();
    while pids.iter().any(alive)
        && started.elapsed().as_secs() < seconds
        && !stop.load(std::sync::atomic::Ordering::Relaxed)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    // The last records are read and the last spans exported.
    std::thread::sleep(Duration::from_millis(1500));
    let cpu_ms = cpu() - cpu0;
    let mut summary = std::collections::BTreeMap::new();
    inst.drain_into(&mut summary);
    let maps = ebpf::map_memory();
    let proc_status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |k: &str| {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let report = serde_json::json!({
        "seconds": started.elapsed().as_secs_f64(),
        "instrumentation": inst.status(),
        "summary": summary,
        "agent_cpu_ms": cpu_ms,
        "agent_rss_kib": kib("VmRSS:"),
        "agent_hwm_kib": kib("VmHWM:"),
        "bpf_maps": maps.iter().map(|(id, ty, mem)| serde_json::json!({"id": id, "type": ty, "memlock_bytes": mem})).collect::<Vec<_>>(),
        "bpf_maps_bytes": maps.iter().map(|m| m.2).sum::<u64>(),
    });
    inst.stop();
    println!("{report}");
    Ok(())
}

fn transport(cfg: &config::Config) -> transport::UreqTransport {
    transport::UreqTransport::new(&cfg.server_url, Duration::from_secs(cfg.poll_timeout_s))
}

fn enroll(cfg: &config::Config, force: bool) -> Result<(), AgentError> {
    let existing: Option<state::Credential> = state::read(&agent::credential_path(&cfg.data_dir))
        .map_err(|e| AgentError::Local(e.to_string()))?;
    if let (Some(c), false) = (&existing, force) {
        println!(
            "already enrolled as {} (use --force to enroll again)",
            c.agent_id
        );
        return Ok(());
    }
    let c = agent::enroll(cfg, &transport(cfg))?;
    println!("enrolled as {}", c.agent_id);
    Ok(())
}

fn status(cfg: &config::Config) -> Result<(), AgentError> {
    match state::read::<state::Status>(&agent::status_path(&cfg.data_dir)) {
        Ok(Some(s)) => {
            println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            Ok(())
        }
        Ok(None) => Err(AgentError::Local(format!(
            "no status yet in {}: has `tether-agent run` started?",
            cfg.data_dir.display()
        ))),
        Err(e) => Err(AgentError::Local(e.to_string())),
    }
}

/// glibc's allocator, as the long-running agent wants it: one arena for its few
/// threads (no per-thread arena holding freed memory), and a fixed mmap
/// threshold (no dynamic growth after a large free) and trim threshold, so the
/// ~17 MB aya's loader allocates once at start (it parses the kernel's BTF) goes
/// back to the kernel instead of staying in the agent's RSS (docs/benchmarks.md).
const MALLOC_TUNABLES: &str =
    "glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072";

/// Re-executes the agent with [`MALLOC_TUNABLES`] unless `GLIBC_TUNABLES` is
/// already set (by this or by the operator). Returns only if that is so or the
/// exec failed (then the agent runs as it is).
fn with_malloc_tunables() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", MALLOC_TUNABLES)
        .exec();
    eprintln!("tether-agent: re-exec with GLIBC_TUNABLES failed ({err}); continuing");
}

fn run(cfg: config::Config, once: bool) -> Result<(), AgentError> {
    if !once {
        with_malloc_tunables();
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| AgentError::Local(e.to_string()))?;
    }
    let cred = match state::read(&agent::credential_path(&cfg.data_dir))
        .map_err(|e| AgentError::Local(e.to_string()))?
    {
        Some(c) => c,
        None => enroll_with_retry(&cfg, &stop, once)?,
    };
    let mut a = Agent::new(cfg.clone(), transport(&cfg), cred)?;
    agent::run_loop(&mut a, &clock::SystemClock, &stop, once)
}

/// Enrolls, backing off on failures that may pass (network, 5xx); an invalid
/// token is final.
fn enroll_with_retry(
    cfg: &config::Config,
    stop: &AtomicBool,
    once: bool,
) -> Result<state::Credential, AgentError> {
    let t = transport(cfg);
    let cap = Duration::from_secs(cfg.max_backoff_s);
    let mut failures = 0u32;
    loop {
        match agent::enroll(cfg, &t) {
            Ok(c) => return Ok(c),
            Err(e @ (AgentError::Refused { .. } | AgentError::Local(_))) => return Err(e),
            Err(e) if once => return Err(e),
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = backoff::after_failure(failures, cap, e.retry_after(), rand::random());
                eprintln!(
                    "tether-agent: enroll failed ({e}); retrying in {:.1}s",
                    wait.as_secs_f64()
                );
                if clock::Clock::sleep(&clock::SystemClock, wait, stop) {
                    return Err(AgentError::Local("stopped before enrolling".into()));
                }
            }
        }
    }
}
