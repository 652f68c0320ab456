//! Independent verification: what we sign, implementations we did not write accept, and what
//! they sign, we accept. Both directions, against the OpenSSL 3 command line and Python's
//! `gmssl` (pure Python, pinned in `.ci/run`, driven through `tests/interop/gmssl_interop.py`).
//!
//! A test whose tool is absent prints `skipping <test>: <reason>` and passes, unless
//! `TIERSYNC_REQUIRE_INTEROP=1` (as `.ci/run` sets it), where it fails. The Python used is
//! `TIERSYNC_INTEROP_PYTHON`, else `python3`.
//!
//! OpenSSL 3.0 trap: its SM2 default distinguishing ID is empty, and 3.0's `pkeyutl` has no
//! `-vfyopt`; the ID goes in with `-pkeyopt distid:1234567812345678` for both `-sign` and
//! `-verify` (certificates use `-sigopt` / `-vfyopt` instead).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tiersync_trust::cert::{Certificate, Role};
use tiersync_trust::tree::{HashTree, verify_inclusion};
use tiersync_trust::{
    BatchSigner, DIST_ID, Digest, RecordProof, Signature, SigningKey, VerifyingKey, sm3,
};

const GMSSL_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/interop/gmssl_interop.py"
);

// === tool discovery ===

/// Returns `None` (and says why) when the test should skip; panics when skipping is not allowed.
fn unavailable(test: &str, reason: String) -> Option<PathBuf> {
    if std::env::var("TIERSYNC_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!("{test}: TIERSYNC_REQUIRE_INTEROP=1 but {reason}");
    }
    eprintln!("skipping {test}: {reason}");
    None
}

/// The OpenSSL 3 command line, if there.
fn openssl(test: &str) -> Option<PathBuf> {
    match Command::new("openssl").arg("version").output() {
        Ok(out) if out.status.success() => {
            let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if version.starts_with("OpenSSL 3.") {
                Some(PathBuf::from("openssl"))
            } else {
                unavailable(
                    test,
                    format!("`openssl version` is `{version}`, not OpenSSL 3"),
                )
            }
        }
        Ok(out) => unavailable(test, format!("`openssl version` failed: {}", out.status)),
        Err(error) => unavailable(test, format!("no `openssl` on PATH ({error})")),
    }
}

