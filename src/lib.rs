//! gatehouse: an MCP gateway whose whole configuration lives in a git repository.
//!
//! See ARCHITECTURE.md for the codemap and the invariants.

#![forbid(unsafe_code)]

pub mod access;
pub mod audit;
pub mod cli;
pub mod diag;
pub mod evidence;
pub mod example_upstream;
pub mod git;
pub mod grant_cmd;
pub mod plan;
pub mod policy;
pub mod proxy;
pub mod quota;
pub mod reconcile;
pub mod repo;
pub mod scan;
pub mod secrets;
pub mod serve;
pub mod snapshot;
pub mod store;
pub mod supply;
pub mod testing;
pub mod token;
pub mod units;
pub mod upstream;
