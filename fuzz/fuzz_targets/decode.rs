//! Feeds arbitrary bytes to the RESP decoder, whole and split at a point
//! derived from the first byte; whole and split decodes must agree, and
//! anything decoded must re-encode and decode to the same value. The checks
//! live in `redis_layers_fuzz::check` so `tests/codec.rs` runs them on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    redis_layers_fuzz::check(data);
});
