//! `tether-local lambda`: the control plane in its deployed shape on one machine.
//!
//! Every function runs as its real Lambda binary (the `bootstrap` that
//! `bin/package` zips), on the real `lambda_runtime` / `lambda_http` entry
//! points, served by a Lambda Runtime API emulator (cargo-lambda's `watch
//! --only-lambda-apis`, which needs no Docker). This process plays the two AWS
//! parts around the functions that no emulator here provides:
//! - **the api's Function URL**: each HTTP request becomes a payload-2.0 event
//!   (the `aws_lambda_events` shape), is invoked synchronously, and the response
//!   event becomes the HTTP response. A function error or timeout is a 502, as on
//!   AWS; bodies over 6 MB are a 413.
//! - **the roles' SQS event source mappings**: batches of up to 10 records in the
//!   `aws_lambda_events` SQS shape, `ReportBatchItemFailures`: only the records not
//!   reported failed are deleted; a failed record (or a whole batch whose
//!   invocation failed) becomes visible again after the queue's visibility
//!   timeout, and the queue's redrive policy moves it to the DLQ.
//!
//! Invariants:
//! - Nothing here handles a request or a message: it converts, invokes, deletes.
//! - Functions get the environment Terraform gives them (the `TETHER_*` variables
//!   of this process) plus the variables the Lambda service sets.
//! - A function instance that exits is started again, a fresh cold start, as
//!   Lambda does after a crash. On stop every child is killed.

use anyhow::{bail, Context, Result};
use aws_lambda_events::event::lambda_function_urls::{
    LambdaFunctionUrlRequest, LambdaFunctionUrlResponse,
};
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use aws_sdk_sqs::types::QueueAttributeName;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tether_aws::{Clients, Config};
use tracing::{info, warn};

/// A Function URL's request and response payload limit.
const MAX_PAYLOAD: usize = 6 * 1024 * 1024;

/// How `tether-local lambda` is laid out.
#[derive(Debug, Clone)]
pub struct Options {
    pub addr: String,
    /// Where the function binaries are (`api`, `observer`, ...).
    pub bin_dir: PathBuf,
    /// The cargo-lambda executable.
    pub cargo_lambda: PathBuf,
    /// A directory with a `Cargo.toml` (cargo-lambda insists on one).
    pub workspace: PathBuf,
    /// One log file per function instance: `<name>-<i>.log`.
    pub log_dir: PathBuf,
    pub api_instances: usize,
    pub role_instances: usize,
    /// The api function's timeout (Terraform's `functions.api.timeout_s`).
    pub api_timeout: Duration,
    /// A role function's timeout.
    pub role_timeout: Duration,
}

/// Lambda's memory setting per function, as `infra/variables.tf` declares it.
fn memory_mb(function: &str) -> u32 {
    match function {
        "api" | "observer" => 256,
        _ => 128,
    }
}

