//! Every role over the in-memory ports (`incident::fake`): the whole chain for one
//! run, what each role sends and where, idempotency under redelivery, poison,
//! transient failures and tenant scoping. The e2e suites run the same roles over
//! DynamoDB, S3 and SQS.

use super::*;
use crate::incident::fake::{ManualClock, MemArtifacts, MemQueue, MemStore, Sent};
use crate::model::FinalState;

type Fake = Chain<MemStore, MemArtifacts, MemQueue, ManualClock>;

const T0: u64 = 1_800_000_000_000;

struct Rig {
    chain: Fake,
    store: MemStore,
    arts: MemArtifacts,
    queue: MemQueue,
    clock: ManualClock,
    t: TenantId,
    agent: AgentId,
    /// Delayed messages, delivered only when a test says time has passed.
    later: Vec<Sent>,
    /// Every message delivered, by receiving role.
    delivered: Vec<Stage>,
    /// Deliver every message twice (SQS's at-least-once).
    twice: bool,
    /// Checked sends not yet delivered.
    pending: Vec<Sent>,
}

impl Rig {
    fn new() -> Self {
        let (store, arts, queue, clock) = (
            MemStore::default(),
            MemArtifacts::default(),
            MemQueue::default(),
            ManualClock::at(T0),
        );
        let chain = Chain::new(
            store.clone(),
            arts.clone(),
            queue.clone(),
            clock.clone(),
            ChainConfig::default(),
        );
        Self {
            chain,
            store,
            arts,
            queue,
            clock,
            t: TenantId::parse("acme").expect("tenant"),
            agent: AgentId::parse("agt_0123456789abcdef01234567").expect("agent"),
            later: vec![],
            delivered: vec![],
            twice: false,
            pending: vec![],
        }
    }

    fn operator(&self) -> Principal {
        Principal {
            tenant: self.t.clone(),
            role: Role::Operator,
            subject: "key:ops".into(),
        }
    }

    /// One 30 s window ending now with the root filesystem at `pct`.
    async fn observe(&mut self, seq: u64, pct: f64) -> Vec<String> {
        let now = self.clock.now_ms();
        self.observe_window(TelemetryWindow {
            seq,
            start_ms: now - 30_000,
            end_ms: now,
            metrics: [("fs.root.used_pct".to_owned(), pct)].into(),
            events: vec![],
        })
        .await
    }

    /// One window as given; the clock moves to its end.
    async fn observe_window(&mut self, w: TelemetryWindow) -> Vec<String> {
        let now = self.clock.now_ms();
        if w.end_ms > now {
            self.clock.advance(w.end_ms - now);
        }
        let msg = ObservationMessage {
            tenant: self.t.as_str().into(),
            agent_id: self.agent.as_str().into(),
            windows: vec![w],
        };
        let body = serde_json::to_string(&msg).expect("json");
        let opened = self.chain.observe(&msg).await.expect("observe");
        if self.twice {
            self.chain
                .handle(Stage::Observer, &body)
                .await
                .expect("observe again");
        }
        let sent = self.check_sends(Stage::Observer);
        self.pending.extend(sent);
        opened
    }

    /// Moves what `from` sent into the rig's queues, checking each destination
    /// against the role's IAM grant.
    fn check_sends(&mut self, from: Stage) -> Vec<Sent> {
        let sent = self.queue.take();
        for s in &sent {
            assert!(
                from.sends_to().contains(&s.to),
                "the {} sent to the {}, outside its grant {:?}",
                from.as_str(),
                s.to.as_str(),
                from.sends_to()
            );
        }
        sent
    }

    /// Delivers every undelayed message until none is left; delayed ones wait.
    async fn pump(&mut self) {
        let mut ready: Vec<Sent> = std::mem::take(&mut self.pending);
        ready.extend(self.queue.take());
        for _ in 0..100 {
            let Some(s) = ready.first().cloned() else {
                return;
            };
            ready.remove(0);
            if s.delay_s > 0 {
                self.later.push(s);
                continue;
            }
            self.deliver(&s).await;
            ready.extend(self.check_sends(s.to));
        }
        panic!("the chain did not settle in 100 messages");
    }

