//! Tether's domain: tenancy, storage keys, reconciliation, the poll, credentials,
//! and the ports adapters implement.
//!
//! Invariant: this crate knows nothing of AWS, Lambda or HTTP (a test in
//! `tests/tests/architecture.rs` checks its dependency list). Time comes through the
//! [`port::Clock`] port; I/O only through the other ports.

pub mod credential;
pub mod error;
#[cfg(any(test, feature = "fakes"))]
pub mod fake;
pub mod incident;
pub mod key;
pub mod model;
pub mod poll;
pub mod port;
pub mod reconcile;
pub mod service;
pub mod tenant;

pub use error::ControlError;
pub use service::{ControlPlane, Settings};
