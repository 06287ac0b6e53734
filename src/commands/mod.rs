//! The command implementations that are glue over the layers rather than a layer of their
//! own: `serve` (the daemon), `plan` (with `usage`, its `--usage` part), `grant`, `scan`, `testing` (`gatehouse test`) and the
//! `example-upstream` stdio server. `cli` parses and dispatches to them.
//!
//! Arrows point into the layers: nothing outside this folder (and `cli`) imports from here.

pub mod example_upstream;
pub mod grant;
pub mod plan;
pub mod scan;
pub mod serve;
pub mod testing;
pub mod usage;
