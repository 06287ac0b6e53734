//! The one integration-test binary: scenarios driven the way a user drives gatehouse.

mod audit;
mod check;
mod cli;
mod e2e;
mod evidence;
mod fuzz;
mod gateway;
mod hardening;
mod pins;
mod plan;
mod props;
mod reconcile;
mod relay;
mod scan;
mod signed;
mod sso;
mod stateless;
mod rmcp_peer;
mod proxy;
mod support;
mod upstream;
