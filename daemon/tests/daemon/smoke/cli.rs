//! What the command line takes in: a record's payload from a file or
//! standard input.

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
