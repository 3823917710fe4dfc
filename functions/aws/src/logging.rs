//! The one tracing setup of every Tether function and of the local runner.
//!
//! Invariants:
//! - One JSON object per line: `time`, `level`, `target`, `message`, the event's
//!   fields, and the fields of every enclosing span, flattened to the top level
//!   (innermost wins). So a line written deep inside a request carries that
//!   request's `requestId` (the Lambda runtime's span), `tenant`, `agent`, `run`,
//!   without each call site repeating them; CloudWatch Logs Insights can filter
//!   on them directly. Span fields that were declared but never recorded are left
//!   out.
//! - Level: `RUST_LOG` when set (full `EnvFilter` syntax), else Lambda's
//!   `AWS_LAMBDA_LOG_LEVEL` (its advanced logging controls), else INFO. Never
//!   silent by default.
//! - Errors logged through [`ErrorChain`] (or recorded as `&dyn Error`) carry
//!   their whole `source()` chain, joined by `: `.
//! - Every line names its `function` (the Lambda function, or `tether-local`).
//! - Metrics are log lines in CloudWatch's Embedded Metric Format: an event with
//!   an [`EMF`] field (`"Requests:Count,Latency:Milliseconds"`) gets an `_aws`
//!   block declaring those of its fields as metrics in the `Tether` namespace,
//!   by `function`. CloudWatch extracts them from the log; no API call, no
//!   extra cost on the request path.

use crate::config::Strings;
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Where log lines go: Lambda ships stdout to CloudWatch; the local runner keeps
/// stdout for its own output and logs to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
}

/// The event field that lists an event's metrics (see the module doc).
pub const EMF: &str = "emf_metrics";

/// The metric namespace of every Tether function.
pub const NAMESPACE: &str = "Tether";

static FUNCTION: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The filter directive: `RUST_LOG`, else `AWS_LAMBDA_LOG_LEVEL`, else `info`.
pub fn directive(strings: &impl Strings) -> String {
    if let Some(d) = strings.get("RUST_LOG") {
        return d;
    }
    match strings
        .get("AWS_LAMBDA_LOG_LEVEL")
        .map(|l| l.to_ascii_lowercase())
        .as_deref()
    {
        Some(l @ ("trace" | "debug" | "info" | "warn" | "error")) => l.to_owned(),
        Some("fatal") => "error".to_owned(),
        _ => "info".to_owned(),
    }
}

/// Installs the global subscriber for `function` (`AWS_LAMBDA_FUNCTION_NAME`
/// when set, else the name given). A second call (tests) changes nothing.
pub fn init(strings: &impl Strings, output: Output, function: &str) {
    let _ = FUNCTION.set(
        strings
            .get("AWS_LAMBDA_FUNCTION_NAME")
            .unwrap_or_else(|| function.to_owned()),
    );
    let filter = EnvFilter::try_new(directive(strings)).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .fmt_fields(JsonFields::new())
        .event_format(FlatJson);
    let _ = match output {
        Output::Stdout => builder.with_writer(std::io::stdout).try_init(),
        Output::Stderr => builder.with_writer(std::io::stderr).try_init(),
    };
}

/// Displays an error and every `source()` under it: `outer: middle: root`.
#[derive(Debug)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}

/// The line format described in the module doc.
#[derive(Debug, Clone, Copy)]
pub struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut obj = serde_json::Map::new();
        let now = time::OffsetDateTime::now_utc();
        if let Ok(t) = now.format(&time::format_description::well_known::Rfc3339) {
            obj.insert("time".into(), t.into());
        }
        obj.insert("level".into(), meta.level().as_str().into());
        if let Some(f) = FUNCTION.get() {
            obj.insert("function".into(), f.clone().into());
        }
        obj.insert("target".into(), meta.target().into());
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                let Some(fields) = ext.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(serde_json::Value::Object(m)) =
                    serde_json::from_str::<serde_json::Value>(fields)
                {
                    obj.extend(m);
                }
            }
        }
        event.record(&mut Fields(&mut obj));
        if let Some(serde_json::Value::String(spec)) = obj.remove(EMF) {
            let ms = now.unix_timestamp_nanos() / 1_000_000;
            obj.insert("_aws".into(), emf_block(&spec, ms as i64, &obj));
        }
        let line = serde_json::Value::Object(obj).to_string();
        writer.write_str(&line)?;
        writer.write_char('\n')
    }
}

