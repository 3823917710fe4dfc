//! What the agent keeps in its data directory, each file written atomically
//! (temporary file, fsync, rename) so a crash leaves the old or the new version:
//! `credential.json` (mode 0600), `state.json` (poll sequence, last acknowledged
//! hashes, applied revision) and `status.json` (what `tether-agent status` shows).

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credential {
    pub agent_id: String,
    pub credential: String,
    pub expires_at_ms: u64,
    pub server_url: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PollState {
    pub seq: u64,
    /// Services hash the server last stored (from a poll that carried the body).
    pub sent_services_hash: String,
    pub applied_revision: u64,
    /// Next telemetry window sequence number.
    pub next_window_seq: u64,
    /// Start of the open telemetry window; windows span agent restarts.
    #[serde(default)]
    pub window_start_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Collector {
    pub name: String,
    /// `ok` or `unavailable`.
    pub state: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Status {
    pub agent_id: String,
    pub server_url: String,
    pub last_poll_ms: u64,
    pub last_success_ms: u64,
    pub last_outcome: String,
    pub last_error: Option<String>,
    /// Set while polls fail: "unhealthy: cannot reach the control plane since <ms>".
    pub health: String,
    pub spool_depth: u64,
    pub spool_dropped: u64,
    pub services: usize,
    pub collectors: Vec<Collector>,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct StateError {
    pub path: String,
    pub message: String,
}

pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| StateError {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StateError {
            path: path.display().to_string(),
            message: e.to_string(),
        }),
    }
}

/// Writes `value` to `path` atomically with `mode`.
pub fn write<T: Serialize>(path: &Path, value: &T, mode: u32) -> Result<(), StateError> {
    let err = |e: &dyn std::fmt::Display| StateError {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| err(&e))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| err(&e))?;
    f.write_all(&bytes).map_err(|e| err(&e))?;
    f.sync_all().map_err(|e| err(&e))?;
    std::fs::rename(&tmp, path).map_err(|e| err(&e))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
