//! The seven roles as use cases over the ports, plus the operator's side (list,
//! show, approve, reject, audit). Each function's `main` wires one role's
//! handler to its queue; the local runner wires all of them.
//!
//! Invariants:
//! - Every handler is idempotent: it first looks for its own artifact in the run's
//!   manifest and, when present, only re-sends the next message; artifacts are
//!   content-addressed and derived from inputs only, outbox actions have derived
//!   ids created conditionally. A handler killed anywhere resumes on redelivery.
//! - Handlers never touch a host: the executor writes to an agent's outbox, and
//!   the agent runs the action on its next poll.
//! - Waiting (for approval, results, fresh evidence) is an SQS delay, never a sleep.
//! - A [`RoleError::Permanent`] (a malformed message, a missing run) is retried
//!   like any failure so that it ends in the dead-letter queue after the queue's
//!   bounded tries; on the last try the run is marked failed with the reason.

use super::artifact::{
    Artifact, ArtifactKind, Body, ChainEntry, EvidenceRef, PriorAttempt, Stage, StepResult,
    Verdict, SCHEMA_VERSION,
};
use super::catalog;
use super::observe::Thresholds;
use super::policy::{Gate, PolicyError, TenantPolicy};
use super::run::{
    action_id, fingerprint, idempotency_key, run_id, ApprovalRecord, ArtifactStore, AuditEntry,
    EvidencePoint, Failure, IncidentStore, MarkerEntry, Markers, PriorRecord, RunAction,
    RunManifest, RunStatus, StageMessage, StageQueue,
};
use crate::model::{LiveState, OutboxItem};
use crate::port::{Clock, StoreError};
use crate::tenant::{AgentId, Principal, Role, TenantId};
use crate::ControlError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tether_proto::{Action, ActionKind, ActionMode, TelemetryWindow};

/// The observations queue's message, as the api sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservationMessage {
    pub tenant: String,
    pub agent_id: String,
    pub windows: Vec<TelemetryWindow>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    /// Worth retrying: storage or a queue was unavailable, or a race was lost.
    #[error("transient: {0}")]
    Transient(String),
    /// Will not succeed on retry: a malformed message, a missing run or artifact.
    #[error("{0}")]
    Permanent(String),
}

impl From<StoreError> for RoleError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt(m) => Self::Permanent(format!("corrupt stored data: {m}")),
            other => Self::Transient(other.to_string()),
        }
    }
}

fn perm(m: impl Into<String>) -> RoleError {
    RoleError::Permanent(m.into())
}

/// Timing and bounds of the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainConfig {
    pub thresholds: Thresholds,
    /// Windows kept per host (in its stored observer state).
    pub history: usize,
    /// After a run opens, new runs for the same agent and signal are suppressed
    /// this long (or until the run closes).
    pub suppress_ms: u64,
    /// The observer records evidence for a run this long after it opened.
    pub collect_ms: u64,
    /// The verifier looks this long after the action finished (SQS delay, ≤ 900).
    pub verify_delay_s: u32,
    /// Re-checks for missing evidence before calling it inconclusive.
    pub verify_attempts: u32,
    /// The executor re-checks outstanding actions this often (SQS delay, ≤ 900).
    pub check_actions_s: u32,
    /// Incident actions expire this long after they are queued.
    pub action_ttl_ms: u64,
    /// SQS receives before a message goes to the dead-letter queue.
    pub max_receives: u32,
}

impl Default for ChainConfig {
    fn default() -> Self {
        Self {
            thresholds: Thresholds::default(),
            history: 10,
            suppress_ms: 30 * 60_000,
            collect_ms: 60 * 60_000,
            verify_delay_s: 60,
            verify_attempts: 3,
            check_actions_s: 60,
            action_ttl_ms: 15 * 60_000,
            max_receives: 5,
        }
    }
}

/// A run the observer decided to open (or, redelivered, to re-announce).
#[derive(Debug)]
struct Opening {
    window: TelemetryWindow,
    signal: super::artifact::Signal,
    history: BTreeMap<String, Vec<f64>>,
    run: String,
    redelivered: bool,
}

/// The chain's handlers over storage, artifacts and queues.
#[derive(Debug)]
pub struct Chain<S, A, Q, C> {
    store: S,
    artifacts: A,
    queue: Q,
    clock: C,
    cfg: ChainConfig,
    gates: Mutex<HashMap<String, Result<Gate, PolicyError>>>,
    enricher: Option<Arc<dyn Enrich>>,
}

/// Optional wording from a language model for the analyzer's top hypothesis
/// (any OpenAI-compatible endpoint; off unless configured). Its answer is stored
/// as `enrichment` and never read by any decision; a failure only leaves it out.
pub trait Enrich: Send + Sync + std::fmt::Debug {
    fn enrich(
        &self,
        prompt: String,
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>>;
}

/// The prompt: the ranked hypotheses and their evidence excerpts, nothing raw.
pub fn enrichment_prompt(hyps: &[super::artifact::Hypothesis]) -> String {
    let mut p = String::from(
        "You help an on-call engineer. In at most three sentences, explain the most likely cause \
         of this incident and what to check first. Do not invent facts beyond these.\n",
    );
    for h in hyps.iter().take(3) {
        p.push_str(&format!(
            "- {} (score {}): {}",
            h.title, h.score, h.explanation
        ));
        for e in &h.evidence {
            for x in &e.excerpts {
                p.push_str(&format!("; {x}"));
            }
        }
        p.push('\n');
    }
    p
}

#[allow(
    clippy::too_many_arguments,
    reason = "one argument per envelope field the role decides"
)]
fn envelope(
    producer: Stage,
    consumer: Option<Stage>,
    m: &RunManifest,
    t: &TenantId,
    created_at_ms: u64,
    status: &str,
    inputs: Vec<String>,
    evidence: Vec<EvidenceRef>,
    body: Body,
) -> Artifact {
    Artifact {
        schema_version: SCHEMA_VERSION,
        producer,
        consumer,
        tenant: t.clone(),
        run_id: m.run_id.clone(),
        incident_id: m.incident_id.clone(),
        correlation_id: format!("cor_{}", m.run_id.trim_start_matches("run_")),
        created_at_ms,
        status: status.into(),
        inputs,
        evidence,
        replay: false,
        body,
    }
}

impl<S: IncidentStore, A: ArtifactStore, Q: StageQueue, C: Clock> Chain<S, A, Q, C> {
    pub fn new(store: S, artifacts: A, queue: Q, clock: C, cfg: ChainConfig) -> Self {
        Self {
            store,
            artifacts,
            queue,
            clock,
            cfg,
            gates: Mutex::new(HashMap::new()),
            enricher: None,
        }
    }

