//! Typed configuration, parsed once at cold start from an injectable source of
//! strings (the process environment in production, a map in tests).
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `TETHER_TABLE` | DynamoDB table | required |
//! | `TETHER_BUCKET` | S3 bucket for payloads | required |
//! | `TETHER_QUEUE_URL_OBSERVATIONS` | SQS queue for telemetry | required |
//! | `TETHER_SIGNING_SECRET_ID` | Secrets Manager secret holding the agent key ring | required |
//! | `TETHER_OPERATOR_JWT_ISSUER` / `_AUDIENCE` | operator JWT `iss` / `aud` | `tether` / `tether-operators` |
//! | `TETHER_OPERATOR_JWKS` | JWKS (JSON) for operator JWTs; unset: API keys only | unset |
//! | `TETHER_POLL_INTERVAL_MS` | interval handed to agents | 30000 |
//! | `TETHER_LAST_SEEN_WRITE_INTERVAL_MS` | `last_seen` write floor | 120000 |
//! | `TETHER_DESIRED_CACHE_TTL_MS` | desired-state cache per tenant | 30000 |
//! | `TETHER_KEY_CACHE_TTL_MS` | signing key ring cache | 300000 |
//! | `TETHER_MAX_ATTEMPTS` | retry budget per reconcile need | 3 |
//! | `TETHER_ACTION_TTL_MS` | lifetime of an unacknowledged action | 3600000 |
//! | `TETHER_CREDENTIAL_TTL_MS` | agent credential lifetime | 30 days |
//! | `TETHER_QUEUE_URL_<ROLE>` | the queue of `ANALYZER`, `PLANNER`, `POLICY_GATE`, `EXECUTOR`, `VERIFIER`, `MEMORY` | unset: not sent to |
//! | `TETHER_VERIFY_DELAY_S` | verifier's wait after an action (SQS delay) | 60 |
//! | `TETHER_VERIFY_ATTEMPTS` | re-checks for fresh evidence before "inconclusive"; delay x attempts should exceed the observations queue's visibility timeout, so a redelivered window still counts | 3 |
//! | `TETHER_CHECK_ACTIONS_S` | executor's re-check of outstanding actions | 60 |
//! | `TETHER_MAX_RECEIVES` | tries before the dead-letter queue (match the redrive policy) | 5 |
//! | `TETHER_INCIDENT_ACTION_TTL_MS` | lifetime of an incident action | 900000 |
//! | `TETHER_LLM_URL` | OpenAI-compatible base URL for optional hypothesis wording (`…/v1`) | unset: off |
//! | `TETHER_LLM_MODEL` / `TETHER_LLM_API_KEY` / `TETHER_LLM_TIMEOUT_MS` | its model, bearer key (inject from your secret store), timeout | `gpt-4o-mini` / none / 5000 |
//! | `TETHER_CPU_PERSIST_MS` | how long CPU saturation must hold (with contention, where the agent reports PSI) before a run opens | 300000 |
//! | `TETHER_INCIDENT_SUPPRESS_MS` | no second run for the same agent and signal while one is open, up to | 1800000 |

use jsonwebtoken::jwk::JwkSet;
use std::collections::BTreeMap;
use tether_core::credential::OperatorJwtConfig;
use tether_core::incident::artifact::Stage;
use tether_core::incident::roles::ChainConfig;
use tether_core::Settings;

