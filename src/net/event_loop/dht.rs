//! The DHT: Kademlia's events, and the lookups the rest of the program
//! asks for (providers, closest peers, value records), at most
//! [`MAX_QUERIES`] at once. Joining is `join`'s and who enters the routing
//! table is `routing`'s; this file hands their events on to them.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use cid::Cid;
use libp2p::{
    PeerId,
    kad::{
        self, GetClosestPeersOk, GetProvidersOk, QueryId, QueryResult, RecordKey,
        store::RecordStore,
    },
    swarm::dial_opts::{DialOpts, PeerCondition},
};
use tokio::sync::{mpsc, oneshot};

use super::{EventLoop, LookupCost, join::Cue};
use crate::net::behaviour::provider_key;

/// Peers that must have answered a provider lookup with providers before
/// it stops. Every provider publishes its record to the same closest
/// peers, so one answer lists nearly all of them; a second guards against
/// one stale or lying record holder. Without this, the lookup goes on until
/// the [`KAD_REPLICATION`](crate::net::behaviour::KAD_REPLICATION) closest
/// peers have all answered (`bench dht`, 100 nodes: a median of 26
/// requests per lookup instead of 4).
pub const PROVIDER_ANSWERS: usize = 2;
/// DHT lookups running for the rest of the program at once; more get an
/// empty answer.
pub const MAX_QUERIES: usize = 256;

/// A provider lookup under way.
pub(super) struct ProviderQuery {
    found: mpsc::Sender<PeerId>,
    cost: Arc<LookupCost>,
    /// Requests already added to `cost`.
    counted: u32,
    /// Peers that answered with providers.
    answers: usize,
}

impl ProviderQuery {
    fn new(found: mpsc::Sender<PeerId>, cost: Arc<LookupCost>) -> ProviderQuery {
        cost.lookup_started();
        ProviderQuery { found, cost, counted: 0, answers: 0 }
    }

    /// A step of the lookup: a peer answered with `providers` (other than
    /// this node; none if it knew of none), after `requests` requests in
    /// all. Counts them and hands the providers on (dropped if the
    /// receiver is full: they are hints). Returns whether the lookup has
    /// done enough: [`PROVIDER_ANSWERS`] answers with providers, or nobody
    /// listens any more.
    fn step(&mut self, providers: &[PeerId], requests: u32) -> bool {
        self.cost.add_requests(&mut self.counted, requests);
        if !providers.is_empty() {
            self.answers += 1;
        }
        for p in providers {
            let _ = self.found.try_send(*p);
        }
        self.answers >= PROVIDER_ANSWERS || self.found.is_closed()
    }

    /// The lookup is over.
    fn ended(self) {
        self.cost.lookup_ended();
    }
}

/// The lookups the rest of the program has under way, with where their
/// answers go.
#[derive(Default)]
pub(super) struct Queries {
    providers: HashMap<QueryId, ProviderQuery>,
    closest: HashMap<QueryId, oneshot::Sender<Vec<PeerId>>>,
    put: HashMap<QueryId, oneshot::Sender<Result<usize, String>>>,
    get: HashMap<QueryId, RecordSink>,
}

/// Where the answers of a value record lookup go.
pub enum RecordSink {
    /// The values alone, this node's own included.
    Values(mpsc::Sender<Vec<u8>>),
    /// Other peers' answers, each with the peer that gave it; an error if
    /// the lookup could not start.
    FromPeers(mpsc::Sender<Result<(PeerId, Vec<u8>), String>>),
}

impl RecordSink {
    /// Hands on what a lookup found (dropped if the receiver is full);
    /// returns whether nobody listens any more.
    fn found(&self, record: kad::PeerRecord) -> bool {
        use mpsc::error::TrySendError::Closed;
        match (self, record.peer) {
            (RecordSink::Values(found), _) => {
                matches!(found.try_send(record.record.value), Err(Closed(_)))
            }
            (RecordSink::FromPeers(found), Some(peer)) => {
                matches!(found.try_send(Ok((peer, record.record.value))), Err(Closed(_)))
            }
            // This node's own copy.
            (RecordSink::FromPeers(found), None) => found.is_closed(),
        }
    }
}

