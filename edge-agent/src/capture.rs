//! From captured TLS plaintext to LLM calls: per-connection HTTP/1.1 reassembly
//! (tether-llm) of what instrumented processes write and read, paired request to
//! response, timed with the kernel's timestamps.
//!
//! Invariants:
//! - Pure: records in, [`Captured`] calls out; no I/O, no clock (timestamps come
//!   from the records), so it is tested with crafted records.
//! - Bounded: at most [`MAX_CONNS`] connections are tracked (the least recently
//!   seen is dropped first) and a connection idle for [`IDLE_NS`] is forgotten.
//! - A gap in the bytes (a call cut at the kernel's payload bound, or a buffer the
//!   kernel could not read) resets that connection's reassembly and is counted:
//!   a call is never assembled from bytes that are not contiguous.
//! - Prompt and completion text never leave this module, except for processes
//!   in [`Capture::content_pids`] (workloads whose tenant policy says
//!   `llm_content: redacted`), and then only through [`crate::redact::redact`].

use crate::ebpf::record::{Kind, Record, FLAG_FAULT, FLAG_TRUNCATED};
use std::collections::{HashMap, HashSet, VecDeque};
use tether_llm::{parse_call, Content, Direction, LlmCall, Message, Stream};

pub const MAX_CONNS: usize = 4096;
pub const IDLE_NS: u64 = 300 * 1_000_000_000;
/// Requests waiting for their response on one connection, at most.
const MAX_PENDING: usize = 64;

/// One LLM call seen on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Captured {
    pub pid: u32,
    pub call: LlmCall,
    /// CLOCK_MONOTONIC ns: the request's first write, the response's last read.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Redacted prompt and completion, for processes whose policy allows it.
    pub content: Option<Content>,
}

impl Captured {
    pub fn duration_ms(&self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1e6
    }
}

#[derive(Debug)]
struct Conn {
    writes: Stream,
    reads: Stream,
    /// Start of the request being written, once its first byte went out.
    writing_since: Option<u64>,
    pending: VecDeque<(Message, u64)>,
    last_ns: u64,
}

impl Conn {
    fn new() -> Self {
        Self {
            writes: Stream::new(Direction::Request),
            reads: Stream::new(Direction::Response),
            writing_since: None,
            pending: VecDeque::new(),
            last_ns: 0,
        }
    }
}

/// Counters a status line and the benchmark read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CaptureStats {
    pub records: u64,
    pub calls: u64,
    /// Resets because bytes were missing (truncated or unreadable calls).
    pub gaps: u64,
    /// Responses with no request to pair (capture attached mid-call).
    pub unpaired: u64,
    /// HTTP messages that were not LLM API calls.
    pub other_http: u64,
    pub evicted: u64,
    /// Read sides reset because a new request began while they held a
    /// half-read answer nobody waits for.
    pub stale_reads: u64,
}

#[derive(Debug, Default)]
pub struct Capture {
    conns: HashMap<(u32, u64), Conn>,
    pub stats: CaptureStats,
    /// Processes whose calls carry redacted content.
    pub content_pids: HashSet<u32>,
}

impl Capture {
    /// Connections tracked now.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Takes one SSL data record; returns the calls it completed.
    pub fn push(&mut self, r: &Record<'_>) -> Vec<Captured> {
        self.stats.records += 1;
        if r.kind == Kind::Connect {
            return vec![];
        }
        let key = (r.pid, r.conn);
        if !self.conns.contains_key(&key) && self.conns.len() >= MAX_CONNS {
            self.evict_oldest();
        }
        let conn = self.conns.entry(key).or_insert_with(Conn::new);
        conn.last_ns = r.end_ns;
        if r.flags & (FLAG_TRUNCATED | FLAG_FAULT) != 0 {
            // Bytes are missing: whatever was half-assembled cannot be trusted.
            self.stats.gaps += 1;
            *conn = Conn::new();
            conn.last_ns = r.end_ns;
            return vec![];
        }
        let mut out = Vec::new();
        match r.kind {
            Kind::Write => {
                if r.offset == 0 && conn.writes.is_idle() {
                    conn.writing_since = Some(r.start_ns);
                    if conn.pending.is_empty() && !conn.reads.is_idle() {
                        // A new request while no answer is awaited: what the read
                        // side holds is stale (a stream its client stopped reading
                        // at the last event, or an `SSL *` reused for a new
                        // connection).
                        conn.reads = Stream::new(Direction::Response);
                        self.stats.stale_reads += 1;
                    }
                }
                for m in conn.writes.push(r.data) {
                    let since = conn.writing_since.take().unwrap_or(r.start_ns);
                    if conn.pending.len() >= MAX_PENDING {
                        conn.pending.pop_front();
                    }
                    conn.pending.push_back((m, since));
                }
            }
            Kind::Read => {
                for resp in conn.reads.push(r.data) {
                    if resp.status / 100 == 1 {
                        continue; // 100 Continue: the real answer follows
                    }
                    let Some((req, start_ns)) = conn.pending.pop_front() else {
                        self.stats.unpaired += 1;
                        continue;
                    };
                    match parse_call(&req, &resp) {
                        Some(call) => {
                            self.stats.calls += 1;
                            let content = self.content_pids.contains(&r.pid).then(|| {
                                let c = tether_llm::content(&req, &resp);
                                Content {
                                    prompt: crate::redact::redact(&c.prompt),
                                    completion: crate::redact::redact(&c.completion),
                                }
                            });
                            out.push(Captured {
                                pid: r.pid,
                                call,
                                start_ns,
                                end_ns: r.end_ns,
                                content,
                            });
                        }
                        None => self.stats.other_http += 1,
                    }
                }
            }
            Kind::Connect => {}
        }
        out
    }