/// A source of configuration strings.
pub trait Strings {
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvStrings;

impl Strings for EnvStrings {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

impl Strings for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        BTreeMap::get(self, key).cloned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("{name} is not valid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

#[derive(Debug, Clone)]
pub struct Config {
    pub table: String,
    pub bucket: String,
    pub observations_queue_url: String,
    pub signing_secret_id: String,
    pub operator_jwt: Option<OperatorJwtConfig>,
    pub settings: Settings,
    /// Each role's queue (`TETHER_QUEUE_URL_<ROLE>`; the observer's is the
    /// observations queue). A function sends only to the queues it is given.
    pub stage_queue_urls: BTreeMap<Stage, String>,
    pub chain: ChainConfig,
    /// Optional LLM wording for hypotheses; `None` unless `TETHER_LLM_URL` is set.
    pub llm: Option<LlmConfig>,
}

/// An OpenAI-compatible chat completions endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmConfig {
    /// Base URL, e.g. `https://api.openai.com/v1`; `/chat/completions` is appended.
    pub url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub timeout_ms: u64,
}

fn required(s: &impl Strings, name: &'static str) -> Result<String, ConfigError> {
    s.get(name).ok_or(ConfigError::Missing(name))
}

fn number(s: &impl Strings, name: &'static str, default: u64) -> Result<u64, ConfigError> {
    match s.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|e: std::num::ParseIntError| ConfigError::Invalid {
                name,
                reason: e.to_string(),
            }),
    }
}

