//! Test harness for the end-to-end suites: an AWS emulator per test binary, AWS
//! resources per test, the real `tether-local` binary as a child process, and a
//! plain HTTP client. Nothing here fakes AWS: every call crosses the emulator's wire
//! protocol.

pub mod emulator;
pub mod http;
pub mod llm;
pub mod replay;
pub mod runner;
pub mod stack;

pub use emulator::{unique_name, Emulator};
pub use http::Http;
pub use runner::{Runner, Shape};
pub use stack::Stack;

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The workspace root (where `Cargo.toml` and `.tether/` are).
pub fn workspace_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .expect("workspace dir")
}

/// The directory holding the workspace's built binaries (`target/debug`), found
/// from the running test executable (`target/debug/deps/<test>`), so any
/// `CARGO_TARGET_DIR` works.
pub fn bin_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(std::path::Path::to_path_buf)
        .expect("target dir")
}

/// A workspace binary, with a clear message when it was not built first.
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` before the tests (bin/test does)",
        p.display()
    );
    p
}
