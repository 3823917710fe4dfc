//! The control plane's use cases: enroll, poll, apply, and the operator reads and
//! credential management. Handlers at the edge call these; these call ports.
//!
//! Invariants:
//! - The tenant always comes from a verified credential (agent JWT, operator JWT or
//!   API key), never from a request body or header.
//! - The poll makes one store read; at most one store write (an atomic commit,
//!   retried from a fresh read on conflict); at most one telemetry send. The key ring
//!   and each tenant's desired state are cached for `key_cache_ttl_ms` and
//!   `desired_cache_ttl_ms`; an apply through this instance refreshes its own cache
//!   at once, other instances see it within the TTL.
//! - Telemetry is acknowledged only after the queue accepted it; results only after
//!   the commit that records them succeeded.

use crate::credential::{
    self, hash_secret, hashes_equal, issue_agent_credential, verify_agent_credential,
    verify_operator_jwt, AgentIdentity, KeyRing, OpaqueToken, OperatorJwtConfig, API_KEY_PREFIX,
    ENROLLMENT_PREFIX,
};
use crate::error::ControlError;
use crate::model::{AgentRecord, ApiKeyRecord, DesiredEntry, DesiredSet, EnrollmentTokenRecord};
use crate::poll::{plan_poll, PollSettings};
use crate::port::{
    ActionEntry, AgentStore, Clock, CredentialStore, DesiredStore, FleetQuery, KeySource,
    StoreError, TelemetrySink, Transition,
};
use crate::tenant::{AgentId, Principal, Role, TenantId};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use tether_proto::operator::{
    ActionList, ActionStatus, AgentList, AgentSummary, ApiKeyInfo, ApiKeyList, ApplyRequest,
    ApplyResponse, CreateApiKey, CreateEnrollmentToken, DesiredList, Drift, EnrollmentTokenInfo,
    EnrollmentTokenList, Instrumentation, Liveness, PythonSdk, ServiceList, ServiceStatus,
};
use tether_proto::{EnrollRequest, EnrollResponse, PollRequest, PollResponse, PROTOCOL_VERSION};
use tracing::{info, warn};

/// Tunables, typed and parsed once at cold start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub poll: PollSettings,
    pub credential_ttl_ms: u64,
    /// A poll within this long of the credential's expiry gets a renewed one.
    pub renew_before_ms: u64,
    pub key_cache_ttl_ms: u64,
    pub desired_cache_ttl_ms: u64,
    /// A commit that loses a race is re-planned from a fresh read this many times.
    pub commit_retries: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            poll: PollSettings::default(),
            credential_ttl_ms: 30 * 24 * 3_600_000,
            renew_before_ms: 7 * 24 * 3_600_000,
            key_cache_ttl_ms: 300_000,
            desired_cache_ttl_ms: 30_000,
            commit_retries: 3,
        }
    }
}

/// Limits on operator input.
/// One DynamoDB transaction: the revision item plus 99 workloads.
pub const MAX_WORKLOADS_PER_APPLY: usize = 99;
pub const MAX_WORKLOAD_KEY_LEN: usize = 256;
/// Most action kinds an agent may report per poll.
pub const MAX_ACTION_KINDS: usize = 64;
const MAX_TOKEN_TTL_S: u64 = 30 * 24 * 3600;
const DEFAULT_TOKEN_TTL_S: u64 = 24 * 3600;
const MAX_TOKEN_USES: u32 = 10_000;
/// A credential naming an unknown key id reloads the ring at most this often.
const KEY_RELOAD_FLOOR_MS: u64 = 10_000;

type Cached<T> = Option<(u64, Arc<T>)>;

/// The control plane, generic over its ports so the domain never names an adapter.
#[derive(Debug)]
pub struct ControlPlane<S, K, Q, C> {
    store: S,
    keys: K,
    sink: Q,
    clock: C,
    settings: Settings,
    operator_jwt: Option<OperatorJwtConfig>,
    ring: Mutex<Cached<KeyRing>>,
    desired: Mutex<HashMap<TenantId, (u64, Arc<DesiredSet>)>>,
}

