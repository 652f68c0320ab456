//! Grants: the rule that decides what a department may read, and the checks
//! a grant's owner makes before writing one. Pure functions over grant
//! records and the clock; the node looks the records up and calls them.
//!
//! A grant is in effect when it is approved, its validity window holds the
//! node's clock, and its area lies inside its approving node's subtree (a
//! community cannot grant a county). Expiry needs no record to travel: every
//! node reads the same `valid_until_ms` against its own clock.

use std::collections::{BTreeSet, HashSet};
use std::fmt;

use tiersync_proto::types::{DivisionCode, Schemas};
use tiersync_proto::wire::{self, GrantState};

use super::check_code;
use crate::kinds::{INTERNAL_KINDS, KIND_DEPARTMENT, KIND_GRANT};
use crate::store::id_text;

/// A grant record as held at a node.
#[derive(Debug, Clone)]
pub struct HeldGrant {
    /// The grant record's id.
    pub id: Vec<u8>,
    /// The approving node (the record's owner).
    pub owner: String,
    pub grant: wire::Grant,
}

impl HeldGrant {
    /// The grant's id as errors and the audit log name it.
    pub fn name(&self) -> String {
        id_text(&self.id)
    }

    /// Where the grant stands at `now_ms`.
    pub fn status(&self, now_ms: i64) -> GrantStatus {
        let g = &self.grant;
        if !g.division_prefix.starts_with(self.owner.as_str()) {
            return GrantStatus::Void(format!(
                "its area `{}` lies outside its approving node `{}`",
                g.division_prefix, self.owner
            ));
        }
        match g.state() {
            GrantState::Unspecified => GrantStatus::Void("it has no state".into()),
            GrantState::Requested => GrantStatus::Requested,
            GrantState::Withdrawn => GrantStatus::Withdrawn(g.withdrawn_reason.clone()),
            GrantState::Approved if now_ms < g.valid_from_ms => {
                GrantStatus::NotYet(g.valid_from_ms)
            }
            GrantState::Approved if now_ms >= g.valid_until_ms => {
                GrantStatus::Expired(g.valid_until_ms)
            }
            GrantState::Approved => GrantStatus::InEffect,
        }
    }
}

/// Where a grant stands at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantStatus {
    /// Applied for, not approved: grants nothing yet.
    Requested,
    /// Approved and within its validity window.
    InEffect,
    /// Approved, but its window starts later (ms since the epoch).
    NotYet(i64),
    /// Approved, but its window ended (ms since the epoch).
    Expired(i64),
    /// Withdrawn by its owner, with the reason.
    Withdrawn(String),
    /// Not a grant any node honours, and why.
    Void(String),
}

impl fmt::Display for GrantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantStatus::Requested => write!(f, "requested, not approved"),
            GrantStatus::InEffect => write!(f, "in effect"),
            GrantStatus::NotYet(at) => write!(f, "not in effect until {}", crate::clock::utc(*at)),
            GrantStatus::Expired(at) => write!(f, "expired at {}", crate::clock::utc(*at)),
            GrantStatus::Withdrawn(reason) if reason.is_empty() => write!(f, "withdrawn"),
            GrantStatus::Withdrawn(reason) => write!(f, "withdrawn ({reason})"),
            GrantStatus::Void(why) => write!(f, "void: {why}"),
        }
    }
}

impl GrantStatus {
    /// The one-word state for tables: requested, approved, expired,
    /// withdrawn, void (`approved` covers not yet in effect).
    pub fn word(&self) -> &'static str {
        match self {
            GrantStatus::Requested => "requested",
            GrantStatus::InEffect | GrantStatus::NotYet(_) => "approved",
            GrantStatus::Expired(_) => "expired",
            GrantStatus::Withdrawn(_) => "withdrawn",
            GrantStatus::Void(_) => "void",
        }
    }
}

/// What a department asks to do.
#[derive(Debug, Clone, Copy)]
pub struct Want<'a> {
    /// Kinds it reads (or submits).
    pub kinds: &'a [String],
    /// Personal fields it asks for in clear (`<kind>.<field>`); empty: what
    /// the grant allows.
    pub clear_fields: &'a [String],
    /// The area it asks for; `None`: the grant's whole area.
    pub area: Option<&'a DivisionCode>,
    /// The purpose: a matter code.
    pub matter_code: &'a str,
    /// Whether it submits records rather than reads them.
    pub submit: bool,
}

/// What one grant lets a department do in one call: the read path filters,
/// masks and audits by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub department: String,
    /// The grant allowing it, by id.
    pub grant_id: Vec<u8>,
    pub matter_code: String,
    /// Kinds it may read.
    pub kinds: BTreeSet<String>,
    /// Personal fields shown in clear (`<kind>.<field>`).
    pub clear: HashSet<String>,
    /// Only records owned inside this subtree.
    pub area: String,
}

