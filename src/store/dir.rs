//! The data directory itself: its layout, the lock that keeps a second
//! process out, and the two secrets in it (the identity key and the
//! convergence secret). Owns file names and permissions; touches no block.
//!
//! ```text
//! lock                  exclusive lock held while a process uses the dir
//! identity.key          libp2p ed25519 keypair (protobuf), mode 0600
//! convergence.secret    32 random bytes, mode 0600
//! pins.cbor             the pinned roots (atomically rewritten, synced)
//! cache.cbor            the cached roots (atomically rewritten, not synced)
//! clock                 empty; its change time reads the file system's clock
//! blocks/<xy>/<cid>     a block; <xy> = the CID string's last two characters
//! tmp/                  blocks being written (cleared when the dir is opened)
//! corrupt/              blocks that failed verification, moved aside
//! ```

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use libp2p::identity::Keypair;

use crate::{
    crypto::{ConvergenceSecret, KEY_LEN},
    error::{Error, Result},
};

pub(super) const IDENTITY_FILE: &str = "identity.key";
pub(super) const SECRET_FILE: &str = "convergence.secret";
pub(super) const PINS_FILE: &str = "pins.cbor";
pub(super) const CACHE_FILE: &str = "cache.cbor";
pub(super) const CLOCK_FILE: &str = "clock";
const LOCK_FILE: &str = "lock";

/// An open, locked data directory and the secrets it holds.
pub(super) struct DataDir {
    pub dir: PathBuf,
    pub blocks: PathBuf,
    pub tmp: PathBuf,
    pub corrupt: PathBuf,
    /// The directory itself, for `syncfs` and for syncing renames.
    pub handle: File,
    /// Held (and locked) for as long as the store is open.
    pub _lock: File,
    pub identity: Keypair,
    /// The identity key as stored: the check tags' key is derived from it.
    pub identity_bytes: Vec<u8>,
    pub secret: ConvergenceSecret,
    /// The files (and their bytes) found in `tmp/` when it was opened:
    /// writes a stopped process left. Removed then; the next collection
    /// reports them ([`GcStats::removed_tmp_files`](super::GcStats)).
    pub leftover_tmp: [std::sync::atomic::AtomicU64; 2],
}

impl DataDir {
    /// Opens (creating if needed) `dir`, takes its lock, clears `tmp/`, and
    /// loads or creates the secrets.
    pub fn open(dir: PathBuf) -> Result<DataDir> {
        create_private_dir(&dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| Error::io("cannot open lock file", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(Error::InUse { dir }),
            Err(fs::TryLockError::Error(e)) => return Err(Error::io("cannot lock", &lock_path, e)),
        }
        let (blocks, tmp, corrupt) = (dir.join("blocks"), dir.join("tmp"), dir.join("corrupt"));
        for d in [&blocks, &tmp, &corrupt] {
            create_private_dir(d)?;
        }
        // We hold the lock: anything in tmp/ is left over from a crash.
        let (files, bytes) = clear_dir(&tmp)?;

        let identity_bytes = load_or_create_secret_file(&dir.join(IDENTITY_FILE), || {
            Keypair::generate_ed25519().to_protobuf_encoding().expect("ed25519 encodes")
        })?;
        let identity = Keypair::from_protobuf_encoding(&identity_bytes).map_err(|e| Error::Io {
            context: format!("identity key {} is unreadable", dir.join(IDENTITY_FILE).display()),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?;
        let secret_path = dir.join(SECRET_FILE);
        let secret = load_or_create_secret_file(&secret_path, || {
            ConvergenceSecret::generate().as_bytes().to_vec()
        })?;
        let secret: [u8; KEY_LEN] = secret.try_into().map_err(|_| Error::Io {
            context: format!("convergence secret {} is not {KEY_LEN} bytes", secret_path.display()),
            source: io::ErrorKind::InvalidData.into(),
        })?;
        let handle =
            File::open(&dir).map_err(|e| Error::io("cannot open data directory", &dir, e))?;
        Ok(DataDir {
            dir,
            blocks,
            tmp,
            corrupt,
            handle,
            _lock: lock,
            identity,
            identity_bytes,
            secret: ConvergenceSecret::from_bytes(secret),
            leftover_tmp: [files.into(), bytes.into()],
        })
    }
}

/// Gives the data directory `dir` (created if need be) the identity `key`,
/// unless it has one already.
pub(super) fn preset_identity(dir: &Path, key: &Keypair) -> Result<()> {
    create_private_dir(dir)?;
    let encoded = key.to_protobuf_encoding().map_err(|e| Error::Io {
        context: "cannot encode the identity key".into(),
        source: io::Error::other(e),
    })?;
    load_or_create_secret_file(&dir.join(IDENTITY_FILE), || encoded).map(drop)
}

pub(super) fn create_private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("cannot create directory", dir, e))
}

/// Removes the files in `dir`; returns how many and their bytes.
pub(super) fn clear_dir(dir: &Path) -> Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    for entry in fs::read_dir(dir).map_err(|e| Error::io("cannot list", dir, e))? {
        let entry = entry.map_err(|e| Error::io("cannot list", dir, e))?;
        let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
        let path = entry.path();
        fs::remove_file(&path).map_err(|e| Error::io("cannot remove", &path, e))?;
        files += 1;
        bytes += len;
    }
    Ok((files, bytes))
}

/// Reads a secret file, refusing one other users can read; creates it
/// (mode 0600, synced) with `create()` when it does not exist.
fn load_or_create_secret_file(path: &Path, create: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>> {
    match fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(Error::InsecureKey { path: path.to_path_buf(), mode });
            }
            fs::read(path).map_err(|e| Error::io("cannot read", path, e))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let bytes = create();
            let write = || -> io::Result<()> {
                let mut f =
                    OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
                f.write_all(&bytes)?;
                f.sync_all()
            };
            write().map_err(|e| Error::io("cannot create", path, e))?;
            Ok(bytes)
        }
        Err(e) => Err(Error::io("cannot read", path, e)),
    }
}
