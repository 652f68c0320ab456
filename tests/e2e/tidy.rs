//! Tidy checks over the source tree: every crate root and module file says
//! what it is in a `//!` doc, and no stubs slip in.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "gen") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_has_a_doc_and_no_stubs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let mut files = Vec::new();
    for dir in [
        "proto/src",
        "daemon/src",
        "adapters/api/src",
        "tests/src",
        "tests/e2e",
        "daemon/benches",
    ] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(
        files.len() > 20,
        "found only {} files under {}",
        files.len(),
        root.display()
    );
    // Built from pieces so this file does not match itself.
    let needles = [
        format!("{}!(", "todo"),
        format!("{}!(", "unimplemented"),
        format!("#[{}", "ignore"),
        format!("{}_panic", "should"),
    ];
    let mut missing = Vec::new();
    let mut stubs = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        if !text.trim_start().starts_with("//!") {
            missing.push(f.strip_prefix(&root).unwrap().display().to_string());
        }
        for (i, line) in text.lines().enumerate() {
            let stub = needles.iter().any(|needle| line.contains(needle.as_str()));
            if stub {
                stubs.push(format!(
                    "{}:{}",
                    f.strip_prefix(&root).unwrap().display(),
                    i + 1
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "files without a `//!` module doc: {missing:?}"
    );
    assert!(stubs.is_empty(), "stubs or ignored tests: {stubs:?}");
}
