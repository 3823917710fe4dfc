//! Remediation against the real kernel of the machine running the tests: real
//! files, real processes (orphaned, as host workloads are), real cgroups. They
//! need root and a mounted cpu and memory controller; where one is missing they
//! fail and say which, rather than pass without testing.

use super::fixture::{
    action, context, dry, engine, scratch, unique_shell, FakeBoard, FakeGpus, Orphan,
};
use super::*;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;
use tether_proto::ResultStatus;

fn no_gpu() -> Result<Vec<(u32, u64)>, String> {
    Err("no NVML: test host".into())
}

fn tag() -> String {
    format!("{:08x}", rand::random::<u32>())
}

fn require_root() {
    assert_eq!(
        rustix::process::geteuid().as_raw(),
        0,
        "these tests signal orphans and write cgroup files: run them as root"
    );
}

// ---- rotate_logs -----------------------------------------------------------

/// `n` bytes of numbered lines.
fn prefill(path: &Path, n: usize) {
    let mut text = String::with_capacity(n + 64);
    let mut i = 0;
    while text.len() < n {
        text.push_str(&format!("prefill line {i:08} {}\n", "x".repeat(40)));
        i += 1;
    }
    std::fs::write(path, text).expect("prefill");
}

#[test]
fn rotate_logs_keeps_the_tail_while_a_writer_keeps_its_descriptor() {
    let dir = scratch("logs");
    let log = dir.join("app.log");
    prefill(&log, 3 * 1024 * 1024);
    // A writer holding one O_APPEND descriptor for its whole life.
    let sh = unique_shell(&dir, &format!("writer-{}", tag()));
    let script = format!(
        "exec 3>>'{}'; i=0; while :; do echo \"live line $i\" >&3; i=$((i+1)); sleep 0.02; done",
        log.display()
    );
    let writer = Orphan::shell(&sh, &script);
    let mut ctx = context(&[]);
    ctx.log_dirs = vec![dir.clone()];
    let inode = std::fs::metadata(&log).expect("meta").ino();

    let before = std::fs::read(&log).expect("read");
    let d = logs::rotate(
        &dry(action(
            "rotate_logs",
            "host",
            serde_json::json!({"path": log, "keep_mib": 1}),
        )),
        &ctx,
    );
    assert_eq!(d.status, ResultStatus::DryRun, "{d:?}");
    assert!(
        d.message
            .starts_with("would copy-truncate 1 file(s), keeping the last 1 MiB of each: ")
            && d.message.contains(&log.display().to_string()),
        "{}",
        d.message
    );
    let after_dry = std::fs::read(&log).expect("read");
    assert!(
        after_dry.starts_with(&before) && after_dry.len() - before.len() < 64 * 1024,
        "a dry run cut nothing (only the writer appended)"
    );

    let o = logs::rotate(
        &action(
            "rotate_logs",
            "host",
            serde_json::json!({"path": log, "keep_mib": 1}),
        ),
        &ctx,
    );
    assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
    assert!(o.message.contains("freed"), "{}", o.message);
    let report: serde_json::Value = serde_json::from_str(&o.stdout).expect("stdout is JSON");
    assert!(
        report["rollback"].is_null(),
        "what is cut is gone: no rollback"
    );
    let freed = report["previous"]["freed_bytes"]
        .as_u64()
        .expect("freed_bytes");
    assert!(freed >= 2 * 1024 * 1024 - 64 * 1024, "freed {freed}");
    let m = std::fs::metadata(&log).expect("meta");
    assert_eq!(m.ino(), inode, "copy-truncate keeps the inode");
    assert!(
        m.len() <= 1024 * 1024 + 64 * 1024,
        "kept about 1 MiB: {}",
        m.len()
    );
    let text = std::fs::read_to_string(&log).expect("text");
    assert!(
        text.starts_with("prefill line ") || text.starts_with("live line "),
        "the kept tail starts at a line: {:?}",
        &text[..60.min(text.len())]
    );
    // The writer still writes through its descriptor, at the new end.
    let size = m.len();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::metadata(&log).expect("meta").len() <= size + 100 {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer stopped writing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(writer.alive(), "the writer kept running");
    let text = std::fs::read_to_string(&log).expect("text");
    assert!(
        !text.contains('\0'),
        "an O_APPEND writer continues at the new end: no hole"
    );
    assert!(text.trim_end().ends_with(|c: char| c.is_ascii_digit()));
}

#[test]
fn rotate_logs_refuses_everything_outside_the_allowed_dirs() {
    let allowed = scratch("allowed");
    let outside = scratch("outside");
    let secret = outside.join("precious.log");
    prefill(&secret, 2 * 1024 * 1024);
    let size = std::fs::metadata(&secret).expect("meta").len();
    let mut ctx = context(&[]);
    let rot = |ctx: &Context, path: &Path| {
        logs::rotate(
            &action(
                "rotate_logs",
                "host",
                serde_json::json!({"path": path, "keep_mib": 1}),
            ),
            ctx,
        )
    };

    let none = rot(&ctx, &secret);
    assert_eq!(none.status, ResultStatus::Refused);
    assert!(
        none.message
            .starts_with("no log_dirs in the agent's config"),
        "{}",
        none.message
    );

    ctx.log_dirs = vec![allowed.clone()];
    let direct = rot(&ctx, &secret);
    assert_eq!(direct.status, ResultStatus::Refused);
    assert!(
        direct.message.contains("is outside the allowed log_dirs"),
        "{}",
        direct.message
    );

    std::os::unix::fs::symlink(&secret, allowed.join("escape.log")).expect("symlink");
    let link = rot(&ctx, &allowed.join("escape.log"));
    assert_eq!(link.status, ResultStatus::Refused);
    assert!(
        link.message
            .contains(&format!("(it resolves to {})", secret.display())),
        "{}",
        link.message
    );

    std::os::unix::fs::symlink(&outside, allowed.join("sub")).expect("dir symlink");
    let via_dir = rot(&ctx, &allowed.join("sub/precious.log"));
    assert_eq!(via_dir.status, ResultStatus::Refused, "{}", via_dir.message);

    let dotdot = allowed
        .join("..")
        .join(outside.file_name().expect("name"))
        .join("precious.log");
    assert_eq!(rot(&ctx, &dotdot).status, ResultStatus::Refused);

    std::fs::hard_link(&secret, allowed.join("hard.log")).expect("hard link");
    let hard = rot(&ctx, &allowed.join("hard.log"));
    assert_eq!(hard.status, ResultStatus::Refused);
    assert!(
        hard.message.contains("has 2 hard links"),
        "{}",
        hard.message
    );

    // The kernel's own check, beneath the allowed dir: no symlink leads out
    // even if the path was checked before it changed.
    let last = logs::open_beneath(&allowed, Path::new("escape.log")).expect_err("symlink");
    assert_eq!(last, "escape.log is a symlink");
    let through = logs::open_beneath(&allowed, Path::new("sub/precious.log")).expect_err("out");
    assert!(
        through.starts_with("sub/precious.log leads outside "),
        "{through}"
    );

    // A mount whose filesystem no allowed dir is on.
    let proc_mount = rot_mount(&ctx, "/proc");
    assert_eq!(
        proc_mount.status,
        ResultStatus::Refused,
        "{}",
        proc_mount.message
    );
    assert!(proc_mount
        .message
        .starts_with("no allowed log dir is on the filesystem of /proc"));

    assert_eq!(
        std::fs::metadata(&secret).expect("meta").len(),
        size,
        "the file outside was never touched"
    );
}

fn rot_mount(ctx: &Context, mount: &str) -> Outcome {
    logs::rotate(
        &action(
            "rotate_logs",
            "host",
            serde_json::json!({"mount": mount, "keep_mib": 1, "max_files": 1}),
        ),
        ctx,
    )
}

#[test]
fn rotate_logs_by_mount_takes_the_largest_log_files_first() {
    let dir = scratch("mount");
    std::fs::create_dir_all(dir.join("nested")).expect("dir");
    prefill(&dir.join("big.log"), 3 * 1024 * 1024);
    prefill(&dir.join("nested/medium.log"), 2 * 1024 * 1024);
    prefill(&dir.join("small.log"), 10 * 1024);
    prefill(&dir.join("old.log.gz"), 4 * 1024 * 1024);
    let mut ctx = context(&[]);
    ctx.log_dirs = vec![dir.clone()];
    let mount = dir.display().to_string();
    let small = std::fs::metadata(dir.join("small.log"))
        .expect("meta")
        .len();
    let one = rot_mount(&ctx, &mount);
    assert_eq!(one.status, ResultStatus::Succeeded, "{one:?}");
    assert!(
        one.message.starts_with("copy-truncated 1 file(s)"),
        "{}",
        one.message
    );
    let len = |p: &str| std::fs::metadata(dir.join(p)).expect("meta").len();
    assert!(len("big.log") <= 1024 * 1024);
    assert!(
        len("nested/medium.log") > 1024 * 1024,
        "max_files 1: only the largest"
    );
    let rest = logs::rotate(
        &action(
            "rotate_logs",
            "host",
            serde_json::json!({"mount": mount, "keep_mib": 1}),
        ),
        &ctx,
    );
    assert_eq!(rest.status, ResultStatus::Succeeded, "{rest:?}");
    assert!(len("nested/medium.log") <= 1024 * 1024);
    assert_eq!(
        len("small.log"),
        small,
        "a file within keep_mib is untouched"
    );
    assert!(
        len("old.log.gz") >= 4 * 1024 * 1024,
        "archives are never cut"
    );
    let again = rot_mount(&ctx, &mount);
    assert!(
        again.message.starts_with("nothing to free"),
        "{}",
        again.message
    );
}

#[test]
fn rotate_logs_takes_the_filesystem_as_the_disk_full_signal_names_it() {
    let dir = scratch("by-name");
    prefill(&dir.join("app.log"), 3 * 1024 * 1024);
    let mut ctx = context(&[]);
    ctx.proc_root = PathBuf::from("/proc");
    ctx.log_dirs = vec![dir.clone()];
    // The filesystem holding the directory, as `df` finds it, named as
    // telemetry names it (`fs.<name>.used_pct`).
    let out = std::process::Command::new("df")
        .args(["--output=target"])
        .arg(&dir)
        .output()
        .expect("df");
    let target = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .expect("df target")
        .trim()
        .to_owned();
    let name = crate::telemetry::mount_name(&target);
    let done = rot_mount(&ctx, &name);
    assert_eq!(done.status, ResultStatus::Succeeded, "{name}: {done:?}");
    assert!(std::fs::metadata(dir.join("app.log")).expect("meta").len() <= 1024 * 1024);
    let unknown = rot_mount(&ctx, "no_such_fs");
    assert_eq!(unknown.status, ResultStatus::Failed, "{unknown:?}");
    assert!(
        unknown
            .message
            .contains("nor a filesystem this host reports"),
        "{}",
        unknown.message
    );
}

// ---- vacuum_journal --------------------------------------------------------

#[test]
fn vacuum_journal_refuses_without_journald_and_runs_journalctl_with_it() {
    let ctx = context(&[]);
    let real = Context::new(Path::new("/tmp"), &[], &[], Path::new("/nonexistent"));
    let a = action(
        "vacuum_journal",
        "host",
        serde_json::json!({"max_size": "200M"}),
    );
    if !Path::new("/run/systemd/journal/socket").exists() {
        let o = logs::vacuum(&a, &real);
        assert_eq!(o.status, ResultStatus::Refused);
        assert_eq!(
            o.message,
            "no journald: /run/systemd/journal/socket is absent, so journald does not run here"
        );
    }
    let bad = logs::vacuum(
        &action(
            "vacuum_journal",
            "host",
            serde_json::json!({"max_size": "200M; rm -rf /"}),
        ),
        &ctx,
    );
    assert_eq!(bad.status, ResultStatus::Failed);
    assert!(
        bad.message.starts_with("payload: max_size"),
        "{}",
        bad.message
    );
    assert!(!bad.ran);
    // journald present (its socket stood in by a file) and journalctl pointed
    // at an empty journal directory: the real journalctl runs.
    if which("journalctl").is_none() {
        panic!("journalctl is not installed here: cannot run the vacuum for real");
    }
    let journal = scratch("journal");
    let present = Context {
        journald_socket: journal.join("socket"),
        journal_dir: Some(journal.clone()),
        ..ctx
    };
    std::fs::write(&present.journald_socket, "").expect("marker");
    let d = logs::vacuum(&dry(a.clone()), &present);
    assert_eq!(d.status, ResultStatus::DryRun);
    assert!(
        d.message
            .starts_with("would run journalctl --vacuum-size=200M"),
        "{}",
        d.message
    );
    let o = logs::vacuum(&a, &present);
    assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
    assert!(
        o.message
            .starts_with("ran journalctl --vacuum-size=200M: freed "),
        "{}",
        o.message
    );
    assert_eq!(o.exit_code, Some(0));
}

// ---- signal_process --------------------------------------------------------

#[test]
fn top_rss_skips_a_protected_process_and_signals_the_next() {
    require_root();
    let dir = scratch("rss");
    let t = tag();
    let sh = unique_shell(&dir, &format!("hog-{t}"));
    // Same executable (so the same workload key), another name: comm is the
    // name it was started by.
    let guarded_name = format!("guard-{t}");
    std::os::unix::fs::symlink(&sh, dir.join(&guarded_name)).expect("symlink");
    let hold = |mb: u32| {
        format!(
            "x=$(head -c {}000000 /dev/zero | tr '\\0' a); while :; do sleep 1; done",
            mb
        )
    };
    let guarded = Orphan::shell(&dir.join(&guarded_name), &hold(60));
    let target = Orphan::shell(&sh, &hold(30));
    let idle = Orphan::shell(&sh, "while :; do sleep 1; done");
    // Wait until both hold their memory.
    let key = format!("host:{}", sh.display());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while process::read(Path::new("/proc"), target.pid).map_or(0, |p| p.rss_bytes) < 25_000_000
        || process::read(Path::new("/proc"), guarded.pid).map_or(0, |p| p.rss_bytes) < 55_000_000
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the hogs never filled up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ctx = context(&[&guarded_name]);
    let a = action(
        "signal_process",
        &key,
        serde_json::json!({"select": "top_rss", "signal": "TERM"}),
    );
    let d = signal::run(&dry(a.clone()), &ctx, &no_gpu);
    assert_eq!(d.status, ResultStatus::DryRun, "{d:?}");
    assert!(
        d.message.starts_with(&format!(
            "would send SIGTERM to pid {} (hog-{t}",
            target.pid
        )),
        "{}",
        d.message
    );
    assert!(
        target.alive() && guarded.alive(),
        "a dry run signals nothing"
    );

    let o = signal::run(&a, &ctx, &no_gpu);
    assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
    assert!(
        o.message.contains(&format!(
            "top_rss within {key}: chose pid {} (hog-{t}",
            target.pid
        )),
        "{}",
        o.message
    );
    assert!(
        o.message.contains(&format!(
            "skipped pid {} (guard-{t}, {}) is on the protected list (guard-{t})",
            guarded.pid,
            sh.display()
        )),
        "{}",
        o.message
    );
    assert!(o.message.contains("; it exited"), "{}", o.message);
    assert!(target.exits_within(Duration::from_secs(5)));
    assert!(guarded.alive(), "the protected process is untouched");
    assert!(idle.alive(), "the smaller process is untouched");
}

#[test]
fn top_cpu_ranks_by_a_short_sample_and_picks_the_burner() {
    require_root();
    let dir = scratch("cpu");
    let t = tag();
    let sh = unique_shell(&dir, &format!("burn-{t}"));
    let guarded_name = format!("keep-{t}");
    std::os::unix::fs::symlink(&sh, dir.join(&guarded_name)).expect("symlink");
    // The idle one has been alive longest: a since-boot ranking could not tell
    // them apart, a sample can.
    let idle = Orphan::shell(&sh, "while :; do sleep 1; done");
    let guarded = Orphan::shell(&dir.join(&guarded_name), "while :; do :; done");
    let burner = Orphan::shell(&sh, "while :; do :; done");
    let key = format!("host:{}", sh.display());
    let ctx = context(&[&guarded_name]);
    let o = signal::run(
        &action(
            "signal_process",
            "host",
            serde_json::json!({"select": "top_cpu", "within": key, "sample_ms": 1000}),
        ),
        &ctx,
        &no_gpu,
    );
    assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
    assert!(
        o.message.contains(&format!(
            "top_cpu over 1000 ms within {key}: chose pid {} (burn-{t}",
            burner.pid
        )),
        "{}",
        o.message
    );
    assert!(burner.exits_within(Duration::from_secs(5)));
    assert!(guarded.alive() && idle.alive());
    let pct: f64 = o
        .message
        .split(" at ")
        .nth(1)
        .and_then(|r| r.split(" % CPU").next())
        .and_then(|v| v.parse().ok())
        .expect("a CPU percentage");
    assert!(pct > 5.0, "the burner burned over the sample: {pct} %");
}

#[test]
fn explicit_targets_hit_the_safety_rails() {
    require_root();
    let dir = scratch("rails");
    let t = tag();
    let ctx = context(&[&format!("prot-{t}")]);
    let sig = |pid: u32| {
        signal::run(
            &action("signal_process", "host", serde_json::json!({"pid": pid})),
            &ctx,
            &no_gpu,
        )
    };
    let init = sig(1);
    assert_eq!(init.status, ResultStatus::Refused);
    assert!(
        init.message.ends_with("is init (pid 1)"),
        "{}",
        init.message
    );
    let me = sig(std::process::id());
    assert!(
        me.message.ends_with("is the agent itself"),
        "{}",
        me.message
    );
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("sleep");
    let kid = sig(child.id());
    assert_eq!(kid.status, ResultStatus::Refused);
    assert!(
        kid.message.ends_with("is a child of the agent"),
        "{}",
        kid.message
    );
    assert!(child.try_wait().expect("wait").is_none(), "the child lives");
    let _ = child.kill();
    let _ = child.wait();
    if std::fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd") {
        let k = sig(2);
        assert!(k.message.ends_with("is a kernel thread"), "{}", k.message);
    }
    let prot = unique_shell(&dir, &format!("prot-{t}"));
    let p = Orphan::shell(&prot, "while :; do sleep 1; done");
    let refused = sig(p.pid);
    assert_eq!(refused.status, ResultStatus::Refused);
    assert!(
        refused
            .message
            .ends_with(&format!("is on the protected list (prot-{t})")),
        "{}",
        refused.message
    );
    assert!(p.alive());
    let free = unique_shell(&dir, &format!("free-{t}"));
    let q = Orphan::shell(&free, "while :; do sleep 1; done");
    let d = signal::run(
        &dry(action(
            "signal_process",
            "host",
            serde_json::json!({"pid": q.pid, "signal": "KILL"}),
        )),
        &ctx,
        &no_gpu,
    );
    assert_eq!(d.status, ResultStatus::DryRun);
    assert!(d
        .message
        .starts_with(&format!("would send SIGKILL to pid {}", q.pid)));
    assert!(q.alive(), "dry run");
    let bad = sig_with(&ctx, q.pid, "SEGV");
    assert_eq!(bad.status, ResultStatus::Failed);
    let ok = sig_with(&ctx, q.pid, "KILL");
    assert_eq!(ok.status, ResultStatus::Succeeded, "{ok:?}");
    assert!(q.exits_within(Duration::from_secs(5)));
}

