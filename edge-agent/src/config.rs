//! Agent configuration: a JSON file (default `/etc/tether/agent.json`), every key
//! overridable by `TETHER_AGENT_<KEY>` in the environment. Parsed once; errors name
//! the key.

use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The control plane's URL (the api function's Function URL).
    pub server_url: String,
    /// Used once, to enroll; ignored when a credential exists.
    #[serde(default)]
    pub enrollment_token: Option<String>,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// A poll never blocks longer than this.
    #[serde(default = "default_timeout")]
    pub poll_timeout_s: u64,
    /// Cap of the failure backoff.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_s: u64,
    /// Action kinds this host runs. Nothing from the server widens it; empty runs
    /// nothing.
    #[serde(default)]
    pub allowed_actions: Vec<String>,
    /// Extra LLM endpoints: host names, IPs, `ip:port` or CIDRs.
    #[serde(default)]
    pub llm_hosts: Vec<String>,
    /// Also report python processes that hold no LLM connection.
    #[serde(default)]
    pub report_all_python: bool,
    #[serde(default = "default_spool_max")]
    pub spool_max_bytes: u64,
    #[serde(default = "default_window")]
    pub telemetry_window_s: u64,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/tether-agent")
}
fn default_timeout() -> u64 {
    10
}
fn default_max_backoff() -> u64 {
    300
}
fn default_spool_max() -> u64 {
    64 * 1024 * 1024
}
fn default_window() -> u64 {
    30
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

const KEYS: &[&str] = &[
    "server_url",
    "enrollment_token",
    "data_dir",
    "poll_timeout_s",
    "max_backoff_s",
    "allowed_actions",
    "llm_hosts",
    "report_all_python",
    "spool_max_bytes",
    "telemetry_window_s",
];

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
        for key in KEYS {
            let Some(raw) = env(&format!("TETHER_AGENT_{}", key.to_uppercase())) else {
                continue;
            };
            let value = match *key {
                "allowed_actions" | "llm_hosts" => serde_json::Value::from(
                    raw.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect::<Vec<_>>(),
                ),
                "poll_timeout_s" | "max_backoff_s" | "spool_max_bytes" | "telemetry_window_s" => {
                    serde_json::Value::from(raw.parse::<u64>().map_err(|e| {
                        ConfigError::Invalid {
                            key: (*key).into(),
                            message: e.to_string(),
                        }
                    })?)
                }
                "report_all_python" => serde_json::Value::from(raw == "true" || raw == "1"),
                _ => serde_json::Value::from(raw),
            };
            doc.insert((*key).into(), value);
        }
        let cfg: Config = serde_json::from_value(serde_json::Value::Object(doc)).map_err(|e| {
            ConfigError::Parse {
                path: p,
                message: e.to_string(),
            }
        })?;
        if !(cfg.server_url.starts_with("https://") || cfg.server_url.starts_with("http://")) {
            return Err(ConfigError::Invalid {
                key: "server_url".into(),
                message: "must be an http(s) URL".into(),
            });
        }
        if cfg.poll_timeout_s == 0 || cfg.max_backoff_s == 0 {
            return Err(ConfigError::Invalid {
                key: "poll_timeout_s / max_backoff_s".into(),
                message: "must be positive".into(),
            });
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn file_then_environment() {
        let dir = std::env::temp_dir().join(format!("agent-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("agent.json");
        std::fs::write(
            &path,
            r#"{"server_url": "https://cp.example", "allowed_actions": ["signal_process"]}"#,
        )
        .expect("write");
        let env: HashMap<&str, &str> = [
            ("TETHER_AGENT_LLM_HOSTS", "10.0.0.0/8, 127.0.0.1:9443"),
            ("TETHER_AGENT_MAX_BACKOFF_S", "60"),
        ]
        .into_iter()
        .collect();
        let cfg = Config::load(&path, &|k| env.get(k).map(|v| v.to_string())).expect("config");
        assert_eq!(cfg.server_url, "https://cp.example");
        assert_eq!(cfg.allowed_actions, vec!["signal_process"]);
        assert_eq!(cfg.llm_hosts, vec!["10.0.0.0/8", "127.0.0.1:9443"]);
        assert_eq!(cfg.max_backoff_s, 60);
        assert_eq!(cfg.poll_timeout_s, 10);
    }

    #[test]
    fn errors_name_the_key() {
        let missing = std::path::Path::new("/nonexistent/agent.json");
        let err = Config::load(missing, &|_| None).expect_err("no server_url");
        assert!(err.to_string().contains("server_url"), "{err}");
        let err = Config::load(missing, &|k| {
            (k == "TETHER_AGENT_SERVER_URL")
                .then(|| "https://x".into())
                .or_else(|| (k == "TETHER_AGENT_POLL_TIMEOUT_S").then(|| "soon".into()))
        })
        .expect_err("bad number");
        assert!(err.to_string().contains("poll_timeout_s"), "{err}");
    }
}
