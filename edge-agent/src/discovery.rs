//! Service discovery from `/proc`: processes, their sockets, and which of them talk
//! to LLM providers.
//!
//! Invariants:
//! - Read-only: nothing here changes the host.
//! - A process we may not inspect (another user's, without privilege) is skipped,
//!   never an error; the scan reports how many it skipped.
//! - Workload keys do not contain pids, so a restarted process keeps its key:
//!   `k8s:<ns>:<kind>:<name>:<container>`, `docker:<container id>`,
//!   `systemd:<unit>`, else `host:<exe>`.
//! - Command lines are redacted before they leave this module: values of
//!   `--api-key`, `--token`, `--password`, `--secret` and of `NAME=value` arguments
//!   whose name mentions KEY, TOKEN, SECRET or PASSWORD become `***`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tether_proto::Service;

/// Well-known provider endpoints, resolved periodically.
pub const PROVIDERS: &[(&str, &str)] = &[
    ("openai", "api.openai.com"),
    ("anthropic", "api.anthropic.com"),
    ("google", "generativelanguage.googleapis.com"),
    ("mistral", "api.mistral.ai"),
    ("cohere", "api.cohere.com"),
    ("cohere", "api.cohere.ai"),
    ("groq", "api.groq.com"),
];

/// One LLM endpoint matcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Ip {
        provider: String,
        ip: IpAddr,
        port: Option<u16>,
    },
    Cidr {
        provider: String,
        net: IpAddr,
        prefix: u8,
    },
}

impl Endpoint {
    fn matches(&self, ip: IpAddr, port: u16) -> Option<&str> {
        match self {
            Endpoint::Ip {
                provider,
                ip: want,
                port: p,
            } => (*want == ip && p.is_none_or(|p| p == port)).then_some(provider.as_str()),
            Endpoint::Cidr {
                provider,
                net,
                prefix,
            } => in_cidr(ip, *net, *prefix).then_some(provider.as_str()),
        }
    }
}

fn in_cidr(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix.min(32)))
            };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix.min(128)))
            };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// A configured entry, parsed: matchers usable offline, or a host name to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Fixed(Endpoint),
    Host { provider: String, host: String },
    Invalid(String),
}

/// Parses a configured entry: `[provider=]host|ip|ip:port|cidr`.
pub fn parse_entry(entry: &str) -> Entry {
    let (provider, target) = match entry.split_once('=') {
        Some((p, t)) => (p.trim().to_owned(), t.trim()),
        None => ("custom".to_owned(), entry.trim()),
    };
    if let Some((net, prefix)) = target.split_once('/') {
        return match (net.parse::<IpAddr>(), prefix.parse::<u8>()) {
            (Ok(net), Ok(prefix)) if prefix <= if net.is_ipv4() { 32 } else { 128 } => {
                Entry::Fixed(Endpoint::Cidr {
                    provider,
                    net,
                    prefix,
                })
            }
            _ => Entry::Invalid(entry.to_owned()),
        };
    }
    if let Ok(ip) = target.parse::<IpAddr>() {
        return Entry::Fixed(Endpoint::Ip {
            provider,
            ip,
            port: None,
        });
    }
    if let Ok(sa) = target.parse::<std::net::SocketAddr>() {
        return Entry::Fixed(Endpoint::Ip {
            provider,
            ip: sa.ip(),
            port: Some(sa.port()),
        });
    }
    if target.is_empty() || target.contains(char::is_whitespace) {
        return Entry::Invalid(entry.to_owned());
    }
    Entry::Host {
        provider,
        host: target.to_owned(),
    }
}

/// Test helper and `scan` subcommand: the offline matchers of one entry.
#[cfg(test)]
fn parse_endpoint(entry: &str) -> Vec<Endpoint> {
    match parse_entry(entry) {
        Entry::Fixed(e) => vec![e],
        _ => vec![],
    }
}

