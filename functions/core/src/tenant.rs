//! Tenant and agent identities, and operator roles.
//!
//! Invariant: a [`TenantId`] can only be made by [`TenantId::parse`], which accepts
//! `[a-z0-9-]{1,63}` (no separators used in keys or tokens), so every storage key
//! built from one is unambiguous. The api takes tenants only from verified
//! credentials, never from a header or a body.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {reason}")]
pub struct InvalidId {
    pub what: &'static str,
    pub reason: &'static str,
}

fn check_id(what: &'static str, s: &str, max: usize, extra: &[u8]) -> Result<(), InvalidId> {
    if s.is_empty() || s.len() > max {
        return Err(InvalidId {
            what,
            reason: "length out of range",
        });
    }
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || extra.contains(&b));
    if !ok {
        return Err(InvalidId {
            what,
            reason: "only lowercase letters, digits and '-' are allowed",
        });
    }
    Ok(())
}

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        check_id("tenant id", s, 63, &[])?;
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<TenantId> for String {
    fn from(t: TenantId) -> Self {
        t.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `agt_` followed by 24 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentId(String);

impl AgentId {
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        let rest = s.strip_prefix("agt_").ok_or(InvalidId {
            what: "agent id",
            reason: "must start with agt_",
        })?;
        if rest.len() != 24
            || !rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(InvalidId {
                what: "agent id",
                reason: "must be agt_ and 24 hex digits",
            });
        }
        Ok(Self(s.to_owned()))
    }

    pub fn generate() -> Self {
        Self(format!("agt_{}", crate::credential::random_hex(12)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AgentId {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<AgentId> for String {
    fn from(a: AgentId) -> Self {
        a.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Operator roles, least to most privileged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything of its tenant.
    Viewer,
    /// Also applies desired state and approves plans.
    Operator,
    /// Also manages enrollment tokens, API keys and agent credentials.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "operator" => Some(Self::Operator),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

/// Who is calling an operator route, as established by a verified credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: TenantId,
    pub role: Role,
    /// `key:<id>` or `jwt:<sub>`, for the audit trail.
    pub subject: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_reject_separators_and_case() {
        assert_eq!(
            TenantId::parse("acme-prod").map(|t| t.to_string()),
            Ok("acme-prod".into())
        );
        for bad in ["", "Acme", "a#b", "a.b", "a_b", "a b", &"x".repeat(64)] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn agent_ids_have_one_shape() {
        let id = AgentId::generate();
        assert_eq!(AgentId::parse(id.as_str()), Ok(id.clone()));
        assert!(AgentId::parse("agt_xyz").is_err());
        assert!(AgentId::parse("T#x#agt_0123456789abcdef01234567").is_err());
        assert!(serde_json::from_str::<AgentId>("\"agt_0123456789abcdef0123456\"").is_err());
    }

    #[test]
    fn roles_are_ordered_by_privilege() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
        assert_eq!(Role::parse("operator"), Some(Role::Operator));
        assert_eq!(Role::parse("root"), None);
    }
}
