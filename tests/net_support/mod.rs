//! Helpers shared by the network tests.

use std::{
    io::{self, Write},
    sync::{Arc, Mutex},
};

/// Deterministic, incompressible test bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    dfs_p2p::testdata::pseudo_random(len, seed)
}

/// An output that collects what it is given.
#[derive(Clone, Default)]
pub struct Sink(pub Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
