//! Recorded request / response pairs per provider, through the reassembler and
//! the parsers; malformed, truncated and interleaved input; and property tests
//! that feed arbitrary bytes in arbitrary chunks without a panic.

use proptest::prelude::*;
use tether_llm::{parse_call, Direction, Stream};

fn request(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: api.example\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn response(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn chunked(status: u16, content_type: &str, parts: &[&str]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    for p in parts {
        out.push_str(&format!("{:x}\r\n{p}\r\n", p.len()));
    }
    out.push_str("0\r\n\r\n");
    out.into_bytes()
}

fn one(dir: Direction, bytes: &[u8]) -> tether_llm::Message {
    let mut s = Stream::new(dir);
    let mut got = s.push(bytes);
    assert_eq!(
        got.len(),
        1,
        "one message from {}",
        String::from_utf8_lossy(bytes)
    );
    got.remove(0)
}

#[test]
fn openai_chat_completion_plain_and_streamed() {
    let req = one(
        Direction::Request,
        &request(
            "/v1/chat/completions",
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"secret prompt"}]}"#,
        ),
    );
    let resp = one(
        Direction::Response,
        &response(
            200,
            "application/json",
            r#"{"id":"c1","model":"gpt-4o-mini-2024-07-18","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}"#,
        ),
    );
    let c = parse_call(&req, &resp).expect("an LLM call");
    assert_eq!((c.system, c.operation), ("openai", "chat"));
    assert_eq!(c.request_model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(c.response_model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
    assert_eq!(
        (c.input_tokens, c.output_tokens, c.status),
        (Some(12), Some(5), 200)
    );
    assert!(!c.streaming && c.error_type.is_none());

    let req = one(
        Direction::Request,
        &request(
            "/v1/chat/completions",
            r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}"#,
        ),
    );
    let resp = one(
        Direction::Response,
        &chunked(200, "text/event-stream", &[
            "data: {\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"delta\":{\"content\":\"He\"}}]}\n\n",
            "data: {\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"delta\":{\"content\":\"llo\"}}]}\n\n",
            "data: {\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
        ]),
    );
    let c = parse_call(&req, &resp).expect("streamed call");
    assert!(c.streaming);
    assert_eq!(
        (c.input_tokens, c.output_tokens),
        (Some(9), Some(2)),
        "usage arrives at the end"
    );
    assert_eq!(c.response_model.as_deref(), Some("gpt-4o-2024-08-06"));
}

#[test]
fn openai_responses_anthropic_and_gemini() {
    let req = one(
        Direction::Request,
        &request("/v1/responses", r#"{"model":"gpt-4.1","input":"x"}"#),
    );
    let resp = one(
        Direction::Response,
        &response(
            200,
            "application/json",
            r#"{"model":"gpt-4.1-2025-04-14","usage":{"input_tokens":30,"output_tokens":7}}"#,
        ),
    );
    let c = parse_call(&req, &resp).expect("responses");
    assert_eq!(
        (c.operation, c.input_tokens, c.output_tokens),
        ("responses", Some(30), Some(7))
    );

    let req = one(
        Direction::Request,
        &request(
            "/v1/messages",
            r#"{"model":"claude-sonnet-4","max_tokens":64,"stream":true}"#,
        ),
    );
    let resp = one(
        Direction::Response,
        &response(200, "text/event-stream", concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-20250514\",\"usage\":{\"input_tokens\":21,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
        )),
    );
    let c = parse_call(&req, &resp).expect("anthropic");
    assert_eq!(c.system, "anthropic");
    assert_eq!(
        c.response_model.as_deref(),
        Some("claude-sonnet-4-20250514")
    );
    assert_eq!((c.input_tokens, c.output_tokens), (Some(21), Some(15)));

    let req = one(
        Direction::Request,
        &request(
            "/v1beta/models/gemini-2.0-flash:generateContent",
            r#"{"contents":[]}"#,
        ),
    );
    let resp = one(
        Direction::Response,
        &response(
            200,
            "application/json",
            r#"{"modelVersion":"gemini-2.0-flash-001","usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":8}}"#,
        ),
    );
    let c = parse_call(&req, &resp).expect("gemini");
    assert_eq!(c.request_model.as_deref(), Some("gemini-2.0-flash"));
    assert_eq!((c.input_tokens, c.output_tokens), (Some(4), Some(8)));
}

