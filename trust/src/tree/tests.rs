use proptest::prelude::*;

use super::*;

/// RFC 6962 §2.1 written out recursively, as a reference for the bottom-up builder.
fn reference_root(leaves: &[Vec<u8>]) -> Digest {
    match leaves.len() {
        0 => empty_root(),
        1 => leaf_hash(&leaves[0]),
        n => {
            let k = split(n);
            node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
        }
    }
}

/// RFC 6962 §2.1.1 `PATH(m, D[n])`.
fn reference_path(m: usize, leaves: &[Vec<u8>]) -> Vec<Digest> {
    if leaves.len() <= 1 {
        return Vec::new();
    }
    let k = split(leaves.len());
    if m < k {
        let mut path = reference_path(m, &leaves[..k]);
        path.push(reference_root(&leaves[k..]));
        path
    } else {
        let mut path = reference_path(m - k, &leaves[k..]);
        path.push(reference_root(&leaves[..k]));
        path
    }
}

/// The largest power of two below `n` (n > 1).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

fn numbered_leaves(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("leaf {i}").into_bytes()).collect()
}

/// The committed vectors were made by the gmssl script (independent SM3 and a recursive tree).
#[test]
fn known_answers() {
    let vectors = include_str!("../../tests/vectors/tree-sm3.txt");
    let mut checked = 0;
    for line in vectors.lines().filter(|l| !l.starts_with('#')) {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields[..] {
            ["root", n, root] => {
                let tree = HashTree::from_leaves(numbered_leaves(n.parse().unwrap()));
                assert_eq!(tree.root().to_hex(), root, "root of {n} leaves");
            }
            ["path", n, index, ref rest @ ..] => {
                let n: usize = n.parse().unwrap();
                let index: u64 = index.parse().unwrap();
                let expected: Vec<Digest> = rest
                    .first()
                    .map(|hashes| {
                        hashes
                            .split(',')
                            .map(|h| Digest::from_hex(h).unwrap())
                            .collect()
                    })
                    .unwrap_or_default();
                let leaves = numbered_leaves(n);
                let tree = HashTree::from_leaves(&leaves);
                assert_eq!(
                    tree.inclusion_path(index).unwrap(),
                    expected,
                    "path of leaf {index} of {n}"
                );
                verify_inclusion(
                    &leaves[index as usize],
                    index,
                    n as u64,
                    &expected,
                    &tree.root(),
                )
                .unwrap();
            }
            _ => panic!("unreadable vector line `{line}`"),
        }
        checked += 1;
    }
    assert_eq!(
        checked, 55,
        "vectors for 0..=9 leaves: 10 roots and 45 paths"
    );
}

#[test]
fn empty_tree_and_single_leaf() {
    let empty = HashTree::from_leaves(Vec::<Vec<u8>>::new());
    assert_eq!(empty.root(), sm3(b""));
    assert_eq!(empty.leaf_count(), 0);
    assert_eq!(empty.inclusion_path(0), None);
    assert_eq!(
        verify_inclusion(b"x", 0, 0, &[], &empty.root()),
        Err(TreeError::Empty { index: 0 })
    );
    let one = HashTree::from_leaves([b"only"]);
    assert_eq!(one.root(), leaf_hash(b"only"));
    verify_inclusion(b"only", 0, 1, &[], &one.root()).unwrap();
}

#[test]
fn the_count_is_not_pinned_by_a_path() {
    // Why the batch signature must cover the leaf count: leaf 0's path in a tree of 4 leaves
    // also checks as leaf 0 of 3 against the same root.
    let leaves = numbered_leaves(4);
    let tree = HashTree::from_leaves(&leaves);
    let path = tree.inclusion_path(0).unwrap();
    verify_inclusion(&leaves[0], 0, 4, &path, &tree.root()).unwrap();
    verify_inclusion(&leaves[0], 0, 3, &path, &tree.root()).unwrap();
}

#[test]
fn errors_name_the_position() {
    let leaves = numbered_leaves(5);
    let tree = HashTree::from_leaves(&leaves);
    let root = tree.root();
    let path = tree.inclusion_path(2).unwrap();
    let check = |result: Result<(), TreeError>, expected: &str| {
        assert_eq!(result.unwrap_err().to_string(), expected);
    };
    check(
        verify_inclusion(&leaves[2], 5, 5, &path, &root),
        "leaf index 5 is out of range for a tree of 5 leaves",
    );
    check(
        verify_inclusion(&leaves[2], 2, 5, &path[..2], &root),
        "path for leaf 2 of 5 has 2 hashes; that position needs 3",
    );
    let computed = root_from_path(leaf_hash(b"leaf 3"), 2, 5, &path).unwrap();
    assert_ne!(computed, root);
    check(
        verify_inclusion(b"leaf 3", 2, 5, &path, &root),
        &format!("path for leaf 2 of 5 leads to root {computed}, not {root}"),
    );
}

fn leaves_strategy() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..70)
}

proptest! {
    #[test]
    fn builder_matches_the_rfc_definitions(leaves in leaves_strategy()) {
        let tree = HashTree::from_leaves(&leaves);
        prop_assert_eq!(tree.root(), reference_root(&leaves));
        prop_assert_eq!(tree.leaf_count(), leaves.len() as u64);
        for i in 0..leaves.len() {
            let path = tree.inclusion_path(i as u64).unwrap();
            prop_assert_eq!(path.len(), path_len(i as u64, leaves.len() as u64).unwrap());
            prop_assert_eq!(&path, &reference_path(i, &leaves));
        }
    }

    #[test]
    fn every_leaf_verifies_and_every_flip_fails(
        leaves in leaves_strategy(),
        pick in any::<prop::sample::Index>(),
        byte in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let tree = HashTree::from_leaves(&leaves);
        let root = tree.root();
        let n = leaves.len() as u64;
        for (i, leaf) in leaves.iter().enumerate() {
            let path = tree.inclusion_path(i as u64).unwrap();
            prop_assert!(verify_inclusion(leaf, i as u64, n, &path, &root).is_ok());
        }

        let i = pick.index(leaves.len());
        let index = i as u64;
        let leaf = &leaves[i];
        let path = tree.inclusion_path(index).unwrap();
        let mask = 1u8 << bit;

        // A flipped bit of the leaf.
        let mut bad_leaf = leaf.clone();
        if bad_leaf.is_empty() {
            bad_leaf.push(mask);
        } else {
            let at = byte.index(bad_leaf.len());
            bad_leaf[at] ^= mask;
        }
        prop_assert!(verify_inclusion(&bad_leaf, index, n, &path, &root).is_err());

        // A flipped bit of any path hash.
        if !path.is_empty() {
            let at = byte.index(path.len() * 32);
            let mut bad_path = path.clone();
            bad_path[at / 32].0[at % 32] ^= mask;
            prop_assert!(verify_inclusion(leaf, index, n, &bad_path, &root).is_err());
        }

        // A flipped bit of the root.
        let mut bad_root = root;
        bad_root.0[byte.index(32)] ^= mask;
        prop_assert!(verify_inclusion(leaf, index, n, &path, &bad_root).is_err());

        // A flipped bit of the index (any of its 64 bits).
        let bad_index = index ^ (1u64 << byte.index(64));
        prop_assert!(verify_inclusion(leaf, bad_index, n, &path, &root).is_err());
    }
}
