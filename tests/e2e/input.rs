//! Bad input to the local API is answered with an error that names what is
//! wrong, never with an empty result or a record stored as given.

use prost::Message;
use tiersync_e2e::Cluster;
use tiersync_proto::pb::civil;
use tiersync_proto::wire::{self, local_api_client::LocalApiClient};

async fn api(cluster: &Cluster, code: &str) -> LocalApiClient<tonic::transport::Channel> {
    LocalApiClient::connect(format!(
        "http://{}",
        cluster.running(code).api_addr.unwrap()
    ))
    .await
    .unwrap()
}

/// `check(status, code, message start)`.
fn check(result: Result<impl std::fmt::Debug, tonic::Status>, code: tonic::Code, starts: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(
        status.message().starts_with(starts),
        "`{}` does not start with `{starts}`",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_codes_must_be_community_division_codes() {
    let cluster = Cluster::with(&["5111", "511102", "511102004", "511102004001"]).await;
    let mut api = api(&cluster, "511102004001").await;
    let resident = |address_code: &str| civil::v1::Resident {
        name: "张三".into(),
        id_number: "11010519491231002X".into(),
        address_code: address_code.into(),
        ..Default::default()
    };
    let put = |payload: Vec<u8>, kind: &str| wire::PutRequest {
        kind: kind.into(),
        payload,
        ..Default::default()
    };
    for (code, expected) in [
        ("123", "invalid address_code: "),
        ("51110200400x", "invalid address_code: "),
        (
            "511102004",
            "invalid address_code: `511102004` is a street code; an address is a community's 12-digit code",
        ),
    ] {
        let r = api
            .put(put(resident(code).encode_to_vec(), "civil.v1.Resident"))
            .await;
        check(r, tonic::Code::InvalidArgument, expected);
        let household = civil::v1::Household {
            address_code: code.into(),
            members: 2,
            ..Default::default()
        };
        let r = api
            .put(put(household.encode_to_vec(), "civil.v1.Household"))
            .await;
        check(r, tonic::Code::InvalidArgument, expected);
    }
    // a community's code, or none, is accepted
    for code in ["511102004001", ""] {
        let mut r = resident(code);
        r.id_number = if code.is_empty() {
            "110105194912310011".into()
        } else {
            r.id_number
        };
        api.put(put(r.encode_to_vec(), "civil.v1.Resident"))
            .await
            .unwrap();
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_or_lookup_that_cannot_match_is_an_error_not_an_empty_result() {
    let cluster = Cluster::with(&["5111"]).await;
    let mut api = api(&cluster, "5111").await;
    let list = |kind: &str| wire::ListRequest {
        kind: kind.into(),
        ..Default::default()
    };
    let lookup = |kind: &str, key: &str| wire::LookupRequest {
        kind: kind.into(),
        key: key.into(),
        value: "x".into(),
    };
    check(
        api.list(list("civil.v1.Residnet")).await,
        tonic::Code::InvalidArgument,
        "unknown kind `civil.v1.Residnet`; this node accepts: ",
    );
    check(
        api.lookup(lookup("civil.v1.Residnet", "id_digest")).await,
        tonic::Code::InvalidArgument,
        "unknown kind `civil.v1.Residnet`",
    );
    check(
        api.lookup(lookup("civil.v1.Resident", "name")).await,
        tonic::Code::InvalidArgument,
        "invalid key: `civil.v1.Resident` records carry no key `name`; look them up by `id_digest`",
    );
    check(
        api.lookup(lookup("civil.v1.Household", "head_name")).await,
        tonic::Code::InvalidArgument,
        "invalid key: `civil.v1.Household` records carry no key `head_name`; look them up by `head_id_digest`",
    );
    check(
        api.lookup(lookup("gov.v1.Notice", "title")).await,
        tonic::Code::InvalidArgument,
        "invalid key: `gov.v1.Notice` records carry no natural key to look up by",
    );
    // what can match still answers, empty or not
    let all = api.list(list("")).await.unwrap().into_inner();
    assert!(!all.records.is_empty(), "the city holds its own keys");
    let none = api
        .lookup(lookup("civil.v1.Resident", "id_digest"))
        .await
        .unwrap()
        .into_inner();
    assert!(none.records.is_empty());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_record_stays_deleted() {
    let cluster = Cluster::with(&["5111"]).await;
    let mut api = api(&cluster, "5111").await;
    let resident = civil::v1::Resident {
        name: "张三".into(),
        id_number: "11010519491231002X".into(),
        ..Default::default()
    };
    let put = |id: Vec<u8>, expected_version: u64, delete: bool| wire::PutRequest {
        id,
        kind: "civil.v1.Resident".into(),
        payload: if delete {
            Vec::new()
        } else {
            resident.encode_to_vec()
        },
        expected_version,
        delete,
        ..Default::default()
    };
    let created = api
        .put(put(Vec::new(), 0, false))
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    let deleted = api
        .put(put(created.id.clone(), 1, true))
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert!(deleted.deleted && deleted.version == 2);
    // neither an update nor a second delete brings it back or moves it on
    for delete in [false, true] {
        check(
            api.put(put(created.id.clone(), 2, delete)).await,
            tonic::Code::InvalidArgument,
            "invalid id: record ",
        );
    }
    let held = api
        .get(wire::GetRequest { id: created.id })
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert!(held.deleted && held.version == 2, "{held:?}");
    // the same resident may be put again, as a new record
    api.put(put(Vec::new(), 0, false)).await.unwrap();
    cluster.shutdown().await;
}
