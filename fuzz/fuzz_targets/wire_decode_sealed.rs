#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| colo_core::fuzzing::wire_decode::run_sealed(data));
