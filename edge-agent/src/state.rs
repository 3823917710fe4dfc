//! What the agent keeps in its data directory, each file written atomically
//! (temporary file, fsync, rename) so a crash leaves the old or the new version:
//! `credential.json` (mode 0600), `state.json` (poll sequence, last acknowledged
//! hashes, applied revision) and `status.json` (what `tether-agent status` shows).

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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
    /// Inventory hash the server last stored.
    #[serde(default)]
    pub sent_inventory_hash: String,
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
    /// "healthy", or while polls fail: "unhealthy: cannot reach the control plane
    /// since <RFC 3339 time>".
    pub health: String,
    /// First failure of the current run of failed polls; `None` while healthy.
    #[serde(default)]
    pub failing_since_ms: Option<u64>,
    pub spool_depth: u64,
    pub spool_dropped: u64,
    pub services: usize,
    pub collectors: Vec<Collector>,
    /// Headline numbers of the last window (see `telemetry::vitals`).
    #[serde(default)]
    pub vitals: std::collections::BTreeMap<String, f64>,
    /// eBPF instrumentation: state, instrumented processes, capture and export
    /// counters.
    #[serde(default)]
    pub instrumentation: Option<crate::instrument::InstrumentationStatus>,
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

/// `ms` since the epoch as RFC 3339 UTC (`2026-11-22T12:38:12Z`).
pub fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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
    // The mode of a leftover temporary file is not trusted.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_rfc3339() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_795_437_492_999), "2026-11-23T12:38:12Z");
    }

    #[test]
    fn writes_are_atomic_and_keep_the_mode() {
        let dir = std::env::temp_dir().join(format!(
            "state-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("credential.json");
        let c = Credential {
            agent_id: "agt_1".into(),
            credential: "jwt".into(),
            expires_at_ms: 5,
            server_url: "https://x".into(),
        };
        write(&path, &c, 0o600).expect("write");
        let mut d = c.clone();
        d.credential = "renewed".into();
        write(&path, &d, 0o600).expect("rewrite");
        assert_eq!(read::<Credential>(&path).expect("read"), Some(d));
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            !path.with_extension("tmp").exists(),
            "no temporary left behind"
        );
        assert_eq!(
            read::<Credential>(&dir.join("absent.json")).expect("read"),
            None
        );
    }
}
