//! An RFC 6962 / RFC 9162 Merkle tree with SM3, and inclusion proofs.
//!
//! - leaf hash: `SM3(0x00 || leaf bytes)`; node hash: `SM3(0x01 || left || right)`. The prefix
//!   bytes keep a leaf from ever passing for an inner node (second-preimage safety).
//! - shape: for `n > 1` leaves the left subtree holds the largest power of two `k < n` leaves
//!   and the right the other `n - k` (RFC 6962 §2.1). Built bottom up, that is: pair nodes
//!   left to right, and carry a lone last node up unchanged.
//! - the root of zero leaves is `SM3("")` (RFC 6962); a batch never has zero leaves.
//! - a proof for leaf `i` of `n` is the list of sibling hashes from the leaf up (RFC 6962
//!   `PATH`); [`verify_inclusion`] is RFC 9162 §2.1.3.2.
//!
//! A path proves position and membership, but it does **not** pin the leaf count: a path for
//! leaf 0 of 3 leaves also checks as leaf 0 of 4. That is why the batch signature signs the
//! count together with the root (see [`crate::batch`]).

use crate::hash::{Digest, Sm3Hasher, sm3};

use crate::batch::MAX_PATH_LEN;

/// Why an inclusion proof does not check.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    /// A tree of zero leaves has nothing to prove.
    #[error("leaf count is 0: an empty tree has no leaf {index}")]
    Empty {
        /// The index asked for.
        index: u64,
    },
    /// The index is not below the count.
    #[error("leaf index {index} is out of range for a tree of {leaf_count} leaves")]
    IndexOutOfRange {
        /// The index in the proof.
        index: u64,
        /// The leaf count in the proof.
        leaf_count: u64,
    },
    /// The path has the wrong number of hashes for this index and count.
    #[error(
        "path for leaf {index} of {leaf_count} has {got} hashes; that position needs {expected}"
    )]
    PathLength {
        /// The index in the proof.
        index: u64,
        /// The leaf count in the proof.
        leaf_count: u64,
        /// Hashes the position needs.
        expected: usize,
        /// Hashes in the path.
        got: usize,
    },
    /// The path leads somewhere else.
    #[error("path for leaf {index} of {leaf_count} leads to root {computed}, not {expected}")]
    RootMismatch {
        /// The index in the proof.
        index: u64,
        /// The leaf count in the proof.
        leaf_count: u64,
        /// The root the path computes.
        computed: Digest,
        /// The root the proof claims.
        expected: Digest,
    },
}

/// `SM3(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Digest {
    let mut hasher = Sm3Hasher::new();
    hasher.update(&[0x00]).update(data);
    hasher.finalize()
}

/// `SM3(0x01 || left || right)`.
pub fn node_hash(left: &Digest, right: &Digest) -> Digest {
    let mut buf = [0u8; 65];
    buf[0] = 0x01;
    buf[1..33].copy_from_slice(&left.0);
    buf[33..].copy_from_slice(&right.0);
    sm3(&buf)
}

/// The root of a tree with no leaves, `SM3("")`.
pub fn empty_root() -> Digest {
    sm3(b"")
}

/// How many hashes the path of leaf `index` in a tree of `leaf_count` leaves has, or `None`
/// when the index is out of range.
pub fn path_len(index: u64, leaf_count: u64) -> Option<usize> {
    if index >= leaf_count {
        return None;
    }
    let (mut index, mut width, mut len) = (index, leaf_count, 0);
    while width > 1 {
        if index ^ 1 < width {
            len += 1;
        }
        index >>= 1;
        width = width.div_ceil(2);
    }
    Some(len)
}

/// A whole tree, every level kept, so every leaf's path can be read off.
#[derive(Clone, Debug)]
pub struct HashTree {
    /// `levels[0]` are the leaf hashes; the last level is the root alone. Empty for no leaves.
    levels: Vec<Vec<Digest>>,
}

