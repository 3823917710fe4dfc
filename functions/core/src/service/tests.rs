//! `ControlPlane` over the in-memory ports (`crate::fake`): enrollment, the poll's
//! call budget and its races, telemetry acknowledgement, revocation, key rotation,
//! operator credentials and desired state. The e2e suites run the same code over
//! DynamoDB, SQS and Secrets Manager.

use super::*;
use crate::fake::{ManualClock, MemFleet, MemKeys, MemSink};
use crate::model::LiveState;
use crate::port::PollCommit;
use tether_proto::operator::{DesiredWorkload, Instrumentation, PythonSdk};
use tether_proto::{Action, ActionResult, Service, TelemetryWindow};

const T0: u64 = 1_800_000_000_000;

type Plane = ControlPlane<MemFleet, MemKeys, MemSink, ManualClock>;

struct Rig {
    cp: Plane,
    fleet: MemFleet,
    keys: MemKeys,
    sink: MemSink,
    clock: ManualClock,
    t: TenantId,
}

impl Rig {
    fn new() -> Self {
        let (fleet, keys, sink, clock) = (
            MemFleet::default(),
            MemKeys::fresh(T0),
            MemSink::default(),
            ManualClock::at(T0),
        );
        let cp = ControlPlane::new(
            fleet.clone(),
            keys.clone(),
            sink.clone(),
            clock.clone(),
            Settings::default(),
            None,
        );
        Self {
            cp,
            fleet,
            keys,
            sink,
            clock,
            t: TenantId::parse("acme").expect("tenant"),
        }
    }

    fn admin(&self) -> Principal {
        Principal {
            tenant: self.t.clone(),
            role: Role::Admin,
            subject: "key:root".into(),
        }
    }

    async fn token(&self, max_uses: u32) -> String {
        self.cp
            .issue_enrollment_token(
                &self.t,
                CreateEnrollmentToken {
                    ttl_s: Some(3600),
                    max_uses: Some(max_uses),
                    description: "test".into(),
                },
            )
            .await
            .expect("token")
            .token
            .expect("shown once")
    }

    fn enroll_req(token: &str) -> EnrollRequest {
        EnrollRequest {
            protocol: PROTOCOL_VERSION,
            token: token.into(),
            hostname: "web-1".into(),
            agent_version: "1.0.0".into(),
            capabilities: vec!["proc".into()],
            labels: Default::default(),
        }
    }

    /// Enrolls one agent; returns (agent id, credential).
    async fn enrolled(&self) -> (String, String) {
        let token = self.token(1).await;
        let r = self
            .cp
            .enroll(Self::enroll_req(&token))
            .await
            .expect("enroll");
        (r.agent_id, r.credential)
    }

    fn agent(&self, id: &str) -> AgentRecord {
        self.fleet
            .agent(&self.t, &AgentId::parse(id).expect("id"))
            .expect("stored")
    }
}

fn poll(agent: &str, seq: u64) -> PollRequest {
    PollRequest {
        protocol: PROTOCOL_VERSION,
        agent_id: agent.into(),
        seq,
        capabilities: vec!["proc".into()],
        ..Default::default()
    }
}

fn window(seq: u64) -> TelemetryWindow {
    TelemetryWindow {
        seq,
        start_ms: T0,
        end_ms: T0 + 30_000,
        metrics: [("cpu.busy_pct".to_owned(), 12.0)].into(),
        events: vec![],
    }
}

