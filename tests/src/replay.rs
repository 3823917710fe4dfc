//! Offline replay of recorded telemetry through the whole incident chain
//! (`tether_core::incident::offline`): what `tests/examples/replay.rs` prints and
//! what the scenario suite checks its own recordings against. See that example
//! for the corpus format.

use serde::{Deserialize, Serialize};
use tether_core::incident::artifact::{ArtifactKind, Body};
use tether_core::incident::offline::Offline;
use tether_core::incident::policy::TenantPolicy;
use tether_core::incident::roles::{ChainConfig, ObservationMessage};
use tether_core::model::FinalState;
use tether_core::tenant::{Principal, Role, TenantId};

#[derive(Debug, Serialize, Deserialize)]
pub struct Corpus {
    pub scenarios: Vec<Scenario>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    pub file: String,
    /// The fault's class (the signal family a run should open for); `None` for a
    /// no-fault recording.
    pub fault: Option<String>,
    /// The rule the top hypothesis should name.
    #[serde(default)]
    pub hypothesis: Option<String>,
    /// The verdict the verifier should reach.
    #[serde(default)]
    pub verdict: Option<String>,
    /// When the real agent finished the plan's actions.
    #[serde(default)]
    pub fixed_at_ms: Option<u64>,
    /// The tenant's incident policy during the recording (`PUT /v1/policy`'s
    /// body); the default policy when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<serde_json::Value>,
    /// The deployment's `TETHER_CPU_PERSIST_MS` during the recording, when not
    /// the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_persist_ms: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub families: Vec<String>,
    pub top1: Option<String>,
    pub verdict: Option<String>,
    /// The verifier's reason, when it reached one.
    pub why: Option<String>,
    pub unapproved_impactful: usize,
    pub failures: usize,
}

/// Replays one recording; the observation messages in time order.
pub async fn replay(s: &Scenario, messages: &[ObservationMessage]) -> Result<Outcome, String> {
    let first = messages
        .iter()
        .flat_map(|m| &m.windows)
        .map(|w| w.end_ms)
        .min()
        .ok_or("empty recording")?;
    let tenant = TenantId::parse(&messages[0].tenant).map_err(|e| e.to_string())?;
    let operator = Principal {
        tenant: tenant.clone(),
        role: Role::Operator,
        subject: "key:replay".into(),
    };
    let mut cfg = ChainConfig::default();
    if let Some(ms) = s.cpu_persist_ms {
        cfg.thresholds.cpu_persist_ms = ms;
    }
    let mut chain = Offline::new(cfg, first.saturating_sub(1));
    if let Some(p) = &s.policy {
        let policy: TenantPolicy =
            serde_json::from_value(p.clone()).map_err(|e| format!("policy: {e}"))?;
        let admin = Principal {
            role: Role::Admin,
            ..operator.clone()
        };
        chain
            .chain
            .set_policy(&admin, &policy)
            .await
            .map_err(|e| format!("policy: {e}"))?;
    }
    let mut fixed = false;
    for m in messages {
        let end = m.windows.iter().map(|w| w.end_ms).max().unwrap_or(first);
        if let Some(at) = s.fixed_at_ms.filter(|at| !fixed && end > *at) {
            chain.advance_to(at).await?;
            // The plan's steps are queued one after another: each finishes as
            // the agent finished it, and the next is queued, until none is left.
            for _ in 0..32 {
                if chain.finish_live(&tenant, FinalState::Succeeded).await? == 0 {
                    break;
                }
            }
            fixed = true;
        }
        chain.observe(m).await?;
        chain.approve_waiting(&operator).await?;
    }
    // Let the delayed checks (verification, deadlines) run out.
    let last = messages
        .iter()
        .flat_map(|m| &m.windows)
        .map(|w| w.end_ms)
        .max()
        .unwrap_or(first);
    chain.advance_to(last + 3_600_000).await?;

    let mut out = Outcome {
        failures: chain.failures.len(),
        ..Outcome::default()
    };
    let mut runs = chain.runs();
    runs.sort_by_key(|r| r.created_at_ms);
    for r in &runs {
        out.families.push(r.family.clone());
        let ours = s.fault.as_deref() == Some(r.family.as_str());
        if ours || out.top1.is_none() {
            if let Some(a) = chain
                .linked(&tenant, r, ArtifactKind::RootCauseHypothesis)
                .await
            {
                if let Body::RootCauseHypothesis { hypotheses, .. } = &a.body {
                    out.top1 = hypotheses.first().map(|h| h.rule.clone());
                }
            }
            if let Some(a) = chain
                .linked(&tenant, r, ArtifactKind::VerificationResult)
                .await
            {
                if let Body::VerificationResult { verdict, why, .. } = &a.body {
                    out.verdict = Some(verdict.as_str().to_owned());
                    out.why = Some(why.clone());
                }
            }
        }
        // Impactful or destructive steps that executed: each must have waited
        // for an operator.
        let plan = chain.linked(&tenant, r, ArtifactKind::ExecutionPlan).await;
        let proposal = chain
            .linked(&tenant, r, ArtifactKind::RemediationProposal)
            .await;
        if let (
            Some(Body::ExecutionPlan { decisions, .. }),
            Some(Body::RemediationProposal { proposals, .. }),
        ) = (plan.map(|a| a.body), proposal.map(|a| a.body))
        {
            for d in &decisions {
                let risky = proposals.iter().any(|p| {
                    p.step == d.step && matches!(p.safety.as_str(), "impactful" | "destructive")
                });
                if risky && d.verdict == "execute" && r.approval.is_none() {
                    out.unapproved_impactful += 1;
                }
            }
        }
    }
    Ok(out)
}

/// Reads a recording (one observation message per line), in time order.
pub fn load(file: &std::path::Path) -> Vec<ObservationMessage> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut messages: Vec<ObservationMessage> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    messages.sort_by_key(|m| m.windows.iter().map(|w| w.end_ms).min().unwrap_or(0));
    messages
}

/// Stores a recording in the corpus at `dir` under `s.file`, and lists `s` in
/// `corpus.json` (replacing the scenario of the same name).
pub fn save(dir: &std::path::Path, s: &Scenario, recording: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("corpus dir");
    std::fs::copy(recording, dir.join(&s.file)).expect("copy recording");
    let index = dir.join("corpus.json");
    let mut corpus: Corpus = std::fs::read_to_string(&index)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Corpus { scenarios: vec![] });
    corpus.scenarios.retain(|x| x.name != s.name);
    corpus.scenarios.push(s.clone());
    corpus.scenarios.sort_by(|a, b| a.name.cmp(&b.name));
    let text = serde_json::to_string_pretty(&corpus).expect("json");
    std::fs::write(index, text + "\n").expect("write corpus.json");
}
