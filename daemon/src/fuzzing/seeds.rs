//! Seed inputs for every target, made from real encoded values: records the
//! fixture nodes sign, frames of a session, proofs, certificates, trust
//! lists the fixture root signs, join material, the shipped configs and
//! payloads of every canonical kind. `examples/fuzz_seeds.rs` writes them
//! to `fuzz/corpus/<target>/`, where they are committed; the signatures
//! are randomised, so running it again makes new files.

use prost::Message;
use tiersync_proto::pb::{civil, gov, service};
use tiersync_proto::types::{RecordId, Schemas, Tier};
use tiersync_proto::wire::{self, link_frame::Body};

use super::fixture::{self, CITY, CODES, COMMUNITY, COUNTY, STREET};
use super::inputs::{join_token, kinds};
use super::trust::{PROOF_LEAVES, proof_signer};
use crate::kinds::*;

/// One seed: its target, a file name, the bytes.
#[derive(Debug, Clone)]
pub struct Seed {
    pub target: &'static str,
    pub name: String,
    pub bytes: Vec<u8>,
}

fn seed(target: &'static str, name: impl Into<String>, bytes: Vec<u8>) -> Seed {
    Seed {
        target,
        name: name.into(),
        bytes,
    }
}

fn scope(up_to: Tier, down_to: &[&str]) -> wire::Scope {
    wire::Scope {
        up_to: up_to.to_wire() as i32,
        down_to: down_to.iter().map(|s| (*s).to_owned()).collect(),
        departments: vec![],
    }
}

/// An unsigned record of `kind` owned by `owner`.
fn record(owner: &str, kind: &str, payload: Vec<u8>, scope: wire::Scope) -> wire::Record {
    wire::Record {
        id: RecordId::new().as_bytes().to_vec(),
        kind: kind.into(),
        owner: Some(wire::Owner {
            node: owner.into(),
            department: String::new(),
        }),
        version: 1,
        updated_at: tiersync_proto::types::HlcTimestamp::new(1_767_225_600_000, 0).as_u64(),
        scope: Some(scope.clone()),
        reach: Some(scope),
        payload: payload.into(),
        ..Default::default()
    }
}

fn resident() -> civil::v1::Resident {
    civil::v1::Resident {
        name: "张三丰".into(),
        id_number: "11010519491231002X".into(),
        household_id: RecordId::new().as_bytes().to_vec(),
        address_code: COMMUNITY.into(),
        address: "乐山市市中区张公桥街道1号".into(),
        categories: vec![civil::v1::Category::Elderly as i32],
        phone: "13800000000".into(),
        notes: "fuzz seed".into(),
    }
}

/// A sample payload of every canonical kind.
fn payloads() -> Vec<(&'static str, Vec<u8>)> {
    let resident = resident();
    vec![
        (KIND_RESIDENT, resident.encode_to_vec()),
        (
            KIND_HOUSEHOLD,
            civil::v1::Household {
                head_name: "李四".into(),
                address_code: COMMUNITY.into(),
                address: "乐山市".into(),
                members: 3,
                head_id_number: "11010519491231002X".into(),
            }
            .encode_to_vec(),
        ),
        (
            KIND_APPLICATION,
            service::v1::Application {
                service: "低保申请".into(),
                applicant_id: RecordId::new().as_bytes().to_vec(),
                applicant_name: "王五".into(),
                status: service::v1::Status::Submitted as i32,
                submitted_at_ms: 1_767_225_600_000,
                details: "fuzz seed".into(),
                case_number: "SC-2026-000123".into(),
            }
            .encode_to_vec(),
        ),
        (
            KIND_NOTICE,
            gov::v1::Notice {
                title: "停水通知".into(),
                body: "明日停水".into(),
                published_at_ms: 1_767_225_600_000,
                expires_at_ms: 1_767_312_000_000,
            }
            .encode_to_vec(),
        ),
        (
            KIND_AMENDMENT,
            wire::Amendment {
                target_id: RecordId::new().as_bytes().to_vec(),
                target_kind: KIND_RESIDENT.into(),
                target_owner: COMMUNITY.into(),
                base_version: 1,
                payload: resident.encode_to_vec(),
                delete: false,
                reason: "address moved".into(),
            }
            .encode_to_vec(),
        ),
        (
            KIND_AMENDMENT_RESULT,
            wire::AmendmentResult {
                amendment_id: RecordId::new().as_bytes().to_vec(),
                target_id: RecordId::new().as_bytes().to_vec(),
                accepted: false,
                new_version: 0,
                reason: "stale".into(),
            }
            .encode_to_vec(),
        ),
        (KIND_CERT_REQUEST, certificate_request().encode_to_vec()),
    ]
}

