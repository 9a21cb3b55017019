#![no_main]
//! `switchyard::fuzzing::csv` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::csv(data));
