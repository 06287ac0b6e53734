//! gatehouse: an MCP gateway whose whole configuration lives in a git repository.
//!
//! See ARCHITECTURE.md for the codemap and the invariants.

#![forbid(unsafe_code)]

pub mod cli;
pub mod commands;
pub mod diag;
pub mod evidence;
pub mod gateway;
pub mod gitops;
pub mod policy;
pub mod record;
pub mod repo;
pub mod supply;
pub mod units;
