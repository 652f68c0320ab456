//! What the owner derives from a payload and checks before writing it
//! (collect once, 一次采集): division codes are real, natural keys are
//! computed (a keyed digest where the source field is personal, so the raw
//! number never leaves the record's personal field), and kinds with rules
//! of their own pass them: the city's department catalogue, and grants with
//! their life cycle ([`crate::departments::grant`]). Records of those two
//! kinds travel where their rules say, whatever scope the caller asks for.
//!
//! A department's submission ([`Node::submit`]) finds the fact it names by
//! natural key first: the same resident collected twice is linked, updated
//! or amended at its owner, never copied.

use prost::Message;
use tiersync_proto::pb::{civil, service};
use tiersync_proto::types::{DivisionCode, ResidentId, Tier};
use tiersync_proto::wire;

use super::{Node, NodeError, PutInput, city_of, owner_code};
use crate::departments::grant::{self, Access};
use crate::kinds::{
    KEY_CASE_NUMBER, KEY_DEPARTMENT, KEY_HEAD_ID_DIGEST, KEY_ID_DIGEST, KIND_APPLICATION,
    KIND_DEPARTMENT, KIND_GRANT, KIND_HOUSEHOLD, KIND_RESIDENT,
};
use crate::route::Scope;
use crate::store::Stored;

/// What a payload gives its record.
#[derive(Debug, Default)]
pub(crate) struct Derived {
    /// The natural keys it carries.
    pub keys: Vec<wire::NaturalKey>,
    /// Whether another live record of the kind may not hold the same keys.
    pub unique_keys: bool,
    /// The scope its kind's rules give it, overriding the caller's.
    pub scope: Option<Scope>,
}

/// What became of a department's submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    Created,
    Updated,
    /// The same fact with the same content is held: nothing written.
    Linked,
    /// The fact is owned elsewhere: an amendment went to its owner.
    Amendment,
}

impl Node {
    /// Checks a `kind` payload about to be written by its owner and derives
    /// its keys (and, for kinds with rules of their own, its scope).
    /// `before` is the version it replaces, if any.
    pub(crate) async fn derive(
        &self,
        kind: &str,
        payload: &[u8],
        before: Option<&Stored>,
    ) -> Result<Derived, NodeError> {
        let undecodable = |e: prost::DecodeError| NodeError::Invalid {
            field: "payload",
            reason: e.to_string(),
        };
        match kind {
            KIND_RESIDENT => {
                let r = civil::v1::Resident::decode(payload).map_err(undecodable)?;
                check_address(&r.address_code)?;
                if r.id_number.is_empty() {
                    return Err(NodeError::Invalid {
                        field: "id_number",
                        reason: "a resident needs an ID number (GB 11643)".into(),
                    });
                }
                let key = self.digest_key("id_number", KEY_ID_DIGEST, &r.id_number)?;
                Ok(unique(vec![key]))
            }
            KIND_HOUSEHOLD => {
                let h = civil::v1::Household::decode(payload).map_err(undecodable)?;
                check_address(&h.address_code)?;
                let mut keys = Vec::new();
                if !h.head_id_number.is_empty() {
                    keys.push(self.digest_key(
                        "head_id_number",
                        KEY_HEAD_ID_DIGEST,
                        &h.head_id_number,
                    )?);
                }
                Ok(unique(keys))
            }
            KIND_APPLICATION => {
                let a = service::v1::Application::decode(payload).map_err(undecodable)?;
                let mut keys = Vec::new();
                if !a.case_number.is_empty() {
                    if a.case_number.len() > 64
                        || !a.case_number.chars().all(|c| c.is_ascii_graphic())
                    {
                        return Err(NodeError::Invalid {
                            field: "case_number",
                            reason: format!(
                                "`{}` is not a case number (1 to 64 printable ASCII characters)",
                                a.case_number
                            ),
                        });
                    }
                    keys.push(key(KEY_CASE_NUMBER, &a.case_number));
                }
                Ok(unique(keys))
            }
            KIND_DEPARTMENT => self.derive_department(payload, before),
            KIND_GRANT => self.derive_grant(payload, before).await,
            _ => Ok(Derived::default()),
        }
    }

