//! `tether-local`: the control plane on one machine, against an AWS emulator (or a
//! real account) reached through the standard AWS configuration.
//!
//! - `tether-local serve [--addr 127.0.0.1:8080]`: the `api` router over TCP, plus
//!   `GET /_local/aws-calls` (the AWS calls made so far, per operation; local only,
//!   never deployed), and every incident role whose queue is configured as an SQS
//!   consumer (`TETHER_LOCAL_RETRY_S`, default 2: how soon a failed message is
//!   retried; `TETHER_LOCAL_RECORD_OBSERVATIONS=FILE` appends every observation
//!   message to FILE, the corpus the replay harness reads). Stops cleanly on
//!   SIGTERM or Ctrl-C.
//! - `tether-local bootstrap --tenant T [--uses N]`: creates an admin API key and an
//!   enrollment token for a tenant directly in the table, and prints them as JSON:
//!   the first credentials of a fresh installation.
//! - `tether-local lambda [--addr 127.0.0.1:8080] [--api-instances 2]
//!   [--role-instances 1] [--bin-dir DIR] [--log-dir DIR] [--cargo-lambda PATH]`:
//!   the deployed shape instead: every function's real Lambda binary under a
//!   Lambda Runtime API emulator, with this process playing the Function URL and
//!   the SQS event source mappings (see `lambda.rs`). Function logs go to
//!   `--log-dir` (default `.tether/lambda-logs`), one file per instance.
//! - `tether-local keys rotate`: adds a fresh agent-credential signing key to the
//!   Secrets Manager secret and makes it active.
//!
//! Configuration: the same `TETHER_*` variables the Lambda gets (see
//! `tether_aws::config`).

use anyhow::{bail, Context, Result};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tether_aws::{CallCounter, Clients, Config, EnvStrings, SecretsManagerKeys};
use tether_core::port::{Clock, SystemClock};
use tether_core::tenant::TenantId;
use tether_proto::operator::{CreateApiKey, CreateEnrollmentToken};
use tracing::info;

mod lambda;

const USAGE: &str = "usage: tether-local serve [--addr HOST:PORT] | lambda [--addr HOST:PORT] [--api-instances N] [--role-instances N] [--bin-dir DIR] [--log-dir DIR] [--cargo-lambda PATH] | bootstrap --tenant TENANT [--uses N] | keys rotate";

#[tokio::main]
async fn main() -> Result<()> {
    tether_aws::logging::init(
        &EnvStrings,
        tether_aws::logging::Output::Stderr,
        "tether-local",
    );
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = Config::from_strings(&EnvStrings).context("reading TETHER_* configuration")?;
    let clients = Clients::from_env().await;
    match args.first().map(String::as_str) {
        Some("serve") => {
            serve(
                &config,
                &clients,
                flag(&args, "--addr").unwrap_or("127.0.0.1:8080"),
            )
            .await
        }
        Some("lambda") => lambda::run(&config, &clients, lambda_options(&args)?).await,
        Some("bootstrap") => {
            let tenant = flag(&args, "--tenant").context(USAGE)?;
            let uses = flag(&args, "--uses")
                .map(str::parse)
                .transpose()?
                .unwrap_or(10);
            bootstrap(&config, &clients, tenant, uses).await
        }
        Some("keys") if args.get(1).map(String::as_str) == Some("rotate") => {
            let keys =
                SecretsManagerKeys::new(clients.secrets.clone(), config.signing_secret_id.clone());
            let kid = keys.rotate(SystemClock.now_ms()).await?;
            println!("{}", serde_json::json!({ "active_kid": kid }));
            Ok(())
        }
        _ => bail!(USAGE),
    }
}

