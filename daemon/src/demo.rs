//! `tiersync demo`: a real four-tier federation of Leshan in one process.
//!
//! Every node is a full [`App`]: its own SQLite file, its own certificate from
//! a freshly made deployment CA, mutual TLS on every link. The demo collects
//! residents and service applications at the communities, restarts the street
//! node half-way (the communities buffer in their logs meanwhile), sends a
//! county notice down to one street, and checks at every node that exactly
//! the records its scope allows arrived: nothing lost, nothing duplicated,
//! nothing where it should not be.
#![allow(clippy::print_stdout)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use prost::Message;
use tiersync_proto::pb::{civil, gov, service};
use tiersync_proto::types::{DivisionCode, Tier};
use tiersync_proto::wire;
use tokio_util::sync::CancellationToken;

use crate::app::{App, RunningNode};
use crate::clock::{SharedClock, SystemClock};
use crate::config::{NodeConfig, RawConfig};
use crate::kinds::{KIND_APPLICATION, KIND_NOTICE, KIND_RESIDENT};
use crate::node::{PutInput, Reader};

/// The demo's tree: city, county, two streets, communities under both.
pub const CITY: &str = "5111";
pub const COUNTY: &str = "511102";
pub const STREET: &str = "511102004";
pub const OTHER_STREET: &str = "511102006";
pub const COMMUNITIES: &[&str] = &["511102004001", "511102004002", "511102004201"];
pub const OTHER_COMMUNITY: &str = "511102006001";

/// Everything needed to stand up demo and test nodes in one folder.
pub struct Deployment {
    pub dir: PathBuf,
    pub names: BTreeMap<DivisionCode, String>,
    /// The clock every node started from here reads.
    pub clock: SharedClock,
}

impl Deployment {
    /// Makes the CA and deployment secret in `dir/pki`.
    pub fn create(dir: &Path) -> anyhow::Result<Deployment> {
        let city = DivisionCode::parse(CITY)?;
        crate::identity::pki::init_dir(&dir.join("pki"), &city)?;
        let names = crate::divisions::parse(crate::divisions::LESHAN_CSV)?
            .into_iter()
            .map(|(code, d)| (code, d.name))
            .collect();
        Ok(Deployment {
            dir: dir.to_owned(),
            names,
            clock: SystemClock::shared(),
        })
    }

