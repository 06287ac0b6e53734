//! MCP in and out: the proxy that clients talk to, the upstream clients it forwards to, and
//! what authenticates a caller or an upstream (grant tokens, custody secrets).
//!
//! The gateway loads the active snapshot once per request and never stores one (only
//! `gitops::reconcile` does); it never reads git. Decisions come from the pure `policy`
//! engine; what is written down goes through `record`.

pub mod auth;
pub mod proxy;
pub mod secrets;
pub mod token;
pub mod upstream;