    async fn deliver(&mut self, s: &Sent) {
        let body = serde_json::to_string(&s.msg).expect("json");
        self.chain
            .handle(s.to, &body)
            .await
            .unwrap_or_else(|e| panic!("the {} failed on {:?}: {e}", s.to.as_str(), s.msg));
        self.delivered.push(s.to);
        if self.twice {
            self.chain
                .handle(s.to, &body)
                .await
                .unwrap_or_else(|e| panic!("the {} failed again: {e}", s.to.as_str()));
        }
    }

    /// Time passes: delayed messages of `kind` are delivered (and what they send).
    async fn elapse(&mut self, ms: u64, to: Stage) {
        self.clock.advance(ms);
        let (due, keep): (Vec<Sent>, Vec<Sent>) = std::mem::take(&mut self.later)
            .into_iter()
            .partition(|s| s.to == to);
        self.later = keep;
        for s in due {
            self.deliver(&s).await;
            let next = self.check_sends(s.to);
            self.pending.extend(next);
            self.pump().await;
        }
    }

    /// The agent finishes every live action; the poll tells the executor.
    async fn agent_finishes(&mut self, state: FinalState) -> usize {
        self.agent_answers(|_| state).await
    }

    /// The agent finishes every live action with the state `f` gives its kind
    /// (a dry run always ends as one).
    async fn agent_answers(&mut self, f: impl Fn(&str) -> FinalState) -> usize {
        let live = self.store.outbox(&self.t);
        let mut runs = std::collections::BTreeSet::new();
        for (agent, item) in &live {
            let a = AgentId::parse(agent).expect("agent");
            let state = if item.action.mode == tether_proto::ActionMode::DryRun {
                FinalState::DryRun
            } else {
                f(item.action.kind.as_str())
            };
            assert!(self
                .store
                .finish(&self.t, &a, &item.action.id, state, self.clock.now_ms()));
            if let Some(run) = super::super::run::run_of_key(&item.action.idempotency_key) {
                runs.insert(run.to_owned());
            }
        }
        for run in runs {
            self.queue
                .send(
                    Stage::Executor,
                    &StageMessage::ActionsChanged {
                        tenant: self.t.clone(),
                        run_id: run,
                    },
                    0,
                )
                .await
                .expect("send");
        }
        self.pump().await;
        live.len()
    }

    fn only_run(&self) -> RunManifest {
        let runs = self.store.runs();
        assert_eq!(runs.len(), 1, "runs: {runs:?}");
        runs[0].clone()
    }

