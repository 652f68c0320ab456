//! The daemon crate's integration tests, as one test binary (each test
//! binary links the whole daemon, which is slow on two cores): the shipped
//! example configs, the deployment files, the checks of what the daemon
//! exports by implementations we did not write, and the smoke test of the
//! real `tiersync` binary.

mod configs;
mod deploy;
mod fuzz_corpus;
mod interop;
mod smoke;
