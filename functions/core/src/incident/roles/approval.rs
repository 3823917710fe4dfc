//! Operators' approvals and rejections of a plan.

use super::*;

impl<S: Runs + AuditTrail, A: ArtifactStore, Q: StageQueue, C: Clock> Chain<S, A, Q, C> {
    pub async fn decide(
        &self,
        who: &Principal,
        run_id: &str,
        approve: bool,
        comment: &str,
    ) -> Result<RunManifest, ControlError> {
        if who.role < Role::Operator {
            return Err(ControlError::Forbidden(
                "approving or rejecting a plan needs the operator role",
            ));
        }
        if comment.len() > 1000 {
            return Err(ControlError::Invalid(
                "comment is longer than 1000 bytes".into(),
            ));
        }
        let t = &who.tenant;
        let now = self.clock.now_ms();
        let current = self
            .store
            .load_run(t, run_id)
            .await?
            .ok_or(ControlError::NotFound("run"))?;
        if current.status != RunStatus::AwaitingApproval || current.approval.is_some() {
            return Err(ControlError::Conflict(format!(
                "run {run_id} is not awaiting approval (status {})",
                current.status.as_str()
            )));
        }
        if current.approval_expires_at_ms.is_some_and(|e| now >= e) {
            return Err(ControlError::Conflict(format!(
                "the approval window of run {run_id} has closed"
            )));
        }
        let decision = if approve { "approved" } else { "rejected" };
        let record = ApprovalRecord {
            decision: decision.into(),
            by: who.subject.clone(),
            at_ms: now,
            comment: comment.into(),
        };
        let m = self
            .mutate(t, run_id, |m| {
                if m.status != RunStatus::AwaitingApproval || m.approval.is_some() {
                    return false;
                }
                m.approval = Some(record.clone());
                m.status = if approve {
                    RunStatus::Executing
                } else {
                    RunStatus::Open
                };
                true
            })
            .await
            .map_err(|e| match e {
                RoleError::Transient(m) => ControlError::Unavailable(m),
                RoleError::Permanent(m) => ControlError::Internal(m),
            })?;
        if m.approval.as_ref() != Some(&record) {
            return Err(ControlError::Conflict(format!(
                "run {run_id} was decided concurrently"
            )));
        }
        self.store
            .audit(
                t,
                &AuditEntry {
                    at_ms: now,
                    actor: who.subject.clone(),
                    action: format!("plan_{decision}"),
                    run_id: run_id.into(),
                    detail: comment.into(),
                },
            )
            .await?;
        let sent = if approve {
            self.send(
                Stage::Executor,
                StageMessage::Approved {
                    tenant: t.clone(),
                    run_id: run_id.into(),
                },
                0,
            )
            .await
        } else {
            let plan = m
                .link(ArtifactKind::ExecutionPlan)
                .map(|l| l.id.clone())
                .unwrap_or_default();
            self.next(Stage::Memory, t, run_id, &plan).await
        };
        sent.map_err(|e| ControlError::Unavailable(e.to_string()))?;
        Ok(m)
    }
}
