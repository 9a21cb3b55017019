#![no_main]
//! `switchyard::fuzzing::route_file` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::route_file(data));
