//! The kernel side of instrumentation, as the agent sees it: whether eBPF can
//! work on this host ([`preflight`]), loading the programs built from `bpf/`,
//! attaching the TLS uprobes to one process's libssl, and the ring buffer their
//! records arrive on.
//!
//! Invariants:
//! - Nothing here panics or aborts the agent: every failure is a `String` reason
//!   precise enough to act on ("missing CAP_BPF and CAP_PERFMON (or
//!   CAP_SYS_ADMIN)", "tracefs is not mounted ... and mounting it failed: ...").
//! - uprobes are attached per process (perf-event pid filter): a process nobody
//!   instrumented never traps into a probe.
//! - The programs are loaded once; attach and detach only add and remove links.

pub mod record;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::programs::uprobe::{UProbeLinkId, UProbeScope};
use aya::programs::{TracePoint, UProbe};
use aya::Ebpf;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;

/// The object `build.rs` compiled from `bpf/tether.bpf.c` (empty when clang was
/// missing at build time; [`preflight`] says so).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tether.bpf.o"));

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// (program, symbol) pairs attached to each instrumented process's libssl.
/// `_ex` variants are optional (OpenSSL before 1.1.1 has none).
const SSL_PROBES: &[(&str, &str, bool)] = &[
    ("tether_ssl_write", "SSL_write", true),
    ("tether_ssl_read_enter", "SSL_read", true),
    ("tether_ssl_read_exit", "SSL_read", true),
    ("tether_ssl_write_ex", "SSL_write_ex", false),
    ("tether_ssl_read_ex_enter", "SSL_read_ex", false),
    ("tether_ssl_read_ex_exit", "SSL_read_ex", false),
];

/// Effective capabilities from a `/proc/<pid>/status` text.
pub fn effective_caps(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Why the capabilities in `caps` cannot load and attach eBPF, if they cannot.
pub fn missing_caps(caps: u64) -> Option<String> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return None;
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(c, _)| !has(*c))
        .map(|(_, n)| n)
        .collect();
    Some(format!(
        "missing {} (or CAP_SYS_ADMIN)",
        missing.join(" and ")
    ))
}

/// Where tracefs is (or was made) available; mounts it when it is not and the
/// agent may.
fn ensure_tracefs() -> Result<(), String> {
    for dir in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(dir).join("events").is_dir() {
            return Ok(());
        }
    }
    let target = "/sys/kernel/tracing";
    rustix::mount::mount(
        "nodev",
        target,
        "tracefs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .map_err(|e| format!("tracefs is not mounted at {target} and mounting it failed: {e}"))?;
    if Path::new(target).join("events").is_dir() {
        Ok(())
    } else {
        Err(format!("tracefs mounted at {target} but has no events/"))
    }
}

/// Whether eBPF instrumentation can work here; the reason when it cannot.
pub fn preflight() -> Result<(), String> {
    let missing_obj = env!("TETHER_BPF_MISSING");
    if OBJECT.is_empty() {
        return Err(format!(
            "this agent was built without its eBPF object ({missing_obj})"
        ));
    }
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    if let Some(why) = effective_caps(&status).map_or_else(
        || Some("cannot read the agent's capabilities (CapEff)".to_owned()),
        missing_caps,
    ) {
        return Err(why);
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err("the kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing; needs CONFIG_DEBUG_INFO_BTF)".into());
    }
    ensure_tracefs()
}

/// Loaded programs and the links attached per process.
pub struct Probes {
    bpf: Ebpf,
    links: HashMap<u32, Vec<(&'static str, UProbeLinkId)>>,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("attached", &self.links.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Probes {
    /// Loads every program, attaches the connect tracepoint, and hands back the
    /// ring buffer for the reader thread.
    pub fn load() -> Result<(Self, RingBuf<MapData>), String> {
        // No kernel BTF for relocation: the programs read only stable ABIs (see
        // bpf/tether.bpf.c), and parsing vmlinux's BTF would cost megabytes of RSS.
        let mut bpf = aya::EbpfLoader::new()
            .btf(None)
            .load(OBJECT)
            .map_err(|e| format!("loading the eBPF object: {}", chain(&e)))?;
        for (name, _, _) in SSL_PROBES {
            let p: &mut UProbe = bpf
                .program_mut(name)
                .ok_or_else(|| format!("the eBPF object lacks {name}"))?
                .try_into()
                .map_err(|e| format!("{name}: {e}"))?;
            p.load()
                .map_err(|e| format!("loading {name}: {}", chain(&e)))?;
        }
        let tp: &mut TracePoint = bpf
            .program_mut("tether_connect")
            .ok_or("the eBPF object lacks tether_connect")?
            .try_into()
            .map_err(|e| format!("tether_connect: {e}"))?;
        tp.load()
            .map_err(|e| format!("loading tether_connect: {}", chain(&e)))?;
        tp.attach("syscalls", "sys_enter_connect")
            .map_err(|e| format!("attaching syscalls/sys_enter_connect: {}", chain(&e)))?;
        let ring = bpf
            .take_map("EVENTS")
            .ok_or("the eBPF object lacks EVENTS")?;
        let ring = RingBuf::try_from(ring).map_err(|e| format!("EVENTS: {e}"))?;
        Ok((
            Self {
                bpf,
                links: HashMap::new(),
            },
            ring,
        ))
    }

    pub fn is_attached(&self, pid: u32) -> bool {
        self.links.contains_key(&pid)
    }

    pub fn attached(&self) -> impl Iterator<Item = u32> + '_ {
        self.links.keys().copied()
    }

