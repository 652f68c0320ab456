//! Signing and verification cost: prints figures, asserts nothing (timing targets belong here,
//! never in tests).
//!
//! 1. SM3 leaf hashing of 1 KB leaves.
//! 2. Origin side per batch of 1,000 leaves: tree build, one SM2 signature, one proof per leaf.
//! 3. Receiving side: proof verification without the cache (one SM2 verify per record) and
//!    with it (one per batch), the per-record path check alone, and `verify_many` over a
//!    whole origin batch and over a later hop's mix of ten origin batches; decoding proofs one
//!    by one and with a [`ProofDecoder`] that reads a batch's shared fields once.
//!
//! Figures are compared with the budget: signing may cost at most 20% of a one-link
//! rate of about 60,000 records/s on 2 cores.
//!
//! `cargo bench -p tiersync-trust --bench sign` (env: BENCH_LEAVES, default 100000;
//! BENCH_BATCH, default 1000).
#![allow(clippy::print_stdout)]

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use tiersync_trust::tree::{HashTree, leaf_hash};
use tiersync_trust::{BatchSigner, Item, ProofDecoder, RecordProof, SigningKey, Verifier};

const LINK_RATE: f64 = 60_000.0;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One line: records/s, microseconds per record, and the share of one core a 60k/s link
/// would spend on it.
fn report(what: &str, records: usize, elapsed: Duration) {
    let per_record = elapsed.as_secs_f64() / records as f64;
    println!(
        "{what:<58} {:>11.0} records/s  {:>7.2} µs/record  {:>5.1}% of one core at 60k/s",
        1.0 / per_record,
        per_record * 1e6,
        per_record * LINK_RATE * 100.0
    );
}

