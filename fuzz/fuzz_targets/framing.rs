#![no_main]
//! `switchyard::fuzzing::framing` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::framing(data));
