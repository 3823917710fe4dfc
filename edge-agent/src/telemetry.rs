//! Host telemetry from kernel sources, summarised per window.
//!
//! Sources: `/proc/stat` (CPU by state), `/proc/meminfo`, `/proc/loadavg`,
//! `/proc/pressure/{cpu,memory,io}` (PSI), `/proc/vmstat` (`oom_kill`). A source
//! that is missing or unreadable is reported as an unavailable collector with the
//! reason, and the rest keep working. GPU collection (NVML) is not built yet and
//! says so.

use crate::state::Collector;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Cumulative counters from the previous sample, to turn into rates.
#[derive(Debug, Default, Clone)]
pub struct Sampler {
    root: PathBuf,
    cpu: Option<Vec<u64>>,
    oom_kills: Option<u64>,
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

fn psi_some_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some"))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))
        .and_then(|v| v.parse().ok())
}

impl Sampler {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            ..Self::default()
        }
    }

    /// One sample: gauges and rates since the previous sample, events, and the
    /// state of each collector.
    pub fn sample(&mut self) -> (BTreeMap<String, f64>, Vec<String>, Vec<Collector>) {
        let mut m = BTreeMap::new();
        let mut events = Vec::new();
        let mut collectors = Vec::new();
        let read = |p: &str| std::fs::read_to_string(self.root.join(p));
        let mut note = |name: &str, r: Result<(), String>| {
            collectors.push(Collector {
                name: name.into(),
                state: if r.is_ok() {
                    "ok".into()
                } else {
                    "unavailable".into()
                },
                reason: r.err().unwrap_or_default(),
            })
        };
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
                note("cpu", Ok(()));
            }
            Ok(None) => note("cpu", Err("no cpu line in /proc/stat".into())),
            Err(e) => note("cpu", Err(format!("/proc/stat: {e}"))),
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
                note("memory", Ok(()));
            }
            Err(e) => note("memory", Err(format!("/proc/meminfo: {e}"))),
        }
        match read("loadavg") {
            Ok(t) => {
                if let Some(v) = t.split_whitespace().next().and_then(|v| v.parse().ok()) {
                    m.insert("load.1m".into(), v);
                }
                note("load", Ok(()));
            }
            Err(e) => note("load", Err(format!("/proc/loadavg: {e}"))),
        }
        let mut psi_ok = Ok(());
        for res in ["cpu", "memory", "io"] {
            match read(&format!("pressure/{res}")) {
                Ok(t) => {
                    if let Some(v) = psi_some_avg10(&t) {
                        m.insert(format!("psi.{res}.some_avg10"), v);
                    }
                }
                Err(e) => psi_ok = Err(format!("/proc/pressure/{res}: {e} (kernel without PSI?)")),
            }
        }
        note("psi", psi_ok);
        match read("vmstat") {
            Ok(t) => {
                let now = t
                    .lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if let (Some(now), Some(prev)) = (now, self.oom_kills) {
                    if now > prev {
                        m.insert("oom.kills".into(), (now - prev) as f64);
                        events.push("oom_kill".into());
                    }
                }
                self.oom_kills = now.or(self.oom_kills);
                note("oom", Ok(()));
            }
            Err(e) => note("oom", Err(format!("/proc/vmstat: {e}"))),
        }
        collectors.push(Collector {
            name: "gpu".into(),
            state: "unavailable".into(),
            reason: "GPU collection (NVML) is not built into this agent version".into(),
        });
        (m, events, collectors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_two_samples_of_the_real_proc() {
        let mut s = Sampler::new(Path::new("/proc"));
        let (first, _, collectors) = s.sample();
        assert!(first.contains_key("mem.used_bytes"));
        assert!(
            !first.contains_key("cpu.busy_pct"),
            "no rate from one sample"
        );
        assert!(collectors
            .iter()
            .any(|c| c.name == "cpu" && c.state == "ok"));
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (second, _, _) = s.sample();
        let busy = second.get("cpu.busy_pct").copied().expect("busy");
        assert!((0.0..=100.0).contains(&busy), "{busy}");
    }

    #[test]
    fn a_missing_source_is_reported_not_fatal() {
        let mut s = Sampler::new(Path::new("/nonexistent-proc"));
        let (m, _, collectors) = s.sample();
        assert!(m.is_empty());
        let cpu = collectors.iter().find(|c| c.name == "cpu").expect("cpu");
        assert_eq!(cpu.state, "unavailable");
        assert!(cpu.reason.contains("/proc/stat"), "{}", cpu.reason);
        assert!(collectors
            .iter()
            .any(|c| c.name == "gpu" && c.reason.contains("not built")));
    }
}
