//! The tiersync daemon as a library: the binary in `main.rs` is a thin shell
//! over [`App`], so end-to-end tests run whole nodes in process.

pub mod config;
pub mod pki;
pub mod route;
pub mod store;
pub mod tls;
