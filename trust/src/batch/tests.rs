use std::num::NonZeroUsize;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;

fn records(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("record {i} of {n}").into_bytes())
        .collect()
}

fn signer() -> BatchSigner {
    BatchSigner::new("511102004001", SigningKey::generate()).unwrap()
}

fn verifier() -> Verifier {
    Verifier::new(NonZeroUsize::new(16).unwrap())
}

/// The persisted layout, fixed: any change to `signed_message` breaks this test.
#[test]
fn signed_message_layout_v1() {
    let message = signed_message(
        Algorithm::Sm2Sm3,
        "5111",
        &KeyId([0xab; 16]),
        3,
        &Digest([0xcd; 32]),
    );
    let expected = [
        "00000011",
        &hex::encode("tiersync.batch.v1"),
        "00000007",
        &hex::encode("sm2-sm3"),
        "00000004",
        &hex::encode("5111"),
        "00000010",
        &"ab".repeat(16),
        "00000008",
        "0000000000000003",
        "00000020",
        &"cd".repeat(32),
    ]
    .concat();
    assert_eq!(hex::encode(message), expected);
}

#[test]
fn every_proof_verifies_with_and_without_the_cache() {
    let signer = signer();
    let records = records(37);
    let batch = signer.sign(&records).unwrap();
    assert_eq!(batch.leaf_count(), 37);
    let verifier = verifier();
    let key = signer.verifying_key();
    for (record, proof) in records.iter().zip(batch.proofs()) {
        proof.verify(record, key).unwrap();
        verifier.verify(&proof, record, key).unwrap();
    }
    assert_eq!(
        verifier.stats(),
        CacheStats {
            hits: 36,
            misses: 1,
            len: 1
        }
    );
}

#[test]
fn a_cached_batch_still_checks_each_path() {
    let signer = signer();
    let records = records(4);
    let batch = signer.sign(&records).unwrap();
    let verifier = verifier();
    let key = signer.verifying_key();
    verifier
        .verify(&batch.proof(0).unwrap(), &records[0], key)
        .unwrap();
    let error = verifier
        .verify(&batch.proof(1).unwrap(), b"forged", key)
        .unwrap_err();
    assert!(matches!(
        *error.reason,
        VerifyFailure::Path(TreeError::RootMismatch { .. })
    ));
}

#[test]
fn a_changed_count_is_caught_by_the_signature() {
    // Leaf 0's path of 4 leaves also fits 3 leaves (see tree tests): only the signature
    // catches a forwarder that rewrites the count.
    let signer = signer();
    let records = records(4);
    let batch = signer.sign(&records).unwrap();
    let mut proof = batch.proof(0).unwrap();
    proof.leaf_count = 3;
    let error = verifier()
        .verify(&proof, &records[0], signer.verifying_key())
        .unwrap_err();
    assert!(
        matches!(
            *error.reason,
            VerifyFailure::Signature(KeyError::BadSignature { .. })
        ),
        "{error}"
    );
}

#[test]
fn refusals_name_signer_root_count_and_reason() {
    let signer = signer();
    let records = records(5);
    let batch = signer.sign(&records).unwrap();
    let root = batch.root();
    let proof = batch.proof(2).unwrap();
    let other = SigningKey::generate();

    let error = proof
        .verify(&records[2], other.verifying_key())
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "proof of leaf 2 from signer `511102004001` (batch root {root}, 5 leaves) is \
             refused: it names key {}, but the key given is {}",
            signer.verifying_key().key_id(),
            other.verifying_key().key_id()
        )
    );

    let mut short = proof.clone();
    short.path.pop();
    let error = short
        .verify(&records[2], signer.verifying_key())
        .unwrap_err();
    assert!(
        error
            .to_string()
            .ends_with("bad path: path for leaf 2 of 5 has 2 hashes; that position needs 3"),
        "{error}"
    );

    let mut forged = proof.clone();
    forged.signer = "511102004002".into();
    let error = forged
        .verify(&records[2], signer.verifying_key())
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("bad batch signature: SM2 signature does not verify"),
        "{error}"
    );
}

