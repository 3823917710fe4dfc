//! The control plane as a child process: started on a free port, killed
//! (SIGKILL, like a crash) on drop or on [`Runner::kill`], restartable with the
//! same configuration.
//!
//! Two shapes, chosen by one switch, `TETHER_E2E_STACK`:
//! - `local` (the default): `tether-local serve`, the router and the role
//!   consumers in one process;
//! - `lambda`: `tether-local lambda`, every function's real Lambda binary under
//!   the Lambda Runtime API emulator, reached through the Function URL and the
//!   SQS event source mappings it plays. Killing it kills the whole process group
//!   (emulator and function instances). The AWS calls of a request are then read
//!   from the api function's own log lines (`aws_ops`), which is also what an
//!   operator reads in CloudWatch.

use crate::emulator::Emulator;
use crate::stack::Stack;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which shape of the control plane the suites run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Local,
    Lambda,
}

impl Shape {
    /// `TETHER_E2E_STACK`: `local` (default) or `lambda`.
    pub fn from_env() -> Self {
        match std::env::var("TETHER_E2E_STACK").as_deref() {
            Err(_) | Ok("") | Ok("local") => Self::Local,
            Ok("lambda") => Self::Lambda,
            Ok(other) => panic!("TETHER_E2E_STACK={other}: expected `local` or `lambda`"),
        }
    }
}

#[derive(Debug)]
pub struct Runner {
    child: Option<Child>,
    env: BTreeMap<String, String>,
    pub url: String,
    pub shape: Shape,
    /// The function logs, in the lambda shape.
    pub log_dir: Option<std::path::PathBuf>,
    /// The runner's own log (stderr): the whole control plane's in the local
    /// shape, the Function URL's and event source mappings' in the lambda one.
    logs: Vec<std::path::PathBuf>,
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
        let shape = Shape::from_env();
        let mut r = Self {
            child: None,
            env,
            url: String::new(),
            shape,
            log_dir: (shape == Shape::Lambda)
                .then(|| crate::bin_dir().join(crate::unique_name("lambda-logs"))),
            logs: Vec::new(),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        use std::os::unix::process::CommandExt;
        let log_path = crate::bin_dir().join(format!("runner-{}.log", crate::unique_name("r")));
        let log = std::fs::File::create(&log_path).expect("runner log");
        self.logs.push(log_path);
        let mut cmd = Command::new(crate::workspace_bin("tether-local"));
        match &self.log_dir {
            None => {
                cmd.args(["serve", "--addr", "127.0.0.1:0"]);
            }
            Some(dir) => {
                // One api instance, so a warm poll is warm (a second instance
                // would be a second cold start); two of each role, so the
                // roles meet their own concurrency.
                cmd.args(["lambda", "--addr", "127.0.0.1:0", "--api-instances", "1"])
                    .args(["--role-instances", "2", "--log-dir"])
                    .arg(dir)
                    .current_dir(crate::workspace_dir())
                    // Its own process group: a kill takes the emulator and every
                    // function instance with it.
                    .process_group(0);
            }
        }
        let mut child = cmd
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
            .recv_timeout(Duration::from_secs(60))
            .expect("tether-local did not report its address within 60 s");
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
            if self.shape == Shape::Lambda {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", c.id())])
                    .status();
            }
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

    /// The AWS call counts of the api so far: `/_local/aws-calls` locally; in
    /// the lambda shape, the sum of `aws_ops` over the api function's request
    /// log lines.
    pub fn aws_calls(&self) -> BTreeMap<String, u64> {
        let Some(dir) = &self.log_dir else {
            let reply = self.http().get("/_local/aws-calls", None);
            return serde_json::from_value(reply.json).expect("call counts");
        };
        let mut calls = BTreeMap::new();
        for line in self.function_log(dir, "api") {
            if line["message"] != "request" {
                continue;
            }
            for op in line["aws_ops"].as_str().unwrap_or_default().split(',') {
                if let Some((k, n)) = op.split_once('=') {
                    *calls.entry(k.to_owned()).or_insert(0) += n.parse::<u64>().expect("count");
                }
            }
        }
        calls
    }

    /// The JSON log lines a function wrote: in the lambda shape its instances'
    /// own output; locally every line of the one process (all functions).
    pub fn log_lines(&self, function: &str) -> Vec<serde_json::Value> {
        match &self.log_dir {
            Some(dir) => self.function_log(dir, function),
            None => self
                .logs
                .iter()
                .flat_map(|p| {
                    std::fs::read_to_string(p)
                        .unwrap_or_default()
                        .lines()
                        .filter_map(|l| serde_json::from_str(l).ok())
                        .collect::<Vec<serde_json::Value>>()
                })
                .collect(),
        }
    }

    /// Every JSON log line of a function's instances (lambda shape only).
    pub fn function_log(&self, dir: &std::path::Path, function: &str) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .expect("function log dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".log"))
                    .and_then(|n| n.rsplit_once('-'))
                    .is_some_and(|(f, i)| f == function && i.parse::<u32>().is_ok())
            })
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).expect("function log");
            out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
        }
        out
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
