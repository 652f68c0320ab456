//! tiersync-trust: who made a record, checked anywhere in the tree.
//!
//! The origin of a batch of records signs it once, over an SM3 hash tree of the records'
//! canonical bytes; each record then carries a proof (the batch signature and the
//! record's path in the tree) up and down the tree, whatever batches later hops make. Every
//! node checks the proof before applying the record. This crate is the cryptography only: it
//! depends on nothing else of tiersync, and the daemon decides which key belongs to which
//! node, what a record's canonical bytes are, and what to do with a refusal.
//!
//! # Algorithms
//!
//! SM2 signatures (GB/T 32918) with SM3 digests (GB/T 32905), named [`Algorithm::Sm2Sm3`]
//! (`sm2-sm3`) in every signed message and every proof. Two interop rules hold everywhere
//! ([`keys`]):
//!
//! - the SM2 distinguishing ID is always [`DIST_ID`] = `1234567812345678` (OpenSSL 3.0's CLI
//!   defaults to an empty ID; pass it `-pkeyopt distid:1234567812345678`);
//! - signatures are DER `SEQUENCE { r, s }` ([`Signature`]); raw 64-byte `r || s` is refused.
//!
//! Keys are PKCS#8 / SPKI PEM exactly as OpenSSL writes them for SM2. The test
//! `tests/interop.rs` checks all of this against the OpenSSL 3 CLI and Python's gmssl.
//!
//! # Hash tree
//!
//! RFC 6962 shape with SM3 ([`tree`]): leaf = `SM3(0x00 || bytes)`, node =
//! `SM3(0x01 || left || right)`, split at the largest power of two below `n`.
//! Known-answer vectors made by an independent implementation are in
//! `tests/vectors/tree-sm3.txt`.
//!
//! Batch signatures over the tree, per-record proofs and a verification cache come next.

use std::fmt;

pub mod hash;
pub mod keys;
pub mod tree;

pub use hash::{Digest, sm3};
pub use keys::{DIST_ID, KeyError, KeyId, Signature, SigningKey, VerifyingKey};
pub use tree::HashTree;

/// A signature algorithm, named in every signed message and proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Algorithm {
    /// SM2 signature (GB/T 32918) over SM3 (GB/T 32905), distinguishing ID [`DIST_ID`],
    /// DER `SEQUENCE { r, s }`. OID 1.2.156.10197.1.501 (SM2-with-SM3).
    #[default]
    Sm2Sm3,
}

/// A name that is no [`Algorithm`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown signature algorithm `{0}` (known: sm2-sm3)")]
pub struct UnknownAlgorithm(pub String);

// === impl Algorithm ===

impl Algorithm {
    /// The name written into signed messages and proofs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Sm2Sm3 => "sm2-sm3",
        }
    }

    /// The signature algorithm's OID, as X.509 and GB/T 38540 write it.
    pub const fn oid(self) -> &'static str {
        match self {
            Self::Sm2Sm3 => "1.2.156.10197.1.501",
        }
    }

    /// The algorithm of a name.
    pub fn from_name(name: &str) -> Result<Self, UnknownAlgorithm> {
        match name {
            "sm2-sm3" => Ok(Self::Sm2Sm3),
            other => Err(UnknownAlgorithm(other.to_owned())),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
