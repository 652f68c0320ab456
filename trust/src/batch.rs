//! Batch signatures over a hash tree, and the per-record proofs they yield.
//!
//! The origin builds a [`HashTree`] over the canonical bytes of a batch's records and makes one
//! SM2 signature over the [signed message](signed_message) that binds the tree's root *and its
//! leaf count*. Each record then travels with a [`RecordProof`]: the batch's signed fields,
//! the signature, and the record's index and path. A proof stands alone: later hops may batch
//! records any way they like and the proof still checks.
//!
//! The leaf count is signed because a path does not pin it (see [`crate::tree`]): without it,
//! a forwarding node could change the count in a proof unnoticed.
//!
//! [`Verifier`] remembers batch signatures it has checked (a bounded LRU, thread-safe), so the
//! N records of one batch cost one SM2 verification plus N path checks.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;

use crate::Algorithm;
use crate::hash::{DIGEST_LEN, Digest};
use crate::keys::{KeyError, KeyId, Signature, SigningKey, VerifyingKey};
use crate::tree::{HashTree, TreeError, leaf_hash, node_hash, path_len, root_from_path};

/// Domain tag at the start of every signed batch message, version 1. The layout it names is
/// persisted (proofs are stored with records) and never changes; a new layout gets a new tag.
pub const DOMAIN_TAG_V1: &str = "tiersync.batch.v1";

/// Version byte at the start of [`RecordProof::to_bytes`].
pub const PROOF_FORMAT_V1: u8 = 1;

/// The longest signer name (it is length-prefixed with one byte in a proof's encoding).
pub const MAX_SIGNER_LEN: usize = 255;

/// The longest path: one hash per level of a tree of up to 2^64 leaves.
pub const MAX_PATH_LEN: usize = 64;

/// The exact bytes a batch signature covers (layout v1). Every field is a 4-byte big-endian
/// length followed by the bytes:
///
/// | # | field        | bytes                                   |
/// |---|--------------|-----------------------------------------|
/// | 1 | domain tag   | `tiersync.batch.v1` (ASCII, 17 bytes)   |
/// | 2 | algorithm    | its name, `sm2-sm3` (ASCII)             |
/// | 3 | signer       | the signer's node code (UTF-8)          |
/// | 4 | key id       | 16 bytes, [`KeyId`]                     |
/// | 5 | leaf count   | 8 bytes, unsigned big-endian            |
/// | 6 | root         | 32 bytes, the SM3 tree root             |
pub fn signed_message(
    algorithm: Algorithm,
    signer: &str,
    key_id: &KeyId,
    leaf_count: u64,
    root: &Digest,
) -> Vec<u8> {
    let fields: [&[u8]; 6] = [
        DOMAIN_TAG_V1.as_bytes(),
        algorithm.name().as_bytes(),
        signer.as_bytes(),
        &key_id.0,
        &leaf_count.to_be_bytes(),
        &root.0,
    ];
    let mut message = Vec::with_capacity(fields.iter().map(|f| 4 + f.len()).sum());
    for field in fields {
        let len = u32::try_from(field.len()).expect("fields are short");
        message.extend_from_slice(&len.to_be_bytes());
        message.extend_from_slice(field);
    }
    message
}

/// Errors making a batch signature.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    /// The signer name is empty or too long.
    #[error("signer name `{signer}` must be 1 to {MAX_SIGNER_LEN} bytes, it is {len}")]
    SignerName {
        /// The name given.
        signer: String,
        /// Its length in bytes.
        len: usize,
    },
    /// Nothing to sign.
    #[error("batch from signer `{signer}` has no records: nothing to sign")]
    Empty {
        /// The signer.
        signer: String,
    },
}

/// Signs batches for one origin: a node code and its SM2 key.
#[derive(Debug)]
pub struct BatchSigner {
    signer: String,
    key: SigningKey,
}

// === impl BatchSigner ===

