//! Inbound admission: each request from a peer is counted against budgets
//! per kind of work, in all and per peer, before any work starts, and
//! answered `Busy` when it does not fit. Block requests then wait in a fair
//! queue: peers take turns, one request each, so a peer that asks for much
//! gets no more than one that asks for little.
//!
//! [`Admission`] is the bookkeeping, with no swarm and no channel; the
//! loop's methods below hand it each request and carry out what it says.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    hash::Hash,
    time::Instant,
};

use libp2p::{
    PeerId,
    request_response::{InboundRequestId, ResponseChannel},
};
use tokio::sync::mpsc;

use super::{EventLoop, InboundRequest};
use crate::net::codec::{ErrorCode, Request, Response};

/// Inbound requests queued for the responder before the loop answers `Busy`.
pub const INBOUND_QUEUE: usize = 1024;
/// `GetBlock` requests from peers being answered at once. Each holds a
/// block (up to 2 MiB) until it is sent, so this bounds the memory of
/// serving. More wait their turn: peers take turns, one request each, so
/// a peer that asks for much gets no more than one that asks for little.
pub const MAX_INBOUND_BLOCKS: usize = 48;
/// Of those, at most this many for one peer: a peer that asks and does not
/// read its answers holds them until their request timeout, and leaves
/// the rest to others.
pub const MAX_SERVING_PER_PEER: usize = 16;
/// `GetBlock` requests one peer may have waiting or being answered; more
/// are answered `Busy`.
pub const MAX_INBOUND_BLOCKS_PER_PEER: usize = 32;
/// `GetBlock` requests waiting or being answered in all; more are
/// answered `Busy`.
pub const MAX_WAITING_BLOCKS: usize = 1024;
/// Other requests from peers (`Have`, `Replicate`, `Delete`) being
/// answered at once, in all and per peer; more are answered `Busy`.
pub const MAX_INBOUND_OTHER: usize = 128;
pub const MAX_INBOUND_OTHER_PER_PEER: usize = 16;

/// The kinds of inbound work, each with its own budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Work {
    Block,
    Other,
}

impl Work {
    pub(super) fn of(request: &Request) -> Work {
        match request {
            Request::GetBlock { .. } => Work::Block,
            _ => Work::Other,
        }
    }

    /// At most in all, and per peer.
    fn limits(self) -> (usize, usize) {
        match self {
            Work::Block => (MAX_WAITING_BLOCKS, MAX_INBOUND_BLOCKS_PER_PEER),
            Work::Other => (MAX_INBOUND_OTHER, MAX_INBOUND_OTHER_PER_PEER),
        }
    }
}

/// The budgets of inbound work and the block requests' fair queue. `I`
/// names a request (libp2p's `InboundRequestId`), `T` is what is handed to
/// the responder.
pub(super) struct Admission<I, T> {
    /// Requests admitted and not yet done, by kind, per peer and in all.
    work: HashMap<I, (PeerId, Work)>,
    per_peer: HashMap<(PeerId, Work), usize>,
    total: HashMap<Work, usize>,
    /// Block requests waiting their turn, per peer, the peers in turn, and
    /// those being answered.
    waiting: HashMap<PeerId, VecDeque<(I, T)>>,
    turns: VecDeque<PeerId>,
    serving: HashSet<I>,
    serving_per_peer: HashMap<PeerId, usize>,
}

impl<I: Copy + Eq + Hash, T> Default for Admission<I, T> {
    fn default() -> Self {
        Admission {
            work: HashMap::new(),
            per_peer: HashMap::new(),
            total: HashMap::new(),
            waiting: HashMap::new(),
            turns: VecDeque::new(),
            serving: HashSet::new(),
            serving_per_peer: HashMap::new(),
        }
    }
}

impl<I: Copy + Eq + Hash, T> Admission<I, T> {
    /// Whether a request of `work` from `peer` fits the budgets; counts it
    /// if so (until [`Admission::done`]).
    pub(super) fn admit(&mut self, id: I, peer: PeerId, work: Work) -> bool {
        let (total_limit, peer_limit) = work.limits();
        let total = self.total.entry(work).or_default();
        let mine = self.per_peer.entry((peer, work)).or_default();
        if *total >= total_limit || *mine >= peer_limit {
            if *mine == 0 {
                self.per_peer.remove(&(peer, work));
            }
            return false;
        }
        *total += 1;
        *mine += 1;
        self.work.insert(id, (peer, work));
        true
    }

    /// Puts an admitted block request in its peer's queue; the peer joins
    /// the turns if it had none waiting.
    pub(super) fn wait_for_turn(&mut self, id: I, peer: PeerId, request: T) {
        let queue = self.waiting.entry(peer).or_default();
        if queue.is_empty() {
            self.turns.push_back(peer);
        }
        queue.push_back((id, request));
    }

