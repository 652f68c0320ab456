//! Commands that read and write records through a running node's local API
//! (`put`, `get`, `list`, `lookup`), the kinds this build knows, and how a
//! record is printed: one JSON line, its payload decoded.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;

use tiersync_proto::types::{RecordId, Schemas, Tier};
use tiersync_proto::wire;

use super::{connect, status_error};

/// `tiersync put`: creates or changes a record, or sends an amendment.
/// The JSON of a put's payload: from `--json`, or from `--json-file`
/// (`-` for standard input); none is needed to delete.
pub(super) fn payload_json(
    json: Option<String>,
    file: Option<&Path>,
    delete: bool,
) -> anyhow::Result<String> {
    match (json, file) {
        (Some(json), _) => Ok(json),
        (None, Some(path)) if path == Path::new("-") => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("cannot read the payload JSON from standard input")?;
            Ok(text)
        }
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the payload JSON from {}", path.display())),
        (None, None) if delete => Ok(String::new()),
        (None, None) => anyhow::bail!(
            "give the payload with --json TEXT or --json-file FILE (`-` for standard input)"
        ),
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn put(
    api: SocketAddr,
    kind: String,
    json: String,
    id: Option<String>,
    expected_version: u64,
    up_to: Option<String>,
    down_to: Vec<String>,
    delete: bool,
    reason: String,
) -> anyhow::Result<()> {
    let schemas = Schemas::global();
    let payload = if delete {
        Vec::new()
    } else {
        schemas.payload_from_json(&kind, &json)?
    };
    let scope = if up_to.is_some() || !down_to.is_empty() {
        let up_to = match up_to {
            Some(t) => t.parse::<Tier>()?.to_wire() as i32,
            None => 0,
        };
        Some(wire::Scope {
            up_to,
            down_to,
            departments: vec![],
        })
    } else {
        None
    };
    let id = id.map(|s| parse_id(&s)).transpose()?.unwrap_or_default();
    let mut client = connect(api).await?;
    let response = client
        .put(wire::PutRequest {
            id,
            kind,
            payload,
            expected_version,
            scope,
            delete,
            department: String::new(),
            reason,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if response.amendment {
        println!("amendment sent to the owner:");
    }
    if let Some(r) = response.record {
        println!("{}", record_json(&r));
    }
    Ok(())
}

/// `tiersync get`: shows one record.
pub(super) async fn get(api: SocketAddr, id: String) -> anyhow::Result<()> {
    let id = parse_id(&id)?;
    let mut client = connect(api).await?;
    let r = client
        .get(wire::GetRequest { id })
        .await
        .map_err(status_error)?
        .into_inner();
    if let Some(r) = r.record {
        println!("{}", record_json(&r));
    }
    Ok(())
}

/// `tiersync list`: lists records.
pub(super) async fn list(
    api: SocketAddr,
    kind: String,
    owner: String,
    limit: u32,
) -> anyhow::Result<()> {
    let mut client = connect(api).await?;
    let r = client
        .list(wire::ListRequest {
            kind,
            owner_prefix: owner,
            limit,
            include_deleted: false,
            after_id: vec![],
        })
        .await
        .map_err(status_error)?
        .into_inner();
    for record in r.records {
        println!("{}", record_json(&record));
    }
    Ok(())
}

/// `tiersync lookup`: finds records by natural key.
pub(super) async fn lookup(
    api: SocketAddr,
    kind: String,
    key: String,
    value: String,
) -> anyhow::Result<()> {
    let mut client = connect(api).await?;
    let r = client
        .lookup(wire::LookupRequest { kind, key, value })
        .await
        .map_err(status_error)?
        .into_inner();
    if r.records.is_empty() {
        println!("no match");
    }
    for record in r.records {
        println!("{}", record_json(&record));
    }
    Ok(())
}

/// `tiersync kinds`: the canonical kinds this build knows.
pub(super) fn kinds() -> anyhow::Result<()> {
    for kind in Schemas::global().canonical_kinds() {
        println!("{kind}");
    }
    Ok(())
}

fn parse_id(s: &str) -> anyhow::Result<Vec<u8>> {
    let id: RecordId = s
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid record id `{s}`: {e}"))?;
    Ok(id.as_bytes().to_vec())
}

/// A record as one JSON line, its payload decoded where the kind is known.
pub fn record_json(r: &wire::Record) -> String {
    let schemas = Schemas::global();
    let payload = if r.payload.is_empty() {
        serde_json::Value::Null
    } else {
        schemas
            .payload_to_json(&r.kind, &r.payload)
            .unwrap_or_else(|_| {
                serde_json::Value::String(format!("<{} bytes of {}>", r.payload.len(), r.kind))
            })
    };
    let id = RecordId::from_bytes(&r.id)
        .map(|i| i.to_string())
        .unwrap_or_else(|_| hex::encode(&r.id));
    serde_json::json!({
        "id": id,
        "kind": r.kind,
        "owner": r.owner.as_ref().map(|o| o.node.clone()).unwrap_or_default(),
        "version": r.version,
        "deleted": r.deleted,
        "withdrawn": r.withdrawn,
        "scope": r.scope.as_ref().map(|s| serde_json::json!({
            "up_to": Tier::from_wire(s.up_to).map(|t| t.to_string()),
            "down_to": s.down_to,
        })),
        "payload": payload,
    })
    .to_string()
}
