//! In-memory implementations of the control plane's ports ([`crate::port`]), for
//! unit tests of [`crate::service::ControlPlane`] and for benchmarks (feature
//! `fakes`; always on in this crate's tests).
//!
//! Invariants (those of the DynamoDB adapter, so the tests meet the same races):
//! - `commit_poll` is all or nothing: the agent record only at its expected
//!   version, every enqueue only where the id is absent, every transition only from
//!   the state it was planned from; on any failed condition nothing is written and
//!   the answer is [`StoreError::Conflict`];
//! - `enroll` uses the token (unrevoked, unexpired, under its use limit) and
//!   creates the agent in one step, or does neither;
//! - `apply_desired` is conditional on the revision read;
//! - every call is counted by method name ([`Recorded::take_calls`]), so tests
//!   can hold the poll path to its call budget; a failure can be injected once per
//!   method ([`Recorded::fail_next`]).

use crate::credential::KeyRing;
use crate::model::{
    AgentRecord, AgentView, ApiKeyRecord, DesiredEntry, DesiredSet, DoneItem,
    EnrollmentTokenRecord, OutboxItem, ServicesRecord,
};
use crate::port::{
    ActionEntry, AgentStore, Clock, CredentialStore, DesiredStore, FleetQuery, KeySource,
    KeySourceError, PollCommit, SinkError, StoreError, TelemetrySink, Transition,
};
use crate::tenant::{AgentId, TenantId};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tether_proto::operator::DesiredWorkload;
use tether_proto::TelemetryWindow;

type Agent = (String, String);
type Item = (String, String, String);

/// A fake's data behind a lock, with every port call recorded by method name and
/// a failure injectable for the next call of a method. Clones share it.
#[derive(Debug)]
pub struct Recorded<T>(Arc<Mutex<Inner<T>>>);

#[derive(Debug, Default)]
pub struct Inner<T> {
    pub(crate) data: T,
    calls: Vec<&'static str>,
    fail: BTreeMap<&'static str, StoreError>,
}

impl<T> std::ops::Deref for Inner<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.data
    }
}

impl<T> std::ops::DerefMut for Inner<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.data
    }
}

impl<T> Clone for Recorded<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: Default> Default for Recorded<T> {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Inner {
            data: T::default(),
            calls: vec![],
            fail: BTreeMap::new(),
        })))
    }
}

impl<T> Recorded<T> {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the call; the injected failure, if any, instead of the data.
    pub(crate) fn enter(
        &self,
        method: &'static str,
    ) -> Result<MutexGuard<'_, Inner<T>>, StoreError> {
        let mut s = self.lock();
        s.calls.push(method);
        match s.fail.remove(method) {
            Some(e) => Err(e),
            None => Ok(s),
        }
    }

    /// The next call of `method` fails with `e` (once).
    pub fn fail_next(&self, method: &'static str, e: StoreError) {
        self.lock().fail.insert(method, e);
    }

    /// Port methods called so far, in order, emptying the record.
    pub fn take_calls(&self) -> Vec<&'static str> {
        std::mem::take(&mut self.lock().calls)
    }
}

#[derive(Debug, Default, Clone)]
pub struct Tables {
    agents: BTreeMap<Agent, AgentRecord>,
    services: BTreeMap<Agent, ServicesRecord>,
    outbox: BTreeMap<Item, OutboxItem>,
    done: BTreeMap<Item, DoneItem>,
    desired: BTreeMap<String, DesiredSet>,
    tokens: BTreeMap<Agent, EnrollmentTokenRecord>,
    api_keys: BTreeMap<Agent, ApiKeyRecord>,
}

/// Agents, outboxes, desired state and credentials in memory. Clones share state.
pub type MemFleet = Recorded<Tables>;

fn ta(t: &TenantId, a: &AgentId) -> Agent {
    (t.as_str().to_owned(), a.as_str().to_owned())
}

fn tk(t: &TenantId, id: &str) -> Agent {
    (t.as_str().to_owned(), id.to_owned())
}

fn tai(t: &TenantId, a: &AgentId, id: &str) -> Item {
    (t.as_str().to_owned(), a.as_str().to_owned(), id.to_owned())
}