    fn kinds(m: &RunManifest) -> Vec<&'static str> {
        m.chain.iter().map(|l| l.kind.as_str()).collect()
    }

    async fn set_policy(&self, settings: crate::incident::policy::Settings) {
        self.store
            .put_policy(
                &self.t,
                &TenantPolicy {
                    settings,
                    rego: None,
                },
            )
            .await
            .expect("policy");
    }

    /// The tenant lets approved destructive steps run, for real.
    async fn allow_destructive(&self) {
        self.set_policy(crate::incident::policy::Settings {
            dry_run: Some(false),
            allow_destructive: Some(true),
            ..Default::default()
        })
        .await;
    }

    /// A disk filling up until a run awaits approval; returns it.
    async fn disk_fills(&mut self) -> RunManifest {
        assert!(self.observe(1, 50.0).await.is_empty());
        self.clock.advance(30_000);
        assert_eq!(self.observe(2, 97.0).await.len(), 1);
        self.pump().await;
        let m = self.only_run();
        assert_eq!(m.status, RunStatus::AwaitingApproval, "{m:?}");
        m
    }

    async fn approve(&mut self, run: &str) {
        self.chain
            .decide(&self.operator(), run, true, "go")
            .await
            .expect("approve");
        self.pump().await;
    }

    async fn proposal(&self, m: &RunManifest) -> Artifact {
        let id = &m
            .link(ArtifactKind::RemediationProposal)
            .expect("proposal")
            .id;
        self.arts
            .get(&self.t, id)
            .await
            .expect("read")
            .expect("stored")
    }

    /// A disk filling up, approved, fixed by the agent, verified and remembered.
    async fn disk_full_run(&mut self) -> RunManifest {
        self.allow_destructive().await;
        assert!(self.observe(1, 50.0).await.is_empty());
        self.clock.advance(30_000);
        let opened = self.observe(2, 97.0).await;
        assert_eq!(opened.len(), 1, "one run opens on the rising edge");
        self.pump().await;
        let m = self.only_run();
        assert_eq!(
            Self::kinds(&m),
            [
                "observation_summary",
                "anomaly_finding",
                "root_cause_hypothesis",
                "remediation_proposal",
                "execution_plan"
            ]
        );
        assert_eq!(m.status, RunStatus::AwaitingApproval, "{m:?}");
        assert!(
            self.store.outbox(&self.t).is_empty(),
            "nothing runs before approval"
        );

        self.chain
            .decide(&self.operator(), &m.run_id, true, "go")
            .await
            .expect("approve");
        // The api sends the approval; the executor queues the first step.
        self.pump().await;
        let mut steps = 0;
        for _ in 0..10 {
            let n = self.agent_finishes(FinalState::Succeeded).await;
            if n == 0 {
                break;
            }
            steps += n;
        }
        assert!(steps >= 2, "evidence and at least one fix ran: {steps}");
        let m = self.only_run();
        assert_eq!(m.status, RunStatus::Verifying, "{m:?}");

        // The fix shows in the next window; the verifier looks after its delay.
        self.clock.advance(30_000);
        assert!(self.observe(3, 40.0).await.is_empty());
        self.elapse(60_000, Stage::Verifier).await;
        self.only_run()
    }
}

#[tokio::test]
async fn the_whole_chain_runs_over_the_ports_each_role_sending_only_where_its_grant_allows() {
    let mut rig = Rig::new();
    let m = rig.disk_full_run().await;
    assert_eq!(m.status, RunStatus::Closed, "{m:?}");
    assert_eq!(m.outcome, "resolved");
    assert_eq!(
        Rig::kinds(&m),
        [
            "observation_summary",
            "anomaly_finding",
            "root_cause_hypothesis",
            "remediation_proposal",
            "execution_plan",
            "execution_result",
            "verification_result",
            "incident_report"
        ]
    );
    // Every role took part.
    for s in Stage::ALL.iter().filter(|s| **s != Stage::Observer) {
        assert!(rig.delivered.contains(s), "the {} never ran", s.as_str());
    }
    // Memory learned what ran, under the run's fingerprint.
    let prior = rig
        .store
        .prior_attempts(&rig.t, &m.fingerprint)
        .await
        .expect("prior");
    assert_eq!(prior.len(), 1);
    assert_eq!(prior[0].run_id, m.run_id);
    assert_eq!(prior[0].verdict, Verdict::Improved);
    // The hourly budget counted each queued step once.
    let now = rig.clock.now_ms();
    let counted = rig
        .store
        .executions_this_hour(&rig.t, now)
        .await
        .expect("count");
    assert_eq!(counted as usize, m.actions.len());
    let audit: Vec<String> = rig
        .store
        .audit_of(&rig.t)
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(
        audit.contains(&"approval_requested".to_owned()),
        "{audit:?}"
    );
    assert!(audit.contains(&"plan_approved".to_owned()), "{audit:?}");
    assert_eq!(rig.arts.len(), 8, "one artifact per link");
}

#[tokio::test]
async fn every_message_delivered_twice_gives_the_same_run() {
    let mut once = Rig::new();
    let a = once.disk_full_run().await;
    let mut twice = Rig::new();
    twice.twice = true;
    let b = twice.disk_full_run().await;
    let ids = |m: &RunManifest| m.chain.iter().map(|l| l.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&a),
        ids(&b),
        "content-addressed artifacts, appended once"
    );
    assert_eq!(a.actions, b.actions);
    assert_eq!(a.outcome, b.outcome);
    assert_eq!(once.arts.len(), twice.arts.len());
    let now = twice.clock.now_ms();
    assert_eq!(
        twice
            .store
            .executions_this_hour(&twice.t, now)
            .await
            .expect("count") as usize,
        b.actions.len(),
        "a redelivered step is neither queued nor counted twice"
    );
}

