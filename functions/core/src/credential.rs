//! Credentials: enrollment tokens, API keys, agent credentials and operator JWTs.
//!
//! Invariants:
//! - Secrets are random (256 bits), shown once, and stored only as SHA-256 hashes;
//!   comparisons are constant-time.
//! - Every token names its tenant in its own text (`tet_enr.<tenant>.<id>.<secret>`,
//!   `tet_key.<tenant>.<id>.<secret>`), so it can be looked up under a tenant-first
//!   key; the tenant is trusted only after the secret's hash matches the stored one.
//! - Agent credentials are JWTs signed HS256 with a key chosen by `kid` from a key
//!   ring kept in Secrets Manager; verification pins the algorithm, the issuer, the
//!   audience and requires `exp`, `sub`, `tenant` and `gen`. Revocation is checked
//!   against the agent record (`gen`, `revoked`), which the poll reads anyway.
//! - Operator JWTs are verified against a JWKS by `kid`; each key must declare its
//!   algorithm (RS256, ES256 or EdDSA) and the token's header must match it, so
//!   `alg: none` and algorithm confusion are refused. `exp`, `iss`, `aud`, `sub`,
//!   `tenant` and `role` are required.
//! - Time is passed in (`now_ms`), never read here.

use crate::tenant::{AgentId, Principal, Role, TenantId};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const ENROLLMENT_PREFIX: &str = "tet_enr";
pub const API_KEY_PREFIX: &str = "tet_key";
pub const AGENT_ISSUER: &str = "tether";
pub const AGENT_AUDIENCE: &str = "tether-agent";
/// Clock skew tolerated on `exp`, in seconds.
pub const LEEWAY_S: u64 = 30;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("credential is malformed")]
    Malformed,
    #[error("credential has expired")]
    Expired,
    #[error("credential signature or claims are not valid: {0}")]
    Invalid(String),
    #[error("credential names an unknown key id")]
    UnknownKey,
    #[error("no signing key is configured")]
    NoSigningKey,
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Constant-time comparison of two hex digests.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.bytes()
        .zip(b.bytes())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// A parsed `prefix.<tenant>.<id>.<secret>` token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpaqueToken {
    pub tenant: TenantId,
    pub id: String,
    pub secret: String,
}

impl OpaqueToken {
    pub fn generate(prefix: &str, tenant: &TenantId) -> (Self, String) {
        let t = Self {
            tenant: tenant.clone(),
            id: random_hex(8),
            secret: random_hex(32),
        };
        let text = format!("{prefix}.{}.{}.{}", tenant.as_str(), t.id, t.secret);
        (t, text)
    }

    pub fn parse(prefix: &str, text: &str) -> Result<Self, CredentialError> {
        let mut parts = text.split('.');
        let (Some(p), Some(tenant), Some(id), Some(secret), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(CredentialError::Malformed);
        };
        let hexlen = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if p != prefix || !hexlen(id, 16) || !hexlen(secret, 64) {
            return Err(CredentialError::Malformed);
        }
        Ok(Self {
            tenant: TenantId::parse(tenant).map_err(|_| CredentialError::Malformed)?,
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    pub fn secret_hash(&self) -> String {
        hash_secret(&self.secret)
    }
}

/// One HS256 key of the agent-credential key ring.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey {
    pub kid: String,
    /// Hex-encoded key bytes (32 bytes).
    pub secret_hex: String,
    #[serde(default)]
    pub created_at_ms: u64,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The agent-credential key ring, as stored in Secrets Manager (JSON). New
/// credentials are signed with `active`; older keys still verify until removed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyRing {
    pub active: String,
    pub keys: Vec<SigningKey>,
}

impl KeyRing {
    /// Adds a fresh key, makes it active, and keeps at most `keep` keys.
    pub fn rotate(&mut self, now_ms: u64, keep: usize) -> String {
        let kid = format!("k{now_ms}-{}", random_hex(3));
        self.keys.push(SigningKey {
            kid: kid.clone(),
            secret_hex: random_hex(32),
            created_at_ms: now_ms,
        });
        self.active = kid.clone();
        let excess = self.keys.len().saturating_sub(keep.max(1));
        self.keys.drain(..excess);
        kid
    }

    fn key(&self, kid: &str) -> Option<Vec<u8>> {
        self.keys
            .iter()
            .find(|k| k.kid == kid)
            .and_then(|k| hex::decode(&k.secret_hex).ok())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub tenant: String,
    pub gen: u32,
    pub iat: u64,
    pub exp: u64,
}

/// A verified agent identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    pub tenant: TenantId,
    pub agent: AgentId,
    pub gen: u32,
    pub expires_at_ms: u64,
}

pub fn issue_agent_credential(
    ring: &KeyRing,
    tenant: &TenantId,
    agent: &AgentId,
    gen: u32,
    now_ms: u64,
    ttl_ms: u64,
) -> Result<(String, u64), CredentialError> {
    let secret = ring
        .key(&ring.active)
        .ok_or(CredentialError::NoSigningKey)?;
    let exp_ms = now_ms + ttl_ms;
    let claims = AgentClaims {
        iss: AGENT_ISSUER.into(),
        aud: AGENT_AUDIENCE.into(),
        sub: agent.as_str().into(),
        tenant: tenant.as_str().into(),
        gen,
        iat: now_ms / 1000,
        exp: exp_ms / 1000,
    };
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(ring.active.clone());
    let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&secret))
        .map_err(|e| CredentialError::Invalid(e.to_string()))?;
    Ok((token, (exp_ms / 1000) * 1000))
}

