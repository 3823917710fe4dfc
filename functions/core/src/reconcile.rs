//! Reconciliation: desired state against what an agent observes, as OpenLIT's
//! table.
//!
//! | desired            | observed          | action               |
//! |--------------------|-------------------|----------------------|
//! | instrumented       | not instrumented  | `instrument`         |
//! | none               | instrumented      | `uninstrument`       |
//! | instrumented, content X | instrumented, other content | `instrument` |
//! | python_sdk enabled | sdk off           | `enable_python_sdk`  |
//! | python_sdk disabled| sdk on            | `disable_python_sdk` |
//! | nothing declared   | anything          | none                 |
//!
//! Invariants (pure: no I/O, no clock):
//! - An action is planned once per need, not once per poll: nothing is planned for a
//!   (workload, kind) that already has a live outbox item.
//! - Action ids are derived from (tenant, agent, workload, kind, pid, attempt), so a
//!   racing second poll plans the same id and the store's conditional create lets only
//!   one through.
//! - A retry budget: at most `max_attempts` per (workload, kind, pid, desired change);
//!   a refusal exhausts it at once. A restarted process (new pid) or a new desired
//!   change for the workload opens a fresh budget, so a restarted workload is
//!   re-instrumented.
//! - A need whose action the agent cannot run (its reported action kinds lack the
//!   kind, or its capabilities lack the action's `requires_capability`) is held
//!   with the reason, never queued: a sure refusal would spend the budget.
//! - [`judge`] is the server's view of drift: the desired revision counts as
//!   applied only when no need of it is pending, failed, refused or held.

use crate::model::{Attempt, DesiredSet, OutboxItem};
use crate::tenant::{AgentId, TenantId};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use tether_proto::operator::Drift;
use tether_proto::{ActionKind, Service};

/// One action reconciliation wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub workload_key: String,
    pub kind: &'static str,
    pub pid: u32,
    pub attempt: u32,
    pub revision: u64,
    pub action_id: String,
    pub idempotency_key: String,
}

/// A need reconciliation saw but will not act on, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub workload_key: String,
    pub kind: &'static str,
    pub reason: String,
    /// False only for a need whose action succeeded and whose new state the
    /// agent has yet to report: that is not drift.
    pub lags: bool,
}

/// The capability an action kind requires of the agent (`requires_capability`).
pub fn capability_for(kind: &str) -> &'static str {
    match kind {
        ActionKind::INSTRUMENT | ActionKind::UNINSTRUMENT => "ebpf",
        ActionKind::ENABLE_PYTHON_SDK | ActionKind::DISABLE_PYTHON_SDK => "systemd",
        _ => "",
    }
}

/// What the agent reports it can do: its capabilities and, from newer agents,
/// the action kinds it can run on its host.
#[derive(Debug, Clone, Copy)]
pub struct Abilities<'a> {
    pub capabilities: &'a [String],
    pub action_kinds: Option<&'a [String]>,
}

impl Abilities<'_> {
    /// Why the agent cannot run `kind`, or `None` when it can.
    pub fn cannot_run(&self, kind: &str) -> Option<String> {
        if let Some(kinds) = self.action_kinds {
            if !kinds.iter().any(|k| k == kind) {
                return Some(format!(
                    "the agent cannot run {kind} on its host (not among the action kinds it reports)"
                ));
            }
        }
        let cap = capability_for(kind);
        if !cap.is_empty() && !self.capabilities.iter().any(|c| c == cap) {
            return Some(format!(
                "the agent lacks the capability {cap} that {kind} requires"
            ));
        }
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    pub planned: Vec<Planned>,
    pub held: Vec<Held>,
    /// The attempts map after planning (counts bumped for planned actions).
    pub attempts: BTreeMap<String, Attempt>,
}

pub fn attempt_key(workload_key: &str, kind: &str) -> String {
    format!("{workload_key}|{kind}")
}

