//! The rule catalog (analyzer) and the runbook catalog (planner): pure functions
//! from signals to ranked hypotheses, and from the top hypothesis to proposals.
//!
//! Invariants:
//! - Ranking is deterministic: score from the catalog (raised for corroborating
//!   signals), ties broken by rule name. An optional LLM may reword explanations;
//!   nothing here reads its output.
//! - Every proposal names its action, blast radius, safety class and rollback (when
//!   one exists), and each is a kind `tether-agent` implements, with the safety
//!   class of what the agent really does (`docs/artifacts.md`, "Agent action
//!   kinds"). Host-changing steps whose action already failed to help for the
//!   same fingerprint are demoted to the end, with the reason in their rationale;
//!   read-only steps are never demoted (they were not meant to change anything).
//! - LLM rate limiting is not in the catalog: the agent has no mechanism it can
//!   apply to a client's outbound calls and undo.

use super::artifact::{
    Anomaly, EvidenceRef, Hypothesis, PriorAttempt, Proposal, RollbackStep, Safety, Signal, Verdict,
};
use serde_json::json;

/// One catalog rule: a signal family, its hypothesis and base score.
struct Rule {
    family: &'static str,
    rule: &'static str,
    title: &'static str,
    score: u32,
    explanation: &'static str,
}

const RULES: &[Rule] = &[
    Rule { family: "oom_kill", rule: "memory_oom", title: "Processes are being OOM-killed", score: 90,
        explanation: "the kernel OOM killer ran: memory demand exceeded what the host or cgroup allows" },
    Rule { family: "memory_pressure", rule: "memory_pressure", title: "Memory pressure", score: 70,
        explanation: "available memory is nearly exhausted; reclaim and swapping slow everything down" },
    Rule { family: "cpu_saturation", rule: "cpu_saturation", title: "CPU saturation", score: 60,
        explanation: "the CPUs are busy nearly all the time; work queues up" },
    Rule { family: "disk_full", rule: "disk_full", title: "Filesystem nearly full", score: 85,
        explanation: "a filesystem is nearly full; writes will start failing" },
    Rule { family: "io_stall", rule: "io_stall", title: "I/O stall", score: 65,
        explanation: "tasks spend their time waiting on block I/O" },
    Rule { family: "crash_loop", rule: "crash_loop", title: "A service is crash-looping", score: 80,
        explanation: "the same workload restarted repeatedly within a window" },
    Rule { family: "gpu_xid", rule: "gpu_xid", title: "GPU XID errors", score: 88,
        explanation: "the GPU driver reported XID errors: a hardware, driver or application fault on the GPU" },
    Rule { family: "gpu_ecc", rule: "gpu_ecc", title: "Uncorrectable GPU ECC errors", score: 86,
        explanation: "uncorrectable ECC errors grew: GPU memory is failing" },
    Rule { family: "gpu_memory", rule: "gpu_memory_exhaustion", title: "GPU memory exhausted", score: 75,
        explanation: "GPU memory is nearly full; new allocations will fail" },
    Rule { family: "gpu_thermal", rule: "gpu_thermal", title: "GPU thermal throttling", score: 70,
        explanation: "the GPU runs hot enough to throttle its clocks" },
    Rule { family: "llm_errors", rule: "llm_error_storm", title: "LLM API error storm", score: 78,
        explanation: "calls to an LLM provider fail at a high rate (rate limits or server errors)" },
    Rule { family: "llm_latency", rule: "llm_latency", title: "LLM API latency spike", score: 62,
        explanation: "LLM call latency broke its recent trend" },
    Rule { family: "llm_uninstrumented", rule: "llm_uninstrumented", title: "LLM workload left uninstrumented", score: 40,
        explanation: "a workload talks to an LLM provider but is not instrumented, so its calls are invisible" },
];

fn rule_for(family: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.family == family)
}

/// The rule names the catalog covers, for docs and tests.
pub fn rules() -> Vec<&'static str> {
    RULES.iter().map(|r| r.rule).collect()
}

pub fn anomalies(signals: &[Signal]) -> Vec<Anomaly> {
    signals
        .iter()
        .map(|s| Anomaly {
            family: s.family.clone(),
            metric: s.metric.clone(),
            subject: s.subject.clone(),
            value: s.value,
            threshold: s.threshold,
            severity: if matches!(
                s.family.as_str(),
                "oom_kill" | "disk_full" | "gpu_xid" | "gpu_ecc" | "crash_loop"
            ) {
                "critical".into()
            } else {
                "warning".into()
            },
        })
        .collect()
}