impl BatchSigner {
    /// A signer named `signer` (the origin's node code) with `key`.
    pub fn new(signer: impl Into<String>, key: SigningKey) -> Result<Self, BatchError> {
        let signer = signer.into();
        if signer.is_empty() || signer.len() > MAX_SIGNER_LEN {
            return Err(BatchError::SignerName {
                len: signer.len(),
                signer,
            });
        }
        Ok(Self { signer, key })
    }

    /// The signer's name.
    pub fn signer(&self) -> &str {
        &self.signer
    }

    /// The key verifiers need.
    pub fn verifying_key(&self) -> &VerifyingKey {
        self.key.verifying_key()
    }

    /// Builds the tree over `leaves` and signs it. Each leaf must be the record's **canonical
    /// bytes**, the very bytes every verifier will pass back, never a re-encoding (protobuf
    /// encoders may order or pack fields differently).
    pub fn sign<I, L>(&self, leaves: I) -> Result<SignedBatch, BatchError>
    where
        I: IntoIterator<Item = L>,
        L: AsRef<[u8]>,
    {
        self.sign_tree(HashTree::from_leaves(leaves))
    }

    /// Signs a tree built already (e.g. from leaf hashes computed while encoding).
    pub fn sign_tree(&self, tree: HashTree) -> Result<SignedBatch, BatchError> {
        if tree.leaf_count() == 0 {
            return Err(BatchError::Empty {
                signer: self.signer.clone(),
            });
        }
        let algorithm = self.key.algorithm();
        let key_id = self.key.verifying_key().key_id();
        let message = signed_message(
            algorithm,
            &self.signer,
            &key_id,
            tree.leaf_count(),
            &tree.root(),
        );
        let signature = self.key.sign(&message);
        Ok(SignedBatch {
            tree,
            algorithm,
            signer: self.signer.clone(),
            key_id,
            signature,
        })
    }
}

/// A signed batch: the tree and its signature. Hands out one [`RecordProof`] per leaf.
#[derive(Clone, Debug)]
pub struct SignedBatch {
    tree: HashTree,
    algorithm: Algorithm,
    signer: String,
    key_id: KeyId,
    signature: Signature,
}

// === impl SignedBatch ===

impl SignedBatch {
    /// The tree root.
    pub fn root(&self) -> Digest {
        self.tree.root()
    }

    /// Number of records.
    pub fn leaf_count(&self) -> u64 {
        self.tree.leaf_count()
    }

    /// The batch signature.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The proof for record `index`, in the order the leaves were given.
    pub fn proof(&self, index: u64) -> Option<RecordProof> {
        Some(RecordProof {
            algorithm: self.algorithm,
            signer: self.signer.clone(),
            key_id: self.key_id,
            leaf_count: self.tree.leaf_count(),
            root: self.tree.root(),
            signature: self.signature.clone(),
            leaf_index: index,
            path: self.tree.inclusion_path(index)?,
        })
    }

    /// Every record's proof, in leaf order.
    pub fn proofs(&self) -> impl Iterator<Item = RecordProof> + '_ {
        (0..self.leaf_count()).filter_map(|index| self.proof(index))
    }
}

/// What travels with one record: everything needed to check it against its origin's key,
/// whatever batches later hops put it in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordProof {
    /// The signature algorithm (signed).
    pub algorithm: Algorithm,
    /// The origin's node code (signed).
    pub signer: String,
    /// Which of the origin's keys signed (signed).
    pub key_id: KeyId,
    /// Records in the origin's batch (signed).
    pub leaf_count: u64,
    /// The batch's tree root (signed).
    pub root: Digest,
    /// The batch signature, DER.
    pub signature: Signature,
    /// This record's position in the batch.
    pub leaf_index: u64,
    /// Sibling hashes from this record's leaf up to the root.
    pub path: Vec<Digest>,
}

/// A proof that failed, with the batch it claims to come from.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "proof of leaf {leaf_index} from signer `{signer}` (batch root {root}, {leaf_count} leaves) \
     is refused: {reason}"
)]
pub struct VerifyError {
    /// The signer the proof names.
    pub signer: String,
    /// The root the proof names.
    pub root: Digest,
    /// The leaf count the proof names.
    pub leaf_count: u64,
    /// The leaf index the proof names.
    pub leaf_index: u64,
    /// What is wrong (boxed: a refusal is rare and the `Ok` path should stay small).
    pub reason: Box<VerifyFailure>,
}