/// The kind an observed/desired pair calls for, if any.
pub fn needed_kinds(desired: &DesiredSet, svc: &Service) -> Vec<&'static str> {
    let mut kinds = Vec::new();
    match desired.wants_instrumented(&svc.workload_key) {
        Some(true) if !svc.instrumented => kinds.push(ActionKind::INSTRUMENT),
        // Instrumented, but not with the content mode the tenant asked for:
        // `instrument` again (idempotent on the agent) carries the new mode.
        Some(true)
            if desired
                .wants_llm_content(&svc.workload_key)
                .is_some_and(|c| {
                    let observed = if svc.llm_content.is_empty() {
                        "none"
                    } else {
                        svc.llm_content.as_str()
                    };
                    c.as_str() != observed
                }) =>
        {
            kinds.push(ActionKind::INSTRUMENT)
        }
        Some(false) if svc.instrumented => kinds.push(ActionKind::UNINSTRUMENT),
        _ => {}
    }
    match desired.wants_python_sdk(&svc.workload_key) {
        Some(true) if !svc.python_sdk => kinds.push(ActionKind::ENABLE_PYTHON_SDK),
        Some(false) if svc.python_sdk => kinds.push(ActionKind::DISABLE_PYTHON_SDK),
        _ => {}
    }
    kinds
}

/// What reconciliation compares desired state against.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    pub services: &'a [Service],
    /// Hash of `services` (see `tether_proto::services_hash`).
    pub services_hash: &'a str,
    /// Live outbox items.
    pub outbox: &'a [OutboxItem],
    pub attempts: &'a BTreeMap<String, Attempt>,
    pub abilities: Abilities<'a>,
}

pub fn reconcile(
    tenant: &TenantId,
    agent: &AgentId,
    desired: &DesiredSet,
    observed: &Observed<'_>,
    max_attempts: u32,
) -> Outcome {
    let Observed {
        services,
        services_hash,
        outbox,
        attempts,
        abilities,
    } = *observed;
    let live: BTreeSet<(String, String)> = outbox
        .iter()
        .map(|o| (o.action.target.clone(), o.action.kind.as_str().to_owned()))
        .collect();
    let mut out = Outcome {
        attempts: attempts.clone(),
        ..Outcome::default()
    };
    // One service per workload key: the newest process wins (highest pid is not
    // "newest", so keep the first reported; agents report one entry per key).
    let mut seen = BTreeSet::new();
    for svc in services {
        if !seen.insert(svc.workload_key.clone()) {
            continue;
        }
        let changed_at = desired
            .get(&svc.workload_key)
            .map(|e| e.changed_at_revision)
            .unwrap_or(0);
        for kind in needed_kinds(desired, svc) {
            if live.contains(&(svc.workload_key.clone(), kind.to_owned())) {
                continue;
            }
            let akey = attempt_key(&svc.workload_key, kind);
            let prior = out
                .attempts
                .get(&akey)
                .filter(|a| a.pid == svc.pid && a.revision >= changed_at)
                .cloned();
            let count = prior.as_ref().map(|a| a.count).unwrap_or(0);
            if prior
                .as_ref()
                .is_some_and(|a| a.succeeded_at_hash.as_deref() == Some(services_hash))
            {
                out.held.push(Held {
                    workload_key: svc.workload_key.clone(),
                    kind,
                    reason: "succeeded; waiting for the agent to report the new state".into(),
                    lags: false,
                });
                continue;
            }
            if let Some(reason) = abilities.cannot_run(kind) {
                out.held.push(Held {
                    workload_key: svc.workload_key.clone(),
                    kind,
                    reason,
                    lags: true,
                });
                continue;
            }
            if prior.as_ref().is_some_and(|a| a.exhausted) {
                out.held.push(Held {
                    workload_key: svc.workload_key.clone(),
                    kind,
                    reason: "refused by the agent".into(),
                    lags: true,
                });
                continue;
            }
            if count >= max_attempts {
                out.held.push(Held {
                    workload_key: svc.workload_key.clone(),
                    kind,
                    reason: format!("failed {count} time(s): retry budget exhausted"),
                    lags: true,
                });
                continue;
            }
            let attempt = count + 1;
            let (action_id, idempotency_key) = action_identity(
                tenant,
                agent,
                &svc.workload_key,
                kind,
                svc.pid,
                attempt,
                changed_at,
            );
            out.attempts.insert(
                akey,
                Attempt {
                    pid: svc.pid,
                    revision: changed_at.max(prior.map(|p| p.revision).unwrap_or(0)),
                    count: attempt,
                    exhausted: false,
                    succeeded_at_hash: None,
                },
            );
            out.planned.push(Planned {
                workload_key: svc.workload_key.clone(),
                kind,
                pid: svc.pid,
                attempt,
                revision: changed_at,
                action_id,
                idempotency_key,
            });
        }
    }
    out
}