// === impl HashTree ===

impl HashTree {
    /// Builds the tree over `leaves` (each the canonical bytes of one record).
    pub fn from_leaves<I, L>(leaves: I) -> Self
    where
        I: IntoIterator<Item = L>,
        L: AsRef<[u8]>,
    {
        Self::from_leaf_hashes(leaves.into_iter().map(|l| leaf_hash(l.as_ref())).collect())
    }

    /// Builds the tree over leaf hashes already computed with [`leaf_hash`].
    pub fn from_leaf_hashes(leaf_hashes: Vec<Digest>) -> Self {
        if leaf_hashes.is_empty() {
            return Self { levels: Vec::new() };
        }
        let mut levels = vec![leaf_hashes];
        while levels.last().map_or(0, Vec::len) > 1 {
            let below = levels.last().expect("not empty");
            let above = below
                .chunks(2)
                .map(|pair| match pair {
                    [left, right] => node_hash(left, right),
                    [lone] => *lone,
                    _ => unreachable!("chunks(2) yields one or two"),
                })
                .collect();
            levels.push(above);
        }
        Self { levels }
    }

    /// Number of leaves.
    pub fn leaf_count(&self) -> u64 {
        self.levels.first().map_or(0, |leaves| leaves.len() as u64)
    }

    /// The root (`SM3("")` for no leaves).
    pub fn root(&self) -> Digest {
        self.levels.last().map_or_else(empty_root, |top| top[0])
    }

    /// The hash of leaf `index`.
    pub fn leaf(&self, index: u64) -> Option<Digest> {
        self.levels
            .first()?
            .get(usize::try_from(index).ok()?)
            .copied()
    }

    /// The inclusion path of leaf `index`, sibling hashes from the leaf up.
    pub fn inclusion_path(&self, index: u64) -> Option<Vec<Digest>> {
        let mut index = usize::try_from(index).ok()?;
        if index >= self.levels.first()?.len() {
            return None;
        }
        let mut path = Vec::with_capacity(self.levels.len());
        for level in &self.levels[..self.levels.len() - 1] {
            if let Some(sibling) = level.get(index ^ 1) {
                path.push(*sibling);
            }
            index >>= 1;
        }
        Some(path)
    }
}

/// The root that `path` leads to from `leaf` (a leaf *hash*) at `index` of `leaf_count`
/// (RFC 9162 §2.1.3.2).
pub fn root_from_path(
    leaf: Digest,
    index: u64,
    leaf_count: u64,
    path: &[Digest],
) -> Result<Digest, TreeError> {
    if leaf_count == 0 {
        return Err(TreeError::Empty { index });
    }
    let expected =
        path_len(index, leaf_count).ok_or(TreeError::IndexOutOfRange { index, leaf_count })?;
    if path.len() != expected || path.len() > MAX_PATH_LEN {
        return Err(TreeError::PathLength {
            index,
            leaf_count,
            expected,
            got: path.len(),
        });
    }
    let (mut fn_, mut sn) = (index, leaf_count - 1);
    let mut r = leaf;
    for p in path {
        // Cannot happen with the length checked above; kept as RFC 9162 writes it.
        if sn == 0 {
            return Err(TreeError::PathLength {
                index,
                leaf_count,
                expected,
                got: path.len(),
            });
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    Ok(r)
}

/// Checks that `leaf_bytes` is leaf `index` of a tree of `leaf_count` leaves with `root`.
pub fn verify_inclusion(
    leaf_bytes: &[u8],
    index: u64,
    leaf_count: u64,
    path: &[Digest],
    root: &Digest,
) -> Result<(), TreeError> {
    let computed = root_from_path(leaf_hash(leaf_bytes), index, leaf_count, path)?;
    if computed != *root {
        return Err(TreeError::RootMismatch {
            index,
            leaf_count,
            computed,
            expected: *root,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