/// What is wrong with a proof.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyFailure {
    /// The proof names another algorithm than the key's.
    #[error("it is signed with {proof}, but the key given verifies {key}")]
    WrongAlgorithm {
        /// The proof's algorithm.
        proof: Algorithm,
        /// The key's algorithm.
        key: Algorithm,
    },
    /// The proof names another key.
    #[error("it names key {proof}, but the key given is {key}")]
    WrongKey {
        /// The key id in the proof.
        proof: KeyId,
        /// The id of the key given.
        key: KeyId,
    },
    /// The path is malformed, does not fit the count, or leads elsewhere.
    #[error("bad path: {0}")]
    Path(TreeError),
    /// The batch signature does not verify (the root, count, signer or signature was altered).
    #[error("bad batch signature: {0}")]
    Signature(KeyError),
}

// === impl RecordProof ===

impl RecordProof {
    /// The message the batch signature covers, rebuilt from the proof's fields.
    pub fn signed_message(&self) -> Vec<u8> {
        signed_message(
            self.algorithm,
            &self.signer,
            &self.key_id,
            self.leaf_count,
            &self.root,
        )
    }

    fn refuse(&self, reason: VerifyFailure) -> VerifyError {
        VerifyError {
            signer: self.signer.clone(),
            root: self.root,
            leaf_count: self.leaf_count,
            leaf_index: self.leaf_index,
            reason: Box::new(reason),
        }
    }

    /// Checks everything but the SM2 signature: algorithm, key id and path.
    fn check_path(&self, leaf_bytes: &[u8], key: &VerifyingKey) -> Result<(), VerifyError> {
        if self.algorithm != key.algorithm() {
            return Err(self.refuse(VerifyFailure::WrongAlgorithm {
                proof: self.algorithm,
                key: key.algorithm(),
            }));
        }
        if self.key_id != key.key_id() {
            return Err(self.refuse(VerifyFailure::WrongKey {
                proof: self.key_id,
                key: key.key_id(),
            }));
        }
        let computed = root_from_path(
            leaf_hash(leaf_bytes),
            self.leaf_index,
            self.leaf_count,
            &self.path,
        )
        .map_err(|error| self.refuse(VerifyFailure::Path(error)))?;
        if computed != self.root {
            return Err(self.refuse(VerifyFailure::Path(TreeError::RootMismatch {
                index: self.leaf_index,
                leaf_count: self.leaf_count,
                computed,
                expected: self.root,
            })));
        }
        Ok(())
    }

    fn check_signature(&self, key: &VerifyingKey) -> Result<(), VerifyError> {
        key.verify(&self.signed_message(), &self.signature)
            .map_err(|error| self.refuse(VerifyFailure::Signature(error)))
    }

    /// Checks that `leaf_bytes` is this proof's record, signed by `key`. `leaf_bytes` must be
    /// the record's canonical bytes as the origin signed them, never a re-encoding. One SM2
    /// verification per call; use a [`Verifier`] to pay it once per batch.
    pub fn verify(&self, leaf_bytes: &[u8], key: &VerifyingKey) -> Result<(), VerifyError> {
        self.check_path(leaf_bytes, key)?;
        self.check_signature(key)
    }