impl Config {
    pub fn from_strings(s: &impl Strings) -> Result<Self, ConfigError> {
        let d = Settings::default();
        let mut settings = d.clone();
        settings.poll.poll_interval_ms =
            number(s, "TETHER_POLL_INTERVAL_MS", d.poll.poll_interval_ms)?;
        settings.poll.last_seen_write_interval_ms = number(
            s,
            "TETHER_LAST_SEEN_WRITE_INTERVAL_MS",
            d.poll.last_seen_write_interval_ms,
        )?;
        settings.poll.action_ttl_ms = number(s, "TETHER_ACTION_TTL_MS", d.poll.action_ttl_ms)?;
        settings.poll.max_attempts = u32::try_from(number(
            s,
            "TETHER_MAX_ATTEMPTS",
            u64::from(d.poll.max_attempts),
        )?)
        .map_err(|e| ConfigError::Invalid {
            name: "TETHER_MAX_ATTEMPTS",
            reason: e.to_string(),
        })?;
        settings.desired_cache_ttl_ms =
            number(s, "TETHER_DESIRED_CACHE_TTL_MS", d.desired_cache_ttl_ms)?;
        settings.key_cache_ttl_ms = number(s, "TETHER_KEY_CACHE_TTL_MS", d.key_cache_ttl_ms)?;
        settings.credential_ttl_ms = number(s, "TETHER_CREDENTIAL_TTL_MS", d.credential_ttl_ms)?;
        if settings.poll.poll_interval_ms < 1_000 {
            return Err(ConfigError::Invalid {
                name: "TETHER_POLL_INTERVAL_MS",
                reason: "must be at least 1000".into(),
            });
        }
        let operator_jwt = match s.get("TETHER_OPERATOR_JWKS") {
            None => None,
            Some(raw) => Some(OperatorJwtConfig {
                issuer: s
                    .get("TETHER_OPERATOR_JWT_ISSUER")
                    .unwrap_or_else(|| "tether".into()),
                audience: s
                    .get("TETHER_OPERATOR_JWT_AUDIENCE")
                    .unwrap_or_else(|| "tether-operators".into()),
                jwks: serde_json::from_str::<JwkSet>(&raw).map_err(|e| ConfigError::Invalid {
                    name: "TETHER_OPERATOR_JWKS",
                    reason: e.to_string(),
                })?,
            }),
        };
        let observations_queue_url = required(s, "TETHER_QUEUE_URL_OBSERVATIONS")?;
        let mut stage_queue_urls = BTreeMap::new();
        stage_queue_urls.insert(Stage::Observer, observations_queue_url.clone());
        for stage in Stage::ALL.into_iter().skip(1) {
            let name = format!("TETHER_QUEUE_URL_{}", stage.as_str().to_uppercase());
            if let Some(url) = s.get(&name) {
                stage_queue_urls.insert(stage, url);
            }
        }
        let dc = ChainConfig::default();
        let small = |name: &'static str, default: u32, max: u64| -> Result<u32, ConfigError> {
            let v = number(s, name, u64::from(default))?;
            if v > max {
                return Err(ConfigError::Invalid {
                    name,
                    reason: format!("must be at most {max}"),
                });
            }
            Ok(v as u32)
        };
        let chain = ChainConfig {
            verify_delay_s: small("TETHER_VERIFY_DELAY_S", dc.verify_delay_s, 900)?,
            check_actions_s: small("TETHER_CHECK_ACTIONS_S", dc.check_actions_s, 900)?,
            max_receives: small("TETHER_MAX_RECEIVES", dc.max_receives, 1000)?,
            verify_attempts: small("TETHER_VERIFY_ATTEMPTS", dc.verify_attempts, 100)?,
            action_ttl_ms: number(s, "TETHER_INCIDENT_ACTION_TTL_MS", dc.action_ttl_ms)?,
            suppress_ms: number(s, "TETHER_INCIDENT_SUPPRESS_MS", dc.suppress_ms)?,
            thresholds: tether_core::incident::observe::Thresholds {
                cpu_persist_ms: number(s, "TETHER_CPU_PERSIST_MS", dc.thresholds.cpu_persist_ms)?,
                ..dc.thresholds.clone()
            },
            ..dc
        };
        let llm = match s.get("TETHER_LLM_URL") {
            None => None,
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                Some(LlmConfig {
                    url: url.trim_end_matches('/').to_owned(),
                    model: s
                        .get("TETHER_LLM_MODEL")
                        .unwrap_or_else(|| "gpt-4o-mini".into()),
                    api_key: s.get("TETHER_LLM_API_KEY"),
                    timeout_ms: number(s, "TETHER_LLM_TIMEOUT_MS", 5000)?,
                })
            }
            Some(_) => {
                return Err(ConfigError::Invalid {
                    name: "TETHER_LLM_URL",
                    reason: "must be an http:// or https:// URL".into(),
                })
            }
        };
        Ok(Self {
            stage_queue_urls,
            chain,
            llm,
            table: required(s, "TETHER_TABLE")?,
            bucket: required(s, "TETHER_BUCKET")?,
            observations_queue_url,
            signing_secret_id: required(s, "TETHER_SIGNING_SECRET_ID")?,
            operator_jwt,
            settings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> BTreeMap<String, String> {
        [
            ("TETHER_TABLE", "t"),
            ("TETHER_BUCKET", "b"),
            ("TETHER_QUEUE_URL_OBSERVATIONS", "http://q"),
            ("TETHER_SIGNING_SECRET_ID", "s"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn defaults_and_overrides() {
        let c = Config::from_strings(&base()).expect("config");
        assert_eq!(c.settings, Settings::default());
        assert!(c.operator_jwt.is_none());
        let mut m = base();
        m.insert("TETHER_POLL_INTERVAL_MS".into(), "5000".into());
        let c = Config::from_strings(&m).expect("config");
        assert_eq!(c.settings.poll.poll_interval_ms, 5000);
    }

    #[test]
    fn errors_name_the_variable() {
        let mut m = base();
        m.remove("TETHER_TABLE");
        assert_eq!(
            Config::from_strings(&m).err(),
            Some(ConfigError::Missing("TETHER_TABLE"))
        );
        let mut m = base();
        m.insert("TETHER_MAX_ATTEMPTS".into(), "many".into());
        assert!(matches!(
            Config::from_strings(&m),
            Err(ConfigError::Invalid {
                name: "TETHER_MAX_ATTEMPTS",
                ..
            })
        ));
        let mut m = base();
        m.insert("TETHER_OPERATOR_JWKS".into(), "{".into());
        assert!(matches!(
            Config::from_strings(&m),
            Err(ConfigError::Invalid {
                name: "TETHER_OPERATOR_JWKS",
                ..
            })
        ));
    }
}