/// The `_aws` block of the Embedded Metric Format for the metrics `spec` names
/// (`Name:Unit,...`) that the line carries as numbers.
fn emf_block(
    spec: &str,
    timestamp_ms: i64,
    line: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Value {
    let metrics: Vec<serde_json::Value> = spec
        .split(',')
        .filter_map(|m| m.split_once(':'))
        .filter(|(name, _)| line.get(*name).is_some_and(serde_json::Value::is_number))
        .map(|(name, unit)| serde_json::json!({"Name": name, "Unit": unit}))
        .collect();
    serde_json::json!({
        "Timestamp": timestamp_ms,
        "CloudWatchMetrics": [{
            "Namespace": NAMESPACE,
            "Dimensions": [["function"]],
            "Metrics": metrics,
        }]
    })
}

struct Fields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), ErrorChain(value).to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    fn strings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn level_comes_from_rust_log_then_lambda_then_info() {
        assert_eq!(directive(&strings(&[])), "info");
        assert_eq!(
            directive(&strings(&[("AWS_LAMBDA_LOG_LEVEL", "DEBUG")])),
            "debug"
        );
        assert_eq!(
            directive(&strings(&[("AWS_LAMBDA_LOG_LEVEL", "FATAL")])),
            "error"
        );
        assert_eq!(
            directive(&strings(&[
                ("AWS_LAMBDA_LOG_LEVEL", "DEBUG"),
                ("RUST_LOG", "warn")
            ])),
            "warn"
        );
        assert_eq!(
            directive(&strings(&[("AWS_LAMBDA_LOG_LEVEL", "nonsense")])),
            "info"
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("poll failed")]
    struct Outer(#[source] Middle);
    #[derive(Debug, thiserror::Error)]
    #[error("query timed out")]
    struct Middle(#[source] std::io::Error);

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).extend(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_flatten_span_fields_and_carry_error_chains() {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("info"))
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .with_writer(move || w.clone())
            .finish();
        let _ = FUNCTION.set("api".into());
        tracing::subscriber::with_default(sub, || {
            let outer = tracing::info_span!("invoke", requestId = "r-1");
            let _o = outer.enter();
            let inner = tracing::info_span!(
                "request",
                tenant = tracing::field::Empty,
                agent = tracing::field::Empty
            );
            let _i = inner.enter();
            inner.record("tenant", "acme");
            let e = Outer(Middle(std::io::Error::other("connection reset")));
            tracing::error!(error = %ErrorChain(&e), aws_calls = 2u64, "request failed");
            tracing::info!(
                Requests = 1u64,
                Latency = 7u64,
                emf_metrics = "Requests:Count,Latency:Milliseconds,Missing:Count",
                "request"
            );
            tracing::debug!("not shown at info");
        });
        let text = String::from_utf8(buf.0.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_default())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let l = &lines[0];
        assert_eq!(l["level"], "ERROR");
        assert_eq!(l["message"], "request failed");
        assert_eq!(l["requestId"], "r-1");
        assert_eq!(l["tenant"], "acme");
        assert!(l.get("agent").is_none(), "unrecorded fields stay out: {l}");
        assert_eq!(l["aws_calls"], 2);
        assert_eq!(l["error"], "poll failed: query timed out: connection reset");
        assert!(l["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert_eq!(l["function"], "api");
        assert!(l.get("_aws").is_none(), "no metrics on a plain line");

        // Embedded Metric Format: the declared metrics the line carries.
        let m = &lines[1];
        assert_eq!(m["Requests"], 1);
        assert_eq!(m["Latency"], 7);
        assert!(m.get("emf_metrics").is_none());
        let cw = &m["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], "Tether");
        assert_eq!(cw["Dimensions"], serde_json::json!([["function"]]));
        assert_eq!(
            cw["Metrics"],
            serde_json::json!([
                {"Name": "Requests", "Unit": "Count"},
                {"Name": "Latency", "Unit": "Milliseconds"}
            ]),
            "a declared metric the line lacks is left out"
        );
        assert!(m["_aws"]["Timestamp"].as_i64().is_some_and(|t| t > 0));
    }
}