#[test]
fn errors_rate_limits_and_non_llm_traffic() {
    let req = one(
        Direction::Request,
        &request("/v1/chat/completions", r#"{"model":"gpt-4o"}"#),
    );
    let resp = one(
        Direction::Response,
        &response(
            429,
            "application/json",
            r#"{"error":{"type":"rate_limit_exceeded","message":"slow down"}}"#,
        ),
    );
    let c = parse_call(&req, &resp).expect("call");
    assert_eq!(
        (c.status, c.error_type.as_deref()),
        (429, Some("rate_limit_exceeded"))
    );
    let resp = one(
        Direction::Response,
        &response(502, "text/html", "<html>bad gateway</html>"),
    );
    assert_eq!(
        parse_call(&req, &resp).expect("call").error_type.as_deref(),
        Some("502")
    );
    let other = one(Direction::Request, &request("/healthz", "{}"));
    assert_eq!(parse_call(&other, &resp), None);
}

#[test]
fn gzip_truncation_garbage_and_several_messages_in_one_stream() {
    use std::io::Write;
    let body = r#"{"model":"gpt-4o","usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.as_bytes()).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let mut bytes = format!(
        "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
        gz.len()
    )
    .into_bytes();
    bytes.extend_from_slice(&gz);
    let mut s = Stream::new(Direction::Response);
    // Garbage first (a capture that started mid-message), then two responses.
    let mut input = b"tail of something else\r\n".to_vec();
    input.extend_from_slice(&bytes);
    input.extend_from_slice(&response(200, "application/json", "{}"));
    let got = s.push(&input);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].body, body.as_bytes());
    // Truncated: the body never completes, nothing comes out, nothing panics.
    let mut t = Stream::new(Direction::Response);
    assert!(t
        .push(&response(200, "application/json", r#"{"model":"x"}"#)[..40])
        .is_empty());
    // A response delimited by the connection closing.
    let mut c = Stream::new(Direction::Response);
    assert!(c
        .push(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\":1}")
        .is_empty());
    assert_eq!(c.finish().expect("closed").body, b"{\"a\":1}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096), cut in 1usize..97) {
        for dir in [Direction::Request, Direction::Response] {
            let mut s = Stream::new(dir);
            for part in data.chunks(cut) {
                for m in s.push(part) {
                    let _ = parse_call(&m, &m);
                }
            }
            let _ = s.finish();
        }
    }

    #[test]
    fn any_chunking_of_a_real_exchange_gives_the_same_call(cut in 1usize..200) {
        let resp_bytes = chunked(200, "text/event-stream", &[
            "data: {\"model\":\"m\",\"usage\":null}\n\n",
            "data: {\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}}\n\n",
        ]);
        let req = {
            let mut s = Stream::new(Direction::Request);
            s.push(&request("/v1/chat/completions", r#"{"model":"m","stream":true}"#)).remove(0)
        };
        let mut s = Stream::new(Direction::Response);
        let mut got = Vec::new();
        for part in resp_bytes.chunks(cut) {
            got.extend(s.push(part));
        }
        prop_assert_eq!(got.len(), 1);
        let c = parse_call(&req, &got[0]).expect("call");
        prop_assert_eq!((c.input_tokens, c.output_tokens), (Some(5), Some(6)));
    }
}

#[test]
fn an_sse_stream_is_complete_at_its_last_event_even_if_the_last_chunk_is_never_read() {
    // The openai SDK stops reading at `data: [DONE]`; the terminating chunk may
    // never pass through SSL_read.
    let done = chunked(
        200,
        "text/event-stream",
        &[
            "data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
            "data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":7}}\n\n",
            "data: [DONE]\n\n",
        ],
    );
    let cut = &done[..done.len() - b"0\r\n\r\n".len()];
    let mut s = Stream::new(Direction::Response);
    let got = s.push(cut);
    assert_eq!(got.len(), 1, "complete at [DONE]");
    let req = one(
        Direction::Request,
        &request(
            "/v1/chat/completions",
            r#"{"model":"gpt-4o","stream":true}"#,
        ),
    );
    let call = parse_call(&req, &got[0]).expect("a call");
    assert_eq!((call.input_tokens, call.output_tokens), (Some(11), Some(7)));
    // When the last chunk does arrive it completes nothing more, and the next
    // response on the connection still parses.
    let mut rest = b"0\r\n\r\n".to_vec();
    rest.extend(response(200, "application/json", "{}"));
    let next = s.push(&rest);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].body, b"{}");
    // Anthropic's stream ends at message_stop.
    let anthropic = chunked(
        200,
        "text/event-stream",
        &["event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"],
    );
    let mut a = Stream::new(Direction::Response);
    assert_eq!(a.push(&anthropic[..anthropic.len() - 5]).len(), 1);
    // A stream cut before its last event is not complete.
    let mut early = Stream::new(Direction::Response);
    let half = chunked(200, "text/event-stream", &["data: {\"choices\":[]}\n\n"]);
    assert!(early.push(&half[..half.len() - 5]).is_empty());
}