fn lambda_options(args: &[String]) -> Result<lambda::Options> {
    let workspace = std::env::current_dir()?;
    let bin_dir = match flag(args, "--bin-dir") {
        Some(d) => d.into(),
        None => std::env::current_exe()?
            .parent()
            .map(std::path::Path::to_path_buf)
            .context("the executable's directory")?,
    };
    let venv = workspace.join(".tether/venv/bin/cargo-lambda");
    let cargo_lambda = flag(args, "--cargo-lambda")
        .map(Into::into)
        .or_else(|| std::env::var_os("TETHER_CARGO_LAMBDA").map(Into::into))
        .unwrap_or_else(|| {
            if venv.is_file() {
                venv
            } else {
                "cargo-lambda".into()
            }
        });
    let count = |name: &str, default: usize| -> Result<usize> {
        match flag(args, name) {
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=16).contains(n))
                .with_context(|| format!("{name} takes a number from 1 to 16")),
            None => Ok(default),
        }
    };
    Ok(lambda::Options {
        addr: flag(args, "--addr").unwrap_or("127.0.0.1:8080").to_owned(),
        bin_dir,
        cargo_lambda,
        log_dir: flag(args, "--log-dir")
            .map(Into::into)
            .unwrap_or_else(|| workspace.join(".tether/lambda-logs")),
        workspace,
        api_instances: count("--api-instances", 2)?,
        role_instances: count("--role-instances", 1)?,
        api_timeout: Duration::from_secs(10),
        role_timeout: Duration::from_secs(30),
    })
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

async fn serve(config: &Config, clients: &Clients, addr: &str) -> Result<()> {
    let (plane, calls) = tether_api::build(config, clients);
    let chain = tether_api::build_chain(config, clients);
    let probe = Arc::new(tether_aws::status::Probe::new(clients, config));
    let app = tether_api::app(plane, chain.clone(), probe).merge(local_routes(calls));
    let stop = Arc::new(AtomicBool::new(false));
    let retry_after = Duration::from_secs(
        std::env::var("TETHER_LOCAL_RETRY_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2),
    );
    let mut consumers = Vec::new();
    let chain_configured = config.stage_queue_urls.len() > 1;
    for (stage, url) in &config.stage_queue_urls {
        // The observations queue feeds the chain only when the chain's queues exist.
        if !chain_configured {
            break;
        }
        let c = tether_roles::Consumer {
            stage: *stage,
            queue_url: url.clone(),
            wait: Duration::from_secs(1),
            retry_after,
            record: (*stage == tether_core::incident::artifact::Stage::Observer)
                .then(|| std::env::var_os("TETHER_LOCAL_RECORD_OBSERVATIONS"))
                .flatten()
                .map(std::path::PathBuf::from),
        };
        consumers.push(tokio::spawn(c.run(
            chain.clone(),
            clients.sqs.clone(),
            stop.clone(),
        )));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr()?;
    info!(url = %format!("http://{bound}"), "control plane listening");
    // Tests and scripts read this line to find the port when binding :0.
    println!("listening on http://{bound}");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await
        .context("serving")?;
    stop.store(true, Ordering::Relaxed);
    for c in consumers {
        let _ = c.await;
    }
    info!("stopped");
    Ok(())
}

fn local_routes(calls: Arc<CallCounter>) -> Router {
    Router::new().route(
        "/_local/aws-calls",
        get(move || {
            let calls = calls.clone();
            async move { Json(calls.snapshot()) }
        }),
    )
}

pub(crate) async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

async fn bootstrap(config: &Config, clients: &Clients, tenant: &str, uses: u32) -> Result<()> {
    let tenant = TenantId::parse(tenant)?;
    let (plane, _) = tether_api::build(config, clients);
    let key = plane
        .issue_api_key(
            &tenant,
            CreateApiKey {
                role: "admin".into(),
                description: "bootstrap".into(),
            },
        )
        .await?;
    let token = plane
        .issue_enrollment_token(
            &tenant,
            CreateEnrollmentToken {
                ttl_s: Some(7 * 24 * 3600),
                max_uses: Some(uses),
                description: "bootstrap".into(),
            },
        )
        .await?;
    println!(
        "{}",
        serde_json::json!({
            "tenant": tenant.as_str(),
            "api_key": key.key,
            "enrollment_token": token.token,
            "enrollment_token_expires_at_ms": token.expires_at_ms,
        })
    );
    Ok(())
}
