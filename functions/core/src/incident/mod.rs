//! The incident chain's domain: artifacts, the observer's windows, the rule and
//! runbook catalogs, the Rego policy gate, and the roles as use cases over ports.
//! See `docs/artifacts.md`.

pub mod artifact;
pub mod catalog;
#[cfg(any(test, feature = "fakes"))]
pub mod fake;
pub mod observe;
#[cfg(any(test, feature = "fakes"))]
pub mod offline;
pub mod policy;
pub mod port;
pub mod roles;
pub mod run;