#[tokio::test]
async fn each_role_refuses_another_roles_message_as_poison() {
    let rig = Rig::new();
    let verify = serde_json::to_string(&StageMessage::Verify {
        tenant: rig.t.clone(),
        run_id: "run_x".into(),
        attempt: 0,
    })
    .expect("json");
    let artifact = serde_json::to_string(&StageMessage::Artifact {
        tenant: rig.t.clone(),
        run_id: "run_x".into(),
        artifact_id: "art_x".into(),
    })
    .expect("json");
    for stage in Stage::ALL {
        let wrong = if stage == Stage::Verifier {
            &artifact
        } else {
            &verify
        };
        let err = rig.chain.handle(stage, wrong).await.expect_err("refused");
        let RoleError::Permanent(why) = &err else {
            panic!("{}: {err:?} should be permanent", stage.as_str());
        };
        let expected = if stage == Stage::Observer {
            "malformed observation message".to_owned()
        } else {
            format!("the {} cannot handle", stage.as_str().replace('_', " "))
        };
        assert!(why.contains(&expected), "{}: {why}", stage.as_str());
        let err = rig
            .chain
            .handle(stage, "{not json")
            .await
            .expect_err("malformed");
        assert!(matches!(err, RoleError::Permanent(ref m) if m.contains("malformed")));
    }
    assert!(rig.store.runs().is_empty());
}

#[tokio::test]
async fn a_forged_or_damaged_artifact_is_poison_and_changes_nothing() {
    let mut rig = Rig::new();
    rig.observe(1, 50.0).await;
    rig.clock.advance(30_000);
    rig.observe(2, 97.0).await;
    let sent = std::mem::take(&mut rig.pending);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].to, Stage::Analyzer);
    let StageMessage::Artifact {
        run_id,
        artifact_id,
        ..
    } = sent[0].msg.clone()
    else {
        panic!("{:?}", sent[0].msg)
    };
    let forged = ArtifactInput {
        tenant: rig.t.clone(),
        run_id: run_id.clone(),
        artifact_id: "art_0000".into(),
    };
    let err = rig.chain.analyze(&forged).await.expect_err("forged");
    assert!(matches!(err, RoleError::Permanent(ref m) if m.contains("is not part of run")));

    // Another tenant naming this run finds nothing.
    let other = ArtifactInput {
        tenant: TenantId::parse("globex").expect("tenant"),
        run_id: run_id.clone(),
        artifact_id: artifact_id.clone(),
    };
    let err = rig.chain.analyze(&other).await.expect_err("cross-tenant");
    assert!(matches!(err, RoleError::Permanent(ref m) if m.contains("no run")));

    rig.arts
        .damage(&rig.t, &artifact_id, b"{\"tampered\":true}".to_vec());
    let real = ArtifactInput {
        tenant: rig.t.clone(),
        run_id,
        artifact_id,
    };
    let err = rig.chain.analyze(&real).await.expect_err("damaged");
    assert!(matches!(err, RoleError::Permanent(ref m) if m.contains("corrupt")));
    assert_eq!(Rig::kinds(&rig.only_run()), ["observation_summary"]);
    assert!(rig.queue.take().is_empty());
}

#[tokio::test]
async fn a_throttled_write_is_transient_and_the_redelivery_completes_once() {
    let mut rig = Rig::new();
    rig.observe(1, 50.0).await;
    rig.clock.advance(30_000);
    rig.observe(2, 97.0).await;
    let sent = std::mem::take(&mut rig.pending);
    let input: ArtifactInput = sent[0].msg.clone().try_into().expect("artifact message");
    rig.store.fail_next("update_run", StoreError::Throttled);
    let err = rig.chain.analyze(&input).await.expect_err("throttled");
    assert!(matches!(err, RoleError::Transient(_)), "{err:?}");
    assert!(rig.queue.take().is_empty(), "nothing sent on failure");
    rig.chain.analyze(&input).await.expect("redelivered");
    assert_eq!(
        Rig::kinds(&rig.only_run()),
        [
            "observation_summary",
            "anomaly_finding",
            "root_cause_hypothesis"
        ]
    );
    let next = rig.queue.take();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].to, Stage::Planner);
}

