//! Agent configuration: a JSON file (default `/etc/tether/agent.json`), every key
//! overridable by `TETHER_AGENT_<KEY>` in the environment.
//!
//! JSON rather than TOML: `serde_json` is already linked for the wire contract, so
//! the config costs no extra crate, and a JSON file drops straight into a
//! Kubernetes ConfigMap or a `systemd-creds` blob.
//!
//! Invariants: parsed once, at start, from an injectable environment (tests pass a
//! map, never `set_var`); every error names the key it is about; an unknown key is
//! an error (a typo must not silently fall back to a default).

use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The control plane's URL (the api function's Function URL).
    pub server_url: String,
    /// Used once, to enroll; ignored when a credential exists.
    pub enrollment_token: Option<String>,
    pub data_dir: PathBuf,
    /// A poll never blocks longer than this.
    pub poll_timeout_s: u64,
    /// Cap of the failure backoff.
    pub max_backoff_s: u64,
    /// Action kinds this host runs. Nothing from the server widens it; empty runs
    /// nothing.
    pub allowed_actions: Vec<String>,
    /// Extra LLM endpoints: `[provider=]host|ip|ip:port|cidr`.
    pub llm_hosts: Vec<String>,
    /// AWS regions whose `bedrock-runtime.<region>.amazonaws.com` count as LLM hosts.
    pub bedrock_regions: Vec<String>,
    /// Also report python processes that hold no LLM connection.
    pub report_all_python: bool,
    pub spool_max_bytes: u64,
    pub telemetry_window_s: u64,
    /// Free-form labels sent at enrollment and in the inventory.
    pub labels: BTreeMap<String, String>,
    /// Directory holding the Python SDK (`sitecustomize.py`), put on `PYTHONPATH`
    /// by `enable_python_sdk`.
    pub python_sdk_path: String,
    /// OTLP/HTTP endpoint the Python SDK and the eBPF capture export spans to
    /// (`<endpoint>/v1/traces`); empty turns the capture's export off.
    pub otlp_endpoint: String,
    /// Load the eBPF probes (connect tracepoint; TLS uprobes on `instrument`).
    /// `false` keeps the agent to `/proc` scanning and refuses `instrument`.
    pub ebpf: bool,
    /// The Docker Engine socket: container names and labels for workload keys
    /// (`docker:<name>`) when it exists.
    pub docker_socket: String,
    /// Directories whose log files `rotate_logs` may truncate (recursively, never
    /// through a symlink out of them). Empty: `rotate_logs` is refused.
    pub log_dirs: Vec<PathBuf>,
    /// Processes no signal, stop or selector ever touches: matched against the
    /// process name (`comm`), the executable's file name, or its full path.
    pub protected_processes: Vec<String>,
}

/// The default `protected_processes`: init, the agent, remote access and the
/// daemons a host cannot lose.
pub const DEFAULT_PROTECTED: &[&str] = &[
    "init",
    "systemd",
    "systemd-journald",
    "systemd-journal",
    "systemd-logind",
    "systemd-udevd",
    "systemd-resolved",
    "systemd-networkd",
    "dbus-daemon",
    "sshd",
    "tether-agent",
    "dockerd",
    "containerd",
    "kubelet",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a JSON object: {message}")]
    Parse { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

/// Every key, and how its environment override is read.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    Number,
    List,
    Bool,
    Map,
}

const KEYS: &[(&str, Kind)] = &[
    ("server_url", Kind::Text),
    ("enrollment_token", Kind::Text),
    ("data_dir", Kind::Text),
    ("poll_timeout_s", Kind::Number),
    ("max_backoff_s", Kind::Number),
    ("allowed_actions", Kind::List),
    ("llm_hosts", Kind::List),
    ("bedrock_regions", Kind::List),
    ("report_all_python", Kind::Bool),
    ("spool_max_bytes", Kind::Number),
    ("telemetry_window_s", Kind::Number),
    ("labels", Kind::Map),
    ("python_sdk_path", Kind::Text),
    ("otlp_endpoint", Kind::Text),
    ("ebpf", Kind::Bool),
    ("docker_socket", Kind::Text),
    ("log_dirs", Kind::List),
    ("protected_processes", Kind::List),
];

fn invalid(key: &str, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.to_string(),
    }
}

