//! dfs-p2p: a decentralized, end-to-end encrypted, content-addressed file
//! store. The modules, lowest layer first; none imports one above it:
//!
//! - [`units`] (byte counts in human form);
//! - [`testdata`] (deterministic pseudo-random bytes) and [`error`];
//! - [`crypto`] (convergent keys, AES-256-GCM) and [`block`] (CIDs, block
//!   buffers);
//! - [`dag`] (structure nodes, the file tree, bounded walks) and [`ticket`]
//!   (read capabilities);
//! - [`lease`] (owner-signed leases and delete records);
//! - [`store`] (the data directory);
//! - [`import`] and [`export`] (streaming files in and out in constant
//!   memory, reporting through [`progress`]);
//! - [`net`] (the swarm and the file protocol);
//! - [`node`] (a running node: the API the command line uses);
//! - `bench` (the benchmarks; only with the Cargo feature `bench`),
//!   [`gateway`] (the HTTP gateway) and `fuzzing` (the checks the fuzz
//!   targets in `fuzz/` run; hidden, not part of the API);
//! - [`cli`] (the `dfs-p2p` command).
//!
//! The data format is specified in `protocols/data-format.md`, the wire
//! protocol in `protocols/file-protocol.md`.

#[cfg(feature = "bench")]
pub mod bench;
pub mod block;
pub mod cli;
pub mod crypto;
pub mod dag;
pub mod error;
pub mod export;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod import;
pub mod lease;
pub mod net;
pub mod node;
pub mod progress;
pub mod store;
pub mod testdata;
pub mod ticket;
pub mod units;

pub use error::{Error, ParseError, Result};
pub use ticket::Ticket;