fn certificate_request() -> wire::CertificateRequest {
    let child = fixture::code(COMMUNITY);
    let (csr_pem, _key) = crate::identity::pki::certificate_request(&child).expect("a CSR");
    wire::CertificateRequest {
        subject: COMMUNITY.into(),
        csr_pem,
        origin_public_key_pem: tiersync_trust::SigningKey::generate()
            .verifying_key()
            .to_public_key_pem(),
    }
}

/// The city's trust lists: the first (revoking a node outside the fixture's
/// links), one announcing a successor root, and one the successor signs
/// with the chain that leads to it.
fn trust_lists() -> Vec<wire::TrustList> {
    let issuer = fixture::root_issuer();
    let now = 1_767_225_600_000;
    let body = |sequence: u64, successor_root: Vec<u8>| wire::TrustListBody {
        sequence,
        issued_at_ms: now,
        next_update_ms: now + 86_400_000,
        revocations: vec![wire::Revocation {
            node: "511102004002".into(),
            reason: "key lost".into(),
            effective_at_ms: now,
            revoked_at_ms: now,
        }],
        successor_root,
    };
    let (successor, _key) = issuer.successor(&fixture::code(CITY)).expect("a successor");
    vec![
        issuer.sign_trust_list(&body(1, Vec::new())),
        issuer.sign_trust_list(&body(2, successor.cert_der().to_vec())),
        successor.sign_trust_list(&body(3, Vec::new())),
    ]
}

/// Records each fixture node signs, as they travel: the community's
/// resident, household, application, amendment, tombstone and key; the
/// county's notice down to the street; the city's trust list.
fn signed_records() -> Vec<(String, wire::Record)> {
    let mut out = Vec::new();
    let up = scope(Tier::City, &[]);
    let mut community: Vec<wire::Record> = payloads()
        .into_iter()
        .filter(|(kind, _)| *kind != KIND_NOTICE && *kind != KIND_CERT_REQUEST)
        .map(|(kind, payload)| record(COMMUNITY, kind, payload, up.clone()))
        .collect();
    let mut tombstone = record(COMMUNITY, KIND_RESIDENT, Vec::new(), up.clone());
    tombstone.deleted = true;
    tombstone.version = 2;
    community.push(tombstone);
    community.push(fixture::node_key_record(COMMUNITY));
    fixture::identity(COMMUNITY)
        .sign(&mut community)
        .expect("signed");
    for (i, r) in community.into_iter().enumerate() {
        out.push((format!("community-{i}-{}", r.kind), r));
    }
    let mut county = vec![
        record(
            COUNTY,
            KIND_NOTICE,
            payloads()[3].1.clone(),
            scope(Tier::County, &[STREET]),
        ),
        fixture::node_key_record(COUNTY),
    ];
    fixture::identity(COUNTY).sign(&mut county).expect("signed");
    // A record whose scope narrowed: the street gets its withdrawal.
    let mut narrowed = record(
        COUNTY,
        KIND_NOTICE,
        payloads()[3].1.clone(),
        scope(Tier::County, &["511102005"]),
    );
    narrowed.reach = Some(scope(Tier::County, &[STREET, "511102005"]));
    let mut narrowed = vec![narrowed];
    fixture::identity(COUNTY)
        .sign(&mut narrowed)
        .expect("signed");
    county.push(crate::identity::origin::withdrawal_of(narrowed.remove(0)));
    for (i, r) in county.into_iter().enumerate() {
        out.push((format!("county-{i}-{}", r.kind), r));
    }
    let mut city: Vec<wire::Record> = trust_lists()
        .into_iter()
        .map(|list| {
            record(
                CITY,
                KIND_TRUST_LIST,
                list.encode_to_vec(),
                fixture::everywhere(),
            )
        })
        .collect();
    fixture::identity(CITY).sign(&mut city).expect("signed");
    for (i, r) in city.into_iter().enumerate() {
        out.push((format!("city-trust-list-{i}"), r));
    }
    out
}

fn frame(body: Body) -> Vec<u8> {
    wire::LinkFrame { body: Some(body) }.encode_length_delimited_to_vec()
}

fn hello(node: &str) -> Body {
    Body::Hello(wire::Hello {
        protocol: crate::sync::PROTOCOL,
        node: node.into(),
        applied_through: 0,
        epoch: "fuzz-peer-epoch".into(),
        applied_epoch: String::new(),
    })
}

