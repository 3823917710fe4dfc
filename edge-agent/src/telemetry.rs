//! Host telemetry from kernel sources, summarised per window.
//!
//! Sources: `/proc/stat` (CPU by state), `/proc/meminfo`, `/proc/loadavg`,
//! `/proc/pressure/{cpu,memory,io}` (PSI), `/proc/vmstat` (`oom_kill`),
//! `/proc/diskstats`, `/proc/net/dev`, disk usage (`statvfs` of the mounted
//! filesystems in `/proc/mounts`), per-process CPU and RSS (`/proc/<pid>/stat`),
//! cgroup v2 per container (`cpu.stat`, `memory.current`) and GPUs through NVML
//! ([`crate::gpu`]).
//!
//! Invariants:
//! - A source that is missing or unreadable makes its collector `unavailable`
//!   with the reason; the others keep working and nothing here fails the agent.
//! - Rates are deltas between two samples of cumulative counters; the first
//!   sample only sets the baseline, so a window never reports a rate it did not
//!   measure. Counter resets (reboot, wrap) give zero, never a negative rate.
//! - Metric names are bounded: per-device and per-container families are capped,
//!   so a window's size does not grow with the host.

use crate::gpu::Gpu;
use crate::state::Collector;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Most containers reported per window.
const MAX_CGROUPS: usize = 32;
/// Most filesystems reported per window.
const MAX_MOUNTS: usize = 8;
/// Top processes reported, by CPU and by RSS.
const TOP: usize = 3;
/// Processes resolved to their workload key per window, at most.
const MAX_RESOLVED: usize = 16;

/// One sample's outcome.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Sample {
    pub metrics: BTreeMap<String, f64>,
    pub events: Vec<String>,
    pub collectors: Vec<Collector>,
    /// GPU names, for the inventory.
    pub gpus: Vec<String>,
}

/// Cumulative counters from the previous sample, to turn into rates.
#[derive(Debug)]
pub struct Sampler {
    root: PathBuf,
    cgroup_root: PathBuf,
    at: Option<Instant>,
    cpu: Option<Vec<u64>>,
    oom_kills: Option<u64>,
    disk: Option<(u64, u64, u64)>,
    net: Option<(u64, u64)>,
    procs: HashMap<u32, u64>,
    cgroups: HashMap<String, u64>,
    gpu: Gpu,
}

fn cpu_counters(stat: &str) -> Option<Vec<u64>> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    Some(
        line.split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect(),
    )
}

fn meminfo(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kb| kb * 1024.0)
}

fn psi(text: &str, kind: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with(kind))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))
        .and_then(|v| v.parse().ok())
}

/// Sectors read, sectors written, ms doing I/O, summed over whole disks.
fn diskstats(text: &str, is_disk: &dyn Fn(&str) -> bool) -> (u64, u64, u64) {
    let mut t = (0, 0, 0);
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(name), Some(rd), Some(wr), Some(io)) = (f.get(2), f.get(5), f.get(9), f.get(12))
        else {
            continue;
        };
        if !is_disk(name) {
            continue;
        }
        let n = |s: &str| s.parse::<u64>().unwrap_or(0);
        t.0 += n(rd);
        t.1 += n(wr);
        t.2 += n(io);
    }
    t
}

/// Received and transmitted bytes, summed over interfaces other than `lo`.
fn netdev(text: &str) -> (u64, u64) {
    let mut t = (0, 0);
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        t.0 += f.first().copied().unwrap_or(0);
        t.1 += f.get(8).copied().unwrap_or(0);
    }
    t
}

/// `/` -> `root`, `/var/lib` -> `var_lib`.
pub(crate) fn mount_name(mountpoint: &str) -> String {
    let s = mountpoint.trim_matches('/').replace(['/', '.', ' '], "_");
    if s.is_empty() {
        "root".into()
    } else {
        s
    }
}