    /// Forgets connections idle since before `now_ns - IDLE_NS`, and those of
    /// processes `alive` says are gone.
    pub fn sweep(&mut self, now_ns: u64, alive: impl Fn(u32) -> bool) {
        self.conns
            .retain(|(pid, _), c| now_ns.saturating_sub(c.last_ns) < IDLE_NS && alive(*pid));
    }

    fn evict_oldest(&mut self) {
        if let Some(k) = self
            .conns
            .iter()
            .min_by_key(|(_, c)| c.last_ns)
            .map(|(k, _)| *k)
        {
            self.conns.remove(&k);
            self.stats.evicted += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ebpf::record::{decode, encode};

    fn feed(
        c: &mut Capture,
        kind: u8,
        pid: u32,
        conn: u64,
        t: (u64, u64),
        bytes: &[u8],
    ) -> Vec<Captured> {
        let mut out = Vec::new();
        for (i, chunk) in bytes.chunks(4096).enumerate() {
            let b = encode(
                kind,
                pid,
                conn,
                t,
                (i * 4096) as u32,
                bytes.len() as u32,
                chunk,
            );
            out.extend(c.push(&decode(&b).expect("decodes")));
        }
        out
    }

    fn request(model: &str) -> Vec<u8> {
        let body = format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"secret prompt"}}]}}"#
        );
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn response(model: &str, status: u16) -> Vec<u8> {
        let body = if status == 200 {
            format!(
                r#"{{"model":"{model}","choices":[{{"message":{{"content":"secret answer"}}}}],"usage":{{"prompt_tokens":11,"completion_tokens":7}}}}"#
            )
        } else {
            r#"{"error":{"type":"rate_limit_error","code":"rate_limit_exceeded"}}"#.to_owned()
        };
        format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
    }

    #[test]
    fn a_request_and_its_response_become_one_timed_call() {
        let mut c = Capture::default();
        assert!(feed(
            &mut c,
            2,
            10,
            0xa,
            (1_000_000, 1_000_100),
            &request("gpt-4o")
        )
        .is_empty());
        let calls = feed(
            &mut c,
            3,
            10,
            0xa,
            (1_000_200, 51_000_000),
            &response("gpt-4o-2024", 200),
        );
        assert_eq!(calls.len(), 1);
        let k = &calls[0];
        assert_eq!((k.pid, k.start_ns, k.end_ns), (10, 1_000_000, 51_000_000));
        assert_eq!(k.call.request_model.as_deref(), Some("gpt-4o"));
        assert_eq!(k.call.response_model.as_deref(), Some("gpt-4o-2024"));
        assert_eq!(
            (k.call.input_tokens, k.call.output_tokens),
            (Some(11), Some(7))
        );
        assert_eq!(k.duration_ms(), 50.0);
        let shown = format!("{calls:?}");
        assert!(
            !shown.contains("secret"),
            "no prompt or completion text is kept: {shown}"
        );
    }

    #[test]
    fn content_travels_redacted_and_only_for_processes_whose_policy_allows_it() {
        let mut c = Capture::default();
        c.content_pids.insert(20);
        for pid in [10, 20] {
            feed(&mut c, 2, pid, 0xa, (1, 1), &request("gpt-4o"));
        }
        let none = feed(&mut c, 3, 10, 0xa, (2, 3), &response("gpt-4o", 200));
        let some = feed(&mut c, 3, 20, 0xa, (2, 3), &response("gpt-4o", 200));
        assert_eq!(none[0].content, None);
        let got = some[0].content.clone().expect("content");
        assert_eq!(got.prompt, "user: secret prompt");
        assert_eq!(got.completion, "secret answer");
    }

    #[test]
    fn connections_are_kept_apart_by_process_and_ssl_pointer() {
        let mut c = Capture::default();
        feed(&mut c, 2, 10, 0xa, (1, 1), &request("a"));
        feed(&mut c, 2, 10, 0xb, (2, 2), &request("b"));
        feed(&mut c, 2, 11, 0xa, (3, 3), &request("c"));
        let b = feed(&mut c, 3, 10, 0xb, (4, 9), &response("b", 200));
        let a = feed(&mut c, 3, 11, 0xa, (5, 9), &response("c", 429));
        assert_eq!(b[0].call.request_model.as_deref(), Some("b"));
        assert_eq!(a[0].call.request_model.as_deref(), Some("c"));
        assert_eq!(a[0].call.status, 429);
        assert_eq!(c.connections(), 3);
    }

    #[test]
    fn pipelined_requests_pair_in_order_and_large_bodies_span_chunks() {
        let mut c = Capture::default();
        let big = "x".repeat(10_000);
        let mut both = request(&big);
        both.extend(request("second"));
        feed(&mut c, 2, 1, 1, (1, 1), &both);
        let first = feed(&mut c, 3, 1, 1, (2, 3), &response("m", 200));
        let second = feed(&mut c, 3, 1, 1, (4, 5), &response("m", 200));
        assert_eq!(first[0].call.request_model.as_deref(), Some(big.as_str()));
        assert_eq!(second[0].call.request_model.as_deref(), Some("second"));
    }

    #[test]
    fn a_gap_resets_the_connection_and_is_counted() {
        let mut c = Capture::default();
        feed(&mut c, 2, 1, 1, (1, 1), &request("m"));
        let mut b = encode(3, 1, 1, (2, 3), 0, 99_999, b"HTTP/1.1 200 OK\r\n");
        b[2] = FLAG_TRUNCATED as u8;
        assert!(c.push(&decode(&b).expect("decodes")).is_empty());
        assert_eq!(c.stats.gaps, 1);
        // The request was forgotten with the gap: the next response has no pair.
        assert!(feed(&mut c, 3, 1, 1, (4, 5), &response("m", 200)).is_empty());
        assert_eq!(c.stats.unpaired, 1);
    }

    #[test]
    fn a_stream_abandoned_at_its_last_event_does_not_spoil_the_next_call() {
        // The openai SDK closes a stream at `data: [DONE]` without reading the
        // last chunk; the allocator then hands the same `SSL *` to the next
        // connection.
        let mut c = Capture::default();
        let body = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":7}}\n\ndata: [DONE]\n\n";
        let sse = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n",
            body.len()
        );
        for i in 0..3u64 {
            let t = i * 1_000_000_000;
            feed(&mut c, 2, 1, 0xa, (t, t), &request("gpt-4o"));
            let calls = feed(&mut c, 3, 1, 0xa, (t + 10, t + 60_000_000), sse.as_bytes());
            assert_eq!(calls.len(), 1, "call {i}");
            assert_eq!(calls[0].duration_ms(), 60.0, "timed from its own request");
            assert_eq!(calls[0].call.output_tokens, Some(7));
        }
        assert_eq!(c.stats.stale_reads, 2);
    }

    #[test]
    fn idle_dead_and_excess_connections_are_forgotten() {
        let mut c = Capture::default();
        feed(&mut c, 2, 1, 1, (1, 1), &request("m"));
        feed(&mut c, 2, 2, 1, (IDLE_NS + 5, IDLE_NS + 5), &request("m"));
        feed(&mut c, 2, 3, 1, (IDLE_NS + 6, IDLE_NS + 6), &request("m"));
        c.sweep(IDLE_NS + 10, |pid| pid != 3);
        assert_eq!(c.connections(), 1, "pid 1 idle, pid 3 dead");
        for conn in 0..(MAX_CONNS as u64 + 10) {
            feed(
                &mut c,
                2,
                9,
                conn + 100,
                (IDLE_NS + 20 + conn, IDLE_NS + 20 + conn),
                b"GET / HTTP/1.1\r\n",
            );
        }
        assert_eq!(c.connections(), MAX_CONNS);
        assert_eq!(c.stats.evicted, 11);
    }
}
