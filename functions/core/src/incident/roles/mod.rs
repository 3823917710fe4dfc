//! The seven roles as use cases over the ports, plus the operator's side (list,
//! show, approve, reject, audit). Each function's `main` wires one role's
//! handler to its queue; the local runner wires all of them.
//!
//! One module per role (`observer`, `analyzer`, `planner`, `gate`, `executor`,
//! `verifier`, `memory`), one for operators' approvals (`approval`) and one for
//! their reads (`reads`); this module holds the chain, its configuration and
//! errors, the helpers every role shares and the dispatcher.
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

mod analyzer;
mod approval;
mod executor;
mod gate;
mod memory;
mod observer;
mod planner;
mod reads;
mod verifier;

#[cfg(test)]
mod tests;

use super::artifact::{
    Addressed, Artifact, ArtifactKind, Body, ChainEntry, EvidenceRef, PriorAttempt, Stage,
    StepResult, Verdict, SCHEMA_VERSION,
};
use super::catalog;
use super::observe::Thresholds;
use super::policy::{Gate, PolicyError, TenantPolicy};
use super::port::{
    AgentKinds, ArtifactStore, AuditReads, AuditTrail, CountExecution, EvidenceLog, EvidenceReads,
    EvidenceUploads, ExecutionCount, HostMarkers, IncidentStore, Outbox, PolicyAdmin, PolicySource,
    PriorAttempts, Remember, RunIndex, Runs, StageQueue,
};
use super::run::{
    action_id, fingerprint, idempotency_key, run_id, ApprovalRecord, ArtifactInput, AuditEntry,
    EvidencePoint, ExecutorInput, Failure, MarkerEntry, Markers, PriorRecord, RunAction,
    RunManifest, RunStatus, StageMessage, VerifyInput,
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

/// The role's own message type, or a permanent error naming what came instead.
fn typed<T: TryFrom<StageMessage, Error = StageMessage>>(
    stage: Stage,
    msg: StageMessage,
) -> Result<T, RoleError> {
    T::try_from(msg).map_err(|other| {
        perm(format!(
            "the {} cannot handle {other:?}",
            stage.as_str().replace('_', " ")
        ))
    })
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
        tenant: t.to_string(),
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

impl<S, A, Q, C> Chain<S, A, Q, C> {
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
}

/// What every role shares: its run, its artifacts, its sends, its failure.
impl<S: Runs + AuditTrail, A: ArtifactStore, Q: StageQueue, C: Clock> Chain<S, A, Q, C> {
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
        if a.tenant != t.as_str() {
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

    fn input(msg: &ArtifactInput) -> (&TenantId, &str, &str) {
        (&msg.tenant, &msg.run_id, &msg.artifact_id)
    }

    pub(super) async fn verify_later(
        &self,
        t: &TenantId,
        run: &str,
        attempt: u32,
    ) -> Result<(), RoleError> {
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
}

/// The dispatcher serves any role, so it needs every port.
impl<S: IncidentStore, A: ArtifactStore + EvidenceUploads, Q: StageQueue, C: Clock>
    Chain<S, A, Q, C>
{
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
            Stage::Analyzer => Box::pin(self.analyze(&typed(stage, msg)?)).await,
            Stage::Planner => Box::pin(self.plan(&typed(stage, msg)?)).await,
            Stage::PolicyGate => Box::pin(self.gate(&typed(stage, msg)?)).await,
            Stage::Executor => Box::pin(self.execute(&typed(stage, msg)?)).await,
            Stage::Verifier => Box::pin(self.verify(&typed(stage, msg)?)).await,
            Stage::Memory => Box::pin(self.remember(&typed(stage, msg)?)).await,
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
}
