//! `limit_workload` / `restore_workload_limit`: a CPU quota and a memory limit
//! on the cgroup a workload runs in, and back.
//!
//! `limit_workload` payload (unknown fields are an error): `workload` (default:
//! the action's target), and at least one of `cpu_pct` (percent of one CPU,
//! 1 to 100 × CPUs; period `period_us`, default 100000) and `memory_mib`
//! (`memory_hard: true` for a hard limit). `restore_workload_limit`: `workload`.
//!
//! Files written, per controller, where the workload's cgroup has them:
//! - cgroup v2: `cpu.max` (`<quota> <period>`), `memory.high` (hard: `memory.max`);
//! - cgroup v1: `cpu.cfs_period_us` then `cpu.cfs_quota_us`,
//!   `memory.soft_limit_in_bytes` (hard: `memory.limit_in_bytes`).
//!
//! v2 is used for a controller when the workload's v2 cgroup has the file (the
//! controller is enabled there); otherwise the v1 hierarchy of that controller,
//! when mounted. A hybrid host (v1 controllers, an empty v2 tree at
//! `/sys/fs/cgroup/unified`) therefore uses v1.
//!
//! Invariants:
//! - The cgroup is found from the workload's pids (`/proc/<pid>/cgroup`) and the
//!   agent's mounts (`/proc/self/mountinfo`); every pid must be in the same
//!   cgroup, which must not be a hierarchy's root nor hold the agent.
//! - The previous value of every file is recorded (first record wins) before
//!   the first write; `restore_workload_limit` writes exactly those values
//!   back, in reverse order, and removes the record only when all were written.

use super::{is_dry, payload, process, rollback_json, Context, Outcome};
use std::path::{Path, PathBuf};
use tether_proto::{Action, ActionKind};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitPayload {
    workload: Option<String>,
    cpu_pct: Option<u32>,
    period_us: Option<u64>,
    memory_mib: Option<u64>,
    memory_hard: Option<bool>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RestorePayload {
    workload: Option<String>,
}

/// A mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `None` for v2; the v1 controllers (`cpu`, `cpuacct`, ...) otherwise.
    pub controllers: Option<Vec<String>>,
    /// The mount's root inside the hierarchy (mountinfo field 4).
    pub root: String,
    pub point: PathBuf,
}

/// The cgroup mounts in a mountinfo text.
pub fn mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split_whitespace().collect();
            let r: Vec<&str> = right.split_whitespace().collect();
            let root = (*f.get(3)?).to_owned();
            let point = PathBuf::from(unescape(f.get(4)?));
            match *r.first()? {
                "cgroup2" => Some(Mount {
                    controllers: None,
                    root,
                    point,
                }),
                "cgroup" => Some(Mount {
                    controllers: Some(
                        r.get(2)?
                            .split(',')
                            .filter(|o| {
                                !o.contains('=')
                                    && !matches!(
                                        *o,
                                        "rw" | "ro"
                                            | "xattr"
                                            | "noprefix"
                                            | "clone_children"
                                            | "cpuset_v2_mode"
                                            | "favordynmods"
                                    )
                            })
                            .map(str::to_owned)
                            .collect(),
                    ),
                    root,
                    point,
                }),
                _ => None,
            }
        })
        .collect()
}

