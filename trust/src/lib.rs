//! tiersync-trust: who made a record, checked anywhere in the tree.
//!
//! The origin of a batch of records signs it once, over an SM3 hash tree of the records'
//! canonical bytes; each record then carries a [`RecordProof`] (the batch signature and the
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
//! The SM2 arithmetic is RustCrypto's `sm2`, whose README says it has never been independently
//! audited; everything goes through this crate's small API so a certified module could replace
//! it without changing any format.
//!
//! Keys are PKCS#8 / SPKI PEM exactly as OpenSSL writes them for SM2. The test
//! `tests/interop.rs` checks all of this against the OpenSSL 3 CLI and Python's gmssl.
//!
//! SM2 X.509 certificates (an authority and what it issues; DER signatures inside, which
//! `openssl verify -vfyopt distid:1234567812345678` accepts) are in [`cert`], for the trust
//! list to come.
//!
//! # Hash tree
//!
//! RFC 6962 shape with SM3 ([`tree`]): leaf = `SM3(0x00 || bytes)`, node =
//! `SM3(0x01 || left || right)`, split at the largest power of two below `n`.
//! Known-answer vectors made by an independent implementation are in
//! `tests/vectors/tree-sm3.txt`.
//!
//! # Signed message, layout v1 (persisted: never changes)
//!
//! [`batch::signed_message`]: six fields, each a 4-byte big-endian length then the bytes:
//!
//! 1. the domain tag `tiersync.batch.v1` ([`DOMAIN_TAG_V1`]), which is also the version;
//! 2. the algorithm name, `sm2-sm3`;
//! 3. the signer, the origin's node code (UTF-8, 1 to 255 bytes);
//! 4. the key id, 16 bytes: the first half of SM3 over the key's DER SubjectPublicKeyInfo;
//! 5. the leaf count, 8 bytes big-endian: **signed** because a tree path does not pin it, and a
//!    forwarding node must not be able to change it;
//! 6. the tree root, 32 bytes.
//!
//! A new layout gets a new tag (`tiersync.batch.v2`); verifiers keep reading v1. A fixed key,
//! its signed message, signature and proofs are committed in `tests/vectors/batch-v1.txt`, and
//! `tests/vectors.rs` fails if this build stops reading them.
//!
//! # Use
//!
//! ```
//! use std::num::NonZeroUsize;
//! use tiersync_trust::{BatchSigner, SigningKey, Verifier};
//!
//! // At the origin.
//! let signer = BatchSigner::new("511102004001", SigningKey::generate())?;
//! let records: Vec<Vec<u8>> = vec![b"record one".to_vec(), b"record two".to_vec()];
//! let batch = signer.sign(&records)?;
//! let proofs: Vec<_> = batch.proofs().collect();
//!
//! // Anywhere, with the origin's public key from the trust list.
//! let key = signer.verifying_key();
//! let verifier = Verifier::new(NonZeroUsize::new(4096).unwrap());
//! for (record, proof) in records.iter().zip(&proofs) {
//!     verifier.verify(proof, record, key)?;
//! }
//! assert_eq!(verifier.stats().misses, 1); // one SM2 verification for the batch
//! assert!(verifier.verify(&proofs[0], b"forged", key).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! **Leaf bytes must be canonical.** Pass the record's canonical encoding as the origin signed
//! it and as it travels, byte for byte; never re-encode a decoded protobuf message to get them,
//! since two encoders may write the same message differently.
//!
//! A receiver checking a whole link batch should call [`Verifier::verify_many`]: one result
//! per record, one SM2 verification per origin batch, and tree nodes shared by several
//! records' paths hashed once (about 4 µs per 1 KB record instead of 7 when a whole origin
//! batch arrives together; `cargo bench -p tiersync-trust --bench sign`).
//!
//! A [`RecordProof`] can be carried as its fields (all public) or as the compact bytes of
//! [`RecordProof::to_bytes`] (format v1, [`PROOF_FORMAT_V1`]). Refusals are a [`VerifyError`]
//! naming the signer, root, count and leaf, with a [`VerifyFailure`] reason (wrong algorithm,
//! wrong key, bad path or count, bad signature); the caller adds the record's id.

use std::fmt;

pub mod batch;
pub mod cert;
pub mod hash;
pub mod keys;
pub mod tree;

pub use batch::{
    BatchError, BatchSigner, CacheStats, DOMAIN_TAG_V1, DecodeError, EncodeError, Item,
    PROOF_FORMAT_V1, ProofDecoder, RecordProof, SignedBatch, Verifier, VerifyError, VerifyFailure,
};
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
