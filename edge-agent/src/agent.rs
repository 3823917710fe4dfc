//! One poll cycle: sample telemetry into the spool, discover services, send what
//! is pending, apply what comes back.
//!
//! Invariants:
//! - The services body travels only when its hash differs from the last one the
//!   server stored, or when the server asks for it.
//! - Telemetry windows and action results are spooled (fsynced) before they are
//!   sent, and leave the spool only when the response acknowledges them.
//! - Actions are run through [`crate::actions::handle`], whose ledger makes a
//!   redelivery harmless; their results are spooled before the next poll sends them.
//! - A response that is not a valid v1 answer is an error to back off from, never
//!   a panic; a revoked or unknown credential stops the agent with that reason.
//! - `seq` is persisted before the request leaves, so it never repeats across
//!   restarts; telemetry window numbers never repeat either (on open they start
//!   above the highest one still in the spool).
//! - The loop ([`run_loop`]) sleeps only through the injected [`Clock`]: the
//!   server's interval with jitter after a success, capped exponential backoff
//!   with jitter after a failure, never less than a `Retry-After`.

use crate::actions::{self, now_ms, Host, Ledger};
use crate::backoff;
use crate::clock::Clock;
use crate::config::Config;
use crate::discovery::{self, Resolver, ScanOptions};
use crate::instrument::Instrumenter;
use crate::remedy;
use crate::spool::{Record, RecordKey, Spool};
use crate::state::{self, Credential, PollState, Status};
use crate::telemetry::Sampler;
use crate::transport::{Transport, TransportError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tether_proto::{
    services_hash, EnrollRequest, EnrollResponse, ErrorBody, Heartbeat, Inventory, PollRequest,
    PollResponse, TelemetryWindow, MAX_RESULTS_PER_POLL, MAX_SERVICES_PER_POLL,
    MAX_TELEMETRY_PER_POLL, PROTOCOL_VERSION,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("the control plane answered {status} {code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("the control plane is busy (HTTP {status})")]
    Busy {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("malformed answer from the control plane: {0}")]
    Malformed(String),
    #[error(
        "credential refused ({0}): enroll again with a new token (tether-agent enroll --force)"
    )]
    Fatal(String),
    #[error("{0}")]
    Local(String),
}

impl AgentError {
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AgentError::Busy { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

fn local(e: impl std::fmt::Display) -> AgentError {
    AgentError::Local(e.to_string())
}

pub fn credential_path(dir: &Path) -> PathBuf {
    dir.join("credential.json")
}

pub fn status_path(dir: &Path) -> PathBuf {
    dir.join("status.json")
}

fn error_of(status: u16, body: &[u8]) -> (String, String) {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => (b.error.code, b.error.message),
        Err(_) => (
            format!("http_{status}"),
            String::from_utf8_lossy(body).chars().take(200).collect(),
        ),
    }
}

/// The host facts sent as `inventory` (only when they change).
pub fn inventory(cfg: &Config, gpus: Vec<String>) -> Inventory {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| std::env::consts::OS.to_owned());
    let memory_bytes = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024);
    Inventory {
        hostname: hostname(),
        os,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get() as u32),
        memory_bytes,
        gpus,
        labels: cfg.labels.clone(),
    }
}

