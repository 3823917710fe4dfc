//! Per-window summaries of captured LLM calls, per workload and model: calls,
//! tokens in and out, errors by class, p50 / p95 latency. They travel in the
//! poll's telemetry window, where the incident workflow's LLM rules read the
//! host totals (`llm.calls`, `llm.errors_429`, `llm.errors_5xx`, `llm.p95_ms`).
//!
//! Invariants:
//! - Bounded: at most [`MAX_KEYS`] (workload, model) pairs per window (calls for
//!   others still count in the totals) and [`MAX_SAMPLES`] latencies per pair.
//! - A window's summary is emitted once and then reset; a window without calls
//!   emits `llm.calls = 0` only when instrumentation is active, so "no calls" is
//!   told apart from "nothing watching".

use crate::capture::Captured;
use std::collections::BTreeMap;

pub const MAX_KEYS: usize = 64;
pub const MAX_SAMPLES: usize = 4096;
/// (workload, model) pairs detailed in a window, the busiest first.
pub const MAX_DETAILED: usize = 8;

#[derive(Debug, Default, Clone)]
struct Acc {
    calls: u64,
    errors_429: u64,
    errors_5xx: u64,
    errors_4xx: u64,
    tokens_in: u64,
    tokens_out: u64,
    latency_ms: Vec<f64>,
}

impl Acc {
    fn add(&mut self, c: &Captured) {
        self.calls += 1;
        match c.call.status {
            429 => self.errors_429 += 1,
            500..=599 => self.errors_5xx += 1,
            400..=499 => self.errors_4xx += 1,
            _ => {}
        }
        self.tokens_in += c.call.input_tokens.unwrap_or(0);
        self.tokens_out += c.call.output_tokens.unwrap_or(0);
        if self.latency_ms.len() < MAX_SAMPLES {
            self.latency_ms.push(c.duration_ms());
        }
    }

    fn merge(&mut self, o: &Acc) {
        self.calls += o.calls;
        self.errors_429 += o.errors_429;
        self.errors_5xx += o.errors_5xx;
        self.errors_4xx += o.errors_4xx;
        self.tokens_in += o.tokens_in;
        self.tokens_out += o.tokens_out;
        let room = MAX_SAMPLES.saturating_sub(self.latency_ms.len());
        self.latency_ms.extend(o.latency_ms.iter().take(room));
    }
}

