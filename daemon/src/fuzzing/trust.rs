//! Targets for trust material from peers: record proofs, certificates
//! (origin certificates in `NodeKey` records and trust roots, TLS node
//! certificates), `NodeKey` records and the city's trust lists.

use std::num::NonZeroUsize;
use std::sync::OnceLock;

use prost::Message;
use rustls::pki_types::CertificateDer;
use tiersync_proto::wire;
use tiersync_trust::cert::Certificate;
use tiersync_trust::{
    BatchSigner, Item, ProofDecoder, RecordProof, SigningKey, Verifier, VerifyingKey,
};

use super::fixture::{self, CITY, CODES, COMMUNITY};
use crate::identity::keyring::Keyring;
use crate::identity::origin::{TrustRoot, origin_code};
use crate::identity::tls::code_from_cert;
use crate::kinds::{KIND_NODE_KEY, KIND_TRUST_LIST};

/// The leaves the proof seeds were made over, by leaf index modulo their count.
pub const PROOF_LEAVES: [&[u8]; 4] = [
    b"tiersync fuzz leaf 0",
    b"tiersync fuzz leaf 1",
    b"tiersync fuzz leaf 2",
    b"tiersync fuzz leaf 3",
];

/// The community's batch signer, whose proofs the proof seeds are.
pub fn proof_signer() -> BatchSigner {
    let key = SigningKey::from_pkcs8_pem(fixture::origin_key_pem(COMMUNITY)).expect("fixture key");
    BatchSigner::new(COMMUNITY, key).expect("a signer")
}

/// The key the proof seeds verify with (read once).
fn proof_key() -> &'static VerifyingKey {
    static KEY: OnceLock<VerifyingKey> = OnceLock::new();
    KEY.get_or_init(|| proof_signer().verifying_key().clone())
}

/// A proof of the fixture batch, the header a decoder caches first.
fn primer() -> &'static [u8] {
    static PRIMER: OnceLock<Vec<u8>> = OnceLock::new();
    PRIMER.get_or_init(|| {
        let batch = proof_signer().sign(PROOF_LEAVES).expect("signed");
        batch.proof(0).expect("leaf 0").to_bytes().expect("encodes")
    })
}

/// A record proof as `Record.proof` carries it: read alone and by a
/// decoder that has read another proof first (both must agree), encoded
/// again (byte for byte the input), and verified over the fixture leaves
/// with the community's key, alone and as a batch.
pub fn proof(data: &[u8]) {
    let alone = RecordProof::from_bytes(data);
    let mut decoder = ProofDecoder::new();
    decoder.decode(primer()).expect("the primer decodes");
    assert_eq!(
        decoder.decode(data),
        alone,
        "a decoder with a cached header reads another proof than a fresh one"
    );
    let mut fresh = ProofDecoder::new();
    assert_eq!(
        fresh.decode(data),
        alone,
        "ProofDecoder and from_bytes disagree"
    );
    let Ok(proof) = alone else {
        return;
    };
    assert_eq!(
        proof.to_bytes().expect("a decoded proof encodes"),
        data,
        "a proof does not encode back to the bytes it was read from"
    );
    let key = proof_key();
    let leaf = PROOF_LEAVES[(proof.leaf_index % PROOF_LEAVES.len() as u64) as usize];
    let single = proof.verify(leaf, key);
    let verifier = Verifier::new(NonZeroUsize::new(4).expect("non-zero"));
    let many = verifier.verify_many(&[
        Item {
            proof: &proof,
            leaf,
            key,
        },
        Item {
            proof: &proof,
            leaf: b"not a leaf of any batch",
            key,
        },
    ]);
    assert_eq!(
        many[0].is_ok(),
        single.is_ok(),
        "verify_many and verify disagree: {:?} vs {single:?}",
        many[0]
    );
    assert!(
        many[1].is_err(),
        "a proof verified for a leaf it does not prove"
    );
}

