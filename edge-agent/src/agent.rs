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

use crate::actions::{self, now_ms, Ledger};
use crate::config::Config;
use crate::discovery::{self, Endpoint};
use crate::spool::{Record, RecordKey, Spool};
use crate::state::{self, Credential, PollState, Status};
use crate::telemetry::Sampler;
use crate::transport::{Transport, TransportError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tether_proto::{
    services_hash, EnrollRequest, EnrollResponse, ErrorBody, Heartbeat, PollRequest, PollResponse,
    TelemetryWindow, MAX_RESULTS_PER_POLL, MAX_TELEMETRY_PER_POLL, PROTOCOL_VERSION,
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

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

pub const CAPABILITIES: &[&str] = &["proc", "systemd"];

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
        labels: Default::default(),
    })
    .map_err(local)?;
    let reply = t.post("/v1/enroll", None, &body)?;
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
    endpoints: Vec<Endpoint>,
    endpoints_at: Instant,
    window_start_ms: u64,
    started: Instant,
    pub status: Status,
}

const RESOLVE_EVERY: Duration = Duration::from_secs(300);

impl<T: Transport> Agent<T> {
    pub fn new(cfg: Config, transport: T, cred: Credential) -> Result<Self, AgentError> {
        let dir = cfg.data_dir.clone();
        let state: PollState = state::read(&dir.join("state.json"))
            .map_err(local)?
            .unwrap_or_default();
        let spool = Spool::open(&dir.join("spool"), cfg.spool_max_bytes).map_err(local)?;
        let ledger = Ledger::open(&dir.join("ledger.log")).map_err(local)?;
        let status: Status = state::read(&status_path(&dir))
            .map_err(local)?
            .unwrap_or_default();
        let mut sampler = Sampler::new(Path::new("/proc"));
        let (_, _, collectors) = sampler.sample(); // baseline for rates
        let window_start_ms = if state.window_start_ms > 0 {
            state.window_start_ms
        } else {
            now_ms()
        };
        Ok(Self {
            endpoints: discovery::endpoints(&cfg.llm_hosts),
            endpoints_at: Instant::now(),
            window_start_ms,
            started: Instant::now(),
            status: Status {
                agent_id: cred.agent_id.clone(),
                server_url: cfg.server_url.clone(),
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

    fn spool_window_if_due(&mut self) -> Result<(), AgentError> {
        let now = now_ms();
        if now.saturating_sub(self.window_start_ms) < self.cfg.telemetry_window_s * 1000 {
            return Ok(());
        }
        let (metrics, events, collectors) = self.sampler.sample();
        self.status.collectors = collectors;
        let w = TelemetryWindow {
            seq: self.state.next_window_seq,
            start_ms: self.window_start_ms,
            end_ms: now,
            metrics,
            events,
        };
        self.spool.append(&Record::Telemetry(w)).map_err(local)?;
        self.state.next_window_seq += 1;
        self.window_start_ms = now;
        self.state.window_start_ms = now;
        Ok(())
    }

    /// One cycle; returns how long to wait before the next.
    pub fn cycle(&mut self) -> Result<Duration, AgentError> {
        self.spool_window_if_due()?;
        if self.endpoints_at.elapsed() >= RESOLVE_EVERY {
            self.endpoints = discovery::endpoints(&self.cfg.llm_hosts);
            self.endpoints_at = Instant::now();
        }
        let scan = discovery::scan(
            Path::new("/proc"),
            &self.endpoints,
            self.cfg.report_all_python,
        );
        let hash = services_hash(&scan.services);
        let send_services = hash != self.state.sent_services_hash;
        let pending = self
            .spool
            .pending(MAX_RESULTS_PER_POLL + MAX_TELEMETRY_PER_POLL);
        let mut results = Vec::new();
        let mut telemetry = Vec::new();
        for r in pending {
            match r {
                Record::Result(x) if results.len() < MAX_RESULTS_PER_POLL => results.push(x),
                Record::Telemetry(w) if telemetry.len() < MAX_TELEMETRY_PER_POLL => {
                    telemetry.push(w)
                }
                _ => {}
            }
        }
        self.state.seq += 1;
        self.state.window_start_ms = self.window_start_ms;
        state::write(&self.cfg.data_dir.join("state.json"), &self.state, 0o600).map_err(local)?;
        let req = PollRequest {
            protocol: PROTOCOL_VERSION,
            agent_id: self.cred.agent_id.clone(),
            seq: self.state.seq,
            capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            services_hash: hash.clone(),
            services: send_services.then(|| scan.services.clone()),
            applied_revision: self.state.applied_revision,
            heartbeat: Heartbeat {
                agent_version: env!("CARGO_PKG_VERSION").into(),
                uptime_s: self.started.elapsed().as_secs(),
                spool_depth: self.spool.depth(),
                last_error: self.status.last_error.clone(),
            },
            results,
            telemetry,
            ..PollRequest::default()
        };
        let body = serde_json::to_vec(&req).map_err(local)?;
        self.status.last_poll_ms = now_ms();
        self.status.services = scan.services.len();
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
        if send_services && !resp.send_full_services {
            self.state.sent_services_hash = hash;
        }
        if resp.send_full_services {
            self.state.sent_services_hash.clear();
        }
        if let Some(fresh) = resp.renewed_credential {
            self.cred.credential = fresh;
            state::write(&credential_path(&self.cfg.data_dir), &self.cred, 0o600).map_err(local)?;
        }
        let ran_any = !resp.actions.is_empty();
        for a in &resp.actions {
            for r in
                actions::handle(a, &self.cfg.allowed_actions, &mut self.ledger).map_err(local)?
            {
                self.spool.append(&Record::Result(r)).map_err(local)?;
            }
        }
        self.state.applied_revision = resp.desired_revision;
        state::write(&self.cfg.data_dir.join("state.json"), &self.state, 0o600).map_err(local)?;
        self.status.last_success_ms = now_ms();
        self.status.last_outcome = format!(
            "ok: {} actions, {} acknowledged",
            resp.actions.len(),
            acked.len()
        );
        self.status.last_error = None;
        self.status.health = "healthy".into();
        // Report results promptly rather than a full interval later.
        Ok(if ran_any {
            Duration::from_millis(500)
        } else {
            crate::backoff::steady(resp.next_poll_after_ms, rand::random::<f64>())
        })
    }

    pub fn record_failure(&mut self, e: &AgentError) {
        self.status.last_error = Some(e.to_string());
        self.status.last_outcome = "error".into();
        let since = if self.status.last_success_ms > 0 {
            self.status.last_success_ms
        } else {
            self.status.last_poll_ms
        };
        self.status.health =
            format!("unhealthy: cannot reach the control plane since {since} (ms since epoch)");
    }

    pub fn write_status(&mut self) {
        self.status.spool_depth = self.spool.depth();
        self.status.spool_dropped = self.spool.dropped;
        let _ = state::write(&status_path(&self.cfg.data_dir), &self.status, 0o644);
    }
}
