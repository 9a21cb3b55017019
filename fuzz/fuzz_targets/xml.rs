#![no_main]
//! `switchyard::fuzzing::xml` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::xml(data));