    /// The proof as bytes, format v1 (integers big-endian):
    ///
    /// `0x01` · algorithm name (1-byte length, ASCII) · signer (1-byte length, UTF-8) ·
    /// key id (16) · leaf count (8) · root (32) · signature (1-byte length, DER) ·
    /// leaf index (8) · path length in hashes (1) · path (32 each).
    ///
    /// Fails only for a proof no signer makes: a signer name over 255 bytes or a path over 64
    /// hashes (the fields are public, so a decoded peer message may hold anything).
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        if self.signer.len() > MAX_SIGNER_LEN {
            return Err(EncodeError {
                field: "signer",
                len: self.signer.len(),
                max: MAX_SIGNER_LEN,
            });
        }
        if self.path.len() > MAX_PATH_LEN {
            return Err(EncodeError {
                field: "path",
                len: self.path.len(),
                max: MAX_PATH_LEN,
            });
        }
        let name = self.algorithm.name().as_bytes();
        let der = self.signature.as_der();
        let mut out = Vec::with_capacity(
            1 + 1
                + name.len()
                + 1
                + self.signer.len()
                + 16
                + 8
                + 32
                + 1
                + der.len()
                + 8
                + 1
                + self.path.len() * DIGEST_LEN,
        );
        out.push(PROOF_FORMAT_V1);
        push_short(&mut out, name);
        push_short(&mut out, self.signer.as_bytes());
        out.extend_from_slice(&self.key_id.0);
        out.extend_from_slice(&self.leaf_count.to_be_bytes());
        out.extend_from_slice(&self.root.0);
        push_short(&mut out, der);
        out.extend_from_slice(&self.leaf_index.to_be_bytes());
        out.push(self.path.len() as u8); // at most 64, checked above
        for hash in &self.path {
            out.extend_from_slice(&hash.0);
        }
        Ok(out)
    }

    /// Reads [`to_bytes`](Self::to_bytes) output; every byte must be used.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader { bytes, at: 0 };
        let header = Self::read_header(&mut reader)?;
        header.read_rest(&mut reader)
    }

    /// Reads everything up to the leaf index: the fields all proofs of one batch share.
    fn read_header(reader: &mut Reader<'_>) -> Result<Header, DecodeError> {
        let version = reader.take(1, "format version")?[0];
        if version != PROOF_FORMAT_V1 {
            return Err(DecodeError::Version { version });
        }
        let name = reader.short("algorithm")?;
        let name =
            std::str::from_utf8(name).map_err(|_| DecodeError::NotUtf8 { field: "algorithm" })?;
        let algorithm =
            Algorithm::from_name(name).map_err(|error| DecodeError::Algorithm { name: error.0 })?;
        let signer = reader.short("signer")?;
        let signer = std::str::from_utf8(signer)
            .map_err(|_| DecodeError::NotUtf8 { field: "signer" })?
            .to_owned();
        let key_id = KeyId(reader.array("key id")?);
        let leaf_count = u64::from_be_bytes(reader.array("leaf count")?);
        let root = Digest(reader.array("root")?);
        let signature =
            Signature::from_der(reader.short("signature")?).map_err(DecodeError::Signature)?;
        Ok(Header {
            algorithm,
            signer,
            key_id,
            leaf_count,
            root,
            signature,
        })
    }
}

/// The fields of a proof its whole batch shares.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Header {
    algorithm: Algorithm,
    signer: String,
    key_id: KeyId,
    leaf_count: u64,
    root: Digest,
    signature: Signature,
}

impl Header {
    fn of(proof: &RecordProof) -> Header {
        Header {
            algorithm: proof.algorithm,
            signer: proof.signer.clone(),
            key_id: proof.key_id,
            leaf_count: proof.leaf_count,
            root: proof.root,
            signature: proof.signature.clone(),
        }
    }

    /// Whether `proof` has these fields, compared in place.
    fn is_of(&self, proof: &RecordProof) -> bool {
        self.root == proof.root
            && self.leaf_count == proof.leaf_count
            && self.key_id == proof.key_id
            && self.algorithm == proof.algorithm
            && self.signer == proof.signer
            && self.signature == proof.signature
    }

    /// Reads the leaf index and path after the header, and the end.
    fn read_rest(self, reader: &mut Reader<'_>) -> Result<RecordProof, DecodeError> {
        let leaf_index = u64::from_be_bytes(reader.array("leaf index")?);
        let hashes = usize::from(reader.take(1, "path length")?[0]);
        if hashes > MAX_PATH_LEN {
            return Err(DecodeError::PathTooLong { hashes });
        }
        let path = (0..hashes)
            .map(|_| reader.array("path").map(Digest))
            .collect::<Result<Vec<_>, _>>()?;
        if reader.at != reader.bytes.len() {
            return Err(DecodeError::Trailing {
                extra: reader.bytes.len() - reader.at,
            });
        }
        Ok(RecordProof {
            algorithm: self.algorithm,
            signer: self.signer,
            key_id: self.key_id,
            leaf_count: self.leaf_count,
            root: self.root,
            signature: self.signature,
            leaf_index,
            path,
        })
    }
}

