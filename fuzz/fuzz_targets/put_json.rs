//! Fuzz target `put_json`: see `tiersync::fuzzing` and `docs/reliability.md`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tiersync::fuzzing::inputs::put_json(data));
