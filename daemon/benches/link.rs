//! Link benchmark: prints figures, asserts nothing (timing targets belong
//! here, never in tests).
//!
//! 1. Throughput: a community holds a backlog of N records of about 1 KB; its
//!    street starts empty. Time from the community's start until the street
//!    has applied all of them, over mutual TLS, SQLite at both ends.
//! 2. Latency: community → street → county → city with residents put at the
//!    community at a steady rate; p50/p99 from put to applied at the city.
//! 3. Department delivery: the same backlog delivered to one department
//!    subscribed at the community's adapter port (grant checked, every
//!    personal field masked but the one the grant names, every record
//!    audited, acknowledged page by page), as a ratio of the link's rate
//!    in the same run; and the cost of the grant check and audit entry per
//!    read (a lookup as a department against the same lookup as the
//!    operator).
//!
//! `cargo bench -p tiersync --bench link` (env: BENCH_RECORDS, BENCH_RATE,
//! BENCH_SECONDS, BENCH_ONLY=verified|unverified|latency|department).
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use tiersync::demo::{Deployment, numbered_id_number};
use tiersync::node::{PutInput, Reader};
use tiersync::store::ApplyBatch;
use tiersync_proto::pb::civil;
use tiersync_proto::types::{RecordId, Tier};
use tiersync_proto::wire;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A resident whose notes pad the encoded record to about 1 KB.
fn kilobyte_record(n: usize, owner: &str, key: &tiersync_proto::types::DigestKey) -> wire::Record {
    let id_number = numbered_id_number(n as u64);
    let resident = civil::v1::Resident {
        name: format!("基准居民{n}"),
        id_number: id_number.clone(),
        address_code: owner.into(),
        address: "乐山市市中区大佛街道篦子街".into(),
        notes: "x".repeat(820),
        ..Default::default()
    };
    let scope = wire::Scope {
        up_to: Tier::City.to_wire() as i32,
        down_to: vec![],
        departments: vec![],
    };
    let digest = key.digest(&tiersync_proto::types::ResidentId::parse(&id_number).unwrap());
    wire::Record {
        id: RecordId::new().as_bytes().to_vec(),
        kind: "civil.v1.Resident".into(),
        owner: Some(wire::Owner {
            node: owner.into(),
            department: String::new(),
        }),
        version: 1,
        updated_at: 1,
        scope: Some(scope.clone()),
        deleted: false,
        payload: resident.encode_to_vec().into(),
        keys: if std::env::var("BENCH_NOKEYS").is_ok() {
            vec![]
        } else {
            vec![wire::NaturalKey {
                name: "id_digest".into(),
                value: digest,
            }]
        },
        reach: Some(scope),
        withdrawn: false,
        ..Default::default()
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1].as_secs_f64()
        * 1000.0
}

/// One link catching up on a backlog of `records` signed records, with the
/// receiver checking every signature (`verify`) or not.
async fn throughput(records: usize, verify: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = Deployment::create(dir.path())?;
    let key_hex = std::fs::read_to_string(dir.path().join("pki/deployment.key"))?;
    let key = tiersync_proto::types::DigestKey::from_hex(key_hex.trim())?;
    // Start the chain once so every node has its port (and the community
    // has published its key), then stop it so the backlog can be loaded into
    // the community while nothing drains it.
    for node in d
        .start_all(&["5111", "511102", "511102004", "511102004001"])
        .await?
        .into_iter()
        .rev()
    {
        node.shutdown().await;
    }
    let community = d.start("511102004001").await?;
    let sample = kilobyte_record(0, "511102004001", &key);
    let load = Instant::now();
    let (signing, signed_len, proof_len) = load_backlog(&community.node, records, &key).await?;
    let load_s = load.elapsed().as_secs_f64();
    if verify {
        println!(
            "backlog: {records} signed records of {signed_len} bytes each ({proof_len} of them proof, batches of 1,000) loaded into the community in {load_s:.2} s ({:.0}/s); signing alone {:.0} records/s",
            records as f64 / load_s,
            records as f64 / signing.as_secs_f64()
        );
    }
    community.shutdown().await;

    // Parent up first, then the child: the clock starts when the child starts.
    let street = d
        .start_tuned("511102004", |c| c.sync.verify_origin = verify)
        .await?;
    let already = street.node.head_seq().await?;
    let start = Instant::now();
    let community = d.start("511102004001").await?;
    let mut head = street.node.subscribe_head();
    // The street already holds what the community had before the backlog.
    let target = already + records as u64;
    loop {
        if *head.borrow_and_update() >= target {
            break;
        }
        tokio::time::timeout(Duration::from_secs(120), head.changed()).await??;
    }
    let secs = start.elapsed().as_secs_f64();
    *LAST_LINK_RATE.lock().unwrap() = Some(records as f64 / secs);
    let rejected = street.node.quarantined_count().await?;
    println!(
        "link throughput, signatures {}: {records} records caught up over one mutual-TLS link in {secs:.2} s = {:.0} records/s ({:.1} MB/s), {rejected} rejected",
        if verify { "verified" } else { "NOT verified" },
        records as f64 / secs,
        records as f64 * sample.encoded_len() as f64 / secs / 1e6
    );
    community.shutdown().await;
    street.shutdown().await;
    Ok(())
}

