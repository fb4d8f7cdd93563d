#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oncesend::fuzzing::cloud_api_response(data));