/// An environment value in the shape of its key: lists are comma-separated, maps
/// are `k=v,k=v`, numbers must parse.
fn from_env(key: &str, kind: Kind, raw: &str) -> Result<serde_json::Value, ConfigError> {
    let items = || raw.split(',').map(str::trim).filter(|s| !s.is_empty());
    Ok(match kind {
        Kind::Text => serde_json::Value::from(raw),
        Kind::Number => serde_json::Value::from(
            raw.trim()
                .parse::<u64>()
                .map_err(|e| invalid(key, format!("{raw:?}: {e}")))?,
        ),
        Kind::List => serde_json::Value::from(items().map(String::from).collect::<Vec<_>>()),
        Kind::Bool => match raw.trim() {
            "1" | "true" | "yes" => serde_json::Value::Bool(true),
            "0" | "false" | "no" | "" => serde_json::Value::Bool(false),
            other => return Err(invalid(key, format!("{other:?} is not a boolean"))),
        },
        Kind::Map => {
            let mut m = serde_json::Map::new();
            for kv in items() {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| invalid(key, format!("{kv:?} is not key=value")))?;
                m.insert(k.trim().into(), serde_json::Value::from(v.trim()));
            }
            serde_json::Value::Object(m)
        }
    })
}

fn take<T: DeserializeOwned>(
    doc: &mut serde_json::Map<String, serde_json::Value>,
    key: &str,
    default: impl FnOnce() -> T,
) -> Result<T, ConfigError> {
    match doc.remove(key) {
        None | Some(serde_json::Value::Null) => Ok(default()),
        Some(v) => serde_json::from_value(v).map_err(|e| invalid(key, e)),
    }
}