#[tokio::test]
async fn an_enrolled_agents_steady_poll_is_one_read_and_no_write() {
    let rig = Rig::new();
    let (id, cred) = rig.enrolled().await;
    // The first poll records the agent's state; then the steady state.
    rig.cp.poll(&cred, poll(&id, 1)).await.expect("first poll");
    rig.fleet.take_calls();
    for seq in 2..5 {
        rig.clock.advance(5_000);
        let r = rig
            .cp
            .poll(&cred, poll(&id, seq))
            .await
            .expect("steady poll");
        assert!(r.actions.is_empty());
        assert_eq!(r.next_poll_after_ms, 30_000);
    }
    assert_eq!(
        rig.fleet.take_calls(),
        ["load_view"; 3],
        "1 read, 0 writes per poll"
    );
    // The tenant's desired state is a per-instance cache: one read per TTL,
    // not per poll.
    rig.clock.advance(Settings::default().desired_cache_ttl_ms);
    rig.cp.poll(&cred, poll(&id, 5)).await.expect("poll");
    assert_eq!(rig.fleet.take_calls(), ["load_desired", "load_view"]);
    assert_eq!(rig.sink.calls(), 0, "no queue call without telemetry");
    assert_eq!(rig.keys.loads(), 1, "the key ring is cached");
}

#[tokio::test]
async fn a_token_enrolls_only_within_its_uses_life_and_secret() {
    let rig = Rig::new();
    let token = rig.token(2).await;
    rig.cp.enroll(Rig::enroll_req(&token)).await.expect("first");
    rig.cp
        .enroll(Rig::enroll_req(&token))
        .await
        .expect("second");
    let used_up = rig.cp.enroll(Rig::enroll_req(&token)).await;
    assert!(matches!(used_up, Err(ControlError::InvalidEnrollmentToken)));

    // A forged secret for a real token id, another tenant's copy, and garbage.
    let forged = format!("{}x", &token[..token.len() - 1]);
    let other_tenant = token.replacen(".acme.", ".globex.", 1);
    for bad in [forged.as_str(), other_tenant.as_str(), "tet_enr.nope", ""] {
        let r = rig.cp.enroll(Rig::enroll_req(bad)).await;
        assert!(
            matches!(r, Err(ControlError::InvalidEnrollmentToken)),
            "{bad}: {r:?}"
        );
    }
    // An expired token.
    let late = rig.token(5).await;
    rig.clock.advance(3_600_001);
    let r = rig.cp.enroll(Rig::enroll_req(&late)).await;
    assert!(matches!(r, Err(ControlError::InvalidEnrollmentToken)));
    // A bad hostname is refused before the token is spent.
    let fresh = rig.token(1).await;
    let mut req = Rig::enroll_req(&fresh);
    req.hostname = String::new();
    assert!(matches!(
        rig.cp.enroll(req).await,
        Err(ControlError::Invalid(_))
    ));
    rig.cp
        .enroll(Rig::enroll_req(&fresh))
        .await
        .expect("still usable");
    let agents = rig.fleet.list_agents(&rig.t).await.expect("list");
    assert_eq!(agents.len(), 3, "exactly the successful enrollments");
}

#[tokio::test]
async fn telemetry_is_acknowledged_only_once_the_queue_took_it() {
    let rig = Rig::new();
    let (id, cred) = rig.enrolled().await;
    let mut req = poll(&id, 1);
    req.telemetry = vec![window(7), window(8)];
    rig.sink.set_down(true);
    let r = rig.cp.poll(&cred, req.clone()).await.expect("poll");
    assert!(r.ack.telemetry.is_empty(), "nothing acknowledged is lost");
    rig.sink.set_down(false);
    let r = rig.cp.poll(&cred, req).await.expect("poll");
    assert_eq!(r.ack.telemetry, [7, 8]);
    assert_eq!(rig.sink.seqs(), [7, 8]);
}