/// Loads `records` signed kilobyte residents owned by `node` into its
/// store, in batches of 1,000. Returns the time spent signing, and one
/// signed record's encoded and proof lengths.
async fn load_backlog(
    node: &tiersync::node::Node,
    records: usize,
    key: &tiersync_proto::types::DigestKey,
) -> anyhow::Result<(Duration, usize, usize)> {
    let owner = node.code().to_string();
    let mut signing = Duration::ZERO;
    let (mut signed_len, mut proof_len) = (0, 0);
    for chunk in 0..records.div_ceil(1000) {
        let mut batch: Vec<_> = (chunk * 1000..((chunk + 1) * 1000).min(records))
            .map(|n| kilobyte_record(n, &owner, key))
            .collect();
        let t = Instant::now();
        node.identity().sign(&mut batch)?;
        signing += t.elapsed();
        if chunk == 0 {
            signed_len = batch[0].encoded_len();
            proof_len = batch[0].proof.len();
        }
        node.store_for_tests()
            .apply(ApplyBatch {
                via: String::new(),
                cursor: None,
                records: batch
                    .into_iter()
                    .map(tiersync::store::Encoded::new)
                    .collect(),
                refused: vec![],
                audit: Vec::new(),
            })
            .await?;
    }
    Ok((signing, signed_len, proof_len))
}

