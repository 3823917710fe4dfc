//! Instrumentation per workload: the `instrument` / `uninstrument` actions, the
//! TLS probes attached to every process of an instrumented workload, and the
//! thread that turns the probes' records into spans and summaries.
//!
//! Invariants:
//! - The agent never depends on eBPF: when [`crate::ebpf::preflight`] or loading
//!   fails, the reason is kept, reported as the `ebpf` collector's state, and
//!   returned by every `instrument` action ("instrumentation unavailable: ...");
//!   discovery falls back to `/proc/net` scanning.
//! - Instrumentation is per workload key and persisted in the data directory
//!   (`instrumented.json`): each discovery scan attaches the probes to processes
//!   of wanted workloads that lack them (a restarted process, a restarted agent)
//!   and detaches from processes that left.
//! - A process without a dynamically linked libssl is never silently watched:
//!   Go binaries and statically linked OpenSSL / BoringSSL are reported "not
//!   instrumentable by uprobe yet" and are not marked instrumented.
//! - The record reader holds the shared lock only while it drains one batch; the
//!   poll loop never waits on the kernel.

use crate::capture::{Capture, CaptureStats};
use crate::ebpf::record::{self, Kind};
use crate::ebpf::{self, Probes};
use crate::llmstats::LlmStats;
use crate::otlp::{CallSpan, ExportStats, Exporter};
use crate::state::Collector;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_proto::{Action, ActionKind, ActionMode, ResultStatus};

/// Remote addresses remembered per pid between scans, and pids remembered.
const CONNECTS_PER_PID: usize = 16;
const CONNECT_PIDS: usize = 4096;

/// What the instrumentation reports in the agent's status file.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InstrumentationStatus {
    /// `ok` or `unavailable`.
    pub state: String,
    pub reason: String,
    pub workloads: Vec<String>,
    pub instrumented_pids: Vec<u32>,
    /// Processes of wanted workloads the probes cannot watch, and why.
    pub not_instrumentable: BTreeMap<u32, String>,
    pub records: u64,
    pub calls: u64,
    pub gaps: u64,
    /// Connections whose reassembly is tracked now.
    pub connections: usize,
    pub kernel_drops: u64,
    pub decode_errors: u64,
    pub export: ExportStats,
}

#[derive(Debug, Default)]
struct Shared {
    capture: Capture,
    stats: LlmStats,
    workload_of: HashMap<u32, String>,
    connects: HashMap<u32, Vec<(IpAddr, u16)>>,
    decode_errors: u64,
}

#[derive(Debug)]
struct Live {
    probes: Probes,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
}

/// How a process's TLS can be watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsTarget {
    /// A dynamically linked libssl, as a path the agent can open.
    Libssl(PathBuf),
    /// Not instrumentable by uprobe (yet), and why.
    Unsupported(String),
    /// No TLS library mapped (yet): plain HTTP, or TLS not loaded so far.
    NoTls,
}

/// Finds the libssl `pid` maps, or says why there is none to probe.
pub fn tls_target(proc_root: &Path, pid: u32) -> TlsTarget {
    let base = proc_root.join(pid.to_string());
    let maps = std::fs::read_to_string(base.join("maps")).unwrap_or_default();
    for line in maps.lines() {
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        let name = path.rsplit('/').next().unwrap_or(path);
        if name.starts_with("libssl.so") {
            let inside = base.join("root").join(path.trim_start_matches('/'));
            return TlsTarget::Libssl(inside);
        }
    }
    classify_exe(&base.join("exe"))
}

