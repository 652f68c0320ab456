//! Every record kind and natural-key name the daemon itself knows, in one
//! place. Canonical kinds, their personal fields and their natural-key names
//! come from the `.proto` schemas ([`tiersync_proto::types::Schemas`]); this
//! module names the ones the daemon's own rules refer to, and a test holds
//! the two together.

// === canonical kinds with rules of their own ===

pub const KIND_RESIDENT: &str = "civil.v1.Resident";
pub const KIND_HOUSEHOLD: &str = "civil.v1.Household";
pub const KIND_APPLICATION: &str = "service.v1.Application";
pub const KIND_NOTICE: &str = "gov.v1.Notice";
/// The city's catalogue of departments.
pub const KIND_DEPARTMENT: &str = "tiersync.v1.Department";
/// A department's access, owned by the node that approved it.
pub const KIND_GRANT: &str = "tiersync.v1.Grant";

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
/// A household: the keyed digest of its head's ID number.
pub const KEY_HEAD_ID_DIGEST: &str = "head_id_digest";
/// An application: its case number (办件编号).
pub const KEY_CASE_NUMBER: &str = "case_number";
/// A catalogue department, and a grant: the department's code.
pub const KEY_DEPARTMENT: &str = "department";
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
/// may use), as the schema declares them. Kinds with none, and kinds this
/// build does not know, give an empty list.
pub fn natural_keys(kind: &str) -> &'static [String] {
    tiersync_proto::types::Schemas::global().natural_keys(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key each kind's rules derive is the one its schema declares.
    #[test]
    fn the_keys_the_daemon_derives_are_the_schemas() {
        for (kind, key) in [
            (KIND_RESIDENT, KEY_ID_DIGEST),
            (KIND_HOUSEHOLD, KEY_HEAD_ID_DIGEST),
            (KIND_APPLICATION, KEY_CASE_NUMBER),
            (KIND_DEPARTMENT, KEY_DEPARTMENT),
            (KIND_GRANT, KEY_DEPARTMENT),
            (KIND_AMENDMENT, KEY_TARGET_OWNER),
            (KIND_AMENDMENT_RESULT, KEY_AMENDMENT_ID),
            (KIND_JOIN_TOKEN, KEY_TOKEN_DIGEST),
            (KIND_CERT_REQUEST, KEY_ISSUER),
            (KIND_CERT_ISSUED, KEY_REQUEST_ID),
            (KIND_NODE_KEY, KEY_NODE),
            (KIND_TRUST_LIST, KEY_TRUST_LIST),
        ] {
            assert_eq!(natural_keys(kind), [key], "{kind}");
        }
        assert!(natural_keys(KIND_NOTICE).is_empty());
    }
}
