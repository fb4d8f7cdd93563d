#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oncesend_core::fuzzing::store_ops(data));
