//! LLM API calls recovered from the bytes of one connection, as captured by the
//! agent's TLS probes (issue 5): HTTP/1.1 reassembly, then parsers for the
//! OpenAI-compatible chat completions and responses APIs, Anthropic messages and
//! Google Gemini, streaming (SSE) included.
//!
//! Invariants:
//! - Pure and total: bytes in, calls out; no I/O, no panics on any input (property
//!   tests feed arbitrary bytes in arbitrary chunks).
//! - Bounded: a message whose head or body exceeds [`MAX_HEAD`] / [`MAX_BODY`] is
//!   dropped and counted, never buffered without limit.
//! - Prompt and completion text are never kept by [`parse_call`]: only model
//!   names, token counts, status and timing. [`content`] extracts the text, for
//!   the caller to redact, only when a tenant's policy asks for it.

pub mod http;
pub mod llm;

pub use http::{Direction, Message, Stream};
pub use llm::{content, parse_call, Content, LlmCall};

/// Largest request or response head kept (bytes).
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest body kept (bytes, after de-chunking and decompression).
pub const MAX_BODY: usize = 1024 * 1024;
