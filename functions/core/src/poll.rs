//! The poll, planned as a pure function: from what one read returned, the request
//! and the tenant's desired state, decide the one atomic write (if any) and the
//! response.
//!
//! Invariants:
//! - Steady state (nothing changed, nothing pending, no result, `last_seen` written
//!   recently) plans no write at all.
//! - Services are stored only when their hash changed; an unchanged hash
//!   short-circuits even when a body came along. A changed hash without a body asks
//!   for a full resend instead of guessing.
//! - An action is handed out on every poll until the agent acknowledges it (any
//!   result phase); putting it in a response never counts as delivery. A queued
//!   action past its `expires_at` is finished as `expired`, visibly.
//! - Results are processed in the order sent and are idempotent: a result for an
//!   action that is no longer live (already final, or unknown) is acknowledged
//!   without a write.
//! - The server judges the applied revision ([`crate::reconcile::judge`]); the
//!   agent's own `applied_revision` claim is not stored. It and its drift reasons
//!   are written only when they change, so the steady poll still writes nothing.

use crate::model::{
    AgentView, Attempt, DesiredSet, DoneItem, FinalState, LiveState, OutboxItem, ServicesRecord,
};
use crate::port::{PollCommit, Transition};
use crate::reconcile::{attempt_key, capability_for, judge, reconcile, Abilities, Observed};
use crate::tenant::TenantId;
use std::collections::BTreeMap;
use tether_proto::{
    services_hash, Ack, Action, ActionKind, ActionMode, PollRequest, PollResponse, ResultAck,
    ResultPhase, TelemetryWindow, MAX_RESULTS_PER_POLL, MAX_TELEMETRY_PER_POLL, PROTOCOL_VERSION,
};

/// Most actions one poll queues; the rest are planned on the next polls. With
/// [`MAX_RESULTS_PER_POLL`] finishes (2 items each) and [`MAX_EXPIRIES_PER_POLL`],
/// a commit stays under DynamoDB's 100 items per transaction.
pub const MAX_ENQUEUE_PER_POLL: usize = 20;
pub const MAX_EXPIRIES_PER_POLL: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollSettings {
    pub poll_interval_ms: u64,
    /// `last_seen` is rewritten at most this often when nothing else changes.
    pub last_seen_write_interval_ms: u64,
    pub max_attempts: u32,
    /// Lifetime of a queued action not yet acknowledged.
    pub action_ttl_ms: u64,
}

