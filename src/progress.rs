//! Progress reports of long transfers: a callback with the bytes done so
//! far and, when known, the bytes in all. Import and export call it from
//! their worker threads; the command line draws it.

/// A progress callback: bytes done, and bytes in all when known.
pub type Progress<'a> = &'a (dyn Fn(u64, Option<u64>) + Sync);
