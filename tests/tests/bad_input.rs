//! Bad input gets a clear 4xx with a stable code and changes no state; no route
//! shows one tenant another's data. Each case compares a full table scan before and
//! after the request.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tether_core::credential::{issue_agent_credential, AgentClaims, OperatorClaims};
use tether_core::tenant::{AgentId, TenantId};
use tether_e2e::http::Reply;
use tether_e2e::{now_ms, Emulator, Http, Runner, Stack};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

struct Setup {
    stack: Stack,
    runner: Runner,
    key_a: String,
    key_b: String,
    agent_a: (String, String),
    agent_b: (String, String),
    operator_key: aws_lc_rs::signature::Ed25519KeyPair,
    operator_pkcs8: Vec<u8>,
}

fn enroll(http: &Http, token: &str) -> (String, String) {
    let r = http.post(
        "/v1/enroll",
        None,
        &json!({"token": token, "hostname": "h"}),
    );
    assert_eq!(r.status, 201, "{:?}", r.json);
    (
        r.json["agent_id"].as_str().expect("id").to_owned(),
        r.json["credential"].as_str().expect("cred").to_owned(),
    )
}

fn poll_body(agent_id: &str) -> Value {
    json!({"protocol": 1, "agent_id": agent_id, "seq": 1, "services_hash": "", "heartbeat": {}})
}

async fn setup() -> Setup {
    use aws_lc_rs::signature::KeyPair;
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
    let operator_key =
        aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
    let jwks = json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "op-1", "use": "sig",
        "x": B64.encode(operator_key.public_key().as_ref()),
    }]})
    .to_string();
    let emu = Emulator::shared();
    let stack = Stack::create(emu).await;
    let runner = Runner::start(
        emu,
        &stack,
        &[
            ("TETHER_OPERATOR_JWKS", jwks.as_str()),
            ("TETHER_OPERATOR_JWT_ISSUER", "https://idp.example"),
            ("TETHER_OPERATOR_JWT_AUDIENCE", "tether-operators"),
        ],
    );
    let (key_a, token_a) = runner.bootstrap("tenant-a");
    let (key_b, token_b) = runner.bootstrap("tenant-b");
    let http = runner.http();
    let agent_a = enroll(&http, &token_a);
    let agent_b = enroll(&http, &token_b);
    // Both agents report a service, so listings have something to leak.
    for (id, cred) in [&agent_a, &agent_b] {
        let mut body = poll_body(id);
        let svcs = vec![tether_proto::Service {
            workload_key: format!("host:/srv/{id}"),
            pid: 1,
            exe: "/usr/bin/python3".into(),
            runtime: "python".into(),
            llm_providers: vec!["openai".into()],
            instrumented: false,
            python_sdk: false,
            labels: Default::default(),
            llm_content: Default::default(),
        }];
        body["services_hash"] = tether_proto::services_hash(&svcs).into();
        body["services"] = serde_json::to_value(&svcs).expect("svcs");
        assert_eq!(http.post("/v1/poll", Some(cred), &body).status, 200);
    }
    Setup {
        stack,
        runner,
        key_a,
        key_b,
        agent_a,
        agent_b,
        operator_key,
        operator_pkcs8: pkcs8.as_ref().to_vec(),
    }
}

impl Setup {
    /// Sends a request and asserts the reply's status and code, and that the table
    /// did not change.
    async fn refused(
        &self,
        what: &str,
        status: u16,
        code: &str,
        send: impl FnOnce(&Http) -> Reply,
    ) {
        let before = self.stack.table_snapshot().await;
        let r = send(&self.runner.http());
        assert_eq!((r.status, r.code()), (status, code), "{what}: {:?}", r.json);
        assert!(
            r.json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: message"
        );
        assert_eq!(
            self.stack.table_snapshot().await,
            before,
            "{what}: state changed"
        );
    }

    fn operator_jwt(&self, claims: &Value, kid: &str) -> String {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, claims, &EncodingKey::from_ed_der(&self.operator_pkcs8))
            .expect("sign")
    }
}

fn operator_claims(tenant: &str, role: &str, exp_offset_s: i64, aud: &str) -> Value {
    let now = (now_ms() / 1000) as i64;
    serde_json::to_value(OperatorClaims {
        iss: "https://idp.example".into(),
        sub: "alice@example.com".into(),
        tenant: tenant.into(),
        role: role.into(),
        exp: (now + exp_offset_s) as u64,
    })
    .map(|mut v| {
        v["aud"] = aud.into();
        v
    })
    .expect("claims")
}