#[tokio::test]
async fn a_lost_race_is_replanned_from_a_fresh_read_and_a_storage_failure_surfaces() {
    let rig = Rig::new();
    let (id, cred) = rig.enrolled().await;
    rig.fleet.take_calls();
    rig.fleet.fail_next("commit_poll", StoreError::Conflict);
    let mut req = poll(&id, 1);
    req.capabilities = vec!["proc".into(), "systemd".into()];
    rig.cp.poll(&cred, req.clone()).await.expect("poll");
    assert_eq!(
        rig.fleet.take_calls(),
        [
            "load_desired",
            "load_view",
            "commit_poll",
            "load_view",
            "commit_poll"
        ]
    );
    assert_eq!(rig.agent(&id).capabilities, ["proc", "systemd"]);

    rig.fleet
        .fail_next("load_view", StoreError::Unavailable("down".into()));
    let r = rig.cp.poll(&cred, poll(&id, 2)).await;
    assert!(matches!(r, Err(ControlError::Unavailable(_))), "{r:?}");
}

#[tokio::test]
async fn forged_mismatched_and_revoked_credentials_are_refused() {
    let rig = Rig::new();
    let (id, cred) = rig.enrolled().await;
    let (other, _) = rig.enrolled().await;
    let r = rig.cp.poll(&cred, poll(&other, 1)).await;
    assert!(matches!(r, Err(ControlError::AgentMismatch)), "{r:?}");
    let mut forged = cred.clone();
    forged.pop();
    forged.push(if cred.ends_with('A') { 'B' } else { 'A' });
    let r = rig.cp.poll(&forged, poll(&id, 1)).await;
    assert!(matches!(r, Err(ControlError::InvalidCredential)), "{r:?}");

    rig.cp
        .revoke_agent(&rig.admin(), &id)
        .await
        .expect("revoke");
    let r = rig.cp.poll(&cred, poll(&id, 2)).await;
    assert!(matches!(r, Err(ControlError::AgentRevoked)), "{r:?}");
    let viewer = Principal {
        role: Role::Viewer,
        ..rig.admin()
    };
    assert!(matches!(
        rig.cp.revoke_agent(&viewer, &other).await,
        Err(ControlError::Forbidden(_))
    ));
}

#[tokio::test]
async fn credentials_signed_before_a_key_rotation_still_verify_and_new_keys_load_once() {
    let rig = Rig::new();
    let (id, cred) = rig.enrolled().await;
    rig.keys.rotate(T0 + 1, 2);
    // Past the floor, an enrollment under the new key makes the cached ring
    // reload once (the credential names a key id it does not hold).
    rig.clock.advance(20_000);
    let (new_id, new_cred) = {
        // The cached ring still signs with the old key until it expires.
        rig.clock.advance(Settings::default().key_cache_ttl_ms);
        rig.enrolled().await
    };
    assert_eq!(rig.keys.loads(), 2);
    rig.cp.poll(&cred, poll(&id, 1)).await.expect("old key");
    rig.cp
        .poll(&new_cred, poll(&new_id, 1))
        .await
        .expect("new key");
    assert_eq!(rig.keys.loads(), 2, "no reload for known keys");
}

#[tokio::test]
async fn an_incident_action_finishing_tells_the_executor_once() {
    let rig = Rig::new();
    let (id, cred) = rig.enrolled().await;
    let a = AgentId::parse(&id).expect("id");
    let run = "run_0123";
    let action = Action {
        id: "act_1".into(),
        kind: tether_proto::ActionKind::new("collect_evidence"),
        target: "host".into(),
        payload: serde_json::json!({ "what": "top_cpu" }),
        idempotency_key: format!("inc:{run}:1"),
        not_before_ms: 0,
        expires_at_ms: T0 + 600_000,
        mode: tether_proto::ActionMode::Execute,
        requires_capability: String::new(),
    };
    let mut agent = rig.agent(&id);
    let item = crate::model::OutboxItem {
        action: action.clone(),
        state: LiveState::Queued,
        attempt: 1,
        pid: 0,
        created_at_ms: T0,
        updated_at_ms: T0,
        last_result: None,
    };
    agent.version += 1;
    rig.fleet.put_agent(&rig.t, agent.clone());
    rig.fleet
        .commit_poll(
            &rig.t,
            &PollCommit {
                agent: AgentRecord {
                    version: agent.version,
                    ..agent.clone()
                },
                expected_version: agent.version,
                services: None,
                enqueue: vec![item],
                transitions: vec![],
            },
        )
        .await
        .expect("queue");
    let r = rig.cp.poll(&cred, poll(&id, 1)).await.expect("poll");
    assert_eq!(r.actions.len(), 1, "handed out");
    let mut req = poll(&id, 2);
    let result: ActionResult = serde_json::from_value(serde_json::json!({
        "action_id": "act_1",
        "idempotency_key": action.idempotency_key,
        "phase": "final",
        "status": "succeeded",
        "message": "collected",
    }))
    .expect("result");
    req.results = vec![result];
    rig.cp.poll(&cred, req.clone()).await.expect("result");
    assert!(rig.fleet.live_actions(&rig.t, &a).is_empty());
    assert_eq!(rig.sink.finished_runs(), [run]);
    // A replay of the same result changes nothing and tells no one again.
    rig.cp.poll(&cred, req).await.expect("replay");
    assert_eq!(rig.sink.finished_runs(), [run]);
}

