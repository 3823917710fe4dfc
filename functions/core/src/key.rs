//! Storage keys: the only place that builds them.
//!
//! Invariants:
//! - Every partition key and every index key starts with `T#<tenant>#`, and every
//!   function here takes a [`TenantId`], so no key can be built without a tenant.
//!   IAM can then pin a tenant's access with `dynamodb:LeadingKeys`; S3 object keys
//!   follow the same rule.
//! - An agent's record, its live outbox and its service list share one partition and
//!   sort together (`0#agent` < `1#out#...` < `2#svc`), so the poll reads all three
//!   with one Query over `[POLL_RANGE_START, POLL_RANGE_END]`. Finished actions move
//!   to `9#done#...`, outside that range, so history never inflates the poll's read.

use crate::tenant::{AgentId, TenantId};

pub const AGENT_SK: &str = "0#agent";
pub const OUTBOX_PREFIX: &str = "1#out#";
pub const SERVICES_SK: &str = "2#svc";
pub const DONE_PREFIX: &str = "9#done#";
/// Inclusive sort-key range of the poll's Query.
pub const POLL_RANGE_START: &str = "0#";
pub const POLL_RANGE_END: &str = "2#~";
pub const DESIRED_REVISION_SK: &str = "rev";
pub const DESIRED_WORKLOAD_PREFIX: &str = "w#";

/// A table key: partition and sort.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub pk: String,
    pub sk: String,
}

fn tenant_prefix(t: &TenantId) -> String {
    format!("T#{}#", t.as_str())
}

pub fn agent_partition(t: &TenantId, a: &AgentId) -> String {
    format!("{}A#{}", tenant_prefix(t), a.as_str())
}

pub fn agent(t: &TenantId, a: &AgentId) -> Key {
    Key {
        pk: agent_partition(t, a),
        sk: AGENT_SK.into(),
    }
}

pub fn outbox(t: &TenantId, a: &AgentId, action_id: &str) -> Key {
    Key {
        pk: agent_partition(t, a),
        sk: format!("{OUTBOX_PREFIX}{action_id}"),
    }
}

pub fn done(t: &TenantId, a: &AgentId, action_id: &str) -> Key {
    Key {
        pk: agent_partition(t, a),
        sk: format!("{DONE_PREFIX}{action_id}"),
    }
}

pub fn services(t: &TenantId, a: &AgentId) -> Key {
    Key {
        pk: agent_partition(t, a),
        sk: SERVICES_SK.into(),
    }
}

pub fn desired_partition(t: &TenantId) -> String {
    format!("{}DESIRED", tenant_prefix(t))
}

pub fn desired_revision(t: &TenantId) -> Key {
    Key {
        pk: desired_partition(t),
        sk: DESIRED_REVISION_SK.into(),
    }
}

pub fn desired_workload(t: &TenantId, workload_key: &str) -> Key {
    Key {
        pk: desired_partition(t),
        sk: format!("{DESIRED_WORKLOAD_PREFIX}{workload_key}"),
    }
}

pub fn enrollment_token(t: &TenantId, token_id: &str) -> Key {
    Key {
        pk: format!("{}ENROLL", tenant_prefix(t)),
        sk: token_id.into(),
    }
}

pub fn api_key(t: &TenantId, key_id: &str) -> Key {
    Key {
        pk: format!("{}APIKEY", tenant_prefix(t)),
        sk: key_id.into(),
    }
}

/// An agent's incident markers: in its partition, outside the poll's range.
pub fn incident_markers(t: &TenantId, a: &AgentId) -> Key {
    Key {
        pk: agent_partition(t, a),
        sk: "3#incidents".into(),
    }
}

pub fn run_partition(t: &TenantId, run_id: &str) -> String {
    format!("{}RUN#{run_id}", tenant_prefix(t))
}

/// A run's manifest; its evidence points share the partition (`ev#<seq>`).
pub fn run(t: &TenantId, run_id: &str) -> Key {
    Key {
        pk: run_partition(t, run_id),
        sk: "manifest".into(),
    }
}

pub const EVIDENCE_PREFIX: &str = "ev#";

pub fn evidence(t: &TenantId, run_id: &str, seq: u64) -> Key {
    Key {
        pk: run_partition(t, run_id),
        sk: format!("{EVIDENCE_PREFIX}{seq:020}"),
    }
}

pub fn policy(t: &TenantId) -> Key {
    Key {
        pk: format!("{}POLICY", tenant_prefix(t)),
        sk: "policy".into(),
    }
}

/// The tenant's executed-actions counter for one hour (the policy's rate limit).
pub fn rate(t: &TenantId, hour: u64) -> Key {
    Key {
        pk: format!("{}RATE", tenant_prefix(t)),
        sk: format!("h#{hour}"),
    }
}

pub fn memory_partition(t: &TenantId) -> String {
    format!("{}MEMORY", tenant_prefix(t))
}