/// FNV-1a 64 over the inventory's JSON (field order is fixed, maps are sorted).
pub fn inventory_hash(inv: &Inventory) -> String {
    let bytes = serde_json::to_vec(inv).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// What the agent can always do: read `/proc`.
pub const CAPABILITIES: &[&str] = &["proc"];

/// How long a probe of what the host offers is trusted before it is redone
/// (systemd, journald, a Docker socket, NVML, cgroup controllers come and go
/// rarely; NVML's probe loads a library, so not every poll).
const OFFERS_TTL: Duration = Duration::from_secs(300);

/// What this agent can do here, as the server's `requires_capability` names it:
/// `proc` always, and each facility the host offers.
fn capabilities(o: &remedy::Offers) -> Vec<String> {
    let mut c: Vec<String> = CAPABILITIES.iter().map(|c| c.to_string()).collect();
    for (on, name) in [
        (o.systemd, "systemd"),
        (o.journald, "journald"),
        (o.docker, "docker"),
        (o.nvml, "nvml"),
        (o.cgroup_limits, "cgroup"),
        (o.ebpf, "ebpf"),
    ] {
        if on {
            c.push(name.into());
        }
    }
    c
}

/// Enrolls with the configured token and stores the credential (mode 0600).
pub fn enroll(cfg: &Config, t: &dyn Transport) -> Result<Credential, AgentError> {
    let token = cfg
        .enrollment_token
        .clone()
        .ok_or_else(|| AgentError::Local("no enrollment_token configured".into()))?;
    let body = serde_json::to_vec(&EnrollRequest {
        protocol: PROTOCOL_VERSION,
        token,
        hostname: hostname(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
        labels: cfg.labels.clone(),
    })
    .map_err(local)?;
    let reply = t.post("/v1/enroll", None, &body)?;
    if reply.status == 429 || reply.status == 503 {
        return Err(AgentError::Busy {
            status: reply.status,
            retry_after: reply.retry_after,
        });
    }
    if reply.status != 201 && reply.status != 200 {
        let (code, message) = error_of(reply.status, &reply.body);
        return Err(AgentError::Refused {
            status: reply.status,
            code,
            message,
        });
    }
    let e: EnrollResponse =
        serde_json::from_slice(&reply.body).map_err(|e| AgentError::Malformed(e.to_string()))?;
    let cred = Credential {
        agent_id: e.agent_id,
        credential: e.credential,
        expires_at_ms: e.credential_expires_at_ms,
        server_url: cfg.server_url.clone(),
    };
    std::fs::create_dir_all(&cfg.data_dir).map_err(local)?;
    state::write(&credential_path(&cfg.data_dir), &cred, 0o600).map_err(local)?;
    Ok(cred)
}

pub struct Agent<T: Transport> {
    cfg: Config,
    transport: T,
    cred: Credential,
    state: PollState,
    spool: Spool,
    ledger: Ledger,
    sampler: Sampler,
    resolver: Resolver,
    scan_opts: ScanOptions,
    host: Host,
    proc_root: PathBuf,
    inventory: Inventory,
    window_start_ms: u64,
    started: Instant,
    dropped_before: u64,
    workloads: WorkloadWatch,
    inst: Instrumenter,
    docker: crate::docker::Docker,
    /// Every process of each workload the last scan reported.
    members: BTreeMap<String, Vec<u32>>,
    /// The last probe of what the host offers: when, with eBPF loaded or not.
    offers: Option<(Instant, bool, remedy::Offers)>,
    pub status: Status,
}

/// The agent's instrumentation, seen by the action runner with the last scan.
struct Acting<'a> {
    inst: &'a mut Instrumenter,
    members: &'a BTreeMap<String, Vec<u32>>,
}

impl actions::Instrument for Acting<'_> {
    fn act(&mut self, a: &tether_proto::Action) -> (tether_proto::ResultStatus, String) {
        self.inst.act(a, self.members)
    }

    fn llm_evidence(&self) -> Result<String, String> {
        self.inst.llm_evidence()
    }
}

/// What discovery says about workloads between two windows: restarts (same
/// workload key, new pid) and LLM clients, instrumented or not. The incident
/// chain's crash-loop and uninstrumented-LLM rules read these metrics; the
/// per-workload `llm.uninstrumented.<key>` (1, or 0 once instrumented) names the
/// workload to instrument and lets the verifier see the fix.
#[derive(Debug, Default)]
pub struct WorkloadWatch {
    pids: std::collections::HashMap<String, u32>,
    restarts: BTreeMap<String, u32>,
    /// LLM client workloads of the last scan: key -> instrumented.
    llm: BTreeMap<String, bool>,
}

/// Workloads whose restarts a window reports (the busiest first), and LLM
/// workloads it reports one by one (the uninstrumented first).
const MAX_RESTART_METRICS: usize = 10;
const MAX_LLM_WORKLOAD_METRICS: usize = 10;

impl WorkloadWatch {
    pub fn see(&mut self, services: &[tether_proto::Service]) {
        for s in services {
            if let Some(old) = self.pids.insert(s.workload_key.clone(), s.pid) {
                if old != s.pid {
                    *self.restarts.entry(s.workload_key.clone()).or_default() += 1;
                }
            }
        }
        self.llm = services
            .iter()
            .filter(|s| !s.llm_providers.is_empty())
            .map(|s| (s.workload_key.clone(), s.instrumented))
            .collect();
    }

