//! Requests to peers: at most [`MAX_OUTBOUND_PER_PEER`] in flight to one
//! peer, more waiting in its queue (up to [`MAX_QUEUED_PER_PEER`], beyond
//! which they fail at once), each answer matched to its caller by request
//! id. [`Outbound`] is that bookkeeping; the loop's methods below send.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    time::Instant,
};

use libp2p::{
    PeerId,
    request_response::OutboundRequestId,
    swarm::dial_opts::{DialOpts, PeerCondition},
};

use super::{EventLoop, Reply, RequestError};
use crate::net::codec::{Request, RequestFrame, Response};

/// File-protocol requests in flight to one peer; more wait in a queue. Below
/// the peer's stream limit ([`crate::net::behaviour::MAX_CONCURRENT_STREAMS`]),
/// so many concurrent downloads never have streams refused.
pub const MAX_OUTBOUND_PER_PEER: usize = 128;
/// Requests to one peer waiting for room (beyond those in flight); more
/// fail at once.
pub const MAX_QUEUED_PER_PEER: usize = 1024;

/// What becomes of a request submitted for a peer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Submitted<M, R> {
    /// Room in flight: send it now.
    Now(M, R),
    /// It waits behind those in flight.
    Queued,
    /// Its peer's queue is full: it fails.
    Full(R),
}

/// The requests in flight (`I` names one, libp2p's `OutboundRequestId`)
/// and waiting, per peer; `M` is a request, `R` where its answer goes.
pub(super) struct Outbound<I, M, R> {
    pending: HashMap<I, (PeerId, R)>,
    in_flight: HashMap<PeerId, usize>,
    queued: HashMap<PeerId, VecDeque<(M, R)>>,
}

impl<I, M, R> Default for Outbound<I, M, R> {
    fn default() -> Self {
        Outbound { pending: HashMap::new(), in_flight: HashMap::new(), queued: HashMap::new() }
    }
}

impl<I: Eq + Hash, M, R> Outbound<I, M, R> {
    /// A request for `peer`: sent now if fewer than
    /// [`MAX_OUTBOUND_PER_PEER`] are in flight to it, else queued.
    pub(super) fn submit(&mut self, peer: PeerId, request: M, reply: R) -> Submitted<M, R> {
        if self.in_flight.get(&peer).copied().unwrap_or(0) < MAX_OUTBOUND_PER_PEER {
            return Submitted::Now(request, reply);
        }
        let queue = self.queued.entry(peer).or_default();
        if queue.len() >= MAX_QUEUED_PER_PEER {
            Submitted::Full(reply)
        } else {
            queue.push_back((request, reply));
            Submitted::Queued
        }
    }

    /// A request to `peer` went out as `id`.
    pub(super) fn sent(&mut self, id: I, peer: PeerId, reply: R) {
        self.pending.insert(id, (peer, reply));
        *self.in_flight.entry(peer).or_default() += 1;
    }

    /// Request `id` was answered or failed: returns where its answer goes,
    /// and the next request queued for its peer whose caller still
    /// `waits`, to send now (the others are dropped).
    #[allow(clippy::type_complexity)]
    pub(super) fn done(
        &mut self,
        id: &I,
        waits: impl Fn(&R) -> bool,
    ) -> Option<(R, Option<(PeerId, M, R)>)> {
        let (peer, reply) = self.pending.remove(id)?;
        if let Some(n) = self.in_flight.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(&peer);
            }
        }
        let mut next = None;
        while let Some(queue) = self.queued.get_mut(&peer) {
            let Some((request, waiting)) = queue.pop_front() else {
                self.queued.remove(&peer);
                break;
            };
            if queue.is_empty() {
                self.queued.remove(&peer);
            }
            if waits(&waiting) {
                next = Some((peer, request, waiting));
                break;
            }
        }
        Some((reply, next))
    }

    /// The peers with requests in flight.
    pub(super) fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.in_flight.keys().copied()
    }
}

impl EventLoop {
    /// Sends `request` to `peer` now, or queues it (see [`Outbound`]).
    pub(super) fn request(&mut self, peer: PeerId, request: Request, reply: Reply) {
        if peer == *self.swarm.local_peer_id() {
            let reason = "cannot ask ourselves".into();
            let _ = reply.send(Err(RequestError::Failed { peer, reason }));
            return;
        }
        if !self.swarm.is_connected(&peer)
            && let Some((failures, left)) = self.backoff.of(&peer)
        {
            let reason = format!(
                "unreachable: its last {failures} dial(s) failed; next try in {} s",
                left.as_secs().max(1)
            );
            let _ = reply.send(Err(RequestError::Failed { peer, reason }));
            return;
        }
        match self.outbound.submit(peer, request, reply) {
            Submitted::Now(request, reply) => self.send_request(peer, request, reply),
            Submitted::Queued => {}
            Submitted::Full(reply) => {
                let reason = "too many requests queued for it".into();
                let _ = reply.send(Err(RequestError::Failed { peer, reason }));
            }
        }
    }

