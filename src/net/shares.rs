//! Shares of the blocks a node holds for the answers of its block streams
//! (read from disk, not yet taken by the asker): a pool in all, a share of
//! it per peer, and a smaller share for a peer that left an answer untaken
//! (see [`BlockShares::stalled`]). A peer that stops reading so holds no
//! more than its share, and only until one of its answers stalls: then
//! every block stream it had open ends, and for [`STALLED_FOR`] it holds
//! one block at a time. Imports no other module of `net`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use libp2p::PeerId;
use tokio::sync::Notify;

/// Blocks held for block-stream answers, in all (up to 2 MiB each): the
/// memory of serving block streams.
pub const STREAM_BLOCKS: usize = 48;
/// Blocks one peer may hold of them, across all its streams: enough to
/// fill a long fat link (`bench net --size 512MiB --rtt 80 --rate 1000`
/// got 115.2–115.5 MB/s with 32, 110.4–110.6 MB/s with 16, interleaved),
/// and two thirds of the pool, so one peer that stops reading leaves
/// room for others.
pub const PEER_STREAM_BLOCKS: usize = 32;
/// Blocks set aside beyond the pool for peers that hold fewer than
/// [`RESERVE_PER_PEER`]: a peer that starts to ask while others fill the
/// pool is served at once, not after their answers stall out.
pub const RESERVE_BLOCKS: usize = 16;
pub const RESERVE_PER_PEER: usize = 2;
/// Blocks a peer that left an answer untaken may hold, for
/// [`STALLED_FOR`] after it did.
pub const STALLED_PEER_BLOCKS: usize = 1;
/// How long a peer that stalled keeps the small share.
pub const STALLED_FOR: Duration = Duration::from_secs(300);
/// Peers remembered as stalled at once: past it, the oldest is forgotten.
pub const MAX_STALLED: usize = 4096;

/// The shares; cheap to clone, one per node.
#[derive(Clone, Default)]
pub struct BlockShares(Arc<Inner>);

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    freed: Notify,
}

#[derive(Default)]
struct State {
    held: usize,
    /// Of the reserve.
    reserve_held: usize,
    per_peer: HashMap<PeerId, usize>,
    stalled: HashMap<PeerId, Instant>,
    /// Takers waiting for a block to be freed, by peer.
    waiting: HashMap<PeerId, usize>,
}

impl State {
    fn share_of(&self, peer: &PeerId) -> usize {
        match self.stalled.get(peer) {
            Some(at) if at.elapsed() < STALLED_FOR => STALLED_PEER_BLOCKS,
            _ => PEER_STREAM_BLOCKS,
        }
    }
}

/// One block held for `peer` (of the reserve or not), until dropped.
pub struct Share {
    shares: BlockShares,
    peer: PeerId,
    reserve: bool,
}

/// Counts a waiting taker of a peer until dropped (a taker may be
/// cancelled).
struct Waiting<'a>(&'a BlockShares, PeerId);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        if let Some(n) = state.waiting.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                state.waiting.remove(&self.1);
            }
        }
    }
}

impl BlockShares {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A block for a stream of `peer` opened at `opened`, once the pool
    /// and its share have room; `None` if `peer` left an answer untaken on
    /// any stream since `opened` (the stream ends too: only streams opened
    /// after it went on, with the small share).
    pub async fn take(&self, peer: PeerId, opened: Instant) -> Option<Share> {
        let mut waiting = None;
        let since = opened;
        loop {
            let freed = self.0.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a block freed in between
            // wakes it.
            freed.as_mut().enable();
            {
                let mut state = self.lock();
                if state.stalled.get(&peer).is_some_and(|at| *at >= since) {
                    return None;
                }
                let mine = state.per_peer.get(&peer).copied().unwrap_or(0);
                let share = state.share_of(&peer);
                let reserve = if state.held < STREAM_BLOCKS && mine < share {
                    Some(false)
                } else if state.reserve_held < RESERVE_BLOCKS && mine < share.min(RESERVE_PER_PEER)
                {
                    Some(true)
                } else {
                    None
                };
                if let Some(reserve) = reserve {
                    if reserve {
                        state.reserve_held += 1;
                    } else {
                        state.held += 1;
                    }
                    *state.per_peer.entry(peer).or_default() += 1;
                    return Some(Share { shares: self.clone(), peer, reserve });
                }
                if waiting.is_none() {
                    *state.waiting.entry(peer).or_default() += 1;
                    waiting = Some(Waiting(self, peer));
                }
            }
            freed.await;
        }
    }