    /// Adds this window's workload metrics and starts counting afresh.
    pub fn drain_into(&mut self, m: &mut BTreeMap<String, f64>) {
        let mut busiest: Vec<(String, u32)> =
            std::mem::take(&mut self.restarts).into_iter().collect();
        busiest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        for (key, n) in busiest.into_iter().take(MAX_RESTART_METRICS) {
            m.insert(format!("svc.restarts.{key}"), f64::from(n));
        }
        let uninstrumented = self.llm.values().filter(|i| !**i).count();
        m.insert("llm.uninstrumented".into(), uninstrumented as f64);
        let mut llm: Vec<(&String, &bool)> = self.llm.iter().collect();
        llm.sort_by_key(|(_, instrumented)| **instrumented);
        for (key, instrumented) in llm.into_iter().take(MAX_LLM_WORKLOAD_METRICS) {
            let v = if *instrumented { 0.0 } else { 1.0 };
            m.insert(format!("llm.uninstrumented.{key}"), v);
        }
    }
}

/// What a successful cycle asks of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The server's interval (jitter is the loop's business).
    Interval(u64),
    /// Results are waiting: poll again shortly rather than a full interval later.
    Soon,
}

/// How long [`Next::Soon`] waits.
pub const SOON: Duration = Duration::from_millis(500);

impl<T: Transport> std::fmt::Debug for Agent<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("agent_id", &self.cred.agent_id)
            .field("seq", &self.state.seq)
            .finish_non_exhaustive()
    }
}

impl<T: Transport> Agent<T> {
    pub fn new(cfg: Config, transport: T, cred: Credential) -> Result<Self, AgentError> {
        Self::with_proc(cfg, transport, cred, Path::new("/proc"), Resolver::start)
    }

    /// As [`Agent::new`], reading processes and kernel counters under `proc_root`
    /// and building the LLM matchers with `resolver` (tests pass offline ones).
    pub fn with_proc(
        cfg: Config,
        transport: T,
        cred: Credential,
        proc_root: &Path,
        resolver: fn(&[String], &[String]) -> Resolver,
    ) -> Result<Self, AgentError> {
        let dir = cfg.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(local)?;
        let mut state: PollState = state::read(&dir.join("state.json"))
            .map_err(local)?
            .unwrap_or_default();
        let spool = Spool::open(&dir.join("spool"), cfg.spool_max_bytes).map_err(local)?;
        // A crash between spooling a window and saving the state must not reuse
        // its number: the control plane drops repeats of (agent, seq).
        if let Some(top) = spool.max_telemetry_seq() {
            state.next_window_seq = state.next_window_seq.max(top + 1);
        }
        let ledger = Ledger::open(&dir.join("ledger.log")).map_err(local)?;
        let status: Status = state::read(&status_path(&dir))
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut sampler = Sampler::new(proc_root);
        let sample = sampler.sample(); // baseline for rates
        let window_start_ms = if state.window_start_ms > 0 {
            state.window_start_ms
        } else {
            now_ms()
        };
        let resolver = resolver(&cfg.llm_hosts, &cfg.bedrock_regions);
        for bad in &resolver.invalid {
            eprintln!("tether-agent: llm_hosts: ignoring {bad:?}: not a host name, address, ip:port or CIDR");
        }
        let systemd_dir = PathBuf::from("/etc/systemd/system");
        let inst = Instrumenter::start(cfg.ebpf, &dir, &cfg.otlp_endpoint, hostname());
        let mut collectors = sample.collectors;
        collectors.push(inst.collector());
        Ok(Self {
            inventory: inventory(&cfg, sample.gpus.clone()),
            resolver,
            scan_opts: ScanOptions {
                all_python: cfg.report_all_python,
                systemd_dir: systemd_dir.clone(),
                connects: Default::default(),
                containers: Default::default(),
            },
            host: Host {
                allowed: cfg.allowed_actions.clone(),
                systemd_dir,
                python_sdk_path: cfg.python_sdk_path.clone(),
                otlp_endpoint: cfg.otlp_endpoint.clone(),
                remedy: crate::remedy::Context::new(
                    &dir,
                    &cfg.log_dirs,
                    &cfg.protected_processes,
                    Path::new(&cfg.docker_socket),
                ),
            },
            proc_root: proc_root.to_path_buf(),
            window_start_ms,
            started: Instant::now(),
            dropped_before: status.spool_dropped,
            workloads: WorkloadWatch::default(),
            inst,
            docker: crate::docker::Docker::new(PathBuf::from(&cfg.docker_socket)),
            members: BTreeMap::new(),
            offers: None,
            status: Status {
                agent_id: cred.agent_id.clone(),
                server_url: cfg.server_url.clone(),
                vitals: crate::telemetry::vitals(&sample.metrics),
                collectors,
                ..status
            },
            cfg,
            transport,
            cred,
            state,
            spool,
            ledger,
            sampler,
        })
    }