fn check_exp(exp_s: u64, now_ms: u64) -> Result<(), CredentialError> {
    if exp_s.saturating_add(LEEWAY_S) * 1000 <= now_ms {
        return Err(CredentialError::Expired);
    }
    Ok(())
}

pub fn verify_agent_credential(
    ring: &KeyRing,
    token: &str,
    now_ms: u64,
) -> Result<AgentIdentity, CredentialError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| CredentialError::Malformed)?;
    if header.alg != Algorithm::HS256 {
        return Err(CredentialError::Invalid("algorithm not allowed".into()));
    }
    let kid = header.kid.ok_or(CredentialError::UnknownKey)?;
    let secret = ring.key(&kid).ok_or(CredentialError::UnknownKey)?;
    let mut v = Validation::new(Algorithm::HS256);
    v.validate_exp = false; // checked below against the injected clock
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.set_issuer(&[AGENT_ISSUER]);
    v.set_audience(&[AGENT_AUDIENCE]);
    let data = jsonwebtoken::decode::<AgentClaims>(token, &DecodingKey::from_secret(&secret), &v)
        .map_err(|e| CredentialError::Invalid(e.to_string()))?;
    let c = data.claims;
    check_exp(c.exp, now_ms)?;
    Ok(AgentIdentity {
        tenant: TenantId::parse(&c.tenant).map_err(|_| CredentialError::Malformed)?,
        agent: AgentId::parse(&c.sub).map_err(|_| CredentialError::Malformed)?,
        gen: c.gen,
        expires_at_ms: c.exp * 1000,
    })
}

