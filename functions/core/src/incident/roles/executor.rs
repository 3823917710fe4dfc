//! The executor: queues approved steps in agents' outboxes and collects their results; never touches a host.
//!
//! Invariant: a step whose kind the agent no longer reports among the kinds it
//! can run (re-read at queue time: the host may have changed since the plan) is
//! never queued; it is recorded in the run as `refused`, with the reason.

use super::*;

impl<
        S: Runs + Outbox + CountExecution + AgentKinds + AuditTrail,
        A: ArtifactStore + EvidenceUploads,
        Q: StageQueue,
        C: Clock,
    > Chain<S, A, Q, C>
{
    pub async fn execute(&self, msg: &ExecutorInput) -> Result<(), RoleError> {
        match msg {
            ExecutorInput::Approved { tenant, run_id } => self.start(tenant, run_id).await,
            ExecutorInput::ActionsChanged { tenant, run_id } => {
                self.collect(tenant, run_id, false).await
            }
            ExecutorInput::ApprovalDeadline { tenant, run_id } => {
                self.deadline(tenant, run_id).await
            }
        }
    }

    pub(super) async fn start(&self, t: &TenantId, run: &str) -> Result<(), RoleError> {
        let m = self.run(t, run).await?;
        if m.status != RunStatus::Executing {
            tracing::info!(
                run,
                status = m.status.as_str(),
                "not executing: nothing to start"
            );
            return Ok(());
        }
        let (_, plan) = self.linked(t, &m, ArtifactKind::ExecutionPlan).await?;
        let (_, prop) = self
            .linked(t, &m, ArtifactKind::RemediationProposal)
            .await?;
        let (
            Body::ExecutionPlan {
                decisions, outcome, ..
            },
            Body::RemediationProposal { proposals, .. },
        ) = (&plan.body, &prop.body)
        else {
            return Err(perm("chain links point at the wrong kinds"));
        };
        let approved = m
            .approval
            .as_ref()
            .is_some_and(|a| a.decision == "approved");
        if outcome == "awaiting_approval" && !approved {
            return Err(perm("the plan needs an approval it does not have"));
        }
        let start = m.approval.as_ref().map_or(plan.created_at_ms, |a| a.at_ms);
        let agent = AgentId::parse(&m.agent_id).map_err(|e| perm(e.to_string()))?;
        let kinds = self.store.agent_kinds(t, &agent).await?;
        let mut actions = Vec::new();
        for d in decisions.iter().filter(|d| d.verdict != "block") {
            let Some(p) = proposals.iter().find(|p| p.step == d.step) else {
                continue;
            };
            let id = action_id(run, d.step);
            let key = idempotency_key(run, d.step);
            // Refused once (a redelivery keeps the refusal), or the agent lost the kind.
            let refusal = m
                .actions
                .iter()
                .find(|a| a.action_id == id && a.state == "refused")
                .map(|a| a.message.clone())
                .or_else(|| {
                    kinds
                        .as_ref()
                        .filter(|k| !k.contains(&p.action))
                        .map(|_| {
                            format!(
                                "not queued: the agent no longer reports {} among the action kinds it can run on its host",
                                p.action
                            )
                        })
                });
            if let Some(message) = refusal {
                actions.push(RunAction {
                    step: d.step,
                    action: p.action.clone(),
                    action_id: id,
                    agent_id: m.agent_id.clone(),
                    idempotency_key: key,
                    mode: d.mode.clone(),
                    state: "refused".into(),
                    message,
                    finished_at_ms: start,
                    rollback: false,
                });
                continue;
            }
            let mut payload = p.payload.clone();
            if p.action == "collect_evidence" && d.mode == "execute" {
                // Where the agent uploads its bundle: a presigned PUT, valid as long
                // as the action is.
                let (object, url) = self
                    .artifacts
                    .evidence_upload(t, run, &id, self.cfg.action_ttl_ms / 1000)
                    .await?;
                payload["upload"] = serde_json::json!({ "url": url, "key": object });
            }
            let item = OutboxItem {
                action: Action {
                    id: id.clone(),
                    kind: ActionKind::new(&p.action),
                    target: p.target.clone(),
                    payload,
                    idempotency_key: key.clone(),
                    not_before_ms: 0,
                    expires_at_ms: start + self.cfg.action_ttl_ms,
                    mode: if d.mode == "execute" {
                        ActionMode::Execute
                    } else {
                        ActionMode::DryRun
                    },
                    requires_capability: p.action.clone(),
                },
                state: LiveState::Queued,
                attempt: 1,
                pid: 0,
                created_at_ms: start,
                updated_at_ms: start,
                last_result: None,
            };
            if self.store.enqueue_action(t, &agent, &item).await? {
                self.store.count_execution(t, self.clock.now_ms()).await?;
            }
            actions.push(RunAction {
                step: d.step,
                action: p.action.clone(),
                action_id: id,
                agent_id: m.agent_id.clone(),
                idempotency_key: key,
                mode: d.mode.clone(),
                state: "queued".into(),
                message: String::new(),
                finished_at_ms: 0,
                rollback: false,
            });
        }
        if actions.is_empty() {
            let plan_id = m
                .link(ArtifactKind::ExecutionPlan)
                .map(|l| l.id.clone())
                .unwrap_or_default();
            return self.next(Stage::Memory, t, run, &plan_id).await;
        }
        self.mutate(t, run, |m| {
            let mut changed = false;
            for a in &actions {
                if !m.actions.iter().any(|x| x.action_id == a.action_id) {
                    m.actions.push(a.clone());
                    changed = true;
                }
            }
            changed
        })
        .await?;
        tracing::info!(
            run,
            actions = actions.len(),
            "actions queued in the agent's outbox"
        );
        self.send(
            Stage::Executor,
            StageMessage::ActionsChanged {
                tenant: t.clone(),
                run_id: run.into(),
            },
            self.cfg.check_actions_s,
        )
        .await
    }

    /// Picks up finished actions; completes `execution_result` when all are done.
    /// `_periodic`: a delayed check (re-scheduled until done) rather than the
    /// poll's prompt notification.
    pub(super) async fn collect(
        &self,
        t: &TenantId,
        run: &str,
        _periodic: bool,
    ) -> Result<(), RoleError> {
        let m = self.run(t, run).await?;
        if m.link(ArtifactKind::ExecutionResult).is_some() {
            if m.link(ArtifactKind::VerificationResult).is_none() {
                return self.verify_later(t, run, 0).await;
            }
            return Ok(());
        }
        if m.status != RunStatus::Executing {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let mut updates = Vec::new();
        for a in m.actions.iter().filter(|a| a.state == "queued") {
            let agent = AgentId::parse(&a.agent_id).map_err(|e| perm(e.to_string()))?;
            if let Some(done) = self.store.finished_action(t, &agent, &a.action_id).await? {
                let message = done
                    .result
                    .as_ref()
                    .map(|r| r.message.clone())
                    .unwrap_or_default();
                updates.push((
                    a.action_id.clone(),
                    done.state.as_str().to_owned(),
                    message,
                    done.finished_at_ms,
                ));
            } else if now
                > a.finished_at_ms
                    .max(m.approval.as_ref().map_or(0, |x| x.at_ms))
                    + self.cfg.action_ttl_ms
                    + 5 * 60_000
            {
                updates.push((
                    a.action_id.clone(),
                    "expired".into(),
                    "no result from the agent before the action expired".into(),
                    now,
                ));
            }
        }
        let m = if updates.is_empty() {
            m
        } else {
            self.mutate(t, run, |m| {
                let mut changed = false;
                for (id, state, message, at) in &updates {
                    if let Some(a) = m
                        .actions
                        .iter_mut()
                        .find(|a| &a.action_id == id && a.state == "queued")
                    {
                        a.state = state.clone();
                        a.message = message.clone();
                        a.finished_at_ms = *at;
                        changed = true;
                    }
                }
                changed
            })
            .await?
        };
        let pending = m
            .actions
            .iter()
            .filter(|a| !a.rollback && a.state == "queued")
            .count();
        if pending > 0 {
            // The poll notifies promptly; this timer is the safety net.
            return self
                .send(
                    Stage::Executor,
                    StageMessage::ActionsChanged {
                        tenant: t.clone(),
                        run_id: run.into(),
                    },
                    self.cfg.check_actions_s,
                )
                .await;
        }
        let (plan_id, plan) = self.linked(t, &m, ArtifactKind::ExecutionPlan).await?;
        let Body::ExecutionPlan { decisions, .. } = &plan.body else {
            return Err(perm("execution_plan link points at another kind"));
        };
        let mut steps: Vec<StepResult> = m
            .actions
            .iter()
            .filter(|a| !a.rollback)
            .map(|a| StepResult {
                step: a.step,
                action: a.action.clone(),
                action_id: a.action_id.clone(),
                idempotency_key: a.idempotency_key.clone(),
                state: a.state.clone(),
                message: a.message.clone(),
                finished_at_ms: a.finished_at_ms,
            })
            .collect();
        for d in decisions.iter().filter(|d| d.verdict == "block") {
            steps.push(StepResult {
                step: d.step,
                action: d.action.clone(),
                action_id: String::new(),
                idempotency_key: String::new(),
                state: "skipped".into(),
                message: format!("blocked by policy: {}", d.reasons.join("; ")),
                finished_at_ms: 0,
            });
        }
        steps.sort_by_key(|s| s.step);
        let finished = steps.iter().map(|s| s.finished_at_ms).max().unwrap_or(0);
        let status = if steps.iter().any(|s| s.state == "succeeded") {
            "executed"
        } else if steps
            .iter()
            .all(|s| matches!(s.state.as_str(), "dry_run" | "skipped"))
        {
            "dry_run"
        } else {
            "not_executed"
        };
        let art = envelope(
            Stage::Executor,
            Some(Stage::Verifier),
            &m,
            t,
            finished,
            status,
            vec![plan_id],
            m.actions
                .iter()
                .filter(|a| !a.rollback)
                .map(|a| {
                    EvidenceRef::new(
                        format!("action:{}", a.action_id),
                        [format!("{} -> {}: {}", a.action, a.state, a.message)],
                    )
                })
                .collect(),
            Body::ExecutionResult {
                approved_by: m.approval.as_ref().map(|a| a.by.clone()),
                steps,
            },
        );
        self.record(t, Stage::Executor, &art, |m| {
            m.status = RunStatus::Verifying
        })
        .await?;
        self.verify_later(t, run, 0).await
    }

    pub(super) async fn deadline(&self, t: &TenantId, run: &str) -> Result<(), RoleError> {
        let m = self.run(t, run).await?;
        if m.status != RunStatus::AwaitingApproval || m.approval.is_some() {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let expires = m.approval_expires_at_ms.unwrap_or(0);
        if now < expires {
            let left = u32::try_from((expires - now).div_ceil(1000)).unwrap_or(900);
            return self
                .send(
                    Stage::Executor,
                    StageMessage::ApprovalDeadline {
                        tenant: t.clone(),
                        run_id: run.into(),
                    },
                    left,
                )
                .await;
        }
        let m = self
            .mutate(t, run, |m| {
                if m.status != RunStatus::AwaitingApproval || m.approval.is_some() {
                    return false;
                }
                m.status = RunStatus::Open;
                m.outcome = "expired".into();
                true
            })
            .await?;
        if m.outcome != "expired" {
            return Ok(());
        }
        self.store
            .audit(
                t,
                &AuditEntry {
                    at_ms: expires,
                    actor: "executor".into(),
                    action: "approval_expired".into(),
                    run_id: run.into(),
                    detail: String::new(),
                },
            )
            .await?;
        let plan = m
            .link(ArtifactKind::ExecutionPlan)
            .map(|l| l.id.clone())
            .unwrap_or_default();
        self.next(Stage::Memory, t, run, &plan).await
    }
}
