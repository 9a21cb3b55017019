#![no_main]
//! `switchyard::fuzzing::fixed_width` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::fixed_width(data));