pub async fn run(config: &Config, clients: &Clients, opts: Options) -> Result<()> {
    std::fs::create_dir_all(&opts.log_dir)
        .with_context(|| format!("creating {}", opts.log_dir.display()))?;
    let mut functions = vec![("api".to_owned(), opts.api_instances.max(1))];
    for stage in config.stage_queue_urls.keys() {
        functions.push((stage.function().to_owned(), opts.role_instances.max(1)));
    }
    for (f, _) in &functions {
        let bin = opts.bin_dir.join(f);
        if !bin.is_file() {
            bail!(
                "{} is missing: build the functions first (cargo build --workspace)",
                bin.display()
            );
        }
    }
    let port = free_port()?;
    let runtime = format!("http://127.0.0.1:{port}");
    let stop = Arc::new(AtomicBool::new(false));
    let mut emulator = tokio::process::Command::new(&opts.cargo_lambda)
        .args(["lambda", "watch", "--only-lambda-apis", "--ignore-changes"])
        .args(["-A", "127.0.0.1", "-P", &port.to_string()])
        .current_dir(&opts.workspace)
        .stdin(std::process::Stdio::null())
        .stdout(log_file(&opts.log_dir, "runtime-api")?)
        .stderr(log_file(&opts.log_dir, "runtime-api")?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "starting the Lambda Runtime API emulator ({}); install it with \
                 `pip install -r tests/requirements.txt` (cargo-lambda)",
                opts.cargo_lambda.display()
            )
        })?;
    wait_for_port(port, &mut emulator).await?;
    info!(runtime_api = %runtime, "Lambda Runtime API emulator up");

    let mut instances = Vec::new();
    for (f, n) in &functions {
        for i in 0..*n {
            instances.push(tokio::spawn(supervise(
                opts.bin_dir.join(f),
                f.clone(),
                i,
                runtime.clone(),
                opts.log_dir.clone(),
                stop.clone(),
            )));
        }
    }

    let invoker = Invoker::new(runtime.clone());
    let mut mappings = Vec::new();
    // As `serve` does: the observations queue feeds the chain only when the
    // chain's own queues are configured.
    let chain_configured = config.stage_queue_urls.len() > 1;
    for (stage, url) in config.stage_queue_urls.iter().filter(|_| chain_configured) {
        for _ in 0..opts.role_instances.max(1) {
            let m = Mapping {
                function: stage.function().to_owned(),
                queue_url: url.clone(),
                timeout: opts.role_timeout,
            };
            mappings.push(tokio::spawn(m.run(
                clients.sqs.clone(),
                invoker.clone(),
                stop.clone(),
            )));
        }
    }

    let url = FunctionUrl {
        invoker,
        timeout: opts.api_timeout,
    };
    let app = axum::Router::new()
        .fallback(forward)
        .with_state(Arc::new(url))
        .into_make_service_with_connect_info::<SocketAddr>();
    let listener = tokio::net::TcpListener::bind(&opts.addr)
        .await
        .with_context(|| format!("binding {}", opts.addr))?;
    let bound = listener.local_addr()?;
    info!(url = %format!("http://{bound}"), functions = functions.len(), "Function URL listening");
    // Tests and scripts read this line to find the port when binding :0.
    println!("listening on http://{bound}");
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::shutdown())
        .await
        .context("serving")?;
    stop.store(true, Ordering::Relaxed);
    for m in mappings {
        let _ = m.await;
    }
    for i in instances {
        i.abort();
        let _ = i.await;
    }
    let _ = emulator.kill().await;
    info!("stopped");
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn log_file(dir: &Path, name: &str) -> Result<std::fs::File> {
    let p = dir.join(format!("{name}.log"));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .with_context(|| format!("opening {}", p.display()))
}

async fn wait_for_port(port: u16, child: &mut tokio::process::Child) -> Result<()> {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the Lambda Runtime API emulator exited at start ({status}); see runtime-api.log"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the Lambda Runtime API emulator did not listen on port {port} within 30 s")
}