/// A Python that imports gmssl, if there.
fn gmssl_python(test: &str) -> Option<PathBuf> {
    let python = std::env::var_os("TIERSYNC_INTEROP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"));
    match Command::new(&python)
        .args(["-c", "import gmssl.sm2, gmssl.sm3"])
        .output()
    {
        Ok(out) if out.status.success() => Some(python),
        Ok(out) => unavailable(
            test,
            format!(
                "`{}` cannot import gmssl (pip install gmssl==3.2.2): {}",
                python.display(),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
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

fn run_ok(program: &Path, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{} {args:?} failed ({}): {}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("tool output is UTF-8")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// `openssl pkeyutl -verify` of `signature` over `message` with a public key PEM.
fn openssl_verifies(
    openssl: &Path,
    dir: &Path,
    public_pem: &str,
    message: &[u8],
    signature: &[u8],
    distid: Option<&str>,
) -> bool {
    let public = write(dir, "verify-pub.pem", public_pem);
    let msg = write(dir, "verify-msg", message);
    let sig = write(dir, "verify-sig.der", signature);
    let distid = distid.map(|id| format!("distid:{id}"));
    let mut args = vec![
        "pkeyutl",
        "-verify",
        "-rawin",
        "-digest",
        "sm3",
        "-pubin",
        "-inkey",
        path_str(&public),
        "-sigfile",
        path_str(&sig),
        "-in",
        path_str(&msg),
    ];
    if let Some(distid) = &distid {
        args.extend(["-pkeyopt", distid]);
    }
    let out = run(openssl, &args);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.success(),
        said.contains("Signature Verified Successfully"),
        "openssl exit status and output disagree: {said}"
    );
    out.status.success()
}

/// `openssl pkeyutl -sign` with a private key PEM file and the standard ID.
fn openssl_sign(openssl: &Path, dir: &Path, key_pem: &Path, message: &[u8]) -> Vec<u8> {
    let msg = write(dir, "sign-msg", message);
    let sig = dir.join("sign-sig.der");
    let distid = format!("distid:{DIST_ID}");
    run_ok(
        openssl,
        &[
            "pkeyutl",
            "-sign",
            "-rawin",
            "-digest",
            "sm3",
            "-inkey",
            path_str(key_pem),
            "-pkeyopt",
            &distid,
            "-in",
            path_str(&msg),
            "-out",
            path_str(&sig),
        ],
    );
    std::fs::read(sig).unwrap()
}

// === OpenSSL ===

#[test]
fn openssl_reads_our_keys_and_we_read_its_byte_for_byte() {
    let Some(openssl) = openssl("openssl_reads_our_keys_and_we_read_its_byte_for_byte") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();

    // Ours, rewritten by openssl, come back identical.
    let ours = SigningKey::generate();
    let ours_pem = write(
        dir.path(),
        "ours.pem",
        ours.to_pkcs8_pem().unwrap().as_bytes(),
    );
    let rewritten = run_ok(&openssl, &["pkey", "-in", path_str(&ours_pem)]);
    assert_eq!(rewritten, *ours.to_pkcs8_pem().unwrap());
    let public = run_ok(&openssl, &["pkey", "-in", path_str(&ours_pem), "-pubout"]);
    assert_eq!(public, ours.verifying_key().to_public_key_pem());
    let text = run_ok(
        &openssl,
        &["pkey", "-in", path_str(&ours_pem), "-noout", "-text"],
    );
    assert!(
        text.contains("ASN1 OID: SM2"),
        "openssl sees no SM2 key: {text}"
    );

    // Theirs, read by us and written back, are the same bytes.
    let theirs_pem = dir.path().join("theirs.pem");
    run_ok(
        &openssl,
        &[
            "genpkey",
            "-algorithm",
            "SM2",
            "-out",
            path_str(&theirs_pem),
        ],
    );
    let theirs_text = std::fs::read_to_string(&theirs_pem).unwrap();
    let theirs = SigningKey::from_pkcs8_pem(&theirs_text).unwrap();
    assert_eq!(*theirs.to_pkcs8_pem().unwrap(), theirs_text);
    let theirs_public = run_ok(&openssl, &["pkey", "-in", path_str(&theirs_pem), "-pubout"]);
    assert_eq!(
        VerifyingKey::from_public_key_pem(&theirs_public).unwrap(),
        *theirs.verifying_key()
    );
    assert_eq!(theirs.verifying_key().to_public_key_pem(), theirs_public);
}

#[test]
fn keys_of_another_curve_are_refused_by_name() {
    let Some(openssl) = openssl("keys_of_another_curve_are_refused_by_name") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p256 = dir.path().join("p256.pem");
    run_ok(
        &openssl,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            path_str(&p256),
        ],
    );
    let pem = std::fs::read_to_string(&p256).unwrap();
    let error = SigningKey::from_pkcs8_pem(&pem).unwrap_err().to_string();
    assert!(
        error.starts_with("PKCS#8 PEM private key is not a valid SM2 key"),
        "{error}"
    );
    let public = run_ok(&openssl, &["pkey", "-in", path_str(&p256), "-pubout"]);
    let error = VerifyingKey::from_public_key_pem(&public)
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("SPKI PEM public key is not a valid SM2 key"),
        "{error}"
    );
}

#[test]
fn openssl_verifies_our_signatures() {
    let Some(openssl) = openssl("openssl_verifies_our_signatures") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate();
    let public = key.verifying_key().to_public_key_pem();
    for message in [&b""[..], b"abc", &[0x5a; 1024]] {
        let signature = key.sign(message);
        assert!(
            openssl_verifies(
                &openssl,
                dir.path(),
                &public,
                message,
                signature.as_der(),
                Some(DIST_ID)
            ),
            "openssl refused our signature over {} bytes",
            message.len()
        );
        // The trap, shown: OpenSSL 3.0's default (empty) ID refuses the very same signature.
        assert!(!openssl_verifies(
            &openssl,
            dir.path(),
            &public,
            message,
            signature.as_der(),
            None
        ));
        let mut tampered = message.to_vec();
        tampered.push(0);
        assert!(!openssl_verifies(
            &openssl,
            dir.path(),
            &public,
            &tampered,
            signature.as_der(),
            Some(DIST_ID)
        ));
    }
}

#[test]
fn we_verify_openssl_signatures() {
    let Some(openssl) = openssl("we_verify_openssl_signatures") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let message = b"signed by openssl";

    // Its own key.
    let key_pem = dir.path().join("openssl.pem");
    run_ok(
        &openssl,
        &["genpkey", "-algorithm", "SM2", "-out", path_str(&key_pem)],
    );
    let public_pem = run_ok(&openssl, &["pkey", "-in", path_str(&key_pem), "-pubout"]);
    let public = VerifyingKey::from_public_key_pem(&public_pem).unwrap();
    let der = openssl_sign(&openssl, dir.path(), &key_pem, message);
    let signature = Signature::from_der(&der).unwrap();
    public.verify(message, &signature).unwrap();
    assert!(public.verify(b"something else", &signature).is_err());

    // Our key, used by openssl.
    let ours = SigningKey::generate();
    let ours_pem = write(
        dir.path(),
        "ours.pem",
        ours.to_pkcs8_pem().unwrap().as_bytes(),
    );
    let der = openssl_sign(&openssl, dir.path(), &ours_pem, message);
    ours.verifying_key()
        .verify(message, &Signature::from_der(&der).unwrap())
        .unwrap();

    // Signed under OpenSSL's default empty ID: we refuse it.
    let msg = write(dir.path(), "msg", message);
    let sig = dir.path().join("empty-id.der");
    run_ok(
        &openssl,
        &[
            "pkeyutl",
            "-sign",
            "-rawin",
            "-digest",
            "sm3",
            "-inkey",
            path_str(&key_pem),
            "-in",
            path_str(&msg),
            "-out",
            path_str(&sig),
        ],
    );
    let empty_id = Signature::from_der(&std::fs::read(sig).unwrap()).unwrap();
    assert!(public.verify(message, &empty_id).is_err());
}

#[test]
fn sm3_agrees_with_openssl() {
    let Some(openssl) = openssl("sm3_agrees_with_openssl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (i, input) in [&b""[..], b"abc", &[0xa5; 1024], &[7; 100_000]]
        .iter()
        .enumerate()
    {
        let file = write(dir.path(), &format!("in-{i}"), input);
        let out = run_ok(&openssl, &["dgst", "-sm3", "-r", path_str(&file)]);
        let theirs = out.split_whitespace().next().unwrap();
        assert_eq!(sm3(input).to_hex(), theirs, "SM3 of {} bytes", input.len());
    }
}

#[test]
fn openssl_verifies_a_batch_signature_from_its_proof() {
    let Some(openssl) = openssl("openssl_verifies_a_batch_signature_from_its_proof") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let signer = BatchSigner::new("511102004001", SigningKey::generate()).unwrap();
    let records: Vec<Vec<u8>> = (0..10)
        .map(|i| format!("record {i}").into_bytes())
        .collect();
    let batch = signer.sign(&records).unwrap();
    let public = signer.verifying_key().to_public_key_pem();
    // Any record's proof alone carries what an outside verifier needs for the signature.
    let proof = batch.proof(7).unwrap();
    let message = proof.signed_message();
    assert!(openssl_verifies(
        &openssl,
        dir.path(),
        &public,
        &message,
        proof.signature.as_der(),
        Some(DIST_ID)
    ));
    let mut recounted = proof.clone();
    recounted.leaf_count = 9;
    assert!(!openssl_verifies(
        &openssl,
        dir.path(),
        &public,
        &recounted.signed_message(),
        proof.signature.as_der(),
        Some(DIST_ID)
    ));
}

// === gmssl ===

fn gmssl(python: &Path, args: &[&str]) -> Output {
    let mut all = vec![GMSSL_SCRIPT];
    all.extend_from_slice(args);
    run(python, &all)
}

/// The 128 hex digits of `x || y`, as gmssl wants its public key: exactly the first byte of
/// the SEC1 point (`04`) dropped.
fn gmssl_public(key: &VerifyingKey) -> String {
    let point = key.to_sec1_uncompressed();
    assert_eq!(point[0], 0x04);
    hex::encode(&point[1..])
}

fn gmssl_verifies(
    python: &Path,
    dir: &Path,
    key: &VerifyingKey,
    message: &[u8],
    der: &[u8],
) -> bool {
    let msg = write(dir, "gm-msg", message);
    let sig = write(dir, "gm-sig.der", der);
    let out = gmssl(
        python,
        &["verify", &gmssl_public(key), path_str(&msg), path_str(&sig)],
    );
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match (out.status.code(), said.as_str()) {
        (Some(0), "valid") => true,
        (Some(1), "invalid") => false,
        _ => panic!(
            "gmssl script failed ({}): {said} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[test]
fn gmssl_verifies_our_signatures() {
    let Some(python) = gmssl_python("gmssl_verifies_our_signatures") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // One key whose x starts with 0x04, where a naive lstrip("04") of the hex strips too much.
    let awkward = std::iter::repeat_with(SigningKey::generate)
        .find(|key| key.verifying_key().to_sec1_uncompressed()[1] == 0x04)
        .expect("one key in 256 has it");
    for key in [SigningKey::generate(), awkward] {
        for message in [&b"abc"[..], &[0x5a; 1024]] {
            let signature = key.sign(message);
            assert!(
                gmssl_verifies(
                    &python,
                    dir.path(),
                    key.verifying_key(),
                    message,
                    signature.as_der()
                ),
                "gmssl refused our signature with key {}",
                key.verifying_key().key_id()
            );
            assert!(!gmssl_verifies(
                &python,
                dir.path(),
                key.verifying_key(),
                b"other",
                signature.as_der()
            ));
        }
    }
}

#[test]
fn we_verify_gmssl_signatures() {
    let Some(python) = gmssl_python("we_verify_gmssl_signatures") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let message = b"signed by gmssl";
    let msg = write(dir.path(), "msg", message);
    for _ in 0..3 {
        let out = run_ok(&python, &[GMSSL_SCRIPT, "sign", path_str(&msg)]);
        let field = |name: &str| {
            out.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("no `{name}` in gmssl output: {out}"))
        };
        let point = hex::decode(format!("04{}", field("public_xy"))).unwrap();
        let key = VerifyingKey::from_sec1_bytes(&point).unwrap();
        let signature = Signature::from_der(&hex::decode(field("signature_der")).unwrap()).unwrap();
        key.verify(message, &signature).unwrap();
        assert!(key.verify(b"signed by someone else", &signature).is_err());
    }
}

#[test]
fn gmssl_sm3_and_tree_equal_ours() {
    let Some(python) = gmssl_python("gmssl_sm3_and_tree_equal_ours") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (i, input) in [&b""[..], b"abc", &[0xa5; 1024]].iter().enumerate() {
        let file = write(dir.path(), &format!("in-{i}"), input);
        let theirs = run_ok(&python, &[GMSSL_SCRIPT, "sm3", path_str(&file)]);
        assert_eq!(sm3(input).to_hex(), theirs.trim());
    }
    for n in [1usize, 2, 3, 5, 8, 13, 31, 100] {
        let leaves: Vec<Vec<u8>> = (0..n).map(|i| format!("leaf {i}").into_bytes()).collect();
        let tree = HashTree::from_leaves(&leaves);
        let out = run_ok(&python, &[GMSSL_SCRIPT, "tree", &n.to_string()]);
        let mut paths = 0;
        for line in out.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            match fields[..] {
                ["root", count, root] => {
                    assert_eq!(count, n.to_string());
                    assert_eq!(tree.root().to_hex(), root, "root of {n} leaves");
                }
                ["path", _, index, ref rest @ ..] => {
                    let index: u64 = index.parse().unwrap();
                    let theirs: Vec<Digest> = rest
                        .first()
                        .map(|h| h.split(',').map(|h| Digest::from_hex(h).unwrap()).collect())
                        .unwrap_or_default();
                    assert_eq!(
                        tree.inclusion_path(index).unwrap(),
                        theirs,
                        "path {index} of {n}"
                    );
                    verify_inclusion(
                        &leaves[index as usize],
                        index,
                        n as u64,
                        &theirs,
                        &tree.root(),
                    )
                    .unwrap();
                    paths += 1;
                }
                _ => panic!("unexpected gmssl tree line `{line}`"),
            }
        }
        assert_eq!(paths, n);
    }
}

#[test]
fn gmssl_verifies_a_batch_signature_from_its_proof() {
    let Some(python) = gmssl_python("gmssl_verifies_a_batch_signature_from_its_proof") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let signer = BatchSigner::new("5111", SigningKey::generate()).unwrap();
    let batch = signer.sign([b"a".as_slice(), b"b", b"c"]).unwrap();
    let proof = batch.proof(2).unwrap();
    assert!(gmssl_verifies(
        &python,
        dir.path(),
        signer.verifying_key(),
        &proof.signed_message(),
        proof.signature.as_der()
    ));
}

// === the committed vectors, checked by both ===

fn vector(name: &str) -> Vec<u8> {
    let file = include_str!("vectors/batch-v1.txt");
    let value = file
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no `{name}` in batch-v1.txt"));
    hex::decode(value).unwrap()
}

#[test]
fn openssl_and_gmssl_verify_the_committed_vector() {
    let public = VerifyingKey::from_public_key_der(&vector("public_key_spki")).unwrap();
    let message = vector("signed_message");
    let signature = vector("signature");
    let dir = tempfile::tempdir().unwrap();
    if let Some(openssl) = openssl("openssl_and_gmssl_verify_the_committed_vector (openssl)") {
        assert!(openssl_verifies(
            &openssl,
            dir.path(),
            &public.to_public_key_pem(),
            &message,
            &signature,
            Some(DIST_ID)
        ));
    }
    if let Some(python) = gmssl_python("openssl_and_gmssl_verify_the_committed_vector (gmssl)") {
        assert!(gmssl_verifies(
            &python,
            dir.path(),
            &public,
            &message,
            &signature
        ));
        // And every committed proof, whole, from the documented formats alone.
        let file = include_str!("vectors/batch-v1.txt");
        let mut proofs = 0;
        for line in file.lines() {
            let Some(rest) = line.strip_prefix("proof ") else {
                continue;
            };
            let (index, bytes) = rest.split_once(' ').unwrap();
            let proof = write(dir.path(), "proof", hex::decode(bytes).unwrap());
            let leaf = write(dir.path(), "leaf", format!("record {index} of 5"));
            let out = gmssl(
                &python,
                &[
                    "verify-proof",
                    &gmssl_public(&public),
                    path_str(&proof),
                    path_str(&leaf),
                ],
            );
            assert!(
                out.status.success(),
                "gmssl refused committed proof {index}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            proofs += 1;
        }
        assert_eq!(proofs, 5);
    }
}

// === X.509 ===

const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

#[test]
fn openssl_verifies_our_certificates() {
    let Some(openssl) = openssl("openssl_verifies_our_certificates") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca_key = SigningKey::generate();
    let ca = Certificate::self_signed(&ca_key, "CN=5111,O=tiersync", DAY).unwrap();
    let leaf_key = SigningKey::generate();
    let leaf = ca
        .issue(
            &ca_key,
            "CN=511102004001,O=tiersync",
            leaf_key.verifying_key(),
            Role::Signer,
            DAY,
        )
        .unwrap();
    let ca_pem = write(dir.path(), "ca.pem", ca.to_pem());
    let leaf_pem = write(dir.path(), "leaf.pem", leaf.to_pem());
    let distid = format!("distid:{DIST_ID}");
    let out = run_ok(
        &openssl,
        &[
            "verify",
            "-CAfile",
            path_str(&ca_pem),
            "-vfyopt",
            &distid,
            path_str(&leaf_pem),
        ],
    );
    assert!(out.contains(": OK"), "{out}");
    // The trap, shown: without the ID, OpenSSL 3.0 refuses the same chain.
    let out = run(
        &openssl,
        &["verify", "-CAfile", path_str(&ca_pem), path_str(&leaf_pem)],
    );
    assert!(!out.status.success());
    // OpenSSL reads the signature as DER SEQUENCE{r, s} and the key as SM2.
    let text = run_ok(
        &openssl,
        &["x509", "-in", path_str(&leaf_pem), "-noout", "-text"],
    );
    assert!(text.contains("Signature Algorithm: SM2-with-SM3"), "{text}");
    assert!(text.contains("ASN1 OID: SM2"), "{text}");
}

#[test]
fn we_verify_openssl_certificates() {
    let Some(openssl) = openssl("we_verify_openssl_certificates") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let distid = format!("distid:{DIST_ID}");
    for name in ["ca.key", "leaf.key"] {
        run_ok(
            &openssl,
            &["genpkey", "-algorithm", "SM2", "-out", path_str(&p(name))],
        );
    }
    run_ok(
        &openssl,
        &[
            "req",
            "-new",
            "-key",
            path_str(&p("ca.key")),
            "-subj",
            "/CN=openssl ca",
            "-sigopt",
            &distid,
            "-out",
            path_str(&p("ca.csr")),
        ],
    );
    let ext = write(
        dir.path(),
        "ca.ext",
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    );
    run_ok(
        &openssl,
        &[
            "x509",
            "-req",
            "-in",
            path_str(&p("ca.csr")),
            "-key",
            path_str(&p("ca.key")),
            "-sigopt",
            &distid,
            "-vfyopt",
            &distid,
            "-extfile",
            path_str(&ext),
            "-days",
            "1",
            "-out",
            path_str(&p("ca.pem")),
        ],
    );
    run_ok(
        &openssl,
        &[
            "req",
            "-new",
            "-key",
            path_str(&p("leaf.key")),
            "-subj",
            "/CN=openssl leaf",
            "-sigopt",
            &distid,
            "-out",
            path_str(&p("leaf.csr")),
        ],
    );
    run_ok(
        &openssl,
        &[
            "x509",
            "-req",
            "-in",
            path_str(&p("leaf.csr")),
            "-CA",
            path_str(&p("ca.pem")),
            "-CAkey",
            path_str(&p("ca.key")),
            "-sigopt",
            &distid,
            "-vfyopt",
            &distid,
            "-days",
            "1",
            "-out",
            path_str(&p("leaf.pem")),
        ],
    );
    let ca = Certificate::from_pem(&std::fs::read_to_string(p("ca.pem")).unwrap()).unwrap();
    let leaf = Certificate::from_pem(&std::fs::read_to_string(p("leaf.pem")).unwrap()).unwrap();
    let ca_key = ca.public_key().unwrap();
    ca.verify_signature(&ca_key).unwrap();
    leaf.verify_signature(&ca_key).unwrap();
    assert!(leaf.verify_signature(&leaf.public_key().unwrap()).is_err());
    // Signed under OpenSSL's default empty ID, the same certificate does not verify for us.
    run_ok(
        &openssl,
        &[
            "x509",
            "-req",
            "-in",
            path_str(&p("leaf.csr")),
            "-CA",
            path_str(&p("ca.pem")),
            "-CAkey",
            path_str(&p("ca.key")),
            "-vfyopt",
            &distid,
            "-days",
            "1",
            "-out",
            path_str(&p("empty-id.pem")),
        ],
    );
    let empty_id =
        Certificate::from_pem(&std::fs::read_to_string(p("empty-id.pem")).unwrap()).unwrap();
    assert!(empty_id.verify_signature(&ca_key).is_err());
}

#[test]
fn gmssl_verifies_our_certificates() {
    let Some(python) = gmssl_python("gmssl_verifies_our_certificates") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca_key = SigningKey::generate();
    let ca = Certificate::self_signed(&ca_key, "CN=5111,O=tiersync", DAY).unwrap();
    let leaf_key = SigningKey::generate();
    let leaf = ca
        .issue(
            &ca_key,
            "CN=511102,O=tiersync",
            leaf_key.verifying_key(),
            Role::Authority,
            DAY,
        )
        .unwrap();
    let check = |cert: &Certificate, issuer: &VerifyingKey| {
        let file = write(dir.path(), "cert.der", cert.to_der());
        let out = gmssl(
            &python,
            &["verify-cert", &gmssl_public(issuer), path_str(&file)],
        );
        String::from_utf8_lossy(&out.stdout).trim() == "valid" && out.status.success()
    };
    assert!(
        check(&ca, ca_key.verifying_key()),
        "gmssl refused our self-signed authority"
    );
    assert!(
        check(&leaf, ca_key.verifying_key()),
        "gmssl refused our issued certificate"
    );
    assert!(!check(&leaf, leaf_key.verifying_key()));
}

#[test]
fn gmssl_verifies_whole_record_proofs_from_the_documented_formats() {
    let Some(python) =
        gmssl_python("gmssl_verifies_whole_record_proofs_from_the_documented_formats")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let signer = BatchSigner::new("511102004001", SigningKey::generate()).unwrap();
    let records: Vec<Vec<u8>> = (0..11)
        .map(|i| format!("record {i}").into_bytes())
        .collect();
    let batch = signer.sign(&records).unwrap();
    let public = gmssl_public(signer.verifying_key());
    let check = |proof: &RecordProof, leaf: &[u8]| {
        let proof_file = write(dir.path(), "proof", proof.to_bytes().unwrap());
        let leaf_file = write(dir.path(), "leaf", leaf);
        let out = gmssl(
            &python,
            &[
                "verify-proof",
                &public,
                path_str(&proof_file),
                path_str(&leaf_file),
            ],
        );
        let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert_eq!(
            out.status.success(),
            said == "valid",
            "{said} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.status.success()
    };
    for (proof, record) in batch.proofs().zip(&records) {
        assert!(
            check(&proof, record),
            "gmssl refused the proof of leaf {}",
            proof.leaf_index
        );
    }
    let proof = batch.proof(6).unwrap();
    assert!(!check(&proof, b"forged"));
    let mut recounted = proof.clone();
    recounted.leaf_count = 12;
    assert!(!check(&recounted, &records[6]));
    let mut moved = proof.clone();
    moved.leaf_index = 7;
    assert!(!check(&moved, &records[6]));
}
