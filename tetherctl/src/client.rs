//! The control plane's HTTP API, synchronously: one request per call, retried on
//! `503` (honouring `Retry-After`, at most three times, with a note on stderr),
//! every failure mapped to an [`Error`] with a stable exit code.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use tether_proto::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("{code}: {message}")]
    Auth { code: String, message: String },
    #[error("{code}: {message}")]
    NotFound { code: String, message: String },
    #[error("{code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("cannot reach the control plane at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("unexpected answer from the control plane: {0}")]
    Protocol(String),
}

impl Error {
    /// Exit codes a script can rely on.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Api { .. } | Error::Protocol(_) => 1,
            Error::Usage(_) => 2,
            Error::Auth { .. } => 3,
            Error::NotFound { .. } => 4,
            Error::Unreachable { .. } => 5,
        }
    }
}

#[derive(Debug)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: String,
}

const RETRIES: u32 = 3;

impl Client {
    pub fn new(base: &str, token: &str, timeout: Duration) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        Self {
            agent,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.call("GET", path, None::<&()>)?
            .ok_or_else(|| Error::Protocol("empty body".into()))
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<Option<T>, Error> {
        self.call("POST", path, Some(body))
    }

    pub fn delete(&self, path: &str) -> Result<(), Error> {
        self.call::<(), serde_json::Value>("DELETE", path, None)
            .map(|_| ())
    }

    fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<Option<T>, Error> {
        let url = format!("{}{path}", self.base);
        let payload = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| Error::Usage(e.to_string()))?;
        let mut attempt = 0;
        loop {
            let auth = format!("Bearer {}", self.token);
            let sent = match (method, &payload) {
                ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
                ("DELETE", _) => self
                    .agent
                    .delete(&url)
                    .header("Authorization", &auth)
                    .call(),
                (_, Some(p)) => self
                    .agent
                    .post(&url)
                    .header("Authorization", &auth)
                    .header("Content-Type", "application/json")
                    .send(&p[..]),
                (_, None) => self
                    .agent
                    .post(&url)
                    .header("Authorization", &auth)
                    .send_empty(),
            };
            let mut resp = sent.map_err(|e| Error::Unreachable {
                url: self.base.clone(),
                reason: e.to_string(),
            })?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let text = resp
                .body_mut()
                .with_config()
                .limit(16 * 1024 * 1024)
                .read_to_string()
                .map_err(|e| Error::Protocol(e.to_string()))?;
            if status == 503 && attempt < RETRIES {
                attempt += 1;
                let wait = retry_after.unwrap_or(2).min(30);
                eprintln!(
                    "tetherctl: control plane busy; retrying in {wait}s ({attempt}/{RETRIES})"
                );
                std::thread::sleep(Duration::from_secs(wait));
                continue;
            }
            if (200..300).contains(&status) {
                if text.trim().is_empty() {
                    return Ok(None);
                }
                return serde_json::from_str(&text)
                    .map(Some)
                    .map_err(|e| Error::Protocol(format!("{e} in {text:.200}")));
            }
            let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
                Ok(b) => (b.error.code, b.error.message),
                Err(_) => (format!("http_{status}"), text.chars().take(200).collect()),
            };
            return Err(match status {
                401 | 403 => Error::Auth { code, message },
                404 => Error::NotFound { code, message },
                _ => Error::Api {
                    status,
                    code,
                    message,
                },
            });
        }
    }
}
