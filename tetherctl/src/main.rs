//! `tetherctl`: the operator's command line for the Tether control plane.
//!
//! Invariants: reads never change anything; `apply` shows its diff before it
//! writes and writes nothing with `--dry-run`; every read has `-o json` for
//! scripts; exit codes are stable (0 ok, 1 API error, 2 usage, 3 authentication or
//! role, 4 not found, 5 control plane unreachable).

mod client;

use clap::{Parser, Subcommand, ValueEnum};
use client::{Client, Error};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tether_proto::incident::{
    Artifact, AuditList, Body, DecisionRequest, RunList, RunManifest, RunStatus,
};
use tether_proto::operator::{
    ActionList, AgentList, AgentSummary, ApiKeyInfo, ApiKeyList, ApplyRequest, ApplyResponse,
    CreateApiKey, CreateEnrollmentToken, DesiredList, DesiredWorkload, EnrollmentTokenInfo,
    EnrollmentTokenList, ServiceList,
};

#[derive(Debug, Parser)]
#[command(name = "tetherctl", version, about = "Operate a Tether control plane")]
struct Cli {
    /// Control plane URL (default: from `tetherctl login`).
    #[arg(long, global = true, env = "TETHER_URL")]
    url: Option<String>,
    /// API key or operator JWT (default: from `tetherctl login`).
    #[arg(long, global = true, env = "TETHER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Output format of reads.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Seconds before a request gives up.
    #[arg(long, global = true, default_value_t = 30)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Store the URL and credential for later commands (file mode 0600).
    Login {
        #[arg(long)]
        url: String,
        /// API key (tet_key.…) or operator JWT.
        #[arg(long)]
        token: String,
    },
    /// Agents with liveness.
    Agents {
        #[command(subcommand)]
        action: Option<AgentCmd>,
    },
    /// Observed services beside their desired state.
    Services,
    /// Actions and their results.
    Actions {
        #[arg(long)]
        agent: Option<String>,
    },
    /// The tenant's desired state.
    Desired,
    /// Declare desired state from a YAML or JSON file; shows the diff first.
    Apply {
        #[arg(short, long)]
        file: PathBuf,
        /// Show the diff and stop.
        #[arg(long)]
        dry_run: bool,
    },
    /// Enrollment tokens.
    Tokens {
        #[command(subcommand)]
        action: TokenCmd,
    },
    /// API keys.
    Keys {
        #[command(subcommand)]
        action: KeyCmd,
    },
    /// Incident runs: list, show the artifact chain as a timeline, approve, reject.
    Runs {
        #[command(subcommand)]
        action: Option<RunCmd>,
    },
    /// The audit log: approvals, rejections, expiries, policy changes.
    Audit,
    /// The control plane's health: dependencies and queue depths (admin).
    Status,
}

#[derive(Debug, Subcommand)]
enum RunCmd {
    List,
    Show {
        id: String,
    },
    Approve {
        id: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    Reject {
        id: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
}

#[derive(Debug, Subcommand)]
enum AgentCmd {
    List,
    Get {
        id: String,
    },
    /// Revoke an agent's credential (it must enroll again).
    Revoke {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    Create {
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
        #[arg(long, default_value_t = 1)]
        uses: u32,
        #[arg(long, default_value = "")]
        description: String,
    },
    List,
    Revoke {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCmd {
    Create {
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    List,
    Revoke {
        id: String,
    },
}

/// What `login` stores.
#[derive(Debug, Serialize, Deserialize)]
struct Login {
    url: String,
    token: String,
}

fn config_path() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|d| d.join("tether/tetherctl.json"))
}

fn save_login(login: &Login) -> Result<PathBuf, Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = config_path()
        .ok_or_else(|| Error::Usage("neither XDG_CONFIG_HOME nor HOME is set".into()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Usage(format!("{}: {e}", dir.display())))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
    let text = serde_json::to_vec_pretty(login).map_err(|e| Error::Usage(e.to_string()))?;
    f.write_all(&text)
        .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
    Ok(path)
}

fn client(cli: &Cli) -> Result<Client, Error> {
    let stored: Option<Login> = config_path()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok());
    let url = cli
        .url
        .clone()
        .or_else(|| stored.as_ref().map(|l| l.url.clone()))
        .ok_or_else(|| {
            Error::Usage("no control plane URL: run `tetherctl login` or pass --url".into())
        })?;
    let token = cli
        .token
        .clone()
        .or_else(|| stored.map(|l| l.token))
        .ok_or_else(|| {
            Error::Usage("no credential: run `tetherctl login` or pass --token".into())
        })?;
    Ok(Client::new(
        &url,
        &token,
        Duration::from_secs(cli.timeout.max(1)),
    ))
}

/// Prints rows as aligned columns.
fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn json<T: Serialize>(v: &T) -> Result<(), Error> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| Error::Protocol(e.to_string()))?
    );
    Ok(())
}

