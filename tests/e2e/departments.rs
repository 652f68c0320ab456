//! Departments dock at a node's adapter port with their own certificate and
//! read exactly what their grant allows: kinds, area, purpose, fields in
//! clear; every read audited; a withdrawal reaching another node, and an
//! expiry, end the access.

use std::time::Duration;

use prost::Message;
use tiersync::clock::{Clock, ManualClock};
use tiersync::identity::department::{self, DepartmentId};
use tiersync::node::{Node, PutInput, Reader};
use tiersync::store::AuditQuery;
use tiersync_e2e::{Cluster, eventually, holds, put_resident, resident};
use tiersync_proto::pb::civil;
use tiersync_proto::pb::tiersync::adapter::v1::{
    self as adapter, adapter_service_client::AdapterServiceClient,
};
use tiersync_proto::types::{DivisionCode, RecordId};
use tiersync_proto::wire::{self, GrantState};
use tonic::Code;
use tonic::transport::Channel;

const CHAIN: [&str; 4] = ["5111", "511102", "511102004", "511102004001"];
const MATTER: &str = "511102-MZ-0001";

/// Adds `code` to the city's department catalogue.
async fn catalogue(city: &Node, code: &str, name: &str) {
    city.put(PutInput {
        kind: "tiersync.v1.Department".into(),
        payload: wire::Department {
            code: code.into(),
            name: name.into(),
            description: String::new(),
        }
        .encode_to_vec(),
        ..Default::default()
    })
    .await
    .expect("catalogue entry");
}

/// Requests and approves a grant at `approver`; returns the grant record.
async fn grant(approver: &Node, area: &str, until_ms: i64) -> wire::Record {
    let now = approver.clock().now_ms();
    let mut g = wire::Grant {
        department: "civil-affairs".into(),
        kinds: vec!["civil.v1.Resident".into()],
        clear_fields: vec!["civil.v1.Resident.id_number".into()],
        division_prefix: area.into(),
        matter_code: MATTER.into(),
        matter_name: "最低生活保障审核确认".into(),
        legal_basis: "社会救助暂行办法 第十一条".into(),
        valid_from_ms: now - 1000,
        valid_until_ms: until_ms,
        state: GrantState::Requested as i32,
        requested_by: "市中区民政局".into(),
        ..Default::default()
    };
    let requested = put_grant(approver, Vec::new(), 0, &g)
        .await
        .expect("request");
    g.state = GrantState::Approved as i32;
    g.approved_by = "市中区政务服务中心".into();
    put_grant(approver, requested.id, requested.version, &g)
        .await
        .expect("approve")
}

async fn put_grant(
    node: &Node,
    id: Vec<u8>,
    version: u64,
    g: &wire::Grant,
) -> Result<wire::Record, tiersync::node::NodeError> {
    Ok(node
        .put(PutInput {
            id,
            kind: "tiersync.v1.Grant".into(),
            payload: g.encode_to_vec(),
            expected_version: version,
            ..Default::default()
        })
        .await?
        .stored
        .record)
}

fn id_text(id: &[u8]) -> String {
    RecordId::from_bytes(id).unwrap().to_string()
}

/// A department system's client at `code`'s adapter port.
async fn dock(cluster: &Cluster, code: &str, dept: &str) -> AdapterServiceClient<Channel> {
    dock_as(cluster, code, code, dept).await
}

/// A client at `code`'s adapter port with a certificate for `dept` at
/// `cert_node`.
async fn dock_as(
    cluster: &Cluster,
    code: &str,
    cert_node: &str,
    dept: &str,
) -> AdapterServiceClient<Channel> {
    AdapterServiceClient::new(dock_channel(cluster, code, cert_node, dept).await)
}

/// A mutual-TLS channel to `code`'s adapter port as `dept` at `cert_node`.
async fn dock_channel(cluster: &Cluster, code: &str, cert_node: &str, dept: &str) -> Channel {
    let pki = cluster.dir().join("pki");
    let node = DivisionCode::parse(code).unwrap();
    let id = DepartmentId {
        node: DivisionCode::parse(cert_node).unwrap(),
        department: dept.into(),
    };
    let (cert, key) = department::issue_into_dir(&pki, &id, 30).expect("issue");
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    let config =
        department::client_config(&read(&pki.join("ca.pem")), &read(&cert), &read(&key)).unwrap();
    let addr = cluster.running(code).adapter_addr.expect("adapter port");
    tiersync::identity::transport::connect(&addr.to_string(), &node, config)
        .await
        .expect("connect")
}

fn purpose(clear: &[&str]) -> Option<adapter::Purpose> {
    Some(adapter::Purpose {
        matter_code: MATTER.into(),
        clear_fields: clear.iter().map(|s| s.to_string()).collect(),
    })
}

