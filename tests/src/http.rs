//! A small blocking HTTP client for tests: status and JSON body, errors included.

use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Http {
    agent: ureq::Agent,
    pub base: String,
}

/// A response: status, parsed JSON (Null when not JSON), headers of interest.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub json: Value,
    pub retry_after: Option<String>,
}

impl Reply {
    /// The stable error code of an error reply.
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
}

impl Http {
    pub fn new(base: &str) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build()
            .into();
        Self {
            agent,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    fn finish(resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
        let mut resp = resp.expect("HTTP exchange");
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            json,
            retry_after,
        }
    }

    pub fn get(&self, path: &str, bearer: Option<&str>) -> Reply {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(b) = bearer {
            req = req.header("Authorization", format!("Bearer {b}"));
        }
        Self::finish(req.call())
    }

    pub fn delete(&self, path: &str, bearer: Option<&str>) -> Reply {
        let mut req = self.agent.delete(format!("{}{path}", self.base));
        if let Some(b) = bearer {
            req = req.header("Authorization", format!("Bearer {b}"));
        }
        Self::finish(req.call())
    }

    pub fn post(&self, path: &str, bearer: Option<&str>, body: &Value) -> Reply {
        self.post_raw(path, bearer, body.to_string().as_bytes())
    }

    pub fn post_raw(&self, path: &str, bearer: Option<&str>, body: &[u8]) -> Reply {
        let mut req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json");
        if let Some(b) = bearer {
            req = req.header("Authorization", format!("Bearer {b}"));
        }
        Self::finish(req.send(body))
    }

    pub fn put(&self, path: &str, bearer: Option<&str>, body: &Value) -> Reply {
        let mut req = self
            .agent
            .put(format!("{}{path}", self.base))
            .header("Content-Type", "application/json");
        if let Some(b) = bearer {
            req = req.header("Authorization", format!("Bearer {b}"));
        }
        Self::finish(req.send(body.to_string().as_bytes()))
    }
}
