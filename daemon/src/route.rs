//! Sharing scope and routing: which nodes may hold a record, and so what
//! crosses each link.
//!
//! A record owned by node `O` with scope `(up_to, down_to)` may be held by:
//! - `O` itself;
//! - every ancestor of `O` up to and including the tier `up_to` (the way up);
//! - every node inside the subtree of a `down_to` prefix (the targets);
//! - every node on the way down from `O`'s top ancestor (`O` at `up_to`) to a
//!   target: the relays that store and forward it.
//!
//! Nothing else holds it. Both ends of a link apply the same rule: the
//! sender filters what it sends, the receiver rejects what it should not
//! have been sent, so a buggy or malicious peer cannot widen a record's reach.
//!
//! `reach` is the union of every scope a record has had; a node that `reach`
//! allows but the current scope does not gets a withdrawal (a scoped
//! tombstone) instead of the record.

use tiersync_proto::types::{DivisionCode, Tier};
use tiersync_proto::wire;

/// A validated sharing scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub up_to: Option<Tier>,
    pub down_to: Vec<DivisionCode>,
    /// Departments that may read the record through an adapter. Routing
    /// between nodes does not depend on them; they travel with the record.
    pub departments: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("scope.up_to is {0}, a tier value this node does not know")]
    UnknownTier(i32),
    #[error(
        "scope.up_to is {up_to} but the owner `{owner}` is a {owner_tier}; up_to must be the owner's tier or above"
    )]
    UpToBelowOwner {
        up_to: Tier,
        owner: DivisionCode,
        owner_tier: Tier,
    },
    #[error("scope.down_to entry `{value}`: {reason}")]
    BadPrefix { value: String, reason: String },
    #[error(
        "scope.down_to entry `{prefix}` lies outside `{top}`, the highest node this record may reach (owner `{owner}` with up_to {up_to}); raise up_to or drop the prefix"
    )]
    PrefixOutOfReach {
        prefix: DivisionCode,
        top: DivisionCode,
        owner: DivisionCode,
        up_to: String,
    },
    #[error(
        "scope.departments entry `{0}` is not a department name (1 to 64 printable characters)"
    )]
    BadDepartment(String),
    #[error("reach does not cover the scope: {0}")]
    ReachTooNarrow(String),
}

impl Scope {
    /// A scope that keeps the record at its owner.
    pub fn local() -> Scope {
        Scope {
            up_to: None,
            down_to: Vec::new(),
            departments: Vec::new(),
        }
    }

    pub fn up_to(tier: Tier) -> Scope {
        Scope {
            up_to: Some(tier),
            down_to: Vec::new(),
            departments: Vec::new(),
        }
    }

    /// Validates a wire scope for a record owned by `owner`.
    pub fn from_wire(
        owner: &DivisionCode,
        scope: Option<&wire::Scope>,
    ) -> Result<Scope, ScopeError> {
        let Some(scope) = scope else {
            return Ok(Scope::local());
        };
        let up_to = if scope.up_to == 0 {
            None
        } else {
            Some(Tier::from_wire(scope.up_to).ok_or(ScopeError::UnknownTier(scope.up_to))?)
        };
        if let Some(t) = up_to
            && t < owner.tier()
        {
            return Err(ScopeError::UpToBelowOwner {
                up_to: t,
                owner: owner.clone(),
                owner_tier: owner.tier(),
            });
        }
        let top = top_of(owner, up_to);
        let mut down_to = Vec::with_capacity(scope.down_to.len());
        for value in &scope.down_to {
            let prefix = DivisionCode::parse(value).map_err(|e| ScopeError::BadPrefix {
                value: value.clone(),
                reason: e.to_string(),
            })?;
            if !top.contains(&prefix) {
                return Err(ScopeError::PrefixOutOfReach {
                    prefix,
                    top: top.clone(),
                    owner: owner.clone(),
                    up_to: up_to
                        .map_or("unspecified (stays at the owner)".into(), |t| t.to_string()),
                });
            }
            down_to.push(prefix);
        }
        down_to.sort();
        down_to.dedup();
        let mut departments = Vec::with_capacity(scope.departments.len());
        for d in &scope.departments {
            if d.trim().is_empty() || d.chars().count() > 64 || d.chars().any(char::is_control) {
                return Err(ScopeError::BadDepartment(d.clone()));
            }
            departments.push(d.clone());
        }
        departments.sort();
        departments.dedup();
        Ok(Scope {
            up_to,
            down_to,
            departments,
        })
    }

