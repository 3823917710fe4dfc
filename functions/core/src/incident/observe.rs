//! The observer's pure part: bounded per-host windows and the signals that open a
//! run.
//!
//! Invariants:
//! - A host's whole memory is one [`HostState`]: at most `history` windows of
//!   the watched metrics only, the families firing now, and the answers given to
//!   the last `history` window sequence numbers. It is plain data, stored with
//!   the host's incident markers, so the deployed observer keeps nothing between
//!   messages: every instance, warm or cold, reaches the same result.
//! - [`Observer`] holds many hosts in memory (bounded by `max_hosts`, least
//!   recently seen evicted first) for tests and benchmarks of the rules.
//! - A signal fires on its rising edge: when the host's previous window (if the
//!   observer saw it) did not already fire the same family. Storage then makes
//!   opening a run idempotent across instances (a conditional marker per agent and
//!   family), so a signal that stays high does not open a run per sample.
//! - Thresholds are absolute (a disk 95 % full) or trend breaks (a value more than
//!   `trend_factor` times its recent mean, above a floor), never per-sample noise:
//!   a trend needs at least `min_baseline` earlier windows.
//! - Some signals must persist: CPU saturation opens a run only after it has
//!   held, window after window, for `cpu_persist_ms` (5 minutes by default) and,
//!   where the agent reports PSI, with tasks waiting for CPU; a break in the
//!   windows starts the clock again. A routine build does not open a run.
//! - Non-finite values are ignored.

use super::artifact::Signal;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use tether_proto::TelemetryWindow;

/// Thresholds, all overridable per deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub cpu_busy_pct: f64,
    /// CPU saturation must hold this long, window after window, before a run
    /// opens: a build or a batch job saturates a host for minutes by design.
    pub cpu_persist_ms: u64,
    /// ... and, where the agent reports PSI, tasks must be waiting for CPU
    /// (`psi.cpu.some_avg10` at least this): busy without contention is no fault.
    pub psi_cpu_some: f64,
    pub mem_used_pct: f64,
    pub fs_used_pct: f64,
    pub disk_busy_pct: f64,
    pub psi_io_full: f64,
    pub gpu_mem_pct: f64,
    pub gpu_temp_c: f64,
    pub llm_429: f64,
    pub llm_5xx: f64,
    pub crash_restarts: f64,
    pub trend_factor: f64,
    pub min_baseline: usize,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            cpu_busy_pct: 95.0,
            cpu_persist_ms: 300_000,
            psi_cpu_some: 10.0,
            mem_used_pct: 92.0,
            fs_used_pct: 90.0,
            disk_busy_pct: 95.0,
            psi_io_full: 25.0,
            gpu_mem_pct: 97.0,
            gpu_temp_c: 88.0,
            llm_429: 5.0,
            llm_5xx: 5.0,
            crash_restarts: 3.0,
            trend_factor: 3.0,
            min_baseline: 5,
        }
    }
}

/// Watched metrics are kept per host; everything else in a window is dropped.
fn watched(metric: &str) -> bool {
    metric == "cpu.busy_pct"
        || metric == "psi.cpu.some_avg10"
        || metric.starts_with("workload.cpu_pct.")
        || metric.starts_with("workload.rss_bytes.")
        || metric == "mem.used_pct"
        || metric == "oom.kills"
        || metric == "disk.busy_pct"
        || metric == "psi.io.full_avg10"
        || metric == "llm.p95_ms"
        || metric.starts_with("llm.errors_")
        || metric == "llm.calls"
        || metric == "llm.uninstrumented"
        || metric.starts_with("llm.uninstrumented.")
        || (metric.starts_with("llm.by.")
            && (metric.ends_with(".errors_429") || metric.ends_with(".errors_5xx")))
        || metric == "gpu.xid_errors"
        || metric.starts_with("svc.restarts.")
        || (metric.starts_with("fs.") && metric.ends_with(".used_pct"))
        || (metric.starts_with("gpu.")
            && (metric.ends_with(".temp_c")
                || metric.ends_with(".mem_used_bytes")
                || metric.ends_with(".mem_total_bytes")
                || metric.ends_with(".ecc_uncorrected")))
}