/// One run's record under an incident fingerprint, newest last.
pub fn memory(t: &TenantId, fingerprint: &str, at_ms: u64, run_id: &str) -> Key {
    Key {
        pk: memory_partition(t),
        sk: format!("{fingerprint}#{at_ms:015}#{run_id}"),
    }
}

pub fn audit_partition(t: &TenantId) -> String {
    format!("{}AUDIT", tenant_prefix(t))
}

pub fn audit(t: &TenantId, at_ms: u64, run_id: &str, action: &str) -> Key {
    Key {
        pk: audit_partition(t),
        sk: format!("{at_ms:015}#{run_id}#{action}"),
    }
}

/// Index partitions (`gsi1pk`) that list a tenant's items of one kind.
pub mod index {
    use super::{tenant_prefix, TenantId};

    pub fn agents(t: &TenantId) -> String {
        format!("{}AGENTS", tenant_prefix(t))
    }

    pub fn services(t: &TenantId) -> String {
        format!("{}SERVICES", tenant_prefix(t))
    }

    pub fn actions(t: &TenantId) -> String {
        format!("{}ACTIONS", tenant_prefix(t))
    }

    pub fn runs(t: &TenantId) -> String {
        format!("{}RUNS", tenant_prefix(t))
    }

    /// Sort key for actions: creation time first, so listings come newest-last.
    pub fn action_sort(created_at_ms: u64, action_id: &str) -> String {
        format!("{created_at_ms:015}#{action_id}")
    }
}

/// S3 object keys, tenant first.
pub mod object {
    use super::TenantId;

    pub fn payload(t: &TenantId, sha256_hex: &str) -> String {
        format!("T/{}/payload/{sha256_hex}", t.as_str())
    }

    /// An evidence bundle an agent uploaded for an incident action.
    pub fn evidence(t: &TenantId, run_id: &str, action_id: &str) -> String {
        format!("T/{}/evidence/{run_id}/{action_id}.json", t.as_str())
    }

    /// An artifact, by the sha256 of its bytes.
    pub fn artifact(t: &TenantId, sha256_hex: &str) -> String {
        format!("T/{}/artifacts/{sha256_hex}.json", t.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (TenantId, AgentId) {
        (
            TenantId::parse("acme").expect("tenant"),
            AgentId::parse("agt_0123456789abcdef01234567").expect("agent"),
        )
    }

    #[test]
    fn every_key_starts_with_its_tenant() {
        let (t, a) = ids();
        let keys = [
            agent(&t, &a),
            outbox(&t, &a, "act_1"),
            done(&t, &a, "act_1"),
            services(&t, &a),
            desired_revision(&t),
            desired_workload(&t, "host:/usr/bin/python3"),
            enrollment_token(&t, "tok"),
            api_key(&t, "key"),
            incident_markers(&t, &a),
            run(&t, "run_1"),
            evidence(&t, "run_1", 7),
            policy(&t),
            rate(&t, 1),
            memory(&t, "fp_1", 1, "run_1"),
            audit(&t, 1, "run_1", "plan_approved"),
        ];
        for k in keys {
            assert!(k.pk.starts_with("T#acme#"), "{k:?}");
        }
        let sk = incident_markers(&t, &a).sk;
        assert!(
            !(POLL_RANGE_START..=POLL_RANGE_END).contains(&sk.as_str()),
            "markers stay out of the poll's read"
        );
        assert_eq!(object::artifact(&t, "ab"), "T/acme/artifacts/ab.json");
        for pk in [
            index::agents(&t),
            index::services(&t),
            index::actions(&t),
            index::runs(&t),
        ] {
            assert!(pk.starts_with("T#acme#"), "{pk}");
        }
        assert_eq!(object::payload(&t, "ab"), "T/acme/payload/ab");
    }

    #[test]
    fn poll_range_holds_agent_outbox_and_services_but_not_history() {
        let (t, a) = ids();
        let inside = |sk: &str| (POLL_RANGE_START..=POLL_RANGE_END).contains(&sk);
        assert!(inside(&agent(&t, &a).sk));
        assert!(inside(&outbox(&t, &a, "act_ffffffffffffffffffffffff").sk));
        assert!(inside(&services(&t, &a).sk));
        assert!(!inside(&done(&t, &a, "act_0").sk));
        assert_eq!(agent(&t, &a).pk, "T#acme#A#agt_0123456789abcdef01234567");
    }

    #[test]
    fn tenants_cannot_collide_through_keys() {
        // "a" + "#A#..." cannot be forged from another tenant: '#' is not a tenant char.
        let t1 = TenantId::parse("a").expect("tenant");
        let t2 = TenantId::parse("a-a").expect("tenant");
        assert_ne!(index::agents(&t1), index::agents(&t2));
        assert!(!index::agents(&t2).starts_with(&format!("T#{}#", t1.as_str())));
        assert_eq!(index::action_sort(42, "act_x"), "000000000000042#act_x");
    }
}
