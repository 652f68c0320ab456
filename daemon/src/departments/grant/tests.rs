//! The grant rule and the life cycle checks, case by case: what each
//! refusal names, and what expiry, withdrawal and overreach leave.

use super::*;

const DAY: i64 = 24 * 60 * 60 * 1000;
const NOW: i64 = 1_796_000_000_000;

fn code(s: &str) -> DivisionCode {
    DivisionCode::parse(s).unwrap()
}

fn grant(matter: &str) -> HeldGrant {
    HeldGrant {
        id: vec![matter.len() as u8; 16],
        owner: "511123".into(),
        grant: wire::Grant {
            department: "civil-affairs".into(),
            kinds: vec!["civil.v1.Resident".into()],
            clear_fields: vec!["civil.v1.Resident.id_number".into()],
            division_prefix: "511123".into(),
            matter_code: matter.into(),
            matter_name: "最低生活保障审核".into(),
            legal_basis: "社会救助暂行办法 第十一条".into(),
            valid_from_ms: NOW - DAY,
            valid_until_ms: NOW + DAY,
            state: GrantState::Approved as i32,
            requested_by: "民政局".into(),
            approved_by: "犍为县政务服务中心".into(),
            withdrawn_reason: String::new(),
            may_submit: false,
        },
    }
}

fn want<'a>(kinds: &'a [String], matter: &'a str) -> Want<'a> {
    Want {
        kinds,
        clear_fields: &[],
        area: None,
        matter_code: matter,
        submit: false,
    }
}

fn resident() -> Vec<String> {
    vec!["civil.v1.Resident".into()]
}

#[test]
fn a_grant_in_effect_allows_its_kinds_fields_and_area() {
    let kinds = resident();
    let access = decide(
        &code("511123"),
        "civil-affairs",
        &[grant("M-001")],
        &want(&kinds, "M-001"),
        NOW,
    )
    .unwrap();
    assert_eq!(access.area, "511123");
    assert!(access.clear.contains("civil.v1.Resident.id_number"));
    assert!(access.audit_detail().ends_with("matter M-001"));
}

#[test]
fn refusals_name_the_grant_and_what_it_lacks() {
    let node = code("511123");
    let grants = [grant("M-001")];
    let household = vec!["civil.v1.Household".to_owned()];
    let e = decide(
        &node,
        "civil-affairs",
        &grants,
        &want(&household, "M-001"),
        NOW,
    )
    .unwrap_err();
    assert!(
        e.contains(&grants[0].name()) && e.contains("kind `civil.v1.Household`"),
        "{e}"
    );

    let kinds = resident();
    let phone = vec!["civil.v1.Resident.phone".to_owned()];
    let w = Want {
        clear_fields: &phone,
        ..want(&kinds, "M-001")
    };
    let e = decide(&node, "civil-affairs", &grants, &w, NOW).unwrap_err();
    assert!(
        e.contains("field `civil.v1.Resident.phone` in clear"),
        "{e}"
    );

    let elsewhere = code("511102");
    let w = Want {
        area: Some(&elsewhere),
        ..want(&kinds, "M-001")
    };
    let e = decide(&node, "civil-affairs", &grants, &w, NOW).unwrap_err();
    assert!(e.contains("area `511102` (it covers `511123`)"), "{e}");

    let e = decide(&node, "civil-affairs", &grants, &want(&kinds, "M-999"), NOW).unwrap_err();
    assert!(
        e.contains("for matter `M-999`") && e.contains("M-001 (grant"),
        "{e}"
    );

    let e = decide(&node, "health", &grants, &want(&kinds, "M-001"), NOW).unwrap_err();
    assert!(e.contains("department `health` holds no grant"), "{e}");

    let w = Want {
        submit: true,
        ..want(&kinds, "M-001")
    };
    let e = decide(&node, "civil-affairs", &grants, &w, NOW).unwrap_err();
    assert!(e.contains("submitting records"), "{e}");

    let e = decide(&node, "civil-affairs", &grants, &want(&kinds, ""), NOW).unwrap_err();
    assert!(e.contains("purpose.matter_code"), "{e}");
}

#[test]
fn expiry_withdrawal_and_void_grants_allow_nothing() {
    let node = code("511123");
    let kinds = resident();
    let mut expired = grant("M-001");
    expired.grant.valid_until_ms = NOW;
    let e = decide(
        &node,
        "civil-affairs",
        &[expired],
        &want(&kinds, "M-001"),
        NOW,
    )
    .unwrap_err();
    assert!(e.contains("expired at"), "{e}");

    let mut withdrawn = grant("M-001");
    withdrawn.grant.state = GrantState::Withdrawn as i32;
    withdrawn.grant.withdrawn_reason = "项目结束".into();
    let e = decide(
        &node,
        "civil-affairs",
        &[withdrawn],
        &want(&kinds, "M-001"),
        NOW,
    )
    .unwrap_err();
    assert!(e.contains("withdrawn (项目结束)"), "{e}");

    // A street cannot grant the whole county.
    let mut overreach = grant("M-001");
    overreach.owner = "511123100".into();
    let e = decide(
        &node,
        "civil-affairs",
        &[overreach],
        &want(&kinds, "M-001"),
        NOW,
    )
    .unwrap_err();
    assert!(e.contains("void: its area `511123` lies outside"), "{e}");

    let mut later = grant("M-001");
    later.grant.valid_from_ms = NOW + 1;
    assert_eq!(later.status(NOW), GrantStatus::NotYet(NOW + 1));
    assert_eq!(later.status(NOW + 1), GrantStatus::InEffect);
}

