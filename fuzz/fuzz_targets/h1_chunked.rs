//! Arbitrary bytes as a chunked response body, straight into the lean
//! HTTP/1.1 path's body framing (no socket): fed whole or in pieces (of as
//! many bytes as the first input byte says), it ends, or fails, at the same
//! place; and the rest of the input, chunked as an upstream may chunk it,
//! is taken exactly, in one piece or two.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, bytes)) = data.split_first() else {
        return;
    };
    teal_router::fuzzing::chunked(bytes, usize::from(step % 16) + 1);
    teal_router::fuzzing::chunked_encoding(bytes, usize::from(step) * 7);
});
