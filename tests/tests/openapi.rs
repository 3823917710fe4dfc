//! The OpenAPI document (`functions/api/openapi/openapi.json`, served at
//! `/v1/openapi.json`) against the code: the documented routes are exactly the
//! router's, and schemathesis, fuzzing the running control plane from the
//! document, finds no server error, no undocumented status and no response that
//! breaks its schema.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use tether_e2e::{Emulator, Runner, Stack};

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn documented() -> BTreeSet<(String, String)> {
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("functions/api/openapi/openapi.json"))
            .expect("openapi.json"),
    )
    .expect("json");
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

/// (METHOD, path) pairs declared by `.route("path", get(..).post(..))` calls.
fn routed() -> BTreeSet<(String, String)> {
    let src = ["routes.rs", "incidents.rs", "status.rs"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(repo().join("functions/api/src").join(f))
                .unwrap_or_else(|e| panic!("{f}: {e}"))
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    for chunk in src.split(".route(").skip(1) {
        let chunk = chunk.split(".fallback(").next().unwrap_or(chunk);
        let path = chunk.split('"').nth(1).expect("route path");
        for method in ["get", "post", "put", "patch", "delete"] {
            let hit = chunk.match_indices(&format!("{method}(")).any(|(i, _)| {
                i == 0
                    || !chunk.as_bytes()[i - 1].is_ascii_alphanumeric()
                        && chunk.as_bytes()[i - 1] != b'_'
            });
            if hit {
                out.insert((method.to_uppercase(), path.to_owned()));
            }
        }
    }
    out
}

#[test]
fn documented_routes_are_exactly_the_routers() {
    let (doc, code) = (documented(), routed());
    assert!(code.len() >= 15, "route parsing found too little: {code:?}");
    let undocumented: Vec<_> = code.difference(&doc).collect();
    let unrouted: Vec<_> = doc.difference(&code).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from openapi.json: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "documented but not routed: {unrouted:?}"
    );
}

fn schemathesis() -> std::path::PathBuf {
    let p = repo().join(".tether/venv/bin/st");
    assert!(
        p.exists(),
        "{} is missing: run bin/test (it installs tests/requirements.txt)",
        p.display()
    );
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_or_schema_drift() {
    let emu = Emulator::shared();
    let stack = Stack::create(emu).await;
    let runner = Runner::start(emu, &stack, &[]);
    let (key, _) = runner.bootstrap("fuzz");
    // The served document is the file.
    let served = runner.http().get("/v1/openapi.json", None);
    assert_eq!(served.status, 200);
    assert_eq!(served.json["openapi"], "3.1.0");
    let out = Command::new(schemathesis())
        .args([
            "run",
            &format!("{}/v1/openapi.json", runner.url),
            "--url",
            &runner.url,
            "--header",
            &format!("Authorization: Bearer {key}"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "30",
            "--seed",
            "7",
            "--workers",
            "1",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("passed"), "{stdout}");
}