fn resolve(provider: &str, host: &str) -> Vec<Endpoint> {
    (host, 443)
        .to_socket_addrs()
        .map(|addrs| {
            addrs
                .map(|a| Endpoint::Ip {
                    provider: provider.to_owned(),
                    ip: a.ip(),
                    port: None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The host names to resolve: the well-known providers, Bedrock in each
/// configured region, and configured host names (Azure OpenAI resources, say).
pub fn host_names(configured: &[String], bedrock_regions: &[String]) -> Vec<(String, String)> {
    let mut hosts: Vec<(String, String)> = PROVIDERS
        .iter()
        .map(|(p, h)| ((*p).to_owned(), (*h).to_owned()))
        .collect();
    hosts.extend(bedrock_regions.iter().map(|r| {
        (
            "bedrock".to_owned(),
            format!("bedrock-runtime.{r}.amazonaws.com"),
        )
    }));
    for e in configured {
        if let Entry::Host { provider, host } = parse_entry(e) {
            let provider = if provider == "custom" && host.ends_with(".openai.azure.com") {
                "azure_openai".to_owned()
            } else {
                provider
            };
            hosts.push((provider, host));
        }
    }
    hosts
}

/// The LLM endpoint matchers. Configured IPs, `ip:port` and CIDRs work at once
/// and offline; host names are resolved on a background thread every
/// [`RESOLVE_EVERY`], so a slow or absent DNS never delays a poll (a name that
/// does not resolve simply matches nothing).
#[derive(Debug, Clone)]
pub struct Resolver {
    fixed: Vec<Endpoint>,
    resolved: Arc<Mutex<Vec<Endpoint>>>,
    /// Entries that are neither an address, a CIDR nor a host name.
    pub invalid: Vec<String>,
}

pub const RESOLVE_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

impl Resolver {
    /// Offline matchers only; nothing is resolved.
    pub fn fixed(configured: &[String]) -> Self {
        let mut fixed = Vec::new();
        let mut invalid = Vec::new();
        for e in configured {
            match parse_entry(e) {
                Entry::Fixed(ep) => fixed.push(ep),
                Entry::Invalid(x) => invalid.push(x),
                Entry::Host { .. } => {}
            }
        }
        Self {
            fixed,
            resolved: Arc::new(Mutex::new(Vec::new())),
            invalid,
        }
    }

    /// Offline matchers now, plus a thread that resolves the host names now and
    /// every [`RESOLVE_EVERY`] for the life of the process.
    pub fn start(configured: &[String], bedrock_regions: &[String]) -> Self {
        let r = Self::fixed(configured);
        let hosts = host_names(configured, bedrock_regions);
        let shared = r.resolved.clone();
        let spawned = std::thread::Builder::new()
            .name("resolver".into())
            .spawn(move || loop {
                let found: Vec<Endpoint> = hosts.iter().flat_map(|(p, h)| resolve(p, h)).collect();
                match shared.lock() {
                    Ok(mut g) => *g = found,
                    Err(poisoned) => *poisoned.into_inner() = found,
                }
                std::thread::sleep(RESOLVE_EVERY);
            });
        if let Err(e) = spawned {
            eprintln!("tether-agent: cannot start the resolver thread ({e}); host names in llm_hosts will not match");
        }
        r
    }

    pub fn endpoints(&self) -> Vec<Endpoint> {
        let mut all = self.fixed.clone();
        match self.resolved.lock() {
            Ok(g) => all.extend(g.iter().cloned()),
            Err(poisoned) => all.extend(poisoned.into_inner().iter().cloned()),
        }
        all
    }
}

/// An established TCP connection: (socket inode, remote ip, remote port).
pub fn established(proc_root: &Path) -> Vec<(u64, IpAddr, u16)> {
    let mut out = Vec::new();
    for (file, v6) in [("net/tcp", false), ("net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(proc_root.join(file)) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(rem), Some(st), Some(inode)) = (f.get(2), f.get(3), f.get(9)) else {
                continue;
            };
            if *st != "01" {
                continue;
            }
            let Some((addr, port)) = rem.split_once(':') else {
                continue;
            };
            let (Some(ip), Ok(port), Ok(inode)) = (
                parse_hex_ip(addr, v6),
                u16::from_str_radix(port, 16),
                inode.parse(),
            ) else {
                continue;
            };
            out.push((inode, ip, port));
        }
    }
    out
}

/// `/proc/net/tcp` addresses: 32-bit words in host (little-endian) order.
fn parse_hex_ip(hex: &str, v6: bool) -> Option<IpAddr> {
    let words: Vec<u32> = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    if !v6 && words.len() == 1 {
        return Some(IpAddr::V4(Ipv4Addr::from(words[0].swap_bytes())));
    }
    if v6 && words.len() == 4 {
        let mut bytes = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        let ip = Ipv6Addr::from(bytes);
        return Some(
            ip.to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(ip)),
        );
    }
    None
}

/// A process as discovered.
#[derive(Debug, Clone, PartialEq)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub exe: String,
    pub cmdline: Vec<String>,
    pub start_ticks: u64,
    pub runtime: String,
    pub workload_key: String,
    pub place: Placement,
    pub socket_inodes: Vec<u64>,
}

pub fn runtime_of(exe: &str, argv0: &str) -> &'static str {
    let name = Path::new(if exe.is_empty() { argv0 } else { exe })
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.starts_with("python")
        || name.starts_with("pypy")
        || name == "uvicorn"
        || name == "gunicorn"
    {
        "python"
    } else if name == "node" || name == "nodejs" || name == "bun" || name == "deno" {
        "node"
    } else if name == "java" {
        "java"
    } else if name == "dotnet" {
        "dotnet"
    } else {
        "other"
    }
}

/// Redacts secrets from a command line.
pub fn redact(args: &[String]) -> Vec<String> {
    const FLAGS: &[&str] = &["--api-key", "--apikey", "--token", "--password", "--secret"];
    const WORDS: &[&str] = &["KEY", "TOKEN", "SECRET", "PASSWORD"];
    let mut out = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for a in args {
        if hide_next {
            out.push("***".into());
            hide_next = false;
            continue;
        }
        let lower = a.to_lowercase();
        if let Some(flag) = FLAGS
            .iter()
            .find(|f| lower == **f || lower.starts_with(&format!("{f}=")))
        {
            if lower == *flag {
                out.push(a.clone());
                hide_next = true;
            } else {
                out.push(format!("{}=***", &a[..flag.len()]));
            }
            continue;
        }
        match a.split_once('=') {
            Some((name, _)) if WORDS.iter().any(|w| name.to_uppercase().contains(w)) => {
                out.push(format!("{name}=***"))
            }
            _ => out.push(a.clone()),
        }
    }
    out
}

/// What a process's `/proc/<pid>/cgroup` says about where it runs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Container runtime id (docker, containerd, CRI-O, podman), full length.
    pub container_id: Option<String>,
    /// Kubernetes pod UID, dashed.
    pub pod_uid: Option<String>,
    /// The systemd service the process belongs to (system services only).
    pub systemd_unit: Option<String>,
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Reads cgroup v1 or v2 membership lines (`hierarchy:controllers:path`).
pub fn placement(cgroup: &str) -> Placement {
    let mut out = Placement::default();
    for line in cgroup.lines() {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        for seg in path.split('/') {
            if let Some(i) = seg.rfind("pod").filter(|_| path.contains("kubepods")) {
                let uid = seg[i + 3..].trim_end_matches(".slice").replace('_', "-");
                if uid.len() == 36 && out.pod_uid.is_none() {
                    out.pod_uid = Some(uid);
                }
            }
            let scoped = [
                "docker-",
                "cri-containerd-",
                "crio-",
                "containerd-",
                "libpod-",
            ]
            .iter()
            .find_map(|p| seg.strip_prefix(p)?.strip_suffix(".scope"));
            if let Some(id) = scoped
                .filter(|id| is_hex_id(id))
                .or(Some(seg).filter(|s| is_hex_id(s)))
            {
                out.container_id.get_or_insert_with(|| id.to_owned());
            }
        }
        if let Some(unit) = path.rsplit('/').next().filter(|u| u.ends_with(".service")) {
            if path.starts_with("/system.slice/") && !unit.starts_with("user@") {
                out.systemd_unit.get_or_insert_with(|| unit.to_owned());
            }
        }
    }
    out
}

/// The owning workload of a pod, from its name: `chat-7d9f8b6c5-x2x9q` is
/// deployment `chat`, `db-0` statefulset `db`, `node-agent-x2x9q` daemonset
/// `node-agent`. A heuristic; `TETHER_WORKLOAD_KIND` / `TETHER_WORKLOAD_NAME` in
/// the pod's environment (from the downward API) override it.
pub fn pod_owner(pod: &str) -> (&'static str, String) {
    let parts: Vec<&str> = pod.split('-').collect();
    let alnum = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    let n = parts.len();
    if n >= 3
        && parts[n - 1].len() == 5
        && alnum(parts[n - 1])
        && (6..=10).contains(&parts[n - 2].len())
        && alnum(parts[n - 2])
    {
        return ("deployment", parts[..n - 2].join("-"));
    }
    if n >= 2 && parts[n - 1].bytes().all(|b| b.is_ascii_digit()) && !parts[n - 1].is_empty() {
        return ("statefulset", parts[..n - 1].join("-"));
    }
    if n >= 2 && parts[n - 1].len() == 5 && alnum(parts[n - 1]) {
        return ("daemonset", parts[..n - 1].join("-"));
    }
    ("pod", pod.to_owned())
}

/// The workload key from cgroup membership and the process environment. No pid
/// and nothing random goes in, so a restarted process keeps its key.
pub fn workload_key(place: &Placement, environ: &HashMap<String, String>, exe: &str) -> String {
    if place.pod_uid.is_some() {
        let pod = environ.get("POD_NAME").or_else(|| environ.get("HOSTNAME"));
        if let (Some(ns), Some(pod)) = (environ.get("POD_NAMESPACE"), pod) {
            let (guess_kind, guess_name) = pod_owner(pod);
            let kind = environ
                .get("TETHER_WORKLOAD_KIND")
                .map_or(guess_kind, String::as_str);
            let name = environ.get("TETHER_WORKLOAD_NAME").unwrap_or(&guess_name);
            let container = environ.get("CONTAINER_NAME").map_or("main", String::as_str);
            return format!("k8s:{ns}:{kind}:{name}:{container}");
        }
    }
    if let Some(id) = &place.container_id {
        return format!("docker:{}", &id[..id.len().min(12)]);
    }
    if let Some(unit) = &place.systemd_unit {
        return format!("systemd:{unit}");
    }
    format!("host:{exe}")
}

/// Reads the processes under `proc_root`. The cheap facts (socket fds, exe) come
/// first; only processes `want` keeps are read further (cmdline, status, stat,
/// environ, cgroup), which is what keeps a scan of a busy host fast. Returns the
/// kept processes, how many pids there were, and how many could not be read.
/// `hit`: whether a process's sockets reach a watched endpoint. Processes that do
/// not (the vast majority) cost one `readdir` of their fds and nothing more, unless
/// `all_python` asks for every python process too.
///
/// A busy host's pids are split over up to [`SCAN_THREADS`] scoped threads (the
/// walk is syscall-bound); a host with few processes, or one where a thread
/// cannot start, is read on the calling thread.
fn read_processes(
    proc_root: &Path,
    hit: &(dyn Fn(u32, &[u64]) -> bool + Sync),
    all_python: bool,
) -> (Vec<Process>, usize, usize) {
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return (Vec::new(), 0, 0);
    };
    let pids: Vec<(u32, PathBuf)> = dir
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((pid, e.path()))
        })
        .collect();
    let seen = pids.len();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(SCAN_THREADS);
    if threads < 2 || pids.len() < 256 {
        let (procs, skipped) = read_some(&pids, hit, all_python);
        return (procs, seen, skipped);
    }
    let per = pids.len().div_ceil(threads);
    let (mut procs, mut skipped) = (Vec::new(), 0);
    std::thread::scope(|s| {
        let mut inline = Vec::new();
        let mut running = Vec::new();
        for chunk in pids.chunks(per) {
            match std::thread::Builder::new()
                .name("scan".into())
                .spawn_scoped(s, move || read_some(chunk, hit, all_python))
            {
                Ok(h) => running.push(h),
                Err(_) => inline.push(chunk),
            }
        }
        for chunk in inline {
            let (p, k) = read_some(chunk, hit, all_python);
            procs.extend(p);
            skipped += k;
        }
        for h in running {
            if let Ok((p, k)) = h.join() {
                procs.extend(p);
                skipped += k;
            }
        }
    });
    (procs, seen, skipped)
}

