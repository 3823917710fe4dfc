//! `set_gpu_power_limit`, `restore_gpu_power_limit` and `reset_gpu`, behind
//! [`GpuControl`] so the logic runs against a fake board in tests and against
//! NVML ([`NvmlGpus`]) on a GPU host.
//!
//! Payloads (unknown fields are an error): `gpu` names the board as an index
//! (`0`, `gpu0`, `gpu.0`, `gpu:0`) or its UUID (`GPU-...`).
//! `set_gpu_power_limit`: `watts_pct` (of the board's default limit, 1 to 100)
//! or `watts`. `restore_gpu_power_limit`: `gpu`. `reset_gpu`: `gpu`.
//!
//! Invariants:
//! - No NVML (no driver, no library, no device) refuses every kind here with
//!   NVML's own error, dry runs included.
//! - A power limit outside the board's constraints is refused, never clamped.
//! - `set_gpu_power_limit` records the limit it replaces, by board UUID (first
//!   record wins), before setting; `restore_gpu_power_limit` sets exactly that
//!   limit back and then removes the record.
//! - `reset_gpu` is refused while any process holds the board (a reset would
//!   kill them); it has no rollback.

use super::{bounded, is_dry, payload, rollback_json, which, Context, Outcome};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use std::process::Command;
use std::time::Duration;
use tether_proto::{Action, ActionKind};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    #[error("no NVML: {0}")]
    Unavailable(String),
    #[error("no privilege: {0}")]
    NoPermission(String),
    #[error("not supported by this board or driver: {0}")]
    NotSupported(String),
    #[error("{0}")]
    Device(String),
}

/// What remediation needs of the GPUs.
pub trait GpuControl {
    fn count(&self) -> Result<u32, GpuError>;
    fn uuid(&self, index: u32) -> Result<String, GpuError>;
    /// The limit in force, in milliwatts.
    fn power_limit_mw(&self, index: u32) -> Result<u32, GpuError>;
    fn default_power_limit_mw(&self, index: u32) -> Result<u32, GpuError>;
    /// (min, max) milliwatts the board accepts.
    fn power_limit_range_mw(&self, index: u32) -> Result<(u32, u32), GpuError>;
    fn set_power_limit_mw(&mut self, index: u32, mw: u32) -> Result<(), GpuError>;
    /// (pid, bytes of GPU memory) of every process on the board.
    fn processes(&self, index: u32) -> Result<Vec<(u32, u64)>, GpuError>;
    /// Resets the board; returns what the reset tool said.
    fn reset(&mut self, index: u32) -> Result<String, GpuError>;
}

/// NVML, opened at run time.
#[derive(Debug)]
pub struct NvmlGpus {
    nvml: Nvml,
}

fn nvml_err(what: &str, e: NvmlError) -> GpuError {
    match e {
        NvmlError::NoPermission => GpuError::NoPermission(format!("{what}: {e}")),
        NvmlError::NotSupported => GpuError::NotSupported(format!("{what}: {e}")),
        NvmlError::LibloadingError(_)
        | NvmlError::FailedToLoadSymbol(_)
        | NvmlError::DriverNotLoaded
        | NvmlError::LibraryNotFound => GpuError::Unavailable(e.to_string()),
        e => GpuError::Device(format!("{what}: {e}")),
    }
}

impl NvmlGpus {
    /// Loads NVML; `Err(Unavailable)` with NVML's reason on a host without it.
    pub fn open() -> Result<Self, GpuError> {
        Nvml::init()
            .map(|nvml| Self { nvml })
            .map_err(|e| GpuError::Unavailable(e.to_string()))
    }

    fn device(&self, index: u32) -> Result<nvml_wrapper::Device<'_>, GpuError> {
        self.nvml
            .device_by_index(index)
            .map_err(|e| nvml_err(&format!("gpu {index}"), e))
    }
}

impl GpuControl for NvmlGpus {
    fn count(&self) -> Result<u32, GpuError> {
        self.nvml
            .device_count()
            .map_err(|e| nvml_err("device count", e))
    }

    fn uuid(&self, index: u32) -> Result<String, GpuError> {
        self.device(index)?.uuid().map_err(|e| nvml_err("uuid", e))
    }

    fn power_limit_mw(&self, index: u32) -> Result<u32, GpuError> {
        self.device(index)?
            .power_management_limit()
            .map_err(|e| nvml_err("power limit", e))
    }

    fn default_power_limit_mw(&self, index: u32) -> Result<u32, GpuError> {
        self.device(index)?
            .power_management_limit_default()
            .map_err(|e| nvml_err("default power limit", e))
    }

