//! Regenerates the Rust bindings and the descriptor set from `proto/` with
//! protox (no system `protoc`) and fails if they differ from the committed
//! files in `src/gen/`. On a difference the fresh files are written, so
//! running the test once more after a schema change passes.

use std::path::{Path, PathBuf};

const PROTOS: &[&str] = &[
    "tiersync/v1/options.proto",
    "tiersync/v1/record.proto",
    "tiersync/v1/sync.proto",
    "tiersync/v1/api.proto",
    "tiersync/v1/join.proto",
    "tiersync/v1/trust.proto",
    "tiersync/v1/department.proto",
    "tiersync/adapter/v1/adapter.proto",
    "civil/v1/resident.proto",
    "service/v1/application.proto",
    "gov/v1/notice.proto",
];

#[test]
fn generated_code_is_up_to_date() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut compiler = protox::Compiler::new([&root]).expect("include path");
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(PROTOS)
        .expect("protos compile");
    let fds = compiler.file_descriptor_set();
    let scratch = tempfile::tempdir().unwrap();
    tonic_prost_build::configure()
        // Records' large fields and a batch's records are slices of the
        // buffer they were read from, not copies (see sync.proto's Batch).
        .bytes(".tiersync.v1.Record.payload")
        .bytes(".tiersync.v1.Record.proof")
        .bytes(".tiersync.v1.Batch.records")
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .out_dir(scratch.path())
        .compile_fds(fds.clone())
        .expect("code generation");
    // Encoded by protox, not from `fds`: prost_types drops unknown fields,
    // and to it the custom options ((tiersync.v1.personal),
    // (tiersync.v1.canonical)) are unknown fields of FieldOptions and
    // MessageOptions. `Schemas` reads them from this file at run time.
    std::fs::write(
        scratch.path().join("descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )
    .unwrap();

    let gen_dir = root.join("src/gen");
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(scratch.path()).unwrap() {
        let entry = entry.unwrap();
        let fresh = std::fs::read(entry.path()).unwrap();
        let committed = gen_dir.join(entry.file_name());
        if read_or_empty(&committed) != fresh {
            std::fs::write(&committed, &fresh).unwrap();
            stale.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    assert!(
        stale.is_empty(),
        "generated files were stale and have been rewritten: {stale:?}; commit them"
    );
}

fn read_or_empty(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}
