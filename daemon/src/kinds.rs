//! Every record kind and natural-key name the daemon itself knows, in one
//! place. Canonical kinds and their personal fields come from the `.proto`
//! schemas ([`tiersync_proto::types::Schemas`]); this module names the ones
//! the daemon's own rules refer to.

// === canonical kinds with rules of their own ===

pub const KIND_RESIDENT: &str = "civil.v1.Resident";
pub const KIND_HOUSEHOLD: &str = "civil.v1.Household";
pub const KIND_APPLICATION: &str = "service.v1.Application";
pub const KIND_NOTICE: &str = "gov.v1.Notice";

// === kinds the node itself writes ===

/// A change asked of a record's owner by another node.
pub const KIND_AMENDMENT: &str = "tiersync.v1.Amendment";
/// The owner's answer to an amendment.
pub const KIND_AMENDMENT_RESULT: &str = "tiersync.v1.AmendmentResult";
/// A single-use join token a parent issued for one child code.
pub const KIND_JOIN_TOKEN: &str = "tiersync.v1.JoinToken";
/// A joining child's certificate request, routed to the city.
pub const KIND_CERT_REQUEST: &str = "tiersync.v1.CertificateRequest";
/// The city's answer to a certificate request.
pub const KIND_CERT_ISSUED: &str = "tiersync.v1.CertificateIssued";
/// A node's origin certificates, published to the whole deployment.
pub const KIND_NODE_KEY: &str = "tiersync.v1.NodeKey";
/// The city's signed trust list.
pub const KIND_TRUST_LIST: &str = "tiersync.v1.TrustList";

/// Kinds the node itself writes: relayed and checked like any canonical
/// kind, but never accepted from the local API's `put`.
pub const INTERNAL_KINDS: &[&str] = &[
    KIND_AMENDMENT,
    KIND_AMENDMENT_RESULT,
    KIND_JOIN_TOKEN,
    KIND_CERT_REQUEST,
    KIND_CERT_ISSUED,
    KIND_NODE_KEY,
    KIND_TRUST_LIST,
];

// === natural-key names ===

/// A resident: the keyed digest of the ID number.
pub const KEY_ID_DIGEST: &str = "id_digest";
/// An amendment: the node that owns its target.
pub const KEY_TARGET_OWNER: &str = "target_owner";
/// An amendment result: the amendment it answers.
pub const KEY_AMENDMENT_ID: &str = "amendment_id";
/// A join token: the digest of its secret.
pub const KEY_TOKEN_DIGEST: &str = "token_digest";
/// A certificate request: the node that asks the city.
pub const KEY_ISSUER: &str = "issuer";
/// A certificate answer: the request it answers.
pub const KEY_REQUEST_ID: &str = "request_id";
/// A `NodeKey`: the node whose keys it lists.
pub const KEY_NODE: &str = "node";
/// A trust list: the city that signs it.
pub const KEY_TRUST_LIST: &str = "trust_list";

/// The natural keys records of `kind` carry, by name (the names a lookup
/// may use). Canonical kinds not listed have none.
pub fn natural_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        KIND_RESIDENT => &[KEY_ID_DIGEST],
        KIND_AMENDMENT => &[KEY_TARGET_OWNER],
        KIND_AMENDMENT_RESULT => &[KEY_AMENDMENT_ID],
        KIND_JOIN_TOKEN => &[KEY_TOKEN_DIGEST],
        KIND_CERT_REQUEST => &[KEY_ISSUER],
        KIND_CERT_ISSUED => &[KEY_REQUEST_ID],
        KIND_NODE_KEY => &[KEY_NODE],
        KIND_TRUST_LIST => &[KEY_TRUST_LIST],
        _ => &[],
    }
}