    /// Sends a request, dialing its peer first at the addresses we know.
    fn send_request(&mut self, peer: PeerId, request: Request, reply: Reply) {
        if !self.swarm.is_connected(&peer)
            && let Some(addrs) = self.addresses.get(&peer)
        {
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs.clone())
                .extend_addresses_through_behaviour()
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            let _ = self.swarm.dial(opts);
        }
        let id = self.swarm.behaviour_mut().file.send_request(&peer, RequestFrame::Valid(request));
        self.outbound.sent(id, peer, reply);
    }

    /// An answer to request `id` arrived from `peer`.
    pub(super) fn answered(&mut self, peer: PeerId, id: OutboundRequestId, response: Response) {
        self.last_active.insert(peer, Instant::now());
        if let Some(reply) = self.request_done(id) {
            let _ = reply.send(Ok(response));
        }
    }

    /// Forgets a finished request, sends the next one queued for its peer,
    /// and returns the finished request's reply channel.
    pub(super) fn request_done(&mut self, id: OutboundRequestId) -> Option<Reply> {
        let (reply, next) = self.outbound.done(&id, |r| !r.is_closed())?;
        if let Some((peer, request, waiting)) = next {
            self.send_request(peer, request, waiting);
        }
        Some(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests and replies are numbers; ids are the request's number.
    type Requests = Outbound<u32, u32, u32>;

    /// Submits request `n` for `peer`, sending it as `n` if there is room.
    fn submit(out: &mut Requests, peer: PeerId, n: u32) -> Submitted<(), u32> {
        match out.submit(peer, n, n) {
            Submitted::Now(request, reply) => {
                out.sent(request, peer, reply);
                Submitted::Now((), reply)
            }
            Submitted::Queued => Submitted::Queued,
            Submitted::Full(reply) => Submitted::Full(reply),
        }
    }

    #[test]
    fn a_peer_gets_a_bounded_number_in_flight_then_a_bounded_queue() {
        let mut out = Requests::default();
        let (peer, other) = (PeerId::random(), PeerId::random());
        let in_flight = MAX_OUTBOUND_PER_PEER as u32;
        let queued = MAX_QUEUED_PER_PEER as u32;
        for n in 0..in_flight {
            assert_eq!(submit(&mut out, peer, n), Submitted::Now((), n));
        }
        for n in in_flight..in_flight + queued {
            assert_eq!(submit(&mut out, peer, n), Submitted::Queued);
        }
        let over = in_flight + queued;
        assert_eq!(submit(&mut out, peer, over), Submitted::Full(over));
        assert_eq!(submit(&mut out, other, over + 1), Submitted::Now((), over + 1));
    }

    #[test]
    fn an_answer_sends_the_next_queued_request_whose_caller_still_waits() {
        let mut out = Requests::default();
        let peer = PeerId::random();
        let in_flight = MAX_OUTBOUND_PER_PEER as u32;
        for n in 0..in_flight + 3 {
            submit(&mut out, peer, n);
        }
        // The caller of the first one queued stopped waiting.
        let gone = in_flight;
        let (reply, next) = out.done(&0, |r| *r != gone).unwrap();
        assert_eq!(reply, 0);
        assert_eq!(next, Some((peer, gone + 1, gone + 1)));
        let (_, next) = out.done(&1, |_| true).unwrap();
        assert_eq!(next, Some((peer, gone + 2, gone + 2)));
        let (_, next) = out.done(&2, |_| true).unwrap();
        assert_eq!(next, None, "the queue is empty");
        assert!(out.done(&2, |_| true).is_none(), "an answer is matched once");
    }

    #[test]
    fn a_peer_is_busy_with_us_while_it_has_requests_in_flight() {
        let mut out = Requests::default();
        let peer = PeerId::random();
        submit(&mut out, peer, 1);
        submit(&mut out, peer, 2);
        assert_eq!(out.peers().collect::<Vec<_>>(), vec![peer]);
        out.done(&1, |_| true);
        assert_eq!(out.peers().count(), 1);
        out.done(&2, |_| true);
        assert_eq!(out.peers().count(), 0);
    }
}