    /// Writes the config of node `code` (issuing its certificate) and
    /// returns its path. `parent` is the parent's peer address.
    pub fn write_config(
        &self,
        code: &str,
        parent: Option<std::net::SocketAddr>,
    ) -> anyhow::Result<PathBuf> {
        let dc = DivisionCode::parse(code)?;
        crate::identity::pki::issue_into_dir(&self.dir.join("pki"), &dc, 30)?;
        crate::identity::pki::issue_origin_into_dir(&self.dir.join("pki"), &dc)?;
        let name = self.names.get(&dc).cloned().unwrap_or_default();
        let mut text = format!(
            "version = 1\n\n[node]\ncode = \"{code}\"\ntier = \"{tier}\"\nname = \"{name}\"\n\n[storage]\npath = \"{code}.db\"\n\n[listen]\napi = \"127.0.0.1:0\"\nadapter = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n",
            tier = dc.tier(),
        );
        if dc.tier() != Tier::Community {
            text.push_str("peer = \"127.0.0.1:0\"\n");
        }
        if let (Some(p), Some(pcode)) = (parent, dc.parent()) {
            text.push_str(&format!(
                "\n[parent]\ncode = \"{pcode}\"\naddress = \"{p}\"\n"
            ));
        }
        // The city holds the CA and trust root keys, so nodes can join
        // through the tree.
        let (ca_key, root_key) = if dc.tier() == Tier::City {
            (
                "ca_key = \"pki/ca.key\"\n",
                "root_key = \"pki/trust-root.key\"\n",
            )
        } else {
            ("", "")
        };
        text.push_str(&format!(
            "\n[tls]\nca = \"pki/ca.pem\"\ncert = \"pki/{code}.pem\"\nkey = \"pki/{code}.key\"\n{ca_key}\n[trust]\nroot = \"pki/trust-root.pem\"\nkey = \"pki/{code}.sm2.key\"\ncert = \"pki/{code}.sm2.pem\"\n{root_key}\n[deployment]\ndigest_key_file = \"pki/deployment.key\"\n\n[sync]\nheartbeat_secs = 1\nstall_secs = 2\n"
        ));
        let path = self.dir.join(format!("{code}.toml"));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Starts the node whose config was written for `code`. On the first
    /// start the ports it bound are written back into its config, so a
    /// restart comes back where its children look for it.
    pub async fn start(&self, code: &str) -> anyhow::Result<RunningNode> {
        self.start_tuned(code, |_| {}).await
    }

    /// Like [`Deployment::start`], with the config changed by `tune` first
    /// (benchmarks use it for settings no config file may change).
    pub async fn start_tuned(
        &self,
        code: &str,
        tune: impl FnOnce(&mut NodeConfig),
    ) -> anyhow::Result<RunningNode> {
        let path = self.dir.join(format!("{code}.toml"));
        let text = std::fs::read_to_string(&path)?;
        let raw: RawConfig = toml::from_str(&text)?;
        let mut config: NodeConfig = raw
            .validate(&self.dir)
            .map_err(|issues| anyhow::anyhow!("demo config {code}: {issues:?}"))?;
        tune(&mut config);
        let node = App::start_with(config, self.clock.clone()).await?;
        let mut fixed = text.clone();
        for (key, addr) in [
            ("peer", node.peer_addr),
            ("api", node.api_addr),
            ("adapter", node.adapter_addr),
            ("admin", node.admin_addr),
        ] {
            if let Some(addr) = addr {
                fixed = fixed.replace(
                    &format!("{key} = \"127.0.0.1:0\""),
                    &format!("{key} = \"{addr}\""),
                );
            }
        }
        if fixed != text {
            std::fs::write(&path, fixed)?;
        }
        Ok(node)
    }

    /// Writes configs for and starts `codes` in order, each child pointed at
    /// its parent, which must come earlier in the list (the city first).
    pub async fn start_all(&self, codes: &[&str]) -> anyhow::Result<Vec<RunningNode>> {
        let mut started: Vec<RunningNode> = Vec::with_capacity(codes.len());
        for code in codes {
            let parent = DivisionCode::parse(code)?.parent();
            let parent_addr = match &parent {
                None => None,
                Some(p) => started
                    .iter()
                    .find(|n| n.node.code() == p)
                    .and_then(|n| n.peer_addr),
            };
            if parent.is_some() && parent_addr.is_none() {
                bail!("start the parent of {code} before it");
            }
            self.write_config(code, parent_addr)?;
            started.push(self.start(code).await?);
        }
        Ok(started)
    }

    /// Path of the config written for `code`.
    pub fn config_path(&self, code: &str) -> PathBuf {
        self.dir.join(format!("{code}.toml"))
    }
}

/// Notes when each record first appears at each node.
type ArrivalMap = HashMap<(String, Vec<u8>), Instant>;

#[derive(Default, Clone)]
struct Arrivals(Arc<Mutex<ArrivalMap>>);

impl Arrivals {
    fn watch(&self, node: &RunningNode, stop: CancellationToken) {
        let arrivals = self.clone();
        let n = node.node.clone();
        tokio::spawn(async move {
            let mut head = n.subscribe_head();
            let mut after = 0;
            loop {
                let changes = n
                    .reads(Reader::Node)
                    .changes_after(after, 1000)
                    .await
                    .unwrap_or_default();
                if changes.is_empty() {
                    head.borrow_and_update();
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        r = head.changed() => if r.is_err() { return },
                    }
                    continue;
                }
                let now = Instant::now();
                let mut map = arrivals.0.lock().expect("arrivals lock");
                for (seq, record) in changes {
                    after = seq;
                    map.entry((n.code().to_string(), record.id)).or_insert(now);
                }
            }
        });
    }

