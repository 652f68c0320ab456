//! The end-to-end sandbox: a deployment of whole tiersync nodes in one
//! process, each with its own SQLite file and certificate, linked over real
//! mutual TLS on 127.0.0.1 ports chosen by the OS; plus scriptable fake peers
//! for the misbehaviour a real node never shows.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use tiersync::RunningNode;
use tiersync::demo::Deployment;
use tiersync::identity::tls::TlsMaterial;
use tiersync::node::{Node, PutInput, Reader};
use tiersync::store::postgres::scratch::ScratchSchema;
use tiersync_proto::pb::civil;
use tiersync_proto::types::{DivisionCode, RecordId};
use tiersync_proto::wire::{self, link_frame::Body, sync_client::SyncClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

static TRACING: Once = Once::new();

fn init_tracing() {
    TRACING.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("TIERSYNC_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        tiersync::identity::tls::install_crypto_provider();
    });
}

/// Polls `check` until it holds, failing after 30 s with `what`. Never a
/// fixed sleep: a fast machine finishes as soon as the condition holds.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A deployment of nodes in one process.
pub struct Cluster {
    pub deployment: Deployment,
    nodes: BTreeMap<String, RunningNode>,
    /// Nodes stored on PostgreSQL, each in its own scratch schema (dropped
    /// with the cluster, after its nodes).
    postgres: BTreeMap<String, ScratchSchema>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub fn new() -> Cluster {
        init_tracing();
        let dir = tempfile::tempdir().expect("tempdir");
        let deployment = Deployment::create(dir.path()).expect("deployment");
        Cluster {
            deployment,
            nodes: BTreeMap::new(),
            postgres: BTreeMap::new(),
            _dir: dir,
        }
    }

    /// Puts node `code` (not started yet) on PostgreSQL, in a fresh scratch
    /// schema. False, with the skip line printed for `test`, when no
    /// PostgreSQL answers.
    pub async fn on_postgres(&mut self, code: &str, test: &str) -> bool {
        match ScratchSchema::create(test).await {
            Some(schema) => {
                self.postgres.insert(code.to_owned(), schema);
                true
            }
            None => false,
        }
    }

    /// The `storage.path` URL of a node put on PostgreSQL.
    pub fn postgres_url(&self, code: &str) -> Option<String> {
        self.postgres.get(code).map(|s| s.url())
    }

    /// Starts nodes top down (each child's config names its parent's port).
    pub async fn with(codes: &[&str]) -> Cluster {
        let mut c = Cluster::new();
        for code in codes {
            c.start(code).await;
        }
        c
    }

    /// Starts (or restarts) `code`. Its parent must have been started once.
    pub async fn start(&mut self, code: &str) -> &RunningNode {
        let path = self.deployment.config_path(code);
        if !path.is_file() {
            let dc = DivisionCode::parse(code).expect("test code");
            let parent = dc.parent().map(|p| {
                self.peer_addr_of(p.as_str())
                    .unwrap_or_else(|| panic!("start parent {p} before {code}"))
            });
            self.deployment.write_config(code, parent).expect("config");
            if let Some(url) = self.postgres_url(code) {
                let text = std::fs::read_to_string(&path).expect("config");
                let text = text.replace(
                    &format!("path = \"{code}.db\""),
                    &format!("path = \"{url}\""),
                );
                std::fs::write(&path, text).expect("config");
            }
        }
        let node = self.deployment.start(code).await.expect("node starts");
        self.nodes.insert(code.to_owned(), node);
        &self.nodes[code]
    }

    fn peer_addr_of(&self, code: &str) -> Option<std::net::SocketAddr> {
        if let Some(n) = self.nodes.get(code) {
            return n.peer_addr;
        }
        // stopped: read the fixed address back from its config
        let text = std::fs::read_to_string(self.deployment.config_path(code)).ok()?;
        let line = text.lines().find(|l| l.starts_with("peer = "))?;
        line.trim_start_matches("peer = ")
            .trim_matches('"')
            .parse()
            .ok()
    }

    pub fn running(&self, code: &str) -> &RunningNode {
        self.nodes
            .get(code)
            .unwrap_or_else(|| panic!("node {code} is not running"))
    }

    pub fn node(&self, code: &str) -> Arc<Node> {
        self.running(code).node.clone()
    }

    pub async fn stop(&mut self, code: &str) {
        self.nodes.remove(code).expect("running").shutdown().await;
    }

    pub async fn kill(&mut self, code: &str) {
        self.nodes.remove(code).expect("running").kill().await;
    }

    /// The deployment folder (configs, stores, PKI).
    pub fn dir(&self) -> &std::path::Path {
        &self.deployment.dir
    }