    fn derive_department(
        &self,
        payload: &[u8],
        before: Option<&Stored>,
    ) -> Result<Derived, NodeError> {
        let city = city_of(&self.code);
        if self.code != city {
            return Err(NodeError::Invalid {
                field: "kind",
                reason: format!(
                    "the department catalogue is the city's: put departments at node {city}"
                ),
            });
        }
        let d = wire::Department::decode(payload).map_err(|e| NodeError::Invalid {
            field: "payload",
            reason: e.to_string(),
        })?;
        crate::departments::check_code(&d.code).map_err(|reason| NodeError::Invalid {
            field: "code",
            reason,
        })?;
        if d.name.trim().is_empty() {
            return Err(NodeError::Invalid {
                field: "name",
                reason: "a department has a name for people".into(),
            });
        }
        if let Some(before) = before
            && let Ok(old) = wire::Department::decode(&before.record.payload[..])
            && old.code != d.code
        {
            return Err(NodeError::Invalid {
                field: "code",
                reason: format!(
                    "a department's code does not change (`{}`); add a new department instead",
                    old.code
                ),
            });
        }
        Ok(Derived {
            keys: vec![key(KEY_DEPARTMENT, &d.code)],
            unique_keys: true,
            scope: Some(Scope {
                up_to: Some(Tier::City),
                down_to: vec![city],
                departments: Vec::new(),
            }),
        })
    }

    async fn derive_grant(
        &self,
        payload: &[u8],
        before: Option<&Stored>,
    ) -> Result<Derived, NodeError> {
        let g = wire::Grant::decode(payload).map_err(|e| NodeError::Invalid {
            field: "payload",
            reason: e.to_string(),
        })?;
        let before = match before {
            Some(s) => Some(wire::Grant::decode(&s.record.payload[..]).map_err(|e| {
                NodeError::Invalid {
                    field: "id",
                    reason: format!("the grant held is unreadable: {e}"),
                }
            })?),
            None => None,
        };
        grant::check_change(&self.code, before.as_ref(), &g, self.schemas)
            .map_err(|(field, reason)| NodeError::Invalid { field, reason })?;
        if self.catalogue_entry(&g.department).await?.is_none() {
            return Err(NodeError::Invalid {
                field: "department",
                reason: format!(
                    "`{}` is not in the department catalogue held here; the city adds it first",
                    g.department
                ),
            });
        }
        let area = DivisionCode::parse(&g.division_prefix).map_err(|e| NodeError::Invalid {
            field: "division_prefix",
            reason: e.to_string(),
        })?;
        Ok(Derived {
            keys: vec![key(KEY_DEPARTMENT, &g.department)],
            // A department holds many grants.
            unique_keys: false,
            // Up to the city, which sees every grant; down to the area.
            scope: Some(Scope {
                up_to: Some(Tier::City),
                down_to: vec![area],
                departments: Vec::new(),
            }),
        })
    }

    /// The stored form of a lookup by natural key. A key that is a keyed
    /// digest (`id_digest`, `head_id_digest`) takes the raw identity number
    /// and digests it here (a value that is no identity number is taken as
    /// the digest itself); `id_number` and `head_id_number` name the same
    /// keys by their source field. Any other key is looked up as given.
    pub fn lookup_key(
        &self,
        kind: &str,
        key: &str,
        value: &str,
    ) -> Result<(String, String), NodeError> {
        let (digested, raw_only) = match (kind, key) {
            (KIND_RESIDENT, KEY_ID_DIGEST) => (KEY_ID_DIGEST, false),
            (KIND_RESIDENT, "id_number") => (KEY_ID_DIGEST, true),
            (KIND_HOUSEHOLD, KEY_HEAD_ID_DIGEST) => (KEY_HEAD_ID_DIGEST, false),
            (KIND_HOUSEHOLD, "head_id_number") => (KEY_HEAD_ID_DIGEST, true),
            _ => return Ok((key.to_owned(), value.to_owned())),
        };
        if !raw_only && ResidentId::parse(value).is_err() {
            return Ok((digested.to_owned(), value.to_owned()));
        }
        let k = self.digest_key("value", digested, value)?;
        Ok((k.name, k.value))
    }

