//! What the command line takes in and prints: a record's payload from a
//! file or standard input, a config file (`check-config`, with and without
//! `--files`), and a node's link states (`status --json`, `--problems`).

use super::*;

/// Arguments as `run` takes them.
fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Runs `tiersync` with `input` on its standard input.
fn run_with_stdin(args: &[&str], input: &str) -> Output {
    let mut child = command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tiersync");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait for tiersync")
}

/// `tiersync put --json-file FILE` (`-`: standard input) takes a payload too
/// large for a command-line argument, and refuses bad JSON before anything
/// is sent. No node listens at the address given: a payload that parses
/// gets as far as dialling it.
#[test]
fn put_reads_its_payload_from_a_file_or_standard_input() {
    // Port 9 (discard) is closed on this machine: dialling fails at once.
    let put = |source: &str| {
        vec![
            "put".to_owned(),
            "--api".to_owned(),
            "127.0.0.1:9".to_owned(),
            "--kind".to_owned(),
            RESIDENT.to_owned(),
            "--json-file".to_owned(),
            source.to_owned(),
        ]
    };
    let big = format!(
        r#"{{"name":"大记录","idNumber":"11010519491231002X","notes":"{}"}}"#,
        "x".repeat(200_000)
    );
    let dialled = |out: &Output| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        !out.status.success() && stderr.contains("cannot reach the local API at 127.0.0.1:9")
    };

    let from_stdin = put("-");
    let out = run_with_stdin(&refs(&from_stdin), &big);
    assert!(dialled(&out), "{}", String::from_utf8_lossy(&out.stderr));

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("resident.json");
    std::fs::write(&file, &big).expect("write payload");
    let from_file = put(file.to_str().expect("utf-8 path"));
    let out = run(&refs(&from_file));
    assert!(dialled(&out), "{}", String::from_utf8_lossy(&out.stderr));

    // bad JSON is refused, naming the kind, before anything is dialled
    let out = run_with_stdin(&refs(&from_stdin), r#"{"name": 5}"#);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(RESIDENT) && !stderr.contains("cannot reach"),
        "{stderr}"
    );

    // a missing file is named; no payload at all says how to give one
    let out = run(&refs(&put("/nonexistent/resident.json")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read the payload JSON from /nonexistent/resident.json"),
        "{stderr}"
    );
    let out = run(&["put", "--api", "127.0.0.1:9", "--kind", RESIDENT]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("give the payload with --json TEXT or --json-file FILE"),
        "{stderr}"
    );
}

/// A community config with its files under `pki/` beside it, and two
/// mistakes of meaning: the tier does not match the 12-digit code, and the
/// parent is not the street the code belongs to.
const BAD_MEANING: &str = r#"version = 1
[node]
code = "511102004001"
tier = "street"
[storage]
path = "node.db"
[listen]
api = "127.0.0.1:7401"
[parent]
code = "511102006"
address = "street.example:7400"
[tls]
ca = "pki/ca.pem"
cert = "pki/511102004001.pem"
key = "pki/511102004001.key"
[trust]
root = "pki/trust-root.pem"
key = "pki/511102004001.sm2.key"
cert = "pki/511102004001.sm2.pem"
[deployment]
digest_key_file = "pki/deployment.key"
"#;

/// Writes `text` as `tiersync.toml` in a new folder, and returns both.
fn config_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tiersync.toml");
    std::fs::write(&path, text).expect("write config");
    let path = path.to_str().expect("utf-8").to_owned();
    (dir, path)
}

/// `check-config` reports every mistake in one run, each with its key and
/// line: mistakes of meaning, an unknown key and a value of the wrong type
/// together; and fails.
#[test]
fn check_config_reports_every_mistake_at_once() {
    let text = BAD_MEANING
        .replace(
            "cert = \"pki/511102004001.pem\"",
            "cert_file = \"pki/511102004001.pem\"",
        )
        .replace("[deployment]", "[sync]\nwindow = \"16\"\n[deployment]");
    let (_dir, path) = config_file(&text);
    // FILE and --config FILE are the same.
    for args in [
        vec!["check-config", path.as_str()],
        vec!["check-config", "--config", path.as_str()],
    ] {
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "check-config accepted it:\n{stderr}");
        assert!(out.stdout.is_empty(), "nothing on stdout for a bad file");
        let listed: Vec<&str> = stderr
            .lines()
            .filter_map(|l| l.strip_prefix("  - "))
            .collect();
        assert_eq!(
            listed,
            vec![
                "line 4: `node.tier`: `street` does not match node.code `511102004001`, which has 12 digits and so is a community node; a street code has 9 digits",
                "line 10: `parent.code`: `511102006` does not own node `511102004001`; the parent of `511102004001` is `511102004` (its first 9 digits)",
                "line 14: `tls.cert_file`: unknown key (did you mean `cert`?)",
                "line 21: `sync.window`: expected an integer, 0 or more, found a string (\"16\")",
                "`tls.cert`: missing",
            ],
            "{stderr}"
        );
        assert!(stderr.contains("has 5 problem(s)"), "{stderr}");
    }
    // `serve` refuses the file with the same complete report.
    let checked = run(&["check-config", path.as_str()]);
    let served = run(&["serve", "--config", path.as_str()]);
    assert!(!served.status.success());
    assert_eq!(
        String::from_utf8_lossy(&served.stderr),
        String::from_utf8_lossy(&checked.stderr)
    );
}

