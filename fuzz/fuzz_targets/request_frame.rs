#![no_main]
//! A request frame, read as a whole and off a stream by the responder's codec.
//! The check is `dfs_p2p::fuzzing::request_frame`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dfs_p2p::fuzzing::request_frame(data));