/// Scan threads at most (the walk is bound by syscalls, not CPU).
const SCAN_THREADS: usize = 4;

/// [`read_processes`] for some of the pids: the kept processes, and how many
/// could not be read.
fn read_some(
    pids: &[(u32, PathBuf)],
    hit: &(dyn Fn(u32, &[u64]) -> bool + Sync),
    all_python: bool,
) -> (Vec<Process>, usize) {
    let mut procs = Vec::new();
    let mut skipped = 0;
    for (pid, base) in pids {
        let (pid, base) = (*pid, base.clone());
        let socket_inodes: Vec<u64> = std::fs::read_dir(base.join("fd"))
            .map(|fds| {
                fds.flatten()
                    .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                    .filter_map(|l| {
                        l.to_str()?
                            .strip_prefix("socket:[")?
                            .strip_suffix(']')?
                            .parse()
                            .ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        let is_hit = hit(pid, &socket_inodes);
        if !is_hit && !all_python {
            continue;
        }
        let exe = std::fs::read_link(base.join("exe"))
            .map(|p| {
                p.display()
                    .to_string()
                    .trim_end_matches(" (deleted)")
                    .to_owned()
            })
            .unwrap_or_default();
        if !(is_hit || exe.is_empty() || runtime_of(&exe, "") == "python") {
            continue;
        }
        let cmdline: Vec<String> = std::fs::read(base.join("cmdline"))
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if exe.is_empty() && cmdline.is_empty() {
            skipped += 1; // kernel thread, or not ours to read
            continue;
        }
        let status = std::fs::read_to_string(base.join("status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0)
        };
        let stat = std::fs::read_to_string(base.join("stat")).unwrap_or_default();
        let start_ticks = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(19))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let environ: HashMap<String, String> = std::fs::read(base.join("environ"))
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter_map(|kv| {
                        let s = String::from_utf8_lossy(kv);
                        s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let place = placement(&std::fs::read_to_string(base.join("cgroup")).unwrap_or_default());
        let argv0 = cmdline.first().cloned().unwrap_or_default();
        let key_exe = if exe.is_empty() {
            argv0.clone()
        } else {
            exe.clone()
        };
        procs.push(Process {
            pid,
            ppid: field("PPid:"),
            uid: field("Uid:"),
            runtime: runtime_of(&exe, &argv0).to_owned(),
            workload_key: workload_key(&place, &environ, &key_exe),
            place,
            exe,
            cmdline: redact(&cmdline),
            start_ticks,
            socket_inodes,
        });
    }
    (procs, skipped)
}

/// One scan's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    pub services: Vec<Service>,
    /// Every process of each reported workload (the service names the oldest).
    pub members: BTreeMap<String, Vec<u32>>,
    pub processes: usize,
    pub skipped: usize,
}

/// How a scan looks at the host.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Report python processes without an LLM connection too.
    pub all_python: bool,
    /// Where systemd drop-ins live (`/etc/systemd/system`): a service whose unit
    /// has the Python SDK drop-in is reported with `python_sdk: true`.
    pub systemd_dir: PathBuf,
    /// Remote addresses per pid seen by the eBPF connect probe since the last
    /// scan: catches connections too short-lived for `/proc/net` to show.
    pub connects: HashMap<u32, Vec<(IpAddr, u16)>>,
    /// Container names and labels from the Docker socket (empty without one):
    /// a Docker container's workload key is `docker:<name>` when known.
    pub containers: HashMap<String, crate::docker::Container>,
}

/// The drop-in `enable_python_sdk` writes for `unit`.
pub fn python_sdk_dropin(systemd_dir: &Path, unit: &str) -> PathBuf {
    systemd_dir
        .join(format!("{unit}.d"))
        .join("50-tether-python-sdk.conf")
}

/// Scans `proc_root` (normally `/proc`) and returns one service per workload key
/// among processes connected to an LLM endpoint (and, with `all_python`, every
/// python process), the oldest process of each key standing for it.
pub fn scan(proc_root: &Path, endpoints: &[Endpoint], opts: &ScanOptions) -> Scan {
    let all_python = opts.all_python;
    let conns: HashMap<u64, (IpAddr, u16)> = established(proc_root)
        .into_iter()
        .map(|(inode, ip, port)| (inode, (ip, port)))
        .filter(|(_, (ip, port))| endpoints.iter().any(|e| e.matches(*ip, *port).is_some()))
        .collect();
    let probed = |pid: u32| -> Vec<String> {
        opts.connects
            .get(&pid)
            .map(|addrs| {
                addrs
                    .iter()
                    .filter_map(|(ip, port)| endpoints.iter().find_map(|e| e.matches(*ip, *port)))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let hit = |pid: u32, inodes: &[u64]| {
        inodes.iter().any(|i| conns.contains_key(i)) || !probed(pid).is_empty()
    };
    let (procs, seen, skipped) = read_processes(proc_root, &hit, all_python);
    let mut by_key: BTreeMap<String, (u64, Service)> = BTreeMap::new();
    let mut members: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for p in &procs {
        let mut providers: Vec<String> = p
            .socket_inodes
            .iter()
            .filter_map(|i| conns.get(i))
            .filter_map(|(ip, port)| endpoints.iter().find_map(|e| e.matches(*ip, *port)))
            .map(str::to_owned)
            .chain(probed(p.pid))
            .collect();
        providers.sort();
        providers.dedup();
        if providers.is_empty() && !(all_python && p.runtime == "python") {
            continue;
        }
        let container = p
            .place
            .container_id
            .as_ref()
            .and_then(|id| opts.containers.get(id));
        let workload_key = match container {
            Some(c) if p.workload_key.starts_with("docker:") => format!("docker:{}", c.name),
            _ => p.workload_key.clone(),
        };
        let svc = Service {
            workload_key: workload_key.clone(),
            pid: p.pid,
            exe: p.exe.clone(),
            runtime: p.runtime.clone(),
            llm_providers: providers,
            instrumented: false,
            python_sdk: p
                .place
                .systemd_unit
                .as_ref()
                .is_some_and(|u| python_sdk_dropin(&opts.systemd_dir, u).exists()),
            labels: container.map(|c| c.labels.clone()).unwrap_or_default(),
            llm_content: Default::default(),
        };
        members.entry(workload_key.clone()).or_default().push(p.pid);
        match by_key.get(&workload_key) {
            Some((start, _)) if *start <= p.start_ticks => {}
            _ => {
                by_key.insert(workload_key, (p.start_ticks, svc));
            }
        }
    }
    Scan {
        services: by_key.into_values().map(|(_, s)| s).collect(),
        members,
        processes: seen,
        skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses_decode() {
        assert_eq!(
            parse_hex_ip("0100007F", false),
            Some("127.0.0.1".parse().expect("ip"))
        );
        assert_eq!(
            parse_hex_ip("0000000000000000FFFF00000100007F", true),
            Some("127.0.0.1".parse().expect("ip")),
            "v4-mapped v6 is reported as v4"
        );
        assert_eq!(
            parse_hex_ip("00000000000000000000000001000000", true),
            Some("::1".parse().expect("ip"))
        );
        assert_eq!(parse_hex_ip("zz", false), None);
    }

    #[test]
    fn endpoints_match_ip_port_and_cidr() {
        let e = parse_endpoint("openai=127.0.0.1:9443");
        assert_eq!(
            e[0].matches("127.0.0.1".parse().expect("ip"), 9443),
            Some("openai")
        );
        assert_eq!(e[0].matches("127.0.0.1".parse().expect("ip"), 80), None);
        let c = parse_endpoint("10.20.0.0/16");
        assert_eq!(
            c[0].matches("10.20.3.4".parse().expect("ip"), 1),
            Some("custom")
        );
        assert_eq!(c[0].matches("10.21.0.1".parse().expect("ip"), 1), None);
        assert!(parse_endpoint("bad/cidr").is_empty());
        assert!(parse_endpoint("10.0.0.0/33").is_empty());
        assert_eq!(
            parse_entry("myaoai.openai.azure.com"),
            Entry::Host {
                provider: "custom".into(),
                host: "myaoai.openai.azure.com".into()
            }
        );
        let hosts = host_names(
            &["myaoai.openai.azure.com".into()],
            &["eu-central-1".into()],
        );
        assert!(hosts.contains(&(
            "bedrock".into(),
            "bedrock-runtime.eu-central-1.amazonaws.com".into()
        )));
        assert!(hosts.contains(&("azure_openai".into(), "myaoai.openai.azure.com".into())));
        let r = Resolver::fixed(&["openai=127.0.0.1:9443".into(), "not a host".into()]);
        assert_eq!(r.endpoints().len(), 1, "offline entries work without DNS");
        assert_eq!(r.invalid, vec!["not a host".to_owned()]);
    }

    #[test]
    fn secrets_are_redacted() {
        let args: Vec<String> = [
            "python3",
            "app.py",
            "--api-key",
            "sk-123",
            "--token=abc",
            "OPENAI_API_KEY=sk-9",
            "--port",
            "80",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            redact(&args),
            vec![
                "python3",
                "app.py",
                "--api-key",
                "***",
                "--token=***",
                "OPENAI_API_KEY=***",
                "--port",
                "80"
            ]
        );
    }

    #[test]
    fn workload_keys_survive_restarts() {
        let none = HashMap::new();
        let key = |cg: &str, env: &HashMap<String, String>, exe: &str| {
            workload_key(&placement(cg), env, exe)
        };
        assert_eq!(
            key(
                "0::/system.slice/chat-api.service\n",
                &none,
                "/usr/bin/python3"
            ),
            "systemd:chat-api.service"
        );
        let id = "0123456789abcdef".repeat(4);
        assert_eq!(
            key(
                &format!("0::/system.slice/docker-{id}.scope\n"),
                &none,
                "/x"
            ),
            "docker:0123456789ab"
        );
        assert_eq!(
            key(&format!("12:memory:/docker/{id}\n"), &none, "/x"),
            "docker:0123456789ab",
            "cgroup v1, cgroupfs driver"
        );
        let env: HashMap<String, String> = [
            ("POD_NAMESPACE", "prod"),
            ("POD_NAME", "chat-7d9f-abc"),
            ("CONTAINER_NAME", "app"),
            ("TETHER_WORKLOAD_KIND", "deployment"),
            ("TETHER_WORKLOAD_NAME", "chat"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let pod_cg = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_0000_1111_2222_333344445555.slice/cri-containerd-{id}.scope\n"
        );
        let p = placement(&pod_cg);
        assert_eq!(
            p.pod_uid.as_deref(),
            Some("1b2c3d4e-0000-1111-2222-333344445555")
        );
        assert_eq!(p.container_id.as_deref(), Some(id.as_str()));
        assert_eq!(key(&pod_cg, &env, "/x"), "k8s:prod:deployment:chat:app");
        let guessed: HashMap<String, String> = [
            ("POD_NAMESPACE", "prod"),
            ("HOSTNAME", "chat-7d9f8b6c5-x2x9q"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(
            key(&pod_cg, &guessed, "/x"),
            "k8s:prod:deployment:chat:main"
        );
        assert_eq!(pod_owner("db-0"), ("statefulset", "db".to_owned()));
        assert_eq!(
            pod_owner("node-agent-x2x9q"),
            ("daemonset", "node-agent".to_owned())
        );
        assert_eq!(pod_owner("standalone"), ("pod", "standalone".to_owned()));
        assert_eq!(
            key(&pod_cg, &none, "/x"),
            "docker:0123456789ab",
            "a pod without namespace env falls back to its container"
        );
        assert_eq!(
            key(
                "0::/user.slice/session-1.scope\n",
                &none,
                "/usr/bin/python3"
            ),
            "host:/usr/bin/python3"
        );
        assert_eq!(runtime_of("/usr/bin/python3.12", ""), "python");
        assert_eq!(runtime_of("", "node"), "node");
        assert_eq!(runtime_of("/usr/lib/jvm/bin/java", ""), "java");
    }

    #[test]
    fn this_process_is_found_in_the_real_proc() {
        let (procs, seen, _) = read_processes(Path::new("/proc"), &|_, _| true, false);
        assert!(seen >= procs.len());
        let me = procs
            .iter()
            .find(|p| p.pid == std::process::id())
            .expect("self");
        assert!(
            me.exe.contains("tether_agent") || me.exe.contains("deps"),
            "{}",
            me.exe
        );
        assert!(me.start_ticks > 0);
    }

    /// A fake `/proc` with one process: `pid` in `cgroup`, holding socket
    /// `inode` to 127.0.0.2:443 when `inode` is given.
    fn fake_proc(name: &str, pid: u32, cgroup: &str, inode: Option<u32>) -> PathBuf {
        let root = std::env::temp_dir().join(format!("fakeproc-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let d = root.join(pid.to_string());
        std::fs::create_dir_all(d.join("fd")).expect("dir");
        std::fs::create_dir_all(root.join("net")).expect("dir");
        std::os::unix::fs::symlink("/usr/bin/python3.12", d.join("exe")).expect("exe");
        std::fs::write(d.join("cmdline"), b"python3\0app.py\0").expect("w");
        std::fs::write(d.join("status"), "PPid:\t1\nUid:\t0\t0\n").expect("w");
        std::fs::write(
            d.join("stat"),
            format!("{pid} (python3) S 1 1 1 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0 5 0 0"),
        )
        .expect("w");
        std::fs::write(d.join("environ"), b"HOME=/root\0").expect("w");
        std::fs::write(d.join("cgroup"), cgroup).expect("w");
        let mut tcp = String::from("  sl  local_address rem_address   st\n");
        if let Some(inode) = inode {
            std::os::unix::fs::symlink(format!("socket:[{inode}]"), d.join("fd/3")).expect("fd");
            tcp.push_str(&format!(
                "   0: 0100007F:1F90 0200007F:01BB 01 00000000:00000000 00:00000000 00000000  0        0 {inode} 1\n"
            ));
        }
        std::fs::write(root.join("net/tcp"), tcp).expect("tcp");
        root
    }

    #[test]
    fn docker_containers_are_keyed_by_name_with_their_labels() {
        let id = "4f8e2c1b9a7d6e5f4f8e2c1b9a7d6e5f4f8e2c1b9a7d6e5f4f8e2c1b9a7d6e5f";
        let root = fake_proc(
            "docker",
            300,
            &format!("0::/system.slice/docker-{id}.scope\n"),
            Some(77),
        );
        let eps = Resolver::fixed(&["openai=127.0.0.2:443".into()]).endpoints();
        let mut opts = ScanOptions {
            all_python: false,
            systemd_dir: root.join("systemd"),
            connects: HashMap::new(),
            containers: HashMap::new(),
        };
        let by_id = scan(&root, &eps, &opts);
        assert_eq!(by_id.services[0].workload_key, "docker:4f8e2c1b9a7d");
        assert!(by_id.services[0].labels.is_empty());
        opts.containers.insert(
            id.to_owned(),
            crate::docker::Container {
                name: "rag-worker".into(),
                labels: BTreeMap::from([("team".to_owned(), "ml".to_owned())]),
            },
        );
        let named = scan(&root, &eps, &opts);
        assert_eq!(named.services[0].workload_key, "docker:rag-worker");
        assert_eq!(named.services[0].labels["team"], "ml");
        assert_eq!(named.members["docker:rag-worker"], vec![300]);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_connect_the_probe_saw_flags_a_process_without_open_sockets() {
        let root = fake_proc("connect", 301, "0::/user.slice\n", None);
        let eps = Resolver::fixed(&["anthropic=127.0.0.2:443".into()]).endpoints();
        let mut opts = ScanOptions {
            all_python: false,
            systemd_dir: root.join("systemd"),
            connects: HashMap::new(),
            containers: HashMap::new(),
        };
        assert!(
            scan(&root, &eps, &opts).services.is_empty(),
            "no socket, no probe: nothing"
        );
        opts.connects
            .insert(301, vec![("127.0.0.2".parse().expect("ip"), 443)]);
        let s = scan(&root, &eps, &opts);
        assert_eq!(s.services.len(), 1);
        assert_eq!(s.services[0].llm_providers, vec!["anthropic".to_owned()]);
        let _ = std::fs::remove_dir_all(&root);
    }

    /// Scan time for 1,000 synthetic processes (each with an exe, cmdline, status,
    /// stat, environ, cgroup and 4 socket fds) plus 4,000 sockets. Prints the
    /// time; asserts only what the scan found. Run with
    /// `cargo test -p tether-agent --release -- --ignored bench --nocapture`.
    #[test]
    #[ignore = "benchmark: prints a timing"]
    fn bench_scan_of_1000_processes() {
        let root = std::env::temp_dir().join(format!("fakeproc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("net")).expect("dir");
        let mut tcp = String::from("  sl  local_address rem_address   st\n");
        for pid in 1000..2000u32 {
            let d = root.join(pid.to_string());
            std::fs::create_dir_all(d.join("fd")).expect("dir");
            std::os::unix::fs::symlink("/usr/bin/python3.12", d.join("exe")).expect("exe");
            std::fs::write(d.join("cmdline"), b"python3\0app.py\0--token\0x\0").expect("w");
            std::fs::write(d.join("status"), "PPid:\t1\nUid:\t1000\t1000\n").expect("w");
            std::fs::write(
                d.join("stat"),
                format!("{pid} (python3) S 1 1 1 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0 {pid} 0 0"),
            )
            .expect("w");
            std::fs::write(d.join("environ"), b"HOME=/root\0PATH=/bin\0").expect("w");
            std::fs::write(
                d.join("cgroup"),
                format!("0::/system.slice/app{}.service\n", pid % 50),
            )
            .expect("w");
            for fd in 0..4u32 {
                let inode = pid * 10 + fd;
                std::os::unix::fs::symlink(
                    format!("socket:[{inode}]"),
                    d.join("fd").join(fd.to_string()),
                )
                .expect("fd");
                let port = if fd == 0 && pid % 10 == 0 { 443 } else { 8000 };
                tcp.push_str(&format!(
                    "   0: 0100007F:1F90 0200007F:{port:04X} 01 00000000:00000000 00:00000000 00000000  1000        0 {inode} 1\n"
                ));
            }
        }
        std::fs::write(root.join("net/tcp"), tcp).expect("tcp");
        let eps = Resolver::fixed(&["openai=127.0.0.2:443".into()]).endpoints();
        let opts = ScanOptions {
            all_python: false,
            systemd_dir: root.join("systemd"),
            connects: HashMap::new(),
            containers: HashMap::new(),
        };
        let _warm = scan(&root, &eps, &opts);
        let t = std::time::Instant::now();
        let runs = 10;
        let mut found = 0;
        for _ in 0..runs {
            found = scan(&root, &eps, &opts).services.len();
        }
        let per = t.elapsed() / runs;
        println!(
            "discovery scan of 1000 processes: {:.2} ms",
            per.as_secs_f64() * 1000.0
        );
        assert_eq!(found, 5, "100 connected processes in 5 systemd units");
        let _ = std::fs::remove_dir_all(&root);
    }
}
