//! Departments: the systems of civil affairs, human resources, health and
//! the rest, which dock at a node through the adapter port and read only
//! what their grants allow (事项准入: applied for, approved, used for a
//! stated purpose, withdrawn).
//!
//! - [`grant`]: the grant model: when a grant is in effect, which grant
//!   allows a call (or what it lacks), and the checks of a grant's life
//!   cycle at its owner. Below the node: the one read path calls it.
//! - [`service`]: the adapter API (`tiersync.adapter.v1.AdapterService`),
//!   the department's door, above the node: every call is made as the
//!   department its client certificate names ([`crate::identity::department`]).
//! - [`subscribe`]: subscriptions with durable, acknowledged cursors.
//!
//! The catalogue of departments (`tiersync.v1.Department`) is a city-owned
//! record kind shared with every node; grants (`tiersync.v1.Grant`) are
//! owned by the node that approved them and replicate to their area.

use prost::Message;
use tiersync_proto::types::{DivisionCode, Tier};
use tiersync_proto::wire;

use crate::kinds::{KIND_DEPARTMENT, KIND_GRANT};

pub mod grant;
pub mod service;
pub mod subscribe;

/// Whether `owner` may own a record of `kind` with this payload: catalogue
/// departments are the city's alone, and a grant's area lies inside its
/// approving node's subtree. Every node checks it on arrival, so a record
/// that claims more authority than its owner has is quarantined, not
/// honoured.
pub fn check_authority(owner: &DivisionCode, kind: &str, payload: &[u8]) -> Result<(), String> {
    match kind {
        KIND_DEPARTMENT if owner.tier() != Tier::City => Err(format!(
            "the department catalogue is the city's; node {owner} may not own an entry"
        )),
        KIND_GRANT => {
            let g = wire::Grant::decode(payload).map_err(|e| format!("not a grant: {e}"))?;
            if g.division_prefix.starts_with(owner.as_str()) {
                Ok(())
            } else {
                Err(format!(
                    "a grant for area `{}` is outside its approving node {owner}'s subtree",
                    g.division_prefix
                ))
            }
        }
        _ => Ok(()),
    }
}

/// Checks a department code: lowercase ASCII letters, digits and hyphens,
/// starting with a letter, 2 to 32 characters (`civil-affairs`).
pub fn check_code(code: &str) -> Result<(), String> {
    let ok = (2..=32).contains(&code.len())
        && code.starts_with(|c: char| c.is_ascii_lowercase())
        && code
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !code.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{code}` is not a department code (2 to 32 lowercase letters, digits and hyphens, starting with a letter, e.g. `civil-affairs`)"
        ))
    }
}