#[test]
fn access_admits_by_kind_area_and_department_scope() {
    let kinds = resident();
    let access = decide(
        &code("511123"),
        "civil-affairs",
        &[grant("M-001")],
        &want(&kinds, "M-001"),
        NOW,
    )
    .unwrap();
    let record = |kind: &str, owner: &str, departments: &[&str]| wire::Record {
        kind: kind.into(),
        owner: Some(wire::Owner {
            node: owner.into(),
            department: String::new(),
        }),
        scope: Some(wire::Scope {
            departments: departments.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert!(access.admits(&record("civil.v1.Resident", "511123100001", &[])));
    assert!(access.admits(&record(
        "civil.v1.Resident",
        "511123100001",
        &["civil-affairs"]
    )));
    assert!(!access.admits(&record("civil.v1.Resident", "511123100001", &["health"])));
    assert!(!access.admits(&record("civil.v1.Resident", "511102004001", &[])));
    assert!(!access.admits(&record("civil.v1.Household", "511123100001", &[])));
}

#[test]
fn the_life_cycle_is_requested_approved_withdrawn() {
    let node = code("511123");
    let schemas = Schemas::global();
    let mut requested = grant("M-001").grant;
    requested.state = GrantState::Requested as i32;
    requested.approved_by.clear();
    check_change(&node, None, &requested, schemas).unwrap();

    let approved = wire::Grant {
        state: GrantState::Approved as i32,
        approved_by: "县政务服务中心".into(),
        ..requested.clone()
    };
    assert_eq!(
        check_change(&node, None, &approved, schemas).unwrap_err().0,
        "state"
    );
    check_change(&node, Some(&requested), &approved, schemas).unwrap();
    let unsigned = wire::Grant {
        approved_by: String::new(),
        ..approved.clone()
    };
    assert!(
        check_change(&node, Some(&requested), &unsigned, schemas)
            .unwrap_err()
            .1
            .contains("approved_by")
    );

    let widened = wire::Grant {
        kinds: vec!["civil.v1.Resident".into(), "civil.v1.Household".into()],
        ..approved.clone()
    };
    assert!(
        check_change(&node, Some(&approved), &widened, schemas)
            .unwrap_err()
            .1
            .contains("not edited")
    );
    let withdrawn = wire::Grant {
        state: GrantState::Withdrawn as i32,
        withdrawn_reason: "项目结束".into(),
        ..approved.clone()
    };
    check_change(&node, Some(&approved), &withdrawn, schemas).unwrap();
    let sneaky = wire::Grant {
        valid_until_ms: NOW + 100 * DAY,
        ..withdrawn.clone()
    };
    assert!(check_change(&node, Some(&approved), &sneaky, schemas).is_err());
    let revived = wire::Grant {
        state: GrantState::Approved as i32,
        ..withdrawn.clone()
    };
    assert!(
        check_change(&node, Some(&withdrawn), &revived, schemas)
            .unwrap_err()
            .1
            .contains("final")
    );
}

#[test]
fn a_grant_is_checked_field_by_field() {
    let node = code("511123");
    let schemas = Schemas::global();
    let mut g = grant("M-001").grant;
    g.state = GrantState::Requested as i32;
    let field = |g: &wire::Grant| check_change(&node, None, g, schemas).unwrap_err().0;
    assert_eq!(
        field(&wire::Grant {
            department: "Civil Affairs".into(),
            ..g.clone()
        }),
        "department"
    );
    assert_eq!(
        field(&wire::Grant {
            kinds: vec!["tiersync.v1.JoinToken".into()],
            clear_fields: vec![],
            ..g.clone()
        }),
        "kinds"
    );
    // Grants cannot grant the catalogue or grants themselves.
    assert_eq!(
        field(&wire::Grant {
            kinds: vec!["tiersync.v1.Grant".into()],
            clear_fields: vec![],
            ..g.clone()
        }),
        "kinds"
    );
    assert_eq!(
        field(&wire::Grant {
            clear_fields: vec!["civil.v1.Resident.notes".into()],
            ..g.clone()
        }),
        "clear_fields"
    );
    assert_eq!(
        field(&wire::Grant {
            division_prefix: "511102".into(),
            ..g.clone()
        }),
        "division_prefix"
    );
    assert_eq!(
        field(&wire::Grant {
            matter_code: String::new(),
            ..g.clone()
        }),
        "matter_code"
    );
    assert_eq!(
        field(&wire::Grant {
            valid_until_ms: g.valid_from_ms,
            ..g.clone()
        }),
        "valid_until_ms"
    );
    assert!(super::super::check_code("civil-affairs").is_ok());
    assert!(super::super::check_code("x").is_err());
    assert!(super::super::check_code("civil-").is_err());
}
