//! The tiersync daemon as a library: the binary in `main.rs` is a thin shell
//! over [`App`], so end-to-end tests run whole nodes in process.
//!
//! Code map: [`config`] (TOML in, validated config out) → [`app`] (builds and
//! runs a node) → [`node`] (the rules every record passes) over [`store`]
//! (SQLite) and [`route`] (sharing scope); [`sync`] (the parent/child link),
//! [`tls`] and [`pki`] (mutual TLS, node certificates), [`api`] (local gRPC
//! API), [`admin`] + [`metrics`] + [`status`] (operators), [`cli`], [`demo`].

pub mod admin;
pub mod api;
pub mod app;
pub mod audit;
pub mod cli;
pub mod config;
pub mod demo;
pub mod divisions;
pub mod join;
pub mod metrics;
pub mod node;
pub mod origin;
pub mod pki;
pub mod route;
pub mod status;
pub mod store;
pub mod sync;
pub mod tls;

pub use app::{App, RunningNode};
