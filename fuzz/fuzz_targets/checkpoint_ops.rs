#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| colo_core::fuzzing::checkpoint_ops::run(data));