    /// The next block request to answer, peers taking turns, while fewer
    /// than [`MAX_INBOUND_BLOCKS`] are being answered (and fewer than
    /// [`MAX_SERVING_PER_PEER`] of its peer's). It is being answered until
    /// it is [`done`](Admission::done).
    pub(super) fn next_block(&mut self) -> Option<T> {
        // Each peer in turn is looked at once at most: those at their
        // share keep their place.
        let mut looked = 0;
        while self.serving.len() < MAX_INBOUND_BLOCKS && looked < self.turns.len() {
            let peer = self.turns.pop_front()?;
            if self.serving_per_peer.get(&peer).copied().unwrap_or(0) >= MAX_SERVING_PER_PEER {
                self.turns.push_back(peer);
                looked += 1;
                continue;
            }
            looked = 0;
            let Some(queue) = self.waiting.get_mut(&peer) else { continue };
            let next = queue.pop_front();
            if queue.is_empty() {
                self.waiting.remove(&peer);
            } else {
                self.turns.push_back(peer);
            }
            let Some((id, request)) = next else { continue };
            if !self.work.contains_key(&id) {
                continue; // it failed while it waited
            }
            self.serving.insert(id);
            *self.serving_per_peer.entry(peer).or_default() += 1;
            return Some(request);
        }
        None
    }

    /// A request was answered (or failed): its budget is free. Returns
    /// whether it was a block request being answered, so that another may
    /// start ([`Admission::next_block`]).
    pub(super) fn done(&mut self, id: I) -> bool {
        let was_serving = self.serving.remove(&id);
        if let Some((peer, work)) = self.work.remove(&id) {
            if was_serving && let Some(n) = self.serving_per_peer.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    self.serving_per_peer.remove(&peer);
                }
            }
            if let Some(total) = self.total.get_mut(&work) {
                *total -= 1;
            }
            if let Some(mine) = self.per_peer.get_mut(&(peer, work)) {
                *mine -= 1;
                if *mine == 0 {
                    self.per_peer.remove(&(peer, work));
                }
            }
        }
        was_serving
    }

    /// The peers with a request admitted and not yet done.
    pub(super) fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.work.values().map(|(peer, _)| *peer)
    }
}

impl EventLoop {
    /// A well-formed request from a peer: handed to the responder if it
    /// fits the budgets (a block request in its peer's turn), else answered
    /// `Busy` at once.
    pub(super) fn inbound_request(
        &mut self,
        peer: PeerId,
        request: Request,
        channel: ResponseChannel<Response>,
        id: InboundRequestId,
    ) {
        self.last_active.insert(peer, Instant::now());
        let work = Work::of(&request);
        if !self.admission.admit(id, peer, work) {
            let busy = Response::error(ErrorCode::Busy, "too many requests in progress");
            let _ = self.swarm.behaviour_mut().file.send_response(channel, busy);
            return;
        }
        let inbound = InboundRequest { peer, request, channel };
        match work {
            Work::Block => {
                self.admission.wait_for_turn(id, peer, inbound);
                self.serve_blocks();
            }
            Work::Other => self.forward(inbound),
        }
    }

    /// Hands block requests to the responder while there is room.
    fn serve_blocks(&mut self) {
        while let Some(inbound) = self.admission.next_block() {
            self.forward(inbound);
        }
    }

    /// Hands an inbound request to the responder, or answers `Busy` if its
    /// queue is full.
    fn forward(&mut self, inbound: InboundRequest) {
        if let Err(e) = self.inbound.try_send(inbound) {
            let inbound = match e {
                mpsc::error::TrySendError::Full(i) | mpsc::error::TrySendError::Closed(i) => i,
            };
            let busy = Response::error(ErrorCode::Busy, "too many requests queued");
            let _ = self.swarm.behaviour_mut().file.send_response(inbound.channel, busy);
        }
    }