/// A process without libssl: Go, static OpenSSL/BoringSSL, or no TLS at all.
pub fn classify_exe(exe: &Path) -> TlsTarget {
    const GO_BUILDINFO: &[u8] = b"\xff Go buildinf:";
    let Ok(bytes) = std::fs::read(exe) else {
        return TlsTarget::NoTls;
    };
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    if has(GO_BUILDINFO) {
        return TlsTarget::Unsupported(
            "not instrumentable by uprobe yet: a Go binary (crypto/tls is compiled in, no libssl)"
                .into(),
        );
    }
    if has(b"SSL_write") || has(b"BoringSSL") || has(b"OpenSSL 3.") || has(b"OpenSSL 1.1") {
        return TlsTarget::Unsupported(
            "not instrumentable by uprobe yet: TLS is statically linked (OpenSSL or BoringSSL inside the executable, no libssl)".into(),
        );
    }
    TlsTarget::NoTls
}

fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The record reader: drains the ring buffer into the capture.
fn read_loop(
    mut ring: aya::maps::RingBuf<aya::maps::MapData>,
    shared: Arc<Mutex<Shared>>,
    exporter: Exporter,
    stop: Arc<AtomicBool>,
) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    // Kernel timestamps are CLOCK_MONOTONIC; spans want the wall clock.
    let offset = unix_ns().saturating_sub(monotonic_ns());
    let timeout = Timespec {
        tv_sec: 0,
        tv_nsec: 250_000_000,
    };
    while !stop.load(Ordering::Relaxed) {
        {
            let mut fds = [PollFd::new(&ring, PollFlags::IN)];
            if let Err(e) = poll(&mut fds, Some(&timeout)) {
                if e != rustix::io::Errno::INTR {
                    eprintln!("tether-agent: ebpf: poll on the ring buffer: {e}");
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
        }
        let Ok(mut s) = shared.lock() else { return };
        let s = &mut *s;
        let mut n = 0;
        while let Some(item) = ring.next() {
            n += 1;
            match record::decode(&item) {
                Ok(r) if r.kind == Kind::Connect => {
                    if let Some(addr) = record::remote(&r) {
                        if s.connects.len() < CONNECT_PIDS || s.connects.contains_key(&r.pid) {
                            let v = s.connects.entry(r.pid).or_default();
                            if !v.contains(&addr) {
                                if v.len() >= CONNECTS_PER_PID {
                                    v.remove(0);
                                }
                                v.push(addr);
                            }
                        }
                    }
                }
                Ok(r) => {
                    for c in s.capture.push(&r) {
                        let workload = s
                            .workload_of
                            .get(&c.pid)
                            .cloned()
                            .unwrap_or_else(|| format!("pid:{}", c.pid));
                        s.stats.record(&workload, &c);
                        exporter.offer(CallSpan {
                            workload,
                            pid: c.pid,
                            start_unix_ns: c.start_ns.saturating_add(offset),
                            end_unix_ns: c.end_ns.saturating_add(offset),
                            call: c.call,
                            content: c.content,
                        });
                    }
                }
                Err(_) => s.decode_errors += 1,
            }
            if n >= 4096 {
                break; // let the poll loop take the lock between long bursts
            }
        }
    }
}

#[derive(Debug)]
pub struct Instrumenter {
    live: Result<Live, String>,
    exporter: Exporter,
    proc_root: PathBuf,
    state_path: PathBuf,
    /// Instrumented workloads, and whether their (redacted) content may leave
    /// the host.
    wanted: BTreeMap<String, bool>,
    /// Processes of wanted workloads that cannot be watched, and why.
    unsupported: BTreeMap<u32, String>,
}

impl Instrumenter {
    /// Loads the probes when `enabled` and possible; otherwise keeps the reason.
    pub fn start(enabled: bool, data_dir: &Path, otlp_endpoint: &str, host: String) -> Self {
        let state_path = data_dir.join("instrumented.json");
        // A map of key -> content allowed; an older agent wrote a plain list.
        let wanted: BTreeMap<String, bool> = std::fs::read(&state_path)
            .ok()
            .and_then(|b| {
                serde_json::from_slice(&b).ok().or_else(|| {
                    serde_json::from_slice::<BTreeSet<String>>(&b)
                        .ok()
                        .map(|keys| keys.into_iter().map(|k| (k, false)).collect())
                })
            })
            .unwrap_or_default();
        let exporter = Exporter::start(otlp_endpoint, host);
        let live = if enabled {
            // Loading parses the kernel's BTF (aya's loader does so eagerly:
            // ~17 MB, freed at once). On a thread of its own that goes to a
            // separate malloc arena, which is released when it is freed, so
            // the agent's steady RSS does not keep it.
            ebpf::preflight().and_then(|()| {
                std::thread::scope(|s| {
                    s.spawn(Probes::load)
                        .join()
                        .unwrap_or_else(|_| Err("the eBPF loader panicked".into()))
                })
            })
        } else {
            Err("disabled by configuration (ebpf: false)".into())
        }
        .and_then(|(probes, ring)| {
            let shared = Arc::new(Mutex::new(Shared::default()));
            let stop = Arc::new(AtomicBool::new(false));
            let (s, e, st) = (shared.clone(), exporter.clone(), stop.clone());
            std::thread::Builder::new()
                .name("ebpf-records".into())
                .spawn(move || read_loop(ring, s, e, st))
                .map_err(|e| format!("cannot start the record reader: {e}"))?;
            Ok(Live {
                probes,
                shared,
                stop,
            })
        });
        if let Err(why) = &live {
            eprintln!("tether-agent: eBPF instrumentation unavailable: {why}; discovery uses /proc scanning");
        }
        Self {
            live,
            exporter,
            proc_root: PathBuf::from("/proc"),
            state_path,
            wanted,
            unsupported: BTreeMap::new(),
        }
    }

    pub fn available(&self) -> Result<(), &str> {
        self.live.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// What a service reports as `llm_content`: `redacted` while its
    /// workload's content is exported, empty otherwise.
    pub fn content_mode(&self, workload: &str) -> &'static str {
        if self.wanted.get(workload).copied().unwrap_or(false) {
            "redacted"
        } else {
            ""
        }
    }

    pub fn is_instrumented(&self, pid: u32) -> bool {
        self.live.as_ref().is_ok_and(|l| l.probes.is_attached(pid))
    }

    /// Remote addresses per pid the connect probe saw since the last call.
    pub fn take_connects(&self) -> HashMap<u32, Vec<(IpAddr, u16)>> {
        match &self.live {
            Ok(l) => l
                .shared
                .lock()
                .map(|mut s| std::mem::take(&mut s.connects))
                .unwrap_or_default(),
            Err(_) => HashMap::new(),
        }
    }

    fn save(&self) -> Result<(), String> {
        crate::state::write(&self.state_path, &self.wanted, 0o600).map_err(|e| e.to_string())
    }

    /// Attaches to `pid` of `workload`; the outcome as a sentence.
    fn attach(&mut self, workload: &str, pid: u32) -> Result<String, String> {
        let Ok(live) = &mut self.live else {
            return Err("instrumentation unavailable".into());
        };
        if live.probes.is_attached(pid) {
            return Ok(format!("pid {pid} already instrumented"));
        }
        match tls_target(&self.proc_root, pid) {
            TlsTarget::Libssl(lib) => {
                live.probes.attach(pid, &lib)?;
                let content = self.wanted.get(workload).copied().unwrap_or(false);
                if let Ok(mut s) = live.shared.lock() {
                    s.workload_of.insert(pid, workload.to_owned());
                    if content {
                        s.capture.content_pids.insert(pid);
                    }
                }
                self.unsupported.remove(&pid);
                Ok(format!("pid {pid} via {}", lib.display()))
            }
            TlsTarget::Unsupported(why) => {
                self.unsupported.insert(pid, why.clone());
                Err(why)
            }
            TlsTarget::NoTls => Err(format!(
                "pid {pid} maps no TLS library yet (plain HTTP, or TLS not loaded so far); retried at every scan"
            )),
        }
    }

    /// Attaches to one process outside any workload (`tether-agent capture`).
    pub fn attach_pid(&mut self, pid: u32) -> Result<String, String> {
        self.attach(&format!("pid:{pid}"), pid)
    }

    fn detach(&mut self, pid: u32) {
        if let Ok(live) = &mut self.live {
            live.probes.detach(pid);
            if let Ok(mut s) = live.shared.lock() {
                s.workload_of.remove(&pid);
                s.capture.content_pids.remove(&pid);
            }
        }
    }

    /// After a discovery scan: attach to processes of wanted workloads that lack
    /// probes; detach from processes that exited or whose workload is no longer
    /// wanted. A process that is merely between connections this scan (a
    /// client that opens one per call) keeps its probes.
    pub fn reconcile(&mut self, members: &BTreeMap<String, Vec<u32>>) {
        let Ok(live) = &self.live else {
            return;
        };
        let alive = |pid: u32| self.proc_root.join(pid.to_string()).exists();
        let stale: Vec<u32> = live
            .probes
            .attached()
            .filter(|pid| {
                let workload = live
                    .shared
                    .lock()
                    .ok()
                    .and_then(|s| s.workload_of.get(pid).cloned());
                !alive(*pid) || workload.is_none_or(|w| !self.wanted.contains_key(&w))
            })
            .collect();
        for pid in stale {
            self.detach(pid);
        }
        let mut current = BTreeSet::new();
        for key in self.wanted.keys().cloned().collect::<Vec<_>>() {
            for pid in members.get(&key).into_iter().flatten() {
                current.insert(*pid);
                let known_unsupported = self.unsupported.contains_key(pid);
                if !self.is_instrumented(*pid) && !known_unsupported {
                    let _ = self.attach(&key, *pid);
                }
            }
        }
        self.unsupported.retain(|pid, _| current.contains(pid));
        if let Ok(l) = &self.live {
            let root = self.proc_root.clone();
            if let Ok(mut s) = l.shared.lock() {
                s.capture
                    .sweep(monotonic_ns(), |pid| root.join(pid.to_string()).exists());
            }
        }
    }

    /// Runs `instrument` or `uninstrument` for the action's workload; `members`
    /// are the workload's processes as the last scan saw them.
    pub fn act(
        &mut self,
        a: &Action,
        members: &BTreeMap<String, Vec<u32>>,
    ) -> (ResultStatus, String) {
        let key = a.target.clone();
        let pids: Vec<u32> = members.get(&key).cloned().unwrap_or_default();
        let dry = a.mode == ActionMode::DryRun;
        if a.kind.as_str() == ActionKind::UNINSTRUMENT {
            if dry {
                return (
                    ResultStatus::DryRun,
                    format!("would detach the TLS probes from {key} (pids {pids:?})"),
                );
            }
            self.wanted.remove(&key);
            // Every attached process of the workload, seen by this scan or not.
            let detached: Vec<u32> = match &self.live {
                Ok(l) => l
                    .shared
                    .lock()
                    .map(|s| {
                        let mut v: Vec<u32> = s
                            .workload_of
                            .iter()
                            .filter(|(_, w)| **w == key)
                            .map(|(p, _)| *p)
                            .collect();
                        v.sort_unstable();
                        v
                    })
                    .unwrap_or_default(),
                Err(_) => vec![],
            };
            for pid in &detached {
                self.detach(*pid);
            }
            return match self.save() {
                Ok(()) => (
                    ResultStatus::Succeeded,
                    format!("uninstrumented {key}: detached from pids {detached:?}"),
                ),
                Err(e) => (
                    ResultStatus::Failed,
                    format!("detached, but not persisted: {e}"),
                ),
            };
        }
        if let Err(why) = &self.live {
            return (
                ResultStatus::Refused,
                format!("instrumentation unavailable: {why}"),
            );
        }
        if dry {
            let plan: Vec<String> = pids
                .iter()
                .map(|p| match tls_target(&self.proc_root, *p) {
                    TlsTarget::Libssl(l) => format!("pid {p}: attach to {}", l.display()),
                    TlsTarget::Unsupported(w) => format!("pid {p}: {w}"),
                    TlsTarget::NoTls => format!("pid {p}: no TLS library mapped yet"),
                })
                .collect();
            return (
                ResultStatus::DryRun,
                format!(
                    "would instrument {key}: {}",
                    if plan.is_empty() {
                        "no running process yet".into()
                    } else {
                        plan.join("; ")
                    }
                ),
            );
        }
        let content = a.payload["llm_content"].as_str() == Some("redacted");
        // The mode is set before attaching, and for processes already attached
        // (an `instrument` that only changes the content mode).
        let previous = self.wanted.insert(key.clone(), content);
        if let Ok(l) = &self.live {
            if let Ok(mut s) = l.shared.lock() {
                for pid in &pids {
                    if content {
                        s.capture.content_pids.insert(*pid);
                    } else {
                        s.capture.content_pids.remove(pid);
                    }
                }
            }
        }
        let mut done = Vec::new();
        let mut problems = Vec::new();
        for pid in &pids {
            match self.attach(&key, *pid) {
                Ok(m) => done.push(m),
                Err(e) => problems.push(e),
            }
        }
        if done.is_empty()
            && !problems.is_empty()
            && problems.iter().all(|p| p.starts_with("not instrumentable"))
        {
            match previous {
                Some(c) => self.wanted.insert(key.clone(), c),
                None => self.wanted.remove(&key),
            };
            return (ResultStatus::Refused, problems.join("; "));
        }
        if let Err(e) = self.save() {
            return (
                ResultStatus::Failed,
                format!("cannot persist instrumentation: {e}"),
            );
        }
        let mut msg = if done.is_empty() {
            format!("instrumenting {key}: no process attached yet; attaches at the next scan that finds one")
        } else {
            format!("instrumented {key}: {}", done.join(", "))
        };
        if !problems.is_empty() {
            msg.push_str(&format!("; {}", problems.join("; ")));
        }
        msg.push_str(if content {
            "; prompt and completion text exported, redacted (tenant policy)"
        } else {
            "; no prompt or completion text leaves the host"
        });
        (ResultStatus::Succeeded, msg)
    }

    /// The `ebpf` collector's state for status and heartbeat.
    pub fn collector(&self) -> Collector {
        match &self.live {
            Ok(l) => Collector {
                name: "ebpf".into(),
                state: "ok".into(),
                reason: format!(
                    "{} processes instrumented in {} workloads",
                    l.probes.attached().count(),
                    self.wanted.len()
                ),
            },
            Err(why) => Collector {
                name: "ebpf".into(),
                state: "unavailable".into(),
                reason: format!(
                    "instrumentation unavailable: {why}; discovery falls back to /proc scanning"
                ),
            },
        }
    }

    /// This window's LLM summaries and capture counters.
    pub fn drain_into(&mut self, m: &mut BTreeMap<String, f64>) {
        let Ok(l) = &self.live else { return };
        let active = l.probes.attached().next().is_some();
        if let Ok(mut s) = l.shared.lock() {
            s.stats.drain_into(m, active);
        }
    }

    /// Evidence for an incident: the capture's state and this window's
    /// summaries so far (not reset), as JSON.
    pub fn llm_evidence(&self) -> Result<String, String> {
        let l = self
            .live
            .as_ref()
            .map_err(|why| format!("instrumentation unavailable: {why}"))?;
        let mut window = BTreeMap::new();
        if let Ok(s) = l.shared.lock() {
            s.stats.clone().drain_into(&mut window, true);
        }
        let st = self.status();
        serde_json::to_string(&serde_json::json!({
            "workloads": st.workloads,
            "instrumented_pids": st.instrumented_pids,
            "not_instrumentable": st.not_instrumentable,
            "calls_captured": st.calls,
            "window": window,
        }))
        .map_err(|e| e.to_string())
    }

    pub fn status(&self) -> InstrumentationStatus {
        let c = self.collector();
        let mut st = InstrumentationStatus {
            state: c.state,
            reason: c.reason,
            workloads: self.wanted.keys().cloned().collect(),
            not_instrumentable: self.unsupported.clone(),
            export: self.exporter.stats(),
            ..Default::default()
        };
        if let Ok(l) = &self.live {
            st.instrumented_pids = l.probes.attached().collect();
            st.instrumented_pids.sort_unstable();
            st.kernel_drops = l.probes.kernel_drops();
            if let Ok(s) = l.shared.lock() {
                let CaptureStats {
                    records,
                    calls,
                    gaps,
                    ..
                } = s.capture.stats.clone();
                st.records = records;
                st.calls = calls;
                st.gaps = gaps;
                st.connections = s.capture.connections();
                st.decode_errors = s.decode_errors;
            }
        }
        st
    }

    pub fn stop(&self) {
        if let Ok(l) = &self.live {
            l.stop.store(true, Ordering::Relaxed);
        }
        self.exporter.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tether-inst-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch");
        d
    }

    #[test]
    fn libssl_is_found_in_the_process_maps() {
        let root = scratch("maps");
        let p = root.join("77");
        std::fs::create_dir_all(&p).expect("dir");
        std::fs::write(
            p.join("maps"),
            "7f00-7f10 r-xp 00000000 08:01 1234 /usr/lib/x86_64-linux-gnu/libcrypto.so.3\n\
             7f10-7f20 r-xp 00000000 08:01 1235 /usr/lib/x86_64-linux-gnu/libssl.so.3\n",
        )
        .expect("maps");
        assert_eq!(
            tls_target(&root, 77),
            TlsTarget::Libssl(p.join("root/usr/lib/x86_64-linux-gnu/libssl.so.3"))
        );
    }

    #[test]
    fn go_and_static_tls_are_not_instrumentable_and_say_so() {
        let root = scratch("exe");
        let go = root.join("go-bin");
        std::fs::write(&go, b"\x7fELF....\xff Go buildinf:\x08\x02...crypto/tls").expect("go");
        let stat = root.join("static-bin");
        std::fs::write(&stat, b"\x7fELF....SSL_write\0SSL_read\0").expect("static");
        let plain = root.join("plain-bin");
        std::fs::write(&plain, b"\x7fELF....nothing here").expect("plain");
        assert!(matches!(classify_exe(&go), TlsTarget::Unsupported(w) if w.contains("Go binary")));
        assert!(
            matches!(classify_exe(&stat), TlsTarget::Unsupported(w) if w.contains("statically linked"))
        );
        assert_eq!(classify_exe(&plain), TlsTarget::NoTls);
        assert_eq!(classify_exe(&root.join("missing")), TlsTarget::NoTls);
    }

    #[test]
    fn disabled_instrumentation_refuses_with_the_reason_and_reports_it() {
        let dir = scratch("off");
        let mut i = Instrumenter::start(false, &dir, "", "h".into());
        let a = Action {
            id: "a".into(),
            kind: ActionKind::new("instrument"),
            target: "host:/usr/bin/python3".into(),
            payload: serde_json::Value::Null,
            idempotency_key: "k".into(),
            not_before_ms: 0,
            expires_at_ms: u64::MAX,
            mode: ActionMode::Execute,
            requires_capability: String::new(),
        };
        let (status, msg) = i.act(&a, &BTreeMap::new());
        assert_eq!(status, ResultStatus::Refused);
        assert_eq!(
            msg,
            "instrumentation unavailable: disabled by configuration (ebpf: false)"
        );
        let c = i.collector();
        assert_eq!((c.name.as_str(), c.state.as_str()), ("ebpf", "unavailable"));
        assert!(
            c.reason.contains("falls back to /proc scanning"),
            "{}",
            c.reason
        );
        assert!(i.take_connects().is_empty());
        assert_eq!(
            i.llm_evidence().unwrap_err(),
            "instrumentation unavailable: disabled by configuration (ebpf: false)"
        );
    }
}
