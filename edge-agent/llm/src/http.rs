//! HTTP/1.1 reassembly for one direction of one connection.
//!
//! Feed bytes as they were written or read ([`Stream::push`]); complete messages
//! come out with their body de-chunked (`Transfer-Encoding: chunked`) or cut at
//! `Content-Length`, and gunzipped when `Content-Encoding: gzip`. A response with
//! neither ends at [`Stream::finish`] (connection close). Garbage resynchronises
//! at the next line that starts a message.

use crate::{MAX_BODY, MAX_HEAD};
use std::io::Read;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Bytes the process wrote (requests).
    Request,
    /// Bytes the process read (responses).
    Response,
}

/// One reassembled message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// `POST` etc. for requests.
    pub method: String,
    /// The request path, or empty for responses.
    pub path: String,
    /// The status code, or 0 for requests.
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
enum State {
    Head,
    Body {
        msg: Message,
        left: usize,
    },
    /// `done`: the message was already emitted (its SSE stream ended before the
    /// last chunk); the rest of the body is consumed and discarded.
    Chunked {
        msg: Message,
        left: Option<usize>,
        done: bool,
    },
    UntilClose {
        msg: Message,
    },
}

/// Reassembly state of one direction.
#[derive(Debug)]
pub struct Stream {
    dir: Direction,
    buf: Vec<u8>,
    state: State,
    /// Messages dropped: over a limit or unparseable.
    pub dropped: u64,
}

fn finish_body(mut msg: Message) -> Option<Message> {
    if msg
        .header("content-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"))
    {
        let mut out = Vec::new();
        let mut d = flate2::read::GzDecoder::new(&msg.body[..]).take(MAX_BODY as u64 + 1);
        d.read_to_end(&mut out).ok()?;
        if out.len() > MAX_BODY {
            return None;
        }
        msg.body = out;
    }
    Some(msg)
}

impl Stream {
    pub fn new(dir: Direction) -> Self {
        Self {
            dir,
            buf: Vec::new(),
            state: State::Head,
            dropped: 0,
        }
    }