#[tokio::test]
async fn malformed_oversized_and_unknown_versions_are_refused_without_changes() {
    let s = setup().await;
    let (id_a, cred_a) = s.agent_a.clone();
    let routes: [(&str, Option<&str>); 4] = [
        ("/v1/enroll", None),
        ("/v1/poll", Some(cred_a.as_str())),
        ("/v1/apply", Some(s.key_a.as_str())),
        ("/v1/enrollment-tokens", Some(s.key_a.as_str())),
    ];
    for (path, bearer) in routes {
        s.refused(&format!("{path} malformed"), 400, "malformed_json", |h| {
            h.post_raw(path, bearer, b"{\"protocol\": 1,")
        })
        .await;
        let big = vec![b' '; tether_proto::MAX_REQUEST_BYTES + 1];
        s.refused(&format!("{path} oversized"), 413, "body_too_large", |h| {
            h.post_raw(path, bearer, &big)
        })
        .await;
    }
    s.refused("poll wrong shape", 400, "invalid_request", |h| {
        h.post(
            "/v1/poll",
            Some(&cred_a),
            &json!({"agent_id": 5, "seq": "x"}),
        )
    })
    .await;
    let mut future = poll_body(&id_a);
    future["protocol"] = 2.into();
    s.refused("poll v2", 400, "unsupported_protocol", |h| {
        h.post("/v1/poll", Some(&cred_a), &future)
    })
    .await;
    s.refused("enroll v9", 400, "unsupported_protocol", |h| {
        h.post(
            "/v1/enroll",
            None,
            &json!({"protocol": 9, "token": "x", "hostname": "h"}),
        )
    })
    .await;
    s.refused("apply bad key", 400, "invalid_request", |h| {
        h.post(
            "/v1/apply",
            Some(&s.key_a),
            &json!({"workloads": [{"workload_key": "nonsense", "instrumentation": "instrumented"}]}),
        )
    })
    .await;
    s.refused("apply unknown content mode", 400, "invalid_request", |h| {
        h.post(
            "/v1/apply",
            Some(&s.key_a),
            &json!({"workloads": [{"workload_key": "host:/x", "instrumentation": "instrumented", "llm_content": "everything"}]}),
        )
    })
    .await;
    s.refused("apply duplicate", 400, "invalid_request", |h| {
        let w = json!({"workload_key": "host:/x", "instrumentation": "none"});
        h.post(
            "/v1/apply",
            Some(&s.key_a),
            &json!({"workloads": [w.clone(), w]}),
        )
    })
    .await;
    s.refused("unknown route", 404, "not_found", |h| {
        h.get("/v1/nothing", Some(&s.key_a))
    })
    .await;
    s.refused("wrong method", 405, "method_not_allowed", |h| {
        h.get("/v1/poll", Some(&cred_a))
    })
    .await;
    s.refused("token ttl", 400, "invalid_request", |h| {
        h.post(
            "/v1/enrollment-tokens",
            Some(&s.key_a),
            &json!({"ttl_s": 0}),
        )
    })
    .await;
}

