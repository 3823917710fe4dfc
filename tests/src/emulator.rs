//! One moto server per test binary, on a free loopback port.
//!
//! The server is started under a small shell watchdog that kills it as soon as the
//! test process is gone (the watchdog polls the parent pid every second), so no
//! emulator outlives a test run, even one killed with SIGKILL. With
//! `TETHER_AWS_ENDPOINT` set (e.g. a LocalStack), that endpoint is used instead and
//! nothing is started.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Emulator {
    pub endpoint: String,
}

static SHARED: OnceLock<Emulator> = OnceLock::new();

fn moto_server() -> PathBuf {
    if let Ok(p) = std::env::var("TETHER_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tether/venv/bin/moto_server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("moto_server")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn answers(endpoint: &str) -> bool {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    agent.get(format!("{endpoint}/moto-api/")).call().is_ok()
}

impl Emulator {
    /// The emulator shared by every test in this test binary: started on first use.
    pub fn shared() -> &'static Emulator {
        SHARED.get_or_init(|| {
            if let Ok(endpoint) = std::env::var("TETHER_AWS_ENDPOINT") {
                return Emulator { endpoint };
            }
            let port = free_port();
            let endpoint = format!("http://127.0.0.1:{port}");
            let bin = moto_server();
            let log = crate::bin_dir().join(format!("moto-{port}.log"));
            let script = format!(
                "\"$0\" -H 127.0.0.1 -p {port} >\"$1\" 2>&1 & child=$!; \
                 while kill -0 {parent} 2>/dev/null && kill -0 $child 2>/dev/null; do sleep 1; done; \
                 kill $child 2>/dev/null",
                parent = std::process::id()
            );
            let spawned = Command::new("sh")
                .arg("-c")
                .arg(script)
                .arg(&bin)
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            if let Err(e) = spawned {
                panic!("could not start {}: {e}; run `bash localstack/emulator.sh install`", bin.display());
            }
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until {
                if answers(&endpoint) {
                    return Emulator { endpoint };
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!(
                "moto server ({}) did not answer on {endpoint} within 30 s; see {} \
                 (install it with `bash localstack/emulator.sh install`)",
                bin.display(),
                log.display()
            );
        })
    }

    /// SDK configuration pointed at this endpoint (us-east-1, static test credentials).
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .load()
            .await
    }

    /// What a child process (the runner, terraform) needs to reach the emulator.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}

/// `prefix` and a random suffix: lowercase letters, digits and '-', so every test
/// gets its own resources.
pub fn unique_name(prefix: &str) -> String {
    use rand::Rng;
    let suffix: u64 = rand::rng().random();
    format!("{prefix}-{:012x}", suffix & 0xffff_ffff_ffff)
}