#[tokio::test]
async fn desired_state_needs_an_operator_is_idempotent_and_validated() {
    let rig = Rig::new();
    let w = DesiredWorkload {
        workload_key: "systemd:chat.service".into(),
        instrumentation: Instrumentation::Instrumented,
        python_sdk: PythonSdk::Disabled,
        llm_content: Default::default(),
    };
    let viewer = Principal {
        role: Role::Viewer,
        ..rig.admin()
    };
    let req = ApplyRequest {
        workloads: vec![w.clone()],
    };
    assert!(matches!(
        rig.cp.apply(&viewer, req.clone()).await,
        Err(ControlError::Forbidden(_))
    ));
    let first = rig
        .cp
        .apply(&rig.admin(), req.clone())
        .await
        .expect("apply");
    assert_eq!((first.revision, first.changed.len()), (1, 1));
    let again = rig.cp.apply(&rig.admin(), req).await.expect("apply");
    assert_eq!((again.revision, again.unchanged), (1, 1), "no new revision");
    let twice = ApplyRequest {
        workloads: vec![w.clone(), w],
    };
    assert!(matches!(
        rig.cp.apply(&rig.admin(), twice).await,
        Err(ControlError::Invalid(_))
    ));
    let other = Principal {
        tenant: TenantId::parse("globex").expect("tenant"),
        ..rig.admin()
    };
    assert!(rig
        .cp
        .desired(&other)
        .await
        .expect("desired")
        .workloads
        .is_empty());
}

#[tokio::test]
async fn api_keys_authenticate_by_role_and_stop_when_revoked() {
    let rig = Rig::new();
    let info = rig
        .cp
        .create_api_key(
            &rig.admin(),
            CreateApiKey {
                role: "operator".into(),
                description: "ci".into(),
            },
        )
        .await
        .expect("key");
    let key = info.key.expect("shown once");
    let p = rig.cp.authenticate_operator(&key).await.expect("auth");
    assert_eq!((p.role, p.tenant.as_str()), (Role::Operator, "acme"));
    let mut forged = key.clone();
    let last = forged.pop();
    forged.push(if last == Some('0') { '1' } else { '0' });
    assert!(matches!(
        rig.cp.authenticate_operator(&forged).await,
        Err(ControlError::InvalidCredential)
    ));
    assert!(matches!(
        rig.cp.authenticate_operator("Bearer nonsense").await,
        Err(ControlError::Unauthenticated(_))
    ));
    assert!(matches!(
        rig.cp
            .create_api_key(
                &p,
                CreateApiKey {
                    role: "admin".into(),
                    description: String::new()
                }
            )
            .await,
        Err(ControlError::Forbidden(_))
    ));
    rig.cp
        .revoke_api_key(&rig.admin(), &info.id)
        .await
        .expect("revoke");
    assert!(matches!(
        rig.cp.authenticate_operator(&key).await,
        Err(ControlError::InvalidCredential)
    ));
    let listed = rig.cp.list_api_keys(&rig.admin()).await.expect("list");
    assert!(
        listed.keys.iter().all(|k| k.key.is_none()),
        "never shown again"
    );
}