#[tokio::test]
async fn missing_expired_and_forged_agent_credentials_are_refused() {
    let s = setup().await;
    let (id_a, cred_a) = s.agent_a.clone();
    let body = poll_body(&id_a);
    s.refused("no credential", 401, "unauthenticated", |h| {
        h.post("/v1/poll", None, &body)
    })
    .await;
    s.refused("garbage", 401, "invalid_credential", |h| {
        h.post("/v1/poll", Some("not-a-jwt"), &body)
    })
    .await;

    let ring = s.stack.key_ring().await;
    let tenant = TenantId::parse("tenant-a").expect("tenant");
    let agent = AgentId::parse(&id_a).expect("agent");
    let long_ago = now_ms() - 10 * 24 * 3_600_000;
    let (expired, _) =
        issue_agent_credential(&ring, &tenant, &agent, 1, long_ago, 3_600_000).expect("issue");
    s.refused("expired", 401, "credential_expired", |h| {
        h.post("/v1/poll", Some(&expired), &body)
    })
    .await;

    // alg: none, with the real claims.
    let payload = cred_a.split('.').nth(1).expect("payload");
    let none = format!(
        "{}.{payload}.",
        B64.encode(br#"{"alg":"none","typ":"JWT"}"#)
    );
    s.refused("alg none", 401, "invalid_credential", |h| {
        h.post("/v1/poll", Some(&none), &body)
    })
    .await;

    // Signed with a key that is not ours, under our key id.
    let now_s = now_ms() / 1000;
    let claims = AgentClaims {
        iss: "tether".into(),
        aud: "tether-agent".into(),
        sub: id_a.clone(),
        tenant: "tenant-a".into(),
        gen: 1,
        iat: now_s,
        exp: now_s + 3600,
    };
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(ring.active.clone());
    let wrong_key = jsonwebtoken::encode(
        &h,
        &claims,
        &EncodingKey::from_secret(b"an attacker's key of 32 bytes!!!"),
    )
    .expect("sign");
    s.refused("wrong key", 401, "invalid_credential", |h| {
        h.post("/v1/poll", Some(&wrong_key), &body)
    })
    .await;

    // Our key, wrong audience (an operator token replayed as an agent's, say).
    let secret = ring
        .keys
        .iter()
        .find(|k| k.kid == ring.active)
        .map(|k| k.secret_hex.clone())
        .expect("active");
    let secret = (0..secret.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&secret[i..i + 2], 16).expect("hex"))
        .collect::<Vec<u8>>();
    let mut aud = claims.clone();
    aud.aud = "tether-operators".into();
    let wrong_aud =
        jsonwebtoken::encode(&h, &aud, &EncodingKey::from_secret(&secret)).expect("sign");
    s.refused("wrong audience", 401, "invalid_credential", |h| {
        h.post("/v1/poll", Some(&wrong_aud), &body)
    })
    .await;

    // Our key, claims re-pointed at the other tenant's agent: signature breaks.
    let mut other = claims.clone();
    other.tenant = "tenant-b".into();
    other.sub = s.agent_b.0.clone();
    let parts: Vec<&str> = cred_a.split('.').collect();
    let spliced = format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(serde_json::to_vec(&other).expect("json")),
        parts[2]
    );
    let mut body_b = poll_body(&s.agent_b.0);
    s.refused("spliced claims", 401, "invalid_credential", |h| {
        h.post("/v1/poll", Some(&spliced), &body_b)
    })
    .await;

    // Tenant A's valid credential naming tenant B's agent.
    s.refused("other agent id", 403, "agent_mismatch", |h| {
        h.post("/v1/poll", Some(&cred_a), &body_b)
    })
    .await;
    body_b["seq"] = 2.into();
    assert_eq!(
        s.runner
            .http()
            .post("/v1/poll", Some(&s.agent_b.1), &body_b)
            .status,
        200,
        "B unaffected"
    );
}

#[tokio::test]
async fn revoked_agent_credential_stops_working_at_once() {
    let s = setup().await;
    let http = s.runner.http();
    let (id_a, cred_a) = s.agent_a.clone();
    assert_eq!(
        http.post("/v1/poll", Some(&cred_a), &poll_body(&id_a))
            .status,
        200
    );
    // Another tenant's admin cannot revoke it.
    s.refused("cross-tenant revoke", 404, "not_found", |h| {
        h.post(
            &format!("/v1/agents/{id_a}/revoke"),
            Some(&s.key_b),
            &json!({}),
        )
    })
    .await;
    assert_eq!(
        http.post(
            &format!("/v1/agents/{id_a}/revoke"),
            Some(&s.key_a),
            &json!({})
        )
        .status,
        204
    );
    s.refused("revoked", 401, "agent_revoked", |h| {
        h.post("/v1/poll", Some(&cred_a), &poll_body(&id_a))
    })
    .await;
    let listed = http.get(&format!("/v1/agents/{id_a}"), Some(&s.key_a));
    assert_eq!(listed.json["liveness"], "revoked");
}

