//! The policy gate's decision: Rego, evaluated in-process by regorus.
//!
//! Invariants:
//! - The default policy (`functions/core/policy/default.rego`) ships with the code:
//!   dry-run on, approval required, impactful and destructive actions blocked, an
//!   optional action allow-list and a per-tenant hourly rate limit.
//! - A tenant may replace it with its own Rego module, which must define
//!   `data.tether.gate.decision`; it is compiled when stored ([`Gate::compile`]), so
//!   a broken policy is refused at the door, not discovered mid-incident.
//! - Every step gets a decision and at least one reason; a policy that yields no
//!   decision, or a malformed one, blocks the step and says why (fail closed).

use super::artifact::{Decision, Proposal};
use serde::{Deserialize, Serialize};

pub const DEFAULT_POLICY: &str = include_str!("../../policy/default.rego");
const RULE: &str = "data.tether.gate.decision";

/// A tenant's knobs for the default policy (any subset; the rest default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_approval: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_impactful: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_destructive: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_actions: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_executions_per_hour: Option<u32>,
    /// How long a plan waits for approval before the run closes (default 1 h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_ttl_s: Option<u64>,
}

/// A tenant's policy: settings, and optionally its own Rego module.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantPolicy {
    #[serde(default)]
    pub settings: Settings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rego: Option<String>,
}

impl TenantPolicy {
    pub fn approval_ttl_ms(&self) -> u64 {
        self.settings
            .approval_ttl_s
            .unwrap_or(3600)
            .clamp(1, 7 * 86400)
            * 1000
    }