    /// What the host offers, probed again after [`OFFERS_TTL`] or when the eBPF
    /// state changed, so the kinds the agent advertises follow the host.
    fn offers(&mut self) -> remedy::Offers {
        let ebpf = self.inst.available().is_ok();
        match &self.offers {
            Some((at, e, o)) if *e == ebpf && at.elapsed() < OFFERS_TTL => *o,
            _ => {
                let o = remedy::Offers::probe(&self.host.remedy, ebpf);
                self.offers = Some((Instant::now(), ebpf, o));
                o
            }
        }
    }

    fn save_state(&mut self) -> Result<(), AgentError> {
        self.state.window_start_ms = self.window_start_ms;
        state::write(&self.cfg.data_dir.join("state.json"), &self.state, 0o600).map_err(local)
    }

    fn spool_window_if_due(&mut self) -> Result<(), AgentError> {
        let now = now_ms();
        if now.saturating_sub(self.window_start_ms) < self.cfg.telemetry_window_s * 1000 {
            return Ok(());
        }
        let sample = self.sampler.sample();
        self.status.collectors = sample.collectors;
        self.status.collectors.push(self.inst.collector());
        self.status.collectors.extend(self.docker.collector());
        self.status.vitals = crate::telemetry::vitals(&sample.metrics);
        let mut metrics = sample.metrics;
        self.workloads.drain_into(&mut metrics);
        self.inst.drain_into(&mut metrics);
        let w = TelemetryWindow {
            seq: self.state.next_window_seq,
            start_ms: self.window_start_ms,
            end_ms: now,
            metrics,
            events: sample.events,
        };
        self.spool.append(&Record::Telemetry(w)).map_err(local)?;
        self.state.next_window_seq += 1;
        self.window_start_ms = now;
        self.save_state()
    }

    /// Records lost to the spool cap or found torn, over this data dir's life.
    fn dropped(&self) -> u64 {
        self.dropped_before + self.spool.dropped
    }