    /// Adds the optional LLM wording for hypotheses.
    pub fn with_enricher(mut self, e: Arc<dyn Enrich>) -> Self {
        self.enricher = Some(e);
        self
    }

    pub fn config(&self) -> &ChainConfig {
        &self.cfg
    }

    // ---------- shared helpers ----------

    async fn run(&self, t: &TenantId, run_id: &str) -> Result<RunManifest, RoleError> {
        self.store
            .load_run(t, run_id)
            .await?
            .ok_or_else(|| perm(format!("no run {run_id} for tenant {t}")))
    }

    /// Read-modify-write of a manifest, retried when another writer won.
    async fn mutate(
        &self,
        t: &TenantId,
        run_id: &str,
        f: impl Fn(&mut RunManifest) -> bool,
    ) -> Result<RunManifest, RoleError> {
        for _ in 0..5 {
            let mut m = self.run(t, run_id).await?;
            if !f(&mut m) {
                return Ok(m);
            }
            m.updated_at_ms = self.clock.now_ms();
            match self.store.update_run(t, &m).await {
                Ok(()) => {
                    m.version += 1;
                    return Ok(m);
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(RoleError::Transient(format!(
            "run {run_id}: too many concurrent updates"
        )))
    }

    async fn artifact(&self, t: &TenantId, id: &str) -> Result<Artifact, RoleError> {
        let a = self
            .artifacts
            .get(t, id)
            .await?
            .ok_or_else(|| perm(format!("artifact {id} not found")))?;
        if &a.tenant != t {
            return Err(perm(format!("artifact {id} belongs to another tenant")));
        }
        Ok(a)
    }

    async fn linked(
        &self,
        t: &TenantId,
        m: &RunManifest,
        kind: ArtifactKind,
    ) -> Result<(String, Artifact), RoleError> {
        let id = m
            .link(kind)
            .map(|l| l.id.clone())
            .ok_or_else(|| perm(format!("run {} has no {}", m.run_id, kind.as_str())))?;
        let a = self.artifact(t, &id).await?;
        Ok((id, a))
    }

    async fn send(&self, to: Stage, msg: StageMessage, delay_s: u32) -> Result<(), RoleError> {
        Ok(self.queue.send(to, &msg, delay_s.min(900)).await?)
    }

    async fn next(&self, to: Stage, t: &TenantId, run: &str, id: &str) -> Result<(), RoleError> {
        self.send(
            to,
            StageMessage::Artifact {
                tenant: t.clone(),
                run_id: run.to_owned(),
                artifact_id: id.to_owned(),
            },
            0,
        )
        .await
    }

    /// Stores `a`, appends it to the run (once) and applies `also`.
    async fn record(
        &self,
        t: &TenantId,
        stage: Stage,
        a: &Artifact,
        also: impl Fn(&mut RunManifest),
    ) -> Result<(String, RunManifest), RoleError> {
        let id = self.artifacts.put(t, a).await?;
        let m = self
            .mutate(t, &a.run_id, |m| {
                let appended = m.append(stage, a, &id);
                if appended {
                    also(m);
                }
                appended
            })
            .await?;
        Ok((id, m))
    }

    /// The input artifact must be one the run lists (a forged or stale id is poison).
    fn check_input(m: &RunManifest, id: &str) -> Result<(), RoleError> {
        if m.chain.iter().any(|l| l.id == id) {
            Ok(())
        } else {
            Err(perm(format!(
                "artifact {id} is not part of run {}",
                m.run_id
            )))
        }
    }

    fn input(msg: &StageMessage, stage: Stage) -> Result<(&TenantId, &str, &str), RoleError> {
        match msg {
            StageMessage::Artifact {
                tenant,
                run_id,
                artifact_id,
            } => Ok((tenant, run_id, artifact_id)),
            other => Err(perm(format!(
                "the {} expects an artifact message, got {other:?}",
                stage.as_str()
            ))),
        }
    }

    /// Marks the run failed (a poison message's last try). Best effort.
    pub async fn fail(&self, stage: Stage, msg: &StageMessage, reason: &str) {
        let now = self.clock.now_ms();
        let t = msg.tenant();
        let r = self
            .mutate(t, msg.run_id(), |m| {
                if matches!(m.status, RunStatus::Closed | RunStatus::Failed) {
                    return false;
                }
                m.status = RunStatus::Failed;
                m.failure = Some(Failure {
                    stage,
                    reason: reason.to_owned(),
                    at_ms: now,
                });
                true
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(run = msg.run_id(), error = %e, "could not mark the run failed");
        }
        let _ = self
            .store
            .audit(
                t,
                &AuditEntry {
                    at_ms: now,
                    actor: stage.as_str().into(),
                    action: "run_failed".into(),
                    run_id: msg.run_id().into(),
                    detail: reason.into(),
                },
            )
            .await;
    }

    // ---------- observer ----------

    /// The observer: the host's stored state and markers are read once, every
    /// window of the message is evaluated against them, and the result is written
    /// back in one conditional write before any run opens. A lost race (another
    /// instance wrote the same host meanwhile) re-reads and re-evaluates, so no
    /// result depends on which instance a message lands on.
    pub async fn observe(&self, msg: &ObservationMessage) -> Result<Vec<String>, RoleError> {
        let t = TenantId::parse(&msg.tenant).map_err(|e| perm(e.to_string()))?;
        let a = AgentId::parse(&msg.agent_id).map_err(|e| perm(e.to_string()))?;
        let mut windows = msg.windows.clone();
        windows.sort_by_key(|w| w.seq);
        let mut attempt = 0;
        let (markers, openings) = loop {
            let stored = self.store.load_markers(&t, &a).await?;
            let mut markers = stored.clone();
            let openings = self.evaluate_windows(&t, &a, &mut markers, &windows);
            if markers == stored {
                break (markers, openings);
            }
            match self.store.save_markers(&t, &a, &markers).await {
                Ok(()) => {
                    markers.version += 1;
                    break (markers, openings);
                }
                Err(StoreError::Conflict) if attempt < 4 => attempt += 1,
                Err(StoreError::Conflict) => {
                    return Err(RoleError::Transient(
                        "incident markers changed concurrently".into(),
                    ))
                }
                Err(e) => return Err(e.into()),
            }
        };
        // Evidence for the agent's open runs.
        for w in &windows {
            for entry in markers.families.values() {
                if w.end_ms > entry.collect_until_ms {
                    continue;
                }
                let metrics: BTreeMap<String, f64> = entry
                    .metrics
                    .iter()
                    .filter_map(|k| {
                        w.metrics
                            .get(k)
                            .filter(|v| v.is_finite())
                            .map(|v| (k.clone(), *v))
                    })
                    .collect();
                if !metrics.is_empty() {
                    self.store
                        .put_evidence(
                            &t,
                            &entry.run_id,
                            &EvidencePoint {
                                seq: w.seq,
                                end_ms: w.end_ms,
                                metrics,
                            },
                        )
                        .await?;
                }
            }
        }
        let mut opened = Vec::new();
        for o in openings {
            let Opening {
                window: w,
                signal: s,
                history,
                run,
                redelivered,
            } = o;
            let now = self.clock.now_ms();
            let window_ref = format!("window:{a}:{}", w.seq);
            let excerpt = format!(
                "{} = {:.1} over [{}, {}] (threshold {:.1})",
                s.metric, s.value, w.start_ms, w.end_ms, s.threshold
            );
            let mut m = RunManifest {
                run_id: run.clone(),
                incident_id: format!("inc_{}", run.trim_start_matches("run_")),
                agent_id: a.to_string(),
                family: s.family.clone(),
                title: s.family.replace('_', " "),
                status: RunStatus::Open,
                outcome: String::new(),
                created_at_ms: w.end_ms,
                updated_at_ms: now,
                chain: vec![],
                approval: None,
                approval_expires_at_ms: None,
                actions: vec![],
                failure: None,
                fingerprint: String::new(),
                version: 0,
            };
            let art = envelope(
                Stage::Observer,
                Some(Stage::Analyzer),
                &m,
                &t,
                w.end_ms,
                "open",
                vec![],
                vec![EvidenceRef::new(window_ref, [excerpt])],
                Body::ObservationSummary {
                    agent_id: a.to_string(),
                    window_seq: w.seq,
                    window_start_ms: w.start_ms,
                    window_end_ms: w.end_ms,
                    signals: vec![s.clone()],
                    history,
                },
            );
            if redelivered {
                // Opened by an earlier delivery of this window: make sure the
                // analyzer heard of the run's own observation.
                if let Some(existing) = self.store.load_run(&t, &run).await? {
                    if let Some(l) = existing.link(ArtifactKind::ObservationSummary) {
                        let id = l.id.clone();
                        self.next(Stage::Analyzer, &t, &run, &id).await?;
                        continue;
                    }
                }
            }
            let id = self.artifacts.put(&t, &art).await?;
            m.append(Stage::Observer, &art, &id);
            self.store.create_run(&t, &m).await?;
            self.store
                .put_evidence(
                    &t,
                    &run,
                    &EvidencePoint {
                        seq: w.seq,
                        end_ms: w.end_ms,
                        metrics: BTreeMap::from([(s.metric.clone(), s.value)]),
                    },
                )
                .await?;
            self.next(Stage::Analyzer, &t, &run, &id).await?;
            tracing::info!(run = %run, family = %s.family, agent = %a, "run opened");
            opened.push(run);
        }
        Ok(opened)
    }

    /// The pure half of [`Self::observe`]: feeds the windows to the host's
    /// state, claims in `markers` the families of the runs to open, and returns
    /// those runs. A signal whose family an open run owns is suppressed; a window
    /// delivered again yields the same runs, marked `redelivered`.
    fn evaluate_windows(
        &self,
        t: &TenantId,
        a: &AgentId,
        markers: &mut Markers,
        windows: &[TelemetryWindow],
    ) -> Vec<Opening> {
        let now = self.clock.now_ms();
        let mut out = Vec::new();
        for w in windows {
            let rising = markers
                .host
                .observe(&self.cfg.thresholds, self.cfg.history, w);
            for s in rising.signals {
                let run = run_id(t, a.as_str(), &s.family, w.seq);
                if let Some(m) = markers.families.get(&s.family) {
                    if m.run_id != run && m.suppress_until_ms > now {
                        tracing::info!(run = %m.run_id, family = %s.family, "signal already has an open run");
                        continue;
                    }
                }
                let redelivered = markers
                    .families
                    .get(&s.family)
                    .is_some_and(|m| m.run_id == run);
                if !redelivered {
                    markers.families.insert(
                        s.family.clone(),
                        MarkerEntry {
                            run_id: run.clone(),
                            suppress_until_ms: now + self.cfg.suppress_ms,
                            collect_until_ms: w.end_ms + self.cfg.collect_ms,
                            metrics: vec![s.metric.clone()],
                        },
                    );
                }
                let mut history = rising.history.clone();
                history.retain(|k, _| *k == s.metric);
                out.push(Opening {
                    window: w.clone(),
                    signal: s,
                    history,
                    run,
                    redelivered,
                });
            }
        }
        out
    }

    // ---------- analyzer ----------

    pub async fn analyze(&self, msg: &StageMessage) -> Result<(), RoleError> {
        let (t, run, input) = Self::input(msg, Stage::Analyzer)?;
        let m = self.run(t, run).await?;
        if let Some(l) = m.link(ArtifactKind::RootCauseHypothesis) {
            return self.next(Stage::Planner, t, run, &l.id.clone()).await;
        }
        Self::check_input(&m, input)?;
        let obs = self.artifact(t, input).await?;
        let Body::ObservationSummary {
            agent_id,
            window_seq,
            signals,
            ..
        } = &obs.body
        else {
            return Err(perm("the analyzer's input must be an observation_summary"));
        };
        let finding = envelope(
            Stage::Analyzer,
            Some(Stage::Planner),
            &m,
            t,
            obs.created_at_ms,
            "anomalous",
            vec![input.to_owned()],
            obs.evidence.clone(),
            Body::AnomalyFinding {
                agent_id: agent_id.clone(),
                anomalies: catalog::anomalies(signals),
            },
        );
        let (finding_id, _) = self.record(t, Stage::Analyzer, &finding, |_| {}).await?;
        let hyps = catalog::hypotheses(signals, &format!("window:{agent_id}:{window_seq}"));
        let Some(top) = hyps.first() else {
            return Err(perm("no catalog rule matches the run's signals"));
        };
        let fp = fingerprint(&m.family, &top.rule, &top.subject);
        let prior: Vec<PriorAttempt> = self
            .store
            .prior_attempts(t, &fp)
            .await?
            .into_iter()
            .filter(|r| r.run_id != m.run_id)
            .flat_map(|r| {
                r.actions.into_iter().map(move |action| PriorAttempt {
                    run_id: r.run_id.clone(),
                    action,
                    verdict: r.verdict,
                })
            })
            .collect();
        let title = top.title.clone();
        let enrichment = match &self.enricher {
            None => None,
            Some(e) => match e.enrich(enrichment_prompt(&hyps)).await {
                Ok(text) => Some(text.chars().take(1000).collect::<String>()),
                Err(error) => {
                    tracing::warn!(run, %error, "LLM enrichment failed; the hypothesis goes without it");
                    None
                }
            },
        };
        let hyp = envelope(
            Stage::Analyzer,
            Some(Stage::Planner),
            &m,
            t,
            obs.created_at_ms,
            "ranked",
            vec![finding_id],
            top.evidence.clone(),
            Body::RootCauseHypothesis {
                hypotheses: hyps,
                prior,
                enrichment,
            },
        );
        let (id, _) = self
            .record(t, Stage::Analyzer, &hyp, |m| {
                m.fingerprint = fp.clone();
                m.title = title.clone();
            })
            .await?;
        self.next(Stage::Planner, t, run, &id).await
    }

    // ---------- planner ----------

    pub async fn plan(&self, msg: &StageMessage) -> Result<(), RoleError> {
        let (t, run, input) = Self::input(msg, Stage::Planner)?;
        let m = self.run(t, run).await?;
        if let Some(l) = m.link(ArtifactKind::RemediationProposal) {
            return self.next(Stage::PolicyGate, t, run, &l.id.clone()).await;
        }
        Self::check_input(&m, input)?;
        let hyp = self.artifact(t, input).await?;
        let Body::RootCauseHypothesis {
            hypotheses, prior, ..
        } = &hyp.body
        else {
            return Err(perm("the planner's input must be a root_cause_hypothesis"));
        };
        let Some(top) = hypotheses.first() else {
            return Err(perm("the hypothesis artifact ranks nothing"));
        };
        let proposals = catalog::proposals(top, &m.agent_id, prior);
        let art = envelope(
            Stage::Planner,
            Some(Stage::PolicyGate),
            &m,
            t,
            hyp.created_at_ms,
            "proposed",
            vec![input.to_owned()],
            top.evidence.clone(),
            Body::RemediationProposal {
                hypothesis: top.rule.clone(),
                proposals,
            },
        );
        let (id, _) = self.record(t, Stage::Planner, &art, |_| {}).await?;
        self.next(Stage::PolicyGate, t, run, &id).await
    }

    // ---------- policy gate ----------

    fn gate_for(&self, p: &TenantPolicy) -> Result<Gate, PolicyError> {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        gates
            .entry(p.name())
            .or_insert_with(|| match &p.rego {
                None => Gate::default_policy(),
                Some(src) => Gate::compile(src),
            })
            .clone()
    }

    pub async fn gate(&self, msg: &StageMessage) -> Result<(), RoleError> {
        let (t, run, input) = Self::input(msg, Stage::PolicyGate)?;
        let m = self.run(t, run).await?;
        let (plan_id, plan) = match m.link(ArtifactKind::ExecutionPlan) {
            Some(l) => {
                let id = l.id.clone();
                (id.clone(), self.artifact(t, &id).await?)
            }
            None => {
                Self::check_input(&m, input)?;
                let prop = self.artifact(t, input).await?;
                let Body::RemediationProposal { proposals, .. } = &prop.body else {
                    return Err(perm(
                        "the policy gate's input must be a remediation_proposal",
                    ));
                };
                let policy = self.store.load_policy(t).await?;
                let recent = self
                    .store
                    .executions_this_hour(t, self.clock.now_ms(), 0)
                    .await?;
                let decisions = match self.gate_for(&policy) {
                    Ok(g) => g.decide(proposals, &policy.settings, recent),
                    Err(e) => proposals
                        .iter()
                        .map(|p| super::artifact::Decision {
                            step: p.step,
                            action: p.action.clone(),
                            verdict: "block".into(),
                            mode: "dry_run".into(),
                            reasons: vec![format!("tenant policy unusable, failing closed: {e}")],
                        })
                        .collect(),
                };
                let outcome = if decisions.iter().any(|d| d.verdict == "require_approval") {
                    "awaiting_approval"
                } else if decisions.iter().any(|d| d.verdict != "block") {
                    "approved"
                } else {
                    "blocked"
                };
                let expires = (outcome == "awaiting_approval")
                    .then(|| prop.created_at_ms + policy.approval_ttl_ms());
                let art = envelope(
                    Stage::PolicyGate,
                    Some(Stage::Executor),
                    &m,
                    t,
                    prop.created_at_ms,
                    outcome,
                    vec![input.to_owned()],
                    vec![],
                    Body::ExecutionPlan {
                        decisions,
                        outcome: outcome.into(),
                        approval_expires_at_ms: expires,
                        policy: policy.name(),
                    },
                );
                let (id, _) = self
                    .record(t, Stage::PolicyGate, &art, |m| {
                        m.approval_expires_at_ms = expires;
                        m.status = match outcome {
                            "awaiting_approval" => RunStatus::AwaitingApproval,
                            "approved" => RunStatus::Executing,
                            _ => RunStatus::Open,
                        };
                    })
                    .await?;
                if outcome == "awaiting_approval" {
                    self.store
                        .audit(
                            t,
                            &AuditEntry {
                                at_ms: prop.created_at_ms,
                                actor: "policy_gate".into(),
                                action: "approval_requested".into(),
                                run_id: run.into(),
                                detail: format!("policy {}", policy.name()),
                            },
                        )
                        .await?;
                }
                (id, art)
            }
        };
        let Body::ExecutionPlan {
            outcome,
            approval_expires_at_ms,
            ..
        } = &plan.body
        else {
            return Err(perm("execution_plan link points at another kind"));
        };
        match outcome.as_str() {
            "awaiting_approval" => {
                let left_s = approval_expires_at_ms
                    .unwrap_or(0)
                    .saturating_sub(self.clock.now_ms())
                    / 1000;
                self.send(
                    Stage::Executor,
                    StageMessage::ApprovalDeadline {
                        tenant: t.clone(),
                        run_id: run.into(),
                    },
                    u32::try_from(left_s).unwrap_or(900),
                )
                .await
            }
            "approved" => {
                self.send(
                    Stage::Executor,
                    StageMessage::Approved {
                        tenant: t.clone(),
                        run_id: run.into(),
                    },
                    0,
                )
                .await
            }
            _ => self.next(Stage::Memory, t, run, &plan_id).await,
        }
    }

    // ---------- operators: approve / reject ----------

    pub async fn decide(
        &self,
        who: &Principal,
        run_id: &str,
        approve: bool,
        comment: &str,
    ) -> Result<RunManifest, ControlError> {
        if who.role < Role::Operator {
            return Err(ControlError::Forbidden(
                "approving or rejecting a plan needs the operator role",
            ));
        }
        if comment.len() > 1000 {
            return Err(ControlError::Invalid(
                "comment is longer than 1000 bytes".into(),
            ));
        }
        let t = &who.tenant;
        let now = self.clock.now_ms();
        let current = self
            .store
            .load_run(t, run_id)
            .await?
            .ok_or(ControlError::NotFound("run"))?;
        if current.status != RunStatus::AwaitingApproval || current.approval.is_some() {
            return Err(ControlError::Conflict(format!(
                "run {run_id} is not awaiting approval (status {})",
                current.status.as_str()
            )));
        }
        if current.approval_expires_at_ms.is_some_and(|e| now >= e) {
            return Err(ControlError::Conflict(format!(
                "the approval window of run {run_id} has closed"
            )));
        }
        let decision = if approve { "approved" } else { "rejected" };
        let record = ApprovalRecord {
            decision: decision.into(),
            by: who.subject.clone(),
            at_ms: now,
            comment: comment.into(),
        };
        let m = self
            .mutate(t, run_id, |m| {
                if m.status != RunStatus::AwaitingApproval || m.approval.is_some() {
                    return false;
                }
                m.approval = Some(record.clone());
                m.status = if approve {
                    RunStatus::Executing
                } else {
                    RunStatus::Open
                };
                true
            })
            .await
            .map_err(|e| match e {
                RoleError::Transient(m) => ControlError::Unavailable(m),
                RoleError::Permanent(m) => ControlError::Internal(m),
            })?;
        if m.approval.as_ref() != Some(&record) {
            return Err(ControlError::Conflict(format!(
                "run {run_id} was decided concurrently"
            )));
        }
        self.store
            .audit(
                t,
                &AuditEntry {
                    at_ms: now,
                    actor: who.subject.clone(),
                    action: format!("plan_{decision}"),
                    run_id: run_id.into(),
                    detail: comment.into(),
                },
            )
            .await?;
        let sent = if approve {
            self.send(
                Stage::Executor,
                StageMessage::Approved {
                    tenant: t.clone(),
                    run_id: run_id.into(),
                },
                0,
            )
            .await
        } else {
            let plan = m
                .link(ArtifactKind::ExecutionPlan)
                .map(|l| l.id.clone())
                .unwrap_or_default();
            self.next(Stage::Memory, t, run_id, &plan).await
        };
        sent.map_err(|e| ControlError::Unavailable(e.to_string()))?;
        Ok(m)
    }

    // ---------- executor ----------

    pub async fn execute(&self, msg: &StageMessage) -> Result<(), RoleError> {
        match msg {
            StageMessage::Approved { tenant, run_id } => self.start(tenant, run_id).await,
            StageMessage::ActionsChanged { tenant, run_id } => {
                self.collect(tenant, run_id, false).await
            }
            StageMessage::ApprovalDeadline { tenant, run_id } => {
                self.deadline(tenant, run_id).await
            }
            other => Err(perm(format!("the executor cannot handle {other:?}"))),
        }
    }

    async fn start(&self, t: &TenantId, run: &str) -> Result<(), RoleError> {
        let m = self.run(t, run).await?;
        if m.status != RunStatus::Executing {
            tracing::info!(
                run,
                status = m.status.as_str(),
                "not executing: nothing to start"
            );
            return Ok(());
        }
        let (_, plan) = self.linked(t, &m, ArtifactKind::ExecutionPlan).await?;
        let (_, prop) = self
            .linked(t, &m, ArtifactKind::RemediationProposal)
            .await?;
        let (
            Body::ExecutionPlan {
                decisions, outcome, ..
            },
            Body::RemediationProposal { proposals, .. },
        ) = (&plan.body, &prop.body)
        else {
            return Err(perm("chain links point at the wrong kinds"));
        };
        let approved = m
            .approval
            .as_ref()
            .is_some_and(|a| a.decision == "approved");
        if outcome == "awaiting_approval" && !approved {
            return Err(perm("the plan needs an approval it does not have"));
        }
        let start = m.approval.as_ref().map_or(plan.created_at_ms, |a| a.at_ms);
        let agent = AgentId::parse(&m.agent_id).map_err(|e| perm(e.to_string()))?;
        let mut actions = Vec::new();
        for d in decisions.iter().filter(|d| d.verdict != "block") {
            let Some(p) = proposals.iter().find(|p| p.step == d.step) else {
                continue;
            };
            let id = action_id(run, d.step);
            let key = idempotency_key(run, d.step);
            let mut payload = p.payload.clone();
            if p.action == "collect_evidence" && d.mode == "execute" {
                // Where the agent uploads its bundle: a presigned PUT, valid as long
                // as the action is.
                let (object, url) = self
                    .artifacts
                    .evidence_upload(t, run, &id, self.cfg.action_ttl_ms / 1000)
                    .await?;
                payload["upload"] = serde_json::json!({ "url": url, "key": object });
            }
            let item = OutboxItem {
                action: Action {
                    id: id.clone(),
                    kind: ActionKind::new(&p.action),
                    target: p.target.clone(),
                    payload,
                    idempotency_key: key.clone(),
                    not_before_ms: 0,
                    expires_at_ms: start + self.cfg.action_ttl_ms,
                    mode: if d.mode == "execute" {
                        ActionMode::Execute
                    } else {
                        ActionMode::DryRun
                    },
                    requires_capability: p.action.clone(),
                },
                state: LiveState::Queued,
                attempt: 1,
                pid: 0,
                created_at_ms: start,
                updated_at_ms: start,
                last_result: None,
            };
            if self.store.enqueue_action(t, &agent, &item).await? {
                self.store
                    .executions_this_hour(t, self.clock.now_ms(), 1)
                    .await?;
            }
            actions.push(RunAction {
                step: d.step,
                action: p.action.clone(),
                action_id: id,
                agent_id: m.agent_id.clone(),
                idempotency_key: key,
                mode: d.mode.clone(),
                state: "queued".into(),
                message: String::new(),
                finished_at_ms: 0,
                rollback: false,
            });
        }
        if actions.is_empty() {
            let plan_id = m
                .link(ArtifactKind::ExecutionPlan)
                .map(|l| l.id.clone())
                .unwrap_or_default();
            return self.next(Stage::Memory, t, run, &plan_id).await;
        }
        self.mutate(t, run, |m| {
            let mut changed = false;
            for a in &actions {
                if !m.actions.iter().any(|x| x.action_id == a.action_id) {
                    m.actions.push(a.clone());
                    changed = true;
                }
            }
            changed
        })
        .await?;
        tracing::info!(
            run,
            actions = actions.len(),
            "actions queued in the agent's outbox"
        );
        self.send(
            Stage::Executor,
            StageMessage::ActionsChanged {
                tenant: t.clone(),
                run_id: run.into(),
            },
            self.cfg.check_actions_s,
        )
        .await
    }

    /// Picks up finished actions; completes `execution_result` when all are done.
    /// `_periodic`: a delayed check (re-scheduled until done) rather than the
    /// poll's prompt notification.
    async fn collect(&self, t: &TenantId, run: &str, _periodic: bool) -> Result<(), RoleError> {
        let m = self.run(t, run).await?;
        if m.link(ArtifactKind::ExecutionResult).is_some() {
            if m.link(ArtifactKind::VerificationResult).is_none() {
                return self.verify_later(t, run, 0).await;
            }
            return Ok(());
        }
        if m.status != RunStatus::Executing {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let mut updates = Vec::new();
        for a in m.actions.iter().filter(|a| a.state == "queued") {
            let agent = AgentId::parse(&a.agent_id).map_err(|e| perm(e.to_string()))?;
            if let Some(done) = self.store.finished_action(t, &agent, &a.action_id).await? {
                let message = done
                    .result
                    .as_ref()
                    .map(|r| r.message.clone())
                    .unwrap_or_default();
                updates.push((
                    a.action_id.clone(),
                    done.state.as_str().to_owned(),
                    message,
                    done.finished_at_ms,
                ));
            } else if now
                > a.finished_at_ms
                    .max(m.approval.as_ref().map_or(0, |x| x.at_ms))
                    + self.cfg.action_ttl_ms
                    + 5 * 60_000
            {
                updates.push((
                    a.action_id.clone(),
                    "expired".into(),
                    "no result from the agent before the action expired".into(),
                    now,
                ));
            }
        }
        let m = if updates.is_empty() {
            m
        } else {
            self.mutate(t, run, |m| {
                let mut changed = false;
                for (id, state, message, at) in &updates {
                    if let Some(a) = m
                        .actions
                        .iter_mut()
                        .find(|a| &a.action_id == id && a.state == "queued")
                    {
                        a.state = state.clone();
                        a.message = message.clone();
                        a.finished_at_ms = *at;
                        changed = true;
                    }
                }
                changed
            })
            .await?
        };
        let pending = m
            .actions
            .iter()
            .filter(|a| !a.rollback && a.state == "queued")
            .count();
        if pending > 0 {
            // The poll notifies promptly; this timer is the safety net.
            return self
                .send(
                    Stage::Executor,
                    StageMessage::ActionsChanged {
                        tenant: t.clone(),
                        run_id: run.into(),
                    },
                    self.cfg.check_actions_s,
                )
                .await;
        }
        let (plan_id, plan) = self.linked(t, &m, ArtifactKind::ExecutionPlan).await?;
        let Body::ExecutionPlan { decisions, .. } = &plan.body else {
            return Err(perm("execution_plan link points at another kind"));
        };
        let mut steps: Vec<StepResult> = m
            .actions
            .iter()
            .filter(|a| !a.rollback)
            .map(|a| StepResult {
                step: a.step,
                action: a.action.clone(),
                action_id: a.action_id.clone(),
                idempotency_key: a.idempotency_key.clone(),
                state: a.state.clone(),
                message: a.message.clone(),
                finished_at_ms: a.finished_at_ms,
            })
            .collect();
        for d in decisions.iter().filter(|d| d.verdict == "block") {
            steps.push(StepResult {
                step: d.step,
                action: d.action.clone(),
                action_id: String::new(),
                idempotency_key: String::new(),
                state: "skipped".into(),
                message: format!("blocked by policy: {}", d.reasons.join("; ")),
                finished_at_ms: 0,
            });
        }
        steps.sort_by_key(|s| s.step);
        let finished = steps.iter().map(|s| s.finished_at_ms).max().unwrap_or(0);
        let status = if steps.iter().any(|s| s.state == "succeeded") {
            "executed"
        } else if steps
            .iter()
            .all(|s| matches!(s.state.as_str(), "dry_run" | "skipped"))
        {
            "dry_run"
        } else {
            "not_executed"
        };
        let art = envelope(
            Stage::Executor,
            Some(Stage::Verifier),
            &m,
            t,
            finished,
            status,
            vec![plan_id],
            m.actions
                .iter()
                .filter(|a| !a.rollback)
                .map(|a| {
                    EvidenceRef::new(
                        format!("action:{}", a.action_id),
                        [format!("{} -> {}: {}", a.action, a.state, a.message)],
                    )
                })
                .collect(),
            Body::ExecutionResult {
                approved_by: m.approval.as_ref().map(|a| a.by.clone()),
                steps,
            },
        );
        self.record(t, Stage::Executor, &art, |m| {
            m.status = RunStatus::Verifying
        })
        .await?;
        self.verify_later(t, run, 0).await
    }

    async fn verify_later(&self, t: &TenantId, run: &str, attempt: u32) -> Result<(), RoleError> {
        self.send(
            Stage::Verifier,
            StageMessage::Verify {
                tenant: t.clone(),
                run_id: run.into(),
                attempt,
            },
            self.cfg.verify_delay_s,
        )
        .await
    }

    async fn deadline(&self, t: &TenantId, run: &str) -> Result<(), RoleError> {
        let m = self.run(t, run).await?;
        if m.status != RunStatus::AwaitingApproval || m.approval.is_some() {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let expires = m.approval_expires_at_ms.unwrap_or(0);
        if now < expires {
            let left = u32::try_from((expires - now).div_ceil(1000)).unwrap_or(900);
            return self
                .send(
                    Stage::Executor,
                    StageMessage::ApprovalDeadline {
                        tenant: t.clone(),
                        run_id: run.into(),
                    },
                    left,
                )
                .await;
        }
        let m = self
            .mutate(t, run, |m| {
                if m.status != RunStatus::AwaitingApproval || m.approval.is_some() {
                    return false;
                }
                m.status = RunStatus::Open;
                m.outcome = "expired".into();
                true
            })
            .await?;
        if m.outcome != "expired" {
            return Ok(());
        }
        self.store
            .audit(
                t,
                &AuditEntry {
                    at_ms: expires,
                    actor: "executor".into(),
                    action: "approval_expired".into(),
                    run_id: run.into(),
                    detail: String::new(),
                },
            )
            .await?;
        let plan = m
            .link(ArtifactKind::ExecutionPlan)
            .map(|l| l.id.clone())
            .unwrap_or_default();
        self.next(Stage::Memory, t, run, &plan).await
    }

    // ---------- verifier ----------

    pub async fn verify(&self, msg: &StageMessage) -> Result<(), RoleError> {
        let StageMessage::Verify {
            tenant: t,
            run_id: run,
            attempt,
        } = msg
        else {
            return Err(perm(format!("the verifier cannot handle {msg:?}")));
        };
        let m = self.run(t, run).await?;
        if let Some(l) = m.link(ArtifactKind::VerificationResult) {
            return self.next(Stage::Memory, t, run, &l.id.clone()).await;
        }
        let (result_id, result) = self.linked(t, &m, ArtifactKind::ExecutionResult).await?;
        let (_, obs) = self.linked(t, &m, ArtifactKind::ObservationSummary).await?;
        let (Body::ObservationSummary { signals, .. }, Body::ExecutionResult { steps, .. }) =
            (&obs.body, &result.body)
        else {
            return Err(perm("chain links point at the wrong kinds"));
        };
        let Some(signal) = signals.first() else {
            return Err(perm("the observation has no signal"));
        };
        let after_ms = result.created_at_ms;
        let points: Vec<EvidencePoint> = self
            .store
            .evidence(t, run)
            .await?
            .into_iter()
            .filter(|p| p.end_ms > after_ms && p.metrics.contains_key(&signal.metric))
            .collect();
        if points.is_empty() && *attempt < self.cfg.verify_attempts {
            return self.verify_later(t, run, attempt + 1).await;
        }
        let changed_host = steps.iter().any(|s| s.state == "succeeded");
        let before = signal.value;
        let after = points
            .last()
            .and_then(|p| p.metrics.get(&signal.metric).copied());
        let (verdict, mut why) = match after {
            None => (
                Verdict::Inconclusive,
                format!(
                    "no telemetry for {} from the agent since the action finished ({} checks)",
                    signal.metric,
                    attempt + 1
                ),
            ),
            Some(v) => {
                let counter = signal.threshold == 0.0;
                if (counter && v == 0.0) || (!counter && v < signal.threshold) {
                    (
                        Verdict::Improved,
                        format!(
                            "{} went from {before:.1} to {v:.1}, under the threshold {:.1}",
                            signal.metric, signal.threshold
                        ),
                    )
                } else if v > before * 1.05 {
                    (
                        Verdict::Worse,
                        format!("{} rose from {before:.1} to {v:.1}", signal.metric),
                    )
                } else {
                    (
                        Verdict::Unchanged,
                        format!(
                            "{} is still {v:.1} (was {before:.1}, threshold {:.1})",
                            signal.metric, signal.threshold
                        ),
                    )
                }
            }
        };
        if !changed_host {
            why.push_str("; no action changed the host (dry run, refused, failed or blocked), so any change is not the action's doing");
        }
        let mut rollback = None;
        if verdict == Verdict::Worse && changed_host {
            let (_, prop) = self
                .linked(t, &m, ArtifactKind::RemediationProposal)
                .await?;
            if let Body::RemediationProposal { proposals, .. } = &prop.body {
                let agent = AgentId::parse(&m.agent_id).map_err(|e| perm(e.to_string()))?;
                for s in steps.iter().filter(|s| s.state == "succeeded") {
                    let Some(rb) = proposals
                        .iter()
                        .find(|p| p.step == s.step)
                        .and_then(|p| p.rollback.clone())
                    else {
                        continue;
                    };
                    let step = 100 + s.step;
                    let at = points.last().map_or(after_ms, |p| p.end_ms);
                    let item = OutboxItem {
                        action: Action {
                            id: action_id(run, step),
                            kind: ActionKind::new(&rb.action),
                            target: proposals
                                .iter()
                                .find(|p| p.step == s.step)
                                .map(|p| p.target.clone())
                                .unwrap_or_default(),
                            payload: rb.payload.clone(),
                            idempotency_key: idempotency_key(run, step),
                            not_before_ms: 0,
                            expires_at_ms: at + self.cfg.action_ttl_ms,
                            mode: ActionMode::Execute,
                            requires_capability: rb.action.clone(),
                        },
                        state: LiveState::Queued,
                        attempt: 1,
                        pid: 0,
                        created_at_ms: at,
                        updated_at_ms: at,
                        last_result: None,
                    };
                    self.store.enqueue_action(t, &agent, &item).await?;
                    rollback = Some(format!(
                        "queued {} (step {step}) to undo step {}",
                        rb.action, s.step
                    ));
                    let ra = RunAction {
                        step,
                        action: rb.action.clone(),
                        action_id: item.action.id.clone(),
                        agent_id: m.agent_id.clone(),
                        idempotency_key: item.action.idempotency_key.clone(),
                        mode: "execute".into(),
                        state: "queued".into(),
                        message: String::new(),
                        finished_at_ms: 0,
                        rollback: true,
                    };
                    self.mutate(t, run, |m| {
                        if m.actions.iter().any(|a| a.action_id == ra.action_id) {
                            return false;
                        }
                        m.actions.push(ra.clone());
                        true
                    })
                    .await?;
                }
            }
        }
        let created = points.last().map_or(after_ms, |p| p.end_ms.max(after_ms));
        let art = envelope(
            Stage::Verifier,
            Some(Stage::Memory),
            &m,
            t,
            created,
            verdict.as_str(),
            vec![result_id],
            points
                .iter()
                .rev()
                .take(3)
                .map(|p| {
                    EvidenceRef::new(
                        format!("window:{}:{}", m.agent_id, p.seq),
                        p.metrics.iter().map(|(k, v)| format!("{k} = {v:.1}")),
                    )
                })
                .collect(),
            Body::VerificationResult {
                verdict,
                why,
                metric: signal.metric.clone(),
                before: Some(before),
                after,
                rollback,
            },
        );
        let (id, _) = self.record(t, Stage::Verifier, &art, |_| {}).await?;
        self.next(Stage::Memory, t, run, &id).await
    }

    // ---------- memory ----------

    pub async fn remember(&self, msg: &StageMessage) -> Result<(), RoleError> {
        let (t, run, input) = Self::input(msg, Stage::Memory)?;
        let m = self.run(t, run).await?;
        if m.link(ArtifactKind::IncidentReport).is_some() {
            return Ok(());
        }
        Self::check_input(&m, input)?;
        let verification = match m.link(ArtifactKind::VerificationResult) {
            Some(l) => Some(self.artifact(t, &l.id.clone()).await?),
            None => None,
        };
        let verdict = verification.as_ref().and_then(|v| match &v.body {
            Body::VerificationResult { verdict, .. } => Some(*verdict),
            _ => None,
        });
        let outcome = match (verdict, &m.approval) {
            (Some(Verdict::Improved), _) => "resolved".to_owned(),
            (Some(v), _) => v.as_str().to_owned(),
            (None, Some(a)) if a.decision == "rejected" => "rejected".into(),
            (None, _) if m.outcome == "expired" => "expired".into(),
            (None, _) => "blocked".into(),
        };
        let fp = if m.fingerprint.is_empty() {
            fingerprint(&m.family, "", "")
        } else {
            m.fingerprint.clone()
        };
        if let Some(v) = verdict {
            let actions: Vec<String> = m
                .actions
                .iter()
                .filter(|a| !a.rollback && a.state != "expired")
                .map(|a| a.action.clone())
                .collect();
            self.store
                .remember(
                    t,
                    &fp,
                    &PriorRecord {
                        run_id: run.into(),
                        at_ms: m.chain.last().map_or(m.created_at_ms, |l| l.at_ms),
                        actions,
                        verdict: v,
                    },
                )
                .await?;
        }
        let created = m
            .chain
            .iter()
            .map(|l| l.at_ms)
            .max()
            .unwrap_or(m.created_at_ms);
        let art = envelope(
            Stage::Memory,
            None,
            &m,
            t,
            created,
            &outcome,
            m.chain.iter().map(|l| l.id.clone()).collect(),
            vec![],
            Body::IncidentReport {
                fingerprint: fp,
                title: m.title.clone(),
                outcome: outcome.clone(),
                chain: m
                    .chain
                    .iter()
                    .map(|l| ChainEntry {
                        kind: l.kind,
                        id: l.id.clone(),
                        status: l.status.clone(),
                    })
                    .collect(),
            },
        );
        let o = outcome.clone();
        self.record(t, Stage::Memory, &art, |m| {
            m.status = RunStatus::Closed;
            m.outcome = o.clone();
        })
        .await?;
        // Let the next episode of this signal open a new run.
        let agent = AgentId::parse(&m.agent_id).map_err(|e| perm(e.to_string()))?;
        let mut markers = self.store.load_markers(t, &agent).await?;
        if let Some(e) = markers.families.get_mut(&m.family) {
            if e.run_id == m.run_id && e.suppress_until_ms > 0 {
                e.suppress_until_ms = 0;
                if let Err(err) = self.store.save_markers(t, &agent, &markers).await {
                    tracing::warn!(run, error = %err, "could not release the incident marker; it lapses on its own");
                }
            }
        }
        tracing::info!(run, outcome = %outcome, "run closed");
        Ok(())
    }

    /// Dispatches a role's message (the SQS consumers call this). Each role's
    /// future is boxed: one dispatcher over seven deep futures would otherwise be
    /// one enormous type.
    pub async fn handle(&self, stage: Stage, body: &str) -> Result<(), RoleError> {
        if stage == Stage::Observer {
            let msg: ObservationMessage = serde_json::from_str(body)
                .map_err(|e| perm(format!("malformed observation message: {e}")))?;
            return Box::pin(self.observe(&msg)).await.map(|_| ());
        }
        let msg: StageMessage = serde_json::from_str(body)
            .map_err(|e| perm(format!("malformed {} message: {e}", stage.as_str())))?;
        match stage {
            Stage::Observer => Ok(()),
            Stage::Analyzer => Box::pin(self.analyze(&msg)).await,
            Stage::Planner => Box::pin(self.plan(&msg)).await,
            Stage::PolicyGate => Box::pin(self.gate(&msg)).await,
            Stage::Executor => Box::pin(self.execute(&msg)).await,
            Stage::Verifier => Box::pin(self.verify(&msg)).await,
            Stage::Memory => Box::pin(self.remember(&msg)).await,
        }
    }

    /// Like [`Self::handle`], and on the last try before the dead-letter queue
    /// marks the run failed with the reason.
    pub async fn handle_delivery(
        &self,
        stage: Stage,
        body: &str,
        receive_count: u32,
    ) -> Result<(), RoleError> {
        let r = self.handle(stage, body).await;
        if let Err(e) = &r {
            tracing::warn!(stage = stage.as_str(), receive_count, error = %e, "message failed");
            if receive_count >= self.cfg.max_receives {
                if let Ok(msg) = serde_json::from_str::<StageMessage>(body) {
                    self.fail(
                        stage,
                        &msg,
                        &format!(
                            "{} gave up after {receive_count} tries: {e}",
                            stage.as_str()
                        ),
                    )
                    .await;
                }
            }
        }
        r
    }

    // ---------- operator reads ----------

    pub async fn list_runs(&self, t: &TenantId) -> Result<Vec<RunManifest>, ControlError> {
        let mut runs = self.store.list_runs(t).await?;
        runs.sort_by(|a, b| {
            b.created_at_ms
                .cmp(&a.created_at_ms)
                .then_with(|| a.run_id.cmp(&b.run_id))
        });
        Ok(runs)
    }

    pub async fn get_run(&self, t: &TenantId, run_id: &str) -> Result<RunManifest, ControlError> {
        self.store
            .load_run(t, run_id)
            .await?
            .ok_or(ControlError::NotFound("run"))
    }

    pub async fn get_artifact(&self, t: &TenantId, id: &str) -> Result<Artifact, ControlError> {
        Artifact::digest_of(id).map_err(|e| ControlError::Invalid(e.to_string()))?;
        match self.artifacts.get(t, id).await? {
            Some(a) if &a.tenant == t => Ok(a),
            _ => Err(ControlError::NotFound("artifact")),
        }
    }

    pub async fn evidence(
        &self,
        t: &TenantId,
        run_id: &str,
    ) -> Result<Vec<EvidencePoint>, ControlError> {
        self.get_run(t, run_id).await?;
        Ok(self.store.evidence(t, run_id).await?)
    }

    pub async fn audit_log(&self, t: &TenantId) -> Result<Vec<AuditEntry>, ControlError> {
        Ok(self.store.list_audit(t).await?)
    }

    pub async fn policy(&self, t: &TenantId) -> Result<TenantPolicy, ControlError> {
        Ok(self.store.load_policy(t).await?)
    }

    /// Stores a tenant's policy after compiling it (admins only).
    pub async fn set_policy(&self, who: &Principal, p: &TenantPolicy) -> Result<(), ControlError> {
        if who.role < Role::Admin {
            return Err(ControlError::Forbidden(
                "setting the incident policy needs the admin role",
            ));
        }
        if let Some(src) = &p.rego {
            if src.len() > 64 * 1024 {
                return Err(ControlError::Invalid("policy is larger than 64 KiB".into()));
            }
            Gate::compile(src).map_err(|e| ControlError::Invalid(e.to_string()))?;
        }
        self.store.put_policy(&who.tenant, p).await?;
        self.store
            .audit(
                &who.tenant,
                &AuditEntry {
                    at_ms: self.clock.now_ms(),
                    actor: who.subject.clone(),
                    action: "policy_set".into(),
                    run_id: String::new(),
                    detail: p.name(),
                },
            )
            .await?;
        Ok(())
    }
}
