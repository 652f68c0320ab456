//! End-to-end tests: one test binary, many whole nodes per test, real mutual
//! TLS on 127.0.0.1. See `tiersync_e2e` (tests/src/lib.rs) for the sandbox.

mod amend;
mod audit;
mod chain;
mod departments;
mod input;
mod integrity;
mod join;
mod links;
mod operate;
mod postgres;
mod reject;
mod scope;
mod tidy;
mod trust;
