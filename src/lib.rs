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

// Old paths, kept only for the commit that moves the files; the next commit removes them.
pub use commands::{example_upstream, grant as grant_cmd, plan, scan, serve, testing};
pub use gateway::{proxy, secrets, token, upstream};
pub use gitops::{git, reconcile};
pub use policy::{access, snapshot};
pub use record::{audit, quota, store};
