//! The agent-credential key ring in Secrets Manager (a JSON [`KeyRing`]).
//!
//! Key material never enters Terraform state: Terraform creates the empty secret,
//! and [`rotate`] (run by `tether-local keys rotate`) writes versions.

use tether_core::credential::KeyRing;
use tether_core::port::{KeySource, KeySourceError};

#[derive(Debug, Clone)]
pub struct SecretsManagerKeys {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
}

impl SecretsManagerKeys {
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: String) -> Self {
        Self { client, secret_id }
    }

    async fn current(&self) -> Result<Option<KeyRing>, KeySourceError> {
        let out = self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await;
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                let not_found = e
                    .as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception());
                if not_found {
                    return Ok(None);
                }
                return Err(KeySourceError::Unavailable(
                    aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string(),
                ));
            }
        };
        let Some(text) = out.secret_string() else {
            return Ok(None);
        };
        serde_json::from_str(text)
            .map(Some)
            .map_err(|e| KeySourceError::Malformed(e.to_string()))
    }

    /// Adds a fresh signing key and makes it active, keeping the previous two for
    /// verification. Returns the new key id.
    pub async fn rotate(&self, now_ms: u64) -> Result<String, KeySourceError> {
        let mut ring = self.current().await?.unwrap_or_default();
        let kid = ring.rotate(now_ms, 3);
        let text =
            serde_json::to_string(&ring).map_err(|e| KeySourceError::Malformed(e.to_string()))?;
        self.client
            .put_secret_value()
            .secret_id(&self.secret_id)
            .secret_string(text)
            .send()
            .await
            .map_err(|e| {
                KeySourceError::Unavailable(
                    aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string(),
                )
            })?;
        Ok(kid)
    }
}

impl KeySource for SecretsManagerKeys {
    async fn load(&self) -> Result<KeyRing, KeySourceError> {
        self.current().await?.ok_or_else(|| {
            KeySourceError::Unavailable(format!(
                "secret {} holds no signing key yet; run `tether-local keys rotate`",
                self.secret_id
            ))
        })
    }
}