fn ago(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

fn agent_rows(agents: &[AgentSummary]) -> Vec<Vec<String>> {
    agents
        .iter()
        .map(|a| {
            vec![
                a.agent_id.clone(),
                a.hostname.clone(),
                format!("{:?}", a.liveness).to_lowercase(),
                ago(a.last_seen_ms),
                a.agent_version.clone(),
                a.spool_depth.to_string(),
                format!("{}/{}", a.applied_revision, a.desired_revision),
                drift_summary(a),
                a.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect()
}

/// Why an agent's applied revision lags the desired one, in one cell.
fn drift_summary(a: &AgentSummary) -> String {
    let Some(first) = a.drift.first() else {
        return if a.applied_revision < a.desired_revision {
            "lags".into()
        } else {
            String::new()
        };
    };
    let what = match (first.workload_key.as_str(), first.kind.as_str()) {
        ("", _) => first.reason.clone(),
        (w, "") => format!("{w}: {}", first.reason),
        (w, k) => format!("{w} {k}: {}", first.reason),
    };
    match a.drift.len() {
        1 => what,
        n => format!("{what} (+{} more)", n - 1),
    }
}

const AGENT_HEADERS: &[&str] = &[
    "AGENT",
    "HOST",
    "LIVENESS",
    "LAST SEEN",
    "VERSION",
    "SPOOL",
    "APPLIED",
    "DRIFT",
    "LAST ERROR",
];

/// The file `apply -f` reads: `workloads:` as in `POST /v1/apply`.
fn read_desired(path: &PathBuf) -> Result<ApplyRequest, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
    serde_yaml_ng::from_str(&text).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))
}

fn describe(w: &DesiredWorkload) -> String {
    let content = match w.llm_content {
        tether_proto::operator::LlmContent::None => String::new(),
        c => format!(" llm_content={}", c.as_str()),
    };
    format!(
        "instrumentation={} python_sdk={}{content}",
        serde_json::to_value(w.instrumentation)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        serde_json::to_value(w.python_sdk)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    )
}

/// `+` new, `~` changed lines, and how many are unchanged.
fn diff(current: &DesiredList, wanted: &ApplyRequest) -> (Vec<String>, usize) {
    let now: BTreeMap<&str, &DesiredWorkload> = current
        .workloads
        .iter()
        .map(|w| (w.workload_key.as_str(), w))
        .collect();
    let mut lines = Vec::new();
    let mut same = 0;
    for w in &wanted.workloads {
        match now.get(w.workload_key.as_str()) {
            None => lines.push(format!("+ {}  {}", w.workload_key, describe(w))),
            Some(old) if *old == w => same += 1,
            Some(old) => lines.push(format!(
                "~ {}  {} -> {}",
                w.workload_key,
                describe(old),
                describe(w)
            )),
        }
    }
    (lines, same)
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

fn joined<T>(items: &[T], f: impl Fn(&T) -> String, sep: &str) -> String {
    items.iter().map(f).collect::<Vec<_>>().join(sep)
}

/// One line saying what an artifact concluded, for the timeline.
fn summary(a: &Artifact) -> String {
    match &a.body {
        Body::ObservationSummary { signals, .. } => joined(
            signals,
            |s| {
                format!(
                    "{} {} = {} (threshold {})",
                    s.family, s.metric, s.value, s.threshold
                )
            },
            "; ",
        ),
        Body::AnomalyFinding { anomalies, .. } => format!("{} anomaly(ies)", anomalies.len()),
        Body::RootCauseHypothesis { hypotheses, .. } => hypotheses
            .first()
            .map(|h| format!("{} (score {}): {}", h.title, h.score, h.explanation))
            .unwrap_or_else(|| "no hypothesis".into()),
        Body::RemediationProposal { proposals, .. } => joined(
            proposals,
            |p| format!("{}. {} [{}]", p.step, p.action, p.safety.as_str()),
            ", ",
        ),
        Body::ExecutionPlan { decisions, .. } => joined(
            decisions,
            |d| format!("{} -> {} ({})", d.action, d.verdict, d.mode),
            ", ",
        ),
        Body::ExecutionResult { steps, .. } => {
            joined(steps, |s| format!("{} {}", s.action, s.state), ", ")
        }
        Body::VerificationResult { verdict, why, .. } => format!("{}: {why}", verdict.as_str()),
        Body::IncidentReport {
            outcome,
            fingerprint,
            ..
        } => format!("outcome {outcome} (fingerprint {fingerprint})"),
    }
}

fn run_rows(runs: &[RunManifest]) -> Vec<Vec<String>> {
    runs.iter()
        .map(|r| {
            vec![
                r.run_id.clone(),
                r.agent_id.clone(),
                r.title.clone(),
                r.status.as_str().into(),
                dash(&r.outcome),
                r.chain.len().to_string(),
                ago(r.created_at_ms),
            ]
        })
        .collect()
}

const RUN_HEADERS: &[&str] = &[
    "RUN",
    "AGENT",
    "TITLE",
    "STATUS",
    "OUTCOME",
    "ARTIFACTS",
    "OPENED",
];

fn run(cli: &Cli) -> Result<(), Error> {
    let out = cli.output;
    match &cli.command {
        Command::Login { url, token } => {
            let c = Client::new(url, token, Duration::from_secs(cli.timeout.max(1)));
            let agents: AgentList = c.get("/v1/agents")?;
            let path = save_login(&Login {
                url: url.clone(),
                token: token.clone(),
            })?;
            println!(
                "logged in to {url} ({} agents visible); credential stored in {}",
                agents.agents.len(),
                path.display()
            );
        }
        Command::Agents { action } => {
            let c = client(cli)?;
            match action.as_ref().unwrap_or(&AgentCmd::List) {
                AgentCmd::List => {
                    let list: AgentList = c.get("/v1/agents")?;
                    match out {
                        Output::Json => json(&list)?,
                        Output::Table => table(AGENT_HEADERS, agent_rows(&list.agents)),
                    }
                }
                AgentCmd::Get { id } => {
                    let a: AgentSummary = c.get(&format!("/v1/agents/{id}"))?;
                    match out {
                        Output::Json => json(&a)?,
                        Output::Table => {
                            table(AGENT_HEADERS, agent_rows(std::slice::from_ref(&a)));
                            println!("\ncapabilities: {}", a.capabilities.join(", "));
                            println!(
                                "applied desired revision: {} of {}",
                                a.applied_revision, a.desired_revision
                            );
                            if let Some(kinds) = &a.action_kinds {
                                println!("action kinds: {}", kinds.join(", "));
                            }
                            if !a.drift.is_empty() {
                                println!();
                                table(
                                    &["WORKLOAD", "KIND", "WHY IT LAGS"],
                                    a.drift
                                        .iter()
                                        .map(|d| {
                                            vec![
                                                d.workload_key.clone(),
                                                d.kind.clone(),
                                                d.reason.clone(),
                                            ]
                                        })
                                        .collect(),
                                );
                            }
                            if !a.vitals.is_empty() {
                                let v: Vec<String> = a
                                    .vitals
                                    .iter()
                                    .map(|(k, v)| format!("{k}={v:.1}"))
                                    .collect();
                                println!("vitals: {}", v.join("  "));
                            }
                            if !a.collectors.is_empty() {
                                println!();
                                table(
                                    &["COLLECTOR", "STATE", "REASON"],
                                    a.collectors
                                        .iter()
                                        .map(|c| {
                                            vec![c.name.clone(), c.state.clone(), c.reason.clone()]
                                        })
                                        .collect(),
                                );
                            }
                        }
                    }
                }
                AgentCmd::Revoke { id } => {
                    c.post::<_, serde_json::Value>(
                        &format!("/v1/agents/{id}/revoke"),
                        &serde_json::json!({}),
                    )?;
                    println!("agent {id}: credential revoked");
                }
            }
        }
        Command::Runs { action } => {
            let c = client(cli)?;
            match action.as_ref().unwrap_or(&RunCmd::List) {
                RunCmd::List => {
                    let list: RunList = c.get("/v1/runs")?;
                    match out {
                        Output::Json => json(&list)?,
                        Output::Table => table(RUN_HEADERS, run_rows(&list.runs)),
                    }
                }
                RunCmd::Show { id } => {
                    let r: RunManifest = c.get(&format!("/v1/runs/{id}"))?;
                    let mut artifacts: Vec<Artifact> = Vec::new();
                    for l in &r.chain {
                        artifacts.push(c.get(&format!("/v1/artifacts/{}", l.id))?);
                    }
                    match out {
                        Output::Json => {
                            json(&serde_json::json!({"run": r, "artifacts": artifacts}))?
                        }
                        Output::Table => {
                            table(RUN_HEADERS, run_rows(std::slice::from_ref(&r)));
                            println!();
                            table(
                                &["WHEN", "STAGE", "ARTIFACT", "STATUS", "SUMMARY"],
                                r.chain
                                    .iter()
                                    .zip(&artifacts)
                                    .map(|(l, a)| {
                                        vec![
                                            ago(l.at_ms),
                                            l.stage.as_str().into(),
                                            l.kind.as_str().into(),
                                            l.status.clone(),
                                            summary(a),
                                        ]
                                    })
                                    .collect(),
                            );
                            if let Some(a) = &r.approval {
                                println!("\n{} by {} {}", a.decision, a.by, ago(a.at_ms));
                            } else if r.status == RunStatus::AwaitingApproval {
                                println!("\nawaiting approval: tetherctl runs approve {id}   (or reject)");
                            }
                            if let Some(f) = &r.failure {
                                println!("\nfailed in the {}: {}", f.stage.as_str(), f.reason);
                            }
                        }
                    }
                }
                RunCmd::Approve { id, comment } | RunCmd::Reject { id, comment } => {
                    let verb = if matches!(action, Some(RunCmd::Approve { .. })) {
                        "approve"
                    } else {
                        "reject"
                    };
                    let r: RunManifest = c
                        .post(
                            &format!("/v1/runs/{id}/{verb}"),
                            &DecisionRequest {
                                comment: comment.clone(),
                            },
                        )?
                        .ok_or_else(|| Error::Protocol(format!("no run in the answer for {id}")))?;
                    match out {
                        Output::Json => json(&r)?,
                        Output::Table => println!(
                            "run {id}: plan {}d by {}; status {}",
                            verb,
                            r.approval.as_ref().map_or("-", |a| a.by.as_str()),
                            r.status.as_str()
                        ),
                    }
                }
            }
        }
        Command::Status => {
            let report: tether_proto::operator::StatusReport = client(cli)?.get("/v1/status")?;
            match out {
                Output::Json => json(&report)?,
                Output::Table => {
                    println!("status: {}", report.status);
                    table(
                        &["DEPENDENCY", "OK", "LATENCY MS", "ERROR"],
                        report
                            .dependencies
                            .iter()
                            .map(|d| {
                                vec![
                                    d.name.clone(),
                                    d.ok.to_string(),
                                    d.latency_ms.to_string(),
                                    d.error.clone(),
                                ]
                            })
                            .collect(),
                    );
                    println!();
                    table(
                        &["QUEUE", "VISIBLE", "IN FLIGHT", "DELAYED", "DLQ", "OLDEST"],
                        report
                            .queues
                            .iter()
                            .map(|q| {
                                vec![
                                    q.name.clone(),
                                    q.visible.to_string(),
                                    q.in_flight.to_string(),
                                    q.delayed.to_string(),
                                    q.dlq_visible.to_string(),
                                    q.oldest_age_s
                                        .map_or_else(|| "unknown".into(), |s| format!("{s}s")),
                                ]
                            })
                            .collect(),
                    );
                }
            }
        }
        Command::Audit => {
            let list: AuditList = client(cli)?.get("/v1/audit")?;
            match out {
                Output::Json => json(&list)?,
                Output::Table => table(
                    &["WHEN", "ACTOR", "ACTION", "RUN", "DETAIL"],
                    list.entries
                        .iter()
                        .map(|e| {
                            vec![
                                ago(e.at_ms),
                                e.actor.clone(),
                                e.action.clone(),
                                dash(&e.run_id),
                                dash(&e.detail),
                            ]
                        })
                        .collect(),
                ),
            }
        }
        Command::Services => {
            let list: ServiceList = client(cli)?.get("/v1/services")?;
            match out {
                Output::Json => json(&list)?,
                Output::Table => table(
                    &[
                        "AGENT",
                        "WORKLOAD",
                        "PID",
                        "RUNTIME",
                        "LLM",
                        "INSTRUMENTED",
                        "DESIRED",
                        "IN SYNC",
                    ],
                    list.services
                        .iter()
                        .map(|s| {
                            vec![
                                s.agent_id.clone(),
                                s.workload_key.clone(),
                                s.pid.to_string(),
                                s.runtime.clone(),
                                s.llm_providers.join(","),
                                s.observed_instrumented.to_string(),
                                s.desired
                                    .as_ref()
                                    .map(describe)
                                    .unwrap_or_else(|| "-".into()),
                                if s.in_sync {
                                    "yes".into()
                                } else {
                                    "reconciling".into()
                                },
                            ]
                        })
                        .collect(),
                ),
            }
        }
        Command::Actions { agent } => {
            let path = match agent {
                Some(a) => format!("/v1/actions?agent_id={a}"),
                None => "/v1/actions".into(),
            };
            let list: ActionList = client(cli)?.get(&path)?;
            match out {
                Output::Json => json(&list)?,
                Output::Table => table(
                    &[
                        "ACTION", "AGENT", "KIND", "TARGET", "STATE", "ATTEMPT", "UPDATED",
                        "MESSAGE",
                    ],
                    list.actions
                        .iter()
                        .map(|a| {
                            vec![
                                a.action_id.clone(),
                                a.agent_id.clone(),
                                a.kind.clone(),
                                a.target.clone(),
                                a.state.clone(),
                                a.attempt.to_string(),
                                ago(a.updated_at_ms),
                                a.result
                                    .as_ref()
                                    .map(|r| r.message.clone())
                                    .unwrap_or_default(),
                            ]
                        })
                        .collect(),
                ),
            }
        }
        Command::Desired => {
            let d: DesiredList = client(cli)?.get("/v1/desired")?;
            match out {
                Output::Json => json(&d)?,
                Output::Table => {
                    println!("revision {}", d.revision);
                    table(
                        &["WORKLOAD", "DESIRED"],
                        d.workloads
                            .iter()
                            .map(|w| vec![w.workload_key.clone(), describe(w)])
                            .collect(),
                    );
                }
            }
        }
        Command::Apply { file, dry_run } => {
            let wanted = read_desired(file)?;
            let c = client(cli)?;
            let current: DesiredList = c.get("/v1/desired")?;
            let (lines, same) = diff(&current, &wanted);
            if out == Output::Table {
                for l in &lines {
                    println!("{l}");
                }
                println!("{} to change, {same} unchanged", lines.len());
            }
            if *dry_run {
                if out == Output::Json {
                    json(
                        &serde_json::json!({"changes": lines, "unchanged": same, "dry_run": true}),
                    )?;
                }
                return Ok(());
            }
            let applied: ApplyResponse = c
                .post("/v1/apply", &wanted)?
                .ok_or_else(|| Error::Protocol("apply answered no body".into()))?;
            match out {
                Output::Json => json(&applied)?,
                Output::Table if applied.changed.is_empty() => {
                    println!("no changes (revision {})", applied.revision)
                }
                Output::Table => println!(
                    "applied: revision {}, {} changed; agents reconcile on their next poll",
                    applied.revision,
                    applied.changed.len()
                ),
            }
        }
        Command::Tokens { action } => {
            let c = client(cli)?;
            match action {
                TokenCmd::Create {
                    ttl,
                    uses,
                    description,
                } => {
                    let t: EnrollmentTokenInfo = c
                        .post(
                            "/v1/enrollment-tokens",
                            &CreateEnrollmentToken {
                                ttl_s: Some(*ttl),
                                max_uses: Some(*uses),
                                description: description.clone(),
                            },
                        )?
                        .ok_or_else(|| Error::Protocol("no token in the answer".into()))?;
                    match out {
                        Output::Json => json(&t)?,
                        Output::Table => {
                            println!("{}", t.token.clone().unwrap_or_default());
                            eprintln!(
                                "token {}: {} uses, shown once; store it now",
                                t.id, t.max_uses
                            );
                        }
                    }
                }
                TokenCmd::List => {
                    let l: EnrollmentTokenList = c.get("/v1/enrollment-tokens")?;
                    match out {
                        Output::Json => json(&l)?,
                        Output::Table => table(
                            &["ID", "USES", "EXPIRES", "REVOKED", "DESCRIPTION"],
                            l.tokens
                                .iter()
                                .map(|t| {
                                    vec![
                                        t.id.clone(),
                                        format!("{}/{}", t.uses, t.max_uses),
                                        t.expires_at_ms.to_string(),
                                        t.revoked.to_string(),
                                        t.description.clone(),
                                    ]
                                })
                                .collect(),
                        ),
                    }
                }
                TokenCmd::Revoke { id } => {
                    c.delete(&format!("/v1/enrollment-tokens/{id}"))?;
                    println!("enrollment token {id} revoked");
                }
            }
        }
        Command::Keys { action } => {
            let c = client(cli)?;
            match action {
                KeyCmd::Create { role, description } => {
                    let k: ApiKeyInfo = c
                        .post(
                            "/v1/api-keys",
                            &CreateApiKey {
                                role: role.clone(),
                                description: description.clone(),
                            },
                        )?
                        .ok_or_else(|| Error::Protocol("no key in the answer".into()))?;
                    match out {
                        Output::Json => json(&k)?,
                        Output::Table => {
                            println!("{}", k.key.clone().unwrap_or_default());
                            eprintln!("api key {} ({}): shown once; store it now", k.id, k.role);
                        }
                    }
                }
                KeyCmd::List => {
                    let l: ApiKeyList = c.get("/v1/api-keys")?;
                    match out {
                        Output::Json => json(&l)?,
                        Output::Table => table(
                            &["ID", "ROLE", "REVOKED", "DESCRIPTION"],
                            l.keys
                                .iter()
                                .map(|k| {
                                    vec![
                                        k.id.clone(),
                                        k.role.clone(),
                                        k.revoked.to_string(),
                                        k.description.clone(),
                                    ]
                                })
                                .collect(),
                        ),
                    }
                }
                KeyCmd::Revoke { id } => {
                    c.delete(&format!("/v1/api-keys/{id}"))?;
                    println!("api key {id} revoked");
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tetherctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::operator::{Instrumentation, PythonSdk};

    fn w(key: &str, i: Instrumentation) -> DesiredWorkload {
        DesiredWorkload {
            workload_key: key.into(),
            instrumentation: i,
            python_sdk: PythonSdk::Disabled,
            llm_content: Default::default(),
        }
    }

    #[test]
    fn diff_marks_new_changed_and_unchanged() {
        let current = DesiredList {
            revision: 3,
            workloads: vec![
                w("host:/a", Instrumentation::Instrumented),
                w("host:/b", Instrumentation::None),
            ],
        };
        let wanted = ApplyRequest {
            workloads: vec![
                w("host:/a", Instrumentation::Instrumented),
                w("host:/b", Instrumentation::Instrumented),
                w("host:/c", Instrumentation::None),
            ],
        };
        let (lines, same) = diff(&current, &wanted);
        assert_eq!(same, 1);
        assert_eq!(
            lines,
            vec![
                "~ host:/b  instrumentation=none python_sdk=disabled -> instrumentation=instrumented python_sdk=disabled",
                "+ host:/c  instrumentation=none python_sdk=disabled",
            ]
        );
    }

    #[test]
    fn yaml_and_json_files_both_parse() {
        let dir = std::env::temp_dir().join(format!("tetherctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let y = dir.join("d.yaml");
        std::fs::write(&y, "workloads:\n  - workload_key: host:/usr/bin/python3\n    instrumentation: instrumented\n")
            .expect("write");
        let j = dir.join("d.json");
        std::fs::write(&j, r#"{"workloads":[{"workload_key":"host:/usr/bin/python3","instrumentation":"instrumented"}]}"#)
            .expect("write");
        assert_eq!(
            read_desired(&y).expect("yaml"),
            read_desired(&j).expect("json")
        );
        std::fs::write(&y, "workloads: [{workload_key: x, instrumentation: maybe}]")
            .expect("write");
        let err = read_desired(&y).expect_err("bad value");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("d.yaml"), "{err}");
    }
}