    /// An inbound request was answered (or failed): its budget is free.
    pub(super) fn inbound_done(&mut self, id: InboundRequestId) {
        if self.admission.done(id) {
            self.serve_blocks();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests are named by a number; the responder gets `(peer, number)`.
    type Queue = Admission<u32, (PeerId, u32)>;

    /// Admits and queues a block request, and returns those handed to the
    /// responder as a result.
    fn block(q: &mut Queue, id: u32, peer: PeerId) -> Option<Vec<(PeerId, u32)>> {
        if !q.admit(id, peer, Work::Block) {
            return None;
        }
        q.wait_for_turn(id, peer, (peer, id));
        Some(std::iter::from_fn(|| q.next_block()).collect())
    }

    #[test]
    fn each_peer_has_its_own_share_of_block_requests() {
        let mut q = Queue::default();
        let (greedy, other) = (PeerId::random(), PeerId::random());
        let limit = MAX_INBOUND_BLOCKS_PER_PEER as u32;
        for id in 0..limit {
            assert!(block(&mut q, id, greedy).is_some(), "request {id} is within its share");
        }
        assert!(block(&mut q, limit, greedy).is_none(), "one over its share is busy");
        assert!(block(&mut q, limit + 1, other).is_some(), "another peer still gets in");
        // A peer at its block share may still ask for other work.
        assert!(q.admit(limit + 2, greedy, Work::Other));
        // An answered request makes room in its peer's share.
        assert!(q.done(0));
        assert!(block(&mut q, limit + 3, greedy).is_some());
    }

    #[test]
    fn other_work_has_a_budget_in_all() {
        let mut q = Queue::default();
        let per_peer = MAX_INBOUND_OTHER_PER_PEER as u32;
        let peers: Vec<PeerId> =
            (0..MAX_INBOUND_OTHER / MAX_INBOUND_OTHER_PER_PEER).map(|_| PeerId::random()).collect();
        let mut id = 0;
        for peer in &peers {
            for _ in 0..per_peer {
                assert!(q.admit(id, *peer, Work::Other));
                id += 1;
            }
        }
        let late = PeerId::random();
        assert!(!q.admit(id, late, Work::Other), "the budget in all is spent");
        // A refused peer leaves no count behind.
        assert!(!q.per_peer.contains_key(&(late, Work::Other)));
        assert!(!q.done(0), "other work is not a block being answered");
        assert!(q.admit(id + 1, late, Work::Other), "an answered request made room");
    }

    #[test]
    fn block_requests_past_the_serving_limit_take_turns_by_peer() {
        let mut q = Queue::default();
        let [a, b, c, d, e] = [(); 5].map(|_| PeerId::random());
        let mut served = Vec::new();
        let mut id = 0;
        // a, b and c ask for their serving share each at once: 48 are
        // answered at once.
        for peer in [a, b, c] {
            for _ in 0..MAX_SERVING_PER_PEER {
                served.extend(block(&mut q, id, peer).unwrap());
                id += 1;
            }
        }
        assert_eq!(served.len(), MAX_INBOUND_BLOCKS);
        // Then b asks for two more, and d and e for two each.
        for peer in [b, b, d, d, e, e] {
            assert_eq!(block(&mut q, id, peer), Some(vec![]));
            id += 1;
        }
        // As a's answers go out, d and e take turns; b, which has its
        // serving share, waits.
        let mut next = Vec::new();
        for done in 0..4 {
            assert!(q.done(done));
            next.extend(std::iter::from_fn(|| q.next_block()).map(|(peer, _)| peer));
        }
        assert_eq!(next, vec![d, e, d, e]);
        // One of b's answered: b's next goes.
        assert!(q.done(MAX_SERVING_PER_PEER as u32));
        assert_eq!(q.next_block().map(|(peer, _)| peer), Some(b));
        assert_eq!(q.next_block(), None, "b is at its share again");
    }

    #[test]
    fn a_request_that_failed_while_waiting_is_skipped_and_frees_its_budget() {
        let mut q = Queue::default();
        let peers = [(); 3].map(|_| PeerId::random());
        let b = peers[1];
        let mut id = 0;
        while q.serving.len() < MAX_INBOUND_BLOCKS {
            block(&mut q, id, peers[id as usize % 3]).unwrap();
            id += 1;
        }
        let (failed, kept) = (id, id + 1);
        assert_eq!(block(&mut q, failed, b), Some(vec![]));
        assert_eq!(block(&mut q, kept, b), Some(vec![]));
        assert!(!q.done(failed), "it was waiting, not being answered");
        assert_eq!(q.per_peer[&(b, Work::Block)], MAX_INBOUND_BLOCKS / 3 + 1);
        assert!(q.done(1), "one of b's");
        assert_eq!(q.next_block(), Some((b, kept)));
        assert_eq!(q.next_block(), None);
    }

    #[test]
    fn done_for_an_unknown_request_changes_nothing() {
        let mut q = Queue::default();
        let peer = PeerId::random();
        assert!(q.admit(1, peer, Work::Other));
        assert!(!q.done(7));
        assert_eq!(q.peers().collect::<Vec<_>>(), vec![peer]);
        assert!(!q.done(1));
        assert_eq!(q.peers().count(), 0);
        assert!(q.total.values().all(|n| *n == 0));
    }
}
