//! What is written down: the state database (its one writer thread, its SQLite and PostgreSQL
//! backends, its schema), the call log with one hash chain per replica, the quota counters
//! persisted through it, and the replicas view.
//!
//! This layer knows no transport: nothing here speaks HTTP or MCP, and it reads no git. It
//! takes records and counters from the gateway and the reconciler and makes them durable.

pub mod audit;
pub mod quota;
pub mod replicas;
pub mod store;
