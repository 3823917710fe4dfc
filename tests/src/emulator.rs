//! Starts one moto server per test binary on a free loopback port, and stops it when
//! the test binary ends, however it ends.
//!
//! With `TETHER_AWS_ENDPOINT` set (e.g. a LocalStack), that endpoint is used instead
//! and nothing is started.
//!
//! Which moto: `TETHER_MOTO_SERVER` (a path or a name on `PATH`), else
//! `.tether/venv/bin/moto_server` in the workspace (what `localstack/emulator.sh
//! install` creates from the pinned `localstack/requirements.txt`), else
//! `moto_server` on `PATH`.
//!
//! Lifetime: moto is started by a small `sh` watchdog whose standard input is a pipe.
//! The only write end of that pipe lives in this process (in the `'static` shared
//! emulator; std opens pipes close-on-exec, so no other child inherits it). When the
//! test binary exits, normally, by panic or by SIGKILL, the kernel closes the write
//! end, the watchdog's `read` sees end-of-file, and it kills moto. No polling of pids
//! (so no pid-reuse hazard), no `libc`, no `unsafe`. While the test binary runs, the
//! watchdog also waits on moto, so a moto that dies at start-up (a taken port, a
//! broken install) is seen at once and reported with its log.
//!
//! Its output goes to `target/<profile>/moto-<port>.log`.
//!
//! Per-service endpoints: `TETHER_AWS_ENDPOINT_SQS`, `TETHER_AWS_ENDPOINT_S3` and
//! `TETHER_AWS_ENDPOINT_SECRETSMANAGER` put that service on another emulator
//! (the LocalStack lane: SQS, S3 and Secrets Manager on LocalStack's host mode,
//! DynamoDB on moto). Child processes get them as the standard
//! `AWS_ENDPOINT_URL_<SERVICE>` variables; the harness's own clients come from
//! [`Emulator::sdk_config_for`].

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// An AWS endpoint for the tests: a moto server this process started, or the one in
/// `TETHER_AWS_ENDPOINT`.
#[derive(Debug)]
pub struct Emulator {
    /// `http://127.0.0.1:<port>`, or `TETHER_AWS_ENDPOINT`.
    pub endpoint: String,
    /// Services on another endpoint (`sqs`, `s3`, `secretsmanager`).
    pub services: std::collections::BTreeMap<String, String>,
    /// The watchdog, whose stdin's write end we hold: closing it (at process exit)
    /// stops moto. Kept, not waited for: it lives as long as this test process.
    /// `None` for an external endpoint.
    _watchdog: Option<Child>,
}

static SHARED: OnceLock<Emulator> = OnceLock::new();

