//! From a request and its response to an [`LlmCall`], following the
//! OpenTelemetry GenAI semantic conventions' vocabulary (`gen_ai.system`,
//! `gen_ai.request.model`, `gen_ai.response.model`, `gen_ai.usage.input_tokens`,
//! `gen_ai.usage.output_tokens`, `error.type`).
//!
//! Providers are recognised by path: `/chat/completions`, `/responses`,
//! `/completions` (OpenAI-compatible), `/v1/messages` (Anthropic),
//! `:generateContent` / `:streamGenerateContent` (Gemini). Streams are
//! `text/event-stream`: usage arrives in the last events.

use crate::http::Message;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmCall {
    /// `gen_ai.system`: `openai`, `anthropic`, `gemini`.
    pub system: &'static str,
    /// `gen_ai.operation.name`: `chat`, `responses`, `text_completion`, `generate_content`.
    pub operation: &'static str,
    pub request_model: Option<String>,
    pub response_model: Option<String>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub status: u16,
    /// `error.type`: the provider's error type or code, else the HTTP status class.
    pub error_type: Option<String>,
    pub streaming: bool,
}

fn kind(path: &str) -> Option<(&'static str, &'static str)> {
    let p = path.split('?').next().unwrap_or(path);
    if p.ends_with("/chat/completions") {
        Some(("openai", "chat"))
    } else if p.ends_with("/responses") {
        Some(("openai", "responses"))
    } else if p.ends_with("/completions") {
        Some(("openai", "text_completion"))
    } else if p.ends_with("/v1/messages") {
        Some(("anthropic", "chat"))
    } else if p.contains(":generateContent") || p.contains(":streamGenerateContent") {
        Some(("gemini", "generate_content"))
    } else {
        None
    }
}

/// The JSON payloads of an SSE body's `data:` lines (`[DONE]` and junk skipped).
fn sse_events(body: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect()
}

/// A response body's JSON documents: the SSE events of a stream, else the one
/// body (none when it is not JSON).
fn events_of(resp: &Message, streaming: bool) -> Vec<Value> {
    if streaming {
        sse_events(&resp.body)
    } else {
        serde_json::from_slice(&resp.body)
            .map(|v| vec![v])
            .unwrap_or_default()
    }
}

fn u(v: &Value) -> Option<u64> {
    v.as_u64()
}

fn s(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

/// Parses one request/response pair; `None` when it is not an LLM API call.
pub fn parse_call(req: &Message, resp: &Message) -> Option<LlmCall> {
    let (system, operation) = kind(&req.path)?;
    let rq: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let streaming = resp
        .header("content-type")
        .is_some_and(|c| c.contains("text/event-stream"))
        || rq["stream"].as_bool() == Some(true);
    let mut call = LlmCall {
        system,
        operation,
        request_model: s(&rq["model"]).or_else(|| {
            // Gemini names the model in the path: /v1beta/models/<model>:generateContent
            (system == "gemini").then(|| {
                req.path
                    .split("/models/")
                    .nth(1)
                    .and_then(|m| m.split(':').next())
                    .unwrap_or_default()
                    .to_owned()
            })
        }),
        response_model: None,
        input_tokens: None,
        output_tokens: None,
        status: resp.status,
        error_type: None,
        streaming,
    };
    let events = events_of(resp, streaming);
    for e in &events {
        match system {
            "openai" => {
                call.response_model = s(&e["model"])
                    .or_else(|| s(&e["response"]["model"]))
                    .or(call.response_model.take());
                let usage = if e["usage"].is_object() {
                    &e["usage"]
                } else {
                    &e["response"]["usage"]
                };
                if let Some(n) = u(&usage["prompt_tokens"]).or_else(|| u(&usage["input_tokens"])) {
                    call.input_tokens = Some(n);
                }
                if let Some(n) =
                    u(&usage["completion_tokens"]).or_else(|| u(&usage["output_tokens"]))
                {
                    call.output_tokens = Some(n);
                }
            }
            "anthropic" => {
                let m = if e["message"].is_object() {
                    &e["message"]
                } else {
                    e
                };
                if let Some(model) = s(&m["model"]) {
                    call.response_model = Some(model);
                }
                if let Some(n) = u(&m["usage"]["input_tokens"]) {
                    call.input_tokens = Some(n);
                }
                if let Some(n) =
                    u(&m["usage"]["output_tokens"]).or_else(|| u(&e["usage"]["output_tokens"]))
                {
                    call.output_tokens = Some(n);
                }
            }
            _ => {
                if let Some(model) = s(&e["modelVersion"]) {
                    call.response_model = Some(model);
                }
                let usage = &e["usageMetadata"];
                if let Some(n) = u(&usage["promptTokenCount"]) {
                    call.input_tokens = Some(n);
                }
                if let Some(n) = u(&usage["candidatesTokenCount"]) {
                    call.output_tokens = Some(n);
                }
            }
        }
        if let Some(t) = s(&e["error"]["type"])
            .or_else(|| s(&e["error"]["code"]))
            .or_else(|| s(&e["error"]["status"]))
        {
            call.error_type = Some(t);
        }
    }
    if call.error_type.is_none() && resp.status >= 400 {
        call.error_type = Some(resp.status.to_string());
    }
    Some(call)
}

/// The text of one call, for tenants whose policy lets (redacted) content leave
/// the host. Only [`content`] builds it, and only when asked: [`parse_call`]
/// never keeps text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Content {
    /// The request's messages, one `role: text` line each.
    pub prompt: String,
    /// The answer's text (streamed deltas joined).
    pub completion: String,
}

