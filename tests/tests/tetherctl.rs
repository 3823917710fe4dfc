//! `tetherctl`, the real binary, against the real control plane on the emulator:
//! login, reads in table and JSON form, apply with its diff and idempotence,
//! credentials, and the exit codes scripts rely on.

use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use tether_e2e::{unique_name, workspace_bin, Emulator, Runner, Stack};

struct Ctl {
    home: std::path::PathBuf,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ctl {
    fn new() -> Self {
        let home = std::env::temp_dir().join(unique_name("ctl-home"));
        std::fs::create_dir_all(&home).expect("home");
        Self { home }
    }

    fn run(&self, args: &[&str]) -> Out {
        let out = Command::new(workspace_bin("tetherctl"))
            .args(args)
            .env_clear()
            .env("HOME", &self.home)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .expect("run tetherctl");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(o.code, 0, "tetherctl {args:?}: {}{}", o.stdout, o.stderr);
        o.stdout
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).expect("json output")
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

#[tokio::test]
async fn tetherctl_drives_the_control_plane_with_stable_exit_codes() {
    let emu = Emulator::shared();
    let stack = Stack::create(emu).await;
    let runner = Runner::start(emu, &stack, &[]);
    let (key, token) = runner.bootstrap("ops");
    let http = runner.http();
    let enrolled = http.post(
        "/v1/enroll",
        None,
        &json!({"token": token, "hostname": "gpu-7"}),
    );
    let agent_id = enrolled.json["agent_id"]
        .as_str()
        .expect("agent")
        .to_owned();

    let ctl = Ctl::new();
    // No URL yet: a usage error.
    let none = ctl.run(&["agents"]);
    assert_eq!(none.code, 2, "{}", none.stderr);
    assert!(none.stderr.contains("tetherctl login"), "{}", none.stderr);
    // A bad credential does not log in.
    let bad = ctl.run(&[
        "login",
        "--url",
        &runner.url,
        "--token",
        "tet_key.ops.0000000000000000.00",
    ]);
    assert_eq!(bad.code, 3, "{}", bad.stderr);
    assert!(bad.stderr.contains("invalid_credential"), "{}", bad.stderr);

    let login = ctl.ok(&["login", "--url", &runner.url, "--token", &key]);
    assert!(login.contains("1 agents visible"), "{login}");
    // The control plane's own health, as a table and as JSON.
    let status = ctl.ok(&["status"]);
    assert!(status.starts_with("status: ok"), "{status}");
    assert!(
        status.contains("dynamodb") && status.contains("observations"),
        "{status}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["-o", "json", "status"])).expect("status json");
    assert_eq!(
        status["dependencies"].as_array().map(Vec::len),
        Some(4),
        "dynamodb, sqs, secrets manager and cloudwatch"
    );
    let stored = ctl.home.join(".config/tether/tetherctl.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&stored)
            .expect("stored")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    let table = ctl.ok(&["agents"]);
    assert!(table.starts_with("AGENT"), "{table}");
    assert!(
        table.contains(&agent_id) && table.contains("gpu-7") && table.contains("active"),
        "{table}"
    );
    let agents = ctl.json(&["agents", "list"]);
    assert_eq!(agents["agents"][0]["agent_id"], agent_id.as_str());
    let one = ctl.json(&["agents", "get", &agent_id]);
    assert_eq!(one["hostname"], "gpu-7");

    let dir = ctl.home.clone();
    let desired = write(
        &dir,
        "desired.yaml",
        "workloads:\n  - workload_key: host:/usr/bin/python3\n    instrumentation: instrumented\n  - workload_key: systemd:chat.service\n    instrumentation: none\n    python_sdk: enabled\n",
    );
    let dry = ctl.ok(&["apply", "-f", &desired, "--dry-run"]);
    assert!(
        dry.contains("+ host:/usr/bin/python3  instrumentation=instrumented"),
        "{dry}"
    );
    assert!(dry.contains("2 to change, 0 unchanged"), "{dry}");
    assert_eq!(
        ctl.json(&["desired"])["revision"],
        0,
        "dry run wrote nothing"
    );

    let applied = ctl.ok(&["apply", "-f", &desired]);
    assert!(
        applied.contains("applied: revision 1, 2 changed"),
        "{applied}"
    );
    let again = ctl.ok(&["apply", "-f", &desired]);
    assert!(
        again.contains("0 to change, 2 unchanged") && again.contains("no changes (revision 1)"),
        "{again}"
    );
    // The agent has not polled since: its applied revision lags, and says why.
    let lagging = ctl.ok(&["agents"]);
    assert!(
        lagging.contains("0/1") && lagging.contains("not reconciled yet"),
        "{lagging}"
    );
    let one = ctl.json(&["agents", "get", &agent_id]);
    assert_eq!(
        (
            one["applied_revision"].as_u64(),
            one["desired_revision"].as_u64()
        ),
        (Some(0), Some(1))
    );
    let d = ctl.json(&["desired"]);
    assert_eq!(d["revision"], 1);
    assert_eq!(d["workloads"].as_array().map(Vec::len), Some(2));
    let changed = write(
        &dir,
        "desired2.json",
        r#"{"workloads":[{"workload_key":"host:/usr/bin/python3","instrumentation":"none"}]}"#,
    );
    let diff = ctl.ok(&["apply", "-f", &changed, "--dry-run"]);
    assert!(
        diff.contains("~ host:/usr/bin/python3  instrumentation=instrumented python_sdk=disabled -> instrumentation=none"),
        "{diff}"
    );
    let broken = write(
        &dir,
        "broken.yaml",
        "workloads: [{workload_key: host:/x, instrumentation: maybe}]",
    );
    let b = ctl.run(&["apply", "-f", &broken]);
    assert_eq!(b.code, 2, "{}", b.stderr);
    let invalid = write(
        &dir,
        "invalid.yaml",
        "workloads: [{workload_key: nonsense, instrumentation: none}]",
    );
    let i = ctl.run(&["apply", "-f", &invalid]);
    assert_eq!(i.code, 1, "{}", i.stderr);
    assert!(i.stderr.contains("invalid_request"), "{}", i.stderr);

    // Credentials: a token created here enrolls an agent; a viewer key cannot apply.
    let tok = ctl.ok(&["tokens", "create", "--uses", "1", "--description", "rack 4"]);
    let r = http.post(
        "/v1/enroll",
        None,
        &json!({"token": tok.trim(), "hostname": "rack4"}),
    );
    assert_eq!(r.status, 201, "{:?}", r.json);
    let tokens = ctl.json(&["tokens", "list"]);
    assert!(tokens["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .any(|t| t["description"] == "rack 4" && t["uses"] == 1));
    let viewer = ctl.json(&["keys", "create", "--role", "viewer"]);
    let vkey = viewer["key"].as_str().expect("key");
    let denied = ctl.run(&["--token", vkey, "apply", "-f", &desired]);
    assert_eq!(denied.code, 3, "{}", denied.stderr);
    assert!(denied.stderr.contains("forbidden"), "{}", denied.stderr);
    let vid = viewer["id"].as_str().expect("id");
    assert!(ctl.ok(&["keys", "revoke", vid]).contains("revoked"));
    assert_eq!(ctl.run(&["--token", vkey, "agents"]).code, 3);

    assert_eq!(
        ctl.run(&["agents", "get", "agt_000000000000000000000000"])
            .code,
        4
    );
    let down = ctl.run(&["--url", "http://127.0.0.1:9", "agents"]);
    assert_eq!(down.code, 5, "{}", down.stderr);
    assert!(
        down.stderr.contains("cannot reach the control plane"),
        "{}",
        down.stderr
    );

    assert!(ctl.ok(&["agents", "revoke", &agent_id]).contains("revoked"));
    assert_eq!(
        ctl.json(&["agents", "get", &agent_id])["liveness"],
        "revoked"
    );
    let _ = std::fs::remove_dir_all(&ctl.home);
}