    fn power_limit_range_mw(&self, index: u32) -> Result<(u32, u32), GpuError> {
        self.device(index)?
            .power_management_limit_constraints()
            .map(|c| (c.min_limit, c.max_limit))
            .map_err(|e| nvml_err("power limit constraints", e))
    }

    fn set_power_limit_mw(&mut self, index: u32, mw: u32) -> Result<(), GpuError> {
        self.device(index)?
            .set_power_management_limit(mw)
            .map_err(|e| nvml_err("setting the power limit", e))
    }

    fn processes(&self, index: u32) -> Result<Vec<(u32, u64)>, GpuError> {
        let d = self.device(index)?;
        let mut out = Vec::new();
        for list in [
            d.running_compute_processes(),
            d.running_graphics_processes(),
        ] {
            for p in list.map_err(|e| nvml_err("running processes", e))? {
                let bytes = match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => b,
                    UsedGpuMemory::Unavailable => 0,
                };
                out.push((p.pid, bytes));
            }
        }
        Ok(out)
    }

    /// NVML has no full reset call: `nvidia-smi --gpu-reset` does it.
    fn reset(&mut self, index: u32) -> Result<String, GpuError> {
        let smi = which("nvidia-smi").ok_or_else(|| {
            GpuError::NotSupported(
                "nvidia-smi is not installed: NVML itself has no reset call".into(),
            )
        })?;
        let mut c = Command::new(smi);
        c.args(["--gpu-reset", "-i", &index.to_string()]);
        let out = bounded(c, Duration::from_secs(120)).map_err(GpuError::Device)?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text.trim().to_owned())
        } else {
            Err(GpuError::Device(format!(
                "nvidia-smi --gpu-reset -i {index} exited with {}: {}",
                out.status,
                text.trim()
            )))
        }
    }
}

