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
        // Answered by the agent's instrumentation (actions::Instrument).
        "llm_calls" => return Err("LLM call summaries come from the eBPF capture".into()),
        other => return Err(format!("unknown evidence kind {other:?}")),
    };
    Ok(bounded(text))
}

/// The bundle uploaded to the server's presigned URL: the requested snapshot,
/// plus top processes, the kernel log tail and (for a unit) its journal tail.
/// Each part that cannot be had says why. At most [`MAX_BUNDLE_BYTES`] of JSON.
pub fn bundle(what: &str, unit: Option<&str>, proc_root: &Path) -> serde_json::Value {
    let part = |r: Result<String, String>| match r {
        Ok(text) => serde_json::json!({ "text": text }),
        Err(why) => serde_json::json!({ "unavailable": why }),
    };
    let mut b = serde_json::json!({
        "what": what,
        "collected_at_ms": crate::actions::now_ms(),
        "snapshot": part(collect(what, unit, proc_root)),
        "top_cpu": part(collect("top_cpu", None, proc_root)),
        "top_memory": part(collect("top_memory", None, proc_root)),
        "kernel_log_tail": part(command("dmesg", &["--ctime", "--level=err,warn"]).map(|t| tail_lines(&t, 40))),
    });
    if let Some(u) = unit {
        b["journal_tail"] = part(collect("unit_logs", Some(u), proc_root));
    }
    b
}

pub const MAX_BUNDLE_BYTES: usize = 64 * 1024;

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Uploads the bundle with a presigned PUT; `Err` says why it did not arrive.
pub fn upload(url: &str, bundle: &serde_json::Value) -> Result<(), String> {
    let mut body = serde_json::to_vec(bundle).map_err(|e| e.to_string())?;
    body.truncate(MAX_BUNDLE_BYTES);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(15)))
        .http_status_as_error(false)
        .build()
        .into();
    let resp = agent
        .put(url)
        .header("Content-Type", "application/json")
        .send(&body[..])
        .map_err(|e| format!("evidence upload failed: {e}"))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!(
            "evidence upload refused: HTTP {}",
            resp.status().as_u16()
        ))
    }
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
    fn the_bundle_is_uploaded_with_a_put_to_the_given_url() {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "http://{}/T/acme/evidence/run_1/act_1.json?X-Amz-Signature=x",
            listener.local_addr().expect("addr")
        );
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut first = String::new();
            reader.read_line(&mut first).expect("request line");
            let mut len = 0;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 2 {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).expect("body");
            let mut s = stream;
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .expect("answer");
            (first, body)
        });
        let b = bundle("disk_usage", None, Path::new("/proc"));
        upload(&url, &b).expect("upload");
        let (first, body) = server.join().expect("server");
        assert!(
            first.starts_with("PUT /T/acme/evidence/run_1/act_1.json?"),
            "{first}"
        );
        let sent: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(sent["what"], "disk_usage");
        assert!(sent["snapshot"]["text"]
            .as_str()
            .expect("snapshot")
            .contains("used%"));
        assert!(sent["top_memory"]["text"].is_string());
        assert!(
            sent["kernel_log_tail"].is_object(),
            "text or the reason it is unavailable"
        );
        assert!(upload("http://127.0.0.1:9/x", &b)
            .unwrap_err()
            .contains("evidence upload failed"));
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
