#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| colo_core::fuzzing::packet_parse::run(data));