/// Ranks hypotheses for a run's signals. `window` names the evidence window.
pub fn hypotheses(signals: &[Signal], window: &str) -> Vec<Hypothesis> {
    let families: Vec<&str> = signals.iter().map(|s| s.family.as_str()).collect();
    let mut out: Vec<Hypothesis> = signals
        .iter()
        .filter_map(|s| {
            let r = rule_for(&s.family)?;
            let mut score = r.score;
            let mut why = r.explanation.to_owned();
            // Corroboration: memory pressure with OOM kills, I/O stall with a full disk.
            if (r.family == "oom_kill" && families.contains(&"memory_pressure"))
                || (r.family == "disk_full" && families.contains(&"io_stall"))
                || (r.family == "llm_errors" && families.contains(&"llm_latency"))
            {
                score += 5;
                why.push_str("; corroborated by a related signal");
            }
            let excerpt = match s.baseline {
                Some(b) => format!(
                    "{} = {:.1} (threshold {:.1}, recent mean {:.1})",
                    s.metric, s.value, s.threshold, b
                ),
                None => format!(
                    "{} = {:.1} (threshold {:.1})",
                    s.metric, s.value, s.threshold
                ),
            };
            Some(Hypothesis {
                rule: r.rule.into(),
                title: r.title.into(),
                score: score.min(100),
                explanation: why,
                subject: s.subject.clone(),
                evidence: vec![EvidenceRef::new(window, [excerpt])],
            })
        })
        .collect();
    out.sort_by(|a, b| b.score.cmp(&a.score).then_with(|| a.rule.cmp(&b.rule)));
    out.dedup_by(|a, b| a.rule == b.rule);
    out
}

/// A subject that names a workload (`host:/…`, `systemd:…`, `docker:…`,
/// `k8s:…`) rather than the host, a mount or a GPU.
fn is_workload(subject: &str) -> bool {
    ["host:/", "systemd:", "docker:", "k8s:"]
        .iter()
        .any(|p| subject.starts_with(p))
}