    /// One cycle; says when to poll next.
    pub fn cycle(&mut self) -> Result<Next, AgentError> {
        self.spool_window_if_due()?;
        self.scan_opts.connects = self.inst.take_connects();
        if self.docker.refresh(false) {
            self.scan_opts.containers = self.docker.containers().clone();
        }
        let scan = discovery::scan(&self.proc_root, &self.resolver.endpoints(), &self.scan_opts);
        self.inst.reconcile(&scan.members);
        self.members = scan.members;
        let mut services = scan.services;
        for s in &mut services {
            s.instrumented = self.inst.is_instrumented(s.pid);
            if s.instrumented {
                s.llm_content = self.inst.content_mode(&s.workload_key).to_owned();
            }
        }
        services.truncate(MAX_SERVICES_PER_POLL);
        self.workloads.see(&services);
        let hash = services_hash(&services);
        let send_services = hash != self.state.sent_services_hash;
        let inv_hash = inventory_hash(&self.inventory);
        let send_inventory = inv_hash != self.state.sent_inventory_hash;
        let mut results = Vec::new();
        let mut telemetry = Vec::new();
        for r in self.spool.pending(usize::MAX) {
            match r {
                Record::Result(x) if results.len() < MAX_RESULTS_PER_POLL => results.push(x),
                Record::Telemetry(w) if telemetry.len() < MAX_TELEMETRY_PER_POLL => {
                    telemetry.push(w)
                }
                _ => {}
            }
            if results.len() >= MAX_RESULTS_PER_POLL && telemetry.len() >= MAX_TELEMETRY_PER_POLL {
                break;
            }
        }
        self.state.seq += 1;
        self.save_state()?;
        let last_error = self.status.last_error.clone().or_else(|| {
            (self.dropped() > 0).then(|| {
                format!(
                    "spool: {} records dropped (spool_max_bytes reached or torn on disk)",
                    self.dropped()
                )
            })
        });
        let offers = self.offers();
        let req = PollRequest {
            protocol: PROTOCOL_VERSION,
            agent_id: self.cred.agent_id.clone(),
            seq: self.state.seq,
            capabilities: capabilities(&offers),
            action_kinds: Some(remedy::runnable_kinds(&self.host.allowed, &offers)),
            inventory_hash: inv_hash.clone(),
            inventory: send_inventory.then(|| self.inventory.clone()),
            services_hash: hash.clone(),
            services: send_services.then(|| services.clone()),
            applied_revision: self.state.applied_revision,
            heartbeat: Heartbeat {
                agent_version: env!("CARGO_PKG_VERSION").into(),
                uptime_s: self.started.elapsed().as_secs(),
                spool_depth: self.spool.depth(),
                last_error,
                collectors: self
                    .status
                    .collectors
                    .iter()
                    .take(tether_proto::MAX_COLLECTORS)
                    .map(|c| tether_proto::CollectorState {
                        name: c.name.clone(),
                        state: c.state.clone(),
                        reason: c.reason.clone(),
                    })
                    .collect(),
                vitals: self.status.vitals.clone(),
            },
            results,
            telemetry,
        };
        let body = serde_json::to_vec(&req).map_err(local)?;
        self.status.last_poll_ms = now_ms();
        self.status.services = services.len();
        let reply = self
            .transport
            .post("/v1/poll", Some(&self.cred.credential), &body)?;
        match reply.status {
            200 => {}
            401 => {
                let (code, _) = error_of(401, &reply.body);
                return Err(AgentError::Fatal(code));
            }
            429 | 503 => {
                return Err(AgentError::Busy {
                    status: reply.status,
                    retry_after: reply.retry_after,
                })
            }
            s => {
                let (code, message) = error_of(s, &reply.body);
                return Err(AgentError::Refused {
                    status: s,
                    code,
                    message,
                });
            }
        }
        let resp: PollResponse = serde_json::from_slice(&reply.body)
            .map_err(|e| AgentError::Malformed(e.to_string()))?;
        if resp.protocol != PROTOCOL_VERSION {
            return Err(AgentError::Malformed(format!("protocol {}", resp.protocol)));
        }
        let mut acked: Vec<RecordKey> = resp
            .ack
            .telemetry
            .iter()
            .map(|s| RecordKey::Telemetry(*s))
            .collect();
        acked.extend(
            resp.ack
                .results
                .iter()
                .map(|r| RecordKey::Result(r.action_id.clone(), r.phase)),
        );
        self.spool.ack(&acked);
        // The server asked for bodies this poll did not carry: answer promptly (once:
        // a server that asks again after getting them waits a full interval).
        let asked = (resp.send_full_services && !send_services)
            || (resp.send_full_inventory && !send_inventory);
        if resp.send_full_services {
            self.state.sent_services_hash.clear();
        } else if send_services {
            self.state.sent_services_hash = hash;
        }
        if resp.send_full_inventory {
            self.state.sent_inventory_hash.clear();
        } else if send_inventory {
            self.state.sent_inventory_hash = inv_hash;
        }
        if let Some(fresh) = resp.renewed_credential {
            self.cred.credential = fresh;
            state::write(&credential_path(&self.cfg.data_dir), &self.cred, 0o600).map_err(local)?;
        }
        let now = now_ms();
        let mut waiting = false;
        let mut ran_any = false;
        for a in &resp.actions {
            if a.not_before_ms > now {
                // Not yet: no phase is reported, so the server hands it out again.
                waiting = true;
                continue;
            }
            ran_any = true;
            let mut acting = Acting {
                inst: &mut self.inst,
                members: &self.members,
            };
            for r in actions::handle(a, &self.host, &mut self.ledger, &mut acting).map_err(local)? {
                self.spool.append(&Record::Result(r)).map_err(local)?;
            }
        }
        if !waiting {
            self.state.applied_revision = resp.desired_revision;
        }
        self.save_state()?;
        self.status.last_success_ms = now_ms();
        self.status.failing_since_ms = None;
        self.status.last_outcome = format!(
            "ok: {} actions, {} acknowledged",
            resp.actions.len(),
            acked.len()
        );
        self.status.last_error = None;
        self.status.health = "healthy".into();
        // New results go out promptly; only once per batch of actions, so a server
        // that never acknowledges cannot turn this into a hot loop.
        Ok(if ran_any || asked {
            Next::Soon
        } else {
            Next::Interval(resp.next_poll_after_ms)
        })
    }

    pub fn record_failure(&mut self, e: &AgentError) {
        let now = now_ms();
        self.status.last_error = Some(e.to_string());
        self.status.last_outcome = "error".into();
        let since = *self.status.failing_since_ms.get_or_insert(now);
        self.status.health = format!(
            "unhealthy: cannot reach the control plane since {}",
            state::iso8601(since)
        );
    }

    pub fn write_status(&mut self) {
        self.status.spool_depth = self.spool.depth();
        self.status.spool_dropped = self.dropped();
        self.status.instrumentation = Some(self.inst.status());
        if let Err(e) = state::write(&status_path(&self.cfg.data_dir), &self.status, 0o644) {
            eprintln!("tether-agent: cannot write status: {e}");
        }
    }
}