impl Access {
    /// What the audit log records of each read made under this access.
    pub fn audit_detail(&self) -> String {
        format!(
            "grant {} matter {}",
            id_text(&self.grant_id),
            self.matter_code
        )
    }

    /// Whether a record with this kind, owner and department scope may be
    /// shown under this access.
    pub fn admits(&self, record: &wire::Record) -> bool {
        let in_area = record
            .owner
            .as_ref()
            .is_some_and(|o| o.node.starts_with(self.area.as_str()));
        let for_department = record
            .scope
            .as_ref()
            .is_none_or(|s| s.departments.is_empty() || s.departments.contains(&self.department));
        in_area && for_department && self.kinds.contains(&record.kind)
    }
}

/// Finds the grant that allows `want`, among `grants` (the department's
/// grants held at `node`), or says why none does, naming the grant and what
/// it lacks.
pub fn decide(
    node: &DivisionCode,
    department: &str,
    grants: &[HeldGrant],
    want: &Want<'_>,
    now_ms: i64,
) -> Result<Access, String> {
    if want.matter_code.is_empty() {
        return Err(
            "every call names its purpose: set purpose.matter_code to the matter code of one of your grants"
                .into(),
        );
    }
    let mine: Vec<&HeldGrant> = grants
        .iter()
        .filter(|g| g.grant.department == department)
        .collect();
    if mine.is_empty() {
        return Err(format!(
            "department `{department}` holds no grant at node {node}; ask the approving node for one (`tiersync grant request`)"
        ));
    }
    let (in_effect, idle): (Vec<&HeldGrant>, Vec<&HeldGrant>) = mine
        .into_iter()
        .partition(|g| g.status(now_ms) == GrantStatus::InEffect);
    if in_effect.is_empty() {
        let states: Vec<String> = idle
            .iter()
            .map(|g| {
                format!(
                    "grant {} (matter {}) is {}",
                    g.name(),
                    g.grant.matter_code,
                    g.status(now_ms)
                )
            })
            .collect();
        return Err(format!(
            "department `{department}` holds no grant in effect at node {node}: {}",
            states.join("; ")
        ));
    }
    let for_matter: Vec<&HeldGrant> = in_effect
        .iter()
        .copied()
        .filter(|g| g.grant.matter_code == want.matter_code)
        .collect();
    if for_matter.is_empty() {
        let matters: Vec<String> = in_effect
            .iter()
            .map(|g| format!("{} (grant {})", g.grant.matter_code, g.name()))
            .collect();
        return Err(format!(
            "no grant of department `{department}` in effect at node {node} is for matter `{}`; its grants are for: {}",
            want.matter_code,
            matters.join(", ")
        ));
    }
    let mut first_lacks = None;
    for g in &for_matter {
        let lacks = lacks(g, want);
        if lacks.is_empty() {
            let clear = if want.clear_fields.is_empty() {
                g.grant.clear_fields.iter().cloned().collect()
            } else {
                want.clear_fields.iter().cloned().collect()
            };
            return Ok(Access {
                department: department.to_owned(),
                grant_id: g.id.clone(),
                matter_code: g.grant.matter_code.clone(),
                kinds: g.grant.kinds.iter().cloned().collect(),
                clear,
                area: want
                    .area
                    .map_or_else(|| g.grant.division_prefix.clone(), |a| a.to_string()),
            });
        }
        first_lacks.get_or_insert((g, lacks));
    }
    let (g, lacks) = first_lacks.expect("at least one grant for the matter");
    Err(format!(
        "grant {} (department `{department}`, matter `{}`) does not allow {}",
        g.name(),
        g.grant.matter_code,
        lacks.join("; nor ")
    ))
}

