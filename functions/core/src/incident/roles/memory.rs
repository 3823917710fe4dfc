//! Memory: what ran and how it went, for later plans; closes the run.
//!
//! Invariant: only steps that ran (succeeded) are remembered with the verdict.

use super::*;

impl<S: Runs + Remember + HostMarkers + AuditTrail, A: ArtifactStore, Q: StageQueue, C: Clock>
    Chain<S, A, Q, C>
{
    pub async fn remember(&self, msg: &ArtifactInput) -> Result<(), RoleError> {
        let (t, run, input) = Self::input(msg);
        let m = self.run(t, run).await?;
        if m.link(ArtifactKind::IncidentReport).is_some() {
            return Ok(());
        }
        Self::check_input(&m, input)?;
        let verification = match m.link(ArtifactKind::VerificationResult) {
            Some(l) => Some(self.artifact(t, &l.id.clone()).await?),
            None => None,
        };
        let verdict = verification.as_ref().and_then(|v| match &v.body {
            Body::VerificationResult { verdict, .. } => Some(*verdict),
            _ => None,
        });
        let outcome = match (verdict, &m.approval) {
            (Some(Verdict::Improved), _) => "resolved".to_owned(),
            (Some(v), _) => v.as_str().to_owned(),
            (None, Some(a)) if a.decision == "rejected" => "rejected".into(),
            (None, _) if m.outcome == "expired" => "expired".into(),
            (None, _) => "blocked".into(),
        };
        let fp = if m.fingerprint.is_empty() {
            fingerprint(&m.family, "", "")
        } else {
            m.fingerprint.clone()
        };
        if let Some(v) = verdict {
            // Only steps that ran: a refused, failed, expired or dry-run step did
            // nothing the verdict could speak for, so it is not remembered (and
            // never demoted on later runs for it).
            let actions: Vec<String> = m
                .actions
                .iter()
                .filter(|a| !a.rollback && a.state == "succeeded")
                .map(|a| a.action.clone())
                .collect();
            self.store
                .remember(
                    t,
                    &fp,
                    &PriorRecord {
                        run_id: run.into(),
                        at_ms: m.chain.last().map_or(m.created_at_ms, |l| l.at_ms),
                        actions,
                        verdict: v,
                    },
                )
                .await?;
        }
        let created = m
            .chain
            .iter()
            .map(|l| l.at_ms)
            .max()
            .unwrap_or(m.created_at_ms);
        let art = envelope(
            Stage::Memory,
            None,
            &m,
            t,
            created,
            &outcome,
            m.chain.iter().map(|l| l.id.clone()).collect(),
            vec![],
            Body::IncidentReport {
                fingerprint: fp,
                title: m.title.clone(),
                outcome: outcome.clone(),
                chain: m
                    .chain
                    .iter()
                    .map(|l| ChainEntry {
                        kind: l.kind,
                        id: l.id.clone(),
                        status: l.status.clone(),
                    })
                    .collect(),
            },
        );
        let o = outcome.clone();
        self.record(t, Stage::Memory, &art, |m| {
            m.status = RunStatus::Closed;
            m.outcome = o.clone();
        })
        .await?;
        // Let the next episode of this signal open a new run.
        let agent = AgentId::parse(&m.agent_id).map_err(|e| perm(e.to_string()))?;
        let mut markers = self.store.load_markers(t, &agent).await?;
        if let Some(e) = markers.families.get_mut(&m.family) {
            if e.run_id == m.run_id && e.suppress_until_ms > 0 {
                e.suppress_until_ms = 0;
                if let Err(err) = self.store.save_markers(t, &agent, &markers).await {
                    tracing::warn!(run, error = %err, "could not release the incident marker; it lapses on its own");
                }
            }
        }
        tracing::info!(run, outcome = %outcome, "run closed");
        Ok(())
    }
}
