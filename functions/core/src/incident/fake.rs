//! In-memory incident ports, for unit tests of the roles and for benchmarks that
//! must measure the roles' own work (feature `fakes`; always on in this crate's
//! tests).
//!
//! Invariants (the same the DynamoDB, S3 and SQS adapters keep, so role tests
//! meet the same races):
//! - creates are conditional on absence; `update_run` and `save_markers` only
//!   when the stored version is still the one read, and they store version + 1;
//! - an enqueued action whose id is live or finished is not created again;
//! - artifacts are content-addressed and read back through
//!   [`Artifact::from_bytes`], so a damaged payload is `Corrupt`;
//! - every call is recorded by port method name ([`Recorded::take_calls`]), and a
//!   failure can be injected for the next call of one method
//!   ([`Recorded::fail_next`]).

use super::artifact::{Addressed, Artifact, Stage};
use super::policy::TenantPolicy;
use super::port::{
    AgentKinds, ArtifactStore, AuditReads, AuditTrail, CountExecution, EvidenceLog, EvidenceReads,
    EvidenceUploads, ExecutionCount, HostMarkers, Outbox, PolicyAdmin, PolicySource, PriorAttempts,
    Remember, RunIndex, Runs, StageQueue,
};
use super::run::{AuditEntry, EvidencePoint, Markers, PriorRecord, RunManifest, StageMessage};
pub use crate::fake::{ManualClock, Recorded};
use crate::model::{DoneItem, FinalState, OutboxItem};
use crate::port::StoreError;
use crate::tenant::{AgentId, TenantId};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

type Key2 = (String, String);
type Key3 = (String, String, String);

#[derive(Debug, Default)]
pub struct State {
    runs: BTreeMap<Key2, RunManifest>,
    markers: BTreeMap<Key2, Markers>,
    evidence: BTreeMap<Key2, BTreeMap<u64, EvidencePoint>>,
    policy: BTreeMap<String, TenantPolicy>,
    executions: BTreeMap<(String, u64), u32>,
    prior: BTreeMap<Key2, BTreeMap<(u64, String), PriorRecord>>,
    audit: BTreeMap<String, Vec<AuditEntry>>,
    outbox: BTreeMap<Key3, OutboxItem>,
    done: BTreeMap<Key3, DoneItem>,
    kinds: BTreeMap<Key2, Vec<String>>,
}

/// Every DynamoDB port of the chain, in memory. Clones share the same state.
pub type MemStore = Recorded<State>;

fn k2(t: &TenantId, s: &str) -> Key2 {
    (t.as_str().to_owned(), s.to_owned())
}

fn k3(t: &TenantId, a: &AgentId, s: &str) -> Key3 {
    (t.as_str().to_owned(), a.as_str().to_owned(), s.to_owned())
}

impl MemStore {
    pub fn run(&self, t: &TenantId, run_id: &str) -> Option<RunManifest> {
        self.lock().runs.get(&k2(t, run_id)).cloned()
    }

    pub fn runs(&self) -> Vec<RunManifest> {
        self.lock().runs.values().cloned().collect()
    }

    /// Live outbox items of one tenant, with their agents.
    pub fn outbox(&self, t: &TenantId) -> Vec<(String, OutboxItem)> {
        self.lock()
            .outbox
            .iter()
            .filter(|((tt, ..), _)| tt == t.as_str())
            .map(|((_, a, _), i)| (a.clone(), i.clone()))
            .collect()
    }

    pub fn audit_of(&self, t: &TenantId) -> Vec<AuditEntry> {
        self.lock()
            .audit
            .get(t.as_str())
            .cloned()
            .unwrap_or_default()
    }

    pub fn markers_of(&self, t: &TenantId, a: &AgentId) -> Option<Markers> {
        self.lock().markers.get(&k2(t, a.as_str())).cloned()
    }

    /// What an agent's poll reports it can run (`None`: it does not report).
    pub fn set_agent_kinds(&self, t: &TenantId, a: &AgentId, kinds: Option<&[&str]>) {
        let mut s = self.lock();
        match kinds {
            Some(k) => {
                s.kinds.insert(
                    k2(t, a.as_str()),
                    k.iter().map(|x| (*x).to_owned()).collect(),
                );
            }
            None => {
                s.kinds.remove(&k2(t, a.as_str()));
            }
        }
    }

    /// What the poll does when an agent's final result arrives: the live item
    /// leaves the outbox as a finished one. False when no such item is live.
    pub fn finish(
        &self,
        t: &TenantId,
        a: &AgentId,
        action_id: &str,
        state: FinalState,
        now_ms: u64,
    ) -> bool {
        let mut s = self.lock();
        let k = k3(t, a, action_id);
        let Some(item) = s.outbox.remove(&k) else {
            return false;
        };
        s.done.insert(
            k,
            DoneItem {
                item,
                state,
                result: None,
                finished_at_ms: now_ms,
            },
        );
        true
    }
}