/// Text of a message `content`: a string, or a list of parts with `text`.
fn text_of(v: &Value) -> String {
    match v {
        Value::String(t) => t.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str().or_else(|| p.as_str()))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn lines(msgs: &Value, role: &str, content: &str) -> Vec<String> {
    msgs.as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let who = m[role].as_str().unwrap_or("user");
            format!("{who}: {}", text_of(&m[content]))
        })
        .collect()
}

/// Prompt and completion text of a request/response pair (empty strings for
/// what a provider's shape does not carry).
pub fn content(req: &Message, resp: &Message) -> Content {
    let Some((system, _)) = kind(&req.path) else {
        return Content::default();
    };
    let rq: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let streaming = resp
        .header("content-type")
        .is_some_and(|c| c.contains("text/event-stream"));
    let events = events_of(resp, streaming);
    let mut prompt = Vec::new();
    let mut completion = String::new();
    match system {
        "openai" => {
            prompt.extend(lines(&rq["messages"], "role", "content"));
            match &rq["input"] {
                Value::String(t) => prompt.push(format!("user: {t}")),
                v @ Value::Array(_) => prompt.extend(lines(v, "role", "content")),
                _ => {}
            }
            if let Some(p) = rq["prompt"].as_str() {
                prompt.push(format!("user: {p}"));
            }
            for e in &events {
                for c in e["choices"].as_array().into_iter().flatten() {
                    completion.push_str(&text_of(&c["message"]["content"]));
                    completion.push_str(&text_of(&c["delta"]["content"]));
                    completion.push_str(c["text"].as_str().unwrap_or(""));
                }
                for o in e["output"].as_array().into_iter().flatten() {
                    completion.push_str(&text_of(&o["content"]));
                }
                if e["type"] == "response.output_text.delta" {
                    completion.push_str(e["delta"].as_str().unwrap_or(""));
                }
            }
        }
        "anthropic" => {
            if let Some(sys) = rq["system"].as_str() {
                prompt.push(format!("system: {sys}"));
            }
            prompt.extend(lines(&rq["messages"], "role", "content"));
            for e in &events {
                completion.push_str(&text_of(&e["content"]));
                if e["type"] == "content_block_delta" {
                    completion.push_str(e["delta"]["text"].as_str().unwrap_or(""));
                }
            }
        }
        _ => {
            prompt.extend(lines(&rq["contents"], "role", "parts"));
            for e in &events {
                for c in e["candidates"].as_array().into_iter().flatten() {
                    completion.push_str(&text_of(&c["content"]["parts"]));
                }
            }
        }
    }
    Content {
        prompt: prompt.join("\n"),
        completion,
    }
}