/// Decodes many proofs, as [`RecordProof::from_bytes`] does, but reads the fields a batch's
/// proofs share (signer, key, count, root, and the DER signature, whose parse dominates) once
/// for a run of proofs from the same batch: the records of one origin batch travel together.
/// Results and errors are exactly those of `from_bytes`.
#[derive(Default)]
pub struct ProofDecoder {
    /// The header bytes last read, and what they decoded to.
    last: Option<(Vec<u8>, Header)>,
}

impl ProofDecoder {
    /// A decoder that has read nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads one proof.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<RecordProof, DecodeError> {
        let mut reader = Reader { bytes, at: 0 };
        if let Some((seen, header)) = &self.last
            && bytes.starts_with(seen)
        {
            reader.at = seen.len();
            return header.clone().read_rest(&mut reader);
        }
        let header = RecordProof::read_header(&mut reader)?;
        self.last = Some((bytes[..reader.at].to_vec(), header.clone()));
        header.read_rest(&mut reader)
    }
}

impl fmt::Debug for ProofDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProofDecoder")
            .field("cached", &self.last.is_some())
            .finish()
    }
}

/// Appends a field of at most 255 bytes (checked by the caller) with its 1-byte length.
fn push_short(out: &mut Vec<u8>, field: &[u8]) {
    out.push(field.len() as u8);
    out.extend_from_slice(field);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len());
        let end = end.ok_or(DecodeError::Truncated { field, at: self.at })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N, field)?.try_into().expect("took N bytes"))
    }

    fn short(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.take(1, field)?[0]);
        self.take(len, field)
    }
}

/// A proof too large for [`RecordProof::to_bytes`].
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("record proof {field} is {len} long; the proof format allows at most {max}")]
pub struct EncodeError {
    /// The field.
    pub field: &'static str,
    /// Its length (bytes for the signer, hashes for the path).
    pub len: usize,
    /// The most the format allows.
    pub max: usize,
}

/// Errors reading a [`RecordProof`] from bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// A format version this build does not know.
    #[error("record proof format version {version} is unknown (this build reads 1)")]
    Version {
        /// The version byte.
        version: u8,
    },
    /// The bytes end inside a field.
    #[error("record proof ends inside its {field} (at byte {at})")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Offset where it starts.
        at: usize,
    },
    /// A text field is not UTF-8.
    #[error("record proof {field} is not UTF-8")]
    NotUtf8 {
        /// The field.
        field: &'static str,
    },
    /// An algorithm this build does not know.
    #[error("record proof names unknown signature algorithm `{name}` (known: sm2-sm3)")]
    Algorithm {
        /// The name in the proof.
        name: String,
    },
    /// The signature is not a canonical DER SM2 signature.
    #[error("record proof signature: {0}")]
    Signature(KeyError),
    /// More path hashes than any tree of 2^64 leaves needs.
    #[error("record proof path has {hashes} hashes; at most {MAX_PATH_LEN} are possible")]
    PathTooLong {
        /// How many the proof claims.
        hashes: usize,
    },
    /// Bytes after the path.
    #[error("record proof has {extra} bytes after its path")]
    Trailing {
        /// How many.
        extra: usize,
    },
}

/// Cache statistics, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheStats {
    /// Proofs whose batch signature was found already verified.
    pub hits: u64,
    /// Proofs that needed an SM2 verification.
    pub misses: u64,
    /// Batch signatures remembered now.
    pub len: usize,
}

