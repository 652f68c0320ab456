//! Writes the fuzz targets' seed inputs (`tiersync::fuzzing::seeds`, made
//! from real encoded values signed with the fixture's keys) to
//! `fuzz/corpus/<target>/seed-<name>`:
//! `cargo run -p tiersync --example fuzz_seeds`. The signatures are
//! randomised, so each run writes new files; commit what it wrote.

use std::io::Write as _;
use std::path::Path;

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut out = std::io::stdout().lock();
    for seed in tiersync::fuzzing::seeds::seeds() {
        let dir = corpus.join(seed.target);
        std::fs::create_dir_all(&dir)?;
        let name: String = seed
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("seed-{name}"));
        std::fs::write(&path, &seed.bytes)?;
        writeln!(out, "{} ({} bytes)", path.display(), seed.bytes.len())?;
    }
    Ok(())
}
