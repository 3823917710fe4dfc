//! Checks the dependency rules written in `docs/architecture.md` against the
//! resolved dependency graph (`cargo metadata`), normal dependencies only,
//! transitively.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// (crate, forbidden patterns) rows of the "Dependency rules" table.
fn rules() -> Vec<(String, Vec<String>)> {
    let doc = std::fs::read_to_string(workspace_root().join("docs/architecture.md"))
        .expect("architecture.md");
    let section = doc
        .split("## Dependency rules")
        .nth(1)
        .expect("a Dependency rules section");
    section
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| crate") && !l.starts_with("|---"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            (
                cells[0].to_owned(),
                cells[1].split(',').map(|p| p.trim().to_owned()).collect(),
            )
        })
        .collect()
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

/// Every crate reachable from `root` through normal (non-dev, non-build) edges.
fn normal_closure(meta: &Value, root: &str) -> BTreeSet<String> {
    let names: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            (
                p["id"].as_str().expect("id"),
                p["name"].as_str().expect("name"),
            )
        })
        .collect();
    let nodes: BTreeMap<&str, Vec<&str>> = meta["resolve"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            let deps = n["deps"]
                .as_array()
                .expect("deps")
                .iter()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .is_some_and(|ks| ks.iter().any(|k| k["kind"].is_null()))
                })
                .map(|d| d["pkg"].as_str().expect("pkg"))
                .collect();
            (n["id"].as_str().expect("id"), deps)
        })
        .collect();
    let start = names
        .iter()
        .find(|(_, n)| **n == root)
        .map(|(id, _)| *id)
        .unwrap_or_else(|| panic!("{root} is not in the workspace"));
    let mut seen = BTreeSet::new();
    let mut stack = vec![start];
    while let Some(id) = stack.pop() {
        for dep in nodes.get(id).into_iter().flatten() {
            if seen.insert(*dep) {
                stack.push(dep);
            }
        }
    }
    seen.into_iter().map(|id| names[id].to_owned()).collect()
}

#[test]
fn crates_respect_the_documented_dependency_rules() {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("metadata json");
    let rules = rules();
    assert!(
        rules.len() >= 3,
        "the rules table was not found or is short: {rules:?}"
    );
    let mut broken = Vec::new();
    for (krate, forbidden) in &rules {
        let closure = normal_closure(&meta, krate);
        assert!(
            closure.contains("serde"),
            "{krate}: the graph walk found nothing"
        );
        for dep in &closure {
            if forbidden.iter().any(|p| matches(p, dep)) {
                broken.push(format!("{krate} depends on {dep}"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "dependency rules broken:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_rule_matcher_is_not_vacuous() {
    assert!(matches("aws-sdk-*", "aws-sdk-dynamodb"));
    assert!(!matches("aws-sdk-*", "aws-lc-rs"));
    assert!(matches("tokio", "tokio") && !matches("tokio", "tokio-util"));
    // The api crate does reach the SDK: the walk sees through the graph.
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata");
    let meta: Value = serde_json::from_slice(&out.stdout).expect("json");
    let api = normal_closure(&meta, "tether-api");
    assert!(
        api.contains("aws-sdk-dynamodb") && api.contains("axum") && api.contains("tether-core")
    );
}
