//! Arbitrary bytes as a client's request head, straight into the lean
//! HTTP/1.1 path's parser (no socket): a head it takes is taken whole and
//! rewritten for the upstream into a well-formed head with the same request
//! line and body, no hop-by-hop header and the `x-forwarded-*` headers set
//! (`teal_router::fuzzing::request_head` lists the properties).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    teal_router::fuzzing::request_head(data);
});
