//! The peer network: the file protocol codec, the swarm, and get/put/replicate.

pub mod codec;
