//! Test data: fast, deterministic pseudo-random bytes (xorshift64*), for
//! the benchmarks and the tests. Every chunk of such data differs, so
//! convergent encryption cannot deduplicate any of it. Depends on nothing.

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::Path,
};

/// Fills `buf` with fast pseudo-random bytes (xorshift64*), so that no two
/// chunks of the generated file are equal and nothing deduplicates.
pub fn fill_random(state: &mut u64, buf: &mut [u8]) {
    for word in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let bytes = state.wrapping_mul(0x2545F4914F6CDD1D).to_le_bytes();
        word.copy_from_slice(&bytes[..word.len()]);
    }
}

/// `len` pseudo-random bytes from `seed`: the benchmark's and the tests'
/// incompressible, never-deduplicating content.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0; len];
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    fill_random(&mut state, &mut bytes);
    bytes
}

/// Writes `size` pseudo-random bytes to `path`.
pub fn generate_file(path: &Path, size: u64, seed: u64) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut buf = vec![0u8; 1 << 20];
    let mut state = seed | 1;
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        fill_random(&mut state, &mut buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// `len` pseudo-random bytes as a reader, generated as they are read.
pub struct Generator {
    left: u64,
    state: u64,
}

impl Generator {
    pub fn new(len: u64) -> Self {
        Generator { left: len, state: 0x9E37_79B9_7F4A_7C15 }
    }
}

impl io::Read for Generator {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        fill_random(&mut self.state, &mut buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}
