//! Request heads, whole and split: see `holdfast_fuzz::head`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| holdfast_fuzz::head(data));
