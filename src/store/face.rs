//! The async face of the store: the one way async code reaches it.
//!
//! The store is blocking code (its methods touch the disk and take plain
//! mutexes that disk work holds). Async code never calls it directly: it
//! hands a closure to [`AsyncStore::run`], which runs it on tokio's
//! blocking pool, at most [`STORE_CALLS`] at a time, and awaits the result.
//! This is `spawn_blocking` at one layer rather than an actor (iroh-blobs'
//! choice): the store already serializes what must be serialized with its
//! own short locks, so a queue in front of it would only add a hop, while
//! one bounded entry point gives the same guarantee that an async worker
//! never waits on a disk.
//!
//! A get is async: each of its blocks is one call here (see `net::get`).
//! Long work (an import, a replica pull) runs wholly on blocking threads of
//! its own and calls the store directly from there.
//!
//! [`assert_blocking_context`] is the seam's check: the store's entry
//! points call it, and in debug builds (and with the `seam-check` feature,
//! which the test suite turns on) a store call made on a runtime worker
//! panics there instead of stalling the runtime in production.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::Store;
use crate::error::{Error, Result};

/// Store calls from async code that run at once; the rest wait their turn
/// (a burst of requests from peers queues here, not in the blocking pool).
pub const STORE_CALLS: usize = 8;

/// A handle to the store for async code; cheap to clone.
#[derive(Clone)]
pub struct AsyncStore {
    store: Store,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for AsyncStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AsyncStore").field(&self.store).finish()
    }
}

impl AsyncStore {
    /// The face of `store`. Every face of one store shares its turns: the
    /// bound holds however many services hold one.
    pub fn new(store: Store) -> Self {
        let permits = Arc::clone(&store.inner.calls);
        AsyncStore { store, permits }
    }

    /// The blocking store, for code that is already on a blocking thread
    /// (or that only reads what never touches the disk: its identity, its
    /// directory's path).
    pub fn blocking(&self) -> &Store {
        &self.store
    }

    /// Runs `f` on a blocking thread and awaits its result. The call keeps
    /// its turn until `f` returns, even if the awaiting future is dropped,
    /// so no more than [`STORE_CALLS`] ever run at once.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Store) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| Error::Internal("the store's call queue is closed".into()))?;
        let store = self.store.clone();
        match spawn_blocking(move || {
            let _turn = permit;
            f(&store)
        })
        .await
        {
            Ok(result) => result,
            Err(e) => Err(joined(e, "a store call")),
        }
    }
}

/// Runs long blocking work (`work` names it: "the get", "an import") on a
/// thread of its own, through [`spawn_blocking`], and awaits its result. A
/// panic there is [`Error::WorkerPanicked`] naming the work, not a stopped
/// node: only a closed channel to the event loop means that.
pub async fn run_blocking<T, F>(work: &str, f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    match spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => Err(joined(e, work)),
    }
}

/// What a blocking job that did not return becomes: a panic names the
/// work; a job cancelled (a runtime shutting down) is [`Error::Cancelled`].
pub fn joined(e: tokio::task::JoinError, work: &str) -> Error {
    if e.is_panic() {
        tracing::error!("{work} panicked: {e}");
        Error::WorkerPanicked(work.to_string())
    } else {
        Error::Cancelled
    }
}

thread_local! {
    /// Set on threads that may block: tokio's blocking pool, once one of
    /// its threads ran a closure given to [`spawn_blocking`].
    static MAY_BLOCK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `tokio::task::spawn_blocking`, marking the thread as one that may block
/// (see [`assert_blocking_context`]). Every blocking job the program starts
/// from async code goes through here or through [`AsyncStore::run`].
pub fn spawn_blocking<F, R>(f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        MAY_BLOCK.with(|m| m.set(true));
        f()
    })
}

/// Panics (in debug builds, and with the `seam-check` feature) when called
/// on a thread that drives async tasks: a tokio runtime's worker, or a
/// thread inside `block_on`. Passes on a thread that has no runtime (one of
/// the program's own threads) and on a blocking-pool thread that
/// [`spawn_blocking`] marked.
#[inline]
pub fn assert_blocking_context() {
    #[cfg(any(debug_assertions, feature = "seam-check"))]
    if tokio::runtime::Handle::try_current().is_ok() && !MAY_BLOCK.with(|m| m.get()) {
        panic!(
            "a blocking store call was made on an async runtime thread: reach the store \
             through store::AsyncStore::run (or store::spawn_blocking for long work)"
        );
    }
}