/// One function instance, restarted whenever it exits until `stop`.
async fn supervise(
    bin: PathBuf,
    function: String,
    index: usize,
    runtime: String,
    log_dir: PathBuf,
    stop: Arc<AtomicBool>,
) {
    let name = format!("{function}-{index}");
    while !stop.load(Ordering::Relaxed) {
        let child = log_file(&log_dir, &name).and_then(|out| {
            let err = out.try_clone()?;
            tokio::process::Command::new(&bin)
                .env(
                    "AWS_LAMBDA_RUNTIME_API",
                    format!("{runtime}/.rt/{function}"),
                )
                .env("AWS_LAMBDA_FUNCTION_NAME", &function)
                .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
                .env(
                    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                    memory_mb(&function).to_string(),
                )
                .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
                .env(
                    "AWS_LAMBDA_LOG_GROUP_NAME",
                    format!("/aws/lambda/{function}"),
                )
                .env("_HANDLER", "bootstrap")
                .stdin(std::process::Stdio::null())
                .stdout(out)
                .stderr(err)
                .kill_on_drop(true)
                .spawn()
                .context("spawn")
        });
        match child {
            Ok(mut c) => {
                info!(instance = %name, "function instance started");
                match c.wait().await {
                    Ok(status) if !stop.load(Ordering::Relaxed) => {
                        warn!(instance = %name, %status, "function instance exited; starting a fresh one")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(instance = %name, error = %e, "waiting for the instance failed")
                    }
                }
            }
            Err(e) => {
                warn!(instance = %name, error = %format!("{e:#}"), "function instance could not start")
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Synchronous invocations through the emulator's Invoke API, over one
/// connection pool.
#[derive(Debug, Clone)]
struct Invoker {
    runtime: String,
    agent: ureq::Agent,
}

#[derive(Debug, thiserror::Error)]
enum InvokeError {
    #[error("invoke failed: {0}")]
    Transport(String),
    #[error("the function failed: {0}")]
    Function(String),
}

impl Invoker {
    fn new(runtime: String) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Self { runtime, agent }
    }

    async fn invoke(
        &self,
        function: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, InvokeError> {
        let url = format!(
            "{}/2015-03-31/functions/{function}/invocations",
            self.runtime
        );
        let agent = self.agent.clone();
        tokio::task::spawn_blocking(move || {
            // The function's own timeout, as Lambda enforces it per invocation.
            let mut resp = agent
                .post(&url)
                .config()
                .timeout_global(Some(timeout))
                .build()
                .header("Content-Type", "application/json")
                .send(&payload[..])
                .map_err(|e| InvokeError::Transport(e.to_string()))?;
            let status = resp.status().as_u16();
            let function_error = resp.headers().get("x-amz-function-error").is_some();
            let body = resp
                .body_mut()
                .with_config()
                .limit(MAX_PAYLOAD as u64 + 1024)
                .read_to_vec()
                .map_err(|e| InvokeError::Transport(e.to_string()))?;
            if status != 200 || function_error {
                return Err(InvokeError::Function(
                    String::from_utf8_lossy(&body).chars().take(500).collect(),
                ));
            }
            Ok(body)
        })
        .await
        .map_err(|e| InvokeError::Transport(e.to_string()))?
    }
}

struct FunctionUrl {
    invoker: Invoker,
    timeout: Duration,
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (status, text).into_response()
}

/// The Function URL: HTTP request -> payload-2.0 event -> `api` -> HTTP response.
async fn forward(
    State(url): State<Arc<FunctionUrl>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_PAYLOAD).await else {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large");
    };
    let event = url_event(&parts, &bytes, peer);
    let payload = match serde_json::to_vec(&event) {
        Ok(p) => p,
        Err(_) => return plain(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
    };
    let out = match url.invoker.invoke("api", payload, url.timeout).await {
        Ok(out) => out,
        Err(e) => {
            warn!(error = %e, path = %parts.uri.path(), "api invocation failed");
            return plain(StatusCode::BAD_GATEWAY, "Internal Server Error");
        }
    };
    let Ok(r) = serde_json::from_slice::<LambdaFunctionUrlResponse>(&out) else {
        warn!("the api function answered with no Function URL response");
        return plain(StatusCode::BAD_GATEWAY, "Internal Server Error");
    };
    url_response(r)
}

fn url_event(
    parts: &axum::http::request::Parts,
    body: &[u8],
    peer: SocketAddr,
) -> serde_json::Value {
    let now = time::OffsetDateTime::now_utc();
    let mut http = aws_lambda_events::event::lambda_function_urls::LambdaFunctionUrlRequestContextHttpDescription::default();
    http.method = Some(parts.method.to_string());
    http.path = Some(parts.uri.path().to_owned());
    http.protocol = Some(format!("{:?}", parts.version));
    http.source_ip = Some(peer.ip().to_string());
    http.user_agent = parts
        .headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut ctx =
        aws_lambda_events::event::lambda_function_urls::LambdaFunctionUrlRequestContext::default();
    ctx.account_id = Some("anonymous".into());
    ctx.request_id = Some(uuid_like());
    ctx.apiid = Some("local".into());
    ctx.domain_name = parts
        .headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    ctx.domain_prefix = Some("local".into());
    ctx.time_epoch = (now.unix_timestamp_nanos() / 1_000_000) as i64;
    ctx.http = http;
    let mut e = LambdaFunctionUrlRequest::default();
    e.version = Some("2.0".into());
    e.raw_path = Some(parts.uri.path().to_owned());
    e.raw_query_string = Some(parts.uri.query().unwrap_or_default().to_owned());
    let mut headers = parts.headers.clone();
    let cookies: Vec<String> = headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split("; ").map(str::to_owned).collect::<Vec<_>>())
        .collect();
    headers.remove(axum::http::header::COOKIE);
    e.cookies = (!cookies.is_empty()).then_some(cookies);
    e.headers = headers;
    // Decoded, a repeated name's values joined by commas, as Function URLs do.
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(parts.uri.query().unwrap_or_default()).unwrap_or_default();
    for (k, v) in pairs {
        e.query_string_parameters
            .entry(k)
            .and_modify(|all: &mut String| {
                all.push(',');
                all.push_str(&v);
            })
            .or_insert(v);
    }
    e.request_context = ctx;
    if !body.is_empty() {
        match std::str::from_utf8(body) {
            Ok(s) => e.body = Some(s.to_owned()),
            Err(_) => {
                e.body = Some(base64::engine::general_purpose::STANDARD.encode(body));
                e.is_base64_encoded = true;
            }
        }
    }
    let mut v = serde_json::to_value(&e).unwrap_or_default();
    // Present in every Function URL event, absent from the crate's struct.
    v["routeKey"] = "$default".into();
    v["requestContext"]["routeKey"] = "$default".into();
    v["requestContext"]["stage"] = "$default".into();
    v["requestContext"]["time"] = now
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default()
        .into();
    v
}

fn url_response(r: LambdaFunctionUrlResponse) -> Response {
    let body = match (r.body, r.is_base64_encoded) {
        (None, _) => Vec::new(),
        (Some(b), false) => b.into_bytes(),
        (Some(b), true) => match base64::engine::general_purpose::STANDARD.decode(b) {
            Ok(b) => b,
            Err(_) => return plain(StatusCode::BAD_GATEWAY, "Internal Server Error"),
        },
    };
    let status = u16::try_from(r.status_code)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    for (k, v) in r.headers.iter() {
        if k != axum::http::header::CONTENT_LENGTH {
            resp.headers_mut().append(k.clone(), v.clone());
        }
    }
    for c in r.cookies {
        if let Ok(v) = HeaderValue::from_str(&c) {
            resp.headers_mut()
                .append(HeaderName::from_static("set-cookie"), v);
        }
    }
    resp
}

/// A request id in UUID form.
fn uuid_like() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// One SQS event source mapping: queue -> role function, batches of 10,
/// ReportBatchItemFailures.
#[derive(Debug, Clone)]
struct Mapping {
    function: String,
    queue_url: String,
    timeout: Duration,
}

impl Mapping {
    async fn run(self, sqs: aws_sdk_sqs::Client, invoker: Invoker, stop: Arc<AtomicBool>) {
        let arn = sqs
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .ok()
            .and_then(|o| o.attributes)
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .unwrap_or_default();
        info!(function = %self.function, queue = %self.queue_url, "event source mapping enabled");
        while !stop.load(Ordering::Relaxed) {
            let messages = tether_aws::sqs::receive_batch(&sqs, &self.queue_url, 1).await;
            if messages.is_empty() {
                continue;
            }
            let mut event = SqsEvent::default();
            event.records = messages
                .iter()
                .map(|m| {
                    let mut r = SqsMessage::default();
                    r.message_id = m.message_id.clone();
                    r.receipt_handle = m.receipt_handle.clone();
                    r.body = m.body.clone();
                    r.md5_of_body = m.md5_of_body.clone();
                    r.attributes = m
                        .attributes
                        .as_ref()
                        .map(|a| {
                            a.iter()
                                .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                                .collect::<HashMap<_, _>>()
                        })
                        .unwrap_or_default();
                    r.event_source = Some("aws:sqs".into());
                    r.event_source_arn = Some(arn.clone());
                    r.aws_region = Some("us-east-1".into());
                    r
                })
                .collect();
            let Ok(payload) = serde_json::to_vec(&event) else {
                continue;
            };
            let failed: Option<Vec<String>> = match invoker
                .invoke(&self.function, payload, self.timeout)
                .await
            {
                Ok(out) => serde_json::from_slice::<SqsBatchResponse>(&out)
                    .ok()
                    .map(|r| {
                        r.batch_item_failures
                            .into_iter()
                            .map(|f| f.item_identifier)
                            .collect()
                    }),
                Err(e) => {
                    warn!(function = %self.function, records = messages.len(), error = %e, "batch invocation failed; the batch returns after the visibility timeout");
                    None
                }
            };
            // An unparsable answer, or a failure id that names no record of the
            // batch, fails the whole batch (as Lambda does).
            let Some(failed) = failed.filter(|f| {
                f.iter()
                    .all(|id| messages.iter().any(|m| m.message_id.as_deref() == Some(id)))
            }) else {
                continue;
            };
            if !failed.is_empty() {
                info!(function = %self.function, records = messages.len(), failed = failed.len(), "batch item failures reported; they return after the visibility timeout");
            }
            let handled: Vec<String> = messages
                .iter()
                .filter(|m| {
                    !failed
                        .iter()
                        .any(|f| m.message_id.as_deref() == Some(f.as_str()))
                })
                .filter_map(|m| m.receipt_handle.clone())
                .collect();
            tether_aws::sqs::delete_handled(&sqs, &self.queue_url, handled).await;
        }
    }
}