    /// Attaches the TLS probes to `lib` (a path as the agent sees it, e.g.
    /// `/proc/<pid>/root/usr/lib/.../libssl.so.3`) for process `pid` only.
    pub fn attach(&mut self, pid: u32, lib: &Path) -> Result<(), String> {
        if self.links.contains_key(&pid) {
            return Ok(());
        }
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or("pid 0")?);
        let mut links = Vec::new();
        let mut failure = None;
        for (name, symbol, required) in SSL_PROBES {
            let Some(p) = self.bpf.program_mut(name) else {
                failure = Some(format!("the eBPF object lacks {name}"));
                break;
            };
            let p: &mut UProbe = match p.try_into() {
                Ok(p) => p,
                Err(e) => {
                    failure = Some(format!("{name}: {e}"));
                    break;
                }
            };
            match p.attach(*symbol, lib, scope) {
                Ok(id) => links.push((*name, id)),
                Err(e) if !required => {
                    let _ = e; // an older libssl without the _ex calls
                }
                Err(e) => {
                    failure = Some(format!("{symbol} in {}: {}", lib.display(), chain(&e)));
                    break;
                }
            }
        }
        if let Some(why) = failure {
            self.release(links);
            return Err(why);
        }
        self.links.insert(pid, links);
        Ok(())
    }

    pub fn detach(&mut self, pid: u32) {
        if let Some(links) = self.links.remove(&pid) {
            self.release(links);
        }
    }

    fn release(&mut self, links: Vec<(&'static str, UProbeLinkId)>) {
        for (name, id) in links {
            if let Some(p) = self.bpf.program_mut(name) {
                let p: Result<&mut UProbe, _> = p.try_into();
                if let Ok(p) = p {
                    let _ = p.detach(id);
                }
            }
        }
    }

    /// Records the kernel could not put on the ring buffer (it was full).
    pub fn kernel_drops(&self) -> u64 {
        let Some(map) = self.bpf.map("DROPS") else {
            return 0;
        };
        let Ok(arr) = PerCpuArray::<_, u64>::try_from(map) else {
            return 0;
        };
        arr.get(&0, 0).map_or(0, |v| v.iter().sum())
    }
}

/// Kernel memory charged to this process's eBPF maps (`memlock` of each map
/// fd in `/proc/self/fdinfo`), as (map id, map type, bytes).
pub fn map_memory() -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return out;
    };
    for fd in fds.flatten() {
        let is_map =
            std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy().contains("bpf-map"));
        if !is_map {
            continue;
        }
        let info = std::fs::read_to_string(Path::new("/proc/self/fdinfo").join(fd.file_name()))
            .unwrap_or_default();
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.push((field("map_id:"), field("map_type:"), field("memlock:")));
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// An error with its sources, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_decide_with_a_precise_reason() {
        let root = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_caps(root), Some(0x1ff_ffff_ffff));
        assert_eq!(missing_caps(0x1ff_ffff_ffff), None);
        assert_eq!(missing_caps(1 << CAP_SYS_ADMIN), None);
        assert_eq!(missing_caps((1 << CAP_BPF) | (1 << CAP_PERFMON)), None);
        assert_eq!(
            missing_caps(0).as_deref(),
            Some("missing CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)")
        );
        assert_eq!(
            missing_caps(1 << CAP_BPF).as_deref(),
            Some("missing CAP_PERFMON (or CAP_SYS_ADMIN)")
        );
        assert_eq!(effective_caps("Name:\tx\n"), None);
    }
}
