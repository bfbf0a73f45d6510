//! dfs-p2p: a decentralized, end-to-end encrypted, content-addressed file
//! store. The storage core is [`crypto`] (convergent AES-256-GCM), [`block`]
//! (CIDs), [`dag`] (the file tree), [`ticket`] (read capabilities),
//! [`store`] (the data directory), and [`import`] / [`export`] (streaming
//! files in and out in constant memory).

pub mod bench;
pub mod block;
pub mod cli;
pub mod crypto;
pub mod dag;
pub mod error;
pub mod export;
pub mod import;
pub mod net;
pub mod node;
pub mod store;
pub mod ticket;

pub use error::{Error, ParseError, Result};
pub use ticket::Ticket;