    /// `default` or `tenant:<sha256 prefix>`: which policy decided, for the record.
    pub fn name(&self) -> String {
        match &self.rego {
            None => "default".into(),
            Some(src) => {
                use sha2::Digest;
                let d = sha2::Sha256::digest(src.as_bytes());
                format!("tenant:{}", &hex::encode(d)[..12])
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy does not compile: {0}")]
    Compile(String),
    #[error("policy does not define data.tether.gate.decision")]
    NoDecision,
}

/// A compiled policy, ready to evaluate.
#[derive(Debug, Clone)]
pub struct Gate {
    engine: regorus::Engine,
}

#[derive(Debug, Deserialize)]
struct RawDecision {
    verdict: String,
    mode: String,
    #[serde(default)]
    reasons: Vec<String>,
}

impl Gate {
    pub fn default_policy() -> Result<Self, PolicyError> {
        Self::compile(DEFAULT_POLICY)
    }

    pub fn compile(rego: &str) -> Result<Self, PolicyError> {
        let mut engine = regorus::Engine::new();
        engine
            .add_policy("policy.rego".into(), rego.into())
            .map_err(|e| PolicyError::Compile(e.to_string()))?;
        let declared = engine
            .has_declared_rule_rooted_at("policy.rego", "data.tether.gate")
            .unwrap_or(false);
        let g = Self { engine };
        if !declared && !rego.contains("package tether.gate") {
            return Err(PolicyError::NoDecision);
        }
        Ok(g)
    }

    /// Decides every step. Never fails: a policy error blocks the step with the
    /// error as its reason.
    pub fn decide(
        &self,
        proposals: &[Proposal],
        settings: &Settings,
        recent_executions: u32,
    ) -> Vec<Decision> {
        proposals
            .iter()
            .map(|p| {
                let input = serde_json::json!({
                    "proposal": {
                        "step": p.step,
                        "action": p.action,
                        "safety": p.safety.as_str(),
                        "blast_radius": p.blast_radius,
                        "agent_id": p.agent_id,
                    },
                    "settings": settings,
                    "recent_executions": recent_executions,
                });
                let blocked = |why: String| Decision {
                    step: p.step,
                    action: p.action.clone(),
                    verdict: "block".into(),
                    mode: "dry_run".into(),
                    reasons: vec![why],
                };
                let mut engine = self.engine.clone();
                if let Err(e) = engine.set_input_json(&input.to_string()) {
                    return blocked(format!("policy input rejected: {e}"));
                }
                let value = match engine.eval_rule(RULE.into()) {
                    Ok(v) => v,
                    Err(e) => return blocked(format!("policy evaluation failed: {e}")),
                };
                let json = match value.to_json_str() {
                    Ok(j) => j,
                    Err(_) => {
                        return blocked("policy produced no decision: blocked (fail closed)".into())
                    }
                };
                match serde_json::from_str::<RawDecision>(&json) {
                    Ok(d)
                        if matches!(
                            d.verdict.as_str(),
                            "block" | "require_approval" | "execute" | "dry_run"
                        ) && matches!(d.mode.as_str(), "execute" | "dry_run") =>
                    {
                        Decision {
                            step: p.step,
                            action: p.action.clone(),
                            verdict: d.verdict,
                            mode: d.mode,
                            reasons: if d.reasons.is_empty() {
                                vec!["the policy gave no reason".into()]
                            } else {
                                d.reasons
                            },
                        }
                    }
                    _ => blocked(format!(
                        "policy produced a malformed decision ({json}): blocked (fail closed)"
                    )),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::artifact::Safety;

    fn proposal(step: u32, action: &str, safety: Safety) -> Proposal {
        Proposal {
            step,
            runbook: "r".into(),
            action: action.into(),
            agent_id: "agt".into(),
            target: "host".into(),
            payload: serde_json::Value::Null,
            blast_radius: "one host".into(),
            safety,
            rollback: None,
            rationale: String::new(),
        }
    }

    fn verdicts(ds: &[Decision]) -> Vec<(&str, &str)> {
        ds.iter()
            .map(|d| (d.verdict.as_str(), d.mode.as_str()))
            .collect()
    }

    #[test]
    fn the_default_policy_dry_runs_requires_approval_and_blocks_the_dangerous() {
        let g = Gate::default_policy().expect("default policy compiles");
        let ps = [
            proposal(1, "collect_evidence", Safety::ReadOnly),
            proposal(2, "rotate_logs", Safety::Reversible),
            proposal(3, "signal_process", Safety::Impactful),
            proposal(4, "vacuum_journal", Safety::Destructive),
        ];
        let ds = g.decide(&ps, &Settings::default(), 0);
        assert_eq!(
            verdicts(&ds),
            vec![
                ("require_approval", "dry_run"),
                ("require_approval", "dry_run"),
                ("block", "dry_run"),
                ("block", "dry_run")
            ]
        );
        assert!(ds[3].reasons[0].contains("destructive actions are blocked by default"));
        assert!(ds[0]
            .reasons
            .iter()
            .any(|r| r.contains("dry-run is on by default")));
    }

    #[test]
    fn tenant_settings_open_what_they_name_and_limits_still_hold() {
        let g = Gate::default_policy().expect("compiles");
        let s = Settings {
            dry_run: Some(false),
            allow_impactful: Some(true),
            allowed_actions: Some(vec!["signal_process".into(), "collect_evidence".into()]),
            max_executions_per_hour: Some(5),
            ..Settings::default()
        };
        let ps = [
            proposal(1, "collect_evidence", Safety::ReadOnly),
            proposal(2, "signal_process", Safety::Impactful),
            proposal(3, "rotate_logs", Safety::Reversible),
            proposal(4, "vacuum_journal", Safety::Destructive),
        ];
        let ds = g.decide(&ps, &s, 0);
        assert_eq!(
            verdicts(&ds),
            vec![
                ("require_approval", "execute"),
                ("require_approval", "execute"),
                ("block", "execute"),
                ("block", "execute")
            ]
        );
        assert!(ds[2].reasons[0].contains("not on the tenant's allow-list"));
        let limited = g.decide(&ps[..1], &s, 5);
        assert_eq!(limited[0].verdict, "block");
        assert!(limited[0].reasons[0].contains("rate limit reached: 5"));
        let auto = Settings {
            require_approval: Some(false),
            ..Settings::default()
        };
        assert_eq!(
            verdicts(&g.decide(&ps[..1], &auto, 0)),
            vec![("dry_run", "dry_run")]
        );
    }

    #[test]
    fn a_tenant_policy_is_compiled_when_stored_and_fails_closed() {
        assert!(matches!(
            Gate::compile("package x\nallow := "),
            Err(PolicyError::Compile(_))
        ));
        assert_eq!(
            Gate::compile("package other\nx := 1").err(),
            Some(PolicyError::NoDecision)
        );
        let odd = Gate::compile(
            "package tether.gate\ndecision := {\"verdict\": \"yolo\", \"mode\": \"execute\"}",
        )
        .expect("compiles");
        let ds = odd.decide(
            &[proposal(1, "a", Safety::ReadOnly)],
            &Settings::default(),
            0,
        );
        assert_eq!(ds[0].verdict, "block");
        assert!(ds[0].reasons[0].contains("malformed decision"));
        let silent = Gate::compile("package tether.gate\nimport rego.v1\ndecision := 1 if false")
            .expect("compiles");
        let ds = silent.decide(
            &[proposal(1, "a", Safety::ReadOnly)],
            &Settings::default(),
            0,
        );
        assert_eq!(ds[0].verdict, "block");
    }
}
