//! The planner: a remediation proposal from the catalog's runbooks.

use super::*;

impl<S: Runs + AuditTrail, A: ArtifactStore, Q: StageQueue, C: Clock> Chain<S, A, Q, C> {
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
        let proposals = catalog::proposals(top, &m.agent_id, prior);
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
            },
        );
        let (id, _) = self.record(t, Stage::Planner, &art, |_| {}).await?;
        self.next(Stage::PolicyGate, t, run, &id).await
    }
}
