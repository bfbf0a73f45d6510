#![no_main]
//! A response frame, read as a whole and off a stream by the requester's codec.
//! The check is `dfs_p2p::fuzzing::response_frame`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dfs_p2p::fuzzing::response_frame(data));