#[tokio::test]
async fn the_last_try_marks_the_run_failed_with_its_reason() {
    let mut rig = Rig::new();
    rig.observe(1, 50.0).await;
    rig.clock.advance(30_000);
    let run = rig.observe(2, 97.0).await.remove(0);
    rig.pending.clear();
    let poison = serde_json::to_string(&StageMessage::Verify {
        tenant: rig.t.clone(),
        run_id: run.clone(),
        attempt: 0,
    })
    .expect("json");
    let max = rig.chain.config().max_receives;
    rig.chain
        .handle_delivery(Stage::Planner, &poison, max - 1)
        .await
        .expect_err("poison");
    assert_eq!(
        rig.only_run().status,
        RunStatus::Open,
        "not yet the last try"
    );
    rig.chain
        .handle_delivery(Stage::Planner, &poison, max)
        .await
        .expect_err("poison");
    let m = rig.only_run();
    assert_eq!(m.status, RunStatus::Failed);
    let f = m.failure.expect("failure");
    assert_eq!(f.stage, Stage::Planner);
    assert!(
        f.reason.contains("planner gave up after 5 tries"),
        "{}",
        f.reason
    );
    assert!(rig
        .store
        .audit_of(&rig.t)
        .iter()
        .any(|e| e.action == "run_failed" && e.run_id == run));
}

#[tokio::test]
async fn an_unanswered_approval_expires_and_nothing_runs() {
    let mut rig = Rig::new();
    rig.observe(1, 50.0).await;
    rig.clock.advance(30_000);
    rig.observe(2, 97.0).await;
    rig.pump().await;
    assert_eq!(rig.only_run().status, RunStatus::AwaitingApproval);
    let expires = rig.only_run().approval_expires_at_ms.expect("deadline");
    let wait = expires - rig.clock.now_ms();
    rig.elapse(wait, Stage::Executor).await;
    let m = rig.only_run();
    assert_eq!(m.outcome, "expired", "{m:?}");
    assert!(rig.store.outbox(&rig.t).is_empty());
    assert!(
        m.link(ArtifactKind::IncidentReport).is_some(),
        "memory closed it"
    );
    let err = rig
        .chain
        .decide(&rig.operator(), &m.run_id, true, "late")
        .await
        .expect_err("too late");
    assert!(matches!(err, ControlError::Conflict(_)), "{err:?}");
}

#[tokio::test]
async fn operator_reads_are_scoped_to_the_tenant() {
    let mut rig = Rig::new();
    rig.disk_full_run().await;
    let run = rig.only_run();
    let other = TenantId::parse("globex").expect("tenant");
    assert!(rig.chain.list_runs(&other).await.expect("list").is_empty());
    assert!(matches!(
        rig.chain.get_run(&other, &run.run_id).await,
        Err(ControlError::NotFound(_))
    ));
    assert!(rig
        .chain
        .evidence(&other, &run.run_id)
        .await
        .map(|e| e.is_empty())
        .unwrap_or(true));
    assert!(matches!(
        rig.chain.get_artifact(&other, &run.chain[0].id).await,
        Err(ControlError::NotFound(_))
    ));
    let mine = rig.chain.list_runs(&rig.t).await.expect("list");
    assert_eq!(mine.len(), 1);
    assert_eq!(
        rig.chain
            .evidence(&rig.t, &run.run_id)
            .await
            .expect("evidence")
            .len(),
        2,
        "the opening window and the one after the fix"
    );
}