/// mountinfo escapes spaces and friends as `\040`.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Where `pid`'s cgroup for `controller` is, as a directory: `(dir, v2)`.
/// v2 wins where its cgroup has `v2_file`.
fn cgroup_dir(
    proc_root: &Path,
    mounts: &[Mount],
    pid: u32,
    controller: &str,
    v2_file: &str,
) -> Result<(PathBuf, bool, String), String> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))
        .map_err(|e| format!("pid {pid}: cgroup: {e}"))?;
    let resolve = |m: &Mount, path: &str| -> Option<PathBuf> {
        let rel = if m.root == "/" {
            path
        } else {
            path.strip_prefix(m.root.as_str())?
        };
        Some(m.point.join(rel.trim_start_matches('/')))
    };
    let mut v1 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && ctrls.is_empty() {
            if let Some(dir) = mounts
                .iter()
                .filter(|m| m.controllers.is_none())
                .find_map(|m| resolve(m, path))
                .filter(|d| d.join(v2_file).exists())
            {
                return Ok((dir, true, path.to_owned()));
            }
        } else if ctrls.split(',').any(|c| c == controller) {
            v1 = mounts
                .iter()
                .filter(|m| {
                    m.controllers
                        .as_ref()
                        .is_some_and(|c| c.iter().any(|c| c == controller))
                })
                .find_map(|m| resolve(m, path))
                .map(|d| (d, false, path.to_owned()));
        }
    }
    v1.ok_or_else(|| {
        format!(
            "no {controller} controller for pid {pid}: its cgroup v2 has no {v2_file} and no v1 {controller} hierarchy is mounted"
        )
    })
}

/// Whether some cpu or memory controller (v1, or v2 with the controller
/// enabled at the root) is mounted and writable here.
pub fn writable_controller(proc_root: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string(proc_root.join("self/mountinfo")) else {
        return false;
    };
    mounts(&info).iter().any(|m| {
        let has = match &m.controllers {
            Some(c) => c.iter().any(|c| c == "cpu" || c == "memory"),
            None => std::fs::read_to_string(m.point.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu" || c == "memory")),
        };
        has && rustix::fs::access(&m.point, rustix::fs::Access::WRITE_OK).is_ok()
    })
}

/// One file to write: path, new value.
type Write = (PathBuf, String);

fn subject(key: &str) -> String {
    format!("limit:{key}")
}

/// The cgroup of `key` for a controller, checked: one cgroup for all pids, not a
/// root, not the agent's.
fn locate(
    ctx: &Context,
    mounts: &[Mount],
    pids: &[u32],
    controller: &str,
    v2_file: &str,
) -> Result<(PathBuf, bool), Outcome> {
    let mut found: Option<(PathBuf, bool, String)> = None;
    for pid in pids {
        let here = cgroup_dir(&ctx.proc_root, mounts, *pid, controller, v2_file)
            .map_err(Outcome::refused)?;
        match &found {
            Some(f) if f.0 != here.0 => {
                return Err(Outcome::refused(format!(
                    "the workload's processes are in different {controller} cgroups ({} and {}): limit them one cgroup at a time",
                    f.0.display(),
                    here.0.display()
                )))
            }
            _ => found = Some(here),
        }
    }
    let Some((dir, v2, rel)) = found else {
        return Err(Outcome::not_run("no process to limit"));
    };
    if rel == "/" || rel.is_empty() {
        return Err(Outcome::refused(format!(
            "the workload runs in the root {controller} cgroup ({}): a limit there would limit the whole host; run it in its own cgroup (a systemd unit, a container) first",
            dir.display()
        )));
    }
    if let Ok((mine, _, _)) = cgroup_dir(&ctx.proc_root, mounts, ctx.agent_pid, controller, v2_file)
    {
        if mine == dir {
            return Err(Outcome::refused(format!(
                "the agent itself runs in {}: limiting it would limit the agent",
                dir.display()
            )));
        }
    }
    Ok((dir, v2))
}

fn read_value(path: &Path) -> Result<String, Outcome> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| Outcome::refused(format!("cannot read {}: {e}", path.display())))
}

fn write_value(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| {
        let why = match e.raw_os_error() {
            Some(1) | Some(13) => "no privilege: ",
            Some(30) => "read-only cgroup filesystem: ",
            _ => "",
        };
        format!("writing {value} to {}: {why}{e}", path.display())
    })
}

