//! Targets for what comes from operators, departments and files, and from
//! peers during onboarding: join tokens, certificate requests and the
//! parent's answer to a join, config files, payloads of canonical kinds as
//! a peer sends them and as the CLI reads them from JSON.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use prost::Message;
use rustls::pki_types::CertificateDer;
use tiersync_proto::types::Schemas;
use tiersync_proto::wire;
use tiersync_trust::cert::Certificate;

use super::fixture::{self, COMMUNITY, STREET};
use crate::config::NodeConfig;
use crate::identity::join::{JoinToken, decide};
use crate::identity::joining::check_answer;
use crate::identity::origin::RootIssuer;
use crate::identity::pki::Ca;
use crate::identity::tls::{ca_fingerprint, code_from_cert};
use crate::node::Reader;

/// The city's CA and trust root, as [`decide`] uses them.
fn city() -> &'static (Ca, RootIssuer) {
    static CITY: OnceLock<(Ca, RootIssuer)> = OnceLock::new();
    CITY.get_or_init(|| (fixture::ca(), fixture::root_issuer()))
}

/// The token the community joins with: its code and the fixture CA.
pub fn join_token() -> JoinToken {
    JoinToken {
        code: fixture::code(COMMUNITY),
        secret: [7; 16],
        ca_fingerprint: ca_fingerprint(fixture::CA_PEM).expect("the fixture CA"),
    }
}

/// Onboarding input; the first byte picks which (modulo 3), the rest is:
/// 0. a join token's text, as the operator pastes it into `tiersync join`:
///    parsed, and its text read back to the same token;
/// 1. a `CertificateRequest` payload, as the city's issuer decodes it from
///    a record the street routed to it: decided (the subject must be the
///    requester's child; the CSR and origin key must parse), and what is
///    issued must name the subject;
/// 2. a `JoinResponse`, the parent's answer as the joining community checks
///    it (CA pinned by the token, parent, TLS and origin certificates for
///    the community's keys, deployment secret, trust root and chain).
pub fn join(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    match first % 3 {
        0 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            if let Ok(token) = JoinToken::parse(text) {
                let again =
                    JoinToken::parse(&token.to_string()).expect("a token's own text parses");
                assert_eq!(again, token, "a token's text reads back as another token");
            }
        }
        1 => {
            let Ok(request) = wire::CertificateRequest::decode(rest) else {
                return;
            };
            let (ca, root) = city();
            if let Ok((tls_pem, origin_pem)) =
                decide(ca, Some(root), &fixture::code(STREET), &request)
            {
                let origin =
                    Certificate::from_pem(&origin_pem).expect("an issued origin certificate reads");
                let (named, _) = fixture::trust_root()
                    .check_origin(&origin)
                    .expect("an issued origin certificate is the root's");
                assert_eq!(
                    named.as_str(),
                    request.subject,
                    "origin certificate for another node"
                );
                let der = rustls::pki_types::pem::PemObject::from_pem_slice(tls_pem.as_bytes())
                    .map(|c: CertificateDer<'static>| c)
                    .expect("an issued TLS certificate reads");
                let code = code_from_cert(&der).expect("an issued TLS certificate names a node");
                assert_eq!(
                    code.as_str(),
                    request.subject,
                    "TLS certificate for another node"
                );
            }
        }
        _ => {
            let Ok(answer) = wire::JoinResponse::decode(rest) else {
                return;
            };
            let (tls_key, _) = fixture::tls_pem(COMMUNITY);
            let _ = check_answer(
                &answer,
                &join_token(),
                &fixture::code(STREET),
                tls_key,
                fixture::origin_key_pem(COMMUNITY),
            );
        }
    }
}

/// A config file's text: parsed and validated (every field, every problem
/// collected), as `tiersync serve` and `check-config` read it.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/tiersync/tiersync.toml");
    let _ = NodeConfig::parse(text, path, &BTreeMap::new());
    let env = BTreeMap::from([
        (
            "TIERSYNC_PARENT_ADDRESS".to_owned(),
            "county.example:7400, standby.example:7400".to_owned(),
        ),
        ("TIERSYNC_STORAGE_PATH".to_owned(), "node.db".to_owned()),
    ]);
    let _ = NodeConfig::parse(text, path, &env);
}

/// The canonical kinds, sorted, that the first byte of an input picks from.
pub fn kinds() -> &'static [String] {
    static KINDS: OnceLock<Vec<String>> = OnceLock::new();
    KINDS.get_or_init(|| {
        let mut kinds = Schemas::global().canonical_kinds();
        kinds.sort();
        kinds
    })
}

/// Splits an input into a canonical kind (picked by the first byte) and the rest.
fn kind_and_rest(data: &[u8]) -> Option<(&'static str, &[u8])> {
    let (&first, rest) = data.split_first()?;
    let kinds = kinds();
    Some((kinds[usize::from(first) % kinds.len()].as_str(), rest))
}

/// A payload of a canonical kind (picked by the first byte), as a peer's
/// record carries it: the arrival check of its kind, the put's checks and
/// natural key, masking (twice masked is once masked) and a read by the
/// operator of a node that does not own it, and its JSON for the CLI.
pub fn payload(data: &[u8]) {
    let Some((kind, payload)) = kind_and_rest(data) else {
        return;
    };
    let fx = fixture::node();
    let node = &fx.node;
    let schemas = Schemas::global();
    let _ = node.check_payload(kind, payload);
    if node.check_put_payload(kind, payload).is_ok() {
        let _ = fx.runtime.block_on(node.derive(kind, payload, None));
    }
    if let Ok(masked) = schemas.mask(kind, payload) {
        let twice = schemas
            .mask(kind, &masked)
            .expect("a masked payload decodes");
        assert_eq!(
            decoded(kind, &twice),
            decoded(kind, &masked),
            "masking a masked `{kind}` changed it"
        );
    }
    let mut record = fixture::node_key_record(COMMUNITY);
    record.kind = kind.into();
    record.payload = payload.to_vec().into();
    let _ = node.reads(Reader::Operator).show(record);
    let _ = schemas.payload_to_json(kind, payload);
}

/// A payload decoded with its schema (as its JSON value), for comparing two
/// encodings of one message.
fn decoded(kind: &str, payload: &[u8]) -> serde_json::Value {
    Schemas::global()
        .payload_to_json(kind, payload)
        .expect("the payload decodes")
}

/// A payload as JSON, as `tiersync put --json-file` reads it (the first
/// byte picks the kind): encoded through the schema, then the put's checks
/// and natural key. What the schema encodes must pass the schema's own
/// check and read back through JSON as the same message.
pub fn put_json(data: &[u8]) {
    let Some((kind, json)) = kind_and_rest(data) else {
        return;
    };
    let Ok(json) = std::str::from_utf8(json) else {
        return;
    };
    let schemas = Schemas::global();
    let Ok(payload) = schemas.payload_from_json(kind, json) else {
        return;
    };
    schemas
        .validate_payload(kind, &payload)
        .expect("a payload encoded from JSON by the schema passes the schema");
    let fx = fixture::node();
    let node = &fx.node;
    if node.check_put_payload(kind, &payload).is_ok() {
        let _ = fx.runtime.block_on(node.derive(kind, &payload, None));
    }
    let text = schemas
        .payload_to_json(kind, &payload)
        .expect("a payload encoded from JSON reads as JSON")
        .to_string();
    let again = schemas
        .payload_from_json(kind, &text)
        .expect("JSON written by the schema reads back");
    assert_eq!(
        decoded(kind, &again),
        decoded(kind, &payload),
        "`{kind}` JSON does not read back as the same message"
    );
}