    /// Adds captured bytes; returns the messages they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Message> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            let progressed = match std::mem::replace(&mut self.state, State::Head) {
                State::Head => self.head(),
                State::Body { mut msg, left } => {
                    let n = left.min(self.buf.len());
                    msg.body.extend(self.buf.drain(..n));
                    if n == left {
                        match finish_body(msg) {
                            Some(m) => out.push(m),
                            None => self.dropped += 1,
                        }
                        true
                    } else {
                        self.state = State::Body {
                            msg,
                            left: left - n,
                        };
                        false
                    }
                }
                State::Chunked { msg, left, done } => self.chunk(msg, left, done, &mut out),
                State::UntilClose { mut msg } => {
                    let room = MAX_BODY.saturating_sub(msg.body.len());
                    let n = room.min(self.buf.len());
                    msg.body.extend(self.buf.drain(..n));
                    self.buf.clear();
                    self.state = State::UntilClose { msg };
                    false
                }
            };
            if !progressed {
                return out;
            }
        }
    }

    /// Between messages: nothing buffered, no message under way (a message
    /// complete early, at its stream's last event, still awaiting its final
    /// chunk, counts as under way).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Head) && self.buf.is_empty()
    }

    /// The connection closed: a response delimited by the close is complete.
    pub fn finish(&mut self) -> Option<Message> {
        match std::mem::replace(&mut self.state, State::Head) {
            State::UntilClose { msg } => finish_body(msg),
            _ => None,
        }
    }

    /// Parses a head at the start of the buffer; true if the state moved on.
    fn head(&mut self) -> bool {
        // Resynchronise: skip to something that can start a message.
        let starts: &[&[u8]] = match self.dir {
            Direction::Request => &[
                b"GET ",
                b"POST ",
                b"PUT ",
                b"DELETE ",
                b"PATCH ",
                b"HEAD ",
                b"OPTIONS ",
            ],
            Direction::Response => &[b"HTTP/1."],
        };
        let at = (0..self.buf.len()).find(|&i| {
            starts
                .iter()
                .any(|s| self.buf[i..].starts_with(s) || s.starts_with(&self.buf[i..]))
        });
        match at {
            Some(0) => {}
            Some(i) => {
                self.buf.drain(..i);
            }
            None => {
                self.buf.clear();
                return false;
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let (len, mut msg) = match self.dir {
            Direction::Request => {
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(&self.buf) {
                    Ok(httparse::Status::Complete(len)) => (
                        len,
                        Message {
                            method: req.method.unwrap_or_default().to_owned(),
                            path: req.path.unwrap_or_default().to_owned(),
                            status: 0,
                            headers: collect(req.headers),
                            body: Vec::new(),
                        },
                    ),
                    Ok(httparse::Status::Partial) => return self.partial_head(),
                    Err(_) => return self.skip_garbage(),
                }
            }
            Direction::Response => {
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(&self.buf) {
                    Ok(httparse::Status::Complete(len)) => (
                        len,
                        Message {
                            method: String::new(),
                            path: String::new(),
                            status: resp.code.unwrap_or(0),
                            headers: collect(resp.headers),
                            body: Vec::new(),
                        },
                    ),
                    Ok(httparse::Status::Partial) => return self.partial_head(),
                    Err(_) => return self.skip_garbage(),
                }
            }
        };
        self.buf.drain(..len);
        let chunked = msg
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = msg
            .header("content-length")
            .and_then(|v| v.trim().parse::<usize>().ok());
        self.state = if chunked {
            State::Chunked {
                msg,
                left: None,
                done: false,
            }
        } else if let Some(n) = length {
            if n > MAX_BODY {
                self.dropped += 1;
                self.buf.clear();
                return false;
            }
            State::Body {
                msg: std::mem::take(&mut msg),
                left: n,
            }
        } else if self.dir == Direction::Response
            && msg.status >= 200
            && msg.status != 204
            && msg.status != 304
        {
            State::UntilClose { msg }
        } else {
            State::Body { msg, left: 0 }
        };
        true
    }

    fn partial_head(&mut self) -> bool {
        if self.buf.len() > MAX_HEAD {
            self.dropped += 1;
            self.buf.clear();
        }
        false
    }

    fn skip_garbage(&mut self) -> bool {
        self.dropped += 1;
        // Drop one byte so the resync moves to the next candidate start.
        self.buf.drain(..1.min(self.buf.len()));
        true
    }

    fn chunk(
        &mut self,
        mut msg: Message,
        left: Option<usize>,
        done: bool,
        out: &mut Vec<Message>,
    ) -> bool {
        match left {
            None => {
                let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                    if self.buf.len() > 64 {
                        self.dropped += 1;
                        self.buf.clear();
                        return false;
                    }
                    self.state = State::Chunked {
                        msg,
                        left: None,
                        done,
                    };
                    return false;
                };
                let line = String::from_utf8_lossy(&self.buf[..eol]).to_string();
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16);
                self.buf.drain(..eol + 2);
                match size {
                    Ok(0) => {
                        // Last chunk; skip the trailer's blank line when it is here.
                        if self.buf.starts_with(b"\r\n") {
                            self.buf.drain(..2);
                        }
                        if !done {
                            match finish_body(msg) {
                                Some(m) => out.push(m),
                                None => self.dropped += 1,
                            }
                        }
                        true
                    }
                    Ok(n) if msg.body.len() + n <= MAX_BODY => {
                        self.state = State::Chunked {
                            msg,
                            left: Some(n + 2),
                            done,
                        };
                        true
                    }
                    _ => {
                        self.dropped += 1;
                        true
                    }
                }
            }
            Some(n) => {
                let take = n.min(self.buf.len());
                let data: Vec<u8> = self.buf.drain(..take).collect();
                // The last two bytes of a chunk are its CRLF.
                let keep = data.len().min(n.saturating_sub(2));
                if !done {
                    msg.body.extend_from_slice(&data[..keep]);
                }
                if take == n {
                    // Clients stop reading at an SSE stream's last event (the
                    // openai SDK closes at `[DONE]`), so the last chunk may never
                    // be read: the message is complete at that event.
                    let ended = !done && sse_ended(&msg);
                    if ended {
                        match finish_body(std::mem::take(&mut msg)) {
                            Some(m) => out.push(m),
                            None => self.dropped += 1,
                        }
                    }
                    self.state = State::Chunked {
                        msg,
                        left: None,
                        done: done || ended,
                    };
                    true
                } else {
                    self.state = State::Chunked {
                        msg,
                        left: Some(n - take),
                        done,
                    };
                    false
                }
            }
        }
    }
}

/// Whether an event-stream body has reached its provider's final event:
/// OpenAI's `data: [DONE]` or Anthropic's `message_stop`.
fn sse_ended(msg: &Message) -> bool {
    let sse = msg
        .header("content-type")
        .is_some_and(|v| v.to_ascii_lowercase().contains("text/event-stream"));
    if !sse {
        return false;
    }
    let tail = &msg.body[msg.body.len().saturating_sub(512)..];
    let has = |n: &[u8]| tail.windows(n.len()).any(|w| w == n);
    let last_event_complete = tail.ends_with(b"\n\n") || tail.ends_with(b"\r\n\r\n");
    last_event_complete
        && (has(b"data: [DONE]") || has(b"data:[DONE]") || has(b"event: message_stop"))
}

fn collect(h: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    h.iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}
