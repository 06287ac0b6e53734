//! What is written down: the state database (its one writer thread and schema), the call log
//! with its hash chain, and the quota counters persisted through it.
//!
//! This layer knows no transport: nothing here speaks HTTP or MCP, and it reads no git. It
//! takes records and counters from the gateway and the reconciler and makes them durable.

pub mod audit;
pub mod quota;
pub mod store;
