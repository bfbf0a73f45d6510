//! The cost meters benchmarks read: [`Counters`], a node's running totals
//! of network work, and [`LookupCost`], what one provider lookup cost.
//! The event loop counts; whoever started the work reads.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Running totals of a node's network work, for benchmarks.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections established, both ways.
    pub connections_opened: AtomicU64,
    /// DHT requests this node answered.
    pub dht_requests_answered: AtomicU64,
}

/// What one DHT provider lookup cost, counted by the event loop as it
/// runs; shared with whoever started it.
#[derive(Debug, Default)]
pub struct LookupCost {
    /// Kademlia requests sent by the lookups.
    dht_requests: AtomicU32,
    /// Lookups started and not yet over.
    running: AtomicU32,
    /// `Have` probes sent (counted by discovery, see `net::discover`).
    probes: AtomicU32,
}

/// A snapshot of a [`LookupCost`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    pub dht_requests: u32,
    pub probes: u32,
    /// Lookups still running when it was taken.
    pub running: u32,
}

impl LookupCost {
    pub fn snapshot(&self) -> Cost {
        Cost {
            dht_requests: self.dht_requests.load(Ordering::Relaxed),
            probes: self.probes.load(Ordering::Relaxed),
            running: self.running.load(Ordering::Relaxed),
        }
    }

    pub fn add_probes(&self, n: u32) {
        self.probes.fetch_add(n, Ordering::Relaxed);
    }

    /// A lookup counted here started.
    pub(super) fn lookup_started(&self) {
        self.running.fetch_add(1, Ordering::Relaxed);
    }

    /// A lookup counted here ended.
    pub(super) fn lookup_ended(&self) {
        self.running.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a lookup's requests: Kademlia reports `requests`, the
    /// lookup's running total, at each step; `counted` is the part of it
    /// already added here (the lookup's own, kept by its caller).
    pub(super) fn add_requests(&self, counted: &mut u32, requests: u32) {
        self.dht_requests.fetch_add(requests.saturating_sub(*counted), Ordering::Relaxed);
        *counted = (*counted).max(requests);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookups_requests_are_counted_once_however_often_it_reports_them() {
        let cost = LookupCost::default();
        let (mut first, mut second) = (0, 0);
        cost.add_requests(&mut first, 3);
        cost.add_requests(&mut first, 5);
        // A step that reports the same total again adds nothing.
        cost.add_requests(&mut first, 5);
        cost.add_requests(&mut second, 4);
        assert_eq!(cost.snapshot().dht_requests, 9);
        assert_eq!((first, second), (5, 4));
    }

    #[test]
    fn running_lookups_and_probes_are_metered() {
        let cost = LookupCost::default();
        cost.lookup_started();
        cost.lookup_started();
        cost.lookup_ended();
        cost.add_probes(7);
        assert_eq!(cost.snapshot(), Cost { dht_requests: 0, probes: 7, running: 1 });
    }
}
