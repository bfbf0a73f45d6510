#![no_main]
//! A structure block, decoded under its own CID.
//! The check is `dfs_p2p::fuzzing::structure_node`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dfs_p2p::fuzzing::structure_node(data));
