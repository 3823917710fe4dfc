//! Builds the kernel-side eBPF programs (the workspace's top-level `bpf/*.c`)
//! with clang into `OUT_DIR`, where `src/ebpf.rs` embeds the object. Objects are
//! never committed.
//!
//! Without clang the agent still builds: the object is left empty and the agent
//! reports eBPF "unavailable: built without its eBPF object" at run time.
//! `TETHER_REQUIRE_BPF=1` (set by bin/test and CI) turns that into a build error,
//! so the tested build always carries the real object.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into()));
    let obj = out.join("tether.bpf.o");
    for f in ["../bpf/tether.bpf.c", "../bpf/record.h"] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=TETHER_REQUIRE_BPF");
    println!("cargo:rerun-if-env-changed=CLANG");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => ("arm64", "aarch64-linux-gnu"),
        _ => ("x86", "x86_64-linux-gnu"),
    };
    let built = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-D__TARGET_ARCH_{}", arch.0))
        .arg(format!("-I/usr/include/{}", arch.1))
        .args(["-c", "../bpf/tether.bpf.c", "-o"])
        .arg(&obj)
        .output();
    let why = match built {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "{clang} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!(
            "{clang} not runnable ({e}); apt-get install clang libbpf-dev"
        )),
    };
    if let Some(why) = why {
        if std::env::var("TETHER_REQUIRE_BPF").as_deref() == Ok("1") {
            panic!("TETHER_REQUIRE_BPF=1 but the eBPF object did not build: {why}");
        }
        println!("cargo:warning=building tether-agent without eBPF: {why}");
        let _ = std::fs::write(&obj, b"");
        println!(
            "cargo:rustc-env=TETHER_BPF_MISSING={}",
            why.replace('\n', " ")
        );
    } else {
        println!("cargo:rustc-env=TETHER_BPF_MISSING=");
    }
}
