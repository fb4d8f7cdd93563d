#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oncesend_sim::fuzzing::sim_schedule(data));