    fn get(&self, node: &str, id: &[u8]) -> Option<Instant> {
        self.0
            .lock()
            .expect("arrivals lock")
            .get(&(node.to_owned(), id.to_vec()))
            .copied()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// A valid GB 11643 number for demo resident `n` of community `c`.
pub fn demo_id_number(c: usize, n: usize) -> String {
    // Distinct for every (c, n) with c < 3 and n < 2000: n picks year, month
    // and sequence, c shifts the day.
    with_check_digit(format!(
        "511102{:04}{:02}{:02}{:03}",
        1940 + (n % 60),
        1 + (n / 60 % 12),
        1 + (c * 9 + n / 720) % 28,
        n % 1000
    ))
}

/// A valid GB 11643 number distinct for every `n` below 26,880,000 (80 birth
/// years x 336 dates x 1,000 sequence numbers), for loads where repeated
/// natural keys would make the key index unrepresentative.
pub fn numbered_id_number(n: u64) -> String {
    let date = n / 1000;
    with_check_digit(format!(
        "511102{:04}{:02}{:02}{:03}",
        1930 + (date / 336) % 80,
        1 + (date / 28) % 12,
        1 + date % 28,
        n % 1000
    ))
}

/// Appends the GB 11643 check character to a 17-digit body.
fn with_check_digit(body: String) -> String {
    let weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = body
        .bytes()
        .zip(weights)
        .map(|(b, w)| (b - b'0') as u32 * w)
        .sum();
    let check = b"10X98765432"[(sum % 11) as usize] as char;
    format!("{body}{check}")
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn count_kind(node: &RunningNode, kind: &str) -> anyhow::Result<usize> {
    let mut after = Vec::new();
    let mut n = 0;
    loop {
        let page = node
            .node
            .reads(Reader::Operator)
            .list(&crate::store::ListQuery {
                kind: kind.into(),
                after_id: after.clone(),
                limit: 10_000,
                ..Default::default()
            })
            .await?;
        n += page.len();
        match page.last() {
            Some(last) => after = last.id.clone(),
            None => return Ok(n),
        }
    }
}

pub async fn run(dir: Option<PathBuf>, residents_per_community: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let tmp;
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            d
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_owned()
        }
    };
    let deployment = Deployment::create(&dir)?;
    let name = |code: &str| {
        deployment
            .names
            .get(&DivisionCode::parse(code).expect("demo codes"))
            .cloned()
            .unwrap_or_default()
    };
    println!(
        "tiersync demo: a four-tier federation of Leshan (乐山) in {}",
        dir.display()
    );
    println!(
        "  every node has its own SQLite store and certificate; every link is mutual TLS 1.3\n"
    );

    // Top down, so each child knows its parent's address.
    let mut nodes = deployment
        .start_all(&[
            CITY,
            COUNTY,
            STREET,
            OTHER_STREET,
            COMMUNITIES[0],
            COMMUNITIES[1],
            COMMUNITIES[2],
            OTHER_COMMUNITY,
        ])
        .await?
        .into_iter();
    let mut next = || nodes.next().expect("one node per code");
    let (city, county, street, other_street) = (next(), next(), next(), next());
    let mut street = Some(street);
    let communities = vec![next(), next(), next()];
    let other_community = next();
    for (code, tier) in [
        (CITY, "city"),
        (COUNTY, "county"),
        (STREET, "street"),
        (OTHER_STREET, "street"),
    ] {
        println!("  {tier:<9} {code:<13} {}", name(code));
    }
    for code in COMMUNITIES.iter().chain([&OTHER_COMMUNITY]) {
        println!("  community {code:<13} {}", name(code));
    }

    let stop = CancellationToken::new();
    let arrivals = Arrivals::default();
    for n in [&city, &county, street.as_ref().expect("up")] {
        arrivals.watch(n, stop.clone());
    }

    // Phase 1: collect half the residents and their applications.
    let half = residents_per_community / 2;
    let mut put_at: Vec<(Vec<u8>, Instant)> = Vec::new();
    let collect = |communities: &Vec<RunningNode>, range: std::ops::Range<usize>| {
        let communities: Vec<_> = communities.iter().map(|c| c.node.clone()).collect();
        async move {
            let mut ids = Vec::new();
            for n in range {
                for (ci, c) in communities.iter().enumerate() {
                    let resident = civil::v1::Resident {
                        name: format!("居民{ci}-{n}"),
                        id_number: demo_id_number(ci, n),
                        address_code: c.code().to_string(),
                        categories: if n % 5 == 0 {
                            vec![civil::v1::Category::Elderly as i32]
                        } else {
                            vec![]
                        },
                        ..Default::default()
                    };
                    let r = c
                        .put(PutInput {
                            kind: KIND_RESIDENT.into(),
                            payload: resident.encode_to_vec(),
                            ..Default::default()
                        })
                        .await?;
                    ids.push((r.stored.record.id.clone(), Instant::now()));
                    if n % 4 == 0 {
                        let app = service::v1::Application {
                            service: "elderly-allowance".into(),
                            applicant_id: r.stored.record.id.clone(),
                            applicant_name: resident.name.clone(),
                            status: service::v1::Status::Submitted as i32,
                            ..Default::default()
                        };
                        let a = c
                            .put(PutInput {
                                kind: KIND_APPLICATION.into(),
                                payload: app.encode_to_vec(),
                                ..Default::default()
                            })
                            .await?;
                        ids.push((a.stored.record.id.clone(), Instant::now()));
                    }
                    // Steady collection, as at a service window, not one burst.
                    if n % 10 == 0 {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
            anyhow::Ok(ids)
        }
    };
    println!("\n1. collecting {half} residents per community (with service applications) ...");
    let phase1 = collect(&communities, 0..half).await?;
    put_at.extend(phase1.iter().cloned());
    let expected1 = phase1.len();
    wait_until("phase 1 at the city", Duration::from_secs(60), || async {
        Ok(
            count_kind(&city, KIND_RESIDENT).await? + count_kind(&city, KIND_APPLICATION).await?
                >= expected1,
        )
    })
    .await?;
    println!("   {expected1} records reached the city");

    // Phase 2: the street goes down; communities keep collecting.
    println!(
        "\n2. restarting the street node {STREET} mid-way; the communities keep collecting meanwhile ..."
    );
    street.take().expect("up").shutdown().await;
    let phase2 = collect(&communities, half..residents_per_community).await?;
    let buffered = phase2.len();
    println!("   street down: {buffered} new records wait in the communities' change logs");
    let restarted = Instant::now();
    let street_node = deployment
        .start(STREET)
        .await
        .context("restarting the street")?;
    arrivals.watch(&street_node, stop.clone());
    street = Some(street_node);
    let expected_total = expected1 + buffered;
    wait_until("phase 2 at the city", Duration::from_secs(120), || async {
        Ok(
            count_kind(&city, KIND_RESIDENT).await? + count_kind(&city, KIND_APPLICATION).await?
                >= expected_total,
        )
    })
    .await?;
    println!(
        "   street back: the backlog reached the city {:.2} s after the restart",
        restarted.elapsed().as_secs_f64()
    );

    // Phase 3: a county notice to one street.
    println!("\n3. the county sends a notice to street {STREET} only ...");
    let notice = gov::v1::Notice {
        title: "冬季燃气安全检查".into(),
        body: "请各社区于本周内完成入户燃气安全检查。".into(),
        published_at_ms: crate::clock::now_ms(),
        ..Default::default()
    };
    let sent = county
        .node
        .put(PutInput {
            kind: KIND_NOTICE.into(),
            payload: notice.encode_to_vec(),
            scope: Some(wire::Scope {
                up_to: Tier::County.to_wire() as i32,
                down_to: vec![STREET.into()],
                departments: vec![],
            }),
            ..Default::default()
        })
        .await?;
    let notice_id = sent.stored.record.id.clone();
    let notice_sent = Instant::now();
    for c in &communities {
        let n = c.node.clone();
        let id = notice_id.clone();
        wait_until(
            "the notice at the communities",
            Duration::from_secs(30),
            || {
                let n = n.clone();
                let id = id.clone();
                async move { Ok(n.reads(Reader::Operator).get(&id).await?.is_some()) }
            },
        )
        .await?;
    }
    println!(
        "   reached all {} communities of {STREET} in {:.0} ms",
        communities.len(),
        notice_sent.elapsed().as_secs_f64() * 1000.0
    );
    // Let the other branch settle, then check the notice did not go there.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Verify.
    println!("\n4. checking every node ...");
    let street_ref = street.as_ref().expect("up");
    let mut ok = true;
    let mut report = |what: String, good: bool| {
        println!("   [{}] {what}", if good { "ok" } else { "FAIL" });
        ok &= good;
    };
    let all_ids: Vec<Vec<u8>> = put_at
        .iter()
        .map(|(id, _)| id.clone())
        .chain(phase2.iter().map(|(id, _)| id.clone()))
        .collect();
    for (label, node) in [("street", street_ref), ("county", &county), ("city", &city)] {
        let mut missing = 0;
        for id in &all_ids {
            if node.node.reads(Reader::Operator).get(id).await?.is_none() {
                missing += 1;
            }
        }
        let held =
            count_kind(node, KIND_RESIDENT).await? + count_kind(node, KIND_APPLICATION).await?;
        report(
            format!(
                "{label:<6} {}: {held} of {} records, {missing} missing, {} duplicated",
                node.node.code(),
                all_ids.len(),
                held.saturating_sub(all_ids.len() - missing)
            ),
            missing == 0 && held == all_ids.len(),
        );
    }
    for c in &communities {
        report(
            format!("community {} holds the county notice", c.node.code()),
            c.node
                .reads(Reader::Operator)
                .get(&notice_id)
                .await?
                .is_some(),
        );
    }
    report(
        format!("street {OTHER_STREET} and community {OTHER_COMMUNITY} do not hold it"),
        other_street
            .node
            .reads(Reader::Operator)
            .get(&notice_id)
            .await?
            .is_none()
            && other_community
                .node
                .reads(Reader::Operator)
                .get(&notice_id)
                .await?
                .is_none(),
    );
    report(
        "the city does not hold it (its scope stops at the county)".to_string(),
        city.node
            .reads(Reader::Operator)
            .get(&notice_id)
            .await?
            .is_none(),
    );
    report(
        format!("no resident reached the other branch ({OTHER_STREET})"),
        count_kind(&other_street, KIND_RESIDENT).await? == 0,
    );
    let mut quarantined = 0;
    let (mut checked, mut sm2) = (0, 0);
    for n in [&city, &county, street_ref, &other_street, &other_community]
        .into_iter()
        .chain(communities.iter())
    {
        quarantined += n.node.quarantined_count().await?;
        let stats = n.node.keyring().stats();
        checked += stats.hits + stats.misses;
        sm2 += stats.misses;
    }
    report(
        format!("no record rejected anywhere ({quarantined} quarantined)"),
        quarantined == 0,
    );
    report(
        format!(
            "every arriving record's owner signature checked: {checked} records, {sm2} SM2 verifications (one per origin batch)"
        ),
        checked > 0,
    );

    // Masking: the city sees residents masked, the community in full.
    let sample = &put_at[0].0;
    let at_city = city
        .node
        .reads(Reader::Operator)
        .get(sample)
        .await?
        .expect("checked");
    let at_home = communities[0]
        .node
        .reads(Reader::Operator)
        .get(sample)
        .await?
        .expect("checked");
    let masked = civil::v1::Resident::decode(&at_city.payload[..])?;
    let full = civil::v1::Resident::decode(&at_home.payload[..])?;
    println!(
        "   a resident as the community reads it: {} {}",
        full.name, full.id_number
    );
    println!(
        "   the same resident read at the city:   {} {}",
        masked.name, masked.id_number
    );
    report(
        "personal fields are masked away from the owner".into(),
        masked.id_number != full.id_number && masked.id_number.contains('*'),
    );

    // Hop latency of phase 1 (records collected while every node was up).
    let mut hops: [Vec<Duration>; 4] = Default::default();
    for (id, at) in &phase1 {
        let s = arrivals.get(STREET, id);
        let co = arrivals.get(COUNTY, id);
        let ci = arrivals.get(CITY, id);
        if let (Some(s), Some(co), Some(ci)) = (s, co, ci) {
            hops[0].push(s.saturating_duration_since(*at));
            hops[1].push(co.saturating_duration_since(s));
            hops[2].push(ci.saturating_duration_since(co));
            hops[3].push(ci.saturating_duration_since(*at));
        }
    }
    println!(
        "\n5. how long each hop took ({} records collected while all nodes were up):",
        hops[3].len()
    );
    for (label, h) in [
        "community → street",
        "street → county",
        "county → city",
        "community → city",
    ]
    .iter()
    .zip(hops.iter_mut())
    {
        h.sort();
        println!(
            "   {label:<20} p50 {:>7.1} ms   p99 {:>7.1} ms",
            percentile(h, 0.50).as_secs_f64() * 1000.0,
            percentile(h, 0.99).as_secs_f64() * 1000.0
        );
    }

    stop.cancel();
    for n in [city, county, other_street, other_community]
        .into_iter()
        .chain(communities)
        .chain(street)
    {
        n.shutdown().await;
    }
    println!(
        "\ndemo finished in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        if ok {
            "converged, nothing lost or duplicated"
        } else {
            "FAILED"
        }
    );
    if !ok {
        bail!("the demo found a problem (see the FAIL lines above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use tiersync_proto::types::ResidentId;

    use super::*;

    #[test]
    fn numbered_id_numbers_are_valid_and_distinct() {
        // Around every wrap of sequence, day, month and year.
        let ns = (0..40_000u64).chain(26_879_000..26_880_000);
        let mut seen = HashSet::new();
        for n in ns {
            let id = numbered_id_number(n);
            if let Err(error) = ResidentId::parse(&id) {
                panic!("numbered_id_number({n}) = {id} is not a valid number: {error}");
            }
            assert!(
                seen.insert(id.clone()),
                "numbered_id_number({n}) = {id} repeats"
            );
        }
    }

    #[test]
    fn demo_id_numbers_are_valid_and_distinct_for_three_communities() {
        let mut seen = HashSet::new();
        for c in 0..3 {
            for n in 0..2000 {
                let id = demo_id_number(c, n);
                assert!(ResidentId::parse(&id).is_ok(), "{id}");
                assert!(
                    seen.insert(id.clone()),
                    "demo_id_number({c}, {n}) = {id} repeats"
                );
            }
        }
    }
}