    pub async fn shutdown(mut self) {
        let codes: Vec<String> = self.nodes.keys().rev().cloned().collect();
        for code in codes {
            self.stop(&code).await;
        }
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Self::new()
    }
}

/// A valid resident payload, `n` making it unique.
pub fn resident(n: usize) -> civil::v1::Resident {
    civil::v1::Resident {
        name: format!("测试居民{n}"),
        id_number: tiersync::demo::demo_id_number(0, n),
        address_code: "511102004001".into(),
        ..Default::default()
    }
}

/// Puts a resident at `node` and returns the stored record.
pub async fn put_resident(node: &Node, n: usize) -> wire::Record {
    node.put(PutInput {
        kind: "civil.v1.Resident".into(),
        payload: resident(n).encode_to_vec(),
        ..Default::default()
    })
    .await
    .expect("put resident")
    .stored
    .record
}

pub async fn holds(node: &Node, id: &[u8]) -> bool {
    node.reads(Reader::Operator)
        .get(id)
        .await
        .expect("store")
        .is_some()
}

pub async fn version_at(node: &Node, id: &[u8]) -> Option<u64> {
    node.reads(Reader::Operator)
        .get(id)
        .await
        .expect("store")
        .map(|r| r.version)
}

/// A record envelope built by hand, as a misbehaving peer would send it.
pub fn envelope(
    owner: &str,
    kind: &str,
    version: u64,
    payload: Vec<u8>,
    up_to: tiersync_proto::types::Tier,
) -> wire::Record {
    let scope = wire::Scope {
        up_to: up_to.to_wire() as i32,
        down_to: vec![],
        departments: vec![],
    };
    wire::Record {
        id: RecordId::new().as_bytes().to_vec(),
        kind: kind.into(),
        owner: Some(wire::Owner {
            node: owner.into(),
            department: String::new(),
        }),
        version,
        updated_at: 1,
        scope: Some(scope.clone()),
        deleted: false,
        payload: payload.into(),
        keys: vec![],
        reach: Some(scope),
        withdrawn: false,
        ..Default::default()
    }
}

/// Records in `node`'s store other than those the nodes keep for
/// themselves everywhere (published keys, the trust list).
pub async fn records_held(node: &Node) -> u64 {
    let mut internal = 0;
    for kind in [
        tiersync::kinds::KIND_NODE_KEY,
        tiersync::kinds::KIND_TRUST_LIST,
    ] {
        internal += node
            .reads(Reader::Operator)
            .list(&tiersync::store::ListQuery {
                kind: kind.into(),
                include_deleted: true,
                limit: 10_000,
                ..Default::default()
            })
            .await
            .expect("store")
            .len() as u64;
    }
    node.record_count().await.expect("store") - internal
}

/// Whether every node in `nodes` holds every record in `ids`.
pub async fn all_hold(cluster: &Cluster, nodes: &[&str], ids: &[Vec<u8>]) -> bool {
    for n in nodes {
        let node = cluster.node(n);
        for id in ids {
            if !holds(&node, id).await {
                return false;
            }
        }
    }
    true
}

/// Kills `victim` (a node between the community 511102004001 and the city)
/// while it is taking in a backlog of 300 residents and passing it on, puts
/// 100 more while it is down, restarts it, and checks that street, county
/// and city end up with all 400 exactly once. Returns the community.
pub async fn kill_mid_backlog(cluster: &mut Cluster, victim: &str) -> Arc<Node> {
    let community = cluster.node("511102004001");
    let mut ids = Vec::new();
    for n in 0..300 {
        ids.push(put_resident(&community, n).await.id);
    }
    let node = cluster.node(victim);
    eventually(&format!("{victim} started receiving"), || async {
        records_held(&node).await > 0
    })
    .await;
    drop(node);
    cluster.kill(victim).await;
    for n in 300..400 {
        ids.push(put_resident(&community, n).await.id);
    }
    cluster.start(victim).await;
    eventually("all 400 at street, county and city after the kill", || {
        all_hold(cluster, &["511102004", "511102", "5111"], &ids)
    })
    .await;
    for code in ["511102004", "511102", "5111"] {
        assert_eq!(
            records_held(&cluster.node(code)).await,
            400,
            "node {code} holds each record exactly once"
        );
    }
    community
}

/// The signing identity of `code` from the deployment's PKI folder, issued
/// there first if it has none.
pub fn identity(cluster: &Cluster, code: &str) -> tiersync::identity::origin::Identity {
    let pki = cluster.dir().join("pki");
    let dc = DivisionCode::parse(code).expect("code");
    let key = pki.join(format!("{code}.sm2.key"));
    if !key.is_file() {
        tiersync::identity::pki::issue_origin_into_dir(&pki, &dc).expect("issue origin key");
    }
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).expect("read pki file");
    let root =
        tiersync::identity::origin::TrustRoot::from_pem(&read(pki.join("trust-root.pem")), "root")
            .expect("trust root");
    tiersync::identity::origin::Identity::load(
        &root,
        &[],
        &dc,
        &read(key),
        &read(pki.join(format!("{code}.sm2.pem"))),
        code,
    )
    .expect("identity")
}

