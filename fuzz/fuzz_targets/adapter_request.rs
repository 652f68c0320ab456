//! Fuzz target `adapter_request`: see `tiersync::fuzzing` and `docs/reliability.md`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tiersync::fuzzing::adapter::adapter_request(data));
