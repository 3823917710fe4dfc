//! The analyzer: ranked root-cause hypotheses for a run's observation.

use super::*;

impl<S: Runs + PriorAttempts + AuditTrail, A: ArtifactStore, Q: StageQueue, C: Clock>
    Chain<S, A, Q, C>
{
    pub async fn analyze(&self, msg: &ArtifactInput) -> Result<(), RoleError> {
        let (t, run, input) = Self::input(msg);
        let m = self.run(t, run).await?;
        if let Some(l) = m.link(ArtifactKind::RootCauseHypothesis) {
            return self.next(Stage::Planner, t, run, &l.id.clone()).await;
        }
        Self::check_input(&m, input)?;
        let obs = self.artifact(t, input).await?;
        let Body::ObservationSummary {
            agent_id,
            window_seq,
            signals,
            ..
        } = &obs.body
        else {
            return Err(perm("the analyzer's input must be an observation_summary"));
        };
        let finding = envelope(
            Stage::Analyzer,
            Some(Stage::Planner),
            &m,
            t,
            obs.created_at_ms,
            "anomalous",
            vec![input.to_owned()],
            obs.evidence.clone(),
            Body::AnomalyFinding {
                agent_id: agent_id.clone(),
                anomalies: catalog::anomalies(signals),
            },
        );
        let (finding_id, _) = self.record(t, Stage::Analyzer, &finding, |_| {}).await?;
        let hyps = catalog::hypotheses(signals, &format!("window:{agent_id}:{window_seq}"));
        let Some(top) = hyps.first() else {
            return Err(perm("no catalog rule matches the run's signals"));
        };
        let fp = fingerprint(&m.family, &top.rule, &top.subject);
        let prior: Vec<PriorAttempt> = self
            .store
            .prior_attempts(t, &fp)
            .await?
            .into_iter()
            .filter(|r| r.run_id != m.run_id)
            .flat_map(|r| {
                r.actions.into_iter().map(move |action| PriorAttempt {
                    run_id: r.run_id.clone(),
                    action,
                    verdict: r.verdict,
                })
            })
            .collect();
        let title = top.title.clone();
        let enrichment = match &self.enricher {
            None => None,
            Some(e) => match e.enrich(enrichment_prompt(&hyps)).await {
                Ok(text) => Some(text.chars().take(1000).collect::<String>()),
                Err(error) => {
                    tracing::warn!(run, %error, "LLM enrichment failed; the hypothesis goes without it");
                    None
                }
            },
        };
        let hyp = envelope(
            Stage::Analyzer,
            Some(Stage::Planner),
            &m,
            t,
            obs.created_at_ms,
            "ranked",
            vec![finding_id],
            top.evidence.clone(),
            Body::RootCauseHypothesis {
                hypotheses: hyps,
                prior,
                enrichment,
            },
        );
        let (id, _) = self
            .record(t, Stage::Analyzer, &hyp, |m| {
                m.fingerprint = fp.clone();
                m.title = title.clone();
            })
            .await?;
        self.next(Stage::Planner, t, run, &id).await
    }
}
