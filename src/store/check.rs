//! Check tags: what the store remembers of a block's verification.
//!
//! Every block read from disk must match its CID before it is used, and a
//! SHA-256 pass costs about 0.6 CPU-seconds per GB, on every read: for a
//! node serving a file, as much as Noise. So once a block has been checked
//! against its CID (when it is put or replicated, or at its first read),
//! the store records a *check tag* in an extended attribute of its file
//! (`user.dfs-p2p.check`): keyed BLAKE3 of the CID and the bytes, under a
//! key derived from the node's identity key. A later read that finds a
//! matching tag knows the bytes are those that matched the CID; keyed
//! BLAKE3 runs at about 6 GB/s a core. Anything else — no tag, a file
//! system without extended attributes, changed bytes, a tag from another
//! node or forged by someone without the identity key — falls back to the
//! full SHA-256 check, so a changed block is still caught and never passed
//! on.

use std::{
    fs::File,
    os::fd::AsRawFd,
    sync::atomic::{AtomicBool, Ordering},
};

use cid::Cid;

/// The extended attribute that holds a block's check tag.
const ATTR: &std::ffi::CStr = c"user.dfs-p2p.check";
/// Derivation context of the tag key (BLAKE3 `derive_key`).
const KEY_CONTEXT: &str = "dfs-p2p 2026-11 block check tag v1";
const TAG_LEN: usize = blake3::OUT_LEN;

/// Computes and checks tags; one per store.
pub struct Checker {
    key: [u8; 32],
    /// Cleared when the file system refuses extended attributes.
    supported: AtomicBool,
}

impl Checker {
    /// A checker whose key is derived from `identity` (the encoded identity
    /// key, which never leaves the data directory).
    pub fn new(identity: &[u8]) -> Self {
        Checker { key: blake3::derive_key(KEY_CONTEXT, identity), supported: AtomicBool::new(true) }
    }

    fn tag(&self, cid: &Cid, bytes: &[u8]) -> blake3::Hash {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        hasher.update(&cid.to_bytes());
        // One pass over a block of a megabyte: the SIMD lanes of `update`
        // are enough; threads would cost more than they save.
        hasher.update(bytes);
        hasher.finalize()
    }

    /// Whether `file` carries this store's tag of `cid` and `bytes`.
    pub fn matches(&self, file: &File, cid: &Cid, bytes: &[u8]) -> bool {
        if !self.supported.load(Ordering::Relaxed) {
            return false;
        }
        let mut stored = [0u8; TAG_LEN];
        // SAFETY: the descriptor is owned by `file`; the kernel writes at
        // most `stored.len()` bytes into `stored`.
        let n = unsafe {
            libc::fgetxattr(file.as_raw_fd(), ATTR.as_ptr(), stored.as_mut_ptr().cast(), TAG_LEN)
        };
        if n < 0 {
            self.note_refusal();
            return false;
        }
        // `Hash` compares in constant time.
        n as usize == TAG_LEN && blake3::Hash::from_bytes(stored) == self.tag(cid, bytes)
    }

    /// Records the tag of `cid` and `bytes`, which the caller has just
    /// checked against `cid`, on `file`. Best effort: a file without a tag
    /// is only slower to read.
    pub fn record(&self, file: &File, cid: &Cid, bytes: &[u8]) {
        if !self.supported.load(Ordering::Relaxed) {
            return;
        }
        let tag = self.tag(cid, bytes);
        // SAFETY: the descriptor is owned by `file`; the kernel reads
        // `TAG_LEN` bytes from `tag`.
        let rc = unsafe {
            libc::fsetxattr(
                file.as_raw_fd(),
                ATTR.as_ptr(),
                tag.as_bytes().as_ptr().cast(),
                TAG_LEN,
                0,
            )
        };
        if rc != 0 {
            self.note_refusal();
        }
    }

    /// After a failed xattr call: stop trying on a file system that has no
    /// user extended attributes (other errors, such as a missing tag, only
    /// concern one file).
    fn note_refusal(&self) {
        let errno = std::io::Error::last_os_error().raw_os_error();
        if errno == Some(libc::ENOTSUP) || errno == Some(libc::EOPNOTSUPP) {
            self.supported.store(false, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn cid_of(bytes: &[u8]) -> Cid {
        crate::block::cid_of(crate::block::RAW, bytes)
    }

    /// Whether files in `dir` take user extended attributes.
    fn takes_user_xattrs(dir: &std::path::Path) -> bool {
        let Ok(file) = File::create(dir.join("xattr-probe")) else { return false };
        // SAFETY: the descriptor is owned by `file`; the kernel reads one
        // byte from the value.
        let rc = unsafe {
            libc::fsetxattr(
                file.as_raw_fd(),
                c"user.dfs-p2p.probe".as_ptr(),
                b"1".as_ptr().cast(),
                1,
                0,
            )
        };
        rc == 0
    }

    /// A temporary directory on a file system with user extended
    /// attributes: the system's temporary directory, or else one beside the
    /// test binary (in the build's target directory, on the disk), for a
    /// temporary directory on a file system without them (an older tmpfs).
    /// `None` if neither has them.
    fn xattr_tempdir() -> (Option<tempfile::TempDir>, Vec<std::path::PathBuf>) {
        let mut tried = Vec::new();
        let beside_binary = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|p| p.to_path_buf()))
            .and_then(|dir| tempfile::tempdir_in(dir).ok());
        for dir in [tempfile::tempdir().ok(), beside_binary].into_iter().flatten() {
            if takes_user_xattrs(dir.path()) {
                return (Some(dir), tried);
            }
            tried.push(dir.path().to_path_buf());
        }
        (None, tried)
    }

    #[test]
    fn a_recorded_tag_matches_only_the_same_bytes_cid_and_key() {
        let (dir, tried) = xattr_tempdir();
        let Some(dir) = dir else {
            if std::env::var_os("DFS_SKIP_XATTR_TEST").is_some_and(|v| v == "1") {
                eprintln!(
                    "SKIPPED: no user extended attributes in {tried:?} (DFS_SKIP_XATTR_TEST=1)"
                );
                return;
            }
            panic!(
                "cannot test check tags: no user extended attributes in {tried:?}; \
                 run on a file system that has them, or set DFS_SKIP_XATTR_TEST=1 to skip"
            );
        };
        let path = dir.path().join("b");
        let bytes = crate::testdata::pseudo_random(100_000, 1);
        File::create(&path).unwrap().write_all(&bytes).unwrap();
        let file = File::open(&path).unwrap();
        let checker = Checker::new(b"identity one");
        let cid = cid_of(&bytes);
        assert!(!checker.matches(&file, &cid, &bytes), "no tag yet");
        checker.record(&file, &cid, &bytes);
        assert!(checker.supported.load(Ordering::Relaxed), "the file system refused the tag");
        assert!(checker.matches(&file, &cid, &bytes), "the recorded tag does not match");

        let mut changed = bytes.clone();
        changed[77_777] ^= 1;
        assert!(!checker.matches(&file, &cid, &changed), "changed bytes");
        let other = cid_of(b"another block");
        assert!(!checker.matches(&file, &other, &bytes), "another CID");
        assert!(!Checker::new(b"identity two").matches(&file, &cid, &bytes), "another key");
    }
}