/// Filesystems from `/proc/mounts` that can fill up: disk filesystems, and the
/// tmpfs mounts workloads write to (`/dev/shm`, `/tmp`, `/run`, …), not the
/// kernel's own (`/sys`, `/proc`, `/dev`) or per-user runtime directories.
pub(crate) fn mounts(text: &str) -> Vec<String> {
    const REAL: &[&str] = &[
        "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "overlay",
    ];
    let tmpfs_counts = |mp: &str| {
        mp == "/dev/shm"
            || !(mp.starts_with("/sys")
                || mp.starts_with("/proc")
                || mp.starts_with("/dev")
                || mp.starts_with("/run/user/")
                || mp.starts_with("/run/credentials")
                || mp == "/run/lock")
    };
    let mut out: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (mp, fs) = (f.get(1)?, f.get(2)?);
            let mp = mp.replace("\\040", " ");
            (REAL.contains(fs) || (*fs == "tmpfs" && tmpfs_counts(&mp))).then_some(mp)
        })
        .collect();
    out.sort();
    out.dedup();
    out.truncate(MAX_MOUNTS);
    out
}

/// Used bytes and percent as `df` computes them: blocks in use over the blocks
/// an unprivileged writer can use (used + available), so the root-reserved
/// blocks count neither as used nor as room.
pub(crate) fn df(blocks: u64, bfree: u64, bavail: u64, frsize: u64) -> (f64, f64) {
    let used = blocks.saturating_sub(bfree).saturating_mul(frsize) as f64;
    let avail = bavail.saturating_mul(frsize) as f64;
    let pct = if used + avail > 0.0 {
        100.0 * used / (used + avail)
    } else {
        0.0
    };
    (used, pct)
}

/// utime + stime and RSS pages of one `/proc/<pid>/stat`.
pub(crate) fn proc_stat(stat: &str) -> Option<(String, u64, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let f: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((comm, n(11)? + n(12)?, n(21)?))
}

/// Container cgroups under a cgroup v2 root: (short id, directory).
fn container_cgroups(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let id = ["docker-", "cri-containerd-", "crio-", "libpod-"]
                .iter()
                .find_map(|p| name.strip_prefix(p)?.strip_suffix(".scope"))
                .or_else(|| {
                    // cgroupfs driver (v1 and v2): `docker/<64 hex>`,
                    // `kubepods/.../<64 hex>`.
                    (name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()))
                        .then_some(name.as_str())
                });
            match id {
                Some(id) if out.len() < MAX_CGROUPS => {
                    out.push((id.chars().take(12).collect(), e.path()))
                }
                Some(_) => {}
                None if depth < 4 => stack.push((e.path(), depth + 1)),
                None => {}
            }
        }
    }
    out.sort();
    out
}

fn note(collectors: &mut Vec<Collector>, name: &str, r: Result<(), String>) {
    collectors.push(Collector {
        name: name.into(),
        state: if r.is_ok() { "ok" } else { "unavailable" }.into(),
        reason: r.err().unwrap_or_default(),
    });
}

impl Sampler {
    pub fn new(root: &Path) -> Self {
        Self::with_gpu(root, Path::new("/sys/fs/cgroup"), Gpu::open())
    }

    pub fn with_gpu(root: &Path, cgroup_root: &Path, gpu: Gpu) -> Self {
        Self {
            root: root.to_path_buf(),
            cgroup_root: cgroup_root.to_path_buf(),
            at: None,
            cpu: None,
            oom_kills: None,
            disk: None,
            net: None,
            procs: HashMap::new(),
            cgroups: HashMap::new(),
            gpu,
        }
    }

