#![no_main]
//! `switchyard::fuzzing::template` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::template(data));
