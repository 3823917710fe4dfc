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
//! Remediation stops, starts and restarts containers through the same socket
//! ([`control`]: `POST /containers/<name>/{stop,start,restart}`), and reads a
//! container's state ([`state`]).
//!
//! A hand-written HTTP/1.0 request rather than an HTTP client: `ureq` has no
//! unix-socket transport, and one request with `Connection: close` needs no more.

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

/// Why an Engine API request did not get a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("{sock}: {source}")]
    Io {
        sock: String,
        source: std::io::Error,
    },
    #[error("{sock}: answer over {MAX_BODY} bytes")]
    TooLarge { sock: String },
    #[error("{sock}: no complete answer within {limit:?}")]
    Timeout { sock: String, limit: Duration },
    #[error("{sock}: not an HTTP answer")]
    NotHttp { sock: String },
    #[error("{sock}: {request} answered {status}{detail}")]
    Status {
        sock: String,
        request: String,
        status: u16,
        /// `: <the engine's message>` when it sent one.
        detail: String,
    },
}

/// One HTTP/1.0 request with an empty body over the socket at `sock`; the
/// status and body of a complete answer, whatever the status.
pub fn request(
    sock: &Path,
    method: &str,
    path: &str,
    limit: Duration,
) -> Result<(u16, Vec<u8>), DockerError> {
    let shown = sock.display().to_string();
    let io = |source| DockerError::Io {
        sock: shown.clone(),
        source,
    };
    let mut s = UnixStream::connect(sock).map_err(io)?;
    s.set_read_timeout(Some(limit)).map_err(io)?;
    s.set_write_timeout(Some(limit)).map_err(io)?;
    let body = if method == "GET" {
        ""
    } else {
        "Content-Length: 0\r\n"
    };
    s.write_all(
        format!("{method} {path} HTTP/1.0\r\nHost: docker\r\n{body}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .map_err(io)?;
    let mut buf = Vec::new();
    let started = Instant::now();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut chunk).map_err(io)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_BODY {
            return Err(DockerError::TooLarge { sock: shown });
        }
        if started.elapsed() > limit {
            return Err(DockerError::Timeout { sock: shown, limit });
        }
    }
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| DockerError::NotHttp {
            sock: shown.clone(),
        })?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| head.starts_with("HTTP/"))
        .ok_or(DockerError::NotHttp { sock: shown })?;
    Ok((status, buf[split + 4..].to_vec()))
}

fn status_error(sock: &Path, request: String, status: u16, body: &[u8]) -> DockerError {
    let detail = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(|m| format!(": {m}")))
        .unwrap_or_default();
    DockerError::Status {
        sock: sock.display().to_string(),
        request,
        status,
        detail,
    }
}

/// One `GET /containers/json` over the socket at `sock`.
pub fn list(sock: &Path) -> Result<HashMap<String, Container>, String> {
    let (status, body) =
        request(sock, "GET", "/containers/json", TIMEOUT).map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(status_error(sock, "GET /containers/json".into(), status, b"").to_string());
    }
    parse(&body)
}

/// A container lifecycle call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Stop,
    Start,
    Restart,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Start => "start",
            Self::Restart => "restart",
        }
    }
}

/// A container name or id the Engine API accepts in a path.
pub fn container_name(s: &str) -> Option<&str> {
    let mut b = s.bytes();
    let ok = s.len() <= 128
        && b.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c));
    ok.then_some(s)
}

/// The request line of `verb` on `container`: stop and restart give it
/// `wait_s` seconds before Docker kills it.
pub fn control_path(container: &str, verb: Verb, wait_s: u64) -> String {
    match verb {
        Verb::Start => format!("/containers/{container}/start"),
        v => format!("/containers/{container}/{}?t={wait_s}", v.as_str()),
    }
}

/// `POST /containers/<name>/<verb>`: `Ok(true)` when it changed the container,
/// `Ok(false)` when it already was in that state (304). `container` must have
/// passed [`container_name`].
pub fn control(sock: &Path, container: &str, verb: Verb, wait_s: u64) -> Result<bool, DockerError> {
    let path = control_path(container, verb, wait_s);
    let limit = TIMEOUT + Duration::from_secs(wait_s + 5);
    let (status, body) = request(sock, "POST", &path, limit)?;
    match status {
        204 => Ok(true),
        304 => Ok(false),
        s => Err(status_error(sock, format!("POST {path}"), s, &body)),
    }
}

/// The container's `State.Status` (`running`, `exited`, ...).
pub fn state(sock: &Path, container: &str) -> Result<String, DockerError> {
    let path = format!("/containers/{container}/json");
    let (status, body) = request(sock, "GET", &path, TIMEOUT)?;
    if status != 200 {
        return Err(status_error(sock, format!("GET {path}"), status, &body));
    }
    Ok(serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["State"]["Status"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into()))
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
    fn lifecycle_calls_send_the_exact_engine_api_requests() {
        let (sock, rx) = crate::remedy::fixture::engine(vec![
            "HTTP/1.1 204 No Content\r\n\r\n".into(),
            "HTTP/1.1 304 Not Modified\r\n\r\n".into(),
            "HTTP/1.1 204 No Content\r\n\r\n".into(),
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n\r\n{\"message\":\"No such container: ghost\"}".into(),
            "HTTP/1.1 200 OK\r\n\r\n{\"State\":{\"Status\":\"running\"}}".into(),
        ]);
        let next = || rx.recv_timeout(Duration::from_secs(5)).expect("a request");
        assert!(control(&sock, "rag-worker", Verb::Stop, 10).expect("stop"));
        assert_eq!(
            next(),
            "POST /containers/rag-worker/stop?t=10 HTTP/1.0\r\nHost: docker\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        assert!(
            !control(&sock, "rag-worker", Verb::Start, 10).expect("start"),
            "304: already started"
        );
        assert_eq!(
            next(),
            "POST /containers/rag-worker/start HTTP/1.0\r\nHost: docker\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        assert!(control(&sock, "4f8e2c1b9a7d", Verb::Restart, 3).expect("restart"));
        assert!(next().starts_with("POST /containers/4f8e2c1b9a7d/restart?t=3 HTTP/1.0\r\n"));
        let err = control(&sock, "ghost", Verb::Stop, 10).expect_err("404");
        assert!(
            err.to_string().ends_with(
                "POST /containers/ghost/stop?t=10 answered 404: No such container: ghost"
            ),
            "{err}"
        );
        next();
        assert_eq!(state(&sock, "rag-worker").expect("state"), "running");
        assert!(next().starts_with("GET /containers/rag-worker/json HTTP/1.0\r\n"));
        assert!(matches!(
            control(Path::new("/nonexistent/docker.sock"), "x", Verb::Stop, 1),
            Err(DockerError::Io { .. })
        ));
        assert_eq!(container_name("rag-worker"), Some("rag-worker"));
        for bad in ["", "../x", "a/b", "-x", "a b", "x?t=0"] {
            assert_eq!(container_name(bad), None, "{bad:?}");
        }
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