/// Delivery to one subscribed department, against the link's rate (run
/// `throughput` in the same process for the peer figure), and the cost of
/// the grant check and audit entry per read.
async fn department(records: usize) -> anyhow::Result<()> {
    use tiersync::identity::department::{DepartmentId, client_config, issue_into_dir};
    use tiersync_proto::pb::tiersync::adapter::v1 as adapter;
    use tiersync_proto::types::DivisionCode;

    let link_rate = link_rate(records).await?;
    let dir = tempfile::tempdir()?;
    let d = Deployment::create(dir.path())?;
    let key_hex = std::fs::read_to_string(dir.path().join("pki/deployment.key"))?;
    let key = tiersync_proto::types::DigestKey::from_hex(key_hex.trim())?;
    let code = "511102004001";
    let mut chain = d
        .start_all(&["5111", "511102", "511102004", code])
        .await?
        .into_iter();
    let city = chain.next().expect("city");
    let rest: Vec<_> = chain.collect();
    let community = rest.last().expect("community");
    city.node
        .put(PutInput {
            kind: "tiersync.v1.Department".into(),
            payload: wire::Department {
                code: "civil-affairs".into(),
                name: "民政局".into(),
                description: String::new(),
            }
            .encode_to_vec(),
            ..Default::default()
        })
        .await?;
    while community
        .node
        .catalogue_entry("civil-affairs")
        .await?
        .is_none()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let now = community.node.clock().now_ms();
    let mut grant = wire::Grant {
        department: "civil-affairs".into(),
        kinds: vec!["civil.v1.Resident".into()],
        clear_fields: vec!["civil.v1.Resident.id_number".into()],
        division_prefix: code.into(),
        matter_code: "BENCH-1".into(),
        legal_basis: "bench".into(),
        valid_from_ms: now - 1000,
        valid_until_ms: now + 86_400_000,
        state: wire::GrantState::Requested as i32,
        ..Default::default()
    };
    let requested = community
        .node
        .put(PutInput {
            kind: "tiersync.v1.Grant".into(),
            payload: grant.encode_to_vec(),
            ..Default::default()
        })
        .await?
        .stored
        .record;
    grant.state = wire::GrantState::Approved as i32;
    grant.approved_by = "bench".into();
    community
        .node
        .put(PutInput {
            id: requested.id,
            kind: "tiersync.v1.Grant".into(),
            payload: grant.encode_to_vec(),
            expected_version: requested.version,
            ..Default::default()
        })
        .await?;
    load_backlog(&community.node, records, &key).await?;

    let pki = dir.path().join("pki");
    let node = DivisionCode::parse(code)?;
    let id = DepartmentId {
        node: node.clone(),
        department: "civil-affairs".into(),
    };
    let (cert, key_file) = issue_into_dir(&pki, &id, 30)?;
    let config = client_config(
        &std::fs::read_to_string(pki.join("ca.pem"))?,
        &std::fs::read_to_string(cert)?,
        &std::fs::read_to_string(key_file)?,
    )
    .map_err(anyhow::Error::msg)?;
    let addr = community.adapter_addr.expect("adapter port").to_string();
    let channel = tiersync::identity::transport::connect(&addr, &node, config).await?;
    let mut client = adapter::adapter_service_client::AdapterServiceClient::new(channel)
        .max_decoding_message_size(64 << 20);
    let purpose = adapter::Purpose {
        matter_code: "BENCH-1".into(),
        clear_fields: vec![],
    };
    let start = Instant::now();
    let mut stream = client
        .subscribe(adapter::SubscribeRequest {
            subscription: "bench".into(),
            kinds: vec!["civil.v1.Resident".into()],
            purpose: Some(purpose.clone()),
            division_prefix: String::new(),
            page_size: 1000,
        })
        .await?
        .into_inner();
    let mut delivered = 0;
    while delivered < records {
        let page = stream.message().await?.expect("page");
        delivered += page.deliveries.len();
        client
            .acknowledge(adapter::AcknowledgeRequest {
                subscription: "bench".into(),
                through_seq: page.through_seq,
            })
            .await?;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(stream);
    let rate = records as f64 / secs;
    println!(
        "department delivery: {records} residents to one subscribed department (masked, audited, acknowledged per page of 1,000) in {secs:.2} s = {rate:.0} records/s; link in the same run {link_rate:.0} records/s: ratio {:.2} (target >= 0.80)",
        rate / link_rate
    );

    // The grant check and audit entry per read: the same lookup as the
    // department and as the operator, in process.
    let reads = 2_000;
    let ids: Vec<String> = (0..reads).map(|n| numbered_id_number(n as u64)).collect();
    let n = &community.node;
    let t = Instant::now();
    for id in &ids {
        let (k, v) = n.lookup_key("civil.v1.Resident", "id_number", id)?;
        n.reads(Reader::Operator)
            .lookup("civil.v1.Resident", &k, &v)
            .await?;
    }
    let operator = t.elapsed().as_secs_f64() / reads as f64;
    let kinds = ["civil.v1.Resident".to_owned()];
    let want = tiersync::departments::grant::Want {
        kinds: &kinds,
        clear_fields: &[],
        area: None,
        matter_code: "BENCH-1",
        submit: false,
    };
    let t = Instant::now();
    for id in &ids {
        let access = n.access("civil-affairs", &want).await?;
        let (k, v) = n.lookup_key("civil.v1.Resident", "id_number", id)?;
        n.reads(Reader::Department(access))
            .lookup("civil.v1.Resident", &k, &v)
            .await?;
    }
    let department = t.elapsed().as_secs_f64() / reads as f64;
    println!(
        "read by natural key, in process, {reads} reads: operator {:.0} µs, department {:.0} µs: the grant check and audit entry cost {:.0} µs a read",
        operator * 1e6,
        department * 1e6,
        (department - operator) * 1e6
    );
    for node in rest.into_iter().rev() {
        node.shutdown().await;
    }
    city.shutdown().await;
    Ok(())
}

/// The link's rate in this run (`throughput`, signatures verified).
async fn link_rate(records: usize) -> anyhow::Result<f64> {
    throughput(records, true).await?;
    LAST_LINK_RATE
        .lock()
        .unwrap()
        .ok_or_else(|| anyhow::anyhow!("the link run recorded no rate"))
}

/// The rate the last `throughput` run measured.
static LAST_LINK_RATE: Mutex<Option<f64>> = Mutex::new(None);

async fn latency(rate: u64, seconds: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = Deployment::create(dir.path())?;
    let mut chain = d
        .start_all(&["5111", "511102", "511102004", "511102004001"])
        .await?
        .into_iter();
    let (city, county, street, community) = (
        chain.next().expect("city"),
        chain.next().expect("county"),
        chain.next().expect("street"),
        chain.next().expect("community"),
    );

    let arrived: Arc<Mutex<HashMap<Vec<u8>, Instant>>> = Arc::default();
    let watcher = {
        let node = city.node.clone();
        let arrived = arrived.clone();
        tokio::spawn(async move {
            let mut head = node.subscribe_head();
            let mut after = 0;
            loop {
                let changes = node
                    .reads(Reader::Node)
                    .changes_after(after, 1000)
                    .await
                    .unwrap();
                if changes.is_empty() {
                    head.borrow_and_update();
                    if head.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                let now = Instant::now();
                let mut map = arrived.lock().unwrap();
                for (seq, record) in changes {
                    after = seq;
                    // Only the residents put below, not the nodes' keys or
                    // the trust list.
                    if record.kind == "civil.v1.Resident" {
                        map.insert(record.id, now);
                    }
                }
            }
        })
    };

    let total = (rate * seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut sent: Vec<(Vec<u8>, Instant)> = Vec::with_capacity(total);
    let begin = Instant::now();
    let mut puts = tokio::task::JoinSet::new();
    for n in 0..total {
        // open loop: each put is issued on schedule, however long earlier
        // ones take
        let due = begin + interval * n as u32;
        tokio::time::sleep_until(due.into()).await;
        let node = community.node.clone();
        puts.spawn(async move {
            let resident = civil::v1::Resident {
                name: format!("居民{n}"),
                id_number: numbered_id_number(n as u64),
                notes: "y".repeat(200),
                ..Default::default()
            };
            let at = Instant::now();
            let r = node
                .put(PutInput {
                    kind: "civil.v1.Resident".into(),
                    payload: resident.encode_to_vec(),
                    ..Default::default()
                })
                .await
                .expect("put");
            (r.stored.record.id, at)
        });
        while let Some(done) = puts.try_join_next() {
            sent.push(done?);
        }
    }
    while let Some(done) = puts.join_next().await {
        sent.push(done?);
    }
    let offered = total as f64 / begin.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrived.lock().unwrap().len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let map = arrived.lock().unwrap().clone();
    let mut lat: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, at)| map.get(id).map(|t| t.saturating_duration_since(*at)))
        .collect();
    lat.sort();
    println!(
        "three-hop latency (community → street → county → city) at {offered:.0} puts/s for {seconds} s: {} of {total} arrived, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
    watcher.abort();
    for n in [community, street, county, city] {
        n.shutdown().await;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        tiersync::identity::tls::install_crypto_provider();
        let records = env("BENCH_RECORDS", 100_000) as usize;
        // BENCH_ONLY=verified|unverified|latency runs one part (profiling).
        let only = std::env::var("BENCH_ONLY").unwrap_or_default();
        let runs = |part: &str| only.is_empty() || only == part;
        if runs("verified") {
            throughput(records, true).await?;
        }
        if runs("unverified") {
            throughput(records, false).await?;
        }
        if runs("latency") {
            latency(env("BENCH_RATE", 1000), env("BENCH_SECONDS", 10)).await?;
        }
        if runs("department") {
            department(records).await?;
        }
        anyhow::Ok(())
    })
}
