//! Captured LLM calls as OpenTelemetry spans, exported over OTLP/HTTP (JSON) to
//! the configured collector, following the GenAI semantic conventions
//! (`gen_ai.system`, `gen_ai.operation.name`, `gen_ai.request.model`,
//! `gen_ai.response.model`, `gen_ai.usage.input_tokens`,
//! `gen_ai.usage.output_tokens`, `error.type`).
//!
//! Invariants:
//! - Bounded: at most [`QUEUE`] spans wait; a span offered to a full queue is
//!   dropped and counted, never blocking the capture path.
//! - A failed export is retried with the next batch while the queue has room;
//!   what does not fit is dropped and counted. Counters are in the agent status.
//! - Spans carry no prompt or completion text: [`tether_llm::LlmCall`] holds none.
//! - An empty endpoint turns export off; summaries still travel in the poll.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tether_llm::LlmCall;

pub const QUEUE: usize = 4096;
pub const BATCH: usize = 512;
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// One finished call, ready to become a span.
#[derive(Debug, Clone, PartialEq)]
pub struct CallSpan {
    pub workload: String,
    pub pid: u32,
    pub call: LlmCall,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// Redacted prompt and completion (only under a tenant policy that allows
    /// it): span events `gen_ai.content.prompt` / `gen_ai.content.completion`.
    pub content: Option<tether_llm::Content>,
}

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn text(key: &str, v: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.to_owned()))
}

fn int(key: &str, v: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(v))
}

/// The short service name of a workload key (`k8s:ns:deployment:web:app` ->
/// `web`, `host:/usr/bin/python3` -> `python3`, `systemd:chat.service` -> `chat`).
pub fn service_name(workload: &str) -> String {
    let parts: Vec<&str> = workload.split(':').collect();
    let name = match parts.first().copied() {
        Some("k8s") if parts.len() >= 4 => parts[3],
        Some("docker") | Some("systemd") if parts.len() >= 2 => parts[1],
        Some("host") if parts.len() >= 2 => parts[1].rsplit('/').next().unwrap_or(parts[1]),
        _ => workload,
    };
    name.trim_end_matches(".service").to_owned()
}

fn random_id(n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    if v.iter().all(|b| *b == 0) {
        v[0] = 1; // all-zero ids are invalid in OTLP
    }
    v
}

pub fn span_of(c: &CallSpan) -> Span {
    let k = &c.call;
    let model = k.request_model.as_deref().or(k.response_model.as_deref());
    let mut attributes = vec![
        text("gen_ai.system", k.system),
        text("gen_ai.operation.name", k.operation),
        int("http.response.status_code", i64::from(k.status)),
    ];
    if let Some(m) = &k.request_model {
        attributes.push(text("gen_ai.request.model", m));
    }
    if let Some(m) = &k.response_model {
        attributes.push(text("gen_ai.response.model", m));
    }
    if let Some(n) = k.input_tokens {
        attributes.push(int(
            "gen_ai.usage.input_tokens",
            n.min(i64::MAX as u64) as i64,
        ));
    }
    if let Some(n) = k.output_tokens {
        attributes.push(int(
            "gen_ai.usage.output_tokens",
            n.min(i64::MAX as u64) as i64,
        ));
    }
    if let Some(e) = &k.error_type {
        attributes.push(text("error.type", e));
    }
    attributes.push(kv(
        "gen_ai.request.stream",
        any_value::Value::BoolValue(k.streaming),
    ));
    let failed = k.status >= 400 || k.error_type.is_some();
    let events = c
        .content
        .iter()
        .flat_map(|t| {
            [
                (
                    "gen_ai.content.prompt",
                    "gen_ai.prompt",
                    &t.prompt,
                    c.start_unix_ns,
                ),
                (
                    "gen_ai.content.completion",
                    "gen_ai.completion",
                    &t.completion,
                    c.end_unix_ns,
                ),
            ]
        })
        .map(|(name, key, value, at)| span::Event {
            time_unix_nano: at,
            name: name.into(),
            attributes: vec![text(key, value)],
            ..Default::default()
        })
        .collect();
    Span {
        trace_id: random_id(16),
        span_id: random_id(8),
        name: match model {
            Some(m) => format!("{} {m}", k.operation),
            None => k.operation.to_owned(),
        },
        kind: span::SpanKind::Client as i32,
        start_time_unix_nano: c.start_unix_ns,
        end_time_unix_nano: c.end_unix_ns.max(c.start_unix_ns),
        attributes,
        events,
        status: failed.then(|| Status {
            code: status::StatusCode::Error as i32,
            message: k
                .error_type
                .clone()
                .unwrap_or_else(|| format!("HTTP {}", k.status)),
        }),
        ..Default::default()
    }
}

