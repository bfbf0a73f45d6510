#![no_main]
//! A ticket or a bare CID, as a user types it.
//! The check is `dfs_p2p::fuzzing::ticket`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dfs_p2p::fuzzing::ticket(data));