#[tokio::test]
async fn no_route_shows_one_tenant_another_tenants_data() {
    let s = setup().await;
    let http = s.runner.http();
    let (id_a, _) = &s.agent_a;
    let (id_b, _) = &s.agent_b;
    for path in [
        "/v1/agents",
        "/v1/services",
        "/v1/actions",
        "/v1/enrollment-tokens",
        "/v1/api-keys",
        "/v1/desired",
    ] {
        let a = http.get(path, Some(&s.key_a));
        let b = http.get(path, Some(&s.key_b));
        assert_eq!((a.status, b.status), (200, 200), "{path}");
        let (ta, tb) = (a.json.to_string(), b.json.to_string());
        assert!(
            !ta.contains(id_b.as_str()) && !tb.contains(id_a.as_str()),
            "{path} leaks an agent"
        );
    }
    let agents = http.get("/v1/agents", Some(&s.key_a));
    assert_eq!(agents.json["agents"].as_array().map(Vec::len), Some(1));
    assert_eq!(agents.json["agents"][0]["agent_id"], id_a.as_str());
    let svcs = http.get("/v1/services", Some(&s.key_b));
    assert_eq!(
        svcs.json["services"][0]["workload_key"],
        format!("host:/srv/{id_b}")
    );
    s.refused("read other tenant's agent", 404, "not_found", |h| {
        h.get(&format!("/v1/agents/{id_b}"), Some(&s.key_a))
    })
    .await;
    // Desired state is per tenant.
    let w =
        json!({"workloads": [{"workload_key": "host:/shared", "instrumentation": "instrumented"}]});
    assert_eq!(http.post("/v1/apply", Some(&s.key_a), &w).status, 200);
    assert_eq!(
        http.get("/v1/desired", Some(&s.key_b)).json["workloads"],
        json!([])
    );
    // A key whose tenant part is rewritten does not match any stored key.
    let swapped = s.key_a.replacen("tenant-a", "tenant-b", 1);
    s.refused("tenant swapped in key", 401, "invalid_credential", |h| {
        h.get("/v1/agents", Some(&swapped))
    })
    .await;
}