    pub fn to_wire(&self) -> wire::Scope {
        wire::Scope {
            up_to: self.up_to.map_or(0, |t| t.to_wire() as i32),
            down_to: self.down_to.iter().map(|c| c.to_string()).collect(),
            departments: self.departments.clone(),
        }
    }

    /// May `node` hold a record owned by `owner` under this scope?
    pub fn may_hold(&self, owner: &DivisionCode, node: &DivisionCode) -> bool {
        if node == owner {
            return true;
        }
        if node.is_ancestor_of(owner) && self.up_to.is_some_and(|t| node.tier() <= t) {
            return true;
        }
        let top = top_of(owner, self.up_to);
        self.down_to
            .iter()
            .any(|p| p.contains(node) || (node.is_ancestor_of(p) && top.contains(node)))
    }

    /// The union of two scopes: everything either allows.
    pub fn union(&self, other: &Scope) -> Scope {
        let mut down_to: Vec<_> = self.down_to.iter().chain(&other.down_to).cloned().collect();
        down_to.sort();
        down_to.dedup();
        let mut departments: Vec<_> = self
            .departments
            .iter()
            .chain(&other.departments)
            .cloned()
            .collect();
        departments.sort();
        departments.dedup();
        Scope {
            up_to: self.up_to.max(other.up_to),
            down_to,
            departments,
        }
    }

    /// True if everything this scope allows, `wider` allows too.
    pub fn within(&self, wider: &Scope) -> bool {
        self.up_to <= wider.up_to
            && self
                .down_to
                .iter()
                .all(|p| wider.down_to.iter().any(|w| w.contains(p)))
    }
}

/// The highest node a record owned by `owner` may reach going up.
fn top_of(owner: &DivisionCode, up_to: Option<Tier>) -> DivisionCode {
    up_to
        .and_then(|t| owner.ancestor_at(t))
        .unwrap_or_else(|| owner.clone())
}

/// The link a record is about to cross, seen from the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toward {
    /// To this node's parent.
    Parent,
    /// To one of this node's children.
    Child,
}

/// What a sender puts on a link for one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The record itself.
    Full,
    /// A scoped tombstone: the peer held it once but may no longer.
    Withdrawal,
    /// Nothing: the peer never may hold it, or it came from the peer's side.
    Skip,
}

/// Which owners' records may cross a link in a direction at all: up a link
/// only records owned inside the sender's subtree, down a link only records
/// owned outside the child's, so nothing echoes back to where it came from.
/// [`delivery`] decides by it per record; a link's sender also hands it to
/// the store ([`crate::store::Store::link_page`]), which leaves the rest out
/// before reading them (a street would otherwise read back everything its
/// child just sent it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owners<'a> {
    /// Owners inside this subtree.
    Within(&'a DivisionCode),
    /// Owners outside this subtree.
    Outside(&'a DivisionCode),
}

impl<'a> Owners<'a> {
    /// The owners node `me` sends to `peer` in direction `toward`.
    pub fn toward(me: &'a DivisionCode, peer: &'a DivisionCode, toward: Toward) -> Owners<'a> {
        match toward {
            Toward::Parent => Owners::Within(me),
            Toward::Child => Owners::Outside(peer),
        }
    }

    /// The subtree and whether owners inside it are the ones wanted: the
    /// two bind parameters of a store engine's query.
    pub fn as_filter(&self) -> (&'a DivisionCode, bool) {
        match *self {
            Owners::Within(code) => (code, true),
            Owners::Outside(code) => (code, false),
        }
    }

    pub fn admits(&self, owner: &DivisionCode) -> bool {
        match *self {
            Owners::Within(code) => code.contains(owner),
            Owners::Outside(code) => !code.contains(owner),
        }
    }
}