#[tokio::test]
async fn the_planner_proposes_only_what_the_agent_can_run_and_names_the_better_step_it_cannot() {
    // An older agent that does not report its kinds: the whole runbook, with a note.
    let mut rig = Rig::new();
    let m = rig.disk_fills().await;
    let Body::RemediationProposal {
        proposals,
        unavailable,
        note,
        ..
    } = rig.proposal(&m).await.body
    else {
        panic!("not a proposal")
    };
    let actions: Vec<&str> = proposals.iter().map(|p| p.action.as_str()).collect();
    assert_eq!(
        actions,
        ["collect_evidence", "rotate_logs", "vacuum_journal"]
    );
    assert!(unavailable.is_empty());
    assert!(note.expect("note").contains("did not report"));

    // A host without journald (and no log directories allowed): only evidence
    // can run; the better steps are listed with the reason.
    let mut rig = Rig::new();
    rig.store.set_agent_kinds(
        &rig.t,
        &rig.agent,
        Some(&["collect_evidence", "signal_process"]),
    );
    let m = rig.disk_fills().await;
    let Body::RemediationProposal {
        proposals,
        unavailable,
        note,
        ..
    } = rig.proposal(&m).await.body
    else {
        panic!("not a proposal")
    };
    let steps: Vec<(u32, &str)> = proposals
        .iter()
        .map(|p| (p.step, p.action.as_str()))
        .collect();
    assert_eq!(steps, [(1, "collect_evidence")]);
    let left: Vec<&str> = unavailable.iter().map(|u| u.action.as_str()).collect();
    assert_eq!(left, ["rotate_logs", "vacuum_journal"]);
    assert!(
        unavailable[0]
            .reason
            .contains("the agent cannot run rotate_logs on its host"),
        "{unavailable:?}"
    );
    assert_eq!(unavailable[0].runbook, "disk:rotate-logs");
    assert_eq!(note, None);
}

#[tokio::test]
async fn the_executor_never_queues_a_kind_the_agent_lost_and_records_the_refusal() {
    let mut rig = Rig::new();
    rig.allow_destructive().await;
    let all = ["collect_evidence", "rotate_logs", "vacuum_journal"];
    rig.store.set_agent_kinds(&rig.t, &rig.agent, Some(&all));
    let m = rig.disk_fills().await;
    // Between the plan and the approval, journald went away on the host.
    rig.store.set_agent_kinds(
        &rig.t,
        &rig.agent,
        Some(&["collect_evidence", "rotate_logs"]),
    );
    rig.approve(&m.run_id).await;
    let queued: Vec<String> = rig
        .store
        .outbox(&rig.t)
        .into_iter()
        .map(|(_, o)| o.action.kind.as_str().to_owned())
        .collect();
    assert_eq!(queued, ["collect_evidence", "rotate_logs"]);
    let m = rig.only_run();
    let vacuum = m
        .actions
        .iter()
        .find(|a| a.action == "vacuum_journal")
        .expect("recorded in the run");
    assert_eq!(vacuum.state, "refused");
    assert!(
        vacuum.message.contains("no longer reports vacuum_journal"),
        "{}",
        vacuum.message
    );
    // The refusal is a finished step: the run completes once the others do.
    rig.agent_finishes(FinalState::Succeeded).await;
    let m = rig.only_run();
    assert_eq!(m.status, RunStatus::Verifying, "{m:?}");
    let now = rig.clock.now_ms();
    assert_eq!(
        rig.store
            .executions_this_hour(&rig.t, now)
            .await
            .expect("count"),
        2,
        "a refused step is not counted"
    );
}