/// Operator JWT verification settings.
#[derive(Debug, Clone)]
pub struct OperatorJwtConfig {
    pub issuer: String,
    pub audience: String,
    pub jwks: JwkSet,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorClaims {
    pub iss: String,
    pub sub: String,
    pub tenant: String,
    pub role: String,
    pub exp: u64,
}

pub fn verify_operator_jwt(
    cfg: &OperatorJwtConfig,
    token: &str,
    now_ms: u64,
) -> Result<Principal, CredentialError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| CredentialError::Malformed)?;
    let kid = header.kid.ok_or(CredentialError::UnknownKey)?;
    let jwk = cfg.jwks.find(&kid).ok_or(CredentialError::UnknownKey)?;
    let declared = jwk
        .common
        .key_algorithm
        .and_then(|a| a.to_string().parse::<Algorithm>().ok())
        .ok_or_else(|| CredentialError::Invalid("key declares no algorithm".into()))?;
    if !matches!(
        declared,
        Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA
    ) || header.alg != declared
    {
        return Err(CredentialError::Invalid(
            "algorithm not allowed for this key".into(),
        ));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| CredentialError::Invalid(e.to_string()))?;
    let mut v = Validation::new(declared);
    v.validate_exp = false;
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.set_issuer(&[cfg.issuer.as_str()]);
    v.set_audience(&[cfg.audience.as_str()]);
    let c = jsonwebtoken::decode::<OperatorClaims>(token, &key, &v)
        .map_err(|e| CredentialError::Invalid(e.to_string()))?
        .claims;
    check_exp(c.exp, now_ms)?;
    Ok(Principal {
        tenant: TenantId::parse(&c.tenant)
            .map_err(|_| CredentialError::Invalid("bad tenant claim".into()))?,
        role: Role::parse(&c.role)
            .ok_or_else(|| CredentialError::Invalid("unknown role claim".into()))?,
        subject: format!("jwt:{}", c.sub),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const NOW: u64 = 1_800_000_000_000;

    fn ring() -> KeyRing {
        let mut r = KeyRing::default();
        r.rotate(NOW, 3);
        r
    }

    fn ids() -> (TenantId, AgentId) {
        (TenantId::parse("acme").expect("t"), AgentId::generate())
    }

    #[test]
    fn opaque_tokens_round_trip_and_reject_tampering() {
        let t = TenantId::parse("acme").expect("t");
        let (tok, text) = OpaqueToken::generate(ENROLLMENT_PREFIX, &t);
        assert_eq!(
            OpaqueToken::parse(ENROLLMENT_PREFIX, &text),
            Ok(tok.clone())
        );
        assert_eq!(
            OpaqueToken::parse(API_KEY_PREFIX, &text),
            Err(CredentialError::Malformed)
        );
        for bad in [
            "",
            "tet_enr",
            "tet_enr.acme.x.y",
            &format!("{text}.extra"),
            &text.replace("acme", "ACME"),
        ] {
            assert_eq!(
                OpaqueToken::parse(ENROLLMENT_PREFIX, bad),
                Err(CredentialError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(tok.secret_hash().len(), 64);
        assert!(hashes_equal(&tok.secret_hash(), &hash_secret(&tok.secret)));
        assert!(!hashes_equal(&tok.secret_hash(), &hash_secret("other")));
    }

    #[test]
    fn agent_credentials_verify_and_expire() {
        let (t, a) = ids();
        let r = ring();
        let (jwt, exp) = issue_agent_credential(&r, &t, &a, 2, NOW, 3_600_000).expect("issue");
        assert_eq!(exp, NOW + 3_600_000);
        let id = verify_agent_credential(&r, &jwt, NOW).expect("verify");
        assert_eq!((id.tenant, id.agent, id.gen), (t, a, 2));
        assert_eq!(
            verify_agent_credential(&r, &jwt, NOW + 3_600_000 + (LEEWAY_S + 1) * 1000),
            Err(CredentialError::Expired)
        );
    }

    #[test]
    fn rotation_keeps_old_credentials_valid_until_their_key_is_dropped() {
        let (t, a) = ids();
        let mut r = ring();
        let (old, _) = issue_agent_credential(&r, &t, &a, 1, NOW, 60_000).expect("issue");
        r.rotate(NOW + 1, 2);
        assert!(verify_agent_credential(&r, &old, NOW).is_ok_and(|i| i.agent == a));
        r.rotate(NOW + 2, 2);
        assert_eq!(
            verify_agent_credential(&r, &old, NOW),
            Err(CredentialError::UnknownKey)
        );
    }

    #[test]
    fn forged_agent_credentials_are_refused() {
        let (t, a) = ids();
        let r = ring();
        let (jwt, _) = issue_agent_credential(&r, &t, &a, 1, NOW, 60_000).expect("issue");
        // Wrong key, same kid.
        let mut other = r.clone();
        other.keys[0].secret_hex = random_hex(32);
        assert!(matches!(
            verify_agent_credential(&other, &jwt, NOW),
            Err(CredentialError::Invalid(_))
        ));
        // alg: none, claims otherwise copied.
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = jwt.split('.').nth(1).expect("payload");
        let none = format!(
            "{}.{payload}.",
            b64.encode(br#"{"alg":"none","typ":"JWT","kid":"x"}"#)
        );
        assert!(verify_agent_credential(&r, &none, NOW).is_err());
        // Tampered tenant claim keeps the old signature.
        let mut claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(payload).expect("b64")).expect("json");
        claims["tenant"] = "other".into();
        let parts: Vec<&str> = jwt.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64.encode(claims.to_string()),
            parts[2]
        );
        assert!(matches!(
            verify_agent_credential(&r, &forged, NOW),
            Err(CredentialError::Invalid(_))
        ));
        // Wrong audience, correctly signed.
        let secret = hex::decode(&r.keys[0].secret_hex).expect("hex");
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(r.active.clone());
        let bad_aud = AgentClaims {
            iss: AGENT_ISSUER.into(),
            aud: "someone-else".into(),
            sub: a.to_string(),
            tenant: t.to_string(),
            gen: 1,
            iat: NOW / 1000,
            exp: NOW / 1000 + 60,
        };
        let tok =
            jsonwebtoken::encode(&h, &bad_aud, &EncodingKey::from_secret(&secret)).expect("encode");
        assert!(matches!(
            verify_agent_credential(&r, &tok, NOW),
            Err(CredentialError::Invalid(_))
        ));
        assert_eq!(
            verify_agent_credential(&r, "garbage", NOW),
            Err(CredentialError::Malformed)
        );
    }

    #[test]
    fn rotate_keeps_at_most_the_asked_number_of_keys() {
        let mut r = KeyRing::default();
        for i in 0..5 {
            r.rotate(NOW + i, 3);
        }
        assert_eq!(r.keys.len(), 3);
        assert_eq!(r.keys.last().map(|k| k.kid.clone()), Some(r.active.clone()));
        let json = serde_json::to_string(&r).expect("json");
        assert_eq!(serde_json::from_str::<KeyRing>(&json).expect("back"), r);
        assert!(!format!("{:?}", r.keys[0]).contains(&r.keys[0].secret_hex));
    }
}
