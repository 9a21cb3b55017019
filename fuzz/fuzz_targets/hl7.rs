#![no_main]
//! `switchyard::fuzzing::hl7` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::hl7(data));