impl Default for PollSettings {
    fn default() -> Self {
        Self {
            poll_interval_ms: 30_000,
            last_seen_write_interval_ms: 120_000,
            max_attempts: 3,
            action_ttl_ms: 3_600_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PollPlan {
    pub commit: Option<PollCommit>,
    /// The response, less telemetry acks (given once the queue took them) and any
    /// renewed credential.
    pub response: PollResponse,
    /// Telemetry to hand to the observations queue.
    pub telemetry: Vec<TelemetryWindow>,
    /// Reconciliation needs it saw but held back (retry budget, refusals).
    pub held: Vec<crate::reconcile::Held>,
}

pub fn plan_poll(
    tenant: &TenantId,
    view: &AgentView,
    req: &PollRequest,
    desired: &DesiredSet,
    now_ms: u64,
    s: &PollSettings,
) -> PollPlan {
    let mut agent = view.agent.clone();
    let mut changed = false;
    let mut response = PollResponse {
        protocol: PROTOCOL_VERSION,
        next_poll_after_ms: s.poll_interval_ms,
        desired_revision: desired.revision,
        ack: Ack {
            seq: req.seq,
            ..Ack::default()
        },
        ..PollResponse::default()
    };

    // Identity facts the agent reports: written only when they change. (Its
    // `applied_revision` is only its claim: the server judges that below.)
    let hb = &req.heartbeat;
    let abilities_changed =
        req.capabilities != agent.capabilities || req.action_kinds != agent.action_kinds;
    if (!hb.agent_version.is_empty() && hb.agent_version != agent.agent_version)
        || abilities_changed
        || hb.last_error != agent.last_error
        || hb.collectors != agent.collectors
        || agent.poll_interval_ms != s.poll_interval_ms
    {
        agent.collectors = hb.collectors.clone();
        if !hb.agent_version.is_empty() {
            agent.agent_version = hb.agent_version.clone();
        }
        agent.capabilities = req.capabilities.clone();
        agent.action_kinds = req.action_kinds.clone();
        agent.last_error = hb.last_error.clone();
        agent.poll_interval_ms = s.poll_interval_ms;
        changed = true;
    }
    // Piggyback on any write; never a reason for one.
    agent.spool_depth = hb.spool_depth;
    agent.vitals = hb
        .vitals
        .iter()
        .filter(|(_, v)| v.is_finite())
        .map(|(k, v)| (k.clone(), *v))
        .collect();

    if req.inventory_hash != agent.inventory_hash {
        match &req.inventory {
            Some(inv) => {
                agent.inventory = Some(inv.clone());
                agent.inventory_hash = req.inventory_hash.clone();
                changed = true;
            }
            None => response.send_full_inventory = true,
        }
    }

    let mut new_services: Option<ServicesRecord> = None;
    let stored_missing = view.services.is_none() && !agent.services_hash.is_empty();
    if req.services_hash != agent.services_hash || stored_missing {
        match &req.services {
            // The server's own hash of the body decides: an agent whose hash
            // disagrees with its body costs a body per poll, never a write per poll.
            Some(list) => {
                let hash = services_hash(list);
                if hash != agent.services_hash || stored_missing {
                    agent.services_hash = hash.clone();
                    new_services = Some(ServicesRecord {
                        hash,
                        services: list.clone(),
                        updated_at_ms: now_ms,
                    });
                    changed = true;
                }
            }
            None => response.send_full_services = true,
        }
    }

    // Results, in order, against a working copy of the live outbox.
    let mut live: BTreeMap<String, (OutboxItem, LiveState)> = view
        .outbox
        .iter()
        .map(|o| (o.action.id.clone(), (o.clone(), o.state)))
        .collect();
    let mut finished: Vec<(DoneItem, LiveState)> = Vec::new();
    let mut any_final = false;
    for r in req.results.iter().take(MAX_RESULTS_PER_POLL) {
        response.ack.results.push(ResultAck {
            action_id: r.action_id.clone(),
            phase: r.phase,
        });
        let Some((item, _)) = live.get_mut(&r.action_id) else {
            continue; // already final, or never ours: acknowledged, nothing to write
        };
        if item.action.idempotency_key != r.idempotency_key {
            continue;
        }
        match r.phase {
            ResultPhase::Received if item.state == LiveState::Queued => {
                item.state = LiveState::Delivered;
                item.updated_at_ms = now_ms;
            }
            ResultPhase::Started if item.state != LiveState::Started => {
                item.state = LiveState::Started;
                item.updated_at_ms = now_ms;
                item.last_result = Some(r.clone());
            }
            ResultPhase::Final => {
                if let Some((item, from)) = live.remove(&r.action_id) {
                    let state = FinalState::from_status(r.status);
                    let key = attempt_key(&item.action.target, item.action.kind.as_str());
                    let revision = desired
                        .get(&item.action.target)
                        .map(|e| e.changed_at_revision)
                        .unwrap_or(0);
                    let entry = agent.attempts.entry(key).or_insert(Attempt {
                        pid: item.pid,
                        revision,
                        count: item.attempt,
                        exhausted: false,
                        succeeded_at_hash: None,
                    });
                    match state {
                        FinalState::Refused => entry.exhausted = true,
                        FinalState::Succeeded | FinalState::DryRun => {
                            entry.succeeded_at_hash = Some(agent.services_hash.clone());
                        }
                        FinalState::Failed | FinalState::Expired => {}
                    }
                    finished.push((
                        DoneItem {
                            item,
                            state,
                            result: Some(r.clone()),
                            finished_at_ms: now_ms,
                        },
                        from,
                    ));
                    any_final = true;
                }
            }
            _ => {}
        }
    }

    // Queued actions nobody picked up in time.
    let expired: Vec<String> = live
        .values()
        .filter(|(o, _)| o.state == LiveState::Queued && o.action.expires_at_ms <= now_ms)
        .map(|(o, _)| o.action.id.clone())
        .take(MAX_EXPIRIES_PER_POLL)
        .collect();
    let any_expired = !expired.is_empty();
    for id in expired {
        if let Some((item, from)) = live.remove(&id) {
            finished.push((
                DoneItem {
                    item,
                    state: FinalState::Expired,
                    result: None,
                    finished_at_ms: now_ms,
                },
                from,
            ));
        }
    }

    // Reconcile only when something it depends on moved.
    let services_changed = new_services.is_some();
    let mut enqueue = Vec::new();
    let mut held = Vec::new();
    let services = new_services
        .as_ref()
        .or(view.services.as_ref())
        .map(|r| r.services.as_slice())
        .unwrap_or(&[]);
    if services_changed
        || desired.revision != agent.reconciled_revision
        || any_final
        || any_expired
        || agent.reconcile_pending
        || abilities_changed
    {
        let live_items: Vec<OutboxItem> = live.values().map(|(o, _)| o.clone()).collect();
        let outcome = reconcile(
            tenant,
            &agent.agent_id,
            desired,
            &Observed {
                services,
                services_hash: &agent.services_hash,
                outbox: &live_items,
                attempts: &agent.attempts,
                abilities: Abilities {
                    capabilities: &agent.capabilities,
                    action_kinds: agent.action_kinds.as_deref(),
                },
            },
            s.max_attempts,
        );
        let truncated = outcome.planned.len() > MAX_ENQUEUE_PER_POLL;
        let mut attempts = agent.attempts.clone();
        for p in outcome.planned.iter().take(MAX_ENQUEUE_PER_POLL) {
            if let Some(a) = outcome.attempts.get(&attempt_key(&p.workload_key, p.kind)) {
                attempts.insert(attempt_key(&p.workload_key, p.kind), a.clone());
            }
            enqueue.push(OutboxItem {
                action: Action {
                    id: p.action_id.clone(),
                    kind: ActionKind::new(p.kind),
                    target: p.workload_key.clone(),
                    payload: match desired.wants_llm_content(&p.workload_key) {
                        Some(c) if p.kind == ActionKind::INSTRUMENT => serde_json::json!({
                            "pid": p.pid,
                            "desired_revision": desired.revision,
                            "llm_content": c.as_str(),
                        }),
                        _ => serde_json::json!({ "pid": p.pid, "desired_revision": desired.revision }),
                    },
                    idempotency_key: p.idempotency_key.clone(),
                    not_before_ms: 0,
                    expires_at_ms: now_ms + s.action_ttl_ms,
                    mode: ActionMode::Execute,
                    requires_capability: capability_for(p.kind).into(),
                },
                state: LiveState::Queued,
                attempt: p.attempt,
                pid: p.pid,
                created_at_ms: now_ms,
                updated_at_ms: now_ms,
                last_result: None,
            });
        }
        held = outcome.held;
        if attempts != agent.attempts
            || agent.reconciled_revision != desired.revision
            || agent.reconcile_pending != truncated
        {
            agent.attempts = attempts;
            agent.reconciled_revision = desired.revision;
            agent.reconcile_pending = truncated;
            changed = true;
        }
    }

    // Drift: the desired revision counts as applied only when every need of it
    // succeeded; otherwise the last fully applied revision stays, with reasons.
    if agent.reconciled_revision == desired.revision {
        let after: Vec<OutboxItem> = live
            .values()
            .map(|(o, _)| o.clone())
            .chain(enqueue.iter().cloned())
            .collect();
        let drift = judge(
            tenant,
            &agent.agent_id,
            desired,
            &Observed {
                services,
                services_hash: &agent.services_hash,
                outbox: &after,
                attempts: &agent.attempts,
                abilities: Abilities {
                    capabilities: &agent.capabilities,
                    action_kinds: agent.action_kinds.as_deref(),
                },
            },
            s.max_attempts,
        );
        let applied = if drift.is_empty() {
            desired.revision
        } else {
            agent.applied_revision.min(desired.revision)
        };
        if applied != agent.applied_revision || drift != agent.drift {
            agent.applied_revision = applied;
            agent.drift = drift;
            changed = true;
        }
    }

    let transitions: Vec<Transition> = live
        .values()
        .filter(|(o, from)| o.state != *from)
        .map(|(o, from)| Transition::Advance {
            item: o.clone(),
            from: *from,
        })
        .chain(
            finished
                .into_iter()
                .map(|(done, from)| Transition::Finish { done, from }),
        )
        .collect();

    let write_needed = changed || !transitions.is_empty() || !enqueue.is_empty();
    if write_needed || now_ms.saturating_sub(agent.last_seen_ms) >= s.last_seen_write_interval_ms {
        agent.last_seen_ms = now_ms;
    }
    let commit = (write_needed || agent.last_seen_ms != view.agent.last_seen_ms).then(|| {
        let expected_version = agent.version;
        agent.version += 1;
        PollCommit {
            agent,
            expected_version,
            services: new_services,
            enqueue: enqueue.clone(),
            transitions,
        }
    });

    response.actions = live
        .values()
        .map(|(o, _)| o)
        .chain(enqueue.iter())
        .filter(|o| {
            o.state == LiveState::Queued
                && o.action.not_before_ms <= now_ms
                && o.action.expires_at_ms > now_ms
        })
        .map(|o| o.action.clone())
        .collect();

    PollPlan {
        commit,
        response,
        telemetry: req
            .telemetry
            .iter()
            .take(MAX_TELEMETRY_PER_POLL)
            .cloned()
            .collect(),
        held,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AgentRecord, DesiredEntry};
    use crate::tenant::AgentId;
    use tether_proto::operator::{DesiredWorkload, Drift, Instrumentation, PythonSdk};
    use tether_proto::{ActionResult, Heartbeat, ResultStatus, Service};

    const NOW: u64 = 1_800_000_000_000;
    const KEY: &str = "host:/usr/bin/python3";

    fn tenant() -> TenantId {
        TenantId::parse("acme").expect("tenant")
    }

    fn svc(pid: u32, instrumented: bool) -> Service {
        Service {
            workload_key: KEY.into(),
            pid,
            exe: "/usr/bin/python3".into(),
            runtime: "python".into(),
            llm_providers: vec!["openai".into()],
            instrumented,
            python_sdk: false,
            labels: Default::default(),
            llm_content: Default::default(),
        }
    }

    fn desired(rev: u64) -> DesiredSet {
        let mut d = DesiredSet {
            revision: rev,
            ..DesiredSet::default()
        };
        d.workloads.insert(
            KEY.into(),
            DesiredEntry {
                workload: DesiredWorkload {
                    workload_key: KEY.into(),
                    instrumentation: Instrumentation::Instrumented,
                    python_sdk: PythonSdk::Disabled,
                    llm_content: Default::default(),
                },
                changed_at_revision: rev,
            },
        );
        d
    }

    /// A stored agent whose services and reconciliation are up to date.
    fn settled(services: Vec<Service>, rev: u64) -> AgentView {
        let mut a = AgentRecord::new(
            AgentId::parse("agt_0123456789abcdef01234567").expect("agent"),
            "host".into(),
            "0.1.0".into(),
            NOW - 1_000,
            30_000,
        );
        a.version = 4;
        a.services_hash = services_hash(&services);
        a.reconciled_revision = rev;
        a.applied_revision = rev;
        a.capabilities = caps();
        a.agent_version = "0.1.0".into();
        AgentView {
            agent: a,
            outbox: vec![],
            services: Some(ServicesRecord {
                hash: services_hash(&services),
                services,
                updated_at_ms: NOW - 1_000,
            }),
        }
    }

    /// What the agent in these tests can do: eBPF and systemd.
    fn caps() -> Vec<String> {
        vec!["ebpf".into(), "systemd".into()]
    }

    fn steady_request(view: &AgentView) -> PollRequest {
        PollRequest {
            agent_id: view.agent.agent_id.to_string(),
            seq: 9,
            capabilities: view.agent.capabilities.clone(),
            action_kinds: view.agent.action_kinds.clone(),
            services_hash: view.agent.services_hash.clone(),
            heartbeat: Heartbeat {
                agent_version: "0.1.0".into(),
                ..Heartbeat::default()
            },
            ..PollRequest::default()
        }
    }

    #[test]
    fn steady_state_plans_no_write() {
        let view = settled(vec![svc(10, true)], 1);
        let plan = plan_poll(
            &tenant(),
            &view,
            &steady_request(&view),
            &desired(1),
            NOW,
            &PollSettings::default(),
        );
        assert_eq!(plan.commit, None);
        assert!(plan.response.actions.is_empty());
        assert_eq!(plan.response.ack.seq, 9);
        assert!(!plan.response.send_full_services);
    }

    #[test]
    fn last_seen_is_written_only_after_its_interval() {
        let view = settled(vec![svc(10, true)], 1);
        let s = PollSettings::default();
        let later = view.agent.last_seen_ms + s.last_seen_write_interval_ms;
        let plan = plan_poll(
            &tenant(),
            &view,
            &steady_request(&view),
            &desired(1),
            later,
            &s,
        );
        let c = plan.commit.expect("a touch");
        assert_eq!(c.agent.last_seen_ms, later);
        assert_eq!((c.expected_version, c.agent.version), (4, 5));
        assert!(c.services.is_none() && c.enqueue.is_empty() && c.transitions.is_empty());
    }

    #[test]
    fn changed_hash_without_body_asks_for_it_and_same_hash_with_body_is_ignored() {
        let view = settled(vec![svc(10, true)], 1);
        let mut req = steady_request(&view);
        req.services_hash = "0000000000000000".into();
        let plan = plan_poll(
            &tenant(),
            &view,
            &req,
            &desired(1),
            NOW,
            &PollSettings::default(),
        );
        assert!(plan.response.send_full_services);
        assert_eq!(plan.commit, None);

        let mut same = steady_request(&view);
        same.services = Some(vec![svc(10, true)]);
        let plan = plan_poll(
            &tenant(),
            &view,
            &same,
            &desired(1),
            NOW,
            &PollSettings::default(),
        );
        assert_eq!(plan.commit, None, "hash short-circuit");
    }

    #[test]
    fn new_services_are_stored_reconciled_and_the_action_handed_out() {
        let view = settled(vec![], 0);
        let mut req = steady_request(&view);
        let list = vec![svc(10, false)];
        req.services_hash = services_hash(&list);
        req.services = Some(list.clone());
        let plan = plan_poll(
            &tenant(),
            &view,
            &req,
            &desired(1),
            NOW,
            &PollSettings::default(),
        );
        let c = plan.commit.expect("write");
        assert_eq!(c.services.as_ref().map(|s| s.services.clone()), Some(list));
        assert_eq!(c.enqueue.len(), 1);
        assert_eq!(c.enqueue[0].action.kind.as_str(), "instrument");
        assert_eq!(c.enqueue[0].action.requires_capability, "ebpf");
        assert_eq!(c.agent.reconciled_revision, 1);
        assert_eq!(plan.response.actions, vec![c.enqueue[0].action.clone()]);
    }

    fn with_queued(mut view: AgentView, expires_at_ms: u64) -> (AgentView, Action) {
        let (id, idem) = crate::reconcile::action_identity(
            &tenant(),
            &view.agent.agent_id,
            KEY,
            "instrument",
            10,
            1,
            1,
        );
        let action = Action {
            id,
            kind: ActionKind::new("instrument"),
            target: KEY.into(),
            payload: serde_json::Value::Null,
            idempotency_key: idem,
            not_before_ms: 0,
            expires_at_ms,
            mode: ActionMode::Execute,
            requires_capability: "ebpf".into(),
        };
        view.outbox.push(OutboxItem {
            action: action.clone(),
            state: LiveState::Queued,
            attempt: 1,
            pid: 10,
            created_at_ms: NOW - 10,
            updated_at_ms: NOW - 10,
            last_result: None,
        });
        // As the poll that queued it judged: the revision waits for its result.
        view.agent.applied_revision = 0;
        view.agent.drift = vec![Drift {
            workload_key: KEY.into(),
            kind: "instrument".into(),
            reason: "attempt 1 queued: waiting for the agent's result".into(),
        }];
        (view, action)
    }

    fn result(a: &Action, phase: ResultPhase, status: Option<ResultStatus>) -> ActionResult {
        ActionResult {
            action_id: a.id.clone(),
            idempotency_key: a.idempotency_key.clone(),
            phase,
            status,
            exit_code: status.map(|_| 0),
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            message: String::new(),
            started_at_ms: None,
            finished_at_ms: None,
            evidence_refs: vec![],
        }
    }

    #[test]
    fn queued_actions_repeat_until_acknowledged() {
        let (view, action) = with_queued(settled(vec![svc(10, false)], 1), NOW + 60_000);
        let plan = plan_poll(
            &tenant(),
            &view,
            &steady_request(&view),
            &desired(1),
            NOW,
            &PollSettings::default(),
        );
        assert_eq!(plan.commit, None, "handing out is not delivery");
        assert_eq!(plan.response.actions, vec![action.clone()]);

        let mut req = steady_request(&view);
        req.results
            .push(result(&action, ResultPhase::Received, None));
        let plan = plan_poll(
            &tenant(),
            &view,
            &req,
            &desired(1),
            NOW,
            &PollSettings::default(),
        );
        assert!(plan.response.actions.is_empty());
        let c = plan.commit.expect("write");
        assert!(
            matches!(&c.transitions[..], [Transition::Advance { item, from: LiveState::Queued }] if item.state == LiveState::Delivered)
        );
        assert_eq!(plan.response.ack.results[0].phase, ResultPhase::Received);
    }

    #[test]
    fn final_result_finishes_the_action_and_replays_are_acknowledged_without_writes() {
        let (view, action) = with_queued(settled(vec![svc(10, false)], 1), NOW + 60_000);
        let mut req = steady_request(&view);
        req.results = vec![
            result(&action, ResultPhase::Received, None),
            result(&action, ResultPhase::Started, None),
            result(&action, ResultPhase::Final, Some(ResultStatus::Succeeded)),
        ];
        let plan = plan_poll(
            &tenant(),
            &view,
            &req,
            &desired(1),
            NOW,
            &PollSettings::default(),
        );
        let c = plan.commit.expect("write");
        assert!(
            matches!(&c.transitions[..], [Transition::Finish { done, from: LiveState::Queued }] if done.state == FinalState::Succeeded)
        );
        assert!(
            c.enqueue.is_empty(),
            "a success is not answered with a duplicate before a new report"
        );
        assert_eq!(plan.response.ack.results.len(), 3);

        // The same final result again, after the action left the outbox.
        let mut after = view.clone();
        after.outbox.clear();
        after.agent.attempts = c.agent.attempts.clone();
        after.agent.applied_revision = c.agent.applied_revision;
        after.agent.drift = c.agent.drift.clone();
        let mut replay = steady_request(&after);
        replay.results = vec![result(
            &action,
            ResultPhase::Final,
            Some(ResultStatus::Succeeded),
        )];
        // Observed state now instrumented.
        let mut inst = after.clone();
        inst.services = Some(ServicesRecord {
            hash: services_hash(&[svc(10, true)]),
            services: vec![svc(10, true)],
            updated_at_ms: NOW,
        });
        inst.agent.services_hash = services_hash(&[svc(10, true)]);
        replay.services_hash = inst.agent.services_hash.clone();
        let plan = plan_poll(
            &tenant(),
            &inst,
            &replay,
            &desired(1),
            NOW,
            &PollSettings::default(),
        );
        assert_eq!(plan.commit, None);
        assert_eq!(plan.response.ack.results.len(), 1);
    }

    #[test]
    fn refused_result_exhausts_the_budget() {
        let (view, action) = with_queued(settled(vec![svc(10, false)], 1), NOW + 60_000);
        let mut req = steady_request(&view);
        req.results = vec![result(
            &action,
            ResultPhase::Final,
            Some(ResultStatus::Refused),
        )];
        let plan = plan_poll(
            &tenant(),
            &view,
            &req,
            &desired(1),
            NOW,
            &PollSettings::default(),
        );
        let c = plan.commit.expect("write");
        assert!(c.enqueue.is_empty());
        assert_eq!(plan.held[0].reason, "refused by the agent");
    }

    #[test]
    fn failed_result_is_retried_within_budget() {
        let (view, action) = with_queued(settled(vec![svc(10, false)], 1), NOW + 60_000);
        let mut view = view;
        view.agent.attempts.insert(
            attempt_key(KEY, "instrument"),
            Attempt {
                pid: 10,
                revision: 1,
                count: 1,
                exhausted: false,
                succeeded_at_hash: None,
            },
        );
        let mut req = steady_request(&view);
        req.results = vec![result(
            &action,
            ResultPhase::Final,
            Some(ResultStatus::Failed),
        )];
        let plan = plan_poll(
            &tenant(),
            &view,
            &req,
            &desired(1),
            NOW,
            &PollSettings::default(),
        );
        let c = plan.commit.expect("write");
        assert_eq!(c.enqueue.len(), 1);
        assert_eq!(c.enqueue[0].attempt, 2);
        assert_ne!(c.enqueue[0].action.id, action.id);
    }

    #[test]
    fn expired_queued_action_is_finished_visibly() {
        let (view, _) = with_queued(settled(vec![svc(10, true)], 1), NOW - 1);
        let plan = plan_poll(
            &tenant(),
            &view,
            &steady_request(&view),
            &desired(1),
            NOW,
            &PollSettings::default(),
        );
        let c = plan.commit.expect("write");
        assert!(
            matches!(&c.transitions[..], [Transition::Finish { done, .. }] if done.state == FinalState::Expired)
        );
        assert!(plan.response.actions.is_empty());
    }

    #[test]
    fn desired_revision_change_reconciles_stored_services() {
        let view = settled(vec![svc(10, false)], 0);
        let plan = plan_poll(
            &tenant(),
            &view,
            &steady_request(&view),
            &desired(1),
            NOW,
            &PollSettings::default(),
        );
        let c = plan.commit.expect("write");
        assert_eq!(c.enqueue.len(), 1);
        assert!(
            c.services.is_none(),
            "stored services reused, not rewritten"
        );
    }

    #[test]
    fn a_large_reconcile_is_spread_over_polls_within_the_transaction_limit() {
        let many: Vec<Service> = (0..50)
            .map(|i| Service {
                workload_key: format!("host:/w{i}"),
                ..svc(100 + i, false)
            })
            .collect();
        let mut d = DesiredSet {
            revision: 1,
            ..DesiredSet::default()
        };
        for s in &many {
            d.workloads.insert(
                s.workload_key.clone(),
                DesiredEntry {
                    workload: DesiredWorkload {
                        workload_key: s.workload_key.clone(),
                        instrumentation: Instrumentation::Instrumented,
                        python_sdk: PythonSdk::Disabled,
                        llm_content: Default::default(),
                    },
                    changed_at_revision: 1,
                },
            );
        }
        let mut view = settled(vec![], 0);
        let mut req = steady_request(&view);
        req.services_hash = services_hash(&many);
        req.services = Some(many.clone());
        let mut queued = std::collections::BTreeSet::new();
        for round in 0..3 {
            let plan = plan_poll(&tenant(), &view, &req, &d, NOW, &PollSettings::default());
            let c = plan.commit.expect("write");
            assert!(c.item_count() <= 100);
            assert!(c.enqueue.len() <= MAX_ENQUEUE_PER_POLL, "round {round}");
            for o in &c.enqueue {
                assert!(
                    queued.insert(o.action.target.clone()),
                    "{} queued twice",
                    o.action.target
                );
            }
            // The next poll sees what this one stored.
            view.agent = c.agent.clone();
            view.outbox.extend(c.enqueue.iter().cloned());
            if let Some(s) = c.services {
                view.services = Some(s);
            }
            req.services = None;
        }
        assert_eq!(queued.len(), 50, "every need planned, across polls");
        let plan = plan_poll(&tenant(), &view, &req, &d, NOW, &PollSettings::default());
        assert_eq!(plan.commit, None, "settled once everything is queued");
    }

    #[test]
    fn a_body_that_disagrees_with_its_hash_is_stored_once() {
        let view = settled(vec![svc(10, true)], 1);
        let mut req = steady_request(&view);
        req.services_hash = "ffffffffffffffff".into();
        req.services = Some(vec![svc(10, true)]);
        let plan = plan_poll(
            &tenant(),
            &view,
            &req,
            &desired(1),
            NOW,
            &PollSettings::default(),
        );
        assert_eq!(
            plan.commit, None,
            "same list as stored: no write, whatever the agent's hash"
        );
    }

    #[test]
    fn telemetry_is_capped_and_passed_through() {
        let view = settled(vec![], 0);
        let mut req = steady_request(&view);
        req.telemetry = (0..100)
            .map(|i| TelemetryWindow {
                seq: i,
                ..TelemetryWindow::default()
            })
            .collect();
        let plan = plan_poll(
            &tenant(),
            &view,
            &req,
            &DesiredSet::default(),
            NOW,
            &PollSettings::default(),
        );
        assert_eq!(plan.telemetry.len(), MAX_TELEMETRY_PER_POLL);
        assert_eq!(plan.commit, None);
    }

    /// Plans a poll and returns the view the next poll would read.
    fn poll_once(view: &AgentView, req: &PollRequest, d: &DesiredSet) -> (PollPlan, AgentView) {
        let plan = plan_poll(&tenant(), view, req, d, NOW, &PollSettings::default());
        let mut next = view.clone();
        if let Some(c) = &plan.commit {
            next.agent = c.agent.clone();
            let done: Vec<String> = c
                .transitions
                .iter()
                .filter_map(|t| match t {
                    Transition::Finish { done, .. } => Some(done.item.action.id.clone()),
                    Transition::Advance { .. } => None,
                })
                .collect();
            next.outbox.retain(|o| !done.contains(&o.action.id));
            for t in &c.transitions {
                if let Transition::Advance { item, .. } = t {
                    if let Some(o) = next
                        .outbox
                        .iter_mut()
                        .find(|o| o.action.id == item.action.id)
                    {
                        *o = item.clone();
                    }
                }
            }
            next.outbox.extend(c.enqueue.iter().cloned());
            if let Some(svc) = &c.services {
                next.services = Some(svc.clone());
            }
        }
        (plan, next)
    }

    #[test]
    fn an_action_the_agent_cannot_run_is_held_without_spending_the_budget() {
        let mut view = settled(vec![svc(10, false)], 1);
        view.agent.applied_revision = 0;
        let mut req = steady_request(&view);
        // The agent reports its kinds: `instrument` is not among them.
        req.action_kinds = Some(vec!["collect_evidence".into()]);
        let (plan, view) = poll_once(&view, &req, &desired(1));
        let c = plan.commit.clone().expect("the new kinds are written");
        assert!(c.enqueue.is_empty(), "nothing queued for a sure refusal");
        assert!(c.agent.attempts.is_empty(), "no budget spent");
        assert_eq!(c.agent.action_kinds, req.action_kinds);
        assert!(plan.held[0].reason.contains("cannot run instrument"));
        assert_eq!(c.agent.applied_revision, 0, "revision 1 is not applied");
        assert_eq!(c.agent.drift.len(), 1);
        assert!(c.agent.drift[0].reason.contains("cannot run instrument"));
        // Steady: the same report again writes nothing.
        let (plan, view) = poll_once(&view, &steady_request(&view), &desired(1));
        assert_eq!(plan.commit, None);
        // The host gains the kind: planned at once, attempt 1.
        let mut req = steady_request(&view);
        req.action_kinds = Some(vec!["collect_evidence".into(), "instrument".into()]);
        let (plan, _) = poll_once(&view, &req, &desired(1));
        let c = plan.commit.expect("write");
        assert_eq!(c.enqueue.len(), 1);
        assert_eq!(c.enqueue[0].attempt, 1);
        assert_eq!(
            c.agent.drift[0].reason,
            "attempt 1 queued: waiting for the agent's result"
        );
    }

    #[test]
    fn the_applied_revision_lags_with_reasons_until_every_action_succeeded() {
        // The agent claims revision 1 at once; the server does not take its word.
        let mut view = settled(vec![], 0);
        view.agent.applied_revision = 0;
        let mut req = steady_request(&view);
        let list = vec![svc(10, false)];
        req.services_hash = services_hash(&list);
        req.services = Some(list);
        req.applied_revision = 1;
        let (plan, view) = poll_once(&view, &req, &desired(1));
        let c = plan.commit.expect("write");
        assert_eq!(c.agent.applied_revision, 0, "pending: not applied");
        assert_eq!(c.agent.drift[0].kind, "instrument");
        assert!(c.agent.drift[0]
            .reason
            .contains("waiting for the agent's result"));
        let action = c.enqueue[0].action.clone();

        // Failed: retried (a new attempt is pending), still lagging.
        let mut req = steady_request(&view);
        req.applied_revision = 1;
        req.results = vec![result(
            &action,
            ResultPhase::Final,
            Some(ResultStatus::Failed),
        )];
        let (plan, view) = poll_once(&view, &req, &desired(1));
        let c = plan.commit.expect("write");
        assert_eq!(c.agent.applied_revision, 0);
        assert!(
            c.agent.drift[0].reason.starts_with("attempt 2 queued"),
            "{:?}",
            c.agent.drift
        );
        let retry = c.enqueue[0].action.clone();

        // Refused: held, and the reason says so.
        let mut refused = steady_request(&view);
        refused.results = vec![result(
            &retry,
            ResultPhase::Final,
            Some(ResultStatus::Refused),
        )];
        let (plan, _) = poll_once(&view, &refused, &desired(1));
        let c = plan.commit.expect("write");
        assert_eq!(c.agent.applied_revision, 0);
        assert_eq!(c.agent.drift[0].reason, "refused by the agent");

        // Succeeded instead: the revision is applied and the reasons clear.
        let mut ok = steady_request(&view);
        ok.results = vec![result(
            &retry,
            ResultPhase::Final,
            Some(ResultStatus::Succeeded),
        )];
        let (plan, view) = poll_once(&view, &ok, &desired(1));
        let c = plan.commit.expect("write");
        assert_eq!(c.agent.applied_revision, 1);
        assert!(c.agent.drift.is_empty());
        // And the steady poll after it writes nothing.
        let (plan, _) = poll_once(&view, &steady_request(&view), &desired(1));
        assert_eq!(plan.commit, None);
    }

    #[test]
    fn a_spent_retry_budget_is_a_reason_the_revision_lags() {
        let mut view = settled(vec![svc(10, false)], 1);
        view.agent.attempts.insert(
            attempt_key(KEY, "instrument"),
            Attempt {
                pid: 10,
                revision: 1,
                count: 3,
                exhausted: false,
                succeeded_at_hash: None,
            },
        );
        let (plan, _) = poll_once(&view, &steady_request(&view), &desired(2));
        let c = plan.commit.expect("write");
        // Revision 2 changed the workload: a fresh budget, one attempt queued.
        assert_eq!(c.enqueue.len(), 1);
        let (plan, _) = poll_once(&view, &steady_request(&view), &{
            let mut d = desired(2);
            if let Some(e) = d.workloads.get_mut(KEY) {
                e.changed_at_revision = 1;
            }
            d
        });
        let c = plan.commit.expect("write");
        assert!(c.enqueue.is_empty());
        assert_eq!(
            c.agent.applied_revision, 1,
            "stays at the last fully applied"
        );
        assert_eq!(
            c.agent.drift[0].reason,
            "failed 3 time(s): retry budget exhausted"
        );
    }
}
