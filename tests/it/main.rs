//! The one integration-test binary: scenarios driven the way a user drives gatehouse.

mod audit;
mod check;
mod cli;
mod e2e;
mod gateway;
mod props;
mod reconcile;
mod proxy;
mod support;
mod upstream;