/// What `g` lacks for `want`, in words; empty if nothing.
fn lacks(g: &HeldGrant, want: &Want<'_>) -> Vec<String> {
    let grant = &g.grant;
    let mut lacks = Vec::new();
    let listed = |items: &[String]| {
        if items.is_empty() {
            "none".to_owned()
        } else {
            items
                .iter()
                .map(|i| format!("`{i}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    for kind in want.kinds {
        if !grant.kinds.contains(kind) {
            lacks.push(format!(
                "kind `{kind}` (it covers {})",
                listed(&grant.kinds)
            ));
        }
    }
    for field in want.clear_fields {
        if !grant.clear_fields.contains(field) {
            lacks.push(format!(
                "field `{field}` in clear (it names {})",
                listed(&grant.clear_fields)
            ));
        }
    }
    if let Some(area) = want.area
        && !area.as_str().starts_with(grant.division_prefix.as_str())
    {
        lacks.push(format!(
            "area `{area}` (it covers `{}`)",
            grant.division_prefix
        ));
    }
    if want.submit && !grant.may_submit {
        lacks.push("submitting records (it allows reading only)".into());
    }
    lacks
}

/// Checks a grant its owner `node` is about to write, against the version it
/// replaces (`before`, if any). Returns the field at fault and why.
pub fn check_change(
    node: &DivisionCode,
    before: Option<&wire::Grant>,
    grant: &wire::Grant,
    schemas: &Schemas,
) -> Result<(), (&'static str, String)> {
    check_code(&grant.department).map_err(|e| ("department", e))?;
    if grant.kinds.is_empty() {
        return Err(("kinds", "a grant names at least one record kind".into()));
    }
    for kind in &grant.kinds {
        if !schemas.is_canonical(kind)
            || INTERNAL_KINDS.contains(&kind.as_str())
            || [KIND_DEPARTMENT, KIND_GRANT].contains(&kind.as_str())
        {
            return Err((
                "kinds",
                format!("`{kind}` is not a record kind departments read"),
            ));
        }
    }
    for field in &grant.clear_fields {
        let (kind, _) = field.rsplit_once('.').unwrap_or(("", ""));
        if !grant.kinds.iter().any(|k| k == kind) {
            return Err((
                "clear_fields",
                format!("`{field}` is not a field of a kind this grant covers (`<kind>.<field>`)"),
            ));
        }
        if !schemas.is_personal_field(field) {
            return Err((
                "clear_fields",
                format!(
                    "`{field}` is not a personal field of `{kind}` (personal: {}); fields that are not personal are never masked",
                    schemas.personal_fields(kind).unwrap_or_default().join(", ")
                ),
            ));
        }
    }
    let prefix = DivisionCode::parse(&grant.division_prefix)
        .map_err(|e| ("division_prefix", e.to_string()))?;
    if !prefix.as_str().starts_with(node.as_str()) {
        return Err((
            "division_prefix",
            format!(
                "`{prefix}` lies outside this node's subtree ({node}): a node grants access to its own area only"
            ),
        ));
    }
    if grant.matter_code.is_empty()
        || grant.matter_code.len() > 64
        || !grant.matter_code.chars().all(|c| c.is_ascii_graphic())
    {
        return Err((
            "matter_code",
            "the purpose's matter code (事项编码) is 1 to 64 printable ASCII characters".into(),
        ));
    }
    if grant.legal_basis.trim().is_empty() {
        return Err((
            "legal_basis",
            "a grant names the law or document that allows the access".into(),
        ));
    }
    if grant.valid_from_ms <= 0 || grant.valid_until_ms <= grant.valid_from_ms {
        return Err((
            "valid_until_ms",
            format!(
                "the validity window [{}, {}) is empty or unset",
                grant.valid_from_ms, grant.valid_until_ms
            ),
        ));
    }
    check_transition(before, grant).map_err(|e| ("state", e))
}

/// The life cycle: requested → approved → withdrawn (or requested →
/// withdrawn); an approved grant changes only by being withdrawn, and a
/// withdrawn one is final.
fn check_transition(before: Option<&wire::Grant>, after: &wire::Grant) -> Result<(), String> {
    use GrantState::*;
    let to = after.state();
    let Some(before) = before else {
        return match to {
            Requested => Ok(()),
            _ => Err(format!(
                "a new grant starts as requested, not {}; approve it afterwards",
                state_word(to)
            )),
        };
    };
    match (before.state(), to) {
        (Requested, Requested) => Ok(()),
        (Requested, Approved) if after.approved_by.trim().is_empty() => {
            Err("an approval names who approved it (approved_by)".into())
        }
        (Requested, Approved) => Ok(()),
        (Requested | Approved, Withdrawn) if after.withdrawn_reason.trim().is_empty() => {
            Err("a withdrawal says why (withdrawn_reason)".into())
        }
        (Approved, Withdrawn) => {
            let mut unchanged = before.clone();
            unchanged.state = Withdrawn as i32;
            unchanged.withdrawn_reason = after.withdrawn_reason.clone();
            if &unchanged == after {
                Ok(())
            } else {
                Err("withdrawing an approved grant changes nothing else of it".into())
            }
        }
        (Requested, Withdrawn) => Ok(()),
        (Approved, Approved) => {
            Err("an approved grant is not edited: withdraw it and request a new one".into())
        }
        (Withdrawn, _) => Err("the grant was withdrawn; a withdrawal is final".into()),
        (from, to) => Err(format!(
            "a grant does not go from {} to {}",
            state_word(from),
            state_word(to)
        )),
    }
}

fn state_word(state: GrantState) -> &'static str {
    match state {
        GrantState::Unspecified => "unspecified",
        GrantState::Requested => "requested",
        GrantState::Approved => "approved",
        GrantState::Withdrawn => "withdrawn",
    }
}

#[cfg(test)]
mod tests;
