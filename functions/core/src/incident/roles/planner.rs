//! The planner: a remediation proposal from the catalog's runbooks, limited to
//! what the subject's agent can run.
//!
//! Invariants: a step whose kind the agent does not report among the kinds it
//! can run is left out and listed in `unavailable` with the reason (so an
//! operator sees the better step that could not be planned); an agent that does
//! not report its kinds gets the whole runbook, and the proposal's `note` says
//! so.

use super::*;
use crate::incident::artifact::{Proposal, Unavailable};

impl<S: Runs + AgentKinds + AuditTrail, A: ArtifactStore, Q: StageQueue, C: Clock>
    Chain<S, A, Q, C>
{
    pub async fn plan(&self, msg: &ArtifactInput) -> Result<(), RoleError> {
        let (t, run, input) = Self::input(msg);
        let m = self.run(t, run).await?;
        if let Some(l) = m.link(ArtifactKind::RemediationProposal) {
            return self.next(Stage::PolicyGate, t, run, &l.id.clone()).await;
        }
        Self::check_input(&m, input)?;
        let hyp = self.artifact(t, input).await?;
        let Body::RootCauseHypothesis {
            hypotheses, prior, ..
        } = &hyp.body
        else {
            return Err(perm("the planner's input must be a root_cause_hypothesis"));
        };
        let Some(top) = hypotheses.first() else {
            return Err(perm("the hypothesis artifact ranks nothing"));
        };
        let agent = AgentId::parse(&m.agent_id).map_err(|e| perm(e.to_string()))?;
        let kinds = self.store.agent_kinds(t, &agent).await?;
        let (proposals, unavailable, note) = runnable(
            catalog::proposals(top, &m.agent_id, prior),
            kinds.as_deref(),
        );
        let art = envelope(
            Stage::Planner,
            Some(Stage::PolicyGate),
            &m,
            t,
            hyp.created_at_ms,
            "proposed",
            vec![input.to_owned()],
            top.evidence.clone(),
            Body::RemediationProposal {
                hypothesis: top.rule.clone(),
                proposals,
                unavailable,
                note,
            },
        );
        let (id, _) = self.record(t, Stage::Planner, &art, |_| {}).await?;
        self.next(Stage::PolicyGate, t, run, &id).await
    }
}

/// Splits a runbook into what the agent can run (renumbered from 1) and what it
/// cannot, with the reason. `kinds`: what the agent reports; `None` keeps every
/// step and says the agent did not report.
fn runnable(
    all: Vec<Proposal>,
    kinds: Option<&[String]>,
) -> (Vec<Proposal>, Vec<Unavailable>, Option<String>) {
    let Some(kinds) = kinds else {
        return (
            all,
            Vec::new(),
            Some(
                "the agent did not report the action kinds it can run (an older agent): \
                 steps are proposed without checking that it can run them"
                    .into(),
            ),
        );
    };
    let mut keep = Vec::new();
    let mut left_out = Vec::new();
    for p in all {
        if kinds.contains(&p.action) {
            keep.push(p);
        } else {
            left_out.push(Unavailable {
                reason: format!(
                    "the agent cannot run {} on its host (not among the action kinds it reports: \
                     its allow-list, what it implements and what the host offers)",
                    p.action
                ),
                runbook: p.runbook,
                action: p.action,
            });
        }
    }
    for (i, p) in keep.iter_mut().enumerate() {
        p.step = i as u32 + 1;
    }
    (keep, left_out, None)
}
