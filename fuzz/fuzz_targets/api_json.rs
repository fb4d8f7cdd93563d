#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oncesend::fuzzing::api_json(data));
