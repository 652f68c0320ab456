//! City benchmark: the scale of a city on PostgreSQL. Prints figures,
//! asserts nothing (timing targets belong here, never in tests).
//!
//! A county (SQLite) holds a backlog of N residents of about 1 KB, each with
//! its own natural key (the keyed digest of a distinct ID number); its city
//! runs on PostgreSQL, empty. Timed from the county's start until the city
//! has applied all N over their mutual-TLS link. Then, on the loaded city
//! store: p50/p99 of get-by-id, of lookup-by-natural-key and of a change-log
//! page (1,000 changes after a random seq), for random records.
//!
//! `cargo bench -p tiersync --bench city` (env: BENCH_RECORDS, default
//! 1,000,000; BENCH_READS, default 10,000; TIERSYNC_TEST_PG, the server, by
//! default `postgres://postgres@127.0.0.1:5432/test`, where the city gets a
//! scratch schema). Without a server it prints a skip line.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use prost::Message;
use tiersync::demo::Deployment;
use tiersync::node::Reader;
use tiersync::store::ApplyBatch;
use tiersync::store::postgres::{mask_url, scratch::ScratchSchema};
use tiersync_proto::pb::civil;
use tiersync_proto::types::{DigestKey, RecordId, ResidentId, Tier};
use tiersync_proto::wire;

const CITY: &str = "5111";
const COUNTY: &str = "511102";
/// The community the residents live in (their address code).
const ADDRESS: &str = "511102004001";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident `n`, padded to about 1 KB, with its natural key.
fn resident(n: usize, key: &DigestKey) -> wire::Record {
    let number = tiersync::demo::numbered_id_number(n as u64);
    let digest = key.digest(&ResidentId::parse(&number).expect("valid ID number"));
    let payload = civil::v1::Resident {
        name: format!("基准居民{n}"),
        id_number: number,
        address_code: ADDRESS.into(),
        address: "乐山市市中区大佛街道篦子街".into(),
        notes: "x".repeat(820),
        ..Default::default()
    };
    let scope = wire::Scope {
        up_to: Tier::City.to_wire() as i32,
        down_to: vec![],
        departments: vec![],
    };
    wire::Record {
        id: RecordId::new().as_bytes().to_vec(),
        kind: "civil.v1.Resident".into(),
        owner: Some(wire::Owner {
            // The county's own records: it signs them as their owner.
            node: COUNTY.into(),
            department: String::new(),
        }),
        version: 1,
        updated_at: 1,
        scope: Some(scope.clone()),
        deleted: false,
        payload: payload.encode_to_vec().into(),
        keys: vec![wire::NaturalKey {
            name: "id_digest".into(),
            value: digest,
        }],
        reach: Some(scope),
        withdrawn: false,
        ..Default::default()
    }
}

fn ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1].as_secs_f64()
        * 1000.0
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} reads",
        ms(&samples, 0.5),
        ms(&samples, 0.99),
        ms(&samples, 1.0),
        samples.len()
    );
}

/// Points node `code`'s written config at `url`.
fn use_storage(d: &Deployment, code: &str, url: &str) -> anyhow::Result<()> {
    let path = d.config_path(code);
    let text = std::fs::read_to_string(&path)?;
    std::fs::write(
        &path,
        text.replace(
            &format!("path = \"{code}.db\""),
            &format!("path = \"{url}\""),
        ),
    )?;
    Ok(())
}

async fn city(records: usize, reads: usize) -> anyhow::Result<()> {
    let Some(schema) = ScratchSchema::create("city bench").await else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let d = Deployment::create(dir.path())?;
    let key_hex = std::fs::read_to_string(dir.path().join("pki/deployment.key"))?;
    let key = DigestKey::from_hex(key_hex.trim())?;

    d.write_config(CITY, None)?;
    use_storage(&d, CITY, &schema.url())?;
    let city = d.start(CITY).await?;
    d.write_config(COUNTY, city.peer_addr)?;
    // Load the backlog into the county while nothing drains it.
    city.shutdown().await;
    let county = d.start(COUNTY).await?;
    let mut ids = Vec::with_capacity(records);
    let mut digests = Vec::with_capacity(records);
    let sample = resident(0, &key);
    let load = Instant::now();
    for chunk in 0..records.div_ceil(1000) {
        let mut batch: Vec<_> = (chunk * 1000..((chunk + 1) * 1000).min(records))
            .map(|n| resident(n, &key))
            .collect();
        // Signed by the county, as its own writes are.
        county.node.identity().sign(&mut batch)?;
        for r in &batch {
            ids.push(r.id.clone());
            digests.push(r.keys[0].value.clone());
        }
        county
            .node
            .store_for_tests()
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
    let load_s = load.elapsed().as_secs_f64();
    println!(
        "backlog: {records} residents of {} bytes each loaded into the SQLite county in {load_s:.1} s ({:.0}/s)",
        sample.encoded_len(),
        records as f64 / load_s
    );
    county.shutdown().await;

    // City up first, then the county: the clock starts with the county.
    let city = d.start(CITY).await?;
    let base = city.node.head_seq().await?;
    let last = ids.last().cloned().unwrap_or_default();
    let start = Instant::now();
    let county = d.start(COUNTY).await?;
    let mut head = city.node.subscribe_head();
    loop {
        // Records apply in the county's log order: the last one means all.
        if *head.borrow_and_update() >= base + records as u64
            && city
                .node
                .reads(Reader::Operator)
                .get(&last)
                .await?
                .is_some()
        {
            break;
        }
        // A refusal means the figures would measure nothing: stop and say why.
        if let Some(q) = city.node.quarantine_list(1).await?.first() {
            anyhow::bail!("the city refused records, the first because: {}", q.reason);
        }
        tokio::time::timeout(Duration::from_secs(300), head.changed()).await??;
    }
    let secs = start.elapsed().as_secs_f64();
    county.shutdown().await;
    let store = city.node.store_for_tests().clone();
    println!(
        "city load: {records} residents from a SQLite county into the PostgreSQL city ({}) over one mutual-TLS link in {secs:.1} s = {:.0} records/s; city holds {}, {} rejected",
        mask_url(&schema.url()),
        records as f64 / secs,
        store.count().await?,
        store.quarantine_count().await?
    );

    let picks: Vec<usize> = (0..reads).map(|_| rand::random_range(0..records)).collect();
    let mut get = Vec::with_capacity(reads);
    for &i in &picks {
        let at = Instant::now();
        let found = store.get(&ids[i]).await?;
        get.push(at.elapsed());
        assert!(found.is_some(), "record {i} is at the city");
    }
    report("get-by-id on the loaded city", get);
    let mut lookup = Vec::with_capacity(reads);
    for &i in &picks {
        let at = Instant::now();
        let found = store
            .lookup("civil.v1.Resident", "id_digest", &digests[i])
            .await?;
        lookup.push(at.elapsed());
        assert_eq!(found.len(), 1, "resident {i} found once by its key");
    }
    report("lookup-by-natural-key on the loaded city", lookup);
    let mut scan = Vec::with_capacity(reads / 10);
    for &i in picks.iter().take(reads / 10) {
        let at = Instant::now();
        let page = store.changes_after(i as u64, 1000).await?;
        scan.push(at.elapsed());
        assert!(!page.is_empty());
    }
    report("change-log page (1,000 changes) on the loaded city", scan);
    city.shutdown().await;
    drop(schema);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        tiersync::identity::tls::install_crypto_provider();
        city(
            env("BENCH_RECORDS", 1_000_000) as usize,
            env("BENCH_READS", 10_000) as usize,
        )
        .await
    })
}