/// Every process on every board: (pid, bytes), for `top_gpu_memory`.
pub fn all_processes(g: &dyn GpuControl) -> Result<Vec<(u32, u64)>, String> {
    let n = g.count().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for i in 0..n {
        out.extend(g.processes(i).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// The board `gpu` names: `(index, uuid)`.
fn board(g: &dyn GpuControl, gpu: &str) -> Result<(u32, String), Outcome> {
    let n = g.count().map_err(|e| Outcome::refused(e.to_string()))?;
    if n == 0 {
        return Err(Outcome::refused("no GPU: NVML sees no device"));
    }
    let index = if gpu.starts_with("GPU-") {
        (0..n)
            .find(|i| g.uuid(*i).is_ok_and(|u| u == gpu))
            .ok_or_else(|| Outcome::not_run(format!("no GPU with UUID {gpu} on this host")))?
    } else {
        let digits = ["gpu.", "gpu:", "gpu"]
            .iter()
            .find_map(|p| gpu.strip_prefix(p))
            .unwrap_or(gpu);
        let i: u32 = digits.parse().map_err(|_| {
            Outcome::not_run(format!(
                "payload: gpu {gpu:?} is not an index (0, gpu0, gpu.0) or a UUID (GPU-...)"
            ))
        })?;
        if i >= n {
            return Err(Outcome::not_run(format!("no GPU {i}: this host has {n}")));
        }
        i
    };
    let uuid = g.uuid(index).map_err(|e| Outcome::not_run(e.to_string()))?;
    Ok((index, uuid))
}

fn watts(mw: u32) -> String {
    format!("{:.0} W", f64::from(mw) / 1000.0)
}

fn subject(uuid: &str) -> String {
    format!("gpu-power:{uuid}")
}

fn gpu_failure(e: GpuError) -> Outcome {
    match e {
        GpuError::Unavailable(_) | GpuError::NoPermission(_) | GpuError::NotSupported(_) => {
            Outcome {
                ran: true,
                ..Outcome::refused(e.to_string())
            }
        }
        GpuError::Device(_) => Outcome::failed(e.to_string()),
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PowerPayload {
    gpu: String,
    watts_pct: Option<u32>,
    watts: Option<u32>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GpuPayload {
    gpu: String,
}

pub fn set_power_limit(a: &Action, ctx: &Context, g: &mut dyn GpuControl) -> Outcome {
    let p: PowerPayload = match payload(a) {
        Ok(p) => p,
        Err(o) => return o,
    };
    let (index, uuid) = match board(g, &p.gpu) {
        Ok(b) => b,
        Err(o) => return o,
    };
    let facts = g.power_limit_mw(index).and_then(|now| {
        Ok((
            now,
            g.default_power_limit_mw(index)?,
            g.power_limit_range_mw(index)?,
        ))
    });
    let (now, default, (min, max)) = match facts {
        Ok(f) => f,
        Err(e) => return Outcome::refused(format!("GPU {index} ({uuid}): {e}")),
    };
    let (target, how) = match (p.watts_pct, p.watts) {
        (Some(pct), None) if (1..=100).contains(&pct) => (
            (u64::from(default) * u64::from(pct) / 100) as u32,
            format!("{pct} % of the default {}", watts(default)),
        ),
        (None, Some(w)) if w > 0 => (w.saturating_mul(1000), "as asked".to_owned()),
        _ => {
            return Outcome::not_run(
                "payload needs exactly one of watts_pct (1 to 100) or watts (above 0)",
            )
        }
    };
    if target < min || target > max {
        return Outcome::refused(format!(
            "GPU {index} ({uuid}) accepts power limits from {} to {}: {} ({how}) is outside",
            watts(min),
            watts(max),
            watts(target)
        ));
    }
    let change = format!(
        "GPU {index} ({uuid}) power limit {} -> {} ({how})",
        watts(now),
        watts(target)
    );
    if is_dry(a) {
        return Outcome::dry(format!("would set {change}"));
    }
    let sub = subject(&uuid);
    let record = serde_json::json!({ "gpu": uuid, "index": index, "previous_mw": now });
    let record = match ctx.records().keep_first(&sub, record) {
        Ok(r) => r,
        Err(e) => return Outcome::not_run(format!("not set: {e}")),
    };
    let stdout = rollback_json(
        Some((
            ActionKind::RESTORE_GPU_POWER_LIMIT,
            serde_json::json!({ "gpu": uuid }),
        )),
        record,
    );
    match g.set_power_limit_mw(index, target) {
        Ok(()) => Outcome::succeeded(format!("set {change}; restore_gpu_power_limit undoes it"))
            .with_stdout(stdout),
        Err(e) => gpu_failure(e).with_stdout(stdout),
    }
}

pub fn restore_power_limit(a: &Action, ctx: &Context, g: &mut dyn GpuControl) -> Outcome {
    let p: GpuPayload = match payload(a) {
        Ok(p) => p,
        Err(o) => return o,
    };
    let (index, uuid) = match board(g, &p.gpu) {
        Ok(b) => b,
        Err(o) => return o,
    };
    let sub = subject(&uuid);
    let previous = match ctx.records().load(&sub) {
        Ok(Some(r)) => r["previous_mw"]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok()),
        Ok(None) => {
            let msg = format!("no power limit of GPU {index} ({uuid}) is recorded");
            return if is_dry(a) {
                Outcome::dry(format!("would change nothing: {msg}"))
            } else {
                Outcome::succeeded(format!("nothing to restore: {msg}"))
            };
        }
        Err(e) => return Outcome::not_run(e.to_string()),
    };
    let Some(previous) = previous else {
        return Outcome::not_run(format!("the record of GPU {uuid} has no previous_mw"));
    };
    let now = g
        .power_limit_mw(index)
        .map(watts)
        .unwrap_or_else(|e| e.to_string());
    let change = format!(
        "GPU {index} ({uuid}) power limit {now} -> {} (the limit before Tether changed it)",
        watts(previous)
    );
    if is_dry(a) {
        return Outcome::dry(format!("would set {change}"));
    }
    if let Err(e) = g.set_power_limit_mw(index, previous) {
        return gpu_failure(e);
    }
    if let Err(e) = ctx.records().remove(&sub) {
        return Outcome::failed(format!("set {change}, but {e}"));
    }
    Outcome::succeeded(format!("set {change}")).with_stdout(rollback_json(
        None,
        serde_json::json!({ "gpu": uuid, "previous_mw": previous }),
    ))
}

pub fn reset(a: &Action, _ctx: &Context, g: &mut dyn GpuControl) -> Outcome {
    let p: GpuPayload = match payload(a) {
        Ok(p) => p,
        Err(o) => return o,
    };
    let (index, uuid) = match board(g, &p.gpu) {
        Ok(b) => b,
        Err(o) => return o,
    };
    let users = match g.processes(index) {
        Ok(u) => u,
        Err(e) => return Outcome::refused(format!("GPU {index} ({uuid}): {e}")),
    };
    if !users.is_empty() {
        let pids: Vec<String> = users.iter().map(|(pid, _)| pid.to_string()).collect();
        return Outcome::refused(format!(
            "{} process(es) use GPU {index} ({uuid}): pids {}; a reset would kill them, stop them first",
            users.len(),
            pids.join(", ")
        ));
    }
    if is_dry(a) {
        return Outcome::dry(format!(
            "would reset GPU {index} ({uuid}); no process uses it"
        ));
    }
    match g.reset(index) {
        Ok(said) => Outcome::succeeded(format!("reset GPU {index} ({uuid}): {said}"))
            .with_stdout(rollback_json(None, serde_json::json!({ "gpu": uuid }))),
        Err(e) => gpu_failure(e),
    }
}
