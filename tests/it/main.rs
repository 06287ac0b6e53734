//! The one integration-test binary: scenarios driven the way a user drives gatehouse.

mod audit;
mod check;
mod cli;
mod deploy;
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
mod replicas;
mod scan;
mod services;
mod signed;
mod services_redis;
mod shared_quotas;
mod sso;
mod stateless;
mod rmcp_peer;
mod proxy;
mod support;
mod upstream;
