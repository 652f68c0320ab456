//! Fuzz target `link_session`: see `tiersync::fuzzing` and `docs/reliability.md`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tiersync::fuzzing::link::link_session(data));