fn sig_with(ctx: &Context, pid: u32, signal: &str) -> Outcome {
    signal::run(
        &action(
            "signal_process",
            "host",
            serde_json::json!({"pid": pid, "signal": signal}),
        ),
        ctx,
        &no_gpu,
    )
}

#[test]
fn top_gpu_memory_chooses_from_the_gpu_trait_and_refuses_without_nvml() {
    require_root();
    let dir = scratch("gpumem");
    let t = tag();
    let sh = unique_shell(&dir, &format!("cuda-{t}"));
    let small = Orphan::shell(&sh, "while :; do sleep 1; done");
    let large = Orphan::shell(&sh, "while :; do sleep 1; done");
    let key = format!("host:{}", sh.display());
    let ctx = context(&[]);
    let mut gpus = FakeGpus::default();
    let mut b0 = FakeBoard::new("GPU-0");
    b0.procs = vec![(small.pid, 1 << 30), (999_999, 8 << 30)];
    let mut b1 = FakeBoard::new("GPU-1");
    b1.procs = vec![(large.pid, 3 << 30)];
    gpus.boards = vec![b0, b1];
    let procs = || gpu::all_processes(&gpus);
    let o = signal::run(
        &action(
            "signal_process",
            &key,
            serde_json::json!({"select": "top_gpu_memory"}),
        ),
        &ctx,
        &procs,
    );
    assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
    assert!(
        o.message
            .contains(&format!("chose pid {} (cuda-{t}", large.pid))
            && o.message.contains("3072.0 MiB GPU memory"),
        "{}",
        o.message
    );
    assert!(large.exits_within(Duration::from_secs(5)) && small.alive());
    let none = signal::run(
        &action(
            "signal_process",
            &key,
            serde_json::json!({"select": "top_gpu_memory"}),
        ),
        &ctx,
        &no_gpu,
    );
    assert_eq!(none.status, ResultStatus::Refused);
    assert_eq!(none.message, "no NVML: test host");
}