/// Verifies proofs, remembering up to `capacity` batch signatures already verified (least
/// recently used out first), so records of one batch cost one SM2 verification. Thread-safe:
/// share one per node behind an `Arc`.
///
/// An entry is the whole signed identity of a batch (key fingerprint, algorithm, signer, key
/// id, leaf count, root) with its signature, so a hit means this very signature over these
/// very fields verified under this very key. Every record's path is still checked on every
/// call; only the SM2 step is cached.
pub struct Verifier {
    verified: Mutex<LruCache<BatchKey, ()>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// What a batch signature vouches for, with the signature and the key that checked it.
#[derive(Clone, PartialEq, Eq, Hash)]
struct BatchKey {
    fingerprint: Digest,
    header: Header,
}

impl BatchKey {
    /// Whether `proof` checked with `key` is this batch, without building its key.
    fn matches(&self, proof: &RecordProof, key: &VerifyingKey) -> bool {
        self.fingerprint == key.fingerprint() && self.header.is_of(proof)
    }

    fn new(proof: &RecordProof, key: &VerifyingKey) -> Self {
        Self {
            fingerprint: key.fingerprint(),
            header: Header::of(proof),
        }
    }
}

/// One record for [`Verifier::verify_many`]: its proof, its canonical bytes, and the key of
/// the signer its proof names.
#[derive(Clone, Copy, Debug)]
pub struct Item<'a> {
    /// The record's proof.
    pub proof: &'a RecordProof,
    /// The record's canonical bytes.
    pub leaf: &'a [u8],
    /// The signer's key.
    pub key: &'a VerifyingKey,
}

// === impl Verifier ===