/// Decides what goes from this node to `peer` for a record owned by `owner`:
/// only owners [`Owners::toward`] admits, then by scope.
pub fn delivery(
    scope: &Scope,
    reach: &Scope,
    owner: &DivisionCode,
    me: &DivisionCode,
    peer: &DivisionCode,
    toward: Toward,
) -> Delivery {
    if !Owners::toward(me, peer, toward).admits(owner) {
        Delivery::Skip
    } else if scope.may_hold(owner, peer) {
        Delivery::Full
    } else if reach.may_hold(owner, peer) {
        Delivery::Withdrawal
    } else {
        Delivery::Skip
    }
}

/// Why a receiver refuses a record's provenance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error(
        "forged origin: record owned by `{owner}` arrived from child `{peer}`, but `{owner}` is outside `{peer}`'s subtree"
    )]
    NotFromChildSubtree {
        owner: DivisionCode,
        peer: DivisionCode,
    },
    #[error(
        "forged origin: record owned by `{owner}` arrived from parent `{peer}`, but `{owner}` lies in this node's own subtree (`{me}`), whose records only come up from below"
    )]
    FromParentForOwnSubtree {
        owner: DivisionCode,
        peer: DivisionCode,
        me: DivisionCode,
    },
    #[error("outside scope: record owned by `{owner}` may not be held at `{me}` under its scope")]
    OutsideScope {
        owner: DivisionCode,
        me: DivisionCode,
    },
}

/// Checks at the receiver that a record from `peer` could legitimately have
/// come over this link and may be held here.
pub fn check_arrival(
    reach: &Scope,
    owner: &DivisionCode,
    me: &DivisionCode,
    peer: &DivisionCode,
    from: Toward,
) -> Result<(), OriginError> {
    match from {
        Toward::Child if !peer.contains(owner) => {
            return Err(OriginError::NotFromChildSubtree {
                owner: owner.clone(),
                peer: peer.clone(),
            });
        }
        Toward::Parent if me.contains(owner) => {
            return Err(OriginError::FromParentForOwnSubtree {
                owner: owner.clone(),
                peer: peer.clone(),
                me: me.clone(),
            });
        }
        _ => {}
    }
    if !reach.may_hold(owner, me) {
        return Err(OriginError::OutsideScope {
            owner: owner.clone(),
            me: me.clone(),
        });
    }
    Ok(())
}

/// A node that may not link to this one: only direct children may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAChild {
    pub me: DivisionCode,
    pub peer: DivisionCode,
}

impl std::fmt::Display for NotAChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let NotAChild { me, peer } = self;
        match Tier::ALL.into_iter().rev().find(|t| *t < me.tier()) {
            None => write!(
                f,
                "node `{me}` is a community and has no children; `{peer}` must dial its own parent"
            ),
            Some(t) => write!(
                f,
                "node `{peer}` is not a child of `{me}`: a child's code is `{me}` followed by {} more digits",
                t.code_len() - me.as_str().len()
            ),
        }
    }
}

impl std::error::Error for NotAChild {}

/// Checks that `peer` may open a link to `me` (or join it): it must be a
/// direct child.
pub fn admit_child(me: &DivisionCode, peer: &DivisionCode) -> Result<(), NotAChild> {
    if peer.parent().as_ref() == Some(me) {
        return Ok(());
    }
    Err(NotAChild {
        me: me.clone(),
        peer: peer.clone(),
    })
}