/// Signs `records` as their owner `code` would (one batch signature).
pub fn sign_as(cluster: &Cluster, code: &str, records: &mut [wire::Record]) {
    identity(cluster, code).sign(records).expect("sign");
}

/// The `NodeKey` record `code` publishes, signed.
pub fn node_key_record(cluster: &Cluster, code: &str) -> wire::Record {
    let identity = identity(cluster, code);
    let city = &code[..4];
    let everywhere = wire::Scope {
        up_to: tiersync_proto::types::Tier::City.to_wire() as i32,
        down_to: vec![city.to_owned()],
        departments: vec![],
    };
    let mut record = wire::Record {
        id: RecordId::new().as_bytes().to_vec(),
        kind: tiersync::kinds::KIND_NODE_KEY.into(),
        owner: Some(wire::Owner {
            node: code.into(),
            department: String::new(),
        }),
        version: 1,
        updated_at: 1,
        scope: Some(everywhere.clone()),
        payload: wire::NodeKey {
            certificates: vec![identity.cert_der().to_vec()],
        }
        .encode_to_vec()
        .into(),
        keys: vec![wire::NaturalKey {
            name: tiersync::kinds::KEY_NODE.into(),
            value: code.into(),
        }],
        reach: Some(everywhere),
        ..Default::default()
    };
    identity
        .sign(std::slice::from_mut(&mut record))
        .expect("sign");
    record
}

/// A scripted child: real certificate and TLS, frames written by the test.
/// It publishes its signing key on connecting, and signs the records it
/// owns that it sends unsigned, as an honest node would; tests that forge
/// send what they forged with a proof already set.
pub struct FakeChild {
    pub tx: mpsc::Sender<wire::LinkFrame>,
    pub inbound: Streaming<wire::LinkFrame>,
    pub parent_hello: wire::Hello,
    code: String,
    identity: tiersync::identity::origin::Identity,
}

impl FakeChild {
    /// Connects as `code` (its certificate issued by the deployment CA) to
    /// the running parent `parent` and exchanges hellos.
    pub async fn connect(
        cluster: &Cluster,
        code: &str,
        parent: &str,
    ) -> Result<FakeChild, tonic::Status> {
        let mut child = Self::connect_with_hello(cluster, code, parent, |_| {}).await?;
        let key = node_key_record(cluster, code);
        let ack = child.send_batch_as_is(0, vec![key]).await?;
        assert_eq!(
            ack.rejected, 0,
            "the parent refused the fake child's key: {:?}",
            ack.rejections
        );
        Ok(child)
    }

    /// Connects as `code` to `parent` with the hello `edit` makes of a
    /// fresh child's, and exchanges hellos; it sends nothing else (not its
    /// key) and acknowledges nothing until told to.
    pub async fn connect_with_hello(
        cluster: &Cluster,
        code: &str,
        parent: &str,
        edit: impl FnOnce(&mut wire::Hello),
    ) -> Result<FakeChild, tonic::Status> {
        let channel = fake_channel(cluster, code, parent).await;
        let mut client = SyncClient::new(channel);
        let (tx, rx) = mpsc::channel(64);
        let mut hello = wire::Hello {
            protocol: tiersync::sync::PROTOCOL,
            node: code.into(),
            applied_through: 0,
            epoch: "fake-epoch".into(),
            applied_epoch: String::new(),
        };
        edit(&mut hello);
        tx.send(wire::LinkFrame {
            body: Some(Body::Hello(hello)),
        })
        .await
        .expect("queue hello");
        let mut inbound = client.link(ReceiverStream::new(rx)).await?.into_inner();
        let parent_hello = match inbound.message().await? {
            Some(wire::LinkFrame {
                body: Some(Body::Hello(h)),
            }) => h,
            other => panic!("expected the parent's hello, got {other:?}"),
        };
        Ok(FakeChild {
            tx,
            inbound,
            parent_hello,
            code: code.to_owned(),
            identity: identity(cluster, code),
        })
    }