    /// One sample: gauges, rates since the previous sample, events, and the state
    /// of each collector.
    pub fn sample(&mut self) -> Sample {
        let mut m = BTreeMap::new();
        let mut events = Vec::new();
        let mut collectors = Vec::new();
        let now = Instant::now();
        let secs = self
            .at
            .map(|t| now.duration_since(t).as_secs_f64())
            .filter(|s| *s > 0.0);
        self.at = Some(now);
        let root = self.root.clone();
        let read = |p: &str| std::fs::read_to_string(root.join(p));
        let rate = |now: u64, prev: u64| secs.map(|s| now.saturating_sub(prev) as f64 / s);

        match read("stat").map(|s| cpu_counters(&s)) {
            Ok(Some(now)) => {
                if let Some(prev) = &self.cpu {
                    let d: Vec<f64> = now
                        .iter()
                        .zip(prev)
                        .map(|(a, b)| a.saturating_sub(*b) as f64)
                        .collect();
                    let total: f64 = d.iter().sum();
                    if total > 0.0 {
                        let idle =
                            d.get(3).copied().unwrap_or(0.0) + d.get(4).copied().unwrap_or(0.0);
                        m.insert("cpu.busy_pct".into(), 100.0 * (total - idle) / total);
                        for (i, name) in [
                            "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
                        ]
                        .iter()
                        .enumerate()
                        {
                            m.insert(
                                format!("cpu.{name}_pct"),
                                100.0 * d.get(i).copied().unwrap_or(0.0) / total,
                            );
                        }
                    }
                }
                self.cpu = Some(now);
                note(&mut collectors, "cpu", Ok(()));
            }
            Ok(None) => note(
                &mut collectors,
                "cpu",
                Err("no cpu line in /proc/stat".into()),
            ),
            Err(e) => note(&mut collectors, "cpu", Err(format!("/proc/stat: {e}"))),
        }
        match read("meminfo") {
            Ok(t) => {
                if let (Some(total), Some(avail)) =
                    (meminfo(&t, "MemTotal:"), meminfo(&t, "MemAvailable:"))
                {
                    m.insert("mem.total_bytes".into(), total);
                    m.insert("mem.used_bytes".into(), total - avail);
                    m.insert(
                        "mem.used_pct".into(),
                        100.0 * (total - avail) / total.max(1.0),
                    );
                }
                note(&mut collectors, "memory", Ok(()));
            }
            Err(e) => note(
                &mut collectors,
                "memory",
                Err(format!("/proc/meminfo: {e}")),
            ),
        }
        match read("loadavg") {
            Ok(t) => {
                for (name, v) in ["load.1m", "load.5m", "load.15m"]
                    .iter()
                    .zip(t.split_whitespace())
                {
                    if let Ok(v) = v.parse() {
                        m.insert((*name).into(), v);
                    }
                }
                note(&mut collectors, "load", Ok(()));
            }
            Err(e) => note(&mut collectors, "load", Err(format!("/proc/loadavg: {e}"))),
        }
        let mut psi_ok = Ok(());
        for res in ["cpu", "memory", "io"] {
            match read(&format!("pressure/{res}")) {
                Ok(t) => {
                    for kind in ["some", "full"] {
                        if let Some(v) = psi(&t, kind) {
                            m.insert(format!("psi.{res}.{kind}_avg10"), v);
                        }
                    }
                }
                Err(e) => {
                    psi_ok = Err(format!(
                        "/proc/pressure/{res}: {e} (kernel without PSI, or psi=0)"
                    ))
                }
            }
        }
        note(&mut collectors, "psi", psi_ok);
        match read("vmstat") {
            Ok(t) => {
                let now = t
                    .lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if let (Some(now), Some(prev)) = (now, self.oom_kills) {
                    m.insert("oom.kills".into(), now.saturating_sub(prev) as f64);
                    if now > prev {
                        events.push("oom_kill".into());
                    }
                }
                self.oom_kills = now.or(self.oom_kills);
                note(&mut collectors, "oom", Ok(()));
            }
            Err(e) => note(&mut collectors, "oom", Err(format!("/proc/vmstat: {e}"))),
        }
        let sys_block = root.join("../sys/block");
        let is_disk = |name: &str| {
            !name.starts_with("loop")
                && !name.starts_with("ram")
                && (Path::new("/sys/block").join(name).exists() || sys_block.join(name).exists())
        };
        match read("diskstats") {
            Ok(t) => {
                let now = diskstats(&t, &is_disk);
                if let Some(prev) = self.disk {
                    if let Some(r) = rate(now.0, prev.0) {
                        m.insert("disk.read_bytes_per_s".into(), r * 512.0);
                    }
                    if let Some(w) = rate(now.1, prev.1) {
                        m.insert("disk.write_bytes_per_s".into(), w * 512.0);
                    }
                    if let Some(io) = rate(now.2, prev.2) {
                        m.insert("disk.busy_pct".into(), (io / 10.0).min(100.0));
                    }
                }
                self.disk = Some(now);
                note(&mut collectors, "diskstats", Ok(()));
            }
            Err(e) => note(
                &mut collectors,
                "diskstats",
                Err(format!("/proc/diskstats: {e}")),
            ),
        }
        match read("net/dev") {
            Ok(t) => {
                let now = netdev(&t);
                if let Some(prev) = self.net {
                    if let Some(r) = rate(now.0, prev.0) {
                        m.insert("net.rx_bytes_per_s".into(), r);
                    }
                    if let Some(t) = rate(now.1, prev.1) {
                        m.insert("net.tx_bytes_per_s".into(), t);
                    }
                }
                self.net = Some(now);
                note(&mut collectors, "net", Ok(()));
            }
            Err(e) => note(&mut collectors, "net", Err(format!("/proc/net/dev: {e}"))),
        }
        match read("mounts") {
            Ok(t) => {
                let mut failed = Vec::new();
                for mp in mounts(&t) {
                    match rustix::fs::statvfs(mp.as_str()) {
                        Ok(v) => {
                            let (used, pct) = df(v.f_blocks, v.f_bfree, v.f_bavail, v.f_frsize);
                            let n = mount_name(&mp);
                            m.insert(format!("fs.{n}.used_bytes"), used);
                            m.insert(format!("fs.{n}.used_pct"), pct);
                        }
                        Err(e) => failed.push(format!("{mp}: {e}")),
                    }
                }
                let r = if failed.is_empty() {
                    Ok(())
                } else {
                    Err(format!("statvfs failed for {}", failed.join(", ")))
                };
                note(&mut collectors, "filesystem", r);
            }
            Err(e) => note(
                &mut collectors,
                "filesystem",
                Err(format!("/proc/mounts: {e}")),
            ),
        }
        self.top_processes(&mut m, secs, &mut collectors);
        self.containers(&mut m, secs, &mut collectors);
        let gpu = self.gpu.sample(&mut m, &mut events);
        collectors.push(gpu.collector);
        Sample {
            metrics: m,
            events,
            collectors,
            gpus: gpu.names,
        }
    }