#[test]
fn bad_signer_names_and_empty_batches_are_refused() {
    assert_eq!(
        BatchSigner::new("", SigningKey::generate())
            .unwrap_err()
            .to_string(),
        "signer name `` must be 1 to 255 bytes, it is 0"
    );
    assert_eq!(
        signer()
            .sign(Vec::<Vec<u8>>::new())
            .unwrap_err()
            .to_string(),
        "batch from signer `511102004001` has no records: nothing to sign"
    );
}

#[test]
fn proof_bytes_round_trip_and_decode_errors() {
    let signer = signer();
    let records = records(9);
    let batch = signer.sign(&records).unwrap();
    for proof in batch.proofs() {
        assert_eq!(
            RecordProof::from_bytes(&proof.to_bytes().unwrap()).unwrap(),
            proof
        );
    }
    let bytes = batch.proof(3).unwrap().to_bytes().unwrap();

    let check = |bytes: &[u8], expected: &str| {
        assert_eq!(
            RecordProof::from_bytes(bytes).unwrap_err().to_string(),
            expected
        );
    };
    let mut version = bytes.clone();
    version[0] = 2;
    check(
        &version,
        "record proof format version 2 is unknown (this build reads 1)",
    );
    let mut algorithm = bytes.clone();
    algorithm[2..9].copy_from_slice(b"ed25519");
    check(
        &algorithm,
        "record proof names unknown signature algorithm `ed25519` (known: sm2-sm3)",
    );
    check(
        &bytes[..bytes.len() - 1],
        &format!(
            "record proof ends inside its path (at byte {})",
            bytes.len() - 32
        ),
    );
    let mut trailing = bytes.clone();
    trailing.push(0);
    check(&trailing, "record proof has 1 bytes after its path");
}

/// A decoder reads the header a batch's proofs share once, and its answers are exactly
/// `from_bytes`' for every proof, every other batch's and every broken one in between.
#[test]
fn a_proof_decoder_answers_as_from_bytes_does() {
    let (a, b) = (signer(), signer());
    let first = a.sign(records(5)).unwrap();
    let second = b.sign(records(3)).unwrap();
    let good: Vec<Vec<u8>> = first
        .proofs()
        .chain(second.proofs())
        .chain(first.proofs())
        .map(|p| p.to_bytes().unwrap())
        .collect();
    let mut inputs = good.clone();
    let whole = &good[1];
    inputs.insert(2, whole[..whole.len() - 1].to_vec()); // ends inside its path
    inputs.insert(3, [whole.as_slice(), &[0]].concat()); // a byte after the path
    let mut other_count = whole.clone();
    other_count[45] ^= 1; // the leaf count's last byte: another header, well formed
    inputs.insert(4, other_count);
    inputs.insert(5, vec![1, 7]); // a header cut short
    let mut decoder = ProofDecoder::new();
    for bytes in &inputs {
        assert_eq!(
            decoder.decode(bytes),
            RecordProof::from_bytes(bytes),
            "{bytes:?}"
        );
    }
}