/// Polls until stopped (or once): the loop around [`Agent::cycle`]. Every wait
/// goes through `clock`, so a test drives it without sleeping.
pub fn run_loop<T: Transport>(
    a: &mut Agent<T>,
    clock: &dyn Clock,
    stop: &AtomicBool,
    once: bool,
) -> Result<(), AgentError> {
    let cap = Duration::from_secs(a.cfg.max_backoff_s);
    let mut failures = 0u32;
    loop {
        let wait = match a.cycle() {
            Ok(next) => {
                failures = 0;
                a.write_status();
                match next {
                    Next::Soon => SOON,
                    Next::Interval(ms) => backoff::steady(ms, clock.unit()),
                }
            }
            Err(e @ AgentError::Fatal(_)) => {
                a.record_failure(&e);
                a.write_status();
                return Err(e);
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                a.record_failure(&e);
                a.write_status();
                if once {
                    return Err(e);
                }
                let wait = backoff::after_failure(failures, cap, e.retry_after(), clock.unit());
                eprintln!(
                    "tether-agent: poll failed ({e}); retrying in {:.1}s",
                    wait.as_secs_f64()
                );
                wait
            }
        };
        if once {
            return Ok(());
        }
        if stop.load(Ordering::Relaxed) || clock.sleep(wait, stop) {
            eprintln!("tether-agent: stopping (signal); spool and state are on disk");
            a.write_status();
            a.inst.stop();
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Reply;
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use tether_proto::{Ack, Action, ActionKind, ActionMode, ResultPhase, ResultStatus};

    struct ScriptedTransport {
        replies: RefCell<VecDeque<Result<Reply, TransportError>>>,
        sent: RefCell<Vec<PollRequest>>,
    }

    impl Transport for &ScriptedTransport {
        fn post(&self, path: &str, _: Option<&str>, body: &[u8]) -> Result<Reply, TransportError> {
            assert_eq!(path, "/v1/poll");
            self.sent
                .borrow_mut()
                .push(serde_json::from_slice(body).expect("a PollRequest"));
            self.replies.borrow_mut().pop_front().unwrap_or(Ok(Reply {
                status: 401,
                retry_after: None,
                body: br#"{"error":{"code":"agent_revoked","message":"revoked"}}"#.to_vec(),
            }))
        }
    }

    struct FakeClock {
        slept: RefCell<Vec<Duration>>,
    }

    impl Clock for FakeClock {
        fn sleep(&self, d: Duration, _: &AtomicBool) -> bool {
            self.slept.borrow_mut().push(d);
            false
        }
        fn unit(&self) -> f64 {
            0.5
        }
    }

    fn ok(resp: PollResponse) -> Result<Reply, TransportError> {
        Ok(Reply {
            status: 200,
            retry_after: None,
            body: serde_json::to_vec(&resp).expect("json"),
        })
    }

    fn answer(interval_ms: u64) -> PollResponse {
        PollResponse {
            protocol: PROTOCOL_VERSION,
            next_poll_after_ms: interval_ms,
            desired_revision: 3,
            ..PollResponse::default()
        }
    }

    fn setup(name: &str) -> (Config, Credential) {
        let dir = std::env::temp_dir().join(format!(
            "agent-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let d = dir.display().to_string();
        let cfg = Config::load(Path::new("/nonexistent"), &move |k| match k {
            "TETHER_AGENT_SERVER_URL" => Some("http://127.0.0.1:9".into()),
            "TETHER_AGENT_DATA_DIR" => Some(d.clone()),
            "TETHER_AGENT_MAX_BACKOFF_S" => Some("60".into()),
            "TETHER_AGENT_EBPF" => Some("false".into()),
            "TETHER_AGENT_ALLOWED_ACTIONS" => {
                Some("collect_evidence,signal_process,instrument,no_such_kind".into())
            }
            _ => None,
        })
        .expect("config");
        let cred = Credential {
            agent_id: "agt_test".into(),
            credential: "jwt".into(),
            expires_at_ms: u64::MAX,
            server_url: cfg.server_url.clone(),
        };
        (cfg, cred)
    }

    fn agent<'a>(
        cfg: &Config,
        cred: &Credential,
        t: &'a ScriptedTransport,
    ) -> Agent<&'a ScriptedTransport> {
        Agent::with_proc(cfg.clone(), t, cred.clone(), Path::new("/proc"), |c, _| {
            Resolver::fixed(c)
        })
        .expect("agent")
    }

    #[test]
    fn the_loop_backs_off_honours_retry_after_and_stops_on_revocation() {
        let (cfg, cred) = setup("loop");
        let mut with_action = answer(10_000);
        with_action.actions = vec![Action {
            id: "act_1".into(),
            kind: ActionKind::new("restart_service"),
            target: "systemd:chat.service".into(),
            payload: serde_json::json!({"unit": "chat.service"}),
            idempotency_key: "idem_1".into(),
            not_before_ms: 0,
            expires_at_ms: u64::MAX,
            mode: ActionMode::Execute,
            requires_capability: String::new(),
        }];
        with_action.send_full_services = true;
        let t = ScriptedTransport {
            replies: RefCell::new(VecDeque::from([
                Ok(Reply {
                    status: 503,
                    retry_after: Some(Duration::from_secs(7)),
                    body: br#"{"error":{"code":"busy","message":"busy"}}"#.to_vec(),
                }),
                Err(TransportError::Unreachable {
                    url: "http://127.0.0.1:9".into(),
                    reason: "connection refused".into(),
                }),
                Ok(Reply {
                    status: 200,
                    retry_after: None,
                    body: b"<html>not json</html>".to_vec(),
                }),
                ok(answer(10_000)),
                ok(with_action),
                ok(PollResponse {
                    ack: Ack {
                        seq: 6,
                        results: vec![
                            tether_proto::ResultAck {
                                action_id: "act_1".into(),
                                phase: ResultPhase::Received,
                            },
                            tether_proto::ResultAck {
                                action_id: "act_1".into(),
                                phase: ResultPhase::Final,
                            },
                        ],
                        telemetry: vec![],
                    },
                    ..answer(20_000)
                }),
            ])),
            sent: RefCell::new(Vec::new()),
        };
        let clock = FakeClock {
            slept: RefCell::new(Vec::new()),
        };
        let mut a = agent(&cfg, &cred, &t);
        let stop = AtomicBool::new(false);
        let err = run_loop(&mut a, &clock, &stop, false).expect_err("revoked stops the loop");
        assert!(
            matches!(&err, AgentError::Fatal(code) if code == "agent_revoked"),
            "{err}"
        );
        assert_eq!(
            *clock.slept.borrow(),
            vec![
                Duration::from_secs(7),  // Retry-After wins over a 0.5 s backoff
                Duration::from_secs(1),  // 2nd failure: uniform(0, 2 s) at 0.5
                Duration::from_secs(2),  // malformed answer is a 3rd failure: uniform(0, 4 s)
                Duration::from_secs(10), // steady: 10 s x (0.5 + 0.5)
                SOON,                    // results waiting: poll again soon
                Duration::from_secs(20), // results acknowledged: the server's interval
            ],
            "and no sleep after the 401: the agent stops"
        );
        let sent = t.sent.borrow();
        let seqs: Vec<u64> = sent.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6, 7]);
        assert!(sent[0].services.is_some() && sent[0].inventory.is_some());
        // The kinds it advertises: allowed, implemented and offered here (eBPF
        // is off, so not `instrument`; an unknown allowed kind is not claimed).
        for r in sent.iter() {
            assert_eq!(
                r.action_kinds.as_deref(),
                Some(&["collect_evidence".to_owned(), "signal_process".to_owned()][..])
            );
            assert!(r.capabilities.contains(&"proc".to_owned()));
            assert!(!r.capabilities.contains(&"ebpf".to_owned()));
        }
        assert!(sent[3].services.is_some(), "not stored until a 200 took it");
        assert!(
            sent[4].services.is_none() && sent[4].inventory.is_none(),
            "unchanged"
        );
        assert!(
            sent[5].services.is_some(),
            "the server asked for a full resend"
        );
        assert_eq!(sent[4].applied_revision, 3);
        let phases: Vec<(ResultPhase, Option<ResultStatus>)> = sent[5]
            .results
            .iter()
            .map(|r| (r.phase, r.status))
            .collect();
        assert_eq!(
            phases,
            vec![
                (ResultPhase::Received, None),
                (ResultPhase::Final, Some(ResultStatus::Refused)),
            ],
            "not on the (empty) allow-list"
        );
        assert!(
            sent[6].results.is_empty(),
            "acknowledged results leave the spool"
        );
        assert!(sent[1]
            .heartbeat
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("busy")));
        let status: Status = state::read(&status_path(&cfg.data_dir))
            .expect("read")
            .expect("status");
        assert_eq!(status.last_error.as_deref(), Some(err.to_string().as_str()));
        assert!(
            status
                .health
                .starts_with("unhealthy: cannot reach the control plane since 20"),
            "{}",
            status.health
        );
        drop(sent);

        // seq survives a restart.
        let t2 = ScriptedTransport {
            replies: RefCell::new(VecDeque::from([ok(answer(1000))])),
            sent: RefCell::new(Vec::new()),
        };
        let mut b = agent(&cfg, &cred, &t2);
        run_loop(&mut b, &clock, &stop, true).expect("one cycle");
        assert_eq!(t2.sent.borrow()[0].seq, 8);
    }

    #[test]
    fn restarts_and_uninstrumented_llm_clients_become_window_metrics() {
        let svc = |key: &str, pid: u32, llm: bool| tether_proto::Service {
            workload_key: key.into(),
            pid,
            exe: "/usr/bin/python3".into(),
            runtime: "python".into(),
            llm_providers: if llm { vec!["openai".into()] } else { vec![] },
            instrumented: false,
            python_sdk: false,
            labels: Default::default(),
            llm_content: Default::default(),
        };
        let mut w = WorkloadWatch::default();
        w.see(&[
            svc("systemd:chat.service", 10, true),
            svc("host:/bin/x", 5, false),
        ]);
        for pid in 11..15 {
            w.see(&[
                svc("systemd:chat.service", pid, true),
                svc("host:/bin/x", 5, false),
            ]);
        }
        let mut m = BTreeMap::new();
        w.drain_into(&mut m);
        assert_eq!(m.get("svc.restarts.systemd:chat.service"), Some(&4.0));
        assert!(
            !m.contains_key("svc.restarts.host:/bin/x"),
            "a steady pid is no restart"
        );
        assert_eq!(m.get("llm.uninstrumented"), Some(&1.0));
        assert_eq!(m.get("llm.uninstrumented.systemd:chat.service"), Some(&1.0));
        assert!(
            !m.contains_key("llm.uninstrumented.host:/bin/x"),
            "no LLM client"
        );
        // Instrumented: the workload's metric says so, for the verifier to see.
        let mut done = svc("systemd:chat.service", 14, true);
        done.instrumented = true;
        w.see(&[done]);
        let mut next = BTreeMap::new();
        w.drain_into(&mut next);
        assert_eq!(next.get("llm.uninstrumented"), Some(&0.0));
        assert_eq!(
            next.get("llm.uninstrumented.systemd:chat.service"),
            Some(&0.0)
        );
        assert!(
            !next.keys().any(|k| k.starts_with("svc.restarts.")),
            "counts start afresh per window"
        );
    }

    #[test]
    fn bodies_the_server_asks_for_go_out_promptly_but_only_once() {
        let (cfg, cred) = setup("asked");
        let mut asks = answer(30_000);
        asks.send_full_services = true;
        let t = ScriptedTransport {
            replies: RefCell::new(VecDeque::from([
                ok(answer(30_000)),
                ok(asks.clone()),
                ok(asks),
            ])),
            sent: RefCell::new(Vec::new()),
        };
        let mut a = agent(&cfg, &cred, &t);
        // First poll: the list goes out (never sent before); nothing asked.
        assert_eq!(a.cycle().expect("poll 1"), Next::Interval(30_000));
        // Second poll: unchanged, so no body; the server asks for it: answer soon.
        assert_eq!(a.cycle().expect("poll 2"), Next::Soon);
        // Third poll carries it; a server that asks again waits a full interval.
        assert_eq!(a.cycle().expect("poll 3"), Next::Interval(30_000));
        let sent = t.sent.borrow();
        let carried: Vec<bool> = sent.iter().map(|req| req.services.is_some()).collect();
        assert_eq!(carried, vec![true, false, true]);
    }

    #[test]
    fn a_stop_signal_ends_the_loop_cleanly() {
        let (cfg, cred) = setup("stop");
        let t = ScriptedTransport {
            replies: RefCell::new(VecDeque::from([ok(answer(30_000))])),
            sent: RefCell::new(Vec::new()),
        };
        let clock = FakeClock {
            slept: RefCell::new(Vec::new()),
        };
        let mut a = agent(&cfg, &cred, &t);
        let stop = AtomicBool::new(true);
        run_loop(&mut a, &clock, &stop, false).expect("clean exit");
        assert_eq!(t.sent.borrow().len(), 1, "the cycle in hand finished");
        let status: Status = state::read(&status_path(&cfg.data_dir))
            .expect("read")
            .expect("status");
        assert_eq!(status.health, "healthy");
        assert!(
            status.last_outcome.starts_with("ok"),
            "{}",
            status.last_outcome
        );
    }
}
