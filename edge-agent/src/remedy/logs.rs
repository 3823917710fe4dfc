//! `rotate_logs` (keep the last N MiB of log files under the configured
//! `log_dirs`) and `vacuum_journal` (`journalctl --vacuum-size`).
//!
//! `rotate_logs` payload (unknown fields are an error): `path` (one file) or
//! `mount` (a filesystem: the largest log files under the allowed directories
//! on it, up to `max_files`, default 8, at most 64); `keep_mib` (default 16, at
//! most 64) is what each file keeps, from its end, starting at a line.
//!
//! Invariants:
//! - Only regular files under a configured `log_dirs` entry are touched. The
//!   file is opened with `openat2(RESOLVE_BENEATH)` from the allowed directory,
//!   so no symlink (nor `..`) leads out of it, even if the tree changes between
//!   the check and the open; a file with more than one hard link (which may be
//!   a file outside the directory) and compressed archives are refused. A
//!   directory walk never follows symlinks, stays on the one filesystem, and is
//!   bounded ([`MAX_DEPTH`], [`MAX_ENTRIES`]).
//! - Copy-truncate: the tail is read, the file truncated in place and the tail
//!   written back through an `O_APPEND` descriptor, so the inode stays and every
//!   writer keeps its descriptor (writers with `O_APPEND` continue at the new
//!   end). Bytes a writer appends between the read and the truncate (a few
//!   syscalls apart) are lost, as with logrotate's `copytruncate`.
//! - What is cut is gone: no rollback. The message reports the bytes freed
//!   (allocated blocks before minus after) per file.
//! - `vacuum_journal` runs only where journald runs (its socket exists) and
//!   `journalctl` is installed; `max_size` is `<1-999999><K|M|G>`, at least 1M.

use super::{bounded, is_dry, payload, rollback_json, which, Context, Outcome};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tether_proto::Action;

pub const DEFAULT_KEEP_MIB: u64 = 16;
pub const MAX_KEEP_MIB: u64 = 64;
pub const MAX_DEPTH: usize = 8;
pub const MAX_ENTRIES: usize = 20_000;
const MIB: u64 = 1024 * 1024;
/// Archives: cutting their head leaves garbage, so they are never truncated.
const COMPRESSED: &[&str] = &["gz", "xz", "zst", "bz2", "lz4", "zip", "7z"];

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RotatePayload {
    path: Option<PathBuf>,
    mount: Option<String>,
    keep_mib: Option<u64>,
    max_files: Option<usize>,
}

/// An allowed directory, resolved (symlinks in the configured path followed
/// once, here, by the operator's choice).
#[derive(Debug, Clone)]
struct Allowed {
    real: PathBuf,
}

fn allowed_dirs(ctx: &Context) -> Result<Vec<Allowed>, Outcome> {
    if ctx.log_dirs.is_empty() {
        return Err(Outcome::refused(
            "no log_dirs in the agent's config: rotate_logs only touches files under directories the local config allows",
        ));
    }
    let dirs: Vec<Allowed> = ctx
        .log_dirs
        .iter()
        .filter_map(|d| {
            let real = std::fs::canonicalize(d).ok().filter(|r| r.is_dir())?;
            Some(Allowed { real })
        })
        .collect();
    if dirs.is_empty() {
        return Err(Outcome::refused(format!(
            "none of the configured log_dirs exists: {}",
            shown_dirs(ctx)
        )));
    }
    Ok(dirs)
}

fn shown_dirs(ctx: &Context) -> String {
    ctx.log_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_compressed(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| COMPRESSED.contains(&e))
}

