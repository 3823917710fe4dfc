//! The artifact contract: what each role of the incident chain leaves behind.
//!
//! Invariants:
//! - An artifact is content-addressed: its id is `art_` + the sha256 of its canonical
//!   JSON (serde_json with sorted maps, as produced by [`Artifact::to_bytes`]). Its
//!   storage key is built from the tenant and that digest, and the digest is
//!   checked on every read ([`Artifact::from_bytes`]).
//! - An artifact is a pure function of its inputs: timestamps come from the inputs
//!   (the window, the approval, the agent's result), never from the clock of the
//!   role that computes it. A redelivered message therefore produces the same
//!   bytes, the same id and the same key: writing it again is a no-op.
//! - Raw telemetry never goes in: signals are named values, evidence is a reference
//!   plus at most [`MAX_EXCERPTS`] short excerpts of at most [`MAX_EXCERPT_LEN`] bytes.
//! - `schema_version` is bumped on any incompatible change; readers reject a
//!   version they do not know rather than guess.

use sha2::{Digest, Sha256};

pub use tether_proto::incident::{
    Anomaly, Artifact, ArtifactKind, Body, ChainEntry, Decision, EvidenceRef, Hypothesis,
    PriorAttempt, Proposal, RollbackStep, Safety, Signal, Stage, StepResult, Unavailable, Verdict,
    MAX_EXCERPTS, MAX_EXCERPT_LEN, SCHEMA_VERSION,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact bytes do not match their address (want {want}, got {got})")]
    Digest { want: String, got: String },
    #[error("artifact does not parse: {0}")]
    Malformed(String),
    #[error("artifact schema version {0} is not supported (this build reads {SCHEMA_VERSION})")]
    Version(u32),
    #[error("artifact id {0:?} is not of the form art_<64 hex>")]
    BadId(String),
}

/// Content addressing of artifacts (the schema itself is in `tether-proto`).
pub trait Addressed: Sized {
    /// Canonical bytes: struct fields in declaration order, maps sorted.
    fn to_bytes(&self) -> Vec<u8>;
    /// The content address of `bytes`.
    fn id_of(bytes: &[u8]) -> String {
        format!("art_{}", hex::encode(Sha256::digest(bytes)))
    }
    fn id(&self) -> String {
        Self::id_of(&self.to_bytes())
    }
    /// The digest part of an id, checked.
    fn digest_of(id: &str) -> Result<&str, ArtifactError> {
        id.strip_prefix("art_")
            .filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| ArtifactError::BadId(id.to_owned()))
    }
    /// Parses bytes read from storage under `id`, checking the digest first.
    fn from_bytes(id: &str, bytes: &[u8]) -> Result<Self, ArtifactError>;
}

impl Addressed for Artifact {
    fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain data with sorted maps cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn from_bytes(id: &str, bytes: &[u8]) -> Result<Self, ArtifactError> {
        Self::digest_of(id)?;
        let got = Self::id_of(bytes);
        if got != id {
            return Err(ArtifactError::Digest {
                want: id.to_owned(),
                got,
            });
        }
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| ArtifactError::Malformed(e.to_string()))?;
        let version = v["schema_version"].as_u64().unwrap_or(0) as u32;
        if version != SCHEMA_VERSION {
            return Err(ArtifactError::Version(version));
        }
        serde_json::from_value(v).map_err(|e| ArtifactError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_name_the_functions_and_queues_infra_declares() {
        let names: Vec<(&str, &str)> = Stage::ALL
            .into_iter()
            .map(|s| (s.function(), s.queue()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("observer", "observations"),
                ("analyzer", "analyzer"),
                ("planner", "planner"),
                ("policy-gate", "policy-gate"),
                ("executor", "executor"),
                ("verifier", "verifier"),
                ("memory", "memory"),
            ]
        );
    }

    fn sample() -> Artifact {
        Artifact {
            schema_version: SCHEMA_VERSION,
            producer: Stage::Observer,
            consumer: Some(Stage::Analyzer),
            tenant: "acme".into(),
            run_id: "run_1".into(),
            incident_id: "inc_1".into(),
            correlation_id: "cor_1".into(),
            created_at_ms: 1,
            status: "open".into(),
            inputs: vec![],
            evidence: vec![EvidenceRef::new("window:a:1", ["x".repeat(500)])],
            replay: false,
            body: Body::AnomalyFinding {
                agent_id: "a".into(),
                anomalies: vec![],
            },
        }
    }

    #[test]
    fn the_address_is_the_content_and_is_checked_on_read() {
        let a = sample();
        let bytes = a.to_bytes();
        let id = a.id();
        assert_eq!(id, sample().id(), "same content, same id");
        assert_eq!(Artifact::from_bytes(&id, &bytes), Ok(a.clone()));
        let mut tampered = bytes.clone();
        let last = tampered.len() - 2;
        tampered[last] = b' ';
        assert!(matches!(
            Artifact::from_bytes(&id, &tampered),
            Err(ArtifactError::Digest { .. })
        ));
        assert!(matches!(
            Artifact::from_bytes("art_../x", &bytes),
            Err(ArtifactError::BadId(_))
        ));
        let mut b = a;
        b.created_at_ms = 2;
        assert_ne!(b.id(), id, "any change moves the address");
    }

    #[test]
    fn excerpts_are_bounded_and_unknown_versions_rejected() {
        let a = sample();
        assert_eq!(a.evidence[0].excerpts[0].len(), MAX_EXCERPT_LEN);
        let many = EvidenceRef::new("x", (0..10).map(|i| i.to_string()));
        assert_eq!(many.excerpts.len(), MAX_EXCERPTS);
        let mut v: serde_json::Value = serde_json::from_slice(&a.to_bytes()).expect("json");
        v["schema_version"] = 2.into();
        let bytes = serde_json::to_vec(&v).expect("json");
        let id = Artifact::id_of(&bytes);
        assert_eq!(
            Artifact::from_bytes(&id, &bytes),
            Err(ArtifactError::Version(2))
        );
    }
}
