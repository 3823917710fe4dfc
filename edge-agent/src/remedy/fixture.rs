//! Test fixtures for remediation: real processes that are not the agent's
//! children (orphans, as a workload on a host is), unique executables so a
//! workload key names only the test's processes, a stand-in Docker engine, and
//! a fake GPU board. Every process started here is SIGKILLed on drop.

use super::process;
use super::Context;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tether_proto::{Action, ActionKind, ActionMode};

pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "tether-remedy-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

pub fn action(kind: &str, target: &str, payload: serde_json::Value) -> Action {
    Action {
        id: format!("act_{}", rand::random::<u32>()),
        kind: ActionKind::new(kind),
        target: target.into(),
        payload,
        idempotency_key: format!("k{}", rand::random::<u64>()),
        not_before_ms: 0,
        expires_at_ms: crate::actions::now_ms() + 60_000,
        mode: ActionMode::Execute,
        requires_capability: String::new(),
    }
}

pub fn dry(mut a: Action) -> Action {
    a.mode = ActionMode::DryRun;
    a
}

/// A context over the real `/proc`, with a scratch data dir, no systemd, no
/// journald and no Docker, whatever this host has.
pub fn context(protected: &[&str]) -> Context {
    let data = scratch("data");
    Context {
        systemd_marker: data.join("no-systemd"),
        journald_socket: data.join("no-journald"),
        ..Context::new(
            &data,
            &[],
            &protected
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>(),
            &data.join("no-docker.sock"),
        )
    }
}

/// A copy of `/bin/dash` (or `/bin/sh`) under a unique name: its workload key
/// `host:<path>` names only the processes a test starts from it.
pub fn unique_shell(dir: &Path, name: &str) -> PathBuf {
    let src = ["/bin/dash", "/usr/bin/dash", "/bin/sh"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("a POSIX shell");
    let dst = dir.join(name);
    std::fs::copy(src, &dst).expect("copy the shell");
    dst
}

/// A process reparented away from the test (the agent): started by a shell that
/// exits at once, so the rails see an ordinary host process.
#[derive(Debug)]
pub struct Orphan {
    pub pid: u32,
    pub start_ticks: u64,
}

impl Orphan {
    /// Runs `exe -c script` in the background of a throw-away shell.
    pub fn shell(exe: &Path, script: &str) -> Self {
        let quoted = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
        let line = format!(
            "{} -c {} >/dev/null 2>&1 </dev/null & echo $!",
            quoted(&exe.display().to_string()),
            quoted(script)
        );
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(line)
            .stdin(Stdio::null())
            .output()
            .expect("spawn");
        let pid: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the orphan's pid");
        // Wait until it has exec'd (its exe is ours, not the launcher's).
        let real = std::fs::canonicalize(exe)
            .expect("exe")
            .display()
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(p) = process::read(Path::new("/proc"), pid) {
                if p.exe == real && p.ppid != std::process::id() {
                    return Self {
                        pid,
                        start_ticks: p.start_ticks,
                    };
                }
            }
            if Instant::now() >= deadline {
                if let Some(p) = i32::try_from(pid)
                    .ok()
                    .and_then(rustix::process::Pid::from_raw)
                {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
                panic!("orphan {pid} never ran {}", exe.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn alive(&self) -> bool {
        process::read(Path::new("/proc"), self.pid)
            .is_some_and(|p| p.start_ticks == self.start_ticks && p.state != 'Z')
    }

    /// Polls until it has exited (or `limit` passes); true when it did.
    pub fn exits_within(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.alive() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

impl Drop for Orphan {
    fn drop(&mut self) {
        if self.alive() {
            if let Some(pid) = i32::try_from(self.pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// A stand-in for dockerd (no engine on these machines): answers each request
/// with the next of `answers` and hands back the exact requests it read.
pub fn engine(answers: Vec<String>) -> (PathBuf, std::sync::mpsc::Receiver<String>) {
    let sock = scratch("docker").join("docker.sock");
    let l = UnixListener::bind(&sock).expect("bind");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for answer in answers {
            let Ok((mut c, _)) = l.accept() else { return };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&req).into_owned());
            let _ = c.write_all(answer.as_bytes());
        }
    });
    (sock, rx)
}

/// One fake GPU board.
#[derive(Debug, Clone)]
pub struct FakeBoard {
    pub uuid: String,
    pub limit_mw: u32,
    pub default_mw: u32,
    pub range_mw: (u32, u32),
    pub procs: Vec<(u32, u64)>,
    pub resets: u32,
    pub deny: bool,
}

impl FakeBoard {
    pub fn new(uuid: &str) -> Self {
        Self {
            uuid: uuid.into(),
            limit_mw: 300_000,
            default_mw: 300_000,
            range_mw: (100_000, 350_000),
            procs: vec![],
            resets: 0,
            deny: false,
        }
    }
}

/// Fake GPUs at the [`super::gpu::GpuControl`] boundary.
#[derive(Debug, Default)]
pub struct FakeGpus {
    pub boards: Vec<FakeBoard>,
}

impl FakeGpus {
    fn board(&self, i: u32) -> Result<&FakeBoard, super::gpu::GpuError> {
        self.boards
            .get(i as usize)
            .ok_or_else(|| super::gpu::GpuError::Device(format!("no board {i}")))
    }
}

impl super::gpu::GpuControl for FakeGpus {
    fn count(&self) -> Result<u32, super::gpu::GpuError> {
        Ok(self.boards.len() as u32)
    }
    fn uuid(&self, i: u32) -> Result<String, super::gpu::GpuError> {
        Ok(self.board(i)?.uuid.clone())
    }
    fn power_limit_mw(&self, i: u32) -> Result<u32, super::gpu::GpuError> {
        Ok(self.board(i)?.limit_mw)
    }
    fn default_power_limit_mw(&self, i: u32) -> Result<u32, super::gpu::GpuError> {
        Ok(self.board(i)?.default_mw)
    }
    fn power_limit_range_mw(&self, i: u32) -> Result<(u32, u32), super::gpu::GpuError> {
        Ok(self.board(i)?.range_mw)
    }
    fn set_power_limit_mw(&mut self, i: u32, mw: u32) -> Result<(), super::gpu::GpuError> {
        self.board(i)?;
        let b = &mut self.boards[i as usize];
        if b.deny {
            return Err(super::gpu::GpuError::NoPermission(
                "setting the power limit: Insufficient Permissions".into(),
            ));
        }
        b.limit_mw = mw;
        Ok(())
    }
    fn processes(&self, i: u32) -> Result<Vec<(u32, u64)>, super::gpu::GpuError> {
        Ok(self.board(i)?.procs.clone())
    }
    fn reset(&mut self, i: u32) -> Result<String, super::gpu::GpuError> {
        self.board(i)?;
        self.boards[i as usize].resets += 1;
        Ok("GPU 00000000:3B:00.0 was successfully reset.".into())
    }
}
