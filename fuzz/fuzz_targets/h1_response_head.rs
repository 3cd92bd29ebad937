//! Arbitrary bytes as an upstream's response head, straight into the lean
//! HTTP/1.1 path's parser (no socket). The first byte says whether the
//! request was a HEAD (bit 0) and asked to close (bit 1). A head it relays
//! is rewritten into a well-formed HTTP/1.1 head with the same status, no
//! hop-by-hop header, and a body framing the client reads as the upstream
//! meant it (`teal_router::fuzzing::response_head` lists the properties).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, bytes)) = data.split_first() else {
        return;
    };
    teal_router::fuzzing::response_head(bytes, flags & 1 == 1, flags & 2 == 2);
});
