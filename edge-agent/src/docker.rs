//! Container names and labels from the Docker Engine API, over its unix socket
//! (`/var/run/docker.sock`) when present: one `GET /containers/json`, cached.
//!
//! Invariants:
//! - Optional: no socket is not an error; a socket that does not answer within
//!   [`TIMEOUT`], or answers badly, is reported once in `state` and discovery
//!   falls back to `docker:<id12>` keys. Nothing here blocks a scan for longer
//!   than [`TIMEOUT`], and the list is fetched at most every [`REFRESH`].
//! - Bounded: an answer over [`MAX_BODY`] is refused; at most
//!   [`tether_proto::MAX_SERVICE_LABELS`] labels per container are kept, each
//!   value cut to 256 bytes.
//!
//! A hand-written HTTP/1.0 request rather than an HTTP client: `ureq` has no
//! unix-socket transport, and one GET with `Connection: close` needs no more.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(2);
pub const REFRESH: Duration = Duration::from_secs(30);
pub const MAX_BODY: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Container {
    /// The container's name, without Docker's leading `/`.
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// Containers by full id, from the Engine API's `/containers/json` answer.
pub fn parse(body: &[u8]) -> Result<HashMap<String, Container>, String> {
    let list: Vec<serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| format!("not a container list: {e}"))?;
    let mut out = HashMap::new();
    for c in list {
        let Some(id) = c["Id"].as_str() else { continue };
        let name = c["Names"]
            .as_array()
            .and_then(|n| n.first())
            .and_then(|n| n.as_str())
            .map(|n| n.trim_start_matches('/').to_owned())
            .unwrap_or_default();
        let labels = c["Labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| {
                        let v = v.as_str()?;
                        let cut = (0..=v.len().min(256))
                            .rev()
                            .find(|i| v.is_char_boundary(*i))?;
                        Some((k.clone(), v[..cut].to_owned()))
                    })
                    .take(tether_proto::MAX_SERVICE_LABELS)
                    .collect()
            })
            .unwrap_or_default();
        if !name.is_empty() {
            out.insert(id.to_owned(), Container { name, labels });
        }
    }
    Ok(out)
}

/// One `GET /containers/json` over the socket at `sock`.
pub fn list(sock: &Path) -> Result<HashMap<String, Container>, String> {
    let shown = sock.display();
    let mut s = UnixStream::connect(sock).map_err(|e| format!("{shown}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /containers/json HTTP/1.0\r\nHost: docker\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("{shown}: {e}"))?;
    let mut buf = Vec::new();
    let started = Instant::now();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut chunk).map_err(|e| format!("{shown}: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_BODY {
            return Err(format!("{shown}: answer over {MAX_BODY} bytes"));
        }
        if started.elapsed() > TIMEOUT {
            return Err(format!("{shown}: no complete answer within {TIMEOUT:?}"));
        }
    }
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{shown}: not an HTTP answer"))?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("{shown}: GET /containers/json answered {status}"));
    }
    parse(&buf[split + 4..])
}

/// The cached view discovery reads.
#[derive(Debug)]
pub struct Docker {
    sock: PathBuf,
    containers: HashMap<String, Container>,
    fetched: Option<Instant>,
    /// `None` while fine (or no socket); the last failure otherwise.
    pub problem: Option<String>,
}

impl Docker {
    pub fn new(sock: PathBuf) -> Self {
        Self {
            sock,
            containers: HashMap::new(),
            fetched: None,
            problem: None,
        }
    }

    /// Fetches the list when it is older than [`REFRESH`] (or `force`), and
    /// only when the socket exists. True when the containers changed.
    pub fn refresh(&mut self, force: bool) -> bool {
        if !force && self.fetched.is_some_and(|t| t.elapsed() < REFRESH) {
            return false;
        }
        let before = std::mem::take(&mut self.containers);
        self.fetched = Some(Instant::now());
        if !self.sock.exists() {
            self.problem = None;
            return !before.is_empty();
        }
        match list(&self.sock) {
            Ok(c) => {
                self.containers = c;
                self.problem = None;
            }
            Err(e) => {
                if self.problem.as_deref() != Some(e.as_str()) {
                    eprintln!("tether-agent: docker: {e}; container workloads keep their ids");
                }
                self.problem = Some(e);
                self.containers = before;
                return false;
            }
        }
        self.containers != before
    }

