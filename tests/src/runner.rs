//! The real `tether-local` binary as a child process: started on a free port,
//! killed (SIGKILL, like a crash) on drop or on [`Runner::kill`], restartable with
//! the same configuration.

use crate::emulator::Emulator;
use crate::stack::Stack;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Runner {
    child: Option<Child>,
    env: BTreeMap<String, String>,
    pub url: String,
}

impl Runner {
    /// Starts `tether-local serve` against `stack`, with `extra` settings on top.
    pub fn start(emu: &Emulator, stack: &Stack, extra: &[(&str, &str)]) -> Self {
        let mut env = stack.env();
        for (k, v) in emu.env() {
            env.insert(k, v);
        }
        env.insert("RUST_LOG".into(), "info".into());
        for (k, v) in extra {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let mut r = Self {
            child: None,
            env,
            url: String::new(),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(
            crate::bin_dir().join(format!("runner-{}.log", crate::unique_name("r"))),
        )
        .expect("runner log");
        let mut child = Command::new(crate::workspace_bin("tether-local"))
            .args(["serve", "--addr", "127.0.0.1:0"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&self.env)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn tether-local");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("tether-local did not report its address within 30 s");
        self.child = Some(child);
        self.url = url;
        self.wait_healthy();
    }

    fn wait_healthy(&self) {
        let http = crate::Http::new(&self.url);
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if http.get("/health", None).status == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("tether-local at {} never became healthy", self.url);
    }

    /// Kills the process with SIGKILL: no graceful shutdown, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill, then start again with the same configuration (on a new port).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The process id of the running runner.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn http(&self) -> crate::Http {
        crate::Http::new(&self.url)
    }

    /// The runner's AWS call counts so far (`/_local/aws-calls`).
    pub fn aws_calls(&self) -> BTreeMap<String, u64> {
        let reply = self.http().get("/_local/aws-calls", None);
        serde_json::from_value(reply.json).expect("call counts")
    }

    /// `tether-local bootstrap` with this runner's configuration: (api key, enrollment token).
    pub fn bootstrap(&self, tenant: &str) -> (String, String) {
        let out = Command::new(crate::workspace_bin("tether-local"))
            .args(["bootstrap", "--tenant", tenant, "--uses", "50"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&self.env)
            .output()
            .expect("run bootstrap");
        assert!(
            out.status.success(),
            "bootstrap failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bootstrap json");
        (
            v["api_key"].as_str().expect("api key").to_owned(),
            v["enrollment_token"].as_str().expect("token").to_owned(),
        )
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Difference of two call-count snapshots (`after - before`), zero entries dropped.
pub fn calls_between(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}
