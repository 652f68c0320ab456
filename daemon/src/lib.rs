//! The tiersync daemon as a library: the binary in `main.rs` is a thin shell
//! over [`App`], so end-to-end tests run whole nodes in process.
//!
//! Code map: [`config`] (TOML in, validated config out) → [`app`] (builds and
//! runs a node) → [`node`] (the rules every record passes) over [`store`]
//! (SQLite) and [`route`] (sharing scope); [`sync`] (the parent/child link),
//! [`tls`] and [`pki`] (mutual TLS, node certificates), [`api`] (local gRPC
//! API), [`admin`] + [`metrics`] + [`status`] (operators), [`worker`] (the named
//! long-running loops operators read), [`cli`], [`demo`].

pub mod api;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod departments;
pub mod divisions;
pub mod error;
#[cfg(feature = "testkit")]
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod kinds;
pub mod node;
pub mod ops;
pub mod route;
pub mod store;
pub mod sync;
pub mod worker;

pub use app::{App, RunningNode};