    fn top_processes(
        &mut self,
        m: &mut BTreeMap<String, f64>,
        secs: Option<f64>,
        collectors: &mut Vec<Collector>,
    ) {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            note(
                collectors,
                "processes",
                Err(format!("{}: unreadable", self.root.display())),
            );
            return;
        };
        let page = 4096.0;
        let ticks = 100.0; // USER_HZ: 100 on every Linux ABI we ship for
        let mut now = HashMap::new();
        let mut cpu: Vec<(f64, u32)> = Vec::new();
        let mut rss: Vec<(f64, u32)> = Vec::new();
        for e in dir.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let Some((_, t, pages)) = proc_stat(&stat) else {
                continue;
            };
            now.insert(pid, t);
            rss.push((pages as f64 * page, pid));
            if let (Some(s), Some(prev)) = (secs, self.procs.get(&pid)) {
                cpu.push((100.0 * t.saturating_sub(*prev) as f64 / ticks / s, pid));
            }
        }
        self.procs = now;
        let desc = |a: &(f64, u32), b: &(f64, u32)| b.0.total_cmp(&a.0);
        cpu.sort_by(desc);
        rss.sort_by(desc);
        for (i, (pct, pid)) in cpu.iter().take(TOP).enumerate() {
            m.insert(format!("top.cpu.{}.pid", i + 1), f64::from(*pid));
            m.insert(format!("top.cpu.{}.pct", i + 1), *pct);
        }
        for (i, (bytes, pid)) in rss.iter().take(TOP).enumerate() {
            m.insert(format!("top.rss.{}.pid", i + 1), f64::from(*pid));
            m.insert(format!("top.rss.{}.bytes", i + 1), *bytes);
        }
        // The busiest and largest workloads, by the key discovery and the
        // remediation kinds use, so a run can name its culprit rather than
        // "host". Only processes that matter are resolved: at least 1 % of a
        // core, or among the largest.
        let mut by_cpu: BTreeMap<String, f64> = BTreeMap::new();
        for (pct, pid) in cpu.iter().filter(|(p, _)| *p >= 1.0).take(MAX_RESOLVED) {
            if let Some(key) = self.key_of(*pid) {
                *by_cpu.entry(key).or_default() += pct;
            }
        }
        let mut by_rss: BTreeMap<String, f64> = BTreeMap::new();
        for (bytes, pid) in rss.iter().take(MAX_RESOLVED) {
            if let Some(key) = self.key_of(*pid) {
                *by_rss.entry(key).or_default() += bytes;
            }
        }
        for (prefix, map) in [("workload.cpu_pct", by_cpu), ("workload.rss_bytes", by_rss)] {
            let mut top: Vec<(String, f64)> = map.into_iter().collect();
            top.sort_by(|a, b| b.1.total_cmp(&a.1));
            for (key, v) in top.into_iter().take(TOP) {
                m.insert(format!("{prefix}.{key}"), v);
            }
        }
        note(collectors, "processes", Ok(()));
    }

    /// The workload key of a user-space process (kernel threads have none).
    fn key_of(&self, pid: u32) -> Option<String> {
        let p = crate::remedy::process::read(&self.root, pid)?;
        (!p.exe.is_empty()).then(|| crate::remedy::process::workload_key(&self.root, &p))
    }

    fn containers(
        &mut self,
        m: &mut BTreeMap<String, f64>,
        secs: Option<f64>,
        collectors: &mut Vec<Collector>,
    ) {
        let Some(layout) = CgroupLayout::find(&self.cgroup_root) else {
            note(
                collectors,
                "cgroup",
                Err(format!(
                    "no cgroup controllers: {root} has no cgroup v2 controllers (nor {root}/unified) and no v1 memory or cpuacct hierarchy",
                    root = self.cgroup_root.display()
                )),
            );
            return;
        };
        let mut now = HashMap::new();
        let (mem_root, cpu_root) = layout.roots();
        let mut ids: BTreeMap<String, (Option<PathBuf>, Option<PathBuf>)> = BTreeMap::new();
        if let Some(r) = mem_root {
            for (id, dir) in container_cgroups(r) {
                ids.entry(id).or_default().0 = Some(dir);
            }
        }
        if let Some(r) = cpu_root {
            for (id, dir) in container_cgroups(r) {
                ids.entry(id).or_default().1 = Some(dir);
            }
        }
        for (id, (mem_dir, cpu_dir)) in ids.into_iter().take(MAX_CGROUPS) {
            let num = |dir: &Path, file: &str| {
                std::fs::read_to_string(dir.join(file))
                    .ok()
                    .and_then(|v| v.trim().parse::<f64>().ok())
            };
            let mem = mem_dir.as_deref().and_then(|d| match layout {
                CgroupLayout::V2(_) => num(d, "memory.current"),
                CgroupLayout::V1 { .. } => num(d, "memory.usage_in_bytes"),
            });
            if let Some(mem) = mem {
                m.insert(format!("container.{id}.mem_bytes"), mem);
            }
            // CPU time in microseconds.
            let usage = cpu_dir.as_deref().and_then(|d| match layout {
                CgroupLayout::V2(_) => {
                    std::fs::read_to_string(d.join("cpu.stat"))
                        .ok()
                        .and_then(|t| {
                            t.lines()
                                .find_map(|l| l.strip_prefix("usage_usec "))
                                .and_then(|v| v.trim().parse::<u64>().ok())
                        })
                }
                CgroupLayout::V1 { .. } => num(d, "cpuacct.usage").map(|ns| (ns / 1000.0) as u64),
            });
            if let Some(u) = usage {
                if let (Some(s), Some(prev)) = (secs, self.cgroups.get(&id)) {
                    m.insert(
                        format!("container.{id}.cpu_pct"),
                        u.saturating_sub(*prev) as f64 / 1e4 / s,
                    );
                }
                now.insert(id, u);
            }
        }
        self.cgroups = now;
        note(collectors, "cgroup", Ok(()));
    }
}