/// One export request: spans grouped by process into resources.
pub fn request(spans: &[CallSpan], host: &str) -> ExportTraceServiceRequest {
    let mut by: BTreeMap<(&str, u32), Vec<Span>> = BTreeMap::new();
    for s in spans {
        by.entry((s.workload.as_str(), s.pid))
            .or_default()
            .push(span_of(s));
    }
    ExportTraceServiceRequest {
        resource_spans: by
            .into_iter()
            .map(|((workload, pid), spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        text("service.name", &service_name(workload)),
                        text("tether.workload_key", workload),
                        text("host.name", host),
                        int("process.pid", i64::from(pid)),
                        text("telemetry.sdk.name", "tether-agent"),
                        text("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "tether-agent/ebpf".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// Export counters, for the status file.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExportStats {
    pub exported: u64,
    pub dropped: u64,
    pub failed_exports: u64,
    pub queued: u64,
    #[serde(default)]
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<VecDeque<CallSpan>>,
    wake: Condvar,
    exported: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
    stop: AtomicBool,
}

/// The exporter: a bounded queue and one thread that drains it.
#[derive(Debug, Clone)]
pub struct Exporter {
    shared: Arc<Shared>,
    enabled: bool,
}

impl Exporter {
    /// Starts the export thread for `endpoint` (`http://host:4318`); spans go to
    /// `<endpoint>/v1/traces`. An empty endpoint: spans are dropped uncounted.
    pub fn start(endpoint: &str, host: String) -> Self {
        let shared = Arc::new(Shared::default());
        let enabled = !endpoint.trim().is_empty();
        if enabled {
            let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
            let s = shared.clone();
            let spawned = std::thread::Builder::new()
                .name("otlp-export".into())
                .spawn(move || export_loop(&s, &url, &host));
            if let Err(e) = spawned {
                eprintln!("tether-agent: otlp: cannot start the export thread: {e}");
            }
        }
        Self { shared, enabled }
    }

    pub fn offer(&self, span: CallSpan) {
        if !self.enabled {
            return;
        }
        let Ok(mut q) = self.shared.queue.lock() else {
            return;
        };
        if q.len() >= QUEUE {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.push_back(span);
        if q.len() >= BATCH {
            self.shared.wake.notify_one();
        }
    }

    pub fn stats(&self) -> ExportStats {
        ExportStats {
            exported: self.shared.exported.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            failed_exports: self.shared.failed.load(Ordering::Relaxed),
            queued: self.shared.queue.lock().map_or(0, |q| q.len() as u64),
            last_error: self.shared.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }

    /// Sends what is queued now and stops the thread.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_one();
    }
}

fn export_loop(s: &Shared, url: &str, host: &str) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    loop {
        let batch: Vec<CallSpan> = {
            let Ok(q) = s.queue.lock() else { return };
            let Ok((mut q, _)) = s.wake.wait_timeout(q, FLUSH_EVERY) else {
                return;
            };
            let n = q.len().min(BATCH);
            q.drain(..n).collect()
        };
        let stopping = s.stop.load(Ordering::Relaxed);
        if batch.is_empty() {
            if stopping {
                return;
            }
            continue;
        }
        let body = match serde_json::to_vec(&request(&batch, host)) {
            Ok(b) => b,
            Err(e) => {
                s.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                note(s, format!("encoding spans: {e}"));
                continue;
            }
        };
        let sent = agent
            .post(url)
            .header("content-type", "application/json")
            .send(&body[..]);
        match sent {
            Ok(r) if r.status().is_success() => {
                s.exported.fetch_add(batch.len() as u64, Ordering::Relaxed);
                if let Ok(mut e) = s.last_error.lock() {
                    *e = None;
                }
            }
            other => {
                s.failed.fetch_add(1, Ordering::Relaxed);
                note(
                    s,
                    match other {
                        Ok(r) => format!("{url} answered {}", r.status()),
                        Err(e) => format!("{url}: {e}"),
                    },
                );
                if stopping {
                    s.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    return;
                }
                // Back in front for the next try, as far as the bound allows.
                if let Ok(mut q) = s.queue.lock() {
                    for span in batch.into_iter().rev() {
                        if q.len() >= QUEUE {
                            s.dropped.fetch_add(1, Ordering::Relaxed);
                        } else {
                            q.push_front(span);
                        }
                    }
                }
            }
        }
    }
}

fn note(s: &Shared, e: String) {
    if let Ok(mut last) = s.last_error.lock() {
        if last.as_deref() != Some(e.as_str()) {
            eprintln!("tether-agent: otlp export: {e}");
        }
        *last = Some(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn call(status: u16) -> CallSpan {
        CallSpan {
            workload: "host:/usr/bin/python3".into(),
            pid: 42,
            call: LlmCall {
                system: "openai",
                operation: "chat",
                request_model: Some("gpt-4o-mini".into()),
                response_model: Some("gpt-4o-mini-2024".into()),
                input_tokens: Some(11),
                output_tokens: Some(7),
                status,
                error_type: (status == 429).then(|| "rate_limit_exceeded".into()),
                streaming: true,
            },
            start_unix_ns: 1_700_000_000_000_000_000,
            end_unix_ns: 1_700_000_000_050_000_000,
            content: None,
        }
    }

    fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
        span["attributes"]
            .as_array()
            .and_then(|a| a.iter().find(|kv| kv["key"] == key))
            .map_or(&Value::Null, |kv| &kv["value"])
    }

    #[test]
    fn spans_follow_otlp_json_and_the_genai_conventions() {
        let req = request(&[call(200), call(429)], "node-1");
        let v: Value =
            serde_json::from_slice(&serde_json::to_vec(&req).expect("json")).expect("json");
        let rs = &v["resourceSpans"][0];
        let res = &rs["resource"];
        assert_eq!(attr(res, "service.name")["stringValue"], "python3");
        assert_eq!(
            attr(res, "process.pid")["intValue"],
            "42",
            "int64 as a JSON string"
        );
        let spans = rs["scopeSpans"][0]["spans"].as_array().expect("spans");
        assert_eq!(spans.len(), 2);
        let ok = &spans[0];
        assert_eq!(ok["name"], "chat gpt-4o-mini");
        assert_eq!(ok["kind"], 3, "SPAN_KIND_CLIENT");
        assert_eq!(
            ok["traceId"].as_str().map(str::len),
            Some(32),
            "hex trace id"
        );
        assert_eq!(ok["spanId"].as_str().map(str::len), Some(16), "hex span id");
        assert_eq!(ok["startTimeUnixNano"], "1700000000000000000");
        assert_eq!(attr(ok, "gen_ai.system")["stringValue"], "openai");
        assert_eq!(
            attr(ok, "gen_ai.request.model")["stringValue"],
            "gpt-4o-mini"
        );
        assert_eq!(
            attr(ok, "gen_ai.response.model")["stringValue"],
            "gpt-4o-mini-2024"
        );
        assert_eq!(attr(ok, "gen_ai.usage.input_tokens")["intValue"], "11");
        assert_eq!(attr(ok, "gen_ai.usage.output_tokens")["intValue"], "7");
        assert!(ok
            .get("status")
            .is_none_or(|s| s.get("code").is_none_or(|c| c == 0)));
        let err = &spans[1];
        assert_eq!(err["status"]["code"], 2, "STATUS_CODE_ERROR");
        assert_eq!(
            attr(err, "error.type")["stringValue"],
            "rate_limit_exceeded"
        );
        assert_eq!(attr(err, "http.response.status_code")["intValue"], "429");
        assert!(
            ok.get("events")
                .is_none_or(|e| e.as_array().is_some_and(Vec::is_empty)),
            "no content unless allowed"
        );
        let mut with = call(200);
        with.content = Some(tether_llm::Content {
            prompt: "user: say hi to [REDACTED]".into(),
            completion: "hello".into(),
        });
        let v = serde_json::to_value(request(&[with], "h")).expect("json");
        let events = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["events"];
        assert_eq!(events[0]["name"], "gen_ai.content.prompt");
        assert_eq!(
            events[0]["attributes"][0]["value"]["stringValue"],
            "user: say hi to [REDACTED]"
        );
        assert_eq!(events[1]["name"], "gen_ai.content.completion");
    }

    #[test]
    fn service_names_come_from_workload_keys() {
        assert_eq!(service_name("k8s:prod:deployment:chat:app"), "chat");
        assert_eq!(service_name("docker:rag-worker"), "rag-worker");
        assert_eq!(service_name("systemd:chat.service"), "chat");
        assert_eq!(service_name("host:/usr/bin/python3.11"), "python3.11");
        assert_eq!(service_name("odd"), "odd");
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_an_unreachable_collector_is_reported() {
        // Port 9 (discard) on localhost refuses: every export fails.
        let e = Exporter::start("http://127.0.0.1:9", "h".into());
        for _ in 0..(QUEUE + 10) {
            e.offer(call(200));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while e.stats().failed_exports == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let s = e.stats();
        assert!(s.dropped >= 10, "{s:?}");
        assert!(s.failed_exports >= 1, "{s:?}");
        assert_eq!(s.exported, 0);
        assert!(
            s.last_error
                .as_deref()
                .is_some_and(|m| m.contains("127.0.0.1:9")),
            "{s:?}"
        );
        e.stop();
    }
}