/// Without `--files`, `check-config` opens none of the files a config
/// names, so a config can be checked before its keys are in place; with
/// it, every file is checked and each problem named by its key.
#[test]
fn check_config_opens_the_files_a_config_names_only_with_files() {
    let good = BAD_MEANING
        .replace("tier = \"street\"", "tier = \"community\"")
        .replace("code = \"511102006\"", "code = \"511102004\"");
    let (dir, path) = config_file(&good);
    let pki = dir.path().join("pki");
    assert!(!pki.exists());

    let ok = run_ok(&["check-config", &path]);
    assert!(ok.contains(": ok (community node `511102004001`"), "{ok}");
    assert!(ok.contains("not opened (--files checks them)"), "{ok}");

    // Two files there but wrong, the rest missing.
    std::fs::create_dir(&pki).expect("mkdir pki");
    std::fs::write(pki.join("ca.pem"), "not a certificate\n").expect("write");
    std::fs::write(pki.join("deployment.key"), "zz-not-hex\n").expect("write");
    let out = run(&["check-config", "--files", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "check-config --files accepted it:\n{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing on stdout for a bad file");
    let listed: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("  - "))
        .collect();
    let keys: Vec<&str> = listed
        .iter()
        .map(|l| l.split('`').nth(1).expect("a key in backquotes"))
        .collect();
    assert_eq!(
        keys,
        vec![
            "tls.ca",
            "tls.cert",
            "tls.key",
            "trust.root",
            "trust.key",
            "trust.cert",
            "deployment.digest_key_file",
        ],
        "{stderr}"
    );
    let pki = pki.display().to_string();
    assert!(
        listed[0].starts_with(&format!(
            "`tls.ca`: {pki}/ca.pem is not a PEM certificate file: it holds no CERTIFICATE block"
        )),
        "{stderr}"
    );
    assert!(
        listed[1].starts_with(&format!("`tls.cert`: cannot read {pki}/511102004001.pem: ")),
        "{stderr}"
    );
    assert!(
        listed[6].starts_with(&format!(
            "`deployment.digest_key_file`: {pki}/deployment.key is not a deployment secret (hex): "
        )),
        "{stderr}"
    );
    // `serve` refuses to start with the same complete report.
    let served = run(&["serve", "--config", &path]);
    assert!(!served.status.success());
    assert_eq!(String::from_utf8_lossy(&served.stderr), stderr);
}

/// `tiersync status --json` prints the links with their states, reasons
/// and ms times; `--problems` only what is not ok: nothing while the
/// county's link is up, the link once the county is gone.
#[test]
fn status_json_and_problems_show_link_states() {
    let mut cluster = Cluster::new();
    cluster.launch(CITY, None);
    cluster.launch(COUNTY, Some(CITY));
    let api = cluster.api(CITY);
    let status = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["status", "--api", api.as_str(), "--json"];
        args.extend_from_slice(extra);
        serde_json::from_str(&run_ok(&args)).expect("status --json is JSON")
    };
    let link = eventually("the county's link ok at the city", READY_TIMEOUT, || {
        let s = status(&[]);
        let link = s["links"]
            .as_array()?
            .iter()
            .find(|l| l["peer"] == COUNTY)?
            .clone();
        (link["state"] == "ok").then_some(link)
    });
    assert_eq!(link["direction"], "child");
    assert_eq!(link["reason"], "session up");
    assert!(link["since_ms"].as_i64().is_some_and(|ms| ms > 0), "{link}");
    let printed = run_ok(&["status", "--api", &api, "--problems"]);
    assert!(
        printed.contains("no problems: every link is ok, no worker is retrying or failed"),
        "{printed}"
    );

    cluster.kill(COUNTY);
    let link = eventually(
        "the county's link retrying at the city",
        READY_TIMEOUT,
        || {
            let s = status(&["--problems"]);
            let links = s["links"].as_array()?.clone();
            (links.len() == 1 && links[0]["state"] == "retrying").then(|| links[0].clone())
        },
    );
    assert_eq!(link["peer"], COUNTY);
    assert!(
        link["reason"]
            .as_str()
            .is_some_and(|r| r.ends_with("; waiting for the child to dial again")),
        "{link}"
    );
    let printed = run_ok(&["status", "--api", &api, "--problems"]);
    assert!(
        printed.contains(COUNTY) && printed.contains("retrying") && printed.contains(" UTC ("),
        "{printed}"
    );
}