pub fn limit(a: &Action, ctx: &Context) -> Outcome {
    let p: LimitPayload = match payload(a) {
        Ok(p) => p,
        Err(o) => return o,
    };
    let Some(key) = p
        .workload
        .clone()
        .or_else(|| process::is_workload_key(&a.target).then(|| a.target.clone()))
    else {
        return Outcome::not_run("payload needs a workload key (or a workload-key target)");
    };
    if p.cpu_pct.is_none() && p.memory_mib.is_none() {
        return Outcome::not_run("payload needs cpu_pct, memory_mib or both");
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    if let Some(pct) = p.cpu_pct {
        if pct == 0 || pct > 100 * cpus {
            return Outcome::not_run(format!(
                "payload: cpu_pct {pct} is not between 1 and {} ({cpus} CPUs)",
                100 * cpus
            ));
        }
    }
    let period = p.period_us.unwrap_or(100_000);
    if !(1_000..=1_000_000).contains(&period) {
        return Outcome::not_run(format!(
            "payload: period_us {period} is not between 1000 and 1000000"
        ));
    }
    if p.memory_mib.is_some_and(|m| !(16..=1 << 30).contains(&m)) {
        return Outcome::not_run("payload: memory_mib must be at least 16");
    }
    let members = process::members(ctx, &key);
    if members.is_empty() {
        return Outcome::not_run(format!("no process of {key} runs here"));
    }
    let pids: Vec<u32> = members.iter().map(|m| m.pid).collect();
    let mounts =
        mounts(&std::fs::read_to_string(ctx.proc_root.join("self/mountinfo")).unwrap_or_default());
    let mut writes: Vec<Write> = Vec::new();
    if let Some(pct) = p.cpu_pct {
        let quota = (period * u64::from(pct) / 100).max(1_000);
        match locate(ctx, &mounts, &pids, "cpu", "cpu.max") {
            Ok((dir, true)) => writes.push((dir.join("cpu.max"), format!("{quota} {period}"))),
            Ok((dir, false)) => {
                writes.push((dir.join("cpu.cfs_period_us"), period.to_string()));
                writes.push((dir.join("cpu.cfs_quota_us"), quota.to_string()));
            }
            Err(o) => return o,
        }
    }
    if let Some(mib) = p.memory_mib {
        let hard = p.memory_hard == Some(true);
        let bytes = (mib * 1024 * 1024).to_string();
        let v2_file = if hard { "memory.max" } else { "memory.high" };
        match locate(ctx, &mounts, &pids, "memory", v2_file) {
            Ok((dir, true)) => writes.push((dir.join(v2_file), bytes)),
            Ok((dir, false)) => writes.push((
                dir.join(if hard {
                    "memory.limit_in_bytes"
                } else {
                    "memory.soft_limit_in_bytes"
                }),
                bytes,
            )),
            Err(o) => return o,
        }
    }
    let mut previous = Vec::new();
    for (path, _) in &writes {
        match read_value(path) {
            Ok(v) => previous.push((path.clone(), v)),
            Err(o) => return o,
        }
    }
    let changes: Vec<String> = writes
        .iter()
        .zip(&previous)
        .map(|((path, new), (_, old))| format!("{} {old} -> {new}", path.display()))
        .collect();
    if is_dry(a) {
        return Outcome::dry(format!(
            "would limit {key} ({} process(es)): {}",
            pids.len(),
            changes.join(", ")
        ));
    }
    // Record (first record wins per file), then write.
    let records = ctx.records();
    let sub = subject(&key);
    let mut files: Vec<serde_json::Value> = match records.load(&sub) {
        Ok(Some(r)) => r["files"].as_array().cloned().unwrap_or_default(),
        Ok(None) => Vec::new(),
        Err(e) => return Outcome::not_run(format!("not limited: {e}")),
    };
    for (path, old) in &previous {
        let p = path.display().to_string();
        if !files.iter().any(|f| f["path"].as_str() == Some(p.as_str())) {
            files.push(serde_json::json!({ "path": p, "previous": old }));
        }
    }
    let record = serde_json::json!({ "workload": key, "files": files });
    if let Err(e) = records.save(&sub, &record) {
        return Outcome::not_run(format!("not limited: {e}"));
    }
    let stdout = rollback_json(
        Some((
            ActionKind::RESTORE_WORKLOAD_LIMIT,
            serde_json::json!({ "workload": key }),
        )),
        record,
    );
    for (path, value) in &writes {
        if let Err(e) = write_value(path, value) {
            let msg = format!(
                "{key} not (fully) limited: {e}; restore_workload_limit undoes what was written"
            );
            return if e.contains("no privilege") || e.contains("read-only") {
                Outcome {
                    ran: true,
                    ..Outcome::refused(msg)
                }
                .with_stdout(stdout)
            } else {
                Outcome::failed(msg).with_stdout(stdout)
            };
        }
    }
    Outcome::succeeded(format!(
        "limited {key} ({} process(es)): {}; restore_workload_limit undoes it",
        pids.len(),
        changes.join(", ")
    ))
    .with_stdout(stdout)
}

pub fn restore(a: &Action, ctx: &Context) -> Outcome {
    let p: RestorePayload = match payload(a) {
        Ok(p) => p,
        Err(o) => return o,
    };
    let Some(key) = p
        .workload
        .or_else(|| process::is_workload_key(&a.target).then(|| a.target.clone()))
    else {
        return Outcome::not_run("payload needs a workload key (or a workload-key target)");
    };
    let records = ctx.records();
    let sub = subject(&key);
    let record = match records.load(&sub) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return if is_dry(a) {
                Outcome::dry(format!(
                    "would change nothing: no limit on {key} is recorded"
                ))
            } else {
                Outcome::succeeded(format!("nothing to restore: no limit on {key} is recorded"))
            }
        }
        Err(e) => return Outcome::not_run(e.to_string()),
    };
    let files: Vec<(PathBuf, String)> = record["files"]
        .as_array()
        .map(|fs| {
            fs.iter()
                .filter_map(|f| {
                    Some((
                        PathBuf::from(f["path"].as_str()?),
                        f["previous"].as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut done = Vec::new();
    let mut gone = Vec::new();
    let mut errors = Vec::new();
    for (path, old) in files.iter().rev() {
        if !path.exists() {
            gone.push(path.display().to_string());
            continue;
        }
        let now = std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        if is_dry(a) {
            done.push(format!("{} {now} -> {old}", path.display()));
            continue;
        }
        match write_value(path, old) {
            Ok(()) => done.push(format!("{} {now} -> {old}", path.display())),
            Err(e) => errors.push(e),
        }
    }
    let gone_note = if gone.is_empty() {
        String::new()
    } else {
        format!("; gone with their cgroup: {}", gone.join(", "))
    };
    if is_dry(a) {
        return Outcome::dry(format!(
            "would restore {key}: {}{gone_note}",
            done.join(", ")
        ));
    }
    let stdout = rollback_json(None, record);
    if !errors.is_empty() {
        return Outcome::failed(format!(
            "{key} not fully restored: {}; restored: {}",
            errors.join("; "),
            done.join(", ")
        ))
        .with_stdout(stdout);
    }
    if let Err(e) = records.remove(&sub) {
        return Outcome::failed(format!("restored {key} but {e}")).with_stdout(stdout);
    }
    Outcome::succeeded(format!("restored {key}: {}{gone_note}", done.join(", ")))
        .with_stdout(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_mountinfo_parses() {
        let info = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                    33 31 0:30 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                    40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n\
                    41 31 0:38 /inner /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                    22 1 8:1 / / rw - ext4 /dev/vda rw\n";
        let m = mounts(info);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].controllers.as_deref(), Some(&["cpu".to_owned()][..]));
        assert_eq!(
            m[1].controllers.as_deref(),
            Some(&["cpu".to_owned(), "cpuacct".to_owned()][..])
        );
        assert_eq!(m[2].controllers.as_deref(), Some(&[][..]));
        assert_eq!(m[3].controllers, None);
        assert_eq!(m[3].root, "/inner");
        assert_eq!(m[3].point, PathBuf::from("/sys/fs/cgroup/unified"));
    }
}