// ---- stop / start / restart ------------------------------------------------

#[test]
fn stop_service_stops_a_plain_process_by_its_workload_key() {
    require_root();
    let dir = scratch("stop");
    let t = tag();
    let sh = unique_shell(&dir, &format!("svc-{t}"));
    let a1 = Orphan::shell(&sh, "while :; do sleep 1; done");
    let a2 = Orphan::shell(&sh, "while :; do sleep 1; done");
    let key = format!("host:{}", sh.display());
    let ctx = context(&[]);
    let stop = action(
        "stop_service",
        &key,
        serde_json::json!({"workload": key, "timeout_s": 5}),
    );
    let d = service::stop(&dry(stop.clone()), &ctx);
    assert_eq!(d.status, ResultStatus::DryRun);
    assert!(
        d.message.starts_with(&format!(
            "would send SIGTERM to pid {} (svc-{t}",
            a1.pid.min(a2.pid)
        )),
        "{}",
        d.message
    );
    assert!(a1.alive() && a2.alive());
    let o = service::stop(&stop, &ctx);
    assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
    assert!(
        o.message
            .starts_with(&format!("stopped {key}: sent SIGTERM to ")),
        "{}",
        o.message
    );
    assert!(o.message.contains("all exited"), "{}", o.message);
    assert!(a1.exits_within(Duration::from_secs(1)) && a2.exits_within(Duration::from_secs(1)));
    let out: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert!(out["rollback"].is_null());
    assert_eq!(out["previous"]["stopped"].as_array().map(Vec::len), Some(2));

    // One that ignores SIGTERM: reported, then SIGKILL only when asked.
    let stubborn = Orphan::shell(&sh, "trap '' TERM; while :; do sleep 1; done");
    let soft = service::stop(
        &action("stop_service", &key, serde_json::json!({"timeout_s": 1})),
        &ctx,
    );
    assert_eq!(soft.status, ResultStatus::Failed, "{soft:?}");
    assert!(
        soft.message.contains("still running after 1 s"),
        "{}",
        soft.message
    );
    assert!(
        soft.message.ends_with("(payload kill: true sends SIGKILL)"),
        "{}",
        soft.message
    );
    assert!(stubborn.alive());
    let hard = service::stop(
        &action(
            "stop_service",
            &key,
            serde_json::json!({"timeout_s": 1, "kill": true}),
        ),
        &ctx,
    );
    assert_eq!(hard.status, ResultStatus::Succeeded, "{hard:?}");
    assert!(hard.message.contains("; SIGKILL to "), "{}", hard.message);
    assert!(stubborn.exits_within(Duration::from_secs(2)));

    let start = service::start(
        &action("start_service", &key, serde_json::Value::Null),
        &ctx,
    );
    assert_eq!(start.status, ResultStatus::Refused);
    assert!(
        start.message.contains("is a plain process"),
        "{}",
        start.message
    );
    let restart = service::restart(
        &action("restart_service", &key, serde_json::Value::Null),
        &ctx,
        &no_gpu,
    );
    assert_eq!(restart.status, ResultStatus::Refused);
    let gone = service::stop(&action("stop_service", &key, serde_json::Value::Null), &ctx);
    assert_eq!(gone.status, ResultStatus::Failed);
    assert_eq!(gone.message, format!("no process of {key} runs here"));
}