const START_DEADLINE: Duration = Duration::from_secs(30);
const INSTALL_HINT: &str = "run `bash localstack/emulator.sh install` (installs the pinned moto \
     into .tether/venv), or set TETHER_MOTO_SERVER to a moto_server executable, or \
     TETHER_AWS_ENDPOINT to a running emulator";

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The moto_server executable, or a panic that says how to get one.
fn moto_server() -> PathBuf {
    if let Ok(p) = std::env::var("TETHER_MOTO_SERVER") {
        let found = if p.contains('/') {
            Some(PathBuf::from(&p)).filter(|p| p.is_file())
        } else {
            on_path(&p)
        };
        return found.unwrap_or_else(|| {
            panic!("TETHER_MOTO_SERVER={p} is not an existing file or a command on PATH; {INSTALL_HINT}")
        });
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tether/venv/bin/moto_server");
    if venv.is_file() {
        return venv;
    }
    on_path("moto_server").unwrap_or_else(|| {
        panic!(
            "no moto server: neither {} nor `moto_server` on PATH exists; {INSTALL_HINT}",
            venv.display()
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A moto server answers its dashboard API.
fn answers(endpoint: &str) -> bool {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    agent
        .get(format!("{endpoint}/moto-api/"))
        .call()
        .map(|r| r.status().is_success())
        .unwrap_or(false)
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The watchdog: start moto, kill it on EOF of stdin (this process gone), and exit
/// when moto exits. `$0` is moto_server, `$1` the log file.
fn watchdog_script(port: u16) -> String {
    format!(
        r#"exec 3<&0
"$0" -H 127.0.0.1 -p {port} </dev/null 3<&- >"$1" 2>&1 &
moto=$!
{{ while read -r _line <&3; do :; done; kill "$moto" 2>/dev/null; }} &
reader=$!
exec 3<&-
wait "$moto"
status=$?
kill "$reader" 2>/dev/null
exit "$status""#
    )
}

/// Starts moto on `port` and waits until it answers. Err(log tail) when it exited
/// at start (e.g. the port was taken meanwhile); panics when it hangs.
fn start_moto(bin: &Path, port: u16) -> Result<Emulator, String> {
    let endpoint = format!("http://127.0.0.1:{port}");
    let log = crate::bin_dir().join(format!("moto-{port}.log"));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(watchdog_script(port))
        .arg(bin)
        .arg(&log)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("could not run sh to start {}: {e}", bin.display()));
    let until = Instant::now() + START_DEADLINE;
    loop {
        if answers(&endpoint) {
            return Ok(Emulator {
                endpoint,
                services: service_endpoints(),
                _watchdog: Some(child),
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "moto server ({}) exited at start ({status}); {}:\n{}",
                bin.display(),
                log.display(),
                log_tail(&log)
            ));
        }
        if Instant::now() >= until {
            drop(child.stdin.take()); // stops it
            let _ = child.wait();
            panic!(
                "moto server ({}) did not answer on {endpoint} within {} s; {}:\n{}\n{INSTALL_HINT}",
                bin.display(),
                START_DEADLINE.as_secs(),
                log.display(),
                log_tail(&log)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Emulator {
    /// The emulator shared by every test in this test binary: started on first use.
    /// If `TETHER_AWS_ENDPOINT` is set, uses that instead (e.g. LocalStack).
    pub fn shared() -> &'static Emulator {
        SHARED.get_or_init(|| {
            if let Ok(endpoint) = std::env::var("TETHER_AWS_ENDPOINT") {
                return Emulator {
                    endpoint: endpoint.trim_end_matches('/').to_owned(),
                    services: service_endpoints(),
                    _watchdog: None,
                };
            }
            let bin = moto_server();
            // A port found free can be taken before moto binds it: try a few.
            let mut errors = Vec::new();
            for _ in 0..3 {
                match start_moto(&bin, free_port()) {
                    Ok(emu) => return emu,
                    Err(e) => errors.push(e),
                }
            }
            panic!(
                "the moto server did not start:\n{}\n{INSTALL_HINT}",
                errors.join("\n---\n")
            );
        })
    }

    /// aws_config::SdkConfig pointed at this endpoint (region us-east-1, static test
    /// credentials). S3 clients built from it still need `force_path_style(true)`.
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

    /// Like [`Self::sdk_config`], for one service (`sqs`, `s3`, `secretsmanager`,
    /// `dynamodb`): its own endpoint when the lane puts it elsewhere.
    pub async fn sdk_config_for(&self, service: &str) -> aws_config::SdkConfig {
        let endpoint = self.endpoint_for(service);
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .load()
            .await
    }

    /// The endpoint serving `service`.
    pub fn endpoint_for(&self, service: &str) -> &str {
        self.services
            .get(service)
            .map_or(self.endpoint.as_str(), String::as_str)
    }

    /// Environment variables a child process (the runner, terraform) needs to reach
    /// it: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION (and
    /// AWS_EC2_METADATA_DISABLED, so no SDK probes for instance credentials).
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
        .chain(self.services.iter().map(|(svc, url)| {
            // The SDK's variable names the service by its id, spaces as '_'.
            let id = if svc == "secretsmanager" {
                "SECRETS_MANAGER".to_owned()
            } else {
                svc.to_uppercase()
            };
            (format!("AWS_ENDPOINT_URL_{id}"), url.clone())
        }))
        .collect()
    }
}

/// `TETHER_AWS_ENDPOINT_<SERVICE>` for the services a lane may move.
fn service_endpoints() -> std::collections::BTreeMap<String, String> {
    ["sqs", "s3", "secretsmanager"]
        .into_iter()
        .filter_map(|svc| {
            std::env::var(format!("TETHER_AWS_ENDPOINT_{}", svc.to_uppercase()))
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| (svc.to_owned(), v.trim_end_matches('/').to_owned()))
        })
        .collect()
}

/// `prefix`, '-' and a random 12-digit hex suffix (lowercase letters, digits and
/// '-'), so every test gets its own resources.
pub fn unique_name(prefix: &str) -> String {
    use rand::Rng;
    let suffix: u64 = rand::rng().random();
    format!("{prefix}-{:012x}", suffix & 0xffff_ffff_ffff)
}
