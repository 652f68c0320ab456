//! The real 2023 statistical division codes shipped with tiersync (Leshan
//! and Panzhihua), for names in the demo and for tests over real topologies.

use std::collections::BTreeMap;

use tiersync_proto::types::{DivisionCode, Tier};

pub const LESHAN_CSV: &str = include_str!("../../data/divisions/leshan.csv");
pub const PANZHIHUA_CSV: &str = include_str!("../../data/divisions/panzhihua.csv");

#[derive(Debug, Clone)]
pub struct Division {
    pub code: DivisionCode,
    pub tier: Tier,
    pub name: String,
    pub parent: Option<DivisionCode>,
}

#[derive(Debug, thiserror::Error)]
#[error("divisions line {line}: {reason}")]
pub struct DivisionsError {
    pub line: usize,
    pub reason: String,
}

/// Parses `code,tier,name,parent` lines and checks that every row's tier and
/// parent agree with what its code says.
pub fn parse(csv: &str) -> Result<BTreeMap<DivisionCode, Division>, DivisionsError> {
    let mut out = BTreeMap::new();
    for (i, line) in csv.lines().enumerate().skip(1) {
        let line_no = i + 1;
        let err = |reason: String| DivisionsError {
            line: line_no,
            reason,
        };
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.splitn(4, ',');
        let (Some(code), Some(tier), Some(name), Some(parent)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(err(format!("expected 4 fields in `{line}`")));
        };
        let code = DivisionCode::parse(code).map_err(|e| err(e.to_string()))?;
        let tier: Tier = tier
            .parse()
            .map_err(|e: tiersync_proto::types::DivisionError| err(e.to_string()))?;
        if code.tier() != tier {
            return Err(err(format!(
                "`{code}` is listed as {tier} but its length makes it a {}",
                code.tier()
            )));
        }
        let parent = if parent.is_empty() {
            None
        } else {
            Some(DivisionCode::parse(parent).map_err(|e| err(e.to_string()))?)
        };
        if let Some(listed) = &parent
            && Some(listed) != code.parent().as_ref()
        {
            return Err(err(format!(
                "`{code}` is listed under `{listed}` but its code puts it under `{}`",
                code.parent().map(|p| p.to_string()).unwrap_or_default()
            )));
        }
        out.insert(
            code.clone(),
            Division {
                code,
                tier,
                name: name.to_owned(),
                parent,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_topologies_agree_with_the_code_rules() {
        let leshan = parse(LESHAN_CSV).unwrap();
        assert_eq!(leshan.len(), 1515);
        let panzhihua = parse(PANZHIHUA_CSV).unwrap();
        assert_eq!(panzhihua.len(), 391);
        // every listed parent is itself listed
        for d in leshan.values() {
            if let Some(p) = &d.parent {
                assert!(leshan.contains_key(p), "{} has unlisted parent {p}", d.code);
            }
        }
        assert_eq!(
            leshan[&DivisionCode::parse("511102004001").unwrap()].name,
            "篦子街社区居委会"
        );
    }

    #[test]
    fn mismatched_rows_are_reported_with_their_line() {
        let err = parse("code,tier,name,parent\n511102004001,community,x,511102005\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "divisions line 2: `511102004001` is listed under `511102005` but its code puts it under `511102004`"
        );
    }
}