/// Nearest-rank percentile of `v` (sorted in place); `None` when empty.
pub fn percentile(v: &mut [f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

#[derive(Debug, Default, Clone)]
pub struct LlmStats {
    by: BTreeMap<(String, String), Acc>,
    overflow: Acc,
}

impl LlmStats {
    pub fn record(&mut self, workload: &str, c: &Captured) {
        let model = c
            .call
            .response_model
            .clone()
            .or_else(|| c.call.request_model.clone())
            .unwrap_or_else(|| "unknown".into());
        let key = (workload.to_owned(), model);
        if self.by.len() >= MAX_KEYS && !self.by.contains_key(&key) {
            self.overflow.add(c);
            return;
        }
        self.by.entry(key).or_default().add(c);
    }

    /// Adds this window's summary to `m` and starts afresh. `active`: whether
    /// any capture runs (then an idle window reports zero calls).
    pub fn drain_into(&mut self, m: &mut BTreeMap<String, f64>, active: bool) {
        let by = std::mem::take(&mut self.by);
        let mut total = std::mem::take(&mut self.overflow);
        for acc in by.values() {
            total.merge(acc);
        }
        if total.calls == 0 {
            if active {
                m.insert("llm.calls".into(), 0.0);
            }
            return;
        }
        put(m, "llm", &mut total);
        let mut busiest: Vec<((String, String), Acc)> = by.into_iter().collect();
        busiest.sort_by(|a, b| b.1.calls.cmp(&a.1.calls).then_with(|| a.0.cmp(&b.0)));
        for ((workload, model), mut acc) in busiest.into_iter().take(MAX_DETAILED) {
            put(m, &format!("llm.by.{workload}|{model}"), &mut acc);
        }
    }
}

fn put(m: &mut BTreeMap<String, f64>, prefix: &str, a: &mut Acc) {
    let mut set = |k: &str, v: f64| {
        m.insert(format!("{prefix}.{k}"), v);
    };
    set("calls", a.calls as f64);
    set("errors_429", a.errors_429 as f64);
    set("errors_5xx", a.errors_5xx as f64);
    set("errors_4xx", a.errors_4xx as f64);
    set(
        "error_rate",
        (a.errors_429 + a.errors_5xx + a.errors_4xx) as f64 / a.calls as f64,
    );
    set("tokens_in", a.tokens_in as f64);
    set("tokens_out", a.tokens_out as f64);
    if let Some(p50) = percentile(&mut a.latency_ms, 50.0) {
        set("p50_ms", p50);
    }
    if let Some(p95) = percentile(&mut a.latency_ms, 95.0) {
        set("p95_ms", p95);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_llm::LlmCall;

    fn call(model: &str, status: u16, ms: u64) -> Captured {
        Captured {
            pid: 1,
            call: LlmCall {
                system: "openai",
                operation: "chat",
                request_model: Some(model.into()),
                response_model: None,
                input_tokens: Some(10),
                output_tokens: Some(5),
                status,
                error_type: None,
                streaming: false,
            },
            start_ns: 0,
            end_ns: ms * 1_000_000,
            content: None,
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), Some(50.0));
        assert_eq!(percentile(&mut v, 95.0), Some(95.0));
        assert_eq!(percentile(&mut [7.0], 95.0), Some(7.0));
        assert_eq!(percentile(&mut [], 50.0), None);
    }

    #[test]
    fn a_window_sums_totals_and_details_per_workload_and_model() {
        let mut s = LlmStats::default();
        for i in 1..=20 {
            s.record("host:/usr/bin/python3", &call("gpt-4o", 200, i * 10));
        }
        s.record("host:/usr/bin/python3", &call("gpt-4o", 429, 5));
        s.record("k8s:ns:deployment:web:app", &call("claude", 503, 1000));
        let mut m = BTreeMap::new();
        s.drain_into(&mut m, true);
        assert_eq!(m["llm.calls"], 22.0);
        assert_eq!(m["llm.errors_429"], 1.0);
        assert_eq!(m["llm.errors_5xx"], 1.0);
        assert_eq!(m["llm.tokens_in"], 220.0);
        assert_eq!(m["llm.by.host:/usr/bin/python3|gpt-4o.calls"], 21.0);
        assert_eq!(m["llm.by.host:/usr/bin/python3|gpt-4o.p50_ms"], 100.0);
        assert_eq!(m["llm.by.k8s:ns:deployment:web:app|claude.p95_ms"], 1000.0);
        assert_eq!(m["llm.p95_ms"], 200.0);
        let mut again = BTreeMap::new();
        s.drain_into(&mut again, true);
        assert_eq!(
            again,
            BTreeMap::from([("llm.calls".to_owned(), 0.0)]),
            "reset after a window"
        );
        let mut off = BTreeMap::new();
        s.drain_into(&mut off, false);
        assert!(off.is_empty(), "nothing watching: nothing claimed");
    }

    #[test]
    fn pairs_beyond_the_bound_still_count_in_the_totals() {
        let mut s = LlmStats::default();
        for i in 0..(MAX_KEYS + 5) {
            s.record(&format!("w{i}"), &call("m", 200, 1));
        }
        let mut m = BTreeMap::new();
        s.drain_into(&mut m, true);
        assert_eq!(m["llm.calls"], (MAX_KEYS + 5) as f64);
        assert_eq!(
            m.keys().filter(|k| k.ends_with("|m.calls")).count(),
            MAX_DETAILED
        );
    }
}
