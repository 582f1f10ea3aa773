//! Fuzz target: `kheishctl::fuzzing::telegram_updates` on every input (see that function for what must hold).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kheishctl::fuzzing::telegram_updates(data));
