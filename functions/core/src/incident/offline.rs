//! The whole chain offline, over the in-memory ports (feature `fakes`): telemetry
//! in, every role run in turn, time taken from the telemetry itself. The replay
//! harness (`tests/examples/replay.rs`) drives recorded corpora through it, so
//! rules can be changed and measured without producing faults again.
//!
//! Invariants:
//! - Time only moves forward, to the end of the latest window fed or to where the
//!   caller moves it; a delayed message is delivered once the clock reaches the
//!   time it was sent plus its delay, never before.
//! - Every send is checked against the sending role's grant
//!   ([`Stage::sends_to`]); a send outside it is an error, as it would be an
//!   AccessDenied in AWS.
//! - Operators and agents are the caller's: nothing is approved or finished
//!   unless [`Offline::approve_waiting`] or [`Offline::finish_live`] says so.

use super::artifact::{Artifact, Stage};
use super::fake::{ManualClock, MemArtifacts, MemQueue, MemStore, Sent};
use super::port::{ArtifactStore, StageQueue};
use super::roles::{Chain, ChainConfig, ObservationMessage, RoleError};
use super::run::{run_of_key, RunManifest, RunStatus, StageMessage};
use crate::model::FinalState;
use crate::tenant::{AgentId, Principal, TenantId};

pub type OfflineChain = Chain<MemStore, MemArtifacts, MemQueue, ManualClock>;

/// A message waiting for its delivery time.
#[derive(Debug, Clone)]
struct Due {
    at_ms: u64,
    sent: Sent,
}

/// One offline chain and its clock.
#[derive(Debug)]
pub struct Offline {
    pub chain: OfflineChain,
    pub store: MemStore,
    pub artifacts: MemArtifacts,
    pub clock: ManualClock,
    queue: MemQueue,
    waiting: Vec<Due>,
    /// Role failures (each a message that would have been retried).
    pub failures: Vec<(Stage, String)>,
}

impl Offline {
    pub fn new(cfg: ChainConfig, start_ms: u64) -> Self {
        let (store, artifacts, queue, clock) = (
            MemStore::default(),
            MemArtifacts::default(),
            MemQueue::default(),
            ManualClock::at(start_ms),
        );
        let chain = Chain::new(
            store.clone(),
            artifacts.clone(),
            queue.clone(),
            clock.clone(),
            cfg,
        );
        Self {
            chain,
            store,
            artifacts,
            clock,
            queue,
            waiting: vec![],
            failures: vec![],
        }
    }

    fn now(&self) -> u64 {
        use crate::port::Clock;
        self.clock.now_ms()
    }

    /// Takes what `from` sent, stamped with its delivery time.
    fn collect(&mut self, from: Option<Stage>) -> Result<(), String> {
        let now = self.now();
        for s in self.queue.take() {
            if let Some(from) = from {
                if !from.sends_to().contains(&s.to) {
                    return Err(format!(
                        "the {} sent to the {}, outside its grant",
                        from.as_str(),
                        s.to.as_str()
                    ));
                }
            }
            self.waiting.push(Due {
                at_ms: now + u64::from(s.delay_s) * 1000,
                sent: s,
            });
        }
        Ok(())
    }

    /// Delivers every message due by now, and what they send, until none is.
    pub async fn pump(&mut self) -> Result<(), String> {
        for _ in 0..10_000 {
            let now = self.now();
            let Some(i) = self
                .waiting
                .iter()
                .enumerate()
                .filter(|(_, d)| d.at_ms <= now)
                .min_by_key(|(_, d)| d.at_ms)
                .map(|(i, _)| i)
            else {
                return Ok(());
            };
            let d = self.waiting.remove(i);
            let body = serde_json::to_string(&d.sent.msg).map_err(|e| e.to_string())?;
            if let Err(e) = self.chain.handle(d.sent.to, &body).await {
                self.failures.push((d.sent.to, e.to_string()));
            }
            self.collect(Some(d.sent.to))?;
        }
        Err("the chain did not settle in 10,000 messages".into())
    }

    /// One observation message: the clock moves to its latest window's end.
    pub async fn observe(&mut self, msg: &ObservationMessage) -> Result<Vec<String>, String> {
        if let Some(end) = msg.windows.iter().map(|w| w.end_ms).max() {
            self.advance_to(end).await?;
        }
        let opened = match self.chain.observe(msg).await {
            Ok(o) => o,
            Err(RoleError::Transient(e) | RoleError::Permanent(e)) => {
                self.failures.push((Stage::Observer, e));
                vec![]
            }
        };
        self.collect(Some(Stage::Observer))?;
        self.pump().await?;
        Ok(opened)
    }

    /// Moves the clock forward to `ms` (never back) and delivers what is due.
    pub async fn advance_to(&mut self, ms: u64) -> Result<(), String> {
        let now = self.now();
        if ms > now {
            self.clock.advance(ms - now);
        }
        self.pump().await
    }

    /// Approves every run awaiting approval, as `who`. Returns the runs approved.
    pub async fn approve_waiting(&mut self, who: &Principal) -> Result<Vec<String>, String> {
        let mut approved = vec![];
        for m in self.store.runs() {
            if m.status == RunStatus::AwaitingApproval && m.approval.is_none() {
                self.chain
                    .decide(who, &m.run_id, true, "replay")
                    .await
                    .map_err(|e| e.to_string())?;
                approved.push(m.run_id);
            }
        }
        // The api sends the approvals.
        self.collect(None)?;
        self.pump().await?;
        Ok(approved)
    }

    /// Every live incident action of `t` ends in `state`, as the agents' polls
    /// would record it, and the executor is told. Returns how many finished.
    pub async fn finish_live(&mut self, t: &TenantId, state: FinalState) -> Result<usize, String> {
        let live = self.store.outbox(t);
        let mut runs = std::collections::BTreeSet::new();
        for (agent, item) in &live {
            let a = AgentId::parse(agent).map_err(|e| e.to_string())?;
            self.store.finish(t, &a, &item.action.id, state, self.now());
            if let Some(r) = run_of_key(&item.action.idempotency_key) {
                runs.insert(r.to_owned());
            }
        }
        for run in runs {
            self.queue
                .send(
                    Stage::Executor,
                    &StageMessage::ActionsChanged {
                        tenant: t.clone(),
                        run_id: run,
                    },
                    0,
                )
                .await
                .map_err(|e| e.to_string())?;
        }
        self.collect(None)?;
        self.pump().await?;
        Ok(live.len())
    }

    pub fn runs(&self) -> Vec<RunManifest> {
        self.store.runs()
    }

    /// The artifact of `kind` a run lists, if any.
    pub async fn linked(
        &self,
        t: &TenantId,
        m: &RunManifest,
        kind: super::artifact::ArtifactKind,
    ) -> Option<Artifact> {
        let id = m.link(kind)?.id.clone();
        self.artifacts.get(t, &id).await.ok().flatten()
    }
}