fn main() {
    let total = env("BENCH_LEAVES", 100_000);
    let batch_size = env("BENCH_BATCH", 1000).max(1);
    let batches = total.div_ceil(batch_size);
    let leaves: Vec<Vec<u8>> = (0..batch_size)
        .map(|i| {
            let mut leaf = format!("record {i} ").into_bytes();
            leaf.resize(1024, b'x');
            leaf
        })
        .collect();
    println!(
        "tiersync-trust sign benchmark: {total} leaves of 1 KB, batches of {batch_size}, one thread"
    );

    // 1. Leaf hashing.
    let start = Instant::now();
    for _ in 0..batches {
        for leaf in &leaves {
            black_box(leaf_hash(black_box(leaf)));
        }
    }
    let elapsed = start.elapsed();
    report("SM3 leaf hash, 1 KB", batches * batch_size, elapsed);
    println!(
        "{:<58} {:>11.0} MiB/s",
        "  (SM3 throughput)",
        (batches * batch_size * 1024) as f64 / elapsed.as_secs_f64() / (1 << 20) as f64
    );

    // 2. Origin side.
    let signer = BatchSigner::new("511102004001", SigningKey::generate()).expect("valid signer");
    let start = Instant::now();
    for _ in 0..batches {
        black_box(HashTree::from_leaves(&leaves));
    }
    report(
        "tree build (leaf hashes + nodes)",
        batches * batch_size,
        start.elapsed(),
    );

    let tree = HashTree::from_leaves(&leaves);
    let signs = 200;
    let start = Instant::now();
    for _ in 0..signs {
        black_box(signer.sign_tree(tree.clone()).expect("non-empty"));
    }
    let per_sign = start.elapsed() / signs;
    println!(
        "{:<58} {:>11.0} signatures/s  ({:.3} ms each, {:.2} µs per record of a batch of {batch_size})",
        "SM2 batch signature (tree clone + sign)",
        1.0 / per_sign.as_secs_f64(),
        per_sign.as_secs_f64() * 1e3,
        per_sign.as_secs_f64() * 1e6 / batch_size as f64
    );

    let start = Instant::now();
    let mut proofs: Vec<RecordProof> = Vec::new();
    for _ in 0..batches {
        let batch = signer.sign(&leaves).expect("non-empty");
        proofs = batch.proofs().collect();
        black_box(&proofs);
    }
    report(
        "origin total: tree + 1 signature + a proof per record",
        batches * batch_size,
        start.elapsed(),
    );

    // 3. Receiving side.
    let key = signer.verifying_key();
    let uncached = total.min(2000);
    let start = Instant::now();
    for i in 0..uncached {
        let j = i % batch_size;
        proofs[j].verify(&leaves[j], key).expect("valid proof");
    }
    report(
        "verify without cache (SM2 verify + path, per record)",
        uncached,
        start.elapsed(),
    );

    let start = Instant::now();
    for _ in 0..batches {
        // A fresh verifier per batch: one miss (SM2) then hits.
        let verifier = Verifier::new(NonZeroUsize::new(1024).expect("non-zero"));
        for (proof, leaf) in proofs.iter().zip(&leaves) {
            verifier.verify(proof, leaf, key).expect("valid proof");
        }
    }
    report(
        "verify with cache (1 SM2 verify per batch + path)",
        batches * batch_size,
        start.elapsed(),
    );

    let verifier = Verifier::new(NonZeroUsize::new(1024).expect("non-zero"));
    verifier
        .verify(&proofs[0], &leaves[0], key)
        .expect("valid proof");
    let start = Instant::now();
    for _ in 0..batches {
        for (proof, leaf) in proofs.iter().zip(&leaves) {
            verifier.verify(proof, leaf, key).expect("valid proof");
        }
    }
    report(
        "per-record proof check, warm cache (leaf hash + path)",
        batches * batch_size,
        start.elapsed(),
    );
    let start = Instant::now();
    for _ in 0..batches {
        let verifier = Verifier::new(NonZeroUsize::new(1024).expect("non-zero"));
        let items: Vec<Item<'_>> = proofs
            .iter()
            .zip(&leaves)
            .map(|(proof, leaf)| Item { proof, leaf, key })
            .collect();
        for result in verifier.verify_many(&items) {
            result.expect("valid proof");
        }
    }
    report(
        "verify_many, a whole origin batch (1 SM2 + shared nodes)",
        batches * batch_size,
        start.elapsed(),
    );

    // A later hop's batch: a tenth of each of ten origin batches, interleaved.
    let origins: Vec<Vec<RecordProof>> = (0..10)
        .map(|o| {
            let leaves: Vec<Vec<u8>> = leaves
                .iter()
                .map(|leaf| {
                    let mut leaf = leaf.clone();
                    leaf[1000] = o;
                    leaf
                })
                .collect();
            signer.sign(&leaves).expect("non-empty").proofs().collect()
        })
        .collect();
    let mixed_leaves: Vec<Vec<u8>> = (0..batch_size)
        .map(|i| {
            let mut leaf = leaves[(i / 10) * 10 % batch_size].clone();
            leaf[1000] = (i % 10) as u8;
            leaf
        })
        .collect();
    let mixed: Vec<Item<'_>> = (0..batch_size)
        .map(|i| Item {
            proof: &origins[i % 10][(i / 10) * 10 % batch_size],
            leaf: &mixed_leaves[i],
            key,
        })
        .collect();
    let start = Instant::now();
    for _ in 0..batches {
        let verifier = Verifier::new(NonZeroUsize::new(1024).expect("non-zero"));
        for result in verifier.verify_many(&mixed) {
            result.expect("valid proof");
        }
    }
    report(
        "verify_many, re-batched: 1/10 of each of 10 origin batches",
        batches * batch_size,
        start.elapsed(),
    );

    // Reading proofs as they arrive: each on its own, and with one decoder over a batch.
    let encoded: Vec<Vec<u8>> = proofs
        .iter()
        .map(|p| p.to_bytes().expect("a proof we made encodes"))
        .collect();
    let start = Instant::now();
    for _ in 0..batches {
        for bytes in &encoded {
            black_box(RecordProof::from_bytes(bytes).expect("decodes"));
        }
    }
    report(
        "proof decode, RecordProof::from_bytes each",
        batches * batch_size,
        start.elapsed(),
    );
    let start = Instant::now();
    for _ in 0..batches {
        let mut decoder = ProofDecoder::new();
        for bytes in &encoded {
            black_box(decoder.decode(bytes).expect("decodes"));
        }
    }
    report(
        "proof decode, one ProofDecoder per batch",
        batches * batch_size,
        start.elapsed(),
    );

    let path_len = proofs.iter().map(|p| p.path.len()).max().unwrap_or(0);
    let proof_bytes = encoded[0].len();
    println!(
        "proof size: {proof_bytes} bytes as RecordProof::to_bytes ({path_len} path hashes at most)"
    );
    println!(
        "budget: 20% of a 60,000 records/s link on 2 cores = 40% of one core; each side above \
         is one core"
    );
}
