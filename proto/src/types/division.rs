//! Division codes and tiers: the identity of every node and the shape of the
//! tree. The parent of a node follows from its code, never from free config.

use std::fmt;
use std::str::FromStr;

use crate::wire;

/// A tier of local government, ordered from the bottom of the tree up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// 社区 / 村, 12-digit code.
    Community,
    /// 街道 / 乡镇, 9-digit code.
    Street,
    /// 区 / 县, 6-digit code.
    County,
    /// 市, 4-digit code: the root of a deployment.
    City,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Community, Tier::Street, Tier::County, Tier::City];

    /// Number of digits in a code of this tier.
    pub fn code_len(self) -> usize {
        match self {
            Tier::Community => 12,
            Tier::Street => 9,
            Tier::County => 6,
            Tier::City => 4,
        }
    }

    pub fn from_code_len(len: usize) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.code_len() == len)
    }

    /// The tier directly above, `None` for the city.
    pub fn parent(self) -> Option<Tier> {
        match self {
            Tier::Community => Some(Tier::Street),
            Tier::Street => Some(Tier::County),
            Tier::County => Some(Tier::City),
            Tier::City => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Community => "community",
            Tier::Street => "street",
            Tier::County => "county",
            Tier::City => "city",
        }
    }

    pub fn to_wire(self) -> wire::Tier {
        match self {
            Tier::Community => wire::Tier::Community,
            Tier::Street => wire::Tier::Street,
            Tier::County => wire::Tier::County,
            Tier::City => wire::Tier::City,
        }
    }

    /// `None` for `TIER_UNSPECIFIED` (and for values this build does not know).
    pub fn from_wire(value: i32) -> Option<Tier> {
        match wire::Tier::try_from(value).ok()? {
            wire::Tier::Unspecified => None,
            wire::Tier::Community => Some(Tier::Community),
            wire::Tier::Street => Some(Tier::Street),
            wire::Tier::County => Some(Tier::County),
            wire::Tier::City => Some(Tier::City),
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = DivisionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| DivisionError::UnknownTier(s.to_owned()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DivisionError {
    #[error("division code `{0}` is empty")]
    Empty(String),
    #[error("division code `{code}` contains `{ch}`; it must be decimal digits only")]
    NotDigits { code: String, ch: char },
    #[error(
        "division code `{code}` has {len} digits; a code has 4 (city), 6 (county), 9 (street) or 12 (community)"
    )]
    BadLength { code: String, len: usize },
    #[error("division code `{code}` has {len} digits; a {tier} node needs {need}")]
    WrongTier {
        code: String,
        len: usize,
        tier: Tier,
        need: usize,
    },
    #[error("unknown tier `{0}` (expected community, street, county or city)")]
    UnknownTier(String),
}

/// A validated statistical division code (GB/T 2260 and the national
/// statistics bureau's 12-digit scheme), the identity of a node.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DivisionCode(String);

impl DivisionCode {
    pub fn parse(code: &str) -> Result<Self, DivisionError> {
        if code.is_empty() {
            return Err(DivisionError::Empty(code.to_owned()));
        }
        if let Some(ch) = code.chars().find(|c| !c.is_ascii_digit()) {
            return Err(DivisionError::NotDigits {
                code: code.to_owned(),
                ch,
            });
        }
        if Tier::from_code_len(code.len()).is_none() {
            return Err(DivisionError::BadLength {
                code: code.to_owned(),
                len: code.len(),
            });
        }
        Ok(DivisionCode(code.to_owned()))
    }

    /// Parses and checks that the code belongs to `tier`.
    pub fn parse_for_tier(code: &str, tier: Tier) -> Result<Self, DivisionError> {
        let parsed = Self::parse(code)?;
        if parsed.tier() != tier {
            return Err(DivisionError::WrongTier {
                code: code.to_owned(),
                len: code.len(),
                tier,
                need: tier.code_len(),
            });
        }
        Ok(parsed)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn tier(&self) -> Tier {
        Tier::from_code_len(self.0.len()).expect("validated at construction")
    }

    /// The parent node's code: the first digits of this one.
    pub fn parent(&self) -> Option<DivisionCode> {
        let parent = self.tier().parent()?;
        Some(DivisionCode(self.0[..parent.code_len()].to_owned()))
    }

    /// The ancestor (or self) at `tier`; `None` if `tier` is below this node.
    pub fn ancestor_at(&self, tier: Tier) -> Option<DivisionCode> {
        (tier >= self.tier()).then(|| DivisionCode(self.0[..tier.code_len()].to_owned()))
    }

    /// True if `other` is this node or lies in its subtree.
    pub fn contains(&self, other: &DivisionCode) -> bool {
        other.0.starts_with(&self.0)
    }

    /// True if this node is a strict ancestor of `other`.
    pub fn is_ancestor_of(&self, other: &DivisionCode) -> bool {
        self.0.len() < other.0.len() && self.contains(other)
    }

    /// The lowest node whose subtree holds both codes.
    pub fn common_ancestor(&self, other: &DivisionCode) -> Option<DivisionCode> {
        Tier::ALL
            .into_iter()
            .filter(|t| *t >= self.tier() && *t >= other.tier())
            .find(|t| self.0[..t.code_len()] == other.0[..t.code_len()])
            .map(|t| DivisionCode(self.0[..t.code_len()].to_owned()))
    }

    /// The child of this node on the way down to `descendant`.
    pub fn child_towards(&self, descendant: &DivisionCode) -> Option<DivisionCode> {
        if !self.is_ancestor_of(descendant) {
            return None;
        }
        let child = Tier::ALL
            .into_iter()
            .rev()
            .find(|t| *t < self.tier())
            .expect("a strict ancestor is not a community");
        descendant.ancestor_at(child)
    }
}

impl fmt::Display for DivisionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DivisionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DivisionCode({})", self.0)
    }
}

