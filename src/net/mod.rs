//! The peer network, in layers: [`behaviour`] (transport and protocols),
//! [`event_loop`] (the task that owns the swarm, and its handle), [`codec`]
//! (the file protocol's wire format), [`serve`] (answering requests),
//! [`get`] and [`replicate`] (fetching blocks and managing replicas), and
//! [`bench`] (the network benchmark).

pub mod behaviour;
pub mod bench;
pub mod codec;
pub mod event_loop;
pub mod get;
pub mod replicate;
pub mod serve;
