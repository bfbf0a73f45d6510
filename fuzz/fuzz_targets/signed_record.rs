#![no_main]
//! A lease or a delete record, as a peer sends it in `Replicate` or stores
//! it in the DHT. The check is `dfs_p2p::fuzzing::signed_record`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dfs_p2p::fuzzing::signed_record(data));
