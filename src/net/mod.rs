//! The peer network, in layers. Each module imports (`crate::net::…`)
//! only modules above it in this list:
//!
//! - [`limits`] (connections per remote address) and [`records`] (the
//!   DHT's bounded record store), which import no other;
//! - [`codec`]: the file protocol's wire format (`protocols/file-protocol.md`):
//!   its messages, their frames, and reading and writing them on streams;
//! - [`behaviour`]: transport and protocols, and every tuning constant of
//!   the swarm;
//! - [`lanes`]: block streams, a few long-lived streams per peer on which
//!   a node asks for blocks;
//! - [`event_loop`]: the one task that owns the swarm, and [`NetHandle`],
//!   the handle the rest of the program talks to it with; one file per
//!   concern (its module docs say which lives where);
//! - [`blocks`]: both sides of `GetBlock` and `Have`;
//! - [`providers`]: the providers of one download, and how busy each is;
//! - [`discover`]: who holds a root, found by DHT lookup and `Have` probe;
//! - [`get`]: fetching a download's blocks from its providers;
//! - [`replicas`]: both sides of `Replicate`, `Delete` and `Holds`, and
//!   the owners' delete records in the DHT;
//! - [`repair`]: keeping each pinned root at its replica count, and the
//!   owner's leases renewed;
//! - [`inbound`]: dispatching inbound requests to their handlers.
//!
//! Naming: for each message, `rpc_<message>` sends the request and judges
//! the answer (the outbound side), and `handle_<message>` answers it (the
//! inbound side, a method of the message's service); both live in the
//! module of the message ([`blocks`]: `GetBlock`, `Have`; [`replicas`]:
//! `Replicate`, `Delete`, `Holds`).
//!
//! [`NetHandle`]: event_loop::NetHandle

pub mod behaviour;
pub mod blocks;
pub mod codec;
pub mod discover;
pub mod event_loop;
pub mod get;
pub mod inbound;
pub mod lanes;
pub mod limits;
pub mod providers;
pub mod records;
pub mod repair;
pub mod replicas;