fn batch(through_seq: u64, records: &[&wire::Record]) -> Body {
    Body::Batch(wire::Batch {
        through_seq,
        records: records.iter().map(|r| r.encode_to_vec().into()).collect(),
        head_seq: through_seq + 1,
        sent_at_ms: 1_767_225_600_000,
    })
}

/// Every target's seeds.
pub fn seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    let records = signed_records();
    for (name, r) in &records {
        out.push(seed("record", name.clone(), r.encode_to_vec()));
    }

    // Sessions: the community's records up to the street, the county's down.
    let from = |prefix: &str| -> Vec<&wire::Record> {
        records
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, r)| r)
            .collect()
    };
    let community = from("community-");
    let mut child = vec![0u8];
    child.extend(frame(hello(COMMUNITY)));
    child.extend(frame(batch(3, &community[..3])));
    child.extend(frame(Body::Heartbeat(wire::Heartbeat {
        head_seq: 9,
        sent_at_ms: 1,
    })));
    child.extend(frame(batch(9, &community[3..])));
    child.extend(frame(Body::Ack(wire::Ack {
        through_seq: 0,
        ..Default::default()
    })));
    out.push(seed("link_session", "child-session", child));
    let mut down: Vec<&wire::Record> = from("county-");
    down.extend(from("city-"));
    let mut parent = vec![1u8];
    parent.extend(frame(hello(COUNTY)));
    parent.extend(frame(batch(5, &down)));
    out.push(seed("link_session", "parent-session", parent));
    let mut second_hello = vec![0u8];
    second_hello.extend(frame(hello(COMMUNITY)));
    second_hello.extend(frame(hello(COMMUNITY)));
    out.push(seed("link_session", "second-hello", second_hello));

    // Proofs of the fixture leaves.
    let batch = proof_signer().sign(PROOF_LEAVES).expect("signed");
    for (i, proof) in batch.proofs().enumerate() {
        out.push(seed(
            "proof",
            format!("leaf-{i}"),
            proof.to_bytes().expect("encodes"),
        ));
    }
    out.push(seed("proof", "record-proof", records[0].1.proof.to_vec()));

    // Certificates: origin certificates (DER and PEM), the root, TLS ones.
    for code in CODES {
        let origin = tiersync_trust::cert::Certificate::from_pem(fixture::origin_cert_pem(code))
            .expect("fixture certificate");
        out.push(seed(
            "certificate",
            format!("origin-{code}.der"),
            origin.to_der().to_vec(),
        ));
        let (_, tls) = fixture::tls_pem(code);
        out.push(seed(
            "certificate",
            format!("tls-{code}.pem"),
            tls.as_bytes().to_vec(),
        ));
        let der: rustls::pki_types::CertificateDer<'static> =
            rustls::pki_types::pem::PemObject::from_pem_slice(tls.as_bytes()).expect("fixture TLS");
        out.push(seed("certificate", format!("tls-{code}.der"), der.to_vec()));
    }
    out.push(seed(
        "certificate",
        "origin-community.pem",
        fixture::origin_cert_pem(COMMUNITY).as_bytes().to_vec(),
    ));
    out.push(seed(
        "certificate",
        "trust-root.pem",
        fixture::TRUST_ROOT_PEM.as_bytes().to_vec(),
    ));

    // NodeKey payloads, by owner index.
    for (i, code) in CODES.iter().enumerate() {
        let mut bytes = vec![i as u8];
        bytes.extend(fixture::node_key_record(code).payload.to_vec());
        out.push(seed("node_key", format!("node-key-{code}"), bytes));
    }
    let two = wire::NodeKey {
        certificates: vec![
            fixture::identity(COMMUNITY).cert_der().to_vec(),
            fixture::identity(STREET).cert_der().to_vec(),
        ],
    };
    let mut mixed = vec![3u8];
    mixed.extend(two.encode_to_vec());
    out.push(seed("node_key", "node-key-two-owners", mixed));

    for (i, list) in trust_lists().iter().enumerate() {
        out.push(seed(
            "trust_list",
            format!("trust-list-{i}"),
            list.encode_to_vec(),
        ));
    }

    // Join: a token, a certificate request, the parent's answer.
    let mut token = vec![0u8];
    token.extend(join_token().to_string().into_bytes());
    out.push(seed("join", "token", token));
    let mut request = vec![1u8];
    request.extend(certificate_request().encode_to_vec());
    out.push(seed("join", "certificate-request", request));
    let (_, tls_cert) = fixture::tls_pem(COMMUNITY);
    let answer = wire::JoinResponse {
        cert_pem: tls_cert.into(),
        ca_pem: fixture::CA_PEM.into(),
        deployment_key: fixture::DEPLOYMENT_KEY.trim().into(),
        parent: STREET.into(),
        origin_cert_pem: fixture::origin_cert_pem(COMMUNITY).into(),
        trust_root_pem: fixture::TRUST_ROOT_PEM.into(),
        trust_chain: Some(wire::RootChain { links: vec![] }),
    };
    let mut answer_bytes = vec![2u8];
    answer_bytes.extend(answer.encode_to_vec());
    out.push(seed("join", "join-response", answer_bytes));

    // Configs: the shipped ones.
    for (tier, text) in [
        ("city", include_str!("../../../config/city.toml")),
        ("county", include_str!("../../../config/county.toml")),
        ("street", include_str!("../../../config/street.toml")),
        ("community", include_str!("../../../config/community.toml")),
    ] {
        out.push(seed(
            "config",
            format!("{tier}.toml"),
            text.as_bytes().to_vec(),
        ));
    }

    // Payloads and their JSON, each kind picked by its index.
    let schemas = Schemas::global();
    for (kind, payload) in payloads() {
        let index = kinds()
            .iter()
            .position(|k| k == kind)
            .expect("a canonical kind") as u8;
        let mut bytes = vec![index];
        bytes.extend(&payload);
        out.push(seed("payload", kind, bytes));
        let json = schemas
            .payload_to_json(kind, &payload)
            .expect("a seed payload reads as JSON");
        let mut bytes = vec![index];
        bytes.extend(
            serde_json::to_string_pretty(&json)
                .expect("JSON")
                .into_bytes(),
        );
        out.push(seed("put_json", format!("{kind}.json"), bytes));
    }
    out.extend(adapter_seeds());
    out
}