#[test]
fn services_are_refused_precisely_where_the_host_lacks_the_manager() {
    let real = Context::new(
        Path::new("/tmp"),
        &[],
        &[],
        Path::new("/nonexistent/docker.sock"),
    );
    let sys = service::stop(
        &action(
            "stop_service",
            "systemd:chat.service",
            serde_json::Value::Null,
        ),
        &real,
    );
    if !Path::new("/run/systemd/system").exists() {
        assert_eq!(sys.status, ResultStatus::Refused);
        assert_eq!(
            sys.message,
            "no systemd: /run/systemd/system is absent, so systemd is not the init system here"
        );
    }
    let dock = service::restart(
        &action(
            "restart_service",
            "docker:rag-worker",
            serde_json::Value::Null,
        ),
        &real,
        &no_gpu,
    );
    assert_eq!(dock.status, ResultStatus::Refused);
    assert!(
        dock.message
            .starts_with("no Docker socket: /nonexistent/docker.sock: "),
        "{}",
        dock.message
    );
    let k8s = service::stop(
        &action(
            "stop_service",
            "k8s:prod:deployment:chat:app",
            serde_json::Value::Null,
        ),
        &real,
    );
    assert_eq!(k8s.status, ResultStatus::Refused);
    let evil = service::stop(
        &action(
            "stop_service",
            "host",
            serde_json::json!({"workload": "docker:../../x"}),
        ),
        &real,
    );
    assert_eq!(evil.status, ResultStatus::Failed);
    let typo = service::stop(
        &action(
            "stop_service",
            "host",
            serde_json::json!({"workload": "proc:x", "timeout": 3}),
        ),
        &real,
    );
    assert_eq!(typo.status, ResultStatus::Failed);
    assert!(
        typo.message.starts_with("payload: unknown field `timeout`"),
        "{}",
        typo.message
    );
}