/// Opens `rel` beneath `dir` for copy-truncate: read-write, append, no symlink
/// or `..` out of `dir`.
pub(crate) fn open_beneath(dir: &Path, rel: &Path) -> Result<File, String> {
    let d = rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("{}: {e}", dir.display()))?;
    let fd = rustix::fs::openat2(
        &d,
        rel,
        OFlags::RDWR
            | OFlags::APPEND
            | OFlags::NOFOLLOW
            | OFlags::NOCTTY
            | OFlags::CLOEXEC
            | OFlags::NONBLOCK,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| match e {
        rustix::io::Errno::XDEV => format!(
            "{} leads outside {} (symlink or ..)",
            rel.display(),
            dir.display()
        ),
        rustix::io::Errno::LOOP => format!("{} is a symlink", rel.display()),
        e => format!("{}: {e}", dir.join(rel).display()),
    })?;
    Ok(File::from(fd))
}

/// One file's plan and, once run, result.
#[derive(Debug, Clone)]
struct Cut {
    path: PathBuf,
    /// The allowed directory (real path) and the path beneath it.
    dir: PathBuf,
    rel: PathBuf,
    size: u64,
    allocated: u64,
}

/// Keeps the last `keep` bytes of `f` (from the first line start within them):
/// returns (size after, allocated after).
fn keep_tail(f: &File, keep: u64) -> std::io::Result<(u64, u64)> {
    let size = f.metadata()?.len();
    if size > keep {
        let cut = size - keep;
        let mut tail = Vec::with_capacity(keep as usize + 64 * 1024);
        let mut buf = vec![0u8; 256 * 1024];
        let mut off = cut;
        // Read to the current end (a writer may have appended since `size`),
        // bounded to twice what is kept.
        loop {
            let n = f.read_at(&mut buf, off)?;
            if n == 0 || tail.len() as u64 > 2 * keep + MIB {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            off += n as u64;
        }
        // Start at a line, unless the first line is over 64 KiB.
        let start = if cut == 0 {
            0
        } else {
            tail.iter()
                .take(64 * 1024)
                .position(|b| *b == b'\n')
                .map_or(0, |i| i + 1)
        };
        f.set_len(0)?;
        let mut w = f;
        w.write_all(tail.get(start..).unwrap_or_default())?;
        f.sync_data()?;
    }
    let m = f.metadata()?;
    Ok((m.len(), m.blocks() * 512))
}

fn human(b: u64) -> String {
    if b >= MIB {
        format!("{:.1} MiB", b as f64 / MIB as f64)
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}

/// The allowed directory `path` is under (by its real path), and the path
/// relative to it.
fn locate(path: &Path, dirs: &[Allowed], ctx: &Context) -> Result<(PathBuf, PathBuf), Outcome> {
    if !path.is_absolute() {
        return Err(Outcome::not_run(format!(
            "payload: path {} is not absolute",
            path.display()
        )));
    }
    let real = std::fs::canonicalize(path)
        .map_err(|e| Outcome::not_run(format!("{}: {e}", path.display())))?;
    for d in dirs {
        if let Ok(rel) = real.strip_prefix(&d.real) {
            if rel.as_os_str().is_empty() {
                break;
            }
            return Ok((d.real.clone(), rel.to_path_buf()));
        }
    }
    let via = if real != path {
        format!(" (it resolves to {})", real.display())
    } else {
        String::new()
    };
    Err(Outcome::refused(format!(
        "{}{via} is outside the allowed log_dirs: {}",
        path.display(),
        shown_dirs(ctx)
    )))
}

/// Checks an opened file: regular, one link, not an archive.
fn check_file(f: &File, path: &Path) -> Result<(u64, u64), Outcome> {
    let m = f
        .metadata()
        .map_err(|e| Outcome::not_run(format!("{}: {e}", path.display())))?;
    if !m.file_type().is_file() {
        return Err(Outcome::refused(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    if m.nlink() > 1 {
        return Err(Outcome::refused(format!(
            "{} has {} hard links: one may be a file outside the allowed log_dirs",
            path.display(),
            m.nlink()
        )));
    }
    if is_compressed(path) {
        return Err(Outcome::refused(format!(
            "{} is a compressed archive: cutting its head would leave garbage",
            path.display()
        )));
    }
    Ok((m.len(), m.blocks() * 512))
}

/// Log files under the allowed directories on `dev`, largest first.
fn walk(dirs: &[Allowed], dev: u64) -> (Vec<Cut>, usize) {
    let mut out = Vec::new();
    let mut seen = 0usize;
    for d in dirs {
        let mut stack = vec![(d.real.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                seen += 1;
                if seen > MAX_ENTRIES {
                    break;
                }
                let p = e.path();
                // symlink_metadata: a symlink is never followed.
                let Ok(m) = std::fs::symlink_metadata(&p) else {
                    continue;
                };
                if m.dev() != dev && !m.is_dir() {
                    continue;
                }
                if m.is_dir() && depth < MAX_DEPTH {
                    stack.push((p, depth + 1));
                } else if m.is_file() && m.dev() == dev && m.nlink() == 1 && !is_compressed(&p) {
                    let Ok(rel) = p.strip_prefix(&d.real) else {
                        continue;
                    };
                    out.push(Cut {
                        rel: rel.to_path_buf(),
                        dir: d.real.clone(),
                        path: p.clone(),
                        size: m.len(),
                        allocated: m.blocks() * 512,
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| b.size.cmp(&a.size).then(a.path.cmp(&b.path)));
    out.dedup_by(|a, b| a.path == b.path);
    (out, seen)
}

pub fn rotate(a: &Action, ctx: &Context) -> Outcome {
    let p: RotatePayload = match payload(a) {
        Ok(p) => p,
        Err(o) => return o,
    };
    let keep_mib = p.keep_mib.unwrap_or(DEFAULT_KEEP_MIB);
    if keep_mib > MAX_KEEP_MIB {
        return Outcome::not_run(format!(
            "payload: keep_mib {keep_mib} is over {MAX_KEEP_MIB}"
        ));
    }
    let keep = keep_mib * MIB;
    let dirs = match allowed_dirs(ctx) {
        Ok(d) => d,
        Err(o) => return o,
    };
    let cuts: Vec<Cut> = match (&p.path, &p.mount) {
        (Some(_), Some(_)) | (None, None) => {
            return Outcome::not_run("payload needs exactly one of path or mount")
        }
        (Some(path), None) => {
            let (dir, rel) = match locate(path, &dirs, ctx) {
                Ok(x) => x,
                Err(o) => return o,
            };
            let f = match open_beneath(&dir, &rel) {
                Ok(f) => f,
                Err(e) => {
                    return Outcome::refused(format!("{}: {e}", path.display()));
                }
            };
            let (size, allocated) = match check_file(&f, path) {
                Ok(x) => x,
                Err(o) => return o,
            };
            vec![Cut {
                path: path.clone(),
                dir,
                rel,
                size,
                allocated,
            }]
        }
        (None, Some(mount)) => {
            let raw = mount.strip_prefix("fs:").unwrap_or(mount);
            // An absolute path, or a filesystem as telemetry names it
            // (`fs.<name>.used_pct`: `root`, `var_lib`), which is what the
            // incident chain's disk_full signal carries.
            let mount_path = if raw.starts_with('/') {
                PathBuf::from(raw)
            } else {
                let table =
                    std::fs::read_to_string(ctx.proc_root.join("mounts")).unwrap_or_default();
                match crate::telemetry::mounts(&table)
                    .into_iter()
                    .find(|mp| crate::telemetry::mount_name(mp) == raw)
                {
                    Some(mp) => PathBuf::from(mp),
                    None => {
                        return Outcome::not_run(format!(
                            "payload: mount {mount:?} is neither an absolute path nor a filesystem this host reports"
                        ))
                    }
                }
            };
            let dev = match std::fs::metadata(&mount_path) {
                Ok(m) => m.dev(),
                Err(e) => return Outcome::not_run(format!("{}: {e}", mount_path.display())),
            };
            let on_it: Vec<Allowed> = dirs
                .iter()
                .filter(|d| {
                    std::fs::metadata(&d.real).is_ok_and(|m| m.dev() == dev)
                        || d.real.starts_with(&mount_path)
                        || mount_path.starts_with(&d.real)
                })
                .cloned()
                .collect();
            if on_it.is_empty() {
                return Outcome::refused(format!(
                    "no allowed log dir is on the filesystem of {}: log_dirs are {}",
                    mount_path.display(),
                    shown_dirs(ctx)
                ));
            }
            let (found, _) = walk(&on_it, dev);
            found
                .into_iter()
                .filter(|c| c.size > keep)
                .take(p.max_files.unwrap_or(8).min(64))
                .collect()
        }
    };
    let big: Vec<&Cut> = cuts.iter().filter(|c| c.size > keep).collect();
    if big.is_empty() {
        let msg = match cuts.first() {
            Some(c) => format!(
                "nothing to free: {} ({}) is within the {keep_mib} MiB kept",
                c.path.display(),
                human(c.size)
            ),
            None => format!(
                "nothing to free: no log file over {keep_mib} MiB under the allowed log_dirs on that filesystem ({})",
                shown_dirs(ctx)
            ),
        };
        return if is_dry(a) {
            Outcome::dry(format!("would change nothing: {msg}"))
        } else {
            Outcome::succeeded(msg)
        };
    }
    if is_dry(a) {
        let lines: Vec<String> = big
            .iter()
            .map(|c| {
                format!(
                    "{} ({} -> last {} MiB, drops {})",
                    c.path.display(),
                    human(c.size),
                    keep_mib,
                    human(c.size - keep)
                )
            })
            .collect();
        return Outcome::dry(format!(
            "would copy-truncate {} file(s), keeping the last {keep_mib} MiB of each: {}",
            lines.len(),
            lines.join("; ")
        ));
    }
    let mut done = Vec::new();
    let mut errors = Vec::new();
    let mut freed_total = 0u64;
    let mut report = Vec::new();
    for c in big {
        let result = open_beneath(&c.dir, &c.rel).and_then(|f| {
            check_file(&f, &c.path).map_err(|o| o.message)?;
            keep_tail(&f, keep).map_err(|e| format!("{}: {e}", c.path.display()))
        });
        match result {
            Ok((size, allocated)) => {
                let freed = c.allocated.saturating_sub(allocated);
                freed_total += freed;
                done.push(format!(
                    "{} {} -> {} (freed {})",
                    c.path.display(),
                    human(c.size),
                    human(size),
                    human(freed)
                ));
                report.push(serde_json::json!({
                    "path": c.path, "size_before": c.size, "size_after": size, "freed_bytes": freed,
                }));
            }
            Err(e) => errors.push(e),
        }
    }
    let stdout = rollback_json(
        None,
        serde_json::json!({ "files": report, "freed_bytes": freed_total }),
    );
    let mut msg = format!(
        "copy-truncated {} file(s) to their last {keep_mib} MiB, freed {} ({freed_total} bytes): {}",
        done.len(),
        human(freed_total),
        done.join("; ")
    );
    if errors.is_empty() {
        Outcome::succeeded(msg).with_stdout(stdout)
    } else {
        msg.push_str(&format!("; failed: {}", errors.join("; ")));
        Outcome::failed(msg).with_stdout(stdout)
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VacuumPayload {
    max_size: String,
}

/// `max_size` as journalctl takes it, in bytes: `<1-999999><K|M|G>`, at least 1M.
pub fn vacuum_size(s: &str) -> Result<u64, String> {
    let (digits, unit) = s.split_at(s.len().saturating_sub(1));
    let mult = match unit {
        "K" => 1024u64,
        "M" => MIB,
        "G" => 1024 * MIB,
        _ => {
            return Err(format!(
                "max_size {s:?}: needs a K, M or G suffix (e.g. 200M)"
            ))
        }
    };
    if digits.is_empty()
        || digits.len() > 6
        || digits.starts_with('0')
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!(
            "max_size {s:?}: needs 1 to 6 digits, no leading zero"
        ));
    }
    let bytes = digits
        .parse::<u64>()
        .map_err(|e| format!("max_size {s:?}: {e}"))?
        * mult;
    if bytes < MIB {
        return Err(format!("max_size {s:?}: under 1M would empty the journal"));
    }
    Ok(bytes)
}

/// The journalctl to run, or why journald is not here.
pub fn journald(ctx: &Context) -> Result<PathBuf, Outcome> {
    if !ctx.journald_socket.exists() {
        return Err(Outcome::refused(format!(
            "no journald: {} is absent, so journald does not run here",
            ctx.journald_socket.display()
        )));
    }
    which("journalctl").ok_or_else(|| {
        Outcome::refused("no journalctl: journald runs but journalctl is not installed")
    })
}

fn journalctl(bin: &Path, ctx: &Context, arg: &str) -> Command {
    let mut c = Command::new(bin);
    if let Some(d) = &ctx.journal_dir {
        c.arg(format!("--directory={}", d.display()));
    }
    c.arg(arg);
    c
}

pub fn vacuum(a: &Action, ctx: &Context) -> Outcome {
    let p: VacuumPayload = match payload(a) {
        Ok(p) => p,
        Err(o) => return o,
    };
    if let Err(e) = vacuum_size(&p.max_size) {
        return Outcome::not_run(format!("payload: {e}"));
    }
    let bin = match journald(ctx) {
        Ok(b) => b,
        Err(o) => return o,
    };
    let usage = bounded(
        journalctl(&bin, ctx, "--disk-usage"),
        Duration::from_secs(30),
    )
    .map(|o| {
        let text = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        if text.is_empty() {
            String::from_utf8_lossy(&o.stderr).trim().to_owned()
        } else {
            text
        }
    })
    .unwrap_or_else(|e| e);
    let arg = format!("--vacuum-size={}", p.max_size);
    if is_dry(a) {
        return Outcome::dry(format!(
            "would run journalctl {arg}, deleting the oldest archived journal files until they total at most {} ({usage})",
            p.max_size
        ));
    }
    match bounded(journalctl(&bin, ctx, &arg), Duration::from_secs(120)) {
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            // "Vacuuming done, freed 1.2G of archived journals from /var/log/journal."
            let freed = stderr
                .lines()
                .filter_map(|l| l.split("freed ").nth(1))
                .filter_map(|r| r.split_whitespace().next())
                .next_back()
                .unwrap_or("an unreported amount")
                .to_owned();
            let mut o = if out.status.success() {
                Outcome::succeeded(format!(
                    "ran journalctl {arg}: freed {freed} of archived journals (before: {usage})"
                ))
            } else {
                Outcome::failed(format!("journalctl {arg} exited with {}", out.status))
            };
            o.exit_code = out.status.code();
            o.stdout = rollback_json(None, serde_json::json!({ "freed": freed, "before": usage }));
            o.stderr = stderr;
            o
        }
        Err(e) => Outcome::failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_size_is_validated_strictly() {
        assert_eq!(vacuum_size("200M"), Ok(200 * MIB));
        assert_eq!(vacuum_size("1G"), Ok(1024 * MIB));
        assert_eq!(vacuum_size("2048K"), Ok(2 * MIB));
        for bad in [
            "",
            "M",
            "200",
            "200m",
            "200MB",
            "0M",
            "012M",
            "1K",
            "1000000M",
            "-5M",
            "2 M",
            "1e3M",
            "200M; rm -rf /",
            "200M --rotate",
        ] {
            assert!(vacuum_size(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