/// Runbook for a hypothesis: proposals in the order a human would try them.
/// `top` are the host's top processes by the resource at fault, when known.
pub fn proposals(h: &Hypothesis, agent_id: &str, prior: &[PriorAttempt]) -> Vec<Proposal> {
    let p = |runbook: &str,
             action: &str,
             target: &str,
             payload: serde_json::Value,
             blast: &str,
             safety: Safety,
             rollback: Option<RollbackStep>,
             rationale: &str| Proposal {
        step: 0,
        runbook: runbook.into(),
        action: action.into(),
        agent_id: agent_id.into(),
        target: target.into(),
        payload,
        blast_radius: blast.into(),
        safety,
        rollback,
        rationale: rationale.into(),
    };
    let evidence = |what: &str| {
        p(
            &format!("{}:evidence", h.rule),
            "collect_evidence",
            "host",
            json!({ "what": what }),
            "none: reads only",
            Safety::ReadOnly,
            None,
            "capture the state an engineer needs before changing anything",
        )
    };
    let subject = h.subject.as_str();
    let mut out = match h.rule.as_str() {
        "memory_oom" | "memory_pressure" => vec![
            evidence("top_memory"),
            p(
                "memory:stop-top-consumer",
                "signal_process",
                subject,
                json!({ "select": "top_rss", "signal": "TERM" }),
                "one process on one host",
                Safety::Impactful,
                None,
                "terminate the process with the largest resident memory to release it \
                 (the agent chooses it when it runs, within the subject workload when it \
                 is one, and never a protected process)",
            ),
        ],
        // A named culprit (the agent's busiest workload) is capped, reversibly;
        // an unnamed one is the host's busiest process.
        "cpu_saturation" if is_workload(subject) => vec![
            evidence("top_cpu"),
            p(
                "cpu:cap-noisy-neighbour",
                "limit_workload",
                subject,
                json!({ "workload": subject, "cpu_pct": 50 }),
                "one workload's CPU share on one host",
                Safety::Reversible,
                Some(RollbackStep {
                    action: "restore_workload_limit".into(),
                    payload: json!({ "workload": subject }),
                }),
                "cap the workload that saturates the CPU at half a core (cgroup cpu.max or \
                 cfs quota), so its neighbours run again; the previous limit is restored on \
                 rollback",
            ),
        ],
        "cpu_saturation" => vec![
            evidence("top_cpu"),
            p(
                "cpu:stop-runaway",
                "signal_process",
                subject,
                json!({ "select": "top_cpu", "signal": "TERM" }),
                "one process on one host",
                Safety::Impactful,
                None,
                "terminate the process that burns the CPU",
            ),
        ],
        "disk_full" => vec![
            evidence("disk_usage"),
            p(
                "disk:rotate-logs",
                "rotate_logs",
                subject,
                json!({ "mount": subject, "keep_mib": 16 }),
                "the largest log files under the agent's allowed log directories on one filesystem",
                Safety::Destructive,
                None,
                "truncate the largest allowed log files on this filesystem to their last 16 MiB \
                 (in place, so writers keep their descriptors); what is cut is gone",
            ),
            p(
                "disk:vacuum-journal",
                "vacuum_journal",
                subject,
                json!({ "max_size": "200M" }),
                "the systemd journal of one host",
                Safety::Destructive,
                None,
                "delete old journal entries to free space",
            ),
        ],
        "io_stall" => vec![
            evidence("top_io"),
            p(
                "io:stop-top-writer",
                "signal_process",
                subject,
                json!({ "select": "top_io", "signal": "TERM" }),
                "one process on one host",
                Safety::Impactful,
                None,
                "terminate the process doing the most I/O (the agent measures it when it \
                 runs and never picks a protected process), so the device serves the rest",
            ),
        ],
        "crash_loop" => vec![
            evidence("unit_logs"),
            p(
                "crash-loop:stop-unit",
                "stop_service",
                subject,
                json!({ "workload": subject }),
                "one service on one host",
                Safety::Impactful,
                Some(RollbackStep {
                    action: "start_service".into(),
                    payload: json!({ "workload": subject }),
                }),
                "stop the restart loop so it stops thrashing the host",
            ),
        ],
        "gpu_xid" | "gpu_ecc" => vec![
            evidence("gpu"),
            p(
                "gpu:reset",
                "reset_gpu",
                subject,
                json!({ "gpu": subject }),
                "every workload on one GPU",
                Safety::Destructive,
                None,
                "reset the GPU to clear the fault",
            ),
        ],
        "gpu_memory_exhaustion" => vec![
            evidence("gpu"),
            p(
                "gpu:stop-top-consumer",
                "signal_process",
                subject,
                json!({ "select": "top_gpu_memory", "signal": "TERM" }),
                "one process on one host",
                Safety::Impactful,
                None,
                "terminate the process holding the most GPU memory",
            ),
        ],
        "gpu_thermal" => vec![
            evidence("gpu"),
            p(
                "gpu:cap-power",
                "set_gpu_power_limit",
                subject,
                json!({ "gpu": subject, "watts_pct": 80 }),
                "one GPU",
                Safety::Reversible,
                Some(RollbackStep {
                    action: "restore_gpu_power_limit".into(),
                    payload: json!({ "gpu": subject }),
                }),
                "lower the power limit until cooling catches up",
            ),
        ],
        // No client rate limit: the agent has nothing it could apply and undo.
        "llm_error_storm" | "llm_latency" => vec![evidence("llm_calls")],
        "llm_uninstrumented" => vec![p(
            "llm:instrument",
            "instrument",
            subject,
            json!({}),
            "one workload (eBPF probes, no code change)",
            Safety::Reversible,
            Some(RollbackStep {
                action: "uninstrument".into(),
                payload: json!({}),
            }),
            "instrument the workload so its LLM calls become visible",
        )],
        _ => vec![],
    };
    // What did not help before goes last, and says so. Read-only steps stay
    // where they are: they never change the host, so they cannot have failed to.
    let failed = |prop: &Proposal| {
        if prop.safety == Safety::ReadOnly {
            return 0;
        }
        prior
            .iter()
            .filter(|a| {
                a.action == prop.action && matches!(a.verdict, Verdict::Unchanged | Verdict::Worse)
            })
            .count()
    };
    for prop in &mut out {
        let n = failed(prop);
        if n > 0 {
            prop.rationale.push_str(&format!(
                "; tried {n} time(s) before for this fingerprint without improvement"
            ));
        }
    }
    out.sort_by_key(|prop| failed(prop) > 0);
    for (i, prop) in out.iter_mut().enumerate() {
        prop.step = i as u32 + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(family: &str, subject: &str) -> Signal {
        Signal {
            family: family.into(),
            metric: "m".into(),
            value: 99.0,
            threshold: 90.0,
            baseline: Some(50.0),
            subject: subject.into(),
        }
    }

    #[test]
    fn the_catalog_covers_the_required_rules() {
        for rule in [
            "cpu_saturation",
            "memory_pressure",
            "memory_oom",
            "disk_full",
            "io_stall",
            "crash_loop",
            "gpu_xid",
            "gpu_ecc",
            "gpu_memory_exhaustion",
            "gpu_thermal",
            "llm_error_storm",
            "llm_latency",
            "llm_uninstrumented",
        ] {
            assert!(rules().contains(&rule), "{rule}");
        }
    }

    #[test]
    fn ranking_is_by_score_with_corroboration() {
        let hs = hypotheses(
            &[
                signal("memory_pressure", "host"),
                signal("cpu_saturation", "host"),
                signal("oom_kill", "host"),
            ],
            "window:a:1",
        );
        let rules: Vec<&str> = hs.iter().map(|h| h.rule.as_str()).collect();
        assert_eq!(
            rules,
            vec!["memory_oom", "memory_pressure", "cpu_saturation"]
        );
        assert_eq!(hs[0].score, 95);
        assert!(hs[0].evidence[0].excerpts[0].contains("recent mean 50.0"));
    }

    #[test]
    fn every_rule_has_a_runbook_with_safety_and_numbered_steps() {
        for family in [
            "oom_kill",
            "memory_pressure",
            "cpu_saturation",
            "disk_full",
            "io_stall",
            "crash_loop",
            "gpu_xid",
            "gpu_ecc",
            "gpu_memory",
            "gpu_thermal",
            "llm_errors",
            "llm_latency",
            "llm_uninstrumented",
        ] {
            let h = &hypotheses(&[signal(family, "root")], "w")[0];
            let ps = proposals(h, "agt", &[]);
            assert!(!ps.is_empty(), "{family}");
            let steps: Vec<u32> = ps.iter().map(|p| p.step).collect();
            assert_eq!(steps, (1..=ps.len() as u32).collect::<Vec<_>>());
        }
        let disk = proposals(
            &hypotheses(&[signal("disk_full", "root")], "w")[0],
            "agt",
            &[],
        );
        assert_eq!(disk.last().map(|p| p.safety), Some(Safety::Destructive));
    }

    #[test]
    fn what_failed_before_is_demoted_but_never_a_read_only_step() {
        let h = &hypotheses(&[signal("disk_full", "root")], "w")[0];
        let prior = [
            PriorAttempt {
                run_id: "run_0".into(),
                action: "collect_evidence".into(),
                verdict: Verdict::Unchanged,
            },
            PriorAttempt {
                run_id: "run_0".into(),
                action: "rotate_logs".into(),
                verdict: Verdict::Unchanged,
            },
        ];
        let ps = proposals(h, "agt", &prior);
        let actions: Vec<&str> = ps.iter().map(|p| p.action.as_str()).collect();
        assert_eq!(
            actions,
            vec!["collect_evidence", "vacuum_journal", "rotate_logs"]
        );
        assert!(ps[2].rationale.contains("tried 1 time(s) before"));
        assert!(!ps[0].rationale.contains("tried"));
    }

    #[test]
    fn runbooks_use_only_kinds_the_agent_implements_with_its_real_safety() {
        const AGENT_KINDS: &[&str] = &[
            "collect_evidence",
            "signal_process",
            "stop_service",
            "start_service",
            "restart_service",
            "rotate_logs",
            "vacuum_journal",
            "limit_workload",
            "restore_workload_limit",
            "set_gpu_power_limit",
            "restore_gpu_power_limit",
            "reset_gpu",
            "instrument",
            "uninstrument",
        ];
        for family in [
            "oom_kill",
            "memory_pressure",
            "cpu_saturation",
            "disk_full",
            "io_stall",
            "crash_loop",
            "gpu_xid",
            "gpu_memory",
            "gpu_thermal",
            "llm_errors",
            "llm_latency",
            "llm_uninstrumented",
        ] {
            let h = &hypotheses(&[signal(family, "gpu0")], "w")[0];
            for p in proposals(h, "agt", &[]) {
                assert!(
                    AGENT_KINDS.contains(&p.action.as_str()),
                    "{family}: {}",
                    p.action
                );
                if let Some(rb) = &p.rollback {
                    assert!(
                        AGENT_KINDS.contains(&rb.action.as_str()),
                        "{family}: {}",
                        rb.action
                    );
                }
                if p.action == "rotate_logs" {
                    assert_eq!(p.safety, Safety::Destructive, "what is cut is gone");
                }
            }
        }
        let thermal = proposals(
            &hypotheses(&[signal("gpu_thermal", "gpu0")], "w")[0],
            "agt",
            &[],
        );
        assert_eq!(
            thermal[1].rollback,
            Some(RollbackStep {
                action: "restore_gpu_power_limit".into(),
                payload: json!({ "gpu": "gpu0" }),
            })
        );
        let memory = proposals(
            &hypotheses(&[signal("memory_pressure", "host")], "w")[0],
            "agt",
            &[],
        );
        assert_eq!(memory[1].action, "signal_process");
        assert_eq!(memory[1].payload["select"], "top_rss");
    }
}