impl MemFleet {
    pub fn agent(&self, t: &TenantId, a: &AgentId) -> Option<AgentRecord> {
        self.lock().agents.get(&ta(t, a)).cloned()
    }

    pub fn live_actions(&self, t: &TenantId, a: &AgentId) -> Vec<OutboxItem> {
        let k = ta(t, a);
        self.lock()
            .outbox
            .iter()
            .filter(|((tt, aa, _), _)| (tt, aa) == (&k.0, &k.1))
            .map(|(_, i)| i.clone())
            .collect()
    }

    /// Writes an agent record as stored (a test's precondition).
    pub fn put_agent(&self, t: &TenantId, a: AgentRecord) {
        self.lock().agents.insert(ta(t, &a.agent_id), a);
    }
}

impl AgentStore for MemFleet {
    async fn load_view(&self, t: &TenantId, a: &AgentId) -> Result<Option<AgentView>, StoreError> {
        let s = self.enter("load_view")?;
        let Some(agent) = s.agents.get(&ta(t, a)).cloned() else {
            return Ok(None);
        };
        let k = ta(t, a);
        let outbox = s
            .outbox
            .iter()
            .filter(|((tt, aa, _), _)| (tt, aa) == (&k.0, &k.1))
            .map(|(_, i)| i.clone())
            .collect();
        Ok(Some(AgentView {
            agent,
            outbox,
            services: s.services.get(&k).cloned(),
        }))
    }

    async fn commit_poll(&self, t: &TenantId, c: &PollCommit) -> Result<(), StoreError> {
        let mut s = self.enter("commit_poll")?;
        if c.item_count() > 100 {
            return Err(StoreError::Corrupt(format!(
                "poll commit of {} items exceeds 100",
                c.item_count()
            )));
        }
        // Apply to a copy; keep it only when every condition held.
        let mut next = s.data.clone();
        let a = &c.agent.agent_id;
        let stored = next.agents.get(&ta(t, a)).map_or(0, |r| r.version);
        if stored != c.expected_version {
            return Err(StoreError::Conflict);
        }
        next.agents.insert(ta(t, a), c.agent.clone());
        if let Some(svc) = &c.services {
            next.services.insert(ta(t, a), svc.clone());
        }
        for o in &c.enqueue {
            let k = tai(t, a, &o.action.id);
            if next.outbox.contains_key(&k) {
                return Err(StoreError::Conflict);
            }
            next.outbox.insert(k, o.clone());
        }
        for tr in &c.transitions {
            match tr {
                Transition::Advance { item, from } => {
                    let k = tai(t, a, &item.action.id);
                    match next.outbox.get(&k) {
                        Some(cur) if cur.state == *from => {
                            next.outbox.insert(k, item.clone());
                        }
                        _ => return Err(StoreError::Conflict),
                    }
                }
                Transition::Finish { done, from } => {
                    let k = tai(t, a, &done.item.action.id);
                    match next.outbox.get(&k) {
                        Some(cur) if cur.state == *from && !next.done.contains_key(&k) => {
                            next.outbox.remove(&k);
                            next.done.insert(k, done.clone());
                        }
                        _ => return Err(StoreError::Conflict),
                    }
                }
            }
        }
        s.data = next;
        Ok(())
    }

    async fn enroll(
        &self,
        t: &TenantId,
        token_id: &str,
        agent: &AgentRecord,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut s = self.enter("enroll")?;
        let k = ta(t, &agent.agent_id);
        let usable = s
            .tokens
            .get(&tk(t, token_id))
            .is_some_and(|r| !r.revoked && r.uses < r.max_uses && r.expires_at_ms > now_ms);
        if !usable || s.agents.contains_key(&k) {
            return Err(StoreError::Conflict);
        }
        if let Some(r) = s.tokens.get_mut(&tk(t, token_id)) {
            r.uses += 1;
        }
        s.agents.insert(k, agent.clone());
        Ok(())
    }