/// A certificate as DER (an origin certificate in a `NodeKey` record, a
/// root in a trust list's chain, a peer's TLS certificate) or as PEM text
/// (`trust-root.pem` and the node's certificates): parsed, its key and
/// subject read, checked as an origin certificate of the fixture root and
/// as a self-signed root, and the node code of a TLS certificate read.
pub fn certificate(data: &[u8]) {
    let _ = code_from_cert(&CertificateDer::from(data));
    let mut certs = Vec::new();
    if let Ok(cert) = Certificate::from_der(data) {
        certs.push(cert);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(cert) = Certificate::from_pem(text)
    {
        certs.push(cert);
    }
    for cert in certs {
        let again = Certificate::from_der(cert.to_der()).expect("a certificate's DER reads back");
        assert_eq!(
            again, cert,
            "a certificate's DER reads back as another certificate"
        );
        let pem = cert.to_pem();
        let from_pem = Certificate::from_pem(&pem).expect("a certificate's PEM reads back");
        assert_eq!(
            from_pem.to_der(),
            cert.to_der(),
            "PEM and DER of a certificate differ"
        );
        let _ = cert.subject();
        let _ = cert.public_key();
        let _ = origin_code(&cert);
        let _ = fixture::trust_root().check_origin(&cert);
        let _ = TrustRoot::from_der(cert.to_der(), "a fuzzed root");
    }
}

/// A keyring of the fixture root, shared by the inputs of one process: it
/// learns only keys the fixture root issued.
fn keyring() -> &'static Keyring {
    static KEYRING: OnceLock<Keyring> = OnceLock::new();
    KEYRING.get_or_init(|| Keyring::new(fixture::trust_root().clone()))
}

/// A record of `kind` owned by `owner` with `payload`.
fn record_of(kind: &str, owner: &str, payload: &[u8]) -> wire::Record {
    let mut record = fixture::node_key_record(owner);
    record.kind = kind.into();
    record.payload = payload.to_vec().into();
    record
}

/// A `NodeKey` payload: the first byte picks its owner among the fixture
/// nodes, the rest is the payload. Learned by a keyring of the fixture
/// root (each certificate must be the root's and name the owner), and
/// checked as a record arriving at the street.
pub fn node_key(data: &[u8]) {
    let Some((&first, payload)) = data.split_first() else {
        return;
    };
    let owner = CODES[usize::from(first) % CODES.len()];
    let record = record_of(KIND_NODE_KEY, owner, payload);
    let keyring = keyring();
    if keyring.learn(&record) == Ok(true) {
        assert!(
            keyring.knows(owner),
            "a key was learned but its owner is unknown"
        );
        let node_key = wire::NodeKey::decode(payload).expect("a learned NodeKey decodes");
        assert!(
            !node_key.certificates.is_empty(),
            "a key was learned from a NodeKey without certificates"
        );
    }
    let fx = fixture::node();
    let _ = fx.node.check_incoming(
        &record,
        &fixture::code(COMMUNITY),
        crate::route::Toward::Child,
    );
}

/// A `TrustList` payload of the city: checked by a keyring of the fixture
/// root (signature by the root or by a root its chain leads to, body, the
/// announced successor), then adopted, and its revocations and status read.
pub fn trust_list(data: &[u8]) {
    let record = record_of(KIND_TRUST_LIST, CITY, data);
    let Ok(checked) = keyring().check_trust_list(&record) else {
        return;
    };
    // Adopting changes a keyring: a fresh one for each list that checks out.
    let keyring = Keyring::new(fixture::trust_root().clone());
    assert!(
        keyring.adopt(checked),
        "a keyring without a list refused one"
    );
    for code in CODES {
        let _ = keyring.revocation(code);
    }
    let _ = keyring.trust_status(crate::clock::now_ms());
    let _ = keyring.chain();
    // The roots it vouches for now check origin certificates too.
    let _ = keyring.learn(&fixture::node_key_record(COMMUNITY));
}
