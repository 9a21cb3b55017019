#![no_main]
//! `switchyard::fuzzing::json` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::json(data));