impl Verifier {
    /// A verifier remembering up to `capacity` batch signatures.
    pub fn new(capacity: NonZeroUsize) -> Self {
        Self {
            verified: Mutex::new(LruCache::new(capacity)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// As [`RecordProof::verify`], with the SM2 step cached per batch.
    pub fn verify(
        &self,
        proof: &RecordProof,
        leaf_bytes: &[u8],
        key: &VerifyingKey,
    ) -> Result<(), VerifyError> {
        proof.check_path(leaf_bytes, key)?;
        self.check_signature(proof, key, &BatchKey::new(proof, key))
    }

    /// The SM2 step of one batch, from the cache or verified and remembered.
    fn check_signature(
        &self,
        proof: &RecordProof,
        key: &VerifyingKey,
        entry: &BatchKey,
    ) -> Result<(), VerifyError> {
        if self.lock().get(entry).is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        // Verify outside the lock: SM2 costs ~0.25 ms and other records need not wait.
        proof.check_signature(key)?;
        self.lock().put(entry.clone(), ());
        Ok(())
    }

    /// Verifies many records at once, e.g. a received link batch, returning one result per
    /// item in order: a bad record never hides the good ones. It is CPU work of a few
    /// milliseconds for 1,000 records (more when an SM2 verification is due): async callers
    /// should run it on a blocking thread (`tokio::task::spawn_blocking`). The same checks as
    /// [`verify`](Self::verify), cheaper when several items come from one origin batch: one
    /// signature check per origin batch, and tree nodes shared by their paths are hashed once
    /// (each path is still compared hash by hash, so a flipped byte anywhere is refused).
    pub fn verify_many(&self, items: &[Item<'_>]) -> Vec<Result<(), VerifyError>> {
        // Origin batches seen, in order of first appearance; an item from the same batch as
        // the item before it (the usual case: a batch's records travel together) finds its
        // group without building or hashing a key.
        let mut groups: Vec<(BatchKey, Group)> = Vec::new();
        let mut seen: HashMap<BatchKey, usize> = HashMap::new();
        let mut group_of = Vec::with_capacity(items.len());
        let mut results = Vec::with_capacity(items.len());
        let mut previous: Option<usize> = None;
        for item in items {
            let g = match previous {
                Some(g) if groups[g].0.matches(item.proof, item.key) => g,
                _ => {
                    let entry = BatchKey::new(item.proof, item.key);
                    *seen.entry(entry.clone()).or_insert_with(|| {
                        groups.push((entry, Group::default()));
                        groups.len() - 1
                    })
                }
            };
            previous = Some(g);
            group_of.push(g);
            results.push(groups[g].1.check_path(item.proof, item.leaf, item.key));
        }
        // One signature check per origin batch that had at least one good path.
        let mut signatures: Vec<Option<Result<(), VerifyError>>> = vec![None; groups.len()];
        for ((item, result), &g) in items.iter().zip(&mut results).zip(&group_of) {
            if result.is_err() {
                continue;
            }
            let checked = signatures[g]
                .get_or_insert_with(|| self.check_signature(item.proof, item.key, &groups[g].0))
                .clone();
            // Refusals carry the item's own leaf index.
            *result = checked.map_err(|error| VerifyError {
                leaf_index: item.proof.leaf_index,
                ..error
            });
        }
        results
    }

    /// Hits, misses and size so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            len: self.lock().len(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<BatchKey, ()>> {
        // The cache holds no invariant a panic could break; take it back if poisoned.
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Tree nodes of one origin batch already shown to lead to its root, by (level, index) in the
/// bottom-up layout of [`HashTree`] (a lone last node is carried up, so it appears at each
/// level it passes).
#[derive(Default)]
struct Group {
    known: HashMap<(u8, u64), Digest>,
}

impl Group {
    /// The path check of [`RecordProof::verify`], reusing nodes known from earlier items.
    /// Anything unusual falls back to the plain check, so errors are the same as there.
    fn check_path(
        &mut self,
        proof: &RecordProof,
        leaf: &[u8],
        key: &VerifyingKey,
    ) -> Result<(), VerifyError> {
        if proof.algorithm != key.algorithm()
            || proof.key_id != key.key_id()
            || self.known.is_empty()
            || !self.check_with_known(proof, leaf)
        {
            proof.check_path(leaf, key)?;
            self.learn(proof, leaf);
        }
        Ok(())
    }

    /// Walks the path bottom up; true if it meets a known node with the same hash and every
    /// remaining path hash equals the known sibling. The nodes below the meeting point are
    /// then known too, so the next record of the batch meets one sooner.
    fn check_with_known(&mut self, proof: &RecordProof, leaf: &[u8]) -> bool {
        if path_len(proof.leaf_index, proof.leaf_count) != Some(proof.path.len()) {
            return false;
        }
        let (mut index, mut width, mut level) = (proof.leaf_index, proof.leaf_count, 0u8);
        let mut r = leaf_hash(leaf);
        let mut rest = proof.path.iter();
        let mut met = false;
        let mut below: Vec<((u8, u64), Digest)> = Vec::new();
        while width > 1 {
            if !met {
                match self.known.get(&(level, index)) {
                    Some(known) if *known == r => met = true,
                    Some(_) => return false,
                    None => below.push(((level, index), r)),
                }
            }
            if index ^ 1 < width {
                let Some(sibling) = rest.next() else {
                    return false;
                };
                if met {
                    if self.known.get(&(level, index ^ 1)) != Some(sibling) {
                        return false;
                    }
                } else {
                    below.push(((level, index ^ 1), *sibling));
                    r = if index & 1 == 1 {
                        node_hash(sibling, &r)
                    } else {
                        node_hash(&r, sibling)
                    };
                }
            }
            index >>= 1;
            width = width.div_ceil(2);
            level += 1;
        }
        if met || r == proof.root {
            self.known.extend(below);
            true
        } else {
            false
        }
    }

    /// Remembers every node of a path that has just been checked against the root.
    fn learn(&mut self, proof: &RecordProof, leaf: &[u8]) {
        let (mut index, mut width, mut level) = (proof.leaf_index, proof.leaf_count, 0u8);
        let mut r = leaf_hash(leaf);
        let mut rest = proof.path.iter();
        while width > 1 {
            self.known.insert((level, index), r);
            if index ^ 1 < width {
                let sibling = rest.next().expect("a checked path has the right length");
                self.known.insert((level, index ^ 1), *sibling);
                r = if index & 1 == 1 {
                    node_hash(sibling, &r)
                } else {
                    node_hash(&r, sibling)
                };
            }
            index >>= 1;
            width = width.div_ceil(2);
            level += 1;
        }
        self.known.insert((level, index), r);
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("stats", &self.stats())
            .finish()
    }
}

#[cfg(test)]
mod tests;