impl Runs for MemStore {
    async fn load_run(
        &self,
        t: &TenantId,
        run_id: &str,
    ) -> Result<Option<RunManifest>, StoreError> {
        Ok(self.enter("load_run")?.runs.get(&k2(t, run_id)).cloned())
    }

    async fn create_run(&self, t: &TenantId, m: &RunManifest) -> Result<bool, StoreError> {
        let mut s = self.enter("create_run")?;
        let k = k2(t, &m.run_id);
        if s.runs.contains_key(&k) {
            return Ok(false);
        }
        let mut m = m.clone();
        m.version = 1;
        s.runs.insert(k, m);
        Ok(true)
    }

    async fn update_run(&self, t: &TenantId, m: &RunManifest) -> Result<(), StoreError> {
        let mut s = self.enter("update_run")?;
        let k = k2(t, &m.run_id);
        match s.runs.get(&k) {
            Some(stored) if stored.version == m.version && m.version > 0 => {
                let mut m = m.clone();
                m.version += 1;
                s.runs.insert(k, m);
                Ok(())
            }
            _ => Err(StoreError::Conflict),
        }
    }
}

impl RunIndex for MemStore {
    async fn list_runs(&self, t: &TenantId) -> Result<Vec<RunManifest>, StoreError> {
        let s = self.enter("list_runs")?;
        let mut runs: Vec<RunManifest> = s
            .runs
            .iter()
            .filter(|((tt, _), _)| tt == t.as_str())
            .map(|(_, m)| m.clone())
            .collect();
        runs.sort_by_key(|m| std::cmp::Reverse(m.created_at_ms));
        Ok(runs)
    }
}

impl HostMarkers for MemStore {
    async fn load_markers(&self, t: &TenantId, a: &AgentId) -> Result<Markers, StoreError> {
        Ok(self
            .enter("load_markers")?
            .markers
            .get(&k2(t, a.as_str()))
            .cloned()
            .unwrap_or_default())
    }

    async fn save_markers(&self, t: &TenantId, a: &AgentId, m: &Markers) -> Result<(), StoreError> {
        let mut s = self.enter("save_markers")?;
        let k = k2(t, a.as_str());
        let stored = s.markers.get(&k).map_or(0, |m| m.version);
        if stored != m.version {
            return Err(StoreError::Conflict);
        }
        let mut m = m.clone();
        m.version += 1;
        s.markers.insert(k, m);
        Ok(())
    }
}

impl EvidenceLog for MemStore {
    async fn put_evidence(
        &self,
        t: &TenantId,
        run_id: &str,
        p: &EvidencePoint,
    ) -> Result<(), StoreError> {
        self.enter("put_evidence")?
            .evidence
            .entry(k2(t, run_id))
            .or_default()
            .insert(p.seq, p.clone());
        Ok(())
    }
}

impl EvidenceReads for MemStore {
    async fn evidence(&self, t: &TenantId, run_id: &str) -> Result<Vec<EvidencePoint>, StoreError> {
        Ok(self
            .enter("evidence")?
            .evidence
            .get(&k2(t, run_id))
            .map(|e| e.values().cloned().collect())
            .unwrap_or_default())
    }
}

impl PolicySource for MemStore {
    async fn load_policy(&self, t: &TenantId) -> Result<TenantPolicy, StoreError> {
        Ok(self
            .enter("load_policy")?
            .policy
            .get(t.as_str())
            .cloned()
            .unwrap_or_default())
    }
}

impl PolicyAdmin for MemStore {
    async fn put_policy(&self, t: &TenantId, p: &TenantPolicy) -> Result<(), StoreError> {
        self.enter("put_policy")?
            .policy
            .insert(t.as_str().to_owned(), p.clone());
        Ok(())
    }
}

impl ExecutionCount for MemStore {
    async fn executions_this_hour(&self, t: &TenantId, now_ms: u64) -> Result<u32, StoreError> {
        let s = self.enter("executions_this_hour")?;
        Ok(s.executions
            .get(&(t.as_str().to_owned(), now_ms / 3_600_000))
            .copied()
            .unwrap_or(0))
    }
}

impl CountExecution for MemStore {
    async fn count_execution(&self, t: &TenantId, now_ms: u64) -> Result<u32, StoreError> {
        let mut s = self.enter("count_execution")?;
        let c = s
            .executions
            .entry((t.as_str().to_owned(), now_ms / 3_600_000))
            .or_default();
        *c += 1;
        Ok(*c)
    }
}