impl Queries {
    fn len(&self) -> usize {
        self.providers.len() + self.closest.len() + self.put.len() + self.get.len()
    }
}

impl EventLoop {
    pub(super) fn find_providers(
        &mut self,
        root: Cid,
        found: mpsc::Sender<PeerId>,
        cost: Arc<LookupCost>,
    ) {
        if self.queries.len() < MAX_QUERIES {
            let id = self.swarm.behaviour_mut().kad.get_providers(provider_key(&root));
            self.queries.providers.insert(id, ProviderQuery::new(found, cost));
        }
    }

    pub(super) fn closest_peers(&mut self, key: Vec<u8>, reply: oneshot::Sender<Vec<PeerId>>) {
        if self.queries.len() < MAX_QUERIES {
            let id = self.swarm.behaviour_mut().kad.get_closest_peers(key);
            self.queries.closest.insert(id, reply);
        } else {
            let _ = reply.send(Vec::new());
        }
    }

    pub(super) fn put_record(
        &mut self,
        key: Vec<u8>,
        value: Vec<u8>,
        keep: Duration,
        reply: oneshot::Sender<Result<usize, String>>,
    ) {
        if self.queries.len() >= MAX_QUERIES {
            let _ = reply.send(Err("too many DHT queries under way".into()));
            return;
        }
        let record = kad::Record {
            key: RecordKey::new(&key),
            value,
            publisher: None,
            expires: Some(Instant::now() + keep),
        };
        match self.swarm.behaviour_mut().kad.put_record(record, kad::Quorum::One) {
            Ok(id) => {
                self.queries.put.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(format!("refused by this node's store: {e:?}")));
            }
        }
    }

    pub(super) fn get_record(&mut self, key: Vec<u8>, found: RecordSink) {
        if self.queries.len() < MAX_QUERIES {
            let id = self.swarm.behaviour_mut().kad.get_record(RecordKey::new(&key));
            self.queries.get.insert(id, found);
        } else if let RecordSink::FromPeers(found) = found {
            let _ = found.try_send(Err("too many DHT queries under way".into()));
        }
    }

    /// The peers in Kademlia's routing table.
    pub(super) fn routing_table(&mut self) -> Vec<PeerId> {
        self.swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .flat_map(|bucket| {
                bucket.iter().map(|entry| *entry.node.key.preimage()).collect::<Vec<_>>()
            })
            .collect()
    }

    /// Ends the provider lookups nobody listens to any more (each also
    /// stops at its next answer).
    pub(super) fn end_abandoned_lookups(&mut self) {
        let abandoned: Vec<QueryId> = self
            .queries
            .providers
            .iter()
            .filter(|(_, q)| q.found.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in abandoned {
            if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                query.finish();
            }
        }
    }

    /// Ends every Kademlia bootstrap but our periodic refresh, before it
    /// sends more than its first few requests. libp2p starts one whenever a
    /// peer enters a routing table of fewer than 20 (it cannot be turned
    /// off), that is on every join, and again once it ends if more peers
    /// joined meanwhile: a lookup of our id, then one in each farther
    /// bucket, ~500 requests, 1.6 times per join at 300 nodes of `bench
    /// dht`. A join is our lookup of our own id (see `join`), ~50
    /// requests; the farther buckets fill as the node looks things up and
    /// others look it up, and the periodic refresh completes them.
    pub(super) fn end_automatic_bootstraps(&mut self) {
        let ours = self.refresh;
        for mut query in self.swarm.behaviour_mut().kad.iter_queries_mut() {
            if matches!(query.info(), kad::QueryInfo::Bootstrap { .. }) && Some(query.id()) != ours
            {
                query.finish();
            }
        }
    }

    /// Starts the periodic refresh of the routing table, unless one runs.
    pub(super) fn refresh_routing(&mut self) {
        if self.refresh.is_none() {
            self.refresh = self.swarm.behaviour_mut().kad.bootstrap().ok();
        }
    }

    /// A provider lookup progressed: hands on the providers found (dialing
    /// them while the lookup still knows their addresses), counts its
    /// requests, and ends it once it has done enough (see
    /// [`ProviderQuery::step`]).
    fn provider_progress(
        &mut self,
        id: QueryId,
        providers: HashSet<PeerId>,
        last: bool,
        requests: u32,
    ) {
        let local = *self.swarm.local_peer_id();
        let Some(query) = self.queries.providers.get_mut(&id) else { return };
        let others: Vec<PeerId> = providers.into_iter().filter(|p| *p != local).collect();
        for p in &others {
            if !self.swarm.is_connected(p) && self.backoff.of(p).is_none() {
                let opts = DialOpts::peer_id(*p)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                let _ = self.swarm.dial(opts);
            }
        }
        let enough = query.step(&others, requests);
        if last {
            if let Some(query) = self.queries.providers.remove(&id) {
                query.ended();
            }
        } else if enough && let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
            query.finish();
        }
    }

    fn query_progressed(
        &mut self,
        id: QueryId,
        result: QueryResult,
        step: kad::ProgressStep,
        stats: kad::QueryStats,
    ) {
        match result {
            QueryResult::GetProviders(result) => {
                let providers = match result {
                    Ok(GetProvidersOk::FoundProviders { providers, .. }) => providers,
                    _ => Default::default(),
                };
                self.provider_progress(id, providers, step.last, stats.num_requests());
            }
            QueryResult::GetClosestPeers(result) => {
                let answered = stats.num_successes() > 0;
                let peers = match result {
                    Ok(GetClosestPeersOk { peers, .. }) => peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                for p in &peers {
                    if !p.addrs.is_empty() {
                        self.remember(p.peer_id, p.addrs.clone());
                    }
                }
                if let Some(reply) = self.queries.closest.remove(&id) {
                    let _ = reply.send(peers.into_iter().map(|p| p.peer_id).collect());
                }
                if step.last {
                    self.lookup_ended(id, answered);
                }
            }
            QueryResult::PutRecord(result) => {
                if let Some(reply) = self.queries.put.remove(&id) {
                    let _ = reply.send(match result {
                        Ok(_) => Ok(1),
                        Err(kad::PutRecordError::QuorumFailed { success, .. })
                        | Err(kad::PutRecordError::Timeout { success, .. })
                            if !success.is_empty() =>
                        {
                            Ok(success.len())
                        }
                        Err(e) => Err(e.to_string()),
                    });
                }
            }
            QueryResult::GetRecord(result) => {
                let gone = match (self.queries.get.get(&id), result) {
                    (Some(found), Ok(kad::GetRecordOk::FoundRecord(r))) => found.found(r),
                    _ => false,
                };
                if gone {
                    // Nobody is listening any more.
                    if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                        query.finish();
                    }
                }
                if step.last || gone {
                    self.queries.get.remove(&id);
                }
            }
            QueryResult::Bootstrap(result) => {
                if step.last && self.refresh == Some(id) {
                    self.refresh = None;
                }
                if let Err(e) = result {
                    tracing::debug!("bootstrap failed: {e}");
                }
            }
            QueryResult::StartProviding(Err(e)) => tracing::debug!("provide failed: {e}"),
            _ => {}
        }
    }

    pub(super) fn handle_kad_event(&mut self, event: kad::Event) {
        if matches!(event, kad::Event::InboundRequest { .. }) {
            self.counters.dht_requests_answered.fetch_add(1, Ordering::Relaxed);
        }
        match event {
            kad::Event::OutboundQueryProgressed { id, result, step, stats } => {
                if step.last {
                    tracing::debug!(
                        "DHT query {} ended after {} requests",
                        query_kind(&result),
                        stats.num_requests()
                    );
                }
                self.query_progressed(id, result, step, stats)
            }
            kad::Event::InboundRequest {
                request: kad::InboundRequest::AddProvider { record: Some(record) },
            } => {
                // Filtered because value records are (see `behaviour`);
                // the store caps provider records itself.
                if let Err(e) = self.swarm.behaviour_mut().kad.store_mut().add_provider(record) {
                    tracing::debug!("provider record not stored: {e:?}");
                }
            }
            kad::Event::InboundRequest {
                request: kad::InboundRequest::PutRecord { source, record: Some(record), .. },
            } => {
                let key = record.key.clone();
                if let Err(e) = self.swarm.behaviour_mut().kad.store_mut().put_from(source, record)
                {
                    tracing::debug!("refused a DHT record from {source} ({key:?}): {e:?}");
                }
            }
            // A peer whose DHT protocol was just confirmed on a connection
            // we dialed (libp2p's moment for inserting it): as early as
            // that, so that a joining node's table passes 20 before
            // libp2p's bootstrap starts (later inserts into a smaller
            // table start another bootstrap once that one ends).
            kad::Event::RoutablePeer { peer, address } => self.add_to_routing(peer, &[address]),
            kad::Event::RoutingUpdated { peer, is_new_peer: true, .. }
                if self.join.starts(Cue::RoutingPeer, tokio::time::Instant::now()) =>
            {
                // A first peer in the table of a node that has not joined
                // (or that was alone): look our own id up (see `join`).
                // Kademlia bootstraps by itself (a lookup of our id, then
                // one in every farther bucket) when a peer joins a table
                // of fewer than 20; it bootstraps again once that ends if
                // more joined meanwhile, so a join cost two. Our own lookup
                // fills the table past 20 before the first starts: about
                // one bootstrap per join (`bench dht`, 200 nodes: 200
                // bootstraps, not 370 and counting; 100 nodes: 106).
                tracing::debug!("joining the DHT through {peer}");
                self.join_on(Cue::RoutingPeer);
            }
            _ => {}
        }
    }
}

