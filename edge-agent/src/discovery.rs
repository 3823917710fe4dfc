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
use std::path::Path;
use tether_proto::Service;

/// Well-known provider endpoints, resolved periodically.
pub const PROVIDERS: &[(&str, &str)] = &[
    ("openai", "api.openai.com"),
    ("anthropic", "api.anthropic.com"),
    ("google", "generativelanguage.googleapis.com"),
    ("bedrock", "bedrock-runtime.us-east-1.amazonaws.com"),
    ("bedrock", "bedrock-runtime.us-west-2.amazonaws.com"),
    ("mistral", "api.mistral.ai"),
    ("cohere", "api.cohere.com"),
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

/// Parses a configured entry: `[provider=]host|ip|ip:port|cidr`. Host names are
/// resolved now (offline they resolve to nothing, which is not an error).
pub fn parse_endpoint(entry: &str) -> Vec<Endpoint> {
    let (provider, target) = match entry.split_once('=') {
        Some((p, t)) => (p.trim().to_owned(), t.trim()),
        None => ("custom".to_owned(), entry.trim()),
    };
    if let Some((net, prefix)) = target.split_once('/') {
        return match (net.parse::<IpAddr>(), prefix.parse::<u8>()) {
            (Ok(net), Ok(prefix)) => vec![Endpoint::Cidr {
                provider,
                net,
                prefix,
            }],
            _ => vec![],
        };
    }
    if let Ok(ip) = target.parse::<IpAddr>() {
        return vec![Endpoint::Ip {
            provider,
            ip,
            port: None,
        }];
    }
    if let Ok(sa) = target.parse::<std::net::SocketAddr>() {
        return vec![Endpoint::Ip {
            provider,
            ip: sa.ip(),
            port: Some(sa.port()),
        }];
    }
    resolve(&provider, target)
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

/// The matchers: configured entries plus the well-known providers.
pub fn endpoints(configured: &[String]) -> Vec<Endpoint> {
    let mut all: Vec<Endpoint> = configured.iter().flat_map(|e| parse_endpoint(e)).collect();
    for (provider, host) in PROVIDERS {
        all.extend(resolve(provider, host));
    }
    all
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

/// The workload key from cgroup membership and the process environment.
pub fn workload_key(cgroup: &str, environ: &HashMap<String, String>, exe: &str) -> String {
    if cgroup.contains("kubepods") {
        if let (Some(ns), Some(pod)) = (environ.get("POD_NAMESPACE"), environ.get("POD_NAME")) {
            let kind = environ
                .get("TETHER_WORKLOAD_KIND")
                .map_or("pod", String::as_str);
            let name = environ.get("TETHER_WORKLOAD_NAME").unwrap_or(pod);
            let container = environ.get("CONTAINER_NAME").map_or("main", String::as_str);
            return format!("k8s:{ns}:{kind}:{name}:{container}");
        }
    }
    for line in cgroup.lines() {
        let path = line.rsplit(':').next().unwrap_or("");
        for part in path.split('/').rev() {
            if let Some(id) = part
                .strip_prefix("docker-")
                .and_then(|p| p.strip_suffix(".scope"))
            {
                return format!("docker:{}", &id[..id.len().min(12)]);
            }
        }
        if let Some(pos) = path.find("/docker/") {
            let id = &path[pos + 8..];
            return format!("docker:{}", &id[..id.len().min(12)]);
        }
        if let Some(unit) = path.rsplit('/').next().filter(|u| u.ends_with(".service")) {
            if !unit.starts_with("user@") && path.starts_with("/system.slice/") {
                return format!("systemd:{unit}");
            }
        }
    }
    format!("host:{exe}")
}

fn read_processes(proc_root: &Path) -> (Vec<Process>, usize) {
    let mut procs = Vec::new();
    let mut skipped = 0;
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return (procs, 0);
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let base = entry.path();
        let exe = std::fs::read_link(base.join("exe"))
            .map(|p| {
                p.display()
                    .to_string()
                    .trim_end_matches(" (deleted)")
                    .to_owned()
            })
            .unwrap_or_default();
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
        let cgroup = std::fs::read_to_string(base.join("cgroup")).unwrap_or_default();
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
            workload_key: workload_key(&cgroup, &environ, &key_exe),
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
    pub processes: usize,
    pub skipped: usize,
}

/// Scans `proc_root` (normally `/proc`) and returns one service per workload key
/// among processes connected to an LLM endpoint (and, with `all_python`, every
/// python process), the oldest process of each key standing for it.
pub fn scan(proc_root: &Path, endpoints: &[Endpoint], all_python: bool) -> Scan {
    let (procs, skipped) = read_processes(proc_root);
    let conns: HashMap<u64, (IpAddr, u16)> = established(proc_root)
        .into_iter()
        .map(|(inode, ip, port)| (inode, (ip, port)))
        .collect();
    let mut by_key: BTreeMap<String, (u64, Service)> = BTreeMap::new();
    for p in &procs {
        let mut providers: Vec<String> = p
            .socket_inodes
            .iter()
            .filter_map(|i| conns.get(i))
            .filter_map(|(ip, port)| endpoints.iter().find_map(|e| e.matches(*ip, *port)))
            .map(str::to_owned)
            .collect();
        providers.sort();
        providers.dedup();
        if providers.is_empty() && !(all_python && p.runtime == "python") {
            continue;
        }
        let svc = Service {
            workload_key: p.workload_key.clone(),
            pid: p.pid,
            exe: p.exe.clone(),
            runtime: p.runtime.clone(),
            llm_providers: providers,
            instrumented: false,
            python_sdk: false,
        };
        match by_key.get(&p.workload_key) {
            Some((start, _)) if *start <= p.start_ticks => {}
            _ => {
                by_key.insert(p.workload_key.clone(), (p.start_ticks, svc));
            }
        }
    }
    Scan {
        services: by_key.into_values().map(|(_, s)| s).collect(),
        processes: procs.len(),
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
        assert_eq!(
            workload_key(
                "0::/system.slice/chat-api.service\n",
                &none,
                "/usr/bin/python3"
            ),
            "systemd:chat-api.service"
        );
        assert_eq!(
            workload_key(
                "0::/system.slice/docker-0123456789abcdef0123.scope\n",
                &none,
                "/x"
            ),
            "docker:0123456789ab"
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
        assert_eq!(
            workload_key(
                "0::/kubepods.slice/kubepods-pod1234.slice/cri-containerd-ab.scope\n",
                &env,
                "/x"
            ),
            "k8s:prod:deployment:chat:app"
        );
        assert_eq!(
            workload_key(
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
        let (procs, _) = read_processes(Path::new("/proc"));
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
}