impl<S, K, Q, C> ControlPlane<S, K, Q, C>
where
    S: AgentStore + DesiredStore + CredentialStore + FleetQuery,
    K: KeySource,
    Q: TelemetrySink,
    C: Clock,
{
    pub fn new(
        store: S,
        keys: K,
        sink: Q,
        clock: C,
        settings: Settings,
        operator_jwt: Option<OperatorJwtConfig>,
    ) -> Self {
        Self {
            store,
            keys,
            sink,
            clock,
            settings,
            operator_jwt,
            ring: Mutex::new(None),
            desired: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    async fn key_ring(&self, force: bool) -> Result<Arc<KeyRing>, ControlError> {
        let now = self.now();
        {
            let guard = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, ring)) = guard.as_ref() {
                let age = now.saturating_sub(*at);
                if age < self.settings.key_cache_ttl_ms && !(force && age >= KEY_RELOAD_FLOOR_MS) {
                    return Ok(ring.clone());
                }
            }
        }
        let ring = Arc::new(self.keys.load().await?);
        *self.ring.lock().unwrap_or_else(|e| e.into_inner()) = Some((now, ring.clone()));
        Ok(ring)
    }

    async fn desired_set(&self, t: &TenantId) -> Result<Arc<DesiredSet>, ControlError> {
        let now = self.now();
        {
            let guard = self.desired.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, set)) = guard.get(t) {
                if now.saturating_sub(*at) < self.settings.desired_cache_ttl_ms {
                    return Ok(set.clone());
                }
            }
        }
        let set = Arc::new(self.store.load_desired(t).await?);
        self.desired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(t.clone(), (now, set.clone()));
        Ok(set)
    }

    async fn verify_agent(&self, bearer: &str) -> Result<AgentIdentity, ControlError> {
        let now = self.now();
        let ring = self.key_ring(false).await?;
        match verify_agent_credential(&ring, bearer, now) {
            Err(credential::CredentialError::UnknownKey) => {
                let ring = self.key_ring(true).await?;
                Ok(verify_agent_credential(&ring, bearer, now)?)
            }
            other => Ok(other?),
        }
    }

    /// `POST /v1/enroll`.
    pub async fn enroll(&self, req: EnrollRequest) -> Result<EnrollResponse, ControlError> {
        check_protocol(req.protocol)?;
        if req.hostname.is_empty() || req.hostname.len() > 253 {
            return Err(ControlError::Invalid(
                "hostname must be 1 to 253 characters".into(),
            ));
        }
        let token = OpaqueToken::parse(ENROLLMENT_PREFIX, &req.token)
            .map_err(|_| ControlError::InvalidEnrollmentToken)?;
        let now = self.now();
        let rec = self
            .store
            .get_enrollment_token(&token.tenant, &token.id)
            .await?
            .ok_or(ControlError::InvalidEnrollmentToken)?;
        if !hashes_equal(&rec.secret_hash, &token.secret_hash())
            || rec.revoked
            || rec.expires_at_ms <= now
            || rec.uses >= rec.max_uses
        {
            return Err(ControlError::InvalidEnrollmentToken);
        }
        let ring = self.key_ring(false).await?;
        let interval = self.settings.poll.poll_interval_ms;
        let mut agent = AgentRecord::new(
            AgentId::generate(),
            req.hostname,
            req.agent_version,
            now,
            interval,
        );
        agent.capabilities = req.capabilities;
        agent.version = 1;
        let (credential, expires) = issue_agent_credential(
            &ring,
            &token.tenant,
            &agent.agent_id,
            agent.credential_gen,
            now,
            self.settings.credential_ttl_ms,
        )?;
        match self
            .store
            .enroll(&token.tenant, &token.id, &agent, now)
            .await
        {
            Err(StoreError::Conflict) => return Err(ControlError::InvalidEnrollmentToken),
            other => other?,
        }
        let span = tracing::Span::current();
        span.record("tenant", token.tenant.as_str());
        span.record("agent", agent.agent_id.as_str());
        info!(tenant = %token.tenant, agent_id = %agent.agent_id, "agent enrolled");
        Ok(EnrollResponse {
            protocol: PROTOCOL_VERSION,
            agent_id: agent.agent_id.to_string(),
            credential,
            credential_expires_at_ms: expires,
            next_poll_after_ms: interval,
        })
    }

    /// `POST /v1/poll`.
    pub async fn poll(&self, bearer: &str, req: PollRequest) -> Result<PollResponse, ControlError> {
        check_protocol(req.protocol)?;
        let id = self.verify_agent(bearer).await?;
        let span = tracing::Span::current();
        span.record("tenant", id.tenant.as_str());
        span.record("agent", id.agent.as_str());
        if req.agent_id != id.agent.as_str() {
            return Err(ControlError::AgentMismatch);
        }
        if req
            .services
            .as_ref()
            .is_some_and(|s| s.len() > tether_proto::MAX_SERVICES_PER_POLL)
            || req.heartbeat.collectors.len() > tether_proto::MAX_COLLECTORS
            || req.heartbeat.vitals.len() > tether_proto::MAX_VITALS
            || req.action_kinds.as_ref().is_some_and(|k| {
                k.len() > MAX_ACTION_KINDS || k.iter().any(|x| x.is_empty() || x.len() > 64)
            })
        {
            return Err(ControlError::Invalid(format!(
                "at most {} services, {} collectors, {} vitals and {MAX_ACTION_KINDS} action kinds (each 1 to 64 bytes) per poll",
                tether_proto::MAX_SERVICES_PER_POLL,
                tether_proto::MAX_COLLECTORS,
                tether_proto::MAX_VITALS
            )));
        }
        let desired = self.desired_set(&id.tenant).await?;
        let mut attempt = 0;
        let plan = loop {
            let now = self.now();
            let view = self
                .store
                .load_view(&id.tenant, &id.agent)
                .await?
                .ok_or(ControlError::InvalidCredential)?;
            if view.agent.revoked || view.agent.credential_gen != id.gen {
                return Err(ControlError::AgentRevoked);
            }
            let plan = plan_poll(&id.tenant, &view, &req, &desired, now, &self.settings.poll);
            let Some(commit) = &plan.commit else {
                break plan;
            };
            match self.store.commit_poll(&id.tenant, commit).await {
                Ok(()) => break plan,
                Err(StoreError::Conflict) if attempt < self.settings.commit_retries => attempt += 1,
                Err(e) => return Err(e.into()),
            }
        };
        for h in &plan.held {
            info!(tenant = %id.tenant, agent_id = %id.agent, workload = %h.workload_key, kind = h.kind, reason = %h.reason, "reconcile need held");
        }
        // Incident actions that just finished: tell the executor now (its periodic
        // check is the safety net if this send is lost). Nothing is sent otherwise.
        let mut runs: Vec<String> = plan
            .commit
            .iter()
            .flat_map(|c| &c.transitions)
            .filter_map(|t| match t {
                Transition::Finish { done, .. } => {
                    crate::incident::run::run_of_key(&done.item.action.idempotency_key)
                        .map(str::to_owned)
                }
                Transition::Advance { .. } => None,
            })
            .collect();
        runs.sort();
        runs.dedup();
        if !runs.is_empty() {
            if let Err(error) = self.sink.incident_actions_finished(&id.tenant, &runs).await {
                warn!(tenant = %id.tenant, agent_id = %id.agent, %error, "executor not notified; its periodic check will pick the result up");
            }
        }
        let mut response = plan.response;
        if !plan.telemetry.is_empty() {
            match self.sink.send(&id.tenant, &id.agent, &plan.telemetry).await {
                Ok(()) => response.ack.telemetry = plan.telemetry.iter().map(|w| w.seq).collect(),
                Err(error) => {
                    warn!(tenant = %id.tenant, agent_id = %id.agent, %error, "telemetry not acknowledged")
                }
            }
        }
        let now = self.now();
        if id.expires_at_ms.saturating_sub(now) < self.settings.renew_before_ms {
            let ring = self.key_ring(false).await?;
            let (fresh, _) = issue_agent_credential(
                &ring,
                &id.tenant,
                &id.agent,
                id.gen,
                now,
                self.settings.credential_ttl_ms,
            )?;
            response.renewed_credential = Some(fresh);
        }
        Ok(response)
    }

    /// Establishes who calls an operator route: an API key (`tet_key.` prefix) or an
    /// operator JWT.
    pub async fn authenticate_operator(&self, bearer: &str) -> Result<Principal, ControlError> {
        let p = self.operator_principal(bearer).await?;
        // The caller's span (the api's request span) logs who this is.
        let span = tracing::Span::current();
        span.record("tenant", p.tenant.as_str());
        span.record("principal", p.subject.as_str());
        Ok(p)
    }

    async fn operator_principal(&self, bearer: &str) -> Result<Principal, ControlError> {
        if bearer.starts_with(API_KEY_PREFIX) {
            let key = OpaqueToken::parse(API_KEY_PREFIX, bearer)
                .map_err(|_| ControlError::InvalidCredential)?;
            let rec = self
                .store
                .get_api_key(&key.tenant, &key.id)
                .await?
                .ok_or(ControlError::InvalidCredential)?;
            if rec.revoked || !hashes_equal(&rec.secret_hash, &key.secret_hash()) {
                return Err(ControlError::InvalidCredential);
            }
            return Ok(Principal {
                tenant: key.tenant,
                role: rec.role,
                subject: format!("key:{}", rec.id),
            });
        }
        let cfg = self
            .operator_jwt
            .as_ref()
            .ok_or(ControlError::Unauthenticated(
                "operator JWTs are not configured; use an API key",
            ))?;
        Ok(verify_operator_jwt(cfg, bearer, self.now())?)
    }

    /// `POST /v1/apply`: declarative and idempotent.
    pub async fn apply(
        &self,
        p: &Principal,
        req: ApplyRequest,
    ) -> Result<ApplyResponse, ControlError> {
        require(p, Role::Operator)?;
        if req.workloads.len() > MAX_WORKLOADS_PER_APPLY {
            return Err(ControlError::Invalid(format!(
                "at most {MAX_WORKLOADS_PER_APPLY} workloads per apply"
            )));
        }
        let mut keys = BTreeSet::new();
        for w in &req.workloads {
            validate_workload_key(&w.workload_key)?;
            if !keys.insert(w.workload_key.as_str()) {
                return Err(ControlError::Invalid(format!(
                    "workload {} appears twice",
                    w.workload_key
                )));
            }
        }
        for _ in 0..=self.settings.commit_retries {
            let current = self.store.load_desired(&p.tenant).await?;
            let changed: Vec<_> = req
                .workloads
                .iter()
                .filter(|w| current.get(&w.workload_key).map(|e| &e.workload) != Some(*w))
                .cloned()
                .collect();
            if changed.is_empty() {
                return Ok(ApplyResponse {
                    revision: current.revision,
                    changed: vec![],
                    unchanged: req.workloads.len(),
                });
            }
            let next = current.revision + 1;
            match self
                .store
                .apply_desired(&p.tenant, &changed, current.revision, next)
                .await
            {
                Ok(()) => {
                    let mut set = current;
                    for w in &changed {
                        set.workloads.insert(
                            w.workload_key.clone(),
                            DesiredEntry {
                                workload: w.clone(),
                                changed_at_revision: next,
                            },
                        );
                    }
                    set.revision = next;
                    self.desired
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(p.tenant.clone(), (self.now(), Arc::new(set)));
                    info!(tenant = %p.tenant, subject = %p.subject, revision = next, changed = changed.len(), "desired state applied");
                    return Ok(ApplyResponse {
                        revision: next,
                        unchanged: req.workloads.len() - changed.len(),
                        changed: changed.into_iter().map(|w| w.workload_key).collect(),
                    });
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ControlError::Busy)
    }

    pub async fn desired(&self, p: &Principal) -> Result<DesiredList, ControlError> {
        require(p, Role::Viewer)?;
        let set = self.store.load_desired(&p.tenant).await?;
        Ok(DesiredList {
            revision: set.revision,
            workloads: set.workloads.into_values().map(|e| e.workload).collect(),
        })
    }

    fn liveness(&self, a: &AgentRecord, now: u64) -> Liveness {
        if a.revoked {
            return Liveness::Revoked;
        }
        let fresh = self.settings.poll.last_seen_write_interval_ms + 2 * a.poll_interval_ms.max(1);
        let age = now.saturating_sub(a.last_seen_ms);
        if age <= fresh {
            Liveness::Active
        } else if age <= 4 * fresh {
            Liveness::Stale
        } else {
            Liveness::Offline
        }
    }

    /// An agent as operators see it. `desired_revision` is the tenant's now; an
    /// agent that has not polled since it changed lags with that reason.
    fn summary(&self, a: AgentRecord, desired_revision: u64, now: u64) -> AgentSummary {
        let liveness = self.liveness(&a, now);
        let mut drift = a.drift;
        if a.reconciled_revision < desired_revision && a.applied_revision < desired_revision {
            drift.insert(
                0,
                Drift {
                    workload_key: String::new(),
                    kind: String::new(),
                    reason: format!(
                        "not reconciled yet: the agent has not polled since desired revision {desired_revision}"
                    ),
                },
            );
        }
        AgentSummary {
            liveness,
            agent_id: a.agent_id.to_string(),
            hostname: a.hostname,
            agent_version: a.agent_version,
            last_seen_ms: a.last_seen_ms,
            poll_interval_ms: a.poll_interval_ms,
            enrolled_at_ms: a.enrolled_at_ms,
            applied_revision: a.applied_revision,
            desired_revision,
            drift,
            spool_depth: a.spool_depth,
            last_error: a.last_error,
            capabilities: a.capabilities,
            action_kinds: a.action_kinds,
            revoked: a.revoked,
            collectors: a.collectors,
            vitals: a.vitals,
        }
    }

    pub async fn list_agents(&self, p: &Principal) -> Result<AgentList, ControlError> {
        require(p, Role::Viewer)?;
        let now = self.now();
        let agents = self.store.list_agents(&p.tenant).await?;
        let desired = self.store.load_desired(&p.tenant).await?.revision;
        Ok(AgentList {
            agents: agents
                .into_iter()
                .map(|a| self.summary(a, desired, now))
                .collect(),
        })
    }

    pub async fn get_agent(
        &self,
        p: &Principal,
        agent_id: &str,
    ) -> Result<AgentSummary, ControlError> {
        require(p, Role::Viewer)?;
        let id = AgentId::parse(agent_id).map_err(|_| ControlError::NotFound("agent"))?;
        let view = self
            .store
            .load_view(&p.tenant, &id)
            .await?
            .ok_or(ControlError::NotFound("agent"))?;
        let desired = self.store.load_desired(&p.tenant).await?.revision;
        Ok(self.summary(view.agent, desired, self.now()))
    }

    pub async fn revoke_agent(&self, p: &Principal, agent_id: &str) -> Result<(), ControlError> {
        require(p, Role::Admin)?;
        let id = AgentId::parse(agent_id).map_err(|_| ControlError::NotFound("agent"))?;
        if !self.store.revoke_agent(&p.tenant, &id).await? {
            return Err(ControlError::NotFound("agent"));
        }
        info!(tenant = %p.tenant, subject = %p.subject, agent_id = %id, "agent credential revoked");
        Ok(())
    }

    pub async fn list_services(&self, p: &Principal) -> Result<ServiceList, ControlError> {
        require(p, Role::Viewer)?;
        let desired = self.store.load_desired(&p.tenant).await?;
        let mut services = Vec::new();
        for (agent, rec) in self.store.list_services(&p.tenant).await? {
            for s in rec.services {
                let want = desired.get(&s.workload_key).map(|e| e.workload.clone());
                let in_sync = want.as_ref().is_none_or(|w| {
                    let content_ok = w.instrumentation != Instrumentation::Instrumented
                        || w.llm_content.as_str()
                            == if s.llm_content.is_empty() {
                                "none"
                            } else {
                                s.llm_content.as_str()
                            };
                    (w.instrumentation == Instrumentation::Instrumented) == s.instrumented
                        && (w.python_sdk == PythonSdk::Enabled) == s.python_sdk
                        && content_ok
                });
                services.push(ServiceStatus {
                    agent_id: agent.to_string(),
                    workload_key: s.workload_key,
                    pid: s.pid,
                    exe: s.exe,
                    runtime: s.runtime,
                    llm_providers: s.llm_providers,
                    observed_instrumented: s.instrumented,
                    observed_python_sdk: s.python_sdk,
                    labels: s.labels,
                    desired: want,
                    in_sync,
                });
            }
        }
        Ok(ServiceList { services })
    }

    pub async fn list_actions(
        &self,
        p: &Principal,
        agent: Option<&str>,
    ) -> Result<ActionList, ControlError> {
        require(p, Role::Viewer)?;
        let entries = self.store.list_actions(&p.tenant).await?;
        let mut actions: Vec<ActionStatus> = entries
            .into_iter()
            .map(|e| action_status(&e))
            .filter(|a| agent.is_none_or(|id| a.agent_id == id))
            .collect();
        actions
            .sort_by(|a, b| (a.created_at_ms, &a.action_id).cmp(&(b.created_at_ms, &b.action_id)));
        Ok(ActionList { actions })
    }

    pub async fn create_enrollment_token(
        &self,
        p: &Principal,
        req: CreateEnrollmentToken,
    ) -> Result<EnrollmentTokenInfo, ControlError> {
        require(p, Role::Admin)?;
        self.issue_enrollment_token(&p.tenant, req).await
    }

    /// Creates an enrollment token without an operator: for the local runner's
    /// bootstrap, which holds data-layer access already.
    pub async fn issue_enrollment_token(
        &self,
        t: &TenantId,
        req: CreateEnrollmentToken,
    ) -> Result<EnrollmentTokenInfo, ControlError> {
        let ttl_s = req.ttl_s.unwrap_or(DEFAULT_TOKEN_TTL_S);
        let max_uses = req.max_uses.unwrap_or(1);
        if ttl_s == 0 || ttl_s > MAX_TOKEN_TTL_S {
            return Err(ControlError::Invalid(format!(
                "ttl_s must be 1..={MAX_TOKEN_TTL_S}"
            )));
        }
        if max_uses == 0 || max_uses > MAX_TOKEN_USES {
            return Err(ControlError::Invalid(format!(
                "max_uses must be 1..={MAX_TOKEN_USES}"
            )));
        }
        if req.description.len() > 256 {
            return Err(ControlError::Invalid(
                "description is at most 256 characters".into(),
            ));
        }
        let now = self.now();
        let (tok, text) = OpaqueToken::generate(ENROLLMENT_PREFIX, t);
        let rec = EnrollmentTokenRecord {
            id: tok.id.clone(),
            secret_hash: tok.secret_hash(),
            description: req.description,
            created_at_ms: now,
            expires_at_ms: now + ttl_s * 1000,
            max_uses,
            uses: 0,
            revoked: false,
        };
        self.store.put_enrollment_token(t, &rec).await?;
        let mut info = token_info(rec);
        info.token = Some(text);
        Ok(info)
    }

    pub async fn list_enrollment_tokens(
        &self,
        p: &Principal,
    ) -> Result<EnrollmentTokenList, ControlError> {
        require(p, Role::Admin)?;
        let tokens = self.store.list_enrollment_tokens(&p.tenant).await?;
        Ok(EnrollmentTokenList {
            tokens: tokens.into_iter().map(token_info).collect(),
        })
    }

    pub async fn revoke_enrollment_token(
        &self,
        p: &Principal,
        id: &str,
    ) -> Result<(), ControlError> {
        require(p, Role::Admin)?;
        if !self.store.revoke_enrollment_token(&p.tenant, id).await? {
            return Err(ControlError::NotFound("enrollment token"));
        }
        Ok(())
    }

    pub async fn create_api_key(
        &self,
        p: &Principal,
        req: CreateApiKey,
    ) -> Result<ApiKeyInfo, ControlError> {
        require(p, Role::Admin)?;
        self.issue_api_key(&p.tenant, req).await
    }

    /// Creates an API key without an operator: for bootstrap (see
    /// [`Self::issue_enrollment_token`]).
    pub async fn issue_api_key(
        &self,
        t: &TenantId,
        req: CreateApiKey,
    ) -> Result<ApiKeyInfo, ControlError> {
        let role = Role::parse(&req.role).ok_or_else(|| {
            ControlError::Invalid("role must be viewer, operator or admin".into())
        })?;
        if req.description.len() > 256 {
            return Err(ControlError::Invalid(
                "description is at most 256 characters".into(),
            ));
        }
        let (tok, text) = OpaqueToken::generate(API_KEY_PREFIX, t);
        let rec = ApiKeyRecord {
            id: tok.id.clone(),
            secret_hash: hash_secret(&tok.secret),
            role,
            description: req.description,
            created_at_ms: self.now(),
            revoked: false,
        };
        self.store.put_api_key(t, &rec).await?;
        let mut info = key_info(rec);
        info.key = Some(text);
        Ok(info)
    }

    pub async fn list_api_keys(&self, p: &Principal) -> Result<ApiKeyList, ControlError> {
        require(p, Role::Admin)?;
        let keys = self.store.list_api_keys(&p.tenant).await?;
        Ok(ApiKeyList {
            keys: keys.into_iter().map(key_info).collect(),
        })
    }

    pub async fn revoke_api_key(&self, p: &Principal, id: &str) -> Result<(), ControlError> {
        require(p, Role::Admin)?;
        if !self.store.revoke_api_key(&p.tenant, id).await? {
            return Err(ControlError::NotFound("api key"));
        }
        Ok(())
    }
}

fn check_protocol(v: u32) -> Result<(), ControlError> {
    if v != PROTOCOL_VERSION {
        return Err(ControlError::UnsupportedProtocol(v));
    }
    Ok(())
}

fn require(p: &Principal, role: Role) -> Result<(), ControlError> {
    if p.role < role {
        return Err(ControlError::Forbidden(match role {
            Role::Admin => "this route needs the admin role",
            Role::Operator => "this route needs the operator role",
            Role::Viewer => "this route needs the viewer role",
        }));
    }
    Ok(())
}

fn validate_workload_key(k: &str) -> Result<(), ControlError> {
    if k.is_empty() || k.len() > MAX_WORKLOAD_KEY_LEN || k.chars().any(char::is_control) {
        return Err(ControlError::Invalid(format!(
            "workload_key must be 1 to {MAX_WORKLOAD_KEY_LEN} printable characters"
        )));
    }
    let known = ["k8s:", "docker:", "systemd:", "host:"];
    if !known.iter().any(|p| k.starts_with(p)) {
        return Err(ControlError::Invalid(
            "workload_key must start with k8s:, docker:, systemd: or host:".into(),
        ));
    }
    Ok(())
}

fn token_info(r: EnrollmentTokenRecord) -> EnrollmentTokenInfo {
    EnrollmentTokenInfo {
        id: r.id,
        description: r.description,
        created_at_ms: r.created_at_ms,
        expires_at_ms: r.expires_at_ms,
        max_uses: r.max_uses,
        uses: r.uses,
        revoked: r.revoked,
        token: None,
    }
}

fn key_info(r: ApiKeyRecord) -> ApiKeyInfo {
    ApiKeyInfo {
        id: r.id,
        role: r.role.as_str().into(),
        description: r.description,
        created_at_ms: r.created_at_ms,
        revoked: r.revoked,
        key: None,
    }
}

fn action_status(e: &ActionEntry) -> ActionStatus {
    let (agent, item, state, result, updated) = match e {
        ActionEntry::Live(a, o) => (
            a,
            o,
            o.state.as_str(),
            o.last_result.clone(),
            o.updated_at_ms,
        ),
        ActionEntry::Done(a, d) => (
            a,
            &d.item,
            d.state.as_str(),
            d.result.clone(),
            d.finished_at_ms,
        ),
    };
    ActionStatus {
        action_id: item.action.id.clone(),
        agent_id: agent.to_string(),
        kind: item.action.kind.to_string(),
        target: item.action.target.clone(),
        state: state.into(),
        created_at_ms: item.created_at_ms,
        updated_at_ms: updated,
        expires_at_ms: item.action.expires_at_ms,
        attempt: item.attempt,
        result,
    }
}

#[cfg(test)]
mod tests;
