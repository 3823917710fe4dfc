//! The `api` function: one axum router for agents and operators. On Lambda it runs
//! under `lambda_http` behind a Function URL; locally `tether-local` serves the same
//! router over TCP.
//!
//! Invariants:
//! - Every error leaves in one shape, `{"error": {"code", "message"}}`, with a stable
//!   code; bad input changes no state (it is rejected before any port is called).
//! - Request bodies above [`tether_proto::MAX_REQUEST_BYTES`] are refused with 413
//!   before they are parsed.
//! - Handlers only translate HTTP to calls on [`tether_core::ControlPlane`]; the
//!   tenant comes from the verified credential the extractors produce.

pub mod console;
pub mod error;
pub mod extract;
pub mod incidents;
pub mod routes;
pub mod status;
pub mod wiring;

pub use routes::router;
pub use wiring::{app, build, build_chain, Chain, Plane};