#[test]
fn content_is_extracted_only_on_request_for_each_provider() {
    use tether_llm::content;
    let req = one(
        Direction::Request,
        &request(
            "/v1/chat/completions",
            r#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"say hi"}]}]}"#,
        ),
    );
    let plain = one(
        Direction::Response,
        &response(
            200,
            "application/json",
            r#"{"choices":[{"message":{"content":"hello"}}]}"#,
        ),
    );
    let c = content(&req, &plain);
    assert_eq!(c.prompt, "system: be brief\nuser: say hi");
    assert_eq!(c.completion, "hello");
    let streamed = one(
        Direction::Response,
        &chunked(
            200,
            "text/event-stream",
            &[
                "data: {\"choices\":[{\"delta\":{\"content\":\"hel\"}}]}\n\n",
                "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\ndata: [DONE]\n\n",
            ],
        ),
    );
    assert_eq!(content(&req, &streamed).completion, "hello");
    let areq = one(
        Direction::Request,
        &request(
            "/v1/messages",
            r#"{"model":"claude","system":"terse","messages":[{"role":"user","content":"hi"}]}"#,
        ),
    );
    let aresp = one(
        Direction::Response,
        &response(
            200,
            "application/json",
            r#"{"content":[{"type":"text","text":"hey"}]}"#,
        ),
    );
    let a = content(&areq, &aresp);
    assert_eq!(
        (a.prompt.as_str(), a.completion.as_str()),
        ("system: terse\nuser: hi", "hey")
    );
    let astream = one(
        Direction::Response,
        &chunked(
            200,
            "text/event-stream",
            &["event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"he\"}}\n\n",
              "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"y\"}}\n\n"],
        ),
    );
    assert_eq!(content(&areq, &astream).completion, "hey");
    let greq = one(
        Direction::Request,
        &request(
            "/v1beta/models/gemini-2.0-flash:generateContent",
            r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#,
        ),
    );
    let gresp = one(
        Direction::Response,
        &response(
            200,
            "application/json",
            r#"{"candidates":[{"content":{"parts":[{"text":"yo"}]}}]}"#,
        ),
    );
    let g = content(&greq, &gresp);
    assert_eq!(
        (g.prompt.as_str(), g.completion.as_str()),
        ("user: hi", "yo")
    );
    // parse_call still keeps no text.
    let call = parse_call(&req, &plain).expect("call");
    assert!(!format!("{call:?}").contains("say hi") && !format!("{call:?}").contains("hello"));
}