/// The scope that carries a record from `from` to `to` and no further than
/// their common ancestor: used to route amendments to an owner and answers
/// back to the requester.
pub fn point_to_point(from: &DivisionCode, to: &DivisionCode) -> Option<Scope> {
    let lca = from.common_ancestor(to)?;
    let up_to = (lca != *from).then(|| lca.tier());
    let down_to = if &lca == to {
        Vec::new()
    } else {
        vec![to.clone()]
    };
    Some(Scope {
        up_to,
        down_to,
        departments: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(s: &str) -> DivisionCode {
        DivisionCode::parse(s).unwrap()
    }

    fn scope(up_to: Option<Tier>, down_to: &[&str]) -> Scope {
        Scope {
            up_to,
            down_to: down_to.iter().map(|s| c(s)).collect(),
            departments: vec![],
        }
    }

    #[test]
    fn resident_goes_up_to_the_city_and_nowhere_sideways() {
        let owner = c("511102004001");
        let s = scope(Some(Tier::City), &[]);
        for holder in ["511102004001", "511102004", "511102", "5111"] {
            assert!(s.may_hold(&owner, &c(holder)), "{holder}");
        }
        for other in ["511102004002", "511102005", "511111", "511102005001"] {
            assert!(!s.may_hold(&owner, &c(other)), "{other}");
        }
    }

    #[test]
    fn county_notice_to_one_street_reaches_its_communities_only() {
        let owner = c("511102");
        let s = scope(Some(Tier::County), &["511102004"]);
        for holder in ["511102", "511102004", "511102004001", "511102004002"] {
            assert!(s.may_hold(&owner, &c(holder)), "{holder}");
        }
        for other in ["5111", "511102005", "511102005001", "511111"] {
            assert!(!s.may_hold(&owner, &c(other)), "{other}");
        }
    }

    #[test]
    fn city_notice_to_a_street_is_relayed_by_its_county_only() {
        let owner = c("5111");
        let s = scope(Some(Tier::City), &["511102004"]);
        assert!(s.may_hold(&owner, &c("511102")));
        assert!(!s.may_hold(&owner, &c("511111")));
        assert!(s.may_hold(&owner, &c("511102004003")));
    }

    #[test]
    fn scope_validation_names_the_problem() {
        let owner = c("511102");
        let wire = |up_to: Tier, down: &[&str]| wire::Scope {
            up_to: up_to.to_wire() as i32,
            down_to: down.iter().map(|s| s.to_string()).collect(),
            departments: vec![],
        };
        assert_eq!(
            Scope::from_wire(&owner, Some(&wire(Tier::Street, &[])))
                .unwrap_err()
                .to_string(),
            "scope.up_to is street but the owner `511102` is a county; up_to must be the owner's tier or above"
        );
        assert_eq!(
            Scope::from_wire(&owner, Some(&wire(Tier::County, &["511111001"])))
                .unwrap_err()
                .to_string(),
            "scope.down_to entry `511111001` lies outside `511102`, the highest node this record may reach (owner `511102` with up_to county); raise up_to or drop the prefix"
        );
        assert_eq!(
            Scope::from_wire(&owner, Some(&wire(Tier::County, &["51x"])))
                .unwrap_err()
                .to_string(),
            "scope.down_to entry `51x`: division code `51x` contains `x`; it must be decimal digits only"
        );
    }

    #[test]
    fn departments_travel_with_the_scope() {
        let owner = c("511102004001");
        let w = wire::Scope {
            up_to: Tier::City.to_wire() as i32,
            down_to: vec![],
            departments: vec!["民政局".into(), "civil-affairs".into(), "民政局".into()],
        };
        let s = Scope::from_wire(&owner, Some(&w)).unwrap();
        assert_eq!(
            s.departments,
            vec!["civil-affairs".to_owned(), "民政局".to_owned()]
        );
        assert_eq!(s.to_wire().departments, s.departments);
        let bad = wire::Scope {
            departments: vec![" ".into()],
            ..w
        };
        assert_eq!(
            Scope::from_wire(&owner, Some(&bad))
                .unwrap_err()
                .to_string(),
            "scope.departments entry ` ` is not a department name (1 to 64 printable characters)"
        );
    }

    #[test]
    fn delivery_never_echoes_and_withdraws_narrowed_records() {
        let owner = c("511102004001");
        let street = c("511102004");
        let county = c("511102");
        let wide = scope(Some(Tier::City), &[]);
        let narrow = scope(Some(Tier::Street), &[]);
        let reach = wide.union(&narrow);
        // up from the street to the county: withdrawn once the scope narrows
        assert_eq!(
            delivery(&wide, &reach, &owner, &street, &county, Toward::Parent),
            Delivery::Full
        );
        assert_eq!(
            delivery(&narrow, &reach, &owner, &street, &county, Toward::Parent),
            Delivery::Withdrawal
        );
        // never back down to the child it came from
        assert_eq!(
            delivery(&wide, &reach, &owner, &street, &owner, Toward::Child),
            Delivery::Skip
        );
        // a record owned above never goes up
        assert_eq!(
            delivery(&wide, &reach, &county, &street, &county, Toward::Parent),
            Delivery::Skip
        );
    }

    #[test]
    fn arrival_checks_catch_forged_origins() {
        let me = c("511102");
        let reach = scope(Some(Tier::City), &[]);
        assert_eq!(
            check_arrival(
                &reach,
                &c("511102005001"),
                &me,
                &c("511102004"),
                Toward::Child
            )
            .unwrap_err()
            .to_string(),
            "forged origin: record owned by `511102005001` arrived from child `511102004`, but `511102005001` is outside `511102004`'s subtree"
        );
        assert!(matches!(
            check_arrival(&reach, &c("511102004001"), &me, &c("5111"), Toward::Parent),
            Err(OriginError::FromParentForOwnSubtree { .. })
        ));
        assert!(
            check_arrival(
                &reach,
                &c("511102004001"),
                &me,
                &c("511102004"),
                Toward::Child
            )
            .is_ok()
        );
        let narrow = scope(Some(Tier::Street), &[]);
        assert!(matches!(
            check_arrival(
                &narrow,
                &c("511102004001"),
                &me,
                &c("511102004"),
                Toward::Child
            ),
            Err(OriginError::OutsideScope { .. })
        ));
    }

    #[test]
    fn point_to_point_reaches_exactly_the_target() {
        let p = point_to_point(&c("511102004001"), &c("511102005002")).unwrap();
        assert_eq!(p, scope(Some(Tier::County), &["511102005002"]));
        let up = point_to_point(&c("511102004001"), &c("5111")).unwrap();
        assert_eq!(up, scope(Some(Tier::City), &[]));
        let down = point_to_point(&c("5111"), &c("511102004001")).unwrap();
        assert_eq!(down, scope(None, &["511102004001"]));
    }

    /// A small tree: 1 city, 2 counties, 2 streets each, 2 communities each.
    fn tree() -> Vec<DivisionCode> {
        let mut nodes = vec![c("5111")];
        for county in ["511102", "511111"] {
            nodes.push(c(county));
            for street in ["001", "002"] {
                let s = format!("{county}{street}");
                nodes.push(c(&s));
                for community in ["001", "002"] {
                    nodes.push(c(&format!("{s}{community}")));
                }
            }
        }
        nodes
    }

    proptest! {
        /// Flooding a record hop by hop with `delivery` from its owner reaches
        /// exactly the nodes `may_hold` allows: routing and the holder rule
        /// agree, whatever the scope.
        #[test]
        fn flooding_reaches_exactly_the_allowed_set(
            owner_ix in 0usize..15,
            up in 0usize..5,
            targets in proptest::collection::vec(0usize..15, 0..3),
        ) {
            let nodes = tree();
            let owner = nodes[owner_ix].clone();
            let up_to = [None, Some(Tier::Community), Some(Tier::Street), Some(Tier::County), Some(Tier::City)][up];
            prop_assume!(up_to.is_none_or(|t| t >= owner.tier()));
            let top = top_of(&owner, up_to);
            let down_to: Vec<_> = targets.iter().map(|i| nodes[*i].clone()).filter(|p| top.contains(p)).collect();
            let s = Scope { up_to, down_to, departments: vec![] };
            let mut held = vec![owner.clone()];
            let mut frontier = vec![owner.clone()];
            while let Some(node) = frontier.pop() {
                let mut peers: Vec<(DivisionCode, Toward)> = nodes.iter().filter(|n| n.parent().as_ref() == Some(&node)).map(|n| (n.clone(), Toward::Child)).collect();
                if let Some(p) = node.parent() { peers.push((p, Toward::Parent)); }
                for (peer, toward) in peers {
                    if delivery(&s, &s, &owner, &node, &peer, toward) == Delivery::Full && !held.contains(&peer) {
                        held.push(peer.clone());
                        frontier.push(peer);
                    }
                }
            }
            for n in &nodes {
                prop_assert_eq!(held.contains(n), s.may_hold(&owner, n), "node {}", n);
            }
        }
    }
}
