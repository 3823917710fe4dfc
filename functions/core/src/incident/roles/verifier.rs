//! The verifier: compares evidence before and after the action.
//!
//! Invariant: only a host-changing step (not read-only) that succeeded can be
//! credited. When none did (dry runs, read-only steps, refusals, failures,
//! blocks), a recovery is `inconclusive` and says why, and no rollback is queued.

use super::*;

impl<S: Runs + EvidenceReads + Outbox + AuditTrail, A: ArtifactStore, Q: StageQueue, C: Clock>
    Chain<S, A, Q, C>
{
    pub async fn verify(&self, msg: &VerifyInput) -> Result<(), RoleError> {
        let VerifyInput {
            tenant: t,
            run_id: run,
            attempt,
        } = msg;
        let m = self.run(t, run).await?;
        if let Some(l) = m.link(ArtifactKind::VerificationResult) {
            return self.next(Stage::Memory, t, run, &l.id.clone()).await;
        }
        let (result_id, result) = self.linked(t, &m, ArtifactKind::ExecutionResult).await?;
        let (_, obs) = self.linked(t, &m, ArtifactKind::ObservationSummary).await?;
        let (
            Body::ObservationSummary {
                signals,
                window_start_ms,
                window_end_ms,
                ..
            },
            Body::ExecutionResult { steps, .. },
        ) = (&obs.body, &result.body)
        else {
            return Err(perm("chain links point at the wrong kinds"));
        };
        let Some(signal) = signals.first() else {
            return Err(perm("the observation has no signal"));
        };
        let after_ms = result.created_at_ms;
        let points: Vec<EvidencePoint> = self
            .store
            .evidence(t, run)
            .await?
            .into_iter()
            .filter(|p| p.end_ms > after_ms && p.metrics.contains_key(&signal.metric))
            .collect();
        if points.is_empty() && *attempt < self.cfg.verify_attempts {
            return self.verify_later(t, run, attempt + 1).await;
        }
        let (_, prop) = self
            .linked(t, &m, ArtifactKind::RemediationProposal)
            .await?;
        let Body::RemediationProposal { proposals, .. } = &prop.body else {
            return Err(perm("remediation_proposal link points at another kind"));
        };
        // Host-changing steps that succeeded: only these can be credited.
        let credited: Vec<&StepResult> = steps
            .iter()
            .filter(|s| {
                s.state == "succeeded"
                    && proposals
                        .iter()
                        .find(|p| p.step == s.step)
                        .is_some_and(|p| p.safety != crate::incident::artifact::Safety::ReadOnly)
            })
            .collect();
        let changed_host = !credited.is_empty();
        // A counter (threshold 0: OOM kills, GPU XIDs) is compared per minute of
        // window, so a short first window is not read as fewer events than a
        // full one after the action.
        let counter = signal.threshold == 0.0;
        let rate = |count: f64, start: u64, end: u64| {
            if counter && start > 0 && end > start {
                count * 60_000.0 / (end - start) as f64
            } else {
                count
            }
        };
        let before = rate(signal.value, *window_start_ms, *window_end_ms);
        let after = points.last().and_then(|p| {
            p.metrics
                .get(&signal.metric)
                .map(|v| rate(*v, p.start_ms, p.end_ms))
        });
        let (verdict, mut why) = match after {
            None => (
                Verdict::Inconclusive,
                format!(
                    "no telemetry for {} from the agent since the action finished ({} checks)",
                    signal.metric,
                    attempt + 1
                ),
            ),
            Some(v) => {
                if ((counter && v == 0.0) || (!counter && v < signal.threshold)) && !changed_host {
                    (
                        Verdict::Inconclusive,
                        format!(
                            "{} went from {before:.1} to {v:.1}, under the threshold {:.1}, but not \
                             through this run: the recovery is credited to no action",
                            signal.metric, signal.threshold
                        ),
                    )
                } else if (counter && v == 0.0) || (!counter && v < signal.threshold) {
                    (
                        Verdict::Improved,
                        format!(
                            "{} went from {before:.1} to {v:.1}, under the threshold {:.1}",
                            signal.metric, signal.threshold
                        ),
                    )
                } else if v > before * 1.05 {
                    (
                        Verdict::Worse,
                        format!("{} rose from {before:.1} to {v:.1}", signal.metric),
                    )
                } else {
                    (
                        Verdict::Unchanged,
                        format!(
                            "{} is still {v:.1} (was {before:.1}, threshold {:.1})",
                            signal.metric, signal.threshold
                        ),
                    )
                }
            }
        };
        if counter && *window_end_ms > *window_start_ms {
            why.push_str(" (events per minute of window)");
        }
        if !changed_host {
            why.push_str(
                "; no action changed the host (no host-changing step succeeded: only dry runs, \
                 read-only steps, refusals, failures or blocks), so any change is not the action's doing",
            );
        }
        let mut rollback = None;
        if verdict == Verdict::Worse && changed_host {
            {
                let agent = AgentId::parse(&m.agent_id).map_err(|e| perm(e.to_string()))?;
                for s in credited.iter().copied() {
                    let Some(rb) = proposals
                        .iter()
                        .find(|p| p.step == s.step)
                        .and_then(|p| p.rollback.clone())
                    else {
                        continue;
                    };
                    let step = 100 + s.step;
                    let at = points.last().map_or(after_ms, |p| p.end_ms);
                    let item = OutboxItem {
                        action: Action {
                            id: action_id(run, step),
                            kind: ActionKind::new(&rb.action),
                            target: proposals
                                .iter()
                                .find(|p| p.step == s.step)
                                .map(|p| p.target.clone())
                                .unwrap_or_default(),
                            payload: rb.payload.clone(),
                            idempotency_key: idempotency_key(run, step),
                            not_before_ms: 0,
                            expires_at_ms: at + self.cfg.action_ttl_ms,
                            mode: ActionMode::Execute,
                            requires_capability: rb.action.clone(),
                        },
                        state: LiveState::Queued,
                        attempt: 1,
                        pid: 0,
                        created_at_ms: at,
                        updated_at_ms: at,
                        last_result: None,
                    };
                    self.store.enqueue_action(t, &agent, &item).await?;
                    rollback = Some(format!(
                        "queued {} (step {step}) to undo step {}",
                        rb.action, s.step
                    ));
                    let ra = RunAction {
                        step,
                        action: rb.action.clone(),
                        action_id: item.action.id.clone(),
                        agent_id: m.agent_id.clone(),
                        idempotency_key: item.action.idempotency_key.clone(),
                        mode: "execute".into(),
                        state: "queued".into(),
                        message: String::new(),
                        finished_at_ms: 0,
                        rollback: true,
                    };
                    self.mutate(t, run, |m| {
                        if m.actions.iter().any(|a| a.action_id == ra.action_id) {
                            return false;
                        }
                        m.actions.push(ra.clone());
                        true
                    })
                    .await?;
                }
            }
        }
        let created = points.last().map_or(after_ms, |p| p.end_ms.max(after_ms));
        let art = envelope(
            Stage::Verifier,
            Some(Stage::Memory),
            &m,
            t,
            created,
            verdict.as_str(),
            vec![result_id],
            points
                .iter()
                .rev()
                .take(3)
                .map(|p| {
                    EvidenceRef::new(
                        format!("window:{}:{}", m.agent_id, p.seq),
                        p.metrics.iter().map(|(k, v)| format!("{k} = {v:.1}")),
                    )
                })
                .collect(),
            Body::VerificationResult {
                verdict,
                why,
                metric: signal.metric.clone(),
                before: Some(before),
                after,
                rollback,
            },
        );
        let (id, _) = self.record(t, Stage::Verifier, &art, |_| {}).await?;
        self.next(Stage::Memory, t, run, &id).await
    }
}