impl PriorAttempts for MemStore {
    async fn prior_attempts(
        &self,
        t: &TenantId,
        fingerprint: &str,
    ) -> Result<Vec<PriorRecord>, StoreError> {
        // Newest first, as the adapter's query reads them.
        Ok(self
            .enter("prior_attempts")?
            .prior
            .get(&k2(t, fingerprint))
            .map(|p| p.values().rev().cloned().collect())
            .unwrap_or_default())
    }
}

impl Remember for MemStore {
    async fn remember(
        &self,
        t: &TenantId,
        fingerprint: &str,
        r: &PriorRecord,
    ) -> Result<(), StoreError> {
        self.enter("remember")?
            .prior
            .entry(k2(t, fingerprint))
            .or_default()
            .insert((r.at_ms, r.run_id.clone()), r.clone());
        Ok(())
    }
}

impl AuditTrail for MemStore {
    async fn audit(&self, t: &TenantId, e: &AuditEntry) -> Result<(), StoreError> {
        self.enter("audit")?
            .audit
            .entry(t.as_str().to_owned())
            .or_default()
            .push(e.clone());
        Ok(())
    }
}

impl AuditReads for MemStore {
    async fn list_audit(&self, t: &TenantId) -> Result<Vec<AuditEntry>, StoreError> {
        let mut v = self
            .enter("list_audit")?
            .audit
            .get(t.as_str())
            .cloned()
            .unwrap_or_default();
        v.reverse();
        Ok(v)
    }
}

impl Outbox for MemStore {
    async fn enqueue_action(
        &self,
        t: &TenantId,
        a: &AgentId,
        item: &OutboxItem,
    ) -> Result<bool, StoreError> {
        let mut s = self.enter("enqueue_action")?;
        let k = k3(t, a, &item.action.id);
        if s.outbox.contains_key(&k) || s.done.contains_key(&k) {
            return Ok(false);
        }
        s.outbox.insert(k, item.clone());
        Ok(true)
    }

    async fn finished_action(
        &self,
        t: &TenantId,
        a: &AgentId,
        action_id: &str,
    ) -> Result<Option<DoneItem>, StoreError> {
        Ok(self
            .enter("finished_action")?
            .done
            .get(&k3(t, a, action_id))
            .cloned())
    }
}

impl AgentKinds for MemStore {
    async fn agent_kinds(
        &self,
        t: &TenantId,
        a: &AgentId,
    ) -> Result<Option<Vec<String>>, StoreError> {
        Ok(self
            .enter("agent_kinds")?
            .kinds
            .get(&k2(t, a.as_str()))
            .cloned())
    }
}

/// Artifact payloads by (tenant, id), stored as the bytes S3 would hold.
#[derive(Debug, Clone, Default)]
pub struct MemArtifacts(Arc<Mutex<BTreeMap<Key2, Vec<u8>>>>);

impl MemArtifacts {
    fn objects(&self) -> MutexGuard<'_, BTreeMap<Key2, Vec<u8>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.objects().len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects().is_empty()
    }

    /// Overwrites a stored payload (to test that damage is detected).
    pub fn damage(&self, t: &TenantId, id: &str, bytes: Vec<u8>) {
        self.objects().insert(k2(t, id), bytes);
    }
}

impl ArtifactStore for MemArtifacts {
    async fn put(&self, t: &TenantId, a: &Artifact) -> Result<String, StoreError> {
        let bytes = a.to_bytes();
        let id = Artifact::id_of(&bytes);
        self.objects().insert(k2(t, &id), bytes);
        Ok(id)
    }

    async fn get(&self, t: &TenantId, id: &str) -> Result<Option<Artifact>, StoreError> {
        let Some(bytes) = self.objects().get(&k2(t, id)).cloned() else {
            return Ok(None);
        };
        Artifact::from_bytes(id, &bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    }
}

impl EvidenceUploads for MemArtifacts {
    async fn evidence_upload(
        &self,
        t: &TenantId,
        run_id: &str,
        action_id: &str,
        ttl_s: u64,
    ) -> Result<(String, String), StoreError> {
        let key = format!("T/{}/evidence/{run_id}/{action_id}.json", t.as_str());
        Ok((
            key.clone(),
            format!("https://uploads.invalid/{key}?expires={ttl_s}"),
        ))
    }
}

/// One message a role sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub to: Stage,
    pub msg: StageMessage,
    pub delay_s: u32,
}

/// The role queues: records every send, in order.
#[derive(Debug, Clone, Default)]
pub struct MemQueue(Arc<Mutex<Vec<Sent>>>);

impl MemQueue {
    /// Everything sent so far, emptying the record.
    pub fn take(&self) -> Vec<Sent> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl StageQueue for MemQueue {
    async fn send(&self, to: Stage, msg: &StageMessage, delay_s: u32) -> Result<(), StoreError> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(Sent {
            to,
            msg: msg.clone(),
            delay_s,
        });
        Ok(())
    }
}
