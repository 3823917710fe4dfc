//! The only module that knows the HTTP crate. The agent speaks through
//! [`Transport`]: one POST, a status, an optional Retry-After, a capped body.
//!
//! Invariants: never blocks longer than the configured timeout; honours
//! `HTTPS_PROXY` / `NO_PROXY`; a body over [`MAX_RESPONSE_BYTES`] is an error, not
//! an allocation.

use std::time::Duration;

pub const MAX_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("response body over {MAX_RESPONSE_BYTES} bytes or unreadable: {0}")]
    Body(String),
}

pub trait Transport {
    fn post(&self, path: &str, bearer: Option<&str>, body: &[u8]) -> Result<Reply, TransportError>;
}

#[derive(Debug)]
pub struct UreqTransport {
    agent: ureq::Agent,
    base: String,
}

impl UreqTransport {
    pub fn new(base: &str, timeout: Duration) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .proxy(ureq::Proxy::try_from_env())
            .user_agent(concat!("tether-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Self {
            agent,
            base: base.trim_end_matches('/').to_owned(),
        }
    }
}

/// Names TLS failures as such: rustls reports a handshake with something that is
/// not TLS (or a bad certificate) as an I/O error whose text does not say "TLS".
fn describe(e: &ureq::Error, https: bool) -> String {
    let text = e.to_string();
    let tls = match e {
        ureq::Error::Rustls(_) | ureq::Error::Tls(_) => true,
        ureq::Error::Io(io) => {
            https
                && io.get_ref().is_some_and(|inner| {
                    let m = inner.to_string().to_lowercase();
                    [
                        "corrupt message",
                        "certificate",
                        "handshake",
                        "alert",
                        "peer",
                        "tls",
                    ]
                    .iter()
                    .any(|k| m.contains(k))
                })
        }
        _ => false,
    };
    if tls {
        format!("TLS handshake failed: {text}")
    } else {
        text
    }
}

impl Transport for UreqTransport {
    fn post(&self, path: &str, bearer: Option<&str>, body: &[u8]) -> Result<Reply, TransportError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json");
        if let Some(b) = bearer {
            req = req.header("Authorization", format!("Bearer {b}"));
        }
        let mut resp = req.send(body).map_err(|e| TransportError::Unreachable {
            url: self.base.clone(),
            reason: describe(&e, self.base.starts_with("https://")),
        })?;
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec()
            .map_err(|e| TransportError::Body(e.to_string()))?;
        Ok(Reply {
            status,
            retry_after,
            body,
        })
    }
}