/// Adapter API requests of the department the `adapter_request` target's
/// grants are for: each call once, within its grant and outside it.
fn adapter_seeds() -> Vec<Seed> {
    use tiersync_proto::pb::tiersync::adapter::v1 as adapter;

    use super::adapter::MATTER;
    let purpose = |clear: &[&str]| {
        Some(adapter::Purpose {
            matter_code: MATTER.into(),
            clear_fields: clear.iter().map(|f| f.to_string()).collect(),
        })
    };
    let call = |n: u8, message: Vec<u8>| {
        let mut bytes = vec![n];
        bytes.extend(message);
        bytes
    };
    vec![
        seed(
            "adapter_request",
            "subscribe",
            call(
                0,
                adapter::SubscribeRequest {
                    subscription: "dibao".into(),
                    kinds: vec![KIND_RESIDENT.into()],
                    purpose: purpose(&["civil.v1.Resident.id_number"]),
                    division_prefix: COMMUNITY.into(),
                    page_size: 500,
                }
                .encode_to_vec(),
            ),
        ),
        seed(
            "adapter_request",
            "lookup",
            call(
                1,
                adapter::LookupRequest {
                    kind: KIND_RESIDENT.into(),
                    key: "id_digest".into(),
                    value: "11010519491231002X".into(),
                    purpose: purpose(&[]),
                }
                .encode_to_vec(),
            ),
        ),
        seed(
            "adapter_request",
            "lookup-household-refused",
            call(
                1,
                adapter::LookupRequest {
                    kind: KIND_HOUSEHOLD.into(),
                    key: "head_id_digest".into(),
                    value: "11010519491231002X".into(),
                    purpose: purpose(&[]),
                }
                .encode_to_vec(),
            ),
        ),
        seed(
            "adapter_request",
            "submit",
            call(
                2,
                adapter::SubmitRequest {
                    kind: KIND_RESIDENT.into(),
                    payload: resident().encode_to_vec(),
                    purpose: purpose(&[]),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
        ),
        seed(
            "adapter_request",
            "acknowledge",
            call(
                3,
                adapter::AcknowledgeRequest {
                    subscription: "dibao".into(),
                    through_seq: 42,
                }
                .encode_to_vec(),
            ),
        ),
        seed(
            "adapter_request",
            "get",
            call(
                4,
                adapter::GetRequest {
                    id: RecordId::new().as_bytes().to_vec(),
                    purpose: purpose(&[]),
                }
                .encode_to_vec(),
            ),
        ),
    ]
}