#[tokio::test]
async fn a_fault_cleared_after_the_fix_was_refused_is_credited_to_no_action_and_memory_keeps_only_what_ran(
) {
    let mut rig = Rig::new();
    rig.allow_destructive().await;
    let m = rig.disk_fills().await;
    rig.approve(&m.run_id).await;
    // Evidence is collected; the rotation is refused, the vacuum fails.
    rig.agent_answers(|kind| match kind {
        "collect_evidence" => FinalState::Succeeded,
        "rotate_logs" => FinalState::Refused,
        _ => FinalState::Failed,
    })
    .await;
    assert_eq!(rig.only_run().status, RunStatus::Verifying);
    // Someone freed the disk by hand.
    rig.clock.advance(30_000);
    rig.observe(3, 40.0).await;
    rig.elapse(60_000, Stage::Verifier).await;
    let m = rig.only_run();
    assert_eq!(m.status, RunStatus::Closed);
    assert_eq!(m.outcome, "inconclusive");
    let id = &m
        .link(ArtifactKind::VerificationResult)
        .expect("verdict")
        .id;
    let v = rig
        .arts
        .get(&rig.t, id)
        .await
        .expect("read")
        .expect("stored");
    let Body::VerificationResult { verdict, why, .. } = v.body else {
        panic!("not a verdict")
    };
    assert_eq!(verdict, Verdict::Inconclusive);
    assert!(why.contains("credited to no action"), "{why}");
    assert!(why.contains("no action changed the host"), "{why}");
    let prior = rig
        .store
        .prior_attempts(&rig.t, &m.fingerprint)
        .await
        .expect("prior");
    assert_eq!(
        prior[0].actions,
        ["collect_evidence"],
        "refused and failed steps are not remembered"
    );

    // The next episode keeps the runbook's order: nothing that did not run is demoted.
    rig.clock.advance(30_000);
    rig.observe(4, 50.0).await;
    rig.clock.advance(30_000);
    assert_eq!(rig.observe(5, 96.0).await.len(), 1);
    rig.pump().await;
    let second = rig
        .store
        .runs()
        .into_iter()
        .find(|r| r.run_id != m.run_id)
        .expect("second run");
    let Body::RemediationProposal { proposals, .. } = rig.proposal(&second).await.body else {
        panic!("not a proposal")
    };
    let actions: Vec<&str> = proposals.iter().map(|p| p.action.as_str()).collect();
    assert_eq!(
        actions,
        ["collect_evidence", "rotate_logs", "vacuum_journal"]
    );
    assert!(proposals.iter().all(|p| !p.rationale.contains("tried")));
}

#[tokio::test]
async fn a_successful_read_only_step_alone_is_not_credited() {
    let mut rig = Rig::new();
    // Dry-run off, destructive steps blocked (the default): only evidence runs.
    rig.set_policy(crate::incident::policy::Settings {
        dry_run: Some(false),
        ..Default::default()
    })
    .await;
    let m = rig.disk_fills().await;
    rig.approve(&m.run_id).await;
    assert_eq!(rig.agent_finishes(FinalState::Succeeded).await, 1);
    rig.clock.advance(30_000);
    rig.observe(3, 40.0).await;
    rig.elapse(60_000, Stage::Verifier).await;
    let m = rig.only_run();
    assert_eq!(m.outcome, "inconclusive", "{m:?}");
}

#[tokio::test]
async fn a_counter_signal_is_judged_per_minute_not_per_partial_window() {
    let mut rig = Rig::new();
    let window = |seq: u64, start_ms: u64, end_ms: u64, kills: f64| TelemetryWindow {
        seq,
        start_ms,
        end_ms,
        metrics: [("oom.kills".to_owned(), kills)].into(),
        events: vec![],
    };
    assert!(rig
        .observe_window(window(1, T0 - 30_000, T0, 0.0))
        .await
        .is_empty());
    // The kill lands in a 5-second window (an agent that just started): 12/min.
    let opened = rig.observe_window(window(2, T0, T0 + 5_000, 1.0)).await;
    assert_eq!(opened.len(), 1);
    rig.pump().await;
    let m = rig.only_run();
    assert_eq!(m.family, "oom_kill");
    rig.chain
        .decide(&rig.operator(), &m.run_id, true, "go")
        .await
        .expect("approve");
    rig.pump().await;
    while rig.agent_finishes(FinalState::Succeeded).await > 0 {}
    // Two kills in the next full 30-second window: 4/min, fewer than before,
    // though a raw count (2 against 1) would read as worse.
    rig.clock.advance(30_000);
    rig.observe_window(window(3, T0 + 5_000, T0 + 35_000, 2.0))
        .await;
    rig.elapse(60_000, Stage::Verifier).await;
    let m = rig.only_run();
    let (_, v) = rig
        .chain
        .linked(&rig.t, &m, ArtifactKind::VerificationResult)
        .await
        .expect("verification");
    let Body::VerificationResult { verdict, why, .. } = &v.body else {
        panic!("{v:?}")
    };
    assert_eq!(*verdict, Verdict::Unchanged, "{why}");
    assert!(why.contains("4.0") && why.contains("12.0"), "{why}");
}
