//! GPU telemetry through NVML, opened at run time.
//!
//! Invariants:
//! - No GPU, no driver, or an NVML that fails to start is a collector state
//!   (`no GPU: <reason>`), never an error: the agent runs the same on every host.
//! - Per-device failures (a metric a board does not support) skip that metric.
//! - XID errors are counted by a background thread waiting on NVML's event set,
//!   so none is missed between windows; each window reports the new ones.

use crate::state::Collector;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Most devices reported per window.
const MAX_DEVICES: u32 = 16;
/// Most processes reported per device.
const MAX_PROCS: usize = 8;

#[derive(Debug)]
pub struct Gpu {
    nvml: Result<Nvml, String>,
    xids: Arc<AtomicU64>,
    xids_seen: u64,
}

/// One GPU sample's collector state and device names.
#[derive(Debug)]
pub struct GpuSample {
    pub collector: Collector,
    pub names: Vec<String>,
}

impl Gpu {
    /// Loads NVML; on a host without one this is [`Gpu::absent`] with the reason.
    pub fn open() -> Self {
        let xids = Arc::new(AtomicU64::new(0));
        match Nvml::init() {
            Ok(nvml) => {
                watch_xids(xids.clone());
                Self {
                    nvml: Ok(nvml),
                    xids,
                    xids_seen: 0,
                }
            }
            Err(e) => Self::absent(&e.to_string()),
        }
    }

    pub fn absent(reason: &str) -> Self {
        Self {
            nvml: Err(reason.to_owned()),
            xids: Arc::new(AtomicU64::new(0)),
            xids_seen: 0,
        }
    }

    pub fn sample(&mut self, m: &mut BTreeMap<String, f64>, events: &mut Vec<String>) -> GpuSample {
        let collector = |state: &str, reason: String| Collector {
            name: "gpu".into(),
            state: state.into(),
            reason,
        };
        let nvml = match &self.nvml {
            Ok(n) => n,
            Err(reason) => {
                return GpuSample {
                    collector: collector("unavailable", format!("no GPU: {reason}")),
                    names: vec![],
                }
            }
        };
        let count = match nvml.device_count() {
            Ok(0) => {
                return GpuSample {
                    collector: collector("unavailable", "no GPU: NVML sees no device".into()),
                    names: vec![],
                }
            }
            Ok(n) => n.min(MAX_DEVICES),
            Err(e) => {
                return GpuSample {
                    collector: collector("unavailable", format!("no GPU: {e}")),
                    names: vec![],
                }
            }
        };
        let mut names = Vec::new();
        for i in 0..count {
            let Ok(d) = nvml.device_by_index(i) else {
                continue;
            };
            names.push(d.name().unwrap_or_else(|_| format!("gpu{i}")));
            let mut put = |k: &str, v: f64| {
                m.insert(format!("gpu.{i}.{k}"), v);
            };
            if let Ok(u) = d.utilization_rates() {
                put("util_pct", f64::from(u.gpu));
                put("mem_util_pct", f64::from(u.memory));
            }
            if let Ok(mem) = d.memory_info() {
                put("mem_used_bytes", mem.used as f64);
                put("mem_total_bytes", mem.total as f64);
            }
            if let Ok(t) = d.temperature(TemperatureSensor::Gpu) {
                put("temp_c", f64::from(t));
            }
            if let Ok(p) = d.power_usage() {
                put("power_w", f64::from(p) / 1000.0);
            }
            for (k, kind) in [
                ("ecc_corrected", MemoryError::Corrected),
                ("ecc_uncorrected", MemoryError::Uncorrected),
            ] {
                if let Ok(n) = d.total_ecc_errors(kind, EccCounter::Volatile) {
                    put(k, n as f64);
                }
            }
            if let Ok(procs) = d.running_compute_processes() {
                for p in procs.iter().take(MAX_PROCS) {
                    if let UsedGpuMemory::Used(bytes) = p.used_gpu_memory {
                        put(&format!("proc.{}.mem_bytes", p.pid), bytes as f64);
                    }
                }
            }
        }
        let xids = self.xids.load(Ordering::Relaxed);
        if xids > self.xids_seen {
            m.insert("gpu.xid_errors".into(), (xids - self.xids_seen) as f64);
            events.push("gpu_xid".into());
        }
        self.xids_seen = xids;
        GpuSample {
            collector: collector("ok", format!("{count} device(s)")),
            names,
        }
    }
}

/// Counts critical XID errors on every device, for the life of the process.
fn watch_xids(count: Arc<AtomicU64>) {
    let spawned = std::thread::Builder::new()
        .name("gpu-xid".into())
        .spawn(move || {
            use nvml_wrapper::bitmasks::event::EventTypes;
            let Ok(nvml) = Nvml::init() else { return };
            let Ok(mut set) = nvml.create_event_set() else {
                return;
            };
            for i in 0..nvml.device_count().unwrap_or(0).min(MAX_DEVICES) {
                if let Ok(d) = nvml.device_by_index(i) {
                    match d.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                        Ok(s) => set = s,
                        Err(e) => {
                            // The failed call consumed the set: start a fresh one.
                            eprintln!("tether-agent: gpu{i}: XID events unavailable: {}", e.error);
                            let Ok(fresh) = nvml.create_event_set() else {
                                return;
                            };
                            set = fresh;
                        }
                    }
                }
            }
            loop {
                match set.wait(5_000) {
                    Ok(_) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(nvml_wrapper::error::NvmlError::Timeout) => {}
                    Err(_) => std::thread::sleep(std::time::Duration::from_secs(5)),
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("tether-agent: cannot start the GPU XID thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine has no GPU and no NVML: the collector says so, nothing fails.
    #[test]
    fn without_nvml_the_collector_reports_no_gpu() {
        if std::path::Path::new("/dev/nvidia0").exists() {
            return; // a GPU host: covered by the device test run instead
        }
        let mut g = Gpu::open();
        let mut m = BTreeMap::new();
        let mut events = Vec::new();
        let s = g.sample(&mut m, &mut events);
        assert_eq!(s.collector.name, "gpu");
        assert_eq!(s.collector.state, "unavailable");
        assert!(
            s.collector.reason.starts_with("no GPU: "),
            "{}",
            s.collector.reason
        );
        assert!(m.is_empty());
        assert!(events.is_empty());
        assert!(s.names.is_empty());
    }
}