impl Config {
    /// Loads `path` (absent is fine when the environment gives `server_url`), then
    /// applies `TETHER_AGENT_*` overrides from `env`.
    pub fn load(
        path: &std::path::Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let mut doc: serde_json::Map<String, serde_json::Value> =
            match std::fs::read_to_string(path) {
                Ok(text) => serde_json::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: p.clone(),
                    message: e.to_string(),
                })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Map::new(),
                Err(source) => return Err(ConfigError::Read { path: p, source }),
            };
        for (key, kind) in KEYS {
            if let Some(raw) = env(&format!("TETHER_AGENT_{}", key.to_uppercase())) {
                doc.insert((*key).into(), from_env(key, *kind, &raw)?);
            }
        }
        let cfg = Config {
            server_url: take(&mut doc, "server_url", String::new)?,
            enrollment_token: take(&mut doc, "enrollment_token", || None)?,
            data_dir: take(&mut doc, "data_dir", || {
                PathBuf::from("/var/lib/tether-agent")
            })?,
            poll_timeout_s: take(&mut doc, "poll_timeout_s", || 10)?,
            max_backoff_s: take(&mut doc, "max_backoff_s", || 300)?,
            allowed_actions: take(&mut doc, "allowed_actions", Vec::new)?,
            llm_hosts: take(&mut doc, "llm_hosts", Vec::new)?,
            bedrock_regions: take(&mut doc, "bedrock_regions", || {
                vec!["us-east-1".into(), "us-west-2".into()]
            })?,
            report_all_python: take(&mut doc, "report_all_python", || false)?,
            spool_max_bytes: take(&mut doc, "spool_max_bytes", || 64 * 1024 * 1024)?,
            telemetry_window_s: take(&mut doc, "telemetry_window_s", || 30)?,
            labels: take(&mut doc, "labels", BTreeMap::new)?,
            python_sdk_path: take(&mut doc, "python_sdk_path", || {
                "/opt/tether/python-sdk".into()
            })?,
            otlp_endpoint: take(&mut doc, "otlp_endpoint", || "http://127.0.0.1:4318".into())?,
            ebpf: take(&mut doc, "ebpf", || true)?,
            docker_socket: take(&mut doc, "docker_socket", || "/var/run/docker.sock".into())?,
            log_dirs: take(&mut doc, "log_dirs", Vec::new)?,
            protected_processes: take(&mut doc, "protected_processes", || {
                DEFAULT_PROTECTED.iter().map(|s| (*s).to_owned()).collect()
            })?,
        };
        if let Some(unknown) = doc.keys().next() {
            return Err(invalid(unknown, "unknown key"));
        }
        if cfg.server_url.is_empty() {
            return Err(invalid(
                "server_url",
                "missing (set it in the file or TETHER_AGENT_SERVER_URL)",
            ));
        }
        if !(cfg.server_url.starts_with("https://") || cfg.server_url.starts_with("http://")) {
            return Err(invalid("server_url", "must be an http(s) URL"));
        }
        for (key, v) in [
            ("poll_timeout_s", cfg.poll_timeout_s),
            ("max_backoff_s", cfg.max_backoff_s),
            ("telemetry_window_s", cfg.telemetry_window_s),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be positive"));
            }
        }
        if let Some(d) = cfg.log_dirs.iter().find(|d| !d.is_absolute()) {
            return Err(invalid(
                "log_dirs",
                format!("{} is not an absolute path", d.display()),
            ));
        }
        if cfg.spool_max_bytes < 64 * 1024 {
            return Err(invalid("spool_max_bytes", "must be at least 65536"));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<&str, &str> = pairs.iter().copied().collect();
        move |k| m.get(k).map(|v| v.to_string())
    }

    #[test]
    fn file_then_environment() {
        let dir = std::env::temp_dir().join(format!("agent-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("agent.json");
        std::fs::write(
            &path,
            r#"{"server_url": "https://cp.example", "allowed_actions": ["signal_process"],
                "labels": {"zone": "eu-1"}}"#,
        )
        .expect("write");
        let env = env_of(&[
            ("TETHER_AGENT_LLM_HOSTS", "10.0.0.0/8, 127.0.0.1:9443"),
            ("TETHER_AGENT_MAX_BACKOFF_S", "60"),
            ("TETHER_AGENT_LABELS", "rack=4, zone=eu-2"),
        ]);
        let cfg = Config::load(&path, &env).expect("config");
        assert_eq!(cfg.server_url, "https://cp.example");
        assert_eq!(cfg.allowed_actions, vec!["signal_process"]);
        assert_eq!(cfg.llm_hosts, vec!["10.0.0.0/8", "127.0.0.1:9443"]);
        assert_eq!(cfg.max_backoff_s, 60);
        assert_eq!(cfg.poll_timeout_s, 10);
        assert_eq!(cfg.spool_max_bytes, 64 * 1024 * 1024);
        assert_eq!(cfg.telemetry_window_s, 30);
        assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/tether-agent"));
        assert!(cfg.log_dirs.is_empty(), "no log dir is allowed by default");
        assert!(cfg.protected_processes.iter().any(|p| p == "sshd"));
        assert!(cfg.protected_processes.iter().any(|p| p == "tether-agent"));
        assert_eq!(
            cfg.labels.into_iter().collect::<Vec<_>>(),
            vec![("rack".into(), "4".into()), ("zone".into(), "eu-2".into())],
            "the environment replaces the file's map"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let missing = std::path::Path::new("/nonexistent/agent.json");
        let err = Config::load(missing, &|_| None).expect_err("no server_url");
        assert!(err.to_string().starts_with("server_url: missing"), "{err}");
        let err = Config::load(
            missing,
            &env_of(&[
                ("TETHER_AGENT_SERVER_URL", "https://x"),
                ("TETHER_AGENT_POLL_TIMEOUT_S", "soon"),
            ]),
        )
        .expect_err("bad number");
        assert!(err.to_string().starts_with("poll_timeout_s: "), "{err}");

        let dir = std::env::temp_dir().join(format!("agent-cfg-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("agent.json");
        std::fs::write(
            &path,
            r#"{"server_url": "https://x", "spool_max_bytes": "big"}"#,
        )
        .expect("write");
        let err = Config::load(&path, &|_| None).expect_err("wrong type in file");
        assert!(err.to_string().starts_with("spool_max_bytes: "), "{err}");
        std::fs::write(&path, r#"{"server_url": "https://x", "poll_timeout": 3}"#).expect("write");
        let err = Config::load(&path, &|_| None).expect_err("typo");
        assert_eq!(err.to_string(), "poll_timeout: unknown key");
        let err = Config::load(
            missing,
            &env_of(&[
                ("TETHER_AGENT_SERVER_URL", "https://x"),
                ("TETHER_AGENT_LOG_DIRS", "/var/log, relative/logs"),
            ]),
        )
        .expect_err("relative log dir");
        assert_eq!(
            err.to_string(),
            "log_dirs: relative/logs is not an absolute path"
        );
        let cfg = Config::load(
            missing,
            &env_of(&[
                ("TETHER_AGENT_SERVER_URL", "https://x"),
                ("TETHER_AGENT_LOG_DIRS", "/var/log,/srv/app/logs"),
                ("TETHER_AGENT_PROTECTED_PROCESSES", "postgres"),
            ]),
        )
        .expect("log dirs");
        assert_eq!(
            cfg.log_dirs,
            vec![PathBuf::from("/var/log"), PathBuf::from("/srv/app/logs")]
        );
        assert_eq!(cfg.protected_processes, vec!["postgres"]);
    }
}