impl FromStr for DivisionCode {
    type Err = DivisionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for DivisionCode {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn code(s: &str) -> DivisionCode {
        DivisionCode::parse(s).unwrap()
    }

    #[test]
    fn parse_errors_name_the_value() {
        let check = |input: &str, expected: &str| {
            assert_eq!(
                DivisionCode::parse(input).unwrap_err().to_string(),
                expected
            )
        };
        check("", "division code `` is empty");
        check(
            "51110200400a",
            "division code `51110200400a` contains `a`; it must be decimal digits only",
        );
        check(
            "51110",
            "division code `51110` has 5 digits; a code has 4 (city), 6 (county), 9 (street) or 12 (community)",
        );
        assert_eq!(
            DivisionCode::parse_for_tier("5101", Tier::Street)
                .unwrap_err()
                .to_string(),
            "division code `5101` has 4 digits; a street node needs 9"
        );
    }

    #[test]
    fn tree_relations() {
        let community = code("511102004001");
        assert_eq!(community.tier(), Tier::Community);
        assert_eq!(community.parent(), Some(code("511102004")));
        assert_eq!(code("5111").parent(), None);
        assert!(code("511102").contains(&community));
        assert!(code("511102").is_ancestor_of(&community));
        assert!(!community.is_ancestor_of(&community));
        assert!(!code("511111").contains(&community));
        assert_eq!(
            community.common_ancestor(&code("511102005003")),
            Some(code("511102"))
        );
        assert_eq!(
            community.common_ancestor(&code("511102004")),
            Some(code("511102004"))
        );
        assert_eq!(community.common_ancestor(&code("5101")), None);
        assert_eq!(code("5111").child_towards(&community), Some(code("511102")));
        assert_eq!(community.ancestor_at(Tier::County), Some(code("511102")));
        assert_eq!(code("511102").ancestor_at(Tier::Street), None);
    }

    proptest! {
        // Codes arrive in Hello frames and config; fuzzing needs nightly, so
        // arbitrary strings stand in.
        #[test]
        fn parse_never_panics(input in "\\PC{0,20}") {
            if let Ok(code) = DivisionCode::parse(&input) {
                prop_assert_eq!(code.as_str(), input.as_str());
                let _ = code.parent();
            }
        }

        #[test]
        fn digit_strings_parse_exactly_at_tier_lengths(input in "[0-9]{0,14}") {
            let parsed = DivisionCode::parse(&input);
            prop_assert_eq!(parsed.is_ok(), Tier::from_code_len(input.len()).is_some());
            if let Ok(code) = parsed {
                for tier in Tier::ALL {
                    if let Some(ancestor) = code.ancestor_at(tier) {
                        prop_assert!(ancestor.contains(&code));
                    }
                }
            }
        }
    }
}