    async fn revoke_agent(&self, t: &TenantId, a: &AgentId) -> Result<bool, StoreError> {
        let mut s = self.enter("revoke_agent")?;
        Ok(match s.agents.get_mut(&ta(t, a)) {
            Some(r) => {
                r.revoked = true;
                r.credential_gen += 1;
                r.version += 1;
                true
            }
            None => false,
        })
    }
}

impl DesiredStore for MemFleet {
    async fn load_desired(&self, t: &TenantId) -> Result<DesiredSet, StoreError> {
        Ok(self
            .enter("load_desired")?
            .desired
            .get(t.as_str())
            .cloned()
            .unwrap_or_default())
    }

    async fn apply_desired(
        &self,
        t: &TenantId,
        changed: &[DesiredWorkload],
        expected_revision: u64,
        new_revision: u64,
    ) -> Result<(), StoreError> {
        let mut s = self.enter("apply_desired")?;
        let set = s.desired.entry(t.as_str().to_owned()).or_default();
        if set.revision != expected_revision {
            return Err(StoreError::Conflict);
        }
        set.revision = new_revision;
        for w in changed {
            set.workloads.insert(
                w.workload_key.clone(),
                DesiredEntry {
                    workload: w.clone(),
                    changed_at_revision: new_revision,
                },
            );
        }
        Ok(())
    }
}

impl CredentialStore for MemFleet {
    async fn put_enrollment_token(
        &self,
        t: &TenantId,
        rec: &EnrollmentTokenRecord,
    ) -> Result<(), StoreError> {
        let mut s = self.enter("put_enrollment_token")?;
        if s.tokens.contains_key(&tk(t, &rec.id)) {
            return Err(StoreError::Conflict);
        }
        s.tokens.insert(tk(t, &rec.id), rec.clone());
        Ok(())
    }

    async fn get_enrollment_token(
        &self,
        t: &TenantId,
        id: &str,
    ) -> Result<Option<EnrollmentTokenRecord>, StoreError> {
        Ok(self
            .enter("get_enrollment_token")?
            .tokens
            .get(&tk(t, id))
            .cloned())
    }

    async fn list_enrollment_tokens(
        &self,
        t: &TenantId,
    ) -> Result<Vec<EnrollmentTokenRecord>, StoreError> {
        Ok(self
            .enter("list_enrollment_tokens")?
            .tokens
            .iter()
            .filter(|((tt, _), _)| tt == t.as_str())
            .map(|(_, r)| r.clone())
            .collect())
    }

    async fn revoke_enrollment_token(&self, t: &TenantId, id: &str) -> Result<bool, StoreError> {
        let mut s = self.enter("revoke_enrollment_token")?;
        Ok(s.tokens
            .get_mut(&tk(t, id))
            .map(|r| r.revoked = true)
            .is_some())
    }

    async fn put_api_key(&self, t: &TenantId, rec: &ApiKeyRecord) -> Result<(), StoreError> {
        let mut s = self.enter("put_api_key")?;
        if s.api_keys.contains_key(&tk(t, &rec.id)) {
            return Err(StoreError::Conflict);
        }
        s.api_keys.insert(tk(t, &rec.id), rec.clone());
        Ok(())
    }

    async fn get_api_key(
        &self,
        t: &TenantId,
        id: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(self.enter("get_api_key")?.api_keys.get(&tk(t, id)).cloned())
    }

    async fn list_api_keys(&self, t: &TenantId) -> Result<Vec<ApiKeyRecord>, StoreError> {
        Ok(self
            .enter("list_api_keys")?
            .api_keys
            .iter()
            .filter(|((tt, _), _)| tt == t.as_str())
            .map(|(_, r)| r.clone())
            .collect())
    }

    async fn revoke_api_key(&self, t: &TenantId, id: &str) -> Result<bool, StoreError> {
        let mut s = self.enter("revoke_api_key")?;
        Ok(s.api_keys
            .get_mut(&tk(t, id))
            .map(|r| r.revoked = true)
            .is_some())
    }
}

impl FleetQuery for MemFleet {
    async fn list_agents(&self, t: &TenantId) -> Result<Vec<AgentRecord>, StoreError> {
        Ok(self
            .enter("list_agents")?
            .agents
            .iter()
            .filter(|((tt, _), _)| tt == t.as_str())
            .map(|(_, r)| r.clone())
            .collect())
    }

