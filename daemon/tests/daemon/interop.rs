//! What the daemon exports, checked by implementations we did not write:
//! the origin certificates `tiersync pki` makes, verified by the OpenSSL 3
//! command line, and the signature on a record a running node stored,
//! verified by Python's gmssl from the documented byte layout alone
//! (`tests/interop/record_layout.py` rebuilds the signed bytes from the
//! record's fields; the tiersync-trust script checks the proof).
//!
//! Each test prints `skipping <test>: <reason>` when its tool is absent, and
//! fails instead under `TIERSYNC_REQUIRE_INTEROP=1` (as `.ci/run` sets it).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use prost::Message;
use tiersync::demo::Deployment;
use tiersync::node::{PutInput, Reader};
use tiersync_proto::pb::civil;
use tiersync_proto::wire;

const DIST_ID: &str = "1234567812345678";

fn unavailable(test: &str, reason: String) -> Option<PathBuf> {
    if std::env::var("TIERSYNC_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!("{test}: TIERSYNC_REQUIRE_INTEROP=1 but {reason}");
    }
    eprintln!("skipping {test}: {reason}");
    None
}

fn openssl(test: &str) -> Option<PathBuf> {
    match Command::new("openssl").arg("version").output() {
        Ok(out) if out.status.success() && out.stdout.starts_with(b"OpenSSL 3.") => {
            Some(PathBuf::from("openssl"))
        }
        Ok(out) => unavailable(
            test,
            format!(
                "`openssl version` says `{}`, not OpenSSL 3",
                String::from_utf8_lossy(&out.stdout).trim()
            ),
        ),
        Err(error) => unavailable(test, format!("no `openssl` on PATH ({error})")),
    }
}

fn gmssl_python(test: &str) -> Option<PathBuf> {
    let python = std::env::var_os("TIERSYNC_INTEROP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"));
    match Command::new(&python)
        .args(["-c", "import gmssl.sm2, gmssl.sm3"])
        .output()
    {
        Ok(out) if out.status.success() => Some(python),
        Ok(_) => unavailable(
            test,
            format!(
                "`{}` cannot import gmssl (pip install gmssl==3.2.2)",
                python.display()
            ),
        ),
        Err(error) => unavailable(test, format!("no `{}` ({error})", python.display())),
    }
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", program.display()))
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn openssl_verifies_the_origin_certificates_pki_makes() {
    let Some(openssl) = openssl("openssl_verifies_the_origin_certificates_pki_makes") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let city = tiersync_proto::types::DivisionCode::parse("5111").unwrap();
    let node = tiersync_proto::types::DivisionCode::parse("511102004001").unwrap();
    tiersync::identity::pki::init_dir(&pki, &city).unwrap();
    let (cert, _key) = tiersync::identity::pki::issue_origin_into_dir(&pki, &node).unwrap();
    let root = pki.join("trust-root.pem");
    let distid = format!("distid:{DIST_ID}");
    let out = run(
        &openssl,
        &[
            "verify",
            "-CAfile",
            path_str(&root),
            "-vfyopt",
            &distid,
            path_str(&cert),
        ],
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(": OK"),
        "openssl refused the origin certificate: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = run(
        &openssl,
        &["x509", "-in", path_str(&cert), "-noout", "-subject"],
    );
    let subject = String::from_utf8_lossy(&text.stdout);
    assert!(
        subject.contains("511102004001") && subject.contains("tiersync origin"),
        "{subject}"
    );
}

fn scope_json(s: &Option<wire::Scope>) -> serde_json::Value {
    match s {
        None => serde_json::Value::Null,
        Some(s) => serde_json::json!({
            "up_to": s.up_to,
            "down_to": s.down_to,
            "departments": s.departments,
        }),
    }
}

fn record_json(r: &wire::Record) -> String {
    let owner = r.owner.clone().unwrap_or_default();
    serde_json::json!({
        "id": hex::encode(&r.id),
        "kind": r.kind,
        "owner_node": owner.node,
        "owner_department": owner.department,
        "version": r.version,
        "updated_at": r.updated_at,
        "scope": scope_json(&r.scope),
        "reach": scope_json(&r.reach),
        "deleted": r.deleted,
        "withdrawn": r.withdrawn,
        "keys": r.keys.iter().map(|k| [k.name.clone(), k.value.clone()]).collect::<Vec<_>>(),
        "payload": hex::encode(&r.payload),
        "content_digest": hex::encode(&r.content_digest),
    })
    .to_string()
}

/// gmssl's verdict on `record`'s proof under `public_xy`, the leaf rebuilt
/// in Python.
fn gmssl_verdict(python: &Path, dir: &Path, record: &wire::Record, public_xy: &str) -> String {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let layout = here.join("tests/interop/record_layout.py");
    let checker = here.join("../trust/tests/interop/gmssl_interop.py");
    let json = dir.join("record.json");
    let leaf = dir.join("leaf.bin");
    let proof = dir.join("proof.bin");
    std::fs::write(&json, record_json(record)).unwrap();
    std::fs::write(&proof, &record.proof).unwrap();
    let out = run(
        python,
        &[path_str(&layout), path_str(&json), path_str(&leaf)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        python,
        &[
            path_str(&checker),
            "verify-proof",
            public_xy,
            path_str(&proof),
            path_str(&leaf),
        ],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gmssl_verifies_a_record_a_running_node_signed() {
    let Some(python) = gmssl_python("gmssl_verifies_a_record_a_running_node_signed") else {
        return;
    };
    tiersync::identity::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = Deployment::create(dir.path()).unwrap();
    let mut nodes = d.start_all(&["5111", "511102"]).await.unwrap();
    let county = nodes.pop().unwrap();
    let resident = civil::v1::Resident {
        name: "互认测试".into(),
        id_number: tiersync::demo::numbered_id_number(7),
        ..Default::default()
    };
    let put = county
        .node
        .put(PutInput {
            kind: "civil.v1.Resident".into(),
            payload: resident.encode_to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    let stored = county
        .node
        .reads(Reader::Node)
        .get(&put.stored.record.id)
        .await
        .unwrap()
        .unwrap();
    assert!(!stored.proof.is_empty());

    let point = county
        .node
        .identity()
        .verifying_key()
        .to_sec1_uncompressed();
    let public_xy = hex::encode(&point[1..]);
    assert_eq!(
        gmssl_verdict(&python, dir.path(), &stored, &public_xy),
        "valid"
    );
    // and gmssl notices a change anywhere the owner signed
    let mut altered = stored.clone();
    altered.version += 1;
    assert!(gmssl_verdict(&python, dir.path(), &altered, &public_xy).starts_with("invalid"));
    let mut widened = stored.clone();
    widened.scope.as_mut().unwrap().down_to.push("5111".into());
    assert!(gmssl_verdict(&python, dir.path(), &widened, &public_xy).starts_with("invalid"));
    // a withdrawal, as a hop derives it, still verifies through its digest
    let withdrawn = tiersync::identity::origin::withdrawal_of(stored);
    assert_eq!(
        gmssl_verdict(&python, dir.path(), &withdrawn, &public_xy),
        "valid"
    );
    for n in nodes.into_iter().chain([county]) {
        n.shutdown().await;
    }
}