/// Where the memory and CPU controllers are mounted: cgroup v2 (unified, or the
/// hybrid's `unified` mount when controllers are enabled there), else the v1
/// hierarchies (hybrid hosts such as this one keep them on v1).
#[derive(Debug, Clone, PartialEq)]
enum CgroupLayout {
    V2(PathBuf),
    V1 {
        memory: Option<PathBuf>,
        cpuacct: Option<PathBuf>,
    },
}

impl CgroupLayout {
    fn find(root: &Path) -> Option<Self> {
        let has_controllers = |d: &Path| {
            std::fs::read_to_string(d.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory" || x == "cpu"))
        };
        if has_controllers(root) {
            return Some(Self::V2(root.to_path_buf()));
        }
        let unified = root.join("unified");
        if has_controllers(&unified) {
            return Some(Self::V2(unified));
        }
        let v1 = |names: &[&str]| {
            names
                .iter()
                .map(|n| root.join(n))
                .find(|d| d.join("tasks").exists() || d.join("cgroup.procs").exists())
        };
        let memory = v1(&["memory"]);
        let cpuacct = v1(&["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]);
        (memory.is_some() || cpuacct.is_some()).then_some(Self::V1 { memory, cpuacct })
    }

    /// (memory root, CPU accounting root).
    fn roots(&self) -> (Option<&Path>, Option<&Path>) {
        match self {
            Self::V2(r) => (Some(r), Some(r)),
            Self::V1 { memory, cpuacct } => (memory.as_deref(), cpuacct.as_deref()),
        }
    }
}

/// The few numbers the fleet view shows at a glance, from one window's metrics:
/// CPU, memory, the fullest filesystem, load, GPU count, hottest GPU and its
/// busiest utilisation. At most `tether_proto::MAX_VITALS` entries.
pub fn vitals(m: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let mut v = BTreeMap::new();
    for k in [
        "cpu.busy_pct",
        "mem.used_pct",
        "load.1m",
        "psi.memory.some_avg10",
    ] {
        if let Some(x) = m.get(k).filter(|x| x.is_finite()) {
            v.insert(k.to_owned(), *x);
        }
    }
    let max_of = |pred: &dyn Fn(&str) -> bool| {
        m.iter()
            .filter(|(k, x)| pred(k) && x.is_finite())
            .map(|(_, x)| *x)
            .fold(None, |acc: Option<f64>, x| {
                Some(acc.map_or(x, |a| a.max(x)))
            })
    };
    if let Some(x) = max_of(&|k| k.starts_with("fs.") && k.ends_with(".used_pct")) {
        v.insert("fs.max_used_pct".into(), x);
    }
    let gpus = m
        .keys()
        .filter(|k| k.starts_with("gpu.") && k.ends_with(".mem_total_bytes"))
        .count();
    if gpus > 0 {
        v.insert("gpu.count".into(), gpus as f64);
        if let Some(x) = max_of(&|k| k.starts_with("gpu.") && k.ends_with(".temp_c")) {
            v.insert("gpu.max_temp_c".into(), x);
        }
        if let Some(x) = max_of(&|k| k.starts_with("gpu.") && k.ends_with(".util_pct")) {
            v.insert("gpu.max_util_pct".into(), x);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collector<'a>(s: &'a Sample, name: &str) -> &'a Collector {
        s.collectors
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("collector {name}"))
    }

    #[test]
    fn rates_come_from_two_samples_of_the_real_proc() {
        let mut s = Sampler::new(Path::new("/proc"));
        let first = s.sample();
        assert!(first.metrics["mem.used_bytes"] > 0.0);
        assert!(
            !first.metrics.contains_key("cpu.busy_pct"),
            "no rate from one sample"
        );
        assert_eq!(collector(&first, "cpu").state, "ok");
        assert!(
            first.metrics["fs.root.used_bytes"] > 0.0,
            "{:?}",
            first.metrics.keys()
        );
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let second = s.sample();
        let busy = second.metrics["cpu.busy_pct"];
        assert!((0.0..=100.0).contains(&busy), "{busy}");
        assert!(second.metrics.contains_key("net.rx_bytes_per_s"));
        assert!(second.metrics["top.rss.1.bytes"] > 0.0);
        assert!(second.metrics.contains_key("top.cpu.1.pct"));
    }

    #[test]
    fn a_missing_source_is_reported_not_fatal() {
        let mut s = Sampler::with_gpu(
            Path::new("/nonexistent-proc"),
            Path::new("/nonexistent-cgroup"),
            Gpu::absent("test"),
        );
        let sample = s.sample();
        assert!(sample.metrics.is_empty(), "{:?}", sample.metrics);
        let cpu = collector(&sample, "cpu");
        assert_eq!(cpu.state, "unavailable");
        assert!(cpu.reason.contains("/proc/stat"), "{}", cpu.reason);
        assert_eq!(collector(&sample, "psi").state, "unavailable");
        assert_eq!(collector(&sample, "cgroup").state, "unavailable");
        assert_eq!(collector(&sample, "gpu").reason, "no GPU: test");
    }

    #[test]
    fn vitals_pick_the_headline_numbers() {
        let m: BTreeMap<String, f64> = [
            ("cpu.busy_pct", 41.0),
            ("mem.used_pct", 63.0),
            ("fs.root.used_pct", 40.0),
            ("fs.var.used_pct", 91.0),
            ("gpu.0.mem_total_bytes", 8e10),
            ("gpu.1.mem_total_bytes", 8e10),
            ("gpu.0.temp_c", 61.0),
            ("gpu.1.temp_c", 83.0),
            ("top.cpu.1.pct", 99.0),
            ("cpu.user_pct", f64::NAN),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let v = vitals(&m);
        assert_eq!(v["fs.max_used_pct"], 91.0);
        assert_eq!(v["gpu.count"], 2.0);
        assert_eq!(v["gpu.max_temp_c"], 83.0);
        assert_eq!(v["cpu.busy_pct"], 41.0);
        assert!(!v.contains_key("top.cpu.1.pct"));
        assert!(v.len() <= tether_proto::MAX_VITALS);
        assert!(vitals(&BTreeMap::new()).is_empty());
    }

    #[test]
    fn kernel_text_parses() {
        let psi_text = "some avg10=1.50 avg60=0.20 avg300=0.00 total=1\nfull avg10=0.25 avg60=0.00 avg300=0.00 total=1\n";
        assert_eq!(psi(psi_text, "some"), Some(1.5));
        assert_eq!(psi(psi_text, "full"), Some(0.25));
        let net = "Inter-|   Receive\n face |bytes\n    lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n  eth0: 2000 5 0 0 0 0 0 0 3000 4 0 0 0 0 0 0\n";
        assert_eq!(netdev(net), (2000, 3000));
        let disks = "   8       0 sda 10 0 100 5 20 0 200 7 0 30 12 0 0 0 0\n   8       1 sda1 10 0 100 5 20 0 200 7 0 30 12 0 0 0 0\n";
        assert_eq!(diskstats(disks, &|n| n == "sda"), (100, 200, 30));
        assert_eq!(
            mounts("/dev/sda1 / ext4 rw 0 0\nproc /proc proc rw 0 0\n/dev/sdb /var/lib/my\\040data xfs rw 0 0\n"),
            vec!["/".to_owned(), "/var/lib/my data".to_owned()]
        );
        assert_eq!(mount_name("/"), "root");
        assert_eq!(mount_name("/var/lib/my data"), "var_lib_my_data");
        let stat = "42 (my (odd) proc) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 100 1000 25 18446744073709551615";
        assert_eq!(proc_stat(stat), Some(("my (odd) proc".to_owned(), 10, 25)));
    }

    #[test]
    fn container_cgroups_are_found_and_measured() {
        let root = std::env::temp_dir().join(format!(
            "cg-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let id = "ab".repeat(32);
        let c = root.join(format!("system.slice/docker-{id}.scope"));
        std::fs::create_dir_all(&c).expect("dir");
        std::fs::write(root.join("cgroup.controllers"), "cpu memory\n").expect("write");
        std::fs::write(c.join("memory.current"), "1048576\n").expect("write");
        std::fs::write(c.join("cpu.stat"), "usage_usec 1000000\n").expect("write");
        let mut s = Sampler::with_gpu(Path::new("/proc"), &root, Gpu::absent("test"));
        let first = s.sample();
        assert_eq!(
            first.metrics["container.abababababab.mem_bytes"],
            1_048_576.0
        );
        std::fs::write(c.join("cpu.stat"), "usage_usec 1500000\n").expect("write");
        let second = s.sample();
        assert!(second.metrics["container.abababababab.cpu_pct"] > 0.0);
        assert_eq!(collector(&second, "cgroup").state, "ok");
    }

    #[test]
    fn v1_container_cgroups_are_measured_on_hybrid_hosts() {
        let root = std::env::temp_dir().join(format!(
            "cg1-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let id = "cd".repeat(32);
        // A hybrid host: an empty unified mount, v1 memory and cpuacct.
        std::fs::create_dir_all(root.join("unified")).expect("dir");
        std::fs::write(root.join("unified/cgroup.controllers"), "\n").expect("write");
        let mem = root.join(format!("memory/docker/{id}"));
        let cpu = root.join(format!("cpu,cpuacct/docker/{id}"));
        for d in [&mem, &cpu] {
            std::fs::create_dir_all(d).expect("dir");
        }
        std::fs::write(root.join("memory/tasks"), "1\n").expect("write");
        std::fs::write(root.join("cpu,cpuacct/tasks"), "1\n").expect("write");
        std::fs::write(mem.join("memory.usage_in_bytes"), "2097152\n").expect("write");
        std::fs::write(cpu.join("cpuacct.usage"), "1000000000\n").expect("write");
        let mut s = Sampler::with_gpu(Path::new("/proc"), &root, Gpu::absent("test"));
        let first = s.sample();
        assert_eq!(
            collector(&first, "cgroup").state,
            "ok",
            "{:?}",
            first.collectors
        );
        assert_eq!(
            first.metrics["container.cdcdcdcdcdcd.mem_bytes"],
            2_097_152.0
        );
        std::fs::write(cpu.join("cpuacct.usage"), "1500000000\n").expect("write");
        let second = s.sample();
        assert!(second.metrics["container.cdcdcdcdcdcd.cpu_pct"] > 0.0);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn this_hosts_cgroups_are_read_whatever_their_version() {
        // This machine is a v1/v2 hybrid with no controllers on its v2 mount:
        // the collector must read the v1 hierarchies rather than give up.
        let s = Sampler::with_gpu(
            Path::new("/proc"),
            Path::new("/sys/fs/cgroup"),
            Gpu::absent("test"),
        )
        .sample();
        assert_eq!(collector(&s, "cgroup").state, "ok", "{:?}", s.collectors);
    }

    #[test]
    fn filesystem_use_is_computed_as_df_does() {
        // 100 blocks of 4 KiB, 30 free of which 25 are available to users (5
        // reserved for root): df says 70 used of 95 usable, 73.7 %.
        let (used, pct) = df(100, 30, 25, 4096);
        assert_eq!(used, 70.0 * 4096.0);
        assert!((pct - 100.0 * 70.0 / 95.0).abs() < 1e-9, "{pct}");
        assert_eq!(df(0, 0, 0, 4096), (0.0, 0.0));
        let m = mounts(
            "tmpfs /dev/shm tmpfs rw 0 0\ntmpfs /run/user/1000 tmpfs rw 0 0\ntmpfs /sys/fs/cgroup tmpfs ro 0 0\ntmpfs /tmp tmpfs rw 0 0\ntmpfs /dev tmpfs rw 0 0\n",
        );
        assert_eq!(m, vec!["/dev/shm", "/tmp"]);
    }

    #[test]
    fn the_busiest_workload_is_named_by_its_key() {
        // A CPU burner with an executable of its own: its key is host:<exe>.
        let dir = std::env::temp_dir().join(format!(
            "burner-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let exe = dir.join("cruncher");
        std::fs::copy("/usr/bin/yes", &exe).expect("copy yes");
        let mut child = std::process::Command::new(&exe)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("burner");
        let mut s = Sampler::with_gpu(
            Path::new("/proc"),
            Path::new("/sys/fs/cgroup"),
            Gpu::absent("test"),
        );
        s.sample();
        std::thread::sleep(std::time::Duration::from_millis(700));
        let second = s.sample();
        let _ = child.kill();
        let _ = child.wait();
        let key = format!("workload.cpu_pct.host:{}", exe.display());
        let pct = second.metrics.get(&key).copied().unwrap_or(0.0);
        assert!(
            pct >= 50.0,
            "{key} = {pct}: {:?}",
            second
                .metrics
                .keys()
                .filter(|k| k.starts_with("workload."))
                .collect::<Vec<_>>()
        );
        assert!(second
            .metrics
            .keys()
            .any(|k| k.starts_with("workload.rss_bytes.")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_root_filesystem_reads_as_df_reads_it_here() {
        let out = std::process::Command::new("df")
            .args(["-P", "/"])
            .output()
            .expect("df");
        let text = String::from_utf8_lossy(&out.stdout);
        // `df -P`: Filesystem 1024-blocks Used Available Capacity Mounted-on;
        // Capacity is rounded up.
        let capacity: f64 = text
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(4))
            .and_then(|c| c.trim_end_matches('%').parse().ok())
            .expect("df capacity");
        let s = Sampler::with_gpu(
            Path::new("/proc"),
            Path::new("/sys/fs/cgroup"),
            Gpu::absent("test"),
        )
        .sample();
        let ours = s.metrics["fs.root.used_pct"];
        assert!(
            ours <= capacity && capacity - ours < 1.5,
            "ours {ours:.2} % vs df {capacity} %"
        );
    }
}