    fn digest_key(
        &self,
        field: &'static str,
        name: &str,
        number: &str,
    ) -> Result<wire::NaturalKey, NodeError> {
        let id = ResidentId::parse(number).map_err(|e| NodeError::Invalid {
            field,
            reason: e.to_string(),
        })?;
        Ok(key(name, &self.id_digest(&id)))
    }

    /// A record a department submits under `access` (which allows
    /// submitting its kind): a new record owned by this node with the
    /// department as the collecting party, unless the fact it names is
    /// already held. Found by id or natural key, a fact owned here takes
    /// the change (or is linked, if the content is the same); one owned
    /// elsewhere gets an amendment at its owner.
    pub async fn submit(
        &self,
        access: &Access,
        mut input: PutInput,
    ) -> Result<(Stored, Submitted), NodeError> {
        input.department = access.department.clone();
        if input.delete {
            return Err(NodeError::Invalid {
                field: "delete",
                reason:
                    "departments submit facts; deleting a record is its owner's operator's decision"
                        .into(),
            });
        }
        if input.id.is_empty() && self.schemas.is_canonical(&input.kind) {
            self.check_put_payload(&input.kind, &input.payload)?;
            let derived = self.derive(&input.kind, &input.payload, None).await?;
            for k in derived.keys.iter().filter(|_| derived.unique_keys) {
                let held = self.store.lookup(&input.kind, &k.name, &k.value).await?;
                if let Some(found) = held.into_iter().find(|s| !s.record.deleted) {
                    let owner = owner_code(&found.record).map_err(|reason| NodeError::Invalid {
                        field: "id",
                        reason,
                    })?;
                    if owner == self.code && same_content(&found.record, &input.payload) {
                        return Ok((found, Submitted::Linked));
                    }
                    input.id = found.record.id.clone();
                    if input.expected_version == 0 {
                        input.expected_version = found.record.version;
                    }
                    break;
                }
            }
        }
        let updating = !input.id.is_empty();
        let outcome = self.put(input).await?;
        let how = match (outcome.amendment, updating) {
            (true, _) => Submitted::Amendment,
            (false, true) => Submitted::Updated,
            (false, false) => Submitted::Created,
        };
        Ok((outcome.stored, how))
    }
}

fn key(name: &str, value: &str) -> wire::NaturalKey {
    wire::NaturalKey {
        name: name.to_owned(),
        value: value.to_owned(),
    }
}

fn unique(keys: Vec<wire::NaturalKey>) -> Derived {
    Derived {
        keys,
        unique_keys: true,
        scope: None,
    }
}

/// Whether `payload` says what the held record says.
fn same_content(held: &wire::Record, payload: &[u8]) -> bool {
    held.payload[..] == *payload
}

/// An address is a community's code (12 digits), if given.
fn check_address(address_code: &str) -> Result<(), NodeError> {
    if address_code.is_empty() {
        return Ok(());
    }
    let invalid = |reason: String| NodeError::Invalid {
        field: "address_code",
        reason,
    };
    let code = DivisionCode::parse(address_code).map_err(|e| invalid(e.to_string()))?;
    if code.tier() != Tier::Community {
        return Err(invalid(format!(
            "`{code}` is a {} code; an address is a community's 12-digit code",
            code.tier()
        )));
    }
    Ok(())
}
