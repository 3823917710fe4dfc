//! The policy gate: Rego decides what may run, and what waits for approval.

use super::*;

impl<
        S: Runs + PolicySource + ExecutionCount + AuditTrail,
        A: ArtifactStore,
        Q: StageQueue,
        C: Clock,
    > Chain<S, A, Q, C>
{
    pub(super) fn gate_for(&self, p: &TenantPolicy) -> Result<Gate, PolicyError> {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        gates
            .entry(p.name())
            .or_insert_with(|| match &p.rego {
                None => Gate::default_policy(),
                Some(src) => Gate::compile(src),
            })
            .clone()
    }

    pub async fn gate(&self, msg: &ArtifactInput) -> Result<(), RoleError> {
        let (t, run, input) = Self::input(msg);
        let m = self.run(t, run).await?;
        let (plan_id, plan) = match m.link(ArtifactKind::ExecutionPlan) {
            Some(l) => {
                let id = l.id.clone();
                (id.clone(), self.artifact(t, &id).await?)
            }
            None => {
                Self::check_input(&m, input)?;
                let prop = self.artifact(t, input).await?;
                let Body::RemediationProposal { proposals, .. } = &prop.body else {
                    return Err(perm(
                        "the policy gate's input must be a remediation_proposal",
                    ));
                };
                let policy = self.store.load_policy(t).await?;
                let recent = self
                    .store
                    .executions_this_hour(t, self.clock.now_ms())
                    .await?;
                let decisions = match self.gate_for(&policy) {
                    Ok(g) => g.decide(proposals, &policy.settings, recent),
                    Err(e) => proposals
                        .iter()
                        .map(|p| crate::incident::artifact::Decision {
                            step: p.step,
                            action: p.action.clone(),
                            verdict: "block".into(),
                            mode: "dry_run".into(),
                            reasons: vec![format!("tenant policy unusable, failing closed: {e}")],
                        })
                        .collect(),
                };
                let outcome = if decisions.iter().any(|d| d.verdict == "require_approval") {
                    "awaiting_approval"
                } else if decisions.iter().any(|d| d.verdict != "block") {
                    "approved"
                } else {
                    "blocked"
                };
                let expires = (outcome == "awaiting_approval")
                    .then(|| prop.created_at_ms + policy.approval_ttl_ms());
                let art = envelope(
                    Stage::PolicyGate,
                    Some(Stage::Executor),
                    &m,
                    t,
                    prop.created_at_ms,
                    outcome,
                    vec![input.to_owned()],
                    vec![],
                    Body::ExecutionPlan {
                        decisions,
                        outcome: outcome.into(),
                        approval_expires_at_ms: expires,
                        policy: policy.name(),
                    },
                );
                let (id, _) = self
                    .record(t, Stage::PolicyGate, &art, |m| {
                        m.approval_expires_at_ms = expires;
                        m.status = match outcome {
                            "awaiting_approval" => RunStatus::AwaitingApproval,
                            "approved" => RunStatus::Executing,
                            _ => RunStatus::Open,
                        };
                    })
                    .await?;
                if outcome == "awaiting_approval" {
                    self.store
                        .audit(
                            t,
                            &AuditEntry {
                                at_ms: prop.created_at_ms,
                                actor: "policy_gate".into(),
                                action: "approval_requested".into(),
                                run_id: run.into(),
                                detail: format!("policy {}", policy.name()),
                            },
                        )
                        .await?;
                }
                (id, art)
            }
        };
        let Body::ExecutionPlan {
            outcome,
            approval_expires_at_ms,
            ..
        } = &plan.body
        else {
            return Err(perm("execution_plan link points at another kind"));
        };
        match outcome.as_str() {
            "awaiting_approval" => {
                let left_s = approval_expires_at_ms
                    .unwrap_or(0)
                    .saturating_sub(self.clock.now_ms())
                    / 1000;
                self.send(
                    Stage::Executor,
                    StageMessage::ApprovalDeadline {
                        tenant: t.clone(),
                        run_id: run.into(),
                    },
                    u32::try_from(left_s).unwrap_or(900),
                )
                .await
            }
            "approved" => {
                self.send(
                    Stage::Executor,
                    StageMessage::Approved {
                        tenant: t.clone(),
                        run_id: run.into(),
                    },
                    0,
                )
                .await
            }
            _ => self.next(Stage::Memory, t, run, &plan_id).await,
        }
    }
}
