//! Fuzz targets for every decoder of bytes from a peer, a department or a
//! file, as library functions: `fuzz/fuzz_targets/<name>.rs` (cargo-fuzz,
//! nightly) calls them on what libFuzzer makes, and the daemon's stable
//! test `fuzz_corpus` replays every committed corpus and regression input
//! through them, so `cargo test` exercises the corpora without nightly.
//!
//! Each target decodes its input as the node does and then runs the checks
//! the node would run on it (a record is routed, checked and its proof
//! verified against the fixture's keys; a session's frames go through the
//! real session). A panic anywhere is a finding; several targets also
//! assert properties the code promises (a decoder that caches agrees with
//! one that does not, what is encoded reads back). See
//! `docs/reliability.md`.
//!
//! Test support only (feature `testkit`): never in a release build.

pub mod adapter;
pub mod fixture;
pub mod inputs;
pub mod link;
pub mod seeds;
pub mod trust;

/// A fuzz target: its name (the file in `fuzz/fuzz_targets/` and the
/// folder in `fuzz/corpus/`), what it feeds, and its body.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub feeds: &'static str,
    pub run: fn(&[u8]),
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "link_session",
        feeds: "a peer's LinkFrames (hello, batches, acks, heartbeats) through a whole link session",
        run: link::link_session,
    },
    Target {
        name: "record",
        feeds: "one Record's bytes: arrival checks, signature, routing on",
        run: link::record,
    },
    Target {
        name: "proof",
        feeds: "Record.proof bytes (tiersync-trust RecordProof format v1)",
        run: trust::proof,
    },
    Target {
        name: "certificate",
        feeds: "an SM2 X.509 certificate (DER or PEM) and a TLS node certificate",
        run: trust::certificate,
    },
    Target {
        name: "node_key",
        feeds: "a NodeKey payload learned by a keyring",
        run: trust::node_key,
    },
    Target {
        name: "trust_list",
        feeds: "a TrustList payload checked and adopted",
        run: trust::trust_list,
    },
    Target {
        name: "join",
        feeds: "a join token, a CertificateRequest at the city, a JoinResponse at the joining node",
        run: inputs::join,
    },
    Target {
        name: "config",
        feeds: "a TOML config file",
        run: inputs::config,
    },
    Target {
        name: "payload",
        feeds: "a payload of a canonical kind: checks, masking, JSON",
        run: inputs::payload,
    },
    Target {
        name: "put_json",
        feeds: "a payload as JSON, as `tiersync put --json-file` reads it",
        run: inputs::put_json,
    },
    Target {
        name: "adapter_request",
        feeds: "an adapter API request of a department system: the grant decision, lookup keys, a submission's checks, masking",
        run: adapter::adapter_request,
    },
];

/// The target named `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