    /// The `docker` collector's state, when there is a socket to speak of.
    pub fn collector(&self) -> Option<crate::state::Collector> {
        if !self.sock.exists() {
            return None;
        }
        Some(crate::state::Collector {
            name: "docker".into(),
            state: if self.problem.is_some() {
                "unavailable"
            } else {
                "ok"
            }
            .into(),
            reason: self.problem.clone().unwrap_or_default(),
        })
    }

    pub fn containers(&self) -> &HashMap<String, Container> {
        &self.containers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    const ANSWER: &str = r#"[{"Id":"4f8e2c1b9a7d6e5f4f8e2c1b9a7d6e5f4f8e2c1b9a7d6e5f4f8e2c1b9a7d6e5f","Names":["/rag-worker"],"Labels":{"com.docker.compose.service":"rag","team":"ml"}},{"Id":"ffff","Names":[],"Labels":null}]"#;

    /// A stand-in for dockerd on a unix socket (no Docker engine on these
    /// machines): answers one request with `answer`.
    fn engine(answer: String) -> PathBuf {
        let sock = std::env::temp_dir().join(format!(
            "tether-docker-{}-{}.sock",
            std::process::id(),
            rand::random::<u32>()
        ));
        let l = UnixListener::bind(&sock).expect("bind");
        std::thread::spawn(move || {
            if let Ok((mut c, _)) = l.accept() {
                let mut req = [0u8; 1024];
                let n = c.read(&mut req).unwrap_or(0);
                assert!(
                    String::from_utf8_lossy(&req[..n]).starts_with("GET /containers/json HTTP/1.0")
                );
                let _ = c.write_all(answer.as_bytes());
            }
        });
        sock
    }

    #[test]
    fn names_and_labels_come_from_the_engine_api() {
        let sock = engine(format!(
            "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{ANSWER}"
        ));
        let c = list(&sock).expect("list");
        assert_eq!(c.len(), 1, "a container without a name is skipped");
        let rag = &c["4f8e2c1b9a7d6e5f4f8e2c1b9a7d6e5f4f8e2c1b9a7d6e5f4f8e2c1b9a7d6e5f"];
        assert_eq!(rag.name, "rag-worker");
        assert_eq!(rag.labels["team"], "ml");
    }

    #[test]
    fn errors_and_a_missing_socket_are_states_not_failures() {
        let bad = engine("HTTP/1.0 500 Internal Server Error\r\n\r\n{}".into());
        assert!(list(&bad).unwrap_err().contains("answered 500"));
        let garbage = engine("not http at all".into());
        assert!(list(&garbage).unwrap_err().contains("not an HTTP answer"));
        let mut d = Docker::new(PathBuf::from("/nonexistent/docker.sock"));
        d.refresh(true);
        assert!(d.problem.is_none() && d.containers().is_empty());
        let mut broken = Docker::new(engine("HTTP/1.0 200 OK\r\n\r\n{\"no\":1}".into()));
        broken.refresh(true);
        assert!(broken
            .problem
            .as_deref()
            .is_some_and(|p| p.contains("not a container list")));
    }

    #[test]
    fn labels_are_bounded() {
        let many: serde_json::Map<String, serde_json::Value> = (0..100)
            .map(|i| {
                (
                    format!("k{i:03}"),
                    serde_json::Value::from("v".repeat(1000)),
                )
            })
            .collect();
        let body = serde_json::json!([{"Id": "a", "Names": ["/x"], "Labels": many}]).to_string();
        let c = parse(body.as_bytes()).expect("parse");
        assert_eq!(c["a"].labels.len(), tether_proto::MAX_SERVICE_LABELS);
        assert!(c["a"].labels.values().all(|v| v.len() == 256));
    }
}