    async fn list_services(
        &self,
        t: &TenantId,
    ) -> Result<Vec<(AgentId, ServicesRecord)>, StoreError> {
        let s = self.enter("list_services")?;
        s.services
            .iter()
            .filter(|((tt, _), _)| tt == t.as_str())
            .map(|((_, a), r)| {
                AgentId::parse(a)
                    .map(|a| (a, r.clone()))
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }

    async fn list_actions(&self, t: &TenantId) -> Result<Vec<ActionEntry>, StoreError> {
        let s = self.enter("list_actions")?;
        let id = |a: &str| AgentId::parse(a).map_err(|e| StoreError::Corrupt(e.to_string()));
        let mut out = vec![];
        for ((tt, a, _), i) in &s.outbox {
            if tt == t.as_str() {
                out.push(ActionEntry::Live(id(a)?, i.clone()));
            }
        }
        for ((tt, a, _), d) in &s.done {
            if tt == t.as_str() {
                out.push(ActionEntry::Done(id(a)?, d.clone()));
            }
        }
        Ok(out)
    }
}

/// What the poll handed to the queues.
#[derive(Debug, Default)]
struct Sunk {
    windows: Vec<(String, String, TelemetryWindow)>,
    finished_runs: Vec<String>,
    down: bool,
    calls: u32,
}

/// The telemetry and executor queues in memory; [`MemSink::set_down`] makes
/// every send fail, as an unreachable SQS would.
#[derive(Debug, Clone, Default)]
pub struct MemSink(Arc<Mutex<Sunk>>);

impl MemSink {
    fn state(&self) -> MutexGuard<'_, Sunk> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_down(&self, down: bool) {
        self.state().down = down;
    }

    /// Sequence numbers of the windows sent, in order.
    pub fn seqs(&self) -> Vec<u64> {
        self.state().windows.iter().map(|(.., w)| w.seq).collect()
    }

    pub fn finished_runs(&self) -> Vec<String> {
        self.state().finished_runs.clone()
    }

    /// Send calls so far (each one SQS request).
    pub fn calls(&self) -> u32 {
        self.state().calls
    }
}

impl TelemetrySink for MemSink {
    async fn send(
        &self,
        t: &TenantId,
        a: &AgentId,
        windows: &[TelemetryWindow],
    ) -> Result<(), SinkError> {
        let mut s = self.state();
        s.calls += 1;
        if s.down {
            return Err(SinkError("queue unreachable".into()));
        }
        for w in windows {
            s.windows
                .push((t.as_str().into(), a.as_str().into(), w.clone()));
        }
        Ok(())
    }

    async fn incident_actions_finished(
        &self,
        _: &TenantId,
        runs: &[String],
    ) -> Result<(), SinkError> {
        let mut s = self.state();
        s.calls += 1;
        if s.down {
            return Err(SinkError("queue unreachable".into()));
        }
        s.finished_runs.extend(runs.iter().cloned());
        Ok(())
    }
}

/// A key ring held in memory; counts loads (each one a Secrets Manager call).
#[derive(Debug, Clone, Default)]
pub struct MemKeys {
    ring: Arc<Mutex<KeyRing>>,
    loads: Arc<AtomicU32>,
}

impl MemKeys {
    /// A ring with one fresh key.
    pub fn fresh(now_ms: u64) -> Self {
        let mut ring = KeyRing::default();
        ring.rotate(now_ms, 2);
        Self {
            ring: Arc::new(Mutex::new(ring)),
            loads: Arc::default(),
        }
    }

    /// Rotates the stored ring (new credentials sign with the new key).
    pub fn rotate(&self, now_ms: u64, keep: usize) -> String {
        self.ring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rotate(now_ms, keep)
    }

    pub fn loads(&self) -> u32 {
        self.loads.load(Ordering::SeqCst)
    }
}

impl KeySource for MemKeys {
    async fn load(&self) -> Result<KeyRing, KeySourceError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        Ok(self.ring.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// A clock tests move by hand. Clones share the time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn at(ms: u64) -> Self {
        Self(Arc::new(AtomicU64::new(ms)))
    }

    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