    /// Sends one batch, first signing the records this child owns that
    /// carry no proof yet, and waits for its ack.
    pub async fn send_batch(
        &mut self,
        through_seq: u64,
        mut records: Vec<wire::Record>,
    ) -> Result<wire::Ack, tonic::Status> {
        let mut unsigned: Vec<usize> = Vec::new();
        for (i, r) in records.iter().enumerate() {
            if r.proof.is_empty() && r.owner.as_ref().is_some_and(|o| o.node == self.code) {
                unsigned.push(i);
            }
        }
        if !unsigned.is_empty() {
            let mut batch: Vec<wire::Record> =
                unsigned.iter().map(|&i| records[i].clone()).collect();
            self.identity.sign(&mut batch).expect("sign");
            for (i, r) in unsigned.into_iter().zip(batch) {
                records[i] = r;
            }
        }
        self.send_batch_as_is(through_seq, records).await
    }

    /// Sends one batch exactly as given and waits for its ack (skipping the
    /// parent's own batches and heartbeats).
    pub async fn send_batch_as_is(
        &mut self,
        through_seq: u64,
        records: Vec<wire::Record>,
    ) -> Result<wire::Ack, tonic::Status> {
        let mut acks = self
            .send_batches_as_is(vec![(through_seq, records)])
            .await?;
        Ok(acks.remove(0))
    }

    /// Sends batches `(through_seq, records)` back to back, without waiting
    /// for any ack in between, then waits for one ack per batch. The parent
    /// may write several in one transaction; its counts then ride on the
    /// last of their acks.
    pub async fn send_batches_as_is(
        &mut self,
        batches: Vec<(u64, Vec<wire::Record>)>,
    ) -> Result<Vec<wire::Ack>, tonic::Status> {
        let encoded = batches
            .into_iter()
            .map(|(through, records)| {
                let bytes = records.iter().map(|r| r.encode_to_vec().into()).collect();
                (through, bytes)
            })
            .collect();
        self.send_encoded_batches(encoded).await
    }

    /// Sends batches of records given as bytes, which need not be records
    /// at all, and waits for one ack per batch.
    pub async fn send_encoded_batches(
        &mut self,
        batches: Vec<(u64, Vec<Bytes>)>,
    ) -> Result<Vec<wire::Ack>, tonic::Status> {
        let count = batches.len();
        for (through_seq, records) in batches {
            self.tx
                .send(wire::LinkFrame {
                    body: Some(Body::Batch(wire::Batch {
                        through_seq,
                        records,
                        head_seq: through_seq,
                        sent_at_ms: 0,
                    })),
                })
                .await
                .map_err(|_| tonic::Status::cancelled("link closed"))?;
        }
        let mut acks = Vec::with_capacity(count);
        while acks.len() < count {
            match self.inbound.message().await? {
                Some(wire::LinkFrame {
                    body: Some(Body::Ack(ack)),
                }) => acks.push(ack),
                Some(wire::LinkFrame {
                    body: Some(Body::Batch(b)),
                }) => {
                    // acknowledge so the parent's window stays open
                    let _ = self
                        .tx
                        .send(wire::LinkFrame {
                            body: Some(Body::Ack(wire::Ack {
                                through_seq: b.through_seq,
                                ..Default::default()
                            })),
                        })
                        .await;
                }
                Some(_) => {}
                None => return Err(tonic::Status::cancelled("parent closed the link")),
            }
        }
        Ok(acks)
    }
}

/// A mutual-TLS channel to `parent`'s peer port with a fresh certificate
/// for `code` from the deployment CA.
pub async fn fake_channel(
    cluster: &Cluster,
    code: &str,
    parent: &str,
) -> tonic::transport::Channel {
    let pki = cluster.dir().join("pki");
    let dc = DivisionCode::parse(code).expect("code");
    let (cert, key) = tiersync::identity::pki::issue_into_dir(&pki, &dc, 30).expect("issue");
    let material = TlsMaterial::load(&pki.join("ca.pem"), &cert, &key).expect("tls material");
    let addr = cluster
        .running(parent)
        .peer_addr
        .expect("parent listens")
        .to_string();
    tiersync::identity::transport::connect(
        &addr,
        &DivisionCode::parse(parent).expect("code"),
        material.client_config().expect("client config"),
    )
    .await
    .expect("connect")
}

/// Sends raw, possibly malformed, gRPC messages on the link method: what no
/// prost encoder would produce.
pub async fn raw_link(
    channel: tonic::transport::Channel,
    messages: Vec<Bytes>,
) -> Result<Vec<Bytes>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static("/tiersync.v1.Sync/Link");
    let stream = tokio_stream::iter(messages);
    let mut inbound = grpc
        .streaming(tonic::Request::new(stream), path, RawCodec)
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = inbound.message().await? {
        out.push(m);
    }
    Ok(out)
}

#[derive(Debug, Clone, Default)]
pub struct RawCodec;

#[derive(Debug, Clone, Default)]
pub struct RawEncoder;

#[derive(Debug, Clone, Default)]
pub struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}
