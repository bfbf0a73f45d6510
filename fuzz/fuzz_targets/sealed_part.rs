#![no_main]
//! The plaintext of a structure node's sealed part (after a byte giving the
//! node's number of links), sealed and opened with the node.
//! The check is `dfs_p2p::fuzzing::sealed_part`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dfs_p2p::fuzzing::sealed_part(data));