#[test]
fn docker_stop_records_the_state_and_start_undoes_it() {
    let json = |s: &str| format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{s}");
    let (sock, rx) = engine(vec![
        json("[]"),                                // the guard's container list
        json(r#"{"State":{"Status":"running"}}"#), // the state before
        "HTTP/1.1 204 No Content\r\n\r\n".into(),  // stop
        "HTTP/1.1 204 No Content\r\n\r\n".into(),  // start
    ]);
    let ctx = Context {
        docker_socket: sock,
        ..context(&[])
    };
    let next = || rx.recv_timeout(Duration::from_secs(5)).expect("a request");
    let o = service::stop(
        &action(
            "stop_service",
            "docker:rag-worker",
            serde_json::json!({"timeout_s": 7}),
        ),
        &ctx,
    );
    assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
    assert!(next().starts_with("GET /containers/json HTTP/1.0\r\n"));
    assert!(next().starts_with("GET /containers/rag-worker/json HTTP/1.0\r\n"));
    assert_eq!(
        next(),
        "POST /containers/rag-worker/stop?t=7 HTTP/1.0\r\nHost: docker\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let out: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(out["rollback"]["action"], "start_service");
    assert_eq!(out["rollback"]["payload"]["workload"], "docker:rag-worker");
    assert_eq!(out["previous"]["state"], "running");
    assert!(ctx
        .records()
        .load("service:docker:rag-worker")
        .expect("load")
        .is_some());
    let s = service::start(
        &action(
            "start_service",
            "host",
            serde_json::json!({"workload": "docker:rag-worker"}),
        ),
        &ctx,
    );
    assert_eq!(s.status, ResultStatus::Succeeded, "{s:?}");
    assert_eq!(
        s.message,
        "started container rag-worker (POST /containers/rag-worker/start); before the stop it was running"
    );
    assert!(next().starts_with("POST /containers/rag-worker/start HTTP/1.0\r\n"));
    assert!(ctx
        .records()
        .load("service:docker:rag-worker")
        .expect("load")
        .is_none());
}

// ---- cgroup limits ---------------------------------------------------------

/// A fresh cgroup for `controller` next to (v1: inside) the test's own, with
/// `pid` moved in; removed on drop.
struct TestCgroup {
    dir: PathBuf,
}

impl TestCgroup {
    fn new(controller: &str, v2_file: &str, name: &str) -> Self {
        let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let ms = cgroup::mounts(&info);
        let me = std::fs::read_to_string("/proc/self/cgroup").expect("cgroup");
        // v2 with the controller enabled somewhere we can create a child.
        let v2 = ms.iter().find(|m| m.controllers.is_none()).filter(|m| {
            std::fs::read_to_string(m.point.join("cgroup.subtree_control"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == controller))
        });
        let v1 = ms.iter().find(|m| {
            m.controllers
                .as_ref()
                .is_some_and(|c| c.iter().any(|c| c == controller))
        });
        let dir = if let Some(m) = v2 {
            m.point.join(name)
        } else if let Some(m) = v1 {
            let mine = me
                .lines()
                .find_map(|l| {
                    let mut p = l.splitn(3, ':');
                    let (_, c, path) = (p.next()?, p.next()?, p.next()?);
                    c.split(',')
                        .any(|c| c == controller)
                        .then(|| path.to_owned())
                })
                .expect("our own v1 cgroup");
            m.point.join(mine.trim_start_matches('/')).join(name)
        } else {
            panic!(
                "no {controller} controller here: neither a v1 {controller} hierarchy nor a v2 root with {controller} in cgroup.subtree_control; the cgroup limit tests cannot run"
            );
        };
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("creating {}: {e} (root needed)", dir.display()));
        if v2.is_some() {
            assert!(
                dir.join(v2_file).exists(),
                "{} has no {v2_file}",
                dir.display()
            );
        }
        Self { dir }
    }

    fn join(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.dir.display()));
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_else(|e| panic!("{}: {e}", self.dir.join(file).display()))
            .trim()
            .to_owned()
    }

    fn is_v2(&self) -> bool {
        self.dir.join("cgroup.controllers").exists()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn limit_workload_writes_real_cgroup_files_and_restore_puts_them_back() {
    require_root();
    let dir = scratch("cg");
    let t = tag();
    let sh = unique_shell(&dir, &format!("noisy-{t}"));
    let key = format!("host:{}", sh.display());
    let ctx = context(&[]);
    let mut child = std::process::Command::new(&sh)
        .args(["-c", "while :; do sleep 1; done"])
        .spawn()
        .expect("spawn");
    let limit = |cpu: u32| {
        action(
            "limit_workload",
            &key,
            serde_json::json!({"cpu_pct": cpu, "memory_mib": 64}),
        )
    };
    // Still in the test's own cgroups: refused (root cgroup, or the agent's).
    let early = cgroup::limit(&limit(50), &ctx);
    assert_eq!(early.status, ResultStatus::Refused, "{early:?}");
    assert!(
        early.message.contains("root cpu cgroup")
            || early.message.contains("the agent itself runs in"),
        "{}",
        early.message
    );

    let cpu = TestCgroup::new("cpu", "cpu.max", &format!("tether-test-{t}"));
    let mem = TestCgroup::new("memory", "memory.high", &format!("tether-test-{t}"));
    cpu.join(child.id());
    mem.join(child.id());
    let (cpu_files, mem_file): (Vec<&str>, &str) = if cpu.is_v2() {
        (vec!["cpu.max"], "memory.high")
    } else {
        (
            vec!["cpu.cfs_period_us", "cpu.cfs_quota_us"],
            "memory.soft_limit_in_bytes",
        )
    };
    let cpu_before: Vec<String> = cpu_files.iter().map(|f| cpu.read(f)).collect();
    let mem_before = mem.read(mem_file);

    let d = cgroup::limit(&dry(limit(50)), &ctx);
    assert_eq!(d.status, ResultStatus::DryRun, "{d:?}");
    assert!(
        d.message
            .starts_with(&format!("would limit {key} (1 process(es)): ")),
        "{}",
        d.message
    );
    assert_eq!(
        cpu_files.iter().map(|f| cpu.read(f)).collect::<Vec<_>>(),
        cpu_before,
        "dry run"
    );
    assert_eq!(mem.read(mem_file), mem_before, "dry run");

    let o = cgroup::limit(&limit(50), &ctx);
    assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
    if cpu.is_v2() {
        assert_eq!(cpu.read("cpu.max"), "50000 100000");
    } else {
        assert_eq!(cpu.read("cpu.cfs_period_us"), "100000");
        assert_eq!(cpu.read("cpu.cfs_quota_us"), "50000");
    }
    assert_eq!(mem.read(mem_file), (64u64 << 20).to_string());
    let out: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(out["rollback"]["action"], "restore_workload_limit");
    assert_eq!(out["rollback"]["payload"]["workload"], key.as_str());

    // A second limit keeps the original previous values for the rollback.
    let again = cgroup::limit(&limit(25), &ctx);
    assert_eq!(again.status, ResultStatus::Succeeded, "{again:?}");
    if !cpu.is_v2() {
        assert_eq!(cpu.read("cpu.cfs_quota_us"), "25000");
    }
    let r = cgroup::restore(
        &action(
            "restore_workload_limit",
            "host",
            serde_json::json!({"workload": key}),
        ),
        &ctx,
    );
    assert_eq!(r.status, ResultStatus::Succeeded, "{r:?}");
    assert_eq!(
        cpu_files.iter().map(|f| cpu.read(f)).collect::<Vec<_>>(),
        cpu_before,
        "restored exactly"
    );
    assert_eq!(mem.read(mem_file), mem_before, "restored exactly");
    assert!(ctx
        .records()
        .load(&format!("limit:{key}"))
        .expect("load")
        .is_none());
    let twice = cgroup::restore(
        &action("restore_workload_limit", &key, serde_json::Value::Null),
        &ctx,
    );
    assert_eq!(twice.status, ResultStatus::Succeeded);
    assert!(
        twice.message.starts_with("nothing to restore"),
        "{}",
        twice.message
    );

    let _ = child.kill();
    let _ = child.wait();
}

// ---- GPUs ------------------------------------------------------------------

#[test]
fn gpu_power_limit_is_set_recorded_and_restored_on_a_fake_board() {
    let ctx = context(&[]);
    let mut g = FakeGpus {
        boards: vec![FakeBoard::new("GPU-aaaa"), FakeBoard::new("GPU-bbbb")],
    };
    let set = |pct: u32| {
        action(
            "set_gpu_power_limit",
            "host",
            serde_json::json!({"gpu": "gpu.1", "watts_pct": pct}),
        )
    };
    let d = gpu::set_power_limit(&dry(set(80)), &ctx, &mut g);
    assert_eq!(d.status, ResultStatus::DryRun);
    assert_eq!(
        d.message,
        "would set GPU 1 (GPU-bbbb) power limit 300 W -> 240 W (80 % of the default 300 W)"
    );
    assert_eq!(g.boards[1].limit_mw, 300_000, "dry run");
    let o = gpu::set_power_limit(&set(80), &ctx, &mut g);
    assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
    assert_eq!(g.boards[1].limit_mw, 240_000);
    assert_eq!(g.boards[0].limit_mw, 300_000, "only the named board");
    let out: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(out["rollback"]["action"], "restore_gpu_power_limit");
    assert_eq!(out["rollback"]["payload"]["gpu"], "GPU-bbbb");
    assert_eq!(out["previous"]["previous_mw"], 300_000);
    gpu::set_power_limit(&set(50), &ctx, &mut g);
    assert_eq!(g.boards[1].limit_mw, 150_000);
    let low = gpu::set_power_limit(&set(10), &ctx, &mut g);
    assert_eq!(low.status, ResultStatus::Refused);
    assert_eq!(
        low.message,
        "GPU 1 (GPU-bbbb) accepts power limits from 100 W to 350 W: 30 W (10 % of the default 300 W) is outside"
    );
    let r = gpu::restore_power_limit(
        &action(
            "restore_gpu_power_limit",
            "host",
            serde_json::json!({"gpu": "GPU-bbbb"}),
        ),
        &ctx,
        &mut g,
    );
    assert_eq!(r.status, ResultStatus::Succeeded, "{r:?}");
    assert_eq!(
        g.boards[1].limit_mw, 300_000,
        "the limit from before Tether, not 240 W"
    );
    g.boards[0].deny = true;
    let denied = gpu::set_power_limit(
        &action(
            "set_gpu_power_limit",
            "host",
            serde_json::json!({"gpu": "0", "watts": 200}),
        ),
        &ctx,
        &mut g,
    );
    assert_eq!(denied.status, ResultStatus::Refused);
    assert!(
        denied.message.starts_with("no privilege: "),
        "{}",
        denied.message
    );
    let bad = gpu::set_power_limit(
        &action(
            "set_gpu_power_limit",
            "host",
            serde_json::json!({"gpu": "first", "watts_pct": 80}),
        ),
        &ctx,
        &mut g,
    );
    assert_eq!(bad.status, ResultStatus::Failed);
    let both = gpu::set_power_limit(
        &action(
            "set_gpu_power_limit",
            "host",
            serde_json::json!({"gpu": "0", "watts_pct": 80, "watts": 100}),
        ),
        &ctx,
        &mut g,
    );
    assert_eq!(both.status, ResultStatus::Failed);
}

#[test]
fn gpu_reset_is_refused_while_processes_hold_the_board() {
    let ctx = context(&[]);
    let mut busy = FakeBoard::new("GPU-busy");
    busy.procs = vec![(4242, 1 << 30)];
    let mut g = FakeGpus {
        boards: vec![busy, FakeBoard::new("GPU-idle")],
    };
    let r = |gpu: &str| action("reset_gpu", "host", serde_json::json!({"gpu": gpu}));
    let refused = gpu::reset(&r("0"), &ctx, &mut g);
    assert_eq!(refused.status, ResultStatus::Refused);
    assert_eq!(
        refused.message,
        "1 process(es) use GPU 0 (GPU-busy): pids 4242; a reset would kill them, stop them first"
    );
    let d = gpu::reset(&dry(r("gpu1")), &ctx, &mut g);
    assert_eq!(
        d.message,
        "would reset GPU 1 (GPU-idle); no process uses it"
    );
    assert_eq!(g.boards[1].resets, 0);
    let o = gpu::reset(&r("GPU-idle"), &ctx, &mut g);
    assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
    assert_eq!((g.boards[0].resets, g.boards[1].resets), (0, 1));
    let missing = gpu::reset(&r("7"), &ctx, &mut g);
    assert_eq!(missing.message, "no GPU 7: this host has 2");
}

/// The real NVML path on this machine, which has no GPU: refused with NVML's
/// own error. (On a GPU machine this checks the board is seen instead.)
#[test]
fn the_real_nvml_path_refuses_without_a_gpu() {
    match gpu::NvmlGpus::open() {
        Err(e) => {
            assert!(matches!(e, gpu::GpuError::Unavailable(_)), "{e:?}");
            assert!(e.to_string().starts_with("no NVML: "), "{e}");
            assert!(
                !Path::new("/dev/nvidia0").exists(),
                "a GPU host whose NVML fails: {e}"
            );
        }
        Ok(g) => {
            use gpu::GpuControl;
            assert!(
                g.count().expect("count") > 0,
                "NVML loads but sees no board"
            );
        }
    }
}
