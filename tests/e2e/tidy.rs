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

/// The module a `.rs` file under `daemon/src` is: `node/read.rs` is
/// `node::read`, `node/mod.rs` is `node`, `lib.rs` is the crate root.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts
        .last()
        .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
    {
        parts.pop();
    }
    parts
}

/// The non-test part of a file: everything before its `#[cfg(test)]`
/// module.
fn non_test(text: &str) -> &str {
    match text.find("\n#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    }
}

/// The modules of the daemon, each with the modules its non-test code
/// names through `crate::` or `super::` paths. The longest prefix of a
/// path that is a module is the module it uses; a child's use of its own
/// ancestors does not count (a child is part of its parent).
fn daemon_module_graph(src: &Path) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: std::collections::BTreeSet<Vec<String>> =
        files.iter().map(|f| module_of(src, f)).collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut graph = std::collections::BTreeMap::new();
    for f in &files {
        let me = module_of(src, f);
        let text = std::fs::read_to_string(f).unwrap();
        let code: String = non_test(&text)
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut uses = std::collections::BTreeSet::new();
        for (start, _) in code
            .match_indices("crate::")
            .chain(code.match_indices("super::"))
        {
            if start > 0 && code[..start].ends_with(|c: char| ident(c) || c == ':') {
                continue;
            }
            let rest = &code[start..];
            let mut path: Vec<String> = if rest.starts_with("super::") {
                let mut base = me.clone();
                let mut rest = rest;
                while let Some(r) = rest.strip_prefix("super::") {
                    base.pop();
                    rest = r;
                }
                let names: Vec<String> = rest
                    .split("::")
                    .map(|s| s.chars().take_while(|c| ident(*c)).collect::<String>())
                    .take_while(|s| !s.is_empty())
                    .collect();
                base.into_iter().chain(names).collect()
            } else {
                rest["crate::".len()..]
                    .split("::")
                    .map(|s| s.chars().take_while(|c| ident(*c)).collect::<String>())
                    .take_while(|s| !s.is_empty())
                    .collect()
            };
            while !path.is_empty() && !modules.contains(&path) {
                path.pop();
            }
            // A use of an ancestor (or of itself) is not an edge.
            if me.starts_with(&path) {
                continue;
            }
            uses.insert(path.join("::"));
        }
        graph.insert(me.join("::"), uses.into_iter().collect());
    }
    graph
}

/// A cycle in `graph`, if there is one, as the modules along it.
fn find_cycle(graph: &std::collections::BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &std::collections::BTreeMap<String, Vec<String>>,
        state: &mut std::collections::BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(2) => return None,
            Some(1) => {
                let at = stack.iter().position(|n| n == node).unwrap();
                let mut cycle = stack[at..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, state, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = std::collections::BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut state, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn no_module_cycle_in_the_daemon() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon/src");
    let graph = daemon_module_graph(&src);
    assert!(graph.contains_key("node::read") && graph.contains_key("sync::session"));
    // The check itself finds a planted cycle.
    let mut planted = graph.clone();
    planted
        .get_mut("route")
        .unwrap()
        .push("sync::session".to_owned());
    assert!(
        find_cycle(&planted).is_some(),
        "the planted cycle was missed"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "the daemon's modules import each other in a cycle: {}",
            cycle.join(" → ")
        );
    }
}
#[test]
fn no_daemon_file_is_over_700_lines_of_non_test_code() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut long = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let lines = non_test(&text).lines().count();
        // Behavioural test suites (`tests.rs`, or a `tests/` folder) are
        // test code throughout.
        let suite = f.file_name().is_some_and(|n| n == "tests.rs")
            || f.strip_prefix(&src)
                .unwrap()
                .components()
                .any(|c| c.as_os_str() == "tests");
        if lines > 700 && !suite {
            long.push(format!(
                "{} ({lines})",
                f.strip_prefix(&src).unwrap().display()
            ));
        }
    }
    assert!(
        long.is_empty(),
        "files over 700 lines of non-test code (split them by what they own): {long:?}"
    );
}
