//! The adapter API's inputs: what a department system sends, decoded as the
//! service decodes it, then what the service decides before it reads.

use prost::Message;
use tiersync_proto::pb::civil;
use tiersync_proto::pb::tiersync::adapter::v1 as adapter;
use tiersync_proto::types::RecordId;
use tiersync_proto::wire::{self, GrantState};

use super::fixture;
use crate::departments::grant::{self, Access, HeldGrant, Want};
use crate::departments::subscribe::check_name;
use crate::kinds::{KIND_HOUSEHOLD, KIND_RESIDENT};
use crate::node::{Node, Reader};

/// The department the requests come from.
pub const DEPARTMENT: &str = "civil-affairs";
/// The matter code of the grant in effect.
pub const MATTER: &str = "511102-MZ-0001";
/// The moment the grants are judged at.
const NOW: i64 = 1_796_000_000_000;

/// The department's grants: one in effect for residents in the street's
/// area (ID number in clear, submitting allowed), one withdrawn for
/// households.
fn grants() -> Vec<HeldGrant> {
    let approved = wire::Grant {
        department: DEPARTMENT.into(),
        kinds: vec![KIND_RESIDENT.into()],
        clear_fields: vec!["civil.v1.Resident.id_number".into()],
        division_prefix: "511102004".into(),
        matter_code: MATTER.into(),
        legal_basis: "社会救助暂行办法".into(),
        valid_from_ms: NOW - 1,
        valid_until_ms: NOW + 1,
        state: GrantState::Approved as i32,
        approved_by: "fuzz".into(),
        may_submit: true,
        ..Default::default()
    };
    let withdrawn = wire::Grant {
        kinds: vec![KIND_HOUSEHOLD.into()],
        state: GrantState::Withdrawn as i32,
        withdrawn_reason: "fuzz".into(),
        ..approved.clone()
    };
    [approved, withdrawn]
        .into_iter()
        .enumerate()
        .map(|(n, grant)| HeldGrant {
            id: vec![n as u8 + 1; 16],
            owner: "511102".into(),
            grant,
        })
        .collect()
}

/// An adapter API request (the first byte picks the call: subscribe,
/// lookup, submit, acknowledge, get): decoded, then the subscription
/// name, the area, which grant allows what it asks, the stored form of a
/// lookup's key, a submitted payload's checks and natural keys, and how a
/// resident is shown under the access it gets. Asserts that an access
/// never covers a kind it was not asked for or a field in clear the grant
/// does not name.
pub fn adapter_request(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let fx = fixture::node();
    let node = &fx.node;
    let grants = grants();
    let decide = |kinds: &[String], purpose: Option<&adapter::Purpose>, area: &str, submit| {
        let purpose = purpose.cloned().unwrap_or_default();
        let area = Node::parse_area("division_prefix", area).ok()?;
        let want = Want {
            kinds,
            clear_fields: &purpose.clear_fields,
            area: area.as_ref(),
            matter_code: &purpose.matter_code,
            submit,
        };
        let access = grant::decide(node.code(), DEPARTMENT, &grants, &want, NOW).ok()?;
        assert!(
            kinds.iter().all(|k| access.kinds.contains(k)),
            "an access for {kinds:?} covers only {:?}",
            access.kinds
        );
        assert!(
            access
                .clear
                .iter()
                .all(|f| grants[0].grant.clear_fields.contains(f)),
            "fields in clear the grant does not name: {:?}",
            access.clear
        );
        Some(access)
    };
    match first % 5 {
        0 => {
            let Ok(r) = adapter::SubscribeRequest::decode(rest) else {
                return;
            };
            let _ = check_name(&r.subscription);
            if let Some(access) = decide(&r.kinds, r.purpose.as_ref(), &r.division_prefix, false) {
                show_resident(node, access);
            }
        }
        1 => {
            let Ok(r) = adapter::LookupRequest::decode(rest) else {
                return;
            };
            let _ = node.lookup_key(&r.kind, &r.key, &r.value);
            if let Some(access) = decide(&[r.kind], r.purpose.as_ref(), "", false) {
                show_resident(node, access);
            }
        }
        2 => {
            let Ok(r) = adapter::SubmitRequest::decode(rest) else {
                return;
            };
            if decide(std::slice::from_ref(&r.kind), r.purpose.as_ref(), "", true).is_some()
                && node.check_put_payload(&r.kind, &r.payload).is_ok()
            {
                let _ = fx.runtime.block_on(node.derive(&r.kind, &r.payload, None));
            }
        }
        3 => {
            if let Ok(r) = adapter::AcknowledgeRequest::decode(rest) {
                let _ = check_name(&r.subscription);
            }
        }
        _ => {
            let Ok(r) = adapter::GetRequest::decode(rest) else {
                return;
            };
            let _ = RecordId::from_bytes(&r.id);
            let _ = decide(&[KIND_RESIDENT.into()], r.purpose.as_ref(), "", false);
        }
    }
}

/// A resident of the area as `access` shows it: masked but for the fields
/// in clear, without the owner's proof.
fn show_resident(node: &Node, access: Access) {
    let resident = civil::v1::Resident {
        name: "张三丰".into(),
        id_number: "11010519491231002X".into(),
        address_code: "511102004001".into(),
        phone: "13800138000".into(),
        ..Default::default()
    };
    let clear_id = access.clear.contains("civil.v1.Resident.id_number");
    let record = wire::Record {
        kind: KIND_RESIDENT.into(),
        owner: Some(wire::Owner {
            node: "511102004001".into(),
            department: String::new(),
        }),
        payload: resident.encode_to_vec().into(),
        proof: vec![1; 8].into(),
        ..Default::default()
    };
    let shown = node.reads(Reader::Department(access)).show(record);
    assert!(
        shown.proof.is_empty(),
        "a department is shown the owner's proof"
    );
    let seen = civil::v1::Resident::decode(&shown.payload[..]).expect("a masked resident decodes");
    assert_ne!(seen.name, resident.name, "the name is shown in clear");
    assert_eq!(seen.id_number == resident.id_number, clear_id);
}
