//! Replays every committed fuzz input through its target, on stable: the
//! corpora in `fuzz/corpus/<target>/` and what fuzzing found, kept in
//! `fuzz/regressions/<target>/`. The targets are the library functions the
//! cargo-fuzz targets call (`tiersync::fuzzing`), so a finding that comes
//! back fails `cargo test`, nightly or not.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tiersync::fuzzing::{TARGETS, Target};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `target` on every input under `fuzz/<folder>/<target>/`; returns
/// how many ran and the failures, each naming its file. A panic on another
/// thread (a task of the link session) counts too: the session would
/// swallow it, libFuzzer's panic hook would not.
fn replay(target: &Target, folder: &str, panics: &Arc<AtomicUsize>) -> (usize, Vec<String>) {
    let files = inputs(&fuzz_dir().join(folder).join(target.name));
    let mut failures = Vec::new();
    for file in &files {
        let data = std::fs::read(file).expect("read a corpus file");
        let before = panics.load(Ordering::SeqCst);
        let result = std::panic::catch_unwind(|| (target.run)(&data));
        if result.is_err() || panics.load(Ordering::SeqCst) != before {
            failures.push(format!("{} panicked on {}", target.name, file.display()));
        }
    }
    (files.len(), failures)
}

#[test]
fn every_committed_fuzz_input_runs_clean() {
    let panics = Arc::new(AtomicUsize::new(0));
    let counted = panics.clone();
    let previous = Mutex::new(Some(std::panic::take_hook()));
    std::panic::set_hook(Box::new(move |info| {
        counted.fetch_add(1, Ordering::SeqCst);
        if let Some(hook) = previous.lock().expect("hook lock").as_ref() {
            hook(info);
        }
    }));
    let mut failures = Vec::new();
    for target in TARGETS {
        let source = fuzz_dir()
            .join("fuzz_targets")
            .join(format!("{}.rs", target.name));
        assert!(
            source.is_file(),
            "target `{}` has no cargo-fuzz target {}",
            target.name,
            source.display()
        );
        let (seeds, failed) = replay(target, "corpus", &panics);
        assert!(
            seeds > 0,
            "target `{}` has no committed corpus in fuzz/corpus/{}",
            target.name,
            target.name
        );
        failures.extend(failed);
        failures.extend(replay(target, "regressions", &panics).1);
    }
    let _ = std::panic::take_hook();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn every_cargo_fuzz_target_is_a_listed_target() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let listed: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
    for file in inputs(&fuzz_dir().join("fuzz_targets")) {
        let name = file
            .file_stem()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        assert!(
            listed.contains(&name.as_str()),
            "fuzz target `{name}` is not in tiersync::fuzzing::TARGETS"
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz target `{name}` is not a [[bin]] of fuzz/Cargo.toml"
        );
    }
}

/// The seeds reach the checks past the decoders: the records they carry
/// are signed with keys the fixture node knows and pass its arrival checks
/// from the side they come from, and a session's batches are applied.
#[test]
fn seeds_are_accepted_where_they_are_sent() {
    use prost::Message;
    use tiersync::fuzzing::{fixture, link, seeds};
    use tiersync::route::Toward;
    use tiersync_proto::wire;

    let fx = fixture::node();
    let node = &fx.node;
    let seeds = seeds::seeds();
    let mut checked = 0;
    for seed in seeds.iter().filter(|s| s.target == "record") {
        let record = wire::Record::decode(seed.bytes.as_slice()).expect("a record seed decodes");
        let (peer, from) = if seed.name.starts_with("community-") {
            (fixture::COMMUNITY, Toward::Child)
        } else {
            (fixture::COUNTY, Toward::Parent)
        };
        node.check_incoming(&record, &fixture::code(peer), from)
            .unwrap_or_else(|e| panic!("seed {}: {e}", seed.name));
        assert_eq!(
            node.keyring().verify(&[&record]).pop(),
            Some(Ok(())),
            "seed {}",
            seed.name
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} record seeds");
    let session = seeds
        .iter()
        .find(|s| s.name == "child-session")
        .expect("a child session seed");
    link::link_session(&session.bytes);
    let (_, _, frames) = link::frames(&session.bytes).expect("frames");
    for frame in frames {
        let Ok(wire::LinkFrame {
            body: Some(wire::link_frame::Body::Batch(batch)),
        }) = frame
        else {
            continue;
        };
        for bytes in batch.records {
            let record = wire::Record::decode(bytes).expect("a record");
            let held = fx
                .runtime
                .block_on(node.reads(tiersync::node::Reader::Node).get(&record.id))
                .expect("the store");
            assert!(
                held.is_some(),
                "the session did not apply {} of the seed",
                record.kind
            );
        }
    }
}
