//! `collect_evidence`: a read-only snapshot an incident's verifier and the
//! on-call engineer can read, returned in the action result.
//!
//! Invariants: it reads only (`/proc`, `statvfs`, `journalctl`, `nvidia-smi`);
//! the text is bounded ([`MAX_BYTES`]); a kind this host cannot answer says why
//! instead of returning nothing.

use crate::telemetry::{mounts, proc_stat};
use std::path::Path;
use std::process::Command;

pub const MAX_BYTES: usize = 4096;
const TOP: usize = 10;

/// What a kind of evidence yields; `Err` says why it cannot be had here.
pub fn collect(what: &str, unit: Option<&str>, proc_root: &Path) -> Result<String, String> {
    let text = match what {
        "disk_usage" => disk_usage(proc_root)?,
        "top_memory" => top(proc_root, false)?,
        "top_cpu" => top(proc_root, true)?,
        "top_io" => std::fs::read_to_string(proc_root.join("diskstats"))
            .map_err(|e| format!("/proc/diskstats: {e}"))?
            .lines()
            .filter(|l| !l.contains(" loop") && !l.contains(" ram"))
            .map(|l| l.split_whitespace().take(14).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n"),
        "unit_logs" => {
            let unit = unit.ok_or("unit_logs needs a payload unit (systemd:<name>.service)")?;
            command("journalctl", &["-u", unit, "-n", "50", "--no-pager", "-o", "short-iso"])?
        }
        "gpu" => command(
            "nvidia-smi",
            &[
                "--query-gpu=index,name,temperature.gpu,utilization.gpu,memory.used,memory.total,ecc.errors.uncorrected.volatile.total",
                "--format=csv",
            ],
        )
        .map_err(|e| format!("no GPU evidence: {e}"))?,
        "llm_calls" => {
            return Err(
                "LLM call summaries need eBPF instrumentation, which this agent version does not have"
                    .into(),
            )
        }
        other => return Err(format!("unknown evidence kind {other:?}")),
    };
    Ok(bounded(text))
}

fn bounded(mut s: String) -> String {
    if s.len() > MAX_BYTES {
        let mut cut = MAX_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("\n[truncated]");
    }
    s
}

fn command(bin: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .map_err(|e| format!("{bin}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{bin} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn disk_usage(proc_root: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(proc_root.join("mounts"))
        .map_err(|e| format!("/proc/mounts: {e}"))?;
    let mut lines = vec!["mount used% used_gib total_gib".to_owned()];
    for mp in mounts(&text) {
        match rustix::fs::statvfs(mp.as_str()) {
            Ok(v) => {
                let total = v.f_blocks.saturating_mul(v.f_frsize) as f64;
                let free = v.f_bavail.saturating_mul(v.f_frsize) as f64;
                let used = (total - free).max(0.0);
                let gib = 1024.0 * 1024.0 * 1024.0;
                lines.push(format!(
                    "{mp} {:.1} {:.1} {:.1}",
                    100.0 * used / total.max(1.0),
                    used / gib,
                    total / gib
                ));
            }
            Err(e) => lines.push(format!("{mp} unreadable: {e}")),
        }
    }
    Ok(lines.join("\n"))
}

/// The top processes by cumulative CPU ticks or by resident memory.
fn top(proc_root: &Path, by_cpu: bool) -> Result<String, String> {
    let dir = std::fs::read_dir(proc_root).map_err(|e| format!("{}: {e}", proc_root.display()))?;
    let mut rows: Vec<(u64, u32, String)> = dir
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let (comm, ticks, pages) = proc_stat(&stat)?;
            Some((if by_cpu { ticks } else { pages * 4096 }, pid, comm))
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    let head = if by_cpu {
        "pid comm cpu_seconds_since_start"
    } else {
        "pid comm rss_mib"
    };
    let mut lines = vec![head.to_owned()];
    for (v, pid, comm) in rows.into_iter().take(TOP) {
        lines.push(if by_cpu {
            format!("{pid} {comm} {:.1}", v as f64 / 100.0)
        } else {
            format!("{pid} {comm} {:.1}", v as f64 / 1024.0 / 1024.0)
        });
    }
    Ok(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_come_from_the_real_host_and_stay_bounded() {
        let proc_root = Path::new("/proc");
        let mem = collect("top_memory", None, proc_root).expect("top_memory");
        assert!(mem.starts_with("pid comm rss_mib\n"), "{mem}");
        let cpu = collect("top_cpu", None, proc_root).expect("top_cpu");
        assert!(cpu.lines().count() > 1, "{cpu}");
        let disk = collect("disk_usage", None, proc_root).expect("disk_usage");
        assert!(disk.lines().any(|l| l.starts_with("/ ")), "{disk}");
        assert!(bounded("x".repeat(10_000)).len() < MAX_BYTES + 20);
    }

    #[test]
    fn what_cannot_be_had_says_why() {
        let p = Path::new("/proc");
        assert!(collect("llm_calls", None, p).unwrap_err().contains("eBPF"));
        assert!(collect("unit_logs", None, p)
            .unwrap_err()
            .contains("needs a payload unit"));
        assert!(collect("nope", None, p)
            .unwrap_err()
            .contains("unknown evidence kind"));
    }
}