#[test]
fn the_verifier_is_shared_across_threads() {
    let signer = signer();
    let records = Arc::new(records(64));
    let batch = signer.sign(records.iter()).unwrap();
    let proofs: Arc<Vec<RecordProof>> = Arc::new(batch.proofs().collect());
    let key = Arc::new(signer.verifying_key().clone());
    let verifier = Arc::new(verifier());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (records, proofs, key, verifier) = (
                records.clone(),
                proofs.clone(),
                key.clone(),
                verifier.clone(),
            );
            std::thread::spawn(move || {
                for i in (t..64).step_by(4) {
                    verifier.verify(&proofs[i], &records[i], &key).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let stats = verifier.stats();
    assert_eq!(stats.hits + stats.misses, 64);
    assert_eq!(stats.len, 1);
}

#[test]
fn the_cache_is_bounded() {
    let signer = signer();
    let verifier = Verifier::new(NonZeroUsize::new(2).unwrap());
    for n in 1..=5 {
        let records = records(n);
        let batch = signer.sign(&records).unwrap();
        verifier
            .verify(
                &batch.proof(0).unwrap(),
                &records[0],
                signer.verifying_key(),
            )
            .unwrap();
    }
    assert_eq!(verifier.stats().len, 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any flipped bit of the leaf, the path, the index, the count, the root or the signature
    /// is refused, by `verify` and by the cached `Verifier` (warm with the true batch).
    #[test]
    fn every_flip_is_refused(
        n in 1usize..40,
        pick in any::<prop::sample::Index>(),
        byte in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let signer = signer();
        let key = signer.verifying_key();
        let records = records(n);
        let batch = signer.sign(&records).unwrap();
        let i = pick.index(n);
        let proof = batch.proof(i as u64).unwrap();
        let verifier = verifier();
        verifier.verify(&proof, &records[i], key).unwrap();
        let mask = 1u8 << bit;

        let mut leaf = records[i].clone();
        let at = byte.index(leaf.len());
        leaf[at] ^= mask;
        prop_assert!(proof.verify(&leaf, key).is_err());
        prop_assert!(verifier.verify(&proof, &leaf, key).is_err());

        let mut altered = Vec::new();
        if !proof.path.is_empty() {
            let mut p = proof.clone();
            let at = byte.index(p.path.len() * 32);
            p.path[at / 32].0[at % 32] ^= mask;
            altered.push(p);
        }
        let mut p = proof.clone();
        p.leaf_index ^= 1 << byte.index(64);
        altered.push(p);
        let mut p = proof.clone();
        p.leaf_count ^= 1 << byte.index(64);
        altered.push(p);
        let mut p = proof.clone();
        p.root.0[byte.index(32)] ^= mask;
        altered.push(p);
        let mut der = proof.signature.as_der().to_vec();
        let at = byte.index(der.len());
        der[at] ^= mask;
        if let Ok(signature) = Signature::from_der(&der) {
            let mut p = proof.clone();
            p.signature = signature;
            altered.push(p);
        }
        for p in altered {
            prop_assert!(p.verify(&records[i], key).is_err());
            prop_assert!(verifier.verify(&p, &records[i], key).is_err());
        }
    }
}

#[test]
fn verify_many_checks_each_item_and_one_signature_per_batch() {
    let (a, b) = (signer(), signer());
    let records_a = records(10);
    let records_b = records(7);
    let batch_a = a.sign(&records_a).unwrap();
    let batch_b = b.sign(&records_b).unwrap();
    let proofs_a: Vec<_> = batch_a.proofs().collect();
    let proofs_b: Vec<_> = batch_b.proofs().collect();
    let mut items = Vec::new();
    for i in [3, 0, 9, 4] {
        items.push(Item {
            proof: &proofs_a[i],
            leaf: &records_a[i],
            key: a.verifying_key(),
        });
    }
    for i in [6, 1] {
        items.push(Item {
            proof: &proofs_b[i],
            leaf: &records_b[i],
            key: b.verifying_key(),
        });
    }
    // A forged record among good ones, and a good one under the wrong key.
    items.push(Item {
        proof: &proofs_a[5],
        leaf: b"forged",
        key: a.verifying_key(),
    });
    items.push(Item {
        proof: &proofs_b[2],
        leaf: &records_b[2],
        key: a.verifying_key(),
    });
    let verifier = verifier();
    let results = verifier.verify_many(&items);
    assert!(results[..6].iter().all(Result::is_ok), "{results:?}");
    assert!(matches!(
        *results[6].as_ref().unwrap_err().reason,
        VerifyFailure::Path(TreeError::RootMismatch { index: 5, .. })
    ));
    assert!(matches!(
        *results[7].as_ref().unwrap_err().reason,
        VerifyFailure::WrongKey { .. }
    ));
    assert_eq!(
        verifier.stats().misses,
        2,
        "one SM2 verify per origin batch"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// `verify_many` says exactly what `verify` says for each item, whatever subset, order
    /// and corruption the items have.
    #[test]
    fn verify_many_agrees_with_verify(
        n in 1usize..40,
        picks in prop::collection::vec(
            (any::<prop::sample::Index>(), 0u8..8, any::<prop::sample::Index>(), 0u8..8),
            1..30,
        ),
    ) {
        let signer = signer();
        let key = signer.verifying_key();
        let records = records(n);
        let batch = signer.sign(&records).unwrap();
        let mut cases = Vec::new();
        for (pick, what, byte, bit) in picks {
            let i = pick.index(n);
            let mut proof = batch.proof(i as u64).unwrap();
            let mut leaf = records[i].clone();
            let mask = 1u8 << bit;
            match what {
                0 => {
                    let at = byte.index(leaf.len());
                    leaf[at] ^= mask;
                }
                1 if !proof.path.is_empty() => {
                    let at = byte.index(proof.path.len() * 32);
                    proof.path[at / 32].0[at % 32] ^= mask;
                }
                2 => proof.leaf_index ^= 1 << byte.index(64),
                3 => proof.root.0[byte.index(32)] ^= mask,
                4 => proof.leaf_count ^= 1 << byte.index(64),
                _ => {} // most items are good
            }
            cases.push((proof, leaf));
        }
        let items: Vec<Item<'_>> = cases
            .iter()
            .map(|(proof, leaf)| Item { proof, leaf, key })
            .collect();
        let many = verifier().verify_many(&items);
        for ((proof, leaf), result) in cases.iter().zip(many) {
            prop_assert_eq!(result, proof.verify(leaf, key));
        }
    }
}

#[test]
fn oversized_proofs_are_refused_not_panicked_on() {
    let signer = signer();
    let batch = signer.sign(records(3)).unwrap();
    let mut proof = batch.proof(0).unwrap();
    proof.signer = "x".repeat(300);
    assert_eq!(
        proof.to_bytes().unwrap_err().to_string(),
        "record proof signer is 300 long; the proof format allows at most 255"
    );
    let mut proof = batch.proof(0).unwrap();
    proof.path = vec![Digest::default(); 65];
    assert!(proof.to_bytes().is_err());
    assert!(matches!(
        *proof
            .verify(&records(3)[0], signer.verifying_key())
            .unwrap_err()
            .reason,
        VerifyFailure::Path(TreeError::PathLength { got: 65, .. })
    ));
    let mut bytes = batch.proof(0).unwrap().to_bytes().unwrap();
    let at = bytes.len() - 2 * 32 - 1;
    bytes[at] = 65;
    assert_eq!(
        RecordProof::from_bytes(&bytes),
        Err(DecodeError::PathTooLong { hashes: 65 })
    );
}

proptest! {
    /// Peer bytes never panic the decoder; what decodes re-encodes to the same bytes.
    #[test]
    fn proof_decoding_is_total_and_exact(
        junk in prop::collection::vec(any::<u8>(), 0..600),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let _ = RecordProof::from_bytes(&junk);
        let batch = BatchSigner::new("5111", fixed_key())
            .unwrap()
            .sign(records(6))
            .unwrap();
        let mut bytes = batch.proof(4).unwrap().to_bytes().unwrap();
        for (at, value) in flips {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        if let Ok(proof) = RecordProof::from_bytes(&bytes) {
            prop_assert_eq!(proof.to_bytes().unwrap(), bytes);
        }
    }

    #[test]
    fn signature_decoding_is_total(junk in prop::collection::vec(any::<u8>(), 0..100)) {
        if let Ok(signature) = Signature::from_der(&junk) {
            prop_assert_eq!(signature.as_der(), &junk[..]);
        }
    }
}

/// The committed vectors' test key, so the proptest above does not generate one per case.
fn fixed_key() -> SigningKey {
    let vectors = include_str!("../../tests/vectors/batch-v1.txt");
    let der = vectors
        .lines()
        .find_map(|line| line.strip_prefix("private_key_pkcs8 "))
        .expect("the vectors hold a key");
    SigningKey::from_pkcs8_der(&hex::decode(der).unwrap()).unwrap()
}