/// Most drift reasons kept on an agent record (the item stays small).
pub const MAX_DRIFT: usize = 16;

/// The server's judgement of drift after a poll: reconcile run again over the
/// state the poll leaves behind (`observed.outbox` includes what it queued).
/// Every need of the desired state must have succeeded; what has not is a
/// reason: a live reconcile action (waiting for its result), a need held
/// (refused, budget spent on failures, the agent cannot run it) or one not
/// queued yet. Incident actions are not desired state and never count.
/// Deterministic, so an unchanged state yields identical reasons (no write).
pub fn judge(
    tenant: &TenantId,
    agent: &AgentId,
    desired: &DesiredSet,
    observed: &Observed<'_>,
    max_attempts: u32,
) -> Vec<Drift> {
    let outcome = reconcile(tenant, agent, desired, observed, max_attempts);
    let mut out: Vec<Drift> = observed
        .outbox
        .iter()
        .filter(|o| crate::incident::run::run_of_key(&o.action.idempotency_key).is_none())
        .map(|o| Drift {
            workload_key: o.action.target.clone(),
            kind: o.action.kind.as_str().to_owned(),
            reason: format!(
                "attempt {} {}: waiting for the agent's result",
                o.attempt,
                o.state.as_str()
            ),
        })
        .chain(outcome.held.into_iter().filter(|h| h.lags).map(|h| Drift {
            workload_key: h.workload_key,
            kind: h.kind.to_owned(),
            reason: h.reason,
        }))
        .chain(outcome.planned.into_iter().map(|p| Drift {
            workload_key: p.workload_key,
            kind: p.kind.to_owned(),
            reason: "not queued yet: planned for a later poll".into(),
        }))
        .collect();
    out.sort_by(|a, b| (&a.workload_key, &a.kind).cmp(&(&b.workload_key, &b.kind)));
    out.truncate(MAX_DRIFT);
    out
}

