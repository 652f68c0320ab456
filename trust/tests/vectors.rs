//! The committed v1 vectors (`tests/vectors/batch-v1.txt`) still decode and verify, and this
//! build derives the same signed message, root and proofs from the same key and records.
//! Persisted formats must stay readable: a failure here means a format changed.
//!
//! `TIERSYNC_BLESS=1 cargo test -p tiersync-trust --test vectors` writes a fresh file (new
//! key); only do that for a new format version, never to make a failure go away.

use std::fmt::Write as _;

use tiersync_trust::{BatchSigner, Digest, RecordProof, SigningKey, VerifyingKey};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/batch-v1.txt");
const SIGNER: &str = "511102004001";

fn records() -> Vec<Vec<u8>> {
    (0..5)
        .map(|i| format!("record {i} of 5").into_bytes())
        .collect()
}

fn render(key: &SigningKey) -> String {
    let signer = BatchSigner::new(SIGNER, key.clone()).unwrap();
    let batch = signer.sign(records()).unwrap();
    let first = batch.proof(0).unwrap();
    let mut out = String::from(
        "# tiersync-trust batch signature vectors, format v1 (tiersync.batch.v1).\n\
         # Test key only. Checked by trust/tests/vectors.rs; leaves are b\"record <i> of 5\".\n",
    );
    let der = key.to_pkcs8_der().unwrap();
    writeln!(out, "private_key_pkcs8 {}", hex::encode(&*der)).unwrap();
    let public = key.verifying_key().to_public_key_der();
    writeln!(out, "public_key_spki {}", hex::encode(public)).unwrap();
    writeln!(out, "signer {SIGNER}").unwrap();
    writeln!(out, "root {}", batch.root()).unwrap();
    writeln!(
        out,
        "signed_message {}",
        hex::encode(first.signed_message())
    )
    .unwrap();
    writeln!(out, "signature {}", hex::encode(batch.signature().as_der())).unwrap();
    for proof in batch.proofs() {
        writeln!(
            out,
            "proof {} {}",
            proof.leaf_index,
            hex::encode(proof.to_bytes().unwrap())
        )
        .unwrap();
    }
    out
}

fn field<'a>(file: &'a str, name: &str) -> &'a str {
    file.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no `{name}` line in {PATH}"))
}

#[test]
fn committed_v1_vectors_still_verify() {
    if std::env::var("TIERSYNC_BLESS").as_deref() == Ok("1") {
        std::fs::write(PATH, render(&SigningKey::generate())).unwrap();
    }
    let file = std::fs::read_to_string(PATH).unwrap();
    let key = SigningKey::from_pkcs8_der(&hex::decode(field(&file, "private_key_pkcs8")).unwrap())
        .unwrap();
    let public =
        VerifyingKey::from_public_key_der(&hex::decode(field(&file, "public_key_spki")).unwrap())
            .unwrap();
    assert_eq!(&public, key.verifying_key());

    // Every stored proof decodes and verifies against its record with the stored key.
    let records = records();
    let stored: Vec<RecordProof> = file
        .lines()
        .filter_map(|line| line.strip_prefix("proof "))
        .map(|rest| {
            let (_, bytes) = rest.split_once(' ').unwrap();
            RecordProof::from_bytes(&hex::decode(bytes).unwrap()).unwrap()
        })
        .collect();
    assert_eq!(stored.len(), records.len());
    for (proof, record) in stored.iter().zip(&records) {
        proof.verify(record, &public).unwrap();
        assert_eq!(proof.signer, SIGNER);
        assert_eq!(proof.root, Digest::from_hex(field(&file, "root")).unwrap());
        assert_eq!(
            hex::encode(proof.signed_message()),
            field(&file, "signed_message")
        );
        assert_eq!(
            hex::encode(proof.signature.as_der()),
            field(&file, "signature")
        );
    }

    // This build derives the same root, message and paths from the same key and records. The
    // signature itself may differ if the sm2 crate ever changes its nonce derivation, so it
    // is compared by verifying, not byte for byte.
    let batch = BatchSigner::new(SIGNER, key.clone())
        .unwrap()
        .sign(&records)
        .unwrap();
    for (fresh, stored) in batch.proofs().zip(&stored) {
        assert_eq!(
            RecordProof {
                signature: stored.signature.clone(),
                ..fresh.clone()
            },
            *stored
        );
        fresh
            .verify(&records[fresh.leaf_index as usize], &public)
            .unwrap();
    }
}