#[tokio::test]
async fn services_reported_once_are_listed_for_the_tenant_only() {
    let rig = Rig::new();
    let (id, cred) = rig.enrolled().await;
    let svc: Service = serde_json::from_value(serde_json::json!({
        "workload_key": "systemd:chat.service",
        "pid": 42,
    }))
    .expect("service");
    let mut req = poll(&id, 1);
    req.services = Some(vec![svc.clone()]);
    req.services_hash = tether_proto::services_hash(&[svc]);
    rig.cp.poll(&cred, req).await.expect("poll");
    let mine = rig.cp.list_services(&rig.admin()).await.expect("list");
    assert_eq!(mine.services.len(), 1);
    let other = Principal {
        tenant: TenantId::parse("globex").expect("tenant"),
        ..rig.admin()
    };
    assert!(rig
        .cp
        .list_services(&other)
        .await
        .expect("list")
        .services
        .is_empty());
}

#[tokio::test]
async fn agents_show_why_their_applied_revision_lags_and_the_steady_poll_still_writes_nothing() {
    let rig = Rig::new();
    let (id, cred) = rig.enrolled().await;
    let w = DesiredWorkload {
        workload_key: "systemd:chat.service".into(),
        instrumentation: Instrumentation::Instrumented,
        python_sdk: PythonSdk::Disabled,
        llm_content: Default::default(),
    };
    rig.cp
        .apply(&rig.admin(), ApplyRequest { workloads: vec![w] })
        .await
        .expect("apply");
    // Not polled since: it lags because it has not been reconciled.
    let listed = rig.cp.list_agents(&rig.admin()).await.expect("list");
    let a = &listed.agents[0];
    assert_eq!((a.applied_revision, a.desired_revision), (0, 1));
    assert!(a.drift[0].reason.starts_with("not reconciled yet"), "{a:?}");

    // The agent reports the workload, and kinds without `instrument`; it claims
    // revision 1 applied.
    let svc: Service = serde_json::from_value(serde_json::json!({
        "workload_key": "systemd:chat.service",
        "pid": 42,
    }))
    .expect("service");
    let mut req = poll(&id, 1);
    req.services = Some(vec![svc.clone()]);
    req.services_hash = tether_proto::services_hash(&[svc]);
    req.action_kinds = Some(vec!["collect_evidence".into(), "signal_process".into()]);
    req.applied_revision = 1;
    let r = rig.cp.poll(&cred, req.clone()).await.expect("poll");
    assert!(r.actions.is_empty(), "held, not queued");
    let stored = rig.agent(&id);
    assert_eq!(stored.action_kinds, req.action_kinds);
    assert!(stored.attempts.is_empty(), "no retry budget spent");
    let a = rig.cp.get_agent(&rig.admin(), &id).await.expect("agent");
    assert_eq!((a.applied_revision, a.desired_revision), (0, 1));
    assert_eq!(a.drift.len(), 1, "{a:?}");
    assert_eq!(
        (a.drift[0].workload_key.as_str(), a.drift[0].kind.as_str()),
        ("systemd:chat.service", "instrument")
    );
    assert!(a.drift[0].reason.contains("cannot run instrument"));
    assert_eq!(a.action_kinds, req.action_kinds);

    // Steady: one read and no write, even while lagging.
    rig.fleet.take_calls();
    for seq in 2..4 {
        rig.clock.advance(5_000);
        let mut again = req.clone();
        again.seq = seq;
        again.services = None;
        rig.cp.poll(&cred, again).await.expect("steady poll");
    }
    assert_eq!(rig.fleet.take_calls(), ["load_view"; 2]);
}
