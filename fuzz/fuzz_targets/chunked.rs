//! Chunked request bodies, whole and split: see `holdfast_fuzz::chunked`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| holdfast_fuzz::chunked(data));