/// The kind of a DHT query, for logs.
fn query_kind(result: &QueryResult) -> &'static str {
    match result {
        QueryResult::Bootstrap(_) => "bootstrap",
        QueryResult::GetClosestPeers(_) => "closest-peers",
        QueryResult::GetProviders(_) => "get-providers",
        QueryResult::StartProviding(_) | QueryResult::RepublishProvider(_) => "start-providing",
        QueryResult::GetRecord(_) => "get-record",
        QueryResult::PutRecord(_) | QueryResult::RepublishRecord(_) => "put-record",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_lookup_has_done_enough_after_two_answers_with_providers() {
        let (found, mut rx) = mpsc::channel(8);
        let cost = Arc::new(LookupCost::default());
        let mut query = ProviderQuery::new(found, cost.clone());
        assert_eq!(cost.snapshot().running, 1);
        let (a, b) = (PeerId::random(), PeerId::random());
        assert!(!query.step(&[], 2), "an answer without providers does not count");
        assert!(!query.step(&[a], 4));
        assert!(query.step(&[a, b], 5));
        assert_eq!(cost.snapshot().dht_requests, 5);
        let handed: Vec<PeerId> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(handed, vec![a, a, b]);
        query.ended();
        assert_eq!(cost.snapshot().running, 0, "an ended lookup is no longer running");
    }

    #[test]
    fn a_provider_lookup_nobody_listens_to_has_done_enough() {
        let (found, rx) = mpsc::channel(8);
        let mut query = ProviderQuery::new(found, Arc::default());
        assert!(!query.step(&[], 1));
        drop(rx);
        assert!(query.step(&[], 2));
    }
}