fn lookup(id_number: &str, purpose: Option<adapter::Purpose>) -> adapter::LookupRequest {
    adapter::LookupRequest {
        kind: "civil.v1.Resident".into(),
        key: "id_digest".into(),
        value: id_number.into(),
        purpose,
    }
}

async fn reads_audited(node: &Node, dept: &str) -> Vec<(String, String)> {
    node.audit_log()
        .audit_list(&AuditQuery {
            actor: dept.into(),
            action: "read".into(),
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.record_id, e.detail))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_department_reads_exactly_what_its_grant_allows() {
    let clock = ManualClock::starting_now();
    let mut cluster = Cluster::new();
    cluster.deployment.clock = clock.shared();
    for code in CHAIN {
        cluster.start(code).await;
    }
    let (city, county, street, community) = (
        cluster.node(CHAIN[0]),
        cluster.node(CHAIN[1]),
        cluster.node(CHAIN[2]),
        cluster.node(CHAIN[3]),
    );
    catalogue(&city, "civil-affairs", "民政局").await;
    catalogue(&city, "health", "卫生健康局").await;
    let first = put_resident(&community, 1).await;
    let second = put_resident(&community, 2).await;
    eventually("the residents reach the county", || async {
        holds(&county, &first.id).await && holds(&county, &second.id).await
    })
    .await;
    eventually("the catalogue reaches the county", || async {
        county
            .catalogue_entry("civil-affairs")
            .await
            .unwrap()
            .is_some()
    })
    .await;

    // Before any grant: refused, and the refusal says so.
    let mut civil = dock(&cluster, CHAIN[1], "civil-affairs").await;
    let e = civil
        .lookup(lookup(&resident(1).id_number, purpose(&[])))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("holds no grant"), "{}", e.message());

    let until = clock.now_ms() + 3_600_000;
    let g = grant(&county, "511102004", until).await;
    let grant_id = id_text(&g.id);

    // Who am I, and what may I do.
    let me = civil
        .who_am_i(adapter::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            me.node.as_str(),
            me.department.as_str(),
            me.department_name.as_str()
        ),
        ("511102", "civil-affairs", "民政局")
    );
    assert_eq!(me.grants.len(), 1);

    // A lookup under the grant: the ID number in clear (the grant names
    // it), the name and phone masked (it does not).
    let found = civil
        .lookup(lookup(&resident(1).id_number, purpose(&[])))
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(found.len(), 1);
    let shown = civil::v1::Resident::decode(&found[0].payload[..]).unwrap();
    assert_eq!(shown.id_number, resident(1).id_number);
    assert_eq!(shown.name.chars().count(), resident(1).name.chars().count());
    assert_ne!(shown.name, resident(1).name);
    assert!(shown.name.ends_with('*'));

    // Outside the grant: each refusal names the grant and what it lacks.
    let refused = |e: tonic::Status, lacks: &str| {
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(
            e.message().contains(&grant_id) && e.message().contains(lacks),
            "`{}` should name grant {grant_id} and `{lacks}`",
            e.message()
        );
    };
    let household = adapter::LookupRequest {
        kind: "civil.v1.Household".into(),
        key: "head_id_digest".into(),
        ..lookup(&resident(1).id_number, purpose(&[]))
    };
    refused(
        civil.lookup(household).await.unwrap_err(),
        "kind `civil.v1.Household`",
    );
    refused(
        civil
            .lookup(lookup(
                &resident(1).id_number,
                purpose(&["civil.v1.Resident.phone"]),
            ))
            .await
            .unwrap_err(),
        "field `civil.v1.Resident.phone` in clear",
    );
    let e = civil
        .lookup(lookup(
            &resident(1).id_number,
            Some(adapter::Purpose {
                matter_code: "OTHER-MATTER".into(),
                clear_fields: vec![],
            }),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("for matter `OTHER-MATTER`"),
        "{}",
        e.message()
    );
    refused(
        civil
            .subscribe(adapter::SubscribeRequest {
                subscription: "outside".into(),
                kinds: vec!["civil.v1.Resident".into()],
                purpose: purpose(&[]),
                division_prefix: "511102005".into(),
                page_size: 0,
            })
            .await
            .unwrap_err(),
        "area `511102005`",
    );
    // Another department has no grant at all.
    let mut health = dock(&cluster, CHAIN[1], "health").await;
    let e = health
        .lookup(lookup(&resident(1).id_number, purpose(&[])))
        .await
        .unwrap_err();
    assert!(
        e.message().contains("department `health` holds no grant"),
        "{}",
        e.message()
    );

    // Get by id: the same grant, the same masking.
    let got = civil
        .get(adapter::GetRequest {
            id: first.id.clone(),
            purpose: purpose(&[]),
        })
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert_eq!(
        civil::v1::Resident::decode(&got.payload[..])
            .unwrap()
            .id_number,
        resident(1).id_number
    );
    assert!(got.proof.is_empty(), "the owner's proof is not sent");

    // Every record shown was audited, with the grant and the purpose.
    let audited = reads_audited(&county, "civil-affairs").await;
    assert_eq!(audited.len(), 2, "{audited:?}");
    for (record, detail) in &audited {
        assert_eq!(*record, id_text(&first.id));
        assert_eq!(*detail, format!("grant {grant_id} matter {MATTER}"));
    }

    // A department-scoped record: shown to its department only.
    let scoped = community
        .put(PutInput {
            kind: "civil.v1.Resident".into(),
            payload: resident(3).encode_to_vec(),
            scope: Some(wire::Scope {
                up_to: wire::Tier::City as i32,
                down_to: vec![],
                departments: vec!["health".into()],
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .stored
        .record;
    eventually("the scoped resident reaches the county", || async {
        holds(&county, &scoped.id).await
    })
    .await;
    let found = civil
        .lookup(lookup(&resident(3).id_number, purpose(&[])))
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(
        found.is_empty(),
        "a health-only record shown to civil affairs"
    );
    let operator_view = county
        .reads(Reader::Operator)
        .get(&scoped.id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        operator_view.payload.is_empty(),
        "the county's operator sees the content"
    );

    // The same department at the street, under the same grant (it reached
    // the street: its area is the street's subtree).
    let mut at_street = dock(&cluster, CHAIN[2], "civil-affairs").await;
    eventually("the grant reaches the street", || async {
        at_street
            .clone()
            .lookup(lookup(&resident(2).id_number, purpose(&[])))
            .await
            .is_ok_and(|r| r.into_inner().records.len() == 1)
    })
    .await;

    // Withdrawn at the county: the street refuses within a round.
    let mut withdrawn = wire::Grant::decode(&g.payload[..]).unwrap();
    withdrawn.state = GrantState::Withdrawn as i32;
    withdrawn.withdrawn_reason = "审核工作结束".into();
    put_grant(&county, g.id.clone(), g.version, &withdrawn)
        .await
        .expect("withdraw");
    eventually("the withdrawal takes effect at the street", || async {
        at_street
            .clone()
            .lookup(lookup(&resident(2).id_number, purpose(&[])))
            .await
            .is_err_and(|e| {
                e.code() == Code::PermissionDenied
                    && e.message().contains("withdrawn (审核工作结束)")
            })
    })
    .await;
    let e = civil
        .lookup(lookup(&resident(1).id_number, purpose(&[])))
        .await
        .unwrap_err();
    assert!(e.message().contains("withdrawn"), "{}", e.message());

    // A fresh grant that expires: refused once the nodes' clock passes it,
    // with no record travelling.
    let short = grant(&county, "511102004", clock.now_ms() + 60_000).await;
    eventually("the new grant reaches the street", || async {
        at_street
            .clone()
            .lookup(lookup(&resident(2).id_number, purpose(&[])))
            .await
            .is_ok()
    })
    .await;
    clock.advance(Duration::from_secs(120));
    for client in [&mut civil, &mut at_street] {
        let e = client
            .lookup(lookup(&resident(2).id_number, purpose(&[])))
            .await
            .unwrap_err();
        assert!(e.message().contains("expired at"), "{}", e.message());
    }
    assert!(holds(&street, &short.id).await);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_resumes_after_its_last_acknowledgement() {
    let mut cluster = Cluster::new();
    for code in CHAIN {
        cluster.start(code).await;
    }
    let (city, county, community) = (
        cluster.node(CHAIN[0]),
        cluster.node(CHAIN[1]),
        cluster.node(CHAIN[3]),
    );
    catalogue(&city, "civil-affairs", "民政局").await;
    eventually("the catalogue reaches the county", || async {
        county
            .catalogue_entry("civil-affairs")
            .await
            .unwrap()
            .is_some()
    })
    .await;
    grant(&county, "511102", i64::MAX).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(put_resident(&community, n).await.id);
    }
    eventually("the residents reach the county", || async {
        let mut all = true;
        for id in &ids {
            all &= holds(&county, id).await;
        }
        all
    })
    .await;

    let request = || adapter::SubscribeRequest {
        subscription: "dibao".into(),
        kinds: vec!["civil.v1.Resident".into()],
        purpose: purpose(&[]),
        division_prefix: String::new(),
        page_size: 2,
    };
    let mut civil = dock(&cluster, CHAIN[1], "civil-affairs").await;
    let mut stream = civil.subscribe(request()).await.unwrap().into_inner();
    let mut got = Vec::new();
    while got.len() < 5 {
        let page = stream.message().await.unwrap().expect("page");
        assert!(page.deliveries.len() <= 2);
        for d in page.deliveries {
            assert!(d.seq <= page.through_seq);
            got.push((d.seq, d.record.unwrap().id));
        }
    }
    let order: Vec<Vec<u8>> = got.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(order, ids, "every resident, once, in log order");
    drop(stream);
    // The department processed four of them before it stopped.
    let acked = civil
        .acknowledge(adapter::AcknowledgeRequest {
            subscription: "dibao".into(),
            through_seq: got[3].0,
        })
        .await
        .unwrap()
        .into_inner()
        .acknowledged_through;
    assert_eq!(acked, got[3].0);
    // An older acknowledgement does not move the cursor back.
    let again = civil
        .acknowledge(adapter::AcknowledgeRequest {
            subscription: "dibao".into(),
            through_seq: got[0].0,
        })
        .await
        .unwrap()
        .into_inner()
        .acknowledged_through;
    assert_eq!(again, acked);

    // Restarted (a new connection): resumes after the acknowledgement.
    let mut civil = dock(&cluster, CHAIN[1], "civil-affairs").await;
    let mut stream = civil.subscribe(request()).await.unwrap().into_inner();
    let mut again: Vec<Vec<u8>> = Vec::new();
    loop {
        let page = stream.message().await.unwrap().expect("page");
        again.extend(page.deliveries.into_iter().map(|d| d.record.unwrap().id));
        if page.caught_up {
            break;
        }
    }
    assert_eq!(
        again,
        ids[4..],
        "only what was not acknowledged comes again"
    );
    // New records arrive on the open stream.
    let late = put_resident(&community, 9).await;
    let page = loop {
        let page = stream.message().await.unwrap().expect("page");
        if !page.deliveries.is_empty() {
            break page;
        }
    };
    assert_eq!(page.deliveries[0].record.as_ref().unwrap().id, late.id);
    let e = civil
        .acknowledge(adapter::AcknowledgeRequest {
            subscription: "dibao".into(),
            through_seq: u64::MAX / 2,
        })
        .await
        .unwrap_err();
    assert!(
        e.message().contains("past this node's newest change"),
        "{}",
        e.message()
    );

    // A certificate for another node is refused here.
    let mut elsewhere = dock_as(&cluster, CHAIN[1], CHAIN[2], "civil-affairs").await;
    let e = elsewhere
        .who_am_i(adapter::WhoAmIRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message()
            .contains("for department `civil-affairs` at node 511102004; this is node 511102"),
        "{}",
        e.message()
    );
    cluster.shutdown().await;
}

/// The services reflection lists on a port, asked with v1 and with v1alpha
/// (older grpcurl); both must agree.
async fn reflected(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::{v1, v1alpha};
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("no service list");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();

    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut answers = alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("no v1alpha service list");
    };
    let mut alpha_names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    alpha_names.sort();
    assert_eq!(names, alpha_names, "v1 and v1alpha list the same services");
    names
}

async fn health(channel: Channel, service: &str) -> i32 {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    match HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
    {
        Ok(r) => r.into_inner().status,
        Err(e) => panic!("health of {service}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_port_reflects_and_reports_only_its_own_services() {
    let cluster = Cluster::with(&CHAIN[..2]).await;
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    let common = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    let expect = |own: &[&str]| {
        let mut all: Vec<String> = common.iter().chain(own).map(|s| s.to_string()).collect();
        all.sort();
        all
    };

    let channel = dock_channel(&cluster, CHAIN[1], CHAIN[1], "civil-affairs").await;
    assert_eq!(
        reflected(channel.clone()).await,
        expect(&["tiersync.adapter.v1.AdapterService"])
    );
    assert_eq!(
        health(channel, "tiersync.adapter.v1.AdapterService").await,
        serving
    );

    let peer = tiersync_e2e::fake_channel(&cluster, "511102004", CHAIN[1]).await;
    assert_eq!(
        reflected(peer.clone()).await,
        expect(&["tiersync.v1.Join", "tiersync.v1.Sync"])
    );
    assert_eq!(health(peer.clone(), "tiersync.v1.Sync").await, serving);
    let unknown = tonic_health::pb::health_client::HealthClient::new(peer)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tiersync.adapter.v1.AdapterService".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        unknown.code(),
        Code::NotFound,
        "the peer port serves no adapter API"
    );

    let local = Channel::from_shared(format!(
        "http://{}",
        cluster.running(CHAIN[1]).api_addr.unwrap()
    ))
    .unwrap()
    .connect()
    .await
    .unwrap();
    assert_eq!(
        reflected(local.clone()).await,
        expect(&["tiersync.v1.LocalApi"])
    );
    assert_eq!(health(local, "tiersync.v1.LocalApi").await, serving);
    cluster.shutdown().await;
}
