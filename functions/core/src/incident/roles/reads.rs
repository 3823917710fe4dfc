//! The operator's reads: runs, artifacts, evidence, audit, policy.

use super::*;

impl<
        S: Runs + RunIndex + EvidenceReads + AuditReads + AuditTrail + PolicySource + PolicyAdmin,
        A: ArtifactStore,
        Q: StageQueue,
        C: Clock,
    > Chain<S, A, Q, C>
{
    pub async fn list_runs(&self, t: &TenantId) -> Result<Vec<RunManifest>, ControlError> {
        let mut runs = self.store.list_runs(t).await?;
        runs.sort_by(|a, b| {
            b.created_at_ms
                .cmp(&a.created_at_ms)
                .then_with(|| a.run_id.cmp(&b.run_id))
        });
        Ok(runs)
    }

    pub async fn get_run(&self, t: &TenantId, run_id: &str) -> Result<RunManifest, ControlError> {
        self.store
            .load_run(t, run_id)
            .await?
            .ok_or(ControlError::NotFound("run"))
    }

    pub async fn get_artifact(&self, t: &TenantId, id: &str) -> Result<Artifact, ControlError> {
        Artifact::digest_of(id).map_err(|e| ControlError::Invalid(e.to_string()))?;
        match self.artifacts.get(t, id).await? {
            Some(a) if a.tenant == t.as_str() => Ok(a),
            _ => Err(ControlError::NotFound("artifact")),
        }
    }

    pub async fn evidence(
        &self,
        t: &TenantId,
        run_id: &str,
    ) -> Result<Vec<EvidencePoint>, ControlError> {
        self.get_run(t, run_id).await?;
        Ok(self.store.evidence(t, run_id).await?)
    }

    pub async fn audit_log(&self, t: &TenantId) -> Result<Vec<AuditEntry>, ControlError> {
        Ok(self.store.list_audit(t).await?)
    }

    pub async fn policy(&self, t: &TenantId) -> Result<TenantPolicy, ControlError> {
        Ok(self.store.load_policy(t).await?)
    }

    /// Stores a tenant's policy after compiling it (admins only).
    pub async fn set_policy(&self, who: &Principal, p: &TenantPolicy) -> Result<(), ControlError> {
        if who.role < Role::Admin {
            return Err(ControlError::Forbidden(
                "setting the incident policy needs the admin role",
            ));
        }
        if let Some(src) = &p.rego {
            if src.len() > 64 * 1024 {
                return Err(ControlError::Invalid("policy is larger than 64 KiB".into()));
            }
            Gate::compile(src).map_err(|e| ControlError::Invalid(e.to_string()))?;
        }
        self.store.put_policy(&who.tenant, p).await?;
        self.store
            .audit(
                &who.tenant,
                &AuditEntry {
                    at_ms: self.clock.now_ms(),
                    actor: who.subject.clone(),
                    action: "policy_set".into(),
                    run_id: String::new(),
                    detail: p.name(),
                },
            )
            .await?;
        Ok(())
    }
}