    /// Whether a peer other than `peer` waits for a block now (a peer
    /// that asks for more than its share waits on itself, which is no
    /// reason to hurry it).
    pub fn contended_for(&self, peer: &PeerId) -> bool {
        self.lock().waiting.keys().any(|p| p != peer)
    }

    /// `peer` left an answer untaken: its share is
    /// [`STALLED_PEER_BLOCKS`] for [`STALLED_FOR`].
    pub fn stalled(&self, peer: PeerId) {
        let mut state = self.lock();
        state.stalled.retain(|_, at| at.elapsed() < STALLED_FOR);
        if state.stalled.len() >= MAX_STALLED
            && let Some(oldest) = state.stalled.iter().min_by_key(|(_, at)| **at).map(|(p, _)| *p)
        {
            state.stalled.remove(&oldest);
        }
        state.stalled.insert(peer, Instant::now());
        drop(state);
        self.0.freed.notify_waiters();
    }

    /// Blocks held now, in all (the reserve's too).
    pub fn held_in_all(&self) -> usize {
        let state = self.lock();
        state.held + state.reserve_held
    }

    /// Blocks held now: in all (the reserve's too), and for `peer`.
    pub fn held(&self, peer: &PeerId) -> (usize, usize) {
        let state = self.lock();
        (state.held + state.reserve_held, state.per_peer.get(peer).copied().unwrap_or(0))
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        {
            let mut state = self.shares.lock();
            if self.reserve {
                state.reserve_held -= 1;
            } else {
                state.held -= 1;
            }
            if let Some(n) = state.per_peer.get_mut(&self.peer) {
                *n -= 1;
                if *n == 0 {
                    state.per_peer.remove(&self.peer);
                }
            }
        }
        self.shares.0.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now_or_never<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
        futures::FutureExt::now_or_never(f)
    }

    #[tokio::test]
    async fn a_peer_takes_its_share_and_a_stalled_one_takes_one() {
        let shares = BlockShares::default();
        let (greedy, other, late) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut held: Vec<Share> = (0..PEER_STREAM_BLOCKS)
            .map(|_| now_or_never(shares.take(greedy, Instant::now())).unwrap().unwrap())
            .collect();
        assert!(now_or_never(shares.take(greedy, Instant::now())).is_none(), "past its share");
        assert!(!shares.contended_for(&other), "a cancelled taker waits no more");
        held.extend(
            (0..STREAM_BLOCKS - PEER_STREAM_BLOCKS)
                .map(|_| now_or_never(shares.take(other, Instant::now())).unwrap().unwrap()),
        );
        assert_eq!(shares.held(&late), (STREAM_BLOCKS, 0));

        // The pool is full: a third peer takes a little of the reserve at
        // once, then waits, and gets the first block freed.
        let reserved: Vec<Share> = (0..RESERVE_PER_PEER)
            .map(|_| now_or_never(shares.take(late, Instant::now())).unwrap().unwrap())
            .collect();
        assert!(now_or_never(shares.take(greedy, Instant::now())).is_none(), "no reserve for it");
        let waiter = tokio::spawn({
            let shares = shares.clone();
            async move { shares.take(late, Instant::now()).await }
        });
        while !shares.contended_for(&greedy) {
            tokio::task::yield_now().await;
        }
        assert!(!shares.contended_for(&late), "a peer does not contend with itself");
        held.pop();
        let share =
            tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap().unwrap();
        let all = STREAM_BLOCKS + RESERVE_PER_PEER;
        assert_eq!(shares.held(&late), (all, RESERVE_PER_PEER + 1));
        drop(share);
        drop(reserved);

        // A peer that stalls: what it waits for ends, and it holds one
        // block at most.
        let waits = tokio::spawn({
            let shares = shares.clone();
            async move { shares.take(greedy, Instant::now()).await.is_none() }
        });
        while !shares.contended_for(&other) {
            tokio::task::yield_now().await;
        }
        shares.stalled(greedy);
        assert!(tokio::time::timeout(Duration::from_secs(5), waits).await.unwrap().unwrap());
        held.clear();
        let one = now_or_never(shares.take(greedy, Instant::now())).unwrap().unwrap();
        assert!(
            now_or_never(shares.take(greedy, Instant::now())).is_none(),
            "a stalled peer's share is one"
        );
        drop(one);
        assert_eq!(shares.held(&greedy), (0, 0));
    }
}