/// One host's observation memory (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostState {
    #[serde(default)]
    pub windows: VecDeque<BTreeMap<String, f64>>,
    #[serde(default)]
    pub firing: Vec<String>,
    /// What the last few windows produced, by seq: a redelivered window gets the
    /// same answer, so the run it opened is opened (idempotently) again.
    #[serde(default)]
    pub seen: VecDeque<(u64, Rising)>,
    /// Since when (a window's start, ms) each signal that must persist has held
    /// without a break.
    #[serde(default)]
    pub since: BTreeMap<String, u64>,
}

/// How long a family's condition must hold before it fires (0: at once).
fn persistence(t: &Thresholds, family: &str) -> u64 {
    match family {
        "cpu_saturation" => t.cpu_persist_ms,
        _ => 0,
    }
}

#[derive(Debug, Default)]
struct Host {
    state: HostState,
    last_seen: u64,
}

/// Per-host windows held in memory (tests and benchmarks of the rules).
#[derive(Debug)]
pub struct Observer {
    thresholds: Thresholds,
    history: usize,
    max_hosts: usize,
    hosts: HashMap<String, Host>,
    tick: u64,
}

/// What one window produced: the signals that rose, and the host's history of
/// the metrics they were read from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rising {
    pub signals: Vec<Signal>,
    pub history: BTreeMap<String, Vec<f64>>,
}

impl Observer {
    pub fn new(thresholds: Thresholds, history: usize, max_hosts: usize) -> Self {
        Self {
            thresholds,
            history: history.max(1),
            max_hosts: max_hosts.max(1),
            hosts: HashMap::new(),
            tick: 0,
        }
    }

    pub fn hosts(&self) -> usize {
        self.hosts.len()
    }

    /// Feeds one window of `host` (tenant and agent); returns the signals that rose.
    pub fn observe(&mut self, host: &str, w: &TelemetryWindow) -> Rising {
        self.tick += 1;
        if !self.hosts.contains_key(host) && self.hosts.len() >= self.max_hosts {
            if let Some(oldest) = self
                .hosts
                .iter()
                .min_by_key(|(_, h)| h.last_seen)
                .map(|(k, _)| k.clone())
            {
                self.hosts.remove(&oldest);
            }
        }
        let h = self.hosts.entry(host.to_owned()).or_default();
        h.last_seen = self.tick;
        h.state.observe(&self.thresholds, self.history, w)
    }
}

impl HostState {
    /// Feeds one window; returns the signals that rose. A window seen before gets
    /// the answer it got then; a window older than the newest seen opens nothing.
    pub fn observe(&mut self, t: &Thresholds, history: usize, w: &TelemetryWindow) -> Rising {
        let history_len = history.max(1);
        let h = self;
        if let Some((_, r)) = h.seen.iter().find(|(seq, _)| *seq == w.seq) {
            return r.clone();
        }
        if h.seen.back().is_some_and(|(seq, _)| *seq > w.seq) {
            // An old window arriving late: it cannot open a run any more.
            return Rising {
                signals: vec![],
                history: BTreeMap::new(),
            };
        }
        let now: BTreeMap<String, f64> = w
            .metrics
            .iter()
            .filter(|(k, v)| v.is_finite() && watched(k))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let held = evaluate(t, &now, &w.events, &h.windows);
        // Signals that must persist fire only once they have held long enough.
        let mut since = BTreeMap::new();
        let all: Vec<Signal> = held
            .into_iter()
            .filter(|s| {
                let need = persistence(t, &s.family);
                if need == 0 {
                    return true;
                }
                let start = h.since.get(&s.family).copied().unwrap_or(w.start_ms);
                since.insert(s.family.clone(), start);
                w.end_ms.saturating_sub(start) >= need
            })
            .collect();
        h.since = since;
        let rising: Vec<Signal> = all
            .iter()
            .filter(|s| !h.firing.contains(&s.family))
            .cloned()
            .collect();
        h.firing = all.iter().map(|s| s.family.clone()).collect();
        let mut history = BTreeMap::new();
        for s in &rising {
            let past: Vec<f64> = h
                .windows
                .iter()
                .filter_map(|m| m.get(&s.metric).copied())
                .chain(now.get(&s.metric).copied())
                .collect();
            history.insert(s.metric.clone(), past);
        }
        h.windows.push_back(now);
        while h.windows.len() > history_len {
            h.windows.pop_front();
        }
        let r = Rising {
            signals: rising,
            history,
        };
        h.seen.push_back((w.seq, r.clone()));
        while h.seen.len() > history_len {
            h.seen.pop_front();
        }
        r
    }
}