/// Deterministic action id and idempotency key for one attempt.
pub fn action_identity(
    tenant: &TenantId,
    agent: &AgentId,
    workload_key: &str,
    kind: &str,
    pid: u32,
    attempt: u32,
    revision: u64,
) -> (String, String) {
    let mut h = Sha256::new();
    for part in [
        tenant.as_str(),
        agent.as_str(),
        workload_key,
        kind,
        &pid.to_string(),
        &attempt.to_string(),
        &revision.to_string(),
    ] {
        h.update(part.as_bytes());
        h.update([0x1f]);
    }
    let digest = hex::encode(h.finalize());
    (format!("act_{}", &digest[..24]), format!("idem_{digest}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DesiredEntry, LiveState};
    use tether_proto::operator::{DesiredWorkload, Instrumentation, PythonSdk};
    use tether_proto::{Action, ActionMode};

    fn ids() -> (TenantId, AgentId) {
        (
            TenantId::parse("acme").expect("tenant"),
            AgentId::parse("agt_0123456789abcdef01234567").expect("agent"),
        )
    }

    fn desired(key: &str, inst: Option<Instrumentation>, sdk: PythonSdk, rev: u64) -> DesiredSet {
        let mut d = DesiredSet {
            revision: rev,
            ..DesiredSet::default()
        };
        if let Some(instrumentation) = inst {
            d.workloads.insert(
                key.into(),
                DesiredEntry {
                    workload: DesiredWorkload {
                        workload_key: key.into(),
                        instrumentation,
                        python_sdk: sdk,
                        llm_content: Default::default(),
                    },
                    changed_at_revision: rev,
                },
            );
        }
        d
    }

    fn svc(key: &str, pid: u32, instrumented: bool, sdk: bool) -> Service {
        Service {
            workload_key: key.into(),
            pid,
            exe: "/usr/bin/python3".into(),
            runtime: "python".into(),
            llm_providers: vec!["openai".into()],
            instrumented,
            python_sdk: sdk,
            labels: Default::default(),
            llm_content: Default::default(),
        }
    }

    fn live(key: &str, kind: &str) -> OutboxItem {
        OutboxItem {
            action: Action {
                id: "act_x".into(),
                kind: ActionKind::new(kind),
                target: key.into(),
                payload: serde_json::Value::Null,
                idempotency_key: "idem".into(),
                not_before_ms: 0,
                expires_at_ms: u64::MAX,
                mode: ActionMode::Execute,
                requires_capability: String::new(),
            },
            state: LiveState::Queued,
            attempt: 1,
            pid: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
            last_result: None,
        }
    }

    fn obs<'a>(
        services: &'a [Service],
        hash: &'a str,
        outbox: &'a [OutboxItem],
        attempts: &'a BTreeMap<String, Attempt>,
    ) -> Observed<'a> {
        Observed {
            services,
            services_hash: hash,
            outbox,
            attempts,
            abilities: Abilities {
                capabilities: all_caps(),
                action_kinds: None,
            },
        }
    }

    /// An agent with every capability the reconcile kinds require.
    fn all_caps() -> &'static [String] {
        Box::leak(vec!["ebpf".to_owned(), "systemd".to_owned()].into_boxed_slice())
    }

    fn kinds_of(o: &Outcome) -> Vec<&'static str> {
        kinds(o)
    }

    fn kinds(o: &Outcome) -> Vec<&'static str> {
        o.planned.iter().map(|p| p.kind).collect()
    }

    #[test]
    fn a_content_mode_change_on_an_instrumented_workload_instruments_again() {
        let (t, a) = ids();
        let k = "host:/usr/bin/python3";
        let mut d = desired(
            k,
            Some(Instrumentation::Instrumented),
            PythonSdk::Disabled,
            2,
        );
        if let Some(e) = d.workloads.get_mut(k) {
            e.workload.llm_content = tether_proto::operator::LlmContent::Redacted;
        }
        let plain = vec![svc(k, 10, true, false)];
        let none = BTreeMap::new();
        let h = tether_proto::services_hash(&plain);
        let got = reconcile(&t, &a, &d, &obs(&plain, &h, &[], &none), 3);
        assert_eq!(
            kinds(&got),
            vec!["instrument"],
            "observed none, desired redacted"
        );
        let mut redacted = plain.clone();
        redacted[0].llm_content = "redacted".into();
        let h = tether_proto::services_hash(&redacted);
        let got = reconcile(&t, &a, &d, &obs(&redacted, &h, &[], &none), 3);
        assert!(kinds(&got).is_empty(), "in line with the policy");
        // Back to none: instrument again, without content.
        let back = desired(
            k,
            Some(Instrumentation::Instrumented),
            PythonSdk::Disabled,
            3,
        );
        let got = reconcile(&t, &a, &back, &obs(&redacted, &h, &[], &none), 3);
        assert_eq!(kinds(&got), vec!["instrument"]);
        assert_ne!(
            tether_proto::services_hash(&plain),
            h,
            "the mode is in the hash"
        );
    }

    #[test]
    fn every_row_of_the_table() {
        use Instrumentation::{Instrumented, None as NoInst};
        use PythonSdk::{Disabled, Enabled};
        let (t, a) = ids();
        let k = "host:/usr/bin/python3";
        // (desired instrumentation, desired sdk, observed instrumented, observed sdk, expected)
        type Row = (
            Option<Instrumentation>,
            PythonSdk,
            bool,
            bool,
            &'static [&'static str],
        );
        let rows: &[Row] = &[
            (Some(Instrumented), Disabled, false, false, &["instrument"]),
            (Some(Instrumented), Disabled, true, false, &[]),
            (Some(NoInst), Disabled, true, false, &["uninstrument"]),
            (Some(NoInst), Disabled, false, false, &[]),
            (Some(NoInst), Enabled, false, false, &["enable_python_sdk"]),
            (Some(NoInst), Enabled, false, true, &[]),
            (Some(NoInst), Disabled, false, true, &["disable_python_sdk"]),
            (
                Some(Instrumented),
                Enabled,
                false,
                false,
                &["instrument", "enable_python_sdk"],
            ),
            (
                Some(NoInst),
                Disabled,
                true,
                true,
                &["uninstrument", "disable_python_sdk"],
            ),
            (None, Disabled, true, true, &[]),
            (None, Enabled, false, false, &[]),
        ];
        for (i, (inst, sdk, oi, os, want)) in rows.iter().enumerate() {
            let d = desired(k, *inst, *sdk, 3);
            let o = reconcile(
                &t,
                &a,
                &d,
                &obs(&[svc(k, 10, *oi, *os)], "h", &[], &BTreeMap::new()),
                3,
            );
            assert_eq!(kinds(&o), want.to_vec(), "row {i}");
        }
    }

    #[test]
    fn live_action_is_not_planned_twice() {
        let (t, a) = ids();
        let k = "host:/x";
        let d = desired(
            k,
            Some(Instrumentation::Instrumented),
            PythonSdk::Disabled,
            1,
        );
        let first = reconcile(
            &t,
            &a,
            &d,
            &obs(&[svc(k, 5, false, false)], "h", &[], &BTreeMap::new()),
            3,
        );
        assert_eq!(kinds(&first), vec!["instrument"]);
        let again = reconcile(
            &t,
            &a,
            &d,
            &obs(
                &[svc(k, 5, false, false)],
                "h",
                &[live(k, "instrument")],
                &first.attempts,
            ),
            3,
        );
        assert!(again.planned.is_empty());
    }

    #[test]
    fn retry_budget_then_new_pid_or_new_desired_change_reopens_it() {
        let (t, a) = ids();
        let k = "host:/x";
        let d = desired(
            k,
            Some(Instrumentation::Instrumented),
            PythonSdk::Disabled,
            1,
        );
        let mut attempts = BTreeMap::new();
        let mut ids_seen = BTreeSet::new();
        for n in 1..=3 {
            let o = reconcile(
                &t,
                &a,
                &d,
                &obs(&[svc(k, 5, false, false)], "h", &[], &attempts),
                3,
            );
            assert_eq!(o.planned.len(), 1, "attempt {n}");
            assert_eq!(o.planned[0].attempt, n);
            assert!(
                ids_seen.insert(o.planned[0].action_id.clone()),
                "ids differ per attempt"
            );
            attempts = o.attempts;
        }
        let spent = reconcile(
            &t,
            &a,
            &d,
            &obs(&[svc(k, 5, false, false)], "h", &[], &attempts),
            3,
        );
        assert!(spent.planned.is_empty());
        assert!(
            spent.held[0].reason.ends_with("retry budget exhausted"),
            "{:?}",
            spent.held[0]
        );
        // The workload restarted: same key, new pid -> re-instrumented.
        let restarted = reconcile(
            &t,
            &a,
            &d,
            &obs(&[svc(k, 6, false, false)], "h", &[], &attempts),
            3,
        );
        assert_eq!(kinds(&restarted), vec!["instrument"]);
        assert_eq!(restarted.planned[0].attempt, 1);
        // The operator re-applied the workload: a fresh budget.
        let d2 = desired(
            k,
            Some(Instrumentation::Instrumented),
            PythonSdk::Disabled,
            2,
        );
        let reapplied = reconcile(
            &t,
            &a,
            &d2,
            &obs(&[svc(k, 5, false, false)], "h", &[], &attempts),
            3,
        );
        assert_eq!(reapplied.planned.len(), 1);
    }

    #[test]
    fn refusal_exhausts_the_budget_at_once() {
        let (t, a) = ids();
        let k = "host:/x";
        let d = desired(
            k,
            Some(Instrumentation::Instrumented),
            PythonSdk::Disabled,
            1,
        );
        let mut attempts = BTreeMap::new();
        attempts.insert(
            attempt_key(k, "instrument"),
            Attempt {
                pid: 5,
                revision: 1,
                count: 1,
                exhausted: true,
                succeeded_at_hash: None,
            },
        );
        let o = reconcile(
            &t,
            &a,
            &d,
            &obs(&[svc(k, 5, false, false)], "h", &[], &attempts),
            3,
        );
        assert!(o.planned.is_empty());
        assert_eq!(o.held[0].reason, "refused by the agent");
    }

    #[test]
    fn identity_is_deterministic_and_distinct() {
        let (t, a) = ids();
        let x = action_identity(&t, &a, "w", "instrument", 1, 1, 0);
        assert_eq!(x, action_identity(&t, &a, "w", "instrument", 1, 1, 0));
        assert_ne!(x, action_identity(&t, &a, "w", "instrument", 2, 1, 0));
        assert_ne!(x, action_identity(&t, &a, "w", "uninstrument", 1, 1, 0));
        let other = TenantId::parse("other").expect("tenant");
        assert_ne!(x, action_identity(&other, &a, "w", "instrument", 1, 1, 0));
        assert!(x.0.starts_with("act_") && x.0.len() == 28);
    }

    #[test]
    fn an_action_the_agent_cannot_run_is_held_without_spending_the_budget() {
        let (t, a) = ids();
        let k = "host:/usr/bin/python3";
        let d = desired(
            k,
            Some(Instrumentation::Instrumented),
            PythonSdk::Disabled,
            1,
        );
        let services = [svc(k, 5, false, false)];
        let none = BTreeMap::new();
        // No eBPF: `instrument` requires it.
        let proc_only = ["proc".to_owned()];
        let mut o = obs(&services, "h", &[], &none);
        o.abilities = Abilities {
            capabilities: &proc_only,
            action_kinds: None,
        };
        let got = reconcile(&t, &a, &d, &o, 3);
        assert!(got.planned.is_empty());
        assert_eq!(
            got.held[0].reason,
            "the agent lacks the capability ebpf that instrument requires"
        );
        assert!(got.held[0].lags);
        assert_eq!(got.attempts, none, "no attempt counted");
        // A newer agent that reports its kinds, without `instrument` among them.
        let kinds = ["collect_evidence".to_owned()];
        o.abilities = Abilities {
            capabilities: all_caps(),
            action_kinds: Some(&kinds),
        };
        let got = reconcile(&t, &a, &d, &o, 3);
        assert!(got.planned.is_empty());
        assert!(got.held[0].reason.contains("cannot run instrument"));
        assert_eq!(got.attempts, none);
        // Once it can, the need is planned with a fresh budget.
        let kinds = ["instrument".to_owned()];
        o.abilities.action_kinds = Some(&kinds);
        let got = reconcile(&t, &a, &d, &o, 3);
        assert_eq!(kinds_of(&got), vec!["instrument"]);
        assert_eq!(got.planned[0].attempt, 1);
        assert_eq!(
            judge(&t, &a, &d, &o, 3)[0].reason,
            "not queued yet: planned for a later poll"
        );
    }
}