#[tokio::test]
async fn operator_jwts_are_verified_by_kid_with_pinned_algorithm_and_required_claims() {
    let s = setup().await;
    let http = s.runner.http();
    let good = s.operator_jwt(
        &operator_claims("tenant-a", "operator", 300, "tether-operators"),
        "op-1",
    );
    let r = http.get("/v1/agents", Some(&good));
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(r.json["agents"][0]["agent_id"], s.agent_a.0.as_str());
    let w =
        json!({"workloads": [{"workload_key": "host:/jwt", "instrumentation": "instrumented"}]});
    assert_eq!(http.post("/v1/apply", Some(&good), &w).status, 200);
    // Operators are not admins.
    s.refused("operator makes api key", 403, "forbidden", |h| {
        h.post("/v1/api-keys", Some(&good), &json!({"role": "admin"}))
    })
    .await;

    let expired = s.operator_jwt(
        &operator_claims("tenant-a", "admin", -600, "tether-operators"),
        "op-1",
    );
    s.refused("expired jwt", 401, "credential_expired", |h| {
        h.get("/v1/agents", Some(&expired))
    })
    .await;
    let wrong_aud = s.operator_jwt(
        &operator_claims("tenant-a", "admin", 300, "someone-else"),
        "op-1",
    );
    s.refused("wrong aud", 401, "invalid_credential", |h| {
        h.get("/v1/agents", Some(&wrong_aud))
    })
    .await;
    let unknown_kid = s.operator_jwt(
        &operator_claims("tenant-a", "admin", 300, "tether-operators"),
        "op-9",
    );
    s.refused("unknown kid", 401, "invalid_credential", |h| {
        h.get("/v1/agents", Some(&unknown_kid))
    })
    .await;
    let mut no_tenant = operator_claims("tenant-a", "admin", 300, "tether-operators");
    no_tenant.as_object_mut().expect("obj").remove("tenant");
    let no_tenant = s.operator_jwt(&no_tenant, "op-1");
    s.refused("no tenant claim", 401, "invalid_credential", |h| {
        h.get("/v1/agents", Some(&no_tenant))
    })
    .await;
    let bad_role = s.operator_jwt(
        &operator_claims("tenant-a", "root", 300, "tether-operators"),
        "op-1",
    );
    s.refused("unknown role", 401, "invalid_credential", |h| {
        h.get("/v1/agents", Some(&bad_role))
    })
    .await;
    // Algorithm confusion: HS256 keyed with the public key bytes.
    use aws_lc_rs::signature::KeyPair;
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("op-1".into());
    let confused = jsonwebtoken::encode(
        &h,
        &operator_claims("tenant-a", "admin", 300, "tether-operators"),
        &EncodingKey::from_secret(s.operator_key.public_key().as_ref()),
    )
    .expect("sign");
    s.refused("alg confusion", 401, "invalid_credential", |h| {
        h.get("/v1/agents", Some(&confused))
    })
    .await;
    let payload = good.split('.').nth(1).expect("payload");
    let none = format!(
        "{}.{payload}.",
        B64.encode(br#"{"alg":"none","kid":"op-1"}"#)
    );
    s.refused("alg none", 401, "invalid_credential", |h| {
        h.get("/v1/agents", Some(&none))
    })
    .await;
    // A valid token of tenant B sees only tenant B.
    let b = s.operator_jwt(
        &operator_claims("tenant-b", "viewer", 300, "tether-operators"),
        "op-1",
    );
    let r = http.get("/v1/agents", Some(&b));
    assert_eq!(r.json["agents"][0]["agent_id"], s.agent_b.0.as_str());
    assert_eq!(r.json["agents"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn every_operator_route_refuses_missing_garbage_and_agent_credentials() {
    let s = setup().await;
    let (id_a, cred_a) = s.agent_a.clone();
    let routes: Vec<(&str, String)> = vec![
        ("GET", "/v1/agents".into()),
        ("GET", format!("/v1/agents/{id_a}")),
        ("POST", format!("/v1/agents/{id_a}/revoke")),
        ("GET", "/v1/services".into()),
        ("GET", "/v1/actions".into()),
        ("GET", "/v1/desired".into()),
        ("POST", "/v1/apply".into()),
        ("GET", "/v1/enrollment-tokens".into()),
        ("POST", "/v1/enrollment-tokens".into()),
        ("DELETE", "/v1/enrollment-tokens/0123456789abcdef".into()),
        ("GET", "/v1/api-keys".into()),
        ("POST", "/v1/api-keys".into()),
        ("DELETE", "/v1/api-keys/0123456789abcdef".into()),
    ];
    let send = |h: &Http, method: &str, path: &str, bearer: Option<&str>| match method {
        "GET" => h.get(path, bearer),
        "DELETE" => h.delete(path, bearer),
        _ => h.post(path, bearer, &json!({"workloads": [], "role": "admin"})),
    };
    for (method, path) in &routes {
        s.refused(
            &format!("{method} {path} without credential"),
            401,
            "unauthenticated",
            |h| send(h, method, path, None),
        )
        .await;
        s.refused(
            &format!("{method} {path} garbage"),
            401,
            "invalid_credential",
            |h| {
                send(
                    h,
                    method,
                    path,
                    Some("tet_key.tenant-a.0000000000000000.00"),
                )
            },
        )
        .await;
        // An agent's credential is not an operator's.
        s.refused(
            &format!("{method} {path} agent credential"),
            401,
            "invalid_credential",
            |h| send(h, method, path, Some(&cred_a)),
        )
        .await;
    }
}

#[tokio::test]
async fn credentials_of_another_tenant_cannot_be_listed_or_revoked() {
    let s = setup().await;
    let http = s.runner.http();
    let made = http.post("/v1/api-keys", Some(&s.key_b), &json!({"role": "viewer"}));
    assert_eq!(made.status, 201);
    let b_key_id = made.json["id"].as_str().expect("id").to_owned();
    let b_key = made.json["key"].as_str().expect("key").to_owned();
    let tok = http.post(
        "/v1/enrollment-tokens",
        Some(&s.key_b),
        &json!({"max_uses": 2}),
    );
    let b_token_id = tok.json["id"].as_str().expect("id").to_owned();
    let b_token = tok.json["token"].as_str().expect("token").to_owned();
    s.refused("revoke other tenant's api key", 404, "not_found", |h| {
        h.delete(&format!("/v1/api-keys/{b_key_id}"), Some(&s.key_a))
    })
    .await;
    s.refused("revoke other tenant's token", 404, "not_found", |h| {
        h.delete(
            &format!("/v1/enrollment-tokens/{b_token_id}"),
            Some(&s.key_a),
        )
    })
    .await;
    let listed = http.get("/v1/api-keys", Some(&s.key_a));
    assert!(!listed.json.to_string().contains(&b_key_id));
    let listed = http.get("/v1/enrollment-tokens", Some(&s.key_a));
    assert!(!listed.json.to_string().contains(&b_token_id));
    // Both still work for tenant B.
    assert_eq!(http.get("/v1/agents", Some(&b_key)).status, 200);
    let r = http.post(
        "/v1/enroll",
        None,
        &json!({"token": b_token, "hostname": "b2"}),
    );
    assert_eq!(r.status, 201);
}