fn mean(past: &VecDeque<BTreeMap<String, f64>>, metric: &str) -> Option<(f64, usize)> {
    let vals: Vec<f64> = past.iter().filter_map(|m| m.get(metric).copied()).collect();
    (!vals.is_empty()).then(|| (vals.iter().sum::<f64>() / vals.len() as f64, vals.len()))
}

/// Every signal the window shows (rising or not), in a stable order.
pub fn evaluate(
    t: &Thresholds,
    m: &BTreeMap<String, f64>,
    events: &[String],
    past: &VecDeque<BTreeMap<String, f64>>,
) -> Vec<Signal> {
    let mut out = Vec::new();
    let base = |metric: &str| mean(past, metric).map(|(v, _)| v);
    let mut push = |family: &str, metric: &str, value: f64, threshold: f64, subject: &str| {
        out.push(Signal {
            family: family.into(),
            metric: metric.into(),
            value,
            threshold,
            baseline: base(metric),
            subject: subject.into(),
        });
    };
    let get = |k: &str| m.get(k).copied();
    // The culprit, when the agent names one: the workload holding the most CPU
    // (at least half a core) or the most memory.
    let culprit = |prefix: &str, at_least: f64| {
        m.iter()
            .filter(|(k, v)| k.starts_with(prefix) && **v >= at_least)
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or_else(|| "host".to_owned(), |(k, _)| k[prefix.len()..].to_owned())
    };
    let contended = get("psi.cpu.some_avg10").is_none_or(|p| p >= t.psi_cpu_some);
    if let Some(v) = get("cpu.busy_pct").filter(|v| *v >= t.cpu_busy_pct && contended) {
        let who = culprit("workload.cpu_pct.", 50.0);
        push("cpu_saturation", "cpu.busy_pct", v, t.cpu_busy_pct, &who);
    }
    let ooms = get("oom.kills").unwrap_or(0.0);
    if ooms > 0.0 || events.iter().any(|e| e == "oom_kill") {
        push("oom_kill", "oom.kills", ooms.max(1.0), 0.0, "host");
    } else if let Some(v) = get("mem.used_pct").filter(|v| *v >= t.mem_used_pct) {
        let who = culprit("workload.rss_bytes.", 0.0);
        push("memory_pressure", "mem.used_pct", v, t.mem_used_pct, &who);
    }
    // The fullest filesystem over the threshold.
    if let Some((k, v)) = m
        .iter()
        .filter(|(k, v)| k.starts_with("fs.") && k.ends_with(".used_pct") && **v >= t.fs_used_pct)
        .max_by(|a, b| a.1.total_cmp(b.1))
    {
        let mount = k
            .trim_start_matches("fs.")
            .trim_end_matches(".used_pct")
            .to_owned();
        push("disk_full", k, *v, t.fs_used_pct, &mount);
    }
    if let Some(v) = get("psi.io.full_avg10").filter(|v| *v >= t.psi_io_full) {
        push("io_stall", "psi.io.full_avg10", v, t.psi_io_full, "host");
    } else if let Some(v) = get("disk.busy_pct").filter(|v| *v >= t.disk_busy_pct) {
        push("io_stall", "disk.busy_pct", v, t.disk_busy_pct, "host");
    }
    if let Some((k, v)) = m
        .iter()
        .filter(|(k, v)| k.starts_with("svc.restarts.") && **v >= t.crash_restarts)
        .max_by(|a, b| a.1.total_cmp(b.1))
    {
        let workload = k.trim_start_matches("svc.restarts.").to_owned();
        push("crash_loop", k, *v, t.crash_restarts, &workload);
    }
    let xids = get("gpu.xid_errors").unwrap_or(0.0);
    if xids > 0.0 || events.iter().any(|e| e == "gpu_xid") {
        push("gpu_xid", "gpu.xid_errors", xids.max(1.0), 0.0, "gpu");
    }
    for (k, v) in m.iter() {
        let Some(rest) = k.strip_prefix("gpu.") else {
            continue;
        };
        let Some((idx, field)) = rest.split_once('.') else {
            continue;
        };
        let gpu = format!("gpu{idx}");
        match field {
            "ecc_uncorrected" => {
                let before = base(k).unwrap_or(*v);
                if *v > before {
                    push("gpu_ecc", k, *v, before, &gpu);
                }
            }
            "temp_c" if *v >= t.gpu_temp_c => push("gpu_thermal", k, *v, t.gpu_temp_c, &gpu),
            "mem_used_bytes" => {
                let total = get(&format!("gpu.{idx}.mem_total_bytes")).unwrap_or(0.0);
                if total > 0.0 && 100.0 * v / total >= t.gpu_mem_pct {
                    push("gpu_memory", k, 100.0 * v / total, t.gpu_mem_pct, &gpu);
                }
            }
            _ => {}
        }
    }
    // LLM errors: the subject is the workload with the most of them when the
    // agent's capture names it (`llm.by.<workload>|<model>.errors_*`).
    let worst = |class: &str| {
        m.iter()
            .filter(|(k, v)| k.starts_with("llm.by.") && k.ends_with(class) && **v > 0.0)
            .max_by(|a, b| a.1.total_cmp(b.1))
            .and_then(|(k, _)| k.trim_start_matches("llm.by.").rsplit_once('|'))
            .map_or_else(|| "llm".to_owned(), |(w, _)| w.to_owned())
    };
    let e429 = get("llm.errors_429").unwrap_or(0.0);
    let e5xx = get("llm.errors_5xx").unwrap_or(0.0);
    if e429 >= t.llm_429 {
        push(
            "llm_errors",
            "llm.errors_429",
            e429,
            t.llm_429,
            &worst(".errors_429"),
        );
    } else if e5xx >= t.llm_5xx {
        push(
            "llm_errors",
            "llm.errors_5xx",
            e5xx,
            t.llm_5xx,
            &worst(".errors_5xx"),
        );
    }
    if let Some(v) = get("llm.p95_ms") {
        if let Some((b, n)) = mean(past, "llm.p95_ms") {
            if n >= t.min_baseline && v > b * t.trend_factor && v > 1000.0 {
                push("llm_latency", "llm.p95_ms", v, b * t.trend_factor, "llm");
            }
        }
    }
    // Uninstrumented LLM clients: one workload by name when the agent names
    // them (its metric drops to 0 once instrumented, which the verifier reads),
    // else the host's count.
    if let Some((k, v)) = m
        .iter()
        .filter(|(k, v)| k.starts_with("llm.uninstrumented.") && **v >= 1.0)
        .min_by(|a, b| a.0.cmp(b.0))
    {
        let workload = k.trim_start_matches("llm.uninstrumented.").to_owned();
        push("llm_uninstrumented", k, *v, 1.0, &workload);
    } else if let Some(v) = get("llm.uninstrumented").filter(|v| *v >= 1.0) {
        push("llm_uninstrumented", "llm.uninstrumented", v, 1.0, "llm");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(seq: u64, metrics: &[(&str, f64)]) -> TelemetryWindow {
        TelemetryWindow {
            seq,
            start_ms: seq * 30_000,
            end_ms: (seq + 1) * 30_000,
            metrics: metrics.iter().map(|(k, v)| ((*k).into(), *v)).collect(),
            events: vec![],
        }
    }

    fn families(r: &Rising) -> Vec<&str> {
        r.signals.iter().map(|s| s.family.as_str()).collect()
    }

    #[test]
    fn a_signal_fires_on_its_rising_edge_only() {
        let mut o = Observer::new(Thresholds::default(), 10, 100);
        assert!(families(&o.observe("h", &window(1, &[("fs.root.used_pct", 50.0)]))).is_empty());
        let r = o.observe("h", &window(2, &[("fs.root.used_pct", 97.0)]));
        assert_eq!(families(&r), vec!["disk_full"]);
        assert_eq!(r.signals[0].subject, "root");
        assert_eq!(r.history["fs.root.used_pct"], vec![50.0, 97.0]);
        assert!(families(&o.observe("h", &window(3, &[("fs.root.used_pct", 98.0)]))).is_empty());
        let redelivered = o.observe("h", &window(2, &[("fs.root.used_pct", 97.0)]));
        assert_eq!(redelivered, r, "a redelivered window gets the same answer");
        o.observe("h", &window(4, &[("fs.root.used_pct", 40.0)]));
        let again = o.observe("h", &window(5, &[("fs.root.used_pct", 96.0)]));
        assert_eq!(
            families(&again),
            vec!["disk_full"],
            "a new episode fires again"
        );
    }

    #[test]
    fn each_catalog_signal_is_recognised() {
        let t = Thresholds::default();
        type Case<'a> = (Vec<(&'a str, f64)>, Vec<&'a str>, &'a str);
        let cases: Vec<Case> = vec![
            (vec![("cpu.busy_pct", 99.0)], vec![], "cpu_saturation"),
            (vec![("mem.used_pct", 95.0)], vec![], "memory_pressure"),
            (
                vec![("oom.kills", 2.0), ("mem.used_pct", 95.0)],
                vec![],
                "oom_kill",
            ),
            (vec![("psi.io.full_avg10", 40.0)], vec![], "io_stall"),
            (
                vec![("svc.restarts.systemd:chat.service", 4.0)],
                vec![],
                "crash_loop",
            ),
            (vec![], vec!["gpu_xid"], "gpu_xid"),
            (vec![("gpu.0.temp_c", 91.0)], vec![], "gpu_thermal"),
            (
                vec![
                    ("gpu.0.mem_used_bytes", 79.9e9),
                    ("gpu.0.mem_total_bytes", 80e9),
                ],
                vec![],
                "gpu_memory",
            ),
            (vec![("llm.errors_429", 12.0)], vec![], "llm_errors"),
            (vec![("llm.errors_5xx", 9.0)], vec![], "llm_errors"),
            (
                vec![("llm.uninstrumented", 1.0)],
                vec![],
                "llm_uninstrumented",
            ),
        ];
        for (metrics, events, want) in cases {
            let m = metrics.iter().map(|(k, v)| ((*k).into(), *v)).collect();
            let ev: Vec<String> = events.iter().map(|e| (*e).into()).collect();
            let got = evaluate(&t, &m, &ev, &VecDeque::new());
            assert_eq!(
                got.iter().map(|s| s.family.as_str()).collect::<Vec<_>>(),
                vec![want],
                "{metrics:?}"
            );
        }
    }

    /// 1-second windows from `start_s`, each with `metrics`.
    fn second(seq: u64, metrics: &[(&str, f64)]) -> TelemetryWindow {
        TelemetryWindow {
            seq,
            start_ms: seq * 1000,
            end_ms: (seq + 1) * 1000,
            metrics: metrics.iter().map(|(k, v)| ((*k).into(), *v)).collect(),
            events: vec![],
        }
    }

    #[test]
    fn cpu_saturation_must_persist_with_contention_before_it_opens() {
        let t = Thresholds::default();
        let mut h = HostState::default();
        let busy = [("cpu.busy_pct", 99.0), ("psi.cpu.some_avg10", 45.0)];
        // A one-minute burst (a build): nothing, and the clock stops with it.
        for s in 0..60 {
            assert!(h.observe(&t, 10, &second(s, &busy)).signals.is_empty());
        }
        assert!(h
            .observe(&t, 10, &second(60, &[("cpu.busy_pct", 20.0)]))
            .signals
            .is_empty());
        assert!(h.since.is_empty());
        // Busy without contention (PSI low) never counts.
        for s in 61..500 {
            let r = h.observe(
                &t,
                10,
                &second(s, &[("cpu.busy_pct", 99.0), ("psi.cpu.some_avg10", 2.0)]),
            );
            assert!(r.signals.is_empty(), "{s}");
        }
        // Sustained and contended: opens once, at five minutes.
        let mut opened = vec![];
        for s in 500..900 {
            if !h.observe(&t, 10, &second(s, &busy)).signals.is_empty() {
                opened.push(s);
            }
        }
        assert_eq!(
            opened,
            vec![799],
            "300 s after the first busy window (500..=799)"
        );
        // Without PSI from the agent, sustained busy alone counts.
        let mut g = HostState::default();
        let fired: Vec<u64> = (0..400)
            .filter(|s| {
                !g.observe(&t, 10, &second(*s, &[("cpu.busy_pct", 97.0)]))
                    .signals
                    .is_empty()
            })
            .collect();
        assert_eq!(fired, vec![299]);
    }

    #[test]
    fn cpu_and_memory_runs_name_the_culprit_workload_when_the_agent_does() {
        let t = Thresholds::default();
        let m: BTreeMap<String, f64> = [
            ("cpu.busy_pct", 99.0),
            ("psi.cpu.some_avg10", 40.0),
            ("workload.cpu_pct.host:/opt/cruncher", 180.0),
            ("workload.cpu_pct.systemd:sshd.service", 3.0),
            ("mem.used_pct", 95.0),
            ("workload.rss_bytes.docker:cache", 9e9),
            ("workload.rss_bytes.host:/opt/cruncher", 1e6),
        ]
        .iter()
        .map(|(k, v)| ((*k).into(), *v))
        .collect();
        let got = evaluate(&t, &m, &[], &VecDeque::new());
        let by = |f: &str| got.iter().find(|s| s.family == f).expect(f).subject.clone();
        assert_eq!(by("cpu_saturation"), "host:/opt/cruncher");
        assert_eq!(by("memory_pressure"), "docker:cache");
        // Nobody holds half a core: the host, not a bystander.
        let idle: BTreeMap<String, f64> = [
            ("cpu.busy_pct", 99.0),
            ("workload.cpu_pct.host:/bin/x", 20.0),
        ]
        .iter()
        .map(|(k, v)| ((*k).into(), *v))
        .collect();
        assert_eq!(
            evaluate(&t, &idle, &[], &VecDeque::new())[0].subject,
            "host"
        );
    }

    #[test]
    fn llm_signals_name_the_workload_when_the_agent_does() {
        let t = Thresholds::default();
        let m: BTreeMap<String, f64> = [
            ("llm.uninstrumented", 2.0),
            ("llm.uninstrumented.host:/usr/bin/python3", 1.0),
            ("llm.uninstrumented.systemd:chat.service", 1.0),
            ("llm.uninstrumented.systemd:done.service", 0.0),
            ("llm.errors_429", 12.0),
            ("llm.by.systemd:chat.service|gpt-4o.errors_429", 9.0),
            ("llm.by.host:/usr/bin/python3|gpt-4o.errors_429", 3.0),
        ]
        .iter()
        .map(|(k, v)| ((*k).into(), *v))
        .collect();
        let got = evaluate(&t, &m, &[], &VecDeque::new());
        let by = |f: &str| got.iter().find(|s| s.family == f).expect(f);
        let un = by("llm_uninstrumented");
        assert_eq!(un.subject, "host:/usr/bin/python3");
        assert_eq!(un.metric, "llm.uninstrumented.host:/usr/bin/python3");
        assert_eq!(by("llm_errors").subject, "systemd:chat.service");
        assert!(watched("llm.uninstrumented.systemd:done.service"));
        assert!(watched("llm.by.systemd:chat.service|gpt-4o.errors_5xx"));
        assert!(!watched("llm.by.systemd:chat.service|gpt-4o.tokens_in"));
    }

    #[test]
    fn trends_need_a_baseline_and_ecc_needs_an_increase() {
        let mut o = Observer::new(Thresholds::default(), 10, 100);
        for i in 0..5 {
            let r = o.observe(
                "h",
                &window(i, &[("llm.p95_ms", 800.0), ("gpu.0.ecc_uncorrected", 3.0)]),
            );
            assert!(r.signals.is_empty(), "{r:?}");
        }
        let r = o.observe(
            "h",
            &window(6, &[("llm.p95_ms", 4000.0), ("gpu.0.ecc_uncorrected", 4.0)]),
        );
        assert_eq!(families(&r), vec!["gpu_ecc", "llm_latency"]);
    }

    #[test]
    fn memory_is_bounded_by_hosts_and_history() {
        let mut o = Observer::new(Thresholds::default(), 4, 50);
        for i in 0..10_000u64 {
            o.observe(&format!("h{i}"), &window(i, &[("cpu.busy_pct", 10.0)]));
        }
        assert_eq!(o.hosts(), 50);
        for i in 0..100 {
            o.observe(
                "h9999",
                &window(10_000 + i, &[("cpu.busy_pct", 10.0), ("junk", 1.0)]),
            );
        }
        let h = &o.hosts["h9999"];
        assert_eq!(h.state.windows.len(), 4);
        assert!(
            h.state.windows.iter().all(|w| w.len() == 1),
            "unwatched metrics dropped"
        );
        let nan = o.observe("h9999", &window(200, &[("cpu.busy_pct", f64::NAN)]));
        assert!(nan.signals.is_empty());
    }
}
